/**
 * A captured exchange -> one Kong tcp-log record as JSON text. Pure: everything it reads was
 * captured by the middleware, nothing here touches a socket or the clock.
 *
 * Objects built from request data (query, headers) have no prototype, so `__proto__`,
 * `constructor` and `prototype` are ordinary keys; JSON.stringify escapes every control
 * character, so nothing from a request can end a record early.
 */
import { isUtf8 } from 'node:buffer';
import { isIPv4 } from 'node:net';
import type { RecordSettings } from './options.js';

/** Everything the middleware captured about one request and its response. */
export interface CapturedExchange {
  readonly method: string;
  /** Path and query as the client sent them (`originalUrl`). */
  readonly url: string;
  readonly httpVersion: string;
  /** `req.rawHeaders`: names in their original case, repeats kept, values latin1-decoded. */
  readonly rawHeaders: readonly string[];
  readonly requestBodyBytes: number;
  readonly scheme: string;
  /** Host header (latin1-decoded, as in `rawHeaders`), or `address:port` of the socket when there is none. */
  readonly host: string;
  /** Epoch ms when the request reached the middleware. */
  readonly startedAt: number;
  /** Monotonic ms: arrival, headers written (null if never), finish. */
  readonly arrivedAt: number;
  readonly headersAt: number | null;
  readonly finishedAt: number;
  /** `null` when no response head went out (aborted before headers). */
  readonly response: CapturedResponse | null;
  readonly responseBytes: number;
  readonly clientIp: string | undefined;
  readonly route: { readonly path: string; readonly baseUrl: string } | null;
  /**
   * An incoming `x-request-id`, logged as `request.id`: as text, each repeat decoded as
   * `headerText` decodes it, joined with ", ".
   */
  readonly requestId: string | undefined;
}

export interface CapturedResponse {
  readonly status: number;
  /** The head as sent (`res._header`), when Node exposes it. */
  readonly head: string | null;
  /** `res.getHeaders()`, the fallback when the head text is not available. */
  readonly headers: Readonly<Record<string, number | string | readonly string[] | undefined>> | null;
}

/** Header and query values: a string, or an array when the name repeats. */
export type LoggedValue = string | boolean | Array<string | boolean>;

/** One record, as written (before the delimiter). */
export interface TcpLogRecord {
  request: {
    /** The incoming `x-request-id` header, when there is one (repeats joined with `, `). */
    id?: string;
    method: string;
    uri: string;
    request_uri: string;
    size: number;
    querystring: Record<string, LoggedValue>;
    headers: Record<string, string | string[]>;
  };
  response: {
    /** Absent when the client went away before any response head was sent. */
    status?: number;
    size: number;
    headers: Record<string, string | string[]>;
  };
  latencies: {
    /** ms from the request reaching the middleware to the response finishing. */
    request: number;
    /** ms until the response headers were written; absent when they never were. */
    proxy?: number;
  };
  api?: Record<string, unknown>;
  route?: { path: string; base_url: string };
  /** What the `consumer` option returned for this request: an object, or `{ id }` for a string or a number. */
  consumer?: Record<string, unknown>;
  started_at: number;
  client_ip?: string;
}

const REDACTED = 'REDACTED';
/** The header logged as `request.id` too. */
export const REQUEST_ID = 'x-request-id';
const NON_ASCII = /[\u0080-\uffff]/;
/** A `%` not followed by two hex digits: decodeURIComponent throws on it. */
const BAD_ESCAPE = /%(?![0-9A-Fa-f]{2})/;
/** An escape of a byte beyond ASCII: decodeURIComponent throws unless such bytes make UTF-8. */
const HIGH_ESCAPE = /%[89A-Fa-f][0-9A-Fa-f]/;

/** A value computed per request by the user's `customFields`, already checked to serialize. */
export interface CustomValue {
  /** Path segments: `['nested', 'keys']` for `'nested.keys'`. */
  readonly path: readonly string[];
  /** `undefined` removes the field at `path`. */
  readonly value: unknown;
}

