/**
 * The shared TCP/TLS client: the whole socket lifecycle lives here. It connects lazily, writes
 * queued records in coalesced batches, honours backpressure, closes an idle connection after
 * `keepalive`, reconnects with backoff and jitter, and never lets an error or a handle reach the
 * app: sockets and timers are unref'd, errors go to the reporters and the counters.
 */
import net from 'node:net';
import tls from 'node:tls';
import { TcpLogDeliveryError } from './errors.js';
import type { DestinationSettings } from './options.js';
import { RecordQueue, type Batch } from './queue.js';

/** Where the middleware hands finished records; the client is one, a test double another. */
export interface RecordSink {
  /** Accepts one framed record. Never throws, never waits. */
  push(line: string): void;
}

/** Counters of one destination. `records === sent + dropped + buffered` at every moment. */
export interface TcpLogStats {
  /** Records handed to the client. */
  records: number;
  /** Records the socket accepted (write confirmed). */
  sent: number;
  /** Records given up: beyond `maxBufferBytes`, or still waiting when `close()` timed out. */
  dropped: number;
  /** Records waiting or in flight. */
  buffered: number;
  /** Bytes waiting or in flight. */
  bufferedBytes: number;
  /** Connections established so far. */
  connects: number;
  /** Connection problems so far (refused, reset, timed out, TLS refused...). */
  errors: number;
  /** Whether a connection is open now. */
  connected: boolean;
}

type Reporter = (err: Error) => void;

/** Bytes per write: big enough to coalesce thousands of records, small enough to keep latency. */
const BATCH_BYTES = 64 * 1024;
const BACKOFF_BASE_MS = 50;
const BACKOFF_CAP_MS = 5_000;

type State = 'idle' | 'connecting' | 'open' | 'ending' | 'waiting-retry' | 'closed';

export class TcpLogClient implements RecordSink {
  readonly settings: DestinationSettings;
  readonly #queue: RecordQueue;
  #state: State = 'idle';
  #socket: net.Socket | null = null;
  /** Batches written on the current socket whose callbacks have not fired, oldest first. */
  #inFlight: Batch[] = [];
  /** Whether the current connection had a write confirmed: a connection that never did is a failure. */
  #confirmed = false;
  #attempt = 0;
  #connects = 0;
  #errors = 0;
  #flushImmediate: NodeJS.Immediate | null = null;
  #connectTimer: NodeJS.Timeout | null = null;
  #retryTimer: NodeJS.Timeout | null = null;
  #stallTimer: NodeJS.Timeout | null = null;
  #reporters = new Set<Reporter>();
  /** Instances relying on the default report (once per outage). */
  #defaultReporters = 0;
  #failing = false;
  #droppedAtOutage = 0;
  /** Resolvers of pending flush() calls: while any wait, handles are ref'd so the flush completes. */
  #idleWaiters = new Set<() => void>();

  constructor(settings: DestinationSettings) {
    this.settings = settings;
    this.#queue = new RecordQueue(settings.maxBufferBytes);
  }

  /** Registers how one instance wants errors reported (`null`: the default warning). */
  addReporter(reporter: Reporter | null): void {
    if (reporter) this.#reporters.add(reporter);
    else this.#defaultReporters++;
  }

  removeReporter(reporter: Reporter | null): void {
    if (reporter) this.#reporters.delete(reporter);
    else this.#defaultReporters--;
  }

  push(line: string): void {
    if (this.#state === 'closed') {
      // A record finishing after the last instance closed: accounted for, not sent.
      this.#queue.push(line, Buffer.byteLength(line));
      this.#queue.dropWaiting();
      return;
    }
    this.#queue.push(line, Buffer.byteLength(line));
    this.#kick();
  }

  stats(): TcpLogStats {
    return {
      ...this.#queue.counts(),
      connects: this.#connects,
      errors: this.#errors,
      connected: this.#state === 'open',
    };
  }

