"""A schema-driven fuzzer against a real appliance: no 500, no answer outside the
document, and no route that answers without its credentials.

The schema is loaded from the running appliance (/v1/openapi.json), so what is
fuzzed is what it serves. Every operation gets its documented examples, then
positive and negative cases (derandomized, so a run is repeatable), each checked
for a 5xx, an undocumented status or content type, an answer outside its schema,
and (negative cases) invalid data accepted. Random ids only ever reach a 404, so
path parameters are aimed at live resources of ours: one running sandbox (the
"victim", resumed or made anew between cases), a user, a project and a webhook
(made anew when a case deletes them), and the built-in template `base`.

What a fuzzer could break in the fixture, and the guard against each:
  - the admin's own key: /v1/api-keys/{key_id} is aimed at a throwaway key;
  - the admin user: /v1/users/{user_id} is aimed at a user made for the run (and the
    app refuses to delete or demote usr-admin anyway);
  - traffic off this machine: webhook URLs are rewritten to a closed loopback port;
  - containers and images: sandboxes it creates are deleted at once, templates it
    makes are deleted at the end, and the fixture removes whatever is left;
  - a command or download that never ends: exec timeouts are clamped and device
    files are not downloaded.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Err, Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.appliance import Appliance

pytestmark = pytest.mark.podman

EXAMPLES = 20
# Operations that make containers or images: slow, so fewer examples.
FEWER = {("POST", "/v1/sandboxes"): 3, ("POST", "/v1/sandboxes/{sandbox_id}/create-template"): 2}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# A closed port on loopback: deliveries fail at once and stay on this machine.
HOOK_SINK = "127.0.0.1:9"
MAX_EXEC_TIMEOUT = 10
MAX_VICTIMS = 20
# Path parameters aimed at a live resource of ours: (how to check it, where to make one, its id field).
RESOURCES = {
    "user_id": ("/v1/users/{}", "/v1/users", "user_id"),
    "project_id": ("/v1/projects/{}", "/v1/projects", "project_id"),
    "hook_id": ("/v1/webhooks/{}", "/v1/webhooks", "webhook_id"),
}
MAKE_BODY: dict[str, dict[str, Any]] = {"user_id": {}, "project_id": {}, "hook_id": {"url": f"http://{HOOK_SINK}/fuzz"}}


@dataclass
class Target:
    """The appliance and the resources the fuzzer is pointed at."""

    app: Appliance
    http: requests.Session
    victim: str = ""
    victim_token: str = ""
    throwaway_key: str = ""
    made: dict[str, str | None] = field(default_factory=dict)
    counter: int = 0
    victims_made: int = 0
    failures: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    # label -> status code -> count: shows how deep the cases reached (2xx) or where they stopped.
    statuses: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))

    @property
    def root(self) -> str:
        return self.app.api_url.removesuffix("/v1")

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.http.request(method, self.root + path, timeout=120, **kwargs)

    def new_victim(self) -> None:
        self.victims_made += 1
        r = self.api(
            "POST",
            "/v1/sandboxes",
            json={"template": "base", "timeout": 3600, "allow_internet_access": False, "metadata": {"fuzz": "victim"}},
        )
        assert r.status_code == 201, r.text
        data = r.json()["data"]
        self.victim, self.victim_token = data["sandbox_id"], data["envd_access_token"]

    def ensure_victim(self) -> bool:
        """The victim running (resumed or made anew); False once too many were made."""
        state = self.api("GET", f"/v1/sandboxes/{self.victim}/status").json().get("data", {}).get("status")
        if state == "running":
            return True
        if state == "paused" and self.api("POST", f"/v1/sandboxes/{self.victim}/resume").status_code == 200:
            return True
        if self.victims_made >= MAX_VICTIMS:
            return False
        if state not in (None, "terminated", "failed"):
            self.api("DELETE", f"/v1/sandboxes/{self.victim}")
        self.new_victim()
        return True

    def ensure(self, param: str) -> str | None:
        """A live resource of ours for a path parameter (made anew when a case deleted it)."""
        check, make, field_ = RESOURCES[param]
        current = self.made.get(param)
        if current and self.api("GET", check.format(current)).status_code == 200:
            return current
        self.counter += 1
        r = self.api(
            "POST", make, json={**MAKE_BODY[param], **({"name": f"fuzz-{self.counter}"} if param != "hook_id" else {})}
        )
        self.made[param] = r.json()["data"][field_] if r.status_code == 201 else None
        return self.made[param]


def _aim(target: Target, case: Any) -> None:
    """Point a generated case at real resources, and keep it from harming the run."""
    method, path = case.operation.method.upper(), case.operation.path
    params = case.path_parameters
    aimed = params is not None and "sandbox_id" in params and (method, path) != ("DELETE", "/v1/sandboxes/{sandbox_id}")
    if params is not None and aimed and target.ensure_victim():
        params["sandbox_id"] = target.victim
    if params is not None and "key_id" in params and path.startswith("/v1/api-keys/"):
        params["key_id"] = target.throwaway_key
    for name in RESOURCES:
        if params is not None and name in params and (made := target.ensure(name)) is not None:
            params[name] = made
    if params is not None and "template_id" in params:
        # A built-in: readable, and refused (403) to change or delete.
        params["template_id"] = "base"
    if path == "/v1/sandboxes/{sandbox_id}/wake":
        case.headers = {**(case.headers or {}), "X-Access-Token": target.victim_token}
    if path.startswith("/v1/webhooks") and isinstance(case.body, dict) and isinstance(case.body.get("url"), str):
        try:
            url = urlsplit(case.body["url"])
            usable = url.scheme.lower() in ("http", "https") and bool(url.hostname)
        except ValueError:
            usable = False  # not a URL at all: the appliance must refuse it as it is
        if usable:
            case.body["url"] = urlunsplit(("http", HOOK_SINK, url.path, url.query, ""))
    if "/exec" in path:
        for values in (case.body, case.query):
            if isinstance(values, dict) and isinstance(values.get("timeout"), int) and values["timeout"] > 0:
                values["timeout"] = min(values["timeout"], MAX_EXEC_TIMEOUT)
    if (method, path) == ("GET", "/v1/sandboxes/{sandbox_id}/files") and isinstance(case.query, dict):
        wanted = str(case.query.get("path", ""))
        # /dev/zero and friends never end.
        if wanted.lstrip("/").split("/")[0] in ("dev", "proc", "sys"):
            case.query["path"] = "/etc/hostname"


def _tidy(target: Target, case: Any, response: requests.Response) -> None:
    """Remove at once what a case made that costs resources."""
    if (case.operation.method.upper(), case.operation.path) == (
        "POST",
        "/v1/sandboxes",
    ) and response.status_code == 201:
        made = response.json()["data"]["sandbox_id"]
        target.api("DELETE", f"/v1/sandboxes/{made}")


def _exercise(target: Target, case: Any, mode: str, checks: list[Any]) -> None:
    """Send one case and check the answer; failures are collected, not raised (hypothesis
    would shrink, and one failure would hide the rest)."""
    label = f"{case.operation.method.upper()} {case.operation.path}"
    _aim(target, case)
    started = time.monotonic()
    try:
        response = case.call(base_url=target.root, session=target.http, verify=str(target.app.ca), timeout=120)
    except requests.RequestException as exc:
        target.failures[label].append(f"{mode}: no answer: {exc!r}")
        return
    finally:
        target.seconds[label] += time.monotonic() - started
    target.statuses[label][response.status_code] += 1
    _tidy(target, case, response)
    try:
        case.validate_response(response, checks=checks)
    except (FailureGroup, Failure) as exc:
        found = list(exc.exceptions) if isinstance(exc, FailureGroup) else [exc]
        real = [f for f in found if not _whole_number_accepted(f, case)]
        if real and len(target.failures[label]) < 3:
            target.failures[label].append(f"{mode}: " + "\n".join(str(f) for f in real)[:3000])


def _whole_number_accepted(failure: Failure, case: Any) -> bool:
    """A "negative" case whose only fault is 1.0 where an integer goes, which the appliance takes
    as 1 (schemas.int_field), as JSON Schema itself does: since draft 6 an integer is any number
    whose fractional part is zero. Not a bug in the API, so not reported."""
    return failure.code == "ST201" and "became number" in failure.message and _has_whole_float(case.body)


def _has_whole_float(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, dict):
        return any(_has_whole_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_whole_float(v) for v in value)
    return False


def _settings(examples: int) -> hypothesis.settings:
    return hypothesis.settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def _fuzz(target: Target, operation: Any, mode: GenerationMode) -> None:
    label = f"{operation.method.upper()} {operation.path}"
    checks = [*CHECKS, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS

    @_settings(FEWER.get((operation.method.upper(), operation.path), EXAMPLES))
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        _exercise(target, case, str(mode), checks)

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        # Nothing to get wrong: an operation without parameters or body has no negative cases.
        assert mode is GenerationMode.NEGATIVE, label


def _documented_examples(target: Target, operation: Any) -> None:
    """The document's own examples, each once: valid requests that reach past validation."""
    strategies = operation.get_strategies_from_examples()
    if not strategies:
        return

    @_settings(2 * len(strategies))
    @hypothesis.given(case=st.one_of(strategies))
    def run(case: Any) -> None:
        _exercise(target, case, "example", CHECKS)

    run()


