"""The code interpreter: ExecutionService.Execute and ContextService, over persistent interpreters.

A *context* is one long-lived interpreter process (a *kernel*) for one
language, run as the context's user in the context's directory: variables,
imports and the working directory persist from one execution to the next.
Each language has a default context, started on its first use.

    languages.py    language names and how each kernel is started (pure)
    kernelwire.py   the agent <-> kernel message format (pure)
    results.py      a kernel's MIME bundle -> a Result message (pure)
    kernel.py       a kernel process on the event loop: execute, interrupt, restart
    contexts.py     contexts by id, default contexts, one execution at a time each
    service.py      the sandboxagent.ExecutionService / ContextService handlers
    kernels/        the kernels themselves, run inside the sandbox by its own
                    interpreters: python_kernel.py (stdlib only), bash_kernel.sh,
                    node_kernel.js

Kernel protocol (every kernel speaks it):

- The kernel's stdin is /dev/null; its stdout and stderr are pipes the agent
  streams as the execution's stdout and stderr events. Two more pipes carry
  the protocol, their fd numbers given in the environment:
  SCALEBOX_KERNEL_IN (the kernel reads requests) and SCALEBOX_KERNEL_OUT (it
  writes events). A kernel removes both variables from its environment so
  user code and its children do not see them.
- Both directions are JSON lines (UTF-8, one object per line).
- Kernel -> agent, once, when it can take requests: ``{"event": "ready"}``.
- Agent -> kernel: ``{"code": "...", "env": {"NAME": "value"}}``: run ``code``
  with ``env`` added to the environment for that execution only.
- Kernel -> agent, during an execution, any number of:
  ``{"event": "result", "data": {MIME: text}, "main": bool}`` (``main`` for the
  value of the last expression; display()-style outputs and figures are not
  main; every value is text: images base64, application/json JSON text), and
  ``{"event": "stdout" | "stderr", "text": ...}`` (output the kernel captures
  itself, e.g. Python's sys.stdout: it keeps its exact place among the
  results, which output through the pipes only approximately can), and at
  most one ``{"event": "error", "name": ..., "value": ..., "traceback": ...}``;
  then exactly one ``{"event": "done"}``. Before writing any event the kernel
  flushes its stdout and stderr, so output written before an event is in the
  pipes when the event arrives (the agent drains them first: order is kept).
- Interrupt: the agent sends SIGINT to the kernel's process group. The kernel
  survives it, abandons the running code, reports an error (Python:
  KeyboardInterrupt) and ``done``, keeping its state. SIGINT while idle is
  ignored. A kernel that does not finish soon after is killed, and the
  context starts a fresh kernel on its next execution.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.connect import Registry
    from agent.init import Reaper
    from agent.interpreter.service import InterpreterService

EXECUTION_SERVICE = "sandboxagent.ExecutionService"
CONTEXT_SERVICE = "sandboxagent.ContextService"


def install(registry: Registry, reaper: Reaper) -> InterpreterService:
    from agent.interpreter.service import InterpreterService
    from agent.proto import (
        Context,
        CreateContextRequest,
        DestroyContextRequest,
        DestroyContextResponse,
        ExecuteRequest,
        ExecuteResponse,
    )

    service = InterpreterService(reaper)
    # The deadline is the handler's: on it the code is interrupted, not the context.
    registry.server_stream(EXECUTION_SERVICE, "Execute", ExecuteRequest, ExecuteResponse, timeout=False)(
        service.execute
    )
    registry.unary(CONTEXT_SERVICE, "CreateContext", CreateContextRequest, Context)(service.create_context)
    registry.unary(CONTEXT_SERVICE, "DestroyContext", DestroyContextRequest, DestroyContextResponse)(
        service.destroy_context
    )
    return service
