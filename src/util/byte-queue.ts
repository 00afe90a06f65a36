// A FIFO of received socket chunks that messages are cut from without
// concatenating the stream: a message that lies within one chunk comes back as
// a view of it (no copy); only a message spanning chunks is copied, once.
// Shared by the NBD server and the replica protocol.

export class ByteQueue {
  private readonly chunks: Buffer[] = [];
  /** Bytes of chunks[0] already consumed. */
  private head = 0;
  private total = 0;

  get length(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /**
   * The first `n` bytes as one contiguous buffer, without consuming them
   * (requires length >= n). The chunks involved are merged, so peeking the
   * same header again is free.
   */
  peek(n: number): Buffer {
    if (n > this.total) throw new RangeError(`peek(${n}) with only ${this.total} bytes queued`);
    const first = this.chunks[0];
    if (first.length - this.head >= n) return first.subarray(this.head, this.head + n);
    const merged = this.copyOut(n);
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
    if (first.length - this.head >= n) {
      const view = first.subarray(this.head, this.head + n);
      this.drop(n);
      return view;
    }
    const copy = this.copyOut(n);
    this.drop(n);
    return copy;
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
  }

  private copyOut(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
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
