/**
 * A captured exchange -> the record as UTF-8 bytes, written straight into one reused buffer.
 *
 * The output is byte for byte `JSON.stringify(buildRecord(...))` (every record spec checks it,
 * and so do thousands of generated hostile exchanges). Building the record as objects, then as a
 * string, then encoding that string cost about three times as much, most of it in short-lived
 * objects and strings the garbage collector then had to sweep: this writes ASCII a character at
 * a time and allocates nothing on the usual path, and copies the header items that repeat the
 * record before (see Section). Each part has a fast path for what requests nearly always are
 * (distinct header names, printable ASCII, plain query pairs) and hands anything else to
 * record.ts, which stays the one definition of the record.
 */
import type { RecordSettings } from './options.js';
import {
  buildRecord,
  headersFromRaw,
  headerText,
  isAbsoluteUrl,
  normalizeIp,
  parseQuery,
  REQUEST_ID,
  requestHeadBytes,
  responseHeaders,
  trimOws,
  type CapturedExchange,
  type CapturedResponse,
  type Extras,
} from './record.js';

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COLON = 0x3a;
const COMMA = 0x2c;
const SPACE = 0x20;
const AMPERSAND = 0x26;
const EQUALS = 0x3d;
const PERCENT = 0x25;
const PLUS = 0x2b;
/**
 * Above this many fields in a section, the duplicate check (quadratic, so that it allocates
 * nothing) gives way to the object path: a hostile request may carry thousands of headers.
 */
const MAX_FAST_FIELDS = 32;

/** The record being written; grown when a record does not fit, and kept. */
let out = Buffer.allocUnsafe(16 * 1024);
let pos = 0;

/**
 * Writes the record and its delimiter into the shared buffer; returns the buffer and the length.
 * The bytes stay valid until the next call: the caller copies them (the queue does) at once.
 */
export function writeRecord(
  exchange: CapturedExchange,
  settings: RecordSettings,
  extras?: Extras,
): { readonly data: Buffer; readonly length: number } {
  pos = 0;
  record(exchange, settings, extras);
  ascii(settings.delimiter);
  return { data: out, length: pos };
}

/** The record as JSON text, without the delimiter (specs and tools; the middleware writes bytes). */
export function serializeRecord(exchange: CapturedExchange, settings: RecordSettings, extras?: Extras): string {
  pos = 0;
  record(exchange, settings, extras);
  return out.toString('utf8', 0, pos);
}

function record(exchange: CapturedExchange, settings: RecordSettings, extras: Extras | undefined): void {
  // A custom field may replace or remove any part of the record: that takes the object form.
  if (extras?.custom !== undefined && extras.custom.length > 0) {
    text(JSON.stringify(buildRecord(exchange, settings, extras)));
    return;
  }
  const { url, response } = exchange;
  piece(PIECES.requestOpen);
  idText = null;
  if (exchange.requestId !== undefined) {
    piece(PIECES.id);
    const id = exchange.requestId;
    const idStart = pos;
    // The id is the header's value: redacting the header redacts it here too.
    if (settings.redact?.has(REQUEST_ID) === true) piece(PIECES.redacted);
    // On the fast path, the header's value is written with these same bytes (see idText).
    else if (string(id)) {
      idText = id;
      idFrom = idStart;
      idTo = pos;
    }
    byte(COMMA);
  }
  piece(PIECES.method);
  string(exchange.method);
  piece(PIECES.uri);
  const urlStart = pos + 1;
  const urlPlain = string(url);
  const urlEnd = pos - 1;
  piece(PIECES.requestUri);
  requestUri(exchange.scheme, exchange.host, url, urlPlain ? urlStart : -1, urlEnd);
  piece(PIECES.requestSize);
  number(requestHeadBytes(exchange) + exchange.requestBodyBytes);
  piece(PIECES.querystring);
  query(url);
  piece(PIECES.headers);
  requestHeaders(exchange.rawHeaders, settings.redact);
  piece(PIECES.responseOpen);
  if (response !== null) {
    piece(PIECES.status);
    number(response.status);
    byte(COMMA);
  }
  piece(PIECES.responseSize);
  number(exchange.responseBytes);
  piece(PIECES.headers);
  responseHeadersPart(response, settings.redact);
  piece(PIECES.latenciesOpen);
  number(Math.round(exchange.finishedAt - exchange.arrivedAt));
  if (exchange.headersAt !== null) {
    piece(PIECES.proxy);
    number(Math.round(exchange.headersAt - exchange.arrivedAt));
  }
  byte(0x7d);
  if (settings.apiJson !== null) {
    piece(PIECES.api);
    text(settings.apiJson);
  }
  if (exchange.route !== null) {
    piece(PIECES.routeOpen);
    string(exchange.route.path);
    piece(PIECES.baseUrl);
    string(exchange.route.baseUrl);
    byte(0x7d);
  }
  if (extras?.consumer !== undefined) {
    // Checked by the middleware to serialize; a toJSON() returning undefined leaves it out, as
    // JSON.stringify does with any property.
    const consumer = JSON.stringify(extras.consumer) as string | undefined;
    if (consumer !== undefined) {
      piece(PIECES.consumer);
      text(consumer);
    }
  }
  piece(PIECES.startedAt);
  number(exchange.startedAt);
  if (exchange.clientIp !== undefined) {
    piece(PIECES.clientIp);
    string(normalizeIp(exchange.clientIp));
  }
  byte(0x7d);
}

