/**
 * The record: hand-built captured exchanges -> Kong tcp-log JSON. Field set and order, sizes,
 * query strings, headers, redaction, latencies, addresses, and hostile input that must still
 * give exactly one line of valid JSON.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { buildRecord, headersFromRaw, normalizeIp, parseQuery } from '../lib/record.js';
import type { CapturedExchange, CapturedResponse, Extras } from '../lib/record.js';
import { serializeRecord as serialize, writeRecord } from '../lib/serialize.js';
import { parseOptions } from '../lib/options.js';
import type { RecordSettings } from '../lib/options.js';

const SETTINGS: RecordSettings = {
  delimiter: '\r\n',
  redact: new Set(['authorization']),
  api: null,
  apiJson: null,
};
const DEFAULT_REDACT: RecordSettings = {
  delimiter: '\r\n',
  redact: new Set(['authorization', 'proxy-authorization', 'cookie', 'set-cookie']),
  api: null,
  apiJson: null,
};
const NO_REDACT: RecordSettings = { delimiter: '\n', redact: null, api: null, apiJson: null };

/**
 * The record as the middleware writes it (serialize.ts), checked in every test against its
 * definition (record.ts), so each case here is also a case of "the fast path changes nothing".
 */
function serializeRecord(ex: CapturedExchange, settings: RecordSettings, extras?: Extras): string {
  const json = serialize(ex, settings, extras);
  assert.equal(
    json,
    JSON.stringify(buildRecord(ex, settings, extras)),
    'serialize.ts must write what record.ts builds',
  );
  const { data, length } = writeRecord(ex, settings, extras);
  assert.equal(
    data.toString('utf8', 0, length),
    json + settings.delimiter,
    'on the wire: the record, then the delimiter',
  );
  return json;
}

const RESPONSE_HEAD =
  'HTTP/1.1 200 OK\r\n' +
  'X-Powered-By: Express\r\n' +
  'Content-Type: application/json; charset=utf-8\r\n' +
  'Content-Length: 13\r\n' +
  'ETag: W/"d-abc"\r\n' +
  'Date: Tue, 25 Nov 2025 11:00:00 GMT\r\n' +
  'Connection: keep-alive\r\n' +
  'Keep-Alive: timeout=5\r\n' +
  '\r\n';

function exchange(overrides: Partial<CapturedExchange> = {}): CapturedExchange {
  return {
    method: 'GET',
    url: '/get?foo=bar',
    httpVersion: '1.1',
    rawHeaders: ['Host', 'example.com:8000', 'User-Agent', 'curl/7.37.1', 'Accept', '*/*'],
    requestBodyBytes: 0,
    scheme: 'http',
    host: 'example.com:8000',
    startedAt: 1433209822425,
    arrivedAt: 1000.25,
    headersAt: 1011.5,
    finishedAt: 1012.4,
    response: { status: 200, head: RESPONSE_HEAD, headers: null },
    responseBytes: 434,
    clientIp: '127.0.0.1',
    route: null,
    requestId: undefined,
    ...overrides,
  };
}

type Json = Record<string, any>;

/** Serializes and checks the one-line promise before anything else. */
function record(ex: CapturedExchange, settings: RecordSettings = SETTINGS): Json {
  const json = serializeRecord(ex, settings);
  assertOneLine(json);
  return JSON.parse(json) as Json;
}

function assertOneLine(json: string): void {
  assert.ok(!json.includes('\n'), 'a raw LF would end the record early');
  assert.ok(!json.includes('\r'), 'a raw CR would end the record early');
  // Well-formed UTF-16, so that it survives being written as UTF-8 (no lone surrogates).
  assert.equal(Buffer.from(json, 'utf8').toString('utf8'), json, 'the record must be valid UTF-8 on the wire');
  const parsed: unknown = JSON.parse(json);
  assert.ok(parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed));
  const framed = `${json}\r\n`;
  assert.equal(framed.split('\n').length, 2, 'one record, one line');
}

