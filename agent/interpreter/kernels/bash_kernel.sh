# shellcheck shell=bash
# The code interpreter's bash kernel: one persistent bash that runs each
# execution's code in itself, so variables, functions, aliases, options, the
# working directory and exported variables persist from one execution to the
# next. It speaks the kernel protocol of agent/interpreter/__init__.py.
#
# Run as `bash --noprofile --norc bash_kernel.sh` with SCALEBOX_KERNEL_IN and
# SCALEBOX_KERNEL_OUT naming the protocol fds. Needs bash >= 5.0 and python3
# (only to decode each JSON request: bash has no JSON parser).
#
# How an execution runs:
#   - the request line is read by bash; a short-lived `python3 -I -S` decodes
#     it into a private directory: the code in "cell" (prefixed, on its first
#     line, by a call to __sbk_pre) and NUL-separated fields in "req";
#   - the env is exported for the execution and put back afterwards;
#   - "cell" is sourced at the top level of this script (not in a function,
#     so `declare` and `local`-less assignments stay global), with stdin from
#     /dev/null and the protocol fds closed (they are restored after it, so
#     the code and its children can neither see nor clobber them);
#   - a non-zero status of the code is reported as an error, then "done".
#
# Interrupt (SIGINT to the process group): the foreground children die of it
# (bash resets trapped signals to the default in children); bash itself runs
# its INT trap, __sbk_on_int, between two commands. The trap cannot return
# through every shell function the code may be in, so it installs a DEBUG
# trap and turns extdebug on: with extdebug, a DEBUG trap that returns 2 in a
# function or sourced file makes bash return from it, so each next command
# unwinds one frame until the sourced cell has returned to the loop below.
# That stops `while :; do :; done`, `sleep 100`, loops inside functions.
# Children started by the code in the background ignore SIGINT (bash does
# that without job control) and keep running.
#
# SIGINT while idle is ignored, but the trap stays set (rather than `trap ''
# INT`): the agent may interrupt right after writing a request, before bash
# has read it. So an interrupt that finds the request line read, or data
# waiting in the request pipe, is one for the coming execution. (bash's `read`
# runs the trap and goes on reading, losing nothing.)
#
# The user's shell options: the kernel's own commands must not run under the
# user's `set -euxv`/pipefail (a trace of the kernel on stderr, or an exit on
# a harmless status). __sbk_save_opts records and clears them when the code
# is done (from a RETURN trap, so `source` returning non-zero cannot trip the
# user's errexit), and __sbk_pre, on the cell's first line, restores them.
#
# Quirks: `exit` in the code ends the kernel, as in a terminal, and so do a
# failing command under the user's `set -e` or an unset variable under
# `set -u` (the options persist). A `break`/`continue` at the top level of
# the code would act on the loop below: the loop is nested, and an execution
# left that way is finished at the next turn. The code's own traps on
# INT/DEBUG/RETURN are replaced at the next execution; an EXIT trap of its own
# replaces the one that removes the private directory (left then, as after a
# SIGKILL, until the next kernel starts). bash names the cell file in its
# messages ("/tmp/bash-kernel.PID.XXXXXX/cell: line 2: foo: command not
# found"). The decoder costs ~15 ms per execution, and bash reads the request
# line a byte at a time (~0.5 s a MB).
# Kernel names start with __sbk_.

# Until the INT trap is set, below.
trap '' INT
if ! [[ ${SCALEBOX_KERNEL_IN-} =~ ^[0-9]+$ && ${SCALEBOX_KERNEL_OUT-} =~ ^[0-9]+$ ]]; then
    printf 'bash_kernel: SCALEBOX_KERNEL_IN and SCALEBOX_KERNEL_OUT must be fd numbers\n' >&2
    exit 2
fi
# Move the protocol fds to fds >= 10 picked by bash: code commonly uses 3-9
# (`exec 3>file`), which would otherwise overwrite them.
exec {__sbk_in}<&"$SCALEBOX_KERNEL_IN" {__sbk_out}>&"$SCALEBOX_KERNEL_OUT" || exit 2
eval "exec $SCALEBOX_KERNEL_IN<&- $SCALEBOX_KERNEL_OUT>&-"
unset SCALEBOX_KERNEL_IN SCALEBOX_KERNEL_OUT

# The system python first: a python3 earlier on PATH may be a slow wrapper.
__sbk_python=/usr/bin/python3
if [[ ! -x $__sbk_python ]]; then __sbk_python=$(command -v python3 2>/dev/null); fi
if [[ ! -x $__sbk_python ]]; then
    printf 'bash_kernel: python3 is needed to decode requests\n' >&2
    exit 2
fi
# A kernel killed with SIGKILL (as the agent does with one that ignores an
# interrupt) leaves its directory: remove those of kernels that are gone. The
# name holds the kernel's pid.
for __sbk_dir in "${TMPDIR:-/tmp}"/bash-kernel.*; do
    if [[ $__sbk_dir =~ /bash-kernel\.([0-9]+)\.[^/]*$ ]] && ! kill -0 "${BASH_REMATCH[1]}" 2>/dev/null; then
        rm -rf -- "$__sbk_dir" 2>/dev/null
    fi
