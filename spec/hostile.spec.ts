/**
 * Hostile requests, sent as raw bytes: each must give exactly one valid JSON line, touch no
 * prototype and leave the app serving.
 */
import assert from 'node:assert/strict';
import { EventEmitter, once } from 'node:events';
import net from 'node:net';
import { after, afterEach, before, describe, it } from 'node:test';
import express from 'express';
import tcplog = require('../lib/index.js');
import { LineServer, invariant, listen, rawExchange, startLineServer, type Listening } from './helpers.js';

type Json = Record<string, any>;

describe('hostile requests', () => {
  let receiver: LineServer;
  let http: Listening;
  let mw: tcplog.Middleware;

  before(async () => {
    receiver = await startLineServer();
    mw = tcplog({ host: '127.0.0.1', port: receiver.port, redact: false });
    const app = express();
    app.use(mw);
    app.use((_req, res) => {
      res.send('ok');
    });
    http = await listen(app, { maxHeaderSize: 256 * 1024 });
  });

  afterEach(() => {
    assert.ok(invariant(mw.stats()));
    assert.equal(({} as Json)['polluted'], undefined, 'Object.prototype untouched');
    assert.equal(Object.prototype.hasOwnProperty.call(Object.prototype, 'polluted'), false);
  });

  after(async () => {
    await http.close();
    await mw.close();
    await receiver.close();
  });

  /** Sends one raw request, then returns the one new record (and checks it is exactly one line). */
  async function send(head: string | Buffer): Promise<Json> {
    const before = receiver.lines.length;
    const reply = await rawExchange(http.port, head, () => false);
    assert.match(reply.toString('latin1'), /^HTTP\/1\.1 200/, 'the app still answered');
    await receiver.waitForLines(before + 1);
    // Let anything the same record might have split into arrive before counting lines.
    await new Promise<void>((resolve) => setImmediate(resolve));
    const text = Buffer.concat(receiver.received).toString('utf8');
    assert.ok(text.endsWith('\r\n'), 'every record is complete');
    assert.equal(receiver.lines.length, before + 1, 'exactly one line for one request');
    const line = receiver.lines[before] ?? '';
    assert.ok(line.endsWith('\r') && !line.slice(0, -1).includes('\r'), 'no raw CR inside the record');
    return JSON.parse(line.slice(0, -1)) as Json;
  }

  it('percent-encoded CR/LF and U+2028 in the URL stay inside the record', async () => {
    const record = await send(
      'GET /a%0D%0Ab?x=1%0D%0A%7B%22injected%22%3Atrue%7D&ls=%E2%80%A8 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n',
    );
    assert.equal(record['request'].uri, '/a%0D%0Ab?x=1%0D%0A%7B%22injected%22%3Atrue%7D&ls=%E2%80%A8');
    assert.equal(record['request'].querystring.x, '1\r\n{"injected":true}');
    assert.equal(record['request'].querystring.ls, '\u2028');
  });

  it('invalid UTF-8 bytes in a header value give valid JSON; valid UTF-8 is decoded', async () => {
    const head = Buffer.concat([
      Buffer.from('GET /utf8 HTTP/1.1\r\nHost: h\r\nX-Bad: '),
      Buffer.from([0xff, 0xfe, 0xc3, 0x28, 0x80]),
      Buffer.from('\r\nX-Good: caf'),
      Buffer.from([0xc3, 0xa9]),
      Buffer.from('\r\nX-Sep: a'),
      Buffer.from([0xe2, 0x80, 0xa8]),
      Buffer.from('b\r\nConnection: close\r\n\r\n'),
    ]);
    const record = await send(head);
    assert.equal(record['request'].headers['x-bad'], '\u00ff\u00fe\u00c3(\u0080', 'one character per byte');
    assert.equal(record['request'].headers['x-good'], 'café');
    assert.equal(record['request'].headers['x-sep'], 'a\u2028b');
    assert.equal(record['request'].size, head.length);
  });

  it('__proto__, constructor and prototype as query keys and header names are plain keys', async () => {
    const record = await send(
      'GET /p?__proto__[polluted]=1&__proto__=x&constructor=y&prototype=z&constructor[prototype][polluted]=2 HTTP/1.1\r\n' +
        'Host: h\r\n__proto__: {"polluted":true}\r\nconstructor: c\r\nConnection: close\r\n\r\n',
    );
    assert.deepEqual(record['request'].querystring, {
      '__proto__[polluted]': '1',
      ['__proto__']: 'x',
      constructor: 'y',
      prototype: 'z',
      'constructor[prototype][polluted]': '2',
    });
    assert.equal(record['request'].headers['__proto__'], '{"polluted":true}');
    assert.equal(record['request'].headers['constructor'], 'c');
  });

  it('a 12 KiB header', async () => {
    const big = 'v'.repeat(12 * 1024);
    const record = await send(`GET /big HTTP/1.1\r\nHost: h\r\nX-Big: ${big}\r\nConnection: close\r\n\r\n`);
    assert.equal(record['request'].headers['x-big'], big);
  });

  it('64 KiB of headers in 1 000 header lines, some repeated', async () => {
    let headers = '';
    for (let i = 0; i < 1000; i++) headers += `X-H${i % 500}: ${'w'.repeat(56)}\r\n`;
    const head = `GET /many HTTP/1.1\r\nHost: h\r\n${headers}Connection: close\r\n\r\n`;
    assert.ok(head.length > 64 * 1024);
    const record = await send(head);
    assert.equal(Object.keys(record['request'].headers).length, 502);
    assert.equal(record['request'].headers['x-h7'].length, 2);
    assert.equal(record['request'].size, head.length);
  });

  it('10 000 query parameters in a 16 KiB+ URL', async () => {
    const params = Array.from({ length: 10_000 }, (_, i) => `k${i % 2500}=${i}`).join('&');
    const url = `/q?${params}`;
    assert.ok(url.length > 16 * 1024);
    const record = await send(`GET ${url} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n`);
    assert.equal(Object.keys(record['request'].querystring).length, 2500);
    assert.deepEqual(record['request'].querystring.k0, ['0', '2500', '5000', '7500']);
    assert.equal(record['request'].uri, url);
  });

  it('malformed percent escapes and odd separators are logged as sent', async () => {
    const record = await send('GET /m?a=%zz&b=%E2%82&&=v&c==d&%ZZ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n');
    assert.deepEqual(record['request'].querystring, { a: '%zz', b: '%E2%82', '': 'v', c: '=d', '%ZZ': true });
  });

  it('a Host header full of quotes and backslashes', async () => {
    const record = await send('GET /h HTTP/1.1\r\nHost: "\\evil\\"\r\nConnection: close\r\n\r\n');
    assert.equal(record['request'].headers.host, '"\\evil\\"');
    assert.equal(record['request'].request_uri, 'http://"\\evil\\"/h');
  });
});

