'use strict';
/**
 * Outage benchmark: express-tcplog at full load while the log server is down, then back.
 *
 * Phases, each under autocannon load: `before` (sink up), `outage` (the sink stops listening and
 * drops its connections), `after` (the sink is back on the same port). The app's RSS and the
 * middleware's stats() are sampled every 500 ms over IPC. Reported: throughput, p99 and the app's
 * CPU per request per phase, RSS growth against maxBufferBytes + 20 MiB, drops counted, and the
 * backlog draining.
 *
 *   OUTAGE_SECONDS      default 30
 *   BEFORE_SECONDS      default 10
 *   AFTER_SECONDS       default 10
 *   BENCH_CONNECTIONS   default 32
 *   BENCH_WARMUP        default 2000 requests, then
 *   WARMUP_SECONDS      default 10 of load before the `before` phase: the baseline is the RSS of
 *                       a process whose heap has grown to what this load keeps (with only the
 *                       2000 requests, a run's RSS was still rising through `before`, and the
 *                       outage's growth was measured from 106 MiB instead of 113-116)
 *
 * Exits 1 if RSS grew beyond the bound, the backlog did not drain, the counters disagree
 * (records !== sent + dropped + buffered), or the sink received invalid lines.
 */
const { envInt, formatTable, machine, median, sleep, writeResult, runMain } = require('./common.js');
const {
  snapshotDist,
  sourceInfo,
  startApp,
  startLoad,
  startSink,
  useTcplogModule,
  waitForSink,
} = require('./harness.js');

const config = {
  outageSeconds: envInt('OUTAGE_SECONDS', 30),
  beforeSeconds: envInt('BEFORE_SECONDS', 10),
  afterSeconds: envInt('AFTER_SECONDS', 10),
  connections: envInt('BENCH_CONNECTIONS', 32),
  warmup: envInt('BENCH_WARMUP', 2_000),
  warmupSeconds: envInt('WARMUP_SECONDS', 10),
  maxBufferBytes: 16 * 2 ** 20, // the default of the option, set explicitly so the bound is known
  rssAllowanceBytes: 20 * 2 ** 20,
  drainTimeoutMs: 60_000,
};
/** A backlog under this many bytes is "caught up": under load, records are always in flight. */
const CAUGHT_UP_BYTES = 64 * 1024;

const MiB = (bytes) => (bytes / 2 ** 20).toFixed(1);

