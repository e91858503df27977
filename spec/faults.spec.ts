/**
 * Faults on the logging side, each run over plain TCP and over TLS: the app keeps answering,
 * every record is accounted for, and none that the bound allows is lost.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import tls from 'node:tls';
import { afterEach, describe, it } from 'node:test';
import tcplog = require('../lib/index.js');
import { TcpLogClient } from '../lib/client.js';
import { parseOptions } from '../lib/options.js';
import {
  deliveryWarnings,
  freePort,
  invariant,
  listenLogged,
  pushNumbered,
  request,
  startFadingCollector,
  until,
  warningKinds,
  type LineServer,
  type Listening,
} from './helpers.js';
import { pem, transports } from './transports.js';

type Code = { code?: string };

const cleanup: Array<() => Promise<void> | void> = [];
const middlewares: tcplog.Middleware[] = [];

afterEach(async () => {
  for (const mw of middlewares) assert.ok(invariant(mw.stats()), `invariant: ${JSON.stringify(mw.stats())}`);
  for (const mw of middlewares.splice(0)) await mw.close();
  for (const step of cleanup.splice(0).reverse()) await step();
});

async function appWith(mw: tcplog.Middleware): Promise<Listening> {
  middlewares.push(mw);
  const http = await listenLogged(mw);
  cleanup.push(() => http.close());
  return http;
}

function numbers(receivers: LineServer[]): number[] {
  return receivers.flatMap((r) => r.records().map((record) => Number(String(record['request'].uri).slice(3))));
}

for (const transport of transports) {
  describe(`faults over ${transport.name}`, () => {
    async function receiverOn(port = 0): Promise<LineServer> {
      const receiver = await transport.startReceiver(port);
      cleanup.push(() => receiver.close());
      return receiver;
    }

    it('server down at start, up after 2 s: requests unaffected, records delivered in order', async () => {
      const port = await freePort();
      const errors: Error[] = [];
      const mw = tcplog({ ...transport.destination(port), onError: (err) => errors.push(err) });
      const http = await appWith(mw);
      const upLater = new Promise<LineServer>((resolve) => setTimeout(() => resolve(receiverOn(port)), 2000));
      let n = 0;
      let up: LineServer | null = null;
      void upLater.then((receiver) => (up = receiver));
      // Traffic all along: before and after the server comes up.
      while (up === null || n < 60) {
        assert.equal((await request(http.port, `/n/${n++}`)).status, 200);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      const receiver = await upLater;
      await receiver.waitForLines(n);
      assert.deepEqual(
        numbers([receiver]),
        Array.from({ length: n }, (_, i) => i),
      );
      assert.ok(errors.length >= 1 && errors.every((err) => (err as Code).code === 'ECONNREFUSED'));
      // Backoff: a 2 s outage costs a handful of attempts, not hundreds.
      assert.ok(errors.length <= 20, `${errors.length} attempts during a 2 s outage`);
    });

    it('graceful restarts, 10 times during steady traffic: 0 records lost, order kept', async () => {
      const first = await receiverOn();
      const port = first.port;
      const receivers = [first];
      const mw = tcplog({ ...transport.destination(port), onError: () => undefined });
      const http = await appWith(mw);
      let n = 0;
      let stop = false;
      const traffic = (async function steadyTraffic() {
        while (!stop) {
          assert.equal((await request(http.port, `/n/${n++}`)).status, 200);
          await new Promise((resolve) => setTimeout(resolve, 4));
        }
      })();
      for (let restart = 0; restart < 10; restart++) {
        const current = receivers.at(-1) as LineServer;
        await current.waitForLines(current.lines.length + 20);
        await current.stopGracefully();
        receivers.push(await receiverOn(port));
      }
      await (receivers.at(-1) as LineServer).waitForLines(20);
      stop = true;
      await traffic;
      await until(() => mw.stats().buffered === 0, 15_000, 'the backlog to drain');
      const last = receivers.at(-1) as LineServer;
      await until(() => numbers(receivers).length >= n, 5_000, 'all records');
      assert.deepEqual(
        numbers(receivers),
        Array.from({ length: n }, (_, i) => i),
      );
      assert.ok(last.lines.length > 0);
      assert.equal(mw.stats().dropped, 0);
      assert.equal(mw.stats().sent, n);
    });

    it('a server that accepts but never reads: app unaffected, memory bounded, drops exact, then recovery', async () => {
      // Accepted at the TCP level, never read: over TLS the handshake cannot even complete.
      const stalled = net.createServer({ pauseOnConnect: true });
      const held: net.Socket[] = [];
      stalled.on('connection', (socket) => held.push(socket));
      stalled.listen(0, '127.0.0.1');
      await once(stalled, 'listening');
      const closeStalled = (): Promise<void> => {
        held.forEach((socket) => socket.destroy());
        return new Promise<void>((resolve) => stalled.close(() => resolve()));
      };
      cleanup.push(() => (stalled.listening ? closeStalled() : undefined));
      const port = (stalled.address() as net.AddressInfo).port;
      const errors: Error[] = [];
      const maxBufferBytes = 256 * 1024;
      const settings = parseOptions({
        ...transport.destination(port),
        timeout: 300,
        maxBufferBytes,
      });
      const client = new TcpLogClient(settings.destination);
      client.addReporter((err) => errors.push(err));
      cleanup.push(() => void client.shutdown());
      // 40 MB of records against a reader that takes none: kernel buffers fill, then ours.
      const record = `{"pad":"${'x'.repeat(10_000)}"}\r\n`;
      let peak = 0;
      for (let i = 0; i < 4000; i++) {
        client.push(record);
        peak = Math.max(peak, client.stats().bufferedBytes);
        if (i % 100 === 0) await new Promise((resolve) => setImmediate(resolve));
      }
      assert.ok(peak <= maxBufferBytes, `peak ${peak} within ${maxBufferBytes}`);
      // An app logging to the same stuck server keeps answering every request.
      const mw = tcplog({ ...transport.destination(port), timeout: 300, maxBufferBytes, onError: () => undefined });
      const http = await appWith(mw);
      for (let i = 0; i < 50; i++) assert.equal((await request(http.port, `/n/${i}`)).status, 200);
      assert.equal(mw.stats().records, 50);
      // Plain TCP: the write stalls (no 'drain'); TLS: the handshake times out.
      const expected = transport.name === 'tcp' ? 'ESTALLED' : 'ETIMEDOUT';
      await until(() => errors.some((err) => (err as Code).code === expected), 5_000, expected);
      if (transport.name === 'tls') {
        const timedOut = errors.find((err) => (err as Code).code === 'ETIMEDOUT') as Error;
        assert.match(timedOut.message, /TLS handshake timed out after 300 ms/, 'the TCP connect was done');
      }
      const stats = client.stats();
      assert.ok(stats.dropped > 0, 'beyond the bound, records are dropped');
      assert.ok(invariant(stats));
      // A reading server returns on the same port: what the bound kept is delivered.
      await closeStalled();
      const reader = await receiverOn(port);
      client.push('{"last":true}\r\n');
      await until(() => client.stats().buffered === 0, 10_000, 'the backlog to drain');
      await until(() => reader.lines.includes('{"last":true}\r'), 5_000, 'the last record');
      const final = client.stats();
      assert.ok(invariant(final));
      assert.equal(final.records, 4001);
      await until(() => mw.stats().buffered === 0, 10_000, "the app's backlog to drain");
      // The reader also gets the app's records: everything it got was counted as sent by one of the two.
      assert.ok(final.sent + mw.stats().sent >= reader.lines.length, 'every record the reader got was counted as sent');
    });

    it('a server that resets every connection after some bytes: reconnects, counts, no crash', async () => {
      const port = await freePort();
      // Reads some bytes of records, then sends a TCP RST (over TLS: on the raw connection under it).
      const raw: net.Socket[] = [];
      const resetAfterSomeBytes = (socket: net.Socket, tcp: net.Socket): void => {
        let seen = 0;
        socket.on('data', (chunk: Buffer) => {
          seen += chunk.length;
          if (seen > 2000) tcp.resetAndDestroy();
        });
        socket.on('error', () => undefined);
        tcp.on('error', () => undefined);
      };
      const resetting =
        transport.name === 'tcp'
          ? net.createServer((socket) => resetAfterSomeBytes(socket, socket))
          : tls.createServer({ key: pem('server-key.pem'), cert: pem('server-cert.pem') }, (socket) =>
              resetAfterSomeBytes(socket, raw.shift() as net.Socket),
            );
      resetting.on('connection', (socket: net.Socket) => raw.push(socket));
      resetting.listen(port, '127.0.0.1');
      await once(resetting, 'listening');
      cleanup.push(() => new Promise<void>((resolve) => resetting.close(() => resolve())));
      const errors: Error[] = [];
      /** `stats().connected` as each error is reported: the connection is gone by then. */
      const connectedAtError: boolean[] = [];
      const mw = tcplog({
        ...transport.destination(port),
        timeout: 1000,
        onError: (err) => {
          errors.push(err);
          connectedAtError.push(mw.stats().connected);
        },
      });
      const http = await appWith(mw);
      for (let i = 0; i < 40; i++) assert.equal((await request(http.port, `/n/${i}`)).status, 200);
      await until(() => errors.length >= 2, 5_000, 'resets reported');
      assert.ok(
        connectedAtError.every((connected) => !connected),
        `not connected once reset: ${connectedAtError.join()}`,
      );
      assert.ok(
        errors.some((err) => ['ECONNRESET', 'EPIPE'].includes(String((err as Code).code))),
        errors.map((e) => (e as Code).code).join(),
      );
      assert.ok(invariant(mw.stats()));
      // A healthy server replaces it: whatever was still buffered arrives.
      await new Promise<void>((resolve) => resetting.close(() => resolve()));
      const healthy = await receiverOn(port);
      await until(() => mw.stats().buffered === 0, 10_000, 'the backlog to drain');
      assert.ok(invariant(mw.stats()));
      assert.ok(healthy.lines.length > 0 || mw.stats().sent === 40);
    });

    /**
     * A receiver whose first connection is not read until it is resumed (or ended), and a client
     * to it (`timeout` 300 ms) whose reports go to `errors`.
     */
    async function stuckFirstConnection(): Promise<{
      receiver: LineServer;
      client: TcpLogClient;
      errors: Error[];
      stuck: () => net.Socket | null;
    }> {
      const receiver = await receiverOn();
      let stuck: net.Socket | null = null;
      receiver.on('connection', (socket: net.Socket) => {
        if (receiver.connections === 1) {
          socket.pause();
          stuck = socket;
        }
      });
      const errors: Error[] = [];
      const client = new TcpLogClient(
        parseOptions({ ...transport.destination(receiver.port), timeout: 300, maxBufferBytes: 64 << 20 }).destination,
      );
      client.addReporter((err) => errors.push(err));
      cleanup.push(() => void client.shutdown());
      return { receiver, client, errors, stuck: () => stuck };
    }

    // The write in progress when a connection ends is one Node confirms anyway: what of it the
    // kernel took went out, the rest must be sent again. Both ways this client ends such a
    // connection itself: the collector closed its side, or the write stalled past `timeout`.
    for (const ending of ['closes its side', 'stops reading past timeout'] as const) {
      it(`a collector that ${ending} while a write is stuck: every record arrives`, async () => {
        const { receiver, client, errors, stuck } = await stuckFirstConnection();
        const count = 1000;
        await pushNumbered(client, count);
        await until(() => stuck() !== null, 5_000, 'the first connection');
        assert.ok(client.stats().buffered > 0, 'records wait behind a stuck write');
        if (ending === 'closes its side') {
          stuck()!.end();
        } else {
          await until(() => errors.some((err) => (err as Code).code === 'ESTALLED'), 5_000, 'the stall');
        }
        // Either way the collector then reads what the kernel took on that connection.
        stuck()!.resume();
        await until(() => client.stats().buffered === 0, 10_000, 'everything to be written');
        const seen = (): number[] => receiver.records().map((record) => record['n'] as number);
        await until(() => new Set(seen()).size === count, 5_000, `all ${count} records (${new Set(seen()).size})`);
        const stats = client.stats();
        assert.deepEqual([stats.sent, stats.dropped], [count, 0]);
        if (transport.name === 'tcp') {
          // The handle's queue says how much went out: no record twice.
          assert.equal(seen().length, count, 'each record once');
        }
      });
    }

    it('a collector that stops reading under a trickle of small records: the stall is noticed', async () => {
      // One small record per turn: the writes stuck behind a full kernel buffer stay under the
      // socket's high-water mark, so write() never says to wait.
      const { receiver, client, errors, stuck } = await stuckFirstConnection();
      const pad = 'x'.repeat(3_000);
      let count = 0;
      const push = (): void => client.push(`{"n":${count++},"pad":"${pad}"}\r\n`);
      const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
      // Until the kernel takes no more: records then wait behind the writes in flight.
      while (client.stats().buffered < 10 && count < 20_000) {
        push();
        await turn();
      }
      assert.ok(client.stats().buffered >= 10, `records wait behind stuck writes (${count} pushed)`);
      const stalled = (): boolean => errors.some((err) => (err as Code).code === 'ESTALLED');
      const deadline = Date.now() + 5_000;
      while (!stalled() && Date.now() < deadline) {
        push();
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      assert.ok(stalled(), `the stall is reported (${errors.map((err) => (err as Code).code).join() || 'nothing'})`);
      stuck()!.resume();
      await until(() => client.stats().buffered === 0, 10_000, 'everything to be written');
      const seen = (): number[] => receiver.records().map((record) => record['n'] as number);
      await until(() => new Set(seen()).size === count, 5_000, `all ${count} records (${new Set(seen()).size})`);
      assert.deepEqual([client.stats().sent, client.stats().dropped], [count, 0]);
      if (transport.name === 'tcp') assert.equal(seen().length, count, 'each record once');
    });

    it('a big write shortly after a small one is judged from its own start, not by the watch the small one armed', async () => {
      const receiver = await receiverOn();
      let collector: net.Socket | null = null;
      receiver.on('connection', (socket: net.Socket) => {
        collector = socket;
      });
      const errors: Error[] = [];
      const client = new TcpLogClient(
        parseOptions({ ...transport.destination(receiver.port), timeout: 1_000, keepalive: 0 }).destination,
      );
      client.addReporter((err) => errors.push(err));
      cleanup.push(() => void client.shutdown());
      const sleep = (ms: number): Promise<unknown> => new Promise((resolve) => setTimeout(resolve, ms));
      // The times are the scenario: the small write arms a watch due at 1 s; at 0.85 s the
      // collector has paused for 0.3 s (well under `timeout`) and the big write goes out.
      client.push('{"n":0}\r\n');
      await until(() => client.stats().sent === 1, 5_000, 'the small record');
      await sleep(700);
      collector!.pause();
      setTimeout(() => collector!.resume(), 300);
      await sleep(150);
      const big = `{"n":1,"pad":"${'x'.repeat(8 << 20)}"}\r\n`;
      client.push(big);
      await receiver.waitForLines(2, 20_000);
      assert.deepEqual(errors, [], 'no stall');
      assert.equal(client.stats().connects, 1);
    });

    it('a collector that reads slowly keeps its connection, even under a record it takes longer than timeout to read', async () => {
      const receiver = await receiverOn();
      // Reads in short bursts: steady progress, but 8 MB takes longer than `timeout`. (The client
      // sees progress only as the kernel's buffer frees half its room: about every 0.4 s here.)
      receiver.on('connection', (socket: net.Socket) => {
        socket.pause();
        const reading = setInterval(() => {
          socket.resume();
          setTimeout(() => socket.pause(), 1);
        }, 30);
        socket.on('close', () => clearInterval(reading));
      });
      const errors: Error[] = [];
      const client = new TcpLogClient(
        parseOptions({ ...transport.destination(receiver.port), timeout: 1_000, maxBufferBytes: 64 << 20 }).destination,
      );
      client.addReporter((err) => errors.push(err));
      cleanup.push(() => void client.shutdown());
      const big = `{"n":0,"pad":"${'x'.repeat(8 << 20)}"}\r\n`;
      client.push(big);
      client.push('{"n":1}\r\n');
      await receiver.waitForLines(2, 20_000);
      assert.deepEqual(
        receiver.records().map((record) => record['n'] as number),
        [0, 1],
      );
      assert.equal(receiver.lines[0]?.length, big.length - 1, 'the big record whole');
      assert.deepEqual(errors, [], 'no stall');
      assert.equal(client.stats().connects, 1);
    });

    it('an unknown host name is reported, never thrown', async () => {
      const errors: Error[] = [];
      const mw = tcplog({
        ...transport.destination(9),
        host: 'no-such-host.invalid',
        timeout: 500,
        onError: (err) => errors.push(err),
      });
      const http = await appWith(mw);
      assert.equal((await request(http.port, '/n/1')).status, 200);
      await until(() => errors.length > 0, 5_000, 'the lookup failure');
      assert.match(String((errors[0] as Code).code), /ENOTFOUND|EAI_AGAIN|ETIMEDOUT/);
      assert.equal(mw.stats().buffered, 1);
    });
  });
}

