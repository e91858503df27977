'use strict';
/**
 * `npm run soak` (not part of CI): steady HTTP traffic through an Express app logging with
 * express-tcplog, while the log receiver (a child process) is killed and restarted at random.
 * Prints records/sent/dropped, the invariant and peak RSS; exits non-zero if the invariant breaks
 * or memory passes the bound.
 *
 *   SOAK_SECONDS (default 180), SOAK_CONCURRENCY (default 8), SOAK_MAX_BUFFER (bytes, default 4 MiB)
 */
const { fork } = require('node:child_process');
const http = require('node:http');
const net = require('node:net');
const express = require('express');
const tcplog = require('express-tcplog');

const SECONDS = Number(process.env.SOAK_SECONDS ?? 180);
const CONCURRENCY = Number(process.env.SOAK_CONCURRENCY ?? 8);
const MAX_BUFFER = Number(process.env.SOAK_MAX_BUFFER ?? 4 * 1024 * 1024);
// Node's own heap moves by tens of MB under load; the bound is the buffer plus that slack.
const RSS_SLACK = 48 * 1024 * 1024;

if (process.argv[2] === 'receiver') {
  // Child: count records until killed; report counts to the parent.
  const port = Number(process.argv[3]);
  let lines = 0;
  let invalid = 0;
  const server = net.createServer(function onConnection(socket) {
    let rest = '';
    socket.on('data', function onData(chunk) {
      const parts = (rest + chunk.toString('utf8')).split('\r\n');
      rest = parts.pop() ?? '';
      for (const line of parts) {
        try {
          JSON.parse(line);
          lines++;
        } catch {
          invalid++;
        }
      }
      process.send?.({ lines, invalid });
    });
    socket.on('error', () => undefined);
  });
  server.listen(port, '127.0.0.1', function onListening() {
    process.send?.({ ready: true });
  });
  return;
}

if (process.argv[2] === 'load') {
  // Child: steady keep-alive traffic, so the app process measures only the app and the logger.
  const [port, seconds, concurrency] = process.argv.slice(3).map(Number);
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const deadline = Date.now() + seconds * 1000;
  let requests = 0;
  let failures = 0;
  const worker = async () => {
    while (Date.now() < deadline) {
      await new Promise((resolve) => {
        const req = http.get({ host: '127.0.0.1', port, path: `/item/${requests}`, agent }, (res) => {
          res.resume();
          res.on('end', resolve);
        });
        req.on('error', () => {
          failures++;
          resolve();
        });
      });
      requests++;
    }
  };
  const progress = setInterval(() => process.send?.({ requests, failures }), 1000);
  Promise.all(Array.from({ length: concurrency }, worker)).then(() => {
    clearInterval(progress);
    agent.destroy();
    process.send?.({ requests, failures, done: true }, () => process.exit(0));
  });
  return;
}

async function freePort() {
  const probe = net.createServer().listen(0, '127.0.0.1');
  await new Promise((resolve) => probe.once('listening', resolve));
  const { port } = probe.address();
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

async function main() {
  const logPort = await freePort();
  let received = 0;
  let invalid = 0;
  let receiver = null;
  let restarts = 0;

  function startReceiver() {
    let base = received;
    let baseInvalid = invalid;
    const child = fork(__filename, ['receiver', String(logPort)], { stdio: 'inherit' });
    child.on('message', function onMessage(message) {
      if (message.lines !== undefined) {
        received = base + message.lines;
        invalid = baseInvalid + message.invalid;
      }
    });
    child.on('exit', function onExit() {
      base = received;
      baseInvalid = invalid;
    });
    return child;
  }

  const mw = tcplog({ host: '127.0.0.1', port: logPort, maxBufferBytes: MAX_BUFFER, timeout: 2000, onError() {} });
  const app = express();
  app.use(mw);
  app.get('/item/:id', (req, res) => res.json({ id: req.params.id, at: Date.now() }));
  const server = app.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  const { port } = server.address();

  receiver = startReceiver();
  let requests = 0;
  let failures = 0;
  let invariantBroken = null;
  const deadline = Date.now() + SECONDS * 1000;
  const load = fork(__filename, ['load', String(port), String(SECONDS), String(CONCURRENCY)], { stdio: 'inherit' });
  const loadDone = new Promise((resolve) => {
    load.on('message', function onLoad(message) {
      requests = message.requests;
      failures = message.failures;
      if (message.done) resolve();
    });
    load.on('exit', resolve);
  });

  // The baseline is taken after a warm-up: the heap of a busy Express app grows on its own first.
  let baselineRss = Infinity;
  let peakRss = 0;
  setTimeout(() => (baselineRss = process.memoryUsage().rss), Math.min(5000, (SECONDS * 1000) / 4)).unref();

  const chaos = setInterval(function killOrRevive() {
    if (receiver && Math.random() < 0.35) {
      receiver.kill('SIGKILL');
      receiver = null;
    } else if (!receiver && Math.random() < 0.6) {
      receiver = startReceiver();
      restarts++;
    }
  }, 1000);

  const watch = setInterval(function sample() {
    if (baselineRss !== Infinity) peakRss = Math.max(peakRss, process.memoryUsage().rss);
    const s = mw.stats();
    if (s.records !== s.sent + s.dropped + s.buffered && !invariantBroken) invariantBroken = s;
  }, 50);

  const progress = setInterval(function report() {
    const s = mw.stats();
    console.log(
      `${Math.round((deadline - Date.now()) / 1000)}s left: requests ${requests}, records ${s.records}, sent ${s.sent}, dropped ${s.dropped}, buffered ${s.buffered}, receiver ${receiver ? 'up' : 'down'}`,
    );
  }, 10_000);

  await loadDone;
  clearInterval(chaos);
  clearInterval(progress);
  if (!receiver) receiver = startReceiver();
  await mw.close();
  clearInterval(watch);
  await new Promise((resolve) => setTimeout(resolve, 500));
  receiver.kill('SIGKILL');
  server.close();

  const s = mw.stats();
  const growth = Math.max(0, peakRss - baselineRss);
  const bound = MAX_BUFFER + RSS_SLACK;
  const ok = !invariantBroken && s.records === s.sent + s.dropped + s.buffered && growth <= bound && failures === 0;
  console.log(
    JSON.stringify(
      {
        seconds: SECONDS,
        concurrency: CONCURRENCY,
        requests,
        httpFailures: failures,
        receiverRestarts: restarts,
        records: s.records,
        sent: s.sent,
        dropped: s.dropped,
        buffered: s.buffered,
        receivedByReceivers: received,
        invalidLines: invalid,
        invariant: invariantBroken ? `broken: ${JSON.stringify(invariantBroken)}` : 'held at every sample',
        peakRssGrowthMB: +(growth / 1048576).toFixed(1),
        rssBoundMB: +(bound / 1048576).toFixed(1),
        result: ok ? 'PASS' : 'FAIL',
      },
      null,
      2,
    ),
  );
  process.exitCode = ok ? 0 : 1;
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
