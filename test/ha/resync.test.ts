// Incremental resync (DESIGN invariant 5): a node holding a copy is down for a
// short while; when it returns, only the regions written meanwhile are copied
// to it — the test counts the bytes — and afterwards every copy is identical.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { eventually, LocalCluster } from '../helpers/local-cluster';
import { RecordWriter, verifyRecords, RECORD_SIZE } from '../../src/cluster/record-writer';
import { attachAndConnect, cliOk, replicaFile, volumeInfo } from '../helpers/volumes';
import { sha256File } from '../helpers/tools';

const IP_PREFIX = '127.0.26.';
const MiB = 1024 * 1024;

describe('HA: a node back from a short outage is resynced incrementally', () => {
  let cluster: LocalCluster;
  before(async () => {
    cluster = await LocalCluster.up({ nodes: 4, ipPrefix: IP_PREFIX, leaseTtl: 3, extraArgs: ['--rebuild-grace', '600', '--replica-timeout', '2000'] });
  });
  after(async () => {
    await cluster?.down();
  });

  test('only the regions written while it was away are copied', async () => {
    await cliOk(cluster, ['volume', 'create', 'data', '--capacity', '256MB', '--level', '3', '--node', 'v1']);
    const { client } = await attachAndConnect(cluster, 'data', 'v1');
    const nodes = JSON.parse(await cliOk(cluster, ['node', 'ls', '--json'])) as Array<{ id: string; name: string }>;
    const v1 = nodes.find((n) => n.name === 'v1')!;

    const bulk = new RecordWriter(client, 'bulk', 0, 0, 8);
    bulk.start(4096); // 16 MiB before the outage
    await bulk.done;
    assert.equal(bulk.error, undefined);

    const holder = (await volumeInfo(cluster, 'data')).replicas.find((r) => r.nodeId !== v1.id)!;
    const victim = nodes.find((n) => n.id === holder.nodeId)!;
    await cluster.nodeAction('kill', victim.name);
    await eventually(`the copy on ${victim.name} marked stale`, async () => (await volumeInfo(cluster, 'data')).replicas.find((r) => r.id === holder.id)?.state === 'stale');

    // While it is away: 100 records (400 KiB) in one place and 5 scattered ones.
    const away = new RecordWriter(client, 'away', 30_000);
    away.start(100);
    await away.done;
    const scattered = [5_000, 9_000, 17_000, 40_000, 60_000];
    for (const block of scattered) {
      const w = new RecordWriter(client, `scattered-${block}`, block, 0, 1);
      w.start(1);
      await w.done;
    }
    assert.equal(away.error, undefined);

    await cluster.nodeAction('start', victim.name);
    await eventually(`the copy on ${victim.name} in sync again`, async () => (await volumeInfo(cluster, 'data')).replicas.find((r) => r.id === holder.id)?.state === 'in-sync', 60_000);

    const events = await cliOk(cluster, ['events', '-n', '200']);
    const m = new RegExp(`volume data \\(vd1\\) resync completed on node ${victim.id}, copied (\\d+) bytes`).exec(events);
    assert.ok(m, `no resync event:\n${events}`);
    const copied = Number(m[1]);
    const written = (100 + scattered.length) * RECORD_SIZE;
    // Regions are 64 KiB: 400 KiB touches at most 8 of them, each scattered record one.
    const regionsBound = (Math.ceil((100 * RECORD_SIZE) / (64 * 1024)) + 1 + scattered.length) * 64 * 1024;
    console.log(`# resync copied ${copied} bytes for ${written} bytes written while away (volume holds ${16 * MiB + written} bytes)`);
    assert.ok(copied >= written, `copied ${copied} < written ${written}`);
    assert.ok(copied <= regionsBound, `copied ${copied} bytes, more than the ${regionsBound} bytes of dirty regions`);

    assert.deepEqual(await verifyRecords(client, 'away', 30_000, away.acked), []);
    assert.deepEqual(await verifyRecords(client, 'bulk', 0, bulk.acked), []);
    client.close();
    await cliOk(cluster, ['volume', 'detach', 'data']);
    const vol = await volumeInfo(cluster, 'data');
    const sums = await Promise.all(vol.replicas.map((r) => sha256File(replicaFile(cluster, r.id))));
    assert.equal(new Set(sums).size, 1, `copies differ after the resync: ${vol.replicas.map((r, i) => `${r.nodeName}=${sums[i].slice(0, 12)}`).join(' ')}`);
  });
});
