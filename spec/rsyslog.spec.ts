/**
 * A real collector end to end: rsyslogd (imtcp + mmjsonparse + omfile) run in the foreground as a
 * child process, with the configuration the README recommends, written to a temp dir. Records
 * shipped from a real Express 5 app must come out of rsyslog parsed, with the same field values
 * and types as the bytes we sent; that includes a 200 KiB record, both delimiters and an rsyslog
 * restart.
 *
 * What we sent is captured by a transparent TCP tee between the middleware and rsyslog (every
 * byte forwarded, every line kept), and checked separately against the HTTP exchange we made.
 * rsyslog's output file has no event, so it is polled on a short timer with a hard bound.
 *
 * Where rsyslogd is not installed the suite is reported as skipped; `.ci/run` installs it.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import express from 'express';
import tcplog = require('../lib/index.js');
import { activeClientCount } from '../lib/registry.js';
import { freePort, invariant, listen, request, until, type Listening, type Reply } from './helpers.js';

type Json = Record<string, any>;

/** Bound on waiting for rsyslogd to come up or go down; not a timing claim. */
const RSYSLOGD_WAIT_MS = 10_000;
/** Bound on a record showing up in rsyslog's output file. */
const OUTPUT_WAIT_MS = 8_000;
/** Records made while rsyslog is down: reconnect backoff tops out at 5 s, so allow 15 s. */
const RESTART_WAIT_MS = 15_000;
/** rsyslog's maxMessageSize: the default 8 KiB splits records (and mangles the pieces). */
const MAX_MESSAGE_SIZE = '1m';

/** rsyslogd lives in /usr/sbin, which a non-root PATH often lacks. */
function findRsyslogd(): string | null {
  const dirs = [...(process.env['PATH'] ?? '').split(path.delimiter), '/usr/sbin', '/sbin', '/usr/local/sbin'];
  for (const dir of dirs) {
    if (!dir) continue;
    const file = path.join(dir, 'rsyslogd');
    try {
      fs.accessSync(file, fs.constants.X_OK);
      return file;
    } catch {
      // not here
    }
  }
  return null;
}

const RSYSLOGD = findRsyslogd();
const SKIP: string | false = RSYSLOGD
  ? false
  : 'rsyslogd is not installed: apt-get install rsyslog (.ci/run installs it, so CI always runs this suite)';

/**
 * The configuration under test; README.md's rsyslog recipe is this text with the paths and port
 * filled in. `processInternalMessages` and `workDirectory` only keep rsyslogd's own messages and
 * state inside the temp dir (Debian's build otherwise sends them to /dev/log).
 */
function rsyslogConfig(dir: string, port: number): string {
  return `global(
  parser.escapeControlCharactersOnReceive="off"
  maxMessageSize="${MAX_MESSAGE_SIZE}"
  processInternalMessages="on"
  workDirectory="${dir}"
)
module(load="imtcp")
module(load="mmjsonparse")

template(name="tcplog_json" type="list") { property(name="$!all-json") constant(value="\\n") }
template(name="tcplog_raw" type="list") { property(name="rawmsg") constant(value="\\n") }

ruleset(name="tcplog") {
  action(type="mmjsonparse" cookie="" useRawMsg="on")
  if $parsesuccess == "OK" then {
    action(type="omfile" file="${dir}/records.json" template="tcplog_json")
  } else {
    action(type="omfile" file="${dir}/unparsed.log" template="tcplog_raw")
  }
}

input(type="imtcp" address="127.0.0.1" port="${port}" ruleset="tcplog" supportOctetCountedFraming="off")

# rsyslogd's own messages (start, stop, errors)
action(type="omfile" file="${dir}/rsyslogd.log")
`;
}

