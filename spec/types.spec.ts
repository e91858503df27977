/**
 * Type tests of the public API: compile-time assertions (expect-type) that `npm run build:spec`
 * checks, so a change to a public type fails the build. `// @ts-expect-error` marks what must NOT
 * compile. The `it` blocks run the (no-op) assertions and a few runtime facts that go with them.
 *
 * Only additions keep these passing: options and record fields are checked one by one, never as a
 * closed set, except the stats (exactly eight counters) and the required options (host, port).
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ConnectionOptions } from 'node:tls';
import { describe, it } from 'node:test';
import type connect from 'connect';
import type express from 'express';
import { expectTypeOf } from 'expect-type';
import ts from 'typescript';
import tcplog = require('../lib/index.js');
import type * as esm from '../lib/index.mjs' with { 'resolution-mode': 'import' };

type TcpLogOptions = tcplog.TcpLogOptions;
type TcpLogMoreOptions = tcplog.TcpLogMoreOptions;
type TcpLogServersOptions = tcplog.TcpLogServersOptions;
type TcpLogStats = tcplog.TcpLogStats;
type TcpLogRecord = tcplog.TcpLogRecord;
type TcpLogMiddleware = tcplog.Middleware;

/** The keys of `T` that are not optional. */
type RequiredKeys<T> = { [K in keyof T]-?: object extends Pick<T, K> ? never : K }[keyof T];

