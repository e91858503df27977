/**
 * A bounded FIFO of framed records with exact accounting. Pure: no I/O, no timers.
 *
 * A record is either waiting here, in flight (handed to a socket, not yet confirmed by the write
 * callback), sent, or dropped. Every path that moves one updates the counters, so
 * `records === sent + dropped + buffered` holds at every moment (pino-socket's queue forgot to
 * lower its byte count on dequeue, and a drained queue then hung).
 */

/** Records taken for one `write()`. */
export interface Batch {
  readonly lines: readonly string[];
  readonly sizes: readonly number[];
  readonly text: string;
  readonly bytes: number;
}

export interface QueueCounts {
  /** Records ever offered. */
  readonly records: number;
  /** Records whose write the socket confirmed. */
  readonly sent: number;
  /** Records given up: over the bound, or still waiting when a close timed out. */
  readonly dropped: number;
  /** Records waiting or in flight. */
  readonly buffered: number;
  /** Bytes waiting or in flight. */
  readonly bufferedBytes: number;
}

export class RecordQueue {
  readonly maxBytes: number;
  #lines: string[] = [];
  #sizes: number[] = [];
  #head = 0;
  #waitingBytes = 0;
  #inFlightRecords = 0;
  #inFlightBytes = 0;
  #records = 0;
  #sent = 0;
  #dropped = 0;

  constructor(maxBytes: number) {
    this.maxBytes = maxBytes;
  }

  /** Records waiting to be taken (not in flight). */
  get waiting(): number {
    return this.#lines.length - this.#head;
  }

  get inFlight(): number {
    return this.#inFlightRecords;
  }

  /** True when nothing waits and nothing is in flight. */
  get idle(): boolean {
    return this.waiting === 0 && this.#inFlightRecords === 0;
  }

  counts(): QueueCounts {
    return {
      records: this.#records,
      sent: this.#sent,
      dropped: this.#dropped,
      buffered: this.waiting + this.#inFlightRecords,
      bufferedBytes: this.#waitingBytes + this.#inFlightBytes,
    };
  }

  /**
   * Adds one framed record of `bytes` bytes. Makes room by dropping the oldest waiting records;
   * drops the new one itself if it can never fit. Returns how many records were dropped.
   */
  push(line: string, bytes: number): number {
    this.#records++;
    if (bytes > this.maxBytes) {
      this.#dropped++;
      return 1;
    }
    const dropped = this.#makeRoom(bytes);
    if (this.#waitingBytes + this.#inFlightBytes + bytes > this.maxBytes) {
      // What is in flight already sits in the socket; it cannot be taken back to make room.
      this.#dropped++;
      return dropped + 1;
    }
    this.#lines.push(line);
    this.#sizes.push(bytes);
    this.#waitingBytes += bytes;
    return dropped;
  }

  /** Takes the oldest waiting records, up to `maxBytes` (at least one), for one write. */
  take(maxBytes: number): Batch | null {
    const start = this.#head;
    const end = this.#lines.length;
    if (start === end) return null;
    let stop = start;
    let bytes = 0;
    while (stop < end) {
      const size = this.#sizes[stop] ?? 0;
      if (stop > start && bytes + size > maxBytes) break;
      bytes += size;
      stop++;
    }
    const lines = this.#lines.slice(start, stop);
    const sizes = this.#sizes.slice(start, stop);
    this.#head = stop;
    this.#compact();
    this.#waitingBytes -= bytes;
    this.#inFlightRecords += lines.length;
    this.#inFlightBytes += bytes;
    return { lines, sizes, text: lines.length === 1 ? (lines[0] ?? '') : lines.join(''), bytes };
  }

  /** The socket confirmed the batch. */
  sent(batch: Batch): void {
    this.#leaveFlight(batch);
    this.#sent += batch.lines.length;
  }

  /**
   * The connection failed before the batch was confirmed: it goes back to the front, in order,
   * to be sent on the next connection. In-flight bytes already count toward the bound, so this
   * never exceeds it.
   */
  requeue(batch: Batch): void {
    this.#leaveFlight(batch);
    this.#lines = (batch.lines as string[]).concat(this.#lines.slice(this.#head));
    this.#sizes = (batch.sizes as number[]).concat(this.#sizes.slice(this.#head));
    this.#head = 0;
    this.#waitingBytes += batch.bytes;
  }

  /** Gives up every waiting record (close timed out). Returns how many. */
  dropWaiting(): number {
    const count = this.waiting;
    this.#dropped += count;
    this.#lines = [];
    this.#sizes = [];
    this.#head = 0;
    this.#waitingBytes = 0;
    return count;
  }

  /** Gives up a batch still in flight on a connection that is being abandoned. */
  dropInFlight(batch: Batch): void {
    this.#leaveFlight(batch);
    this.#dropped += batch.lines.length;
  }

  #leaveFlight(batch: Batch): void {
    this.#inFlightRecords -= batch.lines.length;
    this.#inFlightBytes -= batch.bytes;
  }

  #makeRoom(bytes: number): number {
    let dropped = 0;
    while (this.#head < this.#lines.length && this.#waitingBytes + this.#inFlightBytes + bytes > this.maxBytes) {
      this.#waitingBytes -= this.#sizes[this.#head] ?? 0;
      this.#head++;
      dropped++;
    }
    this.#dropped += dropped;
    if (dropped > 0) this.#compact();
    return dropped;
  }

  /** Reclaims the consumed front of the arrays once it is large, keeping take() O(batch). */
  #compact(): void {
    if (this.#head === this.#lines.length) {
      this.#lines = [];
      this.#sizes = [];
      this.#head = 0;
    } else if (this.#head > 1024 && this.#head * 2 > this.#lines.length) {
      this.#lines = this.#lines.slice(this.#head);
      this.#sizes = this.#sizes.slice(this.#head);
      this.#head = 0;
    }
  }
}
