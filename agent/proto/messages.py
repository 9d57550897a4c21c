"""The messages of the ``sandboxagent`` protocol the official SDKs speak.

Names, field numbers and types follow the published schema (see
docs/agent-design.md); this is the project's own declaration of them.
Filesystem and Process services first, then ExecutionService and
ContextService.
"""

from __future__ import annotations

from enum import IntEnum

from agent.proto.schema import Field, Message
from agent.proto.timestamp import Timestamp

__all__ = [
    "PTY",
    "BarData",
    "BoxAndWhiskerData",
    "Chart",
    "Chart2D",
    "ChartElement",
    "ConnectRequest",
    "ConnectResponse",
    "Context",
    "CreateContextRequest",
    "CreateWatcherRequest",
    "CreateWatcherResponse",
    "DestroyContextRequest",
    "DestroyContextResponse",
    "EntryInfo",
    "Error",
    "EventType",
    "ExecuteRequest",
    "ExecuteResponse",
    "FileType",
    "FilesystemEvent",
    "GetWatcherEventsRequest",
    "GetWatcherEventsResponse",
    "ListDirRequest",
    "ListDirResponse",
    "ListRequest",
    "ListResponse",
    "MakeDirRequest",
    "MakeDirResponse",
    "MoveRequest",
    "MoveResponse",
    "Output",
    "PieData",
    "Point",
    "PointChart",
    "PointData",
    "ProcessConfig",
    "ProcessEvent",
    "ProcessInfo",
    "ProcessInput",
    "ProcessSelector",
    "RemoveRequest",
    "RemoveResponse",
    "RemoveWatcherRequest",
    "RemoveWatcherResponse",
    "Result",
    "SendInputRequest",
    "SendInputResponse",
    "SendSignalRequest",
    "SendSignalResponse",
    "Signal",
    "StartRequest",
    "StartResponse",
    "StatRequest",
    "StatResponse",
    "StreamInputRequest",
    "StreamInputResponse",
    "Timestamp",
    "UpdateRequest",
    "UpdateResponse",
    "WatchDirRequest",
    "WatchDirResponse",
]


# --- enums ----------------------------------------------------------------------


class FileType(IntEnum):
    FILE_TYPE_UNSPECIFIED = 0
    FILE_TYPE_FILE = 1
    FILE_TYPE_DIRECTORY = 2


class EventType(IntEnum):
    EVENT_TYPE_UNSPECIFIED = 0
    EVENT_TYPE_CREATE = 1
    EVENT_TYPE_WRITE = 2
    EVENT_TYPE_REMOVE = 3
    EVENT_TYPE_RENAME = 4
    EVENT_TYPE_CHMOD = 5


class Signal(IntEnum):
    SIGNAL_UNSPECIFIED = 0
    SIGNAL_SIGTERM = 15
    SIGNAL_SIGKILL = 9


# --- Filesystem -------------------------------------------------------------------


class EntryInfo(Message):
    FIELDS = (
        Field(1, "name", "string"),
        Field(2, "type", "enum", FileType),
        Field(3, "path", "string"),
        Field(4, "size", "int64"),
        Field(5, "mode", "uint32"),
        Field(6, "permissions", "string"),
        Field(7, "owner", "string"),
        Field(8, "group", "string"),
        Field(9, "modified_time", "message", Timestamp),
        Field(10, "symlink_target", "string", optional=True),  # set only for symlinks
    )


class MoveRequest(Message):
    FIELDS = (
        Field(1, "source", "string"),
        Field(2, "destination", "string"),
    )


class MoveResponse(Message):
    FIELDS = (Field(1, "entry", "message", EntryInfo),)


class MakeDirRequest(Message):
    FIELDS = (Field(1, "path", "string"),)


class MakeDirResponse(Message):
    FIELDS = (Field(1, "entry", "message", EntryInfo),)


class RemoveRequest(Message):
    FIELDS = (Field(1, "path", "string"),)


class RemoveResponse(Message):
    pass


class StatRequest(Message):
    FIELDS = (Field(1, "path", "string"),)


class StatResponse(Message):
    FIELDS = (Field(1, "entry", "message", EntryInfo),)


class ListDirRequest(Message):
    FIELDS = (
        Field(1, "path", "string"),
        Field(2, "depth", "uint32"),
    )


class ListDirResponse(Message):
    FIELDS = (Field(1, "entries", "message", EntryInfo, repeated=True),)


class WatchDirRequest(Message):
    FIELDS = (
        Field(1, "path", "string"),
        Field(2, "recursive", "bool"),
    )


class FilesystemEvent(Message):
    FIELDS = (
        Field(1, "name", "string"),
        Field(2, "type", "enum", EventType),
    )


