// The NBD server against real clients: nbdinfo, nbdcopy, qemu-img and fio
// (libnbd-based), over a file-backed export and an in-memory sparse one.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, promises as fsp, truncateSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { FileBackend } from '../../src/nbd/file-backend';
import type { NbdServer } from '../../src/nbd/server';
import { ChildProcesses, makeTempDir, MemoryBackend, nbdUri, removeTempDir, startServer } from '../helpers/nbd-fixtures';

const MiB = 1024 * 1024;
const COPY_SIZE = 256 * MiB;

/** fio's nbd engine prints a line before its JSON report. */
function fioReport(stdout: string): { jobs: { error: number; write: { io_bytes: number }; read: { io_bytes: number } }[] } {
  return JSON.parse(stdout.slice(stdout.indexOf('{'))) as ReturnType<typeof fioReport>;
}

async function sha256(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

describe('NBD server with real clients', { timeout: 300_000 }, () => {
  let dir: string;
  let socketPath: string;
  let server: NbdServer;
  let disk: FileBackend;
  let fioDisk: FileBackend;
  let fioSyncDisk: FileBackend;
  let readOnly: FileBackend;
  let sparse: MemoryBackend;
  let scratch: FileBackend;
  const children = new ChildProcesses();

  before(async () => {
    dir = makeTempDir('nbd-clients');
    socketPath = path.join(dir, 'nbd.sock');
    const diskPath = path.join(dir, 'disk.img');
    writeFileSync(diskPath, '');
    truncateSync(diskPath, COPY_SIZE);
    disk = await FileBackend.open(diskPath);
    const fioPath = path.join(dir, 'fio.img');
    writeFileSync(fioPath, '');
    truncateSync(fioPath, 64 * MiB);
    fioDisk = await FileBackend.open(fioPath);
    const fioSyncPath = path.join(dir, 'fio-sync.img');
    writeFileSync(fioSyncPath, '');
    truncateSync(fioSyncPath, 64 * MiB);
    fioSyncDisk = await FileBackend.open(fioSyncPath, { syncIo: true });
    const roPath = path.join(dir, 'ro.img');
    writeFileSync(roPath, Buffer.alloc(MiB, 0xab));
    readOnly = await FileBackend.open(roPath, { readOnly: true });
    sparse = new MemoryBackend(16 * MiB);
    const scratchPath = path.join(dir, 'scratch.img');
    writeFileSync(scratchPath, randomBytes(32 * MiB));
    scratch = await FileBackend.open(scratchPath);
    server = await startServer(socketPath, { disk, fio: fioDisk, 'fio-sync': fioSyncDisk, ro: readOnly, sparse, scratch });
  });

  after(async () => {
    children.killAll();
    await server?.close();
    await Promise.all([disk?.close(), fioDisk?.close(), fioSyncDisk?.close(), readOnly?.close(), scratch?.close()]);
    removeTempDir(dir);
  });

  test('nbdinfo reports size, flags, block sizes and base:allocation', async () => {
    const res = await children.run('nbdinfo', ['--json', nbdUri(socketPath, 'disk')]);
    assert.equal(res.code, 0, res.stderr);
    const info = JSON.parse(res.stdout) as { protocol: string; structured: boolean; exports: Record<string, unknown>[] };
    assert.equal(info.protocol, 'newstyle-fixed');
    assert.equal(info.structured, true);
    const disk = info.exports[0];
    assert.equal(disk['export-name'], 'disk');
    assert.equal(disk['export-size'], COPY_SIZE);
    assert.deepEqual(disk.contexts, ['base:allocation']);
    for (const flag of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_multi_conn', 'can_cache', 'can_df']) {
      assert.equal(disk[flag], true, flag);
    }
    assert.equal(disk.is_read_only, false);
    assert.equal(disk.can_fast_zero, false);
    assert.equal(disk.block_size_minimum, 512);
    assert.equal(disk.block_size_preferred, 4096);
    assert.equal(disk.block_size_maximum, 32 * MiB);

    const ro = await children.run('nbdinfo', ['--json', nbdUri(socketPath, 'ro')]);
    assert.equal(ro.code, 0, ro.stderr);
    const roExport = (JSON.parse(ro.stdout) as { exports: Record<string, unknown>[] }).exports[0];
    assert.equal(roExport.is_read_only, true);
    assert.equal(roExport['export-size'], MiB);
  });

  test('nbdinfo --list lists every export', async () => {
    const res = await children.run('nbdinfo', ['--list', '--json', nbdUri(socketPath, '')]);
    assert.equal(res.code, 0, res.stderr);
    const listed = (JSON.parse(res.stdout) as { exports: { 'export-name': string }[] }).exports.map((e) => e['export-name']);
    assert.deepEqual(listed.sort(), ['disk', 'fio', 'fio-sync', 'ro', 'scratch', 'sparse']);
  });

  test('nbdinfo --map shows the allocation the backend reports', async () => {
    await sparse.write(4 * MiB, Buffer.alloc(MiB, 1), false);
    const res = await children.run('nbdinfo', ['--map', '--json', nbdUri(socketPath, 'sparse')]);
    assert.equal(res.code, 0, res.stderr);
    const map = (JSON.parse(res.stdout) as { offset: number; length: number; type: number }[]).map((e) => [e.offset, e.length, e.type]);
    assert.deepEqual(map, [
      [0, 4 * MiB, 3],
      [4 * MiB, MiB, 0],
      [5 * MiB, 11 * MiB, 3],
    ]);

    const file = await children.run('nbdinfo', ['--map', nbdUri(socketPath, 'ro')]);
    assert.equal(file.code, 0, file.stderr);
    assert.match(file.stdout, /^\s*0\s+1048576\s+0\s+data\s*$/);
  });

  test('nbdcopy 256 MiB in and out is byte-identical, and qemu-img compare agrees', async () => {
    const source = path.join(dir, 'source.img');
    const copy = path.join(dir, 'copy.img');
    const made = await children.run('sh', ['-c', `head -c ${COPY_SIZE} /dev/urandom > '${source}'`]);
    assert.equal(made.code, 0, made.stderr);
    const uri = nbdUri(socketPath, 'disk');

    const push = await children.run('nbdcopy', [source, uri]);
    assert.equal(push.code, 0, push.stderr);
    const pull = await children.run('nbdcopy', [uri, copy]);
    assert.equal(pull.code, 0, pull.stderr);
    const [sourceHash, copyHash] = await Promise.all([sha256(source), sha256(copy)]);
    assert.equal(copyHash, sourceHash);

    const compare = await children.run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, uri]);
    assert.equal(compare.code, 0, `${compare.stdout}${compare.stderr}`);
    assert.match(compare.stdout, /Images are identical/);

    // qemu-img must also notice a difference, or the comparison above proves nothing.
    await disk.write(128 * MiB, Buffer.alloc(4096, 0x55), false);
    const differs = await children.run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, uri]);
    assert.equal(differs.code, 1, `${differs.stdout}${differs.stderr}`);
  });

  test('qemu-img convert of a sparse image zeroes the holes over old data', async () => {
    const sparseSource = path.join(dir, 'sparse-source.img');
    writeFileSync(sparseSource, '');
    truncateSync(sparseSource, 32 * MiB);
    const middle = randomBytes(3 * MiB);
    const handle = await fsp.open(sparseSource, 'r+');
    await handle.write(middle, 0, middle.length, 10 * MiB);
    await handle.close();
    const uri = nbdUri(socketPath, 'scratch');

    const convert = await children.run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', sparseSource, uri]);
    assert.equal(convert.code, 0, convert.stderr);
    const compare = await children.run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', sparseSource, uri]);
    assert.equal(compare.code, 0, `${compare.stdout}${compare.stderr}`);
    assert.ok((await scratch.read(10 * MiB, 3 * MiB)).equals(middle));
    assert.ok((await scratch.read(0, 10 * MiB)).equals(Buffer.alloc(10 * MiB)), 'the old random data is gone');
  });

  test('fio randwrite with crc32c verify at iodepth 32 passes', async () => {
    const res = await children.run('fio', [
      '--name=nbd-verify',
      '--ioengine=nbd',
      `--uri=${nbdUri(socketPath, 'fio')}`,
      '--rw=randwrite',
      '--bs=4k',
      '--size=64M',
      '--iodepth=32',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_fatal=1',
      '--verify_state_save=0',
      '--output-format=json',
    ], { cwd: dir });
    assert.equal(res.code, 0, `${res.stdout}${res.stderr}`);
    const job = fioReport(res.stdout).jobs[0];
    assert.equal(job.error, 0);
    assert.equal(job.write.io_bytes, 64 * MiB);
    assert.equal(job.read.io_bytes, 64 * MiB, 'everything written was read back and verified');
    assert.doesNotMatch(res.stderr, /verify|bad magic|crc32c/i);
  });

  test('fio on 4 connections, 4k-256k blocks with flushes, passes verification (syncIo backend)', async () => {
    // One connection per job; each job verifies its own 16 MiB region.
    const res = await children.run('fio', [
      '--name=nbd-mixed',
      '--ioengine=nbd',
      `--uri=${nbdUri(socketPath, 'fio-sync')}`,
      '--rw=randwrite',
      '--bsrange=4k-256k',
      '--numjobs=4',
      '--size=16M',
      '--offset_increment=16M',
      '--group_reporting',
      '--iodepth=16',
      '--fsync=32',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_fatal=1',
      '--verify_state_save=0',
      '--output-format=json',
    ], { cwd: dir });
    assert.equal(res.code, 0, `${res.stdout}${res.stderr}`);
    const job = fioReport(res.stdout).jobs[0];
    assert.equal(job.error, 0);
    assert.deepEqual([job.write.io_bytes, job.read.io_bytes], [64 * MiB, 64 * MiB]);
  });
});