/**
 * The request id as written on the fast path, and where: `out[idFrom, idTo)`, its quotes
 * included. The id came from the `x-request-id` header, so the headers section writes that
 * value again: it is copied from here. A proxy gives every request an id of its own, so the
 * header cache (see Section) never has it.
 */
let idText: string | null = null;
let idFrom = 0;
let idTo = 0;

// --- Output --------------------------------------------------------------------------------

function reserve(bytes: number): void {
  if (pos + bytes <= out.length) return;
  const grown = Buffer.allocUnsafe(Math.max(out.length * 2, pos + bytes));
  out.copy(grown, 0, 0, pos);
  out = grown;
}

function byte(value: number): void {
  reserve(1);
  out[pos++] = value;
}

/** ASCII as bytes, made once. */
function encoded(text: string): Uint8Array {
  return Buffer.from(text, 'latin1');
}

/**
 * The record's constant pieces, encoded once: copying their bytes costs less than writing a
 * string a character at a time (4 % of the serializer's instructions, with callgrind).
 */
const PIECES = {
  requestOpen: encoded('{"request":{'),
  id: encoded('"id":'),
  method: encoded('"method":'),
  uri: encoded(',"uri":'),
  requestUri: encoded(',"request_uri":'),
  schemeSeparator: encoded('://'),
  requestSize: encoded(',"size":'),
  querystring: encoded(',"querystring":'),
  headers: encoded(',"headers":'),
  responseOpen: encoded('},"response":{'),
  status: encoded('"status":'),
  responseSize: encoded('"size":'),
  latenciesOpen: encoded('},"latencies":{"request":'),
  proxy: encoded(',"proxy":'),
  api: encoded(',"api":'),
  routeOpen: encoded(',"route":{"path":'),
  baseUrl: encoded(',"base_url":'),
  consumer: encoded(',"consumer":'),
  startedAt: encoded(',"started_at":'),
  clientIp: encoded(',"client_ip":'),
  redacted: encoded('"REDACTED"'),
  emptyObject: encoded('{}'),
} as const;

function piece(bytes: Uint8Array): void {
  reserve(bytes.length);
  out.set(bytes, pos);
  pos += bytes.length;
}

/** Text known to be ASCII (constants, the delimiter). */
function ascii(value: string): void {
  reserve(value.length);
  // Locals in the loops: `out` and `pos` are module state, slower to reach on every character.
  const buffer = out;
  let at = pos | 0;
  for (let i = 0; i < value.length; i++) buffer[at++] = value.charCodeAt(i);
  pos = at;
}

