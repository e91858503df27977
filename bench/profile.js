'use strict';
/**
 * CPU profile of the app under the benchmark's load in each mode (default: `none` and
 * `express-tcplog`), with V8's sampling profiler (`node --cpu-prof`). The modes take turns in
 * segments, as in run.js. Only the samples of the measured windows count; they are summarized
 * as µs per request by area (our dist/, each dependency, Node internals, GC), the top functions
 * by self time, and the inclusive time of express-tcplog's own functions. The .cpuprofile files
 * stay in bench/results/profiles/ for Chrome DevTools or speedscope.
 *
 *   PROFILE_MODES      default none,express-tcplog
 *   BENCH_REQUESTS     default 20000
 *   BENCH_WARMUP       default 2000
 *   BENCH_SEGMENTS     default 20: the modes take turns, BENCH_REQUESTS / BENCH_SEGMENTS at a time
 *   PROFILE_INTERVAL   sampling interval in µs, default 200
 */
const fs = require('node:fs');
const path = require('node:path');
const { RESULTS_DIR, envInt, formatTable, writeResult, runMain } = require('./common.js');
const {
  FORMATS,
  snapshotDist,
  sourceInfo,
  startApp,
  startLoad,
  startSink,
  useTcplogModule,
  waitForSink,
} = require('./harness.js');

const modes = (process.env.PROFILE_MODES || 'none,express-tcplog').split(',').map((m) => m.trim());
const requests = envInt('BENCH_REQUESTS', 20_000);
const warmup = envInt('BENCH_WARMUP', 2_000);
const interval = envInt('PROFILE_INTERVAL', 200);
const segments = envInt('BENCH_SEGMENTS', 20);
const PROFILE_DIR = path.join(RESULTS_DIR, 'profiles');

/** Where a frame's code lives: our dist/, a package, a Node internal module, or V8 itself. */
function areaOf(frame) {
  const { url, functionName } = frame;
  if (!url) {
    if (functionName.startsWith('(')) return functionName; // (garbage collector), (program), (idle)
    return '(native)';
  }
  // dist/, or the copy of it the drivers load (bench/results/dist-<pid>/).
  if (/\/dist(-\d+)?\/[^/]+\.js$/.test(url) && !url.includes('node_modules')) return 'express-tcplog dist/';
  const pkg = url.match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//);
  if (pkg) return pkg[1];
  if (url.startsWith('node:')) return url.replace(/^node:internal\//, 'node:').replace(/\/.*$/, '');
  if (url.includes('/bench/')) return 'bench app';
  return url;
}

function label(frame) {
  const file = frame.url ? path.basename(frame.url) : '';
  return `${frame.functionName || '(anonymous)'} ${file}${file ? `:${frame.lineNumber + 1}` : ''}`;
}

/** Self and inclusive time (µs) per area and per function, for samples inside the windows. */
function analyze(profile, windows) {
  const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children || []) parent.set(c, n.id);
  const selfArea = new Map();
  const selfFn = new Map();
  const inclusiveOurs = new Map();
  let total = 0;
  let insideOurs = 0;
  let t = profile.startTime;
  const add = (map, key, us) => map.set(key, (map.get(key) || 0) + us);
  for (let i = 0; i < profile.samples.length; i++) {
    t += profile.timeDeltas[i];
    if (!windows.some(([from, to]) => t >= from && t <= to)) continue;
    const us = profile.timeDeltas[i + 1] ?? profile.timeDeltas[i];
    const leaf = nodes.get(profile.samples[i]);
    if (leaf.callFrame.functionName === '(idle)') continue;
    total += us;
    add(selfArea, areaOf(leaf.callFrame), us);
    add(selfFn, `${label(leaf.callFrame)} [${areaOf(leaf.callFrame)}]`, us);
    const seen = new Set();
    for (let id = leaf.id; id !== undefined; id = parent.get(id)) {
      const frame = nodes.get(id).callFrame;
      if (areaOf(frame) !== 'express-tcplog dist/') continue;
      const key = label(frame);
      if (!seen.has(key)) {
        seen.add(key);
        add(inclusiveOurs, key, us);
      }
    }
    if (seen.size > 0) insideOurs += us;
  }
  return { total, selfArea, selfFn, inclusiveOurs, insideOurs };
}

/** Starts one mode's app under V8's sampling profiler and warms it up. */
async function startProfiled(mode, sink, load) {
  fs.mkdirSync(PROFILE_DIR, { recursive: true });
  const name = `${mode}-${Date.now()}.cpuprofile`;
  const app = await startApp(mode, sink.port, {
    execArgv: [
      '--cpu-prof',
      '--cpu-prof-dir',
      PROFILE_DIR,
      '--cpu-prof-name',
      name,
      '--cpu-prof-interval',
      `${interval}`,
    ],
  });
  await load.call('run', { url: app.url, amount: warmup });
  if (FORMATS[mode]) await waitForSink(sink, (await sink.call('count')).lines + warmup);
  return { mode, name, app, windows: [], cpu: 0, requests: 0 };
}

