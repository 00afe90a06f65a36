import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decideVolumes, mayDropStaleCopy, type VolumeDecisionInput } from '../../src/core/volume-decisions';
import type { NodeRecord, ReplicaRecord, ReplicaState, VolumeRecord } from '../../src/core/types';

const GB = 1024 ** 3;
const T0 = new Date('2026-01-01T00:00:00Z');

function node(id: string, status: NodeRecord['status'] = 'normal', since = T0): NodeRecord {
  return {
    id, name: id, ip: '127.0.0.1', apiPort: 1, replicaPort: 2, role: 'standard', status, cordoned: false,
    registeredAt: '', statusSince: since.toISOString(), version: '',
    drives: [{ id: 'd1', path: '/x', type: 'SSD', capacityBytes: 100 * GB, usedBytes: 0 }],
  };
}

function volume(owner: string | null, replicas: Array<[string, ReplicaState]>, level: 1 | 2 | 3 = 2): VolumeRecord {
  return {
    name: 'vol', vdisk: 'vd1', uuid: 'abcd0123', sizeBytes: GB, level, driveType: 'SSD', provision: 'thin', filesystem: 'ext4',
    profile: null, phase: 'ready', owner, epoch: 5, attachment: owner ? { nodeId: owner, uri: 'x', since: '' } : null, createdAt: '',
    replicas: replicas.map(([nodeId, state], i) => ({ id: `r${i}`, nodeId, driveId: 'd1', state, createdAt: '' })),
  };
}

let ids = 0;
function input(volumes: VolumeRecord[], nodes: NodeRecord[], now = new Date(T0.getTime() + 60_000)): VolumeDecisionInput {
  const alive = new Set(nodes.filter((n) => n.status !== 'maintenance').map((n) => n.id));
  return { volumes, nodes, alive, now, rebuildGraceMs: 30_000, newReplicaId: () => `new${++ids}` };
}

test('the owner dies: the volume is released at a new epoch and the copy on the dead node goes stale (full resync)', () => {
  const nodes = [node('a', 'maintenance'), node('b'), node('c')];
  const [change] = decideVolumes(input([volume('a', [['a', 'in-sync'], ['b', 'in-sync']])], nodes));
  assert.equal(change.kind, 'failover');
  assert.equal(change.after.owner, null);
  assert.equal(change.after.epoch, 6);
  const dead = change.after.replicas.find((r) => r.nodeId === 'a')!;
  assert.equal(dead.state, 'stale');
  assert.equal(dead.fullResync, true);
  assert.equal(change.after.replicas.find((r) => r.nodeId === 'b')!.state, 'in-sync');
});

test('when every in-sync copy is on a down node, none is marked stale: the volume waits for them', () => {
  const nodes = [node('a', 'maintenance'), node('b', 'maintenance'), node('c')];
  const [change] = decideVolumes(input([volume('a', [['a', 'in-sync'], ['b', 'in-sync']])], nodes));
  assert.equal(change.kind, 'failover');
  assert.deepEqual(change.after.replicas.map((r) => r.state), ['in-sync', 'in-sync']);
  assert.deepEqual(decideVolumes(input([volume(null, [['a', 'in-sync'], ['b', 'in-sync']])], nodes)), []);
});

