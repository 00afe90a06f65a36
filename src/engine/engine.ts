// The replication engine of one attached volume: the NBD backend that fans
// every write out to the volume's copies and acknowledges only when every
// in-sync copy has applied it. A copy that fails is recorded as stale in etcd
// (through `markStale`) BEFORE the write it missed is acknowledged; if that
// record cannot be made, the write waits (DESIGN invariant 3). A copy that
// refuses our epoch means another node owns the volume now: the engine is
// fenced and fails every request from then on (invariant 2).
import { NbdError, Errno, type BlockStatusExtent, type NbdBackend } from '../nbd';
import { RangeLock } from '../replica/rangelock';
import { ReplicaRequestError } from '../replica/client';
import type { ReplicaState } from '../core/types';
import { invariant } from '../util/errors';
import { ioBuffers } from '../util/buffer-pool';
import type { Logger } from '../util/log';
import { canAcknowledge, readSource, writeTargets } from './replica-set';
import { DirtyMap } from '../core/dirty-map';

/** What the engine needs of a connection to one copy (ReplicaClient implements it). */
export interface ReplicaChannel {
  open(replicaId: string, epoch: number): Promise<unknown>;
  read(replicaId: string, epoch: number, offset: number, length: number): Promise<Buffer>;
  write(replicaId: string, epoch: number, offset: number, data: Uint8Array, opts?: { fua?: boolean }): Promise<void>;
  flush(replicaId: string, epoch: number): Promise<void>;
  trim(replicaId: string, epoch: number, offset: number, length: number, opts?: { fua?: boolean }): Promise<void>;
  writeZeroes(replicaId: string, epoch: number, offset: number, length: number, opts?: { fua?: boolean; noHole?: boolean }): Promise<void>;
  allocMap(replicaId: string, epoch: number, offset: number, length: number): Promise<Array<{ offset: number; length: number }>>;
  close(): Promise<void>;
}

export interface EngineReplica {
  id: string;
  nodeId: string;
  state: ReplicaState;
  local: boolean;
  channel: ReplicaChannel;
}

export interface EngineOptions {
  volume: string;
  size: number;
  epoch: number;
  replicas: EngineReplica[];
  /** Durably record these copies as stale for this epoch; reject if that is impossible now, throw FencedError if we no longer own the volume. */
  markStale: (replicaIds: string[]) => Promise<void>;
  /** Durably store the dirty map of a stale copy (DESIGN invariant 5). */
  persistDirty: (replicaId: string, map: DirtyMap) => Promise<void>;
  /** Dirty maps already recorded for copies that are stale at attach time. */
  dirtyMaps?: ReadonlyMap<string, DirtyMap>;
  /** A copy that has not answered within this time is treated as failed. */
  replicaTimeoutMs: number;
  /** Called once when a copy refuses our epoch: another node owns the volume now. */
  onFenced?: (reason: string) => void;
  /** Cap on rebuild copying, to leave the disks and network to the application (0: no cap). */
  rebuildBytesPerSecond?: number;
  logger: Logger;
}

export class FencedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FencedError';
  }
}

class ReplicaTimeoutError extends Error {}

export interface RebuildProgress {
  replicaId: string;
  nodeId: string;
  mode: 'full' | 'incremental';
  totalBytes: number;
  doneBytes: number;
  startedAt: number;
}

/** Copy unit of a rebuild: each chunk is locked against writes while it is copied. */
const REBUILD_CHUNK = 4 * 1024 * 1024;
/** Largest piece read or written at once while copying. */
const COPY_PIECE = 1024 * 1024;
const REBUILD_PARALLEL_CHUNKS = 4;

const MIN_BLOCK = 512;
const MAX_PAYLOAD = 32 * 1024 * 1024;
const MARK_STALE_RETRY_MS = 500;

export class VolumeEngine implements NbdBackend {
  readonly size: number;
  readonly minBlockSize = MIN_BLOCK;
  readonly preferredBlockSize = 4096;
  readonly maxPayload = MAX_PAYLOAD;
  // Every connection goes through this one engine, and FLUSH syncs every
  // copy's file, so a flush covers writes acknowledged on any connection.
  readonly canMultiConn = true;
  private readonly replicas: EngineReplica[];
  private readonly lock = new RangeLock();
  private fenced: string | undefined;
  private closed = false;
  /** Serialises stale-marking so concurrent failures make one etcd change at a time. */
  private staleChain: Promise<void> = Promise.resolve();
  /** Regions each stale copy has missed, kept while the copy is stale. */
  private readonly dirty = new Map<string, DirtyMap>();
  /** Ranges of changes sent and not yet finished: a copy that fails now may have missed them. */
  private readonly inFlight = new Set<{ offset: number; length: number }>();
  private persistRunning: Promise<void> = Promise.resolve();
  private nextPersist: Promise<void> | undefined;
  private readonly rebuilds = new Map<string, RebuildProgress>();

