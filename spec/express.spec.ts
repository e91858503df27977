/**
 * Every record field, end to end: a real Express 5 app, raw HTTP on real sockets, a real TCP
 * receiver. Sizes are checked against the exact bytes that crossed the wire.
 */
import assert from 'node:assert/strict';
import { EventEmitter, once } from 'node:events';
import net from 'node:net';
import { Readable } from 'node:stream';
import { after, afterEach, before, describe, it } from 'node:test';
import express from 'express';
import tcplog = require('../lib/index.js');
import {
  LineServer,
  invariant,
  listen,
  rawExchange,
  request,
  startLineServer,
  until,
  waitFor,
  type Listening,
} from './helpers.js';

type Json = Record<string, any>;

/** Closes what a describe opened once its tests are done, in order: servers, logger, receiver. */
function closeAfter(things: () => ReadonlyArray<{ close(): Promise<void> }>): void {
  after(async () => {
    for (const thing of things()) await thing.close();
  });
}

/** The accounting invariant, checked after every test of a describe. */
function invariantAfterEach(logger: () => tcplog.Middleware): void {
  afterEach(() => {
    const stats = logger().stats();
    assert.ok(invariant(stats), JSON.stringify(stats));
  });
}

describe('record fields over a real Express 5 app', () => {
  let receiver: LineServer;
  let http: Listening;
  let mw: tcplog.Middleware;
  const arrivals = new EventEmitter();

  before(async () => {
    receiver = await startLineServer();
    mw = tcplog({ host: '127.0.0.1', port: receiver.port, api: { name: 'demo' } });
    const app = express();
    app.use(mw);
    app.get('/get', (req, res) => {
      res.json({ ok: true });
    });
    app.post('/echo', express.text({ type: '*/*' }), (req, res) => {
      res.type('text/plain').send(`got ${String(req.body).length}`);
    });
    app.all('/head', (_req, res) => {
      res.type('text/plain').send('a body a HEAD must not carry');
    });
    app.get('/empty', (_req, res) => {
      res.status(204).end();
    });
    app.get('/cached', (_req, res) => {
      res.set('ETag', '"v1"').type('text/plain').send('cacheable');
    });
    app.get('/stream', (_req, res) => {
      res.type('text/plain');
      let n = 0;
      const timer = setInterval(() => {
        res.write(`chunk ${n}\n`);
        if (++n === 5) {
          clearInterval(timer);
          res.end('done\n');
        }
      }, 2);
    });
    app.get('/slow', (_req, res) => {
      setTimeout(() => res.send('slow'), 300);
    });
    app.get('/head-then-wait', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('head and a first part\n');
      setTimeout(() => res.end('the rest\n'), 300);
    });
    app.get('/hang-after-head', (req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first part\n');
      req.socket.on('close', function stopHanging() {
        res.destroy();
      });
    });
    app.get('/hang', () => {
      // Never answers: the client gives up.
      arrivals.emit('hang');
    });
    const users = express.Router();
    // The same instance again at router level: one record per request, the router's mount kept.
    users.use(mw);
    users.get('/:id', (req, res) => {
      res.json({ id: req.params['id'] });
    });
    users.post('/', express.json(), (_req, res) => {
      res.status(201).end();
    });
    app.use('/users', users);
    app.use(function answerErrors(
      err: Error & { status?: number },
      _req: express.Request,
      res: express.Response,
      _next: express.NextFunction,
    ) {
      res.status(err.status ?? 500).send(err.message);
    });
    http = await listen(app);
  });

  invariantAfterEach(() => mw);

  closeAfter(() => [http, mw, receiver]);

  const claimed = new Set<number>();
  /** Waits for the next unclaimed record whose request.uri is `uri`, so one failure cannot shift the rest. */
  async function nextRecord(uri: string): Promise<Json> {
    for (;;) {
      for (let i = 0; i < receiver.lines.length; i++) {
        if (claimed.has(i)) continue;
        const line = receiver.lines[i] ?? '';
        const record = JSON.parse(line.replace(/\r$/, '')) as Json;
        if (record['request']?.uri !== uri) continue;
        claimed.add(i);
        assert.ok(line.endsWith('\r'), 'each record ends with \\r\\n');
        return record;
      }
      await receiver.waitForLines(receiver.lines.length + 1);
    }
  }

  /** One raw request on its own connection: the exact bytes both ways. */
  async function raw(text: string): Promise<{ sent: number; received: Buffer }> {
    const received = await rawExchange(http.port, text, () => false);
    return { sent: Buffer.byteLength(text), received };
  }

  it('GET with a query string: every field, sizes exact to the byte', async () => {
    const text =
      'GET /get?foo=bar&foo=baz&flag&empty=&sp=a+b%20c HTTP/1.1\r\n' +
      'Host: example.com:8000\r\nUser-Agent: curl/7.37.1\r\nAccept: */*\r\n' +
      'Authorization: Bearer secret\r\nX-Twice: 1\r\nX-Twice: 2\r\nConnection: close\r\n\r\n';
    const { sent, received } = await raw(text);
    const record = await nextRecord('/get?foo=bar&foo=baz&flag&empty=&sp=a+b%20c');
    assert.deepEqual(Object.keys(record), [
      'request',
      'response',
      'latencies',
      'api',
      'route',
      'started_at',
      'client_ip',
    ]);
    assert.deepEqual(record['route'], { path: '/get', base_url: '' });
    assert.equal(record['request'].method, 'GET');
    assert.equal(record['request'].uri, '/get?foo=bar&foo=baz&flag&empty=&sp=a+b%20c');
    assert.equal(record['request'].request_uri, 'http://example.com:8000/get?foo=bar&foo=baz&flag&empty=&sp=a+b%20c');
    assert.equal(record['request'].size, sent);
    assert.deepEqual(record['request'].querystring, { foo: ['bar', 'baz'], flag: true, empty: '', sp: 'a b c' });
    assert.deepEqual(record['request'].headers, {
      host: 'example.com:8000',
      'user-agent': 'curl/7.37.1',
      accept: '*/*',
      authorization: 'REDACTED',
      'x-twice': ['1', '2'],
      connection: 'close',
    });
    assert.equal(record['response'].status, 200);
    assert.equal(record['response'].size, received.length);
    const headers = record['response'].headers as Json;
    assert.equal(headers['content-type'], 'application/json; charset=utf-8');
    assert.equal(headers['content-length'], '11');
    assert.equal(headers['connection'], 'close');
    assert.equal(typeof headers['date'], 'string', 'headers Node adds itself are logged too');
    assert.deepEqual(record['api'], { name: 'demo' });
    assert.equal(record['client_ip'], '127.0.0.1');
    assert.ok(Number.isInteger(record['started_at']) && Math.abs(record['started_at'] - Date.now()) < 60_000);
    assert.ok(record['latencies'].request >= record['latencies'].proxy);
  });

  it('request_uri of an absolute-form request (as sent to a proxy) is its target, not the Host header', async () => {
    const target = 'http://other.test:81/get?abs=1';
    const { received } = await raw(`GET ${target} HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n`);
    assert.match(received.toString('latin1'), /^HTTP\/1\.1 200 /, 'Express routes it by its path');
    const record = await nextRecord(target);
    assert.equal(record['request'].request_uri, target);
    assert.deepEqual(record['request'].querystring, { abs: '1' });
  });

  it('POST with a body of known size counts request line, headers and body', async () => {
    const body = 'x'.repeat(1234);
    const text = `POST /echo HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`;
    const { sent, received } = await raw(text);
    assert.match(received.toString(), /got 1234/);
    const record = await nextRecord('/echo');
    assert.equal(record['request'].method, 'POST');
    assert.equal(record['request'].size, sent);
    assert.equal(record['response'].size, received.length);
    assert.deepEqual(record['request'].querystring, {});
  });

  it('chunked request bodies are counted as the app reads them', async () => {
    const text =
      'POST /echo HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n';
    const { received } = await raw(text);
    assert.match(received.toString(), /got 11/);
    const record = await nextRecord('/echo');
    const head = text.indexOf('\r\n\r\n') + 4;
    // Body bytes are the decoded payload (11); chunk framing is not counted.
    assert.equal(record['request'].size, head + 11);
  });

  it('HEAD: status and head size, no body', async () => {
    const { received } = await raw('HEAD /head HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n');
    const record = await nextRecord('/head');
    assert.equal(record['request'].method, 'HEAD');
    assert.equal(record['response'].status, 200);
    assert.equal(record['response'].size, received.length);
    assert.ok(received.toString().endsWith('\r\n\r\n'), 'no body went out');
  });

  it('204 No Content', async () => {
    const { received } = await raw('GET /empty HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n');
    const record = await nextRecord('/empty');
    assert.equal(record['response'].status, 204);
    assert.equal(record['response'].size, received.length);
  });

  it('304 Not Modified', async () => {
    const { received } = await raw(
      'GET /cached HTTP/1.1\r\nHost: h\r\nIf-None-Match: "v1"\r\nConnection: close\r\n\r\n',
    );
    const record = await nextRecord('/cached');
    assert.equal(record['response'].status, 304);
    assert.equal(record['response'].size, received.length);
    assert.match(received.toString(), /^HTTP\/1\.1 304/);
  });

  it('streamed, chunked responses are measured as sent, not from content-length', async () => {
    const { received } = await raw('GET /stream HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n');
    const record = await nextRecord('/stream');
    assert.equal(record['response'].headers['transfer-encoding'], 'chunked');
    assert.equal(record['response'].headers['content-length'], undefined);
    assert.equal(record['response'].size, received.length);
  });

  it('keep-alive: several requests on one socket, each sized on its own', async () => {
    const requests = ['/get?n=1', '/users/7', '/get?n=3'].map((path) => `GET ${path} HTTP/1.1\r\nHost: h\r\n\r\n`);
    const socket = net.connect(http.port, '127.0.0.1');
    await once(socket, 'connect');
    const reader = new ResponseReader(socket);
    const replies: Buffer[] = [];
    for (const text of requests) {
      socket.write(text);
      replies.push(await reader.next());
    }
    socket.end();
    for (let i = 0; i < requests.length; i++) {
      const record = await nextRecord(requests[i]?.split(' ')[1] ?? '');
      assert.equal(record['request'].size, Buffer.byteLength(requests[i] ?? ''));
      assert.equal(record['response'].size, replies[i]?.length);
    }
  });

  it('pipelining: requests written at once are still sized one by one', async () => {
    const { requests, replies } = await pipelined(http.port, ['/get?p=1', '/users/8', '/get?p=3']);
    for (let i = 0; i < requests.length; i++) {
      const record = await nextRecord(requests[i]?.split(' ')[1] ?? '');
      assert.equal(record['request'].uri, requests[i]?.split(' ')[1]);
      assert.equal(record['request'].size, Buffer.byteLength(requests[i] ?? ''));
      assert.equal(record['response'].size, replies[i]?.length);
    }
  });

  it("Kong's latency checks on a route that waits 300 ms", async () => {
    await request(http.port, '/slow');
    const record = await nextRecord('/slow');
    const { request: total, proxy } = record['latencies'] as { request: number; proxy: number };
    assert.ok(proxy < 3000, `proxy ${proxy} < 3000`);
    assert.ok(proxy >= 250, `proxy ${proxy} covers the route's wait`);
    assert.ok(total + 1 >= proxy, `request ${total} + 1 >= proxy ${proxy}`);
  });

  it('latencies.proxy is when the head went out, not when the response ended', async () => {
    await request(http.port, '/head-then-wait');
    const record = await nextRecord('/head-then-wait');
    const { request: total, proxy } = record['latencies'] as { request: number; proxy: number };
    assert.ok(total >= 250, `request ${total} covers the wait`);
    assert.ok(proxy < 150, `proxy ${proxy} is the head's time`);
  });

  it('route and base_url come from the matched Express route', async () => {
    await request(http.port, '/users/42');
    const record = await nextRecord('/users/42');
    assert.deepEqual(record['route'], { path: '/:id', base_url: '/users' });
  });

  it("route keeps the router's mount path when an error leaves a router that has an instance", async () => {
    const reply = await request(http.port, '/users', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{not json',
    });
    assert.equal(reply.status, 400);
    const record = await nextRecord('/users');
    assert.equal(record['response'].status, 400);
    assert.deepEqual(record['route'], { path: '/', base_url: '/users' });
  });

  it('a client that aborts mid-response is logged with the status and bytes actually sent', async () => {
    const socket = net.connect(http.port, '127.0.0.1');
    await once(socket, 'connect');
    socket.write('GET /hang-after-head HTTP/1.1\r\nHost: h\r\n\r\n');
    const [first] = (await once(socket, 'data')) as [Buffer];
    assert.match(first.toString(), /first part/);
    socket.destroy();
    const record = await nextRecord('/hang-after-head');
    assert.equal(record['request'].uri, '/hang-after-head');
    assert.equal(record['response'].status, 200);
    assert.ok(record['response'].size >= first.length, 'bytes written so far');
    assert.equal(typeof record['latencies'].proxy, 'number');
  });

  it('a client that aborts before any response is logged without a status', async () => {
    const socket = net.connect(http.port, '127.0.0.1');
    await once(socket, 'connect');
    const arrived = once(arrivals, 'hang');
    socket.write('GET /hang HTTP/1.1\r\nHost: h\r\n\r\n');
    await arrived;
    socket.destroy();
    const record = await nextRecord('/hang');
    assert.equal(record['request'].uri, '/hang');
    assert.equal(record['response'].status, undefined, 'res.statusCode is 200 by default; no head went out');
    assert.equal(record['response'].size, 0);
    assert.deepEqual(record['response'].headers, {});
    assert.equal(record['latencies'].proxy, undefined);
  });

  it('pipelined requests still waiting when the client goes away are each logged once', async () => {
    const socket = net.connect(http.port, '127.0.0.1');
    await once(socket, 'connect');
    const bothArrived = new Promise<void>((resolve) => {
      let seen = 0;
      arrivals.on('hang', function count() {
        if (++seen === 2) {
          arrivals.off('hang', count);
          resolve();
        }
      });
    });
    // The second waits behind the first, whose response never comes.
    socket.write('GET /hang?pipelined=1 HTTP/1.1\r\nHost: h\r\n\r\nGET /hang?pipelined=2 HTTP/1.1\r\nHost: h\r\n\r\n');
    await bothArrived;
    socket.destroy();
    for (const uri of ['/hang?pipelined=1', '/hang?pipelined=2']) {
      const record = await nextRecord(uri);
      assert.equal(record['response'].status, undefined);
    }
    // Records keep their order: once this one is in, a duplicate of the two would be too.
    assert.equal((await request(http.port, '/get?after=pipelined-abort')).status, 200);
    await nextRecord('/get?after=pipelined-abort');
    const uris = receiver.records().map((r) => r['request']?.uri as string);
    assert.equal(uris.filter((uri) => uri.startsWith('/hang?pipelined=')).length, 2);
  });
});

