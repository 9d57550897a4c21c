"""Request parsing and response shaping of the /v1 sandbox routes."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from controlplane.api.schemas import (
    DEFAULT_TIMEOUT,
    MAX_TIMEOUT,
    Exposure,
    HostLimits,
    Page,
    iso,
    pagination_json,
    parse_create,
    parse_is_async,
    parse_metadata_filter,
    parse_optional_timeout,
    parse_page,
    parse_states,
    parse_time,
    parse_timeout,
    sandbox_json,
    status_json,
)
from controlplane.errors import BadRequest
from controlplane.lifecycle.states import State
from controlplane.records import CreateRequest, SandboxRecord

LIMITS = HostLimits(max_cpu_count=4, max_memory_mb=8192, max_storage_gb=100)


def bad(body: Any, *words: str) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse_create(body, LIMITS)
    assert info.value.status == 400
    for word in words:
        assert word in info.value.message, (word, info.value.message)
    return info.value


# -- parse_create: defaults and nulls ------------------------------------------------------

NULLABLE = [
    "template",
    "template_id",
    "name",
    "timeout",
    "cpu_count",
    "memory_mb",
    "storage_gb",
    "metadata",
    "env_vars",
    "allow_internet_access",
    "auto_pause",
    "secure",
    "is_async",
    "custom_ports",
    "runtime",
    "object_storage",
    "net_proxy_country",
    "locality",
    "s3fs_executable_path",
]


@pytest.mark.parametrize("body", [None, {}])
def test_parse_create_defaults(body: Any) -> None:
    req = parse_create(body, LIMITS)
    assert req == CreateRequest(
        template="base",
        name=None,
        timeout=DEFAULT_TIMEOUT,
        cpu_count=1,
        memory_mb=512,
        storage_gb=0,
        metadata={},
        env_vars={},
        allow_internet_access=True,
        auto_pause=False,
        secure=True,
        is_async=False,
        custom_ports=[],
        # Left out: a template's own defaults may replace them.
        unset=frozenset({"cpu_count", "memory_mb"}),
    )
    assert req.timeout == 300


def test_parse_create_defaults_follow_host_limits() -> None:
    limits = HostLimits(max_cpu_count=8, max_memory_mb=4096, default_cpu_count=2, default_memory_mb=1024)
    req = parse_create({}, limits)
    assert (req.cpu_count, req.memory_mb) == (2, 1024)


def test_parse_create_explicit_nulls_everywhere_mean_defaults() -> None:
    assert parse_create(dict.fromkeys(NULLABLE), LIMITS) == parse_create({}, LIMITS)


@pytest.mark.parametrize("field", NULLABLE)
def test_parse_create_each_null_alone_is_accepted(field: str) -> None:
    assert parse_create({field: None}, LIMITS) == parse_create({}, LIMITS)


def test_parse_create_all_fields() -> None:
    req = parse_create(
        {
            "template": "base",
            "name": "my box",
            "timeout": 3600,
            "cpu_count": 4,
            "memory_mb": 8192,
            "storage_gb": 10,
            "metadata": {"owner": "me", "a.b": "c"},
            "env_vars": {"FOO": "bar", "_X1": ""},
            "allow_internet_access": False,
            "auto_pause": True,
            "secure": False,
            "is_async": True,
            "custom_ports": [{"port": 3000, "name": "web"}, {"port": 53, "name": "dns", "protocol": "tcp"}],
        },
        LIMITS,
    )
    assert req.name == "my box"
    assert (req.timeout, req.cpu_count, req.memory_mb, req.storage_gb) == (3600, 4, 8192, 10)
    assert req.metadata == {"owner": "me", "a.b": "c"}
    assert req.env_vars == {"FOO": "bar", "_X1": ""}
    assert (req.allow_internet_access, req.auto_pause, req.secure, req.is_async) == (False, True, False, True)
    assert [p.stored(None) for p in req.custom_ports] == [
        {"port": 3000, "name": "web", "protocol": "http", "access": "public", "host_port": None},
        {"port": 53, "name": "dns", "protocol": "tcp", "access": "public", "host_port": None},
    ]


@pytest.mark.parametrize("body", [[], [1], "x", 5, True, 1.5])
def test_parse_create_body_must_be_an_object(body: Any) -> None:
    bad(body, "request body", "object")


# -- parse_create: integers --------------------------------------------------------------

INT_FIELDS = ["timeout", "cpu_count", "memory_mb", "storage_gb"]


@pytest.mark.parametrize("field", INT_FIELDS)
@pytest.mark.parametrize("value", ["300", "", [], {}, True, False, 1.5, math.inf, -math.inf, math.nan])
def test_parse_create_wrong_number_types_name_the_field(field: str, value: Any) -> None:
    err = bad({field: value}, field)
    assert err.code in ("invalid_field", "out_of_range")


@pytest.mark.parametrize("field", INT_FIELDS)
def test_parse_create_bool_is_not_an_int(field: str) -> None:
    # True == 1 in Python; on the wire it is not a number.
    bad({field: True}, field, "integer")


def test_parse_create_whole_floats_accepted() -> None:
    req = parse_create({"timeout": 300.0, "cpu_count": 2.0, "memory_mb": 1024.0, "storage_gb": 0.0}, LIMITS)
    assert (req.timeout, req.cpu_count, req.memory_mb, req.storage_gb) == (300, 2, 1024, 0)
    assert type(req.timeout) is int
    assert type(req.memory_mb) is int


@pytest.mark.parametrize("field", INT_FIELDS)
def test_parse_create_fractional_floats_refused(field: str) -> None:
    bad({field: 300.5}, field, "whole")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": -300.0}, "timeout"),
        ({"timeout": MAX_TIMEOUT + 1}, "timeout"),
        ({"timeout": 10**30}, "timeout"),
        ({"timeout": 1e300}, "timeout"),
        ({"memory_mb": 127}, "memory_mb"),
        ({"memory_mb": 0}, "memory_mb"),
        ({"memory_mb": -512}, "memory_mb"),
        ({"memory_mb": 8193}, "memory_mb"),
        ({"memory_mb": 10**12}, "memory_mb"),
        ({"cpu_count": 0}, "cpu_count"),
        ({"cpu_count": 5}, "cpu_count"),
        ({"cpu_count": -1}, "cpu_count"),
        ({"storage_gb": -1}, "storage_gb"),
        ({"storage_gb": 101}, "storage_gb"),
    ],
)
def test_parse_create_out_of_range(body: dict[str, Any], field: str) -> None:
    err = bad(body, field, "between")
    assert err.code == "out_of_range"


def test_parse_create_range_edges_accepted() -> None:
    low = parse_create({"timeout": 1, "memory_mb": 128, "cpu_count": 1}, LIMITS)
    high = parse_create({"timeout": MAX_TIMEOUT, "memory_mb": 8192, "cpu_count": 4, "storage_gb": 100}, LIMITS)
    assert (low.timeout, low.memory_mb, low.cpu_count) == (1, 128, 1)
    assert (high.timeout, high.memory_mb, high.cpu_count, high.storage_gb) == (MAX_TIMEOUT, 8192, 4, 100)


# -- parse_create: booleans and strings ---------------------------------------------------


@pytest.mark.parametrize("field", ["allow_internet_access", "auto_pause", "secure", "is_async"])
@pytest.mark.parametrize("value", [0, 1, "true", "false", [], {}])
def test_parse_create_bools_must_be_json_booleans(field: str, value: Any) -> None:
    bad({field: value}, field, "true or false")


@pytest.mark.parametrize("value", ["", 5, ["x"], "x" * 257, "a\x00b"])
def test_parse_create_bad_name(value: Any) -> None:
    bad({"name": value}, "name")


# -- parse_create: maps -----------------------------------------------------------------


@pytest.mark.parametrize("field", ["metadata", "env_vars"])
@pytest.mark.parametrize("value", [[], "a=b", 5, True, [["a", "b"]]])
def test_parse_create_maps_must_be_objects(field: str, value: Any) -> None:
    bad({field: value}, field)


@pytest.mark.parametrize("value", [5, 1.5, True, None, ["x"], {"x": "y"}])
def test_parse_create_metadata_values_must_be_strings(value: Any) -> None:
    bad({"metadata": {"owner": value}}, "metadata.owner", "string")


@pytest.mark.parametrize(
    "metadata",
    [{"": "x"}, {"k" * 257: "x"}, {"k": "v" * 4097}, {"k\x00": "v"}, {"k": "v\x00"}],
)
def test_parse_create_metadata_sizes_and_nul(metadata: dict[str, str]) -> None:
    bad({"metadata": metadata}, "metadata")


def test_parse_create_metadata_count_limit() -> None:
    assert len(parse_create({"metadata": {f"k{i}": "v" for i in range(64)}}, LIMITS).metadata) == 64
    bad({"metadata": {f"k{i}": "v" for i in range(65)}}, "metadata", "64")


def test_parse_create_env_var_count_limit() -> None:
    assert len(parse_create({"env_vars": {f"K{i}": "v" for i in range(256)}}, LIMITS).env_vars) == 256
    bad({"env_vars": {f"K{i}": "v" for i in range(257)}}, "env_vars", "256")


@pytest.mark.parametrize("name", ["A", "_", "foo_BAR_9", "PATH", "a1"])
def test_parse_create_env_var_names_accepted(name: str) -> None:
    assert parse_create({"env_vars": {name: "v"}}, LIMITS).env_vars == {name: "v"}


@pytest.mark.parametrize("name", ["1A", "A-B", "A B", "A=B", "A.B", "É", "A\n", "A\nB", "$A"])
def test_parse_create_env_var_names_refused(name: str) -> None:
    bad({"env_vars": {name: "v"}}, "env_vars", "variable name")


def test_parse_create_env_var_value_must_be_string() -> None:
    bad({"env_vars": {"A": 1}}, "env_vars.A", "string")


# -- parse_create: custom ports -----------------------------------------------------------


@pytest.mark.parametrize(
    ("ports", "words"),
    [
        ("3000", ("custom_ports",)),
        ({"port": 3000}, ("custom_ports",)),
        ([3000], ("custom_ports[0]", "object")),
        ([None], ("custom_ports[0]", "object")),
        ([{"name": "web"}], ("custom_ports[0].port", "required")),
        ([{"port": 0, "name": "web"}], ("port",)),
        ([{"port": 65536, "name": "web"}], ("port",)),
        ([{"port": -1, "name": "web"}], ("port",)),
        ([{"port": True, "name": "web"}], ("port",)),
        ([{"port": "3000", "name": "web"}], ("port",)),
        ([{"port": 3000.5, "name": "web"}], ("port",)),
        ([{"port": 3000, "name": ""}], ("custom_ports[0].name",)),
        ([{"port": 3000, "name": "Web"}], ("custom_ports[0].name",)),
        ([{"port": 3000, "name": "-web"}], ("custom_ports[0].name",)),
        ([{"port": 3000, "name": "web-"}], ("custom_ports[0].name",)),
        ([{"port": 3000, "name": "w" * 16}], ("custom_ports[0].name",)),
        ([{"port": 3000, "name": "web\n"}], ("custom_ports[0].name",)),
        ([{"port": 3000, "name": 5}], ("custom_ports[0].name",)),
        ([{"port": 3000, "name": "web", "protocol": "SCTP"}], ("custom_ports[0].protocol",)),
        ([{"port": 3000, "name": "web", "protocol": "UDP"}], ("custom_ports[0].protocol", "UDP")),
        ([{"port": 3000, "name": "web", "protocol": "Http"}], ("custom_ports[0].protocol",)),
        ([{"port": 3000, "name": "web"}, {"port": 3000, "name": "api"}], ("custom_ports[1]", "already declared")),
        ([{"port": 3000, "name": "web"}, {"port": 3001, "name": "web"}], ("custom_ports[1]", "already used")),
    ],
)
def test_parse_create_custom_ports_refused(ports: Any, words: tuple[str, ...]) -> None:
    bad({"custom_ports": ports}, *words)


def test_parse_create_custom_ports_edges_and_defaults() -> None:
    req = parse_create(
        {
            "custom_ports": [
                {"port": 1, "name": "a"},
                {"port": 65535.0, "name": "b" * 15, "protocol": None},
                {"port": 8080, "name": "x-1", "protocol": "TCP"},
                {"port": 8081},
            ]
        },
        LIMITS,
    )
    assert [(p.port, p.name, p.protocol) for p in req.custom_ports] == [
        (1, "a", "http"),
        (65535, "b" * 15, "http"),
        (8080, "x-1", "http"),
        (8081, "port-8081", "http"),
    ]
    assert parse_create({"custom_ports": []}, LIMITS).custom_ports == []


# -- parse_create: unsupported fields and template ------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("object_storage", {"uri": "s3://bucket"}),
        ("net_proxy_country", "us"),
        ("locality", {"region": "eu"}),
        ("s3fs_executable_path", "/usr/bin/s3fs"),
        ("net_proxy_country", ""),
        ("locality", 0),
        ("locality", False),
    ],
)
def test_parse_create_unsupported_fields_with_values_refused(field: str, value: Any) -> None:
    err = bad({field: value}, field, "not supported")
    assert err.code == "unsupported"


@pytest.mark.parametrize("field", ["object_storage", "net_proxy_country", "locality", "s3fs_executable_path"])
@pytest.mark.parametrize("empty", [None, {}, []])
def test_parse_create_unsupported_fields_empty_fine(field: str, empty: Any) -> None:
    assert parse_create({field: empty}, LIMITS).template == "base"


@pytest.mark.parametrize(
    ("body", "template"),
    [
        ({"template": "code-interpreter"}, "code-interpreter"),
        ({"template_id": "tpl-abc"}, "tpl-abc"),
        ({"template": "a", "template_id": "b"}, "a"),
        ({"template": None, "template_id": "tpl-abc"}, "tpl-abc"),
        ({"template": "base", "template_id": None}, "base"),
        ({"template": None, "template_id": None}, "base"),
    ],
)
def test_parse_create_template_and_template_id(body: dict[str, Any], template: str) -> None:
    assert parse_create(body, LIMITS).template == template


@pytest.mark.parametrize(
    "body",
    [{"template": ""}, {"template": 5}, {"template": ["base"]}, {"template": "t" * 129}, {"template_id": 1}],
)
def test_parse_create_bad_template(body: dict[str, Any]) -> None:
    bad(body, "template")


# -- parse_timeout and friends ------------------------------------------------------------


@pytest.mark.parametrize(("body", "expected"), [({"timeout": 60}, 60), ({"timeout": 60.0}, 60), ({"timeout": 1}, 1)])
def test_parse_timeout(body: Any, expected: int) -> None:
    assert parse_timeout(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        None,
        {},
        {"timeout": None},
        {"timeout": 0},
        {"timeout": -5},
        {"timeout": 86_401},
        {"timeout": "60"},
        {"timeout": True},
        {"timeout": 60.5},
        [60],
        60,
    ],
)
def test_parse_timeout_refused(body: Any) -> None:
    with pytest.raises(BadRequest):
        parse_timeout(body)


def test_parse_optional_timeout() -> None:
    assert parse_optional_timeout(None) is None
    assert parse_optional_timeout({}) is None
    assert parse_optional_timeout({"timeout": None}) is None
    assert parse_optional_timeout({"timeout": 30}) == 30
    with pytest.raises(BadRequest):
        parse_optional_timeout({"timeout": 0})
    with pytest.raises(BadRequest):
        parse_optional_timeout("x")


def test_parse_is_async() -> None:
    assert parse_is_async(None) is False
    assert parse_is_async({"is_async": True}) is True
    assert parse_is_async({"is_async": None}) is False
    with pytest.raises(BadRequest):
        parse_is_async({"is_async": "yes"})
    with pytest.raises(BadRequest):
        parse_is_async([])


# -- parse_page ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, Page(page=1, limit=100, offset=0)),
        ({"page": "", "limit": ""}, Page(page=1, limit=100, offset=0)),
        ({"page": "3", "limit": "10"}, Page(page=3, limit=10, offset=20)),
        ({"page_size": "25", "page": "2"}, Page(page=2, limit=25, offset=25)),
        ({"limit": "10", "offset": "35"}, Page(page=4, limit=10, offset=35)),
        ({"limit": "10", "skip": "20"}, Page(page=3, limit=10, offset=20)),
        # An explicit offset wins over page.
        ({"limit": "10", "page": "9", "offset": "0"}, Page(page=1, limit=10, offset=0)),
        ({"limit": "1000"}, Page(page=1, limit=1000, offset=0)),
        ({"limit": "1"}, Page(page=1, limit=1, offset=0)),
        ({"limit": "5", "page_size": "7"}, Page(page=1, limit=5, offset=0)),
    ],
)
def test_parse_page(args: dict[str, str], expected: Page) -> None:
    assert parse_page(args) == expected


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"limit": " 5"}, "limit"),
        ({"page_size": "0"}, "page_size"),
        ({"page": "0"}, "page"),
        ({"page": "-2"}, "page"),
        ({"page": "1000001"}, "page"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "x"}, "offset"),
        ({"offset": str(10**9 + 1)}, "offset"),
        ({"skip": "abc"}, "skip"),
        ({"limit": "²"}, "limit"),  # isdigit() but not int()-able
        ({"limit": "٣"}, "limit"),  # Arabic-Indic three
        ({"offset": "9" * 5000}, "offset"),  # int() refuses > 4300 digits
    ],
)
def test_parse_page_refused(args: dict[str, str], name: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_page(args)
    assert name in info.value.message
    assert info.value.code == "invalid_query"


# -- parse_states -------------------------------------------------------------------------


def test_parse_states_default_is_everything_but_terminated() -> None:
    expected = frozenset(State) - {State.TERMINATED}
    assert parse_states(None) == expected
    assert parse_states("") == expected
    assert State.FAILED in expected


def test_parse_states_list() -> None:
    assert parse_states("running") == {State.RUNNING}
    assert parse_states("running, paused") == {State.RUNNING, State.PAUSED}
    assert parse_states("terminated") == {State.TERMINATED}


@pytest.mark.parametrize("raw", ["bogus", "running,bogus", "RUNNING", "running,", ","])
def test_parse_states_refused(raw: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_states(raw)
    assert "running" in info.value.message  # it lists the valid ones


# -- parse_metadata_filter ----------------------------------------------------------------


def sdk_metadata(metadata: dict[str, str]) -> str:
    """What the official SDKs put in the one `metadata` query parameter."""
    return urlencode({quote(k): quote(v) for k, v in metadata.items()})


@pytest.mark.parametrize(
    "metadata",
    [
        {"env": "prod"},
        {"env": "prod", "team": "core"},
        {"a.b": "c.d"},
        {"team name": "the core/team"},
        {"k&x=1": "v&y=2"},
        {"q": 'it\'s "quoted"'},
        {"pct": "100%"},
        {"plus": "a+b"},
        {"ünï": "cödé"},
        {"empty": ""},
    ],
)
def test_parse_metadata_filter_reads_what_the_sdk_sends(metadata: dict[str, str]) -> None:
    assert parse_metadata_filter(sdk_metadata(metadata)) == metadata


def test_parse_metadata_filter_none() -> None:
    assert parse_metadata_filter(None) is None
    assert parse_metadata_filter("") is None


@pytest.mark.parametrize("raw", ["novalue", "a=b&c", "&&"])
def test_parse_metadata_filter_refused(raw: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_metadata_filter(raw)
    assert info.value.code == "invalid_query"


# -- parse_time ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1700000000000", 1_700_000_000.0),
        ("1700000000500", 1_700_000_000.5),
        ("0", 0.0),
        ("2023-11-14T22:13:20Z", 1_700_000_000.0),
        ("2023-11-14T22:13:20+00:00", 1_700_000_000.0),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000.0),
        ("2023-11-14T22:13:20", 1_700_000_000.0),  # naive means UTC
        ("2023-11-14T22:13:20.250Z", 1_700_000_000.25),
    ],
)
def test_parse_time(raw: str, expected: float) -> None:
    assert parse_time(raw, "start") == pytest.approx(expected)


def test_parse_time_empty() -> None:
    assert parse_time(None, "start") is None
    assert parse_time("", "start") is None


@pytest.mark.parametrize("raw", ["yesterday", "-5", "1.5", "2023-13-01", "²", "1" * 5000, "9" * 400, "12:00 PM"])
def test_parse_time_refused(raw: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_time(raw, "end")
    assert "end" in info.value.message


def test_iso() -> None:
    assert iso(None) is None
    assert iso(1_700_000_000.0) == "2023-11-14T22:13:20Z"
    assert datetime.fromisoformat(iso(1_700_000_000.5) or "").timestamp() == 1_700_000_000.5


# -- sandbox_json -------------------------------------------------------------------------

NOW = 1_700_000_000.0
SBX = "sbx-abcd1234abcd1234abcd"


def record(**changes: Any) -> SandboxRecord:
    fields: dict[str, Any] = {
        "id": SBX,
        "template_id": "base",
        "state": State.RUNNING,
        "container_id": "c" * 64,
        "ip": "10.99.0.2",
        "cpu_count": 2,
        "memory_mb": 1024,
        "storage_gb": 5,
        "timeout": 300,
        "metadata": {"owner": "me"},
        "created_at": NOW - 100,
        "updated_at": NOW - 90,
        "started_at": NOW - 90,
        "timeout_at": NOW + 210,
    }
    fields.update(changes)
    return SandboxRecord(**fields)


def exposure(port: int | None = 8443) -> Exposure:
    return Exposure(domain="sbx.localhost", public_port=port, access_token="sbt_token")


SDK_KEYS = {
    "sandbox_id",
    "template_id",
    "status",
    "created_at",
    "started_at",
    "cpu_count",
    "memory_mb",
    "timeout",
    "metadata",
    "sandbox_domain",
    "envd_access_token",
}


def test_sandbox_json_has_what_the_python_sdk_reads() -> None:
    data = sandbox_json(record(), exposure(), NOW)
    assert data.keys() >= SDK_KEYS
    assert data["sandbox_id"] == SBX
    assert data["template_id"] == "base"
    assert data["status"] == "running"
    assert data["state"] == "running"
    assert data["cpu_count"] == 2
    assert data["memory_mb"] == 1024
    assert data["timeout"] == 300
    assert data["metadata"] == {"owner": "me"}
    assert data["envd_access_token"] == "sbt_token"
    assert data["created_at"] == iso(NOW - 100)
    assert data["started_at"] == iso(NOW - 90)
    assert data["timeout_at"] == iso(NOW + 210)
    assert data["uptime"] == 90
    assert data["remaining_seconds"] == 210
    for key in ("created_at", "started_at", "timeout_at"):
        assert datetime.fromisoformat(data[key]).tzinfo is not None


@pytest.mark.parametrize(
    ("port", "domain"),
    [
        (8443, f"{SBX}.sbx.localhost:8443"),
        (443, f"{SBX}.sbx.localhost"),
        (None, f"{SBX}.sbx.localhost"),
        (80, f"{SBX}.sbx.localhost:80"),
    ],
)
def test_sandbox_domain_has_no_scheme_and_no_443(port: int | None, domain: str) -> None:
    value = sandbox_json(record(), exposure(port), NOW)["sandbox_domain"]
    assert value == domain
    assert "://" not in value
    assert not value.endswith(":443")


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (State.STARTING, "running"),
        (State.RUNNING, "running"),
        (State.PAUSING, "paused"),
        (State.PAUSED, "paused"),
        (State.RESUMING, "running"),
        (State.TERMINATING, "terminated"),
        (State.TERMINATED, "terminated"),
        (State.FAILED, "terminated"),
    ],
)
def test_sandbox_json_status_is_one_the_sdk_parses(state: State, status: str) -> None:
    data = sandbox_json(record(state=state), exposure(), NOW)
    assert data["status"] == status
    assert data["status"] in {"running", "paused", "terminated"}
    assert data["state"] == state.value


def test_sandbox_json_not_running_has_no_uptime_or_remaining() -> None:
    data = sandbox_json(record(state=State.PAUSED, paused_at=NOW - 10), exposure(), NOW)
    assert data["uptime"] == 0
    assert data["remaining_seconds"] is None
    assert data["paused_at"] == iso(NOW - 10)


def test_sandbox_json_expired_remaining_is_zero() -> None:
    assert sandbox_json(record(timeout_at=NOW - 5), exposure(), NOW)["remaining_seconds"] == 0


def test_sandbox_json_is_json_serialisable() -> None:
    import json

    data = sandbox_json(record(custom_ports=[{"port": 3000, "name": "web", "protocol": "TCP"}]), exposure(), NOW)
    assert json.loads(json.dumps(data)) == data
    # A row from before protocols were http/tcp/tls reads in today's shape.
    assert data["custom_ports"] == [
        {"port": 3000, "name": "web", "protocol": "http", "access": "public", "host_port": None}
    ]


def test_status_json_is_exact() -> None:
    data = status_json(record(state=State.PAUSING))
    assert data["sandbox_id"] == SBX
    assert data["status"] == "pausing"


# -- pagination_json ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page", "total", "pages"),
    [
        (Page(page=1, limit=10, offset=0), 0, 0),
        (Page(page=1, limit=10, offset=0), 1, 1),
        (Page(page=1, limit=10, offset=0), 10, 1),
        (Page(page=2, limit=10, offset=10), 11, 2),
        (Page(page=1, limit=1, offset=0), 7, 7),
    ],
)
def test_pagination_json(page: Page, total: int, pages: int) -> None:
    assert pagination_json(page, total) == {
        "page": page.page,
        "limit": page.limit,
        "total": total,
        "total_pages": pages,
        "offset": page.offset,
    }


def test_iso_of_now_roundtrips_with_timezone() -> None:
    now = datetime.now(UTC).timestamp()
    assert parse_time(iso(now), "x") == pytest.approx(now, abs=1e-3)
