// The copy set of one attached volume, as a pure state machine: which copies
// receive writes, which may be read, and — the part that keeps copies from
// disagreeing — exactly which regions each copy may lack. The engine calls it
// at every step of a change, flush, failure and rebuild and carries out the
// I/O itself; nothing here waits, so the simulation drives it directly.
//
// What a copy may lack after it fails (DESIGN invariant 5, and the issue's
// failure 2): every change in flight, and every change it acknowledged since
// its last completed FLUSH — a copy that loses power comes back without
// those, because replicas acknowledge writes from the page cache.
import { DirtyMap } from './dirty-map';
import { invariant } from '../util/errors';

/**
 * in-sync: holds every acknowledged change; rebuilding: receives every change
 * and is being filled; failing: failed, not yet recorded stale (acks wait);
 * stale: recorded stale, receives nothing, never read.
 */
export type CopyPhase = 'in-sync' | 'rebuilding' | 'failing' | 'stale';

/** The only moves a copy makes; anything else is a bug and stops the engine. */
export const COPY_TRANSITIONS: Readonly<Record<CopyPhase, readonly CopyPhase[]>> = {
  'in-sync': ['failing'],
  rebuilding: ['in-sync', 'failing'],
  failing: ['stale'],
  stale: ['rebuilding'],
};

export interface CopyInit {
  id: string;
  nodeId: string;
  local: boolean;
  phase: 'in-sync' | 'stale';
  /** Stale copies: the regions recorded as missed (absent: only a full copy makes it whole). */
  missed?: DirtyMap;
}

export interface CopyView {
  readonly id: string;
  readonly nodeId: string;
  readonly local: boolean;
  readonly phase: CopyPhase;
  /** Whether the copy's missed map is known (false: only a full copy makes it whole). */
  readonly hasMissedMap: boolean;
}

interface Copy {
  id: string;
  nodeId: string;
  local: boolean;
  phase: CopyPhase;
  /** Regions the copy may lack; kept for every copy that is not in-sync. */
  missed: DirtyMap | undefined;
  fullCopyNeeded: boolean;
  /** Regions of changes it applied that no completed FLUSH on it covers yet. */
  unflushed: DirtyMap;
}

export interface ChangeTicket {
  readonly seq: number;
  readonly offset: number;
  readonly length: number;
  /** Copies the change is sent to. */
  readonly targets: readonly string[];
  /** The missed maps must be stored up to this version before the change is acknowledged. */
  readonly missedVersion: number;
  /** FUA: a copy that applied it has it on disk, so no later FLUSH is needed for it. */
  readonly durable: boolean;
}

export interface FlushTicket {
  readonly seq: number;
  readonly targets: readonly string[];
}

/** Bound on changes and flushes in flight at once (the NBD servers cap their queues far below it). */
export const MAX_IN_FLIGHT = 1 << 16;

export class CopySet {
  private readonly copies = new Map<string, Copy>();
  private readonly changes = new Map<number, ChangeTicket>();
  /** Per flush in flight: per target, the regions that flush makes durable there. */
  private readonly flushes = new Map<number, Map<string, DirtyMap>>();
  private nextSeq = 1;
  /** Bumped whenever a missed map gains a region; the engine stores maps by version. */
  private missedVersionNow = 0;

  constructor(
    readonly volumeBytes: number,
    copies: readonly CopyInit[],
  ) {
    for (const c of copies) {
      invariant(!this.copies.has(c.id), `copy ${c.id} listed twice`);
      this.copies.set(c.id, {
        id: c.id,
        nodeId: c.nodeId,
        local: c.local,
        phase: c.phase,
        missed: c.phase === 'stale' ? (c.missed ?? new DirtyMap(volumeBytes)) : undefined,
        fullCopyNeeded: c.phase === 'stale' && !c.missed,
        unflushed: new DirtyMap(volumeBytes),
      });
    }
  }

  // ---- views

  get missedVersion(): number {
    return this.missedVersionNow;
  }

  list(): CopyView[] {
    return [...this.copies.values()].map((c) => this.view(c));
  }

  get(id: string): CopyView | undefined {
    const c = this.copies.get(id);
    return c && this.view(c);
  }

  /** Copies that receive changes: those that are or are becoming whole. */
  writeTargets(): string[] {
    return [...this.copies.values()].filter((c) => c.phase === 'in-sync' || c.phase === 'rebuilding').map((c) => c.id);
  }

  /** Only an in-sync copy is read: the local one for locality, else the first. */
  readSource(exclude: ReadonlySet<string> = new Set()): string | undefined {
    let first: string | undefined;
    for (const c of this.copies.values()) {
      if (c.phase !== 'in-sync' || exclude.has(c.id)) continue;
      if (c.local) return c.id;
      first ??= c.id;
    }
    return first;
  }