/** Any text, already JSON (api, consumer, the object path's output): UTF-8 encoded. */
function text(value: string): void {
  reserve(value.length * 3);
  pos += out.write(value, pos, 'utf8');
}

/**
 * Copies `value[from, to)` as the inside of a JSON string if it is printable ASCII, `"` and `\`
 * escaped as JSON.stringify does, and says whether it did. On false (a control character or
 * anything beyond ASCII), nothing written stays: the caller takes the general path.
 */
function plain(value: string, from: number, to: number): boolean {
  // Each character may take two bytes (`\"`, `\\`).
  reserve(2 * (to - from));
  const buffer = out;
  let at = pos | 0;
  for (let i = from; i < to; i++) {
    const c = value.charCodeAt(i);
    // 0x7f needs no escape and is one byte in UTF-8, as JSON.stringify leaves it.
    if (c < SPACE || c > 0x7f) return false;
    // Quotes are in every ETag and in browsers' sec-ch-ua headers: worth the fast path.
    if (c === QUOTE || c === BACKSLASH) buffer[at++] = BACKSLASH;
    buffer[at++] = c;
  }
  pos = at;
  return true;
}

/** `"value"` if `value[from, to)` is plain (see plain()); false, having written nothing, if not. */
function quoted(value: string, from: number, to: number): boolean {
  reserve(2 * (to - from) + 2);
  const start = pos;
  out[pos++] = QUOTE;
  if (!plain(value, from, to)) {
    pos = start;
    return false;
  }
  out[pos++] = QUOTE;
  return true;
}

/** A JSON string, as JSON.stringify writes it. Returns whether it took the fast path (see plain()). */
function string(value: string): boolean {
  if (quoted(value, 0, value.length)) return true;
  text(JSON.stringify(value));
  return false;
}

/**
 * `scheme://host` then the URL as one JSON string, written in parts rather than joined first. The
 * URL's part is copied from `out[urlStart, urlEnd)`, where `uri` wrote it on the fast path (-1:
 * it took the general path, and so does this).
 */
function requestUri(scheme: string, host: string, url: string, urlStart: number, urlEnd: number): void {
  if (isAbsoluteUrl(url)) {
    if (urlStart === -1) string(url);
    else copyOut(urlStart - 1, urlEnd + 1);
    return;
  }
  const start = pos;
  byte(QUOTE);
  if (plain(scheme, 0, scheme.length)) {
    piece(PIECES.schemeSeparator);
    if (urlStart !== -1 && plain(host, 0, host.length)) {
      copyOut(urlStart, urlEnd);
      byte(QUOTE);
      return;
    }
  }
  pos = start;
  string(`${scheme}://${headerText(host)}${url}`);
}

/**
 * Writes `out[from, to)` again, at the end. Not copyBytes(out, ...): within one buffer,
 * copyWithin() costs less than both its loop and Buffer#copy (a record with a request id of
 * its own: 29.4 k instructions this way, 31.7 k that way).
 */
function copyOut(from: number, to: number): void {
  reserve(to - from);
  out.copyWithin(pos, from, to);
  pos += to - from;
}

/**
 * A header value as Node decoded it (latin1): see headerText for bytes beyond ASCII. Returns
 * whether it took the fast path.
 */
function headerValue(value: string): boolean {
  if (quoted(value, 0, value.length)) return true;
  // A tab is legal in a header value, and JSON.stringify escapes it: the general path.
  text(JSON.stringify(headerText(value)));
  return false;
}

function number(value: number): void {
  if (typeof value !== 'number') {
    // Typed a number, but an app can assign anything to res.statusCode.
    text(JSON.stringify(value) ?? 'null');
  } else if (Number.isSafeInteger(value) && value >= 0) {
    // Digits, most significant first, without making a string.
    let digits = 1;
    for (let rest = value; rest >= 10; rest = Math.floor(rest / 10)) digits++;
    reserve(digits);
    let rest = value;
    for (let i = pos + digits - 1; i >= pos; i--) {
      out[i] = 0x30 + (rest % 10);
      rest = Math.floor(rest / 10);
    }
    pos += digits;
  } else {
    ascii(Number.isFinite(value) ? String(value) : 'null');
  }
}

