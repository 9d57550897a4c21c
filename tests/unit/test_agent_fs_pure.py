"""The pure parts of agent/fs: paths, errors, entries, multipart, inotify records, watch bookkeeping."""

from __future__ import annotations

import ast
import errno
import os
import stat
import struct
import sys
from pathlib import Path

import httpx
import pytest

from agent.fs import inotify
from agent.fs.entries import TYPE_DIRECTORY, TYPE_FILE, TYPE_UNSPECIFIED, Names, build_entry, file_type, permissions
from agent.fs.errors import FsError, from_os_error
from agent.fs.inotify import RawEvent, parse_events
from agent.fs.multipart import (
    Finished,
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    boundary_of,
    content_disposition,
    parse_header_params,
)
from agent.fs.paths import download_candidates, resolve, upload_target, wire_text
from agent.fs.watch import (
    EVENT_CHMOD,
    EVENT_CREATE,
    EVENT_REMOVE,
    EVENT_RENAME,
    EVENT_WRITE,
    WatchTable,
    event_type,
)

# --- paths ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/etc/passwd", "/etc/passwd"),
        ("notes.txt", "/home/ann/notes.txt"),
        ("a/../b/./c", "/home/ann/b/c"),
        ("~", "/home/ann"),
        ("~/x/y", "/home/ann/x/y"),
        ("~bob/x", "/home/ann/~bob/x"),  # other users' homes are not expanded
        ("", "/home/ann"),
        ("//srv//data/", "/srv/data"),
        ("/../..", "/"),
        ("/tmp/", "/tmp"),
    ],
)
def test_resolve(path: str, expected: str) -> None:
    assert resolve(path, "/home/ann") == expected


def test_resolve_rejects_nul() -> None:
    with pytest.raises(FsError) as caught:
        resolve("a\x00b", "/root")
    assert caught.value.code == "invalid_argument"


def test_resolve_without_home_uses_root() -> None:
    assert resolve("x", "") == "/x"


def test_wire_text_keeps_valid_text_and_replaces_undecodable_bytes() -> None:
    assert wire_text("héllo") == "héllo"
    assert wire_text(os.fsdecode(b"bad\xffname")) == "bad\ufffdname"
    assert wire_text("lone\ud800") == "lone?"
    wire_text(os.fsdecode(b"\xff\xfe")).encode("utf-8")


def test_download_candidates_absolute_first_then_home() -> None:
    assert download_candidates("etc/hosts", "/root") == ["/etc/hosts", "/root/etc/hosts"]
    assert download_candidates("/etc/hosts", "/root") == ["/etc/hosts"]
    assert download_candidates("~/a.txt", "/root") == ["/root/a.txt"]
    assert download_candidates("x", "/") == ["/x"]


def _is_dir(*dirs: str):  # type: ignore[no-untyped-def]
    return lambda path: path in dirs


@pytest.mark.parametrize(
    ("path", "filename", "expected"),
    [
        ("/data/a.txt", "/data/a.txt", "/data/a.txt"),  # what the SDKs send
        ("a.txt", "a.txt", "/home/ann/a.txt"),
        ("/data/b.txt", "local.txt", "/data/b.txt"),  # path wins over the file name
        ("/data", "x/y/local.txt", "/data/local.txt"),  # an existing directory
        ("/new/dir/", "local.txt", "/new/dir/local.txt"),  # a trailing slash
        (None, "/abs/file", "/abs/file"),  # no path: the file name is the path
        (None, "rel/file", "/home/ann/rel/file"),
        ("", "rel/file", "/home/ann/rel/file"),
    ],
)
def test_upload_target(path: str | None, filename: str, expected: str) -> None:
    assert upload_target(path, filename, "/home/ann", _is_dir("/data")) == expected


@pytest.mark.parametrize(
    ("path", "filename"), [(None, None), (None, ""), ("/data", ""), ("/data/", ".."), ("/x/", None)]
)
def test_upload_target_needs_a_name(path: str | None, filename: str | None) -> None:
    with pytest.raises(FsError) as caught:
        upload_target(path, filename, "/home/ann", _is_dir("/data"))
    assert caught.value.code == "invalid_argument"


