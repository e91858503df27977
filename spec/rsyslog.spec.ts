/**
 * A real collector end to end: rsyslogd (imtcp + mmjsonparse + omfile) run in the foreground as a
 * child process, with the configuration the README recommends, written to a temp dir. Records
 * shipped from a real Express 5 app must come out of rsyslog parsed, with the same field values
 * and types as the bytes we sent; that includes a 200 KiB record, both delimiters and an rsyslog
 * restart.
 *
 * What we sent is captured by a transparent TCP tee between the middleware and rsyslog (every
 * byte forwarded, every line kept), and checked separately against the HTTP exchange we made.
 * rsyslog's output file has no event, so it is polled on a short timer with a hard bound. The tee,
 * the polling and the record check are shared with the syslog-ng spec, in spec/collectors.ts.
 *
 * Where rsyslogd is not installed the suite is reported as skipped; `.ci/run` installs it.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import express from 'express';
import tcplog = require('../lib/index.js');
import { activeClientCount } from '../lib/registry.js';
import {
  assertRecordOf,
  bulkHeaders,
  childEnv,
  connectWithRetry,
  exchange,
  fileSize,
  OUTPUT_WAIT_MS,
  readJsonLines,
  readLines,
  readText,
  stopChild,
  Tee,
  trackChild,
  uriStartsWith,
  waitForRecords,
  type Exchange,
  type Json,
} from './collectors.js';
import { freePort, invariant, listen, until, type Listening } from './helpers.js';

/** Bound on waiting for rsyslogd to come up or go down; not a timing claim. */
const RSYSLOGD_WAIT_MS = 10_000;
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
    const child = spawn(this.bin, ['-n', '-f', this.config, '-i', this.pidFile], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: childEnv(),
    });
    this.#child = child;
    trackChild(child);
    this.#stderr = '';
    let exit: string | null = null;
    child.stdout.setEncoding('utf8').on('data', (text: string) => (this.#stderr += text));
    child.stderr.setEncoding('utf8').on('data', (text: string) => (this.#stderr += text));
    child.on('error', (err) => (exit = `could not run ${this.bin}: ${err.message}`));
    child.on('exit', (code, signal) => (exit ??= `rsyslogd exited (code ${code}, signal ${signal})`));
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
    await stopChild(child, RSYSLOGD_WAIT_MS);
  }

  /** The records rsyslog wrote (complete lines only; a big one may be half written). */
  records(): Json[] {
    return readJsonLines(this.recordsFile, 'rsyslog output');
  }

  /** Raw output lines, for sizes. */
  lines(): string[] {
    return readLines(this.recordsFile);
  }

  /** What mmjsonparse could not parse. */
  unparsed(): string {
    return readText(this.unparsedFile);
  }

  /** Polls the output file (there is no event for it) until `count` records match `select`. */
  waitForRecords(select: (record: Json) => boolean, count: number, timeoutMs = OUTPUT_WAIT_MS): Promise<Json[]> {
    return waitForRecords(
      () => this.records(),
      select,
      count,
      timeoutMs,
      () =>
        `in rsyslog's output; unparsed: ${JSON.stringify(this.unparsed().slice(0, 500))}; ` +
        `log: ${readText(this.logFile).slice(-1000)}`,
    );
  }
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
      const headers = bulkHeaders(200);
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
