// Failure 7 of the data-safety issue: a volume attached elsewhere the moment
// its owner's lease is gone, before the controller has released it. The dead
// owner's own copy may hold a write no other copy has (sent to its local copy,
// never acknowledged); only a full copy may make it whole again. Before the
// fix, only the controller's release marked it so: an attach that came first
// left it to an incremental resync, which kept the stray write.
//
// To come first for sure, the test holds the controller back: the elected
// controller's node is paused (SIGSTOP) together with the owner, and the
// owner's lease is revoked in etcd (what its expiry does, without waiting for
// it). The paused controller's election key lives on for its TTL, so no other
// node takes over the controller meanwhile; the test checks that the attach
// really came before any release (its epoch is the owner's plus one).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { eventually, LocalCluster } from '../helpers/local-cluster';
import { NetCut } from '../helpers/netcut';
import { keys } from '../../src/store/keys';
import { attachAndConnect, cliOk, readFileRange, replicaFile, volumeInfo } from '../helpers/volumes';
import { sha256File } from '../helpers/tools';

const IP_PREFIX = '127.0.33.';
const MiB = 1024 * 1024;

interface NodeRow {
  id: string;
  name: string;
  ip: string;
  controller?: boolean;
}

describe('an attach that comes before the controller\'s release', () => {
  let cluster: LocalCluster;
  const net = new NetCut('cio_test_takeover');
  before(async () => {
    // A 10 s lease: the paused controller stays elected for several seconds
    // after the owner's lease is revoked, time enough for the attach.
    cluster = await LocalCluster.up({ nodes: 3, ipPrefix: IP_PREFIX, leaseTtl: 10, extraArgs: ['--rebuild-grace', '600', '--replica-timeout', '30000'] });
  });
  after(async () => {
    await net.heal();
    await cluster?.down();
  });

  test("the dead owner's copy needs a full copy also when the attach comes first (failure 7)", async () => {
    const nodes = JSON.parse(await cliOk(cluster, ['node', 'ls', '--json'])) as NodeRow[];
    const controller = nodes.find((n) => n.controller)!;
    assert.ok(controller, 'a controller is elected');
    const [owner, taker] = nodes.filter((n) => n !== controller);
    await cliOk(cluster, ['volume', 'create', 'early', '--capacity', '64MB', '--level', '3', '--node', owner.name]);
    const first = await attachAndConnect(cluster, 'early', owner.name);
    await first.client.write(0, Buffer.alloc(8 * MiB, 0x51));
    await first.client.flush();
    const epochBefore = (await volumeInfo(cluster, 'early')).epoch;
    const ownCopy = (await volumeInfo(cluster, 'early')).replicas.find((r) => r.nodeId === owner.id)!;

    // Cut from the other nodes, the owner writes to its own copy only; the
    // write waits for the others and is never acknowledged.
    await net.separate(owner.ip, nodes.filter((n) => n !== owner).map((n) => n.ip));
    const stray = first.client.write(4 * MiB, Buffer.alloc(MiB, 0x5b)).then(
      () => 'acked',
      () => 'failed',
    );
    await eventually("the stray write on the owner's copy", async () => (await readFileRange(replicaFile(cluster, ownCopy.id), 4 * MiB, MiB)).equals(Buffer.alloc(MiB, 0x5b)));

    await cluster.nodeAction('pause', controller.name);
    await cluster.nodeAction('pause', owner.name);
    const etcd = await cluster.etcd();
    const alive = await etcd.get(keys.alive(owner.id)).exec();
    assert.equal(alive.kvs.length, 1, "the owner's liveness key is there");
    await etcd.leaseClient.leaseRevoke({ ID: alive.kvs[0].lease });

    const second = await attachAndConnect(cluster, 'early', taker.name, true);
    assert.equal(second.record.epoch, epochBefore + 1, 'the controller released the volume before the attach: the test did not reach its case');
    await net.heal();
    await second.client.write(16 * MiB, Buffer.alloc(MiB, 0x52));
    await second.client.flush();
    const marked = (await volumeInfo(cluster, 'early')).replicas.find((r) => r.id === ownCopy.id)!;
    assert.equal(marked.state, 'stale');
    assert.equal(marked.fullResync, true, "the dead owner's copy is to be copied in full");

    await cluster.nodeAction('resume', controller.name);
    await cluster.nodeAction('kill', owner.name);
    first.client.close();
    assert.equal(await stray, 'failed', 'a write the other copies never got was acknowledged');
    await cluster.nodeAction('start', owner.name);
    await eventually('every copy in sync', async () => (await volumeInfo(cluster, 'early')).replicas.every((r) => r.state === 'in-sync'), 120_000);
    assert.ok((await second.client.read(0, 4 * MiB)).equals(Buffer.alloc(4 * MiB, 0x51)), 'the acknowledged writes read back');
    second.client.close();
    await cliOk(cluster, ['volume', 'detach', 'early']);
    const vol = await volumeInfo(cluster, 'early');
    const sums = await Promise.all(vol.replicas.map((r) => sha256File(replicaFile(cluster, r.id))));
    assert.equal(new Set(sums).size, 1, `in-sync copies differ: ${vol.replicas.map((r, i) => `${r.nodeName}=${sums[i].slice(0, 12)}`).join(' ')}`);
  });
});
