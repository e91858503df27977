/**
 * The shared client end to end: real Express apps, real TCP receivers on 127.0.0.1, servers that
 * close, restart and come up late.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { spawn } from 'node:child_process';
import net from 'node:net';
import tls from 'node:tls';
import { afterEach, describe, it } from 'node:test';
import express from 'express';
import tcplog = require('../lib/index.js');
import { activeClientCount } from '../lib/registry.js';
import { TcpLogClient } from '../lib/client.js';
import { parseOptions } from '../lib/options.js';
import {
  LineServer,
  freePort,
  invariant,
  listen,
  listenLogged,
  request,
  until,
  WAIT_MS,
  waitFor,
  type Listening,
} from './helpers.js';
import { pem, transports } from './transports.js';

type Json = Record<string, any>;

/** A child process that listens with a backlog of 1, prints its port, then never accepts. */
const STALLED_LISTENER = `
const server = require('node:net').createServer();
server.listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => {
  process.stdout.write(server.address().port + '\\n', () => {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60000);
  });
});`;

/** Everything a test opened, closed after it whatever happened. */
const opened: Array<{ close(): Promise<void> }> = [];
const middlewares: tcplog.Middleware[] = [];

function track<T extends { close(): Promise<void> }>(thing: T): T {
  opened.push(thing);
  return thing;
}

function logger(target: tcplog.TcpLogOptions | string, more?: tcplog.TcpLogMoreOptions): tcplog.Middleware {
  const mw = typeof target === 'string' ? tcplog(target, more) : tcplog(target);
  middlewares.push(mw);
  return mw;
}

afterEach(async () => {
  for (const mw of middlewares) assert.ok(invariant(mw.stats()), `invariant: ${JSON.stringify(mw.stats())}`);
  for (const mw of middlewares.splice(0)) await mw.close();
  for (const thing of opened.splice(0).reverse()) await thing.close();
  assert.equal(activeClientCount(), 0, 'every client released');
});

async function appWith(mw: tcplog.Middleware): Promise<Listening> {
  return track(await listenLogged(mw));
}

