// Degraded writes (DESIGN invariant 3). A copy that stops answering is marked
// stale in etcd before any write it missed is acknowledged, and the
// application goes on. If etcd cannot be reached to record that, writes wait:
// nothing is acknowledged that only some in-sync copies hold.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ETCD_NODE_PORT_BASE } from '../../src/cluster/launcher';
import { RecordWriter, verifyRecords } from '../../src/cluster/record-writer';
import { eventually, LocalCluster } from '../helpers/local-cluster';
import { NetCut } from '../helpers/netcut';
import { attachAndConnect, cliOk, volumeInfo } from '../helpers/volumes';

const IP_PREFIX = '127.0.28.';

describe('HA: degraded writes', () => {
  let cluster: LocalCluster;
  const net = new NetCut('cio_test_degraded');
  before(async () => {
    cluster = await LocalCluster.up({ nodes: 4, ipPrefix: IP_PREFIX, leaseTtl: 3, extraArgs: ['--rebuild-grace', '600', '--replica-timeout', '1000'] });
  });
  after(async () => {
    await net.heal();
    await cluster?.down();
  });

  const nodes = async (): Promise<Array<{ id: string; name: string; status: string }>> => JSON.parse(await cliOk(cluster, ['node', 'ls', '--json'])) as Array<{ id: string; name: string; status: string }>;

  /** A volume attached on `owner` with a record writer past its first 100 records, and a copy on another node. */
  const writingVolume = async (name: string, level: number, owner: string) => {
    await cliOk(cluster, ['volume', 'create', name, '--capacity', '64MB', '--level', String(level), '--node', owner]);
    const { client } = await attachAndConnect(cluster, name, owner);
    const ownerId = (await nodes()).find((n) => n.name === owner)!.id;
    const writer = new RecordWriter(client, name, 0);
    writer.start();
    await eventually('writes', async () => writer.acked.size > 100);
    const copy = (await volumeInfo(cluster, name)).replicas.find((r) => r.nodeId !== ownerId)!;
    const copyNode = (await nodes()).find((n) => n.id === copy.nodeId)!.name;
    return { client, writer, copy, copyNode };
  };

  test('a frozen copy is marked stale and the application goes on', async () => {
    const { client, writer, copy: victim, copyNode: victimName } = await writingVolume('a', 3, 'v1');
    await cluster.nodeAction('pause', victimName);
    await eventually('the frozen copy recorded stale', async () => (await volumeInfo(cluster, 'a')).replicas.find((r) => r.id === victim.id)?.state === 'stale');
    const afterStale = writer.acked.size;
    await eventually('writes go on without it', async () => writer.acked.size > afterStale + 200);
    await writer.stop();
    assert.equal(writer.error, undefined);
    assert.match(await cliOk(cluster, ['events', '-n', '50']), /volume a \(vd1\) copy on node \w+ stopped answering, marked stale :1027/);
    await cluster.nodeAction('resume', victimName);
    await eventually('the copy resynced', async () => (await volumeInfo(cluster, 'a')).replicas.every((r) => r.state === 'in-sync'), 60_000);
    assert.deepEqual(await verifyRecords(client, 'a', 0, writer.acked), []);
    client.close();
    await cliOk(cluster, ['volume', 'detach', 'a']);
  });

  test('with etcd out of reach, writes wait instead of being acknowledged unsafely', async () => {
    const { client, writer, copy: other, copyNode: otherName } = await writingVolume('b', 2, 'v2');

    // The owner loses etcd, and the other copy freezes: the owner cannot record it stale.
    await net.cutPort(ETCD_NODE_PORT_BASE + 2);
    await cluster.nodeAction('pause', otherName);
    const frozenAt = writer.acked.size;
    await new Promise((r) => setTimeout(r, 5000));
    assert.equal(writer.acked.size, frozenAt, `${writer.acked.size - frozenAt} writes were acknowledged with one in-sync copy unreachable and etcd out of reach`);

    await cluster.nodeAction('resume', otherName);
    await net.heal();
    await writer.done;
    // Meanwhile the controller released the volume (the owner's lease ran out): the owner is fenced.
    await eventually('v2 normal again', async () => (await nodes()).find((n) => n.name === 'v2')?.status === 'normal', 30_000);
    client.close();
    // The frozen copy could never be recorded stale, so it still counts as in-sync: it has every acknowledged write.
    const info = await volumeInfo(cluster, 'b');
    assert.equal(info.replicas.find((r) => r.id === other.id)?.state, 'in-sync');
    const again = await attachAndConnect(cluster, 'b', otherName);
    assert.deepEqual(await verifyRecords(again.client, 'b', 0, writer.acked, writer.unknown), []);
    again.client.close();
  });
});
