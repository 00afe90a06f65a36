// A FIFO of received socket chunks that messages are cut from without
// concatenating the stream. Shared by the NBD server and the replica protocol.
//
// Chunks come in two kinds. An owned chunk is ours to keep: a message that
// lies within it comes back as a view (no copy). A borrowed chunk is the
// socket's reused read buffer (see socket-input.ts), valid only until
// `settle()`: messages cut from it are copies, and `settle()` copies whatever
// is left of it. Large messages are gathered into a pooled buffer of their
// own as they arrive (`takeWhole`), so neither kind piles up behind them.
import { invariant } from './errors';
import { ioBuffers } from './buffer-pool';

/** Messages at least this large are gathered as they arrive instead of waiting in the queue whole. */
const GATHER_MIN = 64 * 1024;

export class ByteQueue {
  private readonly chunks: Buffer[] = [];
  /** Bytes of chunks[0] already consumed. */
  private head = 0;
  private total = 0;
  /** The chunk (always the last pushed) that must not outlive the current read callback. */
  private borrowed: Buffer | undefined;
  /** A large message being gathered by `takeWhole`, and how much of it has arrived. */
  private gathering: Buffer | undefined;
  private gathered = 0;

  /** Bytes queued (not counting a message being gathered). */
  get length(): number {
    return this.total;
  }

  /** Bytes already moved into a message that `takeWhole` is still gathering. */
  get gatheringBytes(): number {
    return this.gathering === undefined ? 0 : this.gathered;
  }

  /** Queue a chunk that stays valid for as long as the queue needs it. */
  push(chunk: Buffer): void {
    invariant(this.borrowed === undefined, 'ByteQueue.push while a borrowed chunk is unsettled');
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** Queue a chunk that is valid only until `settle()` (a reused read buffer). */
  pushBorrowed(chunk: Buffer): void {
    this.push(chunk);
    if (chunk.length > 0) this.borrowed = chunk;
  }

  /**
   * Where the next received bytes may be read to directly: the rest of a
   * message being gathered, when nothing is queued ahead of it. Saves copying
   * most of a large payload a second time.
   */
  directTarget(): Buffer | undefined {
    if (this.gathering === undefined || this.total > 0) return undefined;
    return this.gathering.subarray(this.gathered);
  }

  /**
   * Bytes the socket just received: either into `directTarget()` (already in
   * place) or into the reused read buffer (borrowed until `settle()`).
   */
  pushReceived(chunk: Buffer): void {
    const target = this.gathering;
    const inPlace =
      target !== undefined && this.total === 0 && chunk.buffer === target.buffer && chunk.byteOffset === target.byteOffset + this.gathered;
    if (!inPlace) {
      this.pushBorrowed(chunk);
      return;
    }
    invariant(this.gathered + chunk.length <= target.length, 'received past the end of the message being gathered');
    this.gathered += chunk.length;
  }

  /** A chunk from a socket: `borrowed` if it is the reused read buffer or a direct target (see pushReceived). */
  receive(chunk: Buffer, borrowed: boolean): void {
    if (borrowed) this.pushReceived(chunk);
    else this.push(chunk);
  }

  /** The borrowed chunk is about to be overwritten: copy what is left of it. */
  settle(): void {
    const chunk = this.borrowed;
    if (chunk === undefined) return;
    this.borrowed = undefined;
    const last = this.chunks.length - 1;
    if (last < 0 || this.chunks[last] !== chunk) return; // consumed entirely
    const start = last === 0 ? this.head : 0;
    this.chunks[last] = Buffer.from(chunk.subarray(start));
    if (last === 0) this.head = 0;
  }

  /**
   * The first `n` bytes as one contiguous buffer, without consuming them
   * (requires length >= n). Valid only until the queue changes; parse it at once.
   */
  peek(n: number): Buffer {
    if (n > this.total) throw new RangeError(`peek(${n}) with only ${this.total} bytes queued`);
    const first = this.chunks[0];
    if (first.length - this.head >= n) return first.subarray(this.head, this.head + n);
    const merged = this.copyOut(n, false);
    this.drop(n);
    if (this.head > 0) this.chunks[0] = this.chunks[0].subarray(this.head);
    this.chunks.unshift(merged);
    this.head = 0;
    this.total += n;
    return merged;
  }

  /** Remove and return the next `n` bytes (requires length >= n). */
  take(n: number): Buffer {
    if (n > this.total) throw new RangeError(`take(${n}) with only ${this.total} bytes queued`);
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0];
    if (first !== this.borrowed && first.length - this.head >= n) {
      const view = first.subarray(this.head, this.head + n);
      this.drop(n);
      return view;
    }
    const copy = this.copyOut(n, true);
    this.drop(n);
    return copy;
  }

  /**
   * The next `n` bytes once they have all arrived, else undefined; call again
   * (with the same `n`) as more arrive. A large message is moved into a
   * pooled buffer of its own piece by piece, so a borrowed chunk needs no copy
   * on settle and owned chunks are released at once.
   */
  takeWhole(n: number): Buffer | undefined {
    let target = this.gathering;
    if (target === undefined) {
      if (this.total >= n) return this.take(n);
      if (n < GATHER_MIN) return undefined;
      target = this.gathering = ioBuffers.take(n);
      this.gathered = 0;
    }
    invariant(target.length === n, 'takeWhole called with a different length while gathering');
    this.gathered += this.takeInto(target, this.gathered);
    if (this.gathered < n) return undefined;
    this.gathering = undefined;
    return target;
  }

  /** Move up to `target.length - at` queued bytes into `target` at `at`; returns how many were moved. */
  takeInto(target: Buffer, at: number): number {
    const n = Math.min(target.length - at, this.total);
    let filled = 0;
    let start = this.head;
    for (const chunk of this.chunks) {
      if (filled === n) break;
      const k = Math.min(chunk.length - start, n - filled);
      chunk.copy(target, at + filled, start, start + k);
      filled += k;
      start = 0;
    }
    this.drop(n);
    return n;
  }

  /** Discard up to `n` bytes; returns how many were discarded. */
  skip(n: number): number {
    const k = Math.min(n, this.total);
    this.drop(k);
    return k;
  }

  clear(): void {
    this.chunks.length = 0;
    this.head = 0;
    this.total = 0;
    this.gathering = undefined;
  }

  /** `pooled` only for a buffer handed over whole to the caller: views of it must never exist elsewhere. */
  private copyOut(n: number, pooled: boolean): Buffer {
    const out = pooled ? ioBuffers.take(n) : Buffer.allocUnsafe(n);
    let filled = 0;
    let start = this.head;
    for (const chunk of this.chunks) {
      const k = Math.min(chunk.length - start, n - filled);
      chunk.copy(out, filled, start, start + k);
      filled += k;
      start = 0;
      if (filled === n) break;
    }
    return out;
  }

  private drop(n: number): void {
    this.total -= n;
    while (n > 0) {
      const avail = this.chunks[0].length - this.head;
      if (n < avail) {
        this.head += n;
        return;
      }
      n -= avail;
      this.chunks.shift();
      this.head = 0;
    }
  }
}
