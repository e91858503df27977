/**
 * Request capture: what must be read while the request is live (arrival time, address, socket
 * byte marks), the time the head went out and the finish. The record is built and handed to the
 * sink after the response finishes, off the request path.
 *
 * The hot path allocates one object per request (and a copy of the raw headers, which the app
 * may edit in place) and attaches shared functions only: no closure per request, no symbol keys
 * on Node's objects (state lives in WeakMaps), so the shapes Node and Express see stay the same
 * with or without the middleware. It does the job of on-headers and
 * on-finished with one `writeHead` hook, Node's own announcement of each finished response (the
 * `http.server.response.finish` diagnostics channel) and one 'close' listener per connection; a
 * response that does not come from a Node HTTP server gets 'finish' and 'close' listeners instead.
 * The base a route ran under comes from a hook on Express's router layers (routehooks.ts).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { Readable } from 'node:stream';
import { PACKAGE, thrownText } from './errors.js';
import { queuedBytes, tcpHandle, type StreamHandle } from './handle.js';
import { hookValues, skips, type ReportHook } from './hooks.js';
import { httpHooks, type LoadHooks, type Registration, type WriteHead } from './httphooks.js';
import type { Hooks, RecordSettings } from './options.js';
import { REQUEST_ID, headerText, type CapturedExchange, type CapturedResponse } from './record.js';
import { hookAppRoutes, hookRouteClass, type Routed } from './routehooks.js';
import { writeRecord } from './serialize.js';

/** What Express (4 or 5) adds to a request; Connect and bare `http` have none of it. */
interface ExpressLikeRequest extends IncomingMessage {
  originalUrl?: string;
  ip?: string;
  protocol?: string;
  baseUrl?: string;
  route?: { path?: unknown };
  app?: { get?: (setting: string) => unknown };
}

/** Where the middleware hands finished records; the client is one, a test double another. */
export interface RecordSink {
  /**
   * Accepts one framed record, as UTF-8: the first `length` bytes of `data`, copied before it
   * returns. Never throws, never waits.
   */
  pushBytes(data: Buffer, length: number): void;
}

/** One middleware instance as the capture code sees it. */
export interface Instance {
  readonly record: RecordSettings;
  readonly hooks: Hooks;
  readonly sink: RecordSink;
  /** Set by close(): requests are no longer logged by this instance. */
  closed: boolean;
  /** Reports a bug of ours caught on the finish path; never throws. */
  readonly reportInternal: (err: unknown) => void;
  /** Reports a failing user hook, once per hook (`skip`, `consumer`, `customFields["x"]`). */
  readonly reportHook: ReportHook;
}

export type Next = (err?: unknown) => void;
export type Handler = (req: IncomingMessage, res: ServerResponse, next: Next) => void;

/** Per-socket marks, so sizes stay right with keep-alive and pipelining. */
interface SocketMarks {
  /** Logged exchanges on this socket that have not finished. */
  open: number;
  /** `bytesWritten` when the last logged response on this socket finished. */
  lastEnd: number;
  /**
   * Exchanges whose record waits for Node's finish announcement, oldest first; the socket's
   * 'close' settles whatever is left (the client went away). Null when none.
   */
  waiting: LiveExchange[] | null;
  /**
   * Whether Node's server announces the finish of this socket's responses (see announcesFinish):
   * one server made them all, so the first one answers for the rest. Then this module also
   * listens for the socket's 'close'.
   */
  announced: boolean;
  /**
   * The socket's libuv handle, kept to read its write queue when the connection fails (Node drops
   * its own reference first). Plain TCP only: over TLS the queue holds encrypted bytes, which do
   * not compare with `bytesWritten`. Null when not read.
   */
  handle: StreamHandle | null;
  /**
   * Bytes `bytesWritten` counts that were still queued in the process when the connection failed:
   * they never went out (a client that left in the middle of a `res.send()` of 50 MB).
   */
  unsent: number;
  /**
   * The socket's own end, `address:port`, for a request without a Host header (HTTP/1.0). Read
   * when the connection's first logged request came: once the socket is gone, Node forgets it.
   */
  readonly localHost: string;
}

