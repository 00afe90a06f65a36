import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ReplicaStore } from '../../src/replica/store';
import { Cleanup, canLoopMount, randomBytes, tempDir } from './helpers';

const MiB = 1024 * 1024;
const cleanup = new Cleanup();
let drive: string;

before(async () => {
  drive = await tempDir(cleanup);
});
after(() => cleanup.run());

describe('ReplicaStore', () => {
  test('a thin replica starts with nothing allocated; writes read back; trim punches a hole', async () => {
    const store = new ReplicaStore(drive);
    try {
      const r = await store.create({ replicaId: 'thin1', volumeUuid: 'aaaa0001', size: 64 * MiB });
      assert.equal(r.size, 64 * MiB);
      assert.ok((await store.allocatedBytes()) < 64 * 1024, 'thin replica allocates (almost) nothing');

      const data = randomBytes(2 * MiB);
      await r.write(8 * MiB, data);
      await r.flush();
      assert.ok((await r.read(8 * MiB, 2 * MiB)).equals(data));
      assert.ok((await r.read(0, 4096)).equals(Buffer.alloc(4096)), 'unwritten ranges read as zeros');
      const before = await r.allocatedBytes();
      assert.ok(before >= 2 * MiB);
      assert.deepEqual(r.allocatedExtents(0, 64 * MiB).extents, [{ offset: 8 * MiB, length: 2 * MiB }]);

      await r.trim(8 * MiB, MiB);
      const afterTrim = await r.allocatedBytes();
      assert.ok(afterTrim <= before - MiB, `st_blocks dropped: ${before} -> ${afterTrim}`);
      assert.ok((await r.read(8 * MiB, MiB)).equals(Buffer.alloc(MiB)), 'trimmed range reads zeros');
      assert.ok((await r.read(9 * MiB, MiB)).equals(data.subarray(MiB)), 'the rest is untouched');

      await r.writeZeroes(9 * MiB, 4096, { noHole: true });
      assert.ok((await r.read(9 * MiB, 4096)).equals(Buffer.alloc(4096)));

      await assert.rejects(r.read(64 * MiB - 4096, 8192), { code: 'EINVAL' });
      await assert.rejects(r.write(64 * MiB, Buffer.alloc(1)), { code: 'EINVAL' });
    } finally {
      await store.close();
    }
  });

  test('a thick replica is allocated in full and stays allocated after trim', async () => {
    const store = new ReplicaStore(drive);
    try {
      const r = await store.create({ replicaId: 'thick1', volumeUuid: 'aaaa0002', size: 16 * MiB, thick: true });
      assert.ok((await r.allocatedBytes()) >= 16 * MiB);
      await r.write(0, randomBytes(MiB));
      await r.trim(0, MiB);
      assert.ok((await r.read(0, MiB)).equals(Buffer.alloc(MiB)));
      assert.ok((await r.allocatedBytes()) >= 16 * MiB, 'thick replica keeps its reservation');
      await r.resize(32 * MiB);
      assert.equal(r.size, 32 * MiB);
      assert.ok((await r.allocatedBytes()) >= 32 * MiB, 'growing a thick replica reserves the new space');
      await assert.rejects(r.resize(16 * MiB), { code: 'EINVAL' });
    } finally {
      await store.close();
    }
  });

  test('metadata survives reopen; the epoch only rises; list and delete', async () => {
    const store = new ReplicaStore(drive);
    const data = randomBytes(4096);
    try {
      const r = await store.create({ replicaId: 'meta1', volumeUuid: 'aaaa0003', size: MiB, epoch: 3 });
      await r.write(4096, data);
      assert.deepEqual(await r.raiseEpoch(7), { restarted: true }, 'no process opened it before');
      await assert.rejects(r.raiseEpoch(6), { code: 'ESTALE' });
      assert.deepEqual(await r.raiseEpoch(7), { restarted: false }, 'equal is fine; the same process opened it');
      await r.setState('in-sync');
      await assert.rejects(store.create({ replicaId: 'meta1', volumeUuid: 'x', size: MiB }), { code: 'EEXIST' });
      await assert.rejects(store.create({ replicaId: '../escape', volumeUuid: 'x', size: MiB }), { code: 'EINVAL' });
      await assert.rejects(store.create({ replicaId: 'odd', volumeUuid: 'x', size: 1000 }), { code: 'EINVAL' });
    } finally {
      await store.close();
    }

    const reopened = new ReplicaStore(drive);
    try {
      const r = await reopened.open('meta1');
      assert.equal(r.epoch, 7);
      assert.equal(r.state, 'in-sync');
      assert.equal(r.volumeUuid, 'aaaa0003');
      assert.ok((await r.read(4096, 4096)).equals(data));
      const onDisk = JSON.parse(await fsp.readFile(path.join(drive, 'replicas', 'meta1.meta.json'), 'utf8')) as { epoch: number };
      assert.equal(onDisk.epoch, 7);

      const ids = (await reopened.list()).map((m) => m.replicaId);
      assert.ok(ids.includes('meta1'));
      await assert.rejects(reopened.delete('meta1', { epoch: 6 }), { code: 'ESTALE' });
      await reopened.delete('meta1', { epoch: 7 });
      assert.ok(!(await reopened.list()).some((m) => m.replicaId === 'meta1'));
      await assert.rejects(reopened.open('meta1'), { code: 'ENOENT' });
      await assert.rejects(r.read(0, 1), { code: 'EBADF' }, 'a deleted replica is closed');
      const left = await fsp.readdir(path.join(drive, 'replicas'));
      assert.ok(!left.some((f) => f.startsWith('meta1')), `files left: ${left.join(', ')}`);
    } finally {
      await reopened.close();
    }
  });

  test('raiseEpoch returns only after operations of the old epoch finish; queued ones are refused', async () => {
    const store = new ReplicaStore(drive);
    let openGate = (): void => undefined;
    const gate = new Promise<void>((resolve) => (openGate = resolve));
    try {
      const r = await store.create({ replicaId: 'drain1', volumeUuid: 'aaaa0005', size: MiB, epoch: 1 });
      const running = r.runFenced(1, 0, 4096, 'exclusive', async () => {
        await gate;
        await r.write(0, Buffer.alloc(4096, 1));
      });
      const queued = r.runFenced(1, 0, 4096, 'exclusive', () => r.write(0, Buffer.alloc(4096, 2)));
      let raised = false;
      const raising = r.raiseEpoch(2).then(() => (raised = true));
      while (r.epoch !== 2) await new Promise((resolve) => setImmediate(resolve)); // persisted
      assert.equal(raised, false, 'raiseEpoch waits for the running operation of epoch 1');
      await assert.rejects(r.runFenced(1, 8192, 10, 'shared', () => r.read(8192, 10)), { code: 'ESTALE' });
      openGate();
      await raising;
      await running;
      await assert.rejects(queued, { code: 'ESTALE' }, 'an operation still queued at the old epoch never runs');
      assert.ok((await r.read(0, 4096)).equals(Buffer.alloc(4096, 1)));
      await assert.rejects(r.runFenced(3, 0, 1, 'shared', () => r.read(0, 1)), { code: 'ENOTCONN' });
    } finally {
      openGate(); // never leave the running operation (and so store.close) hanging
      await store.close();
    }
  });

  test('runFenced holds back an overlapping operation until the earlier one is done', async () => {
    const store = new ReplicaStore(drive);
    let openGate = (): void => undefined;
    const gate = new Promise<void>((resolve) => (openGate = resolve));
    try {
      const r = await store.create({ replicaId: 'order0', volumeUuid: 'aaaa0006', size: MiB, epoch: 1 });
      const first = r.runFenced(1, 0, 8192, 'exclusive', async () => {
        await gate; // a slow first write
        await r.write(0, Buffer.alloc(8192, 1));
      });
      const second = r.runFenced(1, 4096, 4096, 'exclusive', () => r.write(4096, Buffer.alloc(4096, 2)));
      const disjoint = r.runFenced(1, 16384, 4096, 'exclusive', () => r.write(16384, Buffer.alloc(4096, 3)));
      await disjoint; // not held back by the slow write
      const expected = Buffer.concat([Buffer.alloc(4096, 1), Buffer.alloc(4096, 2)]);
      openGate();
      await Promise.all([first, second]);
      assert.ok((await r.read(0, 8192)).equals(expected), 'the later write wins where they overlap');
    } finally {
      openGate();
      await store.close();
    }
  });

  test('create clears an orphan image left by a crash before the metadata was written', async () => {
    const store = new ReplicaStore(drive);
    try {
      await fsp.mkdir(store.dir, { recursive: true });
      await fsp.writeFile(store.imagePath('orphan1'), randomBytes(8192));
      assert.ok(!(await store.list()).some((m) => m.replicaId === 'orphan1'));
      const r = await store.create({ replicaId: 'orphan1', volumeUuid: 'aaaa0004', size: MiB });
      assert.ok((await r.read(0, 8192)).equals(Buffer.alloc(8192)));
    } finally {
      await store.close();
    }
  });
});

