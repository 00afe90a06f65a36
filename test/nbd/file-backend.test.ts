// FileBackend on its own: geometry from the file, round trips, zeroing,
// and filesystem errors mapped to the NBD errors a client can act on.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Errno, NbdError } from '../../src/nbd/backend';
import { FileBackend } from '../../src/nbd/file-backend';
import { makeTempDir, removeTempDir } from '../helpers/nbd-fixtures';

const MiB = 1024 * 1024;

describe('FileBackend', () => {
  let dir: string;
  const opened: FileBackend[] = [];

  async function open(file: string, opts?: Parameters<typeof FileBackend.open>[1]): Promise<FileBackend> {
    const backend = await FileBackend.open(file, opts);
    opened.push(backend);
    return backend;
  }

  before(() => {
    dir = makeTempDir('nbd-file-backend');
  });

  after(async () => {
    await Promise.all(opened.map((b) => b.close()));
    removeTempDir(dir);
  });

  test('takes its size from the file and its geometry from the options', async () => {
    const file = path.join(dir, 'geometry.img');
    writeFileSync(file, '');
    truncateSync(file, 3 * MiB);
    const backend = await open(file);
    assert.deepEqual(
      [backend.size, backend.minBlockSize, backend.preferredBlockSize, backend.maxPayload, backend.readOnly, backend.canMultiConn],
      [3 * MiB, 512, 4096, 32 * MiB, false, true],
    );
    const custom = await open(file, { minBlockSize: 4096, preferredBlockSize: 65536, maxPayload: MiB, readOnly: true });
    assert.deepEqual([custom.minBlockSize, custom.preferredBlockSize, custom.maxPayload, custom.readOnly], [4096, 65536, MiB, true]);

    const odd = path.join(dir, 'odd.img');
    writeFileSync(odd, Buffer.alloc(1000));
    await assert.rejects(FileBackend.open(odd), /not a multiple of the block size 512/);
  });

  for (const syncIo of [false, true]) {
    test(`writes land in the file and read back; writeZeroes clears ranges larger than its buffer (syncIo ${syncIo})`, async () => {
      const file = path.join(dir, `data-${syncIo}.img`);
      writeFileSync(file, randomBytes(4 * MiB));
      const backend = await open(file, { syncIo });
      const payload = randomBytes(MiB + 4096);
      await backend.write(512, payload, false);
      await backend.write(3 * MiB, payload.subarray(0, 4096), true);
      await backend.flush();
      assert.deepEqual(await backend.read(512, payload.length), payload);
      await backend.writeZeroes(MiB, 1536 * 1024, false, false);
      await backend.trim(0, 4096, false);
      const onDisk = readFileSync(file);
      assert.ok(onDisk.subarray(512, MiB).equals(payload.subarray(0, MiB - 512)));
      assert.ok(onDisk.subarray(MiB, MiB + 1536 * 1024).equals(Buffer.alloc(1536 * 1024)));
      assert.ok(onDisk.subarray(3 * MiB, 3 * MiB + 4096).equals(payload.subarray(0, 4096)));
    });

    test(`a full device reports ENOSPC as an NbdError (syncIo ${syncIo})`, async () => {
      // /dev/full accepts opens and reads but fails every write with ENOSPC.
      const full = await open('/dev/full', { syncIo });
      await assert.rejects(full.write(0, Buffer.alloc(512), false), (err: unknown) => err instanceof NbdError && err.errno === Errno.ENOSPC);
    });
  }
});
