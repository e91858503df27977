'use strict';
/**
 * A tiny local log receiver for trying express-tcplog without a real collector: a `net` server
 * that reads records separated by "\n" (a trailing "\r" is stripped, so both "\r\n" and "\n"
 * framing work) and prints one line per request, or the raw JSON with `--json`.
 *
 *   node example-app/receiver.js --port 9999            pretty lines
 *   node example-app/receiver.js --port 9999 --json     raw JSON, one record per line (pipe to jq)
 *
 * It is a demo tool, not a collector: it keeps nothing, and anything that is not a JSON object is
 * printed as invalid instead of crashing it.
 */
const net = require('node:net');
const { StringDecoder } = require('node:string_decoder');

/** A line longer than this without a "\n" is printed as invalid and discarded, bounding memory. */
const MAX_LINE_BYTES = 1024 * 1024;

const sockets = new WeakMap();

function pad2(n) {
  return String(n).padStart(2, '0');
}

function formatTime(epochMs) {
  const date = new Date(epochMs);
  if (!Number.isFinite(date.getTime())) return '--:--:--';
  return `${pad2(date.getHours())}:${pad2(date.getMinutes())}:${pad2(date.getSeconds())}`;
}

function formatBytes(bytes) {
  if (typeof bytes !== 'number') return '? B';
  if (bytes < 10 * 1024) return `${bytes} B`;
  return `${(bytes / 1024).toFixed(1)} KiB`;
}

/** The matched route as one path: mount path (`base_url`) plus the route pattern. */
function formatRoute(route) {
  if (!route || typeof route.path !== 'string') return null;
  const base = typeof route.base_url === 'string' ? route.base_url : '';
  if (base && route.path === '/') return base;
  return base + route.path;
}

function formatApi(api) {
  if (api === undefined || api === null) return null;
  if (typeof api === 'object' && typeof api.name === 'string') return api.name;
  return JSON.stringify(api);
}

function shorten(text, max = 120) {
  const shown = JSON.stringify(text);
  return shown.length > max ? `${shown.slice(0, max - 3)}...` : shown;
}

/**
 * One Kong tcp-log record -> `12:01:02  GET /users/42 -> 200  7 ms  512 B  route=/users/:id  api=users  127.0.0.1`.
 * Fields the record lacks are left out; a record without `response.status` was aborted by the
 * client before any response head went out.
 */
function formatRecord(record) {
  const request = record.request || {};
  const response = record.response || {};
  const latencies = record.latencies || {};
  const status = typeof response.status === 'number' ? String(response.status) : 'aborted (no response sent)';
  const parts = [
    formatTime(record.started_at),
    `${request.method || '?'} ${request.uri || '?'} -> ${status}`,
    `${typeof latencies.request === 'number' ? latencies.request : '?'} ms`,
    formatBytes(response.size),
  ];
  const route = formatRoute(record.route);
  if (route) parts.push(`route=${route}`);
  const api = formatApi(record.api);
  if (api) parts.push(`api=${api}`);
  if (record.client_ip) parts.push(record.client_ip);
  return parts.join('  ');
}

/** Parses one received line; returns the record, or null when it is not a JSON object. */
function parseRecord(line) {
  try {
    const value = JSON.parse(line);
    return value !== null && typeof value === 'object' && !Array.isArray(value) ? value : null;
  } catch {
    return null;
  }
}

function toWriter(target, fallback) {
  if (typeof target === 'function') return target;
  const stream = target || fallback;
  return function writeLine(line) {
    stream.write(`${line}\n`);
  };
}

/**
 * Starts the receiver and returns the `net.Server` (listening is asynchronous: wait for its
 * 'listening' event, or 'error' such as EADDRINUSE).
 *
 * @param {object} [options]
 * @param {number} [options.port=9999] TCP port; 0 picks a free one.
 * @param {string} [options.host='127.0.0.1']
 * @param {boolean} [options.json=false] print each record's raw JSON instead of a pretty line.
 * @param {NodeJS.WritableStream | ((line: string) => void)} [options.out=process.stdout] where
 *   records go (a function gets each line without its newline).
 * @param {NodeJS.WritableStream | ((line: string) => void)} [options.err] where invalid lines go:
 *   `out` in pretty mode; stderr in JSON mode, so that `--json | jq` only ever sees JSON.
 */
