/**
 * The public options, their defaults, and `parseOptions()`: validation and precomputation done
 * once, in the factory, so the per-request path does no checking. Pure.
 */
import { isIP } from 'node:net';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { X509Certificate } from 'node:crypto';
import { createSecureContext, type ConnectionOptions } from 'node:tls';
import {
  PACKAGE,
  TcpLogOptionRangeError,
  TcpLogOptionTypeError,
  show,
  thrownText,
  type ErrorHandler,
} from './errors.js';

/** Options of `tcplog(options)`. Only `host` and `port` are required. */
export interface TcpLogOptions {
  /** Host name or IP address of the log server, without a port. Required. */
  host: string;
  /** TCP port of the log server, an integer from 1 to 65535. Required. */
  port: number;
  /**
   * Milliseconds that bound connecting, a stalled write (no `drain`) and `close()`.
   * @default 10000
   */
  timeout?: number;
  /**
   * Milliseconds an idle connection lives before it is closed; `0` keeps it open.
   * @default 60000
   */
  keepalive?: number;
  /**
   * `true`, or Node `tls.ConnectionOptions` (`ca`, `cert`, `key`, `servername`...), to connect over
   * TLS. Certificates are verified unless you set `rejectUnauthorized: false` yourself.
   * @default false
   */
  tls?: boolean | ConnectionOptions;
  /**
   * SNI name sent in the TLS handshake and checked against the certificate (Kong's `tls_sni`).
   * @default host
   */
  tlsServername?: string;
  /**
   * Record separator: `"\r\n"` (Kong 0.x), or `"\n"` for receivers that would keep the CR.
   * @default "\r\n"
   */
  delimiter?: '\r\n' | '\n';
  /**
   * Bytes of records allowed to wait (server down, slow, reconnecting). Beyond it the oldest
   * records are dropped and counted in `stats().dropped`.
   * @default 16777216 (16 MiB)
   */
  maxBufferBytes?: number;
  /**
   * Header names (any case) whose values are logged as `"REDACTED"`, in requests and responses;
   * `false` logs every header as it is.
   * @default ['authorization', 'proxy-authorization', 'cookie', 'set-cookie']
   */
  redact?: readonly string[] | false;
  /** A JSON object logged as `api` in every record, e.g. `{ name: 'users' }`. */
  api?: Record<string, unknown>;
  /**
   * Adds fields to every record: `{ 'dotted.path': (req, res) => value }`. Dots nest
   * (`'nested.keys'`), `\\.` escapes a literal dot, and a function returning `undefined` removes the
   * field (`route: () => undefined`). Called when the response finishes, and must return its
   * value then (not a Promise); one that throws, or returns what JSON cannot hold (a BigInt, a
   * cycle, a function, a Symbol), leaves that field out and is reported once (Kong's
   * `custom_fields_by_lua`).
   * The value is read once, when it is returned.
   */
  customFields?: Record<string, CustomFieldFunction>;
  /**
   * The authenticated consumer, logged as `consumer`: an object, or a string or a number logged as
   * `{ id }`; `undefined` or `null` leaves the field out. Called when the response finishes, so it
   * sees what authentication middleware set on `req` (e.g. `req.user`); it must return its value
   * then, not a Promise.
   */
  consumer?(req: IncomingMessage): Record<string, unknown> | string | number | null | undefined;
  /**
   * `true` (or any truthy value, as morgan takes it) to leave a request out, e.g. health checks,
   * or every consumer but one. Called when the response finishes, so `res.statusCode` is known.
   * One that throws, or returns a Promise, counts as `false` (the request is logged) and is
   * reported once.
   */
  skip?(req: IncomingMessage, res: ServerResponse): boolean;
  /**
   * Called with each connection problem (a `TcpLogDeliveryError`; `EDROPPED` when `close()` gave
   * up on records), and once per failing `skip`, `consumer` or `customFields` entry (a plain
   * `Error`), and with what made a record impossible to build. Never called from the request
   * path; an exception it throws, or a Promise it returns that rejects, is ignored. Instances
   * sharing a destination each hear its connection problems.
   * @default warnings on stderr: once when delivery starts failing and once when it recovers, once
   * when `close()` drops records, once per failing hook, once if a record cannot be built
   */
  onError?: (err: Error) => unknown;
}

