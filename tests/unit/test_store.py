"""SQLite persistence of sandboxes and API keys, in a temporary file."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controlplane.lifecycle.states import State
from controlplane.records import ApiKeyRecord, SandboxRecord
from controlplane.store import SandboxQuery, Store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "scalebox.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    yield s
    s.close()


def sandbox(n: int, **changes: Any) -> SandboxRecord:
    fields: dict[str, Any] = {
        "id": f"sbx-{n:08d}",
        "template_id": "base",
        "state": State.RUNNING,
        "cpu_count": 1,
        "memory_mb": 512,
        "storage_gb": 0,
        "timeout": 300,
        "created_at": 1000.0 + n,
        "updated_at": 1000.0 + n,
    }
    fields.update(changes)
    return SandboxRecord(**fields)


def full_record() -> SandboxRecord:
    return SandboxRecord(
        id="sbx-full0001",
        template_id="base",
        state=State.PAUSED,
        reason="because",
        container_id="c" * 64,
        ip="10.99.0.7",
        cpu_count=2,
        memory_mb=2048,
        storage_gb=3,
        timeout=600,
        auto_pause=True,
        allow_internet_access=False,
        secure=False,
        is_async=True,
        name="my box",
        metadata={"a.b": "c", 'q"k': "v", "ü": "é"},
        env_vars={"FOO": "bar"},
        custom_ports=[{"port": 3000, "name": "web", "protocol": "TCP"}],
        created_at=1.5,
        updated_at=2.5,
        started_at=3.5,
        timeout_at=4.5,
        paused_at=5.5,
        ended_at=None,
    )


def ids(records: list[SandboxRecord]) -> list[str]:
    return [r.id for r in records]


# -- sandboxes ----------------------------------------------------------------------------


def test_put_get_roundtrip_every_field(store: Store) -> None:
    rec = full_record()
    store.put_sandbox(rec)
    got = store.get_sandbox(rec.id)
    assert got == rec
    assert got is not None
    assert got.state is State.PAUSED
    assert type(got.auto_pause) is bool


def test_get_missing_is_none(store: Store) -> None:
    assert store.get_sandbox("sbx-nope") is None


def test_put_replaces_the_whole_row(store: Store) -> None:
    rec = sandbox(1, metadata={"a": "1"})
    store.put_sandbox(rec)
    store.put_sandbox(replace(rec, state=State.TERMINATED, metadata={}, ip=None, ended_at=9.0))
    got = store.get_sandbox(rec.id)
    assert got is not None
    assert got.state is State.TERMINATED
    assert got.metadata == {}
    assert got.ended_at == 9.0
    assert store.list_sandboxes(SandboxQuery())[1] == 1


def test_put_refuses_an_unknown_state(store: Store) -> None:
    with pytest.raises(ValueError):
        store.put_sandbox(sandbox(1, state="bogus"))
    assert store.get_sandbox(sandbox(1).id) is None


def test_delete(store: Store) -> None:
    store.put_sandbox(sandbox(1))
    store.put_sandbox(sandbox(2))
    store.delete_sandbox(sandbox(1).id)
    assert store.get_sandbox(sandbox(1).id) is None
    assert store.get_sandbox(sandbox(2).id) is not None
    store.delete_sandbox("sbx-never")  # missing is not an error


def test_persistence_across_reopen(db_path: Path) -> None:
    first = Store(db_path)
    first.put_sandbox(full_record())
    key = ApiKeyRecord(id="key-1", name="admin", secret_hash=b"h" * 32, prefix="sk-abcd", created_at=1.0)
    first.put_api_key(key)
    first.close()
    second = Store(db_path)
    try:
        assert second.get_sandbox("sbx-full0001") == full_record()
        assert second.api_key_by_hash(b"h" * 32) == key
        assert second.count_api_keys() == 1
    finally:
        second.close()


def test_sandboxes_in(store: Store) -> None:
    store.put_sandbox(sandbox(3, state=State.PAUSED))
    store.put_sandbox(sandbox(1, state=State.RUNNING))
    store.put_sandbox(sandbox(2, state=State.TERMINATED))
    store.put_sandbox(sandbox(4, state=State.RUNNING))
    assert ids(store.sandboxes_in([State.RUNNING])) == ["sbx-00000001", "sbx-00000004"]
    assert ids(store.sandboxes_in([State.RUNNING, State.PAUSED])) == ["sbx-00000001", "sbx-00000003", "sbx-00000004"]
    assert store.sandboxes_in([State.FAILED]) == []
    assert store.sandboxes_in(frozenset({State.TERMINATED}))[0].id == "sbx-00000002"


def test_sandboxes_in_nothing(store: Store) -> None:
    store.put_sandbox(sandbox(1))
    assert store.sandboxes_in([]) == []


# -- list_sandboxes -----------------------------------------------------------------------


def test_list_newest_first_with_total(store: Store) -> None:
    for n in range(1, 6):
        store.put_sandbox(sandbox(n))
    records, total = store.list_sandboxes(SandboxQuery())
    assert total == 5
    assert ids(records) == [f"sbx-{n:08d}" for n in (5, 4, 3, 2, 1)]


def test_list_pagination(store: Store) -> None:
    for n in range(1, 8):
        store.put_sandbox(sandbox(n))
    pages = [store.list_sandboxes(SandboxQuery(limit=3, offset=o)) for o in (0, 3, 6, 9)]
    assert [ids(r) for r, _ in pages] == [
        ["sbx-00000007", "sbx-00000006", "sbx-00000005"],
        ["sbx-00000004", "sbx-00000003", "sbx-00000002"],
        ["sbx-00000001"],
        [],
    ]
    assert {total for _, total in pages} == {7}


def test_list_ties_on_created_at_are_stable(store: Store) -> None:
    for n in (3, 1, 2):
        store.put_sandbox(sandbox(n, created_at=5.0))
    first, _ = store.list_sandboxes(SandboxQuery(limit=2, offset=0))
    second, _ = store.list_sandboxes(SandboxQuery(limit=2, offset=2))
    assert ids(first) + ids(second) == ["sbx-00000001", "sbx-00000002", "sbx-00000003"]


def test_list_state_filter(store: Store) -> None:
    store.put_sandbox(sandbox(1, state=State.RUNNING))
    store.put_sandbox(sandbox(2, state=State.PAUSED))
    store.put_sandbox(sandbox(3, state=State.TERMINATED))
    store.put_sandbox(sandbox(4, state=State.FAILED))
    records, total = store.list_sandboxes(SandboxQuery(states=frozenset({State.RUNNING, State.PAUSED})))
    assert (ids(records), total) == (["sbx-00000002", "sbx-00000001"], 2)
    records, total = store.list_sandboxes(SandboxQuery(states=frozenset({State.TERMINATED})))
    assert (ids(records), total) == (["sbx-00000003"], 1)
    records, total = store.list_sandboxes(SandboxQuery(states=frozenset()))
    assert (records, total) == ([], 0)


def test_list_state_filter_with_pagination_total(store: Store) -> None:
    for n in range(1, 11):
        store.put_sandbox(sandbox(n, state=State.RUNNING if n % 2 else State.PAUSED))
    records, total = store.list_sandboxes(SandboxQuery(states=frozenset({State.RUNNING}), limit=2, offset=1))
    assert total == 5
    assert ids(records) == ["sbx-00000007", "sbx-00000005"]


@pytest.mark.parametrize(
    "key",
    ["env", "a.b", "a.b.c", 'q"k', "it's", "x y", "a[0]", "$", "*", "a\\b", "ü", '"', '"]', "%", "a'b\"c"],
)
def test_list_metadata_filter_takes_keys_literally(store: Store, key: str) -> None:
    store.put_sandbox(sandbox(1, metadata={key: "yes", "other": "1"}))
    store.put_sandbox(sandbox(2, metadata={key: "no"}))
    store.put_sandbox(sandbox(3, metadata={}))
    records, total = store.list_sandboxes(SandboxQuery(metadata={key: "yes"}))
    assert (ids(records), total) == (["sbx-00000001"], 1)


def test_list_metadata_filter_nested_key_does_not_match_dotted_key(store: Store) -> None:
    store.put_sandbox(sandbox(1, metadata={"a.b": "v"}))
    store.put_sandbox(sandbox(2, metadata={"a": "x"}))
    assert ids(store.list_sandboxes(SandboxQuery(metadata={"a.b": "v"}))[0]) == ["sbx-00000001"]
    assert store.list_sandboxes(SandboxQuery(metadata={"a": "v"})) == ([], 0)


def test_list_metadata_filter_needs_every_pair(store: Store) -> None:
    store.put_sandbox(sandbox(1, metadata={"env": "prod", "team": "core"}))
    store.put_sandbox(sandbox(2, metadata={"env": "prod", "team": "web"}))
    store.put_sandbox(sandbox(3, metadata={"env": "dev", "team": "core"}))
    records, total = store.list_sandboxes(SandboxQuery(metadata={"env": "prod", "team": "core"}))
    assert (ids(records), total) == (["sbx-00000001"], 1)
    records, total = store.list_sandboxes(SandboxQuery(metadata={"env": "prod"}))
    assert (ids(records), total) == (["sbx-00000002", "sbx-00000001"], 2)
    assert store.list_sandboxes(SandboxQuery(metadata={"env": "staging"})) == ([], 0)
    assert store.list_sandboxes(SandboxQuery(metadata={"nope": "prod"})) == ([], 0)


def test_list_metadata_value_compared_exactly(store: Store) -> None:
    store.put_sandbox(sandbox(1, metadata={"n": "1"}))
    store.put_sandbox(sandbox(2, metadata={"n": "01"}))
    store.put_sandbox(sandbox(3, metadata={"n": ""}))
    assert ids(store.list_sandboxes(SandboxQuery(metadata={"n": "1"}))[0]) == ["sbx-00000001"]
    assert ids(store.list_sandboxes(SandboxQuery(metadata={"n": ""}))[0]) == ["sbx-00000003"]


def test_list_metadata_and_state_filters_combine(store: Store) -> None:
    store.put_sandbox(sandbox(1, metadata={"env": "prod"}, state=State.RUNNING))
    store.put_sandbox(sandbox(2, metadata={"env": "prod"}, state=State.TERMINATED))
    records, total = store.list_sandboxes(
        SandboxQuery(states=frozenset({State.RUNNING}), metadata={"env": "prod"}, limit=10)
    )
    assert (ids(records), total) == (["sbx-00000001"], 1)


# -- api keys -----------------------------------------------------------------------------


def key(n: int, **changes: Any) -> ApiKeyRecord:
    fields: dict[str, Any] = {
        "id": f"key-{n}",
        "name": f"k{n}",
        "secret_hash": hashlib.sha256(str(n).encode()).digest(),
        "prefix": "sk-abcd",
        "created_at": float(n),
    }
    fields.update(changes)
    return ApiKeyRecord(**fields)


def test_api_keys_by_hash(store: Store) -> None:
    assert store.count_api_keys() == 0
    store.put_api_key(key(1))
    store.put_api_key(key(2, revoked_at=5.0))
    assert store.count_api_keys() == 2
    assert store.api_key_by_hash(key(1).secret_hash) == key(1)
    assert store.api_key_by_hash(key(2).secret_hash) == key(2, revoked_at=5.0)
    assert store.api_key_by_hash(hashlib.sha256(b"other").digest()) is None
    assert store.api_key_by_hash(b"") is None


def test_api_key_put_replaces_by_id(store: Store) -> None:
    store.put_api_key(key(1))
    store.put_api_key(key(1, revoked_at=7.0))
    assert store.count_api_keys() == 1
    got = store.api_key_by_hash(key(1).secret_hash)
    assert got is not None
    assert got.revoked_at == 7.0