/** What the user's hooks added to one request: `consumer` and `customFields`. */
export interface Extras {
  readonly consumer?: unknown;
  readonly custom?: readonly CustomValue[];
}

/**
 * Builds one record as an object, Kong's field order: the definition of the record. serialize.ts
 * writes the same JSON directly, and uses this for what its fast paths leave aside.
 */
export function buildRecord(
  exchange: CapturedExchange,
  settings: RecordSettings,
  extras?: Extras,
): Record<string, unknown> {
  const request: Record<string, unknown> = {};
  // The same header's value in `headers`, decoded the same way (by the capture).
  if (exchange.requestId !== undefined) {
    request['id'] = settings.redact?.has(REQUEST_ID) === true ? REDACTED : exchange.requestId;
  }
  request['method'] = exchange.method;
  request['uri'] = exchange.url;
  request['request_uri'] = isAbsoluteUrl(exchange.url)
    ? exchange.url
    : `${exchange.scheme}://${headerText(exchange.host)}${exchange.url}`;
  request['size'] = requestHeadBytes(exchange) + exchange.requestBodyBytes;
  request['querystring'] = parseQuery(exchange.url);
  request['headers'] = headersFromRaw(exchange.rawHeaders, settings.redact);
  const size = exchange.responseBytes;
  const headers = responseHeaders(exchange.response, settings.redact);
  // Kong's field order: status, size, headers; status only when a head was really sent.
  const response = exchange.response ? { status: exchange.response.status, size, headers } : { size, headers };
  const latencies: { request: number; proxy?: number } = {
    request: Math.round(exchange.finishedAt - exchange.arrivedAt),
  };
  if (exchange.headersAt !== null) latencies.proxy = Math.round(exchange.headersAt - exchange.arrivedAt);

  const record: Record<string, unknown> = { request, response, latencies };
  if (settings.api !== null) record['api'] = settings.api;
  if (exchange.route) record['route'] = { path: exchange.route.path, base_url: exchange.route.baseUrl };
  if (extras?.consumer !== undefined) record['consumer'] = extras.consumer;
  record['started_at'] = exchange.startedAt;
  if (exchange.clientIp !== undefined) record['client_ip'] = normalizeIp(exchange.clientIp);
  // Parents made or copied for this record: copied once, however many fields go under them.
  const own = new Set<object>();
  for (const field of extras?.custom ?? []) setPath(record, field.path, field.value, own);
  return record;
}

/**
 * Sets (or, for `undefined`, removes) the field at `path`. Missing or non-object parents become
 * objects: the user's field wins. Parents on the path are copied first, because some are shared
 * between records (`api` is one frozen object); those in `own` were made or copied for this
 * record already (copying them for every field made many fields under one parent quadratic).
 * `__proto__` never reaches here (refused in the factory), and spreading defines keys, so a
 * `__proto__` key of request data stays a plain key.
 */
function setPath(record: Record<string, unknown>, path: readonly string[], value: unknown, own: Set<object>): void {
  let node = record;
  for (let i = 0; i < path.length - 1; i++) {
    const key = path[i] as string;
    const next = node[key];
    if (next === null || typeof next !== 'object' || Array.isArray(next)) {
      if (value === undefined) return;
      const created: Record<string, unknown> = {};
      own.add(created);
      node[key] = created;
      node = created;
    } else if (own.has(next)) {
      node = next as Record<string, unknown>;
    } else {
      const copy: Record<string, unknown> = { ...(next as Record<string, unknown>) };
      own.add(copy);
      node[key] = copy;
      node = copy;
    }
  }
  const last = path[path.length - 1] as string;
  if (value === undefined) delete node[last];
  else node[last] = value;
}

/**
 * Bytes of the request head as received: the request line, then `Name: value\r\n` per header and
 * the blank line. Header text is latin1-decoded by Node, one character per byte, so lengths are
 * byte counts.
 */