function readText(file: string, from = 0): string {
  try {
    return fs.readFileSync(file).subarray(from).toString('utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  }
}

function fileSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

/** Every rsyslogd this file started, killed on exit whatever happened to the test run. */
const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

/** One rsyslogd in the foreground (`-n`), its config, pid file and output in a temp dir. */
class Rsyslogd {
  readonly config: string;
  readonly pidFile: string;
  readonly recordsFile: string;
  readonly unparsedFile: string;
  readonly logFile: string;
  #child: ChildProcess | null = null;
  #stderr = '';

  constructor(
    readonly bin: string,
    readonly dir: string,
    readonly port: number,
  ) {
    this.config = path.join(dir, 'rsyslog.conf');
    this.pidFile = path.join(dir, 'rsyslogd.pid');
    this.recordsFile = path.join(dir, 'records.json');
    this.unparsedFile = path.join(dir, 'unparsed.log');
    this.logFile = path.join(dir, 'rsyslogd.log');
    fs.writeFileSync(this.config, rsyslogConfig(dir, port));
  }

  get running(): boolean {
    return this.#child !== null;
  }

  /** Starts rsyslogd and resolves once it listens on our port with no error; else throws its stderr. */
  async start(): Promise<void> {
    assert.equal(this.#child, null, 'rsyslogd already running');
    const logFrom = fileSize(this.logFile);
    const env = { ...process.env };
    // Never let it talk to a systemd that may supervise the test runner.
    delete env['NOTIFY_SOCKET'];
    delete env['LISTEN_FDS'];
    delete env['LISTEN_PID'];
    const child = spawn(this.bin, ['-n', '-f', this.config, '-i', this.pidFile], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env,
    });
    this.#child = child;
    children.add(child);
    this.#stderr = '';
    let exit: string | null = null;
    child.stdout.setEncoding('utf8').on('data', (text: string) => (this.#stderr += text));
    child.stderr.setEncoding('utf8').on('data', (text: string) => (this.#stderr += text));
    child.on('error', (err) => (exit = `could not run ${this.bin}: ${err.message}`));
    child.on('exit', (code, signal) => {
      exit ??= `rsyslogd exited (code ${code}, signal ${signal})`;
      children.delete(child);
    });
    const log = (): string => readText(this.logFile, logFrom);
    try {
      // 1. Its port accepts a connection (retry on a short loop; stop at once if it exits).
      await connectWithRetry(this.port, RSYSLOGD_WAIT_MS, () => exit);
      // 2. It announced its start: bind errors are printed before that, so they are in by now.
      const started = `x-pid="${child.pid}" x-info="https://www.rsyslog.com"] start`;
      await until(() => exit !== null || log().includes(started), RSYSLOGD_WAIT_MS, 'the rsyslogd start message');
      if (exit !== null) throw new Error(exit);
      // 3. rsyslogd keeps running when it cannot bind (someone else took the port): look for errors.
      const problems = `${this.#stderr}\n${log()}`
        .split('\n')
        .filter((line) => /error|could not|cannot|failed/i.test(line));
      if (problems.length > 0) throw new Error(`it reported:\n${problems.join('\n')}`);
    } catch (err) {
      await this.stop();
      throw new Error(
        `rsyslogd did not come up on 127.0.0.1:${this.port}: ${(err as Error).message}\n` +
          `--- rsyslogd stderr ---\n${this.#stderr}\n--- ${this.logFile} ---\n${log()}`,
        { cause: err },
      );
    }
  }

  /** SIGTERM, then SIGKILL if it has not exited within the bound; resolves once it has exited. */
  async stop(): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = null;
    if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), RSYSLOGD_WAIT_MS)));
    const outcome = await Promise.race([exited, late]);
    clearTimeout(timer);
    if (outcome === 'late') {
      child.kill('SIGKILL');
      await exited;
    }
  }

  /** The records rsyslog wrote (complete lines only; a big one may be half written). */
  records(): Json[] {
    const text = readText(this.recordsFile);
    const complete = text.slice(0, text.lastIndexOf('\n') + 1);
    return complete
      .split('\n')
      .filter((line) => line !== '')
      .map((line, index) => {
        try {
          return JSON.parse(line) as Json;
        } catch (err) {
          throw new Error(
            `rsyslog output line ${index + 1} is not JSON (${(err as Error).message}): ${line.slice(0, 300)}`,
            { cause: err },
          );
        }
      });
  }

  /** Raw output lines, for sizes. */
  lines(): string[] {
    return readText(this.recordsFile)
      .split('\n')
      .filter((line) => line !== '');
  }

  /** What mmjsonparse could not parse. */
  unparsed(): string {
    return readText(this.unparsedFile);
  }

  /** Polls the output file (there is no event for it) until `count` records match `select`. */
  async waitForRecords(select: (record: Json) => boolean, count: number, timeoutMs = OUTPUT_WAIT_MS): Promise<Json[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.records().filter(select);
      if (found.length >= count) return found;
      if (Date.now() > deadline) {
        throw new Error(
          `timed out after ${timeoutMs} ms: ${found.length}/${count} records in rsyslog's output; ` +
            `unparsed: ${JSON.stringify(this.unparsed().slice(0, 500))}; log: ${readText(this.logFile).slice(-1000)}`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
}

/** Connects to 127.0.0.1:port until it works; retries every 20 ms, bounded, stops if `failed()` says why. */
function connectWithRetry(port: number, timeoutMs: number, failed: () => string | null): Promise<void> {
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
 * A transparent TCP tee in front of rsyslog: forwards every byte, and keeps every line as sent
 * (with its `\r` when the delimiter was `\r\n`). This is "what the middleware sent".
 */
class Tee {
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
interface Exchange {
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

async function exchange(
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

/** A record as rsyslog wrote it, against the HTTP exchange it logs: values and JSON types. */
function assertRecordOf(record: Json, ex: Exchange, httpPort: number): void {
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

function uriStartsWith(prefix: string): (record: Json) => boolean {
  return (record) => typeof record['request']?.['uri'] === 'string' && record['request']['uri'].startsWith(prefix);
}

// Each test carries the skip (not just the suite), so a run without rsyslogd counts them as skipped.
describe('rsyslog end to end (rsyslogd, imtcp, mmjsonparse)', () => {
  let dir = '';
  let rsyslog: Rsyslogd;
  let tee: Tee;
  const middlewares: tcplog.Middleware[] = [];
  const opened: Array<{ close(): Promise<void> }> = [];

  function logger(options: tcplog.TcpLogOptions): tcplog.Middleware {
    const mw = tcplog(options);
    middlewares.push(mw);
    return mw;
  }

  async function serve(app: express.Express): Promise<Listening> {
    const server = await listen(app, { maxHeaderSize: 512 * 1024 });
    opened.push(server);
    return server;
  }

  before(async () => {
    if (SKIP) return;
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'express-tcplog-rsyslog-'));
    rsyslog = new Rsyslogd(RSYSLOGD!, dir, await freePort());
    await rsyslog.start();
    tee = await new Tee(rsyslog.port).listen();
  });

  afterEach(async () => {
    if (SKIP) return;
    // Check the invariant on every instance, but close everything before failing on it.
    const broken = middlewares.map((mw) => mw.stats()).filter((stats) => !invariant(stats));
    for (const mw of middlewares.splice(0)) await mw.close();
    for (const thing of opened.splice(0).reverse()) await thing.close();
    assert.deepEqual(broken, [], 'records === sent + dropped + buffered on every instance');
    assert.equal(activeClientCount(), 0, 'every client released');
    assert.equal(rsyslog.unparsed(), '', 'rsyslog parsed every record (nothing in unparsed.log)');
  });

  after(async () => {
    try {
      for (const mw of middlewares.splice(0)) await mw.close();
      for (const thing of opened.splice(0).reverse()) await thing.close();
      await tee?.close();
    } finally {
      await rsyslog?.stop();
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('ordinary requests arrive parsed, equal to what was sent, field by field', { skip: SKIP }, async () => {
    const api = {
      name: 'rsyslog-spec',
      version: 1.5,
      tags: ['e2e', 'json'],
      limits: { rps: 100, burst: null },
      enabled: true,
    };
    const app = express();
    const items = express.Router();
    items.use(logger({ host: '127.0.0.1', port: tee.port, api }));
    items.get('/items/:id', (req, res) => {
      res.json({ id: req.params['id'] });
    });
    items.post('/items/:id', express.text({ type: '*/*' }), (req, res) => {
      res.status(201).send(`created ${req.params['id']} with ${String(req.body).length} bytes`);
    });
    items.delete('/items/:id', (_req, res) => {
      res.status(204).end();
    });
    app.use('/ordinary', items);
    const http = await serve(app);
    const route = { path: '/items/:id', base_url: '/ordinary' };

    const exchanges = [
      await exchange(
        http.port,
        'GET',
        '/ordinary/items/42?q=tcp%20log&tag=a&tag=b&flag&name=caf%C3%A9%20%E2%98%95',
        { q: 'tcp log', tag: ['a', 'b'], flag: true, name: 'café ☕' },
        {
          headers: { 'User-Agent': 'rsyslog-spec/1.0', Authorization: 'Bearer secret', 'X-Request-Id': 'r-1' },
          api,
          route,
        },
      ),
      await exchange(
        http.port,
        'POST',
        '/ordinary/items/7',
        {},
        {
          headers: { 'Content-Type': 'text/plain' },
          body: 'a body of some length',
          api,
          route,
        },
      ),
      await exchange(
        http.port,
        'GET',
        // (Not %00: rsyslog's JSON output cuts a string at an escaped NUL, its limit, not ours.)
        '/ordinary/items/9?crlf=%0D%0Ainjected%22quote%5Cback&tab=%09',
        { crlf: '\r\ninjected"quote\\back', tab: '\t' },
        { api, route },
      ),
      await exchange(http.port, 'DELETE', '/ordinary/items/1', {}, { api, route }),
      await exchange(http.port, 'GET', '/ordinary/missing?x=1', { x: '1' }, { api }),
    ];
    assert.deepEqual(
      exchanges.map((ex) => ex.reply.status),
      [200, 201, 200, 204, 404],
    );

    const select = uriStartsWith('/ordinary/');
    const received = await rsyslog.waitForRecords(select, exchanges.length);
    const sent = tee.sent(select);
    assert.equal(received.length, exchanges.length, 'each record exactly once');
    assert.equal(sent.length, exchanges.length);
    // Same values and same JSON types as the bytes we sent (deepStrictEqual: 1 !== "1").
    assert.deepEqual(
      received,
      sent.map((s) => s.record),
    );
    exchanges.forEach((ex, i) => assertRecordOf(received[i]!, ex, http.port));
    assert.ok(
      sent.every((s) => s.raw.endsWith('}\r')),
      'the default delimiter is \\r\\n',
    );
    await until(
      () => middlewares[0]!.stats().sent === exchanges.length,
      OUTPUT_WAIT_MS,
      `sent === ${exchanges.length}`,
    );
    assert.equal(middlewares[0]!.stats().dropped, 0);
  });

  it(
    'a 200 KiB record arrives whole (maxMessageSize raised), and the next one stays separate',
    { skip: SKIP },
    async () => {
      const app = express();
      app.use(logger({ host: '127.0.0.1', port: tee.port }));
      app.get('/large', (_req, res) => {
        res.send('large ok');
      });
      app.get('/large/after', (_req, res) => {
        res.send('after ok');
      });
      const http = await serve(app);
      // 200 headers of 1 KiB: Node's server keeps at most 2000 headers and its head limit is raised to 512 KiB.
      const headers: Record<string, string> = {};
      for (let i = 0; i < 200; i++) {
        headers[`x-bulk-${String(i).padStart(3, '0')}`] =
          `${i}:` + 'abcdefghijklmnopqrstuvwxyz0123456789'.repeat(29).slice(0, 1024 - `${i}:`.length);
      }
      const large = await exchange(
        http.port,
        'GET',
        '/large',
        {},
        { headers, route: { path: '/large', base_url: '' } },
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
      const received = await rsyslog.waitForRecords(select, 2);
      const sent = tee.sent(select);
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
      const outputLine = rsyslog.lines().find((line) => line.includes('"\\/large"') || line.includes('"/large"'));
      assert.ok(outputLine && outputLine.length > 200 * 1024, 'rsyslog wrote it as one line of over 200 KiB');
    },
  );

  it('both delimiters, "\\r\\n" and "\\n", interleaved on one shared connection', { skip: SKIP }, async () => {
    const app = express();
    const crlf = express.Router();
    crlf.use(logger({ host: '127.0.0.1', port: tee.port }));
    crlf.get('/r/:n', (req, res) => {
      res.send(`crlf ${req.params['n']}`);
    });
    const lf = express.Router();
    lf.use(logger({ host: '127.0.0.1', port: tee.port, delimiter: '\n' }));
    lf.get('/r/:n', (req, res) => {
      res.send(`lf ${req.params['n']}`);
    });
    app.use('/delim/crlf', crlf);
    app.use('/delim/lf', lf);
    const http = await serve(app);

    const exchanges: Exchange[] = [];
    for (let n = 1; n <= 4; n++) {
      for (const kind of ['crlf', 'lf']) {
        exchanges.push(
          await exchange(
            http.port,
            'GET',
            `/delim/${kind}/r/${n}?kind=${kind}`,
            { kind },
            {
              route: { path: '/r/:n', base_url: `/delim/${kind}` },
            },
          ),
        );
      }
    }
    const select = uriStartsWith('/delim/');
    const received = await rsyslog.waitForRecords(select, exchanges.length);
    const sent = tee.sent(select);
    assert.equal(sent.length, exchanges.length);
    for (const { raw, record } of sent) {
      const kind = record['request']['querystring']['kind'] as string;
      assert.equal(
        raw.endsWith('\r'),
        kind === 'crlf',
        `${kind} record ends with ${kind === 'crlf' ? '\\r\\n' : '\\n'}: ...${JSON.stringify(raw.slice(-3))}`,
      );
    }
    assert.equal(received.length, exchanges.length, 'each record exactly once');
    assert.deepEqual(
      received,
      sent.map((s) => s.record),
    );
    exchanges.forEach((ex, i) => assertRecordOf(received[i]!, ex, http.port));
    // Different delimiters, same destination: one client, one connection.
    assert.equal(middlewares[0]!.stats().connects, 1);
    assert.deepEqual(middlewares[0]!.stats(), middlewares[1]!.stats());
  });

  it(
    'records made while rsyslog is down arrive after it restarts on the same port',
    { skip: SKIP, timeout: 40_000 },
    async () => {
      const errors: Error[] = [];
      const mw = logger({ host: '127.0.0.1', port: rsyslog.port, onError: (err) => errors.push(err) });
      const app = express();
      app.use(mw);
      app.get('/restart/:phase/:n', (req, res) => {
        res.json({ phase: req.params['phase'], n: Number(req.params['n']) });
      });
      const http = await serve(app);
      const route = { path: '/restart/:phase/:n', base_url: '' };

      const before: Exchange[] = [];
      for (let n = 0; n < 3; n++) before.push(await exchange(http.port, 'GET', `/restart/before/${n}`, {}, { route }));
      const beforeReceived = await rsyslog.waitForRecords(uriStartsWith('/restart/before/'), 3);
      before.forEach((ex, i) => assertRecordOf(beforeReceived[i]!, ex, http.port));

      await rsyslog.stop();
      await until(() => !mw.stats().connected, RSYSLOGD_WAIT_MS, 'the client to notice rsyslogd went away');
      const down: Exchange[] = [];
      for (let n = 0; n < 5; n++) down.push(await exchange(http.port, 'GET', `/restart/down/${n}`, {}, { route }));
      assert.deepEqual(
        down.map((ex) => ex.reply.status),
        [200, 200, 200, 200, 200],
        'the app answers while its log server is down',
      );
      await until(() => mw.stats().records === 8, OUTPUT_WAIT_MS, 'the 5 records to be queued');
      assert.equal(mw.stats().buffered, 5, `waiting for rsyslog: ${JSON.stringify(mw.stats())}`);
      assert.equal(mw.stats().dropped, 0);
      assert.ok(invariant(mw.stats()));

      await rsyslog.start();
      const received = await rsyslog.waitForRecords(uriStartsWith('/restart/down/'), 5, RESTART_WAIT_MS);
      assert.deepEqual(
        received.map((r) => r['request']['uri']),
        down.map((ex) => ex.uri),
        'each exactly once, in order',
      );
      down.forEach((ex, i) => assertRecordOf(received[i]!, ex, http.port));
      await until(() => mw.stats().buffered === 0, OUTPUT_WAIT_MS, 'the buffer to drain');
      const stats = mw.stats();
      assert.equal(stats.sent, 8, JSON.stringify(stats));
      assert.equal(stats.dropped, 0);
      assert.ok(stats.connects >= 2, `reconnected: ${JSON.stringify(stats)}`);
      assert.ok(errors.length >= 1, 'the outage was reported through onError');
      assert.equal(rsyslog.records().filter(uriStartsWith('/restart/')).length, 8, 'nothing duplicated');
    },
  );
});