interface LiveExchange {
  /** Null until a middleware takes the request (see onServerRequest). */
  instance: Instance | null;
  readonly req: ExpressLikeRequest;
  readonly res: TrackedResponse;
  readonly socket: Socket;
  /**
   * What the request line said, read when Node's server announced the request: then `req` still
   * has the map Node gave it. Null when the exchange was made by the middleware (a response that
   * does not come from Node's HTTP/1 server): read from `req` when the record is built.
   */
  readonly sent: SentRequest | null;
  startedAt: number;
  arrivedAt: number;
  headersAt: number | null;
  bodyBytes: number;
  /**
   * `bytesWritten` when the exchange began, or -1 when an earlier response on the socket was still
   * open (logged or not): then it begins where that one ends.
   */
  writtenAtStart: number;
  remoteAddress: string | undefined;
  /** The `push` and `writeHead` this middleware wrapped on the objects themselves, called through. */
  push: Readable['push'] | null;
  writeHead: WriteHead | null;
  /** When the response finished (or the exchange was aborted), and the bytes it wrote. */
  endedAt: number;
  responseBytes: number;
  /**
   * Bytes of informational responses (`100 Continue`, `102 Processing`, `103 Early Hints`) sent
   * before the head: in the size, but not the head, which may not have gone out after them.
   */
  informationalBytes: number;
  /** `req.baseUrl` when the innermost instance saw the request. */
  mountedAt: string;
  /**
   * The last route an Express router ran for the request (see routehooks.ts), and `req.baseUrl`
   * then. Null when none was seen.
   */
  routeRun: object | null;
  routeBase: string;
  /** The socket's own address read earlier, for a request without a Host header (see takeLate). */
  localHost: string | null;
  /**
   * The instance the request passed before `instance` took it (nested instances), and so on out:
   * if `instance` is closed before the record is made, the next open one out logs it.
   */
  outer: OuterTake | null;
}

/**
 * What stays of an exchange whose response ended while the request may still be on its way
 * through the app, to an instance that must not start anew (see takeLate). Without `req`, `res`
 * or the socket: kept in the table until the response is collected, it must not hold them (a
 * table that held whole exchanges cost 10 % more instructions per request, in the garbage
 * collector).
 */
class Ended {
  constructor(
    /** What the record needs, read while it could be; null once it is logged (or skipped). */
    readonly exchange: EndedExchange | null,
  ) {}
}

type EndedExchange = Pick<
  LiveExchange,
  | 'sent'
  | 'bodyBytes'
  | 'remoteAddress'
  | 'endedAt'
  | 'responseBytes'
  | 'informationalBytes'
  | 'headersAt'
  | 'arrivedAt'
  | 'startedAt'
> & {
  /** Whether an instance had it (closed since): else it spent no time in one. */
  readonly taken: boolean;
  /** The socket's own address, for a request without a Host header: gone once it closes. */
  readonly localHost: string | null;
};

/** The mark of a logged response (see Ended). */
const LOGGED = new Ended(null);

interface OuterTake {
  readonly instance: Instance;
  readonly mountedAt: string;
  readonly outer: OuterTake | null;
}

type TrackedResponse = ServerResponse & { _header?: unknown };

/** The request as Node's parser made it: what the client sent. */
interface SentRequest {
  readonly method: string;
  readonly url: string;
  readonly httpVersion: string;
  readonly rawHeaders: readonly string[];
}

const byResponse = new WeakMap<ServerResponse, LiveExchange | Ended>();
/** Only requests that can carry a body: their `push` is wrapped to count the bytes. */
const byRequest = new WeakMap<IncomingMessage, LiveExchange>();
const marksBySocket = new WeakMap<Socket, SocketMarks>();
/** Where the last response ended on a socket that has no marks yet (none of it logged so far). */
const unloggedEnds = new WeakMap<Socket, number>();

export function createHandler(instance: Instance): Handler {
  const { registration } = installSharedHooks();
  if (openInstances++ === 0) registration.setOpen(true);
  return function tcplogMiddleware(req: IncomingMessage, res: ServerResponse, next: Next): void {
    try {
      capture(instance, req, res);
    } catch (err) {
      instance.reportInternal(err);
    }
    next();
  };
}