class WatchDirResponse(Message):
    class StartEvent(Message):
        pass

    class KeepAlive(Message):
        pass

    FIELDS = (
        Field(1, "start", "message", StartEvent, oneof="event"),
        Field(2, "filesystem", "message", FilesystemEvent, oneof="event"),
        Field(3, "keepalive", "message", KeepAlive, oneof="event"),
    )


class CreateWatcherRequest(Message):
    FIELDS = (
        Field(1, "path", "string"),
        Field(2, "recursive", "bool"),
    )


class CreateWatcherResponse(Message):
    FIELDS = (Field(1, "watcher_id", "string"),)


class GetWatcherEventsRequest(Message):
    FIELDS = (Field(1, "watcher_id", "string"),)


class GetWatcherEventsResponse(Message):
    FIELDS = (Field(1, "events", "message", FilesystemEvent, repeated=True),)


class RemoveWatcherRequest(Message):
    FIELDS = (Field(1, "watcher_id", "string"),)


class RemoveWatcherResponse(Message):
    pass


# --- Process --------------------------------------------------------------------


class PTY(Message):
    class Size(Message):
        FIELDS = (
            Field(1, "cols", "uint32"),
            Field(2, "rows", "uint32"),
        )

    FIELDS = (Field(1, "size", "message", Size),)


class ProcessConfig(Message):
    FIELDS = (
        Field(1, "cmd", "string"),
        Field(2, "args", "string", repeated=True),
        Field(3, "envs", "map"),
        Field(4, "cwd", "string", optional=True),
    )


class ProcessSelector(Message):
    FIELDS = (
        Field(1, "pid", "uint32", oneof="selector"),
        Field(2, "tag", "string", oneof="selector"),
    )


class ProcessInput(Message):
    FIELDS = (
        Field(1, "stdin", "bytes", oneof="input"),
        Field(2, "pty", "bytes", oneof="input"),
    )


class ListRequest(Message):
    pass


class ProcessInfo(Message):
    FIELDS = (
        Field(1, "config", "message", ProcessConfig),
        Field(2, "pid", "uint32"),
        Field(3, "tag", "string", optional=True),
    )


class ListResponse(Message):
    FIELDS = (Field(1, "processes", "message", ProcessInfo, repeated=True),)


class StartRequest(Message):
    FIELDS = (
        Field(1, "process", "message", ProcessConfig),
        Field(2, "pty", "message", PTY, optional=True),
        Field(3, "tag", "string", optional=True),
    )


class UpdateRequest(Message):
    FIELDS = (
        Field(1, "process", "message", ProcessSelector),
        Field(2, "pty", "message", PTY, optional=True),
    )


class UpdateResponse(Message):
    pass


class ProcessEvent(Message):
    class StartEvent(Message):
        FIELDS = (Field(1, "pid", "uint32"),)

    class DataEvent(Message):
        FIELDS = (
            Field(1, "stdout", "bytes", oneof="output"),
            Field(2, "stderr", "bytes", oneof="output"),
            Field(3, "pty", "bytes", oneof="output"),
        )

    class EndEvent(Message):
        FIELDS = (
            Field(1, "exit_code", "sint32"),  # negative: killed by that signal
            Field(2, "exited", "bool"),
            Field(3, "status", "string"),
            Field(4, "error", "string", optional=True),
        )

    class KeepAlive(Message):
        pass

    FIELDS = (
        Field(1, "start", "message", StartEvent, oneof="event"),
        Field(2, "data", "message", DataEvent, oneof="event"),
        Field(3, "end", "message", EndEvent, oneof="event"),
        Field(4, "keepalive", "message", KeepAlive, oneof="event"),
    )


class StartResponse(Message):
    FIELDS = (Field(1, "event", "message", ProcessEvent),)


class ConnectResponse(Message):
    FIELDS = (Field(1, "event", "message", ProcessEvent),)


class SendInputRequest(Message):
    FIELDS = (
        Field(1, "process", "message", ProcessSelector),
        Field(2, "input", "message", ProcessInput),
    )


class SendInputResponse(Message):
    pass


class StreamInputRequest(Message):
    class StartEvent(Message):
        FIELDS = (Field(1, "process", "message", ProcessSelector),)

    class DataEvent(Message):
        FIELDS = (Field(2, "input", "message", ProcessInput),)  # number 2 in the schema, not 1

    class KeepAlive(Message):
        pass

    FIELDS = (
        Field(1, "start", "message", StartEvent, oneof="event"),
        Field(2, "data", "message", DataEvent, oneof="event"),
        Field(3, "keepalive", "message", KeepAlive, oneof="event"),
    )


class StreamInputResponse(Message):
    pass


class SendSignalRequest(Message):
    FIELDS = (
        Field(1, "process", "message", ProcessSelector),
        Field(2, "signal", "enum", Signal),
    )


class SendSignalResponse(Message):
    pass


class ConnectRequest(Message):
    FIELDS = (Field(1, "process", "message", ProcessSelector),)


# --- ExecutionService -------------------------------------------------------------


