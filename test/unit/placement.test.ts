import assert from 'node:assert/strict';
import { test } from 'node:test';
import { placeReplicas } from '../../src/core/placement';
import type { DriveRecord, NodeRecord, VolumeRecord } from '../../src/core/types';

const GB = 1024 ** 3;

function node(id: string, extra: Partial<NodeRecord> = {}, drives: Array<Partial<DriveRecord>> = [{}]): NodeRecord {
  return {
    id, name: id, ip: '127.0.0.1', apiPort: 1, replicaPort: 2, role: 'standard', status: 'normal', cordoned: false,
    registeredAt: '', statusSince: '', version: '',
    drives: drives.map((d, i) => ({ id: `d${i + 1}`, path: '/x', type: 'SSD', capacityBytes: 100 * GB, usedBytes: 0, ...d })),
    ...extra,
  };
}

function volume(replicas: Array<[string, string]>, sizeBytes: number): VolumeRecord {
  return {
    name: 'v', vdisk: 'vd1', uuid: '00000000', sizeBytes, level: 1, driveType: 'SSD', provision: 'thin', filesystem: 'ext4',
    profile: null, phase: 'ready', owner: null, epoch: 1, attachment: null, createdAt: '',
    replicas: replicas.map(([nodeId, driveId], i) => ({ id: `r${i}`, nodeId, driveId, state: 'in-sync', createdAt: '' })),
  };
}

test('copies go to distinct nodes, most free space first', () => {
  const nodes = [node('a'), node('b'), node('c'), node('d')];
  const used = [volume([['a', 'd1'], ['b', 'd1']], 50 * GB)];
  const res = placeReplicas(nodes, used, { sizeBytes: 10 * GB, driveType: 'SSD', count: 2 });
  assert.ok(res.ok);
  assert.deepEqual(res.replicas.map((r) => r.nodeId), ['c', 'd']);
});

test('never on cordoned, maintenance or excluded nodes, and only on the requested drive type', () => {
  const nodes = [
    node('a', { cordoned: true }),
    node('b', { status: 'maintenance' }),
    node('c', {}, [{ type: 'HDD' }]),
    node('d'),
    node('e'),
  ];
  const res = placeReplicas(nodes, [], { sizeBytes: GB, driveType: 'SSD', count: 3 });
  assert.ok(!res.ok);
  assert.match(res.reason, /only 2 schedulable node\(s\) have a SSD drive/);
  const two = placeReplicas(nodes, [], { sizeBytes: GB, driveType: 'SSD', count: 2, excludeNodes: new Set(['d']) });
  assert.ok(!two.ok);
  const hdd = placeReplicas(nodes, [], { sizeBytes: GB, driveType: 'HDD', count: 1 });
  assert.ok(hdd.ok);
  assert.deepEqual(hdd.replicas, [{ nodeId: 'c', driveId: 'd1' }]);
});

test('a copy needs room on one drive; the fullest drives are skipped', () => {
  const nodes = [node('a', {}, [{ capacityBytes: 10 * GB }, { capacityBytes: 30 * GB }]), node('b', {}, [{ capacityBytes: 5 * GB }])];
  const res = placeReplicas(nodes, [], { sizeBytes: 20 * GB, driveType: 'SSD', count: 1 });
  assert.ok(res.ok);
  assert.deepEqual(res.replicas, [{ nodeId: 'a', driveId: 'd2' }]);
  const none = placeReplicas(nodes, [], { sizeBytes: 40 * GB, driveType: 'SSD', count: 1 });
  assert.ok(!none.ok);
  assert.match(none.reason, /room/);
});

test('the preferred node gets the first copy when it qualifies', () => {
  const nodes = [node('a'), node('b'), node('c')];
  const res = placeReplicas(nodes, [], { sizeBytes: GB, driveType: 'SSD', count: 2, preferNode: 'c' });
  assert.ok(res.ok);
  assert.equal(res.replicas[0].nodeId, 'c');
  assert.equal(new Set(res.replicas.map((r) => r.nodeId)).size, 2);
});

test('generated clusters: every placement obeys every rule', () => {
  let seed = 42;
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  for (let round = 0; round < 3000; round++) {
    const nodes = Array.from({ length: 1 + rnd(6) }, (_, i) =>
      node(`n${i}`, { status: rnd(5) === 0 ? 'maintenance' : 'normal', cordoned: rnd(6) === 0 }, Array.from({ length: 1 + rnd(2) }, () => ({ type: (['SSD', 'HDD'] as const)[rnd(2)], capacityBytes: (1 + rnd(50)) * GB }))),
    );
    const size = (1 + rnd(30)) * GB;
    const count = 1 + rnd(3);
    const exclude = new Set(nodes.filter(() => rnd(4) === 0).map((n) => n.id));
    const res = placeReplicas(nodes, [], { sizeBytes: size, driveType: 'SSD', count, excludeNodes: exclude });
    const eligible = nodes.filter((n) => n.status === 'normal' && !n.cordoned && !exclude.has(n.id) && n.drives.some((d) => d.type === 'SSD' && d.capacityBytes >= size));
    assert.equal(res.ok, eligible.length >= count);
    if (!res.ok) continue;
    assert.equal(res.replicas.length, count);
    assert.equal(new Set(res.replicas.map((r) => r.nodeId)).size, count, 'distinct nodes');
    for (const r of res.replicas) {
      const n = nodes.find((x) => x.id === r.nodeId)!;
      const d = n.drives.find((x) => x.id === r.driveId)!;
      assert.ok(n.status === 'normal' && !n.cordoned && !exclude.has(n.id));
      assert.equal(d.type, 'SSD');
      assert.ok(d.capacityBytes >= size);
    }
  }
});