function capture(instance: Instance, req: ExpressLikeRequest, res: TrackedResponse): void {
  // Express keeps `app` on the prototype it gives each request: read there (see trustsProxy()).
  // Each instance looks, nested ones too: a sub-app may be of another copy of Express.
  const app = (Object.getPrototypeOf(req) as ExpressLikeRequest | null)?.app;
  if (app !== lastApp && app !== undefined) {
    lastApp = app;
    hookAppRoutes(app, (shared as SharedHooks).routed);
  }
  const existing = byResponse.get(res);
  if (existing instanceof Ended) {
    // It ended before it reached this instance (see takeLate).
    takeLate(instance, existing, req, res);
    return;
  }
  // Logged at its finish, and let go of then (most responses end there: no mark is kept for
  // them). Or it ended before any instance was open: nothing was kept to log it with. Ended by
  // the app, not only finished: an HTTP/2 stream its client reset counts as finished.
  if (existing === undefined && res.writableEnded === true) return;
  if (existing !== undefined && existing.instance !== null) {
    // Nested instances (app-level, then router-level): one record, with the innermost's settings.
    if (!instance.closed) {
      existing.outer = { instance: existing.instance, mountedAt: existing.mountedAt, outer: existing.outer };
      existing.instance = instance;
      existing.mountedAt = req.baseUrl ?? '';
    }
    return;
  }
  if (instance.closed) return;
  const exchange = existing ?? arrive(req, res, req.socket, null);
  const { socket } = exchange;
  let marks = marksBySocket.get(socket);
  if (!marks) {
    // A response before this one, not logged, may have ended already (or will: see noteEnd).
    marks = {
      open: 0,
      lastEnd: unloggedEnds.get(socket) ?? socket.bytesWritten,
      waiting: null,
      announced: exchange.sent !== null || announcesFinish(res),
      handle: null,
      unsent: 0,
      localHost: localHost(socket),
    };
    marksBySocket.set(socket, marks);
    if (marks.announced) {
      socket.on('close', onSocketClose);
      if (!(socket as { encrypted?: boolean }).encrypted) {
        marks.handle = tcpHandle(socket);
        // First: a once('error') listener of the app's is still there when this one looks.
        if (marks.handle !== null) socket.prependListener('error', onSocketError);
      }
    }
  }
  exchange.instance = instance;
  exchange.mountedAt = req.baseUrl ?? '';
  exchange.startedAt = Date.now();
  exchange.arrivedAt = performance.now();
  // Announced by Node: marked then, before anything of it was written (a 100 Continue, 103 Early
  // Hints, a middleware in front that answers). Otherwise, now.
  if (exchange.sent === null) exchange.writtenAtStart = marks.open === 0 ? socket.bytesWritten : -1;
  marks.open++;
  if (marks.announced) {
    // No listener per request (they showed as about 3 % of a bare request's CPU): Node's own
    // finish handler announces the response on a diagnostics channel, and a connection that
    // closes first settles what it still carried.
    if (marks.waiting === null) marks.waiting = [exchange];
    else marks.waiting.push(exchange);
    // The client went away while a middleware in front of this one was still at work: the
    // connection's 'close' has been and gone, and nothing more will be sent.
    if (socket.closed) setImmediate(logAbandoned, exchange);
    return;
  }
  // Gone before this instance: a response that says so (`closed`), or an HTTP/2 stream reset.
  if (
    (res as { closed?: unknown }).closed === true ||
    (res as { stream?: { destroyed?: unknown } }).stream?.destroyed === true
  ) {
    setImmediate(logAbandoned, exchange);
    return;
  }
  // Prepended: Node's own 'finish' listener hands the socket to the next pipelined response,
  // whose bytes must not be counted as this one's.
  res.prependListener('finish', onFinish);
  // 'close' follows 'finish', and also comes alone when the client goes away: the record is
  // built there either way.
  res.on('close', onClose);
}

/**
 * The exchange of a request, with what can be read before the app runs; no middleware has it yet.
 * Made when Node's server announces the request (`sent` is then what the request line said), or
 * by the middleware for a response Node's HTTP/1 server did not make.
 *
 * Under Express, every request and response has a map of its own by the time the first
 * middleware runs (after Express sets their prototype and its router adds its properties), and
 * then each property read on them misses V8's caches (about 1 500 instructions each, counted with
 * `npm run bench:instructions`). Read here, before Express runs, the same reads hit.
 */
function arrive(req: ExpressLikeRequest, res: TrackedResponse, socket: Socket, sent: SentRequest | null): LiveExchange {
  const exchange = newExchange(req, res, socket, sent);
  if (!req.complete && mayHaveBody(req)) {
    // eslint-disable-next-line @typescript-eslint/unbound-method
    exchange.push = req.push;
    byRequest.set(req, exchange);
    req.push = countingPush;
  }
  // The shared hook on the prototype notes the time for every response that resolves to it: no
  // property is added to `res` (in the profile, that assignment was the dearest line here). A
  // response whose writeHead is another by now (a custom class; for a response Node's server did
  // not make, a library's wrapper) gets its own. Wrappers added later call through to this one.
  if (res.writeHead !== shared?.writeHead) {
    // eslint-disable-next-line @typescript-eslint/unbound-method
    exchange.writeHead = res.writeHead;
    res.writeHead = timedWriteHead as WriteHead;
  }
  return exchange;
}

/** The exchange itself, in the table, with no hook on `req` or `res`. */
function newExchange(
  req: ExpressLikeRequest,
  res: TrackedResponse,
  socket: Socket,
  sent: SentRequest | null,
): LiveExchange {
  const exchange: LiveExchange = {
    instance: null,
    req,
    res,
    socket,
    sent,
    startedAt: 0,
    arrivedAt: 0,
    headersAt: null,
    bodyBytes: initialBodyBytes(req),
    // Node announces a request before it queues the response behind one still open on the socket
    // (pipelining) or hands it the socket: `_httpMessage` says which it will do.
    writtenAtStart:
      sent !== null && (socket as { _httpMessage?: unknown })._httpMessage == null ? socket.bytesWritten : -1,
    // Read now: once the socket is gone the address may be too.
    remoteAddress: socket.remoteAddress,
    push: null,
    writeHead: null,
    endedAt: -1,
    responseBytes: 0,
    informationalBytes: 0,
    mountedAt: '',
    routeRun: null,
    routeBase: '',
    localHost: null,
    outer: null,
  };
  byResponse.set(res, exchange);
  return exchange;
}

