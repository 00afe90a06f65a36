import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import * as fsext from '../../src/native/fsext';
import { Cleanup, randomBytes, tempDir } from './helpers';

const MiB = 1024 * 1024;
const cleanup = new Cleanup();
let dir: string;

before(async () => {
  dir = await tempDir(cleanup);
});
after(() => cleanup.run());

test('seekData/seekHole and allocatedExtents follow what was written and punched', async () => {
  const fh = await fsp.open(path.join(dir, 'sparse'), 'w+');
  try {
    await fh.truncate(8 * MiB);
    assert.equal(fsext.seekData(fh.fd, 0), -1, 'an empty sparse file has no data');
    assert.equal(fsext.seekHole(fh.fd, 0), 0);
    assert.deepEqual(fsext.allocatedExtents(fh.fd, 0, 8 * MiB).extents, []);

    await fh.write(randomBytes(MiB), 0, MiB, 2 * MiB);
    await fh.write(randomBytes(MiB), 0, MiB, 5 * MiB);
    assert.deepEqual(fsext.allocatedExtents(fh.fd, 0, 8 * MiB), {
      extents: [
        { offset: 2 * MiB, length: MiB },
        { offset: 5 * MiB, length: MiB },
      ],
      scannedTo: 8 * MiB,
    });
    // Clipped to the asked range, and resumable when capped.
    assert.deepEqual(fsext.allocatedExtents(fh.fd, 2.5 * MiB, 3 * MiB).extents, [
      { offset: 2.5 * MiB, length: 0.5 * MiB },
      { offset: 5 * MiB, length: 0.5 * MiB },
    ]);
    const capped = fsext.allocatedExtents(fh.fd, 0, 8 * MiB, 1);
    assert.deepEqual(capped, { extents: [{ offset: 2 * MiB, length: MiB }], scannedTo: 3 * MiB });

    await fsext.punchHole(fh.fd, 2 * MiB, MiB);
    assert.deepEqual(fsext.allocatedExtents(fh.fd, 0, 8 * MiB).extents, [{ offset: 5 * MiB, length: MiB }]);
    const back = Buffer.alloc(MiB);
    await fh.read(back, 0, MiB, 2 * MiB);
    assert.ok(back.equals(Buffer.alloc(MiB)), 'a punched range reads as zeros');
    assert.equal((await fh.stat()).size, 8 * MiB, 'punching keeps the size');
    assert.equal(fsext.seekData(fh.fd, 9 * MiB), -1, 'ENXIO past EOF becomes -1');
  } finally {
    await fh.close();
  }
});

test('allocate reserves blocks and zeroRange zeroes in place', async () => {
  const fh = await fsp.open(path.join(dir, 'thick'), 'w+');
  try {
    await fsext.allocate(fh.fd, 0, 4 * MiB);
    const st = await fh.stat();
    assert.equal(st.size, 4 * MiB);
    assert.ok(st.blocks * 512 >= 4 * MiB, `allocated ${st.blocks * 512} bytes`);
    await fh.write(randomBytes(MiB), 0, MiB, 0);
    await fsext.zeroRange(fh.fd, 0, MiB);
    const back = Buffer.alloc(MiB);
    await fh.read(back, 0, MiB, 0);
    assert.ok(back.equals(Buffer.alloc(MiB)));
    assert.ok((await fh.stat()).blocks * 512 >= 4 * MiB, 'zeroRange keeps the blocks');
  } finally {
    await fh.close();
  }
});

test('errors carry the errno name as code', async () => {
  await assert.rejects(fsext.punchHole(999_999, 0, 4096), (err: NodeJS.ErrnoException) => err.code === 'EBADF' && err.syscall === 'fallocate');
  assert.throws(() => fsext.seekData(999_999, 0), (err: NodeJS.ErrnoException) => err.code === 'EBADF');
  assert.throws(() => fsext.seekData(-1, 0), RangeError);
  assert.throws(() => fsext.seekHole(0, -5), RangeError);
});

test('writePieces writes every byte at the offset, whatever the piece size, and reports errno names', async () => {
  const fh = await fsp.open(path.join(dir, 'pieces'), 'w+');
  try {
    const data = randomBytes(5 * MiB + 123);
    for (const piece of [64 * 1024, 1000, 5 * MiB + 123, 64 * MiB]) {
      await fh.truncate(0);
      await fsext.writePieces(fh.fd, data, 4096 + piece, piece);
      const back = Buffer.alloc(data.length);
      await fh.read(back, 0, back.length, 4096 + piece);
      assert.ok(back.equals(data), `piece ${piece}`);
      assert.equal((await fh.stat()).size, 4096 + piece + data.length);
    }
    await fsext.writePieces(fh.fd, Buffer.alloc(0), 0, 4096); // nothing to do
    await assert.rejects(fsext.writePieces(fh.fd, data, 0, 0), /piece must be positive/);
  } finally {
    await fh.close();
  }
  const ro = await fsp.open(path.join(dir, 'pieces'), 'r');
  try {
    await assert.rejects(fsext.writePieces(ro.fd, randomBytes(4096), 0, 1024), (err: NodeJS.ErrnoException) => err.code === 'EBADF' && err.syscall === 'pwrite');
  } finally {
    await ro.close();
  }
});

test('setRecvLowWater holds back a TCP reader until that many bytes are queued', async () => {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const peer = await accepted;
  try {
    const fd = (peer as unknown as { _handle: { fd: number } })._handle.fd;
    fsext.setRecvLowWater(fd, 100_000);
    const chunks: Buffer[] = [];
    peer.on('data', (c: Buffer) => chunks.push(c));
    client.write(randomBytes(1000));
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(chunks.length, 0, 'woken before the low-water mark was reached');
    client.write(randomBytes(99_000));
    for (let i = 0; i < 100 && chunks.reduce((n, c) => n + c.length, 0) < 100_000; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(chunks.reduce((n, c) => n + c.length, 0), 100_000);
    fsext.setRecvLowWater(fd, 1);
    assert.throws(() => fsext.setRecvLowWater(fd, 0), RangeError);
  } finally {
    client.destroy();
    peer.destroy();
    await new Promise((r) => server.close(r));
  }
  const fh = await fsp.open(path.join(dir, 'not-a-socket'), 'w+');
  try {
    assert.throws(() => fsext.setRecvLowWater(fh.fd, 4096), (err: NodeJS.ErrnoException) => err.code === 'ENOTSOCK');
  } finally {
    await fh.close();
  }
});
