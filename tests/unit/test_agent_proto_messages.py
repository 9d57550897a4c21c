"""agent.proto messages against the official SDK's protoc-generated classes.

`scalebox.generated.api_pb2` and `google.protobuf` serve only as an independent
oracle here: the agent itself never imports them. Every direction is checked:
our binary parsed by theirs, theirs decoded by ours, our JSON parsed by
`json_format`, and their `MessageToDict` output read by our `from_json`.
"""

from __future__ import annotations

import base64
import json
import math
import random
import struct
from enum import IntEnum
from typing import Any

import pytest
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError as TheirDecodeError
from google.protobuf.message import Message as TheirMessage
from scalebox.generated import api_pb2

import agent.proto
from agent.proto import DecodeError, Field, Message, messages
from agent.proto.messages import (
    Chart,
    ChartElement,
    Context,
    EntryInfo,
    EventType,
    ExecuteResponse,
    FilesystemEvent,
    FileType,
    GetWatcherEventsResponse,
    ListResponse,
    Point,
    PointChart,
    ProcessConfig,
    ProcessEvent,
    ProcessInfo,
    ProcessInput,
    ProcessSelector,
    Result,
    SendSignalRequest,
    Signal,
    StartRequest,
    StreamInputRequest,
    Timestamp,
    WatchDirResponse,
)


def _all_message_classes() -> list[type[Message]]:
    found: list[type[Message]] = []

    def visit(cls: type[Message]) -> None:
        found.append(cls)
        for value in vars(cls).values():
            if isinstance(value, type) and issubclass(value, Message):
                visit(value)

    for name in messages.__all__:
        obj = getattr(messages, name)
        if isinstance(obj, type) and issubclass(obj, Message):
            visit(obj)
    return found


CLASSES = _all_message_classes()
ENUMS = [
    obj for obj in map(messages.__dict__.get, messages.__all__) if isinstance(obj, type) and issubclass(obj, IntEnum)
]


def theirs_for(cls: type[Message]) -> type[TheirMessage]:
    if cls is Timestamp:
        return timestamp_pb2.Timestamp
    obj: Any = api_pb2
    for part in cls.__qualname__.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def cls_id(cls: type) -> str:
    return cls.__qualname__


# --- the declarations match the official descriptors ------------------------------------

_KIND_OF_TYPE = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_ENUM: "enum",
    FieldDescriptor.TYPE_MESSAGE: "message",
}


def _their_message_descriptors() -> list[Descriptor]:
    out: list[Descriptor] = []

    def visit(desc: Descriptor) -> None:
        if desc.GetOptions().map_entry:
            return
        out.append(desc)
        for nested in desc.nested_types:
            visit(nested)

    for desc in api_pb2.DESCRIPTOR.message_types_by_name.values():
        visit(desc)
    return out


def _ours_by_full_name() -> dict[str, type[Message]]:
    table = {"sandboxagent." + cls.__qualname__: cls for cls in CLASSES if cls is not Timestamp}
    table["google.protobuf.Timestamp"] = Timestamp
    return table


def test_every_message_of_the_schema_is_declared() -> None:
    theirs = {d.full_name for d in _their_message_descriptors()}
    assert set(_ours_by_full_name()) == theirs | {"google.protobuf.Timestamp"}


@pytest.mark.parametrize("cls", CLASSES, ids=cls_id)
def test_fields_match_the_official_descriptor(cls: type[Message]) -> None:
    desc = theirs_for(cls).DESCRIPTOR
    ours = {f.name: f for f in cls.FIELDS}
    assert set(ours) == set(desc.fields_by_name)
    by_name = _ours_by_full_name()
    for fd in desc.fields:
        f = ours[fd.name]
        assert f.number == fd.number, fd.full_name
        assert f.json_name == fd.json_name, fd.full_name
        oneof = fd.containing_oneof
        synthetic = oneof is not None and oneof.name == "_" + fd.name and len(oneof.fields) == 1
        assert f.optional == synthetic, fd.full_name
        assert f.oneof == (oneof.name if oneof is not None and not synthetic else None), fd.full_name
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            assert f.kind == "map", fd.full_name
            key, value = fd.message_type.fields
            assert (key.type, value.type) == (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_STRING)
            continue
        assert f.kind == _KIND_OF_TYPE[fd.type], fd.full_name
        assert f.repeated == fd.is_repeated, fd.full_name
        if f.kind == "message":
            assert by_name[fd.message_type.full_name] is f.message_type, fd.full_name
        if f.kind == "enum":
            assert f._ref.__name__ == fd.enum_type.name
            assert {m.name: int(m) for m in f._ref} == {v.name: v.number for v in fd.enum_type.values}  # type: ignore[union-attr]


def test_enums_match() -> None:
    assert {e.__name__ for e in ENUMS} == set(api_pb2.DESCRIPTOR.enum_types_by_name)
    for enum in ENUMS:
        desc = api_pb2.DESCRIPTOR.enum_types_by_name[enum.__name__]
        assert {m.name: int(m) for m in enum} == {v.name: v.number for v in desc.values}


def test_package_exports_every_message() -> None:
    for cls in CLASSES:
        top = cls.__qualname__.split(".")[0]
        assert getattr(agent.proto, top) is getattr(messages, top)
    assert agent.proto.DecodeError is DecodeError
    assert agent.proto.Message is Message


# --- comparing a message of ours with one of theirs, field by field --------------------


