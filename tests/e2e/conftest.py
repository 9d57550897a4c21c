from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.appliance import Appliance, stop_podman_service


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Short on purpose: the Podman socket lives inside and unix socket paths
    # are limited to 107 bytes, which pytest's tmp_path can exceed.
    path = Path(tempfile.mkdtemp(prefix="sbx-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def new_appliance(data_dir: Path) -> Iterator[Callable[[], Appliance]]:
    """Start appliances on one data dir; all are stopped and their containers removed after."""
    started: list[Appliance] = []

    def start() -> Appliance:
        port = started[-1].port if started else None
        app = Appliance(data_dir=data_dir) if port is None else Appliance(data_dir=data_dir, port=port)
        started.append(app)
        app.start()
        return app

    yield start
    for app in started:
        if app.process is not None and app.process.poll() is None:
            try:
                app.stop(timeout=15)  # graceful: it also stops the Podman service it started
            except subprocess.TimeoutExpired:
                app.kill()
    try:
        if started:
            started[-1].remove_containers()
    finally:
        if started:
            started[-1].remove_network()
        stop_podman_service(data_dir)


@pytest.fixture
def appliance(new_appliance: Callable[[], Appliance]) -> Appliance:
    return new_appliance()
