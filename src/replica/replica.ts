// One replica: a sparse image file plus its metadata record, with the epoch
// fence. Data methods (read/write/…) act unconditionally; the server wraps
// every remote request in `runFenced`, which admits it only at the replica's
// current epoch and lets `raiseEpoch` wait out whatever an older epoch still
// has in flight.
import fs from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { invariant } from '../util/errors';
import { ioBuffers } from '../util/buffer-pool';
import { PROCESS_INCARNATION } from './incarnation';
import { ReplicaError, errnoCode, staleEpoch } from './errors';
import * as fsext from '../native/fsext';
import { type ReplicaMeta, type ReplicaState, isValidEpoch, isValidSize, writeMeta } from './meta';
import { type LockMode, type RangeLease, RangeLock } from './rangelock';

const ZERO_CHUNK = 1 << 20;

interface DrainWaiter {
  below: number;
  resolve: () => void;
}

/**
 * Page-cache I/O goes straight to pread/pwrite on the event loop: it takes
 * microseconds, while a threadpool round trip costs a wake-up on each side,
 * the largest cost of a small I/O here. Reads up to SYNC_READ_MAX and writes
 * up to SYNC_WRITE_MAX run that way; larger ones, and fdatasync, use the
 * threadpool. CIO_SYNC_IO=0 sends everything to the threadpool.
 * Measured with 1 MiB writes (bench/, 2 cores): on the threadpool, 1-copy
 * volumes gained a fifth (the write overlaps the event loop) but 3-copy ones
 * lost a fifth (the cores are saturated and each hand-off costs wake-ups), so
 * writes up to 4 MiB stay on the event loop.
 */
const SYNC_READ_MAX = 64 * 1024;
const SYNC_WRITE_MAX = 4 * 1024 * 1024;
/**
 * Writes go to the file in pieces of at most this size. The kernel sizes a
 * page-cache folio by the write that creates it, and a later 4 KiB write into
 * a large folio walks every block of it. nbdkit file on this machine's ext4,
 * 4 KiB random writes over a file filled by writes of 1 MiB / 64 KiB / 16 KiB:
 * 58k / 118k / 166k IOPS. Smaller pieces cost large writes one syscall each:
 * on a 3-copy volume 16 KiB pieces gave +10% 4 KiB writes but -8% 1 MiB
 * writes against 64 KiB, the middle ground kept here.
 */
const WRITE_PIECE = 64 * 1024;
const syncIo = process.env.CIO_SYNC_IO !== '0';

export class Replica {
  /** Orders overlapping operations by arrival (see rangelock.ts). */
  readonly ranges = new RangeLock();
  private meta: ReplicaMeta;
  // Metadata updates run one at a time so each sees the previous one's result.
  private metaQueue: Promise<unknown> = Promise.resolve();
  // Fenced operations currently touching data, counted per admitting epoch.
  private readonly activeByEpoch = new Map<number, number>();
  private drainWaiters: DrainWaiter[] = [];
  private retired: string | undefined;
  // Data I/O uses the raw fd with callback fs calls (about twice the rate of
  // FileHandle's promise methods for 4 KiB I/O). The fd must not be closed,
  // and its number reused, while such a call is running: they are counted.
  private rawIo = 0;
  private rawIoIdle: (() => void) | undefined;
  private fdClosed = false;

  constructor(
    private readonly fh: FileHandle,
    meta: ReplicaMeta,
    readonly metaPath: string,
  ) {
    this.meta = { ...meta };
  }

  get id(): string {
    return this.meta.replicaId;
  }
  get volumeUuid(): string {
    return this.meta.volumeUuid;
  }
  get size(): number {
    return this.meta.size;
  }
  get epoch(): number {
    return this.meta.epoch;
  }
  get state(): ReplicaState {
    return this.meta.state;
  }
  get thick(): boolean {
    return this.meta.thick;
  }
  get isRetired(): boolean {
    return this.retired !== undefined;
  }

  /** A copy of the metadata record as persisted. */
  info(): ReplicaMeta {
    return { ...this.meta };
  }

