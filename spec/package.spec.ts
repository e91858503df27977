/**
 * The package as users get it: `npm pack` in the repo (its prepack builds dist/), the tarball's
 * file list, then one throwaway install of the tarball with Express 5 and its types, shared by
 * small projects in subfolders: a CommonJS app (`require`), an ESM app (`import`), and TypeScript
 * projects (`tsc --noEmit`: nodenext in an ESM and in a CommonJS package, commonjs + node10 with
 * Express 4's types) that compile a program using the public types and reject a program misusing
 * them. Each app logs one record to a receiver started here and exits by itself.
 *
 * The install needs the npm registry: when `npm ping` fails, those tests are skipped and say why.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { startLineServer, type LineServer } from './helpers.js';

const ROOT = path.resolve(__dirname, '../..');
const TSC = path.join(ROOT, 'node_modules/typescript/bin/tsc');

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * The environment for npm and the apps, less what an enclosing `npm test` exported about itself
 * (its package, its lifecycle, its command-line flags), which must not steer the inner npm.
 */
function childEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const keep = /^npm_config_(cache|userconfig|globalconfig|registry|https?_proxy|proxy|noproxy|cafile|strict_ssl)$/i;
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (/^npm_/i.test(name) && !keep.test(name)) continue;
    env[name] = value;
  }
  return { ...env, ...extra };
}

