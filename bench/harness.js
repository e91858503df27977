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
};

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

async function startSink() {
  const sink = startChild('sink.js', { name: 'sink' });
  const { port } = await sink.once('ready');
  return { ...sink, port };
}

async function startLoad() {
  const load = startChild('load.js', { name: 'autocannon' });
  await load.once('ready');
  return load;
}

async function startApp(mode, sinkPort, { env = {}, execArgv = [] } = {}) {
  const app = startChild('app.js', {
    name: `app (${mode})`,
    env: {
      BENCH_TCPLOG_MODULE: tcplogModule || '',
      // Relative to where the benchmark was started, like any path on a command line.
      BENCH_BASELINE_MODULE: process.env.BENCH_BASELINE_MODULE ? path.resolve(process.env.BENCH_BASELINE_MODULE) : '',
      ...env,
      BENCH_MODE: mode,
      BENCH_SINK_PORT: String(sinkPort),
      NODE_ENV: 'production',
    },
    execArgv,
  });
  const { port } = await app.once('ready');
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
/** Makes later app processes load express-tcplog from this path (see snapshotDist). */
function useTcplogModule(modulePath) {
  tcplogModule = modulePath;
}

module.exports = { FORMATS, snapshotDist, sourceInfo, useTcplogModule, startSink, startLoad, startApp, waitForSink };
