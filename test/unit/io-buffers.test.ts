// The data path's buffer reuse: a pooled buffer is handed out to one user at a
// time, and bytes cut from a reused socket read buffer never change after the
// buffer is overwritten by the next read.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { test } from 'node:test';
import { BufferPool } from '../../src/util/buffer-pool';
import { ByteQueue } from '../../src/util/byte-queue';
import { RequestDecoder, encodeRequestHeader } from '../../src/replica/codec';
import { Op } from '../../src/replica/protocol';

test('the pool reuses given-back buffers, never lends one twice, and ignores foreign buffers', () => {
  const pool = new BufferPool(8 * 1024 * 1024);
  const a = pool.take(1024 * 1024);
  const b = pool.take(1024 * 1024);
  assert.equal(a.length, 1024 * 1024);
  assert.notEqual(a.buffer, b.buffer);
  pool.give(a);
  pool.give(a); // a second give of the same buffer is ignored, not a second free entry
  assert.equal(pool.idleBytes, 1024 * 1024);
  const c = pool.take(700 * 1024); // same size class (1 MiB)
  assert.equal(c.buffer, a.buffer);
  assert.equal(c.length, 700 * 1024);
  const d = pool.take(1024 * 1024);
  assert.notEqual(d.buffer, a.buffer, 'a lent buffer was handed out again');
  pool.give(Buffer.allocUnsafe(1024 * 1024)); // not from the pool
  pool.give(Buffer.from(new ArrayBuffer(4096))); // not from the pool either
  assert.equal(pool.idleBytes, 0);
  assert.throws(() => pool.give(b.subarray(10)), /view/);
});

test('the pool keeps at most its cap idle and serves tiny buffers outside it', () => {
  const pool = new BufferPool(2 * 1024 * 1024);
  const bufs = [pool.take(1 << 20), pool.take(1 << 20), pool.take(1 << 20)];
  for (const b of bufs) pool.give(b);
  assert.equal(pool.idleBytes, 2 * 1024 * 1024);
  const tiny = pool.take(100);
  pool.give(tiny);
  assert.equal(pool.idleBytes, 2 * 1024 * 1024);
});

/**
 * Feeds `stream` like a socket reading into one reused buffer (scribbled over
 * after every read), or straight into the buffer `direct` offers, as
 * socket-input.ts does. Returns how many bytes went in directly.
 */
function feedBorrowed(stream: Buffer, cuts: number[], onChunk: (chunk: Buffer) => void, direct?: () => Buffer | undefined): number {
  const reused = Buffer.alloc(256 * 1024);
  let at = 0;
  let directBytes = 0;
  for (const size of cuts) {
    const target = direct?.();
    const into = target !== undefined && target.length > 0 ? target : reused;
    const n = Math.min(size, stream.length - at, into.length);
    if (n <= 0) break;
    stream.copy(into, 0, at, at + n);
    if (into !== reused) directBytes += n;
    onChunk(into.subarray(0, n));
    reused.fill(0xee); // the next read overwrites it
    at += n;
  }
  assert.equal(at, stream.length, 'cuts did not cover the stream');
  return directBytes;
}

test('messages cut from borrowed chunks stay intact after the chunk is reused', () => {
  const messages = [100, 4096, 70_000, 1, 300_000, 65_536, 5].map((n) => crypto.randomBytes(n));
  const stream = Buffer.concat(messages);
  for (const seed of [1, 2, 3, 4, 5]) {
    // Random cut points, some tiny, some as large as the reused buffer.
    let x = seed;
    const rand = (): number => (x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    const cuts: number[] = [];
    for (let total = 0; total < stream.length; ) {
      const size = rand() < 0.3 ? 1 + Math.floor(rand() * 40) : 1 + Math.floor(rand() * 256 * 1024);
      cuts.push(size);
      total += size;
    }
    const q = new ByteQueue();
    const got: Buffer[] = [];
    let next = 0;
    feedBorrowed(stream, cuts, (chunk) => {
      q.pushBorrowed(chunk);
      for (;;) {
        if (next >= messages.length) break;
        const m = q.takeWhole(messages[next].length);
        if (m === undefined) break;
        got.push(m);
        next++;
      }
      q.settle();
    });
    assert.equal(got.length, messages.length, `seed ${seed}`);
    got.forEach((m, i) => assert.ok(m.equals(messages[i]), `seed ${seed}: message ${i} changed`));
    assert.equal(q.length, 0);
  }
});

test('a queue holding a borrowed chunk keeps its unread bytes across settle', () => {
  const q = new ByteQueue();
  const reused = Buffer.from('abcdefghij');
  q.pushBorrowed(reused);
  assert.equal(q.take(3).toString(), 'abc');
  const view = q.peek(2);
  assert.equal(view.toString(), 'de');
  q.settle();
  reused.fill(0x2a);
  assert.equal(q.take(7).toString(), 'defghij');
  assert.throws(() => {
    q.pushBorrowed(Buffer.from('x'));
    q.push(Buffer.from('y')); // an owned push while a borrowed chunk is unsettled is a bug
  }, /borrowed/);
});

test('replica request payloads decoded from a reused read buffer match what was sent', () => {
  const payloads = [crypto.randomBytes(1024 * 1024), crypto.randomBytes(4096), crypto.randomBytes(200_000)];
  const frames = payloads.map((p, i) =>
    Buffer.concat([
      encodeRequestHeader({ op: Op.WRITE, flags: 0, requestId: i + 1, replicaId: 'r1', epoch: 3, offset: i * 4096, length: p.length, payloadLength: p.length }, Buffer.from('r1', 'latin1')),
      p,
    ]),
  );
  const stream = Buffer.concat(frames);
  const cuts = Array.from({ length: Math.ceil(stream.length / 1000) + 10 }, (_, i) => [17, 65_536, 256 * 1024, 999][i % 4]);
  for (const direct of [false, true]) {
    const d = new RequestDecoder();
    const got: Buffer[] = [];
    const directBytes = feedBorrowed(
      stream,
      cuts,
      (chunk) => {
        d.push(chunk, true);
        for (let r = d.next(); r; r = d.next()) got.push(r.payload);
        d.settle();
      },
      direct ? () => d.directTarget() : undefined,
    );
    assert.equal(got.length, payloads.length);
    got.forEach((p, i) => assert.ok(p.equals(payloads[i]), `payload ${i} changed (direct: ${direct})`));
    // Most of the 1 MiB payload lands in place when the decoder offers its buffer.
    if (direct) assert.ok(directBytes > 512 * 1024, `only ${directBytes} bytes went in directly`);
  }
});