/** Node's announcement of a new request, before the app sees it (see arrive()). */
function onServerRequest(message: unknown): void {
  const {
    request: req,
    response: res,
    socket,
  } = message as { request: IncomingMessage; response: TrackedResponse; socket: Socket };
  try {
    arrive(req, res, socket, sentRequest(req, req.url ?? '/'));
  } catch {
    // A subscriber's throw would reach the app as an uncaught exception. The middleware then
    // makes the exchange itself, from `req`.
  }
}

/** The request line and headers of `req`, with `url` (Express keeps the original apart). */
function sentRequest(req: IncomingMessage, url: string): SentRequest {
  // A copy: an app that edits the array in place (adds a request id, renames a header) must not
  // change what the record says arrived.
  return { method: req.method ?? 'GET', url, httpVersion: req.httpVersion, rawHeaders: req.rawHeaders.slice() };
}

/**
 * Whether Node's HTTP server finishes this response: its handler (attached when the server made
 * the response) publishes `http.server.response.finish` before it hands the socket to the next
 * pipelined response. Responses made elsewhere (test doubles, other servers) are not announced.
 */
function announcesFinish(res: ServerResponse): boolean {
  const listeners = (res as { _events?: Record<string, unknown> })._events?.finish;
  if (typeof listeners === 'function') return listeners.name === SERVER_FINISH;
  return (
    Array.isArray(listeners) &&
    listeners.some((listener: unknown) => typeof listener === 'function' && listener.name === SERVER_FINISH)
  );
}

/** The name of the handler Node's HTTP server attaches to every response's 'finish'. */
const SERVER_FINISH = 'bound resOnFinish';
/**
 * Instances made and not yet closed: while there are none, requests are not read at Node's
 * announcement, so that a process whose loggers are all closed pays nothing per request.
 */
let openInstances = 0;

/** An instance was closed (once): the last one stops the reading of requests as they come. */
export function releaseHandler(): void {
  if (openInstances > 0 && --openInstances === 0) shared?.registration.setOpen(false);
}

/** Node's announcement of a finished response: the record of a tracked one is built now. */
function onServerFinish(message: unknown): void {
  const { response: res, socket } = (message ?? {}) as { response?: TrackedResponse; socket?: Socket };
  if (res === undefined) return;
  const entry = byResponse.get(res);
  if (entry !== undefined) {
    buildAndSend(res, entry, true);
    return;
  }
  // Every response of every server in the process is announced. One made while no instance was
  // open is not tracked, but a logged response queued behind it on the connection (pipelining)
  // starts where it ended. While no instance is open (and none was on this connection), nothing
  // is kept: a process whose loggers are all closed pays nothing.
  if (socket !== undefined && (openInstances > 0 || marksBySocket.has(socket))) noteEnd(socket);
}

/** A connection closed: its exchanges that never finished are logged as they stand. */
function onSocketClose(this: Socket): void {
  const marks = marksBySocket.get(this);
  const waiting = marks?.waiting;
  if (!marks || !waiting) return;
  marks.waiting = null;
  for (const exchange of waiting) logAbandoned(exchange);
}

/**
 * A connection failed (the client reset it): what is still in the handle's write queue never goes
 * out. Read now, while the queue holds it: by 'close' the writes are cancelled and it reads 0.
 */
function onSocketError(this: Socket, err: unknown): void {
  const marks = marksBySocket.get(this);
  const queued = queuedBytes(marks?.handle ?? null);
  if (marks !== undefined && queued > 0) marks.unsent = queued;
  // Alone, this listener would make an error handled that was not: the socket's owner has let it
  // go (Node's server hands an upgraded socket to its 'upgrade' handler with no listener of its
  // own). It stays unhandled, thrown from the emit as it would be without this module. Alone
  // with the same listener of another copy of the package, too: else each would count the other.
  if (this.listeners('error').every(isOwnErrorListener)) {
    this.removeListener('error', onSocketError);
    throw err;
  }
}

/** Marks onSocketError for every copy of the package loaded in the process (see there). */
const OWN_ERROR_LISTENER = Symbol.for('express-tcplog.socketErrorListener');
Object.defineProperty(onSocketError, OWN_ERROR_LISTENER, { value: true });

function isOwnErrorListener(listener: unknown): boolean {
  return (listener as { [OWN_ERROR_LISTENER]?: unknown })[OWN_ERROR_LISTENER] === true;
}

/** A body comes only with Content-Length or Transfer-Encoding (RFC 9112, 6.3). */
function mayHaveBody(req: IncomingMessage): boolean {
  const raw = req.rawHeaders;
  const length = rawHeader(raw, 'content-length');
  return (length !== undefined && length !== '0') || rawHeader(raw, 'transfer-encoding') !== undefined;
}

/**
 * The first value of a header (`name` in lower case), as `req.headers` would give it for these
 * two. Read from `req.rawHeaders`: touching `req.headers` makes Node build that whole object at
 * once, which showed in the profile as a good part of this middleware's time.
 */
function rawHeader(raw: readonly string[], name: string): string | undefined {
  const at = headerIndex(raw, name, 0);
  return at === -1 ? undefined : raw[at + 1];
}

