/**
 * A bounded FIFO of framed records with exact accounting. Pure: no I/O, no timers.
 *
 * A record is either waiting here, in flight (handed to a socket, not yet confirmed by the write
 * callback), sent, or dropped. Every path that moves one updates the counters, so
 * `records === sent + dropped + buffered` holds at every moment (pino-socket's queue forgot to
 * lower its byte count on dequeue, and a drained queue then hung).
 *
 * Waiting records are copied, as UTF-8, into one ring buffer outside the JavaScript heap, which
 * grows up to `maxBytes` and is then kept and reused: letting it go after each backlog made
 * repeated outages allocate and free megabytes each time, which the allocator kept (the soak's
 * RSS growth went from 23 to 61 MB). While a collector is down and the oldest records are being
 * dropped, they would otherwise pile up as garbage in V8's old generation, and the process would
 * grow far past the bound before a full collection (seen: +111 MiB for a 16 MiB bound).
 */

/** Records taken for one `write()`: their bytes, copied out of the ring. */
export class Batch {
  /** The records' bytes, one after the other. Valid until the batch is settled. */
  readonly data: Buffer;
  /** The queue's reusable memory under `data`, or null (a one-off buffer, or given back). */
  backing: Buffer | null = null;
  /** Bytes each record counts for (what `push()` was told). */
  readonly sizes: readonly number[];
  /** Bytes each record takes in `data`. */
  readonly lengths: readonly number[];
  /** Sum of `sizes`: what the batch counts for in the bound. */
  readonly bytes: number;

  constructor(data: Buffer, sizes: number[], lengths: number[], bytes: number) {
    this.data = data;
    this.sizes = sizes;
    this.lengths = lengths;
    this.bytes = bytes;
  }

  get count(): number {
    return this.sizes.length;
  }

  /** The records as text (for tests and messages; the client writes `data`). */
  get lines(): string[] {
    const lines: string[] = [];
    let offset = 0;
    for (const length of this.lengths) {
      lines.push(this.data.toString('utf8', offset, offset + length));
      offset += length;
    }
    return lines;
  }

  get text(): string {
    return this.data.toString('utf8');
  }
}

export interface QueueCounts {
  /** Records ever offered. */
  readonly records: number;
  /** Records whose write the socket confirmed, or that went out whole before a write was cut short. */
  readonly sent: number;
  /** Records given up: over the bound, or still waiting when a close timed out. */
  readonly dropped: number;
  /** Records waiting or in flight. */
  readonly buffered: number;
  /** Bytes waiting or in flight. */
  readonly bufferedBytes: number;
}

/** The ring starts small and doubles up to `maxBytes`: an idle app does not pay for the bound. */
const INITIAL_RING_BYTES = 64 * 1024;
/**
 * Batches up to this size are copied into buffers the queue keeps and reuses once the batch is
 * settled: no allocation per write, and no churn in the allocator, which after an outage kept
 * RSS megabytes above what the backlog needed while it was being sent.
 */
const POOLED_BATCH_BYTES = 64 * 1024;
/** Buffers kept for reuse: as many as the client has writes in flight at most. */
const MAX_SPARE_BATCHES = 4;

/**
 * Copies `length` bytes of the ring from `from` into `target` at `offset`, going on at the
 * ring's start when a record runs past its end. Returns `length`.
 */
function copyOut(ring: Buffer, from: number, length: number, target: Buffer, offset: number): number {
  const first = Math.min(length, ring.length - from);
  ring.copy(target, offset, from, from + first);
  if (first < length) ring.copy(target, offset + first, 0, length - first);
  return length;
}

/** Copies `source[0, length)` into the ring at `at`, going on at its start past its end. */
function copyIn(source: Buffer, length: number, ring: Buffer, at: number): void {
  const first = Math.min(length, ring.length - at);
  source.copy(ring, at, 0, first);
  if (first < length) source.copy(ring, 0, first, length);
}

export class RecordQueue {
  readonly maxBytes: number;
  #ring: Buffer | null = null;
  /** Where the next record goes in the ring. */
  #tail = 0;
  /** Waiting records, oldest first from #head: offset in the ring, bytes there, bytes counted. */
  #starts: number[] = [];
  #lengths: number[] = [];
  #sizes: number[] = [];
  #head = 0;
  #waitingBytes = 0;
  /** Bytes the waiting records take in the ring (equal to #waitingBytes but in specs). */
  #waitingLength = 0;
  #inFlightRecords = 0;
  #inFlightBytes = 0;
  #records = 0;
  #sent = 0;
  #dropped = 0;
  /** Buffers of settled batches, for the next take(). */
  readonly #spare: Buffer[] = [];
  #ringAllocations = 0;

  constructor(maxBytes: number) {
    this.maxBytes = maxBytes;
  }

  /** Bytes the ring holds outside the heap (its size, not what is in it). */
  get ringBytes(): number {
    return this.#ring?.length ?? 0;
  }