  /**
   * Resolves once everything buffered has been confirmed by the socket, or after `timeoutMs`.
   * While it waits, the socket and timers are ref'd: a script that awaits close() at its end must
   * not exit before the flush it asked for.
   */
  flush(timeoutMs: number): Promise<boolean> {
    if (this.#queue.idle || this.#state === 'closed') return Promise.resolve(this.#queue.idle);
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(function flushTimedOut() {
        finish(false);
      }, timeoutMs);
      const finish = (done: boolean): void => {
        clearTimeout(timer);
        this.#idleWaiters.delete(onIdle);
        this.#refHandles();
        resolve(done);
      };
      const onIdle = (): void => finish(true);
      this.#idleWaiters.add(onIdle);
      this.#refHandles();
      this.#kick();
    });
  }

  /**
   * Ends the client for good: what is still waiting is dropped (and counted), the socket is ended
   * gracefully so written data still reaches the server. Idempotent. Returns the records dropped.
   */
  shutdown(): number {
    if (this.#state === 'closed') return 0;
    this.#state = 'closed';
    this.#clearTimers();
    const socket = this.#socket;
    // In-flight batches belong to a socket we stop watching: they are given up, not requeued.
    for (const batch of this.#inFlight) this.#queue.dropInFlight(batch);
    this.#inFlight = [];
    const dropped = this.#queue.dropWaiting();
    this.#socket = null;
    if (socket) {
      socket.removeAllListeners('close');
      socket.on('error', ignoreError);
      socket.end();
      socket.unref();
    }
    for (const wake of [...this.#idleWaiters]) wake();
    return dropped;
  }

  /** Moves things along after a push or a state change. */
  #kick(): void {
    switch (this.#state) {
      case 'idle':
        if (this.#queue.waiting > 0) this.#connect();
        break;
      case 'open':
        this.#scheduleFlush();
        break;
      default:
        // connecting, ending, waiting-retry: the records wait for the next connection.
        break;
    }
  }

  #connect(): void {
    this.#state = 'connecting';
    this.#confirmed = false;
    const { host, port, timeout } = this.settings;
    const tlsOptions = this.settings.tls;
    const socket = tlsOptions ? tls.connect({ ...tlsOptions, host, port }) : net.connect({ host, port });
    this.#socket = socket;
    // unref: logging must never keep the process alive (close() refs it while it flushes).
    if (this.#idleWaiters.size === 0) socket.unref();
    socket.setNoDelay(true);
    this.#connectTimer = setTimeout(() => {
      socket.destroy(
        new TcpLogDeliveryError(this.settings.label, 'ETIMEDOUT', `connect timed out after ${timeout} ms`),
      );
    }, timeout);
    this.#refTimer(this.#connectTimer);

    socket.once(tlsOptions ? 'secureConnect' : 'connect', () => this.#onOpen(socket));
    socket.on('error', (err: Error) => this.#onSocketError(socket, err));
    socket.on('end', function onServerEnd() {
      // The server closed its side (Kong's test server does after one line): anything written
      // from now on would be lost, so stop here and let 'close' reconnect.
      socket.destroy();
    });
    socket.on('close', () => this.#onClose(socket));
    socket.on('drain', () => {
      this.#clearStall();
      this.#scheduleFlush();
    });
    socket.on('timeout', () => this.#onIdle(socket));
  }

  #onOpen(socket: net.Socket): void {
    if (socket !== this.#socket) return;
    this.#clear('connect');
    this.#state = 'open';
    this.#connects++;
    if (this.settings.keepalive > 0) socket.setTimeout(this.settings.keepalive);
    if (this.#failing) this.#recovered();
    this.#flush();
  }

  #onSocketError(socket: net.Socket, err: Error): void {
    if (socket !== this.#socket) return;
    const code = (err as NodeJS.ErrnoException).code ?? 'ERR_SOCKET';
    const wrapped =
      err instanceof TcpLogDeliveryError ? err : new TcpLogDeliveryError(this.settings.label, code, err.message, err);
    this.#report(wrapped);
  }

  #onIdle(socket: net.Socket): void {
    if (socket !== this.#socket || this.#state !== 'open') return;
    if (!this.#queue.idle) return;
    this.#state = 'ending';
    socket.end();
  }

  #onClose(socket: net.Socket): void {
    if (socket !== this.#socket) return;
    const wasOpen = this.#state === 'open' || this.#state === 'ending';
    const worked = wasOpen && (this.#confirmed || this.#state === 'ending');
    this.#socket = null;
    this.#clearTimers();
    // Unconfirmed batches go back to the front, newest first so the order is kept.
    for (let i = this.#inFlight.length - 1; i >= 0; i--) {
      const batch = this.#inFlight[i];
      if (batch) this.#queue.requeue(batch);
    }
    this.#inFlight = [];
    if (this.#queue.waiting === 0) {
      this.#state = 'idle';
      this.#attempt = 0;
      this.#wakeIdle();
      return;
    }
    if (worked) {
      // A connection that delivered and then closed (idle close, server restart): go again now.
      this.#attempt = 0;
      this.#state = 'idle';
      this.#connect();
      return;
    }
    this.#attempt++;
    this.#state = 'waiting-retry';
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(this.#attempt - 1, 16));
    // Equal jitter: at least half the step, so a crowd of clients does not return in lockstep.
    const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      this.#state = 'idle';
      this.#kick();
    }, delay);
    this.#refTimer(this.#retryTimer);
  }

  #scheduleFlush(): void {
    if (this.#flushImmediate) return;
    // One flush per turn of the event loop: every record finished in this turn shares one write.
    // Not unref'd: an unref'd immediate waits for some other event to wake the loop (seen: seconds),
    // and a ref'd one cannot hold the process beyond this turn.
    this.#flushImmediate = setImmediate(() => {
      this.#flushImmediate = null;
      this.#flush();
    });
  }

  #flush(): void {
    const socket = this.#socket;
    if (!socket || this.#state !== 'open') return;
    while (!socket.writableNeedDrain) {
      const batch = this.#queue.take(BATCH_BYTES);
      if (!batch) break;
      this.#inFlight.push(batch);
      socket.write(batch.text, (err) => this.#onWritten(socket, batch, err));
    }
    if (socket.writableNeedDrain && !this.#stallTimer) {
      const { timeout, label } = this.settings;
      this.#stallTimer = setTimeout(() => {
        this.#stallTimer = null;
        socket.destroy(new TcpLogDeliveryError(label, 'ESTALLED', `write did not drain within ${timeout} ms`));
      }, timeout);
      this.#refTimer(this.#stallTimer);
    }
  }

  #onWritten(socket: net.Socket, batch: Batch, err: Error | null | undefined): void {
    // A failed write is settled by 'close', which requeues everything still in flight.
    if (err || socket !== this.#socket) return;
    const index = this.#inFlight.indexOf(batch);
    if (index === -1) return;
    this.#inFlight.splice(index, 1);
    this.#queue.sent(batch);
    this.#confirmed = true;
    if (this.#queue.idle) this.#wakeIdle();
  }

  #report(err: TcpLogDeliveryError): void {
    this.#errors++;
    for (const reporter of this.#reporters) {
      try {
        reporter(err);
      } catch {
        // A user's onError must not be able to crash the app either.
      }
    }
    if (!this.#failing) {
      this.#failing = true;
      this.#droppedAtOutage = this.#queue.counts().dropped;
      if (this.#defaultReporters > 0) {
        process.emitWarning(
          `${err.message}; records are buffered (up to ${this.settings.maxBufferBytes} bytes) and delivery is retried`,
          {
            code: 'EXPRESS_TCPLOG_DELIVERY',
          },
        );
      }
    }
  }

  #recovered(): void {
    this.#failing = false;
    const dropped = this.#queue.counts().dropped - this.#droppedAtOutage;
    if (this.#defaultReporters > 0) {
      process.emitWarning(
        `express-tcplog: ${this.settings.label}: delivery recovered` +
          (dropped > 0 ? `; ${dropped} records were dropped meanwhile` : ''),
        { code: 'EXPRESS_TCPLOG_DELIVERY' },
      );
    }
  }

  #wakeIdle(): void {
    if (!this.#queue.idle) return;
    for (const wake of [...this.#idleWaiters]) wake();
  }

  /** Refs handles while a flush() waits, unrefs them otherwise. */
  #refHandles(): void {
    const wanted = this.#idleWaiters.size > 0;
    if (this.#socket) {
      if (wanted) this.#socket.ref();
      else this.#socket.unref();
    }
    for (const timer of [this.#connectTimer, this.#retryTimer, this.#stallTimer]) {
      if (timer) this.#refTimer(timer);
    }
  }

  #refTimer(timer: NodeJS.Timeout): void {
    if (this.#idleWaiters.size > 0) timer.ref();
    else timer.unref();
  }

  #clearStall(): void {
    this.#clear('stall');
  }

  #clear(which: 'connect' | 'stall' | 'retry'): void {
    if (which === 'connect' && this.#connectTimer) clearTimeout(this.#connectTimer);
    if (which === 'stall' && this.#stallTimer) clearTimeout(this.#stallTimer);
    if (which === 'retry' && this.#retryTimer) clearTimeout(this.#retryTimer);
    if (which === 'connect') this.#connectTimer = null;
    if (which === 'stall') this.#stallTimer = null;
    if (which === 'retry') this.#retryTimer = null;
  }

  #clearTimers(): void {
    this.#clear('connect');
    this.#clear('stall');
    this.#clear('retry');
    if (this.#flushImmediate) clearImmediate(this.#flushImmediate);
    this.#flushImmediate = null;
  }
}

function ignoreError(): void {
  // The socket is being abandoned at shutdown; its late errors have nobody to tell.
}
