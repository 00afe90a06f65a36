// Replicated volumes end to end on a local 4-node cluster: volumes of each
// level attached through the CLI and used by independent NBD clients
// (nbdinfo, nbdcopy, qemu-img, fio); every copy holds the same bytes after a
// flush; the old epoch is refused after a re-attach; bad input changes nothing.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ReplicaClient, ReplicaRequestError } from '../../src/replica/client';
import type { VolumeRecord } from '../../src/core/types';
import { LocalCluster, parseTable } from '../helpers/local-cluster';
import { mustRun, sha256File, tool } from '../helpers/tools';

const IP_PREFIX = '127.0.22.';
const MiB = 1024 * 1024;

describe('replicated volumes over NBD (4 nodes)', () => {
  let cluster: LocalCluster;
  let scratch: string;
  let source: string;

  before(async () => {
    cluster = await LocalCluster.up({ nodes: 4, ipPrefix: IP_PREFIX, leaseTtl: 3 });
    scratch = await mkdtemp(path.join(os.tmpdir(), 'cio-data-'));
    source = path.join(scratch, 'random.img');
    await mustRun('sh', ['-c', `head -c ${256 * MiB} /dev/urandom > ${source}`]);
  });
  after(async () => {
    await cluster?.down();
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  const cli = async (args: string[]): Promise<string> => {
    const res = await cluster.cli(args);
    assert.equal(res.code, 0, `cio ${args.join(' ')}: ${res.stderr}`);
    return res.stdout;
  };
  const info = async (name: string): Promise<VolumeRecord> => JSON.parse(await cli(['volume', 'info', name, '--json'])) as VolumeRecord;
  const replicaFiles = (vol: VolumeRecord): string[] =>
    vol.replicas.map((r) => {
      const dirs = readdirSync(path.join(cluster.dir, 'nodes'));
      for (const d of dirs) {
        const file = path.join(cluster.dir, 'nodes', d, 'drives', r.driveId, 'replicas', `${r.id}.img`);
        if (existsSync(file)) return file;
      }
      throw new Error(`no file for copy ${r.id}`);
    });

  for (const level of [1, 2, 3]) {
    test(`level ${level}: nbdinfo, nbdcopy in and out, qemu-img compare, fio verify, identical copies`, async () => {
      const name = `vol-l${level}`;
      // The first copy next to the owner, so no locality rebuild changes the set under the test.
      await cli(['volume', 'create', name, '--capacity', '512MB', '--level', String(level), '--node', `v${level}`]);
      const attached = JSON.parse(await cli(['volume', 'attach', name, '--node', `v${level}`, '--json'])) as VolumeRecord;
      const uri = attached.attachment!.uri;
      assert.match(uri, new RegExp(`^nbd\\+unix:///${name}\\?socket=/`));

      const nbdinfo = JSON.parse(await mustRun('nbdinfo', ['--json', uri])) as { exports: Array<{ 'export-size': number; can_flush: boolean }> };
      assert.equal(nbdinfo.exports[0]['export-size'], 512 * MiB);
      assert.equal(nbdinfo.exports[0].can_flush, true);

      await mustRun('nbdcopy', [source, uri]);
      const back = path.join(scratch, `back-${level}.img`);
      await mustRun('nbdcopy', [uri, back]);
      assert.equal(await sha256File(back, 256 * MiB), await sha256File(source), 'nbdcopy out equals what went in');
      const cmp = await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, uri]);
      assert.equal(cmp.code, 0, `qemu-img compare: ${cmp.stdout}${cmp.stderr}`);

      const fio = await tool('fio', [
        '--name=verify', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=4k', '--iodepth=32',
        '--size=64M', '--offset=300M', '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', '--output-format=json',
      ]);
      assert.equal(fio.code, 0, `fio: ${fio.stderr.slice(-2000)}`);
      const fioJson = JSON.parse(fio.stdout.slice(fio.stdout.indexOf('{'))) as { jobs: Array<{ error: number }> };
      assert.equal(fioJson.jobs[0].error, 0);

      // Detach flushes; after it every copy's file holds the same bytes.
      await cli(['volume', 'detach', name]);
      const vol = await info(name);
      assert.equal(vol.replicas.length, level);
      assert.ok(vol.replicas.every((r) => r.state === 'in-sync'));
      assert.equal(new Set(vol.replicas.map((r) => r.nodeId)).size, level, 'copies on distinct nodes');
      const sums = await Promise.all(replicaFiles(vol).map((f) => sha256File(f)));
      assert.equal(new Set(sums).size, 1, `copies differ: ${sums.join(' ')}`);
    });
  }

  test('thin volumes use only what is written; volume ls shows the seed columns', async () => {
    const vol = await info('vol-l2');
    const detail = await cli(['volume', 'info', 'vol-l2']);
    assert.match(detail, /Replicas:/);
    const rows = (JSON.parse(await cli(['volume', 'info', 'vol-l2', '--json'])) as { replicas: Array<{ allocatedBytes: number }> }).replicas;
    for (const r of rows) assert.ok(r.allocatedBytes < 400 * MiB && r.allocatedBytes >= 256 * MiB, `allocated ${r.allocatedBytes}`);
    const ls = await cli(['volume', 'ls']);
    assert.equal(ls.split('\n')[0], 'NODENAME             VDISK     DRIVE TYPE                    SIZE  UUID      VOLUMENAME');
    const line = ls.split('\n').find((l) => l.endsWith(' vol-l2'))!;
    assert.equal(line, `-                    ${vol.vdisk.padEnd(10)}SSD   2-copy                 512MB  ${vol.uuid}  vol-l2`);
    assert.equal(parseTable(ls).length, 3);
  });

  test('after a re-attach the previous epoch is refused by every copy, and data is unchanged', async () => {
    // Attach on nodes that hold a copy, so no locality rebuild changes the copies under the test.
    const holders = (await info('vol-l3')).replicas.map((r) => r.nodeId);
    const first = JSON.parse(await cli(['volume', 'attach', 'vol-l3', '--node', holders[1], '--json'])) as VolumeRecord;
    await cli(['volume', 'detach', 'vol-l3']);
    const second = JSON.parse(await cli(['volume', 'attach', 'vol-l3', '--node', holders[2], '--json'])) as VolumeRecord;
    assert.equal(second.epoch, first.epoch + 1);
    const state = await cluster.state();
    const secret = Buffer.from(readFileSync(path.join(state.dir, 'pki', 'replica-secret'), 'utf8').trim());
    const before = await sha256File(replicaFiles(second)[0]);
    const nodes = JSON.parse(await cli(['node', 'ls', '--json'])) as Array<{ id: string; ip: string; replicaPort: number }>;
    for (const r of second.replicas) {
      const node = nodes.find((n) => n.id === r.nodeId)!;
      const client = await ReplicaClient.connect({ host: node.ip, port: node.replicaPort, secret });
      try {
        await assert.rejects(client.write(r.id, first.epoch, 0, Buffer.alloc(4096, 0xee)), (err: unknown) => err instanceof ReplicaRequestError && err.code === 'ESTALE');
        await assert.rejects(client.read(r.id, first.epoch, 0, 4096), (err: unknown) => err instanceof ReplicaRequestError && err.code === 'ESTALE');
      } finally {
        await client.close();
      }
    }
    await cli(['volume', 'detach', 'vol-l3']);
    assert.equal(await sha256File(replicaFiles(second)[0]), before, 'the refused write changed nothing');
  });

  test('bad input gives a clear error and leaves nothing behind', async () => {
    const countFiles = (): number =>
      readdirSync(path.join(cluster.dir, 'nodes')).reduce((n, d) => n + readdirSync(path.join(cluster.dir, 'nodes', d, 'drives', 'd1', 'replicas')).length, 0);
    const filesBefore = countFiles();
    const volumesBefore = (JSON.parse(await cli(['volume', 'ls', '--json'])) as unknown[]).length;
    const cases: Array<[string[], RegExp]> = [
      [['volume', 'create', 'vol-l1'], /a volume named vol-l1 already exists/],
      [['volume', 'create', '../etc'], /invalid volume name/],
      [['volume', 'create', 'x'.repeat(64)], /invalid volume name/],
      [['volume', 'create', 'big', '--capacity', '1000'], /cannot create big .*room/],
      [['volume', 'create', 'lvl', '--level', '4'], /level must be a whole number from 1 to 3/],
      [['volume', 'create', 'hdd', '--type', 'hdd'], /level 2 needs 2 nodes with a HDD drive; this cluster has 0/],
      [['volume', 'create', 'bad-fs', '--filesystem', 'ntfs'], /filesystem must be one of ext4, xfs/],
      [['volume', 'create', 'np', '--profile', 'NOPE'], /no profile named NOPE/],
      [['volume', 'create', 'nn', '--node', 'v9'], /no node named v9/],
      [['volume', 'info', 'nosuch'], /no volume named nosuch/],
      [['volume', 'update', 'vol-l1', '--capacity', '100MB'], /volumes only grow/],
      [['volume', 'detach', 'vol-l1'], /is not attached/],
    ];
    for (const [args, pattern] of cases) {
      const res = await cluster.cli(args);
      assert.notEqual(res.code, 0, args.join(' '));
      assert.match(res.stderr, pattern, `${args.join(' ')}: ${res.stderr}`);
      assert.equal(res.stderr.trim().split('\n').length, 1);
    }
    await cli(['volume', 'attach', 'vol-l1', '--node', 'v1']);
    const rmAttached = await cluster.cli(['volume', 'rm', 'vol-l1']);
    assert.match(rmAttached.stderr, /attached on node v1; detach it first/);
    const attachElsewhere = await cluster.cli(['volume', 'attach', 'vol-l1', '--node', 'v4']);
    assert.match(attachElsewhere.stderr, /attached on node v1; detach it there first/);
    await cli(['volume', 'detach', 'vol-l1']);
    assert.equal(countFiles(), filesBefore, 'no replica file left behind');
    assert.equal((JSON.parse(await cli(['volume', 'ls', '--json'])) as unknown[]).length, volumesBefore);
  });

  test('grow, profiles and remove', async () => {
    await cli(['volume', 'update', 'vol-l1', '--capacity', '1GB']);
    assert.equal((await info('vol-l1')).sizeBytes, 1024 * MiB);
    const attached = JSON.parse(await cli(['volume', 'attach', 'vol-l1', '--json'])) as VolumeRecord;
    const nbdinfo = JSON.parse(await mustRun('nbdinfo', ['--json', attached.attachment!.uri])) as { exports: Array<{ 'export-size': number }> };
    assert.equal(nbdinfo.exports[0]['export-size'], 1024 * MiB);
    await cli(['volume', 'detach', 'vol-l1']);

    const profiles = await cli(['profile', 'ls']);
    for (const p of ['SMALL', 'MEDIUM', 'LARGE', 'MYSQL', 'POSTGRES', 'REDIS']) assert.match(profiles, new RegExp(`^${p} `, 'm'));
    const file = path.join(scratch, 'tiny.yaml');
    await mustRun('sh', ['-c', `printf 'name: tiny\\ncapacity: 64MB\\nlevel: 2\\nfilesystem: xfs\\n' > ${file}`]);
    await cli(['profile', 'create', file]);
    const again = await cluster.cli(['profile', 'create', file]);
    assert.match(again.stderr, /a profile named TINY already exists/);
    const badFile = path.join(scratch, 'bad.yaml');
    await mustRun('sh', ['-c', `printf 'name: bad\\nlevel: 7\\n' > ${badFile}`]);
    assert.match((await cluster.cli(['profile', 'create', badFile])).stderr, /level must be a whole number from 1 to 3/);
    await cli(['volume', 'create', 'from-profile', '--profile', 'tiny', '--level', '3']);
    const v = await info('from-profile');
    assert.deepEqual([v.sizeBytes, v.level, v.filesystem, v.profile], [64 * MiB, 3, 'xfs', 'TINY'], 'explicit options override the profile');
    await cli(['volume', 'rm', 'from-profile']);
    assert.match((await cluster.cli(['volume', 'info', 'from-profile'])).stderr, /no volume named from-profile/);
    await cli(['profile', 'rm', 'tiny']);
    assert.match((await cluster.cli(['profile', 'rm', 'MYSQL'])).stderr, /built-in profile/);
  });
});
