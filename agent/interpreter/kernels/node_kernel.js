'use strict';
// The code interpreter's JavaScript kernel: one persistent Node.js process
// that runs each execution's code in its own global scope, as the `node`
// REPL does, so var/let/const/function/class declarations, globals and the
// working directory persist from one execution to the next. It speaks the
// kernel protocol of agent/interpreter/__init__.py. Node >= 18, built-ins only.
//
// Run as `node node_kernel.js` with SCALEBOX_KERNEL_IN and SCALEBOX_KERNEL_OUT
// naming the protocol fds.
//
// Design:
//   - The code is a vm.Script run in this context (runInThisContext), not in
//     a vm.createContext sandbox: a second context has its own Array, Error,
//     Promise..., so `x instanceof Array` or `err instanceof Error` would be
//     false for values made by required modules. Script-level let/const/class
//     bindings of one Script are visible to the next ones in the same context
//     (redeclaring one is a SyntaxError, as in the REPL). `require` (relative
//     to the working directory at start) and the built-in modules (`fs`,
//     `path`...) are globals, as in the REPL. The kernel's own names stay in
//     this module's scope.
//   - The completion value is the main result (util.inspect), as in the REPL;
//     code that is an object literal `{...}` is evaluated as one.
//   - Top-level `await`: code that uses `await` and does not compile as a
//     script (or compiles only with `await` taken as a variable) runs in an
//     async function; declarations at the start of a line are hoisted out of
//     it or copied to globals so they persist, and the last statement's value
//     is returned if it is an expression: a line-based approximation of the
//     REPL's rewriting, which needs a parser (acorn) that Node does not export.
//   - Output: process.stdout/stderr (so console.*) are replaced by streams
//     that write synchronously to fds 1 and 2, so everything printed before
//     an event is in the pipes before the event is written.
//   - Interrupt (SIGINT): synchronous code runs with breakOnSigint, so a busy
//     loop is stopped (V8 terminates it, wherever it is: the built-in modules
//     likely to be used are loaded first, as one stopped while first loading
//     stays broken); an execution awaiting a promise is abandoned (the promise
//     keeps running) from the process 'SIGINT' listener, which also makes
//     SIGINT while idle harmless. Both are reported as KeyboardInterrupt.
//     Limits: a busy loop in a callback (a timer, after an `await`) cannot be
//     stopped, nor a child process started after the signal (execSync):
//     the agent kills the kernel. And in the ~0.1 ms in which
//     runInThisContext starts or stops watching SIGINT, an interrupt may be
//     lost, or end the kernel (Node leaves SIGINT to its default action for a
//     moment): harmless for code that is done by then, otherwise the agent
//     kills the kernel.
//   - Errors thrown or rejected outside an execution (timers, unhandled
//     rejections) are printed on stderr; they do not end the kernel.

const fs = require('fs');
const net = require('net');
const path = require('path');
const readline = require('readline');
const util = require('util');
const vm = require('vm');
const { Writable } = require('stream');
const { builtinModules, createRequire } = require('module');

// The code shares this context's globals: keep the kernel's own copies.
const stringify = JSON.stringify;
const parse = JSON.parse;
const inspect = util.inspect;
const isNativeError = util.types.isNativeError;
const KernelPromise = Promise;

function protocolFd(name) {
  const value = process.env[name];
  delete process.env[name];
  if (!/^[0-9]+$/.test(value || '')) {
    fs.writeSync(2, `node_kernel: ${name} must be an fd number\n`);
    process.exit(2);
  }
  return Number(value);
}

const inFd = protocolFd('SCALEBOX_KERNEL_IN');
const outFd = protocolFd('SCALEBOX_KERNEL_OUT');

// fs.writeSync gives EAGAIN when an fd is non-blocking (libuv makes pipes so
// when it opens them as streams) and the pipe is full: wait and go on.
const pause = new Int32Array(new SharedArrayBuffer(4));
function writeAll(fd, data) {
  const buffer = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  let offset = 0;
  while (offset < buffer.length) {
    try {
      offset += fs.writeSync(fd, buffer, offset, buffer.length - offset);
    } catch (error) {
      if (error.code !== 'EAGAIN') throw error;
      Atomics.wait(pause, 0, 0, 1);
    }
  }
}

function emit(event) {
  writeAll(outFd, stringify(event) + '\n');
}