/** GETs of `paths`, written at once on one connection; the replies, in order. */
async function pipelined(port: number, paths: readonly string[]): Promise<{ requests: string[]; replies: Buffer[] }> {
  const requests = paths.map((path) => `GET ${path} HTTP/1.1\r\nHost: h\r\n\r\n`);
  const socket = net.connect(port, '127.0.0.1');
  await once(socket, 'connect');
  const reader = new ResponseReader(socket);
  socket.write(requests.join(''));
  const replies: Buffer[] = [];
  for (let i = 0; i < requests.length; i++) replies.push(await reader.next());
  socket.end();
  return { requests, replies };
}

/** Splits Content-Length responses off a keep-alive socket, one at a time, in order. */
class ResponseReader {
  #buffered = Buffer.alloc(0);
  #waiting: Array<(reply: Buffer) => void> = [];

  constructor(socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.#buffered = Buffer.concat([this.#buffered, chunk]);
      this.#drain();
    });
  }

  next(): Promise<Buffer> {
    return new Promise((resolve) => {
      this.#waiting.push(resolve);
      this.#drain();
    });
  }

  #drain(): void {
    while (this.#waiting.length > 0) {
      const headEnd = this.#buffered.indexOf('\r\n\r\n');
      if (headEnd === -1) return;
      const head = this.#buffered.subarray(0, headEnd).toString('latin1');
      const total = headEnd + 4 + Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
      if (this.#buffered.length < total) return;
      const reply = this.#buffered.subarray(0, total);
      this.#buffered = this.#buffered.subarray(total);
      this.#waiting.shift()?.(reply);
    }
  }
}

