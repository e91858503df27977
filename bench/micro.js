'use strict';
/**
 * Micro-benchmark: nanoseconds per record for writing one framed Kong record from a captured
 * exchange (the compiled dist/ code, pure functions, no sockets), with its parts beside it to show
 * where the time goes. Median of several batches; run `npm run build` first.
 *
 *   MICRO_ITERATIONS  records per batch   default 20000
 *   MICRO_BATCHES     batches per case    default 15
 */
const path = require('node:path');
const { envInt, formatMarkdown, formatTable, machine, median, writeResult } = require('./common.js');

const DIST = path.join(__dirname, '..', 'dist');
const { buildRecord, parseQuery, headersFromRaw } = require(path.join(DIST, 'record.js'));
const { serializeRecord, writeRecord } = require(path.join(DIST, 'serialize.js'));
const { parseOptions } = require(path.join(DIST, 'options.js'));

const ITERATIONS = envInt('MICRO_ITERATIONS', 20_000);
const BATCHES = envInt('MICRO_BATCHES', 15);

/** What the middleware captures for the bench app's request (taken from a real Express 5 exchange). */
const URL = '/api/users/42?fields=name,email&include=roles';
const exchange = {
  method: 'GET',
  url: URL,
  httpVersion: '1.1',
  rawHeaders: [
    'accept',
    'application/json',
    'accept-encoding',
    'gzip, deflate, br',
    'accept-language',
    'en-GB,en;q=0.9',
    'authorization',
    'Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl',
    'user-agent',
    'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36',
    'x-request-id',
    '7f3c2a9e-5d41-4b8a-9c1e-2f6d8b0a4e17',
    'Host',
    '127.0.0.1:34933',
    'Connection',
    'keep-alive',
  ],
  requestBodyBytes: 0,
  requestId: '7f3c2a9e-5d41-4b8a-9c1e-2f6d8b0a4e17',
  scheme: 'http',
  host: '127.0.0.1:34933',
  startedAt: 1795608000000,
  arrivedAt: 1000.25,
  headersAt: 1001.5,
  finishedAt: 1001.75,
  response: {
    status: 200,
    head:
      'HTTP/1.1 200 OK\r\nX-Powered-By: Express\r\nContent-Type: application/json; charset=utf-8\r\n' +
      'Content-Length: 139\r\nETag: W/"8b-yX6EYRdNSRolTFyTxw0lbC3iyds"\r\nDate: Wed, 25 Nov 2026 12:18:59 GMT\r\n' +
      'Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n',
    headers: null,
  },
  responseBytes: 378,
  clientIp: '127.0.0.1',
  route: { path: '/api/users/:id', baseUrl: '' },
};

/**
 * The same exchange with its strings made anew, as Node's parser makes them for every request:
 * the serializer copies the header items a record repeats from the one before, and it must
 * compare their text to know (the same string object would compare at once).
 */
const fresh = (value) => Buffer.from(value, 'latin1').toString('latin1');
const freshCopies = Array.from({ length: 64 }, () => ({
  ...exchange,
  rawHeaders: exchange.rawHeaders.map(fresh),
  response: { ...exchange.response, head: fresh(exchange.response.head) },
}));
/** Two exchanges whose header values all differ: no item repeats the record before. */
const changing = [0, 1].map((n) => ({
  ...exchange,
  rawHeaders: exchange.rawHeaders.map((value, i) => (i % 2 === 1 ? `${value}${n}` : value)),
  response: { ...exchange.response, head: exchange.response.head.replace(/: ([^\r]*)\r\n/g, `: $1${n}\r\n`) },
}));
/**
 * The headers in new strings, each with a request id of its own (as a proxy gives every request):
 * the header cache copies every item but that one.
 */
const ID_INDEX = exchange.rawHeaders.indexOf('x-request-id') + 1;
const uniqueIds = freshCopies.map((copy, n) => {
  const id = fresh(`7f3c2a9e-5d41-4b8a-9c1e-${String(n).padStart(12, '0')}`);
  const rawHeaders = [...copy.rawHeaders];
  rawHeaders[ID_INDEX] = id;
  return { ...copy, rawHeaders, requestId: id };
});
let turn = 0;

