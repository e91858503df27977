'use strict';
/**
 * Side-by-side benchmark: the same Express 5 JSON route with no logger, express-tcplog, pino-http
 * + pino-socket, morgan to a TCP socket, and a naive one-write-per-record logger.
 *
 * Each round starts a fresh app process per mode, warms each up, then runs the measured requests
 * (autocannon, its own process) in short segments, the modes taking turns and the order rotated
 * every segment; the app's process.cpuUsage() is read just before and just after each segment.
 * Ratios to `none` are taken per segment, between neighbours in time, and their median reported:
 * on a shared 2-core host the machine's speed drifts by tens of percent within a minute.
 * Each logging mode has its own sink process, so every record is attributed to its mode. Then
 * express-tcplog is paired per segment with every other logger in the run, and the capture
 * alone (express-tcplog-capture) with shipping a fixed line (fixed-batched).
 *
 *   BENCH_REQUESTS     measured requests per (round, mode)     default 20000
 *   BENCH_SEGMENTS     segments each round's requests are cut into   default 20
 *   BENCH_WARMUP       warm-up requests, not measured           default 2000
 *   BENCH_ROUNDS       rounds                                   default 5
 *   BENCH_CONNECTIONS  autocannon connections                   default 32
 *   BENCH_PIN          0: do not give the app a core of its own (see harness.js)
 *   BENCH_MODES        comma-separated modes (also: noop, naive-batched, fixed-batched,
 *                      express-tcplog-capture, and express-tcplog-baseline with
 *                      BENCH_BASELINE_MODULE=/path/to/another/dist/index.js); `npm run bench:split`
 *                      runs none, fixed-batched, express-tcplog-capture and express-tcplog
 *
 * Writes bench/results/latest.json and latest.md. Exits 1 only if express-tcplog delivered
 * fewer records than requests made.
 */
const { envInt, formatMarkdown, formatTable, machine, median, writeResult, runMain } = require('./common.js');
const {
  FORMATS,
  pinningState,
  snapshotDist,
  sourceInfo,
  startApp,
  startLoad,
  startSink,
  useTcplogModule,
  waitForSink,
} = require('./harness.js');

const DEFAULT_MODES = ['none', 'express-tcplog', 'pino-http', 'morgan', 'naive'];

const config = {
  requests: envInt('BENCH_REQUESTS', 20_000),
  warmup: envInt('BENCH_WARMUP', 2_000),
  rounds: envInt('BENCH_ROUNDS', 5),
  segments: envInt('BENCH_SEGMENTS', 20),
  connections: envInt('BENCH_CONNECTIONS', 32),
  modes: process.env.BENCH_MODES ? process.env.BENCH_MODES.split(',').map((m) => m.trim()) : DEFAULT_MODES,
};
for (const mode of config.modes) {
  if (!(mode in FORMATS)) throw new Error(`unknown mode ${mode}; known: ${Object.keys(FORMATS).join(', ')}`);
}

/** Per-thread-name CPU µs over the segment (null where the app could not tell). */
function threadDelta(before, after) {
  if (!before || !after) return null;
  const delta = {};
  for (const [name, micros] of Object.entries(after)) delta[name] = micros - (before[name] ?? 0);
  return delta;
}

function cpuMicros(before, after) {
  return after.cpu.user - before.cpu.user + (after.cpu.system - before.cpu.system);
}

/**
 * One round: a fresh app process per mode, all started together (an app waiting for its turn
 * uses no CPU), each warmed up, then `segments` short measured runs per mode, the modes
 * alternating and their order rotated each segment. Neighbouring segments share the machine's
 * state of the moment, so per-segment ratios cancel most of the drift of a noisy host.
 */
