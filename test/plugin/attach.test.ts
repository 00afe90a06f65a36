// The attach module against an independent NBD server (nbdkit): first use
// makes the filesystem, later uses keep the data; a dirty XFS log is replayed;
// data that is not a filesystem is never formatted; every failure and a crash
// leave no loop device, mount or nbdfuse process behind.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { attachFilesystem, cleanupAttachments, detachFilesystem, loadAttachStates, type MountedVolume } from '../../src/attach';
import { mountAt } from '../../src/attach/mounts';
import { runTool } from '../../src/attach/run';
import { eventually } from '../helpers/local-cluster';
import { sha256File } from '../helpers/tools';
import { writeSynced } from '../helpers/tools';
import { findLeftovers, sweepLeftovers } from './leftovers';

const MiB = 1024 * 1024;

describe('attach: NBD export → block device → filesystem → mount', () => {
  let root: string;
  const servers: ChildProcess[] = [];

  /** An nbdkit on a unix socket; returns the URI. */
  async function nbdkit(tag: string, args: string[]): Promise<string> {
    const socket = path.join(root, `${tag}.sock`);
    const child = spawn('nbdkit', ['-f', '--unix', socket, ...args], { stdio: ['ignore', 'ignore', 'inherit'] });
    servers.push(child);
    await eventually(`nbdkit ${tag} to listen`, async () => existsSync(socket), 10_000, 50);
    return `nbd+unix:///${tag}?socket=${socket}`;
  }

  const req = (name: string, uri: string, sizeBytes: number, filesystem: 'ext4' | 'xfs') => ({
    name,
    uri,
    sizeBytes,
    filesystem,
    mountRoot: path.join(root, 'mnt'),
    workDir: path.join(root, 'work'),
  });

  async function assertClean(): Promise<void> {
    assert.deepEqual(await findLeftovers(root), { loops: [], mounts: [], processes: [] }, 'nothing left on the host');
    assert.deepEqual(await loadAttachStates(path.join(root, 'work')), [], 'no attachment state left');
  }


  before(async () => {
    root = await mkdtemp(path.join(os.tmpdir(), 'cio-attach-'));
  });
  after(async () => {
    await sweepLeftovers(root);
    for (const s of servers) s.kill('SIGKILL');
    await rm(root, { recursive: true, force: true });
  });

  test('ext4: made on first use, data kept across detach and attach, nothing left after detach', async () => {
    const uri = await nbdkit('e1', ['memory', '256M']);
    const first = await attachFilesystem(req('e1', uri, 256 * MiB, 'ext4'));
    assert.equal(first.method, 'nbdfuse-loop');
    assert.equal(first.formatted, true);
    assert.match(first.device, /^\/dev\/loop\d+$/);
    assert.equal(first.mountpoint, path.join(root, 'mnt', 'e1'));
    const m = await mountAt(first.mountpoint);
    assert.equal(m?.fstype, 'ext4');
    assert.equal(m?.source, first.device);
    const data = randomBytes(3 * MiB + 17);
    await writeSynced(path.join(first.mountpoint, 'data.bin'), data);
    await detachFilesystem(first);
    await assertClean();

    const again = await attachFilesystem(req('e1', uri, 256 * MiB, 'ext4'));
    assert.equal(again.formatted, false, 'an existing filesystem is never made again');
    assert.ok((await readFile(path.join(again.mountpoint, 'data.bin'))).equals(data));
    await detachFilesystem(again);
    await assertClean();
  });

  test('xfs: a dirty log (crash) is replayed before the check, synced data survives', async () => {
    const uri = await nbdkit('x1', ['memory', '512M']);
    const first = await attachFilesystem(req('x1', uri, 512 * MiB, 'xfs'));
    assert.equal((await mountAt(first.mountpoint))?.fstype, 'xfs');
    const data = randomBytes(MiB);
    await writeSynced(path.join(first.mountpoint, 'kept.bin'), data);
    for (let i = 0; i < 40; i++) await runTool('mkdir', [path.join(first.mountpoint, `d${i}`)]);
    // Shut the filesystem down without flushing its log, as a crash would.
    const shut = await runTool('xfs_io', ['-x', '-c', 'shutdown -f', first.mountpoint]);
    assert.equal(shut.code, 0, shut.stderr);
    await detachFilesystem(first);
    await assertClean();
    const again = await attachFilesystem(req('x1', uri, 512 * MiB, 'xfs'));
    assert.equal(again.formatted, false);
    assert.ok((await readFile(path.join(again.mountpoint, 'kept.bin'))).equals(data));
    await detachFilesystem(again);
    await assertClean();
  });

  test('data that is not a filesystem is refused, left unchanged, and nothing is left behind', async () => {
    const image = path.join(root, 'raw.img');
    await writeFile(image, Buffer.concat([randomBytes(MiB), Buffer.alloc(63 * MiB)]));
    const before = await sha256File(image);
    const uri = await nbdkit('raw', ['file', image]);
    await assert.rejects(attachFilesystem(req('raw', uri, 64 * MiB, 'ext4')), /holds data but no filesystem cio recognizes; cio will not format over it/);
    await assertClean();
    assert.equal(await sha256File(image), before);
  });

  test('an unreachable export fails with the reason and leaves nothing', async () => {
    const uri = `nbd+unix:///none?socket=${path.join(root, 'no-such.sock')}`;
    await assert.rejects(attachFilesystem(req('none', uri, 64 * MiB, 'ext4')), /nbdfuse could not open/);
    await assertClean();
  });

  test('a wrong size (another export than expected) is refused before any mkfs', async () => {
    const uri = await nbdkit('small', ['memory', '64M']);
    await assert.rejects(attachFilesystem(req('small', uri, 128 * MiB, 'ext4')), /shows 67108864 bytes/);
    await assertClean();
  });

  test('after a crash (nbdfuse killed, filesystem still mounted) cleanup takes everything down', async () => {
    const uri = await nbdkit('c1', ['memory', '256M']);
    const vol: MountedVolume = await attachFilesystem(req('c1', uri, 256 * MiB, 'ext4'));
    process.kill(vol.nbdfuse!.pid, 'SIGKILL');
    await eventually('nbdfuse to die', async () => (await findLeftovers(root)).processes.length === 0, 5000, 50);
    assert.ok((await findLeftovers(root)).mounts.length > 0, 'the dead mounts are still there before cleanup');
    // Past FUSE's attribute cache (1 s), anything that stats the dead file fails, as after a real crash.
    await new Promise((r) => setTimeout(r, 1500));
    assert.deepEqual(await cleanupAttachments(path.join(root, 'work')), ['c1']);
    await assertClean();
  });

  test('a mount root and work directory behind a symlink are found again at detach', async () => {
    const uri = await nbdkit('s1', ['memory', '256M']);
    const link = path.join(root, 'link');
    await symlink(root, link);
    const vol = await attachFilesystem({ ...req('s1', uri, 256 * MiB, 'ext4'), mountRoot: path.join(link, 'mnt'), workDir: path.join(link, 'work') });
    assert.equal(vol.mountpoint, path.join(root, 'mnt', 's1'), 'the canonical path, as the mount table shows it');
    await detachFilesystem(vol);
    await assertClean();
  });

  test('a second attach of the same volume on a node is refused without touching the first', async () => {
    const uri = await nbdkit('d1', ['memory', '256M']);
    const vol = await attachFilesystem(req('d1', uri, 256 * MiB, 'ext4'));
    await assert.rejects(attachFilesystem(req('d1', uri, 256 * MiB, 'ext4')), /already attached on this node/);
    assert.equal((await mountAt(vol.mountpoint))?.source, vol.device);
    await detachFilesystem(vol);
    await assertClean();
  });
});
