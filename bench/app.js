'use strict';
/**
 * The benchmarked app: Express 5, one JSON route, one access logger chosen by BENCH_MODE.
 * Run as a child of run.js / outage.js / profile.js; it listens on 127.0.0.1 port 0, says
 * 'ready' with its port, and answers 'snapshot' (CPU, RSS, logger stats) and 'stop' over IPC.
 *
 *   none            no logger
 *   express-tcplog  app.use(tcplog({ host, port }))
 *   pino-http       pino-http, pino.transport to pino-socket (TCP), as pino-socket's README shows
 *   morgan          morgan('combined') writing to a net.Socket
 *   naive           on 'finish', one socket.write(JSON.stringify(record) + '\r\n') per request
 *   naive-batched   the same record, writes coalesced once per event-loop turn (opt-in mode)
 *   noop            a middleware that only calls next(): what any middleware costs (opt-in mode)
 *   fixed-batched   on 'finish', a fixed 1 KiB line, writes coalesced once per event-loop turn:
 *                   what shipping the bytes alone costs, with no record to build (opt-in mode)
 *   express-tcplog-capture
 *                   this build with the record cut out: what the capture costs, with nothing
 *                   written, queued or sent (opt-in mode; see captureCut in harness.js)
 */
const fs = require('node:fs');
const net = require('node:net');
const express = require('express');
const { serve } = require('./common.js');

const MODES = [
  'none',
  'noop',
  'express-tcplog',
  'express-tcplog-baseline',
  'pino-http',
  'morgan',
  'naive',
  'naive-batched',
  'fixed-batched',
  'express-tcplog-capture',
];
const mode = process.env.BENCH_MODE || 'none';
const sinkPort = Number(process.env.BENCH_SINK_PORT);
const SINK_HOST = '127.0.0.1';
if (!MODES.includes(mode)) throw new Error(`BENCH_MODE must be one of ${MODES.join(', ')}; got ${mode}`);
/** The modes that send nothing, and so have no sink. */
const SILENT = ['none', 'noop', 'express-tcplog-capture'];
if (!SILENT.includes(mode) && !(sinkPort > 0)) throw new Error('BENCH_SINK_PORT is required');

/** What the logger needs done at the end, and its counters when it has some. */
const logger = { stats: null, close: async () => {}, ready: Promise.resolve() };

function connectSocket() {
  const socket = net.connect({ host: SINK_HOST, port: sinkPort });
  socket.setNoDelay(true);
  socket.on('error', function onSinkError(err) {
    console.error(`bench app (${mode}): sink socket: ${err.message}`);
  });
  logger.ready = new Promise((resolve) => socket.once('connect', resolve));
  logger.close = () => new Promise((resolve) => socket.end(resolve));
  return socket;
}

/** The hand-rolled record of the naive loggers: roughly Kong's fields, no care for exactness. */
function naiveRecord(req, res, startedAt, arrivedAt, headersSize) {
  return {
    request: {
      method: req.method,
      uri: req.originalUrl,
      request_uri: `${req.protocol}://${req.headers.host}${req.originalUrl}`,
      size: headersSize,
      querystring: req.query,
      headers: req.headers,
    },
    response: {
      status: res.statusCode,
      size: Number(res.getHeader('content-length')) || 0,
      headers: res.getHeaders(),
    },
    latencies: { request: Math.round(performance.now() - arrivedAt) },
    started_at: startedAt,
    client_ip: req.ip,
  };
}

/** A JSON line of 1 KiB, about the size of a record here. */
const FIXED_LINE = `${JSON.stringify({ fixed: 'x'.repeat(1024 - 14) })}\r\n`;

function naiveLogger(socket, batched, fixed = false) {
  const pending = [];
  let scheduled = false;
  function flushPending() {
    scheduled = false;
    socket.write(pending.join(''));
    pending.length = 0;
  }
  return function naiveAccessLog(req, res, next) {
    const startedAt = Date.now();
    const arrivedAt = performance.now();
    res.on('finish', function onFinish() {
      const line = fixed ? FIXED_LINE : JSON.stringify(naiveRecord(req, res, startedAt, arrivedAt, 0)) + '\r\n';
      if (!batched) {
        socket.write(line);
        return;
      }
      pending.push(line);
      if (!scheduled) {
        scheduled = true;
        setImmediate(flushPending);
      }
    });
    next();
  };
}

