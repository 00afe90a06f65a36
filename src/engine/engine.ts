// The replication engine of one attached volume: the NBD backend that fans
// every change out to the volume's copies and acknowledges it only when every
// in-sync copy has applied it. The decisions — which copy gets what, what a
// failed copy may lack, which extents may disagree — are the pure CopySet and
// IntentLog in src/core; this class carries out their I/O, the way an
// application carries out raft's Ready.
//
// The order that keeps copies identical (DESIGN invariants 3–6):
// - an intent extent is stored in etcd before the first change to it is sent;
// - a failed copy is stored stale, with a map of everything it may lack,
//   before any change it missed is acknowledged;
// - a copy that refuses our epoch means another node owns the volume: the
//   engine is fenced and fails every request from then on.
import { NbdError, Errno, type BlockStatusExtent, type NbdBackend } from '../nbd';
import { RangeLock } from '../replica/rangelock';
import { ReplicaRequestError } from '../replica/client';
import type { ReplicaState } from '../core/types';
import { CopySet, type CopyInit } from '../core/copy-set';
import { IntentLog } from '../core/intent-log';
import type { DirtyMap, DirtyMapJson } from '../core/dirty-map';
import { FencedError, invariant } from '../util/errors';
import { ioBuffers } from '../util/buffer-pool';
import { systemClock, sleep, type Clock } from '../util/clock';
import type { Logger } from '../util/log';

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

/** What the engine stores in etcd before it sends or acknowledges a change. */
export interface EngineJournal {
  /** Missed map of every copy that is not in-sync and has one. */
  missed: Map<string, DirtyMapJson>;
  /** Intent extents (indexes of INTENT_EXTENT_BYTES-sized extents) where in-sync copies may disagree. */
  intents: number[];
}

export interface EngineOptions {
  volume: string;
  size: number;
  epoch: number;
  replicas: EngineReplica[];
  /** Durably record these copies as stale for this epoch; reject if that is impossible now, throw FencedError if we no longer own the volume. */
  markStale: (replicaIds: string[]) => Promise<void>;
  /** Durably store the journal, only while we own the volume at our epoch (FencedError otherwise). */
  persistJournal: (journal: EngineJournal) => Promise<void>;
  /** Missed maps already recorded for copies that are stale at attach time. */
  dirtyMaps?: ReadonlyMap<string, DirtyMap>;
  /** Intent extents the previous owner recorded: reconciled before the first I/O. */
  intents?: readonly number[];
  intentExtentBytes?: number;
  intentCap?: number;
  /** A copy that has not answered within this time is treated as failed. */
  replicaTimeoutMs: number;
  /**
   * A new connection to a copy. Used when the last in-sync copy fails: it
   * cannot be retired, so the engine reconnects and reopens it at our epoch
   * (a copy that restarted answers again) instead of failing forever.
   */
  reconnect?: (replicaId: string) => Promise<ReplicaChannel>;
  /** Called once when a copy refuses our epoch: another node owns the volume now. */
  onFenced?: (reason: string) => void;
  /** Cap on rebuild copying, to leave the disks and network to the application (0: no cap). */
  rebuildBytesPerSecond?: number;
  /**
   * Whether this node surely still holds the lease it owns the volume under.
   * Reads wait while it does not: past that bound another node may own the
   * volume, and a copy it cannot reach (this node's own, say) would serve old
   * data (failure 6). Changes need no such wait: one is acknowledged only when
   * every in-sync copy took it at our epoch or was recorded stale by a
   * transaction guarded on our ownership, and a fenced change tells the engine
   * it lost the volume. Absent: always held.
   */
  leaseHeld?: () => boolean;
  clock?: Clock;
  logger: Logger;
}

