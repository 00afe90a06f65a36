import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decideNodeStatus, desiredStatus } from '../../src/core/node-status';
import { roleForNewNode } from '../../src/core/roles';
import { EventCode, NODE_STATUSES, type NodeRecord, type NodeStatus } from '../../src/core/types';

function node(id: string, status: NodeStatus, extra: Partial<NodeRecord> = {}): NodeRecord {
  return {
    id, name: `n-${id}`, ip: '127.0.0.1', apiPort: 1, replicaPort: 2, role: 'standard', status, cordoned: false,
    drives: [], registeredAt: '2026-01-01T00:00:00.000Z', statusSince: '2026-01-02T00:00:00.000Z', version: 'x', ...extra,
  };
}
const leader = { name: 'v4', ip: '10.0.0.4' };

test('roles: the first three nodes are control nodes, then standard; freed roles are reused', () => {
  assert.equal(roleForNewNode([]), 'sds');
  assert.equal(roleForNewNode(['sds']), 'backup1');
  assert.equal(roleForNewNode(['sds', 'backup1']), 'backup2');
  assert.equal(roleForNewNode(['sds', 'backup1', 'backup2']), 'standard');
  assert.equal(roleForNewNode(['sds', 'backup1', 'backup2', 'standard']), 'standard');
  assert.equal(roleForNewNode(['backup1', 'backup2', 'standard']), 'sds');
});

test('a node whose lease expired goes to maintenance with the failover event naming the leader', () => {
  const changes = decideNodeStatus([node('6a41aeba', 'normal')], new Set(), leader);
  assert.equal(changes.length, 1);
  assert.deepEqual({ from: changes[0].from, to: changes[0].to }, { from: 'normal', to: 'maintenance' });
  const codes = changes[0].events.map((e) => e.code);
  assert.deepEqual(codes, [EventCode.nodeNotResponding, EventCode.nodeFailoverCompleted]);
  assert.equal(changes[0].events[1].message, 'node (6a41aeba) failover completed. hostname=v4, ip address=10.0.0.4');
});

test('a returning node goes back to normal (or cordoned, if it was cordoned)', () => {
  const back = decideNodeStatus([node('a', 'maintenance')], new Set(['a']), leader);
  assert.equal(back[0].to, 'normal');
  assert.equal(back[0].events[0].code, EventCode.nodeBackToNormal);
  const cordoned = decideNodeStatus([node('a', 'maintenance', { cordoned: true })], new Set(['a']), leader);
  assert.equal(cordoned[0].to, 'cordoned');
});

test('a node admitted for the first time gets a join event, not a "back" event', () => {
  const t = '2026-01-01T00:00:00.000Z';
  const changes = decideNodeStatus([node('a', 'maintenance', { registeredAt: t, statusSince: t })], new Set(['a']), leader);
  assert.equal(changes[0].events[0].code, EventCode.nodeJoined);
});

test('no change and no event when every status already matches', () => {
  const nodes = [node('a', 'normal'), node('b', 'maintenance'), node('c', 'cordoned', { cordoned: true })];
  assert.deepEqual(decideNodeStatus(nodes, new Set(['a', 'c']), leader), []);
});

test('generated states: decisions reach a fixed point in one step and are consistent with liveness', () => {
  // A small deterministic generator, so a failure is reproducible.
  let seed = 12345;
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  for (let round = 0; round < 5000; round++) {
    const nodes = Array.from({ length: 1 + rnd(6) }, (_, i) =>
      node(`n${i}`, NODE_STATUSES[rnd(NODE_STATUSES.length)], { cordoned: rnd(2) === 1 }),
    );
    const alive = new Set(nodes.filter(() => rnd(3) > 0).map((n) => n.id));
    const changes = decideNodeStatus(nodes, alive, leader);
    for (const c of changes) {
      const n = nodes.find((x) => x.id === c.nodeId)!;
      assert.equal(c.from, n.status);
      assert.notEqual(c.from, c.to);
      assert.equal(c.to === 'maintenance', !alive.has(n.id), 'maintenance exactly when the lease is gone');
      if (c.to === 'maintenance') assert.ok(c.events.some((e) => e.code === EventCode.nodeFailoverCompleted));
    }
    const after = nodes.map((n) => {
      const c = changes.find((x) => x.nodeId === n.id);
      return c ? { ...n, status: c.to } : n;
    });
    assert.deepEqual(decideNodeStatus(after, alive, leader), [], 'applying the decision leaves nothing to do');
    for (const n of after) assert.equal(n.status, desiredStatus(n, alive.has(n.id)));
  }
});