/** A small deterministic generator (mulberry32): the same cases on every run. */
function random(seed: number): () => number {
  let state = seed;
  return () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('serializeRecord', () => {
  it('writes the Kong fields in order, with every optional field present', () => {
    const json = serializeRecord(
      exchange({ route: { path: '/users/:id', baseUrl: '/users' }, clientIp: '::ffff:10.0.0.7' }),
      { ...SETTINGS, api: { name: 'users' }, apiJson: '{"name":"users"}' },
    );
    assertOneLine(json);
    const parsed = JSON.parse(json) as Json;
    assert.deepEqual(Object.keys(parsed), [
      'request',
      'response',
      'latencies',
      'api',
      'route',
      'started_at',
      'client_ip',
    ]);
    assert.deepEqual(Object.keys(parsed['request']), [
      'method',
      'uri',
      'request_uri',
      'size',
      'querystring',
      'headers',
    ]);
    assert.deepEqual(Object.keys(parsed['response']), ['status', 'size', 'headers']);
    assert.deepEqual(Object.keys(parsed['latencies']), ['request', 'proxy']);
    assert.deepEqual(parsed['api'], { name: 'users' });
    assert.deepEqual(parsed['route'], { path: '/users/:id', base_url: '/users' });
    assert.equal(parsed['started_at'], 1433209822425);
    assert.equal(parsed['client_ip'], '10.0.0.7');
    assert.equal(parsed['request'].method, 'GET');
    assert.equal(parsed['request'].uri, '/get?foo=bar');
    assert.equal(parsed['request'].request_uri, 'http://example.com:8000/get?foo=bar');
    assert.deepEqual(parsed['request'].querystring, { foo: 'bar' });
    assert.deepEqual(parsed['request'].headers, {
      host: 'example.com:8000',
      'user-agent': 'curl/7.37.1',
      accept: '*/*',
    });
    assert.equal(parsed['response'].status, 200);
    assert.equal(parsed['response'].size, 434);
    assert.deepEqual(parsed['latencies'], { request: 12, proxy: 11 });
  });

  it('leaves out api, route and client_ip when there are none', () => {
    const parsed = record(exchange({ clientIp: undefined, route: null }));
    assert.deepEqual(Object.keys(parsed), ['request', 'response', 'latencies', 'started_at']);
  });

  it('writes numbers as numbers (Kong fixed strings in 2.2)', () => {
    const parsed = record(exchange());
    assert.equal(typeof parsed['request'].size, 'number');
    assert.equal(typeof parsed['response'].size, 'number');
    assert.equal(typeof parsed['response'].status, 'number');
    assert.equal(typeof parsed['latencies'].request, 'number');
    assert.equal(typeof parsed['started_at'], 'number');
    assert.ok(Number.isInteger(parsed['started_at']));
  });

  it('request.size counts the request line, the header lines, the blank line and the body', () => {
    const body = 'name=caf%C3%A9&x=1';
    const raw =
      'POST /submit?x=1&y=2 HTTP/1.1\r\n' +
      'Host: example.com:8000\r\n' +
      'Content-Type: application/x-www-form-urlencoded\r\n' +
      `Content-Length: ${body.length}\r\n` +
      'X-Name: Ã©\r\n' +
      'Cookie: a=1\r\n' +
      'Cookie: b=2\r\n' +
      '\r\n' +
      body;
    const ex = exchange({
      method: 'POST',
      url: '/submit?x=1&y=2',
      httpVersion: '1.1',
      rawHeaders: [
        'Host',
        'example.com:8000',
        'Content-Type',
        'application/x-www-form-urlencoded',
        'Content-Length',
        String(body.length),
        'X-Name',
        'Ã©',
        'Cookie',
        'a=1',
        'Cookie',
        'b=2',
      ],
      requestBodyBytes: Buffer.byteLength(body),
    });
    // Header text is latin1: one character per byte on the wire.
    assert.equal(record(ex)['request'].size, Buffer.byteLength(raw, 'latin1'));
  });

  it('request.size of a bodiless HTTP/1.0 request with no headers', () => {
    const raw = 'GET / HTTP/1.0\r\n\r\n';
    const ex = exchange({ url: '/', httpVersion: '1.0', rawHeaders: [], requestBodyBytes: 0 });
    assert.equal(record(ex)['request'].size, Buffer.byteLength(raw, 'latin1'));
  });

  it('response.size is the bytes sent, as captured', () => {
    assert.equal(record(exchange({ responseBytes: 0 }))['response'].size, 0);
    assert.equal(record(exchange({ responseBytes: 123456 }))['response'].size, 123456);
  });

  it('leaves status out when no response head was sent', () => {
    const parsed = record(exchange({ response: null, headersAt: null, responseBytes: 0 }));
    assert.deepEqual(Object.keys(parsed['response']), ['size', 'headers']);
    assert.ok(!('status' in parsed['response']));
    assert.deepEqual(parsed['response'].headers, {});
    assert.equal(parsed['response'].size, 0);
  });

  it('leaves latencies.proxy out when headers were never written', () => {
    const parsed = record(exchange({ headersAt: null, response: null }));
    assert.deepEqual(Object.keys(parsed['latencies']), ['request']);
    assert.equal(parsed['latencies'].request, 12);
  });

  it('latencies are rounded ms and request + 1 >= proxy', () => {
    let seed = 7;
    const random = (): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed / 2147483648;
    };
    for (let i = 0; i < 500; i++) {
      const arrivedAt = random() * 1e6;
      const headersAt = arrivedAt + random() * (i % 2 === 0 ? 3 : 3000);
      const finishedAt = headersAt + random() * (i % 3 === 0 ? 1 : 500);
      const { latencies } = record(exchange({ arrivedAt, headersAt, finishedAt }));
      assert.ok(Number.isInteger(latencies.request) && Number.isInteger(latencies.proxy), JSON.stringify(latencies));
      assert.ok(
        latencies.request + 1 >= latencies.proxy,
        JSON.stringify({ latencies, arrivedAt, headersAt, finishedAt }),
      );
      assert.ok(latencies.proxy >= 0);
      assert.equal(latencies.request, Math.round(finishedAt - arrivedAt));
    }
  });

  it('request_uri joins scheme, host and uri', () => {
    const parsed = record(exchange({ scheme: 'https', host: 'api.example', url: '/a/b?c=d#e' }));
    assert.equal(parsed['request'].request_uri, 'https://api.example/a/b?c=d#e');
    assert.equal(parsed['request'].uri, '/a/b?c=d#e');
    assert.deepEqual(parsed['request'].querystring, { c: 'd' });
  });

  it('request_uri of an absolute-form target (as sent to a proxy) is the target itself', () => {
    for (const url of ['http://other.test:81/users/9?q=1', 'HTTPS://other.test/a', 'http://other.test/caf\u00e9?"']) {
      const parsed = record(exchange({ host: 'example.com:8000', url }));
      assert.equal(parsed['request'].request_uri, url);
      assert.equal(parsed['request'].uri, url, 'uri stays what the client sent');
    }
    // Not absolute: no scheme, or no "//" after it.
    for (const url of ['*', 'mailto:a@b', '//x/y', 'other.test:81']) {
      const parsed = record(exchange({ host: 'example.com:8000', url }));
      assert.equal(parsed['request'].request_uri, `http://example.com:8000${url}`);
    }
  });

  it('querystring is {} when there is no query', () => {
    for (const url of ['/', '/a', '/a?', '/a?#x', '/a?#x=1', '/a?&&']) {
      assert.deepEqual(record(exchange({ url }))['request'].querystring, {}, url);
    }
  });

  it("a '?' inside the fragment starts no query", () => {
    for (const url of ['/a#?x=1', '/a#frag?x=1']) {
      assert.deepEqual(record(exchange({ url }))['request'].querystring, {}, url);
    }
  });

  it('client_ip: IPv4-mapped IPv6 is written as IPv4, other addresses unchanged', () => {
    assert.equal(record(exchange({ clientIp: '::ffff:1.2.3.4' }))['client_ip'], '1.2.3.4');
    assert.equal(record(exchange({ clientIp: '::1' }))['client_ip'], '::1');
    assert.equal(record(exchange({ clientIp: '1.2.3.4' }))['client_ip'], '1.2.3.4');
  });

  it('api is written as given, after latencies', () => {
    const settings = parseOptions({ host: '127.0.0.1', port: 9999, api: { name: 'users', tags: ['a'], n: 1 } }).record;
    const parsed = record(exchange(), settings);
    assert.deepEqual(parsed['api'], { name: 'users', tags: ['a'], n: 1 });
    assert.deepEqual(Object.keys(parsed).slice(0, 4), ['request', 'response', 'latencies', 'api']);
  });

  it('the delimiter follows the record on the wire, once', () => {
    for (const settings of [SETTINGS, NO_REDACT]) {
      const json = serializeRecord(exchange(), settings);
      const { data, length } = writeRecord(exchange(), settings);
      assert.equal(data.toString('utf8', 0, length), `${json}${settings.delimiter}`);
    }
  });
});

