/**
 * The shared TCP/TLS client: the whole socket lifecycle lives here. It connects lazily, writes
 * queued records in coalesced batches, honours backpressure, closes an idle connection after
 * `keepalive`, reconnects with backoff and jitter, fails over between servers and back, and never
 * lets an error or a handle reach the app: sockets and timers are unref'd, errors go to the
 * reporters and the counters.
 */
import net from 'node:net';
import tls from 'node:tls';
import { TcpLogDeliveryError, asError, tell, type ErrorHandler } from './errors.js';
import { queuedBytes, tcpHandle, type StreamHandle } from './handle.js';
import type { DestinationSettings, ServerSettings } from './options.js';
import type { RecordSink } from './middleware.js';
import { RecordQueue, type Batch } from './queue.js';
import type { TcpLogStats } from './stats.js';

export type { TcpLogStats } from './stats.js';

/** Bytes per write: big enough to coalesce thousands of records, small enough to keep latency. */
const BATCH_BYTES = 64 * 1024;
/**
 * Writes in flight on a connection at once. Loopback and fast networks accept write after write
 * at once, and their callbacks come only after the loop: without a cap, sending a 16 MiB
 * backlog put all of it in fresh buffers at the same moment (RSS +16 MiB, kept by the
 * allocator). Four lets the queue's buffers go round; the next ones go when these are confirmed.
 */
const MAX_IN_FLIGHT_BATCHES = 4;
const BACKOFF_BASE_MS = 50;
/**
 * A connection that fails this soon after it opened, though the kernel took what was written, may
 * be a collector that accepts and then resets (a balancer with no backend behind it). Or one that
 * reads some and then resets: reconnecting at once delivered every record to such a collector
 * in a test, where backing off let records pile up into writes it reset before reading. So such
 * a failure counts as one that worked, unless EARLY_FAILURES come in a row and there is another
 * server to go to. The outage is declared over only once a connection has lasted this long.
 */
const PROVEN_MS = 1_000;
/**
 * A server whose connection stalled is trusted again only once a connection to it has lasted
 * this long: the kernel takes what is written whether the server reads it or not (a path that
 * drops large packets, a collector that hangs after a while), so neither a connect nor a second
 * of writes says it is back. Else each reconnect would end the outage and the next stall start
 * it again, a warning each time; and a fail-back probe, a connect, would send records to it again
 * every few seconds, a kernel buffer of them lost each time. So its next connection must last
 * this long to end the outage, a fail-back to it waits as long, and a connection that stalls
 * within this long of proving itself proved nothing: the backoff goes on growing.
 */
const STEADY_MS = 60_000;
const EARLY_FAILURES = 3;
/**
 * How long a TLS 1.3 connection waits for the server's word before records go on it: a server
 * that accepts the client's certificate sends session tickets, one that refuses it an alert, and
 * both only after the client's side of the handshake is done. Records written before the alert
 * would be taken by the kernel and lost. A server that sends no tickets costs this delay once per
 * connection.
 */
const TLS13_ACCEPT_MS = 250;
const BACKOFF_CAP_MS = 5_000;
/** How often a failed-over client checks whether the preferred server is back. */
const FAILBACK_MS = 5_000;