async function runRound(round, sinks, load) {
  const apps = new Map();
  try {
    for (const mode of config.modes) apps.set(mode, await startApp(mode, sinks.get(mode)?.port ?? 0));
    const base = new Map();
    for (const mode of config.modes) {
      const app = apps.get(mode);
      await load.call('run', { url: app.url, amount: config.warmup, connections: config.connections });
      const sink = sinks.get(mode);
      if (sink) {
        await waitForSink(sink, (await sink.call('count')).lines + config.warmup);
        base.set(mode, await sink.call('validate', { format: FORMATS[mode] }));
      }
    }
    const perSegment = Math.ceil(config.requests / config.segments);
    const segments = [];
    for (let segment = 0; segment < config.segments; segment++) {
      const shift = (round + segment) % config.modes.length;
      const order = [...config.modes.slice(shift), ...config.modes.slice(0, shift)];
      for (const mode of order) {
        const app = apps.get(mode);
        const before = await app.call('snapshot');
        const result = await load.call('run', { url: app.url, amount: perSegment, connections: config.connections });
        const after = await app.call('snapshot');
        const cpu = cpuMicros(before, after);
        segments.push({
          mode,
          round,
          segment,
          requests: result.requests,
          failed: result.non2xx + result.errors,
          cpuMicros: cpu,
          cpuPerRequest: cpu / result.requests,
          // In the kernel: mostly the socket writes (on loopback, the receiver's side too).
          systemMicros: after.cpu.system - before.cpu.system,
          rps: result.rps,
          appCpuFraction: cpu / 1000 / result.elapsedMs,
          loadCpuFraction: result.loadCpuFraction,
          latency: result.latency,
          rss: after.rss,
          stats: after.stats,
          threadMicros: threadDelta(before.threads, after.threads),
        });
      }
    }
    const samples = [];
    for (const mode of config.modes) {
      const runs = segments.filter((s) => s.mode === mode);
      const requests = runs.reduce((n, s) => n + s.requests, 0);
      const cpu = runs.reduce((n, s) => n + s.cpuMicros, 0);
      let delivery = null;
      const sink = sinks.get(mode);
      if (sink) {
        const start = base.get(mode);
        await waitForSink(sink, start.lines + requests);
        const end = await sink.call('validate', { format: FORMATS[mode] });
        delivery = {
          valid: end.valid - start.valid,
          invalid: end.invalid - start.invalid,
          lines: end.lines - start.lines,
          recordsPerRead: (end.lines - start.lines) / Math.max(1, end.chunks - start.chunks),
          fraction: (end.valid - start.valid) / requests,
        };
      }
      samples.push({
        mode,
        round,
        requests,
        failed: runs.reduce((n, s) => n + s.failed, 0),
        cpuMicros: cpu,
        cpuPerRequest: cpu / requests,
        systemPerRequest: runs.reduce((n, s) => n + s.systemMicros, 0) / requests,
        // V8's compiler and GC helpers: level across modes in every run so far (about 15 % of
        // bare Express's CPU), so not where a logger's cost hides.
        otherThreadsPerRequest: runs.every((s) => s.threadMicros)
          ? runs.reduce((n, s) => n + (s.threadMicros.other ?? 0), 0) / requests
          : null,
        rps: median(runs.map((s) => s.rps)),
        appCpuFraction: median(runs.map((s) => s.appCpuFraction)),
        loadCpuFraction: median(runs.map((s) => s.loadCpuFraction)),
        p99: median(runs.map((s) => s.latency.p99)),
        rss: runs[runs.length - 1].rss,
        delivery,
      });
    }
    return { samples, segments };
  } finally {
    await Promise.all([...apps.values()].map((app) => app.stop()));
  }
}

/**
 * `value(mode) / value(baseMode)` for every segment, `baseMode` (default `none`) taken in the same
 * round and segment.
 */
function pairedRatios(segments, mode, value, baseMode = 'none') {
  return segments
    .filter((s) => s.mode === mode)
    .map((s) => {
      const base = segments.find((b) => b.mode === baseMode && b.round === s.round && b.segment === s.segment);
      return base ? value(s) / value(base) : null;
    })
    .filter((r) => r !== null && Number.isFinite(r));
}

/** Median over every segment of `value(mode) / value(none)` in the same round and segment. */
function pairedRatio(segments, mode, value) {
  return median(pairedRatios(segments, mode, value));
}

/**
 * The comparisons the README quotes besides the ratios to `none`, each paired per segment:
 * express-tcplog against every other logger in the run, and the capture alone against
 * express-tcplog's whole and against shipping a fixed line.
 */
function modePairs(modes) {
  const pairs = [];
  const has = (mode) => modes.includes(mode);
  if (has('express-tcplog')) {
    for (const other of modes)
      if (other !== 'none' && other !== 'express-tcplog') pairs.push(['express-tcplog', other]);
  }
  if (has('express-tcplog-capture') && has('fixed-batched')) pairs.push(['express-tcplog-capture', 'fixed-batched']);
  return pairs;
}

function pairRows(segments) {
  return modePairs(config.modes).map(([mode, base]) => {
    const cpu = pairedRatios(segments, mode, (s) => s.cpuPerRequest, base);
    const interval = medianInterval(cpu);
    return {
      mode,
      base,
      cpu: median(cpu),
      cpuInterval: interval,
      rps: median(pairedRatios(segments, mode, (s) => s.rps, base)),
    };
  });
}

const PAIR_HEADERS = ['mode', 'against', 'CPU ×', '95 % interval', 'req/s ×'];