/**
 * Every value of a header as text, joined with ", " as `req.headers` joins a repeated `x-` header.
 * Each is decoded on its own, as `request.headers` has it: one value that is not UTF-8 must not
 * leave the others as latin1.
 */
function joinedHeaderText(raw: readonly string[], name: string): string | undefined {
  let joined: string | undefined;
  for (let at = headerIndex(raw, name, 0); at !== -1; at = headerIndex(raw, name, at + 2)) {
    const value = headerText(raw[at + 1] as string);
    joined = joined === undefined ? value : `${joined}, ${value}`;
  }
  return joined !== undefined && joined.length > 0 ? joined : undefined;
}

/** Where the next header named `name` (lower case) is in `raw`, from `from` on; -1 if nowhere. */
function headerIndex(raw: readonly string[], name: string, from: number): number {
  for (let i = from; i + 1 < raw.length; i += 2) {
    const key = raw[i] as string;
    if (key.length === name.length && key.toLowerCase() === name) return i;
  }
  return -1;
}

/**
 * The body bytes already received when the exchange is made (a router-level instance may come
 * after a body parser). The rest is counted as the parser pushes it: listening for 'data' would
 * start the body flowing and take it from the app.
 */
function initialBodyBytes(req: IncomingMessage): number {
  // A double made for tests may not be a stream at all.
  const buffered = typeof req.readableLength === 'number' ? req.readableLength : 0;
  if (!req.complete) return buffered;
  const declared = Number(rawHeader(req.rawHeaders, 'content-length'));
  return Number.isSafeInteger(declared) && declared >= 0 ? declared : buffered;
}

function countingPush(this: IncomingMessage, chunk: unknown, encoding?: BufferEncoding): boolean {
  const exchange = byRequest.get(this);
  if (exchange && chunk !== null && chunk !== undefined) {
    exchange.bodyBytes += (chunk as { length?: number }).length ?? 0;
  }
  return (exchange?.push ?? Readable.prototype.push).call(this, chunk, encoding);
}

/**
 * What this load of the module does at Node's hooks (see httphooks.ts), which hold it weakly:
 * kept alive by the module itself, as long as anything holds the module.
 */
const THIS_LOAD: LoadHooks = {
  head: noteHead,
  informational: noteInformational,
  finish: onServerFinish,
  request: onServerRequest,
  route: noteRoute,
};

/**
 * The process's hooks, and this load's place in them: set when the first middleware is made, and
 * kept (exchanges already made count on them, and so do their sockets' marks). `writeHead` is the
 * hook on `http.ServerResponse.prototype`, which notes the time the head goes out for every
 * response tracked here whose `writeHead` is Node's.
 */
let shared: SharedHooks | null = null;

interface SharedHooks {
  readonly writeHead: WriteHead;
  readonly routed: Routed;
  readonly registration: Registration;
}

function installSharedHooks(): SharedHooks {
  if (shared === null) {
    const hooks = httpHooks();
    shared = { writeHead: hooks.writeHead, routed: hooks.routed, registration: hooks.register(THIS_LOAD) };
  }
  return shared;
}

/**
 * The app of the last request captured, whose router was looked at (see routehooks.ts): most
 * processes have one, and then a comparison per request is all it costs.
 */
let lastApp: unknown;

/** An Express router is about to run `route` for a request: the base it runs under is noted. */
function noteRoute(req: IncomingMessage, res: ServerResponse, route: object): void {
  const exchange = byResponse.get(res);
  if (exchange === undefined || exchange instanceof Ended) return;
  try {
    // An app may set anything there, even a getter that throws.
    const base = (req as ExpressLikeRequest).baseUrl;
    exchange.routeRun = route;
    exchange.routeBase = typeof base === 'string' ? base : '';
  } catch {
    exchange.routeRun = null;
  }
}

/** A tracked response sent informational responses: counted apart (see sentResponse()). */
function noteInformational(res: ServerResponse, bytes: number): void {
  const exchange = byResponse.get(res);
  if (exchange !== undefined && !(exchange instanceof Ended)) exchange.informationalBytes += bytes;
}

/** The same, as an own property of a response whose `writeHead` is not the shared hook. */
function timedWriteHead(this: ServerResponse, ...args: unknown[]): unknown {
  const exchange = noteHead(this);
  // The hook is set after the exchange is stored and undone before it is let go; the prototype is
  // a guard.
  // eslint-disable-next-line @typescript-eslint/unbound-method -- applied to `this` just below
  const original = exchange?.writeHead ?? (Object.getPrototypeOf(this) as ServerResponse).writeHead;
  return Reflect.apply(original, this, args);
}

/** Notes when the head of a tracked response goes out (the first time only); returns its exchange. */
function noteHead(res: ServerResponse): LiveExchange | undefined {
  const exchange = byResponse.get(res);
  if (exchange === undefined || exchange instanceof Ended) return undefined;
  if (exchange.headersAt === null) exchange.headersAt = performance.now();
  return exchange;
}

