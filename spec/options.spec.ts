/**
 * Option validation: every bad value of every option, through parseOptions() and through the
 * public factory, must throw the right class with a message that names the option, quotes the
 * value and says what is allowed. Plus defaults, connection strings, misspelled names and the
 * `app.use(tcplog)` mistake.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import express from 'express';
import type { NextFunction, Request, Response } from 'express';
import tcplog = require('../lib/index.js');
import { parseOptions, DEFAULT_REDACT } from '../lib/options.js';
import type { Settings } from '../lib/options.js';
import { show } from '../lib/errors.js';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { Socket } from 'node:net';
import path from 'node:path';
import { createSecureContext, rootCertificates } from 'node:tls';
import { listen, request } from './helpers.js';

const FIXTURES = path.resolve(__dirname, '../../spec/fixtures');

/** The factory without its overloads, so that bad values can be passed without casts everywhere. */
const factory = tcplog as unknown as (...args: unknown[]) => tcplog.Middleware;

/** Every middleware created successfully, closed at the end so no client stays registered. */
const created: tcplog.Middleware[] = [];
after(async function closeEverything() {
  await Promise.all(created.map((middleware) => middleware.close()));
});

function make(...args: unknown[]): tcplog.Middleware {
  const middleware = factory(...args);
  created.push(middleware);
  return middleware;
}

const VALID = Object.freeze({ host: '127.0.0.1', port: 9999 });

function badValueFunction(): void {}

function circular(): Record<string, unknown> {
  const value: Record<string, unknown> = { name: 'users' };
  value['self'] = value;
  return value;
}

type ErrorClass = typeof TypeError | typeof RangeError;

interface Bad {
  readonly value: unknown;
  readonly type: ErrorClass;
  /** What the message says is allowed, when it is more precise than the option's usual text. */
  readonly allowed?: string;
}

const T = (value: unknown): Bad => ({ value, type: TypeError });
const R = (value: unknown): Bad => ({ value, type: RangeError });

/** Values of the wrong type for any option that is not a string. */
const NOT_NUMBER: readonly Bad[] = [
  T('123'),
  T(''),
  T({}),
  T([]),
  T(null),
  T(true),
  T(false),
  T(Object.create(null)),
  T(badValueFunction),
  T(Symbol('bad')),
  T(10n),
  T(new Date(0)),
];

/** Values of the wrong type for options that take a string. */
const NOT_STRING: readonly Bad[] = [
  T(0),
  T(1),
  T(-1),
  T(1.5),
  T(NaN),
  T(Infinity),
  T(-Infinity),
  T({}),
  T([]),
  T(null),
  T(true),
  T(false),
  T(Object.create(null)),
  T(badValueFunction),
  T(Symbol('bad')),
  T(10n),
  T(['127.0.0.1']),
];

interface OptionCase {
  readonly name: string;
  /** Text the message must contain to say what is allowed. */
  readonly allowed: string;
  readonly bad: readonly Bad[];
  /** Other options needed so that this one is the first to fail. */
  readonly base?: Record<string, unknown>;
}

const MAX_TIMER = 2 ** 31 - 1;

const CASES: readonly OptionCase[] = [
  {
    name: 'host',
    allowed: 'host name or IP address',
    bad: [
      ...NOT_STRING,
      T(''),
      T('localhost:9999'),
      T('127.0.0.1:9999'),
      T('tcp://x'),
      T('tcp://127.0.0.1:9999'),
      T('tls://logs.example:6514'),
      { value: '[::1]', type: TypeError, allowed: 'an IPv6 address without brackets' },
      { value: '[2001:db8::1]', type: TypeError, allowed: 'an IPv6 address without brackets' },
      T('[::1]:9999'),
      T('logs example'),
      T('logs.example/path'),
      T('user@logs.example'),
      T('logs.example?x'),
      T('logs.example#x'),
      T('a'.repeat(254)),
    ],
  },
  {
    name: 'port',
    allowed: 'an integer from 1 to 65535',
    bad: [
      R(-1),
      R(0),
      R(1.5),
      R(NaN),
      R(Infinity),
      R(-Infinity),
      R(65536),
      R(70000),
      R(2 ** 31),
      R(-0.5),
      ...NOT_NUMBER,
      T('9999'),
      T(undefined),
    ],
  },
  {
    name: 'timeout',
    allowed: `an integer from 1 to ${MAX_TIMER}`,
    bad: [
      R(-1),
      R(0),
      R(1.5),
      R(NaN),
      R(Infinity),
      R(-Infinity),
      R(2 ** 31),
      R(2 ** 40),
      R(Number.MAX_VALUE),
      ...NOT_NUMBER,
    ],
  },
  {
    name: 'keepalive',
    allowed: `an integer from 0 to ${MAX_TIMER}`,
    bad: [R(-1), R(1.5), R(0.5), R(NaN), R(Infinity), R(-Infinity), R(2 ** 31), R(2 ** 40), ...NOT_NUMBER],
  },
  {
    name: 'maxBufferBytes',
    allowed: `an integer from 1 to ${Number.MAX_SAFE_INTEGER}`,
    bad: [R(-1), R(0), R(1.5), R(NaN), R(Infinity), R(-Infinity), R(2 ** 53), R(Number.MAX_VALUE), ...NOT_NUMBER],
  },
  {
    name: 'delimiter',
    allowed: '"\\r\\n" (default) or "\\n"',
    bad: [
      T('\r'),
      T(' '),
      T(''),
      T('\n\r'),
      T('\r\n\r\n'),
      T('\n\n'),
      T(','),
      T('\\n'),
      T('\\r\\n'),
      T(0),
      T(10),
      T(null),
      T(true),
      T(false),
      T({}),
      T([]),
      T(['\n']),
      T(Object.create(null)),
      T(badValueFunction),
      T(Symbol('bad')),
      T(Buffer.from('\n')),
    ],
  },
  {
    name: 'redact',
    allowed: 'an array of header names',
    bad: [
      T(['bad header name']),
      T(['authorization', 'bad header name']),
      T(['']),
      T(['x-a:']),
      T(['x-a\r\n']),
      T(['café']),
      T([1]),
      T([null]),
      T([['authorization']]),
      T('authorization'),
      T(''),
      T(true),
      T(null),
      T(0),
      T(1),
      T(NaN),
      T({}),
      T({ authorization: true }),
      T(Object.create(null)),
      T(new Set(['authorization'])),
      T(badValueFunction),
      T(Symbol('bad')),
    ],
  },
  {
    name: 'api',
    allowed: 'object',
    bad: [
      T(circular()),
      T({ id: 10n }),
      T({ nested: { id: 10n } }),
      T({
        get broken(): never {
          throw new Error('getter failed');
        },
      }),
      T(null),
      T([]),
      T([{ name: 'users' }]),
      T('users'),
      T('{"name":"users"}'),
      T(''),
      T(0),
      T(1),
      T(NaN),
      T(true),
      T(false),
      T(10n),
      T(new Date(0)),
      T(new Map([['name', 'users']])),
      T(badValueFunction),
      T(Symbol('bad')),
    ],
  },
  {
    name: 'tls',
    allowed: 'true, false, or an object of tls.connect() options',
    bad: [
      T(1),
      T(0),
      T(-1),
      T(NaN),
      T('true'),
      T('false'),
      T(''),
      T('tls'),
      T(null),
      T([]),
      T([{ servername: 'x' }]),
      T(badValueFunction),
      T(Symbol('bad')),
      T(10n),
      T(new Date(0)),
    ],
  },
  {
    name: 'tlsServername',
    allowed: 'a non-empty string',
    base: { tls: true },
    bad: [...NOT_STRING, T('')],
  },
  {
    name: 'onError',
    allowed: 'a function',
    bad: [
      T(0),
      T(1),
      T(NaN),
      T('console.error'),
      T(''),
      T({}),
      T([]),
      T([badValueFunction]),
      T({ handleError: badValueFunction }),
      T(null),
      T(true),
      T(false),
      T(Object.create(null)),
      T(Symbol('bad')),
      T(10n),
    ],
  },
];

