'use strict';
/**
 * Side-by-side benchmark: the same Express 5 JSON route with no logger, express-tcplog, pino-http
 * + pino-socket, morgan to a TCP socket, and a naive one-write-per-record logger.
 *
 * Each (round, mode) gets a fresh app process: warm-up, then a fixed number of requests from
 * autocannon (its own process), with the app's process.cpuUsage() read just before and just after.
 * Modes are interleaved, the order rotated every round, and medians over rounds are reported.
 *
 *   BENCH_REQUESTS     measured requests per (round, mode)     default 20000
 *   BENCH_WARMUP       warm-up requests, not measured           default 2000
 *   BENCH_ROUNDS       rounds                                   default 5
 *   BENCH_CONNECTIONS  autocannon connections                   default 32
 *   BENCH_MODES        comma-separated modes (also: naive-batched, and express-tcplog-baseline
 *                      with BENCH_BASELINE_MODULE=/path/to/another/dist/index.js)
 *
 * Writes bench/results/latest.json and latest.md. Exits 1 only if express-tcplog delivered
 * fewer records than requests made.
 */
const { envInt, formatMarkdown, formatTable, machine, median, writeResult, runMain } = require('./common.js');
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

const DEFAULT_MODES = ['none', 'express-tcplog', 'pino-http', 'morgan', 'naive'];

const config = {
  requests: envInt('BENCH_REQUESTS', 20_000),
  warmup: envInt('BENCH_WARMUP', 2_000),
  rounds: envInt('BENCH_ROUNDS', 5),
  connections: envInt('BENCH_CONNECTIONS', 32),
  modes: process.env.BENCH_MODES ? process.env.BENCH_MODES.split(',').map((m) => m.trim()) : DEFAULT_MODES,
};
for (const mode of config.modes) {
  if (!(mode in FORMATS)) throw new Error(`unknown mode ${mode}; known: ${Object.keys(FORMATS).join(', ')}`);
}

function cpuMicros(before, after) {
  return after.cpu.user - before.cpu.user + (after.cpu.system - before.cpu.system);
}

async function measure(mode, round, sink, load) {
  const app = await startApp(mode, sink.port);
  const format = FORMATS[mode];
  try {
    await load.call('run', { url: app.url, amount: config.warmup, connections: config.connections });
    let base = null;
    if (format) {
      await waitForSink(sink, (await sink.call('count')).lines + config.warmup);
      base = await sink.call('validate', { format });
    }

    const before = await app.call('snapshot');
    const result = await load.call('run', { url: app.url, amount: config.requests, connections: config.connections });
    const after = await app.call('snapshot');

    let delivery = null;
    if (format) {
      await waitForSink(sink, base.lines + result.requests);
      const end = await sink.call('validate', { format });
      delivery = {
        valid: end.valid - base.valid,
        invalid: end.invalid - base.invalid,
        lines: end.lines - base.lines,
        recordsPerRead: (end.lines - base.lines) / Math.max(1, end.chunks - base.chunks),
        fraction: (end.valid - base.valid) / result.requests,
      };
    }
    const cpu = cpuMicros(before, after);
    return {
      mode,
      round,
      requests: result.requests,
      non2xx: result.non2xx,
      errors: result.errors,
      cpuMicros: cpu,
      cpuPerRequest: cpu / result.requests,
      rps: result.rps,
      appCpuFraction: cpu / 1000 / result.elapsedMs,
      loadCpuFraction: result.loadCpuFraction,
      latency: result.latency,
      rss: after.rss,
      maxRss: after.maxRssBytes,
      delivery,
      stats: after.stats,
    };
  } finally {
    await app.stop();
  }
}

