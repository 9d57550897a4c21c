"""The official ScaleBox Python SDK (scalebox-sdk==1.0.10), unmodified, against the appliance."""

from __future__ import annotations

import pytest

from tests.e2e.appliance import Appliance

pytestmark = pytest.mark.podman


def test_python_sdk_lifecycle(appliance: Appliance, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in appliance.sdk_env().items():
        monkeypatch.setenv(name, value)
    # The top-level `scalebox.Sandbox` is the code interpreter (template
    # "code-interpreter", its own issue); the plain sandbox lives here.
    from scalebox.sandbox_sync import Sandbox

    sandbox = Sandbox.create(metadata={"owner": "sdk-test"})
    try:
        assert sandbox.sandbox_id.startswith("sbx-")
        assert sandbox.is_running()

        info = sandbox.get_info()
        assert info.sandbox_id == sandbox.sandbox_id
        assert info.metadata == {"owner": "sdk-test"}
        assert info.template_id == "base"

        sandbox.set_timeout(600)
        with appliance.client() as api:
            row = api.get(f"{appliance.api_url}/sandboxes/{sandbox.sandbox_id}").json()["data"]
        assert row["timeout"] == 600 and 590 <= row["remaining_seconds"] <= 600

        listed = Sandbox.list()
        assert [s.sandbox_id for s in listed] == [sandbox.sandbox_id]
        assert listed[0].metadata == {"owner": "sdk-test"}
        assert str(listed[0].state) == "running"
    finally:
        sandbox.kill()  # the instance method returns None in this SDK version
    assert appliance.containers() == []
    assert Sandbox.list() == []
    # The class form reports whether there was anything to kill: a 404 is False.
    assert Sandbox.kill("sbx-doesnotexist0000") is False
