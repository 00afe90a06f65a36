import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { test } from 'node:test';
import { ReplyDecoder, RequestDecoder, decodeAllocMap, encodeAllocMap, encodeReplyHeader, encodeRequestHeader } from '../../src/replica/codec';
import { MAX_IO_BYTES, Op, ProtocolError, type RequestHeader, Status } from '../../src/replica/protocol';
import { RangeLock } from '../../src/replica/rangelock';
import { randomBytes } from './helpers';

function frame(h: Omit<RequestHeader, 'payloadLength'>, payload: Buffer = Buffer.alloc(0)): Buffer {
  const header = encodeRequestHeader({ ...h, payloadLength: payload.length }, Buffer.from(h.replicaId, 'latin1'));
  return Buffer.concat([header, payload]);
}

test('request frames survive any split into chunks, with 64-bit fields intact', () => {
  const big = 2 ** 40 + 12345; // beyond 32 bits
  const payload = randomBytes(5000);
  const stream = Buffer.concat([
    frame({ op: Op.WRITE, flags: 1, requestId: 7, replicaId: 'vol-1.r0', epoch: 2 ** 52 + 1, offset: big, length: 5000 }, payload),
    frame({ op: Op.READ, flags: 0, requestId: 0xffffffff, replicaId: 'x', epoch: 0, offset: 0, length: 4096 }),
  ]);
  for (const step of [1, 3, 36, 37, 1000, stream.length]) {
    const d = new RequestDecoder();
    const got = [];
    for (let i = 0; i < stream.length; i += step) {
      d.push(stream.subarray(i, i + step));
      for (let r = d.next(); r; r = d.next()) got.push(r);
    }
    assert.equal(got.length, 2, `step ${step}`);
    assert.equal(got[0].epoch, 2 ** 52 + 1);
    assert.equal(got[0].offset, big);
    assert.equal(got[0].replicaId, 'vol-1.r0');
    assert.equal(got[0].flags, 1);
    assert.ok(got[0].payload.equals(payload));
    assert.equal(got[1].requestId, 0xffffffff);
    assert.equal(got[1].payload.length, 0);
  }
});

test('a long stream of frames cut at random points decodes exactly', () => {
  const frames = Array.from({ length: 300 }, (_, i) => ({
    op: Op.WRITE,
    flags: 0,
    requestId: i,
    replicaId: 'r'.repeat(1 + (i % 40)),
    epoch: i * 3,
    offset: i * 4096,
    length: 0,
    payload: randomBytes([0, 1, 35, 36, 37, 100, 4096, 70000][i % 8]),
  }));
  const stream = Buffer.concat(frames.map((f) => frame({ ...f, length: f.payload.length }, f.payload)));
  for (let trial = 0; trial < 20; trial++) {
    const d = new RequestDecoder();
    const got = [];
    for (let i = 0; i < stream.length; ) {
      const n = 1 + crypto.randomInt(trial % 2 === 0 ? 80 : 20000);
      d.push(stream.subarray(i, i + n));
      i += n;
      for (let r = d.next(); r; r = d.next()) got.push(r);
    }
    assert.equal(got.length, frames.length);
    got.forEach((r, i) => {
      assert.equal(r.requestId, i);
      assert.equal(r.replicaId, frames[i].replicaId);
      assert.equal(r.epoch, frames[i].epoch);
      assert.ok(r.payload.equals(frames[i].payload), `payload of frame ${i}, trial ${trial}`);
    });
  }
});

test('a bad magic is a protocol error; an oversized payload is skipped and the stream goes on', () => {
  const d = new RequestDecoder();
  d.push(Buffer.alloc(64, 0x41));
  assert.throws(() => d.next(), ProtocolError);

  const e = new RequestDecoder();
  const oversized = MAX_IO_BYTES + 1;
  const header = encodeRequestHeader({ op: Op.WRITE, flags: 0, requestId: 1, replicaId: 'r', epoch: 1, offset: 0, length: oversized, payloadLength: oversized }, Buffer.from('r'));
  e.push(header);
  const refused = e.next();
  assert.equal(refused?.refused?.status, Status.EMSGSIZE);
  // Feed the payload in pieces, then a normal request.
  for (let left = oversized; left > 0; left -= 1 << 20) {
    e.push(Buffer.alloc(Math.min(left, 1 << 20)));
    assert.equal(e.next(), undefined);
  }
  e.push(frame({ op: Op.FLUSH, flags: 0, requestId: 2, replicaId: 'r', epoch: 1, offset: 0, length: 0 }));
  assert.equal(e.next()?.requestId, 2);
});

test('reply frames and ALLOC_MAP payloads round-trip', () => {
  const payload = randomBytes(100);
  const d = new ReplyDecoder();
  const bytes = Buffer.concat([encodeReplyHeader({ status: Status.ESTALE, requestId: 9, epoch: 2 ** 33, payloadLength: 100 }), payload]);
  d.push(bytes.subarray(0, 30));
  assert.equal(d.next(), undefined);
  d.push(bytes.subarray(30));
  const r = d.next();
  assert.equal(r?.status, Status.ESTALE);
  assert.equal(r?.epoch, 2 ** 33);
  assert.ok(r?.payload.equals(payload));

  const extents = [
    { offset: 0, length: 4096 },
    { offset: 2 ** 41, length: 2 ** 33 },
  ];
  assert.deepEqual(decodeAllocMap(encodeAllocMap(extents, 2 ** 42)), { extents, scannedTo: 2 ** 42 });
});

test('RangeLock orders conflicting operations by arrival and lets the rest run', async () => {
  const lock = new RangeLock();
  const order: string[] = [];
  const a = lock.acquire(0, 100, 'exclusive');
  const b = lock.acquire(50, 100, 'exclusive'); // overlaps a
  const c = lock.acquire(200, 10, 'exclusive'); // disjoint
  const r1 = lock.acquire(0, 10, 'shared'); // after a
  const r2 = lock.acquire(0, 10, 'shared'); // reads do not wait for reads
  void b.ready.then(() => order.push('b'));
  void c.ready.then(() => order.push('c'));
  void r1.ready.then(() => order.push('r1'));
  void r2.ready.then(() => order.push('r2'));
  await a.ready;
  await c.ready;
  assert.deepEqual(order, ['c'], 'only the disjoint operation ran while a holds');
  a.release();
  await Promise.all([b.ready, r1.ready, r2.ready]);
  assert.deepEqual(order.sort(), ['b', 'c', 'r1', 'r2']);
  const w = lock.acquire(5, 1, 'exclusive'); // must wait for both reads
  let wReady = false;
  void w.ready.then(() => (wReady = true));
  r1.release();
  await Promise.resolve();
  await Promise.resolve();
  assert.equal(wReady, false);
  r2.release();
  await w.ready;
  const flushed = lock.barrier(0, 1000); // waits for b (still held), not for reads
  let barrierDone = false;
  void flushed.then(() => (barrierDone = true));
  w.release();
  await Promise.resolve();
  assert.equal(barrierDone, false);
  b.release();
  c.release();
  await flushed;
  assert.equal(lock.size, 0);
});