/**
 * One `customFields` entry. Declared as a method so that a function typed with Express's own
 * `Request`/`Response` is accepted.
 */
export type CustomFieldFunction = {
  field(req: IncomingMessage, res: ServerResponse): unknown;
}['field'];

/** One entry of `servers` given as an object; `tls` defaults to the instance's `tls`. */
export interface ServerOption {
  host: string;
  port: number;
  tls?: boolean | ConnectionOptions;
}

/** Everything `tcplog()` accepts after a connection string: the string gives `host` and `port`. */
export type TcpLogMoreOptions = Omit<TcpLogOptions, 'host' | 'port'>;

/** Options with several log servers (failover) instead of `host` and `port`. */
export interface TcpLogServersOptions extends Omit<TcpLogOptions, 'host' | 'port'> {
  /**
   * Log servers in order of preference: connection strings (`'tcp://a:5170'`, `'tls://b:6514'`)
   * or `{ host, port, tls? }`. Records go to the first one that accepts a connection; on failure
   * the next is tried; while a later one is in use, the preferred one is probed every few seconds
   * and used again once it answers.
   */
  servers: ReadonlyArray<string | ServerOption>;
  host?: never;
  port?: never;
}

export const DEFAULT_TIMEOUT = 10_000;
export const DEFAULT_KEEPALIVE = 60_000;
export const DEFAULT_MAX_BUFFER_BYTES = 16 * 1024 * 1024;
export const DEFAULT_REDACT: readonly string[] = Object.freeze([
  'authorization',
  'proxy-authorization',
  'cookie',
  'set-cookie',
]);

/** One log server the client can connect to. */
export interface ServerSettings {
  readonly host: string;
  readonly port: number;
  /** `null` for plain TCP; otherwise the options given to `tls.connect`. */
  readonly tls: Readonly<ConnectionOptions> | null;
  /** `tcp://host:port` or `tls://host:port`, for messages. */
  readonly label: string;
}

/** What the client needs to reach one destination; equal keys share one connection. */
export interface DestinationSettings {
  /** In order of preference; `host`, `port`, `tls` and `label` below are the first one's. */
  readonly servers: readonly ServerSettings[];
  readonly host: string;
  readonly port: number;
  readonly timeout: number;
  readonly keepalive: number;
  readonly maxBufferBytes: number;
  /** `null` for plain TCP; otherwise the options given to `tls.connect`. */
  readonly tls: Readonly<ConnectionOptions> | null;
  /** `tcp://host:port` or `tls://host:port`, for messages. */
  readonly label: string;
  /** Identity of the destination in the registry. */
  readonly key: string;
}

/** What the middleware needs to build a record. */
export interface RecordSettings {
  readonly delimiter: '\r\n' | '\n';
  /** Lower-case header names to redact, or `null` when redaction is off. */
  readonly redact: ReadonlySet<string> | null;
  /** A frozen copy of `api` (taken once, so later changes by the caller do not leak in), or `null`. */
  readonly api: Readonly<Record<string, unknown>> | null;
  /** `api` as JSON, written once: it cannot change. */
  readonly apiJson: string | null;
}

/** The user's per-request functions, called by the middleware when a response finishes. */
export interface Hooks {
  readonly skip: ((req: IncomingMessage, res: ServerResponse) => boolean) | null;
  readonly consumer: ((req: IncomingMessage) => unknown) | null;
  readonly customFields: ReadonlyArray<{
    readonly name: string;
    readonly path: readonly string[];
    readonly fn: (req: IncomingMessage, res: ServerResponse) => unknown;
  }>;
}

export interface Settings {
  readonly destination: DestinationSettings;
  readonly record: RecordSettings;
  readonly hooks: Hooks;
  readonly onError: ErrorHandler | null;
}

const KNOWN_OPTIONS = [
  'host',
  'port',
  'servers',
  'timeout',
  'keepalive',
  'tls',
  'tlsServername',
  'delimiter',
  'maxBufferBytes',
  'redact',
  'api',
  'customFields',
  'consumer',
  'skip',
  'onError',
] as const;

/** setTimeout() silently turns anything above this into 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Turns `tcplog(...)`'s arguments into frozen settings, or throws a message naming the option. */
export function parseOptions(target: unknown, more?: unknown): Settings {
  try {
    return readOptions(target, more);
  } catch (err) {
    if (isTypeOrRangeError(err)) throw err;
    // A getter or a Proxy trap of the caller's threw while the options were read.
    throw new TypeError(`${PACKAGE}: the options could not be read: ${thrownText(err)}`, { cause: err });
  }
}