# --- errors -----------------------------------------------------------------------


def test_missing_path_says_what_both_sdks_look_for() -> None:
    error = from_os_error(FileNotFoundError(errno.ENOENT, "No such file or directory"), "stat", "/nope")
    assert error.code == "not_found"
    assert error.http_status == 404
    assert "no such file or directory" in error.message
    assert "not found" in error.message
    assert "/nope" in error.message


def test_a_file_on_the_way_is_a_missing_path() -> None:
    error = from_os_error(NotADirectoryError(errno.ENOTDIR, "Not a directory"), "stat", "/etc/passwd/x")
    assert error.code == "not_found"
    assert "no such file or directory" in error.message


@pytest.mark.parametrize(
    ("number", "code", "status"),
    [
        (errno.EACCES, "permission_denied", 403),
        (errno.EPERM, "permission_denied", 403),
        (errno.EEXIST, "already_exists", 409),
        (errno.ENOSPC, "resource_exhausted", 507),
        (errno.EISDIR, "invalid_argument", 400),
        (errno.ENAMETOOLONG, "invalid_argument", 400),
        (errno.EIO, "internal", 500),
    ],
)
def test_os_errors_map_to_codes(number: int, code: str, status: int) -> None:
    error = from_os_error(OSError(number, os.strerror(number)), "open", "/p")
    assert (error.code, error.http_status) == (code, status)
    assert error.message.startswith("open /p: ")


# --- entries ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "text", "kind"),
    [
        (stat.S_IFREG | 0o644, "-rw-r--r--", TYPE_FILE),
        (stat.S_IFDIR | 0o755, "drwxr-xr-x", TYPE_DIRECTORY),
        (stat.S_IFLNK | 0o777, "lrwxrwxrwx", TYPE_UNSPECIFIED),
        (stat.S_IFREG | 0o4755, "-rwsr-xr-x", TYPE_FILE),
        (stat.S_IFDIR | 0o1777, "drwxrwxrwt", TYPE_DIRECTORY),
        (stat.S_IFREG | 0o2640, "-rw-r-S---", TYPE_FILE),
        (stat.S_IFIFO | 0o600, "prw-------", TYPE_UNSPECIFIED),
        (stat.S_IFCHR | 0o666, "crw-rw-rw-", TYPE_UNSPECIFIED),
        (stat.S_IFSOCK | 0o755, "srwxr-xr-x", TYPE_UNSPECIFIED),
    ],
)
def test_permissions_and_types(mode: int, text: str, kind: int) -> None:
    assert permissions(mode) == text
    assert file_type(mode) == kind


def _stat(mode: int, size: int = 0, uid: int = 1000, gid: int = 1000, mtime_ns: int = 1_700_000_000_123_456_789):
    # os.stat_result from a tuple: st_mode..st_ctime, then the float and ns times.
    seconds = mtime_ns // 10**9
    values = (mode, 1, 2, 1, uid, gid, size, seconds, seconds, seconds)
    extra = {"st_atime_ns": mtime_ns, "st_mtime_ns": mtime_ns, "st_ctime_ns": mtime_ns}
    return os.stat_result(values, extra)


def _names() -> Names:
    return Names(user={1000: "ann"}.__getitem__, group={1000: "staff"}.__getitem__)


def test_build_entry_of_a_file() -> None:
    entry = build_entry("/home/ann/a.txt", _stat(stat.S_IFREG | 0o640, size=12), _names())
    assert entry.name == "a.txt"
    assert entry.path == "/home/ann/a.txt"
    assert entry.type == TYPE_FILE
    assert entry.size == 12
    assert entry.mode == 0o640
    assert entry.permissions == "-rw-r-----"
    assert (entry.owner, entry.group) == ("ann", "staff")
    assert entry.mtime_ns == 1_700_000_000_123_456_789
    assert entry.symlink_target is None


