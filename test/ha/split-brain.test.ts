// Fencing (DESIGN invariant 2): the owner is frozen (SIGSTOP), the volume is
// taken over on another node, the new owner writes; then the old owner thaws
// and its client keeps writing. Not one byte it sends may reach a copy, and
// the new owner must read exactly what it wrote.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { eventually, LocalCluster } from '../helpers/local-cluster';
import { recordBytes, RecordWriter, verifyRecords, RECORD_SIZE } from '../../src/cluster/record-writer';
import { attachAndConnect, canConnect, cliOk, fileContains, replicaFile, socketOf, volumeInfo } from '../helpers/volumes';

const IP_PREFIX = '127.0.24.';

describe('HA: split brain is fenced', () => {
  let cluster: LocalCluster;
  before(async () => {
    cluster = await LocalCluster.up({ nodes: 4, ipPrefix: IP_PREFIX, leaseTtl: 3, extraArgs: ['--rebuild-grace', '600', '--replica-timeout', '2000'] });
  });
  after(async () => {
    await cluster?.down();
  });

  test('a paused old owner cannot change a byte after the takeover', async () => {
    await cliOk(cluster, ['volume', 'create', 'db', '--capacity', '128MB', '--level', '3', '--node', 'v3']);
    const old = await attachAndConnect(cluster, 'db', 'v3');
    const v3 = (JSON.parse(await cliOk(cluster, ['node', 'ls', '--json'])) as Array<{ id: string; name: string }>).find((n) => n.name === 'v3')!;
    const before = new RecordWriter(old.client, 'before', 0);
    before.start(200);
    await before.done;
    assert.equal(before.error, undefined);

    // Freeze the owner: its agent, engine, replica server and NBD server all stop.
    await cluster.nodeAction('pause', 'v3');
    await eventually('db released from the frozen owner', async () => (await volumeInfo(cluster, 'db')).owner === null);
    const holder = (await volumeInfo(cluster, 'db')).replicas.find((r) => r.nodeId !== v3.id && r.state === 'in-sync')!;
    const newOwnerName = (JSON.parse(await cliOk(cluster, ['node', 'ls', '--json'])) as Array<{ id: string; name: string }>).find((n) => n.id === holder.nodeId)!.name;
    const fresh = await attachAndConnect(cluster, 'db', newOwnerName);
    const after = new RecordWriter(fresh.client, 'new-owner', 1000);
    after.start(200);
    await after.done;
    assert.equal(after.error, undefined);

    // The old owner's client writes its own records over the same blocks; they
    // wait in the frozen node's socket and reach its engine the moment it thaws,
    // before it can hear from etcd that it lost the volume.
    const oldWriter = new RecordWriter(old.client, 'OLD-OWNER-AFTER-THAW', 1000, 0, 16);
    oldWriter.start(200);
    await cluster.nodeAction('resume', 'v3');
    await oldWriter.done;
    assert.equal(oldWriter.acked.size, 0, `the old owner acknowledged ${oldWriter.acked.size} writes after losing the volume`);
    assert.ok(oldWriter.error, 'the old owner\'s client gets I/O errors');
    // An old-epoch request still queued in the old owner's sockets also gets nowhere; give it time.
    await new Promise((r) => setTimeout(r, 1000));

    // The old owner dropped the volume by itself.
    await eventually('the old owner closed its NBD export', async () => !(await canConnect(socketOf(old.record.attachment!.uri), 'db')));
    old.client.close();

    // The new owner reads exactly its own data and the data from before the freeze.
    assert.deepEqual(await verifyRecords(fresh.client, 'new-owner', 1000, after.acked), []);
    assert.deepEqual(await verifyRecords(fresh.client, 'before', 0, before.acked), []);
    await fresh.client.flush();

    // Byte level: no copy the volume reads from holds anything the old owner sent after the thaw.
    const marker = recordBytes('OLD-OWNER-AFTER-THAW', 0).subarray(0, 24);
    const vol = await volumeInfo(cluster, 'db');
    for (const r of vol.replicas.filter((x) => x.state === 'in-sync')) {
      assert.equal(await fileContains(replicaFile(cluster, r.id), marker), false, `copy ${r.id} on ${r.nodeName} holds old-owner bytes`);
    }
    assert.equal(RECORD_SIZE, 4096);
    fresh.client.close();
    const events = await cliOk(cluster, ['events', '-n', '100']);
    assert.match(events, /volume db \(vd1\) released from failed node/);
  });
});
