/**
 * express-tcplog: `tcplog(options)` returns an Express/Connect middleware that logs every request
 * as one Kong tcp-log JSON record over a shared keepalive TCP/TLS connection.
 *
 * This file is the CommonJS entry (`require()` returns the factory itself); `index.mts` is the ESM
 * entry over the same build, so CJS and ESM users share one client per destination.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import {
  TcpLogDeliveryError,
  PACKAGE,
  asError,
  TcpLogOptionRangeError,
  TcpLogOptionTypeError,
  tell,
  thrownText,
  type ErrorHandler,
} from './errors.js';
import { createHandler, releaseHandler, type Handler, type Instance, type Next } from './middleware.js';
import { parseOptions } from './options.js';
import type * as Options from './options.js';
import type * as Record from './record.js';
import type * as Stats from './stats.js';
import { acquireClient, releaseClient } from './registry.js';

/** The middleware: `(req, res, next)` plus `close()` and `stats()`. */
interface TcpLogMiddleware {
  (req: IncomingMessage, res: ServerResponse, next: Next): void;
  /**
   * Flushes what is buffered (bounded by `timeout`), then releases this instance's hold on the
   * connection; requests that finish afterwards are not logged by it. Idempotent.
   */
  close(): Promise<void>;
  /** Counters of this instance's destination (shared by every instance pointing there). */
  stats(): Stats.TcpLogStats;
}

interface TcpLogFactory {
  /**
   * Logs to the server given by `options` (`host` and `port`), or to the first healthy one of
   * `options.servers`. One signature for both, so that a wrong option is named in type errors.
   */
  (options: Options.TcpLogOptions | Options.TcpLogServersOptions): TcpLogMiddleware;
  /** Logs to `'tcp://host:port'` or `'tls://host:port'`, with more options beside. */
  (connection: string, options?: Options.TcpLogMoreOptions): TcpLogMiddleware;
  /** The factory itself, for `const { tcplog } = require('express-tcplog')`. */
  readonly tcplog: TcpLogFactory;
  /** The factory itself, for tools that read `.default` of a CommonJS module. */
  readonly default: TcpLogFactory;
  /** The class of the errors given to `onError`: `code` (`ECONNREFUSED`, `ESTALLED`...) and `destination`. */
  readonly TcpLogDeliveryError: typeof TcpLogDeliveryError;
  /** Thrown by the factory for an option of the wrong type. */
  readonly TcpLogOptionTypeError: typeof TcpLogOptionTypeError;
  /** Thrown by the factory for an option out of range. */
  readonly TcpLogOptionRangeError: typeof TcpLogOptionRangeError;
}

const MISUSE =
  `${PACKAGE}: tcplog was used as a middleware without being called (app.use(tcplog), http.createServer(tcplog)). ` +
  `Write app.use(tcplog({ host: '127.0.0.1', port: 9999 })) or app.use(tcplog('tcp://127.0.0.1:9999')).`;

/**
 * `app.use(tcplog)` makes Express call the factory as a middleware: (req, res, next);
 * `http.createServer(tcplog)` as a request listener: (req, res).
 */
function looksLikeRequest(first: unknown, second: unknown): boolean {
  try {
    return (
      typeof first === 'object' &&
      first !== null &&
      'headers' in first &&
      'method' in first &&
      typeof second === 'object' &&
      second !== null &&
      'setHeader' in second
    );
  } catch {
    // A Proxy whose `has` trap throws: not a request; parseOptions() explains what it is.
    return false;
  }
}

/** To the user's onError (which may not throw into us), else as a process warning when given one. */
function notify(onError: ErrorHandler | null, error: Error, warning: string | null, code: string): void {
  if (onError) tell(onError, error);
  else if (warning !== null) {
    process.emitWarning(warning, { code });
  }
}