class FdWriter extends Writable {
  constructor(fd) {
    super();
    this.fd = fd;
    this.isTTY = false;
  }

  _write(chunk, encoding, callback) {
    try {
      writeAll(this.fd, typeof chunk === 'string' ? Buffer.from(chunk, encoding) : chunk);
    } catch (error) {
      callback(error);
      return;
    }
    callback();
  }
}

for (const [name, fd] of [['stdout', 1], ['stderr', 2]]) {
  const stream = new FdWriter(fd);
  stream.on('error', () => {}); // the agent is gone: nothing to tell
  Object.defineProperty(process, name, { configurable: true, enumerable: true, get: () => stream });
}

function printError(prefix, error) {
  try {
    writeAll(2, `${prefix}${isNativeError(error) && error.stack ? error.stack : inspect(error)}\n`);
  } catch {
    // stderr is gone too
  }
}
process.on('uncaughtException', (error) => printError('Uncaught ', error));
process.on('unhandledRejection', (reason) => printError('Unhandled promise rejection: ', reason));

// Built-in modules the code is likely to use, loaded now: an interrupt while
// one is first loaded (breakOnSigint stops JavaScript wherever it is) would
// leave it half-initialized in the module cache for good. About 15 ms.
for (const name of [
  'assert', 'buffer', 'child_process', 'crypto', 'dns', 'events', 'fs', 'fs/promises', 'http', 'https', 'net',
  'os', 'path', 'querystring', 'readline', 'stream', 'string_decoder', 'timers', 'url', 'util', 'zlib',
  'worker_threads',
]) {
  require(name);
}

// The REPL's globals.
globalThis.require = createRequire(path.join(process.cwd(), '<repl>'));
for (const name of builtinModules) {
  // `module` would mislead UMD code (`typeof module === 'object'`).
  if (name.startsWith('_') || name.includes('/') || name === 'module' || name in globalThis) continue;
  Object.defineProperty(globalThis, name, {
    configurable: true,
    enumerable: false,
    get() {
      const value = require(name);
      Object.defineProperty(globalThis, name, { configurable: true, writable: true, enumerable: false, value });
      return value;
    },
    set(value) {
      Object.defineProperty(globalThis, name, { configurable: true, writable: true, enumerable: true, value });
    },
  });
}