function label(value: unknown): string {
  if (typeof value === 'symbol') return value.toString();
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 37)}...` : value);
  return show(value);
}

/** Asserts that `fn` throws an option error for `name` of class `type` quoting `value`. */
function assertOptionError(fn: () => unknown, name: string, value: unknown, type: ErrorClass, allowed: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof type, `expected a ${type.name}, got ${String(err)}`);
    const other = type === TypeError ? RangeError : TypeError;
    assert.ok(!(err instanceof other), `expected a ${type.name} and not a ${other.name}: ${String(err)}`);
    assert.equal(err.name, type.name);
    const { message } = err;
    assert.ok(
      message.startsWith(`express-tcplog: option "${name}"`),
      `message should start with express-tcplog: option "${name}": ${message}`,
    );
    assert.ok(message.includes(show(value)), `message should show ${show(value)}: ${message}`);
    assert.ok(message.includes(allowed), `message should say what is allowed (${allowed}): ${message}`);
    assert.equal((err as { option?: unknown }).option, name);
    return true;
  });
}

describe('option errors', () => {
  for (const option of CASES) {
    describe(`option "${option.name}"`, () => {
      for (const { value, type, allowed = option.allowed } of option.bad) {
        const options = (): Record<string, unknown> => ({ ...VALID, ...option.base, [option.name]: value });
        it(`${label(value)} -> ${type.name} from parseOptions()`, () => {
          assertOptionError(() => parseOptions(options()), option.name, value, type, allowed);
        });
        it(`${label(value)} -> ${type.name} from tcplog()`, () => {
          assertOptionError(() => make(options()), option.name, value, type, allowed);
        });
      }
    });
  }

  it('a missing host or port is explained', () => {
    assertOptionError(() => parseOptions({ port: 9999 }), 'host', undefined, TypeError, 'host name or IP address');
    assertOptionError(
      () => parseOptions({ host: '127.0.0.1' }),
      'port',
      undefined,
      TypeError,
      'an integer from 1 to 65535',
    );
    assertOptionError(() => make({ port: 9999 }), 'host', undefined, TypeError, 'host name or IP address');
    assertOptionError(() => make({ host: '127.0.0.1' }), 'port', undefined, TypeError, 'an integer from 1 to 65535');
  });

  it('a host with a scheme suggests passing the whole URL as the first argument', () => {
    assert.throws(
      () => parseOptions({ host: 'tcp://logs.example:6514', port: 1 }),
      (err: unknown) => {
        assert.ok(err instanceof TypeError);
        assert.match(err.message, /without a scheme/);
        assert.ok(err.message.includes(`tcplog("tcp://logs.example:6514")`), err.message);
        return true;
      },
    );
  });

  it('a host with a port says to give the port as "port"', () => {
    assert.throws(() => parseOptions({ host: 'localhost:9999', port: 1 }), /without a port/);
  });

  it('tlsServername without tls is rejected and says to set tls', () => {
    for (const tls of [undefined, false]) {
      assert.throws(
        () => parseOptions({ ...VALID, tls, tlsServername: 'logs.example' }),
        (err: unknown) => {
          assert.ok(err instanceof TypeError);
          assert.ok(err.message.startsWith('express-tcplog: option "tlsServername"'), err.message);
          assert.ok(err.message.includes('"logs.example"'), err.message);
          assert.match(err.message, /tls: true/);
          return true;
        },
      );
    }
  });

  it('a long value is shown shortened, still naming the option', () => {
    const value = 'x'.repeat(300);
    assert.throws(
      () => parseOptions({ ...VALID, delimiter: value }),
      (err: unknown) => {
        assert.ok(err instanceof TypeError);
        assert.ok(err.message.includes('"xxxxxxxx'), err.message);
        assert.ok(err.message.includes('...'), err.message);
        assert.ok(err.message.length < 300, `message should not quote 300 characters: ${err.message.length}`);
        return true;
      },
    );
  });
});

describe('valid options', () => {
  function checkDefaults(settings: Settings): void {
    assert.equal(settings.destination.host, '127.0.0.1');
    assert.equal(settings.destination.port, 9999);
    assert.equal(settings.destination.timeout, 10_000);
    assert.equal(settings.destination.keepalive, 60_000);
    assert.equal(settings.destination.maxBufferBytes, 16 * 1024 * 1024);
    assert.equal(settings.destination.tls, null);
    assert.equal(settings.destination.label, 'tcp://127.0.0.1:9999');
    assert.equal(settings.record.delimiter, '\r\n');
    assert.deepEqual([...(settings.record.redact ?? [])].sort(), [
      'authorization',
      'cookie',
      'proxy-authorization',
      'set-cookie',
    ]);
    assert.equal(settings.record.api, null);
    assert.equal(settings.onError, null);
  }

  it('applies the defaults', () => {
    checkDefaults(parseOptions({ host: '127.0.0.1', port: 9999 }));
    checkDefaults(parseOptions({ host: '127.0.0.1', port: 9999, timeout: undefined, keepalive: undefined }));
    checkDefaults(parseOptions('tcp://127.0.0.1:9999'));
    assert.deepEqual([...DEFAULT_REDACT], ['authorization', 'proxy-authorization', 'cookie', 'set-cookie']);
  });

  it('returns frozen settings that do not alias the objects passed in', () => {
    const options = { ...VALID, api: { name: 'users' }, redact: ['X-Secret'] };
    const settings = parseOptions(options);
    assert.ok(Object.isFrozen(settings));
    assert.ok(Object.isFrozen(settings.destination));
    assert.ok(Object.isFrozen(settings.record));
    options.api.name = 'changed';
    options.redact.push('x-other');
    assert.equal(JSON.stringify(settings.record.api), '{"name":"users"}');
    assert.deepEqual([...(settings.record.redact ?? [])], ['x-secret']);
  });

  it('accepts every value at the edges of the ranges', () => {
    const low = parseOptions({ host: 'logs.example', port: 1, timeout: 1, keepalive: 0, maxBufferBytes: 1 });
    assert.equal(low.destination.port, 1);
    assert.equal(low.destination.timeout, 1);
    assert.equal(low.destination.keepalive, 0);
    assert.equal(low.destination.maxBufferBytes, 1);
    const high = parseOptions({
      host: 'logs.example',
      port: 65535,
      timeout: MAX_TIMER,
      keepalive: MAX_TIMER,
      maxBufferBytes: Number.MAX_SAFE_INTEGER,
    });
    assert.equal(high.destination.port, 65535);
    assert.equal(high.destination.timeout, MAX_TIMER);
    assert.equal(high.destination.keepalive, MAX_TIMER);
    assert.equal(high.destination.maxBufferBytes, Number.MAX_SAFE_INTEGER);
  });

  it('accepts keepalive: 0 (keep the connection open)', () => {
    assert.equal(parseOptions({ ...VALID, keepalive: 0 }).destination.keepalive, 0);
    const middleware = make({ ...VALID, keepalive: 0 });
    assert.equal(typeof middleware, 'function');
  });

  it('accepts an IPv6 host without brackets and brackets it in the label', () => {
    const settings = parseOptions({ host: '::1', port: 9999 });
    assert.equal(settings.destination.host, '::1');
    assert.equal(settings.destination.label, 'tcp://[::1]:9999');
    const full = parseOptions({ host: '2001:db8::1', port: 1 });
    assert.equal(full.destination.host, '2001:db8::1');
    make({ host: '::1', port: 9999 });
  });

  it('accepts host names and IPv4 addresses', () => {
    for (const host of ['localhost', 'logs.example', 'logs-1.internal.example.com', '10.0.0.1', 'a'.repeat(253)]) {
      assert.equal(parseOptions({ host, port: 1 }).destination.host, host);
    }
  });

  it('accepts both delimiters', () => {
    assert.equal(parseOptions({ ...VALID, delimiter: '\n' }).record.delimiter, '\n');
    assert.equal(parseOptions({ ...VALID, delimiter: '\r\n' }).record.delimiter, '\r\n');
  });

  it('lower-cases redact names; false and [] turn redaction off', () => {
    const settings = parseOptions({ ...VALID, redact: ['X-Secret', 'AUTHORIZATION', 'authorization'] });
    assert.deepEqual([...(settings.record.redact ?? [])].sort(), ['authorization', 'x-secret']);
    assert.equal(parseOptions({ ...VALID, redact: false }).record.redact, null);
    assert.equal(parseOptions({ ...VALID, redact: [] }).record.redact, null);
  });

  it('copies api once; a null-prototype object is fine', () => {
    assert.equal(
      JSON.stringify(parseOptions({ ...VALID, api: { name: 'users', id: 3 } }).record.api),
      '{"name":"users","id":3}',
    );
    const bare = Object.create(null) as Record<string, unknown>;
    bare['name'] = 'bare';
    assert.equal(JSON.stringify(parseOptions({ ...VALID, api: bare }).record.api), '{"name":"bare"}');
  });

  /** parseOptions() either rejects `api` as an option error, or keeps a copy that is a JSON object. */
  function checkApi(api: Record<string, unknown>): void {
    let settings: Settings;
    try {
      settings = parseOptions({ ...VALID, api });
    } catch (err) {
      assert.ok(err instanceof TypeError, String(err));
      assert.ok(err.message.startsWith('express-tcplog: option "api"'), err.message);
      return;
    }
    const json = JSON.stringify(settings.record.api);
    assert.equal(typeof json, 'string', `api should serialize to text, got ${String(json)}`);
    const parsed: unknown = JSON.parse(json);
    assert.ok(
      parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed),
      `api ${json} is not a JSON object`,
    );
  }

  it('api whose toJSON() returns undefined is rejected ', () => {
    checkApi({ toJSON: (): undefined => undefined });
  });

  it('api whose toJSON() returns a number, a string or an array is rejected: api is a JSON object', () => {
    checkApi({ toJSON: (): number => 5 });
    checkApi({ toJSON: (): string => 'x' });
    checkApi({ toJSON: (): number[] => [1] });
  });

  it('api with a toJSON() giving an object is fine', () => {
    checkApi({ toJSON: (): object => ({ name: 'users' }) });
    assert.equal(
      JSON.stringify(parseOptions({ ...VALID, api: { toJSON: () => ({ name: 'users' }) } }).record.api),
      '{"name":"users"}',
    );
  });

  it('tls: true sets the SNI name from the host, but not for an IP address', () => {
    assert.deepEqual(
      { ...parseOptions({ host: 'logs.example', port: 6514, tls: true }).destination.tls },
      { servername: 'logs.example' },
    );
    assert.deepEqual({ ...parseOptions({ host: '10.0.0.1', port: 6514, tls: true }).destination.tls }, {});
    const named = parseOptions({
      host: '10.0.0.1',
      port: 6514,
      tls: { rejectUnauthorized: true },
      tlsServername: 'logs.example',
    });
    assert.deepEqual({ ...named.destination.tls }, { rejectUnauthorized: true, servername: 'logs.example' });
    assert.equal(named.destination.label, 'tls://10.0.0.1:6514');
    assert.equal(parseOptions({ ...VALID, tls: false }).destination.tls, null);
    assert.deepEqual({ ...parseOptions({ ...VALID, tls: Object.create(null) }).destination.tls }, {});
  });

  it('TLS options Node refuses are an error of the factory, which does not quote them (a key)', () => {
    const key = readFileSync(path.join(FIXTURES, 'client-key.pem'), 'utf8');
    const strangerCert = readFileSync(path.join(FIXTURES, 'stranger-cert.pem'), 'utf8');
    const refused: Array<[string, Record<string, unknown>]> = [
      ['an unknown protocol version', { minVersion: 'TLSv9' }],
      ['a CA of the wrong type', { ca: 42 }],
      ['no cipher Node knows', { ciphers: 'NOT-A-CIPHER' }],
      ['a key that does not match the certificate', { key, cert: strangerCert }],
    ];
    for (const [what, tls] of refused) {
      for (const [options, name] of [
        [{ ...VALID, tls }, 'tls'],
        [{ servers: ['tcp://127.0.0.1:5140', { host: '127.0.0.1', port: 6514, tls }] }, 'servers[1].tls'],
      ] as const) {
        assert.throws(
          () => make(options),
          (err: unknown) => {
            assert.ok(err instanceof TypeError, `${what}: ${String(err)}`);
            assert.equal((err as { option?: unknown }).option, name);
            assert.match(
              err.message,
              new RegExp(
                `^express-tcplog: option "${name.replace(/[[\].]/g, '\\$&')}" must be true, or tls.connect\\(\\) options that Node accepts; got options it refuses \\(.+\\)$`,
              ),
            );
            assert.equal(err.message.includes('PRIVATE KEY'), false, err.message);
            return true;
          },
          what,
        );
      }
    }
  });

  it('TLS options Node checks only once connecting, or reads silently, are refused by the factory too', () => {
    const key = readFileSync(path.join(FIXTURES, 'client-key.pem'), 'utf8');
    const cert = readFileSync(path.join(FIXTURES, 'client-cert.pem'), 'utf8');
    const refused: Array<[Record<string, unknown>, RegExp]> = [
      // tls.connect() throws on it after its socket exists: that socket would be lost.
      [{ servername: 123 }, /"servername" must be a string/],
      [{ checkServerIdentity: 'pin' }, /"checkServerIdentity" must be a function/],
      [{ session: 'abc' }, /"session" must be a Buffer/],
      // createSecureContext() skips what it cannot read: every connect would fail verification.
      [{ ca: '/etc/ssl/certs/ca.pem' }, /"ca" holds no PEM certificate Node can read/],
      [{ ca: [readFileSync(path.join(FIXTURES, 'ca-cert.pem'), 'utf8'), key] }, /"ca\[1\]" holds no PEM certificate/],
      [{ ca: 42 }, /"ca" must be a PEM string or a Buffer/],
    ];
    for (const [tls, message] of refused) {
      assert.throws(
        () => make({ ...VALID, tls }),
        (err: unknown) => err instanceof TypeError && message.test(err.message),
      );
    }
    // Node's argument errors quote the value they received: a passphrase is not repeated.
    assert.throws(
      () => make({ ...VALID, tls: { key, cert, passphrase: 20240611 } }),
      (err: unknown) => {
        assert.ok(err instanceof TypeError);
        assert.match(err.message, /passphrase/);
        assert.equal(err.message.includes('20240611'), false, err.message);
        return true;
      },
    );
    // What people give is still taken: a bundle, Buffers, Uint8Arrays, the system's roots.
    const ca = readFileSync(path.join(FIXTURES, 'ca-cert.pem'), 'utf8');
    const other = readFileSync(path.join(FIXTURES, 'other-ca-cert.pem'), 'utf8');
    const trusted = ca
      .replace('-----BEGIN CERTIFICATE-----', '-----BEGIN TRUSTED CERTIFICATE-----')
      .replace('-----END CERTIFICATE-----', '-----END TRUSTED CERTIFICATE-----');
    for (const tls of [
      { ca: ca + other },
      { ca: Buffer.from(ca) },
      { ca: new Uint8Array(Buffer.from(ca)) },
      { ca: [...rootCertificates] },
      // OpenSSL's trusted form, as Fedora's bundle has it, is a certificate too.
      { ca: trusted },
      // Falsy is "not given", as Node takes it: `ca: env.CA ? read(env.CA) : null`.
      { ca: null, servername: null },
      { ca: false, servername: '' },
      { session: null, pskCallback: null },
    ]) {
      make({ ...VALID, tls });
    }
  });

  it('TLS options that are not data (a context, a function) share a connection only when they are the same object', () => {
    const key = (tls: Record<string, unknown>): string => parseOptions({ ...VALID, tls }).destination.key;
    const context = createSecureContext({});
    assert.notEqual(key({ secureContext: context }), key({ secureContext: createSecureContext({}) }));
    assert.equal(key({ secureContext: context }), key({ secureContext: context }));
    const pinned = (fingerprint: string) =>
      function checkServerIdentity(_host: string, cert: { fingerprint256?: string }): Error | undefined {
        return cert.fingerprint256 === fingerprint ? undefined : new Error('not pinned');
      };
    const pinA = pinned('AA');
    assert.notEqual(key({ checkServerIdentity: pinA }), key({ checkServerIdentity: pinned('BB') }));
    assert.equal(key({ checkServerIdentity: pinA }), key({ checkServerIdentity: pinA }));
    // Data is compared by value.
    const pem = readFileSync(path.join(FIXTURES, 'ca-cert.pem'));
    const otherPem = readFileSync(path.join(FIXTURES, 'other-ca-cert.pem'));
    assert.equal(key({ ca: Buffer.from(pem) }), key({ ca: Buffer.from(pem) }));
    assert.notEqual(key({ ca: pem }), key({ ca: otherPem }));
    // Any view of bytes is data (Node takes a Uint8Array as a Buffer).
    assert.equal(key({ ca: new Uint8Array(pem) }), key({ ca: new Uint8Array(pem) }));
    // What JSON cannot write is no error of the factory's: a BigInt is data, a cycle its own.
    assert.equal(key({ extra: 10n }), key({ extra: 10n }));
    assert.notEqual(key({ extra: 10n }), key({ extra: 11n }));
    const cyclic: Record<string, unknown> = { servername: 'logs.internal' };
    cyclic['self'] = cyclic;
    assert.match(key(cyclic), /ref:\d+/);
  });

  it('keeps onError', () => {
    const onError = (): void => undefined;
    assert.equal(parseOptions({ ...VALID, onError }).onError, onError);
  });

  it('the factory returns a middleware with close() and stats()', async () => {
    const middleware = make({ ...VALID, timeout: 50 });
    assert.equal(typeof middleware, 'function');
    assert.equal(middleware.length, 3);
    assert.deepEqual(middleware.stats(), {
      records: 0,
      sent: 0,
      dropped: 0,
      buffered: 0,
      bufferedBytes: 0,
      connects: 0,
      errors: 0,
      connected: false,
    });
    await middleware.close();
    await middleware.close();
  });

  it('the factory is its own .tcplog and .default', () => {
    assert.equal(tcplog.tcplog, tcplog);
    assert.equal(tcplog.default, tcplog);
  });
});

describe('unknown option names', () => {
  const suggestions: ReadonlyArray<readonly [string, string]> = [
    ['keepAlive', 'keepalive'],
    ['KEEPALIVE', 'keepalive'],
    ['maxBuffer', 'maxBufferBytes'],
    ['maxBufferSize', 'maxBufferBytes'],
    ['hots', 'host'],
    ['hostname', 'host'],
    ['timout', 'timeout'],
    ['Timeout', 'timeout'],
    ['prot', 'port'],
    ['delimeter', 'delimiter'],
    ['onerror', 'onError'],
    ['tlsServerName', 'tlsServername'],
    ['apii', 'api'],
  ];
  for (const [name, closest] of suggestions) {
    it(`"${name}" suggests "${closest}"`, () => {
      for (const call of [parseOptions, make] as const) {
        assert.throws(
          () => call({ ...VALID, [name]: 1 }),
          (err: unknown) => {
            assert.ok(err instanceof TypeError, String(err));
            assert.ok(err.message.startsWith(`express-tcplog: unknown option "${name}"`), err.message);
            assert.ok(err.message.includes(`did you mean "${closest}"?`), err.message);
            return true;
          },
        );
      }
    });
  }

  for (const name of ['somethingElse', 'verbose', 'x', 'format']) {
    it(`"${name}" lists the known options`, () => {
      for (const call of [parseOptions, make] as const) {
        assert.throws(
          () => call({ ...VALID, [name]: 1 }),
          (err: unknown) => {
            assert.ok(err instanceof TypeError, String(err));
            assert.ok(err.message.startsWith(`express-tcplog: unknown option "${name}"`), err.message);
            assert.ok(!err.message.includes('did you mean'), err.message);
            for (const known of [
              'host',
              'port',
              'timeout',
              'keepalive',
              'tls',
              'tlsServername',
              'delimiter',
              'maxBufferBytes',
              'redact',
              'api',
              'onError',
            ]) {
              assert.ok(err.message.includes(known), `should list ${known}: ${err.message}`);
            }
            return true;
          },
        );
      }
    });
  }

  it('a getter or a Proxy trap that throws is a TypeError of the factory', () => {
    const getter = {
      port: 9999,
      get host(): string {
        throw new Error('vault sealed');
      },
    };
    const trap = new Proxy(
      { ...VALID },
      {
        get() {
          throw new Error('trap');
        },
      },
    );
    const hasTrap = new Proxy(
      { ...VALID },
      {
        has() {
          throw new Error('has trap');
        },
      },
    );
    // The factory's check for http.createServer(tcplog) uses `in`: a trap there is not a request.
    assert.equal(typeof make(hasTrap), 'function');
    for (const [options, reason] of [
      [getter, 'vault sealed'],
      [trap, 'trap'],
    ] as const) {
      assert.throws(
        () => make(options),
        (err: unknown) => {
          assert.ok(err instanceof TypeError, String(err));
          assert.equal(err.message, `express-tcplog: the options could not be read: ${reason}`);
          return true;
        },
      );
    }
  });

  it('an unknown name is an error even with an undefined value', () => {
    assert.throws(
      () => parseOptions({ ...VALID, keepAlive: undefined }),
      /unknown option "keepAlive"; did you mean "keepalive"\?/,
    );
  });
});

describe('what tcplog() is called with', () => {
  const calls: ReadonlyArray<readonly [string, readonly unknown[], RegExp]> = [
    ['no arguments', [], /express-tcplog: options are required/],
    ['undefined', [undefined], /express-tcplog: options are required/],
    ['null', [null], /express-tcplog: options must be a plain object.*; got null$/],
    ['[]', [[]], /express-tcplog: options must be a plain object.*; got \[\]$/],
    ['42', [42], /express-tcplog: options must be a plain object.*; got 42$/],
    ['true', [true], /express-tcplog: options must be a plain object.*; got true$/],
    [
      'a function',
      [badValueFunction],
      /express-tcplog: options must be a plain object.*; got \[function badValueFunction\]$/,
    ],
    ['a Map', [new Map([['host', 'x']])], /express-tcplog: options must be a plain object/],
    [
      'an options object then a second object',
      [VALID, {}],
      /express-tcplog: a second argument is only taken after a connection string/,
    ],
    [
      'an options object then a number',
      [VALID, 1],
      /express-tcplog: the second argument must be an options object.*; got 1$/,
    ],
    [
      'a connection string then null',
      ['tcp://127.0.0.1:9999', null],
      /express-tcplog: the second argument must be an options object.*; got null$/,
    ],
    [
      'a connection string then an array',
      ['tcp://127.0.0.1:9999', []],
      /express-tcplog: the second argument must be an options object.*; got \[\]$/,
    ],
    [
      'a connection string then a string',
      ['tcp://127.0.0.1:9999', 'tcp://x:1'],
      /express-tcplog: the second argument must be an options object/,
    ],
  ];
  for (const [what, args, message] of calls) {
    it(`${what} is explained, by parseOptions() and by tcplog()`, () => {
      const check = (err: unknown): boolean => {
        assert.ok(err instanceof TypeError, String(err));
        assert.match(err.message, message);
        assert.ok(
          err.message.includes("'tcp://") || err.message.includes('second argument'),
          `should show how to call it: ${err.message}`,
        );
        return true;
      };
      assert.throws(() => parseOptions(args[0], args[1]), check);
      assert.throws(() => make(...args), check);
    });
  }

  it('more than two arguments are rejected by the factory', () => {
    assert.throws(
      () => make('tcp://127.0.0.1:9999', {}, {}),
      (err: unknown) => {
        assert.ok(err instanceof TypeError);
        assert.match(err.message, /^express-tcplog: tcplog\(\) takes at most two arguments/);
        assert.match(err.message, /got 3$/);
        return true;
      },
    );
  });
});

describe('connection strings', () => {
  it("'tcp://127.0.0.1:9999'", () => {
    const settings = parseOptions('tcp://127.0.0.1:9999');
    assert.equal(settings.destination.host, '127.0.0.1');
    assert.equal(settings.destination.port, 9999);
    assert.equal(settings.destination.tls, null);
    assert.equal(settings.destination.label, 'tcp://127.0.0.1:9999');
    make('tcp://127.0.0.1:9999');
  });

  it("'tcp://[::1]:9999'", () => {
    const settings = parseOptions('tcp://[::1]:9999');
    assert.equal(settings.destination.host, '::1');
    assert.equal(settings.destination.port, 9999);
    assert.equal(settings.destination.tls, null);
    assert.equal(settings.destination.label, 'tcp://[::1]:9999');
    make('tcp://[::1]:9999');
  });

  it("'tls://logs.example:6514'", () => {
    const settings = parseOptions('tls://logs.example:6514');
    assert.equal(settings.destination.host, 'logs.example');
    assert.equal(settings.destination.port, 6514);
    assert.deepEqual({ ...settings.destination.tls }, { servername: 'logs.example' });
    assert.equal(settings.destination.label, 'tls://logs.example:6514');
    make('tls://logs.example:6514');
  });

  it('a trailing slash is allowed', () => {
    assert.equal(parseOptions('tcp://logs.example:1/').destination.port, 1);
  });

  it('takes more options beside, and the same destination key as the object form', () => {
    const settings = parseOptions('tcp://127.0.0.1:9999', { keepalive: 0, delimiter: '\n', timeout: 5 });
    assert.equal(settings.destination.keepalive, 0);
    assert.equal(settings.destination.timeout, 5);
    assert.equal(settings.record.delimiter, '\n');
    assert.equal(
      parseOptions('tcp://127.0.0.1:9999').destination.key,
      parseOptions({ host: '127.0.0.1', port: 9999 }).destination.key,
    );
    make('tcp://127.0.0.1:9999', { keepalive: 0 });
  });

  it('tls:// with tls options merges them; tls: true is fine', () => {
    const settings = parseOptions('tls://logs.example:6514', { tls: { rejectUnauthorized: true } });
    assert.deepEqual({ ...settings.destination.tls }, { rejectUnauthorized: true, servername: 'logs.example' });
    assert.deepEqual(
      { ...parseOptions('tls://logs.example:6514', { tls: true }).destination.tls },
      { servername: 'logs.example' },
    );
    const sni = parseOptions('tls://10.0.0.1:6514', { tlsServername: 'logs.example' });
    assert.deepEqual({ ...sni.destination.tls }, { servername: 'logs.example' });
  });

  it('tcp:// with tls set is a contradiction', () => {
    for (const tls of [true, { rejectUnauthorized: true }]) {
      assert.throws(
        () => parseOptions('tcp://logs.example:5170', { tls }),
        (err: unknown) => {
          assert.ok(err instanceof TypeError);
          assert.ok(err.message.startsWith('express-tcplog: option "tls"'), err.message);
          assert.ok(err.message.includes('"tcp://logs.example:5170" asks for plain TCP'), err.message);
          return true;
        },
      );
    }
    assert.equal(parseOptions('tcp://logs.example:5170', { tls: false }).destination.tls, null);
  });

  it('servers: a tcp:// entry is plain TCP even when the instance sets tls for the others', () => {
    const { servers } = parseOptions({
      servers: ['tcp://a.example:5170', 'tls://b.example:6514', { host: 'c.example', port: 6514 }],
      tls: { rejectUnauthorized: true },
    }).destination;
    assert.deepEqual(
      servers.map((entry) => entry.label),
      ['tcp://a.example:5170', 'tls://b.example:6514', 'tls://c.example:6514'],
    );
    assert.equal(servers[0]?.tls, null);
  });

  it('servers: tlsServername goes with the entries that use TLS; with none of them it is an error', () => {
    const { servers } = parseOptions({
      servers: ['tls://a.example:6514', { host: 'b.example', port: 6514 }, 'tcp://c.example:5140'],
      tls: true,
      tlsServername: 'logs.example',
    }).destination;
    assert.deepEqual(
      servers.map((entry) => entry.tls?.servername ?? null),
      ['logs.example', 'logs.example', null],
    );
    assert.throws(
      () => parseOptions({ servers: ['tcp://c.example:5140'], tlsServername: 'logs.example' }),
      /option "tlsServername" must be used with "tls" set/,
    );
  });

  it('servers: tlsServername skips a plain object entry as it skips a tcp:// one', () => {
    for (const plain of [
      { host: 'b.example', port: 5140 },
      { host: 'b.example', port: 5140, tls: false },
    ]) {
      const { servers } = parseOptions({
        servers: ['tls://a.example:6514', plain],
        tlsServername: 'logs.example',
      }).destination;
      assert.deepEqual(
        servers.map((entry) => entry.tls?.servername ?? null),
        ['logs.example', null],
      );
    }
  });

  it('servers: a string entry gets the port check; a hole in the list is a bad entry', () => {
    assertOptionError(
      () => parseOptions({ servers: ['tcp://127.0.0.1:5140', 'tcp://127.0.0.1:0'] }),
      'servers[1]',
      0,
      RangeError,
      'an integer from 1 to 65535',
    );
    const holey: unknown[] = [];
    holey[1] = 'tcp://127.0.0.1:5140';
    assertOptionError(
      () => parseOptions({ servers: holey }),
      'servers[0]',
      undefined,
      TypeError,
      'a connection string',
    );
  });

  it('tls:// with tls: false is a contradiction', () => {
    assert.throws(
      () => parseOptions('tls://logs.example:6514', { tls: false }),
      (err: unknown) => {
        assert.ok(err instanceof TypeError);
        assert.ok(err.message.startsWith('express-tcplog: option "tls"'), err.message);
        assert.ok(err.message.includes('"tls://logs.example:6514"'), err.message);
        return true;
      },
    );
  });

  const bad: ReadonlyArray<readonly [string, RegExp]> = [
    ['http://x:1', /scheme "http"/],
    ['https://x:1', /scheme "https"/],
    ['udp://x:1', /scheme "udp"/],
    ['tcp://x', /no port/],
    ['tls://x', /no port/],
    ['tcp://x:1/path', /path, query or fragment/],
    ['tcp://x:1?q=1', /path, query or fragment/],
    ['tcp://x:1#f', /path, query or fragment/],
    ['tcp://u:p@x:1', /user information/],
    ['tcp://u@x:1', /user information/],
    ['not a url', /is not a URL/],
    ['', /is not a URL/],
    ['127.0.0.1:9999', /scheme|not a URL/],
    ['tcp://:1', /is not a URL|no host/],
  ];
  for (const [text, why] of bad) {
    it(`${JSON.stringify(text)} is rejected`, () => {
      const check = (err: unknown): boolean => {
        assert.ok(err instanceof TypeError, String(err));
        assert.ok(err.message.startsWith(`express-tcplog: connection string ${JSON.stringify(text)}`), err.message);
        assert.match(err.message, why);
        assert.ok(err.message.includes("expected 'tcp://host:port' or 'tls://host:port'"), err.message);
        return true;
      };
      assert.throws(() => parseOptions(text), check);
      assert.throws(() => make(text), check);
      assert.throws(() => make(text, { keepalive: 0 }), check);
    });
  }

  it('port 0 in a connection string is a port error', () => {
    assertOptionError(() => parseOptions('tcp://x:0'), 'port', 0, RangeError, 'an integer from 1 to 65535');
  });

  it('a port over 65535, which URL refuses, is the same port error, in servers too', () => {
    assertOptionError(() => parseOptions('tcp://x:70000'), 'port', 70000, RangeError, 'an integer from 1 to 65535');
    assertOptionError(
      () => parseOptions({ servers: ['tcp://a:1', 'tls://[::1]:65536/'] }),
      'servers[1]',
      65536,
      RangeError,
      'an integer from 1 to 65535',
    );
  });

  for (const name of ['host', 'port'] as const) {
    it(`"${name}" given twice (string and options) is rejected`, () => {
      const more = name === 'host' ? { host: '127.0.0.1' } : { port: 9999 };
      const check = (err: unknown): boolean => {
        assert.ok(err instanceof TypeError, String(err));
        assert.ok(
          err.message.startsWith(
            `express-tcplog: option "${name}" is already given by the connection string "tcp://127.0.0.1:9999"`,
          ),
          err.message,
        );
        return true;
      };
      assert.throws(() => parseOptions('tcp://127.0.0.1:9999', more), check);
      assert.throws(() => make('tcp://127.0.0.1:9999', more), check);
    });
  }

  it('undefined beside a connection string is left out, as everywhere else ({ ...config })', () => {
    const plain = parseOptions('tcp://127.0.0.1:9999', { host: undefined, port: undefined, tls: undefined });
    assert.equal(plain.destination.label, 'tcp://127.0.0.1:9999');
    const secure = parseOptions('tls://127.0.0.1:6514', { tls: undefined });
    assert.equal(secure.destination.label, 'tls://127.0.0.1:6514');
  });

  it('an unknown option beside a connection string suggests the closest', () => {
    assert.throws(() => parseOptions('tcp://127.0.0.1:9999', { keepAlive: 0 }), /did you mean "keepalive"\?/);
  });

  it('a bad option beside a connection string is named', () => {
    assertOptionError(
      () => parseOptions('tcp://127.0.0.1:9999', { timeout: -1 }),
      'timeout',
      -1,
      RangeError,
      'an integer from 1',
    );
    assertOptionError(
      () => make('tcp://127.0.0.1:9999', { redact: 'cookie' }),
      'redact',
      'cookie',
      TypeError,
      'an array',
    );
  });
});

describe('app.use(tcplog) without the call', () => {
  async function misuse(createApp: () => express.Express): Promise<void> {
    const app = createApp();
    const errors: unknown[] = [];
    app.use(tcplog as any);
    app.get('/', function reached(_req: Request, res: Response) {
      res.send('the app was reached');
    });
    app.use(function explain(err: Error, _req: Request, res: Response, _next: NextFunction) {
      errors.push(err);
      res.status(500).send(err.message);
    });
    const server = await listen(app);
    try {
      const reply = await request(server.port, '/');
      assert.equal(reply.status, 500);
      const body = reply.body.toString('utf8');
      assert.ok(body.includes('without being called'), body);
      assert.ok(body.includes('app.use(tcplog({'), body);
      assert.equal(errors.length, 1);
      assert.ok(errors[0] instanceof TypeError);
      assert.ok(errors[0].message.startsWith('express-tcplog: tcplog was used as a middleware without being called'));
    } finally {
      await server.close();
    }
  }

  it('http.createServer(tcplog): no next() to call, so the listener throws the explanation', () => {
    const req = new http.IncomingMessage(new Socket());
    const res = new http.ServerResponse(req);
    assert.throws(
      () => factory(req, res),
      (err: unknown) => {
        assert.ok(err instanceof TypeError);
        assert.match(
          err.message,
          /used as a middleware without being called \(app\.use\(tcplog\), http\.createServer\(tcplog\)\)/,
        );
        return true;
      },
    );
  });

  it('Express 5: the request fails with a 500 that explains the mistake', async () => {
    await misuse(() => express());
  });

  it('Express 4: the request fails with a 500 that explains the mistake', async () => {
    const express4 = require('express4') as typeof express;
    await misuse(() => express4());
  });
});

describe('option values JSON cannot show', () => {
  it('are shown as Node prints them, with their class, and a cycle is explained on one line', () => {
    class Settings {
      host = '127.0.0.1';
      port = 9999;
    }
    const cases: ReadonlyArray<readonly [unknown, string]> = [
      [{ host: 'a', port: 1, api: { id: 10n } }, 'got { id: 10n }'],
      [{ host: 'a', port: 1, api: circular() }, '[Circular *1]'],
      [new Settings(), "got Settings { host: '127.0.0.1', port: 9999 }"],
      [{ host: 'a', port: 1, redact: new Set(['cookie']) }, "got Set(1) { 'cookie' }"],
    ];
    for (const [options, shown] of cases) {
      assert.throws(
        () => tcplog(options as tcplog.TcpLogOptions),
        (err: Error) => {
          assert.ok(err.message.includes(shown), err.message);
          assert.ok(!err.message.includes('\n'), `one line: ${err.message}`);
          return true;
        },
      );
    }
  });
});