/**
 * The modes take turns segment by segment, the order rotated each time, as in run.js: run one
 * after the other, a host whose speed drifts made every function of the second mode look slower
 * (Express's own router doubled in one run), which hid what the logger itself adds.
 */
async function profileModes(sink, load) {
  const runs = [];
  try {
    for (const mode of modes) runs.push(await startProfiled(mode, sink, load));
    const perSegment = Math.ceil(requests / segments);
    for (let segment = 0; segment < segments; segment++) {
      const shift = segment % runs.length;
      for (const run of [...runs.slice(shift), ...runs.slice(0, shift)]) {
        const before = await run.app.call('snapshot');
        const result = await load.call('run', { url: run.app.url, amount: perSegment });
        const after = await run.app.call('snapshot');
        run.windows.push([before.monotonicMicros, after.monotonicMicros]);
        run.cpu += after.cpu.user - before.cpu.user + after.cpu.system - before.cpu.system;
        run.requests += result.requests;
      }
    }
  } finally {
    for (const run of runs) await run.app.stop(30_000);
  }
  return runs.map((run) => ({
    ...run,
    file: path.join('bench/results/profiles', run.name),
    profile: JSON.parse(fs.readFileSync(path.join(PROFILE_DIR, run.name), 'utf8')),
  }));
}

function top(map, n) {
  return [...map.entries()].sort((a, b) => b[1] - a[1]).slice(0, n);
}

async function main() {
  useTcplogModule(await snapshotDist());
  const source = sourceInfo();
  const sink = await startSink();
  const load = await startLoad();
  let runs;
  try {
    runs = await profileModes(sink, load);
  } finally {
    await Promise.all([sink.stop(), load.stop()]);
  }

  const summaries = runs.map((run) => {
    const inWindow = run.windows.every(([from, to]) => from >= run.profile.startTime && to <= run.profile.endTime);
    const windows = inWindow ? run.windows : [[run.profile.startTime, run.profile.endTime]];
    return { ...run, analysis: analyze(run.profile, windows), inWindow, n: run.requests };
  });

  const perReq = (us, n) => (us / n).toFixed(2);
  const areas = [...new Set(summaries.flatMap((s) => [...s.analysis.selfArea.keys()]))];
  areas.sort((a, b) => {
    const max = (k) => Math.max(...summaries.map((s) => s.analysis.selfArea.get(k) || 0));
    return max(b) - max(a);
  });
  const areaRows = areas
    .slice(0, 20)
    .map((area) => [area, ...summaries.map((s) => perReq(s.analysis.selfArea.get(area) || 0, s.n))]);
  areaRows.push(['total sampled', ...summaries.map((s) => perReq(s.analysis.total, s.n))]);
  areaRows.push(['process.cpuUsage', ...summaries.map((s) => perReq(s.cpu, s.n))]);
  const lines = [];
  lines.push(`Commit ${source.commit}${source.libModified ? ' with uncommitted lib/ changes' : ''}\n`);
  lines.push(`Self time by area, µs per request (window: ${summaries.map((s) => `${s.mode} ${s.inWindow}`)})\n`);
  lines.push(formatTable(['area', ...summaries.map((s) => s.mode)], areaRows));
  for (const s of summaries) {
    lines.push(`\n${s.mode}: top functions by self time, µs per request (${s.file})\n`);
    lines.push(
      formatTable(
        ['function [area]', 'µs/req', 'share'],
        top(s.analysis.selfFn, 25).map(([k, us]) => [
          k.slice(0, 110),
          perReq(us, s.n),
          `${((us / s.analysis.total) * 100).toFixed(1)} %`,
        ]),
      ),
    );
    if (s.analysis.inclusiveOurs.size > 0) {
      lines.push(
        `\n${s.mode}: express-tcplog functions, inclusive time (callees too), µs per request; ` +
          `all stacks through dist/: ${perReq(s.analysis.insideOurs, s.n)} µs/req\n`,
      );
      lines.push(
        formatTable(
          ['function', 'µs/req'],
          top(s.analysis.inclusiveOurs, 25).map(([k, us]) => [k, perReq(us, s.n)]),
        ),
      );
    }
  }
  const text = lines.join('\n');
  console.log(text);
  writeResult('profile.txt', `${text}\n`);
  console.log('\nWrote bench/results/profile.txt');
}

runMain(main);