// --- Sections ------------------------------------------------------------------------------

/**
 * Where the names of the section being written are: offsets into its source text, for the
 * duplicate check. Reused, like `out`.
 */
const nameStarts = new Int32Array(MAX_FAST_FIELDS);
const nameEnds = new Int32Array(MAX_FAST_FIELDS);
/**
 * The lengths of those names, one bit per length modulo 32: a name whose length no earlier name
 * had is not a repeat, and most are not (the check was 4 % of the serializer's instructions).
 */
let nameLengths = 0;

/** The bit of a length in a mask like nameLengths. */
function lengthBit(length: number): number {
  return 1 << (length & 31);
}

/**
 * Header names a redact set holds, as an array to compare against without making strings, and
 * the bits of their lengths (see nameLengths): most names are of no length there.
 */
interface RedactList {
  readonly set: ReadonlySet<string>;
  readonly names: readonly string[];
  readonly lengths: number;
}

/** Up to this many names, a redaction list is walked: cheaper than a lower-cased copy per name. */
const WALKED_REDACT_NAMES = 8;

const redactLists = new WeakMap<ReadonlySet<string>, RedactList>();

function redactList(redact: ReadonlySet<string> | null): RedactList | null {
  if (redact === null) return null;
  let list = redactLists.get(redact);
  if (list === undefined) {
    const names = [...redact];
    list = { set: redact, names, lengths: names.reduce((bits, name) => bits | lengthBit(name.length), 0) };
    redactLists.set(redact, list);
  }
  return list;
}

/** ASCII lower case of a character code. */
function lower(c: number): number {
  return c >= 0x41 && c <= 0x5a ? c + 0x20 : c;
}

/** Whether `a[aFrom, aTo)` and `b[bFrom, ...)` are the same name, ignoring ASCII case. */
function sameName(a: string, aFrom: number, aTo: number, b: string, bFrom: number, bTo: number): boolean {
  if (aTo - aFrom !== bTo - bFrom) return false;
  for (let i = 0; i < aTo - aFrom; i++) {
    if (lower(a.charCodeAt(aFrom + i)) !== lower(b.charCodeAt(bFrom + i))) return false;
  }
  return true;
}

/**
 * Whether `source[from, to)` can be a name on the fast path, and if so notes it for the repeat
 * checks of the names after it: not empty, not led by a digit (JSON.stringify puts index-like
 * keys first), not a repeat of an earlier name of the section (the object path makes repeats
 * arrays), within MAX_FAST_FIELDS.
 */
function newName(source: string, from: number, to: number, index: number, sources: readonly string[] | null): boolean {
  if (index >= MAX_FAST_FIELDS || to <= from) return false;
  const first = source.charCodeAt(from);
  if (first >= 0x30 && first <= 0x39) return false;
  // At index 0 the mask may be the last section's; no earlier name is compared, and noteName()
  // starts the mask anew.
  if ((nameLengths & lengthBit(to - from)) !== 0) {
    for (let i = 0; i < index; i++) {
      const other = sources === null ? source : (sources[2 * i] as string);
      if (sameName(source, from, to, other, nameStarts[i] as number, nameEnds[i] as number)) return false;
    }
  }
  noteName(from, to, index);
  return true;
}

/** Notes the name at `[from, to)` as the section's `index`th, for the repeat checks after it. */
function noteName(from: number, to: number, index: number): void {
  if (index === 0) nameLengths = 0;
  nameStarts[index] = from;
  nameEnds[index] = to;
  nameLengths |= lengthBit(to - from);
}

/**
 * Writes `"name":` for `source[from, to)` lower-cased, if the fast path can (see newName; the name
 * must also be a token of printable ASCII). Returns false, having written nothing, when it cannot.
 */
