/**
 * The example app end to end, as a user runs it: example-app/app.js (plain CommonJS, requiring
 * 'express-tcplog', which resolves to dist/ through the package's self-reference) logging to the
 * built-in receiver of example-app/receiver.js. Needs `npm run build` first.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { RequestListener } from 'node:http';
import { createRequire } from 'node:module';
import net from 'node:net';
import type { AddressInfo, Server } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { listen, request, until, type Listening } from './helpers.js';

interface Logger {
  close(): Promise<void>;
  stats(): { records: number; sent: number; dropped: number; buffered: number };
}
type ExampleApp = RequestListener & { locals: { loggers: Logger[] } };
interface ReceiverModule {
  startReceiver: (options: {
    port?: number;
    host?: string;
    json?: boolean;
    out?: (line: string) => void;
    err?: (line: string) => void;
  }) => Server;
  closeReceiver: (server: Server, graceMs?: number) => Promise<void>;
}

// The compiled spec runs from build/spec/: the example app sits two levels up, as plain JS.
const requireHere = createRequire(__filename);
const { createApp } = requireHere('../../example-app/app.js') as { createApp: (logOptions: unknown) => ExampleApp };
const { startReceiver, closeReceiver } = requireHere('../../example-app/receiver.js') as ReceiverModule;

async function startCollecting(
  json: boolean,
): Promise<{ server: Server; port: number; lines: string[]; invalid: string[] }> {
  const lines: string[] = [];
  const invalid: string[] = [];
  const server = startReceiver({
    port: 0,
    json,
    out: (line) => lines.push(line),
    err: (line) => invalid.push(line),
  });
  await once(server, 'listening');
  return { server, port: (server.address() as AddressInfo).port, lines, invalid };
}

/** Lines about requests, without the receiver's "-- connection ..." notices. */
function requestLines(lines: string[]): string[] {
  return lines.filter((line) => !line.startsWith('-- '));
}

