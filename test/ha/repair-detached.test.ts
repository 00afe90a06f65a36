// Failure 10 of the data-safety issue: a volume nobody uses (its service
// scaled to 0) that is below its level must still get its copies back. Only
// an owner's engine rebuilds, so a node holding a whole copy takes the volume
// to repair it (no NBD export) and gives it back when the copies are whole;
// an application's attach elsewhere takes it over at any moment. (On 96a15a5
// the stale copy of a detached volume stayed stale for ever.)
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { open } from 'node:fs/promises';
import { eventually, LocalCluster } from '../helpers/local-cluster';
import { attachAndConnect, cliOk, replicaFile, volumeInfo } from '../helpers/volumes';
import { sha256File } from '../helpers/tools';

const IP_PREFIX = '127.0.30.';
const MiB = 1024 * 1024;

interface NodeRow {
  id: string;
  name: string;
}

async function readImage(file: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    await fh.read(buf, 0, length, offset);
    return buf;
  } finally {
    await fh.close();
  }
}

describe('a detached volume below its level is repaired', () => {
  let cluster: LocalCluster;
  let nodes: NodeRow[];
  before(async () => {
    // 4 MiB/s: a full copy of 24 MiB takes seconds, long enough to take the volume over mid-repair.
    cluster = await LocalCluster.up({ nodes: 3, ipPrefix: IP_PREFIX, leaseTtl: 3, extraArgs: ['--rebuild-grace', '600', '--repair-delay', '2', '--replica-timeout', '2000', '--rebuild-rate', '4'] });
    nodes = JSON.parse(await cliOk(cluster, ['node', 'ls', '--json'])) as NodeRow[];
  });
  after(async () => {
    await cluster?.down();
  });

  /** Make a 2-copy volume on v1, then write `pattern` to its first `mib` MiB while the other copy's node is down, and detach. */
  async function degradedVolume(name: string, mib: number, pattern: number): Promise<{ copyNode: NodeRow; copyId: string }> {
    await cliOk(cluster, ['volume', 'create', name, '--capacity', '64MB', '--level', '2', '--node', 'v1']);
    const v1 = nodes.find((n) => n.name === 'v1')!;
    const copy = (await volumeInfo(cluster, name)).replicas.find((r) => r.nodeId !== v1.id)!;
    const copyNode = nodes.find((n) => n.id === copy.nodeId)!;
    await cluster.nodeAction('kill', copyNode.name);
    await eventually(`the copy on ${copyNode.name} marked stale`, async () => (await volumeInfo(cluster, name)).replicas.find((r) => r.id === copy.id)?.state === 'stale', 60_000);
    const { client } = await attachAndConnect(cluster, name, 'v1');
    for (let i = 0; i < mib; i++) await client.write(i * MiB, Buffer.alloc(MiB, pattern));
    await client.flush();
    client.close();
    await cliOk(cluster, ['volume', 'detach', name]);
    return { copyNode, copyId: copy.id };
  }

  async function assertIdentical(name: string): Promise<void> {
    const vol = await volumeInfo(cluster, name);
    assert.ok(vol.replicas.every((r) => r.state === 'in-sync'), `copies not all in sync: ${vol.replicas.map((r) => `${r.nodeName}=${r.state}`).join(' ')}`);
    const sums = await Promise.all(vol.replicas.map((r) => sha256File(replicaFile(cluster, r.id))));
    assert.equal(new Set(sums).size, 1, `in-sync copies differ: ${vol.replicas.map((r, i) => `${r.nodeName}=${sums[i].slice(0, 12)}`).join(' ')}`);
  }

  test('a node holding a whole copy takes it, resyncs the stale copy and gives it back', async () => {
    const { copyNode, copyId } = await degradedVolume('idle', 2, 0x66);
    await cluster.nodeAction('start', copyNode.name);
    await eventually('the copy in sync and the volume free again', async () => {
      const vol = await volumeInfo(cluster, 'idle');
      return vol.owner === null && vol.replicas.every((r) => r.state === 'in-sync');
    }, 120_000);
    const events = await cliOk(cluster, ['events', '-n', '200']);
    assert.match(events, /volume idle \(vd\d+\) taken by node \w+ to rebuild its copies/);
    assert.match(events, /volume idle \(vd\d+\) repair on node \w+ ended, copies in sync 2\/2/);
    assert.ok((await readImage(replicaFile(cluster, copyId), MiB, MiB)).equals(Buffer.alloc(MiB, 0x66)), 'the resynced copy holds what was written while it was away');
    await assertIdentical('idle');
  });

  test('an application attach elsewhere takes the volume over in the middle of its repair', async () => {
    const { copyNode } = await degradedVolume('busy', 24, 0x77);
    await cluster.nodeAction('start', copyNode.name);
    await eventually('the repair under way', async () => (await volumeInfo(cluster, 'busy')).attachment?.repair === true, 60_000);
    const user = nodes.find((n) => n.name !== 'v1' && n.id !== copyNode.id)!;
    const { client } = await attachAndConnect(cluster, 'busy', user.name);
    const vol = await volumeInfo(cluster, 'busy');
    assert.equal(vol.owner, user.id, 'the application\'s node owns the volume');
    assert.equal(vol.attachment?.repair, undefined);
    await client.write(30 * MiB, Buffer.alloc(MiB, 0x88));
    await client.flush();
    await eventually('both copies in sync under the new owner', async () => (await volumeInfo(cluster, 'busy')).replicas.every((r) => r.state === 'in-sync'), 120_000);
    assert.ok((await client.read(0, 24 * MiB)).equals(Buffer.alloc(24 * MiB, 0x77)), 'what was written before the repair reads back');
    client.close();
    await cliOk(cluster, ['volume', 'detach', 'busy']);
    await assertIdentical('busy');
  });
});
