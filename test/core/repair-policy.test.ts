// The owner's repair decision: what it rebuilds, how, and what it leaves to the controller.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decideRepairs, repairOwnerFor, type DetachedRepairInput, type RepairInput } from '../../src/core/repair-policy';
import type { ReplicaRecord, ReplicaState } from '../../src/core/types';

function input(over: Partial<RepairInput>): RepairInput {
  return {
    copies: [],
    level: 2,
    nodeUp: () => true,
    running: new Set(),
    hasMissedMap: () => true,
    engineState: () => undefined,
    ...over,
  };
}

test('a stale copy on a live node is resynced from its map, or in full without one', () => {
  const copies = [
    { id: 'a', nodeId: 'n1', state: 'in-sync' as const },
    { id: 'b', nodeId: 'n2', state: 'stale' as const },
    { id: 'c', nodeId: 'n3', state: 'stale' as const, fullResync: true },
  ];
  assert.deepEqual(decideRepairs(input({ copies, level: 3 })), [
    { id: 'b', mode: 'incremental' },
    { id: 'c', mode: 'full' },
  ]);
  assert.deepEqual(decideRepairs(input({ copies, level: 3, hasMissedMap: () => false }))[0], { id: 'b', mode: 'full' });
});

test('nothing is started twice, nor on a down node, nor when the level is met by whole copies on live nodes', () => {
  const copies = [
    { id: 'a', nodeId: 'n1', state: 'in-sync' as const },
    { id: 'b', nodeId: 'n2', state: 'in-sync' as const },
    { id: 'c', nodeId: 'n3', state: 'stale' as const },
  ];
  assert.deepEqual(decideRepairs(input({ copies, level: 2 })), [], 'the controller drops it instead');
  assert.deepEqual(decideRepairs(input({ copies, level: 2, nodeUp: (n) => n !== 'n2' })), [{ id: 'c', mode: 'incremental' }], 'an in-sync copy on a down node does not count');
  assert.deepEqual(decideRepairs(input({ copies, level: 3, running: new Set(['c']) })), []);
  assert.deepEqual(decideRepairs(input({ copies, level: 3, nodeUp: (n) => n !== 'n3' })), []);
  assert.deepEqual(decideRepairs(input({ copies, level: 3, engineState: () => 'rebuilding' })), []);
});

test('a copy placed new (rebuilding in etcd) is filled in full unless the engine has it whole', () => {
  const copies = [
    { id: 'a', nodeId: 'n1', state: 'in-sync' as const },
    { id: 'd', nodeId: 'n4', state: 'rebuilding' as const },
  ];
  assert.deepEqual(decideRepairs(input({ copies })), [{ id: 'd', mode: 'full' }]);
  assert.deepEqual(decideRepairs(input({ copies, engineState: (id) => (id === 'd' ? 'in-sync' : undefined) })), []);
});

function detached(copies: Array<[string, ReplicaState]>, down: Record<string, number> = {}, level: 1 | 2 | 3 = 2): DetachedRepairInput {
  const replicas: ReplicaRecord[] = copies.map(([nodeId, state], i) => ({ id: `r${i}`, nodeId, driveId: 'd', state, createdAt: '' }));
  return {
    volume: { phase: 'ready', level, replicas },
    nodeUp: (id) => down[id] === undefined,
    downForMs: (id) => down[id],
    rebuildGraceMs: 30_000,
  };
}

test('a detached volume with a stale copy on a live node is taken by the lowest node holding a whole copy', () => {
  assert.equal(repairOwnerFor(detached([['n3', 'in-sync'], ['n2', 'in-sync'], ['n1', 'stale']], {}, 3)), 'n2');
  assert.equal(repairOwnerFor(detached([['n2', 'in-sync'], ['n1', 'stale']])), 'n2');
});

test('a detached volume waits for a down copy through the grace period, then is taken so the copy can be replaced', () => {
  assert.equal(repairOwnerFor(detached([['n1', 'in-sync'], ['n2', 'stale']], { n2: 10_000 })), undefined);
  assert.equal(repairOwnerFor(detached([['n1', 'in-sync'], ['n2', 'stale']], { n2: 31_000 })), 'n1');
  assert.equal(repairOwnerFor(detached([['n1', 'in-sync']])), 'n1', 'a missing copy');
});

test('nothing to repair: whole, not ready, or no whole copy on a live node to copy from', () => {
  assert.equal(repairOwnerFor(detached([['n1', 'in-sync'], ['n2', 'in-sync']])), undefined);
  assert.equal(repairOwnerFor(detached([['n1', 'in-sync'], ['n2', 'in-sync'], ['n3', 'stale']])), undefined, 'the controller drops the extra stale copy');
  assert.equal(repairOwnerFor(detached([['n1', 'in-sync'], ['n2', 'stale']], { n1: 60_000 })), undefined);
  const deleting = detached([['n1', 'in-sync'], ['n2', 'stale']]);
  assert.equal(repairOwnerFor({ ...deleting, volume: { ...deleting.volume, phase: 'deleting' } }), undefined);
});