/** A ratio as the tables print it; '–' when there is none. */
function formatRatio(r) {
  return r === null ? '–' : `${r.toFixed(2)}×`;
}

/** A 95 % interval (see medianInterval) as the tables print it; '–' when there is none. */
function formatInterval(interval) {
  return interval ? `${interval[0].toFixed(2)}-${interval[1].toFixed(2)}` : '–';
}

function pairTableRows(pairs) {
  return pairs.map((pair) => [
    pair.mode,
    pair.base,
    formatRatio(pair.cpu),
    formatInterval(pair.cpuInterval),
    formatRatio(pair.rps),
  ]);
}

/**
 * A 95 % interval for the median of `ratios`, by bootstrap (2000 resamples, a fixed seed so a
 * result file always gives the same interval). It says how far apart two modes must be to be
 * told apart in this run; it does not cover drift from one run to the next.
 */
function medianInterval(ratios) {
  if (ratios.length < 5) return null;
  let seed = 0x9e3779b9;
  const random = () => {
    // xorshift32: enough for resampling, and reproducible.
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) / 2 ** 32;
  };
  const medians = [];
  for (let i = 0; i < 2000; i++) {
    medians.push(median(ratios.map(() => ratios[Math.floor(random() * ratios.length)])));
  }
  medians.sort((a, b) => a - b);
  return [medians[49], medians[1950]];
}

function summarize(samples, segments) {
  const byMode = new Map();
  for (const mode of config.modes) {
    const runs = samples.filter((s) => s.mode === mode);
    const delivered = runs.filter((r) => r.delivery);
    byMode.set(mode, {
      mode,
      rounds: runs.length,
      cpuPerRequest: median(runs.map((r) => r.cpuPerRequest)),
      systemPerRequest: median(runs.map((r) => r.systemPerRequest)),
      otherThreadsPerRequest: runs.every((r) => r.otherThreadsPerRequest !== null)
        ? median(runs.map((r) => r.otherThreadsPerRequest))
        : null,
      rps: median(runs.map((r) => r.rps)),
      p99: median(runs.map((r) => r.p99)),
      rss: median(runs.map((r) => r.rss)),
      delivered: delivered.length ? median(delivered.map((r) => r.delivery.fraction)) : null,
      minDelivered: delivered.length ? Math.min(...delivered.map((r) => r.delivery.fraction)) : null,
      recordsPerRead: delivered.length ? median(delivered.map((r) => r.delivery.recordsPerRead)) : null,
      invalidLines: delivered.reduce((n, r) => n + r.delivery.invalid, 0),
      failedRequests: runs.reduce((n, r) => n + r.failed, 0),
    });
  }
  const none = byMode.get('none');
  for (const row of byMode.values()) {
    row.cpuRatio = none && none.cpuPerRequest ? row.cpuPerRequest / none.cpuPerRequest : null;
    // Paired per segment (same round, adjacent in time): the figure to read on a drifting host.
    row.pairedCpuRatio = none ? pairedRatio(segments, row.mode, (s) => s.cpuPerRequest) : null;
    row.pairedCpuInterval =
      none && row.mode !== 'none' ? medianInterval(pairedRatios(segments, row.mode, (s) => s.cpuPerRequest)) : null;
    row.pairedRpsRatio = none ? pairedRatio(segments, row.mode, (s) => s.rps) : null;
  }
  return [...byMode.values()];
}

function tableRows(summary) {
  const pct = (f) => (f === null ? '–' : `${(f * 100).toFixed(f === 1 ? 0 : 2)} %`);
  return summary.map((row) => [
    row.mode,
    row.cpuPerRequest.toFixed(1),
    row.systemPerRequest.toFixed(1),
    formatRatio(row.cpuRatio),
    formatRatio(row.pairedCpuRatio),
    formatInterval(row.pairedCpuInterval),
    Math.round(row.rps).toString(),
    formatRatio(row.pairedRpsRatio),
    row.p99.toFixed(0),
    (row.rss / 2 ** 20).toFixed(0),
    pct(row.delivered),
  ]);
}

const HEADERS = [
  'mode',
  'CPU µs/req',
  'of it kernel',
  'CPU ×none',
  'CPU ×none paired',
  '95 % interval',
  'req/s',
  'req/s ×none paired',
  'p99 ms',
  'RSS MiB',
  'delivered',
];

function describePinning() {
  const state = pinningState();
  return state.pinned
    ? `app pinned to CPU ${state.app}, load and sinks to ${state.tools}`
    : `not pinned (${state.why})`;
}