  inSyncCount(): number {
    let n = 0;
    for (const c of this.copies.values()) if (c.phase === 'in-sync') n++;
    return n;
  }

  /** Copies that failed and are not yet recorded stale: acknowledgements wait for them. */
  failingIds(): string[] {
    return [...this.copies.values()].filter((c) => c.phase === 'failing').map((c) => c.id);
  }

  /**
   * The missed map of every copy that is not in-sync, as it should be stored
   * now; a copy that needs a full copy is stored as missing everything.
   */
  missedMaps(): Map<string, DirtyMap> {
    const out = new Map<string, DirtyMap>();
    for (const c of this.copies.values()) {
      if (!c.missed) continue;
      if (!c.fullCopyNeeded) out.set(c.id, c.missed);
      else {
        const all = new DirtyMap(this.volumeBytes);
        all.mark(0, this.volumeBytes);
        out.set(c.id, all);
      }
    }
    return out;
  }

  /** Regions a rebuild of this copy must bring over (undefined: the whole volume). */
  regionsToRebuild(id: string): Array<{ offset: number; length: number }> | undefined {
    const c = this.must(id);
    invariant(c.phase === 'rebuilding', `copy ${id} is not rebuilding`);
    return c.fullCopyNeeded ? undefined : c.missed!.ranges();
  }

  // ---- changes (write, trim, write-zeroes)

  /** A change is about to be sent. Stale and failing copies miss it: their maps gain its range. */
  beginChange(offset: number, length: number, durable = false): ChangeTicket {
    invariant(this.changes.size < MAX_IN_FLIGHT, 'too many changes in flight');
    invariant(offset >= 0 && length > 0 && offset + length <= this.volumeBytes, `change [${offset}, +${length}) outside the volume`);
    for (const c of this.copies.values()) {
      if (c.missed && (c.phase === 'stale' || c.phase === 'failing') && c.missed.mark(offset, length)) this.missedVersionNow++;
    }
    const ticket: ChangeTicket = { seq: this.nextSeq++, offset, length, targets: this.writeTargets(), missedVersion: this.missedVersionNow, durable };
    this.changes.set(ticket.seq, ticket);
    return ticket;
  }

  /** A target applied the change: unless it was FUA, it is in that copy's page cache, not yet durable. */
  changeApplied(ticket: ChangeTicket, id: string): void {
    const c = this.copies.get(id);
    if (!c || ticket.durable || (c.phase !== 'in-sync' && c.phase !== 'rebuilding')) return;
    c.unflushed.mark(ticket.offset, ticket.length);
  }

  endChange(ticket: ChangeTicket): void {
    invariant(this.changes.delete(ticket.seq), `change ${ticket.seq} ended twice`);
  }

  // ---- flushes

  /** A FLUSH is about to be sent: it makes durable, on each target, what that target applied before now. */
  beginFlush(): FlushTicket {
    invariant(this.flushes.size < MAX_IN_FLIGHT, 'too many flushes in flight');
    const covered = new Map<string, DirtyMap>();
    for (const id of this.writeTargets()) {
      const c = this.copies.get(id)!;
      covered.set(id, c.unflushed);
      c.unflushed = new DirtyMap(this.volumeBytes);
    }
    const seq = this.nextSeq++;
    this.flushes.set(seq, covered);
    return { seq, targets: [...covered.keys()] };
  }

  /** The FLUSH completed on a copy: what it covered there is durable. */
  flushApplied(ticket: FlushTicket, id: string): void {
    this.flushes.get(ticket.seq)?.delete(id);
  }

  /**
   * The FLUSH is over. A target it did not complete on that still gets changes
   * (the last in-sync copy is kept through a failure) has those regions
   * unflushed still: a later power loss there may take them.
   */
  endFlush(ticket: FlushTicket): void {
    const covered = this.flushes.get(ticket.seq);
    invariant(covered, `flush ${ticket.seq} ended twice`);
    this.flushes.delete(ticket.seq);
    for (const [id, regions] of covered) {
      const c = this.copies.get(id);
      if (c && (c.phase === 'in-sync' || c.phase === 'rebuilding')) c.unflushed.union(regions);
    }
  }

  // ---- failures

