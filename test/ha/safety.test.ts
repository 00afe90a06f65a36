// Data safety on a real cluster, failures 1, 2 and 8 of the issue.
//
// Failure 1: a full rebuild must make the target
// equal to the source also where the source holds nothing. The dead owner's
// copy keeps 0xAA at 8–12 MiB; meanwhile the new owner zeroes 4–16 MiB with
// holes allowed (the source's file has a hole there). After the old node is
// back and its copy rebuilt in full, every in-sync copy must be byte-identical
// and the volume must read zeros there. (Before the fix the rebuild copied only
// the source's allocated chunks, so the target kept 0xAA and was marked
// in-sync.)
//
// Failure 2: a copy that loses power comes back without the writes it had
// acknowledged since its last completed FLUSH. Emulated honestly: the copy's
// image is saved right after a flush, more writes are acknowledged, the copy's
// agent is killed and its image put back as saved. Its resync must cover
// everything written since that flush. (Before the fix its dirty map held only
// the writes in flight when it failed.)
//
// Failure 8: a stale copy whose files are gone on a live node (a wiped or
// replaced drive) was retried forever and never whole again; it must be made
// again and filled in full.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { eventually, LocalCluster } from '../helpers/local-cluster';
import { attachAndConnect, cliOk, replicaFile, volumeInfo } from '../helpers/volumes';
import { sha256File } from '../helpers/tools';
import { copyFile, rm } from 'node:fs/promises';
import path from 'node:path';

const IP_PREFIX = '127.0.29.';
const MiB = 1024 * 1024;