describe('parseQuery', () => {
  it('a repeated key gives an array, in order', () => {
    assert.deepEqual({ ...parseQuery('/p?a=1&a=2&b=x&a=3') }, { a: ['1', '2', '3'], b: 'x' });
  });

  it('a bare key gives true, an empty value gives ""', () => {
    assert.deepEqual({ ...parseQuery('/p?a&b=&c=1') }, { a: true, b: '', c: '1' });
    assert.deepEqual({ ...parseQuery('/p?a&a=1&a') }, { a: [true, '1', true] });
  });

  it('empty parts are skipped', () => {
    assert.deepEqual({ ...parseQuery('/p?&&a=1&&b=2&') }, { a: '1', b: '2' });
  });

  it("decodes '+' as space and %-escapes, in keys and values", () => {
    assert.deepEqual(
      { ...parseQuery('/p?q=hello+world&name=caf%C3%A9&%61%62=%2B&sp+key=a%20b&eq=a%3Db&amp=x%26y') },
      { q: 'hello world', name: 'café', ab: '+', 'sp key': 'a b', eq: 'a=b', amp: 'x&y' },
    );
  });

  it('keeps a value with "=" in it whole', () => {
    assert.deepEqual({ ...parseQuery('/p?token=abc==&x=a=b=c') }, { token: 'abc==', x: 'a=b=c' });
  });

  it('keeps malformed escapes as sent', () => {
    assert.deepEqual(
      { ...parseQuery('/p?a=%zz&b=100%&c=%E9&%zz=1&d=%C3') },
      { a: '%zz', b: '100%', c: '%E9', '%zz': '1', d: '%C3' },
    );
    assert.deepEqual({ ...parseQuery('/p?e=a+%zz') }, { e: 'a %zz' });
  });

  it('decodes what decodeURIComponent decodes and keeps what it refuses, on generated components', () => {
    // What the parser did when it caught decodeURIComponent's errors (each throw cost ~9 µs).
    const decode = globalThis.decodeURIComponent;
    const reference = (text: string): string => {
      const spaced = text.replace(/\+/g, ' ');
      try {
        return decode(spaced);
      } catch {
        return spaced;
      }
    };
    const next = random(20261130);
    const PIECES = [
      '%',
      '%2',
      '%zz',
      '%41',
      '%7e',
      '%C3',
      '%A9',
      '%E2%82',
      '%AC',
      '%F0%9F%98%80',
      '%ED%A0%80',
      '%C0%AF',
      '%F4%90%80%80',
      '%c3%a9',
      'a',
      '+',
      'é',
      '\ud800',
      '9',
      'F',
    ];
    // Malformed components are told apart before decodeURIComponent, not by its throw.
    let throws = 0;
    globalThis.decodeURIComponent = (text: string): string => {
      try {
        return decode(text);
      } catch (err) {
        throws++;
        throw err;
      }
    };
    try {
      for (let n = 0; n < 20_000; n++) {
        let text = '';
        for (let i = Math.floor(next() * 6) + 1; i > 0; i--) text += PIECES[Math.floor(next() * PIECES.length)];
        assert.deepEqual({ ...parseQuery(`/p?k=${text}`) }, { k: reference(text) }, JSON.stringify(text));
      }
    } finally {
      globalThis.decodeURIComponent = decode;
    }
    assert.equal(throws, 0, 'decodeURIComponent never threw');
  });

  it('ignores the fragment', () => {
    assert.deepEqual({ ...parseQuery('/p?a=1#frag') }, { a: '1' });
    assert.deepEqual({ ...parseQuery('/p?a=1&b=2#c=3&d') }, { a: '1', b: '2' });
  });

  it('parses into a null-prototype object: __proto__, constructor and prototype are plain keys', () => {
    const result = parseQuery(
      '/p?__proto__=x&constructor=y&prototype=z&__proto__[polluted]=1&constructor[prototype][polluted]=2&toString=t&hasOwnProperty=h',
    );
    assert.equal(Object.getPrototypeOf(result), null);
    assert.equal(({} as Record<string, unknown>)['polluted'], undefined);
    assert.equal((Object.prototype as unknown as Record<string, unknown>)['polluted'], undefined);
    assert.deepEqual(Object.keys(result), [
      '__proto__',
      'constructor',
      'prototype',
      '__proto__[polluted]',
      'constructor[prototype][polluted]',
      'toString',
      'hasOwnProperty',
    ]);
    assert.equal(result['__proto__'], 'x');
    assert.equal(result['constructor'], 'y');
    assert.equal(result['prototype'], 'z');
    assert.equal(Object.getOwnPropertyDescriptor(result, 'toString')?.value, 't');
  });

  it('repeated __proto__ and constructor keys become arrays, not merged with built-ins', () => {
    const result = parseQuery('/p?__proto__=1&__proto__=2&constructor&constructor=c');
    assert.deepEqual(result['__proto__'], ['1', '2']);
    assert.deepEqual(result['constructor'], [true, 'c']);
    assert.equal(({} as Record<string, unknown>)['polluted'], undefined);
  });

  it('decoded keys cannot pollute either', () => {
    const result = parseQuery('/p?%5F%5Fproto%5F%5F=x&__%70roto__[polluted]=1');
    assert.equal(Object.getPrototypeOf(result), null);
    assert.equal(result['__proto__'], 'x');
    assert.equal(({} as Record<string, unknown>)['polluted'], undefined);
  });
});

describe('the querystring in a record', () => {
  it('keeps __proto__ as a key in the JSON and pollutes nothing', () => {
    const json = serializeRecord(
      exchange({ url: '/p?__proto__=x&constructor=y&prototype=z&__proto__[polluted]=1' }),
      SETTINGS,
    );
    assertOneLine(json);
    assert.ok(
      json.includes('"querystring":{"__proto__":"x","constructor":"y","prototype":"z","__proto__[polluted]":"1"}'),
      json,
    );
    const parsed = JSON.parse(json) as Json;
    assert.ok(Object.prototype.hasOwnProperty.call(parsed['request'].querystring, '__proto__'));
    assert.equal(({} as Record<string, unknown>)['polluted'], undefined);
  });
});