describe('example app and its built-in receiver', () => {
  let receiver: Awaited<ReturnType<typeof startCollecting>>;
  let app: ExampleApp;
  let http: Listening;

  before(async () => {
    receiver = await startCollecting(false);
    app = createApp(`tcp://127.0.0.1:${receiver.port}`);
    http = await listen(app);
  });

  after(async () => {
    await http.close();
    await Promise.all(app.locals.loggers.map((logger) => logger.close()));
    await closeReceiver(receiver.server);
  });

  it('prints one line per request with method, path and status', async () => {
    const calls: Array<{ method: string; path: string; body?: string; status: number }> = [
      { method: 'GET', path: '/', status: 200 },
      { method: 'GET', path: '/users', status: 200 },
      { method: 'GET', path: '/users/42', status: 200 },
      { method: 'GET', path: '/users/7', status: 404 },
      { method: 'POST', path: '/users', body: '{"name":"Linus"}', status: 201 },
      { method: 'GET', path: '/stream', status: 200 },
      { method: 'GET', path: '/slow', status: 200 },
      { method: 'GET', path: '/error', status: 500 },
    ];
    for (const call of calls) {
      const reply = await request(http.port, call.path, {
        method: call.method,
        ...(call.body === undefined ? {} : { body: call.body, headers: { 'content-type': 'application/json' } }),
      });
      assert.equal(reply.status, call.status, `${call.method} ${call.path}`);
    }
    await until(() => requestLines(receiver.lines).length >= calls.length, undefined, `${calls.length} printed lines`);
    const printed = requestLines(receiver.lines);
    assert.equal(printed.length, calls.length, printed.join('\n'));
    calls.forEach((call, i) => {
      const line = printed[i] ?? '';
      assert.match(line, /^\d\d:\d\d:\d\d {2}/, line);
      assert.ok(line.includes(`  ${call.method} ${call.path} -> ${call.status}  `), `line ${i}: ${line}`);
      assert.match(line, / \d+ ms {2}\d+ B/, line);
      assert.ok(line.endsWith('127.0.0.1'), line);
    });
    // Router-level instance: innermost configuration, so api=users and the full route pattern.
    assert.ok(printed[2]?.includes('route=/users/:id  api=users'), printed[2]);
    assert.ok(printed[4]?.includes('route=/users  api=users'), printed[4]);
    assert.ok(!printed[0]?.includes('api='), printed[0]);
    // Every request went over one shared connection.
    assert.equal(
      receiver.lines.filter((line) => line.startsWith('-- connection from') && !line.endsWith('closed')).length,
      1,
    );
    assert.deepEqual(receiver.invalid, []);
    const stats = app.locals.loggers[0]?.stats();
    assert.ok(stats);
    assert.equal(stats.records, stats.sent + stats.dropped + stats.buffered);
    assert.equal(stats.dropped, 0);
  });

  it('survives garbage lines, printing them as invalid, and keeps printing records', async () => {
    const socket = net.connect(receiver.port, '127.0.0.1');
    await once(socket, 'connect');
    const before = requestLines(receiver.lines).length;
    socket.write('not json at all\r\n');
    socket.write('[1,2,3]\n');
    socket.write('null\r\n');
    socket.write(Buffer.from([0xff, 0xfe, 0x00, 0x0d, 0x0a]));
    socket.write('{"request":{"method":"GET","uri":"/half"');
    socket.write('}, "response":{"status":204,"size":0}}\r\n');
    socket.write('{"request": 42, "response": "x", "latencies": null}\r\n');
    socket.write('\r\n');
    socket.end('{"unterminated": ');
    await once(socket, 'close');
    await until(() => requestLines(receiver.lines).length >= before + 2, undefined, 'records after garbage');
    const printed = requestLines(receiver.lines).slice(before);
    assert.ok(printed[0]?.includes('GET /half -> 204'), printed[0]);
    // Odd field types still give a line, never a throw.
    assert.ok(printed[1]?.includes('? ? -> aborted'), printed[1]);
    await until(() => receiver.invalid.length >= 5, undefined, 'invalid lines');
    assert.equal(receiver.invalid.length, 5, receiver.invalid.join('\n'));
    for (const line of receiver.invalid) assert.match(line, /^invalid record \(\d+ bytes\): /);

    // The receiver still works for the app afterwards.
    const reply = await request(http.port, '/users/1');
    assert.equal(reply.status, 200);
    await until(
      () => requestLines(receiver.lines).some((line) => line.includes('GET /users/1 -> 200')),
      undefined,
      'record after garbage',
    );
  });
});

describe('receiver in JSON mode', () => {
  it('prints each record as its raw JSON line, without the delimiter', async () => {
    const receiver = await startCollecting(true);
    const app = createApp({ host: '127.0.0.1', port: receiver.port });
    const http = await listen(app);
    try {
      await request(http.port, '/users/42?tag=a&tag=b&flag', { headers: { authorization: 'Bearer secret' } });
      await request(http.port, '/');
      await until(() => receiver.lines.length >= 2, undefined, 'two JSON lines');
      assert.equal(receiver.lines.length, 2);
      const [users, home] = receiver.lines.map((line) => {
        assert.ok(!line.endsWith('\r'), 'delimiter stripped');
        return JSON.parse(line) as Record<string, any>;
      });
      assert.equal(users?.request.method, 'GET');
      assert.equal(users?.request.uri, '/users/42?tag=a&tag=b&flag');
      assert.deepEqual({ ...users?.request.querystring }, { tag: ['a', 'b'], flag: true });
      assert.equal(users?.request.headers.authorization, 'REDACTED');
      assert.equal(users?.response.status, 200);
      assert.deepEqual(users?.api, { name: 'users' });
      assert.deepEqual(users?.route, { path: '/:id', base_url: '/users' });
      assert.equal(users?.client_ip, '127.0.0.1');
      assert.equal(home?.request.uri, '/');
      assert.equal(home?.api, undefined);
      // Garbage in JSON mode goes to `err`, so `--json | jq` only ever sees JSON.
      const socket = net.connect(receiver.port, '127.0.0.1');
      await once(socket, 'connect');
      socket.end('garbage\n');
      await until(() => receiver.invalid.length === 1, undefined, 'invalid line');
      assert.equal(receiver.lines.length, 2);
    } finally {
      await http.close();
      await Promise.all(app.locals.loggers.map((logger) => logger.close()));
      await closeReceiver(receiver.server);
    }
  });
});
