// Reusable I/O buffers for the data path. Every Buffer of 4 KiB or more that
// Node allocates is its own ArrayBuffer, counted by V8 as external memory;
// at gigabytes per second that churn triggers a full mark-compact every few
// tens of milliseconds, and on a grown heap those collections took more CPU
// than the I/O itself (1 MiB reads fell from 2.2 GB/s to 0.7 GB/s once a 4 KiB
// job had grown the heap). Buffers taken here go back into a free list when
// their user is done with them.
//
// Only code that is certain no one else still holds a buffer gives it back;
// a buffer that is never given back is simply collected. `give` ignores
// buffers that did not come from the pool, so a consumer may hand back
// whatever it was given without knowing where it came from.
import { invariant } from './errors';

/** Smallest pooled size: below this, Node's own 8 KiB slab serves small buffers cheaply. */
const MIN_CLASS = 4096;
const MAX_CLASS = 32 * 1024 * 1024;

export class BufferPool {
  /** Free backing stores per size class (a power of two). */
  private readonly free = new Map<number, ArrayBuffer[]>();
  /** Backing stores handed out and not given back: `give` accepts only these. */
  private readonly lent = new WeakSet<ArrayBuffer>();
  private freeBytes = 0;

  /** @param maxFreeBytes bytes kept in the free lists at most; beyond that, given buffers are left to the GC. */
  constructor(private readonly maxFreeBytes: number) {}

  /** A buffer of exactly `length` bytes with unspecified contents. */
  take(length: number): Buffer {
    if (length < MIN_CLASS || length > MAX_CLASS) return Buffer.allocUnsafe(length);
    const size = sizeClass(length);
    const store = this.free.get(size)?.pop();
    let backing: ArrayBuffer;
    if (store) {
      this.freeBytes -= size;
      backing = store;
    } else {
      backing = new ArrayBuffer(size);
    }
    this.lent.add(backing);
    return Buffer.from(backing, 0, length);
  }

  /**
   * Returns a buffer from `take` for reuse. The caller must hold the only
   * remaining reference to its memory. Buffers from elsewhere are ignored.
   */
  give(buf: Buffer | undefined): void {
    if (!buf) return;
    const backing = buf.buffer;
    if (!(backing instanceof ArrayBuffer) || !this.lent.has(backing)) return;
    invariant(buf.byteOffset === 0, 'a pooled buffer was given back through a view');
    this.lent.delete(backing);
    const size = backing.byteLength;
    if (this.freeBytes + size > this.maxFreeBytes) return;
    let list = this.free.get(size);
    if (!list) {
      list = [];
      this.free.set(size, list);
    }
    list.push(backing);
    this.freeBytes += size;
  }

  /** Bytes sitting in the free lists. */
  get idleBytes(): number {
    return this.freeBytes;
  }
}

function sizeClass(length: number): number {
  let size = MIN_CLASS;
  while (size < length) size *= 2;
  return size;
}

/** The data path's shared pool: replica reads take from it, NBD and replica replies give back once sent. */
export const ioBuffers = new BufferPool(64 * 1024 * 1024);