function onFinish(this: ServerResponse): void {
  const exchange = byResponse.get(this);
  if (exchange !== undefined && !(exchange instanceof Ended)) settle(exchange);
}

/**
 * A request that reaches an instance after its response ended: a middleware in front answered
 * (connect-timeout's 503, say) and let the request go on. It is logged now, as it stands. If no
 * instance had it, its time here is nil: `started_at` is when the response finished, and the
 * latencies are 0. After the turn, as logAbandoned, so that an instance further in is the one.
 */
function takeLate(instance: Instance, ended: Ended, req: ExpressLikeRequest, res: TrackedResponse): void {
  const kept = ended.exchange;
  // Logged already (LOGGED), or by this instance never.
  if (instance.closed || kept === null) return;
  // Made again from what was kept, with no hook on `req` or `res`: their exchange has ended.
  // Nested instances reached in this turn find this one and take it on as the innermost.
  const exchange = newExchange(req, res, req.socket, kept.sent);
  exchange.instance = instance;
  exchange.mountedAt = req.baseUrl ?? '';
  exchange.bodyBytes = kept.bodyBytes;
  exchange.remoteAddress = kept.remoteAddress;
  exchange.localHost = kept.localHost;
  exchange.endedAt = kept.endedAt;
  exchange.responseBytes = kept.responseBytes;
  exchange.informationalBytes = kept.informationalBytes;
  // A head that went out before the arrival counts from it (see describe()).
  exchange.headersAt = kept.headersAt;
  if (kept.taken) {
    exchange.arrivedAt = kept.arrivedAt;
    exchange.startedAt = kept.startedAt;
  } else {
    exchange.arrivedAt = kept.endedAt;
    exchange.startedAt = Date.now() - Math.round(performance.now() - kept.endedAt);
  }
  setImmediate(logAbandoned, exchange);
}

/**
 * Takes the end marks once: at the finish, or at 'close' when the client went away first. For a
 * response no instance has taken (yet: see takeLate), only where it ended.
 */
function settle(exchange: LiveExchange): void {
  if (exchange.endedAt !== -1) return;
  const { socket } = exchange;
  const marks = marksBySocket.get(socket);
  // What went out: not what was still queued when the connection failed.
  const written = socket.bytesWritten - (marks?.unsent ?? 0);
  const start =
    exchange.writtenAtStart !== -1 ? exchange.writtenAtStart : (marks?.lastEnd ?? unloggedEnds.get(socket) ?? 0);
  if (exchange.instance === null) {
    noteEnd(socket);
  } else if (marks) {
    marks.open--;
    marks.lastEnd = written;
    const waiting = marks.waiting;
    if (waiting !== null) {
      // Responses finish in order on a connection: the settled one is nearly always the first.
      const at = waiting[0] === exchange ? 0 : waiting.indexOf(exchange);
      if (at !== -1) waiting.splice(at, 1);
      if (waiting.length === 0) marks.waiting = null;
    }
  }
  exchange.endedAt = performance.now();
  // An earlier response on the connection may have been queued too: never below nothing.
  const bytes = Math.max(0, written - start);
  exchange.responseBytes = Number.isFinite(bytes) ? bytes : declaredLength(exchange.res);
}

/**
 * A response on a socket that counts no bytes (the HTTP/2 compatibility API, whose streams share
 * a session; a request injected without a socket) is sized by its `content-length`, 0 without one.
 */
function declaredLength(res: ServerResponse): number {
  // Called from event listeners, where a throw would reach the app: a double may lack getHeader.
  const length = typeof res.getHeader === 'function' ? Number(res.getHeader('content-length')) : Number.NaN;
  return Number.isSafeInteger(length) && length >= 0 ? length : 0;
}

/** A response no instance logs has ended: where the next one on its socket starts. */
function noteEnd(socket: Socket): void {
  const marks = marksBySocket.get(socket);
  if (marks !== undefined) marks.lastEnd = socket.bytesWritten;
  // Kept apart: a response queued behind this one may write (a 103) before it reaches the logger.
  else unloggedEnds.set(socket, socket.bytesWritten);
}

/**
 * Logs an exchange whose client left, at the connection's close; or one that ended before it
 * reached this middleware, after the turn, so that instances further down the same chain
 * (router level) have set the innermost configuration.
 */
function logAbandoned(exchange: LiveExchange): void {
  buildAndSend(exchange.res, byResponse.get(exchange.res), false);
}

function onClose(this: TrackedResponse): void {
  buildAndSend(this, byResponse.get(this), false);
}

/**
 * The instance that logs the exchange: the one that took it, or, if that one was closed before
 * the record was made, the next open instance out (the app-level one around a router-level one
 * closed meanwhile). Null when there is none.
 */
function loggingInstance(exchange: LiveExchange): Instance | null {
  if (exchange.instance === null || !exchange.instance.closed) return exchange.instance;
  for (let take = exchange.outer; take !== null; take = take.outer) {
    if (!take.instance.closed) {
      exchange.instance = take.instance;
      exchange.mountedAt = take.mountedAt;
      exchange.outer = take.outer;
      return take.instance;
    }
  }
  return null;
}