describe('public types', () => {
  it('the factory: options object, or a connection string with more options', () => {
    expectTypeOf(tcplog).toBeCallableWith({ host: '127.0.0.1', port: 9999 });
    expectTypeOf(tcplog).toBeCallableWith('tcp://h:1');
    expectTypeOf(tcplog).toBeCallableWith('tls://h:1', { keepalive: 0 });
    expectTypeOf(tcplog).toBeCallableWith('tcp://h:1', { keepalive: 0, onError: (_err: Error) => undefined });
    expectTypeOf(tcplog).toBeCallableWith({ servers: ['tcp://a:1', { host: 'b', port: 2, tls: true }] });
    expectTypeOf(tcplog).parameters.toEqualTypeOf<
      [options: TcpLogOptions | TcpLogServersOptions] | [connection: string, options?: TcpLogMoreOptions]
    >();
    expectTypeOf(tcplog).returns.toEqualTypeOf<TcpLogMiddleware>();
    expectTypeOf(tcplog).toEqualTypeOf<tcplog.Factory>();
    expectTypeOf(tcplog.tcplog).toEqualTypeOf<tcplog.Factory>();
    expectTypeOf(tcplog.default).toEqualTypeOf<tcplog.Factory>();

    // Misuse the types catch (each would throw at run time).
    // @ts-expect-error port is required
    expectTypeOf(tcplog).toBeCallableWith({ host: 'x' });
    // @ts-expect-error host is required
    expectTypeOf(tcplog).toBeCallableWith({ port: 1 });
    // @ts-expect-error port is a number
    expectTypeOf(tcplog).toBeCallableWith({ host: 'x', port: '1' });
    // @ts-expect-error the delimiter is CRLF or LF
    expectTypeOf(tcplog).toBeCallableWith({ host: 'x', port: 1, delimiter: '\t' });
    // @ts-expect-error keepalive is a number
    expectTypeOf(tcplog).toBeCallableWith('tcp://h:1', { keepalive: '0' });
    // @ts-expect-error redact is a list or false
    expectTypeOf(tcplog).toBeCallableWith({ host: 'x', port: 1, redact: 'cookie' });
    // @ts-expect-error redact cannot be true
    expectTypeOf(tcplog).toBeCallableWith({ host: 'x', port: 1, redact: true });
    // @ts-expect-error onError receives an Error
    expectTypeOf(tcplog).toBeCallableWith('tcp://h:1', { onError: (err: string) => err });
    // @ts-expect-error options come second, after a connection string
    expectTypeOf(tcplog).toBeCallableWith({ host: 'x', port: 1 }, { keepalive: 0 });
    // @ts-expect-error at most two arguments
    expectTypeOf(tcplog).toBeCallableWith('tcp://h:1', {}, {});
    // @ts-expect-error no argument
    expectTypeOf(tcplog).toBeCallableWith();
    // @ts-expect-error a server object needs its port
    expectTypeOf(tcplog).toBeCallableWith({ servers: [{ host: 'b' }] });
    // Compiled, never called: object literals, where excess properties are checked.
    function misspelt(): void {
      // @ts-expect-error servers replaces host and port
      tcplog({ servers: ['tcp://a:1'], host: 'x', port: 1 });
      // @ts-expect-error unknown option
      tcplog({ host: 'x', port: 1, hots: 'y' });
      // @ts-expect-error unknown option after a connection string
      tcplog('tcp://h:1', { keepAlive: 0 });
    }
    expectTypeOf(misspelt).toBeFunction();

    assert.equal(typeof tcplog, 'function');
    assert.equal(tcplog.length, 2);
    assert.equal(tcplog.tcplog, tcplog);
    assert.equal(tcplog.default, tcplog);
  });

  it('the error classes', () => {
    expectTypeOf(tcplog.TcpLogDeliveryError).toBeConstructibleWith('tcp://h:1', 'ECONNREFUSED', 'refused');
    expectTypeOf(tcplog.TcpLogDeliveryError).toBeConstructibleWith('tcp://h:1', 'ECONNRESET', 'reset', new Error());
    expectTypeOf(tcplog.TcpLogDeliveryError).instance.toExtend<Error>();
    expectTypeOf(tcplog.TcpLogDeliveryError).instance.toHaveProperty('code').toEqualTypeOf<string>();
    expectTypeOf(tcplog.TcpLogDeliveryError).instance.toHaveProperty('destination').toEqualTypeOf<string>();
    expectTypeOf<tcplog.DeliveryError>().toEqualTypeOf<InstanceType<typeof tcplog.TcpLogDeliveryError>>();
    // The error classes are types as well, for a handler's parameter.
    expectTypeOf<tcplog.TcpLogDeliveryError>().toEqualTypeOf<InstanceType<typeof tcplog.TcpLogDeliveryError>>();
    expectTypeOf<tcplog.TcpLogOptionTypeError>().toEqualTypeOf<InstanceType<typeof tcplog.TcpLogOptionTypeError>>();
    expectTypeOf<tcplog.TcpLogOptionRangeError>().toEqualTypeOf<InstanceType<typeof tcplog.TcpLogOptionRangeError>>();
    expectTypeOf(tcplog.TcpLogOptionTypeError).instance.toExtend<TypeError>();
    expectTypeOf(tcplog.TcpLogOptionTypeError).instance.toHaveProperty('option').toEqualTypeOf<string>();
    expectTypeOf(tcplog.TcpLogOptionRangeError).instance.toExtend<RangeError>();
    expectTypeOf(tcplog.TcpLogOptionRangeError).instance.toHaveProperty('option').toEqualTypeOf<string>();

    assert.throws(() => tcplog({ host: '127.0.0.1', port: 0 }), tcplog.TcpLogOptionRangeError);
    assert.throws(() => tcplog({ host: '127.0.0.1', port: '1' as unknown as number }), tcplog.TcpLogOptionTypeError);
  });

  it('the middleware: an Express 5 and Connect handler with close() and stats()', () => {
    expectTypeOf<TcpLogMiddleware>().toBeCallableWith({} as IncomingMessage, {} as ServerResponse, () => undefined);
    expectTypeOf<TcpLogMiddleware>().toBeCallableWith(
      {} as IncomingMessage,
      {} as ServerResponse,
      (_err?: unknown) => {},
    );
    expectTypeOf<TcpLogMiddleware>().returns.toBeVoid();
    expectTypeOf<TcpLogMiddleware>().toExtend<express.RequestHandler>();
    expectTypeOf<TcpLogMiddleware>().toExtend<connect.NextHandleFunction>();
    expectTypeOf<TcpLogMiddleware['close']>().parameters.toEqualTypeOf<[]>();
    expectTypeOf<TcpLogMiddleware['close']>().returns.toEqualTypeOf<Promise<void>>();
    expectTypeOf<TcpLogMiddleware['stats']>().parameters.toEqualTypeOf<[]>();
    expectTypeOf<TcpLogMiddleware['stats']>().returns.toEqualTypeOf<TcpLogStats>();
    // @ts-expect-error close() resolves to nothing
    expectTypeOf<TcpLogMiddleware['close']>().returns.toEqualTypeOf<Promise<boolean>>();

    // Compiled, never called: how apps mount it.
    function mount(app: express.Express, router: express.Router, server: connect.Server): void {
      const logger = tcplog({ host: '127.0.0.1', port: 9999 });
      app.use(logger);
      app.use('/api', tcplog('tcp://127.0.0.1:9999', { keepalive: 0 }), router);
      router.use(logger);
      router.use('/items', logger);
      app.get('/', logger, (_req, res) => {
        res.send('ok');
      });
      server.use(logger);
      server.use('/mounted', logger);
      const handler: express.RequestHandler = logger;
      const connectHandler: connect.NextHandleFunction = logger;
      app.use(handler, connectHandler);
    }
    expectTypeOf(mount).toBeFunction();
  });

  it('stats(): exactly the eight counters', () => {
    expectTypeOf<TcpLogStats>().toEqualTypeOf<{
      records: number;
      sent: number;
      dropped: number;
      buffered: number;
      bufferedBytes: number;
      connects: number;
      errors: number;
      connected: boolean;
    }>();
    expectTypeOf<keyof TcpLogStats>().toEqualTypeOf<
      'records' | 'sent' | 'dropped' | 'buffered' | 'bufferedBytes' | 'connects' | 'errors' | 'connected'
    >();
    expectTypeOf<TcpLogStats>().not.toHaveProperty('received');
  });

  it('the options: host and port required, each optional field typed', () => {
    expectTypeOf<RequiredKeys<TcpLogOptions>>().toEqualTypeOf<'host' | 'port'>();
    expectTypeOf<TcpLogOptions['host']>().toEqualTypeOf<string>();
    expectTypeOf<TcpLogOptions['port']>().toEqualTypeOf<number>();
    expectTypeOf<TcpLogOptions['timeout']>().toEqualTypeOf<number | undefined>();
    expectTypeOf<TcpLogOptions['keepalive']>().toEqualTypeOf<number | undefined>();
    expectTypeOf<TcpLogOptions['tls']>().toEqualTypeOf<boolean | ConnectionOptions | undefined>();
    expectTypeOf<TcpLogOptions['tlsServername']>().toEqualTypeOf<string | undefined>();
    expectTypeOf<TcpLogOptions['delimiter']>().toEqualTypeOf<'\r\n' | '\n' | undefined>();
    expectTypeOf<TcpLogOptions['maxBufferBytes']>().toEqualTypeOf<number | undefined>();
    expectTypeOf<TcpLogOptions['redact']>().toEqualTypeOf<readonly string[] | false | undefined>();
    expectTypeOf<TcpLogOptions['api']>().toEqualTypeOf<Record<string, unknown> | undefined>();
    expectTypeOf<TcpLogOptions['onError']>().toEqualTypeOf<((err: Error) => unknown) | undefined>();
    // The connection string gives host and port: they cannot be given again.
    expectTypeOf<TcpLogMoreOptions>().toEqualTypeOf<Omit<TcpLogOptions, 'host' | 'port'>>();
    expectTypeOf<TcpLogMoreOptions>().not.toHaveProperty('host');
    expectTypeOf<TcpLogMoreOptions>().not.toHaveProperty('port');
    expectTypeOf<RequiredKeys<TcpLogMoreOptions>>().toBeNever();
    // A readonly list is accepted: `as const` arrays and frozen defaults.
    expectTypeOf<{ host: string; port: number; redact: readonly ['cookie'] }>().toExtend<TcpLogOptions>();
    expectTypeOf<{ host: string; port: number; tls: { ca: string; servername: string } }>().toExtend<TcpLogOptions>();
  });

  it('the record: Kong tcp-log fields', () => {
    type Request = TcpLogRecord['request'];
    type Response = TcpLogRecord['response'];
    type LoggedValue = string | boolean | Array<string | boolean>;
    expectTypeOf<Request['method']>().toEqualTypeOf<string>();
    expectTypeOf<Request['uri']>().toEqualTypeOf<string>();
    expectTypeOf<Request['request_uri']>().toEqualTypeOf<string>();
    expectTypeOf<Request['size']>().toEqualTypeOf<number>();
    expectTypeOf<Request['querystring']>().toEqualTypeOf<Record<string, LoggedValue>>();
    expectTypeOf<Request['headers']>().toEqualTypeOf<Record<string, string | string[]>>();
    expectTypeOf<Response['status']>().toEqualTypeOf<number | undefined>();
    expectTypeOf<Response['size']>().toEqualTypeOf<number>();
    expectTypeOf<Response['headers']>().toEqualTypeOf<Record<string, string | string[]>>();
    expectTypeOf<TcpLogRecord['latencies']['request']>().toEqualTypeOf<number>();
    expectTypeOf<TcpLogRecord['latencies']['proxy']>().toEqualTypeOf<number | undefined>();
    expectTypeOf<TcpLogRecord['api']>().toEqualTypeOf<Record<string, unknown> | undefined>();
    expectTypeOf<TcpLogRecord['route']>().toEqualTypeOf<{ path: string; base_url: string } | undefined>();
    expectTypeOf<TcpLogRecord['started_at']>().toEqualTypeOf<number>();
    expectTypeOf<TcpLogRecord['client_ip']>().toEqualTypeOf<string | undefined>();
    expectTypeOf<Request['id']>().toEqualTypeOf<string | undefined>();
    // A string or a number the option returns is logged as { id }.
    expectTypeOf<TcpLogRecord['consumer']>().toEqualTypeOf<Record<string, unknown> | undefined>();
    expectTypeOf<RequiredKeys<TcpLogRecord>>().toEqualTypeOf<'request' | 'response' | 'latencies' | 'started_at'>();

    // A record as received parses into the type.
    const record: TcpLogRecord = JSON.parse(
      '{"request":{"method":"GET","uri":"/a?b=1","request_uri":"http://h/a?b=1","size":40,"querystring":{"b":"1"},"headers":{}},' +
        '"response":{"status":200,"size":100,"headers":{}},"latencies":{"request":1,"proxy":0},"started_at":1700000000000}',
    );
    assert.equal(record.request.uri, '/a?b=1');
  });

  it('the ESM entry: the same factory and types, plus TcpLogMiddleware', () => {
    expectTypeOf<typeof esm.default>().toEqualTypeOf<tcplog.Factory>();
    expectTypeOf<typeof esm.tcplog>().toEqualTypeOf<tcplog.Factory>();
    expectTypeOf<esm.TcpLogMiddleware>().toEqualTypeOf<TcpLogMiddleware>();
    expectTypeOf<esm.TcpLogOptions>().toEqualTypeOf<TcpLogOptions>();
    expectTypeOf<esm.TcpLogMoreOptions>().toEqualTypeOf<TcpLogMoreOptions>();
    expectTypeOf<esm.TcpLogServersOptions>().toEqualTypeOf<TcpLogServersOptions>();
    expectTypeOf<esm.ServerOption>().toEqualTypeOf<tcplog.ServerOption>();
    expectTypeOf<esm.TcpLogStats>().toEqualTypeOf<TcpLogStats>();
    expectTypeOf<esm.TcpLogRecord>().toEqualTypeOf<TcpLogRecord>();
    expectTypeOf<typeof esm.TcpLogDeliveryError>().toEqualTypeOf<typeof tcplog.TcpLogDeliveryError>();
    expectTypeOf<esm.TcpLogDeliveryError>().toEqualTypeOf<tcplog.TcpLogDeliveryError>();
    expectTypeOf<esm.TcpLogOptionTypeError>().toEqualTypeOf<tcplog.TcpLogOptionTypeError>();
    expectTypeOf<esm.TcpLogOptionRangeError>().toEqualTypeOf<tcplog.TcpLogOptionRangeError>();
    expectTypeOf<typeof esm.TcpLogOptionTypeError>().toEqualTypeOf<typeof tcplog.TcpLogOptionTypeError>();
    expectTypeOf<typeof esm.TcpLogOptionRangeError>().toEqualTypeOf<typeof tcplog.TcpLogOptionRangeError>();
  });
});

describe('the shipped declarations', () => {
  it('compile without skipLibCheck for an ES5 target: they reach no class with private fields', () => {
    // dist/ is what the package ships (npm test builds it first).
    const dist = path.resolve(__dirname, '../../dist');
    const entries = ['index.d.ts', 'index.d.mts'].map((name) => path.join(dist, name));
    for (const entry of entries) assert.ok(existsSync(entry), `${entry} is missing: run npm run build`);
    const program = ts.createProgram(entries, {
      target: ts.ScriptTarget.ES5,
      lib: ['lib.es2022.d.ts'],
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      strict: true,
      noEmit: true,
      skipLibCheck: false,
      types: ['node'],
    });
    const ours = ts
      .getPreEmitDiagnostics(program)
      .filter((diagnostic) => diagnostic.file?.fileName.startsWith(dist) === true)
      .map((diagnostic) => ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n'));
    assert.deepEqual(ours, []);
  });
});