function fieldName(
  source: string,
  from: number,
  to: number,
  index: number,
  sources: readonly string[] | null,
): boolean {
  if (!newName(source, from, to, index, sources)) return false;
  reserve(to - from + 3);
  const buffer = out;
  let at = pos | 0;
  buffer[at++] = QUOTE;
  for (let i = from; i < to; i++) {
    const c = source.charCodeAt(i);
    // Beyond ASCII, toLowerCase() is Unicode's, not ours: the object path.
    if (c <= SPACE || c === QUOTE || c === BACKSLASH || c > 0x7e) return false;
    buffer[at++] = lower(c);
  }
  buffer[at++] = QUOTE;
  buffer[at++] = COLON;
  pos = at;
  return true;
}

/** Whether the name at `source[from, to)` is one to redact. */
function redacted(list: RedactList | null, source: string, from: number, to: number): boolean {
  if (list === null || (list.lengths & lengthBit(to - from)) === 0) return false;
  // A long list is looked up, not walked: it is walked for every header name.
  if (list.names.length > WALKED_REDACT_NAMES) return list.set.has(source.slice(from, to).toLowerCase());
  for (const name of list.names) if (sameName(source, from, to, name, 0, name.length)) return true;
  return false;
}

// --- Repeated headers ----------------------------------------------------------------------

/**
 * The header section last written on the fast path, item by item (a request header's name and
 * value; a line of a response head), with the bytes each item became. A client sends the same
 * headers request after request, and a route's responses share most of theirs: an item with the
 * same text at the same place as last time is copied from here, not written a character at a
 * time again (about 40 instructions a character). Its bytes are the same because they follow
 * from its text alone, given the same redaction list and, for the repeat check, the same names
 * before it (when one of those differed, the check is made again).
 */
class Section {
  /** The text of each item: a request's name and value at 2i and 2i + 1, a head's line at i. */
  keys: string[] = [];
  count = 0;
  list: RedactList | null = null;
  /** Each item's bytes in `bytes`, which holds the whole section from its `{`. */
  starts = new Int32Array(MAX_FAST_FIELDS);
  ends = new Int32Array(MAX_FAST_FIELDS);
  /** Head lines: where the colon is, from the line's start. */
  colons = new Int32Array(MAX_FAST_FIELDS);
  bytes = Buffer.allocUnsafe(4096);
  /** The length of the section in `bytes`. */
  length = 0;
  /**
   * The head `bytes` were written from: a head equal to it, whole, is copied in one piece (the
   * responses of a route whose body has not changed, within the same second).
   */
  head: string | null = null;
  /** Sections in a row, written with the cache, of which no item repeated. */
  misses = 0;
  /** Sections still to write without the cache (see useCache). */
  idle = 0;
}

/** The longest the cache rests after sections that repeated nothing. */
const MAX_IDLE_SECTIONS = 64;

/**
 * Whether the section to write now uses the cache (compares its items, then is kept). When
 * several sections in a row repeated nothing of the one before (clients taking turns, each with
 * their own headers), the comparisons and the copy kept for the next one are pure cost: the
 * cache then rests for 2, 4, ... up to MAX_IDLE_SECTIONS sections, and is tried again after.
 * Every header then changing cost 9.5 % more per record than with no cache; resting, 0.2 %.
 */
function useCache(section: Section): boolean {
  if (section.idle === 0) return true;
  section.idle--;
  return false;
}

/** Counts a section written with the cache, of `count` items, `repeated` of them copied. */
function noteRepeats(section: Section, repeated: number, count: number): void {
  if (repeated > 0 || count === 0) {
    section.misses = 0;
    return;
  }
  section.misses++;
  if (section.misses > 1) section.idle = Math.min(2 ** (section.misses - 1), MAX_IDLE_SECTIONS);
}

/** Sections larger than this are not kept (a hostile request may carry 64 KiB of headers). */
const MAX_SECTION_BYTES = 16 * 1024;
/** Below this many bytes a loop copies faster than Buffer#copy, which costs about 600 instructions. */
const NATIVE_COPY_BYTES = 64;

