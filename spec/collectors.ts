/**
 * What the real-collector specs (rsyslog.spec.ts, syslog-ng.spec.ts) share: the collector as a
 * child process (tracked, stopped with a bound), its output files read as JSON lines and polled
 * with a hard bound (a file has no event), the TCP tee that captures what the middleware sent,
 * and the check of a record against the HTTP exchange it logs.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, afterEach, before } from 'node:test';
import express from 'express';
import tcplog = require('../lib/index.js');
import { activeClientCount } from '../lib/registry.js';
import { invariant, listen, request, type Listening, type Reply } from './helpers.js';

export type Json = Record<string, any>;

/** Bound on a record showing up in a collector's output file. */
export const OUTPUT_WAIT_MS = 8_000;

export function readText(file: string, from = 0): string {
  try {
    return fs.readFileSync(file).subarray(from).toString('utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  }
}

export function fileSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

/** Every collector a spec started, killed on exit whatever happened to the test run. */
const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

/** Registers a collector process so that it is killed when the test process exits. */
export function trackChild(child: ChildProcess): void {
  children.add(child);
  child.on('exit', () => children.delete(child));
}

/** The environment for a collector: ours, minus what would let it talk to a supervising systemd. */
export function childEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = { ...process.env, ...extra };
  delete env['NOTIFY_SOCKET'];
  delete env['LISTEN_FDS'];
  delete env['LISTEN_PID'];
  return env;
}

/** SIGTERM, then SIGKILL if it has not exited within `timeoutMs`; resolves once it has exited. */
export async function stopChild(child: ChildProcess, timeoutMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), timeoutMs)));
  const outcome = await Promise.race([exited, late]);
  clearTimeout(timer);
  if (outcome === 'late') {
    child.kill('SIGKILL');
    await exited;
  }
}

/** The JSON records in a collector's output file (complete lines only; a big one may be half written). */
export function readJsonLines(file: string, what: string): Json[] {
  const text = readText(file);
  const complete = text.slice(0, text.lastIndexOf('\n') + 1);
  return complete
    .split('\n')
    .filter((line) => line !== '')
    .map((line, index) => {
      try {
        return JSON.parse(line) as Json;
      } catch (err) {
        throw new Error(`${what} line ${index + 1} is not JSON (${(err as Error).message}): ${line.slice(0, 300)}`, {
          cause: err,
        });
      }
    });
}

/** Raw lines of a file, for sizes. */
export function readLines(file: string): string[] {
  return readText(file)
    .split('\n')
    .filter((line) => line !== '');
}

/**
 * Polls `read()` (an output file: there is no event for it) every 20 ms until `count` records match
 * `select`; after `timeoutMs` fails with `diagnose()` in the message.
 */
export async function waitForRecords(
  read: () => Json[],
  select: (record: Json) => boolean,
  count: number,
  timeoutMs: number,
  diagnose: () => string,
): Promise<Json[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = read().filter(select);
    if (found.length >= count) return found;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms: ${found.length}/${count} records; ${diagnose()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Connects to 127.0.0.1:port until it works; retries every 20 ms, bounded, stops if `failed()` says why. */
export function connectWithRetry(port: number, timeoutMs: number, failed: () => string | null): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    function attempt(): void {
      const why = failed();
      if (why !== null) return reject(new Error(why));
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve();
      });
      socket.once('error', (err: NodeJS.ErrnoException) => {
        socket.destroy();
        if (Date.now() > deadline) return reject(new Error(`port ${port} still refuses connections: ${err.code}`));
        setTimeout(attempt, 20);
      });
    }
    attempt();
  });
}

/**
 * A transparent TCP tee in front of a collector: forwards every byte, and keeps every line as sent
 * (with its `\r` when the delimiter was `\r\n`). This is "what the middleware sent".
 */
export class Tee {
  readonly server: net.Server;
  readonly lines: string[] = [];
  readonly #sockets = new Set<net.Socket>();