  /**
   * Copies failed. Each leaves the write targets at once, with a missed map of
   * everything it may lack; the caller records them stale (`recordedStale`)
   * before acknowledging anything. If every in-sync copy failed, one of them
   * (the local one if it is among them) stays in-sync — it may be the only one
   * holding the newest acknowledged data — and the request fails instead
   * (`keptInSync`). Keeping one, not all, matters: a request that timed out may
   * still land later on some copies and not others, and only one in-sync copy
   * cannot disagree with itself; copies being rebuilt fail with it, as they
   * may hold such a change where the kept copy does not.
   */
  fail(ids: readonly string[], fullCopy = false): { failed: string[]; keptInSync: string | undefined } {
    let candidates = ids.map((id) => this.copies.get(id)).filter((c): c is Copy => !!c && (c.phase === 'in-sync' || c.phase === 'rebuilding'));
    const inSyncLeft = [...this.copies.values()].filter((c) => c.phase === 'in-sync' && !candidates.includes(c)).length;
    let keptInSync: string | undefined;
    if (inSyncLeft === 0) {
      const inSync = candidates.filter((c) => c.phase === 'in-sync');
      const keep = inSync.find((c) => c.local) ?? inSync[0];
      if (keep) {
        keptInSync = keep.id;
        candidates = candidates.filter((c) => c !== keep);
        // A copy being filled may have applied a change the kept copy did not
        // (or the reverse): it fails too, and its map takes the changes in
        // flight, so its rebuild copies them again from the kept copy.
        for (const c of this.copies.values()) if (c.phase === 'rebuilding' && !candidates.includes(c)) candidates.push(c);
      }
    }
    for (const c of candidates) {
      const missed = c.missed ?? new DirtyMap(this.volumeBytes);
      missed.union(c.unflushed);
      for (const covered of this.flushes.values()) {
        const m = covered.get(c.id);
        if (m) missed.union(m);
        covered.delete(c.id);
      }
      for (const t of this.changes.values()) missed.mark(t.offset, t.length);
      c.unflushed = new DirtyMap(this.volumeBytes);
      c.missed = missed;
      if (fullCopy) c.fullCopyNeeded = true;
      this.move(c, 'failing');
      this.missedVersionNow++;
    }
    return { failed: candidates.map((c) => c.id), keptInSync };
  }

  /** Every copy that is not whole may lack these ranges too (its map grows; store it before going on). */
  markMissed(ranges: ReadonlyArray<{ offset: number; length: number }>): void {
    for (const c of this.copies.values()) {
      if (!c.missed || (c.phase !== 'stale' && c.phase !== 'failing')) continue;
      for (const r of ranges) if (c.missed.mark(r.offset, r.length)) this.missedVersionNow++;
    }
  }

  /** The failed copies are recorded stale in etcd. */
  recordedStale(ids: readonly string[]): void {
    for (const id of ids) {
      const c = this.must(id);
      if (c.phase === 'failing') this.move(c, 'stale');
    }
  }

  // ---- rebuilds

  /** A stale copy starts receiving every change; its missed map stays until it is whole. A copy known to need a full copy gets one. */
  startRebuild(id: string, full: boolean): void {
    const c = this.must(id);
    this.move(c, 'rebuilding');
    if (full) c.fullCopyNeeded = true;
    c.unflushed = new DirtyMap(this.volumeBytes);
  }

  /** A copy placed new by the controller (not yet known here): it starts rebuilding in full. */
  addForRebuild(init: { id: string; nodeId: string; local: boolean }): void {
    invariant(!this.copies.has(init.id), `copy ${init.id} is already in the set`);
    this.copies.set(init.id, {
      ...init,
      phase: 'rebuilding',
      missed: new DirtyMap(this.volumeBytes),
      fullCopyNeeded: true,
      unflushed: new DirtyMap(this.volumeBytes),
    });
  }

  /** The rebuilt copy is recorded in-sync: it is read from now on. */
  rebuilt(id: string): void {
    const c = this.must(id);
    this.move(c, 'in-sync');
    c.missed = undefined;
    c.fullCopyNeeded = false;
  }

  /** The copy left the volume's set (the controller dropped it). Never the last in-sync one. */
  remove(id: string): void {
    const c = this.copies.get(id);
    if (!c) return;
    invariant(c.phase !== 'in-sync' || this.inSyncCount() > 1, `removing ${id}, the last in-sync copy`);
    this.copies.delete(id);
    for (const covered of this.flushes.values()) covered.delete(id);
  }

  // ---- internals

  private move(c: Copy, to: CopyPhase): void {
    invariant(COPY_TRANSITIONS[c.phase].includes(to), `copy ${c.id} cannot go from ${c.phase} to ${to}`);
    invariant(c.phase !== 'in-sync' || this.inSyncCount() > 1, `copy ${c.id} is the last in-sync copy`);
    c.phase = to;
  }

  private must(id: string): Copy {
    const c = this.copies.get(id);
    invariant(c, `no copy ${id} in the set`);
    return c;
  }

  private view(c: Copy): CopyView {
    return { id: c.id, nodeId: c.nodeId, local: c.local, phase: c.phase, hasMissedMap: !c.fullCopyNeeded };
  }
}