test('an attached volume below its level gets a new copy only after the grace period, preferring the owner', () => {
  const down = new Date(T0.getTime() + 50_000);
  const nodes = [node('a'), node('b', 'maintenance', down), node('c'), node('d')];
  const v = volume('c', [['a', 'in-sync'], ['b', 'stale']]);
  assert.deepEqual(decideVolumes(input([v], nodes, new Date(down.getTime() + 10_000))), [], 'within the grace period');
  const [change] = decideVolumes(input([v], nodes, new Date(down.getTime() + 31_000)));
  assert.equal(change.kind, 'replace');
  const added = change.after.replicas.find((r) => r.state === 'rebuilding')!;
  assert.equal(added.nodeId, 'c', 'the new copy goes next to the owner');
  assert.equal(added.locality, true);
  // Failure 9: the expired stale copy stays until its replacement is whole.
  assert.ok(change.after.replicas.some((r) => r.nodeId === 'b' && r.state === 'stale'), 'the expired stale copy is kept while its replacement is filled');
  const later = new Date(down.getTime() + 60_000);
  assert.deepEqual(decideVolumes(input([change.after], nodes, later)), [], 'nothing more while the replacement is filled');
  const whole = { ...change.after, replicas: change.after.replicas.map((r) => (r.state === 'rebuilding' ? { ...r, state: 'in-sync' as const } : r)) };
  const [drop] = decideVolumes(input([whole], nodes, later));
  assert.equal(drop.kind, 'drop-stale', 'dropped once the replacement is whole');
  assert.deepEqual(drop.after.replicas.map((r) => r.nodeId).sort(), ['a', 'c']);
});

test('a copy on a node just seen down waits for the grace period even before the owner records it stale', () => {
  const down = new Date(T0.getTime() + 50_000);
  const nodes = [node('a'), node('b', 'maintenance', down), node('c'), node('d')];
  const v = volume('a', [['a', 'in-sync'], ['b', 'in-sync'], ['c', 'in-sync']], 3);
  assert.deepEqual(decideVolumes(input([v], nodes, new Date(down.getTime() + 10))), [], 'no replacement within the grace period');
  const [change] = decideVolumes(input([{ ...v, replicas: v.replicas.map((r) => (r.nodeId === 'b' ? { ...r, state: 'stale' } : r)) }], nodes, new Date(down.getTime() + 31_000)));
  assert.equal(change.kind, 'replace', 'replaced once it is stale and the grace period is over');
  assert.deepEqual(change.after.replicas.map((r) => `${r.nodeId}:${r.state}`).sort(), ['a:in-sync', 'b:stale', 'c:in-sync', 'd:rebuilding']);
});

test('a whole attached volume without a local copy gets one, then a remote one is retired', () => {
  const nodes = [node('a'), node('b'), node('c')];
  const [add] = decideVolumes(input([volume('c', [['a', 'in-sync'], ['b', 'in-sync']])], nodes));
  assert.equal(add.kind, 'locality');
  assert.equal(add.after.replicas.length, 3);
  const synced = { ...add.after, replicas: add.after.replicas.map((r): ReplicaRecord => ({ ...r, state: 'in-sync' })) };
  const [retire] = decideVolumes(input([synced], nodes));
  assert.equal(retire.kind, 'retire-extra');
  assert.equal(retire.after.replicas.length, 2);
  assert.ok(retire.after.replicas.some((r) => r.nodeId === 'c'), 'the local copy stays');
});

test('generated states: decisions keep the invariants', () => {
  let seed = 7;
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const states: ReplicaState[] = ['in-sync', 'in-sync', 'rebuilding', 'stale'];
  for (let round = 0; round < 4000; round++) {
    const nodes = Array.from({ length: 2 + rnd(4) }, (_, i) => node(`n${i}`, rnd(4) === 0 ? 'maintenance' : 'normal', new Date(T0.getTime() + rnd(60_000))));
    const holders = nodes.filter(() => rnd(2) === 0).slice(0, 4);
    if (holders.length === 0) continue;
    const owner = rnd(3) === 0 ? null : nodes[rnd(nodes.length)].id;
    const level = (1 + rnd(3)) as 1 | 2 | 3;
    const v = volume(owner, holders.map((h) => [h.id, states[rnd(states.length)]]), level);
    const inp = input([v], nodes);
    for (const change of decideVolumes(inp)) {
      const before = change.before;
      const after = change.after;
      const down = (id: string): boolean => !inp.alive.has(id);
      // Never lose the last in-sync copy.
      if (before.replicas.some((r) => r.state === 'in-sync')) assert.ok(after.replicas.some((r) => r.state === 'in-sync'), `${change.kind} left no in-sync copy`);
      // Ownership moves only by failover, with an epoch bump, when the owner is down.
      if (after.owner !== before.owner) {
        assert.equal(change.kind, 'failover');
        assert.ok(before.owner && down(before.owner));
        assert.equal(after.epoch, before.epoch + 1);
      } else assert.equal(after.epoch, before.epoch);
      // Never two copies on one node; new copies only on live nodes.
      assert.equal(new Set(after.replicas.map((r) => r.nodeId)).size, after.replicas.length);
      for (const r of after.replicas.filter((x) => !before.replicas.some((y) => y.id === x.id))) {
        assert.ok(!down(r.nodeId) && r.state === 'rebuilding');
      }
      // With a live owner, states of existing copies are the engine's business, never changed here.
      if (before.owner && !down(before.owner)) {
        for (const r of after.replicas) {
          const old = before.replicas.find((y) => y.id === r.id);
          if (old) assert.equal(r.state, old.state, `${change.kind} changed a copy of an attached volume`);
        }
      }
    }
  }
});

