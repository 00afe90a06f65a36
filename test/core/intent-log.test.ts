// The write-intent log: an extent is recorded before its first change and
// let go only when nothing is in flight there and a flush covers it.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IntentLog } from '../../src/core/intent-log';

const MiB = 1024 * 1024;

test('an extent is recorded on first touch only', () => {
  const log = new IntentLog(64 * MiB, 4 * MiB, 4);
  const v1 = log.begin(0, 4096);
  assert.deepEqual(log.recorded(), [0]);
  const v2 = log.begin(8192, 4096);
  assert.equal(v2, v1, 'a second change to a recorded extent needs no new record');
  const v3 = log.begin(4 * MiB - 10, 20);
  assert.ok(v3! > v1!);
  assert.deepEqual(log.recorded(), [0, 1]);
});

test('an extent goes only when idle and covered by a completed flush', () => {
  const log = new IntentLog(64 * MiB, 4 * MiB, 1);
  log.begin(0, 4096);
  assert.equal(log.begin(4 * MiB, 1), undefined, 'full while extent 0 is in flight');
  log.end(0, 4096);
  assert.equal(log.begin(4 * MiB, 1), undefined, 'full while extent 0 is not flushed');
  assert.equal(log.hasUnflushed(), true);
  const started = log.beginFlush();
  log.begin(0, 10); // a change after the flush began is not covered by it
  log.end(0, 10);
  log.flushed(started);
  assert.equal(log.begin(4 * MiB, 1), undefined, 'the change made after the flush began keeps it');
  log.flushed(log.beginFlush());
  assert.notEqual(log.begin(4 * MiB, 1), undefined);
  assert.deepEqual(log.recorded(), [1]);
});

test('a FUA change leaves no flush owed', () => {
  const log = new IntentLog(64 * MiB, 4 * MiB, 1);
  log.begin(0, 4096);
  log.end(0, 4096, true);
  assert.equal(log.hasUnflushed(), false);
  assert.notEqual(log.begin(4 * MiB, 1), undefined, 'extent 0 went without a flush');
});

test('what a previous owner recorded stays until reconciled', () => {
  const log = new IntentLog(64 * MiB, 4 * MiB, 8, [2, 5]);
  log.flushed(log.beginFlush());
  assert.deepEqual(log.recorded(), [2, 5]);
  const v = log.version;
  log.clearReconciled([2, 5]);
  assert.deepEqual(log.recorded(), []);
  assert.ok(log.version > v, 'the stored record must be rewritten');
  assert.deepEqual(log.rangeOf(15), { offset: 60 * MiB, length: 4 * MiB });
});

test('a change over a settled extent and a new one keeps the settled one (found by the simulation)', () => {
  const log = new IntentLog(64 * MiB, 4 * MiB, 2);
  log.begin(0, 10);
  log.end(0, 10);
  log.flushed(log.beginFlush());
  // Extent 0 is settled (evictable); the change spans extents 0 and 1.
  assert.notEqual(log.begin(4 * MiB - 5, 10), undefined);
  assert.deepEqual(log.recorded(), [0, 1]);
  log.end(4 * MiB - 5, 10);
});