/**
 * Builds the record of a finished (or abandoned) response and hands it to the sink, once, if an
 * open instance has it. `exchange`: what the table holds for it. `announced`: Node announced its
 * finish (rather than its client leaving, or a response Node does not announce ending).
 */
function buildAndSend(res: TrackedResponse, exchange: LiveExchange | Ended | undefined, announced: boolean): void {
  if (exchange === undefined || exchange instanceof Ended) return;
  const { req } = exchange;
  // No middleware took the request (another server's, or routed elsewhere; or not yet: see
  // takeLate): a logged response after it on the same connection starts where this one ended.
  settle(exchange);
  if (exchange.writeHead !== null && res.writeHead === timedWriteHead) res.writeHead = exchange.writeHead;
  if (exchange.push !== null) {
    byRequest.delete(req);
    if (req.push === countingPush) req.push = exchange.push;
  }
  const instance = loggingInstance(exchange);
  if (instance === null) {
    // No open instance has it, or not yet: one the request reaches later logs it.
    const { sent, socket } = exchange;
    const hostless = sent === null || rawHeader(sent.rawHeaders, 'host') === undefined;
    byResponse.set(
      res,
      new Ended({
        sent,
        bodyBytes: exchange.bodyBytes,
        remoteAddress: exchange.remoteAddress,
        endedAt: exchange.endedAt,
        responseBytes: exchange.responseBytes,
        informationalBytes: exchange.informationalBytes,
        headersAt: exchange.headersAt,
        arrivedAt: exchange.arrivedAt,
        startedAt: exchange.startedAt,
        taken: exchange.instance !== null,
        localHost: hostless ? (exchange.localHost ?? marksBySocket.get(socket)?.localHost ?? localHost(socket)) : null,
      }),
    );
    return;
  }
  // The record is built once: let go of the exchange now, so the table stays as small as the
  // number of requests in progress. Marked only where the finish does not say it all: a client
  // gone first (the request may go on to a nested instance), a response Node did not announce.
  // (`announced` rather than a read of `res`: each one misses V8's caches, see arrive().)
  if (announced) byResponse.delete(res);
  else byResponse.set(res, LOGGED);
  try {
    // What was sent is read before any hook runs: a hook that changes `req` or `res` (or
    // `res._header`) cannot change the record.
    const captured = describe(exchange, res);
    const { hooks, reportHook } = instance;
    if (skips(hooks, reportHook, req, res)) return;
    const extras = hookValues(hooks, reportHook, req, res);
    let written: { readonly data: Buffer; readonly length: number };
    try {
      written = writeRecord(captured, instance.record, extras);
    } catch (err) {
      if (extras === undefined) throw err;
      // The hooks' values passed their check alone, but not in the record (nested too deep
      // under their path, say): the record goes without them rather than not at all.
      instance.reportHook(
        'record',
        new Error(
          `${PACKAGE}: the record could not be written with the values of consumer and customFields, and was sent without them: ${thrownText(err)}`,
          { cause: err },
        ),
      );
      written = writeRecord(captured, instance.record, undefined);
    }
    instance.sink.pushBytes(written.data, written.length);
  } catch (err) {
    // An event listener: a throw here would crash the app.
    instance.reportInternal(err);
  }
}

function describe(exchange: LiveExchange, res: TrackedResponse): CapturedExchange {
  const { req, socket, sent } = exchange;
  const route = req.route;
  const trusting = trustsProxy(req);
  // What the client sent: from Node's parser, before any middleware could change it, when Node
  // announced the request; else as `req` has it now.
  const request = sent ?? sentRequest(req, req.originalUrl ?? req.url ?? '/');
  const { rawHeaders } = request;
  const response = sentResponse(res, sent !== null, exchange.responseBytes - exchange.informationalBytes);
  return {
    method: request.method,
    url: request.url,
    httpVersion: request.httpVersion,
    rawHeaders,
    requestBodyBytes: exchange.bodyBytes,
    scheme:
      (trusting ? expressValue(req, 'protocol') : undefined) ??
      (sent === null ? pseudoHeader(req, 'scheme') : undefined) ??
      ((socket as { encrypted?: boolean }).encrypted ? 'https' : 'http'),
    host:
      (sent !== null ? rawHeader(rawHeaders, 'host') : (req.headers.host ?? pseudoHeader(req, 'authority'))) ??
      exchange.localHost ??
      marksBySocket.get(socket)?.localHost ??
      localHost(socket),
    startedAt: exchange.startedAt,
    arrivedAt: exchange.arrivedAt,
    // A head that never went out has no time it went out. One that went out before the request
    // reached the logger (a middleware in front wrote it) took none of the app's time after it.
    headersAt:
      response === null || exchange.headersAt === null ? null : Math.max(exchange.headersAt, exchange.arrivedAt),
    finishedAt: exchange.endedAt,
    response,
    responseBytes: exchange.responseBytes,
    clientIp: (trusting ? expressValue(req, 'ip') : undefined) ?? exchange.remoteAddress,
    route:
      route && route.path !== undefined
        ? { path: routePath(route.path), baseUrl: baseUrl(req, exchange, route) }
        : null,
    // What arrived, as `request.headers` has it: not a value the app put in `req.headers`.
    requestId: joinedHeaderText(rawHeaders, REQUEST_ID),
  };
}