def test_build_entry_of_a_symlink_takes_type_and_mode_from_its_target() -> None:
    link = _stat(stat.S_IFLNK | 0o777, size=9)
    target = _stat(stat.S_IFDIR | 0o750)
    entry = build_entry("/srv/link", link, _names(), target, "/srv/real")
    assert entry.type == TYPE_DIRECTORY
    assert entry.mode == 0o750
    assert entry.permissions == "lrwxrwxrwx"
    assert entry.symlink_target == "/srv/real"
    assert entry.size == 9


def test_build_entry_of_a_dangling_symlink_has_no_type() -> None:
    entry = build_entry("/srv/link", _stat(stat.S_IFLNK | 0o777), _names(), None, "/srv/gone")
    assert entry.type == TYPE_UNSPECIFIED
    assert entry.symlink_target == "/srv/gone"


def test_unknown_owner_and_group_show_as_numbers() -> None:
    entry = build_entry("/", _stat(stat.S_IFDIR | 0o755, uid=4242, gid=4343), _names())
    assert (entry.owner, entry.group) == ("4242", "4343")
    assert entry.name == "/"


def test_names_are_looked_up_once_per_operation() -> None:
    calls = []

    def user(uid: int) -> str:
        calls.append(uid)
        return "ann"

    names = Names(user=user)
    assert [names.user(1000) for _ in range(3)] == ["ann"] * 3
    assert calls == [1000]


# --- multipart --------------------------------------------------------------------


def _httpx_body(files, data=None):  # type: ignore[no-untyped-def]
    """A multipart body exactly as the Python SDK's httpx builds it, and its boundary."""
    request = httpx.Request("POST", "http://sandbox/upload", files=files, data=data)
    return request.read(), boundary_of(request.headers["content-type"])


def _collect(parser: MultipartParser, chunks: list[bytes]):  # type: ignore[no-untyped-def]
    """[(name, filename, content)] from feeding ``chunks``; checks the event grammar on the way."""
    parts: list[tuple[str, str | None, bytes]] = []
    current = None
    finished = False
    for chunk in chunks:
        for event in parser.feed(chunk):
            assert not finished
            if isinstance(event, PartStart):
                assert current is None
                current = (event.name, event.filename, bytearray())
            elif isinstance(event, PartData):
                assert current is not None and event.data
                current[2].extend(event.data)
            elif isinstance(event, PartEnd):
                assert current is not None
                parts.append((current[0], current[1], bytes(current[2])))
                current = None
            elif isinstance(event, Finished):
                finished = True
    parser.close()
    assert current is None
    return parts


# Content that looks like delimiters without being one.
TRICKY = b"line\r\n--\r\n--not-the-boundary\r\r\n\r\n-- \r\n" + bytes(range(256)) + b"\r\n"


def test_sdk_upload_body_split_at_every_position() -> None:
    body, boundary = _httpx_body(files=[("file", ("/home/user/a b.txt", TRICKY))], data={"path": "/home/user/a b.txt"})
    expected = [("path", None, b"/home/user/a b.txt"), ("file", "/home/user/a b.txt", TRICKY)]
    for cut in range(len(body) + 1):
        assert _collect(MultipartParser(boundary), [body[:cut], body[cut:]]) == expected, cut


def test_three_way_splits_around_every_delimiter() -> None:
    body, boundary = _httpx_body(files=[("file", ("x", b"ab\r\ncd")), ("file", ("y", b""))], data={"path": "/d/"})
    expected = [("path", None, b"/d/"), ("file", "x", b"ab\r\ncd"), ("file", "y", b"")]
    for first in range(len(body) + 1):
        for second in range(first, min(len(body), first + 90) + 1):
            chunks = [body[:first], body[first:second], body[second:]]
            assert _collect(MultipartParser(boundary), chunks) == expected, (first, second)


def test_byte_at_a_time() -> None:
    body, boundary = _httpx_body(files=[("file", ("f", TRICKY * 3))])
    assert _collect(MultipartParser(boundary), [body[i : i + 1] for i in range(len(body))]) == [
        ("file", "f", TRICKY * 3)
    ]


