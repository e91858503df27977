/**
 * The hooks on Node's HTTP server that the capture needs, set once per process and shared by
 * every load of this package: `writeHead` and the senders of informational responses wrapped on
 * `http.ServerResponse.prototype`, and Node's `http.server.response.finish` and
 * `http.server.request.start` announcements subscribed.
 *
 * Node's objects outlive any one load of the package. A test runner that gives each test file a
 * module registry of its own (Jest) loads it again for each file: with hooks of its own per load,
 * never removed, every file's whole environment stayed alive (about 5 MB each, in a run of 40
 * files) and every response went through one more layer per file. Each load registers what it
 * does at each hook here, held weakly: a load nothing else holds any more is collected, and its
 * entry dropped. The hooks themselves are the first load's.
 */
import diagnostics from 'node:diagnostics_channel';
import { ServerResponse } from 'node:http';

/** What one load of the package does at each hook. None of them may throw. */
export interface LoadHooks {
  /** A response's head is being made (`writeHead`): before it is. */
  head(res: ServerResponse): void;
  /** A response sent `bytes` of informational responses (`100`, `102`, `103`). */
  informational(res: ServerResponse, bytes: number): void;
  /** Node announced a finished response. */
  finish(message: unknown): void;
  /** Node announced a request, before the app sees it: only while the load asks for them. */
  request(message: unknown): void;
}

/** A load's place in the process's hooks. */
export interface Registration {
  /**
   * Whether the load wants requests announced (it has open instances). While no load does, the
   * process is not subscribed: one whose loggers are all closed pays nothing per request.
   */
  wantRequests(wanted: boolean): void;
}

export type WriteHead = ServerResponse['writeHead'];

interface HttpHooks {
  /** The wrapper on `http.ServerResponse.prototype.writeHead`. */
  readonly writeHead: WriteHead;
  register(load: LoadHooks): Registration;
}

interface Entry {
  readonly load: WeakRef<LoadHooks>;
  requests: boolean;
}

/**
 * Where the hooks are kept: on the prototype they wrap, which every load sees (a module registry
 * of its own does not give a test file its own `node:http`). `Symbol.for` is shared across them
 * too. The number changes with what LoadHooks and Registration are.
 */
const KEY = Symbol.for('express-tcplog.httpHooks.1');

/** The process's hooks, made by the first load that asks. */
export function httpHooks(): HttpHooks {
  const prototype = ServerResponse.prototype as ServerResponse & { [KEY]?: HttpHooks };
  let hooks = prototype[KEY];
  if (hooks === undefined) {
    hooks = install(prototype);
    Object.defineProperty(prototype, KEY, { value: hooks });
  }
  return hooks;
}

function install(prototype: typeof ServerResponse.prototype): HttpHooks {
  const entries: Entry[] = [];
  let requestsWanted = 0;
  // A channel lives as long as its subscription: kept here.
  const finished = diagnostics.channel('http.server.response.finish');
  const started = diagnostics.channel('http.server.request.start');

  let pruning = false;

  /** Drops the entries of loads that were collected. */
  function prune(): void {
    pruning = false;
    for (let i = entries.length - 1; i >= 0; i--) {
      const entry = entries[i] as Entry;
      if (entry.load.deref() !== undefined) continue;
      entries.splice(i, 1);
      if (entry.requests) wantRequests(entry, false);
    }
  }

  /**
   * Calls `call` for each load still alive (only those that want requests, if `requestsOnly`).
   * A throw reaches the process as a diagnostics channel's subscriber's would, after the others.
   */
  function each<A, B>(requestsOnly: boolean, call: (load: LoadHooks, a: A, b: B) => void, a: A, b: B): void {
    let stale = false;
    for (const entry of entries) {
      if (requestsOnly && !entry.requests) continue;
      const load = entry.load.deref();
      if (load === undefined) {
        stale = true;
        continue;
      }
      try {
        call(load, a, b);
      } catch (err) {
        process.nextTick(rethrow, err);
      }
    }
    // After the announcement: unsubscribing in the middle of one could make Node skip another
    // subscriber of the channel for that message.
    if (stale && !pruning) {
      pruning = true;
      queueMicrotask(prune);
    }
  }

  function wantRequests(entry: Entry, wanted: boolean): void {
    if (entry.requests === wanted) return;
    entry.requests = wanted;
    if (wanted && requestsWanted++ === 0) started.subscribe(onRequest);
    else if (!wanted && --requestsWanted === 0) started.unsubscribe(onRequest);
  }

  function onRequest(message: unknown): void {
    each(true, announceRequest, message, undefined);
  }

  // Never undone: exchanges already made count on them, and with no load alive they cost a loop
  // over nothing per response.
  finished.subscribe(function onFinish(message: unknown): void {
    each(false, announceFinish, message, undefined);
  });
  // eslint-disable-next-line @typescript-eslint/unbound-method -- applied to `this` below
  const nodeWriteHead = prototype.writeHead;
  const hook = function writeHead(this: ServerResponse, ...args: unknown[]): unknown {
    each(false, noteHead, this, undefined);
    return Reflect.apply(nodeWriteHead, this, args) as unknown;
  } as WriteHead;
  prototype.writeHead = hook;
  for (const name of ['writeContinue', 'writeProcessing', 'writeEarlyHints'] as const) {
    // eslint-disable-next-line @typescript-eslint/unbound-method -- applied to `this` below
    const original = prototype[name];
    // Only these calls pay for it, and most responses send no 1xx.
    prototype[name] = function informational(this: ServerResponse, ...args: unknown[]): unknown {
      const before = offered(this);
      try {
        return Reflect.apply(original, this, args) as unknown;
      } finally {
        const sent = offered(this) - before;
        if (sent > 0) each(false, noteInformational, this, sent);
      }
    };
  }

  return {
    writeHead: hook,
    register(load: LoadHooks): Registration {
      prune();
      const entry: Entry = { load: new WeakRef(load), requests: false };
      entries.push(entry);
      return {
        wantRequests(wanted: boolean): void {
          wantRequests(entry, wanted);
        },
      };
    },
  };
}

/**
 * Bytes a response has handed on so far: written to the socket, or queued on the response behind
 * an earlier one on the connection. Either way the sum grows by what a call sent.
 */
function offered(res: ServerResponse): number {
  return (res.socket?.bytesWritten ?? 0) + ((res as { outputSize?: unknown }).outputSize as number);
}

function announceRequest(load: LoadHooks, message: unknown): void {
  load.request(message);
}

function announceFinish(load: LoadHooks, message: unknown): void {
  load.finish(message);
}

function noteHead(load: LoadHooks, res: ServerResponse): void {
  load.head(res);
}

function noteInformational(load: LoadHooks, res: ServerResponse, bytes: number): void {
  load.informational(res, bytes);
}

function rethrow(err: unknown): never {
  throw err;
}
