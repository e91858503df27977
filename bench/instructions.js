'use strict';
/**
 * Instructions per request, counted by valgrind's callgrind: the same app, load and modes as
 * run.js, but a count rather than a time. CPU time on a shared 2-core host moves by a few
 * percent from one segment to the next; an instruction count does not depend on what else the
 * machine is doing, so a change of 1-2 % in the logger shows. It does not see cache misses or the
 * kernel's work (run.js does), so it guides work and does not replace the timed benchmark.
 *
 * Each mode's app runs under callgrind with counting off; after the warm-up, counting is turned
 * on for BENCH_REQUESTS requests, then the profile is dumped. Node writes a map of its JIT code
 * (--perf-basic-prof-only-functions) so that the package's own JavaScript functions get names.
 * Also reported: how many property loads per request missed V8's inline caches and went to the
 * runtime (Runtime_LoadIC_Miss). Under Express 5, every request and response object has a map
 * of its own by the first middleware (once Express has set their prototype and its router added
 * its properties), so each property read on them misses, at about 1 500 instructions each. Last, function by function, where each mode's instructions differ from the
 * first mode's: what the package makes V8's builtins, its runtime and Node do shows there, which
 * the package's own functions alone do not.
 *
 * Env: BENCH_MODES (none,noop,express-tcplog), BENCH_ROUNDS (3), BENCH_REQUESTS (4000),
 * BENCH_WARMUP (3000), BENCH_BASELINE_MODULE as in run.js. Needs valgrind (Debian: valgrind).
 */
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { runMain, envInt, median, formatTable, formatMarkdown, writeResult, machine } = require('./common.js');
const { FORMATS, snapshotDist, sourceInfo, useTcplogModule, startSink, startLoad, startApp } = require('./harness.js');

const MODES = (process.env.BENCH_MODES || 'none,noop,express-tcplog').split(',').filter(Boolean);
const ROUNDS = envInt('BENCH_ROUNDS', 3);
const REQUESTS = envInt('BENCH_REQUESTS', 4000);
const WARMUP = envInt('BENCH_WARMUP', 3000);
for (const mode of MODES) {
  if (!(mode in FORMATS))
    throw new Error(`BENCH_MODES: unknown mode ${mode}; known: ${Object.keys(FORMATS).join(', ')}`);
}