// `import()` in the code. Node >= 20.12 has a constant for the default ESM
// loader (it resolves against the working directory; its experimental-feature
// warning is dropped below); Node 18 takes a callback, which must resolve
// against the working directory rather than this file.
const defaultLoader = vm.constants && vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER;
const { pathToFileURL } = require('url');
async function importModule(specifier) {
  if (/^\.{0,2}\//.test(specifier)) return import(pathToFileURL(path.resolve(specifier)).href);
  try {
    return await import(specifier);
  } catch (error) {
    let resolved;
    try {
      resolved = createRequire(path.join(process.cwd(), '<repl>')).resolve(specifier);
    } catch {
      throw error;
    }
    return import(pathToFileURL(resolved).href);
  }
}
const importModuleDynamically = defaultLoader === undefined ? importModule : defaultLoader;
const emitWarning = process.emitWarning;
process.emitWarning = function (warning, ...rest) {
  if (String((warning && warning.message) || warning).includes('USE_MAIN_CONTEXT_DEFAULT_LOADER')) return undefined;
  return Reflect.apply(emitWarning, this, [warning, ...rest]);
};

// ---- Compiling the code.

let cellCount = 0;

function compile(source, filename) {
  return new vm.Script(source, { filename, importModuleDynamically });
}

function tryCompile(source, filename) {
  try {
    return compile(source, filename);
  } catch {
    return null;
  }
}

const STATEMENT_KEYWORD =
  /^(?:if|for|while|do|try|switch|return|throw|const|let|var|class|function|async\s+function|import|export|break|continue|else|catch|finally|debugger|with)\b/;

// The names a flat destructuring pattern's text (`a, b: c, ...d`) declares,
// or null.
function patternNames(pattern) {
  const names = [];
  for (const part of pattern.split(',')) {
    const target = part.split(':').pop().split('=')[0].replace(/^\s*\.\.\./, '').trim();
    if (target === '') continue;
    if (!/^[A-Za-z_$][\w$]*$/.test(target)) return null;
    names.push(target);
  }
  return names;
}

// Code with top-level `await`, as an async function run by a script (see the
// header); throws a SyntaxError when even that does not compile.
function compileAsync(code, filename) {
  const hoisted = []; // declared by the script, out of the async function
  const first = []; // run first in the function
  const last = []; // run last: the function's own bindings, out to globals
  const source = code.split('\n');
  const lines = source.map((line) => {
    let match = /^(const|let|var)\s+([A-Za-z_$][\w$]*)(\s*=)/.exec(line);
    if (match) {
      hoisted.push(`${match[1] === 'var' ? 'var' : 'let'} ${match[2]};`);
      return match[2] + match[3] + line.slice(match[0].length);
    }
    match = /^(?:const|let|var)\s*(?:\{([^{}[\]]*)\}|\[([^{}[\]]*)\])\s*=/.exec(line);
    const names = match && patternNames(match[1] === undefined ? match[2] : match[1]);
    if (names) {
      for (const name of names) last.push(`globalThis[${stringify(name)}] = ${name};`);
      return line;
    }
    match = /^class\s+([A-Za-z_$][\w$]*)/.exec(line);
    if (match) {
      hoisted.push(`let ${match[1]};`);
      return `${match[1]} = ${line}`;
    }
    match = /^(?:async\s+)?function\s*\*?\s*([A-Za-z_$][\w$]*)/.exec(line);
    if (match) {
      hoisted.push(`var ${match[1]};`);
      first.push(`globalThis[${stringify(match[1])}] = ${match[1]};`);
    }
    return line;
  });
  // Everything before the code's first line stays on that line: the line
  // numbers in errors are the code's.
  const head = `${hoisted.join(' ')} (async () => { ${first.join(' ')} `;
  const end = last.length ? `;${last.join(' ')} ` : '';
  const tail = '\n})()';
  // The last statement is returned if it can be an expression. It starts a
  // line that does not start with a blank or a closing bracket (the lines
  // after it go on with it), nor with ( [ + - or an operator (it may go on
  // the line before), or follows a `;` on that line. Each guess must compile.
  let at = lines.length - 1;
  while (at > 0 && /^(?:[\s)\]}]|\/\/|$)/.test(lines[at])) at--;
  const line = lines[at];
  const rest = lines.slice(at + 1).join('\n');
  const starts = [0];
  for (let semicolon = line.indexOf(';'); semicolon >= 0; semicolon = line.indexOf(';', semicolon + 1)) {
    starts.push(semicolon + 1);
  }
  for (const start of starts.reverse().slice(0, 8)) {
    const expression = `${line.slice(start)}\n${rest}`.replace(/;\s*$/, '').trim();
    const startsExpression = start === 0 ? source[at] : expression;
    // After a `;` (or one ending the line before), ( and [ start a statement.
    const separated = start > 0 || at === 0 || /[;}]\s*$/.test(lines[at - 1]);
    if (!(separated ? /^[\w$'"`!~([]/ : /^[\w$'"`!~]/).test(startsExpression)) continue;
    if (STATEMENT_KEYWORD.test(startsExpression)) continue;
    const body = lines.slice(0, at).concat([`${line.slice(0, start)} ${end}return (${expression}\n)`]);
    const script = tryCompile(`${head}${body.join('\n')}${tail}`, filename);
    if (script) return script;
  }
  return compile(`${head}${lines.join('\n')}\n${end}${tail}`, filename);
}

// -> {script, isAsync}; throws the code's SyntaxError.
function compileCode(code, filename) {
  // An object literal rather than a block, as in the REPL.
  if (/^\s*\{/.test(code) && /\}\s*;?\s*$/.test(code)) {
    const script = tryCompile(`(${code.replace(/;\s*$/, '')}\n)`, filename);
    if (script) return { script, isAsync: false };
  }
  let script;
  try {
    script = compile(code, filename);
  } catch (error) {
    if (!(error instanceof SyntaxError) || !/\bawait\b/.test(code)) throw error;
    try {
      return { script: compileAsync(code, filename), isAsync: true };
    } catch {
      throw error;
    }
  }
  // `await [1]`, `await (x)`, `await -1`... compile in a script too, with
  // `await` a variable: take them as awaits, as the REPL does.
  if (/(?:^|[^\w$.])await\s*[[(`+\-/]/.test(code)) {
    const asyncScript = tryCompileAsync(code, filename);
    if (asyncScript) return { script: asyncScript, isAsync: true };
  }
  return { script, isAsync: false };
}

function tryCompileAsync(code, filename) {
  try {
    return compileAsync(code, filename);
  } catch {
    return null;
  }
}

// ---- Running executions.

class Interrupted extends Error {}

let current = null; // the execution running: {interrupted, abandon}

process.on('SIGINT', () => {
  // While idle: nothing to do (the listener keeps SIGINT from ending Node).
  if (current) {
    current.interrupted = true;
    if (current.abandon) current.abandon(new Interrupted());
  }
});

// Frames from the kernel (and vm) below the code's are noise.
function traceback(error) {
  const lines = String(error.stack).split('\n');
  const cut = lines.findIndex((line) => /^\s+at /.test(line) && (line.includes('node:vm') || line.includes(__filename)));
  return (cut < 0 ? lines : lines.slice(0, cut)).join('\n');
}

// A child process of execSync & co. killed by SIGINT: the signal was for us
// too, but runInThisContext may have returned before its SIGINT watchdog
// thread saw it, and then does not report it.
function interrupted(error) {
  return (
    error instanceof Interrupted ||
    (error instanceof Object && (error.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED' || error.signal === 'SIGINT'))
  );
}

function errorEvent(error) {
  if (interrupted(error)) {
    return { event: 'error', name: 'KeyboardInterrupt', value: 'interrupted', traceback: '' };
  }
  if (isNativeError(error) || (error instanceof Object && typeof error.stack === 'string')) {
    return { event: 'error', name: String(error.name), value: String(error.message), traceback: traceback(error) };
  }
  return { event: 'error', name: 'Error', value: inspect(error), traceback: `Uncaught ${inspect(error)}` };
}

// Into `saved` as it goes: what was there before, to put back even if a value
// is refused half-way.
function applyEnv(env, saved) {
  for (const [name, value] of Object.entries(env)) {
    if (typeof value !== 'string' || name === '' || name.includes('=') || name.includes('\0')) continue;
    saved.push([name, Object.prototype.hasOwnProperty.call(process.env, name) ? process.env[name] : undefined]);
    process.env[name] = value;
  }
}

function restoreEnv(saved) {
  for (const [name, value] of saved.reverse()) {
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
}

// A turn of the event loop, twice: the 'SIGINT' listener runs if a signal
// came (during the parsing and compiling before it, which it cannot interrupt,
// or with the request), rather than after the code, which a busy loop would
// never let it do.
function signalsSeen() {
  return new KernelPromise((resolve) => setImmediate(() => setImmediate(resolve)));
}

async function execute(execution, line) {
  const env = [];
  try {
    let request = null;
    try {
      request = parse(line);
    } catch {
      // reported below
    }
    if (!request || typeof request.code !== 'string' || (request.env != null && typeof request.env !== 'object')) {
      throw new Error('bad request: expected a JSON object with a string "code" and an object "env"');
    }
    applyEnv(request.env || {}, env);
    cellCount += 1;
    const { script, isAsync } = compileCode(request.code, `<cell-${cellCount}>`);
    await signalsSeen();
    if (execution.interrupted) throw new Interrupted();
    let value = script.runInThisContext({ breakOnSigint: true });
    if (isAsync) {
      const interrupt = new KernelPromise((resolve, reject) => {
        execution.abandon = reject;
      });
      if (execution.interrupted) throw new Interrupted();
      value = await KernelPromise.race([value, interrupt]);
    }
    if (execution.interrupted) throw new Interrupted();
    if (value !== undefined) {
      emit({ event: 'result', data: { 'text/plain': inspect(value) }, main: true });
    }
  } catch (error) {
    emit(errorEvent(execution.interrupted ? new Interrupted() : error));
  } finally {
    restoreEnv(env);
  }
  emit({ event: 'done' });
}

const requests = [];
let closed = false;

function next() {
  if (current || requests.length === 0) {
    if (!current && closed) process.exit(0);
    return;
  }
  const execution = { interrupted: false, abandon: null };
  current = execution;
  execute(execution, requests.shift()).finally(() => {
    current = null;
    next();
  });
}

const input = new net.Socket({ fd: inFd, readable: true, writable: false });
const lines = readline.createInterface({ input, crlfDelay: Infinity });
lines.on('line', (line) => {
  if (line.trim() === '') return;
  requests.push(line);
  next();
});
lines.on('close', () => {
  closed = true;
  next();
});

emit({ event: 'ready' });