describe('the same bytes are logged the same way in every field', () => {
  let receiver: LineServer;
  let http: Listening;
  let mw: tcplog.Middleware;
  /** Requests to /gone, once the app has them: the client then leaves. */
  const gone = new EventEmitter();

  before(async () => {
    receiver = await startLineServer();
    mw = tcplog({ host: '127.0.0.1', port: receiver.port });
    const app = express();
    app.use(mw);
    app.get('/nbsp', (_req, res) => {
      // U+00A0 is the byte 0xA0 of a head written as latin1: a value, not space around it. The
      // second is the UTF-8 of "café" and a no-break space, ending in that byte.
      res.setHeader('x-nbsp', '\u00a0v\u00a0');
      res.setHeader('x-utf8', Buffer.from('café\u00a0').toString('latin1'));
      res.setHeader('x-spaced', ' \tv\t ');
      res.end(Buffer.from('ok'));
    });
    app.get('/gone', () => {
      // Never answered: the record is made when the connection closes.
      gone.emit('request');
    });
    app.use((_req, res) => {
      res.send('ok');
    });
    http = await listen(app);
  });

  after(async () => {
    assert.ok(invariant(mw.stats()));
    await http.close();
    await mw.close();
    await receiver.close();
  });

  async function send(head: string | Buffer): Promise<Json> {
    const before = receiver.lines.length;
    await rawExchange(http.port, head, () => false);
    await receiver.waitForLines(before + 1);
    return receiver.records()[before] as Json;
  }

  it('response header values keep a no-break space at either end; spaces and tabs are trimmed', async () => {
    const record = await send('GET /nbsp HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n');
    assert.equal(record['response'].headers['x-nbsp'], '\u00a0v\u00a0');
    assert.equal(record['response'].headers['x-utf8'], 'café\u00a0', 'decoded as UTF-8, the last byte kept');
    assert.equal(record['response'].headers['x-spaced'], 'v');
  });

  it('request.id decodes each repeat of x-request-id on its own, as request.headers does', async () => {
    const record = await send(
      Buffer.concat([
        Buffer.from('GET /id HTTP/1.1\r\nHost: h\r\nX-Request-Id: '),
        Buffer.from([0xc3, 0xa9]),
        Buffer.from('\r\nX-Request-Id: '),
        Buffer.from([0xff]),
        Buffer.from('\r\nConnection: close\r\n\r\n'),
      ]),
    );
    assert.deepEqual(record['request'].headers['x-request-id'], ['é', 'ÿ']);
    assert.equal(record['request'].id, 'é, ÿ');
  });

  it('request_uri decodes the Host header as request.headers.host does', async () => {
    const record = await send(
      Buffer.concat([
        Buffer.from('GET /p?q=1 HTTP/1.1\r\nHost: b'),
        Buffer.from([0xc3, 0xbc]),
        Buffer.from('cher.test\r\nConnection: close\r\n\r\n'),
      ]),
    );
    assert.equal(record['request'].headers.host, 'bücher.test');
    assert.equal(record['request'].request_uri, 'http://bücher.test/p?q=1');
  });

  it('without a Host header, request_uri names the server end even when the client is gone', async () => {
    const before = receiver.lines.length;
    const socket = net.connect(http.port, '127.0.0.1');
    socket.on('error', () => undefined);
    socket.write('GET /gone HTTP/1.0\r\n\r\n');
    await once(gone, 'request');
    socket.destroy();
    await receiver.waitForLines(before + 1);
    const record = receiver.records()[before] as Json;
    assert.equal(record['request'].uri, '/gone');
    assert.equal(record['request'].request_uri, `http://127.0.0.1:${http.port}/gone`);
    assert.equal(record['response'].status, undefined, 'no head went out');
  });
});