def same_scalar(ours: Any, theirs: Any) -> bool:
    if isinstance(ours, float) or isinstance(theirs, float):
        if math.isnan(ours) and math.isnan(theirs):
            return True
        return bool(ours == theirs and math.copysign(1, ours) == math.copysign(1, theirs))
    return (bool(ours == theirs) and type(ours) is not bool) or ours is theirs


def assert_matches(ours: Message, theirs: TheirMessage, path: str = "") -> None:
    assert theirs_for(type(ours)) is type(theirs)
    for f in type(ours).FIELDS:
        where = f"{path}{f.name}"
        mine = getattr(ours, f.name)
        other = getattr(theirs, f.name)
        if f.kind == "map":
            assert mine == dict(other), where
        elif f.repeated:
            assert len(mine) == len(other), where
            for i, (a, b) in enumerate(zip(mine, other, strict=True)):
                if f.kind == "message":
                    assert_matches(a, b, f"{where}[{i}].")
                else:
                    assert same_scalar(a, b), f"{where}[{i}]: {a!r} != {b!r}"
        elif f.presence:
            assert theirs.HasField(f.name) == (mine is not None), where
            if mine is None:
                continue
            if f.kind == "message":
                assert_matches(mine, other, where + ".")
            else:
                assert same_scalar(mine, other), f"{where}: {mine!r} != {other!r}"
        else:
            assert same_scalar(mine, other), f"{where}: {mine!r} != {other!r}"
    for group in type(ours)._oneofs:
        assert ours.which_oneof(group) == theirs.WhichOneof(group)


def same_messages(a: Any, b: Any) -> bool:
    """`==`, but NaN equals NaN and -0.0 differs from 0.0 (a round trip must keep both)."""
    if isinstance(a, Message):
        return type(a) is type(b) and all(same_messages(getattr(a, f.name), getattr(b, f.name)) for f in a.FIELDS)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same_messages, a, b))
    if isinstance(a, float) or isinstance(b, float):
        return same_scalar(a, b)
    return (bool(a == b) and type(a) is type(b)) or (isinstance(a, int) and isinstance(b, int) and a == b)


def check_all_directions(ours: Message) -> None:
    cls = type(ours)
    their_cls = theirs_for(cls)
    data = ours.encode()

    # Our bytes, their parser.
    theirs = their_cls()
    theirs.ParseFromString(data)
    assert_matches(ours, theirs)

    # Their bytes, our parser.
    back = cls.decode(theirs.SerializeToString())
    assert same_messages(back, ours)
    assert_matches(back, theirs)
    assert same_messages(cls.decode(data), ours)

    # JSON: ours is exactly what json_format writes.
    expected_json = json_format.MessageToDict(theirs)
    assert ours.to_json() == expected_json

    # Their JSON (camelCase and original names), our parser.
    assert same_messages(cls.from_json(expected_json), ours)
    original_names = json_format.MessageToDict(theirs, preserving_proto_field_name=True)
    assert same_messages(cls.from_json(original_names), ours)

    # Our JSON, through text, their parser.
    parsed = json_format.Parse(json.dumps(ours.to_json()), their_cls())
    assert_matches(ours, parsed)


# --- random messages from our declarations ----------------------------------------------

_CHARS = "abcXYZ019 _-/.\n\t\x00é中文😀\u2028"
_INT_EDGES = {
    "int32": [0, 1, -1, 127, 128, 2**31 - 1, -(2**31)],
    "sint32": [0, 1, -1, -64, 64, 2**31 - 1, -(2**31)],
    "uint32": [0, 1, 127, 128, 300, 2**32 - 1],
    "int64": [0, 1, -1, 2**53 + 1, 2**63 - 1, -(2**63)],
    "sint64": [0, -1, 2**63 - 1, -(2**63)],
    "uint64": [0, 1, 2**64 - 1],
}
_INT_BITS = {"int32": 32, "sint32": 32, "uint32": 32, "int64": 64, "sint64": 64, "uint64": 64}
_DOUBLES = [0.0, -0.0, 1.0, -2.5, 1e308, -1e-308, 5e-324, 0.1, math.inf, -math.inf, 123456789.125]


def random_string(rng: random.Random) -> str:
    return "".join(rng.choice(_CHARS) for _ in range(rng.randint(0, 12)))


def random_scalar(f: Field, rng: random.Random) -> Any:
    kind = f.kind
    if kind == "string":
        return random_string(rng)
    if kind == "bytes":
        return rng.randbytes(rng.randint(0, 20))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "double":
        return rng.choice(_DOUBLES) if rng.random() < 0.5 else rng.uniform(-1e6, 1e6)
    if kind == "enum":
        members = list(f._ref)  # type: ignore[arg-type]
        return rng.choice(members) if rng.random() < 0.9 else rng.choice([7, 100, -3])
    if rng.random() < 0.5:
        return rng.choice(_INT_EDGES[kind])
    bits = _INT_BITS[kind]
    value = rng.getrandbits(rng.randint(1, bits))
    if kind.startswith("uint"):
        return value
    return value - (1 << (bits - 1)) if value >= 1 << (bits - 1) else value


def random_timestamp(rng: random.Random) -> Timestamp:
    nanos = rng.choice([0, 1, 500_000_000, 123_000_000, 123_456_000, 123_456_789, 999_999_999])
    seconds = rng.choice([0, -1, 1_700_000_000, -62135596800, 253402300799, rng.randint(-62135596800, 253402300799)])
    return Timestamp(seconds=seconds, nanos=nanos)


