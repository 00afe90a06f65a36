// The copy set's rules, attacked directly: what a failed copy may lack, the
// transition table, and the last in-sync copy.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CopySet, COPY_TRANSITIONS } from '../../src/core/copy-set';
import { DirtyMap } from '../../src/core/dirty-map';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;

function threeInSync(): CopySet {
  return new CopySet(SIZE, [
    { id: 'a', nodeId: 'n1', local: true, phase: 'in-sync' },
    { id: 'b', nodeId: 'n2', local: false, phase: 'in-sync' },
    { id: 'c', nodeId: 'n3', local: false, phase: 'in-sync' },
  ]);
}

test('writes go to in-sync and rebuilding copies; reads to an in-sync one, the local first', () => {
  const set = new CopySet(SIZE, [
    { id: 'a', nodeId: 'n1', local: true, phase: 'stale' },
    { id: 'b', nodeId: 'n2', local: false, phase: 'in-sync' },
    { id: 'c', nodeId: 'n3', local: false, phase: 'stale', missed: new DirtyMap(SIZE) },
    { id: 'd', nodeId: 'n4', local: true, phase: 'in-sync' },
  ]);
  set.startRebuild('c', false);
  assert.deepEqual(set.writeTargets(), ['b', 'c', 'd']);
  assert.equal(set.readSource(), 'd');
  assert.equal(set.readSource(new Set(['d'])), 'b');
  assert.equal(set.get('a')?.hasMissedMap, false, 'a stale copy without a recorded map needs a full copy');
  assert.deepEqual(set.regionsToRebuild('c'), []);
});

test('a failed copy may lack every change since its last completed flush, and every change in flight', () => {
  const set = threeInSync();
  const early = set.beginChange(0, 4096);
  for (const id of ['a', 'b', 'c']) set.changeApplied(early, id);
  set.endChange(early);
  const flush = set.beginFlush();
  for (const id of flush.targets) set.flushApplied(flush, id);
  set.endFlush(flush);
  // Applied after the flush: in the page cache only.
  const late = set.beginChange(MiB, 4096);
  for (const id of ['a', 'b', 'c']) set.changeApplied(late, id);
  set.endChange(late);
  // Covered by a flush that has not completed on c.
  const pendingFlush = set.beginFlush();
  set.flushApplied(pendingFlush, 'a');
  const afterFlush = set.beginChange(2 * MiB, 4096);
  for (const id of ['a', 'b', 'c']) set.changeApplied(afterFlush, id);
  set.endChange(afterFlush);
  const inFlight = set.beginChange(4 * MiB, 4096);

  const { failed, keptInSync } = set.fail(['c']);
  assert.deepEqual(failed, ['c']);
  assert.equal(keptInSync, undefined);
  assert.deepEqual(set.writeTargets(), ['a', 'b']);
  const missed = set.missedMaps().get('c')!;
  const regions = missed.ranges().map((r) => r.offset);
  assert.deepEqual(regions, [MiB, 2 * MiB, 4 * MiB], 'flushed data is not missed; unflushed and in-flight data is');
  set.endChange(inFlight);
  set.endFlush(pendingFlush);
});

test('a FUA change is durable where applied: no flush is owed for it', () => {
  const set = threeInSync();
  const t = set.beginChange(0, 4096, true);
  for (const id of ['a', 'b', 'c']) set.changeApplied(t, id);
  set.endChange(t);
  set.fail(['b']);
  assert.deepEqual(set.missedMaps().get('b')!.ranges(), []);
});

test('stale and failing copies miss every later change, and the map version says when to store it', () => {
  const set = threeInSync();
  set.fail(['b']);
  const v0 = set.missedVersion;
  const t = set.beginChange(8 * MiB, 100);
  assert.ok(t.missedVersion > v0);
  assert.deepEqual(t.targets, ['a', 'c']);
  set.endChange(t);
  set.recordedStale(['b']);
  const again = set.beginChange(8 * MiB, 100);
  assert.equal(again.missedVersion, set.missedVersion, 'a region already marked does not bump the version');
  assert.equal(again.missedVersion, t.missedVersion);
  set.endChange(again);
});

test('the last in-sync copy is never failed; rebuilding copies still are', () => {
  const set = new CopySet(SIZE, [
    { id: 'a', nodeId: 'n1', local: true, phase: 'in-sync' },
    { id: 'b', nodeId: 'n2', local: false, phase: 'stale', missed: new DirtyMap(SIZE) },
  ]);
  set.startRebuild('b', false);
  const r = set.fail(['a', 'b']);
  assert.equal(r.keptInSync, 'a');
  assert.deepEqual(r.failed, ['b']);
  assert.equal(set.get('a')?.phase, 'in-sync');
  assert.throws(() => set.remove('a'), /last in-sync/);
});

