/**
 * Shared test helpers: real servers on 127.0.0.1, port 0, and waits on events, never on sleeps.
 */
import { EventEmitter, once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import express from 'express';

/** How long a spec waits for an event before failing; a bound on hanging, not a timing claim. */
export const WAIT_MS = 8_000;

/** A TCP log receiver that splits what it reads into records on `\n`, keeping any `\r`. */
export class LineServer extends EventEmitter {
  readonly server: net.Server | tls.Server;
  /** Complete lines, without the `\n` (a `\r` before it stays, so framing can be checked). */
  readonly lines: string[] = [];
  /** Every byte received, in order, per connection. */
  readonly received: Buffer[] = [];
  connections = 0;
  readonly sockets = new Set<net.Socket>();
  #pending = new Map<net.Socket, string>();

  /** With `tlsOptions`, a TLS server: records are read from the decrypted stream. */
  constructor(tlsOptions?: tls.TlsOptions) {
    super();
    this.server = tlsOptions
      ? tls.createServer(tlsOptions, (socket) => this.#accept(socket))
      : net.createServer((socket) => this.#accept(socket));
    // Handshake failures are part of what TLS specs check; they are counted, never thrown.
    this.server.on('tlsClientError', (err: Error) => this.tlsErrors.push(err));
  }

  readonly tlsErrors: Error[] = [];

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** Records parsed from the lines (delimiter removed). */
  records(): Array<Record<string, any>> {
    return this.lines.map((line) => JSON.parse(line.replace(/\r$/, '')) as Record<string, any>);
  }

  async listen(port = 0): Promise<this> {
    this.server.listen(port, '127.0.0.1');
    await once(this.server, 'listening');
    return this;
  }

  /** Resolves once `count` lines have arrived. */
  waitForLines(count: number, timeoutMs = WAIT_MS): Promise<string[]> {
    return waitFor(
      this,
      'line',
      () => this.lines.length >= count,
      timeoutMs,
      () => `${this.lines.length}/${count} lines`,
    ).then(() => this.lines);
  }

  /**
   * A receiver's graceful restart: stop listening, half-close every connection, keep reading
   * until the client has closed its side too.
   */
  async stopGracefully(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const socket of this.sockets) socket.end();
    await closed;
  }

  /** Closes the listener and every connection. */
  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    if (this.server.listening) {
      await new Promise<void>((resolve) => this.server.close(() => resolve()));
    }
  }

  #accept(socket: net.Socket): void {
    this.connections++;
    this.sockets.add(socket);
    this.#pending.set(socket, '');
    this.emit('connection', socket);
    socket.on('data', (chunk: Buffer) => {
      this.received.push(chunk);
      let text = (this.#pending.get(socket) ?? '') + chunk.toString('utf8');
      let newline = text.indexOf('\n');
      while (newline !== -1) {
        this.lines.push(text.slice(0, newline));
        text = text.slice(newline + 1);
        this.emit('line');
        newline = text.indexOf('\n');
      }
      this.#pending.set(socket, text);
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.sockets.delete(socket);
      this.emit('socket-close');
    });
  }
}

/**
 * The package's delivery warnings (its report when no `onError` is given) from now on, as they
 * come; `cleanup` gets the step that stops listening.
 */
export function deliveryWarnings(cleanup: Array<() => Promise<void> | void>): string[] {
  const messages: string[] = [];
  const onWarning = (warning: Error): void => {
    if ((warning as { code?: string }).code === 'EXPRESS_TCPLOG_DELIVERY') messages.push(warning.message);
  };
  process.on('warning', onWarning);
  cleanup.push(() => void process.off('warning', onWarning));
  return messages;
}

/** What each delivery warning says: that delivery recovered, or that it is failing. */
export function warningKinds(messages: readonly string[]): Array<'recovered' | 'failing'> {
  return messages.map((message) => (/recovered/.test(message) ? 'recovered' : 'failing'));
}

/**
 * A collector that reads each connection for `readMs`, then never again: as one behind a path
 * that drops large packets looks (every connect succeeds, and the kernel takes writes for a
 * while). `connections`: every connection it accepted.
 */
export async function startFadingCollector(
  readMs: number,
): Promise<{ port: number; connections: Set<net.Socket>; close(): Promise<void> }> {
  const connections = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    connections.add(socket);
    socket.resume();
    setTimeout(() => socket.pause(), readMs);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as AddressInfo).port,
    connections,
    async close(): Promise<void> {
      for (const socket of connections) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A port nobody listens on right now: bind 127.0.0.1:0, read it, close. */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export async function startLineServer(port = 0, tlsOptions?: tls.TlsOptions): Promise<LineServer> {
  return new LineServer(tlsOptions).listen(port);
}

/** Waits until `check()` holds, re-checking on each `event` of `emitter`. */
export function waitFor(
  emitter: EventEmitter,
  event: string,
  check: () => boolean,
  timeoutMs = WAIT_MS,
  describe: () => string = () => '',
): Promise<void> {
  if (check()) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, onEvent);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${event} ${describe()}`));
    }, timeoutMs);
    function onEvent(): void {
      if (!check()) return;
      clearTimeout(timer);
      emitter.off(event, onEvent);
      resolve();
    }
    emitter.on(event, onEvent);
  });
}

/** Polls a condition on a 5 ms timer, for state with no event (counters); bounded by timeoutMs. */
export async function until(check: () => boolean, timeoutMs = WAIT_MS, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

export interface Listening {
  server: http.Server;
  port: number;
  close(): Promise<void>;
}

/** Starts an HTTP server (an Express app, Connect app or plain handler) on 127.0.0.1:0. */
export async function listen(handler: http.RequestListener, options: http.ServerOptions = {}): Promise<Listening> {
  const server = http.createServer(options, handler);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    server,
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** An Express app logging through `mw`, with the routes the delivery specs request: `/` and `/n/:n`. */
export async function listenLogged(mw: express.RequestHandler): Promise<Listening> {
  const app = express();
  app.use(mw);
  app.get('/', (_req, res) => {
    res.send('ok');
  });
  app.get('/n/:n', (req, res) => {
    res.json({ n: Number(req.params['n']) });
  });
  return listen(app);
}

export interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** One HTTP request on a fresh connection. */
export function request(
  port: number,
  path: string,
  options: { method?: string; headers?: http.OutgoingHttpHeaders; body?: string | Buffer } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path, method: options.method ?? 'GET', headers: options.headers, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

/**
 * Sends raw bytes on one connection and collects everything until the server closes it or
 * `until` says the reply is complete. For keep-alive, pipelining and malformed requests.
 */
export function rawExchange(
  port: number,
  bytes: string | Buffer,
  done: (received: Buffer) => boolean,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`raw exchange timed out; got ${Buffer.concat(chunks).toString('latin1').slice(0, 300)}`));
    }, WAIT_MS);
    socket.on('connect', () => socket.write(bytes));
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      if (done(Buffer.concat(chunks))) {
        clearTimeout(timer);
        socket.end();
        resolve(Buffer.concat(chunks));
      }
    });
    socket.on('error', reject);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
  });
}

/** Counts complete HTTP/1.1 responses in a raw byte stream (Content-Length bodies, or no body). */
export function countResponses(received: Buffer): number {
  return (received.toString('latin1').match(/HTTP\/1\.1 \d{3}/g) ?? []).length;
}

/** Asserts the stats invariant, the one promise that holds at every moment. */
export function invariant(stats: { records: number; sent: number; dropped: number; buffered: number }): boolean {
  return stats.records === stats.sent + stats.dropped + stats.buffered;
}

/**
 * Pushes `count` records of 10 KB, numbered `{"n":i,...}`, yielding now and then: 10 MB for 1 000,
 * more than the kernel's buffers take from a connection that is not read.
 */
export async function pushNumbered(client: { push(line: string): void }, count: number): Promise<void> {
  const pad = 'x'.repeat(10_000);
  for (let i = 0; i < count; i++) {
    client.push(`{"n":${i},"pad":"${pad}"}\r\n`);
    if (i % 50 === 0) await new Promise((resolve) => setImmediate(resolve));
  }
}