def random_message(cls: type[Message], rng: random.Random, depth: int = 0) -> Message:
    if cls is Timestamp:
        return random_timestamp(rng)
    kwargs: dict[str, Any] = {}
    for group, members in cls._oneofs.items():
        if rng.random() < 0.8:
            chosen = rng.choice(members)
            kwargs[chosen.name] = random_value(chosen, rng, depth)
        del group
    for f in cls.FIELDS:
        if f.oneof is not None or rng.random() < 0.2:
            continue
        if f.kind == "map":
            kwargs[f.name] = {random_string(rng): random_string(rng) for _ in range(rng.randint(0, 3))}
        elif f.repeated:
            kwargs[f.name] = [random_value(f, rng, depth) for _ in range(rng.randint(0, 3))]
        else:
            kwargs[f.name] = random_value(f, rng, depth)
    return cls(**kwargs)


def random_value(f: Field, rng: random.Random, depth: int) -> Any:
    if f.kind == "message":
        if depth > 3:
            return f.message_type()
        return random_message(f.message_type, rng, depth + 1)
    return random_scalar(f, rng)


@pytest.mark.parametrize("cls", CLASSES, ids=cls_id)
def test_random_messages_agree_with_the_official_classes(cls: type[Message]) -> None:
    rng = random.Random(cls.__qualname__)
    for _ in range(25):
        check_all_directions(random_message(cls, rng))


@pytest.mark.parametrize("cls", CLASSES, ids=cls_id)
def test_empty_messages(cls: type[Message]) -> None:
    empty = cls()
    if cls is Timestamp:
        assert empty.encode() == b""
        assert empty.to_json() == "1970-01-01T00:00:00Z"
    else:
        assert empty.encode() == b""
        assert empty.to_json() == {}
        assert cls.from_json({}) == empty
    assert cls.decode(b"") == empty
    check_all_directions(empty)


# --- the cases the agent depends on, spelled out -----------------------------------------


def test_defaults() -> None:
    config = ProcessConfig()
    assert (config.cmd, config.args, config.envs, config.cwd) == ("", [], {}, None)
    entry = EntryInfo()
    assert (entry.size, entry.type, entry.modified_time, entry.symlink_target) == (0, 0, None, None)
    end = ProcessEvent.EndEvent()
    assert (end.exit_code, end.exited, end.status, end.error) == (0, False, "", None)
    assert ProcessEvent().which_oneof("event") is None
    # Mutable defaults are never shared.
    ProcessConfig().args.append("x")
    assert ProcessConfig().args == []


def test_process_event_oneofs() -> None:
    for member in ("stdout", "stderr", "pty"):
        event = ProcessEvent(data=ProcessEvent.DataEvent(**{member: b"\x00\xffhello"}))
        assert event.which_oneof("event") == "data"
        assert event.data.which_oneof("output") == member
        theirs = api_pb2.ProcessEvent.FromString(event.encode())
        assert theirs.data.WhichOneof("output") == member
        assert getattr(theirs.data, member) == b"\x00\xffhello"
        assert event.to_json() == {"data": {member: base64.b64encode(b"\x00\xffhello").decode()}}
        check_all_directions(event)
    start = ProcessEvent(start=ProcessEvent.StartEvent(pid=4242))
    assert start.encode() == b"\x0a\x03\x08\x92\x21"
    assert start.to_json() == {"start": {"pid": 4242}}
    # An empty member is still set, and sent.
    keepalive = ProcessEvent(keepalive=ProcessEvent.KeepAlive())
    assert keepalive.encode() == b"\x22\x00"
    assert keepalive.to_json() == {"keepalive": {}}
    check_all_directions(keepalive)
    # An empty bytes member is set too.
    empty = ProcessEvent.DataEvent(stdout=b"")
    assert empty.encode() == b"\x0a\x00"
    assert ProcessEvent.DataEvent.decode(b"\x0a\x00").which_oneof("output") == "stdout"


def test_oneof_members_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="oneof"):
        ProcessSelector(pid=1, tag="x")
    selector = ProcessSelector(pid=1)
    selector.tag = "web"  # setting a member clears the others
    assert (selector.pid, selector.tag, selector.which_oneof("selector")) == (None, "web", "tag")
    selector.tag = None
    assert selector.which_oneof("selector") is None
    with pytest.raises(ValueError):
        selector.which_oneof("nope")
    # On the wire, the last member wins.
    data = ProcessSelector(pid=7).encode() + ProcessSelector(tag="t").encode()
    assert ProcessSelector.decode(data) == ProcessSelector(tag="t")
    assert api_pb2.ProcessSelector.FromString(data).WhichOneof("selector") == "tag"
    # In JSON, two members are an error.
    with pytest.raises(DecodeError, match="oneof"):
        ProcessSelector.from_json({"pid": 1, "tag": "x"})


def test_process_selector() -> None:
    by_pid = ProcessSelector(pid=0)  # zero is still "set" in a oneof
    assert by_pid.encode() == b"\x08\x00"
    assert by_pid.to_json() == {"pid": 0}
    check_all_directions(by_pid)
    by_tag = ProcessSelector(tag="")
    assert by_tag.encode() == b"\x12\x00"
    check_all_directions(by_tag)
    assert ProcessSelector.from_json({"pid": "12"}) == ProcessSelector(pid=12)