test('a stale copy is not dropped while its replacement is still rebuilding', () => {
  const nodes = [node('a'), node('b'), node('c')];
  const v = volume('a', [['a', 'in-sync'], ['b', 'rebuilding'], ['c', 'stale']]);
  assert.equal(mayDropStaleCopy(v, nodes), false);
  assert.deepEqual(decideVolumes(input([v], nodes)), [], 'the stale copy stays until the new one is in sync');
});

test('a stale copy is dropped once enough copies are in sync', () => {
  const nodes = [node('a'), node('b'), node('c')];
  const v = volume('a', [['a', 'in-sync'], ['b', 'in-sync'], ['c', 'stale']]);
  assert.equal(mayDropStaleCopy(v, nodes), true);
  const [change] = decideVolumes(input([v], nodes));
  assert.equal(change.kind, 'drop-stale');
  assert.deepEqual(change.after.replicas.map((r) => r.nodeId), ['a', 'b']);
});

test('an in-sync copy on a node in maintenance does not count towards dropping a stale copy', () => {
  const nodes = [node('a'), node('b', 'maintenance'), node('c')];
  assert.equal(mayDropStaleCopy(volume(null, [['a', 'in-sync'], ['b', 'in-sync'], ['c', 'stale']]), nodes), false);
});

test('generated states: a stale copy is only ever dropped with enough in-sync copies on live nodes', () => {
  let seed = 11;
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const states: ReplicaState[] = ['in-sync', 'rebuilding', 'stale'];
  let dropped = 0;
  for (let round = 0; round < 4000; round++) {
    const nodes = Array.from({ length: 2 + rnd(4) }, (_, i) => node(`n${i}`, rnd(5) === 0 ? 'maintenance' : 'normal'));
    const holders = nodes.filter(() => rnd(2) === 0).slice(0, 4);
    if (holders.length === 0) continue;
    const owner = rnd(3) === 0 ? null : nodes[rnd(nodes.length)].id;
    const level = (1 + rnd(3)) as 1 | 2 | 3;
    const v = volume(owner, holders.map((h) => [h.id, states[rnd(states.length)]]), level);
    for (const change of decideVolumes(input([v], nodes))) {
      if (change.kind !== 'drop-stale') continue;
      const before = change.before;
      if (!before.replicas.some((r) => r.state === 'stale' && !change.after.replicas.some((x) => x.id === r.id))) continue;
      dropped++;
      const inSyncUp = before.replicas.filter((r) => r.state === 'in-sync' && nodes.find((n) => n.id === r.nodeId)!.status !== 'maintenance');
      assert.ok(inSyncUp.length >= before.level, `dropped a stale copy with ${inSyncUp.length} in-sync copies at level ${before.level}`);
    }
  }
  assert.ok(dropped > 0, 'some stale copies were dropped');
});
