/**
 * A real collector end to end: syslog-ng (network source, json-parser, file destinations) run in
 * the foreground as a child process, with the configuration the README recommends, written to a
 * temp dir. Records shipped from a real Express 5 app must come out of syslog-ng parsed, with the
 * same field values and types as the bytes we sent, with either delimiter and at 200 KiB; what is
 * not JSON goes to the unparsed file; and the json-parser's fields are usable in a template.
 *
 * What we sent is captured by the TCP tee of spec/collectors.ts (shared with rsyslog.spec.ts).
 * syslog-ng's output files have no event, so they are polled on a short timer with a hard bound.
 *
 * syslog-ng is not installed but unpacked: Debian's syslog-ng-core would replace rsyslog (both are
 * the system-log-daemon), which rsyslog.spec.ts needs. `.ci/run` unpacks it and the libraries it
 * lacks into SYSLOG_NG_ROOT (default /opt/syslog-ng-deb); the spec runs it from there with
 * LD_LIBRARY_PATH and --module-path. Where it is not there the suite is reported as skipped.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { describe, it } from 'node:test';
import express from 'express';
import {
  CollectorProcess,
  collectorSuite,
  receivedAsSent,
  sendLargeRecord,
  childEnv,
  connectWithRetry,
  exchange,
  fileSize,
  OUTPUT_WAIT_MS,
  readLines,
  readText,
  trackChild,
  uriStartsWith,
  type Exchange,
} from './collectors.js';
import { freePort, until } from './helpers.js';

/** Bound on waiting for syslog-ng to come up or go down; not a timing claim. */
const SYSLOG_NG_WAIT_MS = 10_000;
/** The source's log-msg-size: the default 64 KiB splits bigger records into pieces that do not parse. */
const LOG_MSG_SIZE = 1_048_576;

/** Where `.ci/run` unpacks the syslog-ng-core deb and the libraries it needs. */
const SYSLOG_NG_ROOT = path.resolve(process.env['SYSLOG_NG_ROOT'] || '/opt/syslog-ng-deb');
const SYSLOG_NG = path.join(SYSLOG_NG_ROOT, 'usr', 'sbin', 'syslog-ng');

function executable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

const SKIP: string | false = executable(SYSLOG_NG)
  ? false
  : `syslog-ng is not unpacked in ${SYSLOG_NG_ROOT} (set SYSLOG_NG_ROOT, default /opt/syslog-ng-deb): ` +
    '.ci/run does it as root (apt-get download syslog-ng-core libivykis0 libnet1 libwrap0 libpcre3, ' +
    'dpkg -x each there; not apt-get install, which would remove rsyslog), so CI always runs this suite';

/** How to run the unpacked syslog-ng: its module directory (named after its version) and libraries. */
interface Install {
  bin: string;
  /** "3.38": the config's @version and the module directory's name. */
  version: string;
  modulePath: string;
  libraryPath: string;
}

function inspectInstall(root: string): Install {
  const moduleBase = path.join(root, 'usr', 'lib', 'syslog-ng');
  const versions = (fs.existsSync(moduleBase) ? fs.readdirSync(moduleBase) : [])
    .filter((name) => /^\d+\.\d+$/.test(name) && fs.existsSync(path.join(moduleBase, name, 'libjson-plugin.so')))
    .sort((a, b) => b.localeCompare(a, 'en', { numeric: true }));
  const version = versions[0];
  if (version === undefined) {
    throw new Error(`${moduleBase} has no <version>/libjson-plugin.so: the syslog-ng-core deb is not fully unpacked`);
  }
  // The deb's own libraries, then the multiarch directories of the unpacked dependencies.
  const libraryDirs = [moduleBase];
  for (const base of [path.join(root, 'usr', 'lib'), path.join(root, 'lib')]) {
    if (!fs.existsSync(base)) continue;
    for (const name of fs.readdirSync(base)) if (name.endsWith('-linux-gnu')) libraryDirs.push(path.join(base, name));
  }
  const inherited = process.env['LD_LIBRARY_PATH'];
  if (inherited) libraryDirs.push(inherited);
  return {
    bin: path.join(root, 'usr', 'sbin', 'syslog-ng'),
    version,
    modulePath: path.join(moduleBase, version),
    libraryPath: libraryDirs.join(path.delimiter),
  };
}

/**
 * The configuration under test: the README's syslog-ng recipe, with the paths, port and version
 * filled in, plus (below the marked line) a template over the json-parser's fields, in a log path
 * of its own so that the README's text stays as it is.
 */
