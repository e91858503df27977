/**
 * The same middleware under Express 4, Express 5, Connect and a bare http.createServer, and an
 * app that exits by itself with logging pointed at a dead server.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { EventEmitter, once } from 'node:events';
import nodeHttp, { type IncomingMessage, type ServerResponse } from 'node:http';
import http2 from 'node:http2';
import net, { type AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import connect from 'connect';
import express5 from 'express';
import tcplog = require('../lib/index.js');
import { LineServer, freePort, invariant, listen, rawExchange, request, startLineServer } from './helpers.js';
import { pem } from './transports.js';

// Express 4 is installed as the dev alias `express4`; its types are close enough to 5's for a spec.
const express4 = require('express4') as typeof express5;

type Json = Record<string, any>;

describe('works with', () => {
  let receiver: LineServer;
  const middlewares: tcplog.Middleware[] = [];

  before(async () => {
    receiver = await startLineServer();
  });

  after(async () => {
    for (const mw of middlewares) {
      assert.ok(invariant(mw.stats()));
      await mw.close();
    }
    await receiver.close();
  });

  function logger(name: string): tcplog.Middleware {
    const mw = tcplog({ host: '127.0.0.1', port: receiver.port, api: { name } });
    middlewares.push(mw);
    return mw;
  }

  async function recordFor(name: string): Promise<Json> {
    for (;;) {
      const found = receiver.records().find((r) => r['api']?.name === name);
      if (found) return found;
      await receiver.waitForLines(receiver.lines.length + 1);
    }
  }

  for (const [label, factory] of [
    ['Express 5', express5],
    ['Express 4', express4],
  ] as const) {
    it(`${label}: app-level and router-level, with route and client_ip`, async () => {
      const app = factory();
      app.use(logger(`${label} app`));
      const router = factory.Router();
      router.use(logger(`${label} router`));
      router.get('/:id', (req, res) => {
        res.json({ id: req.params['id'] });
      });
      app.use('/items', router);
      app.get('/plain', (_req, res) => {
        res.send('plain');
      });
      const http = await listen(app);
      try {
        assert.equal((await request(http.port, '/items/9?x=1')).status, 200);
        assert.equal((await request(http.port, '/plain')).status, 200);
        const routed = await recordFor(`${label} router`);
        assert.equal(routed['request'].uri, '/items/9?x=1');
        assert.deepEqual(routed['request'].querystring, { x: '1' });
        assert.deepEqual(routed['route'], { path: '/:id', base_url: '/items' });
        assert.equal(routed['response'].status, 200);
        assert.equal(routed['client_ip'], '127.0.0.1');
        const plain = await recordFor(`${label} app`);
        assert.equal(plain['request'].uri, '/plain');
        assert.deepEqual(plain['route'], { path: '/plain', base_url: '' });
      } finally {
        await http.close();
      }
    });
  }

  /**
   * route.base_url is the base the route ran under, not `req.baseUrl` at the finish (Express
   * restores it as the request leaves a router), nor the longest mount an instance saw.
   */
  for (const [label, factory] of [
    ['Express 5', express5],
    ['Express 4', express4],
  ] as const) {
    type App = ReturnType<typeof factory>;
    const passOn: express5.RequestHandler = (_req, _res, next) => {
      next();
    };
    const answer: express5.RequestHandler = (_req, res) => {
      res.send('answered');
    };
    const cases: {
      readonly name: string;
      readonly url: string;
      readonly status: number;
      readonly route: { path: string; base_url: string };
      readonly build: (app: App, log: () => express5.RequestHandler) => void;
    }[] = [
      {
        name: 'a route in a router calls next(), the app answers 404',
        url: '/sub/7',
        status: 404,
        route: { path: '/:id', base_url: '/sub' },
        build(app, log) {
          app.use(log());
          const router = factory.Router();
          router.get('/:id', passOn);
          app.use('/sub', router);
        },
      },
      {
        name: 'a route in a router calls next(err), the app error handler answers',
        url: '/sub/7',
        status: 500,
        route: { path: '/:id', base_url: '/sub' },
        build(app, log) {
          app.use(log());
          const router = factory.Router();
          router.get('/:id', (_req, _res, next) => {
            next(new Error('failed in the router'));
          });
          app.use('/sub', router);
          app.use(((_err, _req, res, _next) => {
            res.status(500).send('handled');
          }) as express5.ErrorRequestHandler);
        },
      },
      {
        name: "a route in a sub-app calls next(), the parent's 404",
        url: '/sub/7',
        status: 404,
        route: { path: '/:id', base_url: '/sub' },
        build(app, log) {
          app.use(log());
          const sub = factory();
          sub.get('/:id', passOn);
          app.use('/sub', sub);
        },
      },
      {
        name: 'an instance in a router at /a, a route in a nested router at /b calls next()',
        url: '/a/b/7',
        status: 404,
        route: { path: '/:id', base_url: '/a/b' },
        build(app, log) {
          const outer = factory.Router();
          outer.use(log());
          const inner = factory.Router({ mergeParams: true });
          inner.get('/:id', passOn);
          outer.use('/b', inner);
          app.use('/a', outer);
        },
      },
      {
        name: 'an instance in a router at /api that matches nothing, an app route answers',
        url: '/api/x',
        status: 200,
        route: { path: '/api/x', base_url: '' },
        build(app, log) {
          const router = factory.Router();
          router.use(log());
          app.use('/api', router);
          app.get('/api/x', answer);
        },
      },
      {
        name: 'instances in the app and in a router at /sub that matches nothing, an app route answers',
        url: '/sub/y',
        status: 200,
        route: { path: '/sub/y', base_url: '' },
        build(app, log) {
          app.use(log());
          const router = factory.Router();
          router.use(log());
          app.use('/sub', router);
          app.get('/sub/y', answer);
        },
      },
      {
        name: 'a route in a router calls next(), a later route in the same router answers',
        url: '/sub/7',
        status: 200,
        route: { path: '/:n', base_url: '/sub' },
        build(app, log) {
          app.use(log());
          const router = factory.Router();
          router.get('/:id', passOn);
          router.get('/:n', answer);
          app.use('/sub', router);
        },
      },
      {
        name: 'the instance inside the route, before its handler',
        url: '/sub/7',
        status: 200,
        route: { path: '/:id', base_url: '/sub' },
        build(app, log) {
          const router = factory.Router();
          router.get('/:id', log(), answer);
          app.use('/sub', router);
        },
      },
    ];

    it(`${label}: route.base_url is the base the route ran under`, async () => {
      for (const [index, scenario] of cases.entries()) {
        const name = `${label} base ${index}`;
        const app = factory();
        scenario.build(app, () => logger(name) as express5.RequestHandler);
        const http = await listen(app);
        try {
          assert.equal((await request(http.port, scenario.url)).status, scenario.status, scenario.name);
          const record = await recordFor(name);
          assert.equal(record['request'].uri, scenario.url, scenario.name);
          assert.deepEqual(record['route'], scenario.route, scenario.name);
        } finally {
          await http.close();
        }
      }
    });
  }

  it('Express honours trust proxy for client_ip and the scheme', async () => {
    const app = express5();
    app.set('trust proxy', true);
    app.use(logger('trusting'));
    app.get('/', (_req, res) => {
      res.send('ok');
    });
    const http = await listen(app);
    try {
      await request(http.port, '/', { headers: { 'x-forwarded-for': '203.0.113.7', 'x-forwarded-proto': 'https' } });
      const record = await recordFor('trusting');
      assert.equal(record['client_ip'], '203.0.113.7');
      assert.match(record['request'].request_uri, /^https:\/\//);
    } finally {
      await http.close();
    }
  });

  it('Connect: no route, address from the socket, originalUrl kept under a mount', async () => {
    const app = connect();
    app.use(logger('connect'));
    app.use('/mounted', (req: IncomingMessage, res: ServerResponse) => {
      res.setHeader('content-type', 'text/plain');
      res.end(`connect saw ${req.url}`);
    });
    const http = await listen(app);
    try {
      const reply = await request(http.port, '/mounted/a?b=2');
      assert.equal(reply.body.toString(), 'connect saw /a?b=2');
      const record = await recordFor('connect');
      assert.equal(record['request'].uri, '/mounted/a?b=2');
      assert.equal(record['route'], undefined);
      assert.equal(record['client_ip'], '127.0.0.1');
      assert.equal(record['response'].status, 200);
    } finally {
      await http.close();
    }
  });

  it('bare http.createServer: call it with a next that answers', async () => {
    const mw = logger('bare');
    const http = await listen(function handler(req, res) {
      mw(req, res, function answer() {
        res.statusCode = 201;
        res.end('created');
      });
    });
    try {
      assert.equal((await request(http.port, '/bare?q')).status, 201);
      const record = await recordFor('bare');
      assert.equal(record['response'].status, 201);
      assert.deepEqual(record['request'].querystring, { q: true });
      assert.match(record['request'].request_uri, /^http:\/\/127\.0\.0\.1:\d+\/bare\?q$/);
    } finally {
      await http.close();
    }
  });

  it("a response Node's HTTP/1 server did not make (the HTTP/2 compatibility API) is logged through its own events", async () => {
    const mw = logger('h2');
    const server = http2.createServer(function handler(req, res) {
      (mw as unknown as (q: typeof req, s: typeof res, next: () => void) => void)(req, res, function answer() {
        res.statusCode = 202;
        res.setHeader('content-type', 'text/plain');
        res.setHeader('content-length', '8');
        res.end('accepted');
      });
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const session = http2.connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    try {
      const stream = session.request({ ':path': '/h2?lang=en' });
      stream.resume();
      stream.end();
      await once(stream, 'end');
      const record = await recordFor('h2');
      assert.equal(record['request'].method, 'GET');
      assert.equal(record['request'].uri, '/h2?lang=en');
      assert.deepEqual(record['request'].querystring, { lang: 'en' });
      assert.equal(record['response'].status, 202);
      assert.equal(record['response'].headers['content-type'], 'text/plain');
      // Streams share the session's socket: no byte count of their own, so the declared length.
      assert.equal(record['response'].size, 8);
    } finally {
      session.close();
      server.close();
      await once(server, 'close');
    }
  });

  it('over HTTP/2, a stream its client reset before the request reached the logger is still logged', async () => {
    const mw = logger('h2reset') as unknown as (q: unknown, s: unknown, next: () => void) => void;
    /** Each request held in front of the logger, with what lets it go on, and its response. */
    const held = new EventEmitter();
    const server = http2.createServer(function handler(req, res) {
      held.emit('request', () => mw(req, res, () => (res.stream.destroyed ? undefined : res.end('late'))), res);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const session = http2.connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    try {
      const arrived = once(held, 'request');
      const stream = session.request({ ':path': '/h2reset' });
      stream.on('error', () => undefined);
      stream.end();
      const [release, res] = (await arrived) as [() => void, http2.Http2ServerResponse];
      const reset = once(res.stream, 'close');
      stream.close(http2.constants.NGHTTP2_CANCEL);
      await reset;
      release();
      const record = await recordFor('h2reset');
      assert.equal(record['request'].uri, '/h2reset');
      assert.equal(record['response'].status, undefined, 'no head went out');
    } finally {
      session.close();
      server.close();
      await once(server, 'close');
    }
  });

  it('over HTTP/2 with TLS, request_uri has the https scheme and the :authority the client sent', async () => {
    const mw = logger('h2s');
    const server = http2.createSecureServer(
      { key: pem('server-key.pem'), cert: pem('server-cert.pem') },
      function handler(req, res) {
        (mw as unknown as (q: typeof req, s: typeof res, next: () => void) => void)(req, res, function answer() {
          res.end('ok');
        });
      },
    );
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as AddressInfo).port;
    const session = http2.connect(`https://localhost:${port}`, { ca: pem('ca-cert.pem'), host: '127.0.0.1' });
    try {
      const stream = session.request({ ':path': '/h2s?x=1' });
      stream.resume();
      stream.end();
      await once(stream, 'end');
      const record = await recordFor('h2s');
      assert.equal(record['request'].request_uri, `https://localhost:${port}/h2s?x=1`);
    } finally {
      session.close();
      server.close();
      await once(server, 'close');
    }
  });
});

describe('a bare test double for req and res', () => {
  it('no stream, no getHeader(s), no byte counts: still one record, and nothing thrown or warned', async () => {
    const receiver = await startLineServer();
    const mw = tcplog({ host: '127.0.0.1', port: receiver.port, onError: (err) => errors.push(err) });
    const errors: Error[] = [];
    try {
      const socket = new EventEmitter();
      const req = Object.assign(new EventEmitter(), {
        method: 'GET',
        url: '/double?x=1',
        httpVersion: '1.1',
        rawHeaders: ['Host', 'double.test'],
        headers: { host: 'double.test' },
        socket,
        complete: true,
      });
      const res = Object.assign(new EventEmitter(), {
        statusCode: 204,
        headersSent: false,
        writeHead(this: { headersSent: boolean }) {
          this.headersSent = true;
        },
        socket,
      });
      let nexted = false;
      const call = mw as unknown as (q: typeof req, s: typeof res, next: () => void) => void;
      call(req, res, () => (nexted = true));
      assert.ok(nexted);
      res.writeHead();
      res.emit('finish');
      res.emit('close');
      await receiver.waitForLines(1);
      const [record] = receiver.records();
      assert.equal(record?.['request'].uri, '/double?x=1');
      assert.equal(record?.['request'].size, 'GET /double?x=1 HTTP/1.1\r\nHost: double.test\r\n\r\n'.length);
      assert.deepEqual(record?.['response'], { status: 204, size: 0, headers: {} });
      assert.deepEqual(errors, []);
    } finally {
      await mw.close();
      await receiver.close();
    }
  });
});

describe('servers made with their own ServerResponse class, and HTTP/1.0', () => {
  let receiver: LineServer;
  let mw: tcplog.Middleware;

  before(async () => {
    receiver = await startLineServer();
    mw = tcplog({ host: '127.0.0.1', port: receiver.port });
  });

  after(async () => {
    await mw.close();
    await receiver.close();
  });

  it('a writeHead of the class itself is timed, and what it adds is logged', async () => {
    class OwnHead extends nodeHttp.ServerResponse {}
    // eslint-disable-next-line @typescript-eslint/unbound-method -- applied to the response below
    const inherited = nodeHttp.ServerResponse.prototype.writeHead;
    OwnHead.prototype.writeHead = function ownWriteHead(this: nodeHttp.ServerResponse, ...args: unknown[]) {
      this.setHeader('x-own-head', 'yes');
      return Reflect.apply(inherited, this, args) as nodeHttp.ServerResponse;
    };
    const app = express5();
    app.use(mw);
    app.get('/own', (_req, res) => {
      res.send('own head');
    });
    const server = await listen(app, { ServerResponse: OwnHead as typeof nodeHttp.ServerResponse });
    try {
      // HTTP/1.0, no Host: request_uri falls back to the socket's address.
      const text = 'GET /own?v=1 HTTP/1.0\r\n\r\n';
      const received = await rawExchange(server.port, text, () => false);
      assert.match(received.toString('latin1'), /^HTTP\/1\.1 200 .*\r\nx-own-head: yes\r\n/s);
      await receiver.waitForLines(1);
      const [record] = receiver.records();
      assert.equal(record?.['request'].uri, '/own?v=1');
      assert.equal(record?.['request'].request_uri, `http://127.0.0.1:${server.port}/own?v=1`);
      assert.equal(record?.['request'].size, Buffer.byteLength(text));
      assert.equal(record?.['response'].status, 200);
      assert.equal(record?.['response'].size, received.length);
      assert.equal(record?.['response'].headers['x-own-head'], 'yes');
      assert.equal(typeof record?.['latencies'].proxy, 'number', 'the head was timed');
      assert.ok(invariant(mw.stats()));
    } finally {
      await server.close();
    }
  });

  it('with a writeHead wrapper too, a request reaching a logger after its client left still writes its head', async () => {
    class OwnHead extends nodeHttp.ServerResponse {}
    // eslint-disable-next-line @typescript-eslint/unbound-method -- applied to the response below
    const inherited = nodeHttp.ServerResponse.prototype.writeHead;
    OwnHead.prototype.writeHead = function ownWriteHead(this: nodeHttp.ServerResponse, ...args: unknown[]) {
      return Reflect.apply(inherited, this, args) as nodeHttp.ServerResponse;
    };
    const outer = tcplog({ host: '127.0.0.1', port: receiver.port, api: { name: 'outer' } });
    const inner = tcplog({ host: '127.0.0.1', port: receiver.port, api: { name: 'inner' } });
    /** The request held between the two, with what lets it go on and its response. */
    const held = new EventEmitter();
    const handled = new EventEmitter();
    const chain = [
      outer as unknown as (q: IncomingMessage, s: ServerResponse, next: () => void) => void,
      // An on-headers style wrapper, over the hook the logger put on this class's writeHead.
      (_q: IncomingMessage, s: ServerResponse, next: () => void) => {
        // eslint-disable-next-line @typescript-eslint/unbound-method -- applied to `this` below
        const previous = s.writeHead;
        s.writeHead = function wrapped(this: ServerResponse, ...args: unknown[]) {
          return Reflect.apply(previous, this, args);
        } as typeof s.writeHead;
        next();
      },
      (_q: IncomingMessage, s: ServerResponse, next: () => void) => {
        held.emit('request', next, s);
      },
      inner as unknown as (q: IncomingMessage, s: ServerResponse, next: () => void) => void,
      (_q: IncomingMessage, s: ServerResponse) => {
        try {
          s.writeHead(200, { 'content-type': 'text/plain' });
          s.end('late');
          handled.emit('done', null);
        } catch (err) {
          handled.emit('done', err);
        }
      },
    ];
    const server = await listen(
      (req, res) => {
        let at = 0;
        const next = (): void => chain[at++]?.(req, res, next);
        next();
      },
      { ServerResponse: OwnHead as typeof nodeHttp.ServerResponse },
    );
    const before = receiver.lines.length;
    try {
      const arrived = once(held, 'request');
      const socket = net.connect(server.port, '127.0.0.1');
      socket.on('error', () => undefined);
      socket.write('GET /late-head HTTP/1.1\r\nHost: h\r\n\r\n');
      const [release, res] = (await arrived) as [() => void, ServerResponse];
      // The outer instance closes, and the client leaves: nothing open logs it at the close.
      await outer.close();
      const closed = once(res, 'close');
      socket.destroy();
      await closed;
      await new Promise((resolve) => setImmediate(resolve));
      const done = once(handled, 'done');
      release();
      const [thrown] = (await done) as [unknown];
      assert.equal(thrown, null, `writeHead threw: ${String(thrown)}`);
      await receiver.waitForLines(before + 1);
      const record = receiver.records()[before] as Json;
      assert.equal(record['request'].uri, '/late-head');
      assert.equal(record['api'].name, 'inner');
    } finally {
      await inner.close();
      await server.close();
    }
  });
});

/**
 * For the scripts runNode() runs: `records`, what a receiver of their own has read (started by
 * `receiveRecords(onListening)`, which returns its server), and `get(port, uri)`, one request on a
 * new connection, resolved with its status once its body is read.
 */
const CHILD_KIT = `
  const records = [];
  function receiveRecords(onListening) {
    const server = require('node:net').createServer((socket) => {
      let text = '';
      socket.setEncoding('utf8');
      socket.on('data', (chunk) => {
        text += chunk;
        for (let at; (at = text.indexOf('\\r\\n')) !== -1; text = text.slice(at + 2)) records.push(JSON.parse(text.slice(0, at)));
      });
    });
    return server.listen(0, '127.0.0.1', onListening);
  }
  const get = (port, uri) => new Promise((resolve, reject) =>
    require('node:http').get({ host: '127.0.0.1', port, path: uri, agent: false }, (res) => res.resume().on('end', () => resolve(res.statusCode))).on('error', reject));
`;

/**
 * Runs `script` in a Node process of its own, from the project's root; killed after 15 s.
 * `asFile`: from a file in the build directory rather than `-e`, whose module keeps every module
 * the script loads.
 */
async function runNode(
  script: string,
  { flags = [], asFile = false }: { flags?: string[]; asFile?: boolean } = {},
): Promise<{ code: number | null; signal: string | null; output: string }> {
  let source = ['-e', script];
  if (asFile) {
    const file = path.resolve(__dirname, '..', `script-${process.pid}-${Date.now()}.js`);
    fs.writeFileSync(file, script);
    source = [file];
  }
  const child = spawn(process.execPath, [...flags, ...source], {
    cwd: path.resolve(__dirname, '../..'),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const killer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  const [code, signal] = (await once(child, 'exit')) as [number | null, string | null];
  clearTimeout(killer);
  if (asFile) fs.rmSync(source[0] as string, { force: true });
  return { code, signal, output };
}

describe('once every instance is closed', () => {
  it('requests are no longer read as Node announces them; a new instance reads them again', async () => {
    const lib = path.resolve(__dirname, '../lib/index.js');
    const script = `
      const dc = require('node:diagnostics_channel');
      const net = require('node:net');
      const express = require('express');
      const tcplog = require(${JSON.stringify(lib)});
      const start = dc.channel('http.server.request.start');
      const receiver = net.createServer((socket) => {
        socket.setEncoding('utf8');
        socket.on('data', (text) => {
          console.log(JSON.stringify({ states, uri: JSON.parse(text.split('\\r\\n')[0]).request.uri }));
          process.exit(0);
        });
      });
      const states = [start.hasSubscribers];
      receiver.listen(0, '127.0.0.1', async () => {
        const port = receiver.address().port;
        const a = tcplog({ host: '127.0.0.1', port });
        const b = tcplog({ host: '127.0.0.1', port });
        states.push(start.hasSubscribers);
        await a.close();
        await a.close();
        states.push(start.hasSubscribers);
        await b.close();
        states.push(start.hasSubscribers);
        const c = tcplog({ host: '127.0.0.1', port });
        states.push(start.hasSubscribers);
        const app = express();
        app.use(c);
        app.get('/again', (req, res) => res.send('ok'));
        const server = app.listen(0, '127.0.0.1', async () => {
          const res = await fetch('http://127.0.0.1:' + server.address().port + '/again?n=1');
          await res.text();
        });
      });`;
    const { code, output } = await runNode(script);
    assert.equal(code, 0, output);
    const result = JSON.parse(output) as { states: boolean[]; uri: string };
    assert.deepEqual(result.states, [false, true, true, false, true], 'subscribed while an instance is open');
    assert.equal(result.uri, '/again?n=1');
  });
});

describe('the package loaded again and again in one process', () => {
  it('sets its hooks on Node once, and lets each load go once it is closed (as a test runner that reloads modules needs)', async () => {
    // As Jest loads it for each test file, with its own module registry: here, require's cache
    // emptied before each load. Node's objects are the same for every load.
    const lib = path.resolve(__dirname, '../lib/index.js');
    const script = `
      const http = require('node:http');
      const path = require('node:path');
      const dir = path.dirname(${JSON.stringify(lib)}) + path.sep;
      function load() {
        for (const file of Object.keys(require.cache)) if (file.startsWith(dir)) delete require.cache[file];
        const tcplog = require(${JSON.stringify(lib)});
        // Node also lists what a module loaded, which would keep every load: a reloader drops it.
        module.children.length = 0;
        return tcplog;
      }
      ${CHILD_KIT}
      const receiver = receiveRecords(async () => {
        const loads = [];
        const writeHeads = new Set();
        for (let i = 0; i < 20; i++) {
          const tcplog = load();
          loads.push(new WeakRef(tcplog));
          const mw = tcplog({ host: '127.0.0.1', port: receiver.address().port });
          const server = http.createServer((req, res) => mw(req, res, () => res.end('ok')));
          await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
          await get(server.address().port, '/load/' + i);
          writeHeads.add(http.ServerResponse.prototype.writeHead);
          await new Promise((resolve) => server.close(resolve));
          await mw.close();
        }
        while (records.length < 20) await new Promise((resolve) => setTimeout(resolve, 10));
        for (let i = 0; i < 5; i++) {
          globalThis.gc();
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        console.log(JSON.stringify({
          hooks: writeHeads.size,
          alive: loads.filter((ref) => ref.deref() !== undefined).length,
          uris: records.map((r) => r.request.uri).join(),
        }));
        process.exit(0);
      });`;
    const { code, output } = await runNode(script, { flags: ['--expose-gc'], asFile: true });
    assert.equal(code, 0, output);
    const result = JSON.parse(output) as { hooks: number; alive: number; uris: string };
    assert.equal(result.hooks, 1, 'one writeHead hook for every load');
    assert.ok(result.alive <= 1, `${result.alive} of 20 loads still held`);
    assert.equal(result.uris, Array.from({ length: 20 }, (_, i) => `/load/${i}`).join());
  });

  it("wraps Express's router layers once, and each open load learns the base its routes ran under", async () => {
    const lib = path.resolve(__dirname, '../lib/index.js');
    const script = `
      const http = require('node:http');
      const path = require('node:path');
      const express = require('express');
      const Layer = require('router/lib/layer');
      const dir = path.dirname(${JSON.stringify(lib)}) + path.sep;
      function load() {
        for (const file of Object.keys(require.cache)) if (file.startsWith(dir)) delete require.cache[file];
        return require(${JSON.stringify(lib)});
      }
      ${CHILD_KIT}
      const receiver = receiveRecords(async () => {
        const original = Layer.prototype.handleRequest;
        const port = receiver.address().port;
        // Both open at once: the hook reports to each of them.
        const instances = [load(), load()].map((tcplog, i) => tcplog({ host: '127.0.0.1', port, api: { name: 'load ' + i } }));
        const seen = [];
        const statuses = [];
        for (const [i, mw] of instances.entries()) {
          const app = express();
          app.use(mw);
          const router = express.Router();
          router.get('/:id', (req, res, next) => next());
          app.use('/sub', router);
          const server = http.createServer(app);
          await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
          statuses.push(await get(server.address().port, '/sub/' + i));
          seen.push(Layer.prototype.handleRequest);
          await new Promise((resolve) => server.close(resolve));
        }
        while (records.length < 2) await new Promise((resolve) => setTimeout(resolve, 10));
        for (const mw of instances) await mw.close();
        console.log(JSON.stringify({
          statuses,
          wrapped: seen[0] !== original,
          once: seen[0] === seen[1],
          routes: records.sort((a, b) => a.api.name.localeCompare(b.api.name)).map((r) => r.route),
        }));
        receiver.close();
      });`;
    const { code, output } = await runNode(script, { asFile: true });
    assert.equal(code, 0, output);
    const result = JSON.parse(output) as { statuses: number[]; wrapped: boolean; once: boolean; routes: unknown[] };
    assert.deepEqual(result.statuses, [404, 404]);
    assert.ok(result.wrapped, "the router's Layer#handleRequest is wrapped");
    assert.ok(result.once, 'and only by the first load');
    assert.deepEqual(result.routes, [
      { path: '/:id', base_url: '/sub' },
      { path: '/:id', base_url: '/sub' },
    ]);
  });
});

describe('route.base_url in a fresh process, where no router is hooked yet', () => {
  /**
   * Each case in a process of its own: a Layer class hooked for one case would be hooked for the
   * next. `first`: whether the first request's route is seen too (an instance met the router's app
   * before the route ran), rather than only the routes after it.
   */
  const cases = [
    { name: 'nested instance, other Express', first: true, route: { path: '/:id', base_url: '/sub/r' } },
    { name: 'sub-app of other Express', first: false, route: { path: '/r/:id', base_url: '/sub' } },
    { name: 'router package in Express 4', first: false, route: { path: '/r/:id', base_url: '/sub' } },
    { name: 'instance in front of Express', first: false, route: { path: '/r/:id', base_url: '/sub' } },
    { name: 'Connect in front of Express', first: false, route: { path: '/r/:id', base_url: '/sub' } },
    { name: 'copy with hooks of its own', first: true, route: { path: '/r/:id', base_url: '/sub' } },
  ] as const;
  for (const { name, first, route } of cases) {
    it(`${name}: ${first ? 'every route is seen' : 'routes after the first are seen'}`, async () => {
      const lib = path.resolve(__dirname, '../lib/index.js');
      const script = `
      const fs = require('node:fs');
      const http = require('node:http');
      const os = require('node:os');
      const path = require('node:path');
      const connect = require('connect');
      const express5 = require('express');
      const express4 = require('express4');
      const Router = require('router');
      // A copy whose process hooks are another version's, as a second version of the package has.
      const copy = fs.mkdtempSync(path.join(os.tmpdir(), 'express-tcplog-other-'));
      process.on('exit', () => fs.rmSync(copy, { recursive: true, force: true }));
      fs.cpSync(path.dirname(${JSON.stringify(lib)}), copy, { recursive: true });
      const hooksFile = path.join(copy, 'httphooks.js');
      const source = fs.readFileSync(hooksFile, 'utf8');
      if (!/express-tcplog\\.httpHooks\\.\\d+/.test(source)) throw new Error('no hooks key in ' + hooksFile);
      fs.writeFileSync(hooksFile, source.replace(/express-tcplog\\.httpHooks\\.\\d+/, 'express-tcplog.httpHooks.other'));
      const ours = require(${JSON.stringify(lib)});
      const other = require(path.join(copy, 'index.js'));
      const pass = (req, res, next) => next();
      ${CHILD_KIT}
      const receiver = receiveRecords(async () => {
        const port = receiver.address().port;
        const instances = [];
        const log = (name, factory = ours) => {
          const mw = factory({ host: '127.0.0.1', port, api: { name } });
          instances.push(mw);
          return mw;
        };
        const cases = {
          // An Express 4 sub-app with an instance of its own, in an Express 5 app.
          'nested instance, other Express': () => {
            const app = express5();
            app.use(log('nested instance, other Express'));
            const sub = express4();
            sub.use(log('nested instance, other Express'));
            const router = express4.Router();
            router.get('/:id', pass);
            sub.use('/r', router);
            app.use('/sub', sub);
            return app;
          },
          // The same without it: the Express 4 router is found through its first route.
          'sub-app of other Express': () => {
            const app = express5();
            app.use(log('sub-app of other Express'));
            const sub = express4();
            sub.get('/r/:id', pass);
            app.use('/sub', sub);
            return app;
          },
          'router package in Express 4': () => {
            const app = express4();
            app.use(log('router package in Express 4'));
            const router = Router();
            router.get('/r/:id', pass);
            app.use('/sub', router);
            return app;
          },
          'instance in front of Express': () => {
            const mw = log('instance in front of Express');
            const app = express4();
            const router = express4.Router();
            router.get('/r/:id', pass);
            app.use('/sub', router);
            return (req, res) => mw(req, res, () => app(req, res));
          },
          'Connect in front of Express': () => {
            const app = express5();
            const router = express5.Router();
            router.get('/r/:id', pass);
            app.use('/sub', router);
            return connect().use(log('Connect in front of Express')).use(app);
          },
          // This copy's instance first, so that it hooks Express's layers before the other can.
          'copy with hooks of its own': () => {
            const app = express5();
            app.use(log('this copy'));
            app.use(log('copy with hooks of its own', other));
            const router = express5.Router();
            router.get('/r/:id', pass);
            app.use('/sub', router);
            return app;
          },
        };
        const server = http.createServer(cases[${JSON.stringify(name)}]());
        await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
        const statuses = [await get(server.address().port, '/sub/r/1'), await get(server.address().port, '/sub/r/2')];
        await new Promise((resolve) => server.close(resolve));
        const logged = () => records.filter((r) => r.api.name === ${JSON.stringify(name)});
        while (logged().length < 2) await new Promise((resolve) => setTimeout(resolve, 10));
        for (const mw of instances) await mw.close();
        console.log(JSON.stringify({ statuses, routes: Object.fromEntries(logged().map((r) => [r.request.uri, r.route])) }));
        receiver.close();
      });`;
      const { code, output } = await runNode(script, { asFile: true });
      assert.equal(code, 0, output);
      const result = JSON.parse(output) as { statuses: number[]; routes: Record<string, unknown> };
      assert.deepEqual(result.statuses, [404, 404]);
      // After the first route, whatever router ran it: its class is hooked from then on.
      assert.deepEqual(result.routes['/sub/r/2'], route);
      if (first) assert.deepEqual(result.routes['/sub/r/1'], route);
    });
  }
});

describe("route.base_url: classes that are not Express's, or cannot be marked", () => {
  it('a Layer prototype that takes no new property is never wrapped, however many apps come', async () => {
    const lib = path.resolve(__dirname, '../lib/index.js');
    const script = `
      const http = require('node:http');
      const express = require('express');
      const Layer = require('router/lib/layer');
      Object.seal(Layer.prototype);
      const original = Layer.prototype.handleRequest;
      const tcplog = require(${JSON.stringify(lib)});
      ${CHILD_KIT}
      const receiver = receiveRecords(async () => {
        const mw = tcplog({ host: '127.0.0.1', port: receiver.address().port });
        let app;
        const server = http.createServer((req, res) => app(req, res));
        await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
        const statuses = {};
        for (let i = 0; i < 50; i++) {
          // A new app each time: each is looked at once.
          app = express();
          app.use(mw);
          app.get('/x', (req, res) => res.send('ok'));
          const status = await get(server.address().port, '/x');
          statuses[status] = (statuses[status] ?? 0) + 1;
        }
        console.log(JSON.stringify({ statuses, untouched: Layer.prototype.handleRequest === original }));
        await mw.close();
        server.close();
        receiver.close();
      });`;
    const { code, output } = await runNode(script, { asFile: true });
    assert.equal(code, 0, output);
    assert.deepEqual(JSON.parse(output), { statuses: { 200: 50 }, untouched: true });
  });

  it("leaves alone a class of the app's in a route it set, and passes every argument on in one shaped as a Layer", async () => {
    const receiver = await startLineServer();
    const mw = tcplog({ host: '127.0.0.1', port: receiver.port });
    class Job {
      handleRequest(...args: unknown[]): unknown {
        return args[3];
      }
    }
    class LayerLike {
      match(): boolean {
        return true;
      }
      handleError(): void {}
      handleRequest(...args: unknown[]): unknown {
        return args[3];
      }
    }
    /* eslint-disable @typescript-eslint/unbound-method -- compared, not called */
    const job = Job.prototype.handleRequest;
    const layerLike = LayerLike.prototype.handleRequest;
    const app = express5();
    app.use(mw);
    let turn = 0;
    app.use((req, res) => {
      // An app that sets `req.route` itself, to something with a stack.
      (req as { route?: unknown }).route = { path: '/job', stack: [turn++ === 0 ? new Job() : new LayerLike()] };
      res.send('ok');
    });
    const http = await listen(app);
    try {
      assert.equal((await request(http.port, '/')).status, 200);
      assert.equal((await request(http.port, '/')).status, 200);
      await receiver.waitForLines(2);
      assert.deepEqual(
        receiver.records().map((r) => r['route']),
        [
          { path: '/job', base_url: '' },
          { path: '/job', base_url: '' },
        ],
      );
      assert.equal(Job.prototype.handleRequest, job, 'not shaped as a Layer: not wrapped');
      assert.equal(new LayerLike().handleRequest(1, 2, 3, 'fourth'), 'fourth');
      assert.notEqual(LayerLike.prototype.handleRequest, layerLike, 'shaped as a Layer: wrapped');
      /* eslint-enable @typescript-eslint/unbound-method */
    } finally {
      await http.close();
      await mw.close();
      await receiver.close();
    }
  });
});

describe("a socket handed to an 'upgrade' handler", () => {
  const cases = [
    { copies: 1, onceListener: false },
    { copies: 2, onceListener: false },
    { copies: 1, onceListener: true },
  ];
  for (const { copies, onceListener } of cases) {
    const what = onceListener
      ? "handled by the app's once('error') listener, as without the logger"
      : `unhandled when it has no listener, as without the logger (${copies} ${copies === 1 ? 'copy' : 'copies'} of the package)`;
    it(`its errors stay the handler's: ${what}`, async () => {
      // In a process of its own: the error is meant to be uncaught there.
      const lib = path.resolve(__dirname, '../lib/index.js');
      // A second copy, as a dependency that bundles its own gives: a listener of its own on the socket.
      const script = `
      const fs = require('node:fs');
      const http = require('node:http');
      const net = require('node:net');
      const os = require('node:os');
      const path = require('node:path');
      const libs = [${JSON.stringify(lib)}];
      if (${copies} === 2) {
        const copy = fs.mkdtempSync(path.join(os.tmpdir(), 'express-tcplog-copy-'));
        process.on('exit', () => fs.rmSync(copy, { recursive: true, force: true }));
        fs.cpSync(path.dirname(libs[0]), copy, { recursive: true });
        libs.push(path.join(copy, 'index.js'));
      }
      const receiver = net.createServer((s) => s.resume()).listen(0, '127.0.0.1', () => {
        const port = receiver.address().port;
        const [first, second] = libs.map((lib) => require(lib)({ host: '127.0.0.1', port, onError() {} }));
        const server = http.createServer((req, res) =>
          first(req, res, () => (second ? second(req, res, () => res.end('plain')) : res.end('plain'))),
        );
        // A listener the app added before the logger's, and that removes itself when called.
        if (${onceListener}) {
          server.on('connection', (socket) =>
            socket.once('error', () =>
              setImmediate(() => { console.log(JSON.stringify({ uncaught: null, handled: true })); process.exit(0); }),
            ),
          );
        }
        // Many 'upgrade' handlers add no 'error' listener.
        server.on('upgrade', (req, socket) => {
          socket.write('HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: test\\r\\nConnection: Upgrade\\r\\n\\r\\n');
          socket.resume();
          process.on('uncaughtException', (err) => {
            console.log(JSON.stringify({ uncaught: err.code, listeners: socket.listenerCount('error') }));
            process.exit(0);
          });
          client.resetAndDestroy();
          setTimeout(() => { console.log(JSON.stringify({ uncaught: null })); process.exit(0); }, 2000);
        });
        let client;
        server.listen(0, '127.0.0.1', () => {
          client = net.connect(server.address().port, '127.0.0.1', () => {
            // A logged request first, on the same connection: the logger has its listeners on it.
            client.write('GET /before HTTP/1.1\\r\\nHost: h\\r\\n\\r\\n');
            client.once('data', () =>
              client.write('GET /ws HTTP/1.1\\r\\nHost: h\\r\\nConnection: Upgrade\\r\\nUpgrade: test\\r\\n\\r\\n'),
            );
          });
          client.on('error', () => {});
        });
      });`;
      const { code, output } = await runNode(script);
      assert.equal(code, 0, output);
      // The first copy's listener throws; the other copy's stays, never called.
      const expected = onceListener
        ? { uncaught: null, handled: true }
        : { uncaught: 'ECONNRESET', listeners: copies - 1 };
      assert.deepEqual(JSON.parse(output), expected);
    });
  }
});

describe('never keeps the process alive', () => {
  it('an Express app logging to a dead server exits on its own once its HTTP server closes', async () => {
    const deadPort = await freePort();
    const lib = path.resolve(__dirname, '../lib/index.js');
    const script = `
      const express = require('express');
      const tcplog = require(${JSON.stringify(lib)});
      const app = express();
      app.use(tcplog({ host: '127.0.0.1', port: ${deadPort}, onError() {} }));
      app.get('/', (req, res) => res.send('ok'));
      const server = app.listen(0, '127.0.0.1', async () => {
        const res = await fetch('http://127.0.0.1:' + server.address().port + '/', { headers: { connection: 'close' } });
        await res.text();
        server.close(() => console.log('closed'));
      });`;
    const { code, signal, output } = await runNode(script);
    assert.equal(signal, null, `the child had to be killed: it did not exit by itself. Output: ${output}`);
    assert.equal(code, 0, output);
    assert.match(output, /closed/);
  });

  it('a collector that stops reading: once close() gives up, the process exits on its own', async () => {
    // Accepts and never reads: the kernel's buffers fill, and the client's writes stay pending,
    // which keep Node's loop alive whatever is unref'd.
    const stalled = net.createServer((socket) => socket.pause());
    stalled.listen(0, '127.0.0.1');
    await once(stalled, 'listening');
    const sockets = new Set<net.Socket>();
    stalled.on('connection', (socket) => sockets.add(socket));
    try {
      const lib = path.resolve(__dirname, '../lib/index.js');
      const script = `
        const express = require('express');
        const tcplog = require(${JSON.stringify(lib)});
        const mw = tcplog({ host: '127.0.0.1', port: ${(stalled.address() as AddressInfo).port}, timeout: 500, onError() {} });
        const app = express();
        app.use(mw);
        app.get('/', (req, res) => res.send('ok'));
        const pad = 'x'.repeat(12 * 1024);
        const server = app.listen(0, '127.0.0.1', async () => {
          const url = 'http://127.0.0.1:' + server.address().port + '/';
          // About 18 MB of records: more than the socket buffers and the 16 MiB bound.
          for (let round = 0; round < 30; round++) {
            await Promise.all(Array.from({ length: 50 }, () => fetch(url, { headers: { 'x-pad': pad } }).then((r) => r.text())));
          }
          server.closeAllConnections();
          server.close();
          await mw.close();
          const stats = mw.stats();
          console.log(JSON.stringify(stats));
        });`;
      const { code, signal, output } = await runNode(script);
      assert.equal(signal, null, `the child had to be killed: it did not exit by itself. Output: ${output}`);
      assert.equal(code, 0, output);
      const stats = JSON.parse(output) as { records: number; sent: number; dropped: number; buffered: number };
      assert.equal(stats.records, 1500);
      assert.ok(stats.dropped > 0, 'close() gave up on records the collector never took');
      assert.equal(stats.sent + stats.dropped + stats.buffered, stats.records);
    } finally {
      for (const socket of sockets) socket.destroy();
      stalled.close();
    }
  });

  it('a fail-back probe opened while close() flushes does not hold the process afterwards', async () => {
    // The preferred server refuses at first, so records go to the backup, which stops reading:
    // close() has to wait. The fail-back probe (2.5-5 s after the backup opened) then finds the
    // preferred server back, but its TLS handshake is never answered. Once the backup reads again
    // and close() resolves, a second instance keeps the shared client, with the probe still
    // pending: that probe must not keep the process alive until its connect times out (20 s).
    const lib = path.resolve(__dirname, '../lib/index.js');
    const fixtures = path.resolve(__dirname, '../../spec/fixtures');
    const script = `
      const fs = require('node:fs');
      const net = require('node:net');
      const tls = require('node:tls');
      const { performance } = require('node:perf_hooks');
      const express = require('express');
      const tcplog = require(${JSON.stringify(lib)});
      const pem = (name) => fs.readFileSync(${JSON.stringify(fixtures)} + '/' + name, 'utf8');
      const listening = (server, port) =>
        new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server.address().port)));
      const backupSockets = [];
      const backup = tls.createServer({ key: pem('server-key.pem'), cert: pem('server-cert.pem') }, (socket) => {
        socket.on('error', () => {});
        socket.pause();
        backupSockets.push(socket);
      });
      const preferred = net.createServer((socket) => {
        // The probe: its handshake is never answered; the backup may read again.
        socket.on('error', () => {});
        socket.unref();
        console.log('probe');
        for (const s of backupSockets) s.resume();
      });
      (async () => {
        const preferredPort = await listening(preferred, 0);
        await new Promise((resolve) => preferred.close(resolve));
        const backupPort = await listening(backup, 0);
        const ca = pem('ca-cert.pem');
        const options = {
          servers: [{ host: '127.0.0.1', port: preferredPort, tls: { ca } }, { host: '127.0.0.1', port: backupPort, tls: { ca } }],
          timeout: 20000,
          maxBufferBytes: 64 * 1024 * 1024,
          onError() {},
        };
        const pad = 'x'.repeat(1024 * 1024);
        const a = tcplog({ ...options, customFields: { pad: (req) => (req.path === '/big' ? pad : undefined) } });
        const b = tcplog(options);
        const app = express();
        app.use(a);
        app.get('*splat', (req, res) => res.send('ok'));
        const server = app.listen(0, '127.0.0.1');
        await new Promise((resolve) => server.once('listening', resolve));
        const url = 'http://127.0.0.1:' + server.address().port;
        const opened = new Promise((resolve) => backup.once('secureConnection', resolve));
        await (await fetch(url + '/first')).text();
        await opened;
        await listening(preferred, preferredPort);
        // About 16 MB: more than the kernel's buffers take while the backup does not read.
        await Promise.all(Array.from({ length: 16 }, () => fetch(url + '/big').then((r) => r.text())));
        server.closeAllConnections();
        server.close();
        console.log('closing');
        await a.close();
        const stats = a.stats();
        backup.close();
        preferred.close();
        for (const s of backupSockets) s.unref();
        const closedAt = performance.now();
        process.on('exit', () => {
          console.log(JSON.stringify({ stats, exitAfterMs: Math.round(performance.now() - closedAt) }));
        });
        void b;
      })();`;
    const { code, signal, output } = await runNode(script);
    assert.equal(signal, null, `the child had to be killed: it did not exit by itself. Output: ${output}`);
    assert.equal(code, 0, output);
    const lines = output.trim().split('\n');
    assert.deepEqual(
      lines.slice(0, 2),
      ['closing', 'probe'],
      `the probe opened while close() waited. Output: ${output}`,
    );
    const result = JSON.parse(lines.at(-1) ?? '') as { stats: tcplog.TcpLogStats; exitAfterMs: number };
    assert.deepEqual([result.stats.records, result.stats.sent], [17, 17], output);
    assert.ok(result.exitAfterMs < 5_000, `exited ${result.exitAfterMs} ms after close() resolved`);
  });
});