/** Runs a command to its end, killing it after `timeoutMs` (then `signal` says so). */
function run(command: string, args: string[], cwd: string, timeoutMs: number, env = childEnv()): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const killer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (err) => {
      clearTimeout(killer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(killer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

function show(result: Run): string {
  return `exit ${result.code ?? result.signal}\n--- stdout\n${result.stdout}\n--- stderr\n${result.stderr}`;
}

function write(file: string, text: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, text);
}

function writeJson(file: string, value: unknown): void {
  write(file, `${JSON.stringify(value, null, 2)}\n`);
}

/** The app both runtime projects run, after their own imports of `assert`, `express` and `tcplog`. */
function appBody(name: string, url: string): string {
  return `
assert.throws(() => tcplog({ host: '127.0.0.1', port: 0 }), tcplog.TcpLogOptionRangeError);
assert.throws(() => tcplog({ host: '127.0.0.1', port: '1' }), tcplog.TcpLogOptionTypeError);
const mw = tcplog({ host: '127.0.0.1', port: Number(process.env.TCPLOG_PORT), api: { name: ${JSON.stringify(name)} } });
const app = express();
app.use(mw);
app.get(${JSON.stringify(url.split('?')[0])}, (req, res) => {
  res.send('logged');
});
const server = app.listen(0, '127.0.0.1', async () => {
  const res = await fetch('http://127.0.0.1:' + server.address().port + ${JSON.stringify(url)}, {
    headers: { connection: 'close' },
  });
  assert.equal(await res.text(), 'logged');
  // Once the HTTP server has closed, the response has finished and its record is queued.
  await new Promise((resolve) => server.close(resolve));
  await mw.close();
  const stats = mw.stats();
  assert.equal(stats.sent, 1, JSON.stringify(stats));
});
`;
}

const CJS_APP = `'use strict';
const assert = require('node:assert/strict');
const express = require('express');
const tcplog = require('express-tcplog');
assert.equal(typeof tcplog, 'function');
assert.equal(tcplog.tcplog, tcplog);
assert.equal(tcplog.default, tcplog);
assert.equal(typeof tcplog.TcpLogDeliveryError, 'function');
const { tcplog: destructured } = require('express-tcplog');
assert.equal(destructured, tcplog);
${appBody('cjs', '/from-cjs?via=require')}`;

const ESM_APP = `import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import express from 'express';
import tcplog, {
  tcplog as named,
  TcpLogDeliveryError,
  TcpLogOptionTypeError,
  TcpLogOptionRangeError,
} from 'express-tcplog';
assert.equal(typeof tcplog, 'function');
assert.equal(named, tcplog);
// One copy for both module systems: the ESM entry wraps the CommonJS build.
assert.equal(createRequire(import.meta.url)('express-tcplog'), tcplog);
assert.equal(TcpLogDeliveryError, tcplog.TcpLogDeliveryError);
assert.equal(TcpLogOptionTypeError, tcplog.TcpLogOptionTypeError);
assert.equal(TcpLogOptionRangeError, tcplog.TcpLogOptionRangeError);
const error = new TcpLogDeliveryError('tcp://h:1', 'ECONNREFUSED', 'refused');
assert.ok(error instanceof Error);
assert.equal(error.code, 'ECONNREFUSED');
${appBody('esm', '/from-esm?via=import')}`;

/** What a TypeScript app writes after its imports (`express`, `tcplog`, `TcpLogDeliveryError`). */
const TS_USES = `
const options: TcpLogOptions = {
  host: '127.0.0.1',
  port: 9999,
  timeout: 5000,
  keepalive: 0,
  tls: { rejectUnauthorized: true },
  tlsServername: 'logs.example',
  delimiter: '\\n',
  maxBufferBytes: 1024,
  redact: ['authorization'],
  api: { name: 'users' },
  onError(err: Error) {
    if (err instanceof TcpLogDeliveryError) console.error(err.code, err.destination);
  },
};
const more: TcpLogMoreOptions = { keepalive: 0, redact: false };
const mw: Middleware = tcplog(options);
const handler: express.RequestHandler = mw;
const app = express();
app.use(mw);
app.use(tcplog({ host: 'h', port: 1 }));
app.use(tcplog({ servers: ['tcp://a:1', { host: 'b', port: 2 }], keepalive: 0 }));
const router = express.Router();
router.use(handler);
router.use(tcplog('tcp://h:1', { keepalive: 0 }));
router.get('/', tcplog('tls://h:1', more), (_req, res) => {
  res.send('ok');
});
app.use('/api', router);
const stats: TcpLogStats = mw.stats();
const counts: number[] = [stats.records, stats.sent, stats.dropped, stats.buffered];
const moreCounts: number[] = [stats.bufferedBytes, stats.connects, stats.errors];
const connected: boolean = stats.connected;
const closing: Promise<void> = mw.close();
function describeRecord(record: TcpLogRecord): string {
  return record.request.method + ' ' + record.request.uri + ' ' + (record.response.status ?? '-');
}
export { counts, moreCounts, connected, closing, describeRecord };
`;

const TS_ESM_GOOD = `import express from 'express';
import tcplog, {
  TcpLogDeliveryError,
  type TcpLogMiddleware as Middleware,
  type TcpLogMoreOptions,
  type TcpLogOptions,
  type TcpLogRecord,
  type TcpLogStats,
} from 'express-tcplog';
import { tcplog as named } from 'express-tcplog';
const viaNamespace: tcplog.Middleware = named('tcp://h:1');
export { viaNamespace };
${TS_USES}`;

const TS_CJS_GOOD = `import express = require('express');
import tcplog = require('express-tcplog');
import tcplogDefault from 'express-tcplog';
import { tcplog as named, type TcpLogOptions, type TcpLogStats } from 'express-tcplog';
type Middleware = tcplog.Middleware;
type TcpLogMoreOptions = tcplog.TcpLogMoreOptions;
type TcpLogRecord = tcplog.TcpLogRecord;
const TcpLogDeliveryError = tcplog.TcpLogDeliveryError;
const fromDefault: Middleware = tcplogDefault('tcp://h:1');
const fromNamed: Middleware = named('tcp://h:1');
const factory: tcplog.Factory = tcplog.default;
const deliveryError: tcplog.DeliveryError = new TcpLogDeliveryError('tcp://h:1', 'ECONNREFUSED', 'refused');
export { fromDefault, fromNamed, factory, deliveryError };
${TS_USES}`;

/**
 * One misuse per line, each with the error tsc must report on that line. The options object
 * (host and port, or servers) is one signature, so TypeScript names the wrong field.
 */
const TS_MISUSES: Array<{ code: string; error: RegExp }> = [
  { code: `app.use(tcplog({ host: 'x' }));`, error: /TS2769[\s\S]*Property 'port' is missing/ },
  {
    code: `app.use(tcplog({ host: 'x', port: '1' }));`,
    error: /TS2769[\s\S]*'string' is not assignable to type 'number'/,
  },
  {
    code: `app.use(tcplog({ host: 'x', port: 1, delimiter: '\\t' }));`,
    // The union prints in either order.
    error: /TS2769[\s\S]*Type '"\\t"' is not assignable to type '"(\\r)?\\n" \| "(\\r)?\\n" \| undefined'/,
  },
  { code: `app.use(tcplog({ host: 'x', port: 1, hots: 'y' }));`, error: /TS2769[\s\S]*'hots' does not exist/ },
  {
    code: `tcplog({ host: 'x', port: 1, redact: 'cookie' });`,
    error: /TS2769[\s\S]*not assignable to type 'false \| readonly string\[\]/,
  },
  {
    code: `app.use(tcplog('tcp://h:1', { keepalive: '0' }));`,
    error: /TS2322.*'string' is not assignable to type 'number'/,
  },
  { code: `tcplog('tcp://h:1', { onError: (err: string) => err });`, error: /TS2322[\s\S]*'Error' is not/ },
  { code: `tcplog();`, error: /TS2554/ },
  { code: `const n: number = tcplog('tcp://h:1').close();`, error: /TS2322.*'Promise<void>' is not assignable/ },
  { code: `tcplog('tcp://h:1').stats().recieved;`, error: /TS2339.*'recieved' does not exist on type 'TcpLogStats'/ },
];

function misuses(imports: string): { text: string; lines: number[] } {
  const head = `${imports}\nconst app = express();\n`;
  const first = head.split('\n').length;
  return {
    text: head + TS_MISUSES.map((misuse) => misuse.code).join('\n') + '\n',
    lines: TS_MISUSES.map((_misuse, index) => first + index),
  };
}

const ESM_IMPORTS = `import express from 'express';\nimport tcplog from 'express-tcplog';`;
const CJS_IMPORTS = `import express = require('express');\nimport tcplog = require('express-tcplog');`;

interface TsProject {
  dir: string;
  label: string;
  packageJson: Record<string, unknown>;
  compilerOptions: Record<string, unknown>;
  good: string;
  imports: string;
  /** Declaration files the good program must have resolved, relative to the install. */
  resolves: string[];
}

const TS_PROJECTS: TsProject[] = [
  {
    dir: 'ts-nodenext-esm',
    label: 'module nodenext in an ESM package ("type": "module")',
    packageJson: { type: 'module' },
    compilerOptions: { module: 'nodenext', moduleResolution: 'nodenext' },
    good: TS_ESM_GOOD,
    imports: ESM_IMPORTS,
    resolves: ['node_modules/express-tcplog/dist/index.d.mts', 'node_modules/@types/express/index.d.ts'],
  },
  {
    dir: 'ts-nodenext-cjs',
    label: 'module nodenext in a CommonJS package',
    packageJson: { type: 'commonjs' },
    compilerOptions: { module: 'nodenext', moduleResolution: 'nodenext', esModuleInterop: true },
    good: TS_CJS_GOOD,
    imports: CJS_IMPORTS,
    resolves: ['node_modules/express-tcplog/dist/index.d.ts', 'node_modules/@types/express/index.d.ts'],
  },
  {
    dir: 'ts-node10-express4',
    label: 'module commonjs with moduleResolution node10, and Express 4 types',
    packageJson: { private: true },
    compilerOptions: { module: 'commonjs', moduleResolution: 'node10', esModuleInterop: true },
    good: TS_CJS_GOOD,
    imports: CJS_IMPORTS,
    resolves: [
      'node_modules/express-tcplog/dist/index.d.ts',
      'ts-node10-express4/node_modules/@types/express/index.d.ts',
    ],
  },
];

interface Diagnostic {
  file: string;
  line: number;
  text: string;
}

/** tsc's `--pretty false` output: `file(line,col): error TSnnnn: message`, details indented below. */
function parseDiagnostics(output: string): Diagnostic[] {
  const diagnostics: Diagnostic[] = [];
  for (const line of output.split(/\r?\n/)) {
    const match = /^(.+?)\((\d+),\d+\): error (TS\d+: .*)$/.exec(line);
    if (match) diagnostics.push({ file: path.basename(match[1] ?? ''), line: Number(match[2]), text: match[3] ?? '' });
    else if (/^\s/.test(line) && diagnostics.length > 0) diagnostics[diagnostics.length - 1]!.text += `\n${line}`;
  }
  return diagnostics;
}

describe('the packed package, installed', { timeout: 180_000, concurrency: true }, () => {
  let work: string;
  let consumers: string;
  let packed: { filename: string; files: Array<{ path: string }> };
  /** Why the install-based tests are skipped, or null when the registry answered. */
  let offline: string | null = null;
  let receiver: LineServer;

  before(
    async () => {
      work = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'express-tcplog-package-')));
      consumers = path.join(work, 'consumers');
      receiver = await startLineServer();
      const [ping, pack] = await Promise.all([
        run('npm', ['ping', '--fetch-timeout=5000', '--fetch-retries=0'], work, 15_000),
        // --ignore-scripts: dist/ was built before the specs ran (npm test builds first), and a
        // prepack rebuild here would replace it under other spec files that load it.
        run('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', work], ROOT, 120_000),
      ]);
      assert.equal(pack.code, 0, `npm pack failed (run npm run build first):\n${show(pack)}`);
      const json = pack.stdout.slice(pack.stdout.search(/^\[/m));
      packed = (JSON.parse(json) as Array<typeof packed>)[0]!;
      if (ping.code !== 0) {
        const said = ping.signal
          ? 'no answer in 15 s'
          : (/^npm error code (.+)$/m.exec(ping.stderr)?.[1] ?? ping.stderr.trim().split('\n')[0]);
        offline = `the npm registry is unreachable (npm ping: ${said}); nothing was installed`;
        return;
      }

      writeJson(path.join(consumers, 'package.json'), { name: 'tcplog-consumers', private: true });
      write(path.join(consumers, 'cjs/app.js'), CJS_APP);
      writeJson(path.join(consumers, 'cjs/package.json'), { type: 'commonjs' });
      write(path.join(consumers, 'esm/app.js'), ESM_APP);
      writeJson(path.join(consumers, 'esm/package.json'), { type: 'module' });
      for (const project of TS_PROJECTS) {
        const dir = path.join(consumers, project.dir);
        writeJson(path.join(dir, 'package.json'), project.packageJson);
        const compilerOptions = {
          ...project.compilerOptions,
          target: 'es2022',
          strict: true,
          noEmit: true,
          skipLibCheck: true,
          types: ['node'],
        };
        writeJson(path.join(dir, 'tsconfig.json'), { compilerOptions, files: ['good.ts', 'misuse.ts'] });
        write(path.join(dir, 'good.ts'), project.good);
        write(path.join(dir, 'misuse.ts'), misuses(project.imports).text);
      }
      const flags = ['install', '--no-audit', '--no-fund', '--prefer-offline', '--no-package-lock'];
      const [installed, express4] = await Promise.all([
        run(
          'npm',
          [...flags, path.join(work, packed.filename), 'express@5', '@types/express@5', '@types/node@20'],
          consumers,
          120_000,
        ),
        // Its own node_modules, found first from that folder: Express 4's types over the shared rest.
        run(
          'npm',
          [...flags, '@types/express@4', '@types/node@20'],
          path.join(consumers, 'ts-node10-express4'),
          120_000,
        ),
      ]);
      assert.equal(installed.code, 0, `npm install failed:\n${show(installed)}`);
      assert.equal(express4.code, 0, `npm install of Express 4's types failed:\n${show(express4)}`);
    },
    { timeout: 180_000 },
  );

  after(async () => {
    await receiver?.close();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  async function recordFor(name: string): Promise<Record<string, any>> {
    for (;;) {
      const found = receiver.records().find((record) => record['api']?.name === name);
      if (found) return found;
      await receiver.waitForLines(receiver.lines.length + 1);
    }
  }

  function skipped(t: TestContext): boolean {
    if (offline === null) return false;
    t.skip(offline);
    return true;
  }

  it('the tarball: the build, README, LICENSE and package.json, and none of the repo around them', () => {
    const files = packed.files.map((file) => file.path);
    for (const needed of [
      'dist/index.js',
      'dist/index.mjs',
      'dist/index.d.ts',
      'dist/index.d.mts',
      'README.md',
      'LICENSE',
    ]) {
      assert.ok(files.includes(needed), `${needed} is missing from ${files.join(', ')}`);
    }
    assert.ok(files.includes('package.json'));
    const stray = files.filter((file) =>
      /^(spec|lib|build|example-app|node_modules|bench|scripts|\.ci)\/|^tsconfig|\.tgz$|\.ts$(?<!\.d\.ts)/.test(file),
    );
    assert.deepEqual(stray, []);
    // Every file the manifest points at is in the tarball.
    const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    const targets = JSON.stringify([manifest.main, manifest.types, manifest.exports]).match(/"\.\/[^"]+"/g) ?? [];
    assert.ok(targets.length >= 6, targets.join());
    for (const target of targets) {
      const file = (JSON.parse(target) as string).slice(2);
      assert.ok(files.includes(file), `${file} is named in package.json but not packed`);
    }
  });

  for (const [label, dir, name, uri] of [
    ['CommonJS: require() gives the factory, which logs a record', 'cjs', 'cjs', '/from-cjs?via=require'],
    ['ESM: default and named imports, which log a record', 'esm', 'esm', '/from-esm?via=import'],
  ] as const) {
    it(label, async (t) => {
      if (skipped(t)) return;
      const result = await run(
        process.execPath,
        ['app.js'],
        path.join(consumers, dir),
        30_000,
        childEnv({ TCPLOG_PORT: String(receiver.port) }),
      );
      assert.equal(result.signal, null, `the app had to be killed: it did not exit by itself.\n${show(result)}`);
      assert.equal(result.code, 0, show(result));
      const record = await recordFor(name);
      assert.equal(record['request'].uri, uri);
      assert.equal(record['request'].method, 'GET');
      assert.equal(record['response'].status, 200);
    });
  }

  for (const project of TS_PROJECTS) {
    it(`TypeScript, ${project.label}: the public types compile, misuse does not`, async (t) => {
      if (skipped(t)) return;
      const dir = path.join(consumers, project.dir);
      // One program of both files: diagnostics are per file, and neither imports the other.
      const result = await run(process.execPath, [TSC, '-p', '.', '--pretty', 'false', '--listFiles'], dir, 60_000);
      const diagnostics = parseDiagnostics(result.stdout);
      assert.deepEqual(
        diagnostics.filter((d) => d.file !== 'misuse.ts'),
        [],
        `good.ts must compile:\n${show(result)}`,
      );
      assert.equal(result.code, 2, `misuse.ts must not compile:\n${show(result)}`);
      const listed = result.stdout
        .split(/\r?\n/)
        .map((file) => path.relative(consumers, file).split(path.sep).join('/'));
      for (const file of project.resolves) assert.ok(listed.includes(file), `${file} was not used:\n${result.stdout}`);
      const { lines } = misuses(project.imports);
      assert.deepEqual(
        [...new Set(diagnostics.map((d) => `${d.file}:${d.line}`))],
        lines.map((line) => `misuse.ts:${line}`),
        `one error on each misuse line, none elsewhere:\n${result.stdout}`,
      );
      TS_MISUSES.forEach((misuse, index) => {
        const text = diagnostics
          .filter((d) => d.line === lines[index])
          .map((d) => d.text)
          .join('\n');
        assert.match(text, misuse.error, `${misuse.code}`);
      });
    });
  }
});
