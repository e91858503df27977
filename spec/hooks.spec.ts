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
  const cleanup: Array<() => Promise<void>> = [];

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