def _cleanup_templates(target: Target) -> None:
    listed = target.api("GET", "/v1/templates", params={"limit": 1000}).json()["data"]["templates"]
    for template in listed:
        if not template["builtin"]:
            target.api("DELETE", f"/v1/templates/{template['template_id']}")


@pytest.fixture
def target(appliance: Appliance) -> Target:
    http = requests.Session()
    # Not the environment's CA bundle or proxies: the appliance's own CA, on loopback.
    http.trust_env = False
    http.verify = str(appliance.ca)
    http.headers["X-API-KEY"] = appliance.api_key
    t = Target(app=appliance, http=http)
    t.new_victim()
    r = t.api("POST", "/v1/api-keys", json={"name": "fuzz throwaway"})
    assert r.status_code == 201, r.text
    t.throwaway_key = r.json()["data"]["key_id"]
    return t


def test_fuzz_finds_no_server_error_and_no_undocumented_answer(target: Target) -> None:
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{target.app.api_url}/openapi.json", verify=str(target.app.ca), timeout=30)
    # Headers set here are the caller's: schemathesis neither generates nor mutates them, so a
    # negative case is never "invalid" merely for a key that is then sent anyway.
    schema.config.update(headers={"X-API-KEY": target.app.api_key})
    results = list(schema.get_all_operations())
    assert [r.err() for r in results if isinstance(r, Err)] == []
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert len(operations) > 50
    try:
        for operation in operations:
            _documented_examples(target, operation)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz(target, operation, mode)
    finally:
        _cleanup_templates(target)
    elapsed = time.monotonic() - started
    slowest = sorted(target.seconds.items(), key=lambda kv: -kv[1])[:8]
    print(f"\nfuzzed {len(operations)} operations in {elapsed:.0f} s; victims made: {target.victims_made}")
    print("slowest:", ", ".join(f"{label} {s:.1f}s" for label, s in slowest))
    for label, counts in target.statuses.items():
        print(f"  {label}: " + " ".join(f"{code}x{n}" for code, n in sorted(counts.items())))
    report = "\n\n".join(f"== {label}\n" + "\n--\n".join(found) for label, found in target.failures.items())
    assert not target.failures, f"{len(target.failures)} operations failed:\n{report}"


