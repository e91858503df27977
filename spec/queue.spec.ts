/**
 * RecordQueue: FIFO order, batches bounded by bytes, drop-oldest at the bound, and exact counters
 * (`records === sent + dropped + buffered`) after every operation, checked against a model.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { RecordQueue } from '../lib/queue.js';
import type { Batch, QueueCounts } from '../lib/queue.js';

/** mulberry32: a small seeded PRNG, so a failing run can be replayed. */
function prng(seed: number): () => number {
  let state = seed >>> 0;
  return function next(): number {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function checkInvariant(queue: RecordQueue): QueueCounts {
  const counts = queue.counts();
  assert.equal(
    counts.records,
    counts.sent + counts.dropped + counts.buffered,
    `invariant broken: ${JSON.stringify(counts)}`,
  );
  assert.ok(counts.buffered >= 0 && counts.bufferedBytes >= 0, `negative counts: ${JSON.stringify(counts)}`);
  assert.ok(counts.bufferedBytes <= queue.maxBytes, `over the bound: ${JSON.stringify(counts)} > ${queue.maxBytes}`);
  return counts;
}

/** Pushes a record whose line is its name and whose size is given. */
function push(queue: RecordQueue, name: string, bytes = 10): number {
  return queue.push(name, bytes);
}

function takeAll(queue: RecordQueue, limit = Infinity): Batch {
  const batch = queue.take(limit);
  assert.ok(batch, 'expected a batch');
  return batch;
}

describe('RecordQueue', () => {
  it('starts empty and idle', () => {
    const queue = new RecordQueue(100);
    assert.deepEqual(queue.counts(), { records: 0, sent: 0, dropped: 0, buffered: 0, bufferedBytes: 0 });
    assert.equal(queue.idle, true);
    assert.equal(queue.waiting, 0);
    assert.equal(queue.inFlight, 0);
    assert.equal(queue.take(1000), null);
  });

  it('keeps FIFO order across takes', () => {
    const queue = new RecordQueue(1000);
    for (let i = 0; i < 20; i++) assert.equal(push(queue, `r${i};`), 0);
    const seen: string[] = [];
    for (let batch = queue.take(35); batch; batch = queue.take(35)) {
      seen.push(...batch.lines);
      assert.equal(batch.text, batch.lines.join(''));
      queue.sent(batch);
      checkInvariant(queue);
    }
    assert.deepEqual(
      seen,
      Array.from({ length: 20 }, (_, i) => `r${i};`),
    );
    assert.deepEqual(queue.counts(), { records: 20, sent: 20, dropped: 0, buffered: 0, bufferedBytes: 0 });
    assert.equal(queue.idle, true);
  });

  it('take() respects the byte limit', () => {
    const queue = new RecordQueue(1000);
    push(queue, 'a', 10);
    push(queue, 'b', 10);
    push(queue, 'c', 10);
    push(queue, 'd', 30);
    const first = takeAll(queue, 25);
    assert.deepEqual(first.lines, ['a', 'b']);
    assert.deepEqual(first.sizes, [10, 10]);
    assert.equal(first.bytes, 20);
    assert.equal(first.text, 'ab');
    const exact = takeAll(queue, 40);
    assert.deepEqual(exact.lines, ['c', 'd'], 'a batch may fill the limit exactly');
    assert.equal(exact.bytes, 40);
    assert.equal(queue.take(1000), null);
    assert.equal(queue.inFlight, 4);
    assert.equal(queue.counts().bufferedBytes, 60);
  });

  it('take() always takes at least one record, even one larger than the limit', () => {
    const queue = new RecordQueue(1000);
    push(queue, 'big', 500);
    push(queue, 'small', 1);
    const first = takeAll(queue, 10);
    assert.deepEqual(first.lines, ['big']);
    assert.equal(first.bytes, 500);
    assert.equal(first.text, 'big');
    const second = takeAll(queue, 0);
    assert.deepEqual(second.lines, ['small']);
  });

  it('counts in-flight records as buffered until they are settled', () => {
    const queue = new RecordQueue(1000);
    push(queue, 'a', 7);
    push(queue, 'b', 5);
    const batch = takeAll(queue);
    assert.equal(queue.waiting, 0);
    assert.equal(queue.inFlight, 2);
    assert.equal(queue.idle, false);
    assert.deepEqual(queue.counts(), { records: 2, sent: 0, dropped: 0, buffered: 2, bufferedBytes: 12 });
    queue.sent(batch);
    assert.deepEqual(queue.counts(), { records: 2, sent: 2, dropped: 0, buffered: 0, bufferedBytes: 0 });
    assert.equal(queue.idle, true);
  });

  it('drops the oldest waiting records when full, and counts them', () => {
    const queue = new RecordQueue(30);
    assert.equal(push(queue, 'a'), 0);
    assert.equal(push(queue, 'b'), 0);
    assert.equal(push(queue, 'c'), 0);
    assert.deepEqual(queue.counts(), { records: 3, sent: 0, dropped: 0, buffered: 3, bufferedBytes: 30 });
    assert.equal(push(queue, 'd'), 1);
    assert.deepEqual(queue.counts(), { records: 4, sent: 0, dropped: 1, buffered: 3, bufferedBytes: 30 });
    assert.equal(push(queue, 'e', 20), 2, 'room for 20 bytes takes two 10-byte records');
    assert.deepEqual(queue.counts(), { records: 5, sent: 0, dropped: 3, buffered: 2, bufferedBytes: 30 });
    assert.deepEqual(takeAll(queue).lines, ['d', 'e']);
  });

  it('a record of exactly maxBytes is accepted, making room for it', () => {
    const queue = new RecordQueue(30);
    push(queue, 'a');
    push(queue, 'b');
    assert.equal(push(queue, 'whole', 30), 2);
    assert.deepEqual(queue.counts(), { records: 3, sent: 0, dropped: 2, buffered: 1, bufferedBytes: 30 });
    assert.deepEqual(takeAll(queue).lines, ['whole']);
  });

  it('a record larger than maxBytes is dropped and counted, and evicts nothing', () => {
    const queue = new RecordQueue(30);
    push(queue, 'a');
    push(queue, 'b');
    assert.equal(push(queue, 'huge', 31), 1);
    assert.deepEqual(queue.counts(), { records: 3, sent: 0, dropped: 1, buffered: 2, bufferedBytes: 20 });
    assert.deepEqual(takeAll(queue).lines, ['a', 'b']);
    checkInvariant(queue);
  });

  it('in-flight bytes count toward the bound and are never evicted', () => {
    const queue = new RecordQueue(100);
    push(queue, 'flying', 60);
    const batch = takeAll(queue);
    // 60 in flight + 50 > 100, and there is nothing waiting to drop: the new record goes.
    assert.equal(push(queue, 'too-big-now', 50), 1);
    assert.deepEqual(queue.counts(), { records: 2, sent: 0, dropped: 1, buffered: 1, bufferedBytes: 60 });
    assert.equal(push(queue, 'fits', 40), 0);
    assert.deepEqual(queue.counts(), { records: 3, sent: 0, dropped: 1, buffered: 2, bufferedBytes: 100 });
    // Room for 10 more: the waiting record goes, the in-flight one stays.
    assert.equal(push(queue, 'newest', 10), 1);
    assert.deepEqual(queue.counts(), { records: 4, sent: 0, dropped: 2, buffered: 2, bufferedBytes: 70 });
    assert.equal(queue.inFlight, 1);
    queue.sent(batch);
    assert.deepEqual(queue.counts(), { records: 4, sent: 1, dropped: 2, buffered: 1, bufferedBytes: 10 });
    assert.deepEqual(takeAll(queue).lines, ['newest']);
  });

  it('a record that cannot fit beside what is in flight is dropped alone, not after the waiting ones', () => {
    const queue = new RecordQueue(100);
    push(queue, 'flying', 60);
    takeAll(queue);
    assert.equal(push(queue, 'waiting', 30), 0);
    // 60 in flight + 50 > 100 even with nothing waiting: dropping 'waiting' would not make room.
    assert.equal(push(queue, 'too-big-now', 50), 1);
    assert.deepEqual(queue.counts(), { records: 3, sent: 0, dropped: 1, buffered: 2, bufferedBytes: 90 });
    assert.deepEqual(takeAll(queue).lines, ['waiting']);
  });

  it('requeue() puts a batch back at the front, in order', () => {
    const queue = new RecordQueue(1000);
    for (const name of ['a', 'b', 'c']) push(queue, name);
    const batch = takeAll(queue, 20);
    assert.deepEqual(batch.lines, ['a', 'b']);
    push(queue, 'd');
    queue.requeue(batch);
    assert.deepEqual(queue.counts(), { records: 4, sent: 0, dropped: 0, buffered: 4, bufferedBytes: 40 });
    assert.equal(queue.inFlight, 0);
    assert.equal(queue.waiting, 4);
    assert.deepEqual(takeAll(queue).lines, ['a', 'b', 'c', 'd']);
  });

  it('requeue() of several batches keeps the original order when settled newest first', () => {
    const queue = new RecordQueue(1000);
    for (const name of ['a', 'b', 'c', 'd', 'e']) push(queue, name);
    const first = takeAll(queue, 20);
    const second = takeAll(queue, 20);
    // A failed connection requeues what it had in flight, newest batch first.
    queue.requeue(second);
    queue.requeue(first);
    assert.deepEqual(takeAll(queue).lines, ['a', 'b', 'c', 'd', 'e']);
    checkInvariant(queue);
  });

  it('requeue() with records that went out whole: those are sent, the rest goes back in order', () => {
    const queue = new RecordQueue(1000);
    for (const name of ['a', 'b', 'c', 'd']) push(queue, name);
    const batch = takeAll(queue, 30);
    assert.deepEqual(batch.lines, ['a', 'b', 'c']);
    push(queue, 'e');
    queue.requeue(batch, 2);
    assert.deepEqual(checkInvariant(queue), { records: 5, sent: 2, dropped: 0, buffered: 3, bufferedBytes: 30 });
    assert.equal(queue.waiting, 3);
    assert.deepEqual(takeAll(queue).lines, ['c', 'd', 'e']);
  });

  it('requeue() puts the batch back in the ring where it was: the backlog is not laid out anew', () => {
    const queue = new RecordQueue(1 << 20);
    // A backlog of waiting records; four batches taken from its front, more records behind it.
    for (let i = 0; i < 20_000; i++) queue.push(`record ${i}\r\n`);
    const batches = [0, 1, 2, 3].map(() => takeAll(queue, 4096));
    for (let i = 20_000; i < 20_500; i++) queue.push(`record ${i}\r\n`);
    const allocations = queue.ringAllocations;
    for (const batch of [...batches].reverse()) queue.requeue(batch);
    assert.equal(queue.ringAllocations, allocations, 'no new ring');
    const lines: string[] = [];
    for (let batch = queue.take(65536); batch; batch = queue.take(65536)) {
      lines.push(...batch.lines);
      queue.sent(batch);
    }
    const first = Number(/\d+/.exec(lines[0] ?? '')?.[0]);
    assert.deepEqual(
      lines,
      Array.from({ length: 20_500 - first }, (_, i) => `record ${first + i}\r\n`),
    );
    checkInvariant(queue);
  });

  it('requeue() never goes over the bound: in-flight bytes already count toward it', () => {
    const queue = new RecordQueue(40);
    for (const name of ['a', 'b', 'c', 'd']) push(queue, name);
    const batch = takeAll(queue, 20);
    assert.equal(push(queue, 'e'), 1, 'c is dropped: a and b are in flight');
    assert.deepEqual(queue.counts(), { records: 5, sent: 0, dropped: 1, buffered: 4, bufferedBytes: 40 });
    queue.requeue(batch);
    const counts = checkInvariant(queue);
    assert.deepEqual(counts, { records: 5, sent: 0, dropped: 1, buffered: 4, bufferedBytes: 40 });
    assert.deepEqual(takeAll(queue).lines, ['a', 'b', 'd', 'e']);
  });

  it('dropWaiting() gives up waiting records only', () => {
    const queue = new RecordQueue(1000);
    for (const name of ['a', 'b', 'c', 'd']) push(queue, name);
    const batch = takeAll(queue, 10);
    assert.equal(queue.dropWaiting(), 3);
    assert.deepEqual(queue.counts(), { records: 4, sent: 0, dropped: 3, buffered: 1, bufferedBytes: 10 });
    assert.equal(queue.waiting, 0);
    assert.equal(queue.take(1000), null);
    queue.sent(batch);
    assert.deepEqual(queue.counts(), { records: 4, sent: 1, dropped: 3, buffered: 0, bufferedBytes: 0 });
    assert.equal(queue.dropWaiting(), 0);
    assert.equal(queue.counts().dropped, 3);
  });

  it('dropInFlight() gives up a batch that was taken', () => {
    const queue = new RecordQueue(1000);
    for (const name of ['a', 'b', 'c']) push(queue, name);
    const batch = takeAll(queue, 20);
    queue.dropInFlight(batch);
    assert.deepEqual(queue.counts(), { records: 3, sent: 0, dropped: 2, buffered: 1, bufferedBytes: 10 });
    assert.equal(queue.inFlight, 0);
    assert.deepEqual(takeAll(queue).lines, ['c']);
  });

  describe('the pino-socket case: a queue that was full and drained accepts and gives records again', () => {
    function fillAndDrain(settle: (queue: RecordQueue, batch: Batch) => void): RecordQueue {
      const queue = new RecordQueue(100);
      for (let i = 0; i < 15; i++) push(queue, `old${i}`);
      let counts = checkInvariant(queue);
      assert.equal(counts.bufferedBytes, 100, 'full');
      assert.equal(counts.dropped, 5);
      for (let batch = queue.take(30); batch; batch = queue.take(30)) settle(queue, batch);
      counts = checkInvariant(queue);
      assert.equal(counts.buffered, 0);
      assert.equal(counts.bufferedBytes, 0, 'draining must bring the byte count back to 0');
      assert.equal(queue.idle, true);
      return queue;
    }

    function pushAgain(queue: RecordQueue): void {
      const before = queue.counts();
      assert.equal(push(queue, 'fresh', 10), 0, 'a record pushed after draining must be accepted');
      const batch = queue.take(64 * 1024);
      assert.ok(batch, 'a record pushed after draining must be taken');
      assert.deepEqual(batch.lines, ['fresh']);
      queue.sent(batch);
      assert.deepEqual(queue.counts(), {
        records: before.records + 1,
        sent: before.sent + 1,
        dropped: before.dropped,
        buffered: 0,
        bufferedBytes: 0,
      });
      // And a full bound's worth again, with nothing dropped.
      for (let i = 0; i < 10; i++) assert.equal(push(queue, `again${i}`), 0);
      assert.equal(queue.counts().bufferedBytes, 100);
      assert.equal(takeAll(queue).lines.length, 10);
    }

    it('drained by sent()', () => {
      pushAgain(fillAndDrain((queue, batch) => queue.sent(batch)));
    });

    it('drained by dropInFlight()', () => {
      pushAgain(fillAndDrain((queue, batch) => queue.dropInFlight(batch)));
    });

    it('drained by dropWaiting()', () => {
      const queue = new RecordQueue(100);
      for (let i = 0; i < 15; i++) push(queue, `old${i}`);
      assert.equal(queue.dropWaiting(), 10);
      assert.deepEqual(queue.counts(), { records: 15, sent: 0, dropped: 15, buffered: 0, bufferedBytes: 0 });
      pushAgain(queue);
    });

    it('drained after a requeue', () => {
      let requeued = false;
      pushAgain(
        fillAndDrain((queue, batch) => {
          if (!requeued) {
            requeued = true;
            queue.requeue(batch);
          } else queue.sent(batch);
        }),
      );
    });

    it('drained by eviction: records that were all dropped for a huge one', () => {
      const queue = new RecordQueue(100);
      for (let i = 0; i < 10; i++) push(queue, `old${i}`);
      assert.equal(push(queue, 'whole', 100), 10);
      const batch = takeAll(queue);
      queue.sent(batch);
      assert.equal(queue.counts().bufferedBytes, 0);
      pushAgain(queue);
    });
  });

  it('reuses the memory of settled batches, never of one still in flight', () => {
    const queue = new RecordQueue(1_000_000);
    for (let i = 0; i < 3; i++) push(queue, `first-${i};`);
    const held = takeAll(queue);
    const heldText = held.text;
    const seen = new Set<ArrayBufferLike>();
    for (let round = 0; round < 50; round++) {
      for (let i = 0; i < 5; i++) push(queue, `r${round}-${i};`);
      const batch = takeAll(queue);
      assert.equal(batch.text, `r${round}-0;r${round}-1;r${round}-2;r${round}-3;r${round}-4;`);
      assert.notEqual(batch.data.buffer, held.data.buffer, 'an in-flight batch keeps its memory');
      seen.add(batch.data.buffer);
      if (round % 2 === 0) queue.sent(batch);
      else queue.dropInFlight(batch);
      assert.equal(held.text, heldText, 'the in-flight batch is intact');
    }
    assert.equal(seen.size, 1, 'one buffer went round: settled batches give theirs back');
    queue.requeue(held);
    assert.equal(takeAll(queue).text, heldText, 'a requeued batch keeps its bytes');
    checkInvariant(queue);
  });

  it('keeps the ring a backlog grew, and reuses it for the next one', () => {
    const queue = new RecordQueue(8 * 1024 * 1024);
    const line = `${'x'.repeat(1022)}\r\n`;
    for (let i = 0; i < 3000; i++) queue.push(line);
    const grown = queue.ringBytes;
    assert.ok(grown >= 3000 * 1024, `the backlog grew the ring to ${grown} bytes`);
    for (let batch = queue.take(64 * 1024); batch; batch = queue.take(64 * 1024)) queue.sent(batch);
    assert.equal(queue.ringBytes, grown, 'drained, the ring stays for the next outage');
    for (let i = 0; i < 3000; i++) queue.push(line);
    assert.equal(queue.ringBytes, grown, 'and the next backlog fits in it without growing');
    checkInvariant(queue);
  });

  it('at the bound, makes no new ring as records go round it: they continue past its end', () => {
    const queue = new RecordQueue(64 * 1024);
    const lines: string[] = [];
    // Sizes that do not divide the ring: over 40 trips round it, records keep landing across its end.
    for (let i = 0; i < 3000; i++) {
      const line = `#${i}:${'y'.repeat(700 + ((i * 37) % 500))}\r\n`;
      lines.push(line);
      queue.push(line);
    }
    assert.equal(queue.ringAllocations, 1, 'one ring, made once');
    assert.equal(queue.ringBytes, 64 * 1024);
    const counts = checkInvariant(queue);
    const kept = lines.slice(lines.length - counts.buffered);
    assert.ok(counts.dropped > 2000, `the oldest were dropped (${counts.dropped})`);
    assert.deepEqual(queue.take(Infinity)?.lines, kept, 'the newest records, intact and in order');
  });

  it('stays correct after compacting a long consumed front', () => {
    const queue = new RecordQueue(1_000_000);
    for (let i = 0; i < 3000; i++) push(queue, `r${i},`, 1);
    for (let i = 0; i < 2500; i++) {
      const batch = takeAll(queue, 1);
      assert.deepEqual(batch.lines, [`r${i},`]);
      queue.sent(batch);
    }
    for (let i = 3000; i < 3100; i++) push(queue, `r${i},`, 1);
    const rest = takeAll(queue);
    assert.deepEqual(
      rest.lines,
      Array.from({ length: 600 }, (_, k) => `r${2500 + k},`),
    );
    queue.sent(rest);
    assert.deepEqual(queue.counts(), { records: 3100, sent: 3100, dropped: 0, buffered: 0, bufferedBytes: 0 });
  });

  it('stays correct when eviction consumes a long front', () => {
    const queue = new RecordQueue(2000);
    for (let i = 0; i < 2000; i++) push(queue, `r${i},`, 1);
    // Each big push evicts many single-byte records from the front.
    assert.equal(push(queue, 'big1', 1500), 1500);
    assert.equal(push(queue, 'big2', 400), 400, 'evicts the other 400 single-byte records');
    assert.deepEqual(queue.counts(), { records: 2002, sent: 0, dropped: 1900, buffered: 102, bufferedBytes: 2000 });
    const batch = takeAll(queue);
    assert.deepEqual(batch.lines, [...Array.from({ length: 100 }, (_, k) => `r${1900 + k},`), 'big1', 'big2']);
  });

  describe('randomized against a model', () => {
    interface ModelRecord {
      readonly line: string;
      readonly bytes: number;
    }

    /** The simplest queue that does what the real one promises. */
    class Model {
      waiting: ModelRecord[] = [];
      inFlight = new Map<Batch, ModelRecord[]>();
      records = 0;
      sent = 0;
      dropped = 0;
      constructor(readonly maxBytes: number) {}

      bytes(): number {
        let total = 0;
        for (const r of this.waiting) total += r.bytes;
        for (const batch of this.inFlight.values()) for (const r of batch) total += r.bytes;
        return total;
      }

      waitingBytes(): number {
        let total = 0;
        for (const r of this.waiting) total += r.bytes;
        return total;
      }

      buffered(): number {
        let count = this.waiting.length;
        for (const batch of this.inFlight.values()) count += batch.length;
        return count;
      }

      push(record: ModelRecord): number {
        this.records++;
        // Too big for the bound, or for what in flight leaves of it: nothing waiting is dropped for it.
        if (record.bytes > this.maxBytes - (this.bytes() - this.waitingBytes())) {
          this.dropped++;
          return 1;
        }
        let dropped = 0;
        while (this.waiting.length > 0 && this.bytes() + record.bytes > this.maxBytes) {
          this.waiting.shift();
          dropped++;
        }
        if (this.bytes() + record.bytes > this.maxBytes) dropped++;
        else this.waiting.push(record);
        this.dropped += dropped;
        return dropped;
      }

      take(limit: number): ModelRecord[] {
        const taken: ModelRecord[] = [];
        let bytes = 0;
        while (this.waiting.length > 0) {
          const next = this.waiting[0] as ModelRecord;
          if (taken.length > 0 && bytes + next.bytes > limit) break;
          taken.push(next);
          bytes += next.bytes;
          this.waiting.shift();
        }
        return taken;
      }

      settle(batch: Batch): ModelRecord[] {
        const records = this.inFlight.get(batch);
        assert.ok(records);
        this.inFlight.delete(batch);
        return records;
      }

      requeue(batch: Batch, sentCount = 0): void {
        const records = this.settle(batch);
        this.sent += sentCount;
        this.waiting = records.slice(sentCount).concat(this.waiting);
        assert.ok(this.bytes() <= this.maxBytes, 'a requeue never exceeds the bound');
      }
    }

    function run(seed: number, operations: number): void {
      const random = prng(seed);
      const int = (n: number): number => Math.floor(random() * n);
      const maxBytes = 20 + int(200);
      const queue = new RecordQueue(maxBytes);
      const model = new Model(maxBytes);
      const batches: Batch[] = [];
      let serial = 0;
      const context = (op: string, i: number): string => `seed ${seed}, operation ${i} (${op})`;

      for (let i = 0; i < operations; i++) {
        const dice = int(100);
        let op: string;
        if (dice < 45) {
          op = 'push';
          // Mostly small, sometimes near or beyond the bound.
          const bytes = int(10) === 0 ? 1 + int(maxBytes + 20) : 1 + int(20);
          const record = { line: `#${serial++};`, bytes };
          assert.equal(queue.push(record.line, record.bytes), model.push(record), context(op, i));
        } else if (dice < 65) {
          op = 'take';
          const limit = int(4) === 0 ? 0 : int(maxBytes);
          const batch = queue.take(limit);
          const expected = model.take(limit);
          if (expected.length === 0) {
            assert.equal(batch, null, context(op, i));
          } else {
            assert.ok(batch, context(op, i));
            assert.deepEqual(
              batch.lines,
              expected.map((r) => r.line),
              context(op, i),
            );
            assert.deepEqual(
              batch.sizes,
              expected.map((r) => r.bytes),
              context(op, i),
            );
            assert.equal(
              batch.bytes,
              expected.reduce((n, r) => n + r.bytes, 0),
              context(op, i),
            );
            assert.equal(batch.text, expected.map((r) => r.line).join(''), context(op, i));
            model.inFlight.set(batch, expected);
            batches.push(batch);
          }
        } else if (dice < 98 && batches.length > 0) {
          // Settle one in-flight batch, usually the oldest (as a socket would), sometimes any.
          const index = int(3) === 0 ? int(batches.length) : 0;
          const batch = batches.splice(index, 1)[0] as Batch;
          const how = int(10);
          if (how < 6) {
            op = 'sent';
            queue.sent(batch);
            model.sent += model.settle(batch).length;
          } else if (how < 9) {
            op = 'requeue';
            // Sometimes the first records of the batch went out whole before the connection ended.
            const sentCount = int(2) === 0 ? int(batch.count) : 0;
            queue.requeue(batch, sentCount);
            model.requeue(batch, sentCount);
          } else {
            op = 'dropInFlight';
            queue.dropInFlight(batch);
            model.dropped += model.settle(batch).length;
          }
        } else {
          op = 'dropWaiting';
          const count = model.waiting.length;
          model.waiting = [];
          model.dropped += count;
          assert.equal(queue.dropWaiting(), count, context(op, i));
        }

        const counts = checkInvariant(queue);
        assert.deepEqual(
          counts,
          {
            records: model.records,
            sent: model.sent,
            dropped: model.dropped,
            buffered: model.buffered(),
            bufferedBytes: model.bytes(),
          },
          context(op, i),
        );
        assert.equal(queue.waiting, model.waiting.length, context(op, i));
        assert.equal(queue.inFlight, counts.buffered - model.waiting.length, context(op, i));
        assert.equal(queue.idle, model.buffered() === 0, context(op, i));
      }

      // Drain completely; the queue must then be empty and accept a new record.
      for (const batch of batches.splice(0)) {
        queue.sent(batch);
        model.sent += model.settle(batch).length;
      }
      for (let batch = queue.take(64); batch; batch = queue.take(64)) {
        assert.deepEqual(
          batch.lines,
          model.take(64).map((r) => r.line),
          `seed ${seed}, drain`,
        );
        queue.sent(batch);
        model.sent += batch.lines.length;
      }
      const counts = checkInvariant(queue);
      assert.equal(counts.buffered, 0);
      assert.equal(counts.bufferedBytes, 0);
      assert.equal(counts.sent, model.sent);
      assert.equal(queue.push('last', 1), 0);
      assert.deepEqual(queue.take(1)?.lines, ['last']);
    }

    for (const seed of [1, 2, 3, 42, 1234, 0xdecafbad]) {
      it(`seed ${seed}: 4000 operations keep the counters exact`, () => {
        run(seed, 4000);
      });
    }
  });
});

describe('RecordQueue ring buffer: records counted at their real UTF-8 size', () => {
  for (const seed of [7, 99, 2026]) {
    it(`seed ${seed}: wraps, grows, relays out, drops the oldest and requeues, bytes intact and in order`, () => {
      const random = prng(seed);
      const queue = new RecordQueue(4096);
      /** What should be waiting, oldest first, and what is in flight, per batch. */
      let waiting: string[] = [];
      const flying = new Map<Batch, string[]>();
      let serial = 0;
      for (let step = 0; step < 6000; step++) {
        const roll = random();
        if (roll < 0.6) {
          // Multi-byte text too: the ring stores UTF-8, sizes are bytes.
          const line = `#${serial++}:${'é€x'.repeat(Math.floor(random() * 60))}\r\n`;
          const before = queue.counts().dropped;
          queue.push(line);
          const dropped = queue.counts().dropped - before;
          // Either the oldest made room and the new one was kept, or (in-flight bytes leaving no
          // room, whatever waits) the new one alone was dropped.
          const inFlightBytes = [...flying.values()].flat().reduce((n, l) => n + Buffer.byteLength(l), 0);
          const kept = inFlightBytes + Buffer.byteLength(line) <= 4096;
          if (!kept) assert.equal(dropped, 1, `step ${step}: only the record that cannot fit`);
          waiting = kept ? [...waiting.slice(dropped), line] : waiting;
        } else if (roll < 0.85) {
          const batch = queue.take(Math.floor(random() * 2000) + 1);
          if (batch) {
            const expected = waiting.slice(0, batch.count);
            waiting = waiting.slice(batch.count);
            assert.deepEqual(batch.lines, expected, `step ${step}: a batch holds the oldest records, intact`);
            assert.equal(batch.data.length, Buffer.byteLength(expected.join('')));
            flying.set(batch, expected);
          }
        } else if (flying.size > 0) {
          const [batch, lines] = [...flying.entries()][0]!;
          flying.delete(batch);
          if (random() < 0.5) queue.sent(batch);
          else {
            // Only the newest batch in flight can go back ahead of the waiting ones in order.
            for (const [other, otherLines] of [...flying.entries()].reverse()) {
              flying.delete(other);
              queue.requeue(other);
              waiting = [...otherLines, ...waiting];
            }
            queue.requeue(batch);
            waiting = [...lines, ...waiting];
          }
        }
        checkInvariant(queue);
        assert.equal(queue.waiting, waiting.length, `step ${step}: waiting count`);
      }
      const rest = queue.take(Infinity);
      assert.deepEqual(rest?.lines ?? [], waiting);
    });
  }
});