async function main() {
  useTcplogModule(await snapshotDist());
  const source = sourceInfo();
  const started = new Date();
  console.log(
    `express-tcplog bench: ${config.rounds} rounds × ${config.modes.length} modes, ` +
      `${config.requests} requests (+${config.warmup} warm-up), ${config.connections} connections, ` +
      `${machine().cpus} CPUs, Node ${process.version}, ${describePinning()}; commit ${source.commit}` +
      (source.libModified ? ' with uncommitted lib/ changes' : ''),
  );
  const sinks = new Map();
  for (const mode of config.modes) if (FORMATS[mode]) sinks.set(mode, await startSink());
  const load = await startLoad();
  const samples = [];
  const segments = [];
  try {
    for (let round = 0; round < config.rounds; round++) {
      const result = await runRound(round, sinks, load);
      samples.push(...result.samples);
      segments.push(...result.segments);
      for (const sample of result.samples) {
        const delivered = sample.delivery
          ? ` delivered ${(sample.delivery.fraction * 100).toFixed(2)} %, ${sample.delivery.recordsPerRead.toFixed(1)} rec/read`
          : '';
        const paired = pairedRatio(result.segments, sample.mode, (s) => s.cpuPerRequest);
        console.log(
          `  round ${round + 1} ${sample.mode.padEnd(14)} ${sample.cpuPerRequest.toFixed(1).padStart(6)} µs/req ` +
            `(${paired === null ? '-' : paired.toFixed(2)}× none) ` +
            `(kernel ${sample.systemPerRequest.toFixed(1)}` +
            `${sample.otherThreadsPerRequest === null ? '' : `, other threads ${sample.otherThreadsPerRequest.toFixed(1)}`}) ` +
            `${Math.round(sample.rps).toString().padStart(6)} req/s p99 ${sample.p99} ms${delivered} ` +
            `(cpu busy: app ${sample.appCpuFraction.toFixed(2)}, autocannon ${sample.loadCpuFraction.toFixed(2)})`,
        );
      }
    }
  } finally {
    await Promise.all([...[...sinks.values()].map((sink) => sink.stop()), load.stop()]);
  }

  const summary = summarize(samples, segments);
  const rows = tableRows(summary);
  const table = formatTable(HEADERS, rows);
  console.log(
    `\nMedians over ${config.rounds} rounds of ${config.segments} interleaved segments. ×none: ratio of ` +
      `the medians; paired: median of the per-segment ratios (each mode against none in the same ` +
      `round and segment), with its 95 % bootstrap interval\n`,
  );
  console.log(table);
  const pairs = pairRows(segments);
  const pairRowsText = pairTableRows(pairs);
  if (pairs.length > 0) {
    console.log('\nPaired per segment with each other (same round and segment), medians and 95 % intervals\n');
    console.log(formatTable(PAIR_HEADERS, pairRowsText));
  }

  const info = machine();
  const markdown =
    `Measured ${started.toISOString().slice(0, 10)} on ${info.cpus} CPUs (${info.cpuModel}), Node ${info.node}, ` +
    `${describePinning()}; ` +
    `${config.rounds} rounds of ${config.requests} requests in ${config.segments} interleaved segments, after ` +
    `${config.warmup} warm-up, ${config.connections} connections; medians. "paired" is the median of ` +
    `per-segment ratios to none, with its 95 % bootstrap interval.\n\n${formatMarkdown(HEADERS, rows)}\n` +
    (pairs.length > 0
      ? `\nPaired per segment with each other:\n\n${formatMarkdown(PAIR_HEADERS, pairRowsText)}\n`
      : '');
  writeResult('latest.md', markdown);
  writeResult(
    'latest.json',
    JSON.stringify(
      {
        date: started.toISOString(),
        machine: info,
        pinning: pinningState(),
        source,
        config,
        summary,
        pairs,
        samples,
        segments,
      },
      null,
      2,
    ) + '\n',
  );
  console.log('\nWrote bench/results/latest.json and bench/results/latest.md');

  const ours = summary.find((row) => row.mode === 'express-tcplog');
  for (const row of summary) {
    if (row.invalidLines > 0) console.warn(`warning: ${row.mode}: ${row.invalidLines} lines were not valid records`);
    if (row.failedRequests > 0) console.warn(`warning: ${row.mode}: ${row.failedRequests} requests failed`);
  }
  // Invalid lines do not count as delivered, so they fail this check too.
  if (ours && ours.minDelivered < 1) {
    console.error(
      `FAIL: express-tcplog delivered ${(ours.minDelivered * 100).toFixed(3)} % of records in its worst round`,
    );
    return 1;
  }
  return 0;
}

runMain(main);