# -- authentication bypass ----------------------------------------------------------------------


def _minimal_path(path: str, target: Target) -> str:
    """The path with real ids of ours, so a bypass would reach a real resource."""
    values = {
        "sandbox_id": target.victim,
        "user_id": "usr-admin",
        "key_id": target.throwaway_key,
        "project_id": "default",
        "template_id": "base",
        "hook_id": "whk-none",
        "note_id": "ntf-none",
        "port": "3000",
        "token_id": "tok-none",
        "period": time.strftime("%Y-%m", time.gmtime()),
    }
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, path
    return path


def test_every_authenticated_operation_refuses_a_request_without_a_valid_key(target: Target) -> None:
    doc = target.api("GET", "/v1/openapi.json").json()
    # Served with this appliance's own address, which the paths (/v1/...) are relative to.
    assert doc["servers"][0]["url"] == target.root
    # A key that was real once: made, then disabled; and one of a disabled user.
    made = target.api("POST", "/v1/api-keys", json={"name": "disabled"}).json()["data"]
    assert target.api("PATCH", f"/v1/api-keys/{made['key_id']}", json={"disabled": True}).status_code == 200
    user = target.api("POST", "/v1/users", json={"name": "gone-user"}).json()["data"]
    assert target.api("PATCH", f"/v1/users/{user['user_id']}", json={"disabled": True}).status_code == 200
    bad_keys: dict[str, str | None] = {
        "no key": None,
        "empty key": "",
        "unknown key": "sk-" + "x" * 43,
        "disabled key": made["api_key"],
        "disabled user's key": user["first_key"]["api_key"],
    }
    anonymous = requests.Session()
    anonymous.trust_env = False
    anonymous.verify = str(target.app.ca)
    checked = 0
    wrong: list[str] = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in ("get", "put", "post", "patch", "delete"):
                continue
            security = op.get("security", doc["security"])
            if security == []:
                continue
            url = target.root + _minimal_path(path, target)
            body: dict[str, Any] | None = {} if "requestBody" in op else None
            for what, key in bad_keys.items():
                headers = {} if key is None else {"X-API-KEY": key}
                r = anonymous.request(method.upper(), url, headers=headers, json=body, timeout=60)
                checked += 1
                if r.status_code != 401 or r.json().get("success") is not False or not r.json().get("error"):
                    wrong.append(f"{method.upper()} {path} with {what}: {r.status_code} {r.text[:200]}")
    # The wake route takes the sandbox's token instead: an API key is no substitute.
    wake = f"{target.root}/v1/sandboxes/{target.victim}/wake"
    for headers in ({}, {"X-Access-Token": "wrong"}, {"X-API-KEY": target.app.api_key}):
        r = anonymous.post(wake, headers=headers, timeout=60)
        checked += 1
        if r.status_code != 401:
            wrong.append(f"POST wake with {sorted(headers)}: {r.status_code} {r.text[:200]}")
    # The gateway's traffic reports take a signature, not a key.
    r = anonymous.post(
        f"{target.root}/v1/internal/traffic",
        headers={"X-API-KEY": target.app.api_key},
        json={"traffic": {target.victim: [1, 1]}},
        timeout=60,
    )
    checked += 1
    if r.status_code != 401:
        wrong.append(f"POST /v1/internal/traffic with an API key but no signature: {r.status_code}")
    print(f"\n{checked} unauthenticated requests")
    assert checked > 250
    assert not wrong, "\n".join(wrong)
    # The victim is still there and ours: nothing above reached it.
    assert target.api("GET", f"/v1/sandboxes/{target.victim}").status_code == 200