describe('the head time when something else wraps res.writeHead', () => {
  let receiver: LineServer;
  let http: Listening;
  let mw: tcplog.Middleware;
  const wrapperCalls: string[] = [];

  before(async () => {
    receiver = await startLineServer();
    mw = tcplog({ host: '127.0.0.1', port: receiver.port });
    const app = express();
    /** A middleware that wraps each response's writeHead as an own property, as on-headers does. */
    const wrapWriteHead =
      (label: string): express.RequestHandler =>
      (req, res, next) => {
        // eslint-disable-next-line @typescript-eslint/unbound-method -- applied to the response below
        const original = res.writeHead;
        res.writeHead = function wrapped(this: typeof res, ...args: unknown[]) {
          wrapperCalls.push(`${label} ${req.url}`);
          return Reflect.apply(original, this, args) as typeof res;
        } as typeof res.writeHead;
        next();
      };
    app.use(wrapWriteHead('before'));
    app.use(mw);
    app.use(wrapWriteHead('after'));
    app.get('/head-then-wait', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('head\n');
      setTimeout(() => res.end('rest\n'), 300);
    });
    http = await listen(app);
  });

  closeAfter(() => [http, mw, receiver]);

  it('times the head once, and every wrapper still runs once, in order', async () => {
    const reply = await request(http.port, '/head-then-wait');
    assert.equal(reply.status, 200);
    assert.equal(reply.body.toString(), 'head\nrest\n');
    await receiver.waitForLines(1);
    const record = JSON.parse(receiver.lines[0] ?? '') as Json;
    assert.ok(record['latencies'].request >= 250, JSON.stringify(record['latencies']));
    assert.ok(record['latencies'].proxy < 150, JSON.stringify(record['latencies']));
    assert.deepEqual(wrapperCalls, ['after /head-then-wait', 'before /head-then-wait']);
    assert.ok(invariant(mw.stats()));
  });
});

describe("when the app's own 'finish' listeners come before the logger (morgan, on-finished)", () => {
  let receiver: LineServer;
  let http: Listening;
  let mw: tcplog.Middleware;
  const finished: string[] = [];

  before(async () => {
    receiver = await startLineServer();
    mw = tcplog({ host: '127.0.0.1', port: receiver.port });
    const app = express();
    app.use((req, res, next) => {
      res.on('finish', () => finished.push(req.url));
      next();
    });
    app.use(mw);
    app.get('/early/:n', (req, res) => {
      res.type('text/plain').send(`reply ${req.params['n']}`.repeat(Number(req.params['n'])));
    });
    http = await listen(app);
  });

  closeAfter(() => [http, mw, receiver]);

  it('each response is still logged once, sized on its own, over keep-alive', async () => {
    const paths = ['/early/1', '/early/5', '/early/2'];
    const socket = net.connect(http.port, '127.0.0.1');
    await once(socket, 'connect');
    const reader = new ResponseReader(socket);
    const replies: Buffer[] = [];
    for (const path of paths) {
      socket.write(`GET ${path} HTTP/1.1\r\nHost: h\r\n\r\n`);
      replies.push(await reader.next());
    }
    socket.end();
    await receiver.waitForLines(paths.length);
    const records = receiver.records();
    assert.deepEqual(
      records.map((r) => r['request'].uri),
      paths,
    );
    assert.deepEqual(
      records.map((r) => r['response'].size),
      replies.map((reply) => reply.length),
    );
    assert.deepEqual(finished, paths, "the app's listeners ran as before");
    assert.ok(invariant(mw.stats()));
  });
});