done
__sbk_dir=$(mktemp -d "${TMPDIR:-/tmp}/bash-kernel.$$.XXXXXX") || exit 2
trap 'rm -rf -- "$__sbk_dir"' EXIT
# $0 as in `bash -c`, rather than this file's path.
BASH_ARGV0=bash
# Aliases defined by the code work in the following lines and executions, as
# in an interactive shell. This script's own commands were parsed before.
shopt -s expand_aliases

# Request line on stdin -> <dir>/cell (code, after "__sbk_pre;" on its first
# line so line numbers in bash's messages are the code's) and, on stdout,
# NUL-terminated fields: "ok" then NAME, value pairs, or one error event.
# -I -S: no PYTHON* variables, site or user packages of the code's
# environment can change or slow the decoder. It uses json's C scanner alone:
# importing json (which imports re) would double its ~15 ms.
# shellcheck disable=SC2016
__sbk_decoder='
import sys

try:
    from _json import make_scanner
except ImportError:
    make_scanner = None


class Options:  # what json.JSONDecoder gives its scanner
    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int, parse_constant = float, int, float
    memo = {}


def decode(line):
    if make_scanner is None:
        import json
        return json.loads(line)
    try:
        value, end = make_scanner(Options())(line, 0)
    except StopIteration:
        raise ValueError("not JSON") from None
    if end != len(line):
        raise ValueError("extra data after the JSON object")
    return value


def exportable(name):
    return name.isascii() and name.replace("_", "a").isalnum() and not name[0].isdigit() and not name.startswith("__sbk_")


def text(value):
    # bash strings cannot hold NUL; lone surrogates are not UTF-8.
    return value.replace("\0", "").encode("utf-8", "replace")


try:
    request = decode(sys.stdin.buffer.read().decode("utf-8").strip())
    code, env = request.get("code", ""), request.get("env") or {}
    if not isinstance(code, str) or not isinstance(env, dict):
        raise ValueError("code must be a string and env an object")
    with open(sys.argv[1] + "/cell", "wb") as cell:
        cell.write(b"__sbk_pre;" + text(code) + b"\n")
    # A name bash cannot export is left out.
    fields = ["ok"] + [s for k, v in env.items() if exportable(k) and isinstance(v, str) for s in (k, v)]
except Exception as error:
    import json
    event = {"event": "error", "name": "Error", "value": "bad request: %s" % (error,), "traceback": ""}
    fields = [json.dumps(event)]
sys.stdout.buffer.write(b"".join(text(field) + b"\0" for field in fields))
'

# The cell is sourced with stdin from /dev/null and without the protocol fds
# (bash saves them close-on-exec and puts them back when `source` returns).
# An alias, expanded when the loop below is parsed, puts the fd numbers in
# the command without an `eval`, which would show as one more level of `+`
# in the code's `set -x` trace.
# shellcheck disable=SC2139
alias __sbk_run_cell="builtin source \"\$__sbk_dir/cell\" </dev/null $__sbk_in<&- $__sbk_out>&-"

__sbk_busy=0         # a request was read and not yet answered with "done"
__sbk_in_user=0      # the code may be running: an interrupt unwinds it
__sbk_interrupted=0
__sbk_unwinding=0    # __sbk_on_int installed the DEBUG trap
__sbk_status=0
__sbk_opts_live=0    # the user's options are in effect (see __sbk_save_opts)
__sbk_flags=''       # the user's options among e u x v a E T
__sbk_pipefail=0
__sbk_env_names=()   # the env applied to the current execution, and what the
__sbk_env_olds=()    # variables were before it: "u" unset, "x" exported with
__sbk_env_kinds=()   # the value in __sbk_env_olds, "s" set but not exported

__sbk_emit() {
    printf '%s\n' "$1" >&"$__sbk_out"
}

# First command of every cell: the user's options, recorded at the end of the
# previous execution, are back. Last command here: `set -x` traces nothing.
__sbk_pre() {
    __sbk_opts_live=1
    if ((__sbk_pipefail)); then set -o pipefail; fi
    if [[ -n $__sbk_flags ]]; then set "-$__sbk_flags"; fi
}