const requestSection = new Section();
const headSection = new Section();

/**
 * The lines of the head being written and where their colons are: the section's keys once it is
 * written (the cached ones must stay as they are until then: the section may yet take the object
 * path).
 */
let lineKeys: string[] = [];
let lineColons = new Int32Array(MAX_FAST_FIELDS);
/** Where the items of the section being written are, from its `{`. */
let itemStarts = new Int32Array(MAX_FAST_FIELDS);
let itemEnds = new Int32Array(MAX_FAST_FIELDS);
/**
 * Repeated items in a row are copied as one run, the commas between them included: the run's
 * bytes in the cached section (from -1 when there is none) and where it goes in `out`.
 */
let runFrom = -1;
let runTo = 0;
let runOut = 0;

/** Takes item `index` of `section` into the run, noting where it lands. */
function repeatItem(section: Section, index: number, start: number): void {
  if (runFrom === -1) {
    if (index > 0) byte(COMMA);
    runFrom = section.starts[index] as number;
    runOut = pos;
  }
  runTo = section.ends[index] as number;
  const at = runOut - start + ((section.starts[index] as number) - runFrom);
  itemStarts[index] = at;
  itemEnds[index] = at + (runTo - (section.starts[index] as number));
}

/** Writes the pending run, if any. */
function endRun(section: Section): void {
  if (runFrom === -1) return;
  const from = runFrom;
  runFrom = -1;
  copyBytes(section.bytes, from, runTo);
}

/** Writes `source[from, to)`. */
function copyBytes(source: Buffer, from: number, to: number): void {
  const length = to - from;
  reserve(length);
  if (length >= NATIVE_COPY_BYTES) {
    source.copy(out, pos, from, to);
    pos += length;
    return;
  }
  const buffer = out;
  let at = pos | 0;
  for (let i = from; i < to; i++) buffer[at++] = source[i] as number;
  pos = at;
}

/**
 * Keeps the section just written, `out[start, pos)`, with `count` items, for the next one, unless
 * it repeats the kept one item for item (`same`). Returns whether it was kept: the caller then
 * hands over the items' keys.
 */
function remember(
  section: Section,
  start: number,
  count: number,
  same: boolean,
  list: RedactList | null,
  head: string | null,
): boolean {
  if (same && count === section.count && list === section.list) return false;
  const length = pos - start;
  if (length > MAX_SECTION_BYTES) {
    section.count = 0;
    section.head = null;
    return false;
  }
  if (section.bytes.length < length) section.bytes = Buffer.allocUnsafe(Math.max(length, section.bytes.length * 2));
  out.copy(section.bytes, 0, start, pos);
  // The arrays change hands rather than being copied: those of the section are free now.
  const { starts, ends } = section;
  section.starts = itemStarts;
  section.ends = itemEnds;
  itemStarts = starts;
  itemEnds = ends;
  section.count = count;
  section.list = list;
  section.length = length;
  section.head = head;
  return true;
}

// --- Header sections -----------------------------------------------------------------------

function requestHeaders(raw: readonly string[], redact: ReadonlySet<string> | null): void {
  const list = redactList(redact);
  const section = requestSection;
  runFrom = -1;
  const keys = section.keys;
  const caching = useCache(section);
  const usable = caching && section.list === list ? section.count : 0;
  const start = pos;
  byte(0x7b);
  // Whether every item so far repeats the last section's: then so do their names.
  let same = true;
  let repeated = 0;
  let index = 0;
  for (let i = 0; i + 1 < raw.length; i += 2, index++) {
    const name = raw[i] as string;
    const value = raw[i + 1] as string;
    if (index < usable && name === keys[i] && value === keys[i + 1]) {
      if (same) noteName(0, name.length, index);
      else if (!newName(name, 0, name.length, index, raw)) break;
      repeatItem(section, index, start);
      repeated++;
      continue;
    }
    endRun(section);
    same = false;
    if (index > 0) byte(COMMA);
    itemStarts[index] = pos - start;
    if (!fieldName(name, 0, name.length, index, raw)) break;
    if (redacted(list, name, 0, name.length)) piece(PIECES.redacted);
    else if (value === idText) copyOut(idFrom, idTo);
    else headerValue(value);
    itemEnds[index] = pos - start;
  }
  if (2 * index + 1 < raw.length) {
    // A name the fast path cannot write: the whole section takes the object path.
    runFrom = -1;
    pos = start;
    text(JSON.stringify(headersFromRaw(raw, redact)));
    return;
  }
  endRun(section);
  byte(0x7d);
  if (!caching) return;
  noteRepeats(section, repeated, index);
  if (remember(section, start, index, same, list, null)) section.keys = raw.slice(0, 2 * index);
}