function isTypeOrRangeError(err: unknown): boolean {
  try {
    return err instanceof TypeError || err instanceof RangeError;
  } catch {
    return false;
  }
}

function readOptions(target: unknown, more: unknown): Settings {
  const options = mergeTarget(target, more);
  checkKnownNames(options);

  const timeout = parseInteger('timeout', options['timeout'], DEFAULT_TIMEOUT, 1, MAX_TIMER_MS);
  const keepalive = parseInteger('keepalive', options['keepalive'], DEFAULT_KEEPALIVE, 0, MAX_TIMER_MS);
  const maxBufferBytes = parseInteger(
    'maxBufferBytes',
    options['maxBufferBytes'],
    DEFAULT_MAX_BUFFER_BYTES,
    1,
    Number.MAX_SAFE_INTEGER,
  );
  const servers = parseServers(options);
  const delimiter = parseDelimiter(options['delimiter']);
  const redact = parseRedact(options['redact']);
  const api = parseApi(options['api']);
  const hooks: Hooks = Object.freeze({
    skip: parseFunction<NonNullable<Hooks['skip']>>('skip', options['skip'], 'a function (req, res) => boolean'),
    consumer: parseFunction<NonNullable<Hooks['consumer']>>(
      'consumer',
      options['consumer'],
      'a function (req) => object | string | number | null | undefined',
    ),
    customFields: parseCustomFields(options['customFields']),
  });
  const onError = parseOnError(options['onError']);

  const first = servers[0] as ServerSettings;
  const destination: DestinationSettings = Object.freeze({
    servers,
    host: first.host,
    port: first.port,
    timeout,
    keepalive,
    maxBufferBytes,
    tls: first.tls,
    label: servers.map((server) => server.label).join(' | '),
    // Instances that differ in any connection setting get their own connection, so that no
    // instance's timeout or buffer bound is silently ignored.
    key:
      servers.map((server) => `${server.label} tls=${tlsKey(server.tls)}`).join(' | ') +
      ` timeout=${timeout} keepalive=${keepalive} max=${maxBufferBytes}`,
  });
  return Object.freeze({
    destination,
    record: Object.freeze({ delimiter, redact, api, apiJson: api === null ? null : JSON.stringify(api) }),
    hooks,
    onError,
  });
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  try {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
    const proto: unknown = Object.getPrototypeOf(value);
    return proto === Object.prototype || proto === null;
  } catch {
    // A Proxy whose trap throws (or a revoked one): not an object this package can read.
    return false;
  }
}

function mergeTarget(target: unknown, more: unknown): Record<string, unknown> {
  if (more !== undefined && !isPlainObject(more)) {
    throw new TypeError(
      `${PACKAGE}: the second argument must be an options object, as in tcplog('tcp://host:port', { keepalive: 0 }); got ${show(more)}`,
    );
  }
  if (typeof target === 'string') {
    const fromUrl = parseConnectionString(target);
    if (more !== undefined) {
      for (const name of ['host', 'port'] as const) {
        if (more[name] !== undefined) {
          throw new TypeError(
            `${PACKAGE}: option "${name}" is already given by the connection string ${show(target)}; leave it out of the options object`,
          );
        }
      }
      if (fromUrl.tls && more['tls'] === false) {
        throw new TypeError(
          `${PACKAGE}: option "tls" is ${show(more['tls'])} but the connection string ${show(target)} asks for TLS`,
        );
      }
      if (!fromUrl.tls && more['tls'] !== undefined && more['tls'] !== false) {
        throw new TypeError(
          `${PACKAGE}: option "tls" is ${show(more['tls'])} but the connection string ${show(target)} asks for plain TCP; write 'tls://...' for TLS`,
        );
      }
    }
    const merged: Record<string, unknown> = { ...more, host: fromUrl.host, port: fromUrl.port };
    if (fromUrl.tls && (more?.['tls'] === undefined || more['tls'] === true)) merged['tls'] = true;
    return merged;
  }
  if (more !== undefined) {
    throw new TypeError(
      `${PACKAGE}: a second argument is only taken after a connection string; put every option in the first object`,
    );
  }
  if (target === undefined) {
    throw new TypeError(
      `${PACKAGE}: options are required: tcplog({ host: '127.0.0.1', port: 9999 }) or tcplog('tcp://127.0.0.1:9999')`,
    );
  }
  if (!isPlainObject(target)) {
    throw new TypeError(
      `${PACKAGE}: options must be a plain object like { host: '127.0.0.1', port: 9999 } or a connection string like 'tcp://127.0.0.1:9999'; got ${show(target)}`,
    );
  }
  return target;
}