export function requestHeadBytes(exchange: CapturedExchange): number {
  // "<method> <uri> HTTP/<version>\r\n": three separators, "HTTP/" and CRLF are 9 bytes.
  let bytes = exchange.method.length + exchange.url.length + exchange.httpVersion.length + 9 + 2;
  const raw = exchange.rawHeaders;
  for (let i = 0; i < raw.length; i++) bytes += (raw[i]?.length ?? 0) + 2;
  return bytes;
}

/** `?a=1&a=2&b&c=` -> `{ a: ['1', '2'], b: true, c: '' }`, with no prototype. */
export function parseQuery(url: string): Record<string, LoggedValue> {
  const query: Record<string, LoggedValue> = Object.create(null) as Record<string, LoggedValue>;
  const hash = url.indexOf('#');
  const path = hash === -1 ? url : url.slice(0, hash);
  const start = path.indexOf('?');
  if (start === -1) return query;
  const search = path.slice(start + 1);
  if (search.length === 0) return query;
  for (const part of search.split('&')) {
    if (part.length === 0) continue;
    const eq = part.indexOf('=');
    const key = decodeComponent(eq === -1 ? part : part.slice(0, eq));
    const value: string | boolean = eq === -1 ? true : decodeComponent(part.slice(eq + 1));
    addValue(query, key, value);
  }
  return query;
}

function decodeComponent(text: string): string {
  const spaced = text.includes('+') ? text.replace(/\+/g, ' ') : text;
  if (!spaced.includes('%')) return spaced;
  // Malformed escapes are logged as sent rather than lost. Checked first rather than caught: a
  // throw costs about 9 µs, and a query of 16 KiB can hold thousands (it held the event loop for
  // 70 ms).
  if (BAD_ESCAPE.test(spaced) || (HIGH_ESCAPE.test(spaced) && !escapesMakeUtf8(spaced))) return spaced;
  try {
    return decodeURIComponent(spaced);
  } catch {
    return spaced;
  }
}

/**
 * Whether the bytes `text`'s escapes (all well formed) stand for are UTF-8, as decodeURIComponent
 * requires: the bytes of a character beyond ASCII all escaped, one after the other. A character
 * between escapes ends a sequence, so it stands in as an ASCII byte.
 */
function escapesMakeUtf8(text: string): boolean {
  const bytes = Buffer.allocUnsafe(text.length);
  let length = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x25) {
      bytes[length++] = Number.parseInt(text.slice(i + 1, i + 3), 16);
      i += 2;
    } else {
      bytes[length++] = c < 0x80 ? c : 0x78;
    }
  }
  return isUtf8(bytes.subarray(0, length));
}

function addValue<T extends string | boolean>(target: Record<string, T | T[]>, key: string, value: T): void {
  const existing = target[key];
  if (existing === undefined) target[key] = value;
  else if (Array.isArray(existing)) existing.push(value);
  else target[key] = [existing, value];
}

/**
 * A header value without the spaces and tabs around it, as an HTTP parser takes it (RFC 9110,
 * 5.5). Not String#trim: that also takes U+00A0, which here is the byte 0xA0 of a value's UTF-8.
 */
export function trimOws(value: string): string {
  let first = 0;
  let last = value.length;
  while (first < last && isOws(value.charCodeAt(first))) first++;
  while (last > first && isOws(value.charCodeAt(last - 1))) last--;
  return first === 0 && last === value.length ? value : value.slice(first, last);
}

function isOws(code: number): boolean {
  return code === 0x20 || code === 0x09;
}

/** Header value as text: UTF-8 when the bytes are valid UTF-8, else one character per byte. */
export function headerText(value: string): string {
  if (!NON_ASCII.test(value)) return value;
  const bytes = Buffer.from(value, 'latin1');
  // Checked rather than decoded with `fatal` and caught: a throw costs about 9 µs, and a request
  // can carry a thousand headers that are not UTF-8.
  return isUtf8(bytes) ? bytes.toString('utf8') : value;
}

