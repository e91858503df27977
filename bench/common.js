'use strict';
/**
 * Helpers shared by the benchmark drivers: child processes with a request/reply protocol over
 * IPC, cleanup that leaves no process behind, statistics and table formatting.
 */
const { fork } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const BENCH_DIR = __dirname;
const RESULTS_DIR = path.join(BENCH_DIR, 'results');

/** Every child we started and that has not exited yet: killed at exit, whatever the exit. */
const children = new Set();

function killAll() {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch {
      // Already gone.
    }
  }
  children.clear();
}

/**
 * Runs a driver's `main()`: its result (a number) becomes the exit code, an error exits 2, and
 * every child is killed either way.
 */
function runMain(main) {
  main().then(
    (code) => {
      killAll();
      process.exitCode = typeof code === 'number' ? code : 0;
    },
    (err) => {
      console.error(err);
      killAll();
      process.exitCode = 2;
    },
  );
}

let cleanupInstalled = false;
function installCleanup() {
  if (cleanupInstalled) return;
  cleanupInstalled = true;
  process.on('exit', killAll);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.once(signal, function onSignal() {
      killAll();
      process.exit(130);
    });
  }
  process.on('uncaughtException', function onUncaught(err) {
    console.error(err);
    killAll();
    process.exit(2);
  });
  process.on('unhandledRejection', function onUnhandled(err) {
    console.error(err);
    killAll();
    process.exit(2);
  });
}

/**
 * Forks `bench/<script>` with an IPC channel and returns a handle whose `call()` sends a request
 * and resolves with the child's reply (matched by id). The child's stderr is passed through.
 */
function startChild(script, { env = {}, execArgv = [], execPath = process.execPath, name = script } = {}) {
  installCleanup();
  const child = fork(path.join(BENCH_DIR, script), [], {
    env: { ...process.env, ...env },
    // Another program may run node (instructions.js: valgrind, with node and its flags in execArgv).
    execPath,
    execArgv,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  children.add(child);
  const pending = new Map();
  let nextId = 1;
  let exited = null;
  const listeners = new Set();

  const exitPromise = new Promise(function waitExit(resolve) {
    child.once('exit', function onExit(code, signal) {
      children.delete(child);
      exited = { code, signal };
      for (const { reject, timer } of pending.values()) {
        clearTimeout(timer);
        reject(new Error(`${name} exited (code ${code}, signal ${signal}) before replying`));
      }
      pending.clear();
      resolve(exited);
    });
  });

  child.on('message', function onMessage(message) {
    if (message && message.replyTo !== undefined) {
      const entry = pending.get(message.replyTo);
      if (!entry) return;
      pending.delete(message.replyTo);
      clearTimeout(entry.timer);
      if (message.error) entry.reject(new Error(`${name}: ${message.error}`));
      else entry.resolve(message);
      return;
    }
    for (const listener of listeners) listener(message);
  });

  function call(type, payload = {}, timeoutMs = 120_000) {
    if (exited) return Promise.reject(new Error(`${name} has exited`));
    const id = nextId++;
    return new Promise(function sendRequest(resolve, reject) {
      const timer = setTimeout(function callTimedOut() {
        pending.delete(id);
        reject(new Error(`${name}: no reply to ${type} within ${timeoutMs} ms`));
      }, timeoutMs);
      pending.set(id, { resolve, reject, timer });
      child.send({ ...payload, id, type });
    });
  }

  /** Resolves with the first unsolicited message of `type` (e.g. 'ready'). */
  function once(type, timeoutMs = 30_000) {
    return new Promise(function waitFor(resolve, reject) {
      const timer = setTimeout(function onceTimedOut() {
        listeners.delete(listener);
        reject(new Error(`${name}: no ${type} within ${timeoutMs} ms`));
      }, timeoutMs);
      function listener(message) {
        if (message && message.type === type) {
          clearTimeout(timer);
          listeners.delete(listener);
          resolve(message);
        }
      }
      listeners.add(listener);
      exitPromise.then(function exitedFirst(info) {
        clearTimeout(timer);
        if (listeners.delete(listener)) {
          reject(new Error(`${name} exited (code ${info.code}, signal ${info.signal}) before ${type}`));
        }
      });
    });
  }

  /** Asks the child to stop (`type` 'stop'), then kills it if it does not exit in time. */
  async function stop(timeoutMs = 10_000) {
    if (exited) return exited;
    const timer = setTimeout(function stopTimedOut() {
      child.kill('SIGKILL');
    }, timeoutMs);
    call('stop', {}, timeoutMs).catch(function ignoreStopReply() {
      // The child may exit before its reply goes out; the exit is what we wait for.
    });
    const info = await exitPromise;
    clearTimeout(timer);
    return info;
  }

  return { child, call, once, stop, exitPromise, pid: child.pid };
}

/** Child side: answers requests from the parent. `handlers[type](message)` may be async. */
function serve(handlers) {
  process.on('message', async function onRequest(message) {
    if (!message || message.id === undefined) return;
    const handler = handlers[message.type];
    try {
      if (!handler) throw new Error(`unknown request ${message.type}`);
      const reply = (await handler(message)) || {};
      if (process.connected) process.send({ ...reply, replyTo: message.id });
    } catch (err) {
      if (process.connected) process.send({ replyTo: message.id, error: err && err.stack ? err.stack : String(err) });
    }
  });
  // The parent is gone (crashed, killed): a benchmark child has no reason to live on.
  process.on('disconnect', function onParentGone() {
    process.exit(0);
  });
}

function sleep(ms) {
  return new Promise(function wait(resolve) {
    setTimeout(resolve, ms);
  });
}

function median(values) {
  const sorted = values.filter((v) => typeof v === 'number' && Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return null;
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function envInt(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`${name} must be a non-negative integer`);
  return value;
}

/** Plain-text table with right-aligned numbers; and the same as markdown. */
function formatTable(headers, rows) {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells) =>
    cells.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  ');
  return [line(headers), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

function formatMarkdown(headers, rows) {
  const align = headers.map((_, i) => (i === 0 ? '---' : '---:'));
  const line = (cells) => `| ${cells.join(' | ')} |`;
  return [line(headers), line(align), ...rows.map(line)].join('\n');
}

function writeResult(name, content) {
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const file = path.join(RESULTS_DIR, name);
  fs.writeFileSync(file, content);
  return file;
}

function machine() {
  const os = require('node:os');
  const cpus = os.cpus();
  return {
    node: process.version,
    platform: `${os.platform()} ${os.release()}`,
    cpus: cpus.length,
    cpuModel: cpus[0] ? cpus[0].model : 'unknown',
    memoryBytes: os.totalmem(),
  };
}

module.exports = {
  BENCH_DIR,
  RESULTS_DIR,
  startChild,
  serve,
  killAll,
  runMain,
  sleep,
  median,
  envInt,
  formatTable,
  formatMarkdown,
  writeResult,
  machine,
};