function summarize(samples) {
  const byMode = new Map();
  for (const mode of config.modes) {
    const runs = samples.filter((s) => s.mode === mode);
    byMode.set(mode, {
      mode,
      rounds: runs.length,
      cpuPerRequest: median(runs.map((r) => r.cpuPerRequest)),
      rps: median(runs.map((r) => r.rps)),
      p99: median(runs.map((r) => r.latency.p99)),
      rss: median(runs.map((r) => r.rss)),
      delivered: runs.some((r) => r.delivery) ? median(runs.map((r) => r.delivery && r.delivery.fraction)) : null,
      minDelivered: runs.some((r) => r.delivery) ? Math.min(...runs.map((r) => r.delivery.fraction)) : null,
      recordsPerRead: runs.some((r) => r.delivery) ? median(runs.map((r) => r.delivery.recordsPerRead)) : null,
      invalidLines: runs.reduce((n, r) => n + (r.delivery ? r.delivery.invalid : 0), 0),
      failedRequests: runs.reduce((n, r) => n + r.non2xx + r.errors, 0),
    });
  }
  const none = byMode.get('none');
  for (const row of byMode.values()) {
    row.cpuRatio = none && none.cpuPerRequest ? row.cpuPerRequest / none.cpuPerRequest : null;
    row.rpsRatio = none && none.rps ? row.rps / none.rps : null;
    // Paired per round (same round, adjacent in time): less sensitive to a machine that drifts.
    row.pairedCpuRatio = none
      ? median(
          samples
            .filter((s) => s.mode === row.mode)
            .map((s) => {
              const base = samples.find((b) => b.mode === 'none' && b.round === s.round);
              return base ? s.cpuPerRequest / base.cpuPerRequest : null;
            }),
        )
      : null;
  }
  return [...byMode.values()];
}

function tableRows(summary) {
  const pct = (f) => (f === null ? '–' : `${(f * 100).toFixed(f === 1 ? 0 : 2)} %`);
  const ratio = (r) => (r === null ? '–' : `${r.toFixed(2)}×`);
  return summary.map((row) => [
    row.mode,
    row.cpuPerRequest.toFixed(1),
    ratio(row.cpuRatio),
    ratio(row.pairedCpuRatio),
    Math.round(row.rps).toString(),
    ratio(row.rpsRatio),
    row.p99.toFixed(0),
    (row.rss / 2 ** 20).toFixed(0),
    pct(row.delivered),
  ]);
}

const HEADERS = [
  'mode',
  'CPU µs/req',
  'CPU ×none',
  'CPU ×none paired',
  'req/s',
  'req/s ×none',
  'p99 ms',
  'RSS MiB',
  'delivered',
];

async function main() {
  useTcplogModule(await snapshotDist());
  const source = sourceInfo();
  const started = new Date();
  console.log(
    `express-tcplog bench: ${config.rounds} rounds × ${config.modes.length} modes, ` +
      `${config.requests} requests (+${config.warmup} warm-up), ${config.connections} connections, ` +
      `${machine().cpus} CPUs, Node ${process.version}; commit ${source.commit}` +
      (source.libModified ? ' with uncommitted lib/ changes' : ''),
  );
  const sink = await startSink();
  const load = await startLoad();
  const samples = [];
  try {
    for (let round = 0; round < config.rounds; round++) {
      const shift = round % config.modes.length;
      const order = [...config.modes.slice(shift), ...config.modes.slice(0, shift)];
      for (const mode of order) {
        const sample = await measure(mode, round, sink, load);
        samples.push(sample);
        const delivered = sample.delivery
          ? ` delivered ${(sample.delivery.fraction * 100).toFixed(2)} %, ${sample.delivery.recordsPerRead.toFixed(1)} rec/read`
          : '';
        console.log(
          `  round ${round + 1} ${mode.padEnd(14)} ${sample.cpuPerRequest.toFixed(1).padStart(6)} µs/req ` +
            `${Math.round(sample.rps).toString().padStart(6)} req/s p99 ${sample.latency.p99} ms${delivered} ` +
            `(cpu busy: app ${sample.appCpuFraction.toFixed(2)}, autocannon ${sample.loadCpuFraction.toFixed(2)})`,
        );
      }
    }
  } finally {
    await Promise.all([sink.stop(), load.stop()]);
  }

  const summary = summarize(samples);
  const rows = tableRows(summary);
  const table = formatTable(HEADERS, rows);
  console.log(
    `\nMedians over ${config.rounds} rounds. ×none: ratio of the medians; paired: median of the ` +
      `per-round ratios (each mode against none in the same round)\n`,
  );
  console.log(table);

  const info = machine();
  const markdown =
    `Measured ${started.toISOString().slice(0, 10)} on ${info.cpus} CPUs (${info.cpuModel}), Node ${info.node}; ` +
    `${config.rounds} interleaved rounds of ${config.requests} requests after ${config.warmup} warm-up, ` +
    `${config.connections} connections; medians. "CPU ×none paired" is the median of per-round ratios.\n\n${formatMarkdown(HEADERS, rows)}\n`;
  writeResult('latest.md', markdown);
  writeResult(
    'latest.json',
    JSON.stringify({ date: started.toISOString(), machine: info, source, config, summary, samples }, null, 2) + '\n',
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