function syslogNgConfig(version: string, port: number, files: { records: string; unparsed: string; fields: string }) {
  return `@version: ${version}
source s_tcplog {
  network(transport("tcp") ip("127.0.0.1") port(${port}) flags(no-parse) log-msg-size(${LOG_MSG_SIZE}));
};
parser p_tcplog { json-parser(prefix("tcplog.")); };
destination d_tcplog { file("${files.records}" template("\${MESSAGE}\\n")); };
destination d_tcplog_unparsed { file("${files.unparsed}" template("\${MESSAGE}\\n")); };
log {
  source(s_tcplog);
  if { parser(p_tcplog); destination(d_tcplog); } else { destination(d_tcplog_unparsed); };
};

# --- the spec's own: the parsed fields, through a template ---
destination d_tcplog_fields {
  file("${files.fields}" template("\${tcplog.request.method} \${tcplog.response.status} \${tcplog.request.uri} \${tcplog.route.path}\\n"));
};
log { source(s_tcplog); parser(p_tcplog); destination(d_tcplog_fields); };
`;
}

/** One syslog-ng in the foreground (`-F`, its messages on stderr with `-e`), all its files in a temp dir. */
class SyslogNg extends CollectorProcess {
  readonly config: string;
  readonly fieldsFile: string;

  constructor(
    readonly install: Install,
    readonly dir: string,
    port: number,
  ) {
    super('syslog-ng', port, path.join(dir, 'tcplog.json'), path.join(dir, 'tcplog-unparsed.log'), SYSLOG_NG_WAIT_MS);
    this.config = path.join(dir, 'syslog-ng.conf');
    this.fieldsFile = path.join(dir, 'fields.txt');
    fs.writeFileSync(
      this.config,
      syslogNgConfig(install.version, port, {
        records: this.recordsFile,
        unparsed: this.unparsedFile,
        fields: this.fieldsFile,
      }),
    );
  }

  protected diagnostics(): string {
    return `stderr: ${this.stderrText.slice(-1000)}`;
  }

  /** What syslog-ng printed about itself (starts, connections, warnings, errors). */
  get stderr(): string {
    return this.stderrText;
  }