  // ---- data ---------------------------------------------------------------

  /**
   * Reads [offset, offset+length); bytes past the image file's end read as
   * zeros. The buffer comes from `ioBuffers`: whoever sends it on gives it back.
   */
  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length);
    const buf = ioBuffers.take(length);
    if (length <= SYNC_READ_MAX && syncIo) {
      this.checkFdOpen();
      let got = 0;
      while (got < length) {
        const n = fs.readSync(this.fh.fd, buf, got, length - got, offset + got);
        if (n === 0) {
          buf.fill(0, got);
          break;
        }
        got += n;
      }
      return buf;
    }
    let done = 0;
    while (done < length) {
      const bytesRead = await this.rawCall<number>((fd, cb) => fs.read(fd, buf, done, length - done, offset + done, cb));
      if (bytesRead === 0) {
        buf.fill(0, done);
        break;
      }
      done += bytesRead;
    }
    return buf;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.checkRange(offset, data.length);
    if (data.length <= SYNC_WRITE_MAX && syncIo) {
      this.checkFdOpen();
      for (let put = 0; put < data.length; ) put += fs.writeSync(this.fh.fd, data, put, Math.min(WRITE_PIECE, data.length - put), offset + put);
      return;
    }
    await this.rawAsync((fd) => fsext.writePieces(fd, data, offset, WRITE_PIECE));
  }

  /** Makes every completed write durable (fdatasync). */
  async flush(): Promise<void> {
    await this.fh.datasync();
  }

  /**
   * Discards [offset, offset+length). Every replica of a volume must read
   * back the same bytes afterwards, so a trimmed range always reads as zeros:
   * a thin replica punches a hole, a thick one zeroes in place to keep its
   * reservation.
   */
  async trim(offset: number, length: number): Promise<void> {
    await this.writeZeroes(offset, length, { noHole: false });
  }

  /** Zeroes [offset, offset+length); `noHole` (or a thick replica) keeps the blocks allocated. */
  async writeZeroes(offset: number, length: number, opts: { noHole?: boolean } = {}): Promise<void> {
    this.checkRange(offset, length);
    if (length === 0) return;
    if (!opts.noHole && !this.meta.thick) {
      if (await this.tryFallocate(() => this.rawAsync((fd) => fsext.punchHole(fd, offset, length)))) return;
    }
    if (await this.tryFallocate(() => this.rawAsync((fd) => fsext.zeroRange(fd, offset, length)))) return;
    await this.writeZeroBuffers(offset, length);
  }

  /** Allocated regions of [offset, offset+length); see fsext.allocatedExtents. */
  allocatedExtents(offset: number, length: number, maxExtents?: number): { extents: fsext.Extent[]; scannedTo: number } {
    this.checkRange(offset, length);
    this.checkFdOpen();
    return fsext.allocatedExtents(this.fh.fd, offset, length, maxExtents);
  }

  /** Bytes actually allocated on disk for the image (st_blocks * 512). */
  async allocatedBytes(): Promise<number> {
    const st = await this.fh.stat();
    return st.blocks * 512;
  }

  // ---- metadata -----------------------------------------------------------

  /**
   * Raises the persisted epoch to `epoch` (durably, before returning) and
   * waits until no operation admitted under an older epoch is still running,
   * so that once this returns a fenced-off writer can change nothing. An
   * equal epoch is accepted as is; a lower one is refused with ESTALE.
   * Returns whether this process is not the one that opened the replica last:
   * it restarted since, and may have lost writes that were not flushed.
   */
  /** Bumped by every OPEN (in memory: a restart breaks every connection anyway). */
  private openCount = 0;

  /** The number of the latest OPEN; a connection that opened before it may no longer change data. */
  get session(): number {
    return this.openCount;
  }

  /** A new OPEN: every connection that opened this replica before is superseded for changes. */
  newSession(): number {
    return ++this.openCount;
  }

  async raiseEpoch(epoch: number): Promise<{ restarted: boolean }> {
    if (!isValidEpoch(epoch)) throw new ReplicaError('EINVAL', `invalid epoch ${epoch}`);
    let restarted = false;
    await this.updateMeta((meta) => {
      if (epoch < meta.epoch) throw staleEpoch(meta.replicaId, epoch, meta.epoch);
      restarted = meta.openedBy !== PROCESS_INCARNATION;
      if (epoch === meta.epoch && !restarted) return undefined;
      return { ...meta, epoch, openedBy: PROCESS_INCARNATION };
    });
    await this.drainBelow(epoch);
    return { restarted };
  }

  async setState(state: ReplicaState): Promise<void> {
    await this.updateMeta((meta) => (meta.state === state ? undefined : { ...meta, state }));
  }

  /** Grows the replica to `newSize` bytes (thick replicas reserve the new space). */
  async resize(newSize: number): Promise<void> {
    if (!isValidSize(newSize)) throw new ReplicaError('EINVAL', `invalid size ${newSize}`);
    await this.updateMeta(async (meta) => {
      if (newSize < meta.size) throw new ReplicaError('EINVAL', `replica ${meta.replicaId}: cannot shrink from ${meta.size} to ${newSize}`);
      if (newSize === meta.size) return undefined;
      const fileSize = (await this.fh.stat()).size;
      if (fileSize < newSize) await this.fh.truncate(newSize);
      if (meta.thick) {
        try {
          await this.rawAsync((fd) => fsext.allocate(fd, meta.size, newSize - meta.size));
        } catch (err) {
          await this.fh.truncate(Math.max(fileSize, meta.size)).catch(() => undefined);
          throw err;
        }
      }
      await this.fh.sync();
      return { ...meta, size: newSize };
    });
  }

  // ---- fencing ------------------------------------------------------------

  /** Throws unless a request at `epoch` may act now: not retired, and epoch equal to the replica's. */
  checkEpoch(epoch: number): void {
    if (this.retired !== undefined) throw new ReplicaError('ENOENT', `replica ${this.id}: ${this.retired}`);
    if (epoch < this.meta.epoch) throw staleEpoch(this.id, epoch, this.meta.epoch);
    if (epoch > this.meta.epoch) {
      throw new ReplicaError('ENOTCONN', `replica ${this.id}: epoch ${epoch} is newer than the replica's epoch ${this.meta.epoch}; OPEN it at that epoch first`);
    }
  }

  /**
   * Runs `fn` on [offset, offset+length) after every earlier conflicting
   * operation, if and only if `epoch` is still the replica's epoch when its
   * turn comes. `fn` may release the lease early (e.g. before an fdatasync).
   */
  async runFenced<T>(epoch: number, offset: number, length: number, mode: LockMode, fn: (lease: RangeLease) => Promise<T>): Promise<T> {
    this.checkEpoch(epoch); // refuse early, without queueing behind anything
    const lease = this.ranges.acquire(offset, length, mode);
    try {
      await lease.ready;
      // The check and the admission below are one synchronous step: raiseEpoch
      // either sees this operation as active or this check sees the new epoch.
      this.checkEpoch(epoch);
      this.admit(epoch);
      try {
        return await fn(lease);
      } finally {
        this.finish(epoch);
      }
    } finally {
      lease.release();
    }
  }

  /** Like runFenced for operations that lock no range (FLUSH, metadata). */
  async runFencedUnlocked<T>(epoch: number, fn: () => Promise<T>): Promise<T> {
    this.checkEpoch(epoch);
    this.admit(epoch);
    try {
      return await fn();
    } finally {
      this.finish(epoch);
    }
  }

  /**
   * Stops admitting operations, waits for the running ones and closes the
   * image. Used by delete and by store shutdown.
   */
  async retire(reason: string): Promise<void> {
    if (this.retired !== undefined) return;
    this.retired = reason;
    await this.drainBelow(Number.POSITIVE_INFINITY);
    await this.metaQueue.catch(() => undefined);
    if (this.rawIo > 0) await new Promise<void>((resolve) => (this.rawIoIdle = resolve));
    this.fdClosed = true;
    await this.fh.close();
  }

  // ---- internals ----------------------------------------------------------

  private checkFdOpen(): void {
    if (this.fdClosed) throw new ReplicaError('EBADF', `replica ${this.id} is closed`);
  }

  /** Runs a callback-style fs call on the raw fd, counted so that retire() never closes it underneath. */
  private rawCall<T>(call: (fd: number, cb: (err: NodeJS.ErrnoException | null, result: T) => void) => void): Promise<T> {
    this.checkFdOpen();
    this.rawIo++;
    return new Promise<T>((resolve, reject) => {
      try {
        call(this.fh.fd, (err, result) => {
          this.rawIoDone();
          if (err) reject(err);
          else resolve(result);
        });
      } catch (err) {
        this.rawIoDone();
        throw err;
      }
    });
  }

  private async rawAsync<T>(call: (fd: number) => Promise<T>): Promise<T> {
    this.checkFdOpen();
    this.rawIo++;
    try {
      return await call(this.fh.fd);
    } finally {
      this.rawIoDone();
    }
  }

  private rawIoDone(): void {
    if (--this.rawIo === 0 && this.rawIoIdle) {
      this.rawIoIdle();
      this.rawIoIdle = undefined;
    }
  }

  private admit(epoch: number): void {
    this.activeByEpoch.set(epoch, (this.activeByEpoch.get(epoch) ?? 0) + 1);
  }

  private finish(epoch: number): void {
    const n = this.activeByEpoch.get(epoch);
    invariant(n !== undefined && n > 0, 'fenced operation finished twice');
    if (n > 1) {
      this.activeByEpoch.set(epoch, n - 1);
      return;
    }
    this.activeByEpoch.delete(epoch);
    if (this.drainWaiters.length === 0) return;
    const still: DrainWaiter[] = [];
    for (const w of this.drainWaiters) {
      if (this.hasActiveBelow(w.below)) still.push(w);
      else w.resolve();
    }
    this.drainWaiters = still;
  }

  private hasActiveBelow(epoch: number): boolean {
    for (const e of this.activeByEpoch.keys()) if (e < epoch) return true;
    return false;
  }

  private drainBelow(epoch: number): Promise<void> {
    if (!this.hasActiveBelow(epoch)) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push({ below: epoch, resolve }));
  }

  /**
   * Applies `change` to the metadata and persists the result before it
   * becomes visible in memory. `change` returns undefined for "no change".
   */
  private updateMeta(change: (meta: ReplicaMeta) => ReplicaMeta | undefined | Promise<ReplicaMeta | undefined>): Promise<void> {
    const run = async (): Promise<void> => {
      if (this.retired !== undefined) throw new ReplicaError('ENOENT', `replica ${this.id}: ${this.retired}`);
      const next = await change(this.meta);
      if (next === undefined) return;
      invariant(next.epoch >= this.meta.epoch, 'replica epoch must never decrease');
      const record = { ...next, updatedAt: new Date().toISOString() };
      await writeMeta(this.metaPath, record);
      this.meta = record;
    };
    const result = this.metaQueue.then(run, run);
    this.metaQueue = result.catch(() => undefined);
    return result;
  }

  private checkRange(offset: number, length: number): void {
    const ok = Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0 && offset + length <= this.meta.size;
    if (!ok) throw new ReplicaError('EINVAL', `replica ${this.id}: range ${offset}+${length} is outside 0..${this.meta.size}`);
  }

  /** True if the fallocate call worked, false if the filesystem does not support it. */
  private async tryFallocate(call: () => Promise<void>): Promise<boolean> {
    try {
      await call();
      return true;
    } catch (err) {
      if (errnoCode(err) === 'EOPNOTSUPP' || errnoCode(err) === 'ENOSYS') return false;
      throw err;
    }
  }

  private async writeZeroBuffers(offset: number, length: number): Promise<void> {
    const zeros = Buffer.alloc(Math.min(length, ZERO_CHUNK));
    for (let done = 0; done < length; ) {
      const n = Math.min(zeros.length, length - done);
      await this.write(offset + done, zeros.subarray(0, n));
      done += n;
    }
  }
}