describe('headersFromRaw', () => {
  it('lower-cases names and keeps values', () => {
    const headers = headersFromRaw(['Host', 'example.com', 'X-Request-ID', 'abc', 'ACCEPT', 'text/html'], null);
    assert.equal(Object.getPrototypeOf(headers), null);
    assert.deepEqual({ ...headers }, { host: 'example.com', 'x-request-id': 'abc', accept: 'text/html' });
  });

  it('repeated headers become arrays, in order, whatever their case', () => {
    const headers = headersFromRaw(['X-A', '1', 'x-a', '2', 'X-B', 'b', 'X-A', '3'], null);
    assert.deepEqual({ ...headers }, { 'x-a': ['1', '2', '3'], 'x-b': 'b' });
  });

  it('redacts case-insensitively', () => {
    const redact = parseOptions({ host: '127.0.0.1', port: 9999, redact: ['X-Secret', 'authorization'] }).record.redact;
    const headers = headersFromRaw(
      ['AUTHORIZATION', 'Bearer abc', 'x-SECRET', 's3cret', 'X-Public', 'visible'],
      redact,
    );
    assert.deepEqual({ ...headers }, { authorization: 'REDACTED', 'x-secret': 'REDACTED', 'x-public': 'visible' });
  });

  it('a repeated redacted header is logged as "REDACTED", not as an array', () => {
    const headers = headersFromRaw(['Cookie', 'a=1', 'cookie', 'b=2', 'COOKIE', 'c=3'], DEFAULT_REDACT.redact);
    assert.equal(headers['cookie'], 'REDACTED');
  });

  it('redact: null logs every header as it is', () => {
    const headers = headersFromRaw(['Authorization', 'Bearer abc', 'Cookie', 'a=1', 'Cookie', 'b=2'], null);
    assert.deepEqual({ ...headers }, { authorization: 'Bearer abc', cookie: ['a=1', 'b=2'] });
  });

  it('__proto__ and constructor header names are plain keys', () => {
    const headers = headersFromRaw(['__proto__', 'x', 'Constructor', 'y', '__PROTO__', 'z'], null);
    assert.equal(Object.getPrototypeOf(headers), null);
    assert.deepEqual(headers['__proto__'], ['x', 'z']);
    assert.equal(headers['constructor'], 'y');
    assert.equal(({} as Record<string, unknown>)['x'], undefined);
  });

  it('decodes UTF-8 sent as latin1 text; keeps invalid UTF-8 byte for byte', () => {
    const headers = headersFromRaw(
      ['X-Good', 'caf\u00c3\u00a9', 'X-Bad', '\u00c3\u00a9\u00ff', 'X-Latin1', 'caf\u00e9'],
      null,
    );
    assert.equal(headers['x-good'], 'café');
    assert.equal(headers['x-bad'], '\u00c3\u00a9\u00ff');
    assert.equal(headers['x-latin1'], 'caf\u00e9');
  });

  it('decodes a value when its bytes are UTF-8, on generated values; a BOM is kept as sent', () => {
    const strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
    const next = random(11302026);
    const BYTES = [
      0x61, 0x09, 0x7f, 0x80, 0xa0, 0xbf, 0xc2, 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xed, 0xa0, 0xf0, 0x9f, 0x98, 0xf4, 0x90,
      0xff, 0xef, 0xbb,
    ];
    for (let n = 0; n < 20_000; n++) {
      const bytes = Buffer.from(
        Array.from({ length: 1 + Math.floor(next() * 8) }, () => BYTES[Math.floor(next() * BYTES.length)] as number),
      );
      const latin1 = bytes.toString('latin1');
      let expected = latin1;
      try {
        expected = strict.decode(bytes);
      } catch {
        // Not UTF-8: one character per byte.
      }
      assert.equal(headersFromRaw(['X-V', latin1], null)['x-v'], expected, bytes.toString('hex'));
    }
    assert.equal(headersFromRaw(['X-Bom', '\u00ef\u00bb\u00bfv'], null)['x-bom'], '\ufeffv');
  });

  it('ignores a trailing name without a value', () => {
    assert.deepEqual({ ...headersFromRaw(['X-A', '1', 'X-Dangling'], null) }, { 'x-a': '1' });
  });
});

describe('request headers in a record', () => {
  it('are redacted with the settings, case-insensitively', () => {
    const parsed = record(
      exchange({ rawHeaders: ['Host', 'x', 'Authorization', 'Basic dXNlcjpwYXNz', 'Cookie', 'session=1'] }),
      DEFAULT_REDACT,
    );
    assert.deepEqual(parsed['request'].headers, { host: 'x', authorization: 'REDACTED', cookie: 'REDACTED' });
    assert.ok(!JSON.stringify(parsed).includes('dXNlcjpwYXNz'));
    assert.ok(!JSON.stringify(parsed).includes('session=1'));
  });

  it('redact: null logs everything', () => {
    const parsed = record(exchange({ rawHeaders: ['Authorization', 'Basic abc', 'Cookie', 'session=1'] }), NO_REDACT);
    assert.deepEqual(parsed['request'].headers, { authorization: 'Basic abc', cookie: 'session=1' });
  });

  it('a long redaction list (looked up rather than walked) redacts the same, in any case', () => {
    const names = Array.from({ length: 500 }, (_, i) => `x-name-${i}`);
    const long: RecordSettings = { ...SETTINGS, redact: new Set([...names, 'x-secret', 'set-cookie']) };
    const parsed = record(
      exchange({ rawHeaders: ['Host', 'x', 'X-SECRET', 's', 'x-name-499', 'n', 'X-Name-5000', 'kept'] }),
      long,
    );
    assert.deepEqual(parsed['request'].headers, {
      host: 'x',
      'x-secret': 'REDACTED',
      'x-name-499': 'REDACTED',
      'x-name-5000': 'kept',
    });
    const head = 'HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Name-7: v\r\nX-Kept: k\r\n\r\n';
    const withHead = record(exchange({ response: { status: 200, head, headers: null } }), long);
    assert.deepEqual(withHead['response'].headers, { 'set-cookie': 'REDACTED', 'x-name-7': 'REDACTED', 'x-kept': 'k' });
  });
});

describe('custom fields in a record', () => {
  it('2 000 fields under one parent all land; the shared api object is left as it was', () => {
    const api = Object.freeze({ name: 'shop' });
    const settings: RecordSettings = { ...SETTINGS, api, apiJson: JSON.stringify(api) };
    const custom = [
      ...Array.from({ length: 2000 }, (_, i) => ({ path: ['extra', `f${i}`], value: i })),
      { path: ['api', 'version'], value: 2 },
      { path: ['api', 'stage'], value: 'live' },
      { path: ['extra', 'f7'], value: undefined },
    ];
    const built = serializeRecord(exchange(), settings, { custom });
    const parsed = JSON.parse(built) as Json;
    assert.equal(Object.keys(parsed['extra']).length, 1999);
    assert.equal(parsed['extra'].f1999, 1999);
    assert.equal(parsed['extra'].f7, undefined);
    assert.deepEqual(parsed['api'], { name: 'shop', version: 2, stage: 'live' });
    assert.deepEqual(api, { name: 'shop' });
  });
});