test('when the last in-sync copy is kept, copies being rebuilt fail with it and will copy the changes in flight again (seed 312)', () => {
  const set = new CopySet(SIZE, [
    { id: 'a', nodeId: 'n1', local: true, phase: 'in-sync' },
    { id: 'b', nodeId: 'n2', local: false, phase: 'stale', missed: new DirtyMap(SIZE) },
  ]);
  set.startRebuild('b', false);
  const change = set.beginChange(2 * MiB, 4096);
  set.changeApplied(change, 'b'); // the copy being filled took it; the in-sync copy did not answer
  const r = set.fail(['a']);
  assert.equal(r.keptInSync, 'a');
  assert.deepEqual(r.failed, ['b'], 'the rebuilding copy fails too');
  set.endChange(change);
  set.recordedStale(['b']);
  set.startRebuild('b', false);
  assert.deepEqual(set.regionsToRebuild('b'), [{ offset: 2 * MiB, length: 64 * 1024 }], 'the change is copied again from the kept copy');
});

test('only the transitions of the table are possible', () => {
  const set = threeInSync();
  assert.throws(() => set.rebuilt('a'), /cannot go from in-sync to in-sync/);
  assert.throws(() => set.startRebuild('a', true), /cannot go from in-sync to rebuilding/);
  set.fail(['a']);
  assert.throws(() => set.startRebuild('a', false), /cannot go from failing to rebuilding/);
  set.recordedStale(['a']);
  set.startRebuild('a', true);
  assert.equal(set.regionsToRebuild('a'), undefined, 'a full rebuild covers the whole volume');
  set.rebuilt('a');
  assert.equal(set.get('a')?.phase, 'in-sync');
  for (const [from, tos] of Object.entries(COPY_TRANSITIONS)) assert.ok(!tos.includes(from as never), `${from} loops to itself`);
});

test('a rebuilding copy that fails keeps what it missed before and gains what it got since', () => {
  const missed = new DirtyMap(SIZE);
  missed.mark(0, 4096);
  const set = new CopySet(SIZE, [
    { id: 'a', nodeId: 'n1', local: true, phase: 'in-sync' },
    { id: 'b', nodeId: 'n2', local: false, phase: 'stale', missed },
  ]);
  set.startRebuild('b', false);
  const t = set.beginChange(3 * MiB, 4096);
  set.changeApplied(t, 'a');
  set.changeApplied(t, 'b');
  set.endChange(t);
  set.fail(['b']);
  assert.deepEqual(set.missedMaps().get('b')!.ranges().map((r) => r.offset), [0, 3 * MiB]);
});

test('when every in-sync copy fails, exactly one stays in-sync (the local one): in-sync copies cannot disagree', () => {
  const set = new CopySet(SIZE, [
    { id: 'a', nodeId: 'n1', local: false, phase: 'in-sync' },
    { id: 'b', nodeId: 'n2', local: true, phase: 'in-sync' },
    { id: 'c', nodeId: 'n3', local: false, phase: 'in-sync' },
  ]);
  const t = set.beginChange(0, 4096); // timed out everywhere: it may land on any of them later
  const r = set.fail(['a', 'b', 'c']);
  assert.equal(r.keptInSync, 'b');
  assert.deepEqual(r.failed, ['a', 'c']);
  assert.deepEqual(set.missedMaps().get('a')!.ranges(), [{ offset: 0, length: 64 * 1024 }], 'the doubtful change is resynced from the survivor');
  set.endChange(t);
});

test('when the only whole copy restarted, every other copy may differ from it wherever changes were unsettled', () => {
  const set = new CopySet(SIZE, [
    { id: 'a', nodeId: 'n1', local: true, phase: 'in-sync' },
    { id: 'b', nodeId: 'n2', local: false, phase: 'stale', missed: new DirtyMap(SIZE) },
  ]);
  const v = set.missedVersion;
  set.markMissed([{ offset: 4 * MiB, length: 4 * MiB }]);
  assert.ok(set.missedVersion > v, 'the grown map must be stored');
  assert.deepEqual(set.missedMaps().get('b')!.ranges(), [{ offset: 4 * MiB, length: 4 * MiB }]);
  assert.equal(set.missedMaps().has('a'), false, 'the whole copy has no missed map');
});

test('a flush that did not complete on the kept in-sync copy leaves its regions unflushed there (seed 112)', () => {
  const set = new CopySet(SIZE, [
    { id: 'a', nodeId: 'n1', local: false, phase: 'in-sync' },
    { id: 'b', nodeId: 'n2', local: false, phase: 'in-sync' },
  ]);
  const zeroes = set.beginChange(MiB, 4096);
  for (const id of ['a', 'b']) set.changeApplied(zeroes, id);
  set.endChange(zeroes);
  // The flush completes on neither copy; both fail and a is kept in-sync:
  // its page cache holds the change, its disk may not.
  const flush = set.beginFlush();
  assert.equal(set.fail(['a', 'b']).keptInSync, 'a');
  set.endFlush(flush);
  // b is made whole again; then a loses power, taking the change with it.
  set.recordedStale(['b']);
  set.startRebuild('b', true);
  set.rebuilt('b');
  set.fail(['a']);
  assert.deepEqual(set.missedMaps().get('a')!.ranges(), [{ offset: MiB, length: 64 * 1024 }], 'the change the failed flush covered is missed by a');
});