async function main() {
  useTcplogModule(await snapshotDist());
  const source = sourceInfo();
  const started = new Date();
  console.log(
    `express-tcplog outage bench: ${config.beforeSeconds} s before, ${config.outageSeconds} s sink down, ` +
      `${config.afterSeconds} s after, ${config.connections} connections, Node ${process.version}`,
  );
  const sink = await startSink();
  const load = await startLoad();
  const app = await startApp('express-tcplog', sink.port, {
    env: { BENCH_TCPLOG_OPTIONS: JSON.stringify({ maxBufferBytes: config.maxBufferBytes }) },
  });
  const samples = [];
  let phase = 'warm-up';
  let sinkUpAt = null;
  let caughtUpAt = null;
  let polling = true;

  const poller = (async function pollApp() {
    while (polling) {
      const snap = await app.call('snapshot').catch(() => null);
      if (snap) {
        const t = Date.now();
        samples.push({
          t,
          phase,
          rss: snap.rss,
          heapUsed: snap.heapUsed,
          heapTotal: snap.heapTotal,
          arrayBuffers: snap.arrayBuffers,
          stats: snap.stats,
        });
        if (sinkUpAt !== null && caughtUpAt === null && snap.stats.bufferedBytes < CAUGHT_UP_BYTES) caughtUpAt = t;
      }
      await sleep(500);
    }
  })();

  const runPhase = async (name, seconds) => {
    phase = name;
    const start = await app.call('snapshot');
    const result = await load.call(
      'run',
      { url: app.url, duration: seconds, connections: config.connections },
      seconds * 1000 + 60_000,
    );
    const end = await app.call('snapshot');
    // The app's own work per request: the phases run one after the other, and on a host whose
    // speed drifts, requests/s moves with it (and with autocannon's share of its core).
    result.cpuPerRequest =
      (end.cpu.user - start.cpu.user + (end.cpu.system - start.cpu.system)) / Math.max(1, result.requests);
    console.log(
      `  ${name.padEnd(7)} ${Math.round(result.rps)} req/s, p99 ${result.latency.p99} ms, ` +
        `${result.cpuPerRequest.toFixed(1)} µs CPU/req, ${result.non2xx + result.errors} failed`,
    );
    return result;
  };

  try {
    await load.call('run', { url: app.url, amount: config.warmup, connections: config.connections });
    const settle =
      config.warmupSeconds > 0
        ? await load.call(
            'run',
            { url: app.url, duration: config.warmupSeconds, connections: config.connections },
            config.warmupSeconds * 1000 + 60_000,
          )
        : { requests: 0 };
    await waitForSink(sink, config.warmup + settle.requests);
    const base = await sink.call('validate', { format: 'json' });
    const startSnap = await app.call('snapshot');

    const before = await runPhase('before', config.beforeSeconds);
    await sink.call('down');
    const outage = await runPhase('outage', config.outageSeconds);
    await sink.call('up');
    sinkUpAt = Date.now();
    const after = await runPhase('after', config.afterSeconds);
    phase = 'drain';

    // Load has stopped: the backlog must go to zero.
    const drainStart = Date.now();
    let endSnap = await app.call('snapshot');
    while (endSnap.stats.buffered > 0 && Date.now() - drainStart < config.drainTimeoutMs) {
      await sleep(100);
      endSnap = await app.call('snapshot');
    }
    polling = false;
    await poller;
    const sentTotal = endSnap.stats.sent;
    await waitForSink(sink, base.lines + (sentTotal - startSnap.stats.sent), { quietMs: 1000 });
    const received = await sink.call('validate', { format: 'json' });

    const rssOf = (name) => samples.filter((s) => s.phase === name).map((s) => s.rss);
    // RSS under load swings with garbage awaiting collection: the baseline is the before phase's
    // peak (its normal headroom), compared with the peak once records pile up.
    const baselineRss = Math.max(...rssOf('before'));
    const peakRss = Math.max(...rssOf('outage'), ...rssOf('after'), ...rssOf('drain'));
    const peakOf = (name) => (rssOf(name).length > 0 ? Math.max(...rssOf(name)) : null);
    const peakBuffered = Math.max(...samples.map((s) => s.stats.bufferedBytes));
    const delta = (key) => endSnap.stats[key] - startSnap.stats[key];
    const stats = {
      records: delta('records'),
      sent: delta('sent'),
      dropped: delta('dropped'),
      buffered: endSnap.stats.buffered,
      connects: delta('connects'),
      errors: delta('errors'),
    };
    const receivedRecords = received.valid - base.valid;
    const report = {
      date: started.toISOString(),
      machine: machine(),
      source,
      config,
      phases: { before, outage, after },
      throughputRatio: outage.rps / before.rps,
      p99Ratio: outage.latency.p99 / before.latency.p99,
      cpuRatio: outage.cpuPerRequest / before.cpuPerRequest,
      rss: {
        medianBefore: median(rssOf('before')),
        peakBefore: peakOf('before'),
        peakOutage: peakOf('outage'),
        peakAfter: peakOf('after'),
        peakDrain: peakOf('drain'),
        baseline: baselineRss,
        peak: peakRss,
        growth: peakRss - baselineRss,
        bound: config.maxBufferBytes + config.rssAllowanceBytes,
      },
      peakBufferedBytes: peakBuffered,
      stats,
      sink: {
        received: receivedRecords,
        invalid: received.invalid - base.invalid,
        truncated: received.truncated - base.truncated,
        // Written to the kernel before the sink dropped its connections, never read by it.
        lostAtCut: stats.sent - receivedRecords,
      },
      caughtUpSeconds: caughtUpAt === null ? null : (caughtUpAt - sinkUpAt) / 1000,
      drained: endSnap.stats.buffered === 0,
      invariant: endSnap.stats.records === endSnap.stats.sent + endSnap.stats.dropped + endSnap.stats.buffered,
      samples,
    };

    const rows = ['before', 'outage', 'after'].map((name) => [
      name,
      Math.round(report.phases[name].rps).toString(),
      String(report.phases[name].latency.p99),
      report.phases[name].cpuPerRequest.toFixed(1),
      String(report.phases[name].non2xx + report.phases[name].errors),
    ]);
    console.log(`\n${formatTable(['phase', 'req/s', 'p99 ms', 'CPU µs/req', 'failed'], rows)}\n`);
    console.log(
      `during the outage: throughput ${report.throughputRatio.toFixed(2)}× before, p99 ` +
        `${report.p99Ratio.toFixed(2)}× before, the app's CPU per request ${report.cpuRatio.toFixed(2)}× before`,
    );
    console.log(
      `RSS peaks: before ${MiB(baselineRss)} MiB, outage ${MiB(report.rss.peakOutage)} MiB, ` +
        `after ${MiB(report.rss.peakAfter)} MiB; growth ${MiB(report.rss.growth)} MiB ` +
        `(bound ${MiB(report.rss.bound)} MiB = maxBufferBytes + 20 MiB); peak backlog ${MiB(peakBuffered)} MiB`,
    );
    console.log(
      `records ${stats.records}: sent ${stats.sent}, dropped ${stats.dropped} (counted), still buffered ${stats.buffered}; ` +
        `${stats.errors} connection errors, ${stats.connects} connects`,
    );
    console.log(
      `sink received ${receivedRecords} valid records (${report.sink.invalid} invalid, ${report.sink.truncated} cut); ` +
        `${report.sink.lostAtCut} were written before the cut but never read by the sink`,
    );
    console.log(
      `backlog caught up ${report.caughtUpSeconds === null ? 'never' : `${report.caughtUpSeconds.toFixed(1)} s`} ` +
        `after the sink came back; drained after load: ${report.drained}`,
    );
    writeResult('outage.json', JSON.stringify(report, null, 2) + '\n');
    console.log('Wrote bench/results/outage.json');

    const failures = [];
    if (report.rss.growth > report.rss.bound) failures.push('RSS grew beyond maxBufferBytes + 20 MiB');
    if (!report.drained) failures.push('the backlog did not drain');
    if (!report.invariant) failures.push('records !== sent + dropped + buffered');
    if (report.sink.invalid > 0) failures.push('the sink received invalid lines');
    for (const failure of failures) console.error(`FAIL: ${failure}`);
    return failures.length === 0 ? 0 : 1;
  } finally {
    polling = false;
    await poller;
    await Promise.all([app.stop(), sink.stop(), load.stop()]);
  }
}

runMain(main);
