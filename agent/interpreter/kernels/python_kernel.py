"""The Python kernel: one persistent interpreter state, driven by the agent (see agent/interpreter).

Run by the sandbox's own python3 as the context's user, from a read-only
mount, with only the standard library: ``python3 python_kernel.py``. It
behaves like a notebook cell runner: the value of a trailing expression is
the main result, ``display(obj)`` emits more results, matplotlib figures left
open at the end of an execution (or shown with ``plt.show()``) come back as
PNG, objects render through the ``_repr_*_`` protocol (a pandas DataFrame as
HTML and text), and an exception comes back as name, value and traceback.
Python 3.9+.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import builtins
import codecs
import contextlib
import inspect
import io
import json
import linecache
import os
import signal
import sys
import traceback
import types
import warnings

KERNEL_FILE = os.path.abspath(__file__)

# The _repr_*_ methods a notebook knows, and the MIME type each renders.
REPR_METHODS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_pdf_", "application/pdf"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
    ("_repr_javascript_", "application/javascript"),
)
BINARY_TYPES = frozenset({"image/png", "image/jpeg", "application/pdf"})
TEXT_LIMIT = 1 << 20  # a repr longer than this is cut: a huge one would only clog the stream


class Channel:
    """The protocol pipes: requests in, events out."""

    def __init__(self, in_fd: int, out_fd: int) -> None:
        self._in = os.fdopen(in_fd, "rb", buffering=0)
        self._out_fd = out_fd
        self._pending = b""

    def receive(self) -> dict | None:
        """The next request, or None when the agent closed the pipe."""
        while b"\n" not in self._pending:
            chunk = self._in.read(65536)
            if not chunk:
                return None
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)

    def send(self, event: dict, *, flush: bool = True) -> None:
        # Output written so far goes before the event: sys.stdout's as events of
        # its own, a child's to the pipes the agent drains when an event arrives.
        if flush:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
        data = (json.dumps(event) + "\n").encode()
        # An interrupt must not cut an event in half: it is held until the line is out.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            while data:
                data = data[os.write(self._out_fd, data) :]
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


class EventOutput(io.RawIOBase):
    """sys.stdout / sys.stderr underneath: what the code prints goes out as events, in order with its results.

    ``fileno()`` is still the real fd 1 or 2 (a pipe the agent reads), for code
    that hands it to a child process.
    """

    def __init__(self, channel: Channel, name: str, fd: int) -> None:
        super().__init__()
        self._channel = channel
        self._name = name
        self._fd = fd
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def write(self, data: bytes) -> int:  # type: ignore[override]
        text = self._decoder.decode(bytes(data))
        if text:
            self._channel.send({"event": self._name, "text": text}, flush=False)
        return len(data)


def event_stream(channel: Channel, name: str, fd: int) -> io.TextIOWrapper:
    raw = EventOutput(channel, name, fd)
    # Line-buffered: print's text and its newline go out as one event.
    return io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8", errors="backslashreplace", line_buffering=True)


class Kernel:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.count = 0
        # The user's code gets a __main__ module of its own (pickle, dataclasses and
        # doctest look classes up there), not this script's.
        main_module = types.ModuleType("__main__")
        main_module.__dict__.update(__builtins__=builtins, display=self.display)
        sys.modules["__main__"] = main_module
        self.namespace: dict = main_module.__dict__
        self.loop: asyncio.AbstractEventLoop | None = None
        self._shown: set = set()  # figures already sent in this execution
        self._patched_pyplot = False

    # --- one execution ---------------------------------------------------------

    def execute(self, code: str, env: dict) -> None:
        self.count += 1
        self._shown = set()
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        self._patch_pyplot()
        error: BaseException | None = None
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                error = self._run(code)
                # Figures drawn before an error are shown too, as in a notebook.
                self.flush_figures()
            finally:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        except BaseException as exc:  # an interrupt that landed outside the user's code
            error = exc
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if error is not None:
            self.report(error)
        self.channel.send({"event": "done"})

    def _run(self, code: str) -> BaseException | None:
        """Run one cell; what it raised, or None."""
        filename = f"<cell-{self.count}>"
        # Tracebacks show the cell's lines, as they do for a file.
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        try:
            tree = ast.parse(code, filename, "exec")
        except (SyntaxError, ValueError) as exc:  # ValueError: a NUL byte in the source
            return exc
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr) and not code.rstrip().endswith(";"):
            last = ast.Expression(tree.body.pop().value)
        try:
            self._eval(compile(tree, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT))
            if last is not None:
                value = self._eval(compile(last, filename, "eval", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT))
                if value is not None:
                    self.namespace["_"] = value
                    self.emit(value, main=True)
        except BaseException as exc:
            return exc
        return None

    def _eval(self, code: types.CodeType) -> object:
        result = eval(code, self.namespace)
        if code.co_flags & inspect.CO_COROUTINE:
            # Top-level await: one loop for the kernel's life, so tasks and
            # connections made in one execution still work in the next.
            if self.loop is None:
                self.loop = asyncio.new_event_loop()
                asyncio.set_event_loop(self.loop)
            result = self.loop.run_until_complete(result)
        return result

    # --- outputs -----------------------------------------------------------------

    def display(self, *objects: object) -> None:
        """display(obj, ...): each object as a result of its own, as in a notebook."""
        for obj in objects:
            self.emit(obj, main=False)

    def emit(self, obj: object, *, main: bool) -> None:
        data = mime_bundle(obj)
        if is_figure(obj):
            self._shown.add(id(obj))
        self.channel.send({"event": "result", "data": data, "main": main})

    def flush_figures(self) -> None:
        """Send the figures still open, as a notebook's inline backend does, then close them."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        for number in pyplot.get_fignums():
            figure = pyplot.figure(number)
            if id(figure) not in self._shown:
                self.emit(figure, main=False)
        pyplot.close("all")

    def _patch_pyplot(self) -> None:
        """Make plt.show() send the figures at once (on Agg it would only warn)."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None or self._patched_pyplot:
            return
        self._patched_pyplot = True
        pyplot.show = lambda *args, **kwargs: self.flush_figures()

    def report(self, exc: BaseException) -> None:
        self.channel.send(
            {
                "event": "error",
                "name": type(exc).__name__,
                "value": str(exc),
                "traceback": format_exception(exc),
            }
        )


def mime_bundle(obj: object) -> dict:
    """Every rendering of ``obj`` a notebook would show, as MIME type -> text."""
    data: dict = {}
    if is_figure(obj):
        data["image/png"] = figure_png(obj)
    elif not isinstance(obj, type):  # a class's _repr_html_ is an unbound function
        bundle = _call(obj, "_repr_mimebundle_")
        if isinstance(bundle, tuple):
            bundle = bundle[0]
        if isinstance(bundle, dict):
            for mime, value in bundle.items():
                _add(data, mime, value)
        for method, mime in REPR_METHODS:
            if mime not in data:
                _add(data, mime, _call(obj, method))
    if "application/json" not in data and isinstance(obj, (dict, list)):
        with contextlib.suppress(TypeError, ValueError):
            data["application/json"] = json.dumps(obj)
    if "text/plain" not in data:
        data["text/plain"] = _repr(obj)
    return data


def _call(obj: object, method: str) -> object:
    try:
        function = getattr(obj, method, None)
        if not callable(function):
            return None
        value = function()
    except Exception:  # a broken _repr_*_ must not fail the execution: the others still render
        return None
    if isinstance(value, tuple) and len(value) == 2:  # (data, metadata)
        value = value[0]
    return value


def _add(data: dict, mime: str, value: object) -> None:
    if value is None or not isinstance(mime, str):
        return
    if mime in BINARY_TYPES:
        if isinstance(value, str):
            value = value.encode("latin-1", "replace") if not _is_base64(value) else value
        if isinstance(value, (bytes, bytearray)):
            value = base64.b64encode(bytes(value)).decode("ascii")
    elif mime == "application/json" or mime.endswith("+json"):
        if not isinstance(value, str):
            try:
                value = json.dumps(value)
            except (TypeError, ValueError):
                return
    elif isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        data[mime] = value


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return False
    return True


def _repr(obj: object) -> str:
    try:
        text = repr(obj)
    except Exception as exc:
        text = f"<repr failed: {type(exc).__name__}: {exc}>"
    if len(text) > TEXT_LIMIT:
        text = text[:TEXT_LIMIT] + f"... [{len(text) - TEXT_LIMIT} more characters]"
    return text


def is_figure(obj: object) -> bool:
    figure_module = sys.modules.get("matplotlib.figure")
    return figure_module is not None and isinstance(obj, figure_module.Figure)


def figure_png(figure: object) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")  # type: ignore[attr-defined]
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def format_exception(exc: BaseException) -> str:
    """The traceback as Python prints it, without the kernel's own frames."""
    tb = exc.__traceback__
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) == KERNEL_FILE:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def main() -> int:
    in_fd = int(os.environ.pop("SCALEBOX_KERNEL_IN"))
    out_fd = int(os.environ.pop("SCALEBOX_KERNEL_OUT"))
    # The script's directory is not the user's: imports resolve from the cwd, as in a REPL.
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(KERNEL_FILE):
        sys.path[0] = ""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # idle: an interrupt has nothing to stop
    # plt.show() on the Agg backend warns that it cannot show; figures are sent instead.
    warnings.filterwarnings("ignore", message=".*non-interactive.*cannot be shown")
    channel = Channel(in_fd, out_fd)
    sys.stdout = sys.__stdout__ = event_stream(channel, "stdout", 1)
    sys.stderr = sys.__stderr__ = event_stream(channel, "stderr", 2)
    kernel = Kernel(channel)
    sys.argv = [""]
    channel.send({"event": "ready"})
    while True:
        request = channel.receive()
        if request is None:
            return 0
        kernel.execute(str(request.get("code", "")), {str(k): str(v) for k, v in (request.get("env") or {}).items()})


if __name__ == "__main__":
    sys.exit(main())