/** One socket to one server, and the batches written on it that are not yet confirmed. */
interface Connection {
  readonly socket: net.Socket;
  readonly server: ServerSettings;
  /** Index of `server` in the list: 0 is the preferred one. */
  readonly index: number;
  state: 'connecting' | 'open' | 'ending';
  /** Written, callbacks pending, oldest first. */
  readonly inFlight: Batch[];
  /** Whether a write was confirmed: a connection that never did is a failure. */
  confirmed: boolean;
  connectTimer: NodeJS.Timeout | null;
  stallTimer: NodeJS.Timeout | null;
  /** Once the connection has lasted PROVEN_MS: the backoff starts again, an outage is over. */
  provenTimer: NodeJS.Timeout | null;
  /** TLS 1.3: how long to wait for the server to show it accepted the client (TLS13_ACCEPT_MS). */
  acceptTimer: NodeJS.Timeout | null;
  /** When it opened (performance.now()), or -1. */
  openedAt: number;
  /** When it proved the collector back (see #proven), or -1; and the backoff it reset then. */
  provenAt: number;
  attemptBefore: number;
  /** It stalled: it did not work, whatever it confirmed. */
  failed: boolean;
  /** It failed with an error within PROVEN_MS of opening. */
  failedEarly: boolean;
  /** It reported an error: its close says nothing about the collector being back. */
  errored: boolean;
  /**
   * The TCP handle under the socket, kept to read its write queue: for progress (see
   * #watchStall), and as the connection ends (Node drops its own reference first).
   */
  handle: StreamHandle | null;
  /**
   * Bytes still queued in the handle when the connection ended, or -1 when not known (over TLS
   * the queue holds encrypted bytes, which do not say which records went out).
   */
  unsent: number;
  /** When a write was last confirmed (performance.now()): progress, for the stall check. */
  confirmedAt: number;
  /**
   * When writes were last put in flight with none in flight before, and the bytes the handle
   * then held: the stall check judges such a run of writes from its start.
   */
  busySince: number;
  busyQueued: number;
  /**
   * Bytes of in-flight batches whose write Node confirmed only once the socket was destroyed.
   * Node confirms every write then, even one the kernel never took: their fate is settled at
   * 'close' (see #settleInFlight).
   */
  confirmedLate: number;
}

export class TcpLogClient implements RecordSink {
  readonly settings: DestinationSettings;
  readonly #queue: RecordQueue;
  #closed = false;
  /** The connection records are written to (connecting or open). */
  #active: Connection | null = null;
  /** A connection to the preferred server, opened while a later one is in use. */
  #probe: Connection | null = null;
  /** Connections being ended after a failback; their in-flight writes still settle. */
  readonly #retired = new Set<Connection>();
  /** Which server the next connection goes to. */
  #next = 0;
  /** Servers tried and failed since the last working connection, in this round. */
  #failedInRound = 0;
  /** Connections in a row to the current server that failed within PROVEN_MS (see there). */
  #earlyFailures = 0;
  #attempt = 0;
  /**
   * Servers (by index) with a connection that stalled and none proven since (see STEADY_MS):
   * their next must last longer. Per server: a fallback that works is proven as usual.
   */
  readonly #unsteady = new Set<number>();
  #connects = 0;
  #errors = 0;
  #flushImmediate: NodeJS.Immediate | null = null;
  #retryTimer: NodeJS.Timeout | null = null;
  #failbackTimer: NodeJS.Timeout | null = null;
  /**
   * Each instance's onError, with how many instances gave it: one function shared by two
   * instances is called once per problem, and stays until the last of them closes.
   */
  readonly #reporters = new Map<ErrorHandler, number>();
  /** Instances relying on the default report (once per outage). */
  #defaultReporters = 0;
  #failing = false;
  #droppedAtOutage = 0;
  /** Resolvers of pending flush() calls: while any wait, handles are ref'd so the flush completes. */
  readonly #idleWaiters = new Set<() => void>();

  constructor(settings: DestinationSettings) {
    this.settings = settings;
    this.#queue = new RecordQueue(settings.maxBufferBytes);
  }

  /** Registers how one instance wants errors reported (`null`: the default warning). */
  addReporter(reporter: ErrorHandler | null): void {
    if (reporter) this.#reporters.set(reporter, (this.#reporters.get(reporter) ?? 0) + 1);
    else this.#defaultReporters++;
  }