# -- found by the run above: an early answer stuck the keep-alive connection -------------------


def _early_401_then_next_request(sock: Any, host: bytes) -> bytes:
    """POST whose body comes 50 ms after its headers (as requests sends it) and is answered
    401 before it is read; then a second request on the same connection. Its status line."""
    sock.sendall(b"POST /v1/users HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: application/json\r\n")
    sock.sendall(b"Content-Length: 2\r\n\r\n")
    time.sleep(0.05)
    sock.sendall(b"{}")
    answers = b""
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    deadline = time.monotonic() + 10
    while answers.count(b"HTTP/1.1 ") < 2 and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answers += chunk
    return answers


def test_an_answer_before_the_body_leaves_the_connection_usable(appliance: Appliance) -> None:
    # Hypercorn itself, on the control plane's socket: deterministic (it hung every time).
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(10)
        raw.connect(str(appliance.data_dir / "api.sock"))
        answers = _early_401_then_next_request(raw, b"api")
    assert answers.startswith(b"HTTP/1.1 401"), answers[:200]
    assert b"HTTP/1.1 200" in answers, answers[-300:]
    # And through the gateway, as clients see it.
    context = ssl.create_default_context(cafile=str(appliance.ca))
    with (
        socket.create_connection(("127.0.0.1", appliance.port), timeout=10) as tcp,
        context.wrap_socket(tcp, server_hostname="api.sbx.localhost") as tls,
    ):
        answers = _early_401_then_next_request(tls, b"api.sbx.localhost")
    assert answers.startswith(b"HTTP/1.1 401"), answers[:200]
    assert b"HTTP/1.1 200" in answers, answers[-300:]