class ExecuteRequest(Message):
    FIELDS = (
        Field(1, "context_id", "string"),
        Field(2, "code", "string"),
        Field(3, "language", "string"),
        Field(4, "env_vars", "map"),
    )


class Output(Message):
    FIELDS = (Field(1, "content", "string"),)


class Error(Message):
    FIELDS = (
        Field(1, "name", "string"),
        Field(2, "value", "string"),
        Field(3, "traceback", "string"),
    )


class Point(Message):
    FIELDS = (
        Field(1, "x_str", "string", oneof="x_value"),
        Field(2, "x_num", "double", oneof="x_value"),
        Field(3, "y_str", "string", oneof="y_value"),
        Field(4, "y_num", "double", oneof="y_value"),
    )


class PointData(Message):
    FIELDS = (
        Field(1, "label", "string"),
        Field(2, "points", "message", Point, repeated=True),
    )


class BarData(Message):
    FIELDS = (
        Field(1, "label", "string"),
        Field(2, "group", "string"),
        Field(3, "value", "string"),
    )


class PieData(Message):
    FIELDS = (
        Field(1, "label", "string"),
        Field(2, "angle", "double"),
        Field(3, "radius", "double"),
    )


class BoxAndWhiskerData(Message):
    FIELDS = (
        Field(1, "label", "string"),
        Field(2, "min", "double"),
        Field(3, "first_quartile", "double"),
        Field(4, "median", "double"),
        Field(5, "third_quartile", "double"),
        Field(6, "max", "double"),
        Field(7, "outliers", "double", repeated=True),
    )


class ChartElement(Message):
    FIELDS = (
        Field(1, "point_data", "message", PointData, oneof="element"),
        Field(2, "bar_data", "message", BarData, oneof="element"),
        Field(3, "pie_data", "message", PieData, oneof="element"),
        Field(4, "box_whisker_data", "message", BoxAndWhiskerData, oneof="element"),
        Field(5, "nested_chart", "message", "Chart", oneof="element"),  # recursive: by name
    )


class Chart(Message):
    FIELDS = (
        Field(1, "type", "string"),
        Field(2, "title", "string"),
        Field(3, "elements", "message", ChartElement, repeated=True),
        Field(4, "extra", "map"),
    )


class Chart2D(Message):
    FIELDS = (
        Field(1, "x_label", "string"),
        Field(2, "y_label", "string"),
        Field(3, "x_unit", "string"),
        Field(4, "y_unit", "string"),
        Field(5, "chart", "message", Chart),
    )


class PointChart(Message):
    FIELDS = (
        Field(1, "x_ticks", "string", repeated=True),
        Field(2, "x_tick_labels", "string", repeated=True),
        Field(3, "x_scale", "string"),
        Field(4, "y_ticks", "string", repeated=True),
        Field(5, "y_tick_labels", "string", repeated=True),
        Field(6, "y_scale", "string"),
        Field(7, "chart_2d", "message", Chart2D),
    )


class Result(Message):
    FIELDS = (
        Field(1, "exit_code", "int32"),
        Field(2, "started_at", "message", Timestamp),
        Field(3, "finished_at", "message", Timestamp),
        # One field per MIME rendering; `json` and `data` hold JSON text,
        # `png`, `jpeg` and `pdf` base64 text (strings, not bytes, on the wire).
        Field(4, "text", "string"),
        Field(5, "html", "string"),
        Field(6, "markdown", "string"),
        Field(7, "svg", "string"),
        Field(8, "png", "string"),
        Field(9, "jpeg", "string"),
        Field(10, "pdf", "string"),
        Field(11, "latex", "string"),
        Field(12, "json", "string"),
        Field(13, "javascript", "string"),
        Field(14, "data", "string"),
        Field(15, "chart", "message", Chart),
        Field(16, "execution_count", "int32"),
        Field(17, "is_main_result", "bool"),
        Field(18, "extra", "map"),
    )


class ExecuteResponse(Message):
    FIELDS = (
        Field(1, "stdout", "message", Output, oneof="event"),
        Field(2, "stderr", "message", Output, oneof="event"),
        Field(3, "result", "message", Result, oneof="event"),
        Field(4, "error", "message", Error, oneof="event"),
    )


# --- ContextService ---------------------------------------------------------------


class CreateContextRequest(Message):
    FIELDS = (
        Field(1, "language", "string"),
        Field(2, "cwd", "string"),
    )


class Context(Message):
    FIELDS = (
        Field(1, "id", "string"),
        Field(2, "language", "string"),
        Field(3, "cwd", "string"),
        Field(4, "created_at", "message", Timestamp),
        Field(5, "env_vars", "map"),
    )


class DestroyContextRequest(Message):
    FIELDS = (Field(1, "context_id", "string"),)


class DestroyContextResponse(Message):
    FIELDS = (Field(1, "success", "bool"),)