def test_process_config_map_and_optional() -> None:
    config = ProcessConfig(cmd="/bin/bash", args=["-l", "-c", "echo hi"], envs={"A": "1", "É": "中"}, cwd="/tmp")
    check_all_directions(config)
    theirs = api_pb2.ProcessConfig.FromString(config.encode())
    assert dict(theirs.envs) == {"A": "1", "É": "中"}
    assert theirs.HasField("cwd")
    # An optional set to its zero value is present; unset is absent.
    assert api_pb2.ProcessConfig.FromString(ProcessConfig(cwd="").encode()).HasField("cwd")
    assert not api_pb2.ProcessConfig.FromString(ProcessConfig().encode()).HasField("cwd")
    assert ProcessConfig(cwd="").to_json() == {"cwd": ""}
    assert ProcessConfig.decode(ProcessConfig(cwd="").encode()).cwd == ""
    # A repeated map key: the last entry wins.
    twice = ProcessConfig(envs={"K": "1"}).encode() + ProcessConfig(envs={"K": "2"}).encode()
    assert ProcessConfig.decode(twice).envs == {"K": "2"}
    # A map entry missing its value (or key) means "".
    assert ProcessConfig.decode(b"\x1a\x03\x0a\x01K").envs == {"K": ""}
    assert ProcessConfig.decode(b"\x1a\x00").envs == {"": ""}


def test_entry_info_optional_symlink_and_timestamp() -> None:
    entry = EntryInfo(
        name="link",
        type=FileType.FILE_TYPE_FILE,
        path="/home/user/link",
        size=2**40,
        mode=0o120777,
        permissions="lrwxrwxrwx",
        owner="user",
        group="user",
        modified_time=Timestamp(seconds=1_700_000_000, nanos=5_000_000),
        symlink_target="/etc/hosts",
    )
    check_all_directions(entry)
    assert entry.to_json()["modifiedTime"] == "2023-11-14T22:13:20.005Z"
    assert entry.to_json()["size"] == str(2**40)
    assert entry.to_json()["type"] == "FILE_TYPE_FILE"
    plain = EntryInfo(name="f", type=FileType.FILE_TYPE_DIRECTORY)
    assert "symlinkTarget" not in plain.to_json()
    assert not api_pb2.EntryInfo.FromString(plain.encode()).HasField("symlink_target")
    decoded = EntryInfo.decode(entry.encode())
    assert decoded.type is FileType.FILE_TYPE_FILE
    assert decoded == entry


def test_negative_sint32_exit_codes() -> None:
    for code in (-9, -15, -1, -(2**31), 0, 1, 255, 2**31 - 1):
        end = ProcessEvent(end=ProcessEvent.EndEvent(exit_code=code, exited=code >= 0, status=f"exit {code}"))
        check_all_directions(end)
        assert api_pb2.ProcessEvent.FromString(end.encode()).end.exit_code == code
    # zigzag keeps -9 short (one byte), unlike int32.
    assert ProcessEvent.EndEvent(exit_code=-9).encode() == b"\x08\x11"
    with pytest.raises(ValueError):
        ProcessEvent.EndEvent(exit_code=2**31).encode()


def test_negative_int32_takes_ten_bytes() -> None:
    result = Result(exit_code=-1)
    assert result.encode() == b"\x08" + b"\xff" * 9 + b"\x01"
    check_all_directions(result)


def test_enums() -> None:
    request = SendSignalRequest(process=ProcessSelector(pid=5), signal=Signal.SIGNAL_SIGKILL)
    assert request.to_json() == {"process": {"pid": 5}, "signal": "SIGNAL_SIGKILL"}
    check_all_directions(request)
    assert SendSignalRequest.from_json({"signal": 15}).signal is Signal.SIGNAL_SIGTERM
    assert SendSignalRequest.from_json({"signal": "SIGNAL_SIGTERM"}).signal is Signal.SIGNAL_SIGTERM
    assert SendSignalRequest.decode(request.encode()).signal is Signal.SIGNAL_SIGKILL
    # Open enums: an unknown number survives, and is written as a number.
    odd = SendSignalRequest.decode(b"\x10\x02")
    assert odd.signal == 2 and not isinstance(odd.signal, Signal)
    assert odd.to_json() == {"signal": 2}
    check_all_directions(odd)
    with pytest.raises(DecodeError, match="signal"):
        SendSignalRequest.from_json({"signal": "SIGNAL_SIGHUP"})
    events = GetWatcherEventsResponse(
        events=[FilesystemEvent(name=f"f{i}", type=t) for i, t in enumerate(EventType)],
    )
    check_all_directions(events)


def test_repeated_messages() -> None:
    listing = ListResponse(
        processes=[
            ProcessInfo(config=ProcessConfig(cmd="sleep", args=["1"]), pid=10, tag="a"),
            ProcessInfo(config=ProcessConfig(cmd="top"), pid=11),
            ProcessInfo(),
        ]
    )
    check_all_directions(listing)
    theirs = api_pb2.ListResponse.FromString(listing.encode())
    assert [p.pid for p in theirs.processes] == [10, 11, 0]
    assert [p.HasField("tag") for p in theirs.processes] == [True, False, False]


