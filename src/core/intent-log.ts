// The write-intent log of one attached volume (DRBD's activity log is the
// model): the coarse extents where the in-sync copies may disagree because a
// change was sent to some of them and maybe not to others, or applied and not
// yet flushed. An extent is recorded in etcd before the first change to it is
// sent and dropped only when nothing is in flight there and a completed FLUSH
// covers every change made to it. A new owner reconciles the recorded extents
// across the in-sync copies before it serves any I/O, so an owner that dies
// mid-write never leaves copies that read differently.
import { invariant } from '../util/errors';

export const INTENT_EXTENT_BYTES = 4 * 1024 * 1024;
/** Bound on extents recorded at once; a write beyond it waits for a flush. */
export const INTENT_EXTENT_CAP = 256;

interface Extent {
  inFlight: number;
  /** Flush generation current when a change here last completed. */
  stamp: number;
}

export class IntentLog {
  private readonly extents = new Map<number, Extent>();
  /** Generation of the next FLUSH to begin; a change completed now is covered by it. */
  private flushGen = 1;
  /** Every change stamped at or below it is covered by a completed FLUSH. */
  private flushedGen = 0;
  /** Bumped whenever the stored record must change before the caller goes on. */
  private versionNow = 0;

  constructor(
    readonly volumeBytes: number,
    readonly extentBytes = INTENT_EXTENT_BYTES,
    readonly cap = INTENT_EXTENT_CAP,
    recorded: readonly number[] = [],
  ) {
    invariant(extentBytes > 0 && cap > 0, 'intent log needs a positive extent size and cap');
    // Never evicted by a flush: only reconciliation lets them go.
    for (const e of recorded) this.extents.set(e, { inFlight: 0, stamp: Number.MAX_SAFE_INTEGER });
  }

  /** Version the stored record must reach before a change needing it may be sent. */
  get version(): number {
    return this.versionNow;
  }

  /** Extents to store now (those active, in ascending order). */
  recorded(): number[] {
    return [...this.extents.keys()].sort((a, b) => a - b);
  }

  extentsOf(offset: number, length: number): number[] {
    const out: number[] = [];
    for (let e = Math.floor(offset / this.extentBytes); e * this.extentBytes < offset + length; e++) out.push(e);
    return out;
  }

  /** Byte range of an extent, clipped to the volume. */
  rangeOf(extent: number): { offset: number; length: number } {
    const offset = extent * this.extentBytes;
    return { offset, length: Math.min(this.extentBytes, this.volumeBytes - offset) };
  }

  /**
   * A change to [offset, +length) is about to be sent. Returns the version the
   * stored record must reach first, or undefined if the cap leaves no room:
   * then the caller flushes (which lets extents go) and asks again.
   */
  begin(offset: number, length: number): number | undefined {
    const wanted = this.extentsOf(offset, length);
    const fresh = wanted.filter((e) => !this.extents.has(e));
    if (fresh.length > 0) {
      this.evictIdle(wanted);
      if (this.extents.size + fresh.length > this.cap) return undefined;
      for (const e of fresh) this.extents.set(e, { inFlight: 0, stamp: 0 });
      this.versionNow++;
    }
    for (const e of wanted) this.extents.get(e)!.inFlight++;
    return this.versionNow;
  }

  /**
   * The change ended (applied everywhere or its failed copies recorded stale).
   * A durable (FUA) change needs no later flush: the extent's stamp stays.
   */
  end(offset: number, length: number, durable = false): void {
    for (const e of this.extentsOf(offset, length)) {
      const x = this.extents.get(e);
      invariant(x && x.inFlight > 0, `intent extent ${e} ended more often than begun`);
      x.inFlight--;
      if (!durable) x.stamp = this.flushGen;
    }
  }

  /** A FLUSH begins: returns its generation. */
  beginFlush(): number {
    return this.flushGen++;
  }

  /** A FLUSH completed on every write target. */
  flushed(gen: number): void {
    if (gen > this.flushedGen) this.flushedGen = gen;
  }

  /** Whether a flush would let some extent go (so a full log can make room). */
  hasUnflushed(): boolean {
    for (const x of this.extents.values()) if (x.inFlight === 0 && x.stamp > this.flushedGen) return true;
    return false;
  }

  /** Forget what a previous owner recorded, once it is reconciled (the stored record must be rewritten). */
  clearReconciled(extents: readonly number[]): void {
    for (const e of extents) {
      const x = this.extents.get(e);
      if (x && x.inFlight === 0) this.extents.delete(e);
    }
    this.versionNow++;
  }

  /** Let settled extents go, except those about to be used again. */
  private evictIdle(keep: readonly number[]): void {
    for (const [e, x] of this.extents) if (x.inFlight === 0 && x.stamp <= this.flushedGen && !keep.includes(e)) this.extents.delete(e);
  }
}