function responseHeadersPart(response: CapturedResponse | null, redact: ReadonlySet<string> | null): void {
  if (response === null) {
    piece(PIECES.emptyObject);
    return;
  }
  const head = response.head;
  if (head === null) {
    text(JSON.stringify(responseHeaders(response, redact)));
    return;
  }
  const list = redactList(redact);
  const section = headSection;
  const caching = useCache(section);
  if (caching && head === section.head && list === section.list) {
    copyBytes(section.bytes, 0, section.length);
    section.misses = 0;
    return;
  }
  runFrom = -1;
  const keys = section.keys;
  const usable = caching && section.list === list ? section.count : 0;
  const start = pos;
  byte(0x7b);
  let same = true;
  let repeated = 0;
  let fast = true;
  // "HTTP/1.1 200 OK\r\nName: value\r\n...\r\n\r\n": the status line, then one header per line.
  let at = head.indexOf('\r\n') + 2;
  let index = 0;
  while (at > 1 && at < head.length) {
    const key = index < usable ? (keys[index] as string) : null;
    // The same line as last time: followed by CRLF where that one ended, and the same text. A
    // slice compared with === stops at the first difference; indexOf() went on searching the rest
    // of the head for the old line, and startsWith() was compiled into a loop that read both
    // strings a character at a time.
    if (
      key !== null &&
      head.charCodeAt(at + key.length) === 0x0d &&
      head.charCodeAt(at + key.length + 1) === 0x0a &&
      // Values that change (a length, a date, a tag) mostly differ in their last characters:
      // looked at first, they spare most changed lines the slice. (A line of under 4 characters
      // reads NaN from the key, which equals nothing: it is written each time.)
      head.charCodeAt(at + key.length - 1) === key.charCodeAt(key.length - 1) &&
      head.charCodeAt(at + key.length - 4) === key.charCodeAt(key.length - 4) &&
      head.slice(at, at + key.length) === key
    ) {
      const colon = at + (section.colons[index] as number);
      if (same) noteName(at, colon, index);
      else if (!newName(head, at, colon, index, null)) {
        fast = false;
        break;
      }
      repeatItem(section, index, start);
      repeated++;
      lineKeys[index] = key;
      lineColons[index] = colon - at;
      index++;
      at += key.length + 2;
      continue;
    }
    let end = head.indexOf('\r\n', at);
    if (end === -1) end = head.length;
    const colon = head.indexOf(':', at);
    if (colon > at && colon < end) {
      endRun(section);
      same = false;
      if (index > 0) byte(COMMA);
      itemStarts[index] = pos - start;
      if (!fieldName(head, at, colon, index, null)) {
        fast = false;
        break;
      }
      if (redacted(list, head, at, colon)) piece(PIECES.redacted);
      else headLineValue(head, colon + 1, end);
      itemEnds[index] = pos - start;
      if (caching) {
        lineKeys[index] = head.slice(at, end);
        lineColons[index] = colon - at;
      }
      index++;
    }
    at = end + 2;
  }
  if (!fast) {
    runFrom = -1;
    pos = start;
    text(JSON.stringify(responseHeaders(response, redact)));
    return;
  }
  endRun(section);
  byte(0x7d);
  // Resting, the new lines' keys were not taken: this section must not be kept.
  if (!caching) return;
  noteRepeats(section, repeated, index);
  if (remember(section, start, index, same, list, head)) {
    const { keys: oldKeys, colons } = section;
    section.keys = lineKeys;
    section.colons = lineColons;
    lineKeys = oldKeys;
    lineColons = colons;
  }
}

