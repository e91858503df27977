'use strict';
/**
 * The log receiver: a TCP server on 127.0.0.1 that counts newline-terminated records.
 *
 * While load runs it only counts '\n' bytes (cheap, done in C++ by indexOf) and keeps the data;
 * 'validate' then parses what arrived since the last call, outside the measured window, so the
 * sink's own CPU competes as little as possible with the app on a small machine.
 *
 * Requests: 'count' (records so far), 'validate' { format: 'json' | 'text' } (totals of valid and
 * invalid lines), 'down' (stop listening, drop every connection), 'up' (listen again, same port).
 */
const net = require('node:net');
const { serve } = require('./common.js');

const NEWLINE = 0x0a;

/** Per connection: chunks not yet validated, and the unterminated tail of the last validation. */
const connections = new Set();
const totals = { lines: 0, chunks: 0, bytes: 0, valid: 0, invalid: 0, truncated: 0, connections: 0, lastDataAt: 0 };
let port = 0;
let server = null;

function countNewlines(chunk) {
  let count = 0;
  let at = chunk.indexOf(NEWLINE);
  while (at !== -1) {
    count++;
    at = chunk.indexOf(NEWLINE, at + 1);
  }
  return count;
}

function onConnection(socket) {
  const conn = { socket, chunks: [], tail: null, closed: false };
  connections.add(conn);
  totals.connections++;
  socket.on('data', function onData(chunk) {
    conn.chunks.push(chunk);
    totals.lines += countNewlines(chunk);
    totals.bytes += chunk.length;
    // Reads: at most as many as the sender's writes (the kernel may merge them), so
    // lines / chunks is a lower bound of records per write.
    totals.chunks++;
    totals.lastDataAt = Date.now();
  });
  socket.on('error', function ignoreResets() {
    // Resets happen when an app child is killed; its records were counted already.
  });
  socket.on('close', function onClose() {
    conn.closed = true;
  });
}

function isValid(line, format) {
  if (line.length === 0) return false;
  if (format === 'text') return true;
  try {
    const value = JSON.parse(line);
    return value !== null && typeof value === 'object';
  } catch {
    return false;
  }
}

function validate(format) {
  for (const conn of connections) {
    if (conn.chunks.length > 0) {
      const parts = conn.tail ? [conn.tail, ...conn.chunks] : conn.chunks;
      const data = Buffer.concat(parts);
      conn.chunks = [];
      const end = data.lastIndexOf(NEWLINE);
      conn.tail = end === data.length - 1 ? null : data.subarray(end + 1);
      if (end !== -1) {
        const text = data.toString('utf8', 0, end);
        for (const raw of text.split('\n')) {
          const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
          if (isValid(line, format)) totals.valid++;
          else totals.invalid++;
        }
      }
    }
    if (conn.closed) {
      // A record cut by a closing connection never ends: it is lost, and counted as such.
      if (conn.tail && conn.tail.length > 0) totals.truncated++;
      connections.delete(conn);
    }
  }
  return { ...totals };
}

function listen(onListening) {
  server = net.createServer(onConnection);
  server.listen(port, '127.0.0.1', function onBound() {
    port = server.address().port;
    onListening();
  });
}

listen(function announce() {
  process.send({ type: 'ready', port });
});

serve({
  count() {
    return { ...totals };
  },
  validate(message) {
    return validate(message.format === 'text' ? 'text' : 'json');
  },
  down() {
    return new Promise(function goDown(resolve) {
      for (const conn of connections) conn.socket.destroy();
      server.close(() => resolve({ ...totals }));
    });
  },
  up() {
    return new Promise(function comeBack(resolve) {
      listen(() => resolve({ port }));
    });
  },
  stop() {
    setTimeout(function exitAfterReply() {
      process.exit(0);
    }, 20);
    return {};
  },
});