  removeReporter(reporter: ErrorHandler | null): void {
    if (reporter) {
      const count = (this.#reporters.get(reporter) ?? 0) - 1;
      if (count > 0) this.#reporters.set(reporter, count);
      else this.#reporters.delete(reporter);
    } else this.#defaultReporters--;
  }

  /** A framed record as text (specs and tools; the middleware hands over bytes). */
  push(line: string): void {
    this.#queue.push(line);
    this.#afterPush();
  }

  pushBytes(data: Buffer, length: number): void {
    this.#queue.pushBytes(data, length);
    this.#afterPush();
  }

  #afterPush(): void {
    if (this.#closed) {
      // A record finishing after the last instance closed: accounted for, not sent.
      this.#queue.dropWaiting();
      return;
    }
    this.#kick();
  }

  stats(): TcpLogStats {
    return {
      ...this.#queue.counts(),
      connects: this.#connects,
      errors: this.#errors,
      // Not once destroyed: its 'close', which says so, comes a turn later.
      connected: this.#active?.state === 'open' && !this.#active.socket.destroyed,
    };
  }

  /**
   * Resolves once everything buffered has been confirmed by the socket, or after `timeoutMs`.
   * While it waits, the socket and timers are ref'd: a script that awaits close() at its end must
   * not exit before the flush it asked for.
   */
  flush(timeoutMs: number): Promise<boolean> {
    if (this.#queue.idle || this.#closed) return Promise.resolve(this.#queue.idle);
    return new Promise<boolean>((resolve) => {
      const finish = (done: boolean): void => {
        clearTimeout(timer);
        this.#idleWaiters.delete(onIdle);
        this.#refHandles();
        resolve(done);
      };
      const timer = setTimeout(function flushTimedOut() {
        finish(false);
      }, timeoutMs);
      const onIdle = (): void => finish(true);
      this.#idleWaiters.add(onIdle);
      this.#refHandles();
      this.#kick();
    });
  }

  /**
   * Ends the client for good: what is still waiting is dropped (and counted), sockets are ended
   * gracefully so written data still reaches the server. Idempotent. Returns the records dropped.
   */
  shutdown(): number {
    if (this.#closed) return 0;
    this.#closed = true;
    this.#clearTimers();
    for (const connection of this.#connections()) {
      // A write the collector never took keeps Node's loop alive, unref'd socket or not, and so
      // does a connect the collector never answers (a firewall that drops: the kernel tries for
      // two minutes): such a socket is destroyed rather than ended, or it would hold the process.
      const pending =
        connection.state !== 'open' || connection.inFlight.length > 0 || connection.socket.writableLength > 0;
      // In-flight batches belong to sockets we stop watching: given up, not requeued.
      for (const batch of connection.inFlight) this.#queue.dropInFlight(batch);
      connection.inFlight.length = 0;
      this.#clearConnectionTimers(connection);
      const { socket } = connection;
      // Nothing heard from it counts any more (a late reset is not an error of this client).
      socket.removeAllListeners('close');
      socket.removeAllListeners('error');
      socket.on('error', ignoreError);
      if (connection === this.#probe || pending) socket.destroy();
      else endThenDestroy(socket, this.settings.timeout);
      socket.unref();
    }
    this.#active = null;
    this.#probe = null;
    this.#retired.clear();
    const dropped = this.#queue.dropWaiting();
    for (const wake of [...this.#idleWaiters]) wake();
    return dropped;
  }

  /** Moves things along after a push or a state change. */
  #kick(): void {
    if (this.#closed) return;
    if (this.#active === null) {
      // Waiting for a retry timer, or nothing to send: connect only when records wait.
      if (this.#retryTimer === null && this.#queue.waiting > 0) this.#connect();
    } else if (this.#active.state === 'open') {
      this.#scheduleFlush();
    }
    // connecting or ending: the records wait for the next connection.
  }

  #open(index: number, probe = false): Connection {
    const server = this.settings.servers[index] as ServerSettings;
    const socket = connectTo(server);
    const connection: Connection = {
      socket,
      server,
      index,
      state: 'connecting',
      inFlight: [],
      confirmed: false,
      connectTimer: null,
      stallTimer: null,
      provenTimer: null,
      acceptTimer: null,
      openedAt: -1,
      provenAt: -1,
      attemptBefore: 0,
      failed: false,
      failedEarly: false,
      errored: false,
      handle: null,
      unsent: -1,
      confirmedAt: -Infinity,
      busySince: -Infinity,
      busyQueued: -1,
      confirmedLate: 0,
    };
    // unref: logging must never keep the process alive (close() refs it while it flushes; never a
    // probe, which no flush waits on).
    if (probe || this.#idleWaiters.size === 0) socket.unref();
    socket.setNoDelay(true);
    // Whatever a collector sends (a greeting, acknowledgements) is read and thrown away: left
    // unread, it would hide the collector's close ('end' waits for it), and the next records
    // would be written to a connection already closed.
    socket.resume();
    connection.connectTimer = this.#timer(
      () => {
        // Over TLS the TCP connect may be done, and the server silent (not speaking TLS, or its
        // packets dropped after the first few).
        const what = server.tls && !socket.connecting ? 'TLS handshake' : 'connect';
        socket.destroy(
          new TcpLogDeliveryError(server.label, 'ETIMEDOUT', `${what} timed out after ${this.settings.timeout} ms`),
        );
      },
      this.settings.timeout,
      probe,
    );
    if (server.tls) {
      socket.once('secureConnect', () => {
        if ((socket as tls.TLSSocket).getProtocol() === 'TLSv1.3') this.#awaitAcceptance(connection, probe);
        else this.#onOpen(connection);
      });
    } else {
      socket.once('connect', () => this.#onOpen(connection));
    }
    socket.on('error', (err: Error) => this.#onSocketError(connection, err));
    socket.on('end', () => {
      // The server closed its side (Kong's test server does after one line): anything written
      // from now on would be lost, so stop here and let 'close' reconnect.
      noteUnsent(connection);
      socket.destroy();
    });
    socket.on('close', () => this.#onClose(connection));
    socket.on('drain', () => {
      if (connection !== this.#active) return;
      this.#clearStall(connection);
      this.#scheduleFlush();
    });
    socket.on('timeout', () => this.#onIdle(connection));
    return connection;
  }

  /** Opens a TLS 1.3 connection once the server has shown it accepted the client (TLS13_ACCEPT_MS). */
  #awaitAcceptance(connection: Connection, probe: boolean): void {
    const socket = connection.socket as tls.TLSSocket;
    let done = false;
    const accepted = (): void => {
      // Once: a server sends two tickets, maybe in one read, and the timer may have fired first.
      if (done) return;
      done = true;
      socket.off('session', onSession);
      if (connection.acceptTimer) clearTimeout(connection.acceptTimer);
      connection.acceptTimer = null;
      if (!socket.destroyed) this.#onOpen(connection);
    };
    // 'session' comes from inside OpenSSL's read: writing there broke the stream (bad record MAC).
    const onSession = (): void => void setImmediate(accepted);
    socket.on('session', onSession);
    // Within the connect timeout, which still runs: a short `timeout` must not fail every connection.
    connection.acceptTimer = this.#timer(accepted, Math.min(TLS13_ACCEPT_MS, this.settings.timeout / 2), probe);
  }

  #connect(): void {
    this.#active = this.#open(this.#next);
  }

  #onOpen(connection: Connection): void {
    if (connection.connectTimer) clearTimeout(connection.connectTimer);
    connection.connectTimer = null;
    if (connection === this.#probe) {
      this.#failBack(connection);
      return;
    }
    if (connection !== this.#active) return;
    connection.state = 'open';
    connection.openedAt = performance.now();
    connection.handle = tcpHandle(connection.socket);
    this.#connects++;
    if (this.settings.keepalive > 0) connection.socket.setTimeout(this.settings.keepalive);
    // Not at once: a connection that opens and fails at once would end and start an outage each
    // time, and reset the backoff.
    connection.provenTimer = this.#timer(
      () => {
        connection.provenTimer = null;
        if (connection === this.#active && connection.state === 'open') this.#proven(connection);
      },
      this.#unsteady.has(connection.index) ? STEADY_MS : PROVEN_MS,
      true,
    );
    if (connection.index !== 0) this.#scheduleFailback();
    this.#flush();
  }

  /** A connection that worked: the backoff and the failover round start again; an outage is over. */
  #proven(connection: Connection): void {
    connection.provenAt = performance.now();
    connection.attemptBefore = this.#attempt;
    this.#unsteady.delete(connection.index);
    this.#attempt = 0;
    this.#failedInRound = 0;
    this.#earlyFailures = 0;
    if (this.#failing && !connection.errored) this.#recovered();
  }

  /** The preferred server answered the probe: new records go there, the old connection ends. */
  #failBack(probe: Connection): void {
    this.#probe = null;
    const old = this.#active;
    if (old) {
      old.state = 'ending';
      this.#clearConnectionTimers(old);
      old.socket.setTimeout(0);
      this.#retired.add(old);
      // end() still delivers what was written; its callbacks settle the old in-flight batches. A
      // collector that stops reading (or keeps its side open) gets `timeout`: then what it did
      // not take goes to the new connection.
      old.stallTimer = endThenDestroy(old.socket, this.settings.timeout, () => noteUnsent(old));
    }
    this.#active = probe;
    this.#next = 0;
    // Now the connection a flush waits on, if one does.
    this.#refHandles();
    this.#onOpen(probe);
  }

  #scheduleFailback(): void {
    if (this.#failbackTimer || this.#probe || this.settings.servers.length < 2) return;
    this.#failbackTimer = this.#timer(
      () => {
        this.#failbackTimer = null;
        if (this.#closed || !this.#active || this.#active.index === 0 || this.#active.state !== 'open') return;
        this.#probe = this.#open(0, true);
      },
      // A connect cannot tell whether a server that stalled takes records again (see STEADY_MS).
      jitter(this.#unsteady.has(0) ? STEADY_MS : FAILBACK_MS),
      true,
    );
  }

  #onSocketError(connection: Connection, err: Error): void {
    // Emitted after the socket is destroyed, before its writes are cancelled.
    noteUnsent(connection);
    // A probe failing only means the preferred server is still down: already reported.
    if (connection === this.#probe) return;
    const code = (err as NodeJS.ErrnoException).code ?? 'ERR_SOCKET';
    connection.errored = true;
    if (code === 'ESTALLED') connection.failed = true;
    else if (connection.openedAt !== -1 && performance.now() - connection.openedAt < PROVEN_MS) {
      connection.failedEarly = true;
    }
    const wrapped =
      err instanceof TcpLogDeliveryError
        ? err
        : new TcpLogDeliveryError(connection.server.label, code, err.message, err);
    this.#report(wrapped);
  }

  #onIdle(connection: Connection): void {
    if (connection !== this.#active || connection.state !== 'open' || !this.#queue.idle) return;
    connection.state = 'ending';
    // It delivered and closes cleanly: as good as proven, however short `keepalive` is.
    if (connection.confirmed) this.#proven(connection);
    this.#clearConnectionTimers(connection);
    // Out of the way at once: a collector that keeps its side open (allowHalfOpen) would
    // otherwise hold the records that come next until it closed. It gets `timeout` to close.
    this.#active = null;
    this.#retired.add(connection);
    connection.socket.setTimeout(0);
    connection.stallTimer = endThenDestroy(connection.socket, this.settings.timeout);
  }

  #onClose(connection: Connection): void {
    this.#clearConnectionTimers(connection);
    this.#settleInFlight(connection);
    if (connection === this.#probe) {
      this.#probe = null;
      this.#scheduleFailback();
      return;
    }
    if (this.#retired.delete(connection)) {
      this.#kick();
      this.#wakeIdle();
      return;
    }
    if (connection !== this.#active) return;
    if (connection.state === 'connecting' && !connection.errored) {
      // Closed before it could be used, with no error of its own: a TLS 1.3 server that refuses
      // the client's certificate closes this way, during the wait for its ticket, with no alert.
      this.#report(
        new TcpLogDeliveryError(
          connection.server.label,
          'ECLOSED',
          'the server closed the connection before it was used',
        ),
      );
    }
    if (connection.failed) {
      // Stalled: the server is not trusted until a connection lasts (see STEADY_MS).
      this.#unsteady.add(connection.index);
      // Proven, then stalled soon after: it proved nothing.
      if (connection.provenAt !== -1 && performance.now() - connection.provenAt < STEADY_MS) {
        this.#attempt = connection.attemptBefore;
      }
    }
    const early = connection.failedEarly;
    this.#earlyFailures = early ? this.#earlyFailures + 1 : 0;
    const moveOn = early && this.#earlyFailures >= EARLY_FAILURES && this.settings.servers.length > 1;
    const worked =
      connection.state === 'ending' ||
      (connection.state === 'open' && connection.confirmed && !connection.failed && !moveOn);
    this.#active = null;
    if (this.#failbackTimer) clearTimeout(this.#failbackTimer);
    this.#failbackTimer = null;
    if (worked) {
      // An early failure let through (see PROVEN_MS) goes again at once, but proves nothing.
      if (!early) this.#proven(connection);
    } else if (++this.#failedInRound < this.settings.servers.length) {
      // Fail over: the next server in the list, at once.
      this.#earlyFailures = 0;
      this.#next = (connection.index + 1) % this.settings.servers.length;
      this.#kick();
      this.#wakeIdle();
      return;
    } else {
      // Every server failed in this round: back off, then start again from the preferred one.
      this.#failedInRound = 0;
      this.#earlyFailures = 0;
      this.#attempt++;
      this.#next = 0;
      const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(this.#attempt - 1, 16));
      this.#retryTimer = this.#timer(() => {
        this.#retryTimer = null;
        this.#kick();
      }, jitter(ceiling));
      this.#wakeIdle();
      return;
    }
    // A connection that delivered and then closed (idle close, server restart): go again now.
    this.#kick();
    this.#wakeIdle();
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
    const connection = this.#active;
    // A destroyed socket's writes would only fail, to be sent again after its 'close'.
    if (!connection || connection.state !== 'open' || connection.socket.destroyed) return;
    const { socket } = connection;
    const starting = connection.inFlight.length === 0;
    while (!socket.writableNeedDrain && connection.inFlight.length < MAX_IN_FLIGHT_BATCHES) {
      const batch = this.#queue.take(BATCH_BYTES);
      if (!batch) break;
      connection.inFlight.push(batch);
      socket.write(batch.data, (err) => this.#onWritten(connection, batch, err));
    }
    if (starting && connection.inFlight.length > 0) {
      connection.busySince = performance.now();
      connection.busyQueued = queuedBytes(connection.handle);
    }
    // Watched whenever a write is in flight, not only once write() says to wait: a few small
    // writes to a collector that stopped reading stay under the high-water mark for good.
    if (connection.inFlight.length > 0 && !connection.stallTimer) this.#watchStall(connection);
  }

  /**
   * A connection whose writes make no progress for `timeout` is cut (ESTALLED) and its records go
   * on a new one. Progress is a write confirmed, or fewer bytes queued in the process than at the
   * last look: a collector that reads slowly keeps its connection (waiting for 'drain' alone cut
   * it again and again under one record larger than it could take in `timeout`).
   */
  #watchStall(connection: Connection): void {
    const { socket } = connection;
    const { timeout } = this.settings;
    let queued = queuedBytes(connection.handle);
    let lookedAt = performance.now();
    const check = (): void => {
      connection.stallTimer = null;
      // Everything written was confirmed: the next flush watches again.
      if (connection.inFlight.length === 0) return;
      // Everything was confirmed since the last look, and writing began again: this run of
      // writes is judged from its start, not from what a watch armed at an earlier one saw.
      if (connection.busySince > lookedAt) queued = connection.busyQueued;
      const at = performance.now();
      lookedAt = at;
      const now = queuedBytes(connection.handle);
      if (now !== -1 && now < queued) {
        queued = now;
        connection.stallTimer = this.#timer(check, timeout);
        return;
      }
      // From the last write confirmed, or the start of this run of writes: one the kernel took at
      // once is confirmed only on the next tick, after this watch began, and must not buy a
      // second `timeout`.
      const quiet = at - Math.max(connection.confirmedAt, connection.busySince);
      if (quiet < timeout) {
        connection.stallTimer = this.#timer(check, timeout - quiet);
        return;
      }
      noteUnsent(connection);
      socket.destroy(
        new TcpLogDeliveryError(connection.server.label, 'ESTALLED', `write made no progress in ${timeout} ms`),
      );
    };
    connection.stallTimer = this.#timer(check, timeout);
  }

  #onWritten(connection: Connection, batch: Batch, err: Error | null | undefined): void {
    // A failed write is settled by 'close', which requeues everything still in flight.
    if (err) return;
    if (connection.socket.destroyed) {
      // Maybe taken by the kernel, maybe cancelled: 'close' tells which (#settleInFlight).
      if (connection.inFlight.includes(batch)) connection.confirmedLate += batch.data.length;
      return;
    }
    const index = connection.inFlight.indexOf(batch);
    if (index === -1) return;
    connection.confirmedAt = performance.now();
    connection.inFlight.splice(index, 1);
    this.#queue.sent(batch);
    connection.confirmed = true;
    // A backlog held back by the cap on writes in flight goes on now.
    if (connection === this.#active && this.#queue.waiting > 0) this.#scheduleFlush();
    this.#wakeIdle();
  }

  /**
   * The connection ended with writes in flight. Those Node confirmed only once the socket was
   * destroyed came first; of their bytes, all but what was still queued in the handle went out,
   * and the records they hold whole are sent. The rest (a record cut short, writes that failed
   * or never started) go back to the front, in order, to be sent on the next connection. When
   * the queue could not be read (TLS), all of them go back: a record may then arrive twice,
   * rather than be lost while counted sent.
   */
  #settleInFlight(connection: Connection): void {
    let out = connection.unsent === -1 ? 0 : Math.max(0, connection.confirmedLate - connection.unsent);
    const sentCounts: number[] = [];
    for (const batch of connection.inFlight) {
      let whole = 0;
      while (whole < batch.count && (batch.lengths[whole] as number) <= out) out -= batch.lengths[whole++] as number;
      // Past a record cut short, nothing went out whole.
      if (whole < batch.count) out = 0;
      sentCounts.push(whole);
    }
    // Newest first, so that the order is kept at the front of the queue.
    for (let i = connection.inFlight.length - 1; i >= 0; i--) {
      const batch = connection.inFlight[i] as Batch;
      const whole = sentCounts[i] as number;
      if (whole === batch.count) this.#queue.sent(batch);
      else this.#queue.requeue(batch, whole);
    }
    // It delivered something, as a confirmed write says.
    if ((sentCounts[0] ?? 0) > 0) connection.confirmed = true;
    connection.inFlight.length = 0;
    connection.confirmedLate = 0;
  }

  #report(err: TcpLogDeliveryError): void {
    this.#errors++;
    for (const reporter of this.#reporters.keys()) tell(reporter, err);
    if (!this.#failing) {
      this.#failing = true;
      this.#droppedAtOutage = this.#queue.counts().dropped;
      if (this.#defaultReporters > 0) {
        process.emitWarning(
          `${err.message}; records are buffered (up to ${this.settings.maxBufferBytes} bytes) and delivery is retried`,
          { code: 'EXPRESS_TCPLOG_DELIVERY' },
        );
      }
    }
  }

  #recovered(): void {
    this.#failing = false;
    const dropped = this.#queue.counts().dropped - this.#droppedAtOutage;
    if (this.#defaultReporters > 0) {
      process.emitWarning(
        `express-tcplog: ${this.#active?.server.label ?? this.settings.label}: delivery recovered` +
          (dropped > 0 ? `; ${dropped} records were dropped meanwhile` : ''),
        { code: 'EXPRESS_TCPLOG_DELIVERY' },
      );
    }
  }

  #wakeIdle(): void {
    if (!this.#queue.idle) return;
    for (const wake of [...this.#idleWaiters]) wake();
  }

  #connections(): Connection[] {
    return [this.#active, this.#probe, ...this.#retired].filter((c): c is Connection => c !== null);
  }

  /**
   * A timer that follows the flush rule: ref'd while a flush() waits, unref'd otherwise.
   * `alwaysUnref` for timers a flush never waits on (the failback probe).
   */
  #timer(callback: () => void, ms: number, alwaysUnref = false): NodeJS.Timeout {
    const timer = setTimeout(callback, ms);
    if (alwaysUnref || this.#idleWaiters.size === 0) timer.unref();
    return timer;
  }

  /** Refs handles while a flush() waits, unrefs them otherwise. */
  #refHandles(): void {
    const wanted = this.#idleWaiters.size > 0;
    for (const connection of this.#connections()) {
      if (connection === this.#probe) continue;
      if (wanted) connection.socket.ref();
      else connection.socket.unref();
      for (const timer of [connection.connectTimer, connection.stallTimer]) {
        if (timer && wanted) timer.ref();
        else if (timer) timer.unref();
      }
    }
    if (this.#retryTimer && wanted) this.#retryTimer.ref();
    else if (this.#retryTimer) this.#retryTimer.unref();
  }

  #clearStall(connection: Connection): void {
    if (connection.stallTimer) clearTimeout(connection.stallTimer);
    connection.stallTimer = null;
  }

  #clearConnectionTimers(connection: Connection): void {
    if (connection.connectTimer) clearTimeout(connection.connectTimer);
    connection.connectTimer = null;
    for (const timer of [connection.provenTimer, connection.acceptTimer]) if (timer) clearTimeout(timer);
    connection.provenTimer = null;
    connection.acceptTimer = null;
    this.#clearStall(connection);
  }

  #clearTimers(): void {
    for (const timer of [this.#retryTimer, this.#failbackTimer]) if (timer) clearTimeout(timer);
    this.#retryTimer = null;
    this.#failbackTimer = null;
    if (this.#flushImmediate) clearImmediate(this.#flushImmediate);
    this.#flushImmediate = null;
  }
}

/**
 * A socket to `server`. TLS options Node refuses only when connecting (the factory checks what
 * it can) give a socket that fails at once: reported, retried and failed over like any other
 * connection, rather than a throw from a timer or from a socket's 'close' listener.
 */
function connectTo(server: ServerSettings): net.Socket {
  const { host, port } = server;
  try {
    return server.tls ? tls.connect({ ...server.tls, host, port }) : net.connect({ host, port });
  } catch (err) {
    const socket = new net.Socket();
    process.nextTick(() => socket.destroy(asError(err)));
    return socket;
  }
}

/**
 * Ends `socket` gracefully, and destroys it after `ms` if the collector keeps its side open, or
 * does not read what is still to be written: otherwise it would keep the socket (a descriptor)
 * and those writes for good. `beforeDestroy` runs just before. The timer never holds the process.
 */
function endThenDestroy(socket: net.Socket, ms: number, beforeDestroy?: () => void): NodeJS.Timeout {
  const timer = setTimeout(() => {
    beforeDestroy?.();
    socket.destroy();
  }, ms);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
  socket.end();
  return timer;
}

/** Equal jitter: at least half the step, so a crowd of clients does not return in lockstep. */
function jitter(ms: number): number {
  return Math.round(ms / 2 + Math.random() * (ms / 2));
}

/** Reads, once, the bytes still queued in the connection's handle (see Connection.unsent). */
function noteUnsent(connection: Connection): void {
  if (connection.unsent === -1 && !connection.server.tls) connection.unsent = queuedBytes(connection.handle);
}

function ignoreError(): void {
  // The socket is being abandoned at shutdown; its late errors have nobody to tell.
}