  constructor(readonly upstreamPort: number) {
    this.server = net.createServer((down) => this.#accept(down));
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  async listen(): Promise<this> {
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    return this;
  }

  /** Lines sent whose record matches `select`, parsed, with their raw text. */
  sent(select: (record: Json) => boolean): Array<{ raw: string; record: Json }> {
    return this.lines
      .map((raw) => ({ raw, record: JSON.parse(raw.replace(/\r$/, '')) as Json }))
      .filter(({ record }) => select(record));
  }

  async close(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy();
    if (this.server.listening) await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  #accept(down: net.Socket): void {
    const up = net.connect(this.upstreamPort, '127.0.0.1');
    for (const socket of [down, up]) {
      this.#sockets.add(socket);
      socket.on('error', () => undefined);
      socket.on('close', () => this.#sockets.delete(socket));
    }
    down.on('close', () => up.end());
    up.on('close', () => down.destroy());
    let pending = Buffer.alloc(0);
    down.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      let newline = pending.indexOf(0x0a);
      while (newline !== -1) {
        this.lines.push(pending.subarray(0, newline).toString('utf8'));
        pending = pending.subarray(newline + 1);
        newline = pending.indexOf(0x0a);
      }
    });
    down.pipe(up);
  }
}

/** What we know of an exchange from the HTTP side: the expectation a record is checked against. */
export interface Exchange {
  method: string;
  uri: string;
  headers: Record<string, string>;
  body?: string;
  reply: Reply;
  startedBefore: number;
  finishedAfter: number;
  query: Json;
  api?: Json;
  route?: { path: string; base_url: string };
}

export async function exchange(
  port: number,
  method: string,
  uri: string,
  query: Json,
  extra: {
    headers?: Record<string, string>;
    body?: string;
    api?: Json;
    route?: { path: string; base_url: string };
  } = {},
): Promise<Exchange> {
  const headers = extra.headers ?? {};
  const startedBefore = Date.now();
  const reply = await request(port, uri, {
    method,
    headers,
    ...(extra.body !== undefined ? { body: extra.body } : {}),
  });
  return {
    method,
    uri,
    headers,
    ...(extra.body !== undefined ? { body: extra.body } : {}),
    reply,
    startedBefore,
    finishedAfter: Date.now(),
    query,
    ...(extra.api ? { api: extra.api } : {}),
    ...(extra.route ? { route: extra.route } : {}),
  };
}

const REDACTED_HEADERS = new Set(['authorization', 'proxy-authorization', 'cookie', 'set-cookie']);

/** A record as a collector wrote it, against the HTTP exchange it logs: values and JSON types. */
export function assertRecordOf(record: Json, ex: Exchange, httpPort: number): void {
  const what = `record of ${ex.method} ${ex.uri}`;
  const req = record['request'] as Json;
  assert.equal(req['method'], ex.method, what);
  assert.equal(req['uri'], ex.uri, what);
  assert.equal(req['request_uri'], `http://127.0.0.1:${httpPort}${ex.uri}`, what);
  assert.ok(
    Number.isInteger(req['size']) && req['size'] > 0,
    `${what}: request.size is a positive integer, got ${JSON.stringify(req['size'])}`,
  );
  if (ex.body !== undefined)
    assert.ok(req['size'] > Buffer.byteLength(ex.body), `${what}: request.size counts the body`);
  assert.deepEqual(req['querystring'], ex.query, `${what}: querystring`);
  for (const [name, value] of Object.entries(ex.headers)) {
    const lower = name.toLowerCase();
    assert.equal(
      req['headers'][lower],
      REDACTED_HEADERS.has(lower) ? 'REDACTED' : value,
      `${what}: request header ${lower}`,
    );
  }
  assert.equal(req['headers']['host'], `127.0.0.1:${httpPort}`, what);

  const res = record['response'] as Json;
  assert.equal(res['status'], ex.reply.status, `${what}: response.status is the number sent`);
  assert.ok(Number.isInteger(res['size']), `${what}: response.size is an integer, got ${JSON.stringify(res['size'])}`);
  assert.ok(res['size'] > ex.reply.body.length, `${what}: response.size counts head and body`);
  for (const name of ['content-type', 'content-length', 'x-powered-by']) {
    const sent = ex.reply.headers[name];
    if (sent !== undefined) assert.equal(res['headers'][name], sent, `${what}: response header ${name}`);
  }

  const latencies = record['latencies'] as Json;
  assert.equal(typeof latencies['request'], 'number', what);
  assert.equal(typeof latencies['proxy'], 'number', what);
  assert.ok(
    latencies['request'] >= 0 && latencies['request'] + 1 >= latencies['proxy'],
    `${what}: latencies ${JSON.stringify(latencies)}`,
  );

  assert.ok(
    Number.isInteger(record['started_at']),
    `${what}: started_at is an integer, got ${JSON.stringify(record['started_at'])}`,
  );
  assert.ok(
    record['started_at'] >= ex.startedBefore && record['started_at'] <= ex.finishedAfter,
    `${what}: started_at ${record['started_at']} within [${ex.startedBefore}, ${ex.finishedAfter}]`,
  );
  assert.equal(record['client_ip'], '127.0.0.1', what);
  assert.deepEqual(record['api'], ex.api, `${what}: api`);
  assert.deepEqual(record['route'], ex.route, `${what}: route`);
}

export function uriStartsWith(prefix: string): (record: Json) => boolean {
  return (record) => typeof record['request']?.['uri'] === 'string' && record['request']['uri'].startsWith(prefix);
}

/**
 * `count` request headers of 1 KiB each (`x-bulk-000`...): what makes a record of over `count` KiB.
 * Node's server keeps at most 2000 headers; its head limit must be raised (maxHeaderSize) for this.
 */
export function bulkHeaders(count: number): Record<string, string> {
  const headers: Record<string, string> = {};
  for (let i = 0; i < count; i++) {
    headers[`x-bulk-${String(i).padStart(3, '0')}`] =
      `${i}:` + 'abcdefghijklmnopqrstuvwxyz0123456789'.repeat(29).slice(0, 1024 - `${i}:`.length);
  }
  return headers;
}

/** A collector run by a spec: started in `before()`, stopped in `after()`. */
export interface Collector {
  readonly port: number;
  start(): Promise<void>;
  stop(): Promise<void>;
  waitForRecords(select: (record: Json) => boolean, count: number): Promise<Json[]>;
}

/** What a collector spec's tests use; `collector` and `tee` are set once `before()` has run. */
export interface CollectorSuite<C extends Collector> {
  readonly collector: C;
  readonly tee: Tee;
  /** The middlewares logger() made for the running test, oldest first. */
  readonly middlewares: readonly tcplog.Middleware[];
  /** A middleware, closed (and its invariant checked) after the test. */
  readonly logger: (options: tcplog.TcpLogOptions) => tcplog.Middleware;
  /** The app on a free port, with a head limit raised for 200 KiB records; closed after the test. */
  readonly serve: (app: express.Express) => Promise<Listening>;
}

/**
 * The hooks every collector spec needs, registered in the calling describe(): the collector in a
 * temp dir (`create(dir)`), the tee in front of it; after each test, the invariant on every
 * instance, every client released, then `afterEachCheck` (what the collector refused, its
 * complaints); after all, everything closed and the temp dir removed. Does nothing when skipped.
 */
export function collectorSuite<C extends Collector>(options: {
  skip: string | false;
  tempPrefix: string;
  create(dir: string): Promise<C>;
  afterEachCheck(collector: C): void;
}): CollectorSuite<C> {
  let dir = '';
  let collector: C | undefined;
  let tee: Tee | undefined;
  const middlewares: tcplog.Middleware[] = [];
  const opened: Array<{ close(): Promise<void> }> = [];

  before(async () => {
    if (options.skip) return;
    dir = fs.mkdtempSync(path.join(path.resolve(os.tmpdir()), options.tempPrefix));
    collector = await options.create(dir);
    await collector.start();
    tee = await new Tee(collector.port).listen();
  });

  afterEach(async () => {
    if (options.skip) return;
    // Check the invariant on every instance, but close everything before failing on it.
    const broken = middlewares.map((mw) => mw.stats()).filter((stats) => !invariant(stats));
    for (const mw of middlewares.splice(0)) await mw.close();
    for (const thing of opened.splice(0).reverse()) await thing.close();
    assert.deepEqual(broken, [], 'records === sent + dropped + buffered on every instance');
    assert.equal(activeClientCount(), 0, 'every client released');
    options.afterEachCheck(collector as C);
  });

  after(async () => {
    try {
      for (const mw of middlewares.splice(0)) await mw.close();
      for (const thing of opened.splice(0).reverse()) await thing.close();
      await tee?.close();
    } finally {
      await collector?.stop();
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  return {
    middlewares,
    get collector(): C {
      assert.ok(collector, 'the collector is started in before()');
      return collector;
    },
    get tee(): Tee {
      assert.ok(tee, 'the tee is started in before()');
      return tee;
    },
    logger: (loggerOptions) => {
      const mw = tcplog(loggerOptions);
      middlewares.push(mw);
      return mw;
    },
    serve: async (app) => {
      const server = await listen(app, { maxHeaderSize: 512 * 1024 });
      opened.push(server);
      return server;
    },
  };
}

/**
 * A record of over 200 KiB (200 headers of 1 KiB), then an ordinary one: both must come out of
 * the collector whole, as two records equal to what was sent. Returns what was sent, for the
 * spec's own check of the collector's output line.
 */
export async function sendLargeRecord<C extends Collector>(
  suite: CollectorSuite<C>,
): Promise<Array<{ raw: string; record: Json }>> {
  const app = express();
  app.use(suite.logger({ host: '127.0.0.1', port: suite.tee.port }));
  app.get('/large', (_req, res) => {
    res.send('large ok');
  });
  app.get('/large/after', (_req, res) => {
    res.send('after ok');
  });
  const http = await suite.serve(app);
  const large = await exchange(
    http.port,
    'GET',
    '/large',
    {},
    { headers: bulkHeaders(200), route: { path: '/large', base_url: '' } },
  );
  const next = await exchange(
    http.port,
    'GET',
    '/large/after?n=1',
    { n: '1' },
    { route: { path: '/large/after', base_url: '' } },
  );
  assert.equal(large.reply.status, 200);
  assert.equal(next.reply.status, 200);

  const select = uriStartsWith('/large');
  const received = await suite.collector.waitForRecords(select, 2);
  const sent = suite.tee.sent(select);
  assert.equal(sent.length, 2);
  assert.ok(
    Buffer.byteLength(sent[0]!.raw) > 200 * 1024,
    `the record sent is over 200 KiB (${Buffer.byteLength(sent[0]!.raw)} bytes)`,
  );
  assert.equal(received.length, 2, 'two records, not pieces of one');
  assert.deepEqual(
    received,
    sent.map((s) => s.record),
  );
  assertRecordOf(received[0]!, large, http.port);
  assertRecordOf(received[1]!, next, http.port);
  assert.equal(
    Object.keys(received[0]!['request']['headers']).filter((name) => name.startsWith('x-bulk-')).length,
    200,
  );
  return sent;
}

/**
 * A collector run as a child process, writing the records it parsed to `recordsFile` and what it
 * could not parse to `unparsedFile`. Subclasses start it, and say what else to show when the
 * records do not come.
 */
export abstract class CollectorProcess implements Collector {
  protected child: ChildProcess | null = null;
  /** What the child printed on stderr since it was started. */
  protected stderrText = '';

  constructor(
    readonly name: string,
    readonly port: number,
    readonly recordsFile: string,
    readonly unparsedFile: string,
    /** Bound on starting and stopping it; not a timing claim. */
    protected readonly waitMs: number,
  ) {}

  abstract start(): Promise<void>;

  /** What to add to the message when records do not come (its log, its stderr). */
  protected abstract diagnostics(): string;

  get running(): boolean {
    return this.child !== null;
  }

  /** SIGTERM, then SIGKILL if it has not exited within the bound; resolves once it has exited. */
  async stop(): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.child = null;
    await stopChild(child, this.waitMs);
  }

  /** The records it wrote (complete lines only; a big one may be half written). */
  records(): Json[] {
    return readJsonLines(this.recordsFile, `${this.name} output`);
  }

  /** Raw output lines, for sizes. */
  lines(): string[] {
    return readLines(this.recordsFile);
  }

  /** What it could not parse, from byte `from` on. */
  unparsed(from = 0): string {
    return readText(this.unparsedFile, from);
  }

  /** Polls the output file (there is no event for it) until `count` records match `select`. */
  waitForRecords(select: (record: Json) => boolean, count: number, timeoutMs = OUTPUT_WAIT_MS): Promise<Json[]> {
    return waitForRecords(
      () => this.records(),
      select,
      count,
      timeoutMs,
      () =>
        `in ${this.name}'s output; unparsed: ${JSON.stringify(this.unparsed().slice(0, 500))}; ${this.diagnostics()}`,
    );
  }
}

/**
 * The records `select` picks, as the collector wrote them and as the tee saw them go: as many as
 * `exchanges`, each once, equal in values and JSON types (deepStrictEqual: 1 !== "1") and in
 * order, each checked against its exchange, each sent with the delimiter its `kind` query
 * parameter names (`lf`: "\n"; `crlf` or none: the default "\r\n").
 */
export async function receivedAsSent<C extends Collector>(
  suite: CollectorSuite<C>,
  select: (record: Json) => boolean,
  exchanges: readonly Exchange[],
  httpPort: number,
): Promise<{ received: Json[]; sent: Array<{ raw: string; record: Json }> }> {
  const received = await suite.collector.waitForRecords(select, exchanges.length);
  const sent = suite.tee.sent(select);
  assert.equal(sent.length, exchanges.length);
  for (const { raw, record } of sent) {
    const kind = (record['request']['querystring']['kind'] as string | undefined) ?? 'crlf';
    assert.equal(
      raw.endsWith('}\r'),
      kind === 'crlf',
      `${kind} record ends with ${kind === 'crlf' ? '\\r\\n' : '\\n'}: ...${JSON.stringify(raw.slice(-3))}`,
    );
  }
  assert.equal(received.length, exchanges.length, 'each record exactly once');
  assert.deepEqual(
    received,
    sent.map((s) => s.record),
  );
  exchanges.forEach((ex, i) => assertRecordOf(received[i]!, ex, httpPort));
  return { received, sent };
}
