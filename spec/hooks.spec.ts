/**
 * customFields, consumer, skip and request.id, through a real Express app and a real receiver.
 */
import assert from 'node:assert/strict';
import os from 'node:os';
import { after, afterEach, before, describe, it } from 'node:test';
import express from 'express';
import tcplog = require('../lib/index.js');
import { LineServer, invariant, listen, request, startLineServer, until } from './helpers.js';

type Json = Record<string, any>;
type Req = express.Request & { user?: { id: string; plan: string } };

describe('customFields, consumer, skip and request.id', () => {
  let receiver: LineServer;
  const middlewares: tcplog.Middleware[] = [];
  const cleanup: Array<() => Promise<void> | void> = [];

  before(async () => {
    receiver = await startLineServer();
  });

  afterEach(async () => {
    for (const mw of middlewares.splice(0)) {
      assert.ok(invariant(mw.stats()));
      await mw.close();
    }
    for (const step of cleanup.splice(0)) await step();
  });

  after(async () => {
    await receiver.close();
  });

  /** An app with a fake authentication step, then `options`' middleware, then a few routes. */
  async function appWith(options: Partial<tcplog.TcpLogOptions>): Promise<{ port: number; mw: tcplog.Middleware }> {
    const mw = tcplog({ host: '127.0.0.1', port: receiver.port, ...options });
    middlewares.push(mw);
    const app = express();
    app.use(mw);
    // Authentication runs after the logger: consumer() and skip() are called at finish, so they see it.
    app.use(function authenticate(req: Req, _res, next) {
      const user = req.headers['x-user'];
      if (typeof user === 'string') req.user = { id: user, plan: 'pro' };
      next();
    });
    app.get('/items/:id', (req, res) => {
      res.json({ id: req.params['id'] });
    });
    const http = await listen(app);
    cleanup.push(() => http.close());
    return { port: http.port, mw };
  }

  /** Records whose uri carries `tag` in its query, so tests never see each other's records. */
  async function recordsTagged(tag: string, count: number): Promise<Json[]> {
    const mine = (): Json[] => receiver.records().filter((r) => String(r['request']?.uri).includes(`tag=${tag}`));
    await until(() => mine().length >= count, 5_000, `${count} records tagged ${tag}`);
    return mine();
  }

  it('customFields: dots nest, \\. escapes, undefined removes, shared objects are not mutated', async () => {
    const api = { name: 'items' };
    const { port } = await appWith({
      api,
      customFields: {
        'nested.keys': () => 'deep',
        'literal\\.dot': () => 1,
        route: () => undefined,
        'api.version': () => 2,
        'response.cache': (_req, res) => res.getHeader('etag') !== undefined,
        node: () => os.hostname(),
      },
    });
    await request(port, '/items/1?tag=nest');
    await request(port, '/items/2?tag=nest');
    const records = await recordsTagged('nest', 2);
    for (const record of records) {
      assert.deepEqual(record['nested'], { keys: 'deep' });
      assert.equal(record['literal.dot'], 1);
      assert.equal(record['route'], undefined, 'route removed');
      assert.deepEqual(record['api'], { name: 'items', version: 2 });
      assert.equal(record['response'].cache, true);
      assert.equal(record['response'].status, 200, 'siblings of a custom field are kept');
      assert.equal(record['node'], os.hostname());
    }
    assert.deepEqual(api, { name: 'items' }, "the caller's api object is untouched");
  });

  it('a throwing or unserializable custom field is left out, reported once; the record stands', async () => {
    const errors: Error[] = [];
    const { port } = await appWith({
      onError: (err) => errors.push(err),
      customFields: {
        boom: () => {
          throw new Error('kaboom');
        },
        big: () => 10n,
        fine: () => 'ok',
      },
    });
    for (let i = 0; i < 3; i++) await request(port, `/items/${i}?tag=boom`);
    const records = await recordsTagged('boom', 3);
    for (const record of records) {
      assert.equal(record['fine'], 'ok');
      assert.equal('boom' in record, false);
      assert.equal('big' in record, false);
      assert.equal(record['response'].status, 200);
    }
    assert.equal(errors.length, 2, errors.map((e) => e.message).join('\n'));
    assert.match(errors[0]!.message, /customFields\["boom"\] threw: kaboom/);
    assert.match(errors[1]!.message, /customFields\["big"\] returned a value JSON cannot write/);
  });

  it('consumer: an object, a string as { id }, undefined leaves it out; it sits before started_at', async () => {
    const { port } = await appWith({
      consumer: (req: Req) => (req.user?.plan === 'pro' && req.user.id === 'alice' ? req.user : req.user?.id),
    });
    await request(port, '/items/1?tag=consumer-a', { headers: { 'x-user': 'alice' } });
    await request(port, '/items/2?tag=consumer-b', { headers: { 'x-user': 'bob' } });
    await request(port, '/items/3?tag=consumer-none');
    const [alice] = await recordsTagged('consumer-a', 1);
    const [bob] = await recordsTagged('consumer-b', 1);
    const [none] = await recordsTagged('consumer-none', 1);
    assert.deepEqual(alice!['consumer'], { id: 'alice', plan: 'pro' });
    assert.deepEqual(bob!['consumer'], { id: 'bob' });
    assert.equal(none!['consumer'], undefined);
    const keys = Object.keys(alice!);
    assert.equal(keys.indexOf('consumer'), keys.indexOf('started_at') - 1);
  });

  it('a throwing consumer is reported once and the record is still logged', async () => {
    const errors: Error[] = [];
    const { port } = await appWith({
      onError: (err) => errors.push(err),
      consumer: () => {
        throw new Error('no session store');
      },
    });
    await request(port, '/items/1?tag=consumer-throws');
    await request(port, '/items/2?tag=consumer-throws');
    const records = await recordsTagged('consumer-throws', 2);
    assert.equal(records[0]!['consumer'], undefined);
    assert.equal(errors.length, 1);
  });

  it('skip: decided when the response finishes; skipped requests are not counted', async () => {
    const { port, mw } = await appWith({
      // Log one consumer only, and never the 404s (the status is known at finish).
      skip: (req: Req, res) => req.user?.id !== 'alice' || res.statusCode === 404,
    });
    await request(port, '/items/1?tag=skip', { headers: { 'x-user': 'alice' } });
    await request(port, '/items/2?tag=skip', { headers: { 'x-user': 'bob' } });
    await request(port, '/missing?tag=skip', { headers: { 'x-user': 'alice' } });
    await request(port, '/items/3?tag=skip');
    await request(port, '/items/4?tag=skip', { headers: { 'x-user': 'alice' } });
    const records = await recordsTagged('skip', 2);
    await until(() => mw.stats().sent === 2);
    assert.deepEqual(
      records.map((r) => r['request'].uri),
      ['/items/1?tag=skip', '/items/4?tag=skip'],
    );
    assert.equal(mw.stats().records, 2);
  });

  it('skip: any truthy value leaves the request out, as morgan takes it', async () => {
    const { port } = await appWith({
      // What a JavaScript app may return: a match, a number, a string.
      skip: ((req: Req) => /\/items\/[13]/.exec(req.url ?? '') ?? (req.url?.includes('/2') ? 1 : '')) as never,
    });
    for (let i = 1; i <= 4; i++) await request(port, `/items/${i}?tag=truthy`);
    const records = await recordsTagged('truthy', 1);
    assert.deepEqual(
      records.map((r) => r['request'].uri),
      ['/items/4?tag=truthy'],
    );
  });

  it('a throwing skip logs the request and is reported once', async () => {
    const errors: Error[] = [];
    const { port } = await appWith({
      onError: (err) => errors.push(err),
      skip: () => {
        throw new Error('bad skip');
      },
    });
    await request(port, '/items/1?tag=skip-throws');
    await request(port, '/items/2?tag=skip-throws');
    await recordsTagged('skip-throws', 2);
    assert.equal(errors.length, 1);
    assert.match(errors[0]!.message, /skip threw: bad skip/);
  });

  it('request.id comes from an incoming x-request-id', async () => {
    const { port } = await appWith({});
    await request(port, '/items/1?tag=rid-yes', { headers: { 'x-request-id': 'req-7f3a' } });
    await request(port, '/items/1?tag=rid-no');
    const [withId] = await recordsTagged('rid-yes', 1);
    const [withoutId] = await recordsTagged('rid-no', 1);
    assert.equal(withId!['request'].id, 'req-7f3a');
    assert.equal(Object.keys(withId!['request'])[0], 'id');
    assert.equal('id' in withoutId!['request'], false);
  });

  // Hooks that misbehave: hostile values, Promises, mutations.

  /** Collects the process's unhandled rejections while a test runs (one would end the process). */
  function unhandledRejections(): unknown[] {
    const seen: unknown[] = [];
    const listener = (reason: unknown): void => void seen.push(reason);
    process.on('unhandledRejection', listener);
    cleanup.push(() => void process.off('unhandledRejection', listener));
    return seen;
  }

  /** Lets Node report the rejections no one handled (it does after the microtasks run out). */
  async function settle(): Promise<void> {
    for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
  }

  it('a hook that throws what cannot be shown is reported and left out; the app and the record stand', async () => {
    class Hostile extends Error {
      override get message(): string {
        throw this;
      }
    }
    const throwers: Array<() => unknown> = [
      () => new Hostile(),
      () => Object.create(null) as unknown,
      () =>
        new Proxy(
          {},
          {
            get() {
              throw new Error('trap');
            },
            getPrototypeOf() {
              throw new Error('trap');
            },
          },
        ),
    ];
    for (const [i, make] of throwers.entries()) {
      const errors: Error[] = [];
      const tag = `hostile-${i}`;
      const fail = (): never => {
        throw make();
      };
      const { port } = await appWith({
        onError: (err) => errors.push(err),
        skip: fail,
        consumer: fail,
        customFields: { thrown: fail, value: () => ({ toJSON: fail }), fine: () => 'ok' },
      });
      await request(port, `/items/1?tag=${tag}`);
      await request(port, `/items/2?tag=${tag}`);
      const records = await recordsTagged(tag, 2);
      for (const record of records) {
        assert.equal(record['fine'], 'ok');
        assert.equal(record['response'].status, 200);
        for (const left of ['consumer', 'thrown', 'value']) assert.equal(left in record, false, left);
      }
      // skip, consumer, and the two fields: each once, with a message that could be made.
      assert.equal(errors.length, 4, errors.map((e) => e.message).join('\n'));
      for (const error of errors) assert.match(error.message, /^express-tcplog: /);
    }
  });

  it('the same without onError: a warning, not a crash', async () => {
    const warnings: string[] = [];
    const onWarning = (warning: Error): void => void warnings.push(warning.message);
    process.on('warning', onWarning);
    cleanup.push(() => void process.off('warning', onWarning));
    const { port } = await appWith({
      customFields: {
        thrown: () => {
          throw Object.create(null);
        },
      },
    });
    await request(port, '/items/1?tag=hostile-warned');
    const [record] = await recordsTagged('hostile-warned', 1);
    assert.equal('thrown' in record!, false);
    await until(() => warnings.some((w) => w.includes('customFields["thrown"] threw')));
  });

  it('a hook that returns a Promise is reported; its rejection is not left unhandled; skip counts it as false', async () => {
    const rejections = unhandledRejections();
    const errors: Error[] = [];
    const { port } = await appWith({
      onError: (err) => errors.push(err),
      // eslint-disable-next-line @typescript-eslint/require-await
      skip: (async () => false) as never,
      consumer: (() => Promise.reject(new Error('no session'))) as never,
      customFields: {
        // eslint-disable-next-line @typescript-eslint/require-await
        later: async () => 'later',
        failed: () => Promise.reject(new Error('lookup failed')),
        fine: () => 'ok',
      },
    });
    await request(port, '/items/1?tag=async');
    await request(port, '/items/2?tag=async');
    const records = await recordsTagged('async', 2);
    for (const record of records) {
      assert.equal(record['fine'], 'ok');
      for (const left of ['consumer', 'later', 'failed']) assert.equal(left in record, false, left);
    }
    assert.equal(errors.length, 4, errors.map((e) => e.message).join('\n'));
    for (const error of errors)
      assert.match(error.message, /returned a Promise; it must return its value synchronously/);
    await settle();
    assert.deepEqual(rejections, []);
  });

  it('an async onError that rejects is ignored, as one that throws', async () => {
    const rejections = unhandledRejections();
    let calls = 0;
    const { port } = await appWith({
      onError: () => {
        calls++;
        return Promise.reject(new Error('alerting is down'));
      },
      customFields: {
        thrown: () => {
          throw new Error('boom');
        },
      },
    });
    await request(port, '/items/1?tag=async-onerror');
    await recordsTagged('async-onerror', 1);
    await settle();
    assert.equal(calls, 1);
    assert.deepEqual(rejections, []);
  });

  it('consumer: null means none, a number is an id, a revoked Proxy or a non-object is reported and left out', async () => {
    const errors: Error[] = [];
    const values: Record<string, unknown> = {
      null: null,
      number: 42,
      date: new Date(0),
      array: ['a'],
      revoked: (() => {
        const { proxy, revoke } = Proxy.revocable({ id: 'x' }, {});
        revoke();
        return proxy;
      })(),
    };
    const { port } = await appWith({
      onError: (err) => errors.push(err),
      consumer: (req) => values[String(req.headers['x-kind'])] as never,
    });
    for (const kind of Object.keys(values)) {
      await request(port, `/items/1?tag=consumer-kind-${kind}`, { headers: { 'x-kind': kind } });
    }
    const consumerOf = async (kind: string): Promise<unknown> =>
      (await recordsTagged(`consumer-kind-${kind}`, 1))[0]!['consumer'];
    assert.equal(await consumerOf('null'), undefined);
    assert.deepEqual(await consumerOf('number'), { id: 42 });
    for (const kind of ['date', 'array', 'revoked']) assert.equal(await consumerOf(kind), undefined, kind);
    // One report for the hook, whichever value came first: the date.
    assert.equal(errors.length, 1, errors.map((e) => e.message).join('\n'));
    assert.match(
      errors[0]!.message,
      /consumer must return an object, a string, a number, null or undefined; got "1970-01-01T00:00:00.000Z"/,
    );
  });

  it('a custom field that JSON cannot write (a function, a Symbol) leaves the record as it was', async () => {
    const errors: Error[] = [];
    const { port } = await appWith({
      onError: (err) => errors.push(err),
      customFields: {
        'request.headers': () => () => 'fn',
        'request.toJSON': () => () => 'hijacked',
        symbol: () => Symbol('s'),
        'response.toJSON': () => ({ toJSON: () => () => 'x' }),
      },
    });
    await request(port, '/items/1?tag=unwritable');
    const [record] = await recordsTagged('unwritable', 1);
    assert.equal(typeof record, 'object');
    assert.equal(record!['request'].headers.host, `127.0.0.1:${port}`, 'headers kept');
    assert.equal(record!['response'].status, 200);
    assert.equal('symbol' in record!, false);
    assert.equal(errors.length, 4, errors.map((e) => e.message).join('\n'));
    for (const error of errors) assert.match(error.message, /returned a value JSON cannot write/);
  });

  it('a hook value is read once: a getter that fails the second time does not lose the record', async () => {
    const errors: Error[] = [];
    let reads = 0;
    const { port } = await appWith({
      onError: (err) => errors.push(err),
      customFields: {
        session: () => ({
          get id(): string {
            if (++reads % 2 === 0) throw new Error('session gone');
            return 's-1';
          },
        }),
      },
    });
    await request(port, '/items/1?tag=read-once');
    const [record] = await recordsTagged('read-once', 1);
    assert.deepEqual(record!['session'], { id: 's-1' });
    assert.deepEqual(errors, []);
  });

  it('a value that fits alone but not under its path: the record goes without the hooks', async () => {
    // As deep as JSON.stringify goes here, less a margin for the middleware's own frames; the
    // path then adds more levels than that margin.
    const nest = (depth: number): unknown => {
      let value: unknown = 0;
      for (let i = 0; i < depth; i++) value = [value];
      return value;
    };
    let low = 1;
    let high = 1 << 20;
    while (high - low > 1) {
      const mid = (low + high) >>> 1;
      try {
        JSON.stringify(nest(mid));
        low = mid;
      } catch {
        high = mid;
      }
    }
    const value = nest(low - 400);
    const path = Array.from({ length: 2_000 }, () => 'n').join('.');
    const errors: Error[] = [];
    const { port } = await appWith({
      onError: (err) => errors.push(err),
      consumer: () => 'alice',
      customFields: { [path]: () => value, fine: () => 'ok' },
    });
    await request(port, '/items/1?tag=too-deep');
    const [record] = await recordsTagged('too-deep', 1);
    assert.equal(record!['response'].status, 200);
    assert.equal('n' in record!, false);
    assert.equal('consumer' in record!, false);
    assert.equal(errors.length, 1, errors.map((e) => e.message).join('\n'));
    assert.match(errors[0]!.message, /sent without them/);
  });

  it('hooks that change req or res do not change the record', async () => {
    const { port } = await appWith({
      skip: (req, res) => {
        (req as { baseUrl?: unknown }).baseUrl = 5;
        (req as { route?: unknown }).route = { path: '/changed' };
        (res as unknown as { _header: unknown })._header = null;
        return false;
      },
    });
    await request(port, '/items/1?tag=mutating');
    const [record] = await recordsTagged('mutating', 1);
    assert.deepEqual(record!['route'], { path: '/items/:id', base_url: '' });
    assert.equal(record!['response'].status, 200);
  });

  it('redacting x-request-id redacts request.id too', async () => {
    const { port } = await appWith({ redact: ['authorization', 'x-request-id'] });
    await request(port, '/items/1?tag=rid-redacted', { headers: { 'x-request-id': 'secret-token' } });
    const [record] = await recordsTagged('rid-redacted', 1);
    assert.equal(record!['request'].id, 'REDACTED');
    assert.equal(record!['request'].headers['x-request-id'], 'REDACTED');
    assert.equal(JSON.stringify(record).includes('secret-token'), false);
  });
});