/** `host`/`port` (with `tls`), or the `servers` list: one server or several, in order. */
function parseServers(options: Record<string, unknown>): readonly ServerSettings[] {
  const list = options['servers'];
  const servername = options['tlsServername'];
  if (list === undefined) {
    const host = parseHost(options['host']);
    const port = parsePort(options['port']);
    return Object.freeze([server(host, port, parseTls('tls', options['tls'], servername, host))]);
  }
  if (options['host'] !== undefined || options['port'] !== undefined) {
    throw new TypeError(`${PACKAGE}: give either "host" and "port" or "servers", not both`);
  }
  if (!Array.isArray(list) || list.length === 0) {
    throw new TcpLogOptionTypeError(
      'servers',
      list,
      "a non-empty array of connection strings ('tcp://host:port') or { host, port } objects",
    );
  }
  const servers = Object.freeze(
    // Array.from, not map(): a hole in the list is an entry too (undefined), not skipped.
    Array.from(list as unknown[], function parseServer(entry, i) {
      const name = `servers[${i}]`;
      if (typeof entry === 'string') {
        const parsed = parseConnectionString(entry, name);
        parsePort(parsed.port, name);
        // The scheme says which: `tcp://` is plain TCP even when the instance's `tls` is set (for
        // its `tls://` and object entries); `tls://` takes the instance's settings, if any.
        const tls = !parsed.tls
          ? false
          : options['tls'] === undefined || options['tls'] === false
            ? true
            : options['tls'];
        // SNI is for the entries that use TLS; a plain one beside them does not contradict it.
        return server(
          parsed.host,
          parsed.port,
          parseTls(name, tls, tls === false ? undefined : servername, parsed.host),
        );
      }
      if (!isPlainObject(entry)) {
        throw new TcpLogOptionTypeError(name, entry, "a connection string ('tcp://host:port') or { host, port, tls? }");
      }
      for (const key of Object.keys(entry)) {
        if (key !== 'host' && key !== 'port' && key !== 'tls') {
          throw new TypeError(`${PACKAGE}: option "${name}" has an unknown key "${key}"; allowed: host, port, tls`);
        }
      }
      const host = parseHost(entry['host'], `${name}.host`);
      const port = parsePort(entry['port'], `${name}.port`);
      const tls = entry['tls'] === undefined ? options['tls'] : entry['tls'];
      return server(
        host,
        port,
        parseTls(`${name}.tls`, tls, tls === undefined || tls === false ? undefined : servername, host),
      );
    }),
  );
  if (servername !== undefined && servers.every((entry) => entry.tls === null)) {
    throw new TcpLogOptionTypeError('tlsServername', servername, 'used with "tls" set; set tls: true as well');
  }
  return servers;
}

function server(host: string, port: number, tls: Readonly<ConnectionOptions> | null): ServerSettings {
  const hostPart = isIP(host) === 6 ? `[${host}]` : host;
  return Object.freeze({ host, port, tls, label: `${tls ? 'tls' : 'tcp'}://${hostPart}:${port}` });
}

function parseConnectionString(text: string, option?: string): { host: string; port: number; tls: boolean } {
  const bad = (why: string): TypeError =>
    new TypeError(
      `${PACKAGE}: ${option ? `option "${option}": ` : ''}connection string ${show(text)} ${why}; expected 'tcp://host:port' or 'tls://host:port'`,
    );
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    // URL refuses a port over 65535: said as for a port that URL takes (0), not as "not a URL".
    const port = /^(?:tcp|tls):\/\/[^/?#@]+:(\d+)\/?$/i.exec(text)?.[1];
    if (port !== undefined && Number(port) > 65535) parsePort(Number(port), option);
    throw bad('is not a URL');
  }
  if (url.protocol !== 'tcp:' && url.protocol !== 'tls:') throw bad(`has scheme "${url.protocol.slice(0, -1)}"`);
  if (url.username || url.password) throw bad('has user information, which is not used');
  if ((url.pathname && url.pathname !== '/') || url.search || url.hash) throw bad('has a path, query or fragment');
  if (!url.hostname) throw bad('has no host');
  // URL drops a port equal to the scheme's default; tcp:/tls: have none, so an empty port is absent.
  if (!url.port) throw bad('has no port');
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  return { host, port: Number(url.port), tls: url.protocol === 'tls:' };
}