describe('response headers', () => {
  it('are parsed from the head as sent, including what Node added', () => {
    const parsed = record(exchange());
    assert.deepEqual(parsed['response'].headers, {
      'x-powered-by': 'Express',
      'content-type': 'application/json; charset=utf-8',
      'content-length': '13',
      etag: 'W/"d-abc"',
      date: 'Tue, 25 Nov 2025 11:00:00 GMT',
      connection: 'keep-alive',
      'keep-alive': 'timeout=5',
    });
  });

  it('keep colons inside values, repeated names as arrays, and Transfer-Encoding', () => {
    const head =
      'HTTP/1.1 302 Found\r\n' +
      'Location: http://example.com:8080/next?a=b\r\n' +
      'X-Multi: one\r\n' +
      'x-multi: two\r\n' +
      'Transfer-Encoding: chunked\r\n' +
      'X-Empty:\r\n' +
      '\r\n';
    const parsed = record(exchange({ response: { status: 302, head, headers: null } }), NO_REDACT);
    assert.equal(parsed['response'].status, 302);
    assert.deepEqual(parsed['response'].headers, {
      location: 'http://example.com:8080/next?a=b',
      'x-multi': ['one', 'two'],
      'transfer-encoding': 'chunked',
      'x-empty': '',
    });
  });

  it('redacts Set-Cookie case-insensitively; a repeated one is "REDACTED", not an array', () => {
    const head = 'HTTP/1.1 200 OK\r\nSET-COOKIE: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n';
    const parsed = record(exchange({ response: { status: 200, head, headers: null } }), DEFAULT_REDACT);
    assert.equal(parsed['response'].headers['content-length'], '0');
    assert.ok(!JSON.stringify(parsed).includes('a=1'));
    assert.equal(parsed['response'].headers['set-cookie'], 'REDACTED');
  });

  it('redact: null logs Set-Cookie as sent', () => {
    const head = 'HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n';
    const parsed = record(exchange({ response: { status: 200, head, headers: null } }), NO_REDACT);
    assert.deepEqual(parsed['response'].headers, { 'set-cookie': ['a=1', 'b=2'] });
  });

  it('fall back to the headers object when the head text is not available', () => {
    const response: CapturedResponse = {
      status: 201,
      head: null,
      headers: {
        'content-type': 'text/plain',
        'content-length': 12,
        'x-multi': ['1', '2'],
        'set-cookie': ['a=1', 'b=2'],
        authorization: 'secret',
        'x-undefined': undefined,
      },
    };
    const parsed = record(exchange({ response }), DEFAULT_REDACT);
    assert.equal(parsed['response'].status, 201);
    assert.deepEqual(parsed['response'].headers, {
      'content-type': 'text/plain',
      'content-length': '12',
      'x-multi': ['1', '2'],
      'set-cookie': 'REDACTED',
      authorization: 'REDACTED',
    });
  });

  it('are {} with neither a head nor headers', () => {
    const parsed = record(exchange({ response: { status: 204, head: null, headers: null } }));
    assert.equal(parsed['response'].status, 204);
    assert.deepEqual(parsed['response'].headers, {});
  });

  it('decode UTF-8 header values sent as latin1 text', () => {
    const head = 'HTTP/1.1 200 OK\r\nX-Name: caf\u00c3\u00a9\r\nX-Bad: \u00c3\u00a9\u00ff\r\n\r\n';
    const parsed = record(exchange({ response: { status: 200, head, headers: null } }), NO_REDACT);
    assert.equal(parsed['response'].headers['x-name'], 'café');
    assert.equal(parsed['response'].headers['x-bad'], '\u00c3\u00a9\u00ff');
  });
});

describe('normalizeIp', () => {
  it('turns IPv4-mapped IPv6 into IPv4 and leaves everything else', () => {
    assert.equal(normalizeIp('::ffff:1.2.3.4'), '1.2.3.4');
    assert.equal(normalizeIp('::ffff:127.0.0.1'), '127.0.0.1');
    assert.equal(normalizeIp('::1'), '::1');
    assert.equal(normalizeIp('1.2.3.4'), '1.2.3.4');
    assert.equal(normalizeIp('fe80::1'), 'fe80::1');
    assert.equal(normalizeIp('2001:db8::ffff:1'), '2001:db8::ffff:1');
    assert.equal(normalizeIp('::ffff:abcd'), '::ffff:abcd');
    assert.equal(normalizeIp(''), '');
  });

  it('in the other forms an address from X-Forwarded-For may take', () => {
    assert.equal(normalizeIp('::FFFF:1.2.3.4'), '1.2.3.4');
    assert.equal(normalizeIp('0:0:0:0:0:ffff:1.2.3.4'), '1.2.3.4');
    assert.equal(normalizeIp('0000:0000:0000:0000:0000:FFFF:10.0.0.1'), '10.0.0.1');
    assert.equal(normalizeIp('0::ffff:1.2.3.4'), '1.2.3.4');
    // Not IPv4-mapped, or not an address at all: as given.
    assert.equal(normalizeIp('1::ffff:1.2.3.4'), '1::ffff:1.2.3.4');
    assert.equal(normalizeIp('fe80::ffff:1.2.3.4'), 'fe80::ffff:1.2.3.4');
    assert.equal(normalizeIp(':ffff:1.2.3.4'), ':ffff:1.2.3.4');
    assert.equal(normalizeIp('0:ffff:1.2.3.4'), '0:ffff:1.2.3.4');
    assert.equal(normalizeIp('::FFFF:abcd'), '::FFFF:abcd');
    assert.equal(normalizeIp('::ffff:0:1.2.3.4'), '::ffff:0:1.2.3.4', 'IPv4-translated, not mapped');
  });

  it('with the IPv4 address written as two hex groups', () => {
    assert.equal(normalizeIp('::ffff:0102:0304'), '1.2.3.4');
    assert.equal(normalizeIp('::ffff:7f00:1'), '127.0.0.1');
    assert.equal(normalizeIp('0:0:0:0:0:FFFF:C0A8:0101'), '192.168.1.1');
    assert.equal(normalizeIp('::ffff:ffff:ffff'), '255.255.255.255');
    // Not IPv4-mapped: as given.
    assert.equal(normalizeIp('::ffff:0:102:304'), '::ffff:0:102:304', 'IPv4-translated, not mapped');
    assert.equal(normalizeIp('1::ffff:102:304'), '1::ffff:102:304');
    assert.equal(normalizeIp('::ffff:10203:4'), '::ffff:10203:4');
    // Dotted forms that are no IPv4 address stay as given.
    assert.equal(normalizeIp('::ffff:999.1.1.1'), '::ffff:999.1.1.1');
    assert.equal(normalizeIp('::ffff:010.1.2.3'), '::ffff:010.1.2.3');
    assert.equal(normalizeIp('0::FFFF:1.2.3.256'), '0::FFFF:1.2.3.256');
  });
});

