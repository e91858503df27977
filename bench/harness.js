'use strict';
/**
 * The pieces every driver assembles: the sink and load processes, an app process in one mode,
 * and waiting for the sink to have what was sent.
 */
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { RESULTS_DIR, startChild, sleep } = require('./common.js');

const DIST = path.join(__dirname, '..', 'dist');
const DIST_FILES = ['index.js', 'middleware.js', 'record.js', 'serialize.js', 'client.js', 'queue.js', 'options.js'];

/** How the sink validates each mode's lines. */
const FORMATS = {
  none: null,
  noop: null,
  'express-tcplog': 'json',
  'pino-http': 'json',
  morgan: 'text',
  naive: 'json',
  'naive-batched': 'json',
  'fixed-batched': 'json',
  // Another build of this package (BENCH_BASELINE_MODULE, e.g. a copy of dist/ from main), to
  // measure a change side by side with what it replaces.
  'express-tcplog-baseline': 'json',
  // This build with the record cut out (see captureCut): it sends nothing.
  'express-tcplog-capture': null,
};

/**
 * Where the cut goes: right after the finish has gathered what the record needs, before the
 * record is written, queued and sent. Checked to appear once: a cut that silently missed would
 * measure the whole package under another name.
 */
const CUT_AFTER = 'const captured = describe(exchange, res);';

/**
 * A copy of the snapshot at `snapshotIndex` (see snapshotDist) whose finish returns once it has
 * gathered what the record needs: the capture alone, for `express-tcplog-capture`. Returns the
 * copy's index.js; the copy is removed at exit.
 */
function captureCut(snapshotIndex) {
  const from = path.dirname(snapshotIndex);
  const copy = `${from}-capture`;
  fs.rmSync(copy, { recursive: true, force: true });
  fs.cpSync(from, copy, { recursive: true });
  process.on('exit', function removeCut() {
    fs.rmSync(copy, { recursive: true, force: true });
  });
  const file = path.join(copy, 'middleware.js');
  const source = fs.readFileSync(file, 'utf8');
  const at = source.indexOf(CUT_AFTER);
  if (at === -1 || source.indexOf(CUT_AFTER, at + 1) !== -1) {
    throw new Error(
      `express-tcplog-capture: \`${CUT_AFTER}\` must appear once in dist/middleware.js to cut the ` +
        `record out there; found ${at === -1 ? 'no' : 'more than one'} (update CUT_AFTER in bench/harness.js)`,
    );
  }
  const end = at + CUT_AFTER.length;
  fs.writeFileSync(
    file,
    `${source.slice(0, end)}\nif (captured !== null) return; // bench: capture only${source.slice(end)}`,
  );
  return path.join(copy, 'index.js');
}

/**
 * Copies dist/ aside for the whole run: every app process then loads the same build, even when
 * someone rebuilds the package (which empties dist/ first) while the benchmark runs.
 * Returns the path of the copy's index.js; the copy is removed at exit.
 */
async function snapshotDist() {
  for (let attempt = 0; ; attempt++) {
    const complete = DIST_FILES.every((file) => fs.existsSync(path.join(DIST, file)));
    if (complete) break;
    if (attempt === 60) throw new Error('dist/ is incomplete: run `npm run build` first');
    await sleep(500);
  }
  await sleep(1000); // a build in progress writes its files within this time
  const copy = path.join(RESULTS_DIR, `dist-${process.pid}`);
  fs.rmSync(copy, { recursive: true, force: true });
  fs.cpSync(DIST, copy, { recursive: true });
  process.on('exit', function removeSnapshot() {
    fs.rmSync(copy, { recursive: true, force: true });
  });
  return path.join(copy, 'index.js');
}

/** The commit and whether lib/ had uncommitted changes, to say what was measured. */
function sourceInfo() {
  const git = (...args) => execFileSync('git', args, { cwd: path.join(__dirname, '..'), encoding: 'utf8' }).trim();
  try {
    return { commit: git('rev-parse', '--short', 'HEAD'), libModified: git('status', '--porcelain', 'lib').length > 0 };
  } catch {
    return { commit: null, libModified: null };
  }
}