function createTcplog(target: unknown, more?: unknown, ...rest: unknown[]): TcpLogMiddleware {
  if (looksLikeRequest(target, more)) {
    // Failing the request through next() shows the mistake on the first request instead of
    // hanging it. With no next() to fail it through, the listener's throw is the only way to say it.
    if (typeof rest[0] !== 'function') throw new TypeError(MISUSE);
    (rest[0] as Next)(new TypeError(MISUSE));
    return undefined as unknown as TcpLogMiddleware;
  }
  if (rest.length > 0) {
    throw new TypeError(
      `${PACKAGE}: tcplog() takes at most two arguments (a connection string and options); got ${2 + rest.length}`,
    );
  }
  const settings = parseOptions(target, more);
  const client = acquireClient(settings.destination, settings.onError);
  let closing: Promise<void> | null = null;
  let reportedInternal = false;

  const reportedHooks = new Set<string>();
  const instance: Instance = {
    record: settings.record,
    hooks: settings.hooks,
    sink: client,
    closed: false,
    reportInternal(err: unknown): void {
      const error = asError(err);
      const warning = reportedInternal
        ? null
        : `${PACKAGE}: a record could not be built and was skipped: ${thrownText(err)}`;
      reportedInternal = true;
      notify(settings.onError, error, warning, 'EXPRESS_TCPLOG_INTERNAL');
    },
    reportHook(hook: string, error: Error): void {
      // Once per hook: a function that throws on every request must not flood the logs.
      if (reportedHooks.has(hook)) return;
      reportedHooks.add(hook);
      notify(settings.onError, error, error.message, 'EXPRESS_TCPLOG_HOOK');
    },
  };

  const handler: Handler = createHandler(instance);
  const middleware = handler as TcpLogMiddleware;
  middleware.close = function close(): Promise<void> {
    if (!closing) {
      instance.closed = true;
      releaseHandler();
      closing = (async function flushAndRelease() {
        try {
          await client.flush(settings.destination.timeout);
        } catch {
          // Nothing more to wait for: the instance's hold on the client is released all the same.
        }
        const dropped = releaseClient(client, settings.onError);
        if (dropped > 0) {
          const error = new TcpLogDeliveryError(
            settings.destination.label,
            'EDROPPED',
            `close() gave up on ${dropped} records after ${settings.destination.timeout} ms`,
          );
          notify(settings.onError, error, error.message, 'EXPRESS_TCPLOG_DELIVERY');
        }
      })();
    }
    return closing;
  };
  middleware.stats = function stats(): Stats.TcpLogStats {
    return client.stats();
  };
  return middleware;
}

const tcplog = createTcplog as TcpLogFactory;
Object.defineProperties(tcplog, {
  tcplog: { value: tcplog, enumerable: true },
  default: { value: tcplog, enumerable: false },
  TcpLogDeliveryError: { value: TcpLogDeliveryError, enumerable: false },
  TcpLogOptionTypeError: { value: TcpLogOptionTypeError, enumerable: false },
  TcpLogOptionRangeError: { value: TcpLogOptionRangeError, enumerable: false },
});

// Types only: `import tcplog = require('express-tcplog'); let o: tcplog.TcpLogOptions`.
declare namespace tcplog {
  export type TcpLogOptions = Options.TcpLogOptions;
  export type TcpLogMoreOptions = Options.TcpLogMoreOptions;
  export type TcpLogServersOptions = Options.TcpLogServersOptions;
  export type ServerOption = Options.ServerOption;
  export type TcpLogStats = Stats.TcpLogStats;
  export type TcpLogRecord = Record.TcpLogRecord;
  export type Middleware = TcpLogMiddleware;
  export type { TcpLogMiddleware };
  export type Factory = TcpLogFactory;
  export type DeliveryError = TcpLogDeliveryError;
  export type TcpLogDeliveryError = import('./errors.js').TcpLogDeliveryError;
  export type TcpLogOptionTypeError = import('./errors.js').TcpLogOptionTypeError;
  export type TcpLogOptionRangeError = import('./errors.js').TcpLogOptionRangeError;
}

export = tcplog;