describe('the request as the client sent it, whatever the app changes before the logger', () => {
  let receiver: LineServer;
  let http: Listening;
  let mw: tcplog.Middleware;

  before(async () => {
    receiver = await startLineServer();
    mw = tcplog({ host: '127.0.0.1', port: receiver.port });
    const app = express();
    // As method-override and request-id middleware do.
    app.use((req, _res, next) => {
      const override = req.headers['x-http-method-override'];
      if (typeof override === 'string') req.method = override;
      req.headers['x-request-id'] = 'made-by-the-app';
      req.headers.host = 'made-by-the-app.example';
      // In place, in the array Node made: a header added, one renamed, one not even a string.
      req.rawHeaders.push('X-Added-By-The-App', 'yes', 'X-Number', 7 as unknown as string);
      const at = req.rawHeaders.indexOf('Authorization');
      if (at !== -1) req.rawHeaders[at] = 'X-Was-Authorization';
      next();
    });
    app.use(mw);
    app.put('/things/:id', (_req, res) => {
      res.writeHead(201, { 'content-type': 'text/plain' });
      // Too late to change what was sent: the record keeps the head's status.
      res.statusCode = 500;
      res.end('made');
    });
    // Something in front of Express that rewrites the URL: Express's originalUrl is then not what
    // the client sent.
    http = await listen((req, res) => {
      req.url = `/things${req.url ?? ''}`;
      app(req, res);
    });
  });

  closeAfter(() => [http, mw, receiver]);

  it('method, uri, host and request id as received; the status the head carried', async () => {
    const text =
      'POST /7?x=1 HTTP/1.1\r\nHost: client.example\r\nX-HTTP-Method-Override: PUT\r\n' +
      'X-Request-Id: first\r\nX-Request-Id: second\r\nAuthorization: Bearer secret\r\n' +
      'Content-Length: 0\r\nConnection: close\r\n\r\n';
    const received = await rawExchange(http.port, text, () => false);
    assert.match(received.toString(), /^HTTP\/1\.1 201 /);
    await receiver.waitForLines(1);
    const [record] = receiver.records();
    assert.equal(record?.['request'].method, 'POST');
    assert.equal(record?.['request'].uri, '/7?x=1');
    assert.equal(record?.['request'].request_uri, 'http://client.example/7?x=1');
    assert.equal(record?.['request'].id, 'first, second', 'repeats joined as req.headers joins them');
    assert.deepEqual(record?.['request'].headers['x-request-id'], ['first', 'second']);
    assert.deepEqual(Object.keys(record?.['request'].headers as object), [
      'host',
      'x-http-method-override',
      'x-request-id',
      'authorization',
      'content-length',
      'connection',
    ]);
    assert.equal(record?.['request'].headers['authorization'], 'REDACTED');
    assert.equal(record?.['request'].size, Buffer.byteLength(text));
    assert.equal(record?.['response'].status, 201);
    assert.equal(record?.['response'].size, received.length);
    assert.deepEqual(record?.['route'], { path: '/things/:id', base_url: '' });
  });
});

describe('requests no middleware takes', () => {
  let receiver: LineServer;
  let logged: Listening;
  let other: Listening;
  let mw: tcplog.Middleware;
  const pushLeftOn: boolean[] = [];

  before(async () => {
    receiver = await startLineServer();
    mw = tcplog({ host: '127.0.0.1', port: receiver.port });
    const app = express();
    const api = express.Router();
    api.use(mw);
    api.get('/ok', (_req, res) => {
      res.send('logged');
    });
    // Early hints before the router's logger, which runs once they are out: bytes of the
    // response that go out before it runs.
    app.use('/api/hints', (_req, res, next) => {
      res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' }, () => next());
    });
    api.get('/hints', (_req, res) => {
      res.send('with hints');
    });
    app.use('/api', api);
    app.get('/elsewhere', (_req, res) => {
      res.send('not logged');
    });
    logged = await listen(app);
    // Another server in the same process, with no middleware at all.
    other = await listen((req, res) => {
      req.resume();
      req.on('end', () => {
        res.on('finish', () => setImmediate(() => pushLeftOn.push(req.push !== Readable.prototype.push)));
        res.end('bare');
      });
    });
  });

  closeAfter(() => [logged, other, mw, receiver]);

  it('are not logged, and keep nothing of the logger once they finish', async () => {
    assert.equal((await request(other.port, '/bare', { method: 'POST', body: 'a body' })).status, 200);
    assert.equal((await request(logged.port, '/elsewhere', { method: 'POST', body: 'x' })).status, 404);
    assert.equal((await request(logged.port, '/elsewhere')).status, 200);
    assert.equal((await request(logged.port, '/api/ok')).status, 200);
    await receiver.waitForLines(1);
    await until(() => pushLeftOn.length === 1);
    assert.deepEqual(
      receiver.records().map((r) => r['request'].uri),
      ['/api/ok'],
    );
    assert.deepEqual(pushLeftOn, [false], "the body counter is taken off the other server's request");
    assert.equal(mw.stats().records, 1);
  });

  it('pipelined behind one it does not log, a response with early hints is sized with them', async () => {
    const socket = net.connect(logged.port, '127.0.0.1');
    await once(socket, 'connect');
    const chunks: Buffer[] = [];
    const received = new Promise<Buffer>((resolve) => {
      socket.on('data', (chunk: Buffer) => {
        chunks.push(chunk);
        const got = Buffer.concat(chunks);
        if (got.includes('with hints')) resolve(got);
      });
    });
    socket.write('GET /elsewhere?n=9 HTTP/1.1\r\nHost: h\r\n\r\nGET /api/hints HTTP/1.1\r\nHost: h\r\n\r\n');
    const reply = await received;
    socket.end();
    // The first response ends where the second (103, then 200) begins.
    const second = reply.indexOf('HTTP/1.1 103');
    assert.ok(second > 0 && reply.indexOf('not logged') < second, reply.toString('latin1'));
    await waitFor(receiver, 'line', () => receiver.records().some((r) => r['request'].uri === '/api/hints'));
    const record = receiver.records().find((r) => r['request'].uri === '/api/hints') as Json;
    assert.equal(record['response'].size, reply.length - second);
  });

  it('pipelined behind or between responses it does not log, a logged response is sized on its own', async () => {
    // At once: each logged request arrives while the response before it, not logged, is still to go.
    const { replies } = await pipelined(logged.port, [
      '/elsewhere?n=1',
      '/api/ok?n=2',
      '/elsewhere?n=3',
      '/api/ok?n=4',
    ]);
    const ours = (): Json[] => receiver.records().filter((r) => /^\/api\/ok\?n=[24]$/.test(r['request'].uri as string));
    await waitFor(receiver, 'line', () => ours().length === 2);
    const records = ours();
    assert.deepEqual(
      records.map((r) => [r['request'].uri, r['response'].size]),
      [
        ['/api/ok?n=2', replies[1]?.length],
        ['/api/ok?n=4', replies[3]?.length],
      ],
    );
  });
});