def test_start_request_optional_message() -> None:
    from agent.proto.messages import PTY

    request = StartRequest(
        process=ProcessConfig(cmd="/bin/bash", args=["-i", "-l"]), pty=PTY(size=PTY.Size(cols=80, rows=24)), tag="t1"
    )
    check_all_directions(request)
    assert request.to_json()["pty"] == {"size": {"cols": 80, "rows": 24}}
    empty_pty = StartRequest(pty=PTY())
    assert api_pb2.StartRequest.FromString(empty_pty.encode()).HasField("pty")


def test_stream_input_request() -> None:
    start = StreamInputRequest(start=StreamInputRequest.StartEvent(process=ProcessSelector(tag="x")))
    data = StreamInputRequest(data=StreamInputRequest.DataEvent(input=ProcessInput(stdin=b"ls\n")))
    for message in (start, data, StreamInputRequest(keepalive=StreamInputRequest.KeepAlive())):
        check_all_directions(message)
    # DataEvent.input is field 2.
    assert StreamInputRequest.DataEvent(input=ProcessInput(pty=b"")).encode() == b"\x12\x02\x12\x00"


def test_watch_dir_response() -> None:
    for message in (
        WatchDirResponse(start=WatchDirResponse.StartEvent()),
        WatchDirResponse(filesystem=FilesystemEvent(name="a.txt", type=EventType.EVENT_TYPE_WRITE)),
        WatchDirResponse(keepalive=WatchDirResponse.KeepAlive()),
    ):
        check_all_directions(message)


def test_execute_response_and_charts() -> None:
    chart = Chart(
        type="line",
        title="t",
        elements=[
            ChartElement(
                nested_chart=Chart(title="inner", elements=[ChartElement(bar_data=messages.BarData(label="b"))])
            ),
            ChartElement(
                point_data=messages.PointData(
                    label="p", points=[Point(x_num=1.5, y_str="a"), Point(x_str="x", y_num=-0.0)]
                )
            ),
            ChartElement(
                box_whisker_data=messages.BoxAndWhiskerData(min=-1.0, max=math.inf, outliers=[1.0, -2.0, math.nan])
            ),
        ],
        extra={"k": "v"},
    )
    result = Result(
        exit_code=0,
        started_at=Timestamp(seconds=1),
        finished_at=Timestamp(seconds=2, nanos=1),
        text="42",
        json='{"a": 1}',
        png="iVBORw0KGgo=",
        chart=chart,
        execution_count=3,
        is_main_result=True,
        extra={"x": "y"},
    )
    for message in (
        ExecuteResponse(result=result),
        ExecuteResponse(stdout=messages.Output(content="hi\n")),
        ExecuteResponse(stderr=messages.Output(content="")),
        ExecuteResponse(error=messages.Error(name="ValueError", value="bad", traceback="Traceback...")),
        PointChart(x_ticks=["1", "2"], y_tick_labels=["a"], chart_2d=messages.Chart2D(x_label="x", chart=chart)),
    ):
        check_all_directions(message)
    outliers = result.to_json()["chart"]["elements"][2]["boxWhiskerData"]["outliers"]
    assert outliers == [1.0, -2.0, "NaN"]
    assert PointChart(chart_2d=messages.Chart2D()).to_json() == {"chart2d": {}}
    # Packed and unpacked repeated doubles decode alike.
    packed = messages.BoxAndWhiskerData(outliers=[1.0, 2.0]).encode()
    assert packed[0] == 0x3A  # field 7, LEN
    unpacked = b"\x39" + struct.pack("<d", 1.0) + b"\x39" + struct.pack("<d", 2.0)  # field 7, FIXED64
    assert messages.BoxAndWhiskerData.decode(unpacked).outliers == [1.0, 2.0]
    assert messages.BoxAndWhiskerData.decode(packed + unpacked).outliers == [1.0, 2.0, 1.0, 2.0]


def test_context_messages() -> None:
    context = Context(
        id="ctx-1",
        language="python",
        cwd="/home/user",
        created_at=Timestamp(seconds=0, nanos=1000),
        env_vars={"A": "B"},
    )
    check_all_directions(context)
    assert context.to_json()["createdAt"] == "1970-01-01T00:00:00.000001Z"
    check_all_directions(messages.CreateContextRequest(language="python", cwd="/"))
    check_all_directions(messages.DestroyContextRequest(context_id="ctx-1"))
    check_all_directions(messages.DestroyContextResponse(success=True))
    check_all_directions(
        messages.ExecuteRequest(context_id="c", code="print(1)", language="python", env_vars={"X": "1"})
    )


def test_unknown_fields_are_skipped() -> None:
    # Their message with every kind of wire type in fields we do not know.
    known = api_pb2.Output(content="kept").SerializeToString()
    unknown = (
        b"\x10\x96\x01"  # field 2 varint
        b"\x1a\x03abc"  # field 3 LEN
        b"\x25\x01\x02\x03\x04"  # field 4 fixed32
        b"\x29"
        + bytes(8)  # field 5 fixed64
        + b"\x33\x08\x01\x34"  # field 6 group containing a varint
        + b"\xf8\xff\xff\xff\x0f\x01"  # field 2^29-1 varint
    )
    assert messages.Output.decode(unknown + known + unknown) == messages.Output(content="kept")
    # A known number with the wrong wire type is treated as unknown too.
    assert messages.Output.decode(b"\x08\x05" + known) == messages.Output(content="kept")
    assert messages.Output.decode(b"\x08\x05") == messages.Output()
    # Fields of a newer schema, produced by the official classes' descendants.
    assert ProcessSelector.decode(b"\x18\x01\x08\x07") == ProcessSelector(pid=7)
    # Unknown JSON keys are skipped as well.
    assert messages.Output.from_json({"content": "x", "somethingNew": [1, {"a": None}]}) == messages.Output(content="x")


