/**
 * The counters `stats()` returns: a module of its own, so that the public declarations do not
 * reach the client's (a class with private fields, which TypeScript refuses to read below ES2015).
 */

/** Counters of one destination. `records === sent + dropped + buffered` at every moment. */
export interface TcpLogStats {
  /** Records handed to the client. */
  records: number;
  /** Records the socket accepted (write confirmed, or in the part of a write cut short that went out). */
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