describe('a logger made while a connection is busy with a response made before it', () => {
  // The first request makes the logger (as an app that sets up logging lazily does) and answers
  // later; the next one, pipelined behind it, is logged: at once, or once the first has finished
  // (after early hints of its own, sent while it waited).
  for (const when of ['at once', 'after that response, with early hints'] as const) {
    it(`sizes the logged response queued behind that one on its own, reached ${when}`, async () => {
      const receiver = await startLineServer();
      const steps = new EventEmitter();
      let mw: tcplog.Middleware | null = null;
      const http = await listen((req, res) => {
        if (req.url === '/first') {
          mw = tcplog({ host: '127.0.0.1', port: receiver.port });
          res.on('finish', () => setImmediate(() => steps.emit('first finished')));
          steps.once('answer', () => res.end('a'.repeat(1000)));
          steps.emit('first');
          return;
        }
        const log = (): void =>
          (mw as tcplog.Middleware)(req, res, () => {
            res.end('second');
            steps.emit('second');
          });
        if (when === 'at once') {
          log();
        } else {
          res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
          steps.once('first finished', log);
          steps.emit('answer');
        }
      });
      try {
        const socket = net.connect(http.port, '127.0.0.1');
        await once(socket, 'connect');
        const chunks: Buffer[] = [];
        socket.on('data', (chunk: Buffer) => chunks.push(chunk));
        const first = once(steps, 'first');
        socket.write('GET /first HTTP/1.1\r\nHost: h\r\n\r\n');
        await first;
        const second = once(steps, 'second');
        socket.write('GET /second HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n');
        if (when === 'at once') {
          await second;
          steps.emit('answer');
        }
        await once(socket, 'close');
        const reply = Buffer.concat(chunks);
        const secondAt = reply.indexOf('HTTP/1.1', 1);
        assert.ok(secondAt > 1000, reply.toString('latin1').slice(0, 200));
        await receiver.waitForLines(1);
        const records = receiver.records();
        assert.deepEqual(
          records.map((r) => [r['request'].uri, r['response'].status, r['response'].size]),
          [['/second', 200, reply.length - secondAt]],
        );
      } finally {
        await http.close();
        await (mw as tcplog.Middleware | null)?.close();
        await receiver.close();
      }
    });
  }
});

describe('a logger replaced at run time (the old one closed, then a new one made)', () => {
  it('sizes a response on the same connection on its own, after one that finished in between', async () => {
    const receiver = await startLineServer();
    const steps = new EventEmitter();
    let current = tcplog({ host: '127.0.0.1', port: receiver.port });
    const http = await listen((req, res) => {
      if (req.url === '/first') {
        // Taken by the old logger; it finishes after that one is closed.
        current(req, res, () => {
          steps.once('answer', () => res.end('x'.repeat(1000)));
          steps.emit('first');
        });
        return;
      }
      // A slow middleware in front: the new logger is made meanwhile.
      steps.once('replaced', () => current(req, res, () => res.end('second')));
      steps.emit('second');
    });
    try {
      const socket = net.connect(http.port, '127.0.0.1');
      await once(socket, 'connect');
      let received = '';
      socket.setEncoding('latin1');
      socket.on('data', (chunk: string) => (received += chunk));
      const first = once(steps, 'first');
      socket.write('GET /first HTTP/1.1\r\nHost: h\r\n\r\n');
      await first;
      await current.close();
      steps.emit('answer');
      await until(() => received.includes('x'.repeat(1000)), 5_000, 'the first response');
      const second = once(steps, 'second');
      socket.write('GET /second HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n');
      await second;
      current = tcplog({ host: '127.0.0.1', port: receiver.port });
      steps.emit('replaced');
      await once(socket, 'close');
      const secondAt = received.indexOf('HTTP/1.1', 1);
      await receiver.waitForLines(1);
      assert.deepEqual(
        receiver.records().map((r) => [r['request'].uri, r['response'].size]),
        [['/second', received.length - secondAt]],
      );
    } finally {
      await http.close();
      await current.close();
      await receiver.close();
    }
  });
});

describe('request_uri without a Host header, on an IPv6 socket', () => {
  it("brackets the socket's own address, as a URL needs", async (t) => {
    const receiver = await startLineServer();
    const mw = tcplog({ host: '127.0.0.1', port: receiver.port });
    const app = express();
    app.use(mw);
    app.get('/v6', (_req, res) => {
      res.send('ok');
    });
    const server = app.listen(0, '::1');
    const failed = await Promise.race([
      once(server, 'listening').then(() => null),
      once(server, 'error').then(([err]) => err as Error),
    ]);
    try {
      if (failed !== null) {
        t.skip(`no IPv6 loopback here (${failed.message})`);
        return;
      }
      const { port } = server.address() as net.AddressInfo;
      const socket = net.connect(port, '::1');
      socket.end('GET /v6 HTTP/1.0\r\n\r\n');
      socket.resume();
      await once(socket, 'close');
      await receiver.waitForLines(1);
      const uri = receiver.records()[0]?.['request'].request_uri as string;
      assert.equal(uri, `http://[::1]:${port}/v6`);
      assert.equal(new URL(uri).pathname, '/v6');
    } finally {
      server.closeAllConnections();
      server.close();
      await mw.close();
      await receiver.close();
    }
  });
});

/** 50 MiB: far more than loopback's socket buffers take. */
const EXPORT_BYTES = 50 * 1024 * 1024;