def test_repeated_message_field_occurrences_merge() -> None:
    first = ProcessInfo(config=ProcessConfig(cmd="a", args=["1"]), pid=1).encode()
    second = ProcessInfo(config=ProcessConfig(args=["2"], cwd="/"), tag="t").encode()
    ours = ProcessInfo.decode(first + second)
    theirs = api_pb2.ProcessInfo.FromString(first + second)
    assert_matches(ours, theirs)
    assert ours.config == ProcessConfig(cmd="a", args=["1", "2"], cwd="/")


def test_decode_accepts_bytes_like() -> None:
    data = ProcessConfig(cmd="x").encode()
    assert ProcessConfig.decode(bytearray(data)) == ProcessConfig.decode(memoryview(data)) == ProcessConfig(cmd="x")


def test_invalid_utf8_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="UTF-8"):
        messages.Output.decode(b"\x0a\x02\xc3\x28")
    with pytest.raises(DecodeError, match="UTF-8"):
        ProcessConfig.decode(b"\x1a\x04\x0a\x02\xed\xa0")  # map key
    with pytest.raises(TheirDecodeError):
        api_pb2.Output.FromString(b"\x0a\x02\xc3\x28")


def test_constructor_checks() -> None:
    with pytest.raises(TypeError, match="cmdd"):
        ProcessConfig(cmdd="x")  # type: ignore[call-arg]
    config = ProcessConfig()
    with pytest.raises(AttributeError):
        config.cmdd = "x"  # type: ignore[attr-defined]
    # Sequences and mappings are copied into fresh lists and dicts.
    args = ("a", "b")
    assert ProcessConfig(args=args).args == ["a", "b"]
    with pytest.raises(TypeError):
        ProcessConfig(cmd=1).encode()  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ProcessInfo(config=ProcessSelector()).encode()  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        messages.ListDirRequest(depth=-1).encode()
    with pytest.raises(TypeError):
        messages.PieData(angle="1").encode()  # type: ignore[arg-type]


def test_equality_and_repr() -> None:
    a = ProcessConfig(cmd="ls", args=["-l"])
    assert a == ProcessConfig(cmd="ls", args=["-l"])
    assert a != ProcessConfig(cmd="ls")
    assert a != messages.Output()
    assert repr(a) == "ProcessConfig(cmd='ls', args=['-l'])"
    assert repr(ProcessEvent(start=ProcessEvent.StartEvent())) == "ProcessEvent(start=ProcessEvent.StartEvent())"
    assert repr(ProcessConfig(cwd="")) == "ProcessConfig(cwd='')"
    with pytest.raises(TypeError):
        hash(a)


def test_field_declaration_errors() -> None:
    with pytest.raises(TypeError):
        Field(1, "x", "float")
    with pytest.raises(TypeError):
        Field(1, "x", "message")
    with pytest.raises(TypeError):
        Field(1, "x", "string", repeated=True, optional=True)
    with pytest.raises(TypeError):

        class Dup(Message):
            FIELDS = (Field(1, "a", "string"), Field(1, "b", "string"))

    with pytest.raises(TypeError):

        class Shadow(Message):
            FIELDS = (Field(1, "encode", "string"),)


# --- JSON specifics -----------------------------------------------------------------------


def test_json_int64_as_strings_or_numbers() -> None:
    for given in (12345, "12345", 12345.0, "1.2345e4"):
        assert EntryInfo.from_json({"size": given}).size == 12345
    assert EntryInfo.from_json({"size": str(-(2**63))}).size == -(2**63)
    assert EntryInfo(size=-5).to_json() == {"size": "-5"}
    for bad in ("1.5", 1.5, "12a", "", " 1", "1_000", True, [], {}, str(2**63), "Infinity", "NaN"):
        with pytest.raises(DecodeError, match=r"EntryInfo\.size"):
            EntryInfo.from_json({"size": bad})
    for bad in (-1, 2**32, "-1", True):
        with pytest.raises(DecodeError, match=r"EntryInfo\.mode"):
            EntryInfo.from_json({"mode": bad})


def test_json_bytes_base64_variants() -> None:
    payload = bytes(range(250, 256)) + b"\xfb\xff"
    standard = base64.b64encode(payload).decode()
    urlsafe = base64.urlsafe_b64encode(payload).decode()
    assert "+" in standard or "/" in standard
    assert ProcessInput(stdin=payload).to_json() == {"stdin": standard}
    for text in (standard, urlsafe, standard.rstrip("="), urlsafe.rstrip("=")):
        assert ProcessInput.from_json({"stdin": text}).stdin == payload
    assert ProcessInput.from_json({"stdin": ""}).stdin == b""
    for bad in ("a", "ab!c", "é", "a=bc", "ab\ncd", 5, [], b"aGk="):
        with pytest.raises(DecodeError, match=r"ProcessInput\.stdin"):
            ProcessInput.from_json({"stdin": bad})