describe('hostile input always gives one line of valid JSON', () => {
  const nasty = [
    'a\r\nb',
    '\r',
    '\n',
    '\r\n\r\n{"request":1}\r\n',
    'line\u2028separator\u2029paragraph',
    '\u0000\u0001\u001f\u007f',
    '"quoted" \\ backslash',
    '\u00c3\u00a9\u00ff',
    'lone \ud800 surrogate \udfff',
    '</script><!--',
  ];

  /** encodeURIComponent, except that text it cannot encode (lone surrogates) is kept raw. */
  function encode(text: string): string {
    try {
      return encodeURIComponent(text);
    } catch {
      return text;
    }
  }

  for (const text of nasty) {
    it(`${JSON.stringify(text)} in every field`, () => {
      const ex = exchange({
        method: `GET${text}`,
        url: `/p${text}?k${text}=v${text}&${encode(text)}=${encode(text)}`,
        rawHeaders: [`X-${text}`, `v${text}`, 'Host', text],
        host: text,
        clientIp: text,
        route: { path: `/r${text}`, baseUrl: text },
        response: { status: 200, head: `HTTP/1.1 200 OK\r\nX-Out: ${text}\r\n\r\n`, headers: null },
      });
      for (const settings of [SETTINGS, NO_REDACT]) {
        const json = serializeRecord(ex, settings);
        assertOneLine(json);
        const parsed = JSON.parse(json) as Json;
        assert.equal(parsed['request'].uri, ex.url, 'the uri is kept as sent');
        assert.equal(parsed['request'].method, ex.method);
        assert.equal(parsed['route'].base_url, text);
        const query = parsed['request'].querystring as Json;
        // The percent-encoded pair round-trips to the original text when it is well-formed.
        if (Buffer.from(text, 'utf8').toString('utf8') === text) {
          assert.equal(query[text], text);
        }
      }
    });
  }

  it('a header value decoded from invalid UTF-8 stays valid JSON text', () => {
    const parsed = record(exchange({ rawHeaders: ['X-Bytes', '\u00c3\u00a9\u00ff\u0080\u00fe'] }), NO_REDACT);
    assert.equal(parsed['request'].headers['x-bytes'], '\u00c3\u00a9\u00ff\u0080\u00fe');
  });

  it('U+2028 and U+2029 survive the round trip', () => {
    const parsed = record(exchange({ url: '/p?a=%E2%80%A8&b=\u2029' }), NO_REDACT);
    assert.equal(parsed['request'].querystring.a, '\u2028');
    assert.equal(parsed['request'].querystring.b, '\u2029');
  });

  it('a 16 KiB URL with 10 000 query parameters', () => {
    const parts: string[] = [];
    for (let i = 0; i < 10_000; i++) parts.push(i % 10 === 0 ? `k${i % 100}` : `k${i % 100}=${i}`);
    const url = `/search?${parts.join('&')}`;
    assert.ok(url.length >= 16 * 1024, `url is ${url.length} characters`);
    const parsed = record(exchange({ url }), NO_REDACT);
    const query = parsed['request'].querystring as Json;
    assert.equal(Object.keys(query).length, 100);
    assert.equal(query['k7'].length, 100);
    assert.equal(query['k7'][0], '7');
    assert.equal(query['k0'][0], true);
    assert.equal(parsed['request'].uri, url);
    const total = Object.values(query).reduce((n: number, v: unknown) => n + (Array.isArray(v) ? v.length : 1), 0);
    assert.equal(total, 10_000);
  });

  it('64 KiB of headers', () => {
    const raw: string[] = [];
    for (let i = 0; i < 64; i++) raw.push(`X-H${i}`, `${'v'.repeat(1000)}\r\n${i}`);
    const parsed = record(exchange({ rawHeaders: raw }), NO_REDACT);
    assert.equal(Object.keys(parsed['request'].headers).length, 64);
    assert.equal(parsed['request'].headers['x-h63'], `${'v'.repeat(1000)}\r\n63`);
  });
});

