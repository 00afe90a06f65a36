// An NbdBackend over a regular file (or block device node): pread/pwrite,
// fdatasync for FLUSH and FUA. Used by tests and as the local baseline the
// replicated backend is measured against.

import { constants as fsConstants, promises as fs, readSync, writeSync } from 'node:fs';
import type { NbdBackend } from './backend';
import { Errno, NbdError } from './backend';

export interface FileBackendOptions {
  readOnly?: boolean;
  minBlockSize?: number;
  preferredBlockSize?: number;
  maxPayload?: number;
  /**
   * Do pread/pwrite on the event-loop thread instead of libuv's threadpool.
   * Each threadpool hop costs a thread wake-up, which dominates small I/O:
   * with the data in the page cache this roughly doubles 4 KiB IOPS. But a
   * slow disk then stalls everything else in the process, so only use it for
   * benchmarks or a process that does nothing else. fdatasync always stays
   * off the event loop.
   */
  syncIo?: boolean;
}

/** Zeroes are written from one shared buffer of this size. */
const ZERO_CHUNK = 1024 * 1024;
let zeroChunk: Buffer | undefined;

/** Map filesystem errors the client can act on to NBD errors; the rest stay EIO. */
function toNbdError(err: unknown): unknown {
  switch ((err as NodeJS.ErrnoException).code) {
    case 'ENOSPC':
    case 'EDQUOT':
    case 'EFBIG':
      return new NbdError(Errno.ENOSPC, 'no space left on device');
    case 'EROFS':
    case 'EPERM':
    case 'EACCES':
      return new NbdError(Errno.EPERM, 'operation not permitted');
    default:
      return err;
  }
}

export class FileBackend implements NbdBackend {
  readonly canMultiConn = true; // one shared descriptor: a flush covers writes from every connection
  private closed = false;

  private constructor(
    private readonly handle: fs.FileHandle,
    readonly path: string,
    readonly size: number,
    readonly minBlockSize: number,
    readonly preferredBlockSize: number,
    readonly maxPayload: number,
    readonly readOnly: boolean,
    private readonly syncIo: boolean,
  ) {}

  /** Open an existing file; its current size is the export size and must be a multiple of minBlockSize. */
  static async open(path: string, opts: FileBackendOptions = {}): Promise<FileBackend> {
    const readOnly = opts.readOnly ?? false;
    const minBlockSize = opts.minBlockSize ?? 512;
    const preferredBlockSize = opts.preferredBlockSize ?? 4096;
    const maxPayload = opts.maxPayload ?? 32 * 1024 * 1024;
    const handle = await fs.open(path, readOnly ? fsConstants.O_RDONLY : fsConstants.O_RDWR);
    try {
      const stat = await handle.stat();
      const size = stat.isBlockDevice() ? await blockDeviceSize(handle) : stat.size;
      if (size % minBlockSize !== 0) {
        throw new Error(`${path}: size ${size} is not a multiple of the block size ${minBlockSize}`);
      }
      return new FileBackend(handle, path, size, minBlockSize, preferredBlockSize, maxPayload, readOnly, opts.syncIo ?? false);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    try {
      let done = 0;
      while (done < length) {
        const count = await this.pread(buf, done, length - done, offset + done);
        if (count === 0) {
          // The file shrank under us: what is gone reads as zeroes.
          buf.fill(0, done);
          break;
        }
        done += count;
      }
    } catch (err) {
      throw toNbdError(err);
    }
    return buf;
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    await this.writeAll(offset, data);
    if (fua) await this.flush();
  }

  async flush(): Promise<void> {
    try {
      await this.handle.datasync();
    } catch (err) {
      throw toNbdError(err);
    }
  }

  /** TRIM is advisory; without fallocate in Node there is nothing cheap to do. */
  async trim(_offset: number, _length: number, _fua: boolean): Promise<void> {}

  async writeZeroes(offset: number, length: number, fua: boolean, _noHole: boolean): Promise<void> {
    zeroChunk ??= Buffer.alloc(ZERO_CHUNK);
    for (let done = 0; done < length; done += ZERO_CHUNK) {
      const count = Math.min(ZERO_CHUNK, length - done);
      await this.writeAll(offset + done, zeroChunk.subarray(0, count));
    }
    if (fua) await this.flush();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }

  private async writeAll(offset: number, data: Buffer): Promise<void> {
    try {
      let done = 0;
      while (done < data.length) done += await this.pwrite(data, done, data.length - done, offset + done);
    } catch (err) {
      throw toNbdError(err);
    }
  }

  private async pread(buf: Buffer, at: number, length: number, position: number): Promise<number> {
    if (this.syncIo) return readSync(this.handle.fd, buf, at, length, position);
    return (await this.handle.read(buf, at, length, position)).bytesRead;
  }

  private async pwrite(data: Buffer, at: number, length: number, position: number): Promise<number> {
    if (this.syncIo) return writeSync(this.handle.fd, data, at, length, position);
    return (await this.handle.write(data, at, length, position)).bytesWritten;
  }
}

/**
 * stat() reports size 0 for a block device and Node exposes no lseek(SEEK_END),
 * so find the size by bisection with 1-byte positioned reads (about 50 reads).
 */
async function blockDeviceSize(handle: fs.FileHandle): Promise<number> {
  let low = 0; // known readable length
  let high = 2 ** 52; // known upper bound
  const probe = Buffer.allocUnsafe(1);
  while (low < high) {
    const mid = Math.floor((low + high + 1) / 2);
    const { bytesRead } = await handle.read(probe, 0, 1, mid - 1);
    if (bytesRead === 1) low = mid;
    else high = mid - 1;
  }
  return low;
}