def test_preamble_epilogue_padding_and_a_part_without_content() -> None:
    body = (
        b"ignored preamble\r\n--B  \t\r\n"
        b'Content-Disposition: form-data; name="a"\r\n\r\n'
        b"\r\n--B\r\n"
        b'content-disposition: form-data; name="file"; filename="f.bin"\r\nContent-Type: x/y\r\n\r\n'
        b"data\r\n--B--\r\nepilogue --B\r\n"
    )
    assert _collect(MultipartParser(b"B"), [body]) == [("a", None, b""), ("file", "f.bin", b"data")]


def test_everything_after_the_close_is_ignored() -> None:
    parser = MultipartParser(b"B")
    events = parser.feed(b'--B\r\ncontent-disposition: form-data; name="a"\r\n\r\nv\r\n--B--')
    assert isinstance(events[-1], Finished)
    assert parser.finished
    assert parser.feed(b"\r\n--B\r\nmore garbage") == []
    parser.close()


def test_content_is_handed_out_as_it_arrives() -> None:
    parser = MultipartParser(b"boundary-123")
    parser.feed(b'--boundary-123\r\ncontent-disposition: form-data; name="file"; filename="big"\r\n\r\n')
    chunk = os.urandom(64 * 1024).replace(b"\r", b"x")
    fed = given = 0
    for _ in range(64):
        given += sum(len(e.data) for e in parser.feed(chunk) if isinstance(e, PartData))
        fed += len(chunk)
        # Only what could start a delimiter is held back.
        assert fed - given < len(b"\r\n--boundary-123")
    events = parser.feed(b"\r\n--boundary-123--\r\n")
    given += sum(len(e.data) for e in events if isinstance(e, PartData))
    assert given == fed