/** Levenshtein distance, for "did you mean" on misspelled option names. */
function distance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      current[j] = Math.min((previous[j] ?? 0) + 1, (current[j - 1] ?? 0) + 1, (previous[j - 1] ?? 0) + cost);
    }
    previous = current;
  }
  return previous[b.length] ?? 0;
}

function closestOption(name: string): string | undefined {
  const lower = name.toLowerCase();
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const known of KNOWN_OPTIONS) {
    const candidate = known.toLowerCase();
    // A prefix or a part of a known name (`maxBuffer`, `hostname`) is a near miss too.
    const related = candidate.startsWith(lower) || lower.startsWith(candidate);
    const d = candidate === lower ? 0 : related ? 1 : distance(lower, candidate);
    if (d < bestDistance) {
      best = known;
      bestDistance = d;
    }
  }
  return bestDistance <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined;
}

function checkKnownNames(options: Record<string, unknown>): void {
  for (const name of Object.keys(options)) {
    if ((KNOWN_OPTIONS as readonly string[]).includes(name)) continue;
    const guess = closestOption(name);
    const hint = guess ? `did you mean "${guess}"?` : `known options: ${KNOWN_OPTIONS.join(', ')}`;
    throw new TypeError(`${PACKAGE}: unknown option "${name}"; ${hint}`);
  }
}

function parseHost(value: unknown, option = 'host'): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new TcpLogOptionTypeError(option, value, 'a non-empty string: a host name or IP address');
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(value)) {
    throw new TcpLogOptionTypeError(
      option,
      value,
      `a host name or IP address without a scheme (pass the whole URL as the first argument instead: tcplog(${show(value)}))`,
    );
  }
  if (isIP(value) === 6) return value;
  if (/^\[.*\]$/.test(value)) {
    throw new TcpLogOptionTypeError(option, value, 'an IPv6 address without brackets');
  }
  if (value.includes(':')) {
    throw new TcpLogOptionTypeError(
      option,
      value,
      'a host name or IP address without a port (give the port as "port")',
    );
  }
  if (/[\s/?#@\\]/.test(value) || value.length > 253) {
    throw new TcpLogOptionTypeError(option, value, 'a host name or IP address');
  }
  return value;
}

function parsePort(value: unknown, option = 'port'): number {
  if (typeof value !== 'number') {
    throw new TcpLogOptionTypeError(option, value, 'a number, an integer from 1 to 65535');
  }
  if (!Number.isInteger(value) || value < 1 || value > 65535) {
    throw new TcpLogOptionRangeError(option, value, 'an integer from 1 to 65535');
  }
  return value;
}

function parseInteger(name: string, value: unknown, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  const allowed = `an integer from ${min} to ${max} (default ${fallback})`;
  if (typeof value !== 'number') throw new TcpLogOptionTypeError(name, value, `a number, ${allowed}`);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new TcpLogOptionRangeError(name, value, allowed);
  }
  return value;
}