const settings = parseOptions({ host: '127.0.0.1', port: 9 }).record;
const withApi = parseOptions({ host: '127.0.0.1', port: 9, api: { name: 'users' } }).record;
const line = serializeRecord(exchange, settings) + settings.delimiter;
const recordObject = JSON.parse(line);
const built = buildRecord(exchange, settings);

/** Each case returns something whose size is summed, so nothing can be optimized away. */
const CASES = [
  ['writeRecord (UTF-8 bytes, framed: what is queued)', () => writeRecord(exchange, settings).length],
  ['writeRecord, with api', () => writeRecord(exchange, withApi).length],
  [
    'writeRecord, the same headers in new strings (one client, keep-alive)',
    () => writeRecord(freshCopies[turn++ & 63], settings).length,
  ],
  [
    'writeRecord, the same headers in new strings, a request id of its own',
    () => writeRecord(uniqueIds[turn++ & 63], settings).length,
  ],
  [
    'writeRecord, every header value other than the record before',
    () => writeRecord(changing[turn++ & 1], settings).length,
  ],
  ['serializeRecord (the same as a string)', () => serializeRecord(exchange, settings).length],
  // The record's definition, as objects then JSON then bytes: what serialize.ts writes directly.
  [
    'object path: JSON.stringify(buildRecord()) + delimiter, encoded',
    () => Buffer.byteLength(JSON.stringify(buildRecord(exchange, settings)) + settings.delimiter),
  ],
  ['  buildRecord (the object, no JSON)', () => Object.keys(buildRecord(exchange, settings)).length],
  ['  JSON.stringify(built record)', () => JSON.stringify(built).length],
  ['  parseQuery(url)', () => Object.keys(parseQuery(URL)).length],
  ['  headersFromRaw(rawHeaders)', () => Object.keys(headersFromRaw(exchange.rawHeaders, settings.redact)).length],
  ['reference: JSON.stringify(same record as plain objects)', () => JSON.stringify(recordObject).length],
];

function timeCase(fn) {
  let sink = 0;
  // Warm-up, at least half a second: the JIT tiers up and the heap grows to its working size.
  const warmUntil = Date.now() + 500;
  while (Date.now() < warmUntil) for (let i = 0; i < ITERATIONS; i++) sink += fn();
  const perRecord = [];
  for (let b = 0; b < BATCHES; b++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < ITERATIONS; i++) sink += fn();
    perRecord.push(Number(process.hrtime.bigint() - start) / ITERATIONS);
  }
  if (sink === 0) throw new Error('nothing measured');
  return { median: median(perRecord), min: Math.min(...perRecord), max: Math.max(...perRecord) };
}

function main() {
  console.log(
    `micro: ${BATCHES} batches × ${ITERATIONS} records, record ${Buffer.byteLength(line)} bytes, Node ${process.version}`,
  );
  // A first pass over every case, not reported: the first case measured must not pay for the
  // process warming up (observed: ~1.7× its settled time).
  for (const [, fn] of CASES) timeCase(fn);
  const results = CASES.map(([name, fn]) => ({ name: name.trim(), ...timeCase(fn) }));
  const headers = ['case', 'ns/record (median)', 'min', 'max'];
  const rows = CASES.map(([name], i) => [
    name,
    results[i].median.toFixed(0),
    results[i].min.toFixed(0),
    results[i].max.toFixed(0),
  ]);
  console.log(`\n${formatTable(headers, rows)}\n`);
  writeResult(
    'micro.json',
    JSON.stringify(
      {
        date: new Date().toISOString(),
        machine: machine(),
        iterations: ITERATIONS,
        batches: BATCHES,
        recordBytes: Buffer.byteLength(line),
        results,
      },
      null,
      2,
    ) + '\n',
  );
  const mdRows = rows.map(([name, ...rest]) => [name.startsWith('  ') ? `↳ ${name.trim()}` : name, ...rest]);
  writeResult('micro.md', `${formatMarkdown(headers, mdRows)}\n`);
  console.log('Wrote bench/results/micro.json and bench/results/micro.md');
}

main();
