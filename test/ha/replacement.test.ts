// A copy on a failed node is replaced after the grace period; the stale copy
// must stay recorded until its replacement is whole (failure 9 of the
// data-safety issue). Before the fix, "drop stale" counted a copy still being
// rebuilt as healthy and deleted the nearly whole stale copy the moment its
// replacement started: had the owner then failed, the volume was down to one
// whole copy and one half-filled one. The rebuild is slowed down by the
// cluster's rebuild rate so the test sees it in progress.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { eventually, LocalCluster } from '../helpers/local-cluster';
import { attachAndConnect, cliOk, replicaFile, volumeInfo } from '../helpers/volumes';
import { sha256File } from '../helpers/tools';

const IP_PREFIX = '127.0.32.';
const MiB = 1024 * 1024;

describe('a failed node\'s copy is replaced', () => {
  let cluster: LocalCluster;
  before(async () => {
    cluster = await LocalCluster.up({ nodes: 3, ipPrefix: IP_PREFIX, leaseTtl: 3, extraArgs: ['--rebuild-grace', '3', '--rebuild-rate', '2'] });
  });
  after(async () => {
    await cluster?.down();
  });

  test('the stale copy stays recorded until its replacement is whole (failure 9)', async () => {
    await cliOk(cluster, ['volume', 'create', 'spare', '--capacity', '64MB', '--level', '2', '--node', 'v1']);
    const nodes = JSON.parse(await cliOk(cluster, ['node', 'ls', '--json'])) as Array<{ id: string; name: string }>;
    const v1 = nodes.find((n) => n.name === 'v1')!;
    const { client } = await attachAndConnect(cluster, 'spare', 'v1');
    for (let off = 0; off < 16 * MiB; off += 4 * MiB) await client.write(off, Buffer.alloc(4 * MiB, 0x41));
    await client.flush();
    const copy = (await volumeInfo(cluster, 'spare')).replicas.find((r) => r.nodeId !== v1.id)!;
    const failed = nodes.find((n) => n.id === copy.nodeId)!;
    const spareNode = nodes.find((n) => n.id !== v1.id && n.id !== failed.id)!;

    await cluster.nodeAction('kill', failed.name);
    await client.write(20 * MiB, Buffer.alloc(MiB, 0x42)); // the owner finds the copy gone and marks it stale
    await eventually('the copy on the failed node marked stale', async () => (await volumeInfo(cluster, 'spare')).replicas.find((r) => r.id === copy.id)?.state === 'stale');

    // After the grace period a copy is made on the third node and filled at
    // 2 MiB/s. Every look at the record while it fills must still show the
    // stale copy.
    let seenFilling = 0;
    let droppedEarly: string | undefined;
    await eventually('the replacement whole', async () => {
      const vol = await volumeInfo(cluster, 'spare');
      const replacement = vol.replicas.find((r) => r.nodeId === spareNode.id);
      if (replacement && replacement.state !== 'in-sync') {
        seenFilling++;
        if (!vol.replicas.some((r) => r.id === copy.id)) droppedEarly ??= replacement.state;
      }
      return replacement?.state === 'in-sync';
    }, 120_000, 100);
    assert.equal(droppedEarly, undefined, `the stale copy was dropped while its replacement was ${droppedEarly}`);
    assert.ok(seenFilling > 0, 'the replacement was never seen being filled: the test proved nothing');
    // Whole again at level 2: now the stale copy goes.
    await eventually('the stale copy dropped', async () => !(await volumeInfo(cluster, 'spare')).replicas.some((r) => r.id === copy.id), 60_000);

    await cluster.nodeAction('start', failed.name);
    assert.ok((await client.read(0, 16 * MiB)).equals(Buffer.alloc(16 * MiB, 0x41)), 'the data reads back');
    client.close();
    await cliOk(cluster, ['volume', 'detach', 'spare']);
    const vol = await volumeInfo(cluster, 'spare');
    assert.deepEqual(vol.replicas.map((r) => r.state), ['in-sync', 'in-sync']);
    const sums = await Promise.all(vol.replicas.map((r) => sha256File(replicaFile(cluster, r.id))));
    assert.equal(new Set(sums).size, 1, `in-sync copies differ: ${vol.replicas.map((r, i) => `${r.nodeName}=${sums[i].slice(0, 12)}`).join(' ')}`);
  });
});