function parseTls(
  option: string,
  value: unknown,
  servername: unknown,
  host: string,
): Readonly<ConnectionOptions> | null {
  if (servername !== undefined && (typeof servername !== 'string' || servername.length === 0)) {
    throw new TcpLogOptionTypeError('tlsServername', servername, 'a non-empty string');
  }
  if (value === undefined || value === false) {
    if (servername !== undefined) {
      throw new TcpLogOptionTypeError('tlsServername', servername, 'used with "tls" set; set tls: true as well');
    }
    return null;
  }
  let base: ConnectionOptions;
  if (value === true) base = {};
  else if (isPlainObject(value)) base = value;
  else throw new TcpLogOptionTypeError(option, value, 'true, false, or an object of tls.connect() options');
  const sni = servername ?? base.servername ?? (isIP(host) ? undefined : host);
  // Node refuses an IP address as SNI name; the certificate is then checked against `host`.
  const merged: ConnectionOptions = { ...base };
  if (sni !== undefined) merged.servername = sni;
  const refused = (why: string): TcpLogOptionTypeError =>
    // Not quoted whole: the options may hold a private key.
    new TcpLogOptionTypeError(
      option,
      value,
      'true, or tls.connect() options that Node accepts',
      `options it refuses (${why})`,
    );
  // tls.connect() checks these only once its socket exists (servername), or at every connect.
  // Node skips a falsy servername or ca (`ca: env.CA ? read(...) : null`), so these checks do.
  if (merged.servername && typeof merged.servername !== 'string') throw refused('"servername" must be a string');
  // As Node does: it takes no null checkServerIdentity, but a null pskCallback or session is none.
  if (merged.checkServerIdentity !== undefined && typeof merged.checkServerIdentity !== 'function') {
    throw refused('"checkServerIdentity" must be a function');
  }
  if (merged.pskCallback != null && typeof merged.pskCallback !== 'function') {
    throw refused('"pskCallback" must be a function');
  }
  if (merged.session && !ArrayBuffer.isView(merged.session)) throw refused('"session" must be a Buffer');
  if (merged.secureContext === undefined) {
    checkCa(merged.ca, refused);
    try {
      // What tls.connect() would make of them at every connect: a bad key, certificate, cipher
      // list or protocol version is found here rather than when the first record is sent.
      createSecureContext(merged);
    } catch (err) {
      // Node's argument errors quote the value they received (a passphrase, say): not that part.
      throw refused(thrownText(err).replace(/\.? ?Received [\s\S]*$/, ''));
    }
  }
  return Object.freeze(merged);
}

/**
 * Each `ca` entry must hold a PEM certificate: createSecureContext() skips what it cannot read (a
 * file's path given instead of its content, a DER file), and every connect would then fail the
 * certificate check.
 */
function checkCa(ca: unknown, refused: (why: string) => TcpLogOptionTypeError): void {
  if (!ca) return;
  const entries: unknown[] = Array.isArray(ca) ? ca : [ca];
  entries.forEach((entry, i) => {
    const where = Array.isArray(ca) ? `"ca[${i}]"` : '"ca"';
    const text =
      typeof entry === 'string' ? entry : ArrayBuffer.isView(entry) ? viewBytes(entry).toString('latin1') : null;
    if (text === null) throw refused(`${where} must be a PEM string or a Buffer`);
    // OpenSSL's trusted form (Fedora's bundle) and the old X509 label are certificates too.
    const begin = /-----BEGIN (?:TRUSTED |X509 )?CERTIFICATE-----/.exec(text)?.index ?? -1;
    let readable = begin !== -1;
    if (readable) {
      try {
        new X509Certificate(text.slice(begin));
      } catch {
        readable = false;
      }
    }
    if (!readable)
      throw refused(`${where} holds no PEM certificate Node can read (a file's content is needed, not its path)`);
  });
}

/** The bytes of any view Node takes for TLS data (a Buffer, a Uint8Array, a DataView), not copied. */
function viewBytes(view: ArrayBufferView): Buffer {
  return Buffer.from(view.buffer, view.byteOffset, view.byteLength);
}

/** Ids of the TLS option values compared by identity (see tlsKey()). */
const identities = new WeakMap<object, number>();
let lastIdentity = 0;

function identity(value: object): string {
  let id = identities.get(value);
  if (id === undefined) {
    id = ++lastIdentity;
    identities.set(value, id);
  }
  return `ref:${id}`;
}

/**
 * A stable text for TLS options, so that equal settings share a connection. Data (strings,
 * numbers, Buffers, arrays and plain objects of them) is compared by value; anything else (a
 * `secureContext`, a `checkServerIdentity` function) by identity: two contexts with different
 * client certificates, or two pinning closures made by one factory, look alike as JSON.
 */
function tlsKey(tls: Readonly<ConnectionOptions> | null): string {
  if (!tls) return 'off';
  try {
    return tlsText(tls);
  } catch {
    // A cycle (a getter that throws was refused when the options were read): this object is
    // its own destination, rather than a raw JSON error from the factory.
    return identity(tls);
  }
}

