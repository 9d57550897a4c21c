"""The pure parts of user templates: FROM rewriting, archive inspection, build logs, settings."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from controlplane.api.schemas import HostLimits
from controlplane.api.template_schemas import parse_fields, query_fields
from controlplane.containerfile import rewrite
from controlplane.errors import BadRequest, Conflict, NotFound
from controlplane.ports import PortRequest
from controlplane.records import CreateRequest
from controlplane.runtime.base import RuntimeFailure
from controlplane.runtime.imagearchive import inspect_archive
from controlplane.runtime.podman_runtime import build_command, split_reference
from controlplane.templates import BUILTIN, FAILED, Template, for_create, resolve

LIMITS = HostLimits(max_cpu_count=4, max_memory_mb=4096)
MINE = Template(id="tpl-mine", name="mine", owner_id="usr-a", image="localhost/scalebox/user/tpl-mine:latest")


def find_template(ref: str) -> Template:
    if ref in ("mine", "tpl-mine"):
        return MINE
    if ref == "broken":
        raise Conflict("template tpl-broken is failed")
    return resolve(ref)


# -- FROM rewriting ---------------------------------------------------------------------------


def test_rewrite_templates_stages_and_flags() -> None:
    text = (
        "# syntax\nfrom base as build\nRUN make \\\n  FROM x\n"
        "FROM --platform=linux/amd64 mine\nCOPY --from=build /a /b\n"
    )
    out = rewrite(text, find_template)
    assert out.text.splitlines() == [
        "# syntax",
        "from localhost/scalebox/base:latest as build",
        "RUN make \\",
        "  FROM x",
        "FROM --platform=linux/amd64 localhost/scalebox/user/tpl-mine:latest",
        "COPY --from=build /a /b",
    ]
    assert out.parent == MINE
    assert rewrite("FROM mine AS a\nFROM a\n", find_template).parent is None
    assert rewrite("FROM scratch\n", find_template).parent is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("FROM debian:12\n", "FROM debian:12"),
        ("FROM localhost/scalebox/base:latest\n", "Nothing can be pulled"),
        ("FROM broken\n", "is failed"),
        ("FROM ${IMAGE}\n", "variable"),
        ("FROM base extra\n", "AS <name>"),
        ("FROM base \\\n AS x\n", "one line"),
        ("RUN true\n", "no FROM"),
        ("", "Containerfile"),
        (42, "Containerfile"),
    ],
)
def test_rewrite_refuses(text: object, says: str) -> None:
    with pytest.raises(BadRequest) as caught:
        rewrite(text, find_template)
    assert says in caught.value.message


# -- resolve and for_create ----------------------------------------------------------------------


class Lookup:
    def __init__(self, *templates: Template) -> None:
        self.templates = {t.id: t for t in templates}

    def get(self, template_id: str) -> Template | None:
        return self.templates.get(template_id)

    def by_name(self, owner_id: str, name: str) -> Template | None:
        return next((t for t in self.templates.values() if t.owner_id == owner_id and t.name == name), None)


def test_resolve_by_owner() -> None:
    lookup = Lookup(MINE)
    assert resolve("mine", "usr-a", lookup) == MINE
    assert resolve("tpl-mine", "usr-a", lookup) == MINE
    assert resolve("base", "usr-b", lookup) == BUILTIN["base"]
    for ref in ("mine", "tpl-mine"):
        with pytest.raises(NotFound):
            resolve(ref, "usr-b", lookup)
    # The appliance itself (the warm pool) sees every template by id.
    assert resolve("tpl-mine", None, lookup) == MINE
    failed = Lookup(Template(id="tpl-f", name="f", owner_id="usr-a", image="i", status=FAILED, reason="RUN false"))
    with pytest.raises(Conflict) as caught:
        resolve("f", "usr-a", failed)
    assert "RUN false" in caught.value.message


def test_for_create() -> None:
    web = PortRequest(port=3000, name="web", protocol="http", access="public", host_port=None)
    template = Template(id="tpl-t", image="i", owner_id="u", cpu_count=2, memory_mb=1024, ports=(web,))
    unset = CreateRequest(cpu_count=1, memory_mb=512, unset=frozenset({"cpu_count", "memory_mb"}))
    got = for_create(template, unset)
    assert (got.cpu_count, got.memory_mb, got.custom_ports) == (2, 1024, [web])
    given = for_create(template, CreateRequest(cpu_count=1, memory_mb=512))
    assert (given.cpu_count, given.memory_mb) == (1, 512)
    private = PortRequest(port=3000, name="web", protocol="http", access="private", host_port=None)
    assert for_create(template, CreateRequest(cpu_count=1, memory_mb=512, custom_ports=[private])).custom_ports == [
        private
    ]
    clash = PortRequest(port=4000, name="web", protocol="http", access="public", host_port=None)
    with pytest.raises(BadRequest):
        for_create(template, CreateRequest(cpu_count=1, memory_mb=512, custom_ports=[clash]))
    assert for_create(BUILTIN["base"], unset) == unset


# -- settings ------------------------------------------------------------------------------------


def test_parse_fields_aliases_and_refusals() -> None:
    fields = parse_fields(
        {"name": "a", "default_cpu_count": 2, "ready_command": "true", "ports": "[]", "visibility": "private"}, LIMITS
    )
    assert (fields.name, fields.cpu_count, fields.ready_cmd, fields.ports) == ("a", 2, "true", ())
    for body, says in (
        ({"cpu_count": 1, "default_cpu_count": 2}, "repeats"),
        ({"visibility": "public"}, "private"),
        ({"ports": [{"port": 22, "protocol": "tcp", "host_port": 2222}]}, "host_port"),
        ({"ports": "{not json"}, "ports"),
        ({"memory_mb": 64}, "memory_mb"),
        ({"runtime": "kata"}, "runtime"),
        ({"start_cmd": 5}, "start_cmd"),
    ):
        with pytest.raises(BadRequest) as caught:
            parse_fields(body, LIMITS)
        assert says in caught.value.message, body
    assert query_fields({"name": "x", "cpu_count": "2"}) == {"name": "x", "cpu_count": 2}
    with pytest.raises(BadRequest):
        query_fields({"cpu_count": "two"})


# -- archives ------------------------------------------------------------------------------------


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_inspect_docker_and_oci_archives(tmp_path: Path) -> None:
    image_id = "ab" * 32
    docker = _tar(
        tmp_path / "d.tar",
        {"manifest.json": json.dumps([{"Config": f"{image_id}.json", "RepoTags": ["localhost/x:1"]}]).encode()},
    )
    got = inspect_archive(docker)
    assert (got.format, got.names, got.image_id) == ("docker-archive", ("localhost/x:1",), image_id)
    manifest_digest = "cd" * 32
    oci = _tar(
        tmp_path / "o.tar",
        {
            "index.json": json.dumps(
                {"manifests": [{"digest": f"sha256:{manifest_digest}", "annotations": {}}]}
            ).encode(),
            f"blobs/sha256/{manifest_digest}": json.dumps({"config": {"digest": f"sha256:{image_id}"}}).encode(),
        },
    )
    got = inspect_archive(oci)
    assert (got.format, got.names, got.image_id) == ("oci-archive", (), image_id)


def test_inspect_refuses(tmp_path: Path) -> None:
    two = json.dumps([{"Config": "ab" * 32 + ".json"}, {"Config": "cd" * 32 + ".json"}]).encode()
    cases = {
        "not-tar": None,
        "empty": {},
        "two": {"manifest.json": two},
        "bad-json": {"manifest.json": b"{"},
        "bad-id": {"manifest.json": json.dumps([{"Config": "../../etc/passwd"}]).encode()},
    }
    for name, files in cases.items():
        path = tmp_path / f"{name}.tar"
        if files is None:
            path.write_bytes(b"hello")
        else:
            _tar(path, files)
        with pytest.raises(RuntimeFailure):
            inspect_archive(path)


# -- podman driver helpers -------------------------------------------------------------------------


def test_build_command() -> None:
    command = build_command(
        tag="localhost/scalebox/user/tpl-a:latest",
        labels={"io.scalebox.managed": "true", "a": "b"},
        context=Path("/tmp/c"),
        iidfile=Path("/tmp/iid"),
    )
    assert command[:2] == ["podman", "build"] and command[-1] == "/tmp/c"
    assert command[command.index("--network") + 1] == "none" and "--pull=never" in command
    assert command[command.index("-t") + 1] == "localhost/scalebox/user/tpl-a:latest"
    assert [command[i + 1] for i, word in enumerate(command) if word == "--label"] == [
        "a=b",
        "io.scalebox.managed=true",
    ]


def test_split_reference() -> None:
    assert split_reference("localhost/scalebox/user/tpl-a:latest") == ("localhost/scalebox/user/tpl-a", "latest")
    assert split_reference("localhost:5000/x") == ("localhost:5000/x", "latest")
    assert split_reference("x") == ("x", "latest")
