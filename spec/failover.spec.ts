/**
 * `servers`: several collectors in order of preference, over TCP and TLS. The first healthy one
 * gets the records; a failure moves them to the next; the preferred one is used again once back.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net, { type AddressInfo } from 'node:net';
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
  startLineServer,
  until,
  warningKinds,
  type LineServer,
} from './helpers.js';
import { transports } from './transports.js';

const cleanup: Array<() => Promise<void> | void> = [];
const middlewares: tcplog.Middleware[] = [];

afterEach(async () => {
  for (const mw of middlewares) assert.ok(invariant(mw.stats()), JSON.stringify(mw.stats()));
  for (const mw of middlewares.splice(0)) await mw.close();
  for (const step of cleanup.splice(0).reverse()) await step();
});

function uris(receiver: LineServer): number[] {
  return receiver.records().map((r) => Number(String(r['request'].uri).slice(3)));
}

for (const transport of transports) {
  describe(`servers failover over ${transport.name}`, () => {
    async function receiverOn(port = 0): Promise<LineServer> {
      const receiver = await transport.startReceiver(port);
      cleanup.push(() => receiver.close());
      return receiver;
    }

    async function appLogging(ports: number[], errors: Error[] = []): Promise<{ mw: tcplog.Middleware; port: number }> {
      const servers = ports.map((port) => {
        const { host, tls } = transport.destination(port);
        return { host, port, ...(tls ? { tls } : {}) };
      });
      const mw = tcplog({ servers, timeout: 1000, onError: (err) => errors.push(err) });
      middlewares.push(mw);
      const http = await listenLogged(mw);
      cleanup.push(() => http.close());
      return { mw, port: http.port };
    }

    it('the preferred server down: records go to the next one', async () => {
      const down = await freePort();
      const backup = await receiverOn();
      const errors: Error[] = [];
      const { mw, port } = await appLogging([down, backup.port], errors);
      for (let i = 0; i < 5; i++) assert.equal((await request(port, `/n/${i}`)).status, 200);
      await backup.waitForLines(5);
      assert.deepEqual(uris(backup), [0, 1, 2, 3, 4]);
      assert.ok(errors.some((err) => (err as { code?: string }).code === 'ECONNREFUSED'));
      await until(() => mw.stats().sent === 5);
    });

    it('the server in use stops mid-stream: traffic continues on the other, every record accounted for', async () => {
      const primary = await receiverOn();
      const backup = await receiverOn();
      const { mw, port } = await appLogging([primary.port, backup.port]);
      let n = 0;
      for (; n < 20; n++) await request(port, `/n/${n}`);
      await primary.waitForLines(20);
      await primary.stopGracefully();
      for (; n < 40; n++) assert.equal((await request(port, `/n/${n}`)).status, 200);
      await backup.waitForLines(20);
      await until(() => mw.stats().buffered === 0);
      assert.deepEqual(
        [...uris(primary), ...uris(backup)],
        Array.from({ length: 40 }, (_, i) => i),
        'nothing lost, order kept across the two',
      );
      assert.equal(mw.stats().dropped, 0);
      assert.equal(mw.stats().sent, 40);
    });

    it('all servers down: records wait, and go to whichever comes up', async () => {
      const first = await freePort();
      const second = await freePort();
      const { mw, port } = await appLogging([first, second]);
      for (let i = 0; i < 3; i++) await request(port, `/n/${i}`);
      await until(() => mw.stats().errors >= 2, 5_000, 'both servers tried');
      assert.equal(mw.stats().buffered, 3);
      const late = await receiverOn(second);
      await late.waitForLines(3, 10_000);
      assert.deepEqual(uris(late), [0, 1, 2]);
    });

    it('goes back to the preferred server once it recovers', async () => {
      const preferredPort = await freePort();
      const backup = await receiverOn();
      const { mw, port } = await appLogging([preferredPort, backup.port]);
      await request(port, '/n/0');
      await backup.waitForLines(1);
      const preferred = await receiverOn(preferredPort);
      // The client probes the preferred server every few seconds (jittered, at most 5 s).
      const deadline = Date.now() + 12_000;
      for (let n = 1; preferred.lines.length === 0; n++) {
        assert.ok(Date.now() < deadline, 'records reach the recovered preferred server within 12 s');
        assert.equal((await request(port, `/n/${n}`)).status, 200);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      await until(() => mw.stats().buffered === 0);
      const total = preferred.lines.length + backup.lines.length;
      await until(() => preferred.lines.length + backup.lines.length >= mw.stats().sent, 5_000, 'all lines');
      assert.ok(total > 1);
      // Later records all go to the preferred one.
      const before = backup.lines.length;
      for (let i = 0; i < 5; i++) await request(port, `/n/final${i}`);
      await until(() => preferred.records().filter((r) => String(r['request'].uri).includes('final')).length === 5);
      assert.equal(backup.lines.length, before);
    });
  });
}

describe('failback from a server that stopped reading', () => {
  it('the records stuck on it move to the preferred server once it has had `timeout`', async () => {
    // Plain TCP: the fail-back path is the same over TLS. `timeout` is longer than the fail-back
    // probe's 5 s, so that the backup's write is still stuck, not yet cut as a stall, when the
    // client goes back to the preferred server.
    const preferredPort = await freePort();
    const backup = await startLineServer();
    cleanup.push(() => backup.close());
    // The backup takes the connection and never reads it, until the end of the spec.
    backup.on('connection', (socket: net.Socket) => socket.pause());
    const servers = [preferredPort, backup.port].map((port) => ({ host: '127.0.0.1', port }));
    const client = new TcpLogClient(parseOptions({ servers, timeout: 6_000, maxBufferBytes: 64 << 20 }).destination);
    client.addReporter(() => undefined);
    cleanup.push(() => void client.shutdown());
    const count = 1000;
    await pushNumbered(client, count);
    await until(() => backup.sockets.size === 1, 5_000, 'the backup in use');
    assert.ok(client.stats().buffered > 0, 'records wait behind a stuck write');
    const preferred = await startLineServer(preferredPort);
    cleanup.push(() => preferred.close());
    // The probe finds it within 5 s; the old connection then has `timeout` to take the rest.
    await until(() => client.stats().buffered === 0, 15_000, 'everything to be written');
    const stats = client.stats();
    // One error: the preferred server's refusal at the start. The backup's write never stalled.
    assert.deepEqual([stats.sent, stats.dropped, stats.errors], [count, 0, 1]);
    for (const socket of backup.sockets) socket.resume();
    const seen = (): number[] => [...preferred.records(), ...backup.records()].map((r) => r['n'] as number);
    await until(() => new Set(seen()).size === count, 5_000, `all ${count} records (${new Set(seen()).size})`);
    assert.equal(seen().length, count, 'each record once');
    assert.ok(preferred.lines.length > 0, 'the preferred server got the rest');
  });
});

describe('a preferred server that stops reading a while after each connection', () => {
  it('the backup it fails over to is proven as usual, and no fail-back goes to it within seconds', async () => {
    // The preferred server reads past the second that proves a connection, then stalls; its
    // next connection must last a minute to prove it again, but the backup's need not.
    const warnings = deliveryWarnings(cleanup);
    const preferred = await startFadingCollector(1_200);
    cleanup.push(() => preferred.close());
    const backup = await startLineServer();
    cleanup.push(() => backup.close());
    const servers = [preferred.port, backup.port].map((port) => ({
      host: '127.0.0.1',
      port,
    }));
    const client = new TcpLogClient(parseOptions({ servers, timeout: 300, maxBufferBytes: 64 << 20 }).destination);
    client.addReporter(null);
    client.addReporter(() => undefined);
    cleanup.push(() => void client.shutdown());
    const record = `{"pad":"${'x'.repeat(16 * 1024)}"}\r\n`;
    const recovered = (): boolean => warnings.some((message) => /recovered/.test(message));
    const deadline = Date.now() + 20_000;
    while (!recovered() && Date.now() < deadline) {
      client.push(record);
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    assert.deepEqual(warningKinds(warnings.slice(0, 2)), ['failing', 'recovered'], warnings.join('\n'));
    assert.ok(backup.lines.length > 0, 'the backup took records');
    // A connect would succeed, and say nothing of whether it takes records again: past the
    // 2.5-5 s a fail-back probe waits otherwise, the records still go to the backup.
    const lines = backup.lines.length;
    const probeWindowEnd = Date.now() + 5_500;
    while (Date.now() < probeWindowEnd) {
      client.push(record);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    assert.equal(preferred.connections.size, 1, 'one connection to the preferred server');
    await backup.waitForLines(lines + 1);
  });
});

describe('servers option', () => {
  const base = { timeout: 100 };
  const bad: Array<[unknown, RegExp]> = [
    [[], /option "servers" must be a non-empty array/],
    ['tcp://a:1', /option "servers" must be a non-empty array/],
    [[42], /option "servers\[0\]" must be a connection string/],
    [['http://a:1'], /option "servers\[0\]": connection string "http:\/\/a:1" has scheme "http"/],
    [[{ host: 'a' }], /option "servers\[0\].port" must be a number/],
    [[{ host: 'a', port: 70000 }], /option "servers\[0\].port" must be an integer from 1 to 65535/],
    [
      ['tcp://a:1', { host: 'b:2', port: 2 }],
      /option "servers\[1\].host" must be a host name or IP address without a port/,
    ],
    [[{ host: 'a', port: 1, weight: 2 }], /option "servers\[0\]" has an unknown key "weight"/],
    [[{ host: 'a', port: 1, tls: 'yes' }], /option "servers\[0\].tls" must be true, false, or an object/],
  ];
  for (const [servers, message] of bad) {
    it(`rejects servers: ${JSON.stringify(servers)}`, () => {
      assert.throws(
        () => tcplog({ ...base, servers } as unknown as tcplog.TcpLogServersOptions),
        (err: Error) => (err instanceof TypeError || err instanceof RangeError) && message.test(err.message),
      );
    });
  }

  it('a server that resets as soon as records come counts as failed: the next one gets the rest', async () => {
    const resetting = net.createServer((socket) => {
      accepted++;
      socket.once('data', () => socket.resetAndDestroy());
    });
    let accepted = 0;
    resetting.listen(0, '127.0.0.1');
    await once(resetting, 'listening');
    cleanup.push(() => new Promise<void>((resolve) => resetting.close(() => resolve())));
    const healthy = await startLineServer();
    cleanup.push(() => healthy.close());
    const errors: Error[] = [];
    const mw = tcplog({
      servers: [
        { host: '127.0.0.1', port: (resetting.address() as AddressInfo).port },
        { host: '127.0.0.1', port: healthy.port },
      ],
      onError: (err) => errors.push(err),
    });
    middlewares.push(mw);
    const http = await listenLogged(mw);
    cleanup.push(() => http.close());
    for (let i = 0; i < 20; i++) await request(http.port, `/n/${i}`);
    await until(() => healthy.lines.length > 0);
    // The kernel took what was written before each reset: that is lost, and counted as sent. But
    // before, every record opened a connection to the resetting server, and none went further.
    // Three early failures in a row move on (one alone may be a collector that read first).
    assert.ok(accepted <= 3, `${accepted} connections to the resetting server`);
    assert.ok(errors.length >= 1 && errors.length <= 3, `${errors.length} errors`);
  });

  it('every server resetting as soon as records come: a round of them, then the backoff', async () => {
    const accepted = [0, 0];
    const resetting = [0, 1].map((n) =>
      net.createServer((socket) => {
        accepted[n]!++;
        socket.once('data', () => socket.resetAndDestroy());
      }),
    );
    for (const server of resetting) {
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      cleanup.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
    }
    const mw = tcplog({
      servers: resetting.map((server) => ({ host: '127.0.0.1', port: (server.address() as AddressInfo).port })),
      onError: () => undefined,
    });
    middlewares.push(mw);
    const http = await listenLogged(mw);
    cleanup.push(() => http.close());
    for (let i = 0; i < 100; i++) await request(http.port, `/n/${i}`);
    // Before, the two took turns at once for ever: one connection per record, about 100.
    const total = accepted[0]! + accepted[1]!;
    assert.ok(accepted[0]! >= 3 && accepted[1]! >= 3, `both tried: ${JSON.stringify(accepted)}`);
    assert.ok(total < 50, `${total} connections for 100 records: the client backs off`);
  });

  it('TLS options Node refuses only when connecting: a failed connection, reported, and the next server gets the records', async () => {
    const receiver = await startLineServer();
    cleanup.push(() => receiver.close());
    const errors: Error[] = [];
    const mw = tcplog({
      servers: [
        // The factory's check (a secure context) takes it; tls.connect() throws on it, every time.
        { host: '127.0.0.1', port: receiver.port, tls: { highWaterMark: 'x' } as never },
        `tcp://127.0.0.1:${receiver.port}`,
      ],
      onError: (err) => errors.push(err),
    });
    middlewares.push(mw);
    const http = await listenLogged(mw);
    cleanup.push(() => http.close());
    for (let i = 0; i < 5; i++) await request(http.port, `/n/${i}`);
    await receiver.waitForLines(5);
    assert.deepEqual(uris(receiver), [0, 1, 2, 3, 4]);
    assert.ok(errors.length >= 1);
    assert.equal((errors[0] as { code?: string }).code, 'ERR_INVALID_ARG_VALUE', errors[0]?.message);
    await until(() => mw.stats().sent === 5);
  });

  it('rejects host/port together with servers', () => {
    assert.throws(
      () => tcplog({ host: 'a', port: 1, servers: ['tcp://b:2'] } as unknown as tcplog.TcpLogServersOptions),
      /either "host" and "port" or "servers", not both/,
    );
  });

  it('accepts strings and objects; tls:// entries and the instance tls apply per server', async () => {
    const mw = tcplog({ servers: ['tcp://127.0.0.1:9', { host: '::1', port: 10 }, 'tls://logs.test:6514'] });
    assert.equal(typeof mw, 'function');
    await mw.close();
  });
});
