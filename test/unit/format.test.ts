import assert from 'node:assert/strict';
import { test } from 'node:test';
import { summarizeCluster } from '../../src/core/cluster-summary';
import { formatEvent, formatEventTime } from '../../src/core/event-format';
import { formatSize, parseSize } from '../../src/core/units';
import { nodeTable } from '../../src/cli/views';
import type { NodeRecord } from '../../src/core/types';

test('event lines follow the seed format', () => {
  const time = new Date(2019, 4, 12, 20, 51, 4);
  assert.equal(formatEventTime(time), '05/12/2019-20:51:04');
  const line = formatEvent({
    id: 'x', time: time.toISOString(), level: 'info', component: 'DFS',
    message: 'node (6a41aeba) failover completed. hostname=v4, ip address=192.168.3.69', code: 1019,
  });
  assert.equal(line, '05/12/2019-20:51:04 [info] [DFS] node (6a41aeba) failover completed. hostname=v4, ip address=192.168.3.69 :1019');
  const bare = formatEvent({ id: 'y', time: time.toISOString(), level: 'info', component: '', message: 'vd0 rebuilding on node f8891810', code: 1003 });
  assert.equal(bare, '05/12/2019-20:51:04 [info] vd0 rebuilding on node f8891810 :1003');
});

test('sizes parse in binary units and print back', () => {
  assert.equal(parseSize('20GB'), 20 * 2 ** 30);
  assert.equal(parseSize('512mib'), 512 * 2 ** 20);
  assert.equal(parseSize('1.5G'), 1.5 * 2 ** 30);
  assert.equal(parseSize('10', 'GB'), 10 * 2 ** 30);
  assert.equal(parseSize('4096'), 4096);
  for (const bad of ['', 'GB', '-1GB', '1XB', '1 2', '0']) assert.throws(() => parseSize(bad), /size/);
  assert.equal(formatSize(20 * 2 ** 30), '20GB');
  assert.equal(formatSize(1.5 * 2 ** 30), '1.5GB');
  assert.equal(formatSize(0), '0B');
});

test('node ls prints the seed columns', () => {
  const n = (name: string, ip: string, id: string, role: NodeRecord['role'], status: NodeRecord['status']): NodeRecord => ({
    id, name, ip, role, status, apiPort: 1, replicaPort: 2, cordoned: false, drives: [], registeredAt: '', statusSince: '', version: '',
  });
  const out = nodeTable([n('v1', '192.168.3.36', 'f8891810', 'sds', 'normal'), n('v3', '192.168.3.160', '6a41aeba', 'backup2', 'maintenance')]);
  assert.equal(
    out,
    [
      'NODENAME             IP                NODE_ID    ROLE       STATUS',
      'v1                   192.168.3.36      f8891810   sds        normal',
      'v3                   192.168.3.160     6a41aeba   backup2    maintenance',
    ].join('\n'),
  );
});

test('cluster summary adds capacity and reports the condition', () => {
  const drive = { id: 'd1', path: '/x', type: 'SSD' as const, capacityBytes: 100, usedBytes: 30 };
  const base = { ip: '', apiPort: 1, replicaPort: 2, role: 'standard' as const, cordoned: false, registeredAt: '', statusSince: '', version: '' };
  const nodes: NodeRecord[] = [
    { ...base, id: 'a', name: 'v1', status: 'normal', drives: [drive] },
    { ...base, id: 'b', name: 'v2', status: 'maintenance', drives: [drive, drive] },
  ];
  const s = summarizeCluster('c', nodes, 'a');
  assert.deepEqual(s.capacity, { totalBytes: 300, usedBytes: 90, freeBytes: 210 });
  assert.equal(s.condition, 'degraded');
  assert.equal(s.controller, 'v1');
  assert.equal(summarizeCluster('c', nodes.slice(0, 1), 'a').condition, 'healthy');
  assert.equal(summarizeCluster('c', nodes, undefined).condition, 'no-controller');
});