describe('hook options are validated in the factory', () => {
  const base = { host: '127.0.0.1', port: 9 };
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['customFields', { customFields: [] }, /option "customFields" must be an object/],
    ['customFields', { customFields: 'node' }, /option "customFields" must be an object/],
    ['customFields value', { customFields: { node: 'web-1' } }, /option "customFields\["node"\]" must be a function/],
    ['empty segment', { customFields: { 'a..b': () => 1 } }, /customFields\["a..b"\]" must be a dotted path/],
    ['trailing dot', { customFields: { 'a.': () => 1 } }, /must be a dotted path/],
    ['empty name', { customFields: { '': () => 1 } }, /must be a dotted path/],
    ['__proto__', { customFields: { 'a.__proto__.b': () => 1 } }, /without "__proto__"/],
    ['consumer', { consumer: 'alice' }, /option "consumer" must be a function/],
    ['skip', { skip: true }, /option "skip" must be a function/],
  ];
  for (const [label, options, message] of cases) {
    it(`rejects a bad ${label}: ${JSON.stringify(options)}`, () => {
      assert.throws(
        () => tcplog({ ...base, ...options } as tcplog.TcpLogOptions),
        (err: Error) => {
          assert.ok(err instanceof TypeError);
          assert.match(err.message, message);
          return true;
        },
      );
    });
  }
});