/**
 * `:scheme` or `:authority` of a request made by the HTTP/2 compatibility API, which has no Host
 * header, and whose socket is a stand-in that does not say it is encrypted.
 */
function pseudoHeader(req: ExpressLikeRequest, name: 'scheme' | 'authority'): string | undefined {
  const value = (req as { [key in typeof name]?: unknown })[name];
  return typeof value === 'string' && value.length > 0 ? value : undefined;
}

/** `address:port` of the socket's own end, for a request without a Host header (HTTP/1.0). */
function localHost(socket: Socket): string {
  const address = socket.localAddress ?? 'localhost';
  // An IPv6 address goes in brackets in a URL's host.
  return `${address.includes(':') ? `[${address}]` : address}:${socket.localPort ?? ''}`;
}

/**
 * The status and head of a response, or null when no head went out. From Node's HTTP/1 server
 * (`fromNode`) the head text says both: one read of a response whose map is its own (see
 * arrive()) rather than three.
 */
function sentResponse(res: TrackedResponse, fromNode: boolean, bytes: number): CapturedResponse | null {
  if (fromNode) {
    const head = res._header;
    // `_header` is made by writeHead(), before anything is sent: the head went out only if the
    // socket took at least its bytes (one per character: Node writes heads as latin1) beyond
    // the 1xx responses before it, which `bytes` leaves out. Not `_headerSent`: it is also set for
    // a head written to a socket Node itself had already ended (its 400 to a request cut short),
    // and each read of a response costs (see arrive()).
    if (typeof head !== 'string' || head.length === 0 || bytes < head.length) return null;
    return { status: statusOf(head) ?? res.statusCode, head, headers: null };
  }
  // res.statusCode is 200 by default even when nothing was sent: only a sent head has a status.
  if (!res.headersSent) return null;
  const head = typeof res._header === 'string' ? res._header : null;
  // A double made for tests may have no getHeaders(): the record still stands, without headers.
  const headers = head !== null ? null : typeof res.getHeaders === 'function' ? res.getHeaders() : {};
  return { status: res.statusCode, head, headers };
}

/** The status code of a head's status line ("HTTP/1.1 200 OK"), or null if it has none. */
function statusOf(head: string): number | null {
  const at = head.indexOf(' ');
  if (at === -1 || at + 4 > head.length) return null;
  let status = 0;
  for (let i = at + 1; i < at + 4; i++) {
    const digit = head.charCodeAt(i) - 0x30;
    if (digit < 0 || digit > 9) return null;
    status = status * 10 + digit;
  }
  return status;
}

/**
 * The route's mount path: `req.baseUrl` when Express ran the route, if it was seen to (see
 * routehooks.ts). Otherwise, as the request has it at the finish. Express restores `req.baseUrl`
 * when the request leaves a router, while `req.route` stays the router's: the innermost
 * instance's mount point is then the better answer.
 */
function baseUrl(req: ExpressLikeRequest, exchange: LiveExchange, route: object): string {
  if (exchange.routeRun === route) return exchange.routeBase;
  // Run by a router whose layers are not hooked yet: they are for the requests after this one.
  if (shared !== null) hookRouteClass(route, shared.routed);
  // An app may set anything there.
  const atFinish = typeof req.baseUrl === 'string' ? req.baseUrl : '';
  return exchange.mountedAt.length > atFinish.length ? exchange.mountedAt : atFinish;
}

/** Express route paths are strings, but may be a RegExp or an array of either. */
function routePath(path: unknown): string {
  if (Array.isArray(path)) return path.map(routePath).join(',');
  return path instanceof RegExp ? path.toString() : typeof path === 'string' ? path : (JSON.stringify(path) ?? '');
}

/**
 * Whether Express's `trust proxy` is on. Off (the default), `req.ip` and `req.protocol` are the
 * socket's address and TLS state, read directly for less work per request.
 */
function trustsProxy(req: ExpressLikeRequest): boolean {
  try {
    // Express keeps `app` on the prototype it gives each request: read there, where the map is
    // shared and the load hits V8's cache (see arrive()).
    const app = (Object.getPrototypeOf(req) as ExpressLikeRequest | null)?.app ?? req.app;
    return Boolean(app?.get?.('trust proxy'));
  } catch {
    return false;
  }
}

/** Reads an Express getter (`req.ip`, `req.protocol`), which honours `trust proxy`. */
function expressValue(req: ExpressLikeRequest, name: 'ip' | 'protocol'): string | undefined {
  try {
    const value = req[name];
    return typeof value === 'string' && value.length > 0 ? value : undefined;
  } catch {
    return undefined;
  }
}