describe('ReplicaStore on a full filesystem', { skip: !canLoopMount() && 'needs root and loop devices' }, () => {
  let small: string;
  let cannotMount: string | undefined;

  before(async () => {
    const base = await tempDir(cleanup, 'cio-enospc-');
    const image = path.join(base, 'fs.img');
    small = path.join(base, 'mnt');
    await fsp.mkdir(small);
    try {
      execFileSync('truncate', ['-s', '16M', image]);
      execFileSync('mkfs.ext4', ['-q', '-F', image], { stdio: 'pipe' });
      execFileSync('mount', ['-o', 'loop', image, small], { stdio: 'pipe' });
    } catch (err) {
      cannotMount = `cannot make a small loop-mounted ext4 here: ${(err as Error).message}`;
      return;
    }
    cleanup.add(() => execFileSync('umount', [small]));
  });

  test('thick create beyond free space fails with ENOSPC and leaves nothing', async (t) => {
    if (cannotMount) return t.skip(cannotMount);
    const store = new ReplicaStore(small);
    try {
      await assert.rejects(store.create({ replicaId: 'big', volumeUuid: 'bbbb0001', size: 64 * MiB, thick: true }), { code: 'ENOSPC' });
      assert.deepEqual(await fsp.readdir(store.dir), []);
      assert.deepEqual(await store.list(), []);
      assert.equal(await store.allocatedBytes(), 0);
      // The space is really free again: a thick replica that fits works.
      const ok = await store.create({ replicaId: 'fits', volumeUuid: 'bbbb0002', size: 4 * MiB, thick: true });
      assert.ok((await ok.allocatedBytes()) >= 4 * MiB);
    } finally {
      await store.close();
    }
  });

  test('a thin replica may be larger than the drive; writing past the space fails with ENOSPC', async (t) => {
    if (cannotMount) return t.skip(cannotMount);
    const store = new ReplicaStore(small);
    try {
      const r = await store.create({ replicaId: 'overcommit', volumeUuid: 'bbbb0003', size: 64 * MiB });
      await assert.rejects(r.write(0, randomBytes(32 * MiB)), { code: 'ENOSPC' });
    } finally {
      await store.close();
    }
  });
});