function startReceiver({ port = 9999, host = '127.0.0.1', json = false, out, err } = {}) {
  const print = toWriter(out, process.stdout);
  const printInvalid =
    err !== undefined ? toWriter(err, process.stderr) : json ? toWriter(undefined, process.stderr) : print;
  const open = new Set();

  function handleLine(line) {
    if (line.endsWith('\r')) line = line.slice(0, -1);
    if (line.trim() === '') return;
    const record = parseRecord(line);
    if (!record) {
      printInvalid(`invalid record (${Buffer.byteLength(line)} bytes): ${shorten(line)}`);
      return;
    }
    try {
      print(json ? line : formatRecord(record));
    } catch (error) {
      printInvalid(`invalid record (${error.message}): ${shorten(line)}`);
    }
  }

  const server = net.createServer(function onConnection(socket) {
    open.add(socket);
    const peer = `${socket.remoteAddress}:${socket.remotePort}`;
    if (!json) print(`-- connection from ${peer}`);
    const decoder = new StringDecoder('utf8');
    let pending = '';

    socket.on('data', function onData(chunk) {
      pending += decoder.write(chunk);
      let newline = pending.indexOf('\n');
      while (newline !== -1) {
        handleLine(pending.slice(0, newline));
        pending = pending.slice(newline + 1);
        newline = pending.indexOf('\n');
      }
      if (pending.length > MAX_LINE_BYTES) {
        printInvalid(`invalid record (over ${MAX_LINE_BYTES} bytes without a newline): ${shorten(pending)}`);
        pending = '';
      }
    });
    socket.on('end', function onEnd() {
      pending += decoder.end();
      // A record without its delimiter at the end of a connection is still shown.
      if (pending !== '') handleLine(pending);
      pending = '';
    });
    socket.on('error', function onSocketError(error) {
      // A reset by the sender is its business; the receiver keeps serving others.
      if (!json) print(`-- connection from ${peer}: ${error.code || error.message}`);
    });
    socket.on('close', function onClose() {
      open.delete(socket);
      if (!json) print(`-- connection from ${peer} closed`);
    });
  });
  sockets.set(server, open);
  server.listen(port, host);
  return server;
}

/**
 * Stops listening, lets connections end on their own so that records already on the wire are
 * still read and printed (a sender that closed gracefully, as `middleware.close()` does, ends its
 * side), and destroys whatever is still open after `graceMs`: a keepalive sender would otherwise
 * hold `server.close()` open.
 */
function closeReceiver(server, graceMs = 1000) {
  const open = sockets.get(server) || new Set();
  if (!server.listening) {
    for (const socket of open) socket.destroy();
    return Promise.resolve();
  }
  return new Promise(function closing(resolve) {
    const timer = setTimeout(function destroyLeftovers() {
      for (const socket of open) socket.destroy();
    }, graceMs);
    server.close(function closed() {
      clearTimeout(timer);
      resolve();
    });
  });
}

module.exports = { startReceiver, closeReceiver, formatRecord, parseRecord };

function usage() {
  return [
    'usage: node example-app/receiver.js [--port 9999] [--host 127.0.0.1] [--json]',
    '',
    '  --port N     TCP port to listen on (default 9999; 0 picks a free one)',
    '  --host H     address to listen on (default 127.0.0.1)',
    '  --json       print each record as raw JSON (also: TCPLOG_RECEIVER_JSON=1)',
  ].join('\n');
}

function main(argv) {
  const options = { port: 9999, host: '127.0.0.1', json: process.env.TCPLOG_RECEIVER_JSON === '1' };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const [name, inline] = arg.includes('=')
      ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)]
      : [arg, undefined];
    const value = () => (inline !== undefined ? inline : argv[++i]);
    if (name === '--port') options.port = Number(value());
    else if (name === '--host') options.host = value();
    else if (name === '--json') options.json = true;
    else if (name === '--help' || name === '-h') {
      console.log(usage());
      return;
    } else {
      console.error(`unknown argument ${JSON.stringify(arg)}\n${usage()}`);
      process.exitCode = 2;
      return;
    }
  }
  if (!Number.isInteger(options.port) || options.port < 0 || options.port > 65535) {
    console.error(`--port must be an integer from 0 to 65535\n${usage()}`);
    process.exitCode = 2;
    return;
  }
  const server = startReceiver(options);
  server.on('listening', function onListening() {
    const { address, port } = server.address();
    console.error(
      `tcplog receiver listening on tcp://${address}:${port}${options.json ? ' (JSON)' : ''}; Ctrl-C to stop`,
    );
  });
  server.on('error', function onServerError(error) {
    console.error(`receiver: ${error.message}`);
    process.exitCode = 1;
  });
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.once(signal, function onSignal() {
      closeReceiver(server).then(() => process.exit(0));
    });
  }
}

if (require.main === module) main(process.argv.slice(2));