function addLogger(app) {
  switch (mode) {
    case 'none':
      return;
    case 'noop':
      app.use(function noop(req, res, next) {
        next();
      });
      return;
    case 'express-tcplog':
    case 'express-tcplog-baseline':
    case 'express-tcplog-capture': {
      // The drivers pass a snapshot of dist/ (see harness.js); alone, the package's own build.
      // The baseline is another build of the package, for A/B measurements of a change; the
      // capture, this build with the record cut out.
      const modules = {
        'express-tcplog': process.env.BENCH_TCPLOG_MODULE || 'express-tcplog',
        'express-tcplog-baseline': process.env.BENCH_BASELINE_MODULE,
        'express-tcplog-capture': process.env.BENCH_CAPTURE_MODULE,
      };
      if (!modules[mode]) throw new Error(`${mode}: no module to load (see harness.js)`);
      const tcplog = require(modules[mode]);
      const extra = process.env.BENCH_TCPLOG_OPTIONS ? JSON.parse(process.env.BENCH_TCPLOG_OPTIONS) : {};
      // The capture sends nothing, so it never connects: the port only has to be valid.
      const middleware = tcplog({ host: SINK_HOST, port: sinkPort > 0 ? sinkPort : 9, ...extra });
      logger.stats = () => middleware.stats();
      logger.close = () => middleware.close();
      app.use(middleware);
      return;
    }
    case 'pino-http': {
      const pino = require('pino');
      const pinoHttp = require('pino-http');
      const transport = pino.transport({
        target: 'pino-socket',
        options: { address: SINK_HOST, port: sinkPort, mode: 'tcp', reconnect: true },
      });
      logger.ready = new Promise((resolve) => transport.once('ready', resolve));
      logger.close = () =>
        new Promise((resolve) => {
          transport.once('close', resolve);
          transport.end();
        });
      app.use(pinoHttp({ logger: pino(transport) }));
      return;
    }
    case 'morgan': {
      const morgan = require('morgan');
      app.use(morgan('combined', { stream: connectSocket() }));
      return;
    }
    case 'naive':
    case 'naive-batched':
    case 'fixed-batched':
      app.use(naiveLogger(connectSocket(), mode !== 'naive', mode === 'fixed-batched'));
      return;
  }
}

/**
 * Diagnostics only (BENCH_COUNT_WRITES=1, never in the measured runs): counts write() calls on
 * sockets to the sink, to see how many records each write carries.
 */
const sinkWrites = { calls: 0 };
if (process.env.BENCH_COUNT_WRITES) {
  const write = net.Socket.prototype.write;
  net.Socket.prototype.write = function countingWrite(...args) {
    if (this.remotePort === sinkPort) sinkWrites.calls++;
    return write.apply(this, args);
  };
}

const app = express();
addLogger(app);
app.get('/api/users/:id', function getUser(req, res) {
  res.json({
    id: req.params.id,
    name: 'Ada Lovelace',
    email: 'ada@example.com',
    roles: ['admin', 'author'],
    active: true,
    createdAt: '2026-11-25T12:00:00.000Z',
  });
});

const server = app.listen(0, '127.0.0.1', async function onListening() {
  await logger.ready;
  process.send({ type: 'ready', port: server.address().port, pid: process.pid });
});

/**
 * CPU time of the app's main thread and of all its others, in µs, from the scheduler's own
 * accounting (Linux only; null elsewhere): V8's compiler and GC helpers run beside the main
 * thread and count in process.cpuUsage() too.
 */
function threadCpu() {
  let tids;
  try {
    tids = fs.readdirSync('/proc/self/task');
  } catch {
    return null;
  }
  const byName = {};
  for (const tid of tids) {
    try {
      const ns = Number(fs.readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
      // Node 20 leaves its threads unnamed ('node'): the main thread, and the rest.
      const name = tid === String(process.pid) ? 'main' : 'other';
      byName[name] = (byName[name] ?? 0) + ns / 1000;
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return byName;
}

function snapshot() {
  const memory = process.memoryUsage();
  return {
    cpu: process.cpuUsage(),
    threads: threadCpu(),
    // Same clock as V8's profile timestamps: lets profile.js keep only the measured window.
    monotonicMicros: Number(process.hrtime.bigint() / 1000n),
    rss: memory.rss,
    heapUsed: memory.heapUsed,
    heapTotal: memory.heapTotal,
    // Buffers outside the heap (the ring buffer among them).
    arrayBuffers: memory.arrayBuffers,
    maxRssBytes: process.resourceUsage().maxRSS * 1024,
    stats: logger.stats ? logger.stats() : null,
    sinkWrites: sinkWrites.calls,
  };
}

serve({
  snapshot,
  async stop() {
    server.closeAllConnections();
    server.close();
    // Bounded: a logger that cannot flush must not keep the benchmark waiting.
    await Promise.race([logger.close(), new Promise((resolve) => setTimeout(resolve, 5000).unref())]);
    setTimeout(function exitAfterReply() {
      process.exit(0);
    }, 20);
    return {};
  },
});
