/**
 * A captured exchange -> the record's JSON text, written directly. Pure.
 *
 * The output is byte for byte `JSON.stringify(buildRecord(...))` (a spec checks it on hostile
 * input): building the record as objects and then stringifying them cost about twice as much,
 * most of it in short-lived objects the garbage collector then had to sweep. Each part has a fast
 * path for what requests nearly always are (distinct header names, printable ASCII) and hands
 * everything else to record.ts, which stays the one definition of the record.
 */
import type { RecordSettings } from './options.js';
import {
  buildRecord,
  headersFromRaw,
  headerText,
  normalizeIp,
  parseQuery,
  requestHeadBytes,
  responseHeaders,
  type CapturedExchange,
  type CapturedResponse,
  type Extras,
} from './record.js';

/** Characters JSON.stringify would escape (and lone surrogates, which it writes as \u escapes). */
// eslint-disable-next-line no-control-regex -- control characters are exactly what it looks for
const NEEDS_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/;
/** Header text that is printable ASCII without `"` and `\`: written as is. Else see headerText. */
const NOT_PLAIN_HEADER = /[^\x20\x21\x23-\x5b\x5d-\x7e]/;
/**
 * Above this many fields, the duplicate check (quadratic, to avoid allocating a Set) gives way to
 * the object path: a hostile request may carry thousands of headers.
 */
const MAX_FAST_FIELDS = 32;
const REDACTED = '"REDACTED"';

export function serializeRecord(exchange: CapturedExchange, settings: RecordSettings, extras?: Extras): string {
  // A custom field may replace or remove any part of the record: that takes the object form.
  if (extras?.custom !== undefined && extras.custom.length > 0) {
    return JSON.stringify(buildRecord(exchange, settings, extras));
  }
  const { url, response } = exchange;
  let out = '{"request":{';
  if (exchange.requestId !== undefined) out += `"id":${string(exchange.requestId)},`;
  out +=
    `"method":${string(exchange.method)},"uri":${string(url)},` +
    `"request_uri":${string(`${exchange.scheme}://${exchange.host}${url}`)},` +
    `"size":${number(requestHeadBytes(exchange) + exchange.requestBodyBytes)},` +
    `"querystring":${queryJson(url)},"headers":${requestHeadersJson(exchange.rawHeaders, settings.redact)}},` +
    '"response":{';
  if (response !== null) out += `"status":${number(response.status)},`;
  out +=
    `"size":${number(exchange.responseBytes)},"headers":${responseHeadersJson(response, settings.redact)}},` +
    `"latencies":{"request":${number(Math.round(exchange.finishedAt - exchange.arrivedAt))}`;
  if (exchange.headersAt !== null) out += `,"proxy":${number(Math.round(exchange.headersAt - exchange.arrivedAt))}`;
  out += '}';
  if (settings.apiJson !== null) out += `,"api":${settings.apiJson}`;
  if (exchange.route !== null) {
    out += `,"route":{"path":${string(exchange.route.path)},"base_url":${string(exchange.route.baseUrl)}}`;
  }
  if (extras?.consumer !== undefined) {
    // Checked by the middleware to serialize; a toJSON() returning undefined leaves it out, as
    // JSON.stringify does with any property.
    const consumer = JSON.stringify(extras.consumer) as string | undefined;
    if (consumer !== undefined) out += `,"consumer":${consumer}`;
  }
  out += `,"started_at":${number(exchange.startedAt)}`;
  if (exchange.clientIp !== undefined) out += `,"client_ip":${string(normalizeIp(exchange.clientIp))}`;
  return `${out}}`;
}

function string(value: string): string {
  return NEEDS_ESCAPE.test(value) ? JSON.stringify(value) : `"${value}"`;
}

function number(value: number): string {
  if (typeof value === 'number') return Number.isFinite(value) ? String(value) : 'null';
  // Typed a number, but an app can assign anything to res.statusCode.
  return JSON.stringify(value) ?? 'null';
}

