// A rebuild interrupted by another failure (DESIGN invariant 6 and the
// rebuild rules): while a lost copy is being rebuilt under load, the node
// receiving it is killed. The volume must still reach its level, with every
// acknowledged write intact and every copy identical.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { eventually, LocalCluster } from '../helpers/local-cluster';
import { RecordWriter, verifyRecords } from '../../src/cluster/record-writer';
import { attachAndConnect, cliOk, health, replicaFile, volumeInfo } from '../helpers/volumes';
import { sha256File } from '../helpers/tools';

const IP_PREFIX = '127.0.27.';

describe('HA: a node killed in the middle of a rebuild', () => {
  let cluster: LocalCluster;
  before(async () => {
    // Rebuilds capped at 8 MiB/s so the test can strike while one runs.
    cluster = await LocalCluster.up({ nodes: 4, ipPrefix: IP_PREFIX, leaseTtl: 3, extraArgs: ['--rebuild-grace', '2', '--replica-timeout', '2000', '--rebuild-rate', '8'] });
  });
  after(async () => {
    await cluster?.down();
  });

  test('the volume still reaches its level with correct data', async () => {
    await cliOk(cluster, ['volume', 'create', 'big', '--capacity', '256MB', '--level', '2', '--node', 'v1']);
    const { client } = await attachAndConnect(cluster, 'big', 'v1');
    const nodes = async (): Promise<Array<{ id: string; name: string; status: string }>> => JSON.parse(await cliOk(cluster, ['node', 'ls', '--json'])) as Array<{ id: string; name: string; status: string }>;
    const v1 = (await nodes()).find((n) => n.name === 'v1')!;

    const bulk = new RecordWriter(client, 'bulk', 0, 0, 16);
    bulk.start(8192); // 32 MiB: about 4 s of rebuild at the cap
    await bulk.done;
    assert.equal(bulk.error, undefined);

    // Lose the other copy; a new one is placed after the grace period and rebuilt while the writer goes on.
    const first = (await volumeInfo(cluster, 'big')).replicas.find((r) => r.nodeId !== v1.id)!;
    const firstNode = (await nodes()).find((n) => n.id === first.nodeId)!;
    const live = new RecordWriter(client, 'live', 20_000, 0, 2);
    live.start(40_000); // blocks 20000..59999: inside the 256 MiB volume whatever the pace
    await cluster.nodeAction('kill', firstNode.name);
    const target = await eventually(
      'a replacement copy being rebuilt',
      async () => (await volumeInfo(cluster, 'big')).replicas.find((r) => r.state === 'rebuilding' && r.nodeId !== v1.id),
      30_000,
    );
    await eventually('the rebuild to be under way', async () => /rebuilding on node/.test(await cliOk(cluster, ['events', '-n', '50'])));
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal((await volumeInfo(cluster, 'big')).replicas.find((r) => r.id === target.id)?.state, 'rebuilding', 'struck while the rebuild runs');

    // Kill the node receiving the rebuild.
    const targetNode = (await nodes()).find((n) => n.id === target.nodeId)!;
    await cluster.nodeAction('kill', targetNode.name);

    await eventually(
      'the volume back to 2 in-sync copies on live nodes',
      async () => health(await volumeInfo(cluster, 'big'), await nodes()).inSync === 2,
      120_000,
      500,
    );
    await live.stop();
    assert.equal(live.error, undefined, 'the application never saw an error');
    assert.ok(live.acked.size > 0);
    assert.deepEqual(await verifyRecords(client, 'bulk', 0, bulk.acked), []);
    assert.deepEqual(await verifyRecords(client, 'live', 20_000, live.acked), []);
    client.close();

    await cliOk(cluster, ['volume', 'detach', 'big']);
    const vol = await volumeInfo(cluster, 'big');
    const up = new Set((await nodes()).filter((n) => n.status !== 'maintenance').map((n) => n.id));
    const inSync = vol.replicas.filter((r) => r.state === 'in-sync' && up.has(r.nodeId));
    const sums = await Promise.all(inSync.map((r) => sha256File(replicaFile(cluster, r.id))));
    assert.equal(new Set(sums).size, 1, 'in-sync copies identical');
    const events = await cliOk(cluster, ['events', '-n', '200']);
    assert.match(events, /volume big \(vd1\) volume rebuild completed/);
  });
});