function tlsText(tls: Readonly<ConnectionOptions>): string {
  return JSON.stringify(tls, function describe(this: Record<string, unknown>, key: string, value: unknown) {
    // `value` is what toJSON() made of it: a Buffer's is an array of numbers, longer than base64.
    const original = this[key];
    // Any view (Node takes a Uint8Array or a DataView as well as a Buffer) is data.
    if (ArrayBuffer.isView(original)) {
      return `buffer:${viewBytes(original).toString('base64')}`;
    }
    if (typeof value === 'function') return identity(value);
    if (typeof value === 'bigint') return `bigint:${value}`;
    if (typeof value === 'object' && value !== null && !Array.isArray(value) && !isPlainObject(value)) {
      return identity(value);
    }
    return value;
  });
}

function parseDelimiter(value: unknown): '\r\n' | '\n' {
  if (value === undefined) return '\r\n';
  if (value === '\r\n' || value === '\n') return value;
  throw new TcpLogOptionTypeError('delimiter', value, '"\\r\\n" (default) or "\\n"');
}

function parseRedact(value: unknown): ReadonlySet<string> | null {
  if (value === undefined) return new Set(DEFAULT_REDACT);
  if (value === false) return null;
  if (!Array.isArray(value)) {
    throw new TcpLogOptionTypeError('redact', value, 'an array of header names, or false to log every header');
  }
  const names = new Set<string>();
  for (const name of value as unknown[]) {
    if (typeof name !== 'string' || !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) {
      throw new TcpLogOptionTypeError('redact', value, `an array of header names; ${show(name)} is not one`);
    }
    names.add(name.toLowerCase());
  }
  return names.size === 0 ? null : names;
}

function parseApi(value: unknown): Readonly<Record<string, unknown>> | null {
  if (value === undefined) return null;
  if (!isPlainObject(value)) {
    throw new TcpLogOptionTypeError('api', value, 'a plain object, e.g. { name: "users" }');
  }
  let json: string | undefined;
  try {
    json = JSON.stringify(value);
  } catch (err) {
    // The first line: V8 explains a cycle over several.
    const why = thrownText(err).split('\n', 1)[0] ?? '';
    throw new TcpLogOptionTypeError('api', value, `an object JSON can serialize (${why})`);
  }
  // A toJSON() can turn the object into anything: the record needs a JSON object here.
  if (typeof json !== 'string' || !json.startsWith('{')) {
    throw new TcpLogOptionTypeError('api', value, 'an object that serializes to a JSON object');
  }
  return deepFreeze(JSON.parse(json) as Record<string, unknown>);
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object') {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}

/** Checks an optional callback; `F` is the signature it will be called with. */
function parseFunction<F>(name: string, value: unknown, allowed: string): F | null {
  if (value === undefined) return null;
  if (typeof value !== 'function') throw new TcpLogOptionTypeError(name, value, allowed);
  return value as F;
}

/** `'a.b\\.c'` -> `['a', 'b.c']`. */
export function splitFieldPath(name: string): string[] {
  const segments: string[] = [];
  let current = '';
  for (let i = 0; i < name.length; i++) {
    const ch = name[i];
    if (ch === '\\' && name[i + 1] === '.') {
      current += '.';
      i++;
    } else if (ch === '.') {
      segments.push(current);
      current = '';
    } else {
      current += ch;
    }
  }
  segments.push(current);
  return segments;
}

function parseCustomFields(value: unknown): Hooks['customFields'] {
  if (value === undefined) return [];
  if (!isPlainObject(value)) {
    throw new TcpLogOptionTypeError('customFields', value, "an object like { 'dotted.path': (req, res) => value }");
  }
  return Object.entries(value).map(function parseField([name, fn]) {
    const option = `customFields[${JSON.stringify(name)}]`;
    if (typeof fn !== 'function') throw new TcpLogOptionTypeError(option, fn, 'a function (req, res) => value');
    const path = splitFieldPath(name);
    if (path.some((segment) => segment === '')) {
      throw new TcpLogOptionTypeError(
        option,
        name,
        'a dotted path of non-empty names (escape a literal dot as "\\\\.")',
      );
    }
    if (path.includes('__proto__')) {
      throw new TcpLogOptionTypeError(option, name, 'a path without "__proto__"');
    }
    return Object.freeze({ name, path, fn: fn as (req: IncomingMessage, res: ServerResponse) => unknown });
  });
}

function parseOnError(value: unknown): ErrorHandler | null {
  return parseFunction<ErrorHandler>('onError', value, 'a function (err) => void');
}
