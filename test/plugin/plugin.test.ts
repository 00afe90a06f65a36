// The Docker volume plugin of every agent of a local 3-node cluster, called as
// dockerd calls it (JSON over HTTP on the unix socket): each endpoint, bad
// input, real ext4 and XFS mounts whose data follows the volume from node to
// node, reference counts by mount ID (kept across an agent restart), a
// takeover after the owner dies and a late Unmount from the old owner that
// must not disturb the new one; nothing left on the host at the end.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { mountAt } from '../../src/attach/mounts';
import type { VolumeRecord } from '../../src/core/types';
import { LocalCluster, eventually } from '../helpers/local-cluster';
import { pluginCall, type PluginReply } from '../helpers/plugin-client';
import { writeSynced } from '../helpers/tools';
import { findLeftovers, sweepLeftovers } from './leftovers';

const IP_PREFIX = '127.0.40.';

type Reply = PluginReply;

const mountId = (): string => randomBytes(32).toString('hex');

describe('docker volume plugin (3 nodes)', () => {
  let cluster: LocalCluster;
  const ext4Data = randomBytes(2 * 1024 * 1024 + 123);
  const xfsData = randomBytes(1024 * 1024 + 7);

  before(async () => {
    cluster = await LocalCluster.up({ nodes: 3, ipPrefix: IP_PREFIX, leaseTtl: 3 });
  });
  after(async () => {
    if (!cluster) return;
    await cluster.cli(['cluster', 'down', '--dir', cluster.dir]).catch(() => undefined);
    await sweepLeftovers(cluster.dir);
    await cluster.down();
  });

  const call = (node: string, endpoint: string, body?: unknown): Promise<Reply> => pluginCall(cluster, node, endpoint, body);
  async function ok(node: string, endpoint: string, body?: unknown): Promise<Reply['body']> {
    const r = await call(node, endpoint, body);
    assert.equal(r.body.Err, '', `${endpoint} on ${node}: ${r.body.Err}`);
    assert.equal(r.status, 200);
    return r.body;
  }
  async function refused(node: string, endpoint: string, body: unknown, message: RegExp): Promise<void> {
    const r = await call(node, endpoint, body);
    assert.equal(r.status, 500, `${endpoint} should fail: ${JSON.stringify(r.body)}`);
    assert.match(r.body.Err ?? '', message);
  }
  const volume = async (name: string): Promise<VolumeRecord> => JSON.parse((await cluster.cli(['volume', 'info', name, '--json'])).stdout) as VolumeRecord;
  const nodeId = async (name: string): Promise<string> => {
    const nodes = JSON.parse((await cluster.cli(['node', 'ls', '--json'])).stdout) as Array<{ id: string; name: string }>;
    return nodes.find((n) => n.name === name)!.id;
  };
  const mountRoot = (node: string): string => path.join(cluster.dir, 'nodes', node, 'mnt');
  async function assertNothingLeft(under: string): Promise<void> {
    assert.deepEqual(await findLeftovers(under), { loops: [], mounts: [], processes: [] }, `nothing left under ${under}`);
  }

  test('Activate, Capabilities, List on every node', async () => {
    for (const node of ['v1', 'v2', 'v3']) {
      assert.deepEqual((await ok(node, 'Plugin.Activate')).Implements, ['VolumeDriver']);
      assert.deepEqual((await ok(node, 'VolumeDriver.Capabilities', {})).Capabilities, { Scope: 'global' });
      assert.deepEqual((await ok(node, 'VolumeDriver.List', {})).Volumes, []);
    }
  });

  test('bad input is refused with one clear sentence and changes nothing', async () => {
    await refused('v1', 'VolumeDriver.Create', { Name: 'bad', Opts: { size: '1GB' } }, /^unknown option "size" for volume bad \(allowed: profile, capacity, level/);
    await refused('v1', 'VolumeDriver.Create', { Name: 'bad', Opts: { level: '7' } }, /^cannot create volume bad: level must be a whole number from 1 to 3, not "7"$/);
    await refused('v1', 'VolumeDriver.Create', { Name: 'bad', Opts: { profile: 'nosuch' } }, /^no profile named nosuch/);
    await refused('v1', 'VolumeDriver.Create', { Name: 'bad', Opts: { level: '3', type: 'hdd' } }, /needs 3 nodes with a HDD drive/);
    await refused('v1', 'VolumeDriver.Create', '{"Name": "bad", ', /^request body is not valid JSON$/);
    await refused('v1', 'VolumeDriver.Create', { Opts: {} }, /^Name is missing from the request$/);
    await refused('v1', 'VolumeDriver.Create', { Name: '../etc' }, /invalid volume name/);
    await refused('v1', 'VolumeDriver.Get', { Name: 'nosuch' }, /^no such volume: nosuch$/);
    await refused('v1', 'VolumeDriver.Path', { Name: 'nosuch' }, /^no such volume: nosuch$/);
    await refused('v1', 'VolumeDriver.Remove', { Name: 'nosuch' }, /^no such volume: nosuch$/);
    await refused('v1', 'VolumeDriver.Mount', { Name: 'nosuch', ID: mountId() }, /^no such volume: nosuch$/);
    await refused('v1', 'VolumeDriver.Mount', { Name: 'nosuch' }, /^ID is missing from the request$/);
    const unknown = await call('v1', 'VolumeDriver.Frobnicate', {});
    assert.equal(unknown.status, 404);
    assert.match(unknown.body.Err ?? '', /unknown plugin endpoint \/VolumeDriver.Frobnicate/);
    assert.deepEqual((await ok('v2', 'VolumeDriver.List', {})).Volumes, [], 'no volume was made');
  });

  test('Create on one node, Get and List on the others; a repeated Create fits or is refused', async () => {
    await ok('v2', 'VolumeDriver.Create', { Name: 'pg', Opts: { capacity: '256MB', level: '2' } });
    await ok('v3', 'VolumeDriver.Create', { Name: 'px', Opts: { Capacity: '512MB', filesystem: 'xfs', level: '2' } });
    for (const node of ['v1', 'v3']) {
      const got = (await ok(node, 'VolumeDriver.Get', { Name: 'pg' })).Volume!;
      assert.equal(got.Name, 'pg');
      assert.equal(got.Mountpoint, '');
      assert.ok(!Number.isNaN(Date.parse(got.CreatedAt)));
      assert.equal(got.Status.size, '256MB');
      assert.equal(got.Status.level, '2-copy');
      assert.equal(got.Status.filesystem, 'ext4');
      assert.deepEqual((await ok(node, 'VolumeDriver.List', {})).Volumes, [{ Name: 'pg', Mountpoint: '' }, { Name: 'px', Mountpoint: '' }]);
    }
    // Swarm sends Create again from every node: the same (or no) options fit, others are refused.
    await ok('v1', 'VolumeDriver.Create', { Name: 'pg', Opts: { capacity: '256MB' } });
    await ok('v3', 'VolumeDriver.Create', { Name: 'pg' });
    await refused('v1', 'VolumeDriver.Create', { Name: 'pg', Opts: { capacity: '1GB', filesystem: 'xfs' } }, /^volume pg already exists with other options: capacity is 256MB, not 1GB; filesystem is ext4, not xfs$/);
  });

  test('ext4: Mount writes a real filesystem; two mount IDs share it; the last Unmount leaves nothing', async () => {
    const a = mountId();
    const b = mountId();
    const mp = (await ok('v1', 'VolumeDriver.Mount', { Name: 'pg', ID: a })).Mountpoint!;
    assert.equal(mp, path.join(mountRoot('v1'), 'pg'));
    assert.equal((await mountAt(mp))?.fstype, 'ext4');
    await writeSynced(path.join(mp, 'data.bin'), ext4Data);
    assert.equal((await ok('v1', 'VolumeDriver.Mount', { Name: 'pg', ID: b })).Mountpoint, mp, 'a second ID reuses the mount');
    assert.equal((await ok('v1', 'VolumeDriver.Path', { Name: 'pg' })).Mountpoint, mp);
    const got = (await ok('v2', 'VolumeDriver.Get', { Name: 'pg' })).Volume!;
    assert.equal(got.Status.owner, 'v1');
    assert.equal(got.Mountpoint, '', 'not mounted on v2');
    assert.equal((await ok('v1', 'VolumeDriver.Get', { Name: 'pg' })).Volume!.Status.attachMethod, 'nbdfuse-loop');
    const attachment = (await volume('pg')).attachment!;
    assert.deepEqual([attachment.method, attachment.mountpoint], ['nbdfuse-loop', mp], 'cio volume info shows how and where it is mounted');
    assert.match((await cluster.cli(['volume', 'info', 'pg'])).stdout, new RegExp(`Mounted:\\s+${mp.replace(/[/.]/g, '\\$&')} \\(nbdfuse-loop\\)`));

    await ok('v1', 'VolumeDriver.Unmount', { Name: 'pg', ID: a });
    assert.equal((await mountAt(mp))?.fstype, 'ext4', 'still mounted for the other ID');
    assert.ok((await readFile(path.join(mp, 'data.bin'))).equals(ext4Data));
    await refused('v1', 'VolumeDriver.Remove', { Name: 'pg' }, /^volume pg is in use by 1 mount\(s\) on this node; unmount it first$/);
    await refused('v2', 'VolumeDriver.Mount', { Name: 'pg', ID: mountId() }, /volume pg is attached on node v1/);

    await ok('v1', 'VolumeDriver.Unmount', { Name: 'pg', ID: b });
    assert.equal(await mountAt(mp), undefined);
    assert.equal((await ok('v1', 'VolumeDriver.Path', { Name: 'pg' })).Mountpoint, '');
    assert.equal((await volume('pg')).owner, null, 'released by the last Unmount');
    await assertNothingLeft(path.join(cluster.dir, 'nodes', 'v1'));
  });

  test('ext4: Mount on another node reads the data back byte for byte', async () => {
    const id = mountId();
    const mp = (await ok('v2', 'VolumeDriver.Mount', { Name: 'pg', ID: id })).Mountpoint!;
    assert.equal(mp, path.join(mountRoot('v2'), 'pg'));
    assert.ok((await readFile(path.join(mp, 'data.bin'))).equals(ext4Data));
    await ok('v2', 'VolumeDriver.Unmount', { Name: 'pg', ID: id });
    await assertNothingLeft(cluster.dir);
  });

  test('xfs: write on v2, read back on v3; the mount count survives an agent restart', async () => {
    const id = mountId();
    const mp2 = (await ok('v2', 'VolumeDriver.Mount', { Name: 'px', ID: id })).Mountpoint!;
    assert.equal((await mountAt(mp2))?.fstype, 'xfs');
    await writeSynced(path.join(mp2, 'data.bin'), xfsData);
    await ok('v2', 'VolumeDriver.Unmount', { Name: 'px', ID: id });
    await assertNothingLeft(cluster.dir);

    const first = mountId();
    const mp3 = (await ok('v3', 'VolumeDriver.Mount', { Name: 'px', ID: first })).Mountpoint!;
    assert.ok((await readFile(path.join(mp3, 'data.bin'))).equals(xfsData));
    // A graceful agent restart unmounts in order but keeps the mount ID and the ownership.
    await cluster.nodeAction('stop', 'v3');
    await assertNothingLeft(path.join(cluster.dir, 'nodes', 'v3'));
    await cluster.nodeAction('start', 'v3');
    assert.equal((await ok('v3', 'VolumeDriver.Get', { Name: 'px' })).Volume!.Status.mounts, 1);
    // (The controller may have released the volume while v3 was down; the next Mount takes it again.)
    const second = mountId();
    assert.equal((await ok('v3', 'VolumeDriver.Mount', { Name: 'px', ID: second })).Mountpoint, mp3, 'mounted again');
    assert.ok((await readFile(path.join(mp3, 'data.bin'))).equals(xfsData));
    await ok('v3', 'VolumeDriver.Unmount', { Name: 'px', ID: first });
    assert.equal((await mountAt(mp3))?.fstype, 'xfs', 'the mount ID from before the restart still counted');
    await ok('v3', 'VolumeDriver.Unmount', { Name: 'px', ID: second });
    assert.equal((await volume('px')).owner, null);
    await assertNothingLeft(cluster.dir);
  });

  test('owner dies: another node takes the volume over; the late Unmount from the old owner does not detach it', async () => {
    const old = mountId();
    const mp1 = (await ok('v1', 'VolumeDriver.Mount', { Name: 'pg', ID: old })).Mountpoint!;
    const moreData = randomBytes(512 * 1024);
    await writeSynced(path.join(mp1, 'more.bin'), moreData);

    await cluster.nodeAction('kill', 'v1'); // the agent and its nbdfuse, as a power loss
    const fresh = mountId();
    const mp2 = await eventually('v2 to take the volume over', async () => {
      const r = await call('v2', 'VolumeDriver.Mount', { Name: 'pg', ID: fresh });
      if (r.body.Err) throw new Error(r.body.Err);
      return r.body.Mountpoint;
    }, 30_000, 500);
    assert.ok((await readFile(path.join(mp2, 'data.bin'))).equals(ext4Data));
    assert.ok((await readFile(path.join(mp2, 'more.bin'))).equals(moreData), 'synced writes of the dead owner are there');
    const v2 = await nodeId('v2');
    assert.equal((await volume('pg')).owner, v2);

    // v1 comes back: its agent takes down the dead mount, but still holds the old mount ID.
    await cluster.nodeAction('start', 'v1');
    await ok('v1', 'Plugin.Activate'); // the plugin listens once the cleanup is done
    await assertNothingLeft(path.join(cluster.dir, 'nodes', 'v1'));
    await ok('v1', 'VolumeDriver.Unmount', { Name: 'pg', ID: old }); // the old task's late Unmount
    await ok('v3', 'VolumeDriver.Unmount', { Name: 'pg', ID: fresh }); // an ID v3 never held
    await ok('v1', 'VolumeDriver.Unmount', { Name: 'pg', ID: mountId() });
    const after = await volume('pg');
    assert.equal(after.owner, v2, 'the new owner keeps the volume');
    assert.equal((await mountAt(mp2))?.fstype, 'ext4');
    const later = randomBytes(64 * 1024);
    await writeSynced(path.join(mp2, 'later.bin'), later);
    assert.ok((await readFile(path.join(mp2, 'later.bin'))).equals(later), 'and can still write');

    await ok('v2', 'VolumeDriver.Unmount', { Name: 'pg', ID: fresh });
    assert.equal((await volume('pg')).owner, null);
    await assertNothingLeft(cluster.dir);
  });

  test('Remove through any node; the volume is gone everywhere', async () => {
    await ok('v1', 'VolumeDriver.Remove', { Name: 'px' });
    await refused('v2', 'VolumeDriver.Get', { Name: 'px' }, /^no such volume: px$/);
    assert.deepEqual((await ok('v3', 'VolumeDriver.List', {})).Volumes, [{ Name: 'pg', Mountpoint: '' }]);
    await assertNothingLeft(cluster.dir);
  });
});