describe('serialize.ts writes exactly what record.ts builds', () => {
  const next = random(20261125);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)] as T;
  // Pieces that take each fast path and each way out of it.
  const NAMES = [
    'Host',
    'accept',
    'X-Id',
    'x-id',
    'Cookie',
    'authorization',
    '0',
    '12',
    '9x',
    '__proto__',
    'constructor',
  ];
  const TEXT = [
    'a',
    'Zz',
    ' ',
    '"',
    '\\',
    '\t',
    '\u0001',
    '\u007f',
    '\u00e9',
    '\u00c3\u00a9',
    '\u00ff',
    '=',
    '&',
    '%41',
    '%',
    '+',
    '#',
    '?',
  ];
  const KEYS = ['a', 'b', 'a', '0', '1', '"', '\\', '\u00e9', '%41', '+', '\ud800'];
  const VALUES = ['x', '1', '=', '"', '\\', '\u00e9', '%41', '%zz', '+', '#', '?', '\u0001'];
  /** Mostly well-formed pairs, some repeated, some flags or empty parts. */
  const query = (): string => {
    const parts: string[] = [];
    for (let i = Math.floor(next() * 5); i > 0; i--) {
      const key = text(KEYS, 3);
      parts.push(next() < 0.1 ? key : `${key}=${text(VALUES, 3)}`);
    }
    return parts.join('&');
  };
  const WIDE = ['\u2028', '\ud83d\ude00', '\ud800', '\udfff', '\u00e9'];
  const text = (pieces: readonly string[], max: number): string => {
    let out = '';
    for (let i = Math.floor(next() * max); i > 0; i--) out += pick(pieces);
    return out;
  };
  const settingsList: RecordSettings[] = [
    SETTINGS,
    NO_REDACT,
    DEFAULT_REDACT,
    { ...NO_REDACT, api: { name: 'users', n: 1 }, apiJson: '{"name":"users","n":1}' },
  ];

  it('a repeat after the first 32 names, in headers and in the query', () => {
    const raw: string[] = [];
    for (let i = 0; i < 40; i++) raw.push(`X-H${i}`, `v${i}`);
    raw.push('x-h35', 'again');
    const head = `HTTP/1.1 200 OK\r\n${raw.map((v, i) => (i % 2 === 0 ? `${v}: ` : `${v}\r\n`)).join('')}\r\n`;
    const url = `/p?${Array.from({ length: 40 }, (_, i) => `k${i}=${i}`).join('&')}&k35=again`;
    const parsed = record(
      exchange({ rawHeaders: raw, url, response: { status: 200, head, headers: null } }),
      NO_REDACT,
    );
    assert.deepEqual(parsed['request'].headers['x-h35'], ['v35', 'again']);
    assert.deepEqual(parsed['response'].headers['x-h35'], ['v35', 'again']);
    assert.deepEqual(parsed['request'].querystring['k35'], ['35', 'again']);
  });

  /** The same text in a new string, as Node's parser makes for every request. */
  const fresh = (value: string): string => Buffer.from(value, 'latin1').toString('latin1');
  const headOf = (lines: readonly string[]): string =>
    `HTTP/1.1 200 OK\r\n${lines.map((l) => `${l}\r\n`).join('')}\r\n`;

  it('headers the record before had: copied while they repeat, written again where they differ', () => {
    const base = ['Host', 'a.test', 'Accept', '*/*', 'User-Agent', `agent ${'x'.repeat(80)}`, 'X-Id', '1'];
    const lines = ['Content-Type: text/plain', `X-Long: ${'y'.repeat(80)}`, 'Date: one', 'Vary: Accept'];
    const run = (raw: readonly string[], head: readonly string[], settings = SETTINGS): Json =>
      record(
        exchange({ rawHeaders: raw.map(fresh), response: { status: 200, head: headOf(head), headers: null } }),
        settings,
      );
    run(base, lines);
    // A name that repeats an earlier one which changed: the repeat check is made again.
    const again = run(
      ['Host', 'b.test', 'Host', 'a.test', 'User-Agent', `agent ${'x'.repeat(80)}`],
      ['Content-Type: text/html', 'content-type: text/plain', `X-Long: ${'y'.repeat(80)}`],
    );
    assert.deepEqual(again['request'].headers['host'], ['b.test', 'a.test']);
    assert.deepEqual(again['response'].headers['content-type'], ['text/html', 'text/plain']);
    // A section that takes the object path after copied items leaves what was kept as it was.
    run(['Host', 'a.test', 'Accept', '*/*', '9x', 'digit-led'], [...lines.slice(0, 2), '9x: digit-led']);
    const back = run(base, lines);
    assert.equal(back['request'].headers['user-agent'], `agent ${'x'.repeat(80)}`);
    assert.equal(back['response'].headers['vary'], 'Accept');
    // Another redaction list: the same headers, other bytes.
    assert.equal(run(['Authorization', 'secret'], lines, NO_REDACT)['request'].headers['authorization'], 'secret');
    assert.equal(run(['Authorization', 'secret'], lines, SETTINGS)['request'].headers['authorization'], 'REDACTED');
    // The same head under another redaction list.
    const cookieHead = [...lines, 'Set-Cookie: a=1'];
    assert.equal(run(base, cookieHead, NO_REDACT)['response'].headers['set-cookie'], 'a=1');
    assert.equal(run(base, cookieHead, DEFAULT_REDACT)['response'].headers['set-cookie'], 'REDACTED');
    // A line that starts as the one before did but goes on past a lone CR.
    run(base, ['X-A: 1']);
    const cr = record(
      exchange({ response: { status: 200, head: 'HTTP/1.1 200 OK\r\nX-A: 1\rX\r\n\r\n', headers: null } }),
    );
    assert.equal(cr['response'].headers['x-a'], '1\rX');
    // Fewer headers than before, all repeated.
    assert.deepEqual(Object.keys(run(base.slice(0, 4), lines.slice(0, 2))['request'].headers), ['host', 'accept']);
  });

  it('headers that repeat nothing for a while, then repeat again: the same bytes while the cache rests and after', () => {
    // Variant n differs from every other in every header item.
    const variant = (n: number): CapturedExchange =>
      exchange({
        rawHeaders: ['Host', `h${n}.test`, 'Accept', `type/${n}`, 'User-Agent', `agent ${n} ${'x'.repeat(60)}`].map(
          fresh,
        ),
        response: {
          status: 200,
          head: headOf([`Content-Type: text/${n}`, `X-Long: ${'y'.repeat(60)} ${n}`, `Date: ${n}`].map(fresh)),
          headers: null,
        },
      });
    // Written once each (the helpers above write twice, and the second always repeats the first).
    const phases: Array<(n: number) => number> = [
      (n) => n, // nothing repeats: the cache rests, longer each time, and is tried again
      (n) => (n % 5 === 0 ? n : 1), // mostly the same, a change now and then
      (n) => 1000 + n,
      (n) => (n < 150 ? 2 : 1000 + n), // a long run of one, then nothing repeats again
      (n) => n % 2, // two clients taking turns
      (n) => n % 3,
      (n) => [10, 11, 12, 13, 14, 12][n % 6] as number, // back to one from before the cache rested
      () => 30 + Math.floor(next() * 5), // a few clients in any order
      () => 3,
    ];
    let records = 0;
    for (const [p, phase] of phases.entries()) {
      for (let n = 0; n < 300; n++) {
        const settings = (n + p) % 37 === 0 ? NO_REDACT : SETTINGS;
        const ex = variant(phase(n));
        assert.equal(serialize(ex, settings), JSON.stringify(buildRecord(ex, settings)), `phase ${p}, record ${n}`);
        records++;
      }
    }
    assert.equal(records, 2700);
  });

  it('request.id is the text it is given, beside the header it was read from', () => {
    // The capture decodes the header's bytes (see hostile.spec.ts): here, already text, it is not
    // decoded again, whatever its characters would make as latin1 bytes.
    for (const [raw, id] of [
      ['caf\u00c3\u00a9', 'caf\u00e9'],
      ['caf\u00c3\u0083\u00c2\u00a9', 'caf\u00c3\u00a9'],
      ['a\u00c3', 'a\u00c3'],
      ['tab\there "q"', 'tab\there "q"'],
    ] as const) {
      const parsed = record(exchange({ rawHeaders: ['Host', 'a.test', 'X-Request-Id', raw], requestId: id }));
      assert.equal(parsed['request'].id, id, JSON.stringify(id));
      assert.equal(parsed['request'].headers['x-request-id'], id, JSON.stringify(raw));
    }
  });

  it('an x-request-id value written again from the bytes of request.id, only where they are the same', () => {
    const ids = [
      '7f3c2a9e-5d41-4b8a-9c1e-2f6d8b0a4e17',
      'id "quoted" \\ here',
      'caf\u00e9',
      'caf\u00c3\u00a9',
      'tab\there',
      '',
      'a',
    ];
    const redactId: RecordSettings = { ...SETTINGS, redact: new Set(['authorization', 'x-request-id']) };
    let records = 0;
    for (let n = 0; n < 120; n++) {
      // A new id each time, as a proxy gives: the header cache never has it.
      const id = fresh(`${ids[n % ids.length] as string}${n % 7 === 0 ? '' : String(n)}`);
      const other = n % 3 === 0 ? fresh(id) : 'text/plain';
      const raw = ['Host', 'a.test', 'X-Request-Id', fresh(id), 'Accept', other];
      // Every fourth record has no request id, yet a header with the last record's: nothing stale is copied.
      const last = fresh(
        `${ids[(n + ids.length - 1) % ids.length] as string}${(n - 1) % 7 === 0 ? '' : String(n - 1)}`,
      );
      const ex = exchange({
        rawHeaders: n % 4 === 3 ? ['Host', 'a.test', 'X-Other', last] : raw,
        requestId: n % 4 === 3 ? undefined : n % 5 === 4 ? `${id}, second` : id,
      });
      const settings = n % 6 === 5 ? redactId : n % 2 === 0 ? SETTINGS : NO_REDACT;
      const json = serialize(ex, settings);
      assert.equal(json, JSON.stringify(buildRecord(ex, settings)), `record ${n}`);
      const parsed = JSON.parse(json) as Json;
      if (n % 4 !== 3 && settings !== redactId && /^[ -~]*$/.test(id))
        assert.equal(parsed['request'].headers['x-request-id'], id);
      records++;
    }
    assert.equal(records, 120);
  });

  it('on 3000 exchanges in a row whose headers repeat, change, come and go, and repeat names', () => {
    const ITEMS: Array<[string, string]> = [
      ['Host', '127.0.0.1:3000'],
      ['Accept', 'application/json'],
      ['User-Agent', `Mozilla/5.0 (X11; Linux x86_64) ${'AppleWebKit/537.36 '.repeat(4)}`],
      ['authorization', 'Bearer abc'],
      ['Cookie', 'a=1'],
      ['x-id', '7'],
      ['X-Id', '8'],
      ['accept', 'text/html'],
      ['\u00e9t\u00e9', 'x'],
      ['9x', 'digit-led'],
      ['Tab', 'a\tb'],
      ['Latin', 'caf\u00e9'],
      ['Quote', '"q" \\'],
    ];
    const LINES = [
      'X-Powered-By: Express',
      'Content-Type: application/json; charset=utf-8',
      'content-type: text/plain',
      'Content-Length: 13',
      'Content-Length: 14',
      'ETag: W/"d-abc"',
      'Date: Tue, 25 Nov 2025 11:00:00 GMT',
      'Date: Tue, 25 Nov 2025 11:00:01 GMT',
      `X-Long: ${'y'.repeat(80)}`,
      'Set-Cookie: a=1',
      'Set-Cookie: b=2',
      'no colon here',
      ': empty name',
      'Caf\u00e9: x',
      'X-Pad:   padded  ',
    ];
    const VALUES = ['1', '2', 'keep-alive', `${'z'.repeat(70)}`, '\u00ff', ''];
    const mutate = <T>(list: T[], pool: readonly T[], change: (item: T) => T): T[] => {
      const at = Math.floor(next() * (list.length + 1));
      const op = next();
      if (op < 0.4 || list.length === 0) return list;
      const copy = [...list];
      if (op < 0.6 && at < copy.length) copy[at] = change(copy[at] as T);
      else if (op < 0.75) copy.splice(at, 0, pick(pool));
      else if (op < 0.85) copy.splice(at, 1);
      else if (op < 0.95 && at < copy.length) copy[at] = pick(pool);
      else return pool.slice(0, 4);
      return copy.length > 40 ? copy.slice(0, 8) : copy;
    };
    let items = ITEMS.slice(0, 4);
    let lines = LINES.slice(0, 7);
    let settings = SETTINGS;
    for (let n = 0; n < 3000; n++) {
      items = mutate(items, ITEMS, ([name]) => [name, pick(VALUES)]);
      lines = mutate(lines, LINES, (line) => `${line.split(':')[0] ?? ''}: ${pick(VALUES)}`);
      if (next() < 0.1) settings = pick(settingsList);
      const raw = items.flat().map((value) => (next() < 0.5 ? fresh(value) : value));
      serializeRecord(
        exchange({ rawHeaders: raw, response: { status: 200, head: headOf(lines), headers: null } }),
        settings,
      );
    }
  });

  it('on 3000 generated exchanges (repeats, digit names, escapes, non-ASCII bytes, lone surrogates)', () => {
    for (let n = 0; n < 3000; n++) {
      const raw: string[] = [];
      for (let i = Math.floor(next() * 6); i > 0; i--) raw.push(pick(NAMES), text(TEXT, 4));
      let head = `HTTP/1.1 ${pick(['200 OK', '404 Not Found'])}\r\n`;
      for (let i = Math.floor(next() * 5); i > 0; i--) head += `${pick(NAMES)}: ${text(TEXT, 4)} \r\n`;
      if (next() < 0.2) head += 'no colon here\r\n: empty name\r\n';
      head += '\r\n';
      const url = `${next() < 0.1 ? pick(['http://h.test', 'HTTPS://h.test:1', 'x:']) : ''}/${text(next() < 0.3 ? WIDE : TEXT, 5)}${next() < 0.8 ? `?${query()}` : ''}`;
      const response: CapturedResponse | null =
        next() < 0.1
          ? null
          : next() < 0.15
            ? { status: 200, head: null, headers: { 'content-type': 'text/plain', 'set-cookie': ['a=1', 'b=2'], n: 3 } }
            : { status: pick([200, 204, 500]), head, headers: null };
      const ex = exchange({
        url,
        rawHeaders: raw,
        response,
        headersAt: next() < 0.2 ? null : 1001.5,
        requestId: next() < 0.5 ? undefined : text([...TEXT, ...WIDE], 3),
        clientIp: next() < 0.1 ? undefined : pick(['127.0.0.1', '::ffff:10.1.2.3', '::1', '::FFFF:10.1.2.3']),
        route: next() < 0.5 ? null : { path: `/r/${text(TEXT, 2)}`, baseUrl: text(TEXT, 2) },
      });
      const extras: Extras | undefined =
        next() < 0.2
          ? { consumer: pick([{ id: 'u1' }, { id: text(WIDE, 2) }, { toJSON: () => undefined }]) }
          : next() < 0.1
            ? { custom: [{ path: ['request', 'headers'], value: undefined }] }
            : undefined;
      serializeRecord(ex, pick(settingsList), extras);
    }
  });
});
