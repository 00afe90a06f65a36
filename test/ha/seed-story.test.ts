// The seed's story as a test: two volumes in use on v2 and v3, v3 loses power,
// the volume moves to v1 with every acknowledged write intact, the copies are
// rebuilt, a copy moves next to the new owner, and v3 comes back normal.
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { eventually, LocalCluster } from '../helpers/local-cluster';
import { RecordWriter, verifyRecords } from '../../src/cluster/record-writer';
import { attachAndConnect, cliOk, health, volumeInfo } from '../helpers/volumes';

const IP_PREFIX = '127.0.23.';

describe('HA: the seed story on 4 nodes', () => {
  let cluster: LocalCluster;
  before(async () => {
    cluster = await LocalCluster.up({ nodes: 4, ipPrefix: IP_PREFIX, leaseTtl: 3, extraArgs: ['--rebuild-grace', '4', '--replica-timeout', '2000'] });
  });
  after(async () => {
    await cluster?.down();
  });

  const nodes = async (): Promise<Array<{ id: string; name: string; status: string }>> => JSON.parse(await cliOk(cluster, ['node', 'ls', '--json'])) as Array<{ id: string; name: string; status: string }>;

  test('failover, no acknowledged write lost, rebuild, locality, node recovery', async () => {
    await cliOk(cluster, ['volume', 'create', 'portainer', '--capacity', '256MB', '--level', '2', '--node', 'v2']);
    await cliOk(cluster, ['volume', 'create', 'wp_mysql-data', '--capacity', '256MB', '--level', '3', '--node', 'v3']);
    const portainer = await attachAndConnect(cluster, 'portainer', 'v2');
    const wp = await attachAndConnect(cluster, 'wp_mysql-data', 'v3');
    const v3 = (await nodes()).find((n) => n.name === 'v3')!;

    const wpWriter = new RecordWriter(wp.client, 'wp', 0);
    const portainerWriter = new RecordWriter(portainer.client, 'portainer', 0);
    wpWriter.start();
    portainerWriter.start();
    await eventually('writers to make progress', async () => wpWriter.acked.size >= 300 && portainerWriter.acked.size >= 300);

    // v3 loses power while the database writes.
    await cluster.nodeAction('kill', 'v3');
    const killedAt = Date.now();
    await wpWriter.done;
    assert.ok(wpWriter.error, 'the writer on the dead node sees its connection fail');
    wp.client.close();

    await eventually('v3 in maintenance', async () => (await nodes()).find((n) => n.name === 'v3')?.status === 'maintenance');
    await eventually('wp_mysql-data released by the controller', async () => (await volumeInfo(cluster, 'wp_mysql-data')).owner === null);

    // Swarm restarts the service on a node without a copy of the volume: mount there.
    const before = await volumeInfo(cluster, 'wp_mysql-data');
    const target = (await nodes()).find((n) => n.status === 'normal' && !before.replicas.some((r) => r.nodeId === n.id))!;
    assert.ok(target, 'a normal node without a copy');
    const moved = await attachAndConnect(cluster, 'wp_mysql-data', target.name);
    assert.equal(moved.record.owner, target.id);
    assert.ok(moved.record.epoch > wp.record.epoch, 'the epoch moved on');
    const problems = await verifyRecords(moved.client, 'wp', 0, wpWriter.acked, wpWriter.unknown);
    const failoverSeconds = (Date.now() - killedAt) / 1000;
    assert.deepEqual(problems, [], `acknowledged writes lost or wrong after failover (${wpWriter.acked.size} acked)`);
    console.log(`# failover: volume usable on ${target.name} ${failoverSeconds.toFixed(1)} s after the kill; ${wpWriter.acked.size} acknowledged records intact`);

    // The database goes on writing on its new node, and portainer on v2 never stopped.
    const wpWriter2 = new RecordWriter(moved.client, 'wp2', 20_000);
    wpWriter2.start();
    await eventually('portainer keeps writing through the failure', async () => portainerWriter.acked.size >= 600 || portainerWriter.error);
    assert.equal(portainerWriter.error, undefined, 'portainer on v2 keeps working');

    // Redundancy comes back on the remaining nodes, and wp gets a copy on v1.
    await eventually(
      'both volumes back to their level, wp with a local copy on its new owner',
      async () => {
        const ns = await nodes();
        const w = health(await volumeInfo(cluster, 'wp_mysql-data'), ns);
        const p = health(await volumeInfo(cluster, 'portainer'), ns);
        return w.inSync === 3 && w.local && p.inSync === 2 && !(await volumeInfo(cluster, 'wp_mysql-data')).replicas.some((r) => r.nodeId === v3.id);
      },
      90_000,
      500,
    );

    // v3 comes back: normal, same id, and its stale copies are removed and their space freed.
    await cluster.nodeAction('start', 'v3');
    await eventually('v3 normal', async () => (await nodes()).find((n) => n.name === 'v3')?.status === 'normal');
    assert.equal((await nodes()).find((n) => n.name === 'v3')!.id, v3.id);
    const v3Replicas = path.join(cluster.dir, 'nodes', 'v3', 'drives', 'd1', 'replicas');
    await eventually(
      'v3 keeps only copies that volumes still name',
      async () => {
        const named = new Set([...(await volumeInfo(cluster, 'wp_mysql-data')).replicas, ...(await volumeInfo(cluster, 'portainer')).replicas].map((r) => r.id));
        const files = existsSync(v3Replicas) ? readdirSync(v3Replicas).filter((f) => f.endsWith('.img')) : [];
        return files.every((f) => named.has(f.replace(/\.img$/, '')));
      },
      60_000,
      500,
    );

    await wpWriter2.stop();
    await portainerWriter.stop();
    assert.equal(wpWriter2.error, undefined);
    assert.deepEqual(await verifyRecords(moved.client, 'wp', 0, wpWriter.acked, wpWriter.unknown), []);
    assert.deepEqual(await verifyRecords(moved.client, 'wp2', 20_000, wpWriter2.acked), []);
    assert.deepEqual(await verifyRecords(portainer.client, 'portainer', 0, portainerWriter.acked), []);
    moved.client.close();
    portainer.client.close();

    const events = await cliOk(cluster, ['events', '-n', '300']);
    for (const code of [1019, 1009, 1011, 1003, 1020, 1021]) assert.match(events, new RegExp(`:${code}$`, 'm'), `event ${code} missing:\n${events}`);
    assert.match(events, new RegExp(`node \\(${v3.id}\\) failover completed`));
    assert.match(events, /volume wp_mysql-data \(vd2\) locality rebuild completed/);
    assert.match(events, new RegExp(`node \\(${v3.id}\\) v3 is back, status normal`));
  });
});