describe('what the client got, when some of the response never went out', () => {
  let receiver: LineServer;
  let http: Listening;
  let mw: tcplog.Middleware;
  const arrivals = new EventEmitter();

  before(async () => {
    receiver = await startLineServer();
    mw = tcplog({ host: '127.0.0.1', port: receiver.port });
    const app = express();
    // A slow lookup in front of the logger (a session store, say) that outlasts the client.
    app.use('/late', (req, _res, next) => {
      req.socket.once('close', () => next());
      arrivals.emit('late');
    });
    // In front of the logger, bytes of the response already go out.
    app.use('/hints', (_req, res, next) => {
      res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
      next();
    });
    app.use('/answered', (_req, res, next) => {
      res.type('text/plain').send('answered before the logger');
      next();
    });
    app.use(mw);
    app.put('/continue', express.text({ type: '*/*' }), (req, res) => {
      res.type('text/plain').send(`got ${String(req.body).length}`);
    });
    app.get('/hints', (_req, res) => {
      res.type('text/plain').send('with hints');
    });
    app.get('/answered', () => {
      // Answered already.
    });
    app.get('/late', (_req, res) => {
      res.send('nobody is there');
    });
    app.get('/head-only', (_req, res) => {
      // Node sends a head with the first write, not at writeHead().
      res.writeHead(201, { 'x-late': 'y' });
      arrivals.emit('head-only');
    });
    app.get('/informational-head-only', (_req, res) => {
      // Informational responses go out at once; the head, with the first write, never does.
      res.writeEarlyHints({ link: Array.from({ length: 8 }, (_, i) => `</asset${i}.css>; rel=preload; as=style`) });
      res.writeProcessing();
      res.writeHead(200, { 'content-type': 'text/plain' });
      arrivals.emit('informational-head-only', (res as unknown as { _header: string })._header.length);
    });
    app.get('/export', (_req, res) => {
      // An export built in memory, sent in one write: most of it waits in the process.
      res.type('application/octet-stream').end(Buffer.alloc(EXPORT_BYTES, 0x61));
    });
    http = await listen(app);
  });

  invariantAfterEach(() => mw);

  closeAfter(() => [http, mw, receiver]);

  async function abandon(path: string, event: string): Promise<void> {
    const socket = net.connect(http.port, '127.0.0.1');
    await once(socket, 'connect');
    const arrived = once(arrivals, event);
    let received = 0;
    socket.on('data', (chunk: Buffer) => (received += chunk.length));
    socket.write(`GET ${path} HTTP/1.1\r\nHost: h\r\n\r\n`);
    await arrived;
    socket.destroy();
    await once(socket, 'close');
    assert.equal(received, 0, 'the client got nothing');
  }

  it('a client that leaves in the middle of one big write: the size is what went out, not what was queued', async () => {
    const socket = net.connect(http.port, '127.0.0.1');
    await once(socket, 'connect');
    let received = 0;
    const enough = new Promise<void>((resolve) => {
      socket.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received >= 100 * 1024) resolve();
      });
    });
    socket.write('GET /export HTTP/1.1\r\nHost: h\r\n\r\n');
    await enough;
    // A reset, as a browser's cancelled download gives: the server's next write fails.
    socket.resetAndDestroy();
    await receiver.waitForLines(receiver.lines.length + 1);
    const record = receiver.records().find((r) => r['request'].uri === '/export') as Json;
    assert.equal(record['response'].status, 200);
    const size = record['response'].size as number;
    assert.ok(size >= received, `at least what the client got (${received}): ${size}`);
    // The kernel takes a few MiB at most on loopback; the rest never left the process.
    assert.ok(size < EXPORT_BYTES / 4, `${size} bytes of the ${EXPORT_BYTES} queued`);
  });

  it('a head made by writeHead() but never sent: no status, no headers, no proxy latency', async () => {
    await abandon('/head-only', 'head-only');
    await receiver.waitForLines(receiver.lines.length + 1);
    const record = receiver.records().find((r) => r['request'].uri === '/head-only') as Json;
    assert.equal(record['response'].status, undefined);
    assert.deepEqual(record['response'].headers, {});
    assert.equal(record['response'].size, 0);
    assert.equal(record['latencies'].proxy, undefined);
  });

  it('1xx responses sent, then a head made but never sent: no status, and the 1xx bytes as the size', async () => {
    const socket = net.connect(http.port, '127.0.0.1');
    await once(socket, 'connect');
    const arrived = once(arrivals, 'informational-head-only') as Promise<[number]>;
    let received = '';
    const informational = new Promise<void>((resolve) => {
      socket.on('data', (chunk: Buffer) => {
        received += chunk.toString('latin1');
        if (received.includes('102 Processing\r\n\r\n')) resolve();
      });
    });
    socket.write('GET /informational-head-only HTTP/1.1\r\nHost: h\r\n\r\n');
    const [[headLength]] = await Promise.all([arrived, informational]);
    socket.destroy();
    await once(socket, 'close');
    // More bytes went out than the head has: the count alone cannot say the head was not among them.
    assert.ok(received.length > headLength, `${received.length} bytes of 1xx, a head of ${headLength}`);
    assert.doesNotMatch(received, /200 OK/);
    await receiver.waitForLines(receiver.lines.length + 1);
    const record = receiver.records().find((r) => r['request'].uri === '/informational-head-only') as Json;
    assert.equal(record['response'].status, undefined);
    assert.deepEqual(record['response'].headers, {});
    assert.equal(record['response'].size, received.length);
    assert.equal(record['latencies'].proxy, undefined);
  });

  it('the first request on a connection counts what went out before the logger ran', async () => {
    // Each on a connection of its own: Node's 100 Continue, 103 Early Hints from a middleware in
    // front, a middleware in front that answers and calls next().
    const cases: Array<[string, string, (received: Buffer) => boolean]> = [
      [
        '/continue',
        'PUT /continue HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n',
        () => false,
      ],
      ['/hints', 'GET /hints HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n', () => false],
      ['/answered', 'GET /answered HTTP/1.1\r\nHost: h\r\n\r\n', (got) => got.includes('answered before the logger')],
    ];
    for (const [uri, head, done] of cases) {
      const socket = net.connect(http.port, '127.0.0.1');
      await once(socket, 'connect');
      const chunks: Buffer[] = [];
      const received = new Promise<Buffer>((resolve) => {
        socket.on('data', (chunk: Buffer) => {
          chunks.push(chunk);
          const got = Buffer.concat(chunks);
          if (got.includes('100 Continue\r\n\r\n') && !got.includes('200 OK')) socket.write('hello');
          if (done(got)) resolve(got);
        });
        socket.on('close', () => resolve(Buffer.concat(chunks)));
      });
      socket.write(head);
      const reply = await received;
      if (uri !== '/answered') {
        assert.ok(
          reply.indexOf('HTTP/1.1 200 OK') > 0,
          `${uri}: an interim response first: ${reply.toString('latin1')}`,
        );
      }
      await waitFor(receiver, 'line', () => receiver.records().some((r) => r['request'].uri === uri));
      socket.destroy();
      const record = receiver.records().find((r) => r['request'].uri === uri) as Json;
      assert.equal(record['response'].status, 200, uri);
      assert.equal(record['response'].size, reply.length, `${uri}: every byte sent, the interim response too`);
    }
  });

  it('a client gone before the logger, with an app-level and a router-level instance: one record, the inner one', async () => {
    const outer = await startLineServer();
    const inner = await startLineServer();
    const outerMw = tcplog({ host: '127.0.0.1', port: outer.port, api: { name: 'outer' } });
    const innerMw = tcplog({ host: '127.0.0.1', port: inner.port, api: { name: 'inner' } });
    const app = express();
    const gone = new EventEmitter();
    app.use('/users/7', (req, _res, next) => {
      req.socket.once('close', () => next());
      gone.emit('arrived');
    });
    app.use(outerMw);
    const users = express.Router();
    users.use(innerMw);
    users.get('/:id', (_req, res) => {
      res.send('nobody is there');
    });
    app.use('/users', users);
    const server = await listen(app);
    try {
      const socket = net.connect(server.port, '127.0.0.1');
      await once(socket, 'connect');
      const arrived = once(gone, 'arrived');
      socket.write('GET /users/7 HTTP/1.1\r\nHost: h\r\n\r\n');
      await arrived;
      socket.destroy();
      await inner.waitForLines(1);
      // Once it is in, a second record would be too: records keep their order per destination.
      await request(server.port, '/users/8');
      await inner.waitForLines(2);
      assert.deepEqual(
        inner.records().map((r) => [r['request'].uri, r['api'].name, r['response'].status]),
        [
          ['/users/7', 'inner', undefined],
          ['/users/8', 'inner', 200],
        ],
      );
      assert.equal(outer.lines.length, 0, 'the outer instance logs nothing of them');
    } finally {
      await server.close();
      await outerMw.close();
      await innerMw.close();
      await outer.close();
      await inner.close();
    }
  });

  it('a client gone before the request reached the logger: still one record, nothing sent', async () => {
    const records = mw.stats().records;
    await abandon('/late', 'late');
    await receiver.waitForLines(receiver.lines.length + 1);
    const matching = receiver.records().filter((r) => r['request'].uri === '/late');
    assert.equal(matching.length, 1);
    const record = matching[0] as Json;
    assert.equal(record['response'].status, undefined);
    assert.equal(record['response'].size, 0);
    assert.equal(mw.stats().records, records + 1);
  });
});