  /** Starts syslog-ng; resolves once it has announced its start and accepts a connection, else throws its stderr. */
  async start(): Promise<void> {
    assert.equal(this.child, null, 'syslog-ng already running');
    const { bin, modulePath, libraryPath } = this.install;
    const args = [
      ...['-F', '-e', '-f', this.config, `--module-path=${modulePath}`],
      ...['-R', path.join(this.dir, 'syslog-ng.persist'), '-p', path.join(this.dir, 'syslog-ng.pid')],
      ...['-c', path.join(this.dir, 'syslog-ng.ctl'), '--no-caps'],
    ];
    const child = spawn(bin, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: childEnv({ LD_LIBRARY_PATH: libraryPath }),
    });
    this.child = child;
    trackChild(child);
    this.stderrText = '';
    let exit: string | null = null;
    // It prints "Accepting connections" once listening, then "syslog-ng starting up"; a config or
    // bind error makes it exit instead. Either way an event ends the wait, or the bound does.
    const started = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no "syslog-ng starting up" within ${SYSLOG_NG_WAIT_MS} ms`)),
        SYSLOG_NG_WAIT_MS,
      );
      const onText = (text: string): void => {
        this.stderrText += text;
        if (this.stderrText.includes('syslog-ng starting up')) {
          clearTimeout(timer);
          resolve();
        }
      };
      child.stdout.setEncoding('utf8').on('data', onText);
      child.stderr.setEncoding('utf8').on('data', onText);
      const fail = (why: string): void => {
        exit ??= why;
        clearTimeout(timer);
        reject(new Error(exit));
      };
      child.on('error', (err) => fail(`could not run ${bin}: ${err.message}`));
      child.on('exit', (code, signal) => fail(`syslog-ng exited (code ${code}, signal ${signal})`));
    });
    try {
      await started;
      await connectWithRetry(this.port, SYSLOG_NG_WAIT_MS, () => exit);
    } catch (err) {
      await this.stop();
      throw new Error(
        `syslog-ng did not come up on 127.0.0.1:${this.port}: ${(err as Error).message}\n` +
          `--- syslog-ng stderr ---\n${this.stderrText}\n--- ${this.config} ---\n${readText(this.config)}`,
        { cause: err },
      );
    }
  }

  /** Lines of the fields template (d_tcplog_fields). */
  fields(): string[] {
    return readLines(this.fieldsFile);
  }
}

/** Writes raw bytes to the collector on one connection, and closes it once they are all out. */
async function sendRaw(port: number, bytes: string): Promise<void> {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.end(bytes, () => resolve());
  });
  socket.destroy();
}

// Each test carries the skip (not just the suite), so a run without syslog-ng counts them as skipped.
describe('syslog-ng end to end (network source, json-parser, file destination)', () => {
  /** How much of the unparsed file the tests that write to it have accounted for. */
  let unparsedChecked = 0;
  const suite = collectorSuite({
    skip: SKIP,
    tempPrefix: 'express-tcplog-syslog-ng-',
    create: async (dir) => new SyslogNg(inspectInstall(SYSLOG_NG_ROOT), dir, await freePort()),
    afterEachCheck(collector) {
      assert.equal(collector.unparsed(unparsedChecked), '', 'nothing unexpected in the unparsed file');
      const problems = collector.stderr.split('\n').filter((line) => /error|fail|warning/i.test(line));
      assert.deepEqual(problems, [], 'syslog-ng reported no error or warning');
    },
  });
  const { logger, serve, middlewares } = suite;

  it(
    'ordinary records, "\\r\\n" and "\\n" on one shared connection, arrive parsed and equal to what was sent',
    { skip: SKIP },
    async () => {
      const api = { name: 'syslog-ng-spec', version: 1.5, tags: ['e2e'], limits: { rps: 100, burst: null } };
      const app = express();
      for (const kind of ['crlf', 'lf'] as const) {
        const items = express.Router();
        items.use(
          logger({ host: '127.0.0.1', port: suite.tee.port, api, ...(kind === 'lf' ? { delimiter: '\n' } : {}) }),
        );
        items.get('/items/:id', (req, res) => {
          res.json({ id: req.params['id'] });
        });
        items.post('/items/:id', express.text({ type: '*/*' }), (req, res) => {
          res.status(201).send(`created ${req.params['id']} with ${String(req.body).length} bytes`);
        });
        items.delete('/items/:id', (_req, res) => {
          res.status(204).end();
        });
        app.use(`/ordinary/${kind}`, items);
      }
      const http = await serve(app);

      const exchanges: Exchange[] = [];
      for (const kind of ['crlf', 'lf']) {
        const route = { path: '/items/:id', base_url: `/ordinary/${kind}` };
        exchanges.push(
          await exchange(
            http.port,
            'GET',
            `/ordinary/${kind}/items/42?kind=${kind}&q=tcp%20log&tag=a&tag=b&flag&name=caf%C3%A9%20%E2%98%95`,
            { kind, q: 'tcp log', tag: ['a', 'b'], flag: true, name: 'café ☕' },
            {
              headers: { 'User-Agent': 'syslog-ng-spec/1.0', Authorization: 'Bearer secret', 'X-Request-Id': 'r-1' },
              api,
              route,
            },
          ),
          await exchange(
            http.port,
            'POST',
            `/ordinary/${kind}/items/7?kind=${kind}`,
            { kind },
            { headers: { 'Content-Type': 'text/plain' }, body: 'a body of some length', api, route },
          ),
          await exchange(
            http.port,
            'GET',
            `/ordinary/${kind}/items/9?kind=${kind}&crlf=%0D%0Ainjected%22quote%5Cback&tab=%09&nul=%00`,
            { kind, crlf: '\r\ninjected"quote\\back', tab: '\t', nul: '\u0000' },
            { api, route },
          ),
          await exchange(http.port, 'DELETE', `/ordinary/${kind}/items/1?kind=${kind}`, { kind }, { api, route }),
          await exchange(http.port, 'GET', `/ordinary/${kind}/missing?kind=${kind}`, { kind }, { api }),
        );
      }
      assert.deepEqual(
        exchanges.map((ex) => ex.reply.status),
        [200, 201, 200, 204, 404, 200, 201, 200, 204, 404],
      );

      const { sent } = await receivedAsSent(suite, uriStartsWith('/ordinary/'), exchanges, http.port);
      // syslog-ng drops the \r before the \n: what it wrote is the JSON text we sent, byte for byte.
      const sentText = new Set(sent.map((s) => s.raw.replace(/\r$/, '')));
      const written = suite.collector.lines().filter((line) => line.includes('"/ordinary/'));
      assert.equal(written.length, exchanges.length);
      for (const line of written) assert.ok(sentText.has(line), `written as sent: ${line.slice(0, 200)}`);
      // Different delimiters, same destination: one client, one connection.
      await until(() => middlewares[0]!.stats().sent === exchanges.length, OUTPUT_WAIT_MS, 'every record sent');
      assert.equal(middlewares[0]!.stats().connects, 1);
      assert.deepEqual(middlewares[0]!.stats(), middlewares[1]!.stats());
    },
  );

  it(
    'a 200 KiB record arrives whole (log-msg-size raised), and the next one stays separate',
    { skip: SKIP },
    async () => {
      const sent = await sendLargeRecord(suite);
      const outputLine = suite.collector.lines().find((line) => line.includes('"uri":"/large"'));
      assert.equal(outputLine, sent[0]!.raw.replace(/\r$/, ''), 'written as one line, as sent');
    },
  );

  it(
    'a line that is not JSON goes to the unparsed file; the records around it still parse',
    { skip: SKIP },
    async () => {
      const from = fileSize(suite.collector.unparsedFile);
      const before = { request: { method: 'GET', uri: '/raw/before' }, response: { status: 200 } };
      const afterIt = { request: { method: 'GET', uri: '/raw/after' }, response: { status: 200 } };
      await sendRaw(
        suite.collector.port,
        `${JSON.stringify(before)}\r\nnot json at all\r\n{"request":{"method":"GET","uri":"/raw/cut"\n${JSON.stringify(afterIt)}\n`,
      );
      const received = await suite.collector.waitForRecords(uriStartsWith('/raw/'), 2);
      assert.deepEqual(received, [before, afterIt]);
      const expected = 'not json at all\n{"request":{"method":"GET","uri":"/raw/cut"\n';
      await until(() => suite.collector.unparsed(from).length >= expected.length, OUTPUT_WAIT_MS, 'the unparsed lines');
      assert.equal(suite.collector.unparsed(from), expected, 'each line as sent, without its \\r');
      unparsedChecked = fileSize(suite.collector.unparsedFile);
    },
  );

  it(
    'a line over log-msg-size is cut into pieces that do not parse (the limit the README sets)',
    { skip: SKIP },
    async () => {
      const from = fileSize(suite.collector.unparsedFile);
      const base = JSON.stringify({ request: { method: 'GET', uri: '/raw/oversize' }, pad: '' });
      const oversize = JSON.stringify({
        request: { method: 'GET', uri: '/raw/oversize' },
        pad: 'p'.repeat(LOG_MSG_SIZE + 1000 - base.length),
      });
      const afterIt = { request: { method: 'GET', uri: '/raw/oversize-after' }, response: { status: 200 } };
      await sendRaw(suite.collector.port, `${oversize}\n${JSON.stringify(afterIt)}\n`);
      const received = await suite.collector.waitForRecords(uriStartsWith('/raw/oversize'), 1);
      assert.deepEqual(received, [afterIt], 'the record after it parses; the oversize one is not in the output');
      await until(
        () => suite.collector.unparsed(from).length >= oversize.length,
        OUTPUT_WAIT_MS,
        'the pieces in the unparsed file',
      );
      const pieces = suite.collector
        .unparsed(from)
        .split('\n')
        .filter((line) => line !== '');
      assert.ok(pieces.length >= 2, `cut into pieces: ${pieces.map((piece) => piece.length).join(', ')}`);
      assert.equal(pieces.join(''), oversize, 'the pieces, put back together, are the line sent');
      assert.ok(pieces.every((piece) => piece.length <= LOG_MSG_SIZE));
      unparsedChecked = fileSize(suite.collector.unparsedFile);
      // And it does so silently: afterEach finds no warning or error on its stderr.
    },
  );

  it('the json-parser\'s fields ("tcplog." prefix) are usable in a template', { skip: SKIP }, async () => {
    const app = express();
    app.use(logger({ host: '127.0.0.1', port: suite.tee.port }));
    app.get('/fields/:name', (req, res) => {
      res.send(`hello ${req.params['name']}`);
    });
    app.post('/fields/:name', (_req, res) => {
      res.status(201).end();
    });
    const http = await serve(app);
    assert.equal((await exchange(http.port, 'GET', '/fields/a?x=1', { x: '1' })).reply.status, 200);
    assert.equal((await exchange(http.port, 'POST', '/fields/b', {}, { body: 'b' })).reply.status, 201);
    assert.equal((await exchange(http.port, 'GET', '/missing/fields', {})).reply.status, 404);
    await until(
      () => suite.collector.fields().filter((line) => line.includes('/fields')).length >= 3,
      OUTPUT_WAIT_MS,
      'three lines from the fields template',
    );
    assert.deepEqual(
      suite.collector.fields().filter((line) => line.includes('/fields')),
      ['GET 200 /fields/a?x=1 /fields/:name', 'POST 201 /fields/b /fields/:name', 'GET 404 /missing/fields '],
    );
  });
});
