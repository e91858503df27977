/**
 * Request capture: what must be read while the request is live (arrival time, address, socket
 * byte marks), the time the head went out (on-headers) and the finish (on-finished). The record
 * is built and handed to the sink after the response finishes, off the request path.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { Readable } from 'node:stream';
import onFinished from 'on-finished';
import onHeaders from 'on-headers';
import type { RecordSink } from './client.js';
import { frame } from './framing.js';
import { PACKAGE } from './errors.js';
import type { Hooks, RecordSettings } from './options.js';
import {
  serializeRecord,
  type CapturedExchange,
  type CapturedResponse,
  type CustomValue,
  type Extras,
} from './record.js';

/** What Express (4 or 5) adds to a request; Connect and bare `http` have none of it. */
interface ExpressLikeRequest extends IncomingMessage {
  originalUrl?: string;
  ip?: string;
  protocol?: string;
  baseUrl?: string;
  route?: { path?: unknown };
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
  readonly reportHook: (hook: string, err: Error) => void;
}

export type Next = (err?: unknown) => void;
export type Handler = (req: IncomingMessage, res: ServerResponse, next: Next) => void;

const kExchange = Symbol('express-tcplog.exchange');
const kSocket = Symbol('express-tcplog.socket');

/** Per-socket marks, so sizes stay right with keep-alive and pipelining. */
interface SocketMarks {
  /** Logged exchanges on this socket that have not finished. */
  open: number;
  /** `bytesWritten` when the last logged response on this socket finished. */
  lastEnd: number;
}

type TrackedSocket = Socket & { [kSocket]?: SocketMarks };

interface LiveExchange {
  instance: Instance;
  readonly req: ExpressLikeRequest;
  readonly socket: TrackedSocket;
  readonly startedAt: number;
  readonly arrivedAt: number;
  headersAt: number | null;
  bodyBytes: number;
  /** `bytesWritten` at arrival, or undefined when an earlier response on the socket was still open. */
  readonly writtenAtStart: number | undefined;
  readonly remoteAddress: string | undefined;
  readonly push: Readable['push'];
  /** When the response finished (or the exchange was aborted) and the bytes it wrote. */
  end: { readonly at: number; readonly responseBytes: number } | null;
  /** `req.baseUrl` when the innermost instance saw the request. */
  mountedAt: string;
}

type TrackedRequest = ExpressLikeRequest & { [kExchange]?: LiveExchange };
type TrackedResponse = ServerResponse & { [kExchange]?: LiveExchange; _header?: unknown };

export function createHandler(instance: Instance): Handler {
  return function tcplogMiddleware(req: IncomingMessage, res: ServerResponse, next: Next): void {
    try {
      capture(instance, req, res);
    } catch (err) {
      instance.reportInternal(err);
    }
    next();
  };
}

function capture(instance: Instance, req: TrackedRequest, res: TrackedResponse): void {
  const existing = req[kExchange];
  if (existing) {
    // Nested instances (app-level, then router-level): one record, with the innermost's settings.
    if (!instance.closed) {
      existing.instance = instance;
      existing.mountedAt = req.baseUrl ?? '';
    }
    return;
  }
  if (instance.closed) return;
  const socket = req.socket as TrackedSocket;
  let marks = socket[kSocket];
  if (!marks) {
    marks = { open: 0, lastEnd: 0 };
    socket[kSocket] = marks;
  }
  const exchange: LiveExchange = {
    instance,
    req,
    socket,
    startedAt: Date.now(),
    arrivedAt: performance.now(),
    headersAt: null,
    bodyBytes: initialBodyBytes(req),
    writtenAtStart: marks.open === 0 ? socket.bytesWritten : undefined,
    // Read now: once the socket is gone the address may be too.
    remoteAddress: socket.remoteAddress,
    // Called later as exchange.push.call(req, ...): the original, unbound on purpose.
    // eslint-disable-next-line @typescript-eslint/unbound-method
    push: req.push,
    end: null,
    mountedAt: req.baseUrl ?? '',
  };
  marks.open++;
  req[kExchange] = exchange;
  res[kExchange] = exchange;
  if (!req.complete) req.push = countingPush;
  onHeaders(res, markHeaders);
  // Prepended: Node's own 'finish' listener hands the socket to the next pipelined response,
  // whose bytes must not be counted as this one's.
  res.prependOnceListener('finish', markFinish);
  onFinished(res, onResponseFinished);
}

/**
 * The body bytes already received when the middleware runs (a router-level instance may come
 * after a body parser). The rest is counted as the parser pushes it: listening for 'data' would
 * start the body flowing and take it from the app.
 */
function initialBodyBytes(req: IncomingMessage): number {
  if (!req.complete) return req.readableLength;
  const declared = Number(req.headers['content-length']);
  return Number.isSafeInteger(declared) && declared >= 0 ? declared : req.readableLength;
}

function countingPush(this: TrackedRequest, chunk: unknown, encoding?: BufferEncoding): boolean {
  const exchange = this[kExchange];
  if (exchange && chunk !== null && chunk !== undefined) {
    exchange.bodyBytes += (chunk as { length?: number }).length ?? 0;
  }
  return (exchange?.push ?? Readable.prototype.push).call(this, chunk, encoding);
}

function markHeaders(this: TrackedResponse): void {
  const exchange = this[kExchange];
  if (exchange) exchange.headersAt = performance.now();
}

function markFinish(this: TrackedResponse): void {
  const exchange = this[kExchange];
  if (exchange) settle(exchange);
}