def test_json_doubles() -> None:
    assert messages.PieData(angle=math.inf, radius=-math.inf).to_json() == {"angle": "Infinity", "radius": "-Infinity"}
    assert messages.PieData.from_json({"angle": "NaN"}).angle != messages.PieData.from_json({"angle": "NaN"}).angle
    assert messages.PieData.from_json({"angle": "1.5", "radius": 2}).angle == 1.5
    assert messages.PieData.from_json({"radius": 2}).radius == 2.0
    for bad in ("x", True, "inf", "1e999", [1]):
        with pytest.raises(DecodeError, match=r"PieData\."):
            messages.PieData.from_json({"angle": bad})


def test_json_null_means_default() -> None:
    assert ProcessConfig.from_json({"cmd": None, "args": None, "envs": None, "cwd": None}) == ProcessConfig()
    assert ProcessEvent.from_json({"start": None, "data": {"stdout": "aGk="}}) == ProcessEvent(
        data=ProcessEvent.DataEvent(stdout=b"hi")
    )


@pytest.mark.parametrize(
    ("cls", "obj", "where"),
    [
        (ProcessConfig, {"cmd": 5}, r"ProcessConfig\.cmd"),
        (ProcessConfig, {"args": "ls"}, r"ProcessConfig\.args"),
        (ProcessConfig, {"args": ["ok", 1]}, r"ProcessConfig\.args"),
        (ProcessConfig, {"args": [None]}, r"ProcessConfig\.args"),
        (ProcessConfig, {"envs": ["A=1"]}, r"ProcessConfig\.envs"),
        (ProcessConfig, {"envs": {"A": 1}}, r"ProcessConfig\.envs"),
        (ProcessConfig, {"cwd": False}, r"ProcessConfig\.cwd"),
        (StartRequest, {"process": {"cmd": []}}, r"StartRequest\.process: ProcessConfig\.cmd"),
        (StartRequest, {"process": "ls"}, r"StartRequest\.process"),
        (EntryInfo, {"modifiedTime": 0}, r"EntryInfo\.modified_time"),
        (EntryInfo, {"modifiedTime": "yesterday"}, r"EntryInfo\.modified_time"),
        (EntryInfo, {"type": "FILE_TYPE_SOCKET"}, r"EntryInfo\.type"),
        (EntryInfo, {"type": 2**31}, r"EntryInfo\.type"),
        (messages.WatchDirRequest, {"recursive": "true"}, r"WatchDirRequest\.recursive"),
        (messages.WatchDirRequest, {"recursive": 1}, r"WatchDirRequest\.recursive"),
        (ProcessConfig, {"cmd": "a", "CMD": "b", "cmd ": 1}, None),
        (ProcessConfig, {"cmd": "a", "cmd\u0000": 1}, None),
        (messages.CreateWatcherResponse, {"watcherId": "a", "watcher_id": "b"}, r"CreateWatcherResponse\.watcher_id"),
        (ProcessConfig, [], "ProcessConfig"),
        (ProcessConfig, "{}", "ProcessConfig"),
        (ProcessConfig, None, "ProcessConfig"),
    ],
)
def test_json_bad_shapes_name_the_field(cls: type[Message], obj: Any, where: str | None) -> None:
    if where is None:  # near-miss keys are just unknown fields
        cls.from_json(obj)
        return
    with pytest.raises(DecodeError, match=where):
        cls.from_json(obj)


def test_json_accepts_original_and_camel_names() -> None:
    expected = Result(exit_code=3, is_main_result=True, execution_count=2)
    assert Result.from_json({"exitCode": 3, "is_main_result": True, "executionCount": "2"}) == expected
    assert Result.from_json({"exit_code": 3, "isMainResult": True, "execution_count": 2}) == expected


def test_deep_nesting_is_bounded() -> None:
    depth = 200
    data = b""
    for _ in range(depth):
        data = b"\x1a" + _len(b"\x2a" + _len(data))  # Chart.elements[ ChartElement.nested_chart ]
    with pytest.raises(DecodeError, match="nested"):
        Chart.decode(data)
    obj: dict[str, Any] = {}
    for _ in range(depth):
        obj = {"elements": [{"nestedChart": obj}]}
    with pytest.raises(DecodeError, match="nested"):
        Chart.from_json(obj)
    # Well below the limit it works, and agrees with protobuf.
    shallow = Chart(title="0")
    for i in range(1, 30):
        shallow = Chart(title=str(i), elements=[ChartElement(nested_chart=shallow)])
    check_all_directions(shallow)


def _len(data: bytes) -> bytes:
    from agent.proto.wire import encode_len

    return encode_len(data)


# --- Timestamp -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "nanos", "text"),
    [
        (0, 0, "1970-01-01T00:00:00Z"),
        (0, 10_000_000, "1970-01-01T00:00:00.010Z"),
        (0, 10_000, "1970-01-01T00:00:00.000010Z"),
        (0, 10, "1970-01-01T00:00:00.000000010Z"),
        (-1, 999_999_999, "1969-12-31T23:59:59.999999999Z"),
        (951782400, 0, "2000-02-29T00:00:00Z"),
        (-62135596800, 0, "0001-01-01T00:00:00Z"),
        (253402300799, 999_999_999, "9999-12-31T23:59:59.999999999Z"),
    ],
)
def test_timestamp_json(seconds: int, nanos: int, text: str) -> None:
    stamp = Timestamp(seconds=seconds, nanos=nanos)
    assert stamp.to_json() == text
    assert Timestamp.from_json(text) == stamp
    theirs = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    assert theirs.ToJsonString() == text
    check_all_directions(stamp)