  constructor(private readonly opts: EngineOptions) {
    invariant(opts.size > 0 && opts.size % MIN_BLOCK === 0, 'volume size must be a positive multiple of 512');
    this.size = opts.size;
    this.replicas = opts.replicas.map((r) => ({ ...r }));
    for (const r of this.replicas) {
      if (r.state === 'stale') this.dirty.set(r.id, opts.dirtyMaps?.get(r.id) ?? new DirtyMap(opts.size));
    }
  }

  get epoch(): number {
    return this.opts.epoch;
  }

  /** Current state of each copy as this engine sees it. */
  replicaStates(): Array<{ id: string; nodeId: string; state: ReplicaState }> {
    return this.replicas.map((r) => ({ id: r.id, nodeId: r.nodeId, state: r.state }));
  }

  get fencedReason(): string | undefined {
    return this.fenced;
  }

  /**
   * Open every in-sync copy at our epoch before the first I/O, so that each
   * persists it and refuses the previous owner from then on.
   */
  async open(): Promise<void> {
    const targets = writeTargets(this.replicas);
    const results = await Promise.allSettled(targets.map((r) => this.withTimeout(r, r.channel.open(r.id, this.opts.epoch))));
    const failed: EngineReplica[] = [];
    results.forEach((res, i) => {
      if (res.status === 'rejected') {
        if (isFencing(res.reason)) this.fence(`copy ${targets[i].id} holds a newer epoch`);
        this.opts.logger.warn({ replica: targets[i].id, err: errText(res.reason) }, 'could not open a copy');
        failed.push(targets[i]);
      }
    });
    if (this.fenced) throw new FencedError(this.fenced);
    if (failed.length) await this.retire(failed);
    if (!canAcknowledge(this.replicas)) throw new Error(`no in-sync copy of ${this.opts.volume} could be opened`);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkUsable();
    for (;;) {
      const source = readSource(this.replicas);
      if (!source) throw new NbdError(Errno.EIO, 'no in-sync copy left');
      try {
        return await this.withTimeout(source, source.channel.read(source.id, this.opts.epoch, offset, length));
      } catch (err) {
        this.noteFencing(err);
        this.checkUsable();
        this.opts.logger.warn({ replica: source.id, err: errText(err) }, 'read from a copy failed; trying another');
        await this.retire([source]);
      }
    }
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.ordered(offset, data.length, (r) => r.channel.write(r.id, this.opts.epoch, offset, data, { fua }));
  }

  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.ordered(offset, length, (r) => r.channel.trim(r.id, this.opts.epoch, offset, length, { fua }));
  }

  writeZeroes(offset: number, length: number, fua: boolean, noHole: boolean): Promise<void> {
    return this.ordered(offset, length, (r) => r.channel.writeZeroes(r.id, this.opts.epoch, offset, length, { fua, noHole }));
  }

  async flush(): Promise<void> {
    this.checkUsable();
    await this.fanOut((r) => r.channel.flush(r.id, this.opts.epoch));
  }

  async blockStatus(offset: number, length: number): Promise<BlockStatusExtent[]> {
    this.checkUsable();
    const source = readSource(this.replicas);
    if (!source) throw new NbdError(Errno.EIO, 'no in-sync copy left');
    const allocated = await this.withTimeout(source, source.channel.allocMap(source.id, this.opts.epoch, offset, length));
    const extents: BlockStatusExtent[] = [];
    let pos = offset;
    const end = offset + length;
    for (const e of allocated) {
      const start = Math.max(e.offset, offset);
      const stop = Math.min(e.offset + e.length, end);
      if (stop <= pos) continue;
      if (start > pos) extents.push({ length: start - pos, flags: 3 }); // hole, reads as zeroes
      extents.push({ length: stop - Math.max(start, pos), flags: 0 });
      pos = stop;
    }
    if (pos < end) extents.push({ length: end - pos, flags: 3 });
    return extents;
  }

  /** Progress of the rebuilds running now. */
  rebuildProgress(): RebuildProgress[] {
    return [...this.rebuilds.values()].map((p) => ({ ...p }));
  }

  /** Copies known to this engine, by id. */
  hasReplica(id: string): boolean {
    return this.replicas.some((r) => r.id === id);
  }

  /** Stop sending anything to a copy that left the volume's replica set. */
  async removeReplica(id: string): Promise<void> {
    const i = this.replicas.findIndex((r) => r.id === id);
    if (i < 0) return;
    const [r] = this.replicas.splice(i, 1);
    invariant(r.state !== 'in-sync' || canAcknowledge(this.replicas), 'removing the last in-sync copy');
    this.dirty.delete(id);
    await r.channel.close().catch(() => undefined);
  }

  /** A copy's node is known to be down: record it stale now instead of waiting for a timeout. */
  retireReplicas(ids: string[]): Promise<void> {
    const failed = this.replicas.filter((r) => ids.includes(r.id) && r.state !== 'stale');
    if (failed.length === 0) return Promise.resolve();
    return this.retire(failed);
  }

  /**
   * Bring a copy up to date while the volume stays in use (DESIGN invariant 6).
   * 'full' copies every allocated region of an in-sync source (and clears what
   * the target holds beyond it); 'incremental' copies only the regions in the
   * copy's dirty map. From the start the copy receives every new write; each
   * chunk is locked while copied, so old data never overwrites a newer write.
   * `markInSync` records the result in etcd before the engine reads from it.
   */
  async rebuild(target: EngineReplica, mode: 'full' | 'incremental', clearTarget: boolean, markInSync: () => Promise<void>): Promise<number> {
    this.checkUsable();
    invariant(!this.rebuilds.has(target.id), `copy ${target.id} is already rebuilding`);
    await this.withTimeout(target, target.channel.open(target.id, this.opts.epoch));
    const existing = this.replicas.find((r) => r.id === target.id);
    const map = this.dirty.get(target.id);
    if (mode === 'incremental' && !map) throw new Error(`no dirty map for copy ${target.id}; a full rebuild is needed`);
    // From here on the copy gets every write; its dirty map is complete up to now.
    if (existing) {
      existing.channel = target.channel;
      existing.state = 'rebuilding';
    } else {
      this.replicas.push({ ...target, state: 'rebuilding' });
    }
    // The dirty map stays (and keeps growing) until the copy is in sync: if the
    // rebuild fails half-way, it still covers everything the copy may lack.
    const replica = this.replicas.find((r) => r.id === target.id)!;

    const chunks = mode === 'incremental' ? splitRanges(map!.ranges(), REBUILD_CHUNK) : await this.allocatedChunks();
    const progress: RebuildProgress = {
      replicaId: target.id, nodeId: target.nodeId, mode,
      totalBytes: chunks.reduce((n, c) => n + c.length, 0), doneBytes: 0, startedAt: Date.now(),
    };
    this.rebuilds.set(target.id, progress);
    let copied = 0;
    try {
      const rate = this.opts.rebuildBytesPerSecond ?? 0;
      // A few chunks in flight at once: copying is bound by round trips, not bandwidth.
      let nextChunk = 0;
      const worker = async (): Promise<void> => {
        while (nextChunk < chunks.length) {
          const chunk = chunks[nextChunk++];
          // Not `copied += await …`: that reads `copied` before the await and loses the other workers' bytes.
          const n = await this.copyChunk(replica, chunk.offset, chunk.length, clearTarget || mode === 'incremental');
          copied += n;
          progress.doneBytes += chunk.length;
          if (rate > 0) {
            const ahead = (progress.doneBytes / rate) * 1000 - (Date.now() - progress.startedAt);
            if (ahead > 0) await new Promise((r) => setTimeout(r, ahead));
          }
        }
      };
      await Promise.all(Array.from({ length: REBUILD_PARALLEL_CHUNKS }, worker));
      await this.withTimeout(replica, replica.channel.flush(replica.id, this.opts.epoch));
      await markInSync();
      replica.state = 'in-sync';
      this.dirty.delete(target.id);
      return copied;
    } catch (err) {
      if (replica.state === 'rebuilding' && !this.fenced && !this.closed) await this.retire([replica]).catch(() => undefined);
      throw err;
    } finally {
      this.rebuilds.delete(target.id);
    }
  }

  /** The volume in chunks, keeping only chunks where a source copy has data. */
  private async allocatedChunks(): Promise<Array<{ offset: number; length: number }>> {
    const source = readSource(this.replicas);
    if (!source) throw new NbdError(Errno.EIO, 'no in-sync copy to rebuild from');
    const extents = await this.withTimeout(source, source.channel.allocMap(source.id, this.opts.epoch, 0, this.size));
    const chunks = new Map<number, { offset: number; length: number }>();
    for (const e of extents) {
      for (let c = Math.floor(e.offset / REBUILD_CHUNK); c * REBUILD_CHUNK < e.offset + e.length; c++) {
        chunks.set(c, { offset: c * REBUILD_CHUNK, length: Math.min(REBUILD_CHUNK, this.size - c * REBUILD_CHUNK) });
      }
    }
    return [...chunks.values()].sort((a, b) => a.offset - b.offset);
  }

  /** Copy one chunk from an in-sync source to the target, locked against writes. Returns bytes copied. */
  private async copyChunk(target: EngineReplica, offset: number, length: number, clearHoles: boolean): Promise<number> {
    const lease = this.lock.acquire(offset, length, 'exclusive');
    try {
      await lease.ready;
      for (;;) {
        this.checkUsable();
        if (target.state !== 'rebuilding') throw new Error(`copy ${target.id} failed during its rebuild`);
        const source = readSource(this.replicas);
        if (!source) throw new NbdError(Errno.EIO, 'no in-sync copy to rebuild from');
        let copied = 0;
        try {
          const extents = await this.withTimeout(source, source.channel.allocMap(source.id, this.opts.epoch, offset, length));
          let pos = offset;
          for (const e of extents) {
            const start = Math.max(e.offset, offset);
            const end = Math.min(e.offset + e.length, offset + length);
            if (end <= start) continue;
            if (clearHoles && start > pos) await this.onTarget(target, target.channel.trim(target.id, this.opts.epoch, pos, start - pos));
            const pieces: Array<Promise<void>> = [];
            for (let p = start; p < end; p += COPY_PIECE) {
              const n = Math.min(COPY_PIECE, end - p);
              pieces.push(
                this.withTimeout(source, source.channel.read(source.id, this.opts.epoch, p, n)).then(async (data) => {
                  await this.onTarget(target, target.channel.write(target.id, this.opts.epoch, p, data));
                  ioBuffers.give(data); // the target has applied it
                }),
              );
              copied += n;
            }
            await Promise.all(pieces);
            pos = end;
          }
          if (clearHoles && pos < offset + length) await this.onTarget(target, target.channel.trim(target.id, this.opts.epoch, pos, offset + length - pos));
          return copied;
        } catch (err) {
          if (err instanceof TargetError) throw err.cause;
          // The source failed: retire it and copy the chunk again from another.
          this.noteFencing(err);
          this.checkUsable();
          this.opts.logger.warn({ replica: source.id, err: errText(err) }, 'rebuild source failed; using another');
          await this.retire([source]);
        }
      }
    } finally {
      lease.release();
    }
  }

  private async onTarget<T>(target: EngineReplica, p: Promise<T>): Promise<T> {
    try {
      return await this.withTimeout(target, p);
    } catch (err) {
      this.noteFencing(err);
      throw new TargetError(err);
    }
  }

  /** Stop serving: later requests fail; copies' connections are closed. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.replicas.map((r) => r.channel.close().catch(() => undefined)));
  }

  // ---- internals

  /** Changes of overlapping ranges reach every copy in the same order (arrival order). */
  private async ordered(offset: number, length: number, op: (r: EngineReplica) => Promise<void>): Promise<void> {
    this.checkUsable();
    const lease = this.lock.acquire(offset, length, 'exclusive');
    const range = { offset, length };
    try {
      await lease.ready;
      this.inFlight.add(range);
      // Stale copies miss this change: record where, durably, before it is acknowledged.
      let dirtied = false;
      for (const map of this.dirty.values()) dirtied = map.mark(offset, length) || dirtied;
      if (dirtied) await Promise.all([this.fanOut(op), this.persistDirtyMaps()]);
      else await this.fanOut(op);
    } finally {
      this.inFlight.delete(range);
      lease.release();
    }
  }

  /** Store every dirty map; concurrent callers share one round that starts after the call. */
  private persistDirtyMaps(): Promise<void> {
    if (!this.nextPersist) {
      const round = this.persistRunning.then(async () => {
        this.nextPersist = undefined;
        for (;;) {
          this.checkUsable();
          try {
            await Promise.all([...this.dirty].map(([id, map]) => this.opts.persistDirty(id, map)));
            return;
          } catch (err) {
            this.opts.logger.warn({ err: errText(err) }, 'cannot store dirty maps yet; writes wait');
            await new Promise((r) => setTimeout(r, MARK_STALE_RETRY_MS));
          }
        }
      });
      this.nextPersist = round;
      this.persistRunning = round.catch(() => undefined);
    }
    return this.nextPersist;
  }

  /**
   * Send to every write target; resolve only when every in-sync copy has
   * applied it, or has been durably recorded stale.
   */
  private async fanOut(op: (r: EngineReplica) => Promise<void>): Promise<void> {
    const targets = writeTargets(this.replicas);
    const results = await Promise.allSettled(targets.map((r) => this.withTimeout(r, op(r))));
    const failed: EngineReplica[] = [];
    results.forEach((res, i) => {
      if (res.status === 'rejected') {
        this.noteFencing(res.reason);
        failed.push(targets[i]);
        this.opts.logger.warn({ replica: targets[i].id, err: errText(res.reason) }, 'a copy failed a request');
      }
    });
    this.checkUsable();
    if (failed.length) await this.retire(failed);
    if (!canAcknowledge(this.replicas)) throw new NbdError(Errno.EIO, 'no in-sync copy left');
  }

  /** Mark failed copies stale in etcd (retrying until it is recorded), then stop using them. */
  private retire(failed: EngineReplica[]): Promise<void> {
    const run = async (): Promise<void> => {
      const ids = failed.filter((r) => r.state !== 'stale').map((r) => r.id);
      if (ids.length === 0) return;
      // The last in-sync copy is never marked stale: it may be the only one
      // holding the newest acknowledged data. The request fails instead.
      const remaining = this.replicas.filter((r) => r.state === 'in-sync' && !ids.includes(r.id));
      if (remaining.length === 0) throw new NbdError(Errno.EIO, 'every in-sync copy failed');
      // Start each dirty map with every change in flight now: the copy may have missed any of them.
      for (const id of ids) {
        const map = this.dirty.get(id) ?? new DirtyMap(this.size);
        for (const r of this.inFlight) map.mark(r.offset, r.length);
        this.dirty.set(id, map);
      }
      await this.persistDirtyMaps();
      for (;;) {
        this.checkUsable();
        try {
          await this.opts.markStale(ids);
          break;
        } catch (err) {
          if (err instanceof FencedError) {
            this.fence(err.message);
            this.checkUsable();
          }
          this.opts.logger.warn({ replicas: ids, err: errText(err) }, 'cannot record failed copies as stale yet; writes wait');
          await new Promise((r) => setTimeout(r, MARK_STALE_RETRY_MS));
        }
      }
      for (const r of failed) {
        r.state = 'stale';
        void r.channel.close().catch(() => undefined);
      }
      this.opts.logger.warn({ replicas: ids }, 'copies marked stale');
    };
    const next = this.staleChain.then(run, run);
    this.staleChain = next.catch(() => undefined);
    return next;
  }

  /** `p`, or a ReplicaTimeoutError if it has not settled in time (one promise per call: this is per I/O). */
  private withTimeout<T>(replica: EngineReplica, p: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new ReplicaTimeoutError(`copy ${replica.id} on node ${replica.nodeId} did not answer in ${this.opts.replicaTimeoutMs} ms`)), this.opts.replicaTimeoutMs);
      p.then(
        (value) => {
          clearTimeout(timer);
          resolve(value);
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(err);
        },
      );
    });
  }

  private noteFencing(err: unknown): void {
    if (isFencing(err)) this.fence(`a copy refused epoch ${this.opts.epoch}: another node owns ${this.opts.volume} now`);
  }

  private fence(reason: string): void {
    if (this.fenced) return;
    this.fenced = reason;
    this.opts.logger.error({ volume: this.opts.volume, reason }, 'engine fenced: this node no longer owns the volume');
    this.opts.onFenced?.(reason);
  }

  private checkUsable(): void {
    if (this.fenced) throw new NbdError(Errno.ESHUTDOWN, this.fenced);
    if (this.closed) throw new NbdError(Errno.ESHUTDOWN, 'volume detached');
  }
}

/** A failure of the copy being rebuilt (as opposed to its source). */
class TargetError extends Error {
  constructor(override readonly cause: unknown) {
    super(errText(cause));
  }
}

function splitRanges(ranges: Array<{ offset: number; length: number }>, max: number): Array<{ offset: number; length: number }> {
  const out: Array<{ offset: number; length: number }> = [];
  for (const r of ranges) {
    for (let p = r.offset; p < r.offset + r.length; p += max) out.push({ offset: p, length: Math.min(max, r.offset + r.length - p) });
  }
  return out;
}

function isFencing(err: unknown): boolean {
  return err instanceof ReplicaRequestError && err.code === 'ESTALE';
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
