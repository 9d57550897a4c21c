"""The thin shell around nft: hand it a ruleset, in a worker thread.

A ruleset applies as one transaction, all of it or none of it, as `nft -f -` does.
It goes through libnftables, the library the `nft` command is built on, called in
this process: about 2 ms a ruleset here, where starting `nft` costs about 25 ms,
which a create from the warm pool (about 15 ms in all) would feel. Without the
library (or if it cannot be loaded) the `nft` command is run instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import subprocess
import threading
from pathlib import Path

import trio

from controlplane.runtime.base import RuntimeFailure

NFT = "nft"
_TIMEOUT = 10.0
# Per-bridge switches that send bridged IPv4/IPv6 through the inet hooks, whatever
# the host-wide net.bridge.bridge-nf-call-* sysctls say (they need br_netfilter).
_BRIDGE_NETFILTER = ("nf_call_iptables", "nf_call_ip6tables")


class FirewallError(RuntimeFailure):
    """nft is missing or refused the rules.

    A RuntimeFailure, so the lifecycle treats a sandbox whose rules could not be
    written like one whose container could not be started: the create is undone.
    """


class _Libnftables:
    """One libnftables context, used by one thread at a time (it is not thread-safe)."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(ctypes.util.find_library("nftables") or "libnftables.so.1")
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        context = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not context:
            raise OSError("nft_ctx_new failed")
        # Messages go to buffers we read, not to the appliance's stdout and stderr.
        lib.nft_ctx_buffer_output(context)
        lib.nft_ctx_buffer_error(context)
        self._lib = lib
        self._context = context
        self._lock = threading.Lock()

    def run(self, text: str) -> str | None:
        """None when applied, else nft's error message."""
        with self._lock:
            status = self._lib.nft_run_cmd_from_buffer(self._context, text.encode())
            # Reading a buffer also empties it; unread, they would grow with every run.
            self._lib.nft_ctx_get_output_buffer(self._context)
            error = self._lib.nft_ctx_get_error_buffer(self._context) or b""
            if status == 0:
                return None
            return error.decode(errors="replace").strip() or f"status {status}"


_library: _Libnftables | None = None
_library_tried = False
_library_lock = threading.Lock()


def _libnftables() -> _Libnftables | None:
    global _library, _library_tried
    with _library_lock:
        if not _library_tried:
            _library_tried = True
            try:
                _library = _Libnftables()
            except (OSError, AttributeError):
                _library = None
        return _library


def available() -> bool:
    return shutil.which(NFT) is not None or _libnftables() is not None


async def apply(text: str) -> None:
    """Apply a ruleset (nft syntax); raise FirewallError with nft's own words if refused."""
    await trio.to_thread.run_sync(run, text, False)


async def check(text: str) -> None:
    """Only parse and validate against the kernel (`nft --check`): nothing changes."""
    await trio.to_thread.run_sync(run, text, True)


def run(text: str, check_only: bool = False) -> None:
    library = None if check_only else _libnftables()
    if library is not None:
        error = library.run(text)
        if error is not None:
            raise FirewallError(f"nft refused the rules: {error[-2000:]}")
        return
    command = [NFT, *(["--check"] if check_only else []), "-f", "-"]
    try:
        done = subprocess.run(command, input=text.encode(), capture_output=True, timeout=_TIMEOUT, check=False)
    except FileNotFoundError:
        raise FirewallError(
            "nft is not installed: install nftables, or run with --no-firewall (sandboxes are then not isolated)"
        ) from None
    except subprocess.TimeoutExpired:
        raise FirewallError(f"nft did not finish within {_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
        raise FirewallError(f"nft refused the rules: {message[-2000:]}")


def br_netfilter_present() -> bool:
    return Path("/proc/sys/net/bridge").is_dir()


def ensure_bridge_netfilter(interface: str, sys_class_net: Path = Path("/sys/class/net")) -> bool:
    """Switch br_netfilter on for this bridge, so connections between its ports are rejected by
    the inet rules rather than dropped by the bridge backstop. The bridge exists only while a
    container is attached (netavark makes and removes it), so this is repeated as sandboxes start.

    Returns whether br_netfilter sees the bridge's traffic (False when the bridge is absent,
    or br_netfilter is not in this kernel).
    """
    if not br_netfilter_present():
        return False
    switched = True
    for name in _BRIDGE_NETFILTER:
        path = sys_class_net / interface / "bridge" / name
        try:
            if path.read_text().strip() != "1":
                path.write_text("1")
        except OSError:
            switched = False
    return switched
