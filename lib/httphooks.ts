/**
 * The hooks on Node's HTTP server that the capture needs, set once per process and shared by
 * every load of this package: `writeHead` and the senders of informational responses wrapped on
 * `http.ServerResponse.prototype`, and Node's `http.server.response.finish` and
 * `http.server.request.start` announcements subscribed.
 *
 * Node's objects outlive any one load of the package. A test runner that gives each test file a
 * module registry of its own (Jest) loads it again for each file: with hooks of its own per load,
 * never removed, every file's whole environment stayed alive (about 5 MB each, in a run of 40
 * files) and every response went through one more layer per file. Each load registers here, and
 * is held, and called at each hook, only while it has open instances: a load whose instances are
 * all closed has nothing left to log (a closed instance logs nothing, not even the requests it
 * had taken), and once nothing else holds it, it is collected. The hooks themselves are the first
 * load's.
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
  /** Node announced a request, before the app sees it. */
  request(message: unknown): void;
}

/** A load's place in the process's hooks. */
export interface Registration {
  /**
   * Whether the load has open instances: only then is it held and called at each hook. While no
   * load has, the process is not subscribed to requests, and the other hooks call nothing: one
   * whose loggers are all closed pays next to nothing per request.
   */
  setOpen(open: boolean): void;
}

export type WriteHead = ServerResponse['writeHead'];

interface HttpHooks {
  /** The wrapper on `http.ServerResponse.prototype.writeHead`. */
  readonly writeHead: WriteHead;
  register(load: LoadHooks): Registration;
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
  /** The loads with open instances. */
  const open: LoadHooks[] = [];
  /**
   * The load, when it is the only one with open instances (as in a process with one logging
   * app): the hooks call it directly, without the loop. Else null.
   */
  let sole: LoadHooks | null = null;
  // A channel lives as long as its subscription: kept here.
  const finished = diagnostics.channel('http.server.response.finish');
  const started = diagnostics.channel('http.server.request.start');

  /**
   * Calls `call` for each load with open instances. A throw reaches the process as a diagnostics
   * channel's subscriber's would, after the others. Over a copy: a hook may open or close a load.
   */
  function each<A, B>(call: (load: LoadHooks, a: A, b: B) => void, a: A, b: B): void {
    for (const load of open.slice()) {
      try {
        call(load, a, b);
      } catch (err) {
        process.nextTick(rethrow, err);
      }
    }
  }

  function setOpen(load: LoadHooks, opening: boolean): void {
    const at = open.indexOf(load);
    if (opening === (at !== -1)) return;
    if (opening) open.push(load);
    else open.splice(at, 1);
    sole = open.length === 1 ? (open[0] as LoadHooks) : null;
    if (opening && open.length === 1) started.subscribe(onRequest);
    else if (!opening && open.length === 0) started.unsubscribe(onRequest);
  }

  function onRequest(message: unknown): void {
    if (sole !== null) sole.request(message);
    else each(announceRequest, message, undefined);
  }

  // Never undone, as the wrappers are: other code may have wrapped them since.
  finished.subscribe(function onFinish(message: unknown): void {
    if (sole !== null) sole.finish(message);
    else each(announceFinish, message, undefined);
  });
  // eslint-disable-next-line @typescript-eslint/unbound-method -- applied to `this` below
  const nodeWriteHead = prototype.writeHead;
  const hook = function writeHead(this: ServerResponse, ...args: unknown[]): unknown {
    if (sole !== null) sole.head(this);
    else each(noteHead, this, undefined);
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
        if (sent > 0) each(noteInformational, this, sent);
      }
    };
  }

  return {
    writeHead: hook,
    register(load: LoadHooks): Registration {
      // Held by the load alone: the hooks hold the load only while it is open.
      return {
        setOpen(opening: boolean): void {
          setOpen(load, opening);
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