def test_timestamp_json_input_forms() -> None:
    assert Timestamp.from_json("1972-01-01T10:00:20.021-05:00") == Timestamp(seconds=63126020, nanos=21_000_000)
    assert Timestamp.from_json("1970-01-01T01:00:00+01:00") == Timestamp()
    assert Timestamp.from_json("1970-01-01t00:00:00.5z") == Timestamp(nanos=500_000_000)
    rng = random.Random(5)
    for _ in range(300):
        seconds = rng.randint(-62135596800, 253402300799)
        nanos = rng.randint(0, 999_999_999)
        stamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
        assert Timestamp.from_json(stamp.ToJsonString()) == Timestamp(seconds=seconds, nanos=nanos)
        assert Timestamp(seconds=seconds, nanos=nanos).to_json() == stamp.ToJsonString()
    for bad in (
        "1970-01-01T00:00:00",  # no zone
        "1970-01-01 00:00:00Z",
        "1970-1-01T00:00:00Z",
        "1970-02-30T00:00:00Z",
        "1970-01-01T24:00:00Z",
        "1970-01-01T00:00:60Z",
        "1970-01-01T00:00:00.Z",
        "1970-01-01T00:00:00.1234567890Z",
        "1970-01-01T00:00:00+25:00",
        "0000-12-31T23:59:59Z",
        "0001-01-01T00:00:00+00:01",
        "1970-01-01T00:00:00Z ",
        "١٩٧٠-01-01T00:00:00Z",
        "",
        0,
    ):
        with pytest.raises(DecodeError):
            Timestamp.from_json(bad)


def test_timestamp_helpers() -> None:
    assert Timestamp.from_ns(1_500_000_000) == Timestamp(seconds=1, nanos=500_000_000)
    assert Timestamp.from_ns(-1) == Timestamp(seconds=-1, nanos=999_999_999)
    assert Timestamp.from_ns(-1).to_ns() == -1
    assert Timestamp.from_seconds(2.25) == Timestamp(seconds=2, nanos=250_000_000)
    with pytest.raises(ValueError):
        Timestamp(seconds=253402300800).to_json()
    with pytest.raises(ValueError):
        Timestamp(nanos=-1).to_json()


# --- fuzz: decoding never fails with anything but DecodeError -------------------------------


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.4 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif choice < 0.6 and buf:
            del buf[rng.randrange(len(buf)) :]
        elif choice < 0.8:
            pos = rng.randint(0, len(buf))
            buf[pos:pos] = rng.randbytes(rng.randint(1, 4))
        elif buf:
            start = rng.randrange(len(buf))
            del buf[start : start + rng.randint(1, 3)]
    return bytes(buf)


@pytest.mark.parametrize("cls", CLASSES, ids=cls_id)
def test_fuzz_decode(cls: type[Message]) -> None:
    rng = random.Random("fuzz-" + cls.__qualname__)
    their_cls = theirs_for(cls)
    valid = [random_message(cls, rng).encode() for _ in range(10)]
    for i in range(300):
        data = rng.randbytes(rng.randint(0, 30)) if i % 3 == 0 else _mutate(rng.choice(valid), rng)
        try:
            ours = cls.decode(data)
        except DecodeError:
            continue
        # When both parsers accept the input, they must agree.
        try:
            theirs = their_cls.FromString(data)
        except TheirDecodeError:
            continue
        assert_matches(ours, theirs)


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(9 if depth < 3 else 7)
    if choice == 0:
        return None
    if choice == 1:
        return rng.random() < 0.5
    if choice == 2:
        return rng.choice([0, -1, 2**70, 7, 2**31])
    if choice == 3:
        return rng.choice([0.5, -0.0, 1e300, 3.0])
    if choice == 4:
        return rng.choice(["", "x", "aGk=", "12", "NaN", "1970-01-01T00:00:00Z", "FILE_TYPE_FILE", "-", "1e5"])
    if choice in (5, 6):
        return rng.choice(["-9", "Infinity", "é", "a-_b", "2**5"])
    if choice == 7:
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["a", "x", "1"]): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _random_json_for(cls: type[Message], rng: random.Random, depth: int = 0) -> Any:
    if cls is Timestamp or rng.random() < 0.1:
        return _random_json(rng, depth)
    obj: dict[str, Any] = {}
    for f in cls.FIELDS:
        if rng.random() < 0.5:
            continue
        key = f.json_name if rng.random() < 0.7 else f.name
        if f.kind == "message" and depth < 4 and rng.random() < 0.7:
            value = _random_json_for(f.message_type, rng, depth + 1)
            obj[key] = [value] if f.repeated else value
        elif f.kind == "map" and rng.random() < 0.7:
            obj[key] = {"k": rng.choice(["v", 1, None])}
        else:
            obj[key] = _random_json(rng, depth + 1)
    return obj


@pytest.mark.parametrize("cls", CLASSES, ids=cls_id)
def test_fuzz_from_json(cls: type[Message]) -> None:
    rng = random.Random("json-" + cls.__qualname__)
    their_cls = theirs_for(cls)
    for _ in range(200):
        obj = _random_json_for(cls, rng)
        try:
            ours = cls.from_json(obj)
        except DecodeError:
            continue
        # What we accept must be a real message, that the official parser reads alike.
        data = ours.encode()
        assert_matches(ours, their_cls.FromString(data))