/** Takes the end marks once: at 'finish', or when on-finished reports an aborted exchange. */
function settle(exchange: LiveExchange): void {
  if (exchange.end) return;
  const { socket } = exchange;
  const marks = socket[kSocket];
  const written = socket.bytesWritten;
  const start = exchange.writtenAtStart ?? marks?.lastEnd ?? 0;
  if (marks) {
    marks.open--;
    marks.lastEnd = written;
  }
  exchange.end = { at: performance.now(), responseBytes: written - start };
}

function onResponseFinished(_err: Error | null, res: TrackedResponse): void {
  const exchange = res[kExchange];
  if (!exchange) return;
  settle(exchange);
  const { instance, end, req } = exchange;
  if (instance.closed || !end) return;
  try {
    const { hooks } = instance;
    if (hooks.skip !== null) {
      const skip = hooks.skip;
      if (callHook(instance, 'skip', () => skip(req, res)) === true) return;
    }
    const extras = hooks.consumer !== null || hooks.customFields.length > 0 ? runHooks(instance, req, res) : undefined;
    const json = serializeRecord(describe(exchange, res, end.at, end.responseBytes), instance.record, extras);
    instance.sink.push(frame(json, instance.record.delimiter));
  } catch (err) {
    // on-finished calls back from the event loop: a throw here would crash the app.
    instance.reportInternal(err);
  }
}

const FAILED = Symbol('hook failed');

/** Calls a user function; a throw is reported once and never reaches the app. */
function callHook(instance: Instance, hook: string, call: () => unknown): unknown {
  try {
    return call();
  } catch (err) {
    instance.reportHook(
      hook,
      new Error(`${PACKAGE}: ${hook} threw: ${(err as Error)?.message ?? String(err)}`, { cause: err }),
    );
    return FAILED;
  }
}

/** A value JSON can write, or FAILED (reported): a BigInt or a cycle would lose the whole record. */
function serializable(instance: Instance, hook: string, value: unknown): unknown {
  try {
    JSON.stringify(value);
    return value;
  } catch (err) {
    instance.reportHook(
      hook,
      new Error(`${PACKAGE}: ${hook} returned a value JSON cannot write: ${(err as Error).message}`),
    );
    return FAILED;
  }
}

function runHooks(instance: Instance, req: ExpressLikeRequest, res: ServerResponse): Extras {
  const { hooks } = instance;
  let consumer: unknown;
  if (hooks.consumer !== null) {
    const find = hooks.consumer;
    const value = callHook(instance, 'consumer', () => find(req));
    if (typeof value === 'string') consumer = { id: value };
    else if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
      consumer = serializable(instance, 'consumer', value);
    } else if (value !== undefined && value !== FAILED) {
      instance.reportHook('consumer', new Error(`${PACKAGE}: consumer must return an object, a string or undefined`));
    }
    if (consumer === FAILED) consumer = undefined;
  }
  const custom: CustomValue[] = [];
  for (const field of hooks.customFields) {
    const hook = `customFields[${JSON.stringify(field.name)}]`;
    let value = callHook(instance, hook, () => field.fn(req, res));
    if (value !== undefined && value !== FAILED) value = serializable(instance, hook, value);
    // A failing field is left out; the rest of the record stands.
    if (value !== FAILED) custom.push({ path: field.path, value });
  }
  return { consumer, custom };
}

function describe(
  exchange: LiveExchange,
  res: TrackedResponse,
  finishedAt: number,
  responseBytes: number,
): CapturedExchange {
  const { req, socket } = exchange;
  // res.statusCode is 200 by default even when nothing was sent: only a sent head has a status.
  let response: CapturedResponse | null = null;
  if (res.headersSent) {
    const head = typeof res._header === 'string' ? res._header : null;
    response = { status: res.statusCode, head, headers: head === null ? res.getHeaders() : null };
  }
  const route = req.route;
  return {
    method: req.method ?? 'GET',
    url: req.originalUrl ?? req.url ?? '/',
    httpVersion: req.httpVersion,
    rawHeaders: req.rawHeaders,
    requestBodyBytes: exchange.bodyBytes,
    scheme: expressValue(req, 'protocol') ?? ((socket as { encrypted?: boolean }).encrypted ? 'https' : 'http'),
    host: req.headers.host ?? `${socket.localAddress ?? 'localhost'}:${socket.localPort ?? ''}`,
    startedAt: exchange.startedAt,
    arrivedAt: exchange.arrivedAt,
    headersAt: exchange.headersAt,
    finishedAt,
    response,
    responseBytes,
    clientIp: expressValue(req, 'ip') ?? exchange.remoteAddress,
    route: route && route.path !== undefined ? { path: routePath(route.path), baseUrl: baseUrl(req, exchange) } : null,
    requestId: requestId(req),
  };
}

/**
 * The route's mount path. Express restores `req.baseUrl` when an error leaves a router, while
 * `req.route` stays the router's: the innermost instance's mount point is then the better answer.
 */
function baseUrl(req: ExpressLikeRequest, exchange: LiveExchange): string {
  const atFinish = req.baseUrl ?? '';
  return exchange.mountedAt.length > atFinish.length ? exchange.mountedAt : atFinish;
}

/** An incoming `x-request-id` (from a proxy or the client), logged as `request.id`. */
function requestId(req: IncomingMessage): string | undefined {
  const id = req.headers['x-request-id'];
  return typeof id === 'string' && id.length > 0 ? id : undefined;
}

/** Express route paths are strings, but may be a RegExp or an array of either. */
function routePath(path: unknown): string {
  if (Array.isArray(path)) return path.map(routePath).join(',');
  return path instanceof RegExp ? path.toString() : typeof path === 'string' ? path : (JSON.stringify(path) ?? '');
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
