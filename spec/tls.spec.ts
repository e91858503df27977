/**
 * TLS to the log server: certificates verified by default, refusals reported and counted, mutual
 * TLS, SNI, and the tls:// connection string. Certificates live in spec/fixtures/.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, it } from 'node:test';
import express from 'express';
import tcplog = require('../lib/index.js');
import { LineServer, invariant, listen, request, startLineServer, until, WAIT_MS, type Listening } from './helpers.js';

const fixtures = path.resolve(__dirname, '../../spec/fixtures');
const pem = (name: string): string => readFileSync(path.join(fixtures, name), 'utf8');
const ca = pem('ca-cert.pem');
const serverTls = { key: pem('server-key.pem'), cert: pem('server-cert.pem') };

type Code = { code?: string };

describe('TLS', () => {
  const cleanup: Array<() => Promise<void>> = [];
  const middlewares: tcplog.Middleware[] = [];

  afterEach(async () => {
    for (const mw of middlewares.splice(0)) {
      assert.ok(invariant(mw.stats()));
      await mw.close();
    }
    for (const step of cleanup.splice(0).reverse()) await step();
  });

  async function tlsReceiver(options: Parameters<typeof startLineServer>[1] = serverTls): Promise<LineServer> {
    const receiver = await startLineServer(0, options);
    cleanup.push(() => receiver.close());
    return receiver;
  }

  async function appLoggingWith(
    options: tcplog.TcpLogOptions | tcplog.TcpLogServersOptions | string,
    more?: tcplog.TcpLogMoreOptions,
  ): Promise<{ mw: tcplog.Middleware; http: Listening; errors: Error[] }> {
    const errors: Error[] = [];
    const onError = (err: Error): void => void errors.push(err);
    // `more` goes with a connection string only, as the factory takes it.
    const mw = typeof options === 'string' ? tcplog(options, { ...more, onError }) : tcplog({ ...options, onError });
    middlewares.push(mw);
    const app = express();
    app.use(mw);
    app.get('/', (_req, res) => {
      res.send('ok');
    });
    const http = await listen(app);
    cleanup.push(() => http.close());
    return { mw, http, errors };
  }

  it('a certificate from the configured CA is accepted and records arrive', async () => {
    const receiver = await tlsReceiver();
    const { mw, http } = await appLoggingWith({ host: 'localhost', port: receiver.port, tls: { ca } });
    await request(http.port, '/?secure');
    await receiver.waitForLines(1);
    assert.equal(receiver.records()[0]?.['request'].uri, '/?secure');
    await until(() => mw.stats().sent === 1);
    assert.equal(mw.stats().errors, 0);
  });

  it('the tls:// connection string with an IP address checks the IP against the certificate', async () => {
    const receiver = await tlsReceiver();
    const { http } = await appLoggingWith(`tls://127.0.0.1:${receiver.port}`, { tls: { ca } });
    await request(http.port, '/');
    await receiver.waitForLines(1);
  });

  it('an unknown CA is refused, reported and counted; nothing is sent', async () => {
    const receiver = await tlsReceiver({ key: pem('stranger-key.pem'), cert: pem('stranger-cert.pem') });
    const { mw, http, errors } = await appLoggingWith({
      host: 'localhost',
      port: receiver.port,
      tls: { ca },
      timeout: 500,
    });
    await request(http.port, '/');
    await until(() => errors.length > 0);
    assert.match(
      String((errors[0] as Code).code),
      /UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED|UNABLE_TO_GET_ISSUER_CERT/,
    );
    assert.ok(mw.stats().errors >= 1);
    assert.equal(mw.stats().sent, 0);
    assert.equal(mw.stats().buffered, 1);
    assert.equal(receiver.lines.length, 0);
  });

  it('tls: true verifies against the system CAs: a private CA is refused', async () => {
    const receiver = await tlsReceiver();
    const { mw, http, errors } = await appLoggingWith({
      host: 'localhost',
      port: receiver.port,
      tls: true,
      timeout: 500,
    });
    await request(http.port, '/');
    await until(() => errors.length > 0);
    assert.equal(mw.stats().sent, 0);
    assert.equal(receiver.lines.length, 0);
  });

  it('a certificate for another host name is refused (tlsServername checked)', async () => {
    const receiver = await tlsReceiver();
    const { mw, http, errors } = await appLoggingWith({
      host: '127.0.0.1',
      port: receiver.port,
      tls: { ca },
      tlsServername: 'wrong.example',
      timeout: 500,
    });
    await request(http.port, '/');
    await until(() => errors.length > 0);
    assert.equal((errors[0] as Code).code, 'ERR_TLS_CERT_ALTNAME_INVALID');
    assert.equal(mw.stats().sent, 0);
  });

  it('tlsServername is sent as SNI and checked', async () => {
    const names: Array<string | false> = [];
    const receiver = await tlsReceiver({
      ...serverTls,
      SNICallback(name, done) {
        names.push(name);
        done(null, undefined);
      },
    });
    const { http } = await appLoggingWith({
      host: '127.0.0.1',
      port: receiver.port,
      tls: { ca },
      tlsServername: 'logs.test',
    });
    await request(http.port, '/');
    await receiver.waitForLines(1);
    assert.deepEqual(names, ['logs.test']);
  });

  it('mutual TLS: a client certificate is presented and required', async () => {
    const receiver = await tlsReceiver({ ...serverTls, ca, requestCert: true, rejectUnauthorized: true });
    const withCert = await appLoggingWith({
      host: 'localhost',
      port: receiver.port,
      tls: { ca, key: pem('client-key.pem'), cert: pem('client-cert.pem') },
    });
    await request(withCert.http.port, '/?with-cert');
    await receiver.waitForLines(1);
    assert.equal(receiver.records()[0]?.['request'].uri, '/?with-cert');

    const withoutCert = await appLoggingWith({ host: 'localhost', port: receiver.port, tls: { ca }, timeout: 500 });
    await request(withoutCert.http.port, '/?without-cert');
    // Both sides hear of the refusal, in no fixed order.
    await until(() => withoutCert.errors.length > 0 && receiver.tlsErrors.length > 0);
    assert.equal(receiver.lines.length, 1, 'nothing from the client without a certificate');
    // TLS 1.3: the server refuses the certificate only after the client's handshake is done. The
    // record must not be written before that, where the kernel would take it and it would be lost.
    const stats = withoutCert.mw.stats();
    assert.equal(stats.sent, 0, JSON.stringify(stats));
    assert.equal(stats.buffered, 1, 'kept for a connection that works');
    assert.equal(stats.connects, 0, 'a refused connection is not one that was made');
    assert.equal((withoutCert.errors[0] as Code).code, 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED');
  });

  it('mutual TLS with a client certificate the server does not trust: refused, reported and counted', async () => {
    // Over TLS 1.3 Node's server closes such a connection with no alert, during the client's wait
    // for its ticket: the client sees only a close, which it reports as ECLOSED.
    const receiver = await tlsReceiver({ ...serverTls, ca, requestCert: true, rejectUnauthorized: true });
    const { mw, http, errors } = await appLoggingWith({
      host: 'localhost',
      port: receiver.port,
      tls: { ca, key: pem('stranger-key.pem'), cert: pem('stranger-cert.pem') },
      timeout: 2_000,
    });
    await request(http.port, '/?untrusted-cert');
    await until(() => errors.length > 0, WAIT_MS, 'the refusal reported');
    const stats = mw.stats();
    assert.ok(stats.errors >= 1, JSON.stringify(stats));
    assert.deepEqual([stats.sent, stats.buffered, stats.connects], [0, 1, 0], JSON.stringify(stats));
    assert.equal(receiver.lines.length, 0);
    assert.equal((errors[0] as Code).code, 'ECLOSED', String(errors[0]));
  });

  it('a server refusing the client certificate: the next server gets every record', async () => {
    const refusing = await tlsReceiver({ ...serverTls, ca, requestCert: true, rejectUnauthorized: true });
    const healthy = await tlsReceiver();
    const { mw, http, errors } = await appLoggingWith({
      servers: [
        { host: 'localhost', port: refusing.port },
        { host: 'localhost', port: healthy.port },
      ],
      tls: { ca },
    });
    for (let i = 0; i < 10; i++) await request(http.port, `/?n=${i}`);
    await healthy.waitForLines(10);
    assert.deepEqual(
      healthy.records().map((r) => r['request'].uri),
      Array.from({ length: 10 }, (_, i) => `/?n=${i}`),
    );
    assert.equal(refusing.lines.length, 0);
    assert.equal(refusing.tlsErrors.length, 1, 'refused once, then the next server');
    assert.equal(errors.length, 1);
    await until(() => mw.stats().sent === 10);
  });
});