export { FencedError };

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
/** A full rebuild asks both copies for their allocation one window at a time. */
const SCAN_WINDOW = 256 * 1024 * 1024;
/** Largest piece read or written at once while copying. */
const COPY_PIECE = 1024 * 1024;
const REBUILD_PARALLEL_CHUNKS = 4;
/** A FLUSH syncs a whole image file: give it far longer than a single request. */
const FLUSH_TIMEOUT_FACTOR = 6;

const MIN_BLOCK = 512;
const MAX_PAYLOAD = 32 * 1024 * 1024;
const RETRY_MS = 500;

type Range = { offset: number; length: number };

export class VolumeEngine implements NbdBackend {
  readonly size: number;
  readonly minBlockSize = MIN_BLOCK;
  readonly preferredBlockSize = 4096;
  readonly maxPayload = MAX_PAYLOAD;
  // Every connection goes through this one engine, and FLUSH syncs every
  // copy's file, so a flush covers writes acknowledged on any connection.
  readonly canMultiConn = true;
  private readonly copies: CopySet;
  private readonly intents: IntentLog;
  private readonly channels = new Map<string, ReplicaChannel>();
  private readonly clock: Clock;
  private readonly lock = new RangeLock();
  private fenced: string | undefined;
  private closed = false;
  /** I/O waits for the lease to be confirmed (logged once per wait). */
  private leaseWaiting = false;
  /** Serialises etcd records of copy states (stale, in-sync) so they land in decision order. */
  private recordChain: Promise<void> = Promise.resolve();
  private journalStored = 0;
  private journalRound: Promise<void> | undefined;
  private readonly rebuilds = new Map<string, RebuildProgress>();
  private readonly reconnecting = new Set<string>();
  private readonly opts: EngineOptions;

  constructor(opts: EngineOptions) {
    invariant(opts.size > 0 && opts.size % MIN_BLOCK === 0, 'volume size must be a positive multiple of 512');
    this.opts = opts;
    this.size = opts.size;
    this.clock = opts.clock ?? systemClock;
    const inits: CopyInit[] = opts.replicas.map((r) => {
      invariant(r.state !== 'rebuilding', `copy ${r.id} cannot start out rebuilding: a rebuild restarts from stale`);
      this.channels.set(r.id, r.channel);
      return { id: r.id, nodeId: r.nodeId, local: r.local, phase: r.state, missed: opts.dirtyMaps?.get(r.id) };
    });
    this.copies = new CopySet(opts.size, inits);
    this.intents = new IntentLog(opts.size, opts.intentExtentBytes, opts.intentCap, opts.intents ?? []);
  }

  get epoch(): number {
    return this.opts.epoch;
  }

  /** Current state of each copy as this engine sees it (a failing copy counts as stale). */
  replicaStates(): Array<{ id: string; nodeId: string; state: ReplicaState }> {
    return this.copies.list().map((c) => ({ id: c.id, nodeId: c.nodeId, state: c.phase === 'failing' ? 'stale' : c.phase }));
  }

  get fencedReason(): string | undefined {
    return this.fenced;
  }

