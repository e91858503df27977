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
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import express from 'express';
import {
  assertRecordOf,
  CollectorProcess,
  collectorSuite,
  receivedAsSent,
  sendLargeRecord,
  childEnv,
  connectWithRetry,
  exchange,
  fileSize,
  OUTPUT_WAIT_MS,
  readText,
  trackChild,
  uriStartsWith,
  type Exchange,
} from './collectors.js';
import { freePort, invariant, until } from './helpers.js';

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
class Rsyslogd extends CollectorProcess {
  readonly config: string;
  readonly pidFile: string;
  readonly logFile: string;

  constructor(
    readonly bin: string,
    readonly dir: string,
    port: number,
  ) {
    super('rsyslog', port, path.join(dir, 'records.json'), path.join(dir, 'unparsed.log'), RSYSLOGD_WAIT_MS);
    this.config = path.join(dir, 'rsyslog.conf');
    this.pidFile = path.join(dir, 'rsyslogd.pid');
    this.logFile = path.join(dir, 'rsyslogd.log');
    fs.writeFileSync(this.config, rsyslogConfig(dir, port));
  }

  protected diagnostics(): string {
    return `log: ${readText(this.logFile).slice(-1000)}`;
  }

  /** Starts rsyslogd and resolves once it listens on our port with no error; else throws its stderr. */
  async start(): Promise<void> {
    assert.equal(this.child, null, 'rsyslogd already running');
    const logFrom = fileSize(this.logFile);
    const child = spawn(this.bin, ['-n', '-f', this.config, '-i', this.pidFile], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: childEnv(),
    });
    this.child = child;
    trackChild(child);
    this.stderrText = '';
    let exit: string | null = null;
    child.stdout.setEncoding('utf8').on('data', (text: string) => (this.stderrText += text));
    child.stderr.setEncoding('utf8').on('data', (text: string) => (this.stderrText += text));
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
      const problems = `${this.stderrText}\n${log()}`
        .split('\n')
        .filter((line) => /error|could not|cannot|failed/i.test(line));
      if (problems.length > 0) throw new Error(`it reported:\n${problems.join('\n')}`);
    } catch (err) {
      await this.stop();
      throw new Error(
        `rsyslogd did not come up on 127.0.0.1:${this.port}: ${(err as Error).message}\n` +
          `--- rsyslogd stderr ---\n${this.stderrText}\n--- ${this.logFile} ---\n${log()}`,
        { cause: err },
      );
    }
  }
}

// Each test carries the skip (not just the suite), so a run without rsyslogd counts them as skipped.
describe('rsyslog end to end (rsyslogd, imtcp, mmjsonparse)', () => {
  const suite = collectorSuite({
    skip: SKIP,
    tempPrefix: 'express-tcplog-rsyslog-',
    create: async (dir) => new Rsyslogd(RSYSLOGD!, dir, await freePort()),
    afterEachCheck(collector) {
      assert.equal(collector.unparsed(), '', 'rsyslog parsed every record (nothing in unparsed.log)');
    },
  });
  const { logger, serve, middlewares } = suite;

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
    items.use(logger({ host: '127.0.0.1', port: suite.tee.port, api }));
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

    // The default delimiter, "\r\n": no `kind` in these queries.
    await receivedAsSent(suite, uriStartsWith('/ordinary/'), exchanges, http.port);
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
      await sendLargeRecord(suite);
      const outputLine = suite.collector
        .lines()
        .find((line) => line.includes('"\\/large"') || line.includes('"/large"'));
      assert.ok(outputLine && outputLine.length > 200 * 1024, 'rsyslog wrote it as one line of over 200 KiB');
    },
  );

  it('both delimiters, "\\r\\n" and "\\n", interleaved on one shared connection', { skip: SKIP }, async () => {
    const app = express();
    const crlf = express.Router();
    crlf.use(logger({ host: '127.0.0.1', port: suite.tee.port }));
    crlf.get('/r/:n', (req, res) => {
      res.send(`crlf ${req.params['n']}`);
    });
    const lf = express.Router();
    lf.use(logger({ host: '127.0.0.1', port: suite.tee.port, delimiter: '\n' }));
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
    await receivedAsSent(suite, uriStartsWith('/delim/'), exchanges, http.port);
    // Different delimiters, same destination: one client, one connection.
    assert.equal(middlewares[0]!.stats().connects, 1);
    assert.deepEqual(middlewares[0]!.stats(), middlewares[1]!.stats());
  });

  it(
    'records made while rsyslog is down arrive after it restarts on the same port',
    { skip: SKIP, timeout: 40_000 },
    async () => {
      const errors: Error[] = [];
      const mw = logger({ host: '127.0.0.1', port: suite.collector.port, onError: (err) => errors.push(err) });
      const app = express();
      app.use(mw);
      app.get('/restart/:phase/:n', (req, res) => {
        res.json({ phase: req.params['phase'], n: Number(req.params['n']) });
      });
      const http = await serve(app);
      const route = { path: '/restart/:phase/:n', base_url: '' };

      const before: Exchange[] = [];
      for (let n = 0; n < 3; n++) before.push(await exchange(http.port, 'GET', `/restart/before/${n}`, {}, { route }));
      const beforeReceived = await suite.collector.waitForRecords(uriStartsWith('/restart/before/'), 3);
      before.forEach((ex, i) => assertRecordOf(beforeReceived[i]!, ex, http.port));

      await suite.collector.stop();
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

      await suite.collector.start();
      const received = await suite.collector.waitForRecords(uriStartsWith('/restart/down/'), 5, RESTART_WAIT_MS);
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
      assert.equal(suite.collector.records().filter(uriStartsWith('/restart/')).length, 8, 'nothing duplicated');
    },
  );
});