for (const transport of transports) {
  describe(`delivery over ${transport.name}`, () => {
    it("Kong's test server: one line per connection, restarted three times on the same port", async () => {
      // Kong's spec server accepts one connection, reads one line, then closes it and the listener.
      const port = await freePort();
      const mw = logger(transport.destination(port));
      const http = await appWith(mw);
      const received: Json[] = [];
      for (let round = 1; round <= 3; round++) {
        const server =
          transport.name === 'tls'
            ? tls.createServer({ key: pem('server-key.pem'), cert: pem('server-cert.pem') })
            : net.createServer();
        const got = new Promise<Json>((resolve) => {
          server.once(transport.name === 'tls' ? 'secureConnection' : 'connection', (socket: net.Socket) => {
            let text = '';
            socket.on('data', (chunk: Buffer) => {
              text += chunk.toString();
              const end = text.indexOf('\r\n');
              if (end === -1) return;
              socket.destroy();
              server.close();
              resolve(JSON.parse(text.slice(0, end)) as Json);
            });
          });
        });
        const closed = once(server, 'close');
        server.listen(port, '127.0.0.1');
        await once(server, 'listening');
        await request(http.port, `/n/${round}`);
        received.push(await got);
        await closed;
      }
      assert.deepEqual(
        received.map((r) => r['request'].uri),
        ['/n/1', '/n/2', '/n/3'],
      );
      await until(() => mw.stats().buffered === 0);
      assert.equal(mw.stats().sent, 3);
      assert.equal(mw.stats().dropped, 0);
      assert.ok(mw.stats().connects >= 3, 'a new connection after each close');
    });

    it('a collector that greets and then closes after one line: the close is noticed, nothing is lost', async () => {
      // Bytes the client never read used to hide the collector's close: the next records went to
      // a closed connection, counted as sent.
      const receiver = track(await transport.startReceiver());
      receiver.on('connection', (socket: net.Socket) => {
        socket.write('hello\n');
        let text = '';
        socket.on('data', (chunk: Buffer) => {
          text += chunk.toString();
          if (text.includes('\r\n')) socket.end();
        });
      });
      const mw = logger(transport.destination(receiver.port));
      const http = await appWith(mw);
      for (let n = 0; n < 4; n++) {
        await request(http.port, `/n/${n}`);
        await receiver.waitForLines(n + 1);
        await until(() => !mw.stats().connected, WAIT_MS, `the close after record ${n}`);
      }
      assert.deepEqual(
        receiver.records().map((r) => r['request'].uri),
        ['/n/0', '/n/1', '/n/2', '/n/3'],
      );
      assert.deepEqual([mw.stats().sent, mw.stats().connects], [4, 4]);
    });

    it('300 requests from 10 parallel clients: 300 records, each ending in \\r\\n, over one connection', async () => {
      const receiver = track(await transport.startReceiver());
      const mw = logger(transport.destination(receiver.port));
      const http = await appWith(mw);
      let next = 0;
      async function client(): Promise<void> {
        while (next < 300) {
          const n = next++;
          const reply = await request(http.port, `/n/${n}`);
          assert.equal(reply.status, 200);
        }
      }
      await Promise.all(Array.from({ length: 10 }, client));
      await receiver.waitForLines(300);
      assert.equal(receiver.lines.length, 300);
      assert.ok(receiver.lines.every((line) => line.endsWith('\r')));
      const joined = Buffer.concat(receiver.received).toString();
      assert.ok(joined.endsWith('\r\n'));
      assert.equal(joined.split('\r\n').length, 301);
      const ns = receiver.records().map((r) => Number(String(r['request'].uri).slice(3)));
      assert.deepEqual(
        [...ns].sort((a, b) => a - b),
        Array.from({ length: 300 }, (_, i) => i),
      );
      assert.equal(receiver.connections, 1);
      assert.equal(mw.stats().connects, 1);
      await until(() => mw.stats().sent === 300);
    });

    it('writes are coalesced: a burst of records goes out in a few writes, in order', async () => {
      const receiver = track(await transport.startReceiver());
      const settings = parseOptions(transport.destination(receiver.port));
      const client = new TcpLogClient(settings.destination);
      track({ close: () => Promise.resolve(void client.shutdown()) });
      const writes: number[] = [];
      receiver.on('connection', (socket: net.Socket) =>
        socket.on('data', (chunk: Buffer) => writes.push(chunk.length)),
      );
      for (let i = 0; i < 2000; i++) client.push(`{"i":${i}}\r\n`);
      await receiver.waitForLines(2000);
      assert.deepEqual(
        receiver.lines.map((line) => (JSON.parse(line) as { i: number }).i),
        Array.from({ length: 2000 }, (_, i) => i),
      );
      assert.ok(writes.length < 20, `2000 records arrived in ${writes.length} reads`);
      // The receiver may read the bytes before the client hears its write is done.
      await until(() => client.stats().buffered === 0, undefined, 'the write callbacks');
      assert.deepEqual(client.stats(), {
        records: 2000,
        sent: 2000,
        dropped: 0,
        buffered: 0,
        bufferedBytes: 0,
        connects: 1,
        errors: 0,
        connected: true,
      });
    });

    it('a 4 MiB backlog goes out in order with at most four writes in flight at once', async () => {
      const receiver = track(await transport.startReceiver());
      const settings = parseOptions(transport.destination(receiver.port));
      const client = new TcpLogClient(settings.destination);
      track({ close: () => Promise.resolve(void client.shutdown()) });
      // Watches the client's writes on its socket: how many have not had their callback yet.
      // eslint-disable-next-line @typescript-eslint/unbound-method -- applied to each socket below
      const write = net.Socket.prototype.write;
      const own = Object.hasOwn(net.Socket.prototype, 'write');
      const restore = (): void => {
        if (own) net.Socket.prototype.write = write;
        else delete (net.Socket.prototype as Partial<net.Socket>).write;
      };
      let inFlight = 0;
      let most = 0;
      net.Socket.prototype.write = function watchedWrite(this: net.Socket, ...args: unknown[]): boolean {
        const callback = args[args.length - 1];
        if (typeof callback !== 'function' || this.remotePort !== receiver.port) {
          return Reflect.apply(write, this, args) as boolean;
        }
        inFlight++;
        most = Math.max(most, inFlight);
        args[args.length - 1] = (...results: unknown[]) => {
          inFlight--;
          Reflect.apply(callback, undefined, results);
        };
        return Reflect.apply(write, this, args) as boolean;
      };
      track({ close: () => Promise.resolve(restore()) });
      const line = `{"pad":"${'x'.repeat(1000)}","i":`;
      // Pushed in one go: the connection opens afterwards, with the whole backlog waiting.
      for (let i = 0; i < 4096; i++) client.push(`${line}${i}}\r\n`);
      await receiver.waitForLines(4096);
      restore();
      assert.deepEqual(
        receiver.lines.map((text) => (JSON.parse(text) as { i: number }).i),
        Array.from({ length: 4096 }, (_, i) => i),
      );
      assert.ok(most >= 1 && most <= 4, `${most} writes were in flight at once`);
      await until(() => client.stats().sent === 4096);
      assert.ok(invariant(client.stats()));
    });

    it('keepalive: 200 closes an idle connection; the next record reconnects', async () => {
      const receiver = track(await transport.startReceiver());
      const mw = logger({ ...transport.destination(receiver.port), keepalive: 200 });
      const http = await appWith(mw);
      await request(http.port, '/n/1');
      await receiver.waitForLines(1);
      await waitFor(receiver, 'socket-close', () => receiver.sockets.size === 0);
      await until(() => !mw.stats().connected);
      await request(http.port, '/n/2');
      await receiver.waitForLines(2);
      assert.equal(receiver.connections, 2);
      assert.equal(mw.stats().connects, 2);
      assert.equal(mw.stats().errors, 0, 'an idle close is not an error');
    });

    if (transport.name === 'tcp') {
      it('keepalive: a collector that keeps its side open after the idle close does not hold the next records', async () => {
        // allowHalfOpen: it reads the client's end of stream and never sends its own.
        const receiver = new LineServer();
        const halfOpen = net.createServer({ allowHalfOpen: true }, (socket) =>
          receiver.server.emit('connection', socket),
        );
        halfOpen.listen(0, '127.0.0.1');
        await once(halfOpen, 'listening');
        track({
          close: async () => {
            await receiver.close();
            await new Promise<void>((resolve) => halfOpen.close(() => resolve()));
          },
        });
        const mw = logger({ host: '127.0.0.1', port: (halfOpen.address() as net.AddressInfo).port, keepalive: 200 });
        const http = await appWith(mw);
        await request(http.port, '/n/1');
        await receiver.waitForLines(1);
        await until(() => !mw.stats().connected, undefined, 'the idle close');
        await request(http.port, '/n/2');
        await receiver.waitForLines(2);
        assert.equal(receiver.connections, 2);
        assert.equal(mw.stats().errors, 0);
      });
    }

    it('keepalive: 0 keeps the connection open', async () => {
      const receiver = track(await transport.startReceiver());
      const mw = logger({ ...transport.destination(receiver.port), keepalive: 0 });
      const http = await appWith(mw);
      await request(http.port, '/n/1');
      await receiver.waitForLines(1);
      // A record with keepalive 200 would have closed by now; a second request must reuse the socket.
      await new Promise((resolve) => setTimeout(resolve, 300));
      await request(http.port, '/n/2');
      await receiver.waitForLines(2);
      assert.equal(receiver.connections, 1);
    });

    it('server down: requests are unaffected, records arrive once a server listens on the port', async () => {
      const port = await freePort();
      const errors: Error[] = [];
      const mw = logger({ ...transport.destination(port), onError: (err) => errors.push(err) });
      const http = await appWith(mw);
      for (let i = 0; i < 5; i++) {
        const reply = await request(http.port, `/n/${i}`);
        assert.equal(reply.status, 200);
      }
      await until(() => errors.length > 0);
      assert.equal((errors[0] as { code?: string }).code, 'ECONNREFUSED');
      assert.equal(mw.stats().buffered, 5);
      const receiver = track(await transport.startReceiver(port));
      await receiver.waitForLines(5);
      assert.deepEqual(
        receiver.records().map((r) => r['request'].uri),
        ['/n/0', '/n/1', '/n/2', '/n/3', '/n/4'],
      );
      await until(() => mw.stats().sent === 5);
      assert.ok(mw.stats().errors >= 1);
    });

    it('a server that closes the connection is noticed; later records go on a new one, none lost', async () => {
      const receiver = track(await transport.startReceiver());
      const mw = logger(transport.destination(receiver.port));
      const http = await appWith(mw);
      for (let round = 0; round < 5; round++) {
        await request(http.port, `/n/${round}`);
        await receiver.waitForLines(round + 1);
        for (const socket of receiver.sockets) socket.end();
        await waitFor(receiver, 'socket-close', () => receiver.sockets.size === 0);
      }
      assert.equal(receiver.lines.length, 5);
      assert.equal(receiver.connections, 5);
      await until(() => mw.stats().sent === 5);
    });

    it('per-router instances to two servers: each gets only its own records; nested instances log once', async () => {
      const appReceiver = track(await transport.startReceiver());
      const usersReceiver = track(await transport.startReceiver());
      const appLog = logger({ ...transport.destination(appReceiver.port), api: { name: 'app' } });
      const usersLog = logger({ ...transport.destination(usersReceiver.port), api: { name: 'users' } });
      const app = express();
      app.use(appLog);
      const users = express.Router();
      users.use(usersLog);
      users.get('/:id', (req, res) => {
        res.json({ id: req.params['id'] });
      });
      app.use('/users', users);
      app.get('/home', (_req, res) => {
        res.send('home');
      });
      const http = track(await listen(app));
      await request(http.port, '/home');
      await request(http.port, '/users/1');
      await request(http.port, '/users/2');
      await request(http.port, '/home?again');
      await appReceiver.waitForLines(2);
      await usersReceiver.waitForLines(2);
      assert.deepEqual(
        appReceiver.records().map((r) => [r['request'].uri, r['api'].name]),
        [
          ['/home', 'app'],
          ['/home?again', 'app'],
        ],
      );
      assert.deepEqual(
        usersReceiver.records().map((r) => [r['request'].uri, r['api'].name, r['route'].base_url]),
        [
          ['/users/1', 'users', '/users'],
          ['/users/2', 'users', '/users'],
        ],
      );
      await until(() => appLog.stats().sent === 2 && usersLog.stats().sent === 2);
      assert.equal(appLog.stats().records, 2, 'the outer instance did not log the nested requests');
    });

    it('instances pointing at one destination share one connection and one set of counters', async () => {
      const receiver = track(await transport.startReceiver());
      const a = logger({ ...transport.destination(receiver.port), api: { name: 'a' } });
      const { tls: tlsOptions } = transport.destination(receiver.port);
      const b = logger(`${transport.name}://127.0.0.1:${receiver.port}`, {
        api: { name: 'b' },
        ...(tlsOptions ? { tls: tlsOptions } : {}),
      });
      const app = express();
      app.use('/a', a);
      app.use('/b', b);
      app.get(['/a', '/b'], (_req, res) => {
        res.send('x');
      });
      const http = track(await listen(app));
      await request(http.port, '/a');
      await request(http.port, '/b');
      await receiver.waitForLines(2);
      assert.equal(receiver.connections, 1);
      assert.deepEqual(
        receiver.records().map((r) => r['api'].name),
        ['a', 'b'],
      );
      await until(() => a.stats().sent === 2);
      assert.deepEqual(a.stats(), b.stats());
      assert.equal(activeClientCount(), 1);
    });

    it('delimiter "\\n" frames records with LF only', async () => {
      const receiver = track(await transport.startReceiver());
      const mw = logger({ ...transport.destination(receiver.port), delimiter: '\n' });
      const http = await appWith(mw);
      await request(http.port, '/');
      await request(http.port, '/n/2');
      await receiver.waitForLines(2);
      assert.ok(receiver.lines.every((line) => !line.endsWith('\r')));
      assert.equal(receiver.records().length, 2);
    });

    it('close() delivers everything buffered before it resolves, even when the server comes up late', async () => {
      const port = await freePort();
      const mw = logger({ ...transport.destination(port), timeout: 5000, onError: () => undefined });
      const http = await appWith(mw);
      for (let i = 0; i < 20; i++) await request(http.port, `/n/${i}`);
      assert.equal(mw.stats().buffered, 20);
      const closing = mw.close();
      const receiver = track(await transport.startReceiver(port));
      await closing;
      assert.equal(mw.stats().sent, 20, 'all confirmed before close() resolved');
      assert.equal(mw.stats().buffered, 0);
      await receiver.waitForLines(20);
      // After close() the instance no longer logs, and the app still answers.
      assert.equal((await request(http.port, '/')).status, 200);
      assert.equal(mw.stats().records, 20);
      assert.equal(await mw.close(), undefined, 'close() is idempotent');
    });

    it('close() with the server down resolves within timeout and counts the drops', async () => {
      const port = await freePort();
      const errors: Error[] = [];
      const mw = logger({ ...transport.destination(port), timeout: 300, onError: (err) => errors.push(err) });
      const http = await appWith(mw);
      for (let i = 0; i < 3; i++) await request(http.port, `/n/${i}`);
      await mw.close();
      assert.deepEqual(
        {
          records: mw.stats().records,
          sent: mw.stats().sent,
          dropped: mw.stats().dropped,
          buffered: mw.stats().buffered,
        },
        { records: 3, sent: 0, dropped: 3, buffered: 0 },
      );
      assert.ok(errors.some((err) => (err as { code?: string }).code === 'EDROPPED'));
    });

    it('maxBufferBytes bounds what waits: the oldest records are dropped and counted', async () => {
      const port = await freePort();
      const mw = logger({ ...transport.destination(port), maxBufferBytes: 2000, onError: () => undefined });
      const http = await appWith(mw);
      for (let i = 0; i < 30; i++) await request(http.port, `/n/${i}`);
      const stats = mw.stats();
      assert.ok(stats.bufferedBytes <= 2000, `bufferedBytes ${stats.bufferedBytes}`);
      assert.ok(stats.dropped > 0);
      assert.equal(stats.records, 30);
      assert.ok(invariant(stats));
      const receiver = track(await transport.startReceiver(port));
      await until(() => mw.stats().buffered === 0);
      await receiver.waitForLines(stats.buffered);
      const uris = receiver.records().map((r) => r['request'].uri as string);
      assert.equal(uris.at(-1), '/n/29', 'the newest records are the ones kept');
      assert.equal(mw.stats().sent + mw.stats().dropped, 30);
    });

    /**
     * A port whose connects neither succeed nor fail: a listener whose process never accepts (its
     * event loop is parked) and whose backlog is full, so the kernel leaves further SYNs
     * unanswered, as a firewall that drops them does.
     */
    async function unansweredPort(): Promise<number> {
      const child = spawn(process.execPath, ['-e', STALLED_LISTENER], { stdio: ['ignore', 'pipe', 'inherit'] });
      track({ close: () => Promise.resolve(void child.kill('SIGKILL')) });
      const [portText] = (await once(child.stdout, 'data')) as [Buffer];
      const port = Number(portText.toString().trim());
      const fillers: net.Socket[] = [];
      track({ close: () => Promise.resolve(fillers.forEach((s) => s.destroy())) });
      // Connect until one hangs: then the backlog is full.
      for (;;) {
        const filler = net.connect(port, '127.0.0.1').on('error', () => undefined);
        fillers.push(filler);
        const outcome = await Promise.race([
          once(filler, 'connect').then(() => 'connected'),
          new Promise((resolve) => setTimeout(resolve, 300, 'hung')),
        ]);
        if (outcome === 'hung') break;
        assert.ok(fillers.length < 50, 'the backlog never filled');
      }
      return port;
    }

    /** Connects in progress in this process: each keeps Node's loop alive, unref'd socket or not. */
    function pendingConnects(): number {
      return process.getActiveResourcesInfo().filter((name) => name === 'ConnectWrap').length;
    }

    it('shut down while a connect is unanswered: the connect is given up, not left to hold the process', async () => {
      const port = await unansweredPort();
      const before = pendingConnects();
      const client = new TcpLogClient(parseOptions({ ...transport.destination(port), timeout: 10_000 }).destination);
      client.push('{"n":1}\r\n');
      await until(() => pendingConnects() > before, 5_000, 'the connect under way');
      assert.equal(client.shutdown(), 1);
      // Ended rather than destroyed, it stayed for the kernel's two minutes of SYN retries.
      await until(() => pendingConnects() === before, 2_000, 'the connect given up');
      assert.equal(client.stats().errors, 0, 'nothing heard from it after the shutdown counts');
    });

    it('a connect that never completes is cut by timeout and retried', async () => {
      const port = await unansweredPort();
      const errors: Error[] = [];
      const mw = logger({ ...transport.destination(port), timeout: 200, onError: (err) => errors.push(err) });
      const http = await appWith(mw);
      await request(http.port, '/');
      await until(() => errors.filter((err) => (err as { code?: string }).code === 'ETIMEDOUT').length >= 2);
      assert.match(errors.find((err) => (err as { code?: string }).code === 'ETIMEDOUT')!.message, /connect timed out/);
      assert.equal(mw.stats().connected, false);
      assert.equal(mw.stats().buffered, 1, 'the record waits for a connection');
      assert.equal(mw.stats().connects, 0);
    });
  });
}

