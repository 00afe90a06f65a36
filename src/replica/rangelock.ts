// Orders operations on byte ranges of one replica by arrival. Two pwrites to
// overlapping ranges issued concurrently land in whatever order the threadpool
// runs them; the replication engine relies on "later request wins", and a
// rebuild copy must not overwrite a newer write. So an operation waits for
// every earlier operation it conflicts with (overlapping, and at least one of
// the two writes); operations on disjoint ranges, and overlapping reads, run
// concurrently.
import { invariant } from '../util/errors';

export type LockMode = 'shared' | 'exclusive';

interface Entry {
  start: number;
  end: number;
  exclusive: boolean;
  released: boolean;
  /** Made only when a later operation has to wait for this one (most never do). */
  done: Promise<void> | undefined;
  resolveDone: (() => void) | undefined;
}

export interface RangeLease {
  /** Resolves when every earlier conflicting operation has released. */
  readonly ready: Promise<void>;
  /** Releases the range; later conflicting operations may proceed. Idempotent. */
  release(): void;
}

const READY: Promise<void> = Promise.resolve();

export class RangeLock {
  // Held or waiting entries, in arrival order. Kept short by the servers'
  // in-flight caps, so a linear scan beats an interval tree here.
  private readonly entries: Entry[] = [];

  get size(): number {
    return this.entries.length;
  }

  /**
   * Enqueues an operation on [offset, offset+length). Call synchronously in
   * arrival order; the returned lease is `ready` once all earlier conflicting
   * operations have released.
   */
  acquire(offset: number, length: number, mode: LockMode): RangeLease {
    invariant(length >= 0 && offset >= 0, 'range lock on a negative range');
    const start = offset;
    const end = offset + Math.max(length, 1);
    const exclusive = mode === 'exclusive';
    const waits = this.conflicts(start, end, exclusive);
    const entry: Entry = { start, end, exclusive, released: false, done: undefined, resolveDone: undefined };
    this.entries.push(entry);
    const ready = waits.length === 0 ? READY : waits.length === 1 ? waits[0] : Promise.all(waits).then(() => undefined);
    return { ready, release: () => this.release(entry) };
  }

  /**
   * Resolves once every operation that arrived before this call and writes
   * to [offset, offset+length) has released; takes no lock itself (FLUSH uses
   * it over the whole replica so that it covers writes that arrived earlier).
   */
  barrier(offset: number, length: number): Promise<void> {
    const waits = this.conflicts(offset, offset + Math.max(length, 1), false);
    return waits.length === 0 ? READY : Promise.all(waits).then(() => undefined);
  }

  private conflicts(start: number, end: number, exclusive: boolean): Promise<void>[] {
    const waits: Promise<void>[] = [];
    for (const e of this.entries) {
      if ((exclusive || e.exclusive) && e.start < end && start < e.end) waits.push((e.done ??= new Promise<void>((resolve) => (e.resolveDone = resolve))));
    }
    return waits;
  }

  private release(entry: Entry): void {
    if (entry.released) return;
    entry.released = true;
    const i = this.entries.indexOf(entry);
    invariant(i >= 0, 'released range lock entry is not held');
    this.entries.splice(i, 1);
    entry.resolveDone?.();
  }
}