@pytest.mark.parametrize(
    "body",
    [
        b"--B\r\nno colon here\r\n\r\nx\r\n--B--",
        b"--B\r\ncontent-type: text/plain\r\n\r\nx\r\n--B--",  # no Content-Disposition
        b"--B\r\ncontent-disposition: attachment; name=a\r\n\r\nx\r\n--B--",
        b"--B\r\ncontent-disposition: form-data\r\n\r\nx\r\n--B--",  # no name
        b"--B junk\r\n",
        b"--Bjunk",
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(MultipartError):
        _collect(MultipartParser(b"B"), [body])


@pytest.mark.parametrize(
    "body",
    [b"", b"--B\r\n", b'--B\r\ncontent-disposition: form-data; name="a"\r\n\r\nunfinished', b"--B\r\n\r\nx\r\n--B"],
)
def test_truncated_bodies(body: bytes) -> None:
    with pytest.raises(MultipartError):
        _collect(MultipartParser(b"B"), [body])


def test_part_headers_are_capped() -> None:
    parser = MultipartParser(b"B", max_header_bytes=100)
    with pytest.raises(MultipartError):
        parser.feed(b"--B\r\nx-long: " + b"a" * 200)


def test_boundary_length_is_checked() -> None:
    with pytest.raises(MultipartError):
        MultipartParser(b"")
    with pytest.raises(MultipartError):
        MultipartParser(b"x" * 201)


@pytest.mark.parametrize(
    ("disposition", "filename"),
    [
        ('form-data; name="file"; filename="a%22b.txt"', 'a"b.txt'),  # httpx and browsers encode quotes
        ('form-data; name="file"; filename="a\\"b.txt"', 'a"b.txt'),  # RFC 2616 quoted-pair
        ('form-data; name="file"; filename="C:\\dir\\f.txt"', "C:\\dir\\f.txt"),  # browsers leave backslashes
        ('form-data; name="file"; filename="semi;colon.txt"', "semi;colon.txt"),
        ("form-data; name=file; filename=plain.txt", "plain.txt"),
        ('form-data; name="file"; filename="x"; filename*=UTF-8\'\'%C3%A9t%C3%A9.txt', "été.txt"),
        ('form-data; name="file"; filename="été.txt"', "été.txt"),
        ('form-data; name="file"; filename="line%0Abreak"', "line\nbreak"),
        ('form-data; name="file"', None),
    ],
)
def test_file_names(disposition: str, filename: str | None) -> None:
    body = b"--B\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\nx\r\n--B--"
    assert _collect(MultipartParser(b"B"), [body]) == [("file", filename, b"x")]


def test_file_name_bytes_that_are_not_utf8_survive() -> None:
    body = b'--B\r\ncontent-disposition: form-data; name="file"; filename="\xe9t\xe9"\r\n\r\nx\r\n--B--'
    [(_, filename, _)] = _collect(MultipartParser(b"B"), [body])
    assert os.fsencode(filename) == b"\xe9t\xe9"


def test_header_params() -> None:
    assert parse_header_params('form-data; name="a;b"; flag; x = "q\\\\"') == (
        "form-data",
        {"name": "a;b", "flag": "", "x": "q\\"},
    )


@pytest.mark.parametrize(
    ("value", "boundary"),
    [
        ("multipart/form-data; boundary=abc", b"abc"),
        ('Multipart/Form-Data; charset=utf-8; boundary="a b:c"', b"a b:c"),
    ],
)
def test_boundary_of(value: str, boundary: bytes) -> None:
    assert boundary_of(value) == boundary


@pytest.mark.parametrize(
    "value",
    [
        "",
        "application/octet-stream",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/mixed; boundary=a",
    ],
)
def test_boundary_of_rejects(value: str) -> None:
    with pytest.raises(MultipartError):
        boundary_of(value)


def test_content_disposition() -> None:
    assert content_disposition("report.pdf") == 'attachment; filename="report.pdf"'
    assert content_disposition('a"b\\c') == "attachment; filename=\"a_b_c\"; filename*=UTF-8''a%22b%5Cc"
    assert content_disposition("été.txt") == "attachment; filename=\"_t_.txt\"; filename*=UTF-8''%C3%A9t%C3%A9.txt"
    content_disposition(os.fsdecode(b"\xff.bin")).encode("latin-1")


# --- inotify records --------------------------------------------------------------


def _record(wd: int, mask: int, cookie: int, name: bytes, pad_to: int = 16) -> bytes:
    length = 0 if not name else (len(name) + 1 + pad_to - 1) // pad_to * pad_to
    return struct.pack("=iIII", wd, mask, cookie, length) + name.ljust(length, b"\0")


def test_parse_events() -> None:
    data = (
        _record(1, inotify.IN_CREATE, 0, b"new.txt")
        + _record(1, inotify.IN_DELETE_SELF, 0, b"")
        + _record(2, inotify.IN_MOVED_FROM | inotify.IN_ISDIR, 77, b"exactly-sixteen!")
        + _record(-1, inotify.IN_Q_OVERFLOW, 0, b"")
    )
    assert parse_events(data) == [
        RawEvent(1, inotify.IN_CREATE, 0, b"new.txt"),
        RawEvent(1, inotify.IN_DELETE_SELF, 0, b""),
        RawEvent(2, inotify.IN_MOVED_FROM | inotify.IN_ISDIR, 77, b"exactly-sixteen!"),
        RawEvent(-1, inotify.IN_Q_OVERFLOW, 0, b""),
    ]
    assert parse_events(b"") == []


def test_parse_events_keeps_name_bytes() -> None:
    [event] = parse_events(_record(3, inotify.IN_MODIFY, 0, b"caf\xe9"))
    assert event.name == b"caf\xe9"


@pytest.mark.parametrize("cut", [1, 8, 15, 17, 20])
def test_parse_events_rejects_truncated_records(cut: int) -> None:
    data = _record(1, inotify.IN_CREATE, 0, b"name")
    with pytest.raises(ValueError):
        parse_events(data + data[:cut])


# --- watch bookkeeping ------------------------------------------------------------


@pytest.mark.parametrize(
    ("mask", "kind"),
    [
        (inotify.IN_CREATE, EVENT_CREATE),
        (inotify.IN_CREATE | inotify.IN_ISDIR, EVENT_CREATE),
        (inotify.IN_MOVED_TO, EVENT_CREATE),
        (inotify.IN_MOVED_FROM, EVENT_RENAME),
        (inotify.IN_DELETE, EVENT_REMOVE),
        (inotify.IN_MODIFY, EVENT_WRITE),
        (inotify.IN_ATTRIB, EVENT_CHMOD),
        (inotify.IN_DELETE_SELF, None),
        (inotify.IN_IGNORED, None),
        (inotify.IN_ACCESS, None),
    ],
)
def test_event_type(mask: int, kind: int | None) -> None:
    assert event_type(mask) == kind


def test_table_names_events_relative_to_the_root() -> None:
    table = WatchTable(recursive=True)
    table.added(1, "")
    table.added(2, "sub")
    table.added(3, "sub/deeper")
    assert table.interpret(RawEvent(1, inotify.IN_CREATE, 0, b"a.txt")).events == [("a.txt", EVENT_CREATE)]
    assert table.interpret(RawEvent(3, inotify.IN_MODIFY, 0, b"b")).events == [("sub/deeper/b", EVENT_WRITE)]
    assert table.interpret(RawEvent(9, inotify.IN_MODIFY, 0, b"b")) == ([], None, False, [], False)  # unknown watch


def test_table_descends_into_new_directories_when_recursive() -> None:
    recursive = WatchTable(recursive=True)
    recursive.added(1, "")
    recursive.added(2, "sub")
    meaning = recursive.interpret(RawEvent(2, inotify.IN_CREATE | inotify.IN_ISDIR, 0, b"new"))
    assert meaning.events == [("sub/new", EVENT_CREATE)]
    assert (meaning.descend, meaning.fresh) == ("sub/new", True)
    moved_in = recursive.interpret(RawEvent(1, inotify.IN_MOVED_TO | inotify.IN_ISDIR, 5, b"in"))
    assert (moved_in.descend, moved_in.fresh) == ("in", False)

    flat = WatchTable(recursive=False)
    flat.added(1, "")
    assert flat.interpret(RawEvent(1, inotify.IN_CREATE | inotify.IN_ISDIR, 0, b"new")).descend is None


def test_table_drops_a_subtree_that_moved_away() -> None:
    table = WatchTable(recursive=True)
    for wd, path in enumerate(["", "a", "a/b", "a/b/c", "ab", "x"], start=1):
        table.added(wd, path)
    meaning = table.interpret(RawEvent(1, inotify.IN_MOVED_FROM | inotify.IN_ISDIR, 9, b"a"))
    assert meaning.events == [("a", EVENT_RENAME)]
    assert sorted(meaning.drop) == [2, 3, 4]  # not "ab"
    assert sorted(table.paths.values()) == ["", "ab", "x"]


def test_table_notices_the_root_going_away() -> None:
    table = WatchTable(recursive=True)
    table.added(1, "")
    table.added(2, "sub")
    assert table.interpret(RawEvent(2, inotify.IN_DELETE_SELF, 0, b"")) == ([], None, False, [], False)
    assert table.interpret(RawEvent(2, inotify.IN_IGNORED, 0, b"")).root_gone is False
    assert 2 not in table.paths
    assert table.interpret(RawEvent(1, inotify.IN_DELETE_SELF, 0, b"")).root_gone is True
    assert table.interpret(RawEvent(1, inotify.IN_IGNORED, 0, b"")).root_gone is True
    assert len(table) == 0


# --- the sources ------------------------------------------------------------------

FS_SOURCES = sorted((Path(__file__).resolve().parents[2] / "agent" / "fs").glob("*.py"))


@pytest.mark.parametrize("path", FS_SOURCES, ids=lambda p: p.name)
def test_sources_are_python39_and_standard_library_only(path: Path) -> None:
    """The agent runs on the sandbox's own python3 (3.9 or newer), with nothing installed."""
    tree = ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))
    assert any(isinstance(node, ast.ImportFrom) and node.module == "__future__" for node in tree.body), (
        "annotations must stay unevaluated (from __future__ import annotations)"
    )
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top == "agent" or top in sys.stdlib_module_names, f"imports {name}"