__sbk_save_opts() {
    if ((__sbk_opts_live)); then
        __sbk_opts_live=0
        __sbk_flags=${-//[^euxvaET]/}
        if [[ -o pipefail ]]; then __sbk_pipefail=1; else __sbk_pipefail=0; fi
    fi
    set +euxvaET +o pipefail
}

# RETURN trap: runs when a function or sourced file returns; FUNCNAME is
# (__sbk_leave main) only when the cell itself returns to the loop.
__sbk_leave() {
    if ((${#FUNCNAME[@]} == 2)); then __sbk_save_opts; fi
}

# INT trap.
__sbk_on_int() {
    if ((!__sbk_busy)); then
        if [[ -v __sbk_line ]] || read -r -t 0 -u "$__sbk_in"; then __sbk_interrupted=1; fi
        return 0
    fi
    __sbk_interrupted=1
    if ((__sbk_in_user && !__sbk_unwinding)); then
        __sbk_save_opts
        __sbk_unwinding=1
        # Before each next command of the code (not of these functions),
        # return from the function or sourced file it is in. Any other
        # non-zero status of the trap would skip the command: keep it 0.
        # shellcheck disable=SC2016
        trap 'if [[ ${FUNCNAME[0]-} != __sbk_* ]] && ((${#BASH_SOURCE[@]} > 1)); then return 2; fi' DEBUG
        shopt -s extdebug
    fi
}

# Decode the request and apply its env; sets __sbk_status to -1 when the code
# must not run (an error has been reported).
__sbk_begin() {
    __sbk_busy=1
    __sbk_status=0
    __sbk_env_names=() __sbk_env_olds=() __sbk_env_kinds=()
    local -a fields=()
    "$__sbk_python" -I -S -c "$__sbk_decoder" "$__sbk_dir" <<<"$1" >"$__sbk_dir/req" 2>/dev/null
    mapfile -d '' -t fields <"$__sbk_dir/req"
    if [[ ${fields[0]-} != ok ]]; then
        __sbk_status=-1
        # A decoder killed by the interrupt wrote nothing: __sbk_finish reports it.
        if ((!__sbk_interrupted)); then
            local event=${fields[0]-}
            if [[ -z $event ]]; then
                event='{"event":"error","name":"Error","value":"the request could not be decoded","traceback":""}'
            fi
            __sbk_emit "$event"
        fi
        return 0
    fi
    local i name
    for ((i = 1; i + 1 < ${#fields[@]}; i += 2)); do
        name=${fields[i]}
        __sbk_env_names+=("$name")
        if [[ ! -v $name ]]; then
            __sbk_env_kinds+=(u) __sbk_env_olds+=('')
        else
            if [[ ${!name@a} == *x* ]]; then __sbk_env_kinds+=(x); else __sbk_env_kinds+=(s); fi
            __sbk_env_olds+=("${!name}")
        fi
        # A readonly variable stays as it is.
        export "$name=${fields[i + 1]}" 2>/dev/null
    done
}

__sbk_finish() {
    if ((__sbk_unwinding)); then
        trap - DEBUG
        shopt -u extdebug
        set +ET
        __sbk_unwinding=0
    fi
    # The code may have removed the RETURN trap.
    __sbk_save_opts
    local i name
    for ((i = ${#__sbk_env_names[@]} - 1; i >= 0; i--)); do
        name=${__sbk_env_names[i]}
        case ${__sbk_env_kinds[i]} in
            u) unset "$name" 2>/dev/null ;;
            x) export "$name=${__sbk_env_olds[i]}" 2>/dev/null ;;
            s) export -n -- "${name?}" 2>/dev/null && printf -v "$name" '%s' "${__sbk_env_olds[i]}" 2>/dev/null ;;
        esac
    done
    __sbk_env_names=() __sbk_env_olds=() __sbk_env_kinds=()
    if ((__sbk_interrupted)); then
        __sbk_emit '{"event":"error","name":"KeyboardInterrupt","value":"interrupted","traceback":""}'
    elif ((__sbk_status > 0)); then
        __sbk_emit "{\"event\":\"error\",\"name\":\"Error\",\"value\":\"exit status $__sbk_status\",\"traceback\":\"\"}"
    fi
    __sbk_emit '{"event":"done"}'
    __sbk_busy=0
}

trap '{ __sbk_on_int; } 2>/dev/null' INT
__sbk_emit '{"event":"ready"}'

# Three nested loops: a `break` or `continue` (up to `break 3`) at the top
# level of the code leaves the inner loop without finishing the execution; the
# next turn of the inner loop finishes it.
while :; do
    while :; do
        while :; do
            __sbk_in_user=0
            # Parsed already: the code should not see the kernel's alias.
            unalias __sbk_run_cell 2>/dev/null
            if ((__sbk_busy)); then __sbk_finish; fi
            # The code may have set its own.
            trap '{ __sbk_on_int; } 2>/dev/null' INT
            trap - RETURN
            __sbk_interrupted=0
            unset __sbk_line
            IFS= read -r -u "$__sbk_in" __sbk_line || exit 0
            __sbk_begin "$__sbk_line"
            # From here on an interrupt unwinds the code, even one that
            # arrives before the code's first command.
            __sbk_in_user=1
            if ((__sbk_status == 0 && !__sbk_interrupted)); then
                trap '{ __sbk_leave; } 2>/dev/null' RETURN
                __sbk_run_cell
                # (In case the code removed the RETURN trap: no trace of this.)
                { __sbk_status=$? && __sbk_save_opts; } 2>/dev/null
            fi
            __sbk_in_user=0
            trap - RETURN
            __sbk_finish
        done
    done
done