function has(command, args) {
  try {
    execFileSync(command, args, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Node's map of JIT code: [start, size, name], sorted by start. */
function readPerfMap(pid) {
  const file = path.join(os.tmpdir(), `perf-${pid}.map`);
  const ranges = [];
  if (fs.existsSync(file)) {
    for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
      const match = /^([0-9a-f]+) ([0-9a-f]+) (.*)$/.exec(line);
      if (match) ranges.push([parseInt(match[1], 16), parseInt(match[2], 16), match[3]]);
    }
    fs.rmSync(file, { force: true });
  }
  return ranges.sort((a, b) => a[0] - b[0]);
}

function nameAt(ranges, address) {
  let low = 0;
  let high = ranges.length - 1;
  while (low <= high) {
    const mid = (low + high) >> 1;
    const [start, size, name] = ranges[mid];
    if (address < start) high = mid - 1;
    else if (address >= start + size) low = mid + 1;
    else return name;
  }
  return null;
}

const ENTRY = /^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$/;
const count = (text) => Number(text.replace(/,/g, ''));

/**
 * Reads one dump: total instructions, instructions by function (JIT code named from the perf
 * map), and the calls into V8's load-IC miss handler.
 */
function readProfile(file, ranges) {
  const totals = /^totals:\s*(\d+)/m.exec(fs.readFileSync(file, 'utf8'));
  const annotate = (...args) =>
    execFileSync('callgrind_annotate', ['--threshold=100', ...args, file], { encoding: 'utf8', maxBuffer: 1 << 28 });
  const byFunction = new Map();
  for (const line of annotate().split('\n')) {
    const match = ENTRY.exec(line);
    if (!match || match[2].includes('PROGRAM TOTALS')) continue;
    const jit = /^\?\?\?:0x([0-9a-f]+)/.exec(match[2]);
    const name = jit ? (nameAt(ranges, parseInt(jit[1], 16)) ?? 'JIT code without a name') : match[2];
    byFunction.set(name, (byFunction.get(name) ?? 0) + count(match[1]));
  }
  // The callers of the miss handler, each with its call count: "N (x%) < caller (Kx)".
  let misses = 0;
  let missInstructions = 0;
  let callers = [];
  for (const line of annotate('--tree=caller', '--inclusive=yes').split('\n')) {
    if (/^\s*[\d,]+\s+\(.*\)\s+< /.test(line)) {
      callers.push(line);
      continue;
    }
    const star = /^\s*([\d,]+)\s+\(.*\)\s+\*\s+(.*)$/.exec(line);
    if (star && star[2].includes('Runtime_LoadIC_Miss')) {
      missInstructions += count(star[1]);
      for (const caller of callers) misses += count(/\(([\d,]+)x\)/.exec(caller)?.[1] ?? '0');
    }
    if (!/^\s*$/.test(line) || star) callers = [];
  }
  return { total: totals ? Number(totals[1]) : null, byFunction, misses, missInstructions };
}

async function measure(mode, sink, load, outDir, round) {
  const out = path.join(outDir, `callgrind.${mode}.${round}`);
  const app = await startApp(mode, sink.port, {
    execPath: 'valgrind',
    execArgv: [
      '--tool=callgrind',
      '-q',
      '--instr-atstart=no',
      `--callgrind-out-file=${out}`,
      process.execPath,
      '--perf-basic-prof-only-functions',
    ],
    readyTimeoutMs: 180_000,
  });
  const control = (...args) => execFileSync('callgrind_control', [...args, String(app.pid)], { stdio: 'ignore' });
  try {
    await load.call('run', { url: app.url, amount: WARMUP }, 900_000);
    control('--zero');
    control('--instr=on');
    const result = await load.call('run', { url: app.url, amount: REQUESTS }, 900_000);
    control('--instr=off');
    control('--dump');
    const requests = result.requests;
    const files = fs.readdirSync(outDir).filter((file) => file.startsWith(`callgrind.${mode}.${round}.`));
    if (files.length !== 1) throw new Error(`expected one dump for ${mode}, found ${files.join(', ') || 'none'}`);
    const ranges = readPerfMap(app.pid);
    const profile = readProfile(path.join(outDir, files[0]), ranges);
    return { requests, ...profile };
  } finally {
    await app.stop(60_000);
    readPerfMap(app.pid);
  }
}

/** A function's name without V8's tier marks and the directories of its file. */
function shortName(name) {
  return name.replace(/^JS:[*^~]?/, '').replace(/ \/.*\/([\w.-]+\.js)/, ' $1');
}

/** Whether a JIT function (as the perf map names it) is this package's: its file is in `dirs`. */
function ownFunction(name, dirs) {
  return dirs.some((dir) => name.includes(dir));
}

async function main() {
  if (!has('valgrind', ['--version']) || !has('callgrind_control', ['--version'])) {
    console.error('bench:instructions needs valgrind (callgrind): apt-get install valgrind. Not run.');
    return 2;
  }
  const tcplog = await snapshotDist();
  useTcplogModule(tcplog);
  const packageDirs = [path.dirname(tcplog)];
  if (process.env.BENCH_BASELINE_MODULE)
    packageDirs.push(path.dirname(path.resolve(process.env.BENCH_BASELINE_MODULE)));
  const outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcplog-instructions-'));
  process.on('exit', () => fs.rmSync(outDir, { recursive: true, force: true }));

  const sink = await startSink();
  const load = await startLoad();
  const samples = Object.fromEntries(MODES.map((mode) => [mode, []]));
  for (let round = 0; round < ROUNDS; round++) {
    const order = MODES.map((_, i) => MODES[(i + round) % MODES.length]);
    for (const mode of order) {
      const sample = await measure(mode, sink, load, outDir, round);
      const own = [...sample.byFunction].filter(([name]) => ownFunction(name, packageDirs));
      samples[mode].push({
        requests: sample.requests,
        perRequest: sample.total / sample.requests,
        ownPerRequest: own.reduce((sum, [, value]) => sum + value, 0) / sample.requests,
        missesPerRequest: sample.misses / sample.requests,
        missInstructionsPerRequest: sample.missInstructions / sample.requests,
        functions: Object.fromEntries(
          [...sample.byFunction]
            .sort((a, b) => b[1] - a[1])
            .slice(0, 400)
            .map(([name, value]) => [shortName(name), value / sample.requests]),
        ),
        ownFunctions: Object.fromEntries(
          own.sort((a, b) => b[1] - a[1]).map(([name, value]) => [shortName(name), value / sample.requests]),
        ),
      });
      console.log(
        `round ${round + 1}/${ROUNDS} ${mode}: ${Math.round(sample.total / sample.requests)} instructions/request, ` +
          `${(sample.misses / sample.requests).toFixed(1)} IC misses/request`,
      );
    }
  }
  await load.stop();
  await sink.stop();

  const base = median(samples[MODES[0]].map((s) => s.perRequest));
  const headers = [
    'mode',
    'instructions/req',
    'range',
    `×${MODES[0]}`,
    'of it the package',
    'IC misses/req',
    'in the miss handler',
  ];
  const thousands = (value) => `${(value / 1000).toFixed(1)} k`;
  const rows = MODES.map((mode) => {
    const list = samples[mode];
    const values = list.map((s) => s.perRequest);
    const mid = median(values);
    return [
      mode,
      thousands(mid),
      `${thousands(Math.min(...values))}-${thousands(Math.max(...values))}`,
      `${(mid / base).toFixed(3)}×`,
      thousands(median(list.map((s) => s.ownPerRequest))),
      median(list.map((s) => s.missesPerRequest)).toFixed(1),
      thousands(median(list.map((s) => s.missInstructionsPerRequest))),
    ];
  });
  console.log(`\ninstructions per request, median of ${ROUNDS} rounds of ${REQUESTS} requests (callgrind)\n`);
  console.log(formatTable(headers, rows));
  for (const mode of MODES) {
    const functions = samples[mode].at(-1).ownFunctions;
    const names = Object.keys(functions);
    if (names.length === 0) continue;
    console.log(
      `\n${mode}: the package's functions, instructions/request (last round; inlined ones count in their caller)`,
    );
    for (const name of names.slice(0, 15)) console.log(`  ${String(Math.round(functions[name])).padStart(7)}  ${name}`);
  }
  // Where a mode's instructions go beyond the first mode's, function by function: the package's
  // own code, and what it makes the rest of the process do (builtins, the runtime, the GC).
  const first = samples[MODES[0]].at(-1).functions;
  for (const mode of MODES.slice(1)) {
    const functions = samples[mode].at(-1).functions;
    const names = new Set([...Object.keys(first), ...Object.keys(functions)]);
    const diffs = [...names]
      .map((name) => [name, (functions[name] ?? 0) - (first[name] ?? 0)])
      .sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
    console.log(`\n${mode} against ${MODES[0]}: the largest differences, instructions/request (last round)`);
    for (const [name, diff] of diffs.slice(0, 30)) {
      console.log(`  ${(diff > 0 ? '+' : '') + String(Math.round(diff))}`.padEnd(10) + `  ${name}`);
    }
  }
  const info = {
    date: new Date().toISOString(),
    machine: machine(),
    source: sourceInfo(),
    modes: MODES,
    rounds: ROUNDS,
  };
  writeResult(
    'instructions.json',
    `${JSON.stringify({ ...info, requests: REQUESTS, warmup: WARMUP, samples }, null, 2)}\n`,
  );
  writeResult('instructions.md', `${formatMarkdown(headers, rows)}\n`);
  return 0;
}

runMain(main);