/** An app-level instance ('app') and a router-level one ('router'), both logging to `port`. */
function nestedPair(port: number): { outer: tcplog.Middleware; inner: tcplog.Middleware } {
  return {
    outer: tcplog({ host: '127.0.0.1', port, api: { name: 'app' } }),
    inner: tcplog({ host: '127.0.0.1', port, api: { name: 'router' } }),
  };
}

/** A router with the inner instance, whose handler says on `passed` that a request got through. */
function innerRouter(inner: tcplog.Middleware, passed: EventEmitter): express.Router {
  const router = express.Router();
  router.use(inner);
  router.use((_req, res) => {
    passed.emit('request');
    if (!res.headersSent) res.send('late');
  });
  return router;
}

describe('a router-level instance closed while its requests are in flight', () => {
  let receiver: LineServer;
  let http: Listening;
  let outer: tcplog.Middleware;
  let inner: tcplog.Middleware;
  /** Requests to /r/slow, once the handler has them, with the function that answers each. */
  const held = new EventEmitter();

  before(async () => {
    receiver = await startLineServer();
    ({ outer, inner } = nestedPair(receiver.port));
    const app = express();
    app.use(outer);
    const router = express.Router();
    router.use(inner);
    router.get('/slow', (_req, res) => {
      held.emit('request', () => res.send('late'));
    });
    app.use('/r', router);
    http = await listen(app);
  });

  closeAfter(() => [http, outer, receiver]);

  it('the app-level instance, still open, logs them: they are not lost', async () => {
    const answered = once(held, 'request');
    const reply = request(http.port, '/r/slow?n=1');
    const [answer] = (await answered) as [() => void];
    await inner.close();
    answer();
    assert.equal((await reply).status, 200);
    await receiver.waitForLines(1);
    const [record] = receiver.records();
    assert.equal(record?.['request'].uri, '/r/slow?n=1');
    assert.equal(record?.['api'].name, 'app', "the outer instance's configuration");
    assert.deepEqual(record?.['route'], { path: '/slow', base_url: '/r' }, 'as the app-level instance alone logs it');
    await until(() => outer.stats().sent === 1);
  });
});

describe('a client that leaves between two nested instances', () => {
  let receiver: LineServer;
  let http: Listening;
  let outer: tcplog.Middleware;
  let inner: tcplog.Middleware;
  /** Each request held between the two instances, with the function that lets it go on. */
  const gate = new EventEmitter();
  /** Emitted once a request has passed the inner instance. */
  const passed = new EventEmitter();

  before(async () => {
    receiver = await startLineServer();
    ({ outer, inner } = nestedPair(receiver.port));
    const app = express();
    app.use(outer);
    app.use('/r', (_req, _res, next) => {
      gate.emit('held', () => next());
    });
    app.use('/r', innerRouter(inner, passed));
    app.get('/after', (_req, res) => {
      res.send('after');
    });
    http = await listen(app);
  });

  closeAfter(() => [http, inner, outer, receiver]);

  it('is logged once, when it leaves, though the request then goes through the inner instance', async () => {
    const held = once(gate, 'held');
    const socket = net.connect(http.port, '127.0.0.1');
    socket.on('error', () => undefined);
    socket.write('GET /r/x HTTP/1.1\r\nHost: h\r\n\r\n');
    const [release] = (await held) as [() => void];
    socket.destroy();
    await receiver.waitForLines(1);
    const through = once(passed, 'request');
    release();
    await through;
    // Records keep their finish order: a second record of /r/x would come before this one.
    await request(http.port, '/after');
    await receiver.waitForLines(2);
    assert.deepEqual(
      receiver.records().map((r) => [r['request'].uri, r['api'].name]),
      [
        ['/r/x', 'app'],
        ['/after', 'app'],
      ],
    );
  });
});

/**
 * A middleware in front that answers and lets the request go on (connect-timeout's 503 without
 * `haltOnTimedout`), then a slow one: the request reaches the router-level instance after its
 * response ended. Connections are kept open, so that a record held for their close would show.
 */