  /**
   * Before the first I/O: open every copy at our epoch — stale ones too, so
   * none of them takes a request from a previous owner again — then make the
   * in-sync copies agree wherever the previous owner had changes in flight.
   */
  async open(): Promise<void> {
    const all = this.copies.list();
    const results = await Promise.allSettled(all.map((c) => this.call(c.id, (ch) => ch.open(c.id, this.opts.epoch))));
    const failed: string[] = [];
    const restarted = new Set<string>();
    results.forEach((res, i) => {
      if (res.status === 'fulfilled') {
        if ((res.value as { restarted?: boolean } | undefined)?.restarted === true) restarted.add(all[i].id);
        return;
      }
      this.noteFencing(res.reason);
      this.opts.logger.warn({ replica: all[i].id, err: errText(res.reason) }, 'could not open a copy');
      if (all[i].phase === 'in-sync') failed.push(all[i].id);
    });
    this.checkUsable();
    // A copy we could not open is not fenced: the previous owner, if it still
    // runs, may yet change it. Only a full copy makes it whole again.
    if (failed.length) await this.retire(failed, true);
    if (this.copies.inSyncCount() === 0) throw new Error(`no in-sync copy of ${this.opts.volume} could be opened`);
    await this.reconcileIntents(restarted);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkUsable();
    for (;;) {
      await this.awaitLease();
      const source = this.copies.readSource();
      if (!source) throw new NbdError(Errno.EIO, 'no in-sync copy left');
      try {
        return await this.call(source, (ch) => ch.read(source, this.opts.epoch, offset, length));
      } catch (err) {
        this.noteFencing(err);
        this.checkUsable();
        this.opts.logger.warn({ replica: source, err: errText(err) }, 'read from a copy failed; trying another');
        await this.retire([source]);
      }
    }
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.change(offset, data.length, fua, (id, ch) => ch.write(id, this.opts.epoch, offset, data, { fua }));
  }

  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.change(offset, length, fua, (id, ch) => ch.trim(id, this.opts.epoch, offset, length, { fua }));
  }

  writeZeroes(offset: number, length: number, fua: boolean, noHole: boolean): Promise<void> {
    return this.change(offset, length, fua, (id, ch) => ch.writeZeroes(id, this.opts.epoch, offset, length, { fua, noHole }));
  }

  async flush(): Promise<void> {
    this.checkUsable();
    const ticket = this.copies.beginFlush();
    const gen = this.intents.beginFlush();
    try {
      const timeout = this.opts.replicaTimeoutMs * FLUSH_TIMEOUT_FACTOR;
      await this.fanOut(ticket.targets, (id, ch) => ch.flush(id, this.opts.epoch), (id) => this.copies.flushApplied(ticket, id), timeout);
      this.intents.flushed(gen);
    } finally {
      this.copies.endFlush(ticket);
    }
  }

  async blockStatus(offset: number, length: number): Promise<BlockStatusExtent[]> {
    this.checkUsable();
    await this.awaitLease();
    const source = this.copies.readSource();
    if (!source) throw new NbdError(Errno.EIO, 'no in-sync copy left');
    const allocated = await this.call(source, (ch) => ch.allocMap(source, this.opts.epoch, offset, length));
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

  hasReplica(id: string): boolean {
    return this.copies.get(id) !== undefined;
  }

  /** Stop sending anything to a copy that left the volume's replica set. */
  async removeReplica(id: string): Promise<void> {
    if (!this.copies.get(id) || this.rebuilds.has(id)) return;
    this.copies.remove(id);
    const ch = this.channels.get(id);
    this.channels.delete(id);
    await ch?.close().catch(() => undefined);
  }

  /** A copy's node is known to be down: record it stale now instead of waiting for a timeout. */
  retireReplicas(ids: string[]): Promise<void> {
    const live = ids.filter((id) => {
      const p = this.copies.get(id)?.phase;
      return p === 'in-sync' || p === 'rebuilding';
    });
    return live.length ? this.retire(live) : Promise.resolve();
  }

  /**
   * Bring a stale (or new) copy up to date while the volume stays in use
   * (DESIGN invariant 6). From the start the copy receives every change; each
   * chunk is locked while copied, so old data never overwrites a newer write.
   * 'incremental' copies the regions of its missed map (unless the engine
   * knows the copy needs a full copy); 'full' copies every
   * chunk where either the source or the target holds data, clearing on the
   * target what the source does not hold. `markInSync` records the result in
   * etcd before the engine reads from the copy.
   */
  async rebuild(target: EngineReplica, mode: 'full' | 'incremental', markInSync: () => Promise<void>): Promise<number> {
    this.checkUsable();
    invariant(!this.rebuilds.has(target.id), `copy ${target.id} is already rebuilding`);
    const known = this.copies.get(target.id);
    invariant(!known || known.phase === 'stale', `copy ${target.id} is ${known?.phase}, not stale`);
    await this.withTimeout(target.id, target.channel.open(target.id, this.opts.epoch));
    this.checkUsable();
    const old = this.channels.get(target.id);
    this.channels.set(target.id, target.channel);
    if (old && old !== target.channel) void old.close().catch(() => undefined);
    // From here on the copy gets every change; its missed map stays (and the
    // rebuild is redone from it) until the copy is recorded in-sync.
    if (known) this.copies.startRebuild(target.id, mode === 'full');
    else this.copies.addForRebuild({ id: target.id, nodeId: target.nodeId, local: target.local });
    const regions = this.copies.regionsToRebuild(target.id);
    const progress: RebuildProgress = {
      replicaId: target.id, nodeId: target.nodeId, mode: regions ? 'incremental' : 'full',
      totalBytes: regions ? regions.reduce((n, r) => n + r.length, 0) : this.size, doneBytes: 0, startedAt: this.clock.now(),
    };
    this.rebuilds.set(target.id, progress);
    let copied = 0;
    try {
      const copyChunks = async (chunks: Range[]): Promise<void> => {
        let next = 0;
        // A few chunks in flight at once: copying is bound by round trips, not bandwidth.
        const worker = async (): Promise<void> => {
          while (next < chunks.length) {
            const chunk = chunks[next++];
            const n = await this.copyChunk(target.id, chunk.offset, chunk.length);
            copied += n;
            progress.doneBytes += chunk.length;
            await this.pace(progress);
          }
        };
        await Promise.all(Array.from({ length: REBUILD_PARALLEL_CHUNKS }, worker));
      };
      if (regions) await copyChunks(splitRanges(regions, REBUILD_CHUNK));
      else {
        for (let w = 0; w < this.size; w += SCAN_WINDOW) {
          const len = Math.min(SCAN_WINDOW, this.size - w);
          const chunks = await this.allocatedChunks(target.id, w, len);
          progress.doneBytes += len - chunks.reduce((n, c) => n + c.length, 0);
          await copyChunks(chunks);
        }
      }
      await this.call(target.id, (ch) => ch.flush(target.id, this.opts.epoch), this.opts.replicaTimeoutMs * FLUSH_TIMEOUT_FACTOR);
      await this.record(async () => {
        // Recorded in the same order as failures: a copy that failed meanwhile is not marked in-sync.
        if (this.copies.get(target.id)?.phase !== 'rebuilding') throw new Error(`copy ${target.id} failed during its rebuild`);
        this.checkUsable();
        await markInSync();
        if (this.copies.get(target.id)?.phase === 'rebuilding') this.copies.rebuilt(target.id);
      });
      return copied;
    } catch (err) {
      if (this.copies.get(target.id)?.phase === 'rebuilding' && !this.fenced && !this.closed) await this.retire([target.id]).catch(() => undefined);
      throw err;
    } finally {
      this.rebuilds.delete(target.id);
    }
  }

  /** Stop serving: later requests fail; copies' connections are closed. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.channels.values()].map((ch) => ch.close().catch(() => undefined)));
  }

  // ---- internals: changes

  /** One change: ordered against overlapping ones, recorded as intent, sent, acknowledged per the copy set. */
  private async change(offset: number, length: number, fua: boolean, op: (id: string, ch: ReplicaChannel) => Promise<void>): Promise<void> {
    this.checkUsable();
    const lease = this.lock.acquire(offset, length, 'exclusive');
    let intent = false;
    try {
      await lease.ready;
      for (;;) {
        this.checkUsable();
        if (this.intents.begin(offset, length) !== undefined) break;
        // The intent log is full: a flush lets settled extents go; extents
        // with changes in flight go when those end.
        if (this.intents.hasUnflushed()) await this.flush();
        else await sleep(this.clock, 1);
      }
      intent = true;
      await this.awaitJournal(); // the intent is stored before the change leaves this node
      const ticket = this.copies.beginChange(offset, length, fua);
      try {
        await this.fanOut(ticket.targets, op, (id) => this.copies.changeApplied(ticket, id));
        // Stale copies missed it: their maps hold it durably before it is acknowledged.
        if (this.journalStored < this.journalVersion()) await this.awaitJournal();
      } finally {
        this.copies.endChange(ticket);
      }
    } finally {
      if (intent) this.intents.end(offset, length, fua);
      lease.release();
    }
  }

  /**
   * Send to the given targets; resolve only when each has applied it or been
   * recorded stale, and at least one in-sync copy remains.
   */
  private async fanOut(targets: readonly string[], op: (id: string, ch: ReplicaChannel) => Promise<void>, applied: (id: string) => void, timeoutMs?: number): Promise<void> {
    const results = await Promise.allSettled(targets.map((id) => this.call(id, (ch) => op(id, ch), timeoutMs).then(() => applied(id))));
    const failed: string[] = [];
    results.forEach((res, i) => {
      if (res.status === 'rejected') {
        this.noteFencing(res.reason);
        failed.push(targets[i]);
        this.opts.logger.warn({ replica: targets[i], err: errText(res.reason) }, 'a copy failed a request');
      }
    });
    this.checkUsable();
    if (failed.length) await this.retire(failed);
    // A copy that failed another request meanwhile may have missed this one too.
    if (this.copies.failingIds().length) await this.recordFailing();
    if (this.copies.inSyncCount() === 0) throw new NbdError(Errno.EIO, 'no in-sync copy left');
  }

  // ---- internals: failures and records

  /** Copies failed: take them out of the write set now, then record them stale (acks wait for that). */
  private retire(ids: readonly string[], fullCopy = false): Promise<void> {
    const result = this.copies.fail(ids, fullCopy);
    for (const id of result.failed) void this.channels.get(id)?.close().catch(() => undefined);
    const recorded = this.recordFailing();
    if (result.keptInSync !== undefined) {
      // The last in-sync copy is never marked stale (see CopySet.fail): the
      // request fails instead, and the copy is reconnected for the next one.
      this.reconnectSoon(result.keptInSync);
      return recorded.then(() => Promise.reject(new NbdError(Errno.EIO, 'every in-sync copy failed')));
    }
    return recorded;
  }

  /** Reconnect an in-sync copy that failed (one attempt at a time per copy). */
  private reconnectSoon(id: string): void {
    const reconnect = this.opts.reconnect;
    if (!reconnect || this.reconnecting.has(id) || this.fenced || this.closed) return;
    this.reconnecting.add(id);
    const attempt = async (): Promise<void> => {
      await sleep(this.clock, RETRY_MS);
      const ch = await reconnect(id);
      let info: { restarted?: boolean } | undefined;
      try {
        info = (await this.withTimeout(id, ch.open(id, this.opts.epoch))) as { restarted?: boolean } | undefined;
      } catch (err) {
        void ch.close().catch(() => undefined);
        throw err;
      }
      if (this.closed || this.copies.get(id)?.phase !== 'in-sync') return void ch.close().catch(() => undefined);
      let restartedAlone = false;
      if (info?.restarted === true) {
        // Its process restarted: it may have lost changes it had not flushed, all inside the intent extents.
        if (this.copies.inSyncCount() > 1) {
          // Another copy became whole meanwhile (rebuilt from it before it failed): that one keeps the data.
          void ch.close().catch(() => undefined);
          return this.retire([id]);
        }
        // Still the only whole copy: what it holds now is the volume. Copies being filled from it start again,
        // and every other copy's missed map gains the extents where it may now differ from it.
        const filling = this.copies.list().filter((c) => c.phase === 'rebuilding').map((c) => c.id);
        if (filling.length) void this.retire(filling).catch(() => undefined);
        this.copies.markMissed(this.intents.recorded().map((e) => this.intents.rangeOf(e)));
        restartedAlone = true;
      }
      const old = this.channels.get(id);
      this.channels.set(id, ch);
      void old?.close().catch(() => undefined);
      this.opts.logger.warn({ replica: id, restarted: info?.restarted === true }, 'reconnected the last in-sync copy');
      if (restartedAlone) await this.awaitJournal();
    };
    void attempt()
      .catch((err: unknown) => {
        this.noteFencing(err);
        this.opts.logger.warn({ replica: id, err: errText(err) }, 'could not reconnect the last in-sync copy yet');
      })
      .finally(() => this.reconnecting.delete(id));
  }

  /** Wait while the lease this node owns the volume under is not surely held (see EngineOptions.leaseHeld). */
  private async awaitLease(): Promise<void> {
    const held = this.opts.leaseHeld;
    if (!held || held()) return;
    if (!this.leaseWaiting) this.opts.logger.warn('the node lease is not confirmed: I/O waits (another node may own the volume by now)');
    this.leaseWaiting = true;
    while (!held()) {
      this.checkUsable();
      await sleep(this.clock, RETRY_MS);
    }
    if (this.leaseWaiting) this.opts.logger.info('the node lease is confirmed again: I/O goes on');
    this.leaseWaiting = false;
  }

  /** Store the missed maps, then record every failing copy stale (retrying until it is recorded). */
  private recordFailing(): Promise<void> {
    return this.record(async () => {
      const ids = this.copies.failingIds();
      if (ids.length === 0) return;
      await this.awaitJournal();
      for (;;) {
        this.checkUsable();
        try {
          await this.opts.markStale(ids);
          break;
        } catch (err) {
          this.noteFenced(err);
          this.checkUsable();
          this.opts.logger.warn({ replicas: ids, err: errText(err) }, 'cannot record failed copies as stale yet; writes wait');
          await sleep(this.clock, RETRY_MS);
        }
      }
      this.copies.recordedStale(ids);
      this.opts.logger.warn({ replicas: ids }, 'copies marked stale');
    });
  }

  /** Run `step` after every earlier record step (each etcd record of copy states lands in decision order). */
  private record(step: () => Promise<void>): Promise<void> {
    const next = this.recordChain.then(step);
    this.recordChain = next.catch(() => undefined);
    return next;
  }

  private journalVersion(): number {
    return this.copies.missedVersion + this.intents.version;
  }

  /** Resolve once the journal as it is now is stored; concurrent callers share store rounds. */
  private async awaitJournal(): Promise<void> {
    const wanted = this.journalVersion();
    while (this.journalStored < wanted) {
      this.journalRound ??= this.storeJournal().finally(() => {
        this.journalRound = undefined;
      });
      await this.journalRound;
    }
  }

  private async storeJournal(): Promise<void> {
    const version = this.journalVersion();
    const missed = new Map<string, DirtyMapJson>();
    for (const [id, map] of this.copies.missedMaps()) missed.set(id, map.toJSON());
    const journal: EngineJournal = { missed, intents: this.intents.recorded() };
    for (;;) {
      this.checkUsable();
      try {
        await this.opts.persistJournal(journal);
        break;
      } catch (err) {
        this.noteFenced(err);
        this.checkUsable();
        this.opts.logger.warn({ err: errText(err) }, 'cannot store the write journal yet; writes wait');
        await sleep(this.clock, RETRY_MS);
      }
    }
    if (version > this.journalStored) this.journalStored = version;
  }

  // ---- internals: copying

  /**
   * Make the in-sync copies agree on every extent the previous owner recorded
   * as intent: copy each from one in-sync copy to the others, and the result
   * is flushed before the first I/O; stale copies' maps gain the extents. The
   * source is a copy whose process did not restart since the previous owner
   * opened it, if there is one: a restarted copy may have lost acknowledged
   * writes that were not flushed yet, all of them inside these extents.
   * Between copies that did not restart any version is right: none of it was
   * acknowledged as different.
   */
  private async reconcileIntents(restarted: ReadonlySet<string>): Promise<void> {
    const recorded = this.intents.recorded();
    if (recorded.length === 0) return;
    this.opts.logger.info({ extents: recorded.length }, "reconciling the previous owner's intent extents");
    for (const extent of recorded) {
      const { offset, length } = this.intents.rangeOf(extent);
      const ticket = this.copies.beginChange(offset, length);
      try {
        let pending = ticket.targets.filter((id) => this.copies.get(id)?.phase === 'in-sync');
        while (pending.length > 1) {
          const source = this.copies.readSource(restarted) ?? this.copies.readSource();
          if (!source) throw new NbdError(Errno.EIO, `no in-sync copy of ${this.opts.volume} left to reconcile from`);
          const targets = pending.filter((id) => id !== source);
          const results = await Promise.allSettled(targets.map((id) => this.copyRange(source, id, offset, length)));
          const failedTargets: string[] = [];
          let sourceFailed: unknown;
          results.forEach((res, i) => {
            if (res.status === 'fulfilled') return this.copies.changeApplied(ticket, targets[i]);
            const err: unknown = res.reason instanceof SourceError ? res.reason.cause : res.reason;
            this.noteFencing(err);
            if (res.reason instanceof SourceError) sourceFailed = err ?? new Error('source failed');
            else failedTargets.push(targets[i]);
          });
          this.checkUsable();
          if (failedTargets.length) await this.retire(failedTargets);
          if (sourceFailed === undefined) break;
          // The source failed: the extent is copied again, from another in-sync copy, to every copy left.
          await this.retire([source]);
          pending = pending.filter((id) => id !== source && this.copies.get(id)?.phase === 'in-sync');
        }
      } finally {
        this.copies.endChange(ticket);
      }
    }
    if (this.copies.failingIds().length) await this.recordFailing();
    await this.flush();
    this.intents.clearReconciled(recorded);
    await this.awaitJournal();
  }

  /** The full-rebuild chunks of one window: where either copy holds data. */
  private async allocatedChunks(target: string, offset: number, length: number): Promise<Range[]> {
    const chunks = new Map<number, Range>();
    const add = (extents: Range[]): void => {
      for (const e of extents) {
        const from = Math.max(e.offset, offset);
        const to = Math.min(e.offset + e.length, offset + length);
        for (let c = Math.floor(from / REBUILD_CHUNK); c * REBUILD_CHUNK < to; c++) {
          chunks.set(c, { offset: c * REBUILD_CHUNK, length: Math.min(REBUILD_CHUNK, this.size - c * REBUILD_CHUNK) });
        }
      }
    };
    for (;;) {
      const source = this.copies.readSource();
      if (!source) throw new NbdError(Errno.EIO, 'no in-sync copy to rebuild from');
      try {
        add(await this.call(source, (ch) => ch.allocMap(source, this.opts.epoch, offset, length)));
        break;
      } catch (err) {
        this.noteFencing(err);
        this.checkUsable();
        await this.retire([source]);
      }
    }
    add(await this.call(target, (ch) => ch.allocMap(target, this.opts.epoch, offset, length)));
    return [...chunks.values()].sort((a, b) => a.offset - b.offset);
  }

  /** Copy one chunk from an in-sync source to a rebuilding target, locked against changes. Returns bytes copied. */
  private async copyChunk(target: string, offset: number, length: number): Promise<number> {
    const lease = this.lock.acquire(offset, length, 'exclusive');
    try {
      await lease.ready;
      for (;;) {
        this.checkUsable();
        if (this.copies.get(target)?.phase !== 'rebuilding') throw new Error(`copy ${target} failed during its rebuild`);
        const source = this.copies.readSource();
        if (!source) throw new NbdError(Errno.EIO, 'no in-sync copy to rebuild from');
        try {
          return await this.copyRange(source, target, offset, length);
        } catch (err) {
          if (!(err instanceof SourceError)) throw err;
          // The source failed: retire it and copy the chunk again from another.
          this.noteFencing(err.cause);
          this.checkUsable();
          this.opts.logger.warn({ replica: source, err: errText(err.cause) }, 'rebuild source failed; using another');
          await this.retire([source]);
        }
      }
    } finally {
      lease.release();
    }
  }

  /**
   * Make [offset, +length) of `target` equal to `source`: data where the
   * source holds data, cleared where it holds none. A source failure is a
   * SourceError; anything else is the target's. Returns bytes copied.
   */
  private async copyRange(source: string, target: string, offset: number, length: number): Promise<number> {
    const fromSource = <T>(p: () => Promise<T>): Promise<T> => this.call(source, () => p()).catch((err: unknown) => Promise.reject(new SourceError(err)));
    const src = this.channel(source);
    const dst = this.channel(target);
    const epoch = this.opts.epoch;
    const extents = await fromSource(() => src.allocMap(source, epoch, offset, length));
    let copied = 0;
    let pos = offset;
    const end = offset + length;
    for (const e of extents) {
      const start = Math.max(e.offset, offset);
      const stop = Math.min(e.offset + e.length, end);
      if (stop <= start) continue;
      if (start > pos) await this.call(target, () => dst.trim(target, epoch, pos, start - pos));
      const pieces: Array<Promise<void>> = [];
      for (let p = start; p < stop; p += COPY_PIECE) {
        const n = Math.min(COPY_PIECE, stop - p);
        pieces.push(
          fromSource(() => src.read(source, epoch, p, n)).then(async (data) => {
            await this.call(target, () => dst.write(target, epoch, p, data));
            ioBuffers.give(data); // the target has applied it
          }),
        );
        copied += n;
      }
      await Promise.all(pieces);
      pos = stop;
    }
    if (pos < end) await this.call(target, () => dst.trim(target, epoch, pos, end - pos));
    return copied;
  }

  private async pace(progress: RebuildProgress): Promise<void> {
    const rate = this.opts.rebuildBytesPerSecond ?? 0;
    if (rate <= 0) return;
    const ahead = (progress.doneBytes / rate) * 1000 - (this.clock.now() - progress.startedAt);
    if (ahead > 0) await sleep(this.clock, ahead);
  }

  // ---- internals: calls

  private channel(id: string): ReplicaChannel {
    const ch = this.channels.get(id);
    invariant(ch, `no channel to copy ${id}`);
    return ch;
  }

  /** One request to a copy, failed if it does not answer in time. */
  private call<T>(id: string, fn: (ch: ReplicaChannel) => Promise<T>, timeoutMs?: number): Promise<T> {
    let p: Promise<T>;
    try {
      p = fn(this.channel(id));
    } catch (err) {
      p = Promise.reject(err);
    }
    return this.withTimeout(id, p, timeoutMs);
  }

  /** `p`, or a ReplicaTimeoutError if it has not settled in time (one timer per call: this is per I/O). */
  private withTimeout<T>(id: string, p: Promise<T>, timeoutMs = this.opts.replicaTimeoutMs): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = this.clock.setTimer(timeoutMs, () => reject(new ReplicaTimeoutError(`copy ${id} did not answer in ${timeoutMs} ms`)));
      p.then(
        (value) => {
          timer.cancel();
          resolve(value);
        },
        (err: unknown) => {
          timer.cancel();
          reject(err);
        },
      );
    });
  }

  private noteFencing(err: unknown): void {
    if (isFencing(err)) this.fence(`a copy refused epoch ${this.opts.epoch}: another node owns ${this.opts.volume} now`);
  }

  private noteFenced(err: unknown): void {
    if (err instanceof FencedError) this.fence(err.message);
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

/** A failure of the copy being read from while copying (as opposed to the target). */
class SourceError extends Error {
  constructor(override readonly cause: unknown) {
    super(errText(cause));
  }
}

function splitRanges(ranges: Range[], max: number): Range[] {
  const out: Range[] = [];
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