describe('onError shared by instances', () => {
  it('one function given to two instances: it still hears after one of them closes, once per problem', async () => {
    const port = await freePort();
    const heard: string[] = [];
    const onError = (err: Error): void => void heard.push((err as Code).code ?? err.message);
    const first = tcplog({ host: '127.0.0.1', port, timeout: 500, onError });
    const second = tcplog({ host: '127.0.0.1', port, timeout: 500, onError });
    middlewares.push(second);
    await first.close();
    const http = await appWith(second);
    await request(http.port, '/n/1');
    await until(() => heard.length > 0, 5_000, 'the refusal heard');
    assert.equal(heard[0], 'ECONNREFUSED');
    assert.equal(heard.length, second.stats().errors, 'called once per problem, not once per instance');
  });
});

describe('error reporting without onError', () => {
  it('one warning when delivery starts failing and one when it recovers, not one per record', async () => {
    const warnings: Error[] = [];
    const onWarning = (warning: Error): void => {
      if ((warning as Code).code === 'EXPRESS_TCPLOG_DELIVERY') warnings.push(warning);
    };
    process.on('warning', onWarning);
    cleanup.push(() => void process.off('warning', onWarning));
    const port = await freePort();
    const mw = tcplog({ host: '127.0.0.1', port });
    const http = await appWith(mw);
    for (let i = 0; i < 10; i++) await request(http.port, `/n/${i}`);
    await until(() => mw.stats().errors >= 3, 5_000, 'several failed attempts');
    const receiver = await transports[0]!.startReceiver(port);
    cleanup.push(() => receiver.close());
    await receiver.waitForLines(10);
    await until(() => warnings.length >= 2, 5_000, 'the recovery warning');
    assert.equal(warnings.length, 2, warnings.map((w) => w.message).join('\n'));
    assert.match(warnings[0]!.message, /ECONNREFUSED|refused/i);
    assert.match(warnings[1]!.message, /recovered/);
  });

  it('a long-healthy connection reset by a collector that then goes down: one warning, not a recovery', async () => {
    const warnings = deliveryWarnings(cleanup);
    const receiver = await transports[0]!.startReceiver();
    const { port } = receiver;
    const mw = tcplog({ host: '127.0.0.1', port });
    const http = await appWith(mw);
    await request(http.port, '/n/1');
    await receiver.waitForLines(1);
    // Past the second that proves a connection, then a reset and nobody listening.
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    const closed = new Promise<void>((resolve) => receiver.server.close(() => resolve()));
    assert.equal(receiver.sockets.size, 1, 'the connection is still open');
    for (const socket of receiver.sockets) socket.resetAndDestroy();
    await closed;
    await until(() => mw.stats().errors >= 1, 5_000, 'the reset');
    await request(http.port, '/n/2');
    await until(() => mw.stats().errors >= 2, 5_000, 'a refused connect');
    assert.deepEqual(warningKinds(warnings), ['failing'], warnings.join('\n'));
  });

  it('a collector that reads for a while on each connection, then stops: one warning, not one per reconnect', async () => {
    // As a path that drops large packets behaves: every connection opens and the kernel takes
    // writes, past the second that would prove it, then nothing more gets through.
    const warnings = deliveryWarnings(cleanup);
    const collector = await startFadingCollector(1_200);
    cleanup.push(() => collector.close());
    const { port } = collector;
    const client = new TcpLogClient(
      parseOptions({ host: '127.0.0.1', port, timeout: 300, maxBufferBytes: 64 << 20 }).destination,
    );
    const errors: Error[] = [];
    client.addReporter(null);
    client.addReporter((err) => errors.push(err));
    cleanup.push(() => void client.shutdown());
    const record = `{"pad":"${'x'.repeat(16 * 1024)}"}\r\n`;
    const stalls = (): number => errors.filter((err) => (err as Code).code === 'ESTALLED').length;
    // Three connections cut as stalled, each after it had lasted past the second.
    const deadline = Date.now() + 30_000;
    while (stalls() < 3 && Date.now() < deadline) {
      client.push(record);
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    assert.equal(stalls(), 3, errors.map((err) => err.message).join('\n'));
    assert.deepEqual(warningKinds(warnings), ['failing'], warnings.join('\n'));
  });

  it('keepalive shorter than a second: an outage still ends, and the next one is warned of', async () => {
    const warnings = deliveryWarnings(cleanup);
    const port = await freePort();
    const mw = tcplog({ host: '127.0.0.1', port, keepalive: 300 });
    const http = await appWith(mw);
    await request(http.port, '/n/1');
    await until(() => mw.stats().errors >= 1, 5_000, 'the first outage');
    let receiver = await transports[0]!.startReceiver(port);
    await receiver.waitForLines(1);
    // The connection idles out after 300 ms: it delivered, so the outage is over.
    await until(() => !mw.stats().connected, 5_000, 'the idle close');
    await receiver.close();
    await request(http.port, '/n/2');
    await until(() => warnings.length >= 3, 5_000, 'the second outage warned of');
    assert.deepEqual(warningKinds(warnings), ['failing', 'recovered', 'failing']);
    receiver = await transports[0]!.startReceiver(port);
    cleanup.push(() => receiver.close());
    await receiver.waitForLines(1);
  });
});
