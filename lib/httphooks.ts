/**
 * The hooks on Node's HTTP server that the capture needs, set once per process and shared by
 * every load of this package: `writeHead` and the senders of informational responses wrapped on
 * `http.ServerResponse.prototype`, and Node's `http.server.response.finish` and
 * `http.server.request.start` announcements subscribed. Express's routers report here too, through
 * the hook routehooks.ts sets on them.
 *
 * Node's objects outlive any one load of the package. A test runner that gives each test file a
 * module registry of its own (Jest) loads it again for each file: with hooks of its own per load,
 * never removed, every file's whole environment stayed alive (about 5 MB each, in a run of 40
 * files) and every response went through one more layer per file. Each load registers what it
 * does at each hook here: held while it has open instances, and weakly once they are closed, so
 * that a load nothing else holds any more is collected and its entry dropped. (Weakly always would
 * cost a `WeakRef#deref()` per load at each hook: 7 k instructions per request in the benchmark
 * app, 1 %.) The hooks themselves are the first load's.
 */
import diagnostics from 'node:diagnostics_channel';
import { ServerResponse, type IncomingMessage } from 'node:http';

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
  /** An Express router is about to run `route`'s handlers for `req` (see routehooks.ts). */
  route(req: IncomingMessage, res: ServerResponse, route: object): void;
}

/** A load's place in the process's hooks. */
export interface Registration {
  /**
   * Whether the load has open instances: then it is held, and requests are announced to it.
   * While no load has, the process is not subscribed to requests: one whose loggers are all
   * closed pays nothing per request.
   */
  setOpen(open: boolean): void;
}

export type WriteHead = ServerResponse['writeHead'];

interface HttpHooks {
  /** The wrapper on `http.ServerResponse.prototype.writeHead`. */
  readonly writeHead: WriteHead;
  /** Tells every load that a router is about to run a route's handlers. */
  readonly routed: LoadHooks['route'];
  register(load: LoadHooks): Registration;
}

interface Entry {
  readonly weak: WeakRef<LoadHooks>;
  /** The load while it has open instances; else null, and it is reached through `weak`. */
  open: LoadHooks | null;
}

/**
 * Where the hooks are kept: on the prototype they wrap, which every load sees (a module registry
 * of its own does not give a test file its own `node:http`). `Symbol.for` is shared across them
 * too. The number changes with what LoadHooks and Registration are.
 */
const KEY = Symbol.for('express-tcplog.httpHooks.3');

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
  let openLoads = 0;
  /**
   * The load, when there is one, with open instances: the hooks call it directly (as a process
   * with one logging app has it), without the loop over the entries. Else null.
   */
  let sole: LoadHooks | null = null;

  function updateSole(): void {
    sole = entries.length === 1 ? (entries[0] as Entry).open : null;
  }
  // A channel lives as long as its subscription: kept here.
  const finished = diagnostics.channel('http.server.response.finish');
  const started = diagnostics.channel('http.server.request.start');

  let pruning = false;

  /** Drops the entries of loads that were collected. */
  function prune(): void {
    pruning = false;
    for (let i = entries.length - 1; i >= 0; i--) {
      const entry = entries[i] as Entry;
      if (entry.open === null && entry.weak.deref() === undefined) entries.splice(i, 1);
    }
    updateSole();
  }

  /**
   * Calls `call` for each load still alive (only those with open instances, if `openOnly`). A
   * throw reaches the process as a diagnostics channel's subscriber's would, after the others.
   */
  function each<A, B, C>(openOnly: boolean, call: (load: LoadHooks, a: A, b: B, c: C) => void, a: A, b: B, c: C): void {
    let stale = false;
    for (const entry of entries) {
      if (openOnly && entry.open === null) continue;
      const load = entry.open ?? entry.weak.deref();
      if (load === undefined) {
        stale = true;
        continue;
      }
      try {
        call(load, a, b, c);
      } catch (err) {
        process.nextTick(rethrow, err);
      }
    }
    if (stale) schedulePrune();
  }

  /**
   * After the announcement under way, if any: unsubscribing in the middle of one could make Node
   * skip another subscriber of the channel for that message, and dropping entries would make the
   * loop over them skip one. A promise's job rather than queueMicrotask(), which a test runner's
   * fake timers may hold back.
   */
  function schedulePrune(): void {
    if (pruning) return;
    pruning = true;
    void Promise.resolve().then(prune);
  }

  function setOpen(entry: Entry, load: LoadHooks, open: boolean): void {
    if ((entry.open !== null) === open) return;
    entry.open = open ? load : null;
    updateSole();
    if (open && openLoads++ === 0) started.subscribe(onRequest);
    else if (!open && --openLoads === 0) started.unsubscribe(onRequest);
  }

  function onRequest(message: unknown): void {
    if (sole !== null) sole.request(message);
    else each(true, announceRequest, message, undefined, undefined);
  }

  // Never undone: exchanges already made count on them, and with no load alive they cost a loop
  // over nothing per response.
  finished.subscribe(function onFinish(message: unknown): void {
    if (sole !== null) sole.finish(message);
    else each(false, announceFinish, message, undefined, undefined);
  });
  // eslint-disable-next-line @typescript-eslint/unbound-method -- applied to `this` below
  const nodeWriteHead = prototype.writeHead;
  const hook = function writeHead(this: ServerResponse, ...args: unknown[]): unknown {
    if (sole !== null) sole.head(this);
    else each(false, noteHead, this, undefined, undefined);
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
        if (sent > 0) each(false, noteInformational, this, sent, undefined);
      }
    };
  }

  return {
    writeHead: hook,
    routed(req: IncomingMessage, res: ServerResponse, route: object): void {
      if (sole !== null) sole.route(req, res, route);
      else each(false, noteRoute, req, res, route);
    },
    register(load: LoadHooks): Registration {
      schedulePrune();
      const entry: Entry = { weak: new WeakRef(load), open: null };
      entries.push(entry);
      updateSole();
      // Held by the load alone (it holds the load, too): the entry holds it only while open.
      return {
        setOpen(open: boolean): void {
          setOpen(entry, load, open);
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

function noteRoute(load: LoadHooks, req: IncomingMessage, res: ServerResponse, route: object): void {
  load.route(req, res, route);
}

function rethrow(err: unknown): never {
  throw err;
}
