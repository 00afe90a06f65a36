// Fencing under a network cut (DESIGN invariant 2): the owner loses etcd but
// still reaches the other copies, so it cannot learn that it lost the volume.
// The volume is taken over elsewhere; every write the old owner then sends is
// refused by the copies' epoch check, and not one byte of it lands.
//
// Failure 6 of the data-safety issue: an owner cut off from etcd and from the
// other nodes still reaches its own copy, which the new owner cannot open at
// its epoch. Reads must stop when its lease can no longer be counted on, or it
// would serve data the new owner has since overwritten.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { eventually, LocalCluster } from '../helpers/local-cluster';
import { NetCut } from '../helpers/netcut';
import { ETCD_NODE_PORT_BASE } from '../../src/cluster/launcher';
import { recordBytes, RecordWriter, verifyRecords } from '../../src/cluster/record-writer';
import { attachAndConnect, canConnect, cliOk, fileContains, replicaFile, socketOf, volumeInfo } from '../helpers/volumes';
import { sha256File } from '../helpers/tools';

const MiB = 1024 * 1024;

const IP_PREFIX = '127.0.25.';

describe('HA: an owner cut off from etcd is fenced by the copies', () => {
  let cluster: LocalCluster;
  const net = new NetCut('cio_test_partition');
  before(async () => {
    cluster = await LocalCluster.up({ nodes: 4, ipPrefix: IP_PREFIX, leaseTtl: 3, extraArgs: ['--rebuild-grace', '600', '--replica-timeout', '3000'] });
  });
  after(async () => {
    await net.heal();
    await cluster?.down();
  });

  test('old-epoch writes are refused and change nothing; the old owner drops the volume', async () => {
    await cliOk(cluster, ['volume', 'create', 'db', '--capacity', '128MB', '--level', '3', '--node', 'v3']);
    const old = await attachAndConnect(cluster, 'db', 'v3');
    const nodes = JSON.parse(await cliOk(cluster, ['node', 'ls', '--json'])) as Array<{ id: string; name: string }>;
    const v3 = nodes.find((n) => n.name === 'v3')!;
    const first = new RecordWriter(old.client, 'before', 0);
    first.start(100);
    await first.done;
    assert.equal(first.error, undefined);

    // Cut v3 from etcd only: its lease runs out, the controller releases the volume.
    await net.cutPort(ETCD_NODE_PORT_BASE + 3);
    await eventually('db released from the cut-off owner', async () => (await volumeInfo(cluster, 'db')).owner === null, 30_000);
    const holder = (await volumeInfo(cluster, 'db')).replicas.find((r) => r.nodeId !== v3.id && r.state === 'in-sync')!;
    const fresh = await attachAndConnect(cluster, 'db', nodes.find((n) => n.id === holder.nodeId)!.name);
    const mine = new RecordWriter(fresh.client, 'new-owner', 1000);
    mine.start(100);
    await mine.done;
    assert.equal(mine.error, undefined);

    // The old owner still serves its client and still reaches the copies.
    const stale = new RecordWriter(old.client, 'OLD-OWNER-CUT-OFF', 1000, 0, 8);
    stale.start(100);
    await stale.done;
    assert.equal(stale.acked.size, 0, `the cut-off owner acknowledged ${stale.acked.size} writes`);
    assert.ok(stale.error, 'its client gets I/O errors');
    old.client.close();
    // Fenced by the copies, the old owner drops the volume by itself, still cut off from etcd.
    await eventually('the old owner closed its NBD export', async () => !(await canConnect(socketOf(old.record.attachment!.uri), 'db')));

    assert.deepEqual(await verifyRecords(fresh.client, 'new-owner', 1000, mine.acked), []);
    assert.deepEqual(await verifyRecords(fresh.client, 'before', 0, first.acked), []);
    await fresh.client.flush();
    const marker = recordBytes('OLD-OWNER-CUT-OFF', 0).subarray(0, 24);
    for (const r of (await volumeInfo(cluster, 'db')).replicas.filter((x) => x.state === 'in-sync')) {
      assert.equal(await fileContains(replicaFile(cluster, r.id), marker), false, `copy ${r.id} on ${r.nodeName} holds bytes from the fenced owner`);
    }

    // Healed, v3 rejoins; the volume stays with its new owner.
    await net.heal();
    await eventually('v3 normal again', async () => (JSON.parse(await cliOk(cluster, ['node', 'ls', '--json'])) as Array<{ name: string; status: string }>).find((n) => n.name === 'v3')?.status === 'normal', 30_000);
    assert.equal((await volumeInfo(cluster, 'db')).owner, holder.nodeId);
    assert.deepEqual(await verifyRecords(fresh.client, 'new-owner', 1000, mine.acked), []);
    fresh.client.close();
    await cliOk(cluster, ['volume', 'detach', 'db']);
  });

  test('an owner cut off from etcd and the other nodes stops reading its own copy once its lease may be gone', async () => {
    await cliOk(cluster, ['volume', 'create', 'reads', '--capacity', '64MB', '--level', '2', '--node', 'v2']);
    const nodes = JSON.parse(await cliOk(cluster, ['node', 'ls', '--json'])) as Array<{ id: string; name: string; ip: string }>;
    const v2 = nodes.find((n) => n.name === 'v2')!;
    const old = await attachAndConnect(cluster, 'reads', 'v2');
    await old.client.write(0, Buffer.alloc(MiB, 0x11));
    await old.client.flush();

    await net.isolate(v2.ip, nodes.filter((n) => n.id !== v2.id).map((n) => n.ip), ETCD_NODE_PORT_BASE + 2);
    await eventually('reads released from the cut-off owner', async () => (await volumeInfo(cluster, 'reads')).owner === null, 30_000);
    const holder = (await volumeInfo(cluster, 'reads')).replicas.find((r) => r.nodeId !== v2.id)!;
    const fresh = await attachAndConnect(cluster, 'reads', nodes.find((n) => n.id === holder.nodeId)!.name);
    await fresh.client.write(0, Buffer.alloc(MiB, 0x22));
    await fresh.client.flush();

    // The old owner's copy still holds 0x11 and only the old owner reaches it.
    const outcome = old.client.read(0, MiB).then(
      (data) => ({ data }),
      (err: unknown) => ({ err }),
    );
    await net.heal();
    const got = await outcome;
    if ('data' in got) assert.ok(!got.data.equals(Buffer.alloc(MiB, 0x11)), 'the cut-off owner served data the new owner had overwritten');
    old.client.close();
    assert.ok((await fresh.client.read(0, MiB)).equals(Buffer.alloc(MiB, 0x22)));
    await eventually('both copies in sync again', async () => (await volumeInfo(cluster, 'reads')).replicas.every((r) => r.state === 'in-sync'), 120_000);
    fresh.client.close();
    await cliOk(cluster, ['volume', 'detach', 'reads']);
    const vol = await volumeInfo(cluster, 'reads');
    const sums = await Promise.all(vol.replicas.map((r) => sha256File(replicaFile(cluster, r.id))));
    assert.equal(new Set(sums).size, 1, 'in-sync copies differ');
  });
});