describe('a response that ends before the request reaches an instance', () => {
  let receiver: LineServer;
  let http: Listening;
  let outer: tcplog.Middleware;
  let inner: tcplog.Middleware;
  /** Each request to `.../x`, answered 503 and held before the router, with what lets it go on. */
  const gate = new EventEmitter();
  /** Emitted once a request has passed the inner instance. */
  const passed = new EventEmitter();

  before(async () => {
    receiver = await startLineServer();
    ({ outer, inner } = nestedPair(receiver.port));
    const app = express();
    // The app-level instance only sees requests under /both.
    app.use('/both', outer);
    const answerEarly: express.RequestHandler = (req, res, next) => {
      if (req.path !== '/x') return next();
      res.status(503).send('timed out');
      gate.emit('held', () => next());
    };
    app.use(['/both', '/inner'], answerEarly);
    app.use(['/both', '/inner'], innerRouter(inner, passed));
    http = await listen(app);
  });

  closeAfter(() => [http, inner, outer, receiver]);

  /**
   * Sends `path` (or the raw request `bytes`) on a connection left open, and returns it with the
   * bytes of the reply.
   */
  async function heldRequest(
    path: string,
    bytes = `GET ${path} HTTP/1.1\r\nHost: h\r\n\r\n`,
  ): Promise<{ socket: net.Socket; reply: Buffer }> {
    const held = once(gate, 'held');
    const socket = net.connect(http.port, '127.0.0.1');
    socket.on('error', () => undefined);
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.write(bytes);
    const [release] = (await held) as [() => void];
    await until(() => Buffer.concat(chunks).toString('latin1').endsWith('timed out'), 5_000, 'the 503');
    const through = once(passed, 'request');
    release();
    await through;
    return { socket, reply: Buffer.concat(chunks) };
  }

  it('with an app-level instance that logged it: logged once, by that instance', async () => {
    const before = receiver.lines.length;
    const { socket } = await heldRequest('/both/x');
    // Records keep their finish order: a second record of /both/x would come before this one.
    await request(http.port, '/both/after');
    socket.destroy();
    await request(http.port, '/both/last');
    await receiver.waitForLines(before + 3);
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(
      receiver
        .records()
        .slice(before)
        .map((r) => [r['request'].uri, r['api'].name, r['response'].status]),
      [
        ['/both/x', 'app', 503],
        ['/both/after', 'router', 200],
        ['/both/last', 'router', 200],
      ],
    );
  });

  it('reaching its only instance late: logged then, as it stands, not when the connection closes', async () => {
    const before = receiver.lines.length;
    const records = inner.stats().records;
    const { socket, reply } = await heldRequest('/inner/x');
    try {
      await receiver.waitForLines(before + 1);
      const record = receiver.records()[before] as Json;
      assert.equal(record['request'].uri, '/inner/x');
      assert.equal(record['api'].name, 'router');
      assert.equal(record['response'].status, 503);
      assert.equal(record['response'].size, reply.length, 'the bytes the client got');
      assert.deepEqual(record['latencies'], { request: 0, proxy: 0 }, 'no time spent after the logger');
      assert.ok(Math.abs(record['started_at'] - Date.now()) < 60_000, String(record['started_at']));
      assert.equal(inner.stats().records, records + 1);
    } finally {
      socket.destroy();
    }
    await request(http.port, '/inner/after');
    await receiver.waitForLines(before + 2);
    assert.equal(receiver.records()[before + 1]?.['request'].uri, '/inner/after', 'nothing more of /inner/x');
  });

  it('reaching its only instance late, after its connection closed: the request as it was sent', async () => {
    const before = receiver.lines.length;
    // HTTP/1.0 without a Host header: the server closes the connection after the 503, and the
    // record's host is then the socket's own address, read while it was open.
    const head = 'POST /inner/x HTTP/1.0\r\nContent-Length: 5\r\n\r\n';
    const { socket } = await heldRequest('/inner/x', `${head}hello`);
    socket.destroy();
    await receiver.waitForLines(before + 1);
    const record = receiver.records()[before] as Json;
    assert.equal(record['request'].method, 'POST');
    assert.equal(record['request'].request_uri, `http://127.0.0.1:${http.port}/inner/x`);
    assert.equal(record['request'].size, head.length + 5, 'the head and the body');
    assert.equal(record['client_ip'], '127.0.0.1');
    assert.equal(record['response'].status, 503);
  });
});

describe('times and hosts when the head or the end came before the logger', () => {
  let receiver: LineServer;

  before(async () => {
    receiver = await startLineServer();
  });

  closeAfter(() => [receiver]);

  it('a head written by a middleware in front: latencies.proxy is 0, not below it', async () => {
    const mw = tcplog({ host: '127.0.0.1', port: receiver.port, api: { name: 'head-first' } });
    const front = new EventEmitter();
    const http = await listen((req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('from the front ');
      front.emit('wrote', () => mw(req, res, () => res.end('and the app')));
    });
    try {
      const wrote = once(front, 'wrote');
      const reply = request(http.port, '/head-first');
      const [goOn] = (await wrote) as [() => void];
      // The head went out before the logger: time passes before the request reaches it.
      await new Promise((resolve) => setTimeout(resolve, 30));
      goOn();
      assert.equal((await reply).status, 200);
      const record = (await waitFor(receiver, 'line', () =>
        receiver.records().some((r) => r['api']?.name === 'head-first'),
      ).then(() => receiver.records().find((r) => r['api']?.name === 'head-first'))) as Json;
      assert.equal(record['latencies'].proxy, 0);
      assert.ok(record['latencies'].request + 1 >= record['latencies'].proxy);
    } finally {
      await http.close();
      await mw.close();
    }
  });

  it('a late request an instance took and then closed on: the next one logs it, with the host it had', async () => {
    const first = tcplog({ host: '127.0.0.1', port: receiver.port, api: { name: 'first' } });
    const second = tcplog({ host: '127.0.0.1', port: receiver.port, api: { name: 'second' } });
    const http = await listen((req, res) => {
      res.end('front');
      // After the finish, and after the connection closed (HTTP/1.0): the first instance takes it
      // late and is closed in the same turn; the second comes after.
      res.on('close', () => {
        setImmediate(() => {
          first(req, res, () => {
            void first.close();
            setImmediate(() => second(req, res, () => undefined));
          });
        });
      });
    });
    try {
      await rawExchange(http.port, 'GET /hostless HTTP/1.0\r\n\r\n', () => false);
      const record = (await waitFor(receiver, 'line', () =>
        receiver.records().some((r) => r['api']?.name === 'second'),
      ).then(() => receiver.records().find((r) => r['api']?.name === 'second'))) as Json;
      assert.equal(record['request'].request_uri, `http://127.0.0.1:${http.port}/hostless`);
      assert.ok(!receiver.records().some((r) => r['api']?.name === 'first'), 'logged once');
    } finally {
      await http.close();
      await second.close();
    }
  });
});