  /** How many rings were allocated so far (growth, requeues): for the specs. */
  get ringAllocations(): number {
    return this.#ringAllocations;
  }

  /** Records waiting to be taken (not in flight). */
  get waiting(): number {
    return this.#sizes.length - this.#head;
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
   * Adds one framed record, counted for its UTF-8 length (or for `counted` bytes, which the specs
   * use to reason in round numbers). Makes room by dropping the oldest waiting records; drops the
   * new one itself if it can never fit. Returns how many records were dropped.
   */
  push(line: string, counted?: number): number {
    const droppedBefore = this.#dropped;
    const length = Buffer.byteLength(line);
    const at = this.#admit(length, counted ?? length);
    if (at !== -1) {
      const ring = this.#ring as Buffer;
      if (at + length <= ring.length) ring.write(line, at, length, 'utf8');
      else copyIn(Buffer.from(line, 'utf8'), length, ring, at);
    }
    return this.#dropped - droppedBefore;
  }

  /** The same for a record already encoded: the first `length` bytes of `data`, copied. */
  pushBytes(data: Buffer, length: number): number {
    const droppedBefore = this.#dropped;
    const at = this.#admit(length, length);
    if (at !== -1) copyIn(data, length, this.#ring as Buffer, at);
    return this.#dropped - droppedBefore;
  }

  /**
   * Accounts for a new record and reserves its place: the ring offset, or -1 if it is dropped.
   * Drops (older records, or this one) are counted in #dropped.
   */
  #admit(length: number, bytes: number): number {
    this.#records++;
    // What is in flight already sits in the socket; it cannot be taken back to make room. A
    // record that would not fit beside it even with nothing waiting is dropped alone: dropping
    // the waiting ones first would not make it fit.
    if (this.#inFlightBytes + bytes > this.maxBytes) {
      this.#dropped++;
      return -1;
    }
    this.#makeRoom(bytes);
    const at = this.#place(length);
    this.#starts.push(at);
    this.#lengths.push(length);
    this.#sizes.push(bytes);
    this.#tail = (at + length) % (this.#ring as Buffer).length;
    this.#waitingBytes += bytes;
    this.#waitingLength += length;
    return at;
  }

  /** Takes the oldest waiting records, up to `maxBytes` (at least one), for one write. */
  take(maxBytes: number): Batch | null {
    const start = this.#head;
    const end = this.#sizes.length;
    if (start === end) return null;
    let stop = start;
    let bytes = 0;
    let length = 0;
    while (stop < end) {
      const size = this.#sizes[stop] as number;
      if (stop > start && bytes + size > maxBytes) break;
      bytes += size;
      length += this.#lengths[stop] as number;
      stop++;
    }
    const ring = this.#ring as Buffer;
    const backing =
      length <= POOLED_BATCH_BYTES ? (this.#spare.pop() ?? Buffer.allocUnsafeSlow(POOLED_BATCH_BYTES)) : null;
    const data = backing === null ? Buffer.allocUnsafe(length) : backing.subarray(0, length);
    // Records placed one after the other (the usual case) are copied as one run.
    let offset = 0;
    let runFrom = this.#starts[start] as number;
    let runLength = 0;
    for (let i = start; i < stop; i++) {
      const from = this.#starts[i] as number;
      if (from !== (runFrom + runLength) % ring.length) {
        offset += copyOut(ring, runFrom, runLength, data, offset);
        runFrom = from;
        runLength = 0;
      }
      runLength += this.#lengths[i] as number;
    }
    copyOut(ring, runFrom, runLength, data, offset);
    const batch = new Batch(data, this.#sizes.slice(start, stop), this.#lengths.slice(start, stop), bytes);
    batch.backing = backing;
    this.#head = stop;
    this.#compact();
    this.#waitingBytes -= bytes;
    this.#waitingLength -= length;
    this.#inFlightRecords += batch.count;
    this.#inFlightBytes += bytes;
    return batch;
  }

  /** The socket confirmed the batch. */
  sent(batch: Batch): void {
    this.#leaveFlight(batch);
    this.#sent += batch.count;
    this.#release(batch);
  }

  /**
   * The connection failed before the batch was confirmed: it goes back to the front, in order,
   * to be sent on the next connection. Its first `sentCount` records went out whole (the kernel
   * took them before the connection ended) and are counted sent instead. In-flight bytes already
   * count toward the bound, so this never exceeds it. The records go in the free stretch just
   * before the oldest waiting one: the cost is the batch's, not the backlog's (a connection that
   * fails with four batches in flight and 16 MiB waiting laid the ring out anew four times, and
   * held the event loop for a tenth of a second).
   */
  requeue(batch: Batch, sentCount = 0): void {
    this.#leaveFlight(batch);
    this.#sent += sentCount;
    let skipped = 0;
    for (let i = 0; i < sentCount; i++) skipped += batch.lengths[i] as number;
    const length = batch.data.length - skipped;
    const count = batch.count - sentCount;
    if (count > 0) {
      if (this.waiting === 0) this.#tail = 0;
      // Room for it: the waiting records laid out anew if need be, with at least `length` free.
      if (this.#ring === null || this.#ring.length - this.#waitingLength < length) this.#relayout(length);
      const ring = this.#ring as Buffer;
      const oldest = this.waiting > 0 ? (this.#starts[this.#head] as number) : this.#tail;
      const at = (oldest - length + ring.length) % ring.length;
      copyIn(batch.data.subarray(skipped), length, ring, at);
      if (this.#head < count) {
        // No consumed slots to reuse in front of the index arrays: make them.
        const pad = new Array<number>(count - this.#head).fill(0);
        this.#starts = pad.concat(this.#starts);
        this.#lengths = pad.concat(this.#lengths);
        this.#sizes = pad.concat(this.#sizes);
        this.#head = count;
      }
      this.#head -= count;
      for (let i = 0, offset = at; i < count; i++) {
        const recordLength = batch.lengths[sentCount + i] as number;
        const size = batch.sizes[sentCount + i] as number;
        this.#starts[this.#head + i] = offset;
        this.#lengths[this.#head + i] = recordLength;
        this.#sizes[this.#head + i] = size;
        offset = (offset + recordLength) % ring.length;
        this.#waitingBytes += size;
      }
      this.#waitingLength += length;
    }
    this.#release(batch);
  }

  /** Gives up every waiting record (close timed out). Returns how many. */
  dropWaiting(): number {
    const count = this.waiting;
    this.#dropped += count;
    this.#starts = [];
    this.#lengths = [];
    this.#sizes = [];
    this.#head = 0;
    this.#tail = 0;
    this.#waitingBytes = 0;
    this.#waitingLength = 0;
    return count;
  }

  /** Gives up a batch still in flight on a connection that is being abandoned. */
  dropInFlight(batch: Batch): void {
    this.#leaveFlight(batch);
    this.#dropped += batch.count;
    this.#release(batch);
  }

  /** A settled batch's buffer goes back for reuse: the socket is done with it. */
  #release(batch: Batch): void {
    const backing = batch.backing;
    batch.backing = null;
    if (backing !== null && this.#spare.length < MAX_SPARE_BATCHES) this.#spare.push(backing);
  }

  #leaveFlight(batch: Batch): void {
    this.#inFlightRecords -= batch.count;
    this.#inFlightBytes -= batch.bytes;
  }

  /** Drops the oldest waiting records until `bytes` more fit the bound (or nothing waits). */
  #makeRoom(bytes: number): void {
    while (this.waiting > 0 && this.#waitingBytes + this.#inFlightBytes + bytes > this.maxBytes) {
      this.#waitingBytes -= this.#sizes[this.#head] as number;
      this.#waitingLength -= this.#lengths[this.#head] as number;
      this.#head++;
      this.#dropped++;
      this.#compact();
    }
  }

  /**
   * Where `length` bytes go: right after the newest record, going on at the ring's start when
   * they run past its end. The waiting records fill one stretch of the ring from the oldest,
   * round the end if need be, so all the rest is free. Records used to be kept in one piece:
   * then, in an outage at the bound, a record that fitted only in two pieces made a new ring of
   * full size once per trip round it, and RSS grew past the bound's allowance in a run of the
   * outage benchmark (+43.6 MiB against 36).
   */
  #place(length: number): number {
    if (this.waiting === 0) this.#tail = 0;
    const ring = this.#ring;
    if (ring === null || ring.length - this.#waitingLength < length) this.#relayout(length);
    return this.#tail;
  }

  /**
   * Lays the waiting records out from offset 0 in a new ring, twice as large while below the
   * bound (or as large as they need, for records counted at other than their length).
   */
  #relayout(length: number): void {
    const old = this.#ring;
    const needed = this.#waitingLength + length;
    const doubled = old === null ? INITIAL_RING_BYTES : old.length * 2;
    const size = Math.max(Math.min(doubled, Math.max(this.maxBytes, old?.length ?? 0)), needed);
    const ring = Buffer.allocUnsafe(size);
    this.#ringAllocations++;
    let offset = 0;
    for (let i = this.#head; i < this.#sizes.length; i++) {
      const from = this.#starts[i] as number;
      this.#starts[i] = offset;
      offset += copyOut(old as Buffer, from, this.#lengths[i] as number, ring, offset);
    }
    this.#ring = ring;
    this.#tail = offset;
  }

  /** Reclaims the consumed front of the index arrays once it is large, keeping take() O(batch). */
  #compact(): void {
    if (this.#head === this.#sizes.length) {
      this.#starts = [];
      this.#lengths = [];
      this.#sizes = [];
      this.#head = 0;
    } else if (this.#head > 1024 && this.#head * 2 > this.#sizes.length) {
      this.#starts = this.#starts.slice(this.#head);
      this.#lengths = this.#lengths.slice(this.#head);
      this.#sizes = this.#sizes.slice(this.#head);
      this.#head = 0;
    }
  }
}