export function headersFromRaw(
  raw: readonly string[],
  redact: ReadonlySet<string> | null,
): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = Object.create(null) as Record<string, string | string[]>;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = (raw[i] ?? '').toLowerCase();
    // One "REDACTED" however often the header came: not even the count is revealed.
    if (redact?.has(name)) headers[name] = REDACTED;
    else addValue(headers, name, headerText(raw[i + 1] ?? ''));
  }
  return headers;
}

export function responseHeaders(
  response: CapturedResponse | null,
  redact: ReadonlySet<string> | null,
): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = Object.create(null) as Record<string, string | string[]>;
  if (!response) return headers;
  if (response.head !== null) {
    // The head as sent includes what Node added itself (Date, Connection, Transfer-Encoding...).
    const lines = response.head.split('\r\n');
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i] ?? '';
      const colon = line.indexOf(':');
      if (colon <= 0) continue;
      const name = line.slice(0, colon).toLowerCase();
      if (redact?.has(name)) headers[name] = REDACTED;
      else addValue(headers, name, headerText(trimOws(line.slice(colon + 1))));
    }
    return headers;
  }
  for (const [name, value] of Object.entries(response.headers ?? {})) {
    if (value === undefined) continue;
    if (redact?.has(name)) headers[name] = REDACTED;
    else headers[name] = Array.isArray(value) ? value.map(String) : String(value);
  }
  return headers;
}

/**
 * Whether a request target is in absolute form (`GET http://host/path`, as sent to a proxy): it
 * names its scheme and host itself, and a server must take them over the Host header (RFC 9112,
 * 3.2.2). Anything else a client can send starts with `/`, or is `*` or an authority.
 */
export function isAbsoluteUrl(url: string): boolean {
  return url.charCodeAt(0) !== 0x2f && ABSOLUTE_URL.test(url);
}

const ABSOLUTE_URL = /^[a-z][a-z0-9+.-]*:\/\//i;

/** The zeros before `ffff:` in an IPv4-mapped address, in any of their forms. */
const MAPPED_PREFIX = '(?:(?:0{1,4}:){5}|(?:0{1,4}(?::0{1,4}){0,3})?::)ffff:';
/** The forms of an IPv4-mapped IPv6 address with the IPv4 part dotted, any case. */
const IPV4_MAPPED = new RegExp(`^${MAPPED_PREFIX}(\\d{1,3}(?:\\.\\d{1,3}){3})$`, 'i');
/** The same with the IPv4 address as two hex groups: `::ffff:102:304` is 1.2.3.4. */
const IPV4_MAPPED_HEX = new RegExp(`^${MAPPED_PREFIX}([\\da-f]{1,4}):([\\da-f]{1,4})$`, 'i');

/**
 * `::ffff:1.2.3.4` -> `1.2.3.4`, in any of the forms an address from a header may take
 * (`::FFFF:1.2.3.4`, `0:0:0:0:0:ffff:1.2.3.4`, `::ffff:102:304`); everything else unchanged.
 */
export function normalizeIp(address: string): string {
  // Node writes the form it makes in lower case: no pattern for what nearly every socket gives.
  if (address.startsWith('::ffff:')) {
    const rest = address.slice(7);
    if (isIPv4(rest)) return rest;
  }
  if (!address.includes(':')) return address;
  const dotted = IPV4_MAPPED.exec(address);
  // The pattern does not check the numbers: `::ffff:999.1.1.1` is no address, and stays as given.
  if (dotted !== null) return isIPv4(dotted[1] as string) ? (dotted[1] as string) : address;
  const hex = IPV4_MAPPED_HEX.exec(address);
  if (hex === null) return address;
  const high = parseInt(hex[1] as string, 16);
  const low = parseInt(hex[2] as string, 16);
  return `${high >> 8}.${high & 0xff}.${low >> 8}.${low & 0xff}`;
}