/** A header value as Node decoded it (latin1): see headerText for non-ASCII bytes. */
function headerValue(value: string): string {
  return NOT_PLAIN_HEADER.test(value) ? JSON.stringify(headerText(value)) : `"${value}"`;
}

/**
 * JSON.stringify lists keys that look like array indexes first, in numeric order: a name that
 * starts with a digit takes the object path, which gets that order right.
 */
function startsWithDigit(name: string): boolean {
  const code = name.charCodeAt(0);
  return code >= 48 && code <= 57;
}

/** Whether `names[index]` already came before it. */
function seenBefore(names: readonly string[], index: number): boolean {
  const name = names[index];
  for (let i = 0; i < index; i++) if (names[i] === name) return true;
  return false;
}

function requestHeadersJson(raw: readonly string[], redact: ReadonlySet<string> | null): string {
  const count = raw.length >> 1;
  if (count > MAX_FAST_FIELDS) return JSON.stringify(headersFromRaw(raw, redact));
  const names: string[] = new Array<string>(count);
  for (let i = 0; i < count; i++) {
    const name = (raw[2 * i] as string).toLowerCase();
    names[i] = name;
    // Repeated names become arrays (and a redacted one a single value): the object path.
    if (startsWithDigit(name) || seenBefore(names, i)) return JSON.stringify(headersFromRaw(raw, redact));
  }
  let out = '{';
  for (let i = 0; i < count; i++) {
    const name = names[i] as string;
    if (i > 0) out += ',';
    out += `${string(name)}:${redact?.has(name) ? REDACTED : headerValue(raw[2 * i + 1] as string)}`;
  }
  return `${out}}`;
}

function responseHeadersJson(response: CapturedResponse | null, redact: ReadonlySet<string> | null): string {
  if (response === null) return '{}';
  const head = response.head;
  if (head === null) return JSON.stringify(responseHeaders(response, redact));
  // "HTTP/1.1 200 OK\r\nName: value\r\n...\r\n\r\n": the status line, then one header per line.
  const names: string[] = [];
  const values: string[] = [];
  let at = head.indexOf('\r\n') + 2;
  while (at > 1 && at < head.length) {
    let end = head.indexOf('\r\n', at);
    if (end === -1) end = head.length;
    const colon = head.indexOf(':', at);
    if (colon > at && colon < end) {
      const name = head.slice(at, colon).toLowerCase();
      names.push(name);
      if (names.length > MAX_FAST_FIELDS || startsWithDigit(name) || seenBefore(names, names.length - 1)) {
        return JSON.stringify(responseHeaders(response, redact));
      }
      values.push(redact?.has(name) ? REDACTED : headerValue(head.slice(colon + 1, end).trim()));
    }
    at = end + 2;
  }
  let out = '{';
  for (let i = 0; i < names.length; i++) {
    if (i > 0) out += ',';
    out += `${string(names[i] as string)}:${values[i] as string}`;
  }
  return `${out}}`;
}

function queryJson(url: string): string {
  const start = url.indexOf('?');
  if (start === -1) return '{}';
  // A '#' before the '?' leaves this empty: no query.
  const hash = url.indexOf('#');
  const search = url.slice(start + 1, hash === -1 ? url.length : hash);
  if (search.length === 0) return '{}';
  // Plain pairs only: escapes, '+', flags without '=', repeats and digit keys take the object path.
  if (search.includes('%') || search.includes('+')) return JSON.stringify(parseQuery(url));
  const parts = search.split('&');
  if (parts.length > MAX_FAST_FIELDS) return JSON.stringify(parseQuery(url));
  const keys: string[] = [];
  let out = '{';
  for (const part of parts) {
    if (part.length === 0) continue;
    const eq = part.indexOf('=');
    if (eq === -1) return JSON.stringify(parseQuery(url));
    const key = part.slice(0, eq);
    keys.push(key);
    if (startsWithDigit(key) || seenBefore(keys, keys.length - 1)) return JSON.stringify(parseQuery(url));
    if (keys.length > 1) out += ',';
    out += `${string(key)}:${string(part.slice(eq + 1))}`;
  }
  return `${out}}`;
}
