"""End to end, with real Podman: user templates built, committed and imported, then started.

Every image a test makes is a template's (localhost/scalebox/user/<id>:latest); the
fixture removes those still there when the test ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.appliance import Appliance, podman
from tests.e2e.helpers import container_name, create

pytestmark = pytest.mark.podman

BASE_IMAGE = "localhost/scalebox/base:latest"


@pytest.fixture
def made_images(appliance: Appliance) -> Iterator[list[str]]:
    """Template images to remove after the test (by the appliance's template label too)."""
    images: list[str] = []
    yield images
    # Containers first: an image a container still uses cannot be removed.
    appliance.remove_containers()
    labelled = podman(
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "--filter",
        f"label=io.scalebox.instance={appliance.instance_id}",
    ).split()
    for image in {*images, *labelled}:
        with contextlib.suppress(RuntimeError):
            podman("rmi", image)


def wait_built(app: Appliance, api: httpx.Client, template_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = api.get(f"{app.api_url}/templates/{template_id}/status")
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()["data"]
        if data["status"] != "building":
            return data
        time.sleep(0.5)
    raise AssertionError(f"template {template_id} still building after {timeout} s")


def run(sandbox_id: str, command: str) -> str:
    return podman("exec", container_name(sandbox_id), "sh", "-c", command)


def image_exists(image: str) -> bool:
    try:
        podman("image", "exists", image)
    except RuntimeError:
        return False
    return True


def test_build_from_containerfile_then_start(appliance: Appliance, made_images: list[str]) -> None:
    containerfile = "FROM base\nRUN echo built > /opt/marker\nENV GREETING=hello-template\n"
    with appliance.client(timeout=600) as api:
        resp = api.post(
            f"{appliance.api_url}/templates",
            json={"name": "marked", "dockerfile": containerfile, "memory_mb": 256, "ports": [{"port": 3000}]},
        )
        assert resp.status_code == 201, resp.text
        template = resp.json()["data"]
        made_images.append(template["image"])
        assert template["status"] == "building"
        done = wait_built(appliance, api, template["template_id"])
        assert done["status"] == "ready", done
        logs = api.get(f"{appliance.api_url}/templates/{template['template_id']}/logs").json()["data"]["lines"]
        assert any("RUN echo built > /opt/marker" in line for line in logs), logs
        # The image is the appliance's own, by its labels.
        labels = json.loads(podman("image", "inspect", template["image"]))[0]["Labels"]
        assert labels["io.scalebox.managed"] == "true" and labels["io.scalebox.template-id"] == template["template_id"]

        sbx = create(appliance, api, template="marked")
        assert sbx["template_id"] == template["template_id"] and sbx["memory_mb"] == 256
        assert run(sbx["sandbox_id"], "cat /opt/marker; echo $GREETING") == "built\nhello-template\n"
        ports = api.get(f"{appliance.api_url}/sandboxes/{sbx['sandbox_id']}/ports").json()["data"]
        assert [p["port"] for p in ports["template_ports"]] == [3000]

        # A base that is not a local template is refused before anything is built.
        refused = api.post(f"{appliance.api_url}/templates", json={"name": "pulled", "dockerfile": "FROM debian:12\n"})
        assert refused.status_code == 400 and "FROM" in refused.json()["message"]

        # A failing RUN ends as failed, with the build's own error; it has no network either.
        resp = api.post(
            f"{appliance.api_url}/templates",
            json={
                "name": "offline",
                # Only loopback in a build: with network none, this RUN fails.
                "dockerfile": 'FROM base\nRUN test "$(ls /sys/class/net)" != lo\n',
            },
        )
        assert resp.status_code == 201, resp.text
        made_images.append(resp.json()["data"]["image"])
        failed = wait_built(appliance, api, resp.json()["data"]["template_id"])
        assert failed["status"] == "failed" and failed["reason"], failed


def test_commit_a_sandbox_keeps_its_files(appliance: Appliance, made_images: list[str]) -> None:
    with appliance.client(timeout=600) as api:
        sbx = create(appliance, api, env_vars={"SECRET_TOKEN": "do-not-keep"})
        sid = sbx["sandbox_id"]
        run(sid, "echo written-in-sandbox > /root/kept.txt")
        resp = api.post(f"{appliance.api_url}/sandboxes/{sid}/create-template", json={"name": "snapshot"})
        assert resp.status_code == 200, resp.text
        template = resp.json()["data"]
        made_images.append(template["image"])
        done = wait_built(appliance, api, template["template_id"])
        assert done["status"] == "ready", done
        # The sandbox goes on running after the commit.
        assert api.get(f"{appliance.api_url}/sandboxes/{sid}").json()["data"]["state"] == "running"

        new = create(appliance, api, template="snapshot")
        assert run(new["sandbox_id"], "cat /root/kept.txt") == "written-in-sandbox\n"
        # Its own environment did not travel; its labels are its own.
        assert run(new["sandbox_id"], 'echo "[$SECRET_TOKEN]"') == "[]\n"
        [info] = json.loads(podman("inspect", container_name(new["sandbox_id"])))
        assert info["Config"]["Labels"]["io.scalebox.sandbox-id"] == new["sandbox_id"]

        # A paused sandbox can be committed as well.
        assert api.post(f"{appliance.api_url}/sandboxes/{sid}/pause").status_code == 200
        resp = api.post(f"{appliance.api_url}/sandboxes/{sid}/create-template", json={"name": "snapshot-paused"})
        assert resp.status_code == 200, resp.text
        made_images.append(resp.json()["data"]["image"])
        assert wait_built(appliance, api, resp.json()["data"]["template_id"])["status"] == "ready"
        assert api.get(f"{appliance.api_url}/sandboxes/{sid}").json()["data"]["state"] == "paused"


@pytest.mark.parametrize("archive_format", ["docker-archive", "oci-archive"])
def test_import_an_archive(appliance: Appliance, made_images: list[str], tmp_path: Path, archive_format: str) -> None:
    archive = tmp_path / "base.tar"
    podman("save", "--format", archive_format, "-o", str(archive), BASE_IMAGE)
    base_id = json.loads(podman("image", "inspect", BASE_IMAGE))[0]["Id"]
    with appliance.client(timeout=600) as api:
        resp = api.post(
            f"{appliance.api_url}/templates/import", json={"name": "imported", "archive_path": str(archive)}
        )
        assert resp.status_code == 202, resp.text
        template = resp.json()["data"]
        made_images.append(template["image"])
        done = wait_built(appliance, api, template["template_id"])
        assert done["status"] == "ready", done
        sbx = create(appliance, api, template="imported")
        assert run(sbx["sandbox_id"], "python3 -c 'print(6 * 7)'") == "42\n"

        # The same archive, uploaded as the body.
        with archive.open("rb") as f:
            resp = api.post(
                f"{appliance.api_url}/templates/import",
                params={"name": "uploaded"},
                content=f.read(),
                headers={"Content-Type": "application/x-tar"},
            )
        assert resp.status_code == 202, resp.text
        made_images.append(resp.json()["data"]["image"])
        assert wait_built(appliance, api, resp.json()["data"]["template_id"])["status"] == "ready"
    # The built-in image is untouched: its name still means the same image.
    assert json.loads(podman("image", "inspect", BASE_IMAGE))[0]["Id"] == base_id


def test_import_refuses_an_archive_claiming_a_builtin_name(
    appliance: Appliance, made_images: list[str], tmp_path: Path
) -> None:
    # An image that is not the base, in an archive that names it as the base.
    impostor = "localhost/scalebox/e2e-impostor:latest"
    (tmp_path / "Containerfile").write_text(f"FROM {BASE_IMAGE}\nLABEL impostor=yes\n")
    podman("build", "-t", impostor, "--label", f"io.scalebox.instance={appliance.instance_id}", str(tmp_path))
    made_images.append(impostor)
    saved, archive = tmp_path / "impostor.tar", tmp_path / "renamed.tar"
    podman("save", "--format", "docker-archive", "-o", str(saved), impostor)
    with tarfile.open(saved) as src, tarfile.open(archive, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member) if member.isfile() else None
            if member.name == "manifest.json" and data is not None:
                manifest = json.loads(data.read())
                manifest[0]["RepoTags"] = [BASE_IMAGE]
                raw = json.dumps(manifest).encode()
                member.size = len(raw)
                data = io.BytesIO(raw)
            dst.addfile(member, data)
    base_id = json.loads(podman("image", "inspect", BASE_IMAGE))[0]["Id"]
    with appliance.client(timeout=600) as api:
        resp = api.post(
            f"{appliance.api_url}/templates/import", json={"name": "impostor", "archive_path": str(archive)}
        )
        assert resp.status_code == 202, resp.text
        made_images.append(resp.json()["data"]["image"])
        done = wait_built(appliance, api, resp.json()["data"]["template_id"])
        assert done["status"] == "failed" and BASE_IMAGE in done["reason"], done
    assert json.loads(podman("image", "inspect", BASE_IMAGE))[0]["Id"] == base_id


def test_delete_refused_while_used_then_image_gone(appliance: Appliance, made_images: list[str]) -> None:
    with appliance.client(timeout=600) as api:
        resp = api.post(
            f"{appliance.api_url}/templates", json={"name": "short-lived", "dockerfile": "FROM base\nRUN true\n"}
        )
        template = resp.json()["data"]
        made_images.append(template["image"])
        assert wait_built(appliance, api, template["template_id"])["status"] == "ready"
        assert image_exists(template["image"])
        sbx = create(appliance, api, template="short-lived")
        refused = api.delete(f"{appliance.api_url}/templates/{template['template_id']}")
        assert refused.status_code == 409 and sbx["sandbox_id"] in refused.json()["message"]
        assert image_exists(template["image"])
        assert api.delete(f"{appliance.api_url}/sandboxes/{sbx['sandbox_id']}").status_code == 202
        deleted = api.delete(f"{appliance.api_url}/templates/{template['template_id']}")
        assert deleted.status_code == 200, deleted.text
        assert not image_exists(template["image"])
        assert api.get(f"{appliance.api_url}/templates/{template['template_id']}").status_code == 404
        # Built-ins cannot be deleted.
        assert api.delete(f"{appliance.api_url}/templates/base").status_code == 403
