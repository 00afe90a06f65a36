// Small pieces of the NBD server in isolation: the input queue, extent
// clipping for BLOCK_STATUS, and backend geometry checks.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { backendGeometryProblems } from '../../src/nbd/backend';
import { ByteQueue } from '../../src/util/byte-queue';
import { clipExtents } from '../../src/nbd/transmission';
import { MemoryBackend } from '../helpers/nbd-fixtures';

describe('ByteQueue', () => {
  test('take cuts within one chunk without copying and copies across chunks', () => {
    const queue = new ByteQueue();
    const first = Buffer.from('abcdef');
    queue.push(first);
    queue.push(Buffer.alloc(0));
    queue.push(Buffer.from('ghij'));
    assert.equal(queue.length, 10);
    const head = queue.take(2);
    assert.equal(head.toString(), 'ab');
    assert.equal(head.buffer, first.buffer, 'a view into the received chunk');
    assert.equal(queue.take(6).toString(), 'cdefgh');
    assert.equal(queue.length, 2);
    assert.throws(() => queue.take(3), RangeError);
    assert.equal(queue.take(2).toString(), 'ij');
    assert.equal(queue.length, 0);
  });

  test('skip and takeInto stop at what is queued', () => {
    const queue = new ByteQueue();
    queue.push(Buffer.from('0123'));
    queue.push(Buffer.from('4567'));
    assert.equal(queue.skip(3), 3);
    const target = Buffer.alloc(8, '.');
    assert.equal(queue.takeInto(target, 2), 5);
    assert.equal(target.toString(), '..34567.');
    assert.equal(queue.skip(10), 0);
    queue.push(Buffer.from('89'));
    assert.equal(queue.takeInto(target, 7), 1);
    assert.equal(target.toString(), '..345678');
    assert.equal(queue.length, 1);
  });
});

describe('clipExtents', () => {
  test('drops empty extents, merges equal neighbours and cuts at the requested length', () => {
    const extents = [
      { length: 0, flags: 3 },
      { length: 4096, flags: 3 },
      { length: 4096, flags: 3 },
      { length: 8192, flags: 0 },
      { length: 1 << 20, flags: 3 },
    ];
    assert.deepEqual(clipExtents(extents, 10_000, false), [
      { length: 8192, flags: 3 },
      { length: 1808, flags: 0 },
    ]);
    assert.deepEqual(clipExtents(extents, 1 << 21, true), [{ length: 8192, flags: 3 }]);
    assert.throws(() => clipExtents([{ length: 0, flags: 0 }], 512, false), /no extents/);
  });
});

describe('backendGeometryProblems', () => {
  test('accepts sane geometry and names each problem otherwise', () => {
    assert.deepEqual(backendGeometryProblems(new MemoryBackend(1 << 20)), []);
    assert.match(backendGeometryProblems(new MemoryBackend(1 << 20, { minBlockSize: 3 })).join(), /minBlockSize 3/);
    assert.match(backendGeometryProblems(new MemoryBackend(1000)).join(), /not a multiple of minBlockSize/);
    assert.match(backendGeometryProblems(new MemoryBackend(1 << 20, { preferredBlockSize: 256 })).join(), /preferredBlockSize 256/);
    assert.match(backendGeometryProblems(new MemoryBackend(1 << 20, { maxPayload: 1024 })).join(), /maxPayload 1024/);
  });
});
