"""Bugs the schema-driven fuzzer (tests/e2e/test_schemathesis.py) found, kept fixed."""

from __future__ import annotations

import pytest

from tests.unit.test_api import Api, api  # noqa: F401 - the fixture


@pytest.mark.parametrize(
    "url",
    [
        "http://[",  # urlsplit: Invalid IPv6 URL
        "HTtP://a]o@b",  # the same, from the fuzzer
        "http://\uff03x/",  # urlsplit: invalid characters under NFKC normalization
        "http://a:99999999/",  # a port out of range
        "http://a\nb/",  # not printable: no request could carry it
    ],
)
async def test_a_malformed_webhook_url_is_a_400_not_a_crash(api: Api, url: str) -> None:  # noqa: F811
    status, payload = await api.call("POST", "/v1/webhooks", body={"url": url})
    assert status == 400, payload
    assert payload["code"] == "invalid_field"
    status, payload = await api.call("POST", "/v1/webhooks", body={"url": "http://127.0.0.1:9/hook"})
    assert status == 201, payload
    hook = payload["data"]["webhook_id"]
    status, payload = await api.call("PATCH", f"/v1/webhooks/{hook}", body={"url": url})
    assert status == 400, payload


@pytest.mark.parametrize(
    "start",
    [
        "999999999999999",  # epoch ms in the year 33658: iso() raised "year is out of range"
        "9999-12-31T23:59:59-23:59",  # past the year 9999 once in UTC
        "0001-01-01T00:00:00+23:59",  # before the year 1 once in UTC
        "1969-12-31T23:59:59Z",
    ],
)
async def test_times_no_date_can_show_are_a_400_not_a_crash(api: Api, start: str) -> None:  # noqa: F811
    sandbox = (await api.create())["sandbox_id"]
    for path in ("/v1/usage", f"/v1/sandboxes/{sandbox}/usage", f"/v1/sandboxes/{sandbox}/metrics"):
        for name in ("start", "end"):
            status, payload = await api.call("GET", path, query={name: start})
            assert status == 400, (path, payload)
            assert payload["code"] == "invalid_query"
    status, payload = await api.call("GET", "/v1/usage", query={"start": "8999-01-01T00:00:00Z"})
    assert status == 200, payload


@pytest.mark.parametrize("timeout", ["\u00b2", "\u0663", "1\u00b9", "9" * 5000])
async def test_a_non_ascii_digit_timeout_on_exec_stream_is_a_400(api: Api, timeout: str) -> None:  # noqa: F811
    # str.isdigit() accepts superscripts and other scripts' digits, which int() refuses, and
    # int() refuses more than 4300 digits.
    sandbox = (await api.create())["sandbox_id"]
    status, payload = await api.call(
        "GET", f"/v1/sandboxes/{sandbox}/exec/stream", query={"cmd": "ls", "timeout": timeout}
    )
    assert status == 400, payload
    assert payload["code"] == "invalid_field"


@pytest.mark.parametrize("tail", ["000001" + "9" * 5000, "0000019999999", "1" + "0" * 6])
async def test_a_huge_log_tail_is_a_400(api: Api, tail: str) -> None:  # noqa: F811
    # Only the first six digits were bounded; int() of the rest raised past 4300 digits.
    sandbox = (await api.create())["sandbox_id"]
    status, payload = await api.call("GET", f"/v1/sandboxes/{sandbox}/logs", query={"tail": tail})
    assert status == 400, payload
    status, payload = await api.call("GET", f"/v1/sandboxes/{sandbox}/logs", query={"tail": "000010"})
    assert status == 200, payload


def test_terminal_sizes_of_thousands_of_digits_are_capped() -> None:
    from controlplane.api.terminal import _size

    assert _size("9" * 5000, 80) == 1000
    assert _size("120", 80) == 120
    assert _size("0", 80) == 1
    assert _size("\u00b2", 80) == 80