describe('after close()', () => {
  it('a collector that keeps its side open: the socket is destroyed after timeout, not kept for good', async () => {
    const lines: string[] = [];
    let outcome: (what: string) => void = () => undefined;
    const gone = new Promise<string>((resolve) => (outcome = resolve));
    const server = net.createServer({ allowHalfOpen: true }, (socket) => {
      socket.setEncoding('utf8');
      socket.on('data', (text: string) => lines.push(...text.split('\r\n').filter(Boolean)));
      socket.on('error', (err: Error & { code?: string }) => outcome(err.code ?? err.message));
      socket.on('close', () => outcome('closed'));
      // The client ended its side; this one stays open. Writing to a socket the client no
      // longer has gets a reset: that says when it let go.
      socket.on('end', () => {
        const poke = setInterval(() => socket.write('x'), 50);
        socket.once('close', () => clearInterval(poke));
      });
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const sockets = new Set<net.Socket>();
    server.on('connection', (socket) => sockets.add(socket));
    track({
      close: () =>
        new Promise<void>((resolve) => {
          for (const socket of sockets) socket.destroy();
          server.close(() => resolve());
        }),
    });
    const { port } = server.address() as net.AddressInfo;
    const mw = logger({ host: '127.0.0.1', port, timeout: 300 });
    const http = await appWith(mw);
    await request(http.port, '/');
    await until(() => lines.length === 1, 5_000, 'the record');
    await mw.close();
    const timedOut = new Promise<string>((resolve) => setTimeout(resolve, 5_000, 'still open after 5 s').unref());
    assert.match(await Promise.race([gone, timedOut]), /^(ECONNRESET|EPIPE|closed)$/);
  });
});