/** The value of a response head line, without the spaces and tabs around it (see trimOws). */
function headLineValue(head: string, from: number, to: number): void {
  let first = from;
  let last = to;
  while (first < last && head.charCodeAt(first) === SPACE) first++;
  while (last > first && head.charCodeAt(last - 1) === SPACE) last--;
  // Tabs at either end are for trimOws to take, anything beyond ASCII for headerText to judge.
  if (!quoted(head, first, last)) text(JSON.stringify(headerText(trimOws(head.slice(from, to)))));
}

function query(url: string): void {
  const mark = url.indexOf('?');
  if (mark === -1) {
    piece(PIECES.emptyObject);
    return;
  }
  // A '#' before the '?' leaves the query empty.
  const hash = url.indexOf('#');
  const end = hash === -1 ? url.length : Math.max(hash, mark + 1);
  const start = pos;
  byte(0x7b);
  let index = 0;
  let at = mark + 1;
  while (at < end) {
    // Each pair is written as it is read, in one pass: a search for '&', another for '=' and two
    // scans of each part cost 1 500 instructions more for the benchmark's three pairs. Plain pairs
    // only: flags (no '='), escapes and '+' (decoded), repeats, digit-led keys and anything
    // needing an escape other than `"` and `\` take the object path, and so does the whole query.
    // Room for the rest of the query with every character escaped, the comma, quotes and colon.
    reserve(2 * (end - at) + 6);
    const buffer = out;
    let to = pos | 0;
    if (index > 0) buffer[to++] = COMMA;
    buffer[to++] = QUOTE;
    let eq = -1;
    let plainPair = true;
    let stop = at;
    for (; stop < end; stop++) {
      const c = url.charCodeAt(stop);
      if (c === AMPERSAND) break;
      if (c === EQUALS && eq === -1) {
        eq = stop;
        if (!queryKey(url, at, eq, index)) {
          plainPair = false;
          break;
        }
        buffer[to++] = QUOTE;
        buffer[to++] = COLON;
        buffer[to++] = QUOTE;
        continue;
      }
      if (c < SPACE || c > 0x7f || c === PERCENT || c === PLUS) {
        plainPair = false;
        break;
      }
      if (c === QUOTE || c === BACKSLASH) buffer[to++] = BACKSLASH;
      buffer[to++] = c;
    }
    if (!plainPair || (stop > at && eq === -1)) {
      pos = start;
      text(JSON.stringify(parseQuery(url)));
      return;
    }
    if (stop > at) {
      buffer[to++] = QUOTE;
      pos = to;
      index++;
    }
    at = stop + 1;
  }
  byte(0x7d);
}

/**
 * Whether `url[from, to)` can be a query key on the fast path (see query()), noting it for the
 * repeat checks of the keys after it.
 */
function queryKey(url: string, from: number, to: number, index: number): boolean {
  if (index >= MAX_FAST_FIELDS) return false;
  const first = url.charCodeAt(from);
  if (first >= 0x30 && first <= 0x39) return false;
  for (let i = 0; i < index; i++) {
    const start = nameStarts[i] as number;
    const end = nameEnds[i] as number;
    if (end - start === to - from && sameText(url, from, start, to - from)) return false;
  }
  nameStarts[index] = from;
  nameEnds[index] = to;
  return true;
}

/** Whether `text[a, a + length)` and `text[b, b + length)` are equal. */
function sameText(text: string, a: number, b: number, length: number): boolean {
  for (let i = 0; i < length; i++) if (text.charCodeAt(a + i) !== text.charCodeAt(b + i)) return false;
  return true;
}