/**
 * Gives the app a core of its own: the app process (every thread) on CPU 0, autocannon and the
 * sinks on the others. Sharing its core with the load generator and a collector was most of the
 * segment-to-segment noise on a 2-core host (an A/A pair, bare Express against a middleware
 * that only calls next(), spread 0.64-1.20 unpinned and 0.92-1.11 pinned). The app's CPU per
 * request is measured either way. BENCH_PIN: unset pins when `taskset` can (2+ CPUs), 0 never,
 * 1 always (an error when it cannot).
 */
const PIN_MODE = process.env.BENCH_PIN ?? '';
if (!['', '0', '1'].includes(PIN_MODE)) throw new Error(`BENCH_PIN must be 0 or 1; got ${PIN_MODE}`);
let pinning = null;

/** Whether processes are pinned in this run, and why not when they are not. */
function pinningState() {
  if (pinning !== null) return pinning;
  const cpus = require('node:os').cpus().length;
  if (PIN_MODE === '0') pinning = { pinned: false, why: 'BENCH_PIN=0' };
  else if (cpus < 2) pinning = { pinned: false, why: `${cpus} CPU` };
  else {
    try {
      execFileSync('taskset', ['-p', String(process.pid)], { stdio: 'ignore' });
      pinning = { pinned: true, app: '0', tools: cpus === 2 ? '1' : `1-${cpus - 1}` };
    } catch {
      pinning = { pinned: false, why: 'taskset is not available' };
    }
  }
  if (PIN_MODE === '1' && !pinning.pinned) throw new Error(`BENCH_PIN=1, but cannot pin: ${pinning.why}`);
  return pinning;
}

function pin(pid, role) {
  const state = pinningState();
  if (state.pinned) execFileSync('taskset', ['-a', '-p', '-c', state[role], String(pid)], { stdio: 'ignore' });
}

async function startSink() {
  const sink = startChild('sink.js', { name: 'sink' });
  const { port } = await sink.once('ready');
  pin(sink.pid, 'tools');
  return { ...sink, port };
}

async function startLoad() {
  const load = startChild('load.js', { name: 'autocannon' });
  await load.once('ready');
  pin(load.pid, 'tools');
  return load;
}

async function startApp(mode, sinkPort, { env = {}, execArgv = [], execPath, readyTimeoutMs } = {}) {
  if (mode === 'express-tcplog-capture' && captureModule === null) {
    if (tcplogModule === null) throw new Error('express-tcplog-capture: call useTcplogModule(snapshot) first');
    captureModule = captureCut(tcplogModule);
  }
  const app = startChild('app.js', {
    name: `app (${mode})`,
    env: {
      BENCH_TCPLOG_MODULE: tcplogModule || '',
      BENCH_CAPTURE_MODULE: captureModule || '',
      // Relative to where the benchmark was started, like any path on a command line.
      BENCH_BASELINE_MODULE: process.env.BENCH_BASELINE_MODULE ? path.resolve(process.env.BENCH_BASELINE_MODULE) : '',
      ...env,
      BENCH_MODE: mode,
      BENCH_SINK_PORT: String(sinkPort),
      NODE_ENV: 'production',
    },
    execArgv,
    execPath,
  });
  const { port } = await app.once('ready', readyTimeoutMs);
  pin(app.pid, 'app');
  return { ...app, port, url: `http://127.0.0.1:${port}/api/users/42?fields=name,email&include=roles` };
}

/**
 * Waits until the sink has counted `target` lines, or nothing arrived for `quietMs`, or `maxMs`
 * passed. Returns the sink's count then.
 */
async function waitForSink(sink, target, { quietMs = 500, maxMs = 15_000, pollMs = 50 } = {}) {
  const started = Date.now();
  let last = await sink.call('count');
  let lastChange = Date.now();
  while (last.lines < target && Date.now() - lastChange < quietMs && Date.now() - started < maxMs) {
    await sleep(pollMs);
    const now = await sink.call('count');
    if (now.lines !== last.lines) lastChange = Date.now();
    last = now;
  }
  return last;
}

let tcplogModule = null;
/** The cut copy of that build, made when a mode first needs it (see captureCut). */
let captureModule = null;
/** Makes later app processes load express-tcplog from this path (see snapshotDist). */
function useTcplogModule(modulePath) {
  tcplogModule = modulePath;
  captureModule = null;
}

module.exports = {
  pinningState,
  FORMATS,
  snapshotDist,
  sourceInfo,
  useTcplogModule,
  startSink,
  startLoad,
  startApp,
  waitForSink,
};