describe('data safety: rebuilds and resyncs leave identical copies', () => {
  let cluster: LocalCluster;
  before(async () => {
    cluster = await LocalCluster.up({ nodes: 3, ipPrefix: IP_PREFIX, leaseTtl: 3, extraArgs: ['--rebuild-grace', '600', '--replica-timeout', '2000'] });
  });
  after(async () => {
    await cluster?.down();
  });

  test('the dead owner\'s copy is rebuilt byte-identical, holes included', async () => {
    await cliOk(cluster, ['volume', 'create', 'holes', '--capacity', '64MB', '--level', '2', '--node', 'v1']);
    const nodes = JSON.parse(await cliOk(cluster, ['node', 'ls', '--json'])) as Array<{ id: string; name: string }>;
    const v1 = nodes.find((n) => n.name === 'v1')!;
    const first = await attachAndConnect(cluster, 'holes', 'v1');
    await first.client.write(8 * MiB, Buffer.alloc(4 * MiB, 0xaa));
    await first.client.flush();
    const other = (await volumeInfo(cluster, 'holes')).replicas.find((r) => r.nodeId !== v1.id)!;
    const otherNode = nodes.find((n) => n.id === other.nodeId)!;

    await cluster.nodeAction('kill', 'v1');
    first.client.close();
    await eventually('the volume released from the dead owner', async () => (await volumeInfo(cluster, 'holes')).owner === null, 60_000);
    const second = await attachAndConnect(cluster, 'holes', otherNode.name);
    await second.client.writeZeroes(4 * MiB, 12 * MiB); // holes allowed: the source's file gets a hole
    await second.client.flush();

    await cluster.nodeAction('start', 'v1');
    await eventually('both copies in sync again', async () => (await volumeInfo(cluster, 'holes')).replicas.every((r) => r.state === 'in-sync'), 120_000);
    assert.ok((await second.client.read(4 * MiB, 12 * MiB)).equals(Buffer.alloc(12 * MiB)), 'the volume reads zeros where it was zeroed');
    second.client.close();
    await cliOk(cluster, ['volume', 'detach', 'holes']);
    const vol = await volumeInfo(cluster, 'holes');
    const sums = await Promise.all(vol.replicas.map((r) => sha256File(replicaFile(cluster, r.id))));
    assert.equal(new Set(sums).size, 1, `in-sync copies differ: ${vol.replicas.map((r, i) => `${r.nodeName}=${sums[i].slice(0, 12)}`).join(' ')}`);
  });

  test('a copy that lost power is resynced over everything since its last flush', async () => {
    await cliOk(cluster, ['volume', 'create', 'power', '--capacity', '64MB', '--level', '2', '--node', 'v2']);
    const nodes = JSON.parse(await cliOk(cluster, ['node', 'ls', '--json'])) as Array<{ id: string; name: string }>;
    const v2 = nodes.find((n) => n.name === 'v2')!;
    const { client } = await attachAndConnect(cluster, 'power', 'v2');
    const copy = (await volumeInfo(cluster, 'power')).replicas.find((r) => r.nodeId !== v2.id)!;
    const copyNode = nodes.find((n) => n.id === copy.nodeId)!;
    const image = replicaFile(cluster, copy.id);

    await client.write(0, Buffer.alloc(MiB, 0x11));
    await client.flush();
    const atFlush = path.join(cluster.dir, `${copy.id}.at-flush.img`);
    await copyFile(image, atFlush); // the copy's disk as of its last completed flush
    await client.write(20 * MiB, Buffer.alloc(2 * MiB, 0x22)); // acknowledged, in its page cache only

    await cluster.nodeAction('kill', copyNode.name);
    await copyFile(atFlush, image); // the power loss: what was not flushed is gone
    await client.write(40 * MiB, Buffer.alloc(MiB, 0x33)); // the owner notices the copy is gone
    await eventually('the copy marked stale', async () => (await volumeInfo(cluster, 'power')).replicas.find((r) => r.id === copy.id)?.state === 'stale');
    await cluster.nodeAction('start', copyNode.name);
    await eventually('the copy in sync again', async () => (await volumeInfo(cluster, 'power')).replicas.every((r) => r.state === 'in-sync'), 120_000);

    assert.ok((await client.read(20 * MiB, 2 * MiB)).equals(Buffer.alloc(2 * MiB, 0x22)), 'the acknowledged write made before the power loss is there');
    client.close();
    await cliOk(cluster, ['volume', 'detach', 'power']);
    const vol = await volumeInfo(cluster, 'power');
    const sums = await Promise.all(vol.replicas.map((r) => sha256File(replicaFile(cluster, r.id))));
    assert.equal(new Set(sums).size, 1, `in-sync copies differ: ${vol.replicas.map((r, i) => `${r.nodeName}=${sums[i].slice(0, 12)}`).join(' ')}`);
  });

  test('a stale copy whose files are gone is made again and rebuilt in full', async () => {
    await cliOk(cluster, ['volume', 'create', 'wiped', '--capacity', '64MB', '--level', '2', '--node', 'v3']);
    const nodes = JSON.parse(await cliOk(cluster, ['node', 'ls', '--json'])) as Array<{ id: string; name: string }>;
    const v3 = nodes.find((n) => n.name === 'v3')!;
    const { client } = await attachAndConnect(cluster, 'wiped', 'v3');
    await client.write(0, Buffer.alloc(4 * MiB, 0x44));
    await client.flush();
    const copy = (await volumeInfo(cluster, 'wiped')).replicas.find((r) => r.nodeId !== v3.id)!;
    const copyNode = nodes.find((n) => n.id === copy.nodeId)!;
    const image = replicaFile(cluster, copy.id);

    await cluster.nodeAction('kill', copyNode.name);
    await client.write(8 * MiB, Buffer.alloc(MiB, 0x55));
    await eventually('the copy marked stale', async () => (await volumeInfo(cluster, 'wiped')).replicas.find((r) => r.id === copy.id)?.state === 'stale');
    await rm(image);
    await rm(image.replace(/\.img$/, '.meta.json'));
    await cluster.nodeAction('start', copyNode.name);
    await eventually('the copy in sync again', async () => (await volumeInfo(cluster, 'wiped')).replicas.every((r) => r.state === 'in-sync'), 120_000);

    client.close();
    await cliOk(cluster, ['volume', 'detach', 'wiped']);
    const vol = await volumeInfo(cluster, 'wiped');
    const sums = await Promise.all(vol.replicas.map((r) => sha256File(replicaFile(cluster, r.id))));
    assert.equal(new Set(sums).size, 1, `in-sync copies differ: ${vol.replicas.map((r, i) => `${r.nodeName}=${sums[i].slice(0, 12)}`).join(' ')}`);
  });
});
