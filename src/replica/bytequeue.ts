// A FIFO of received socket chunks that frames can be cut from without
// concatenating the stream: a frame that lies within one chunk is returned
// as a view of it (no copy); only frames spanning chunks are copied.

export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // bytes of chunks[0] already consumed
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
   * The first `n` bytes as one contiguous buffer, without consuming them.
   * Requires length >= n. Merges the chunks involved, so peeking the same
   * header again is free.
   */
  peek(n: number): Buffer {
    const first = this.chunks[0];
    if (first.length - this.head >= n) return first.subarray(this.head, this.head + n);
    const merged = this.copyOut(n);
    // Replace the merged prefix by one chunk holding it.
    this.dropBytes(n);
    if (this.head > 0) this.chunks[0] = this.chunks[0].subarray(this.head);
    this.chunks.unshift(merged);
    this.head = 0;
    this.total += n;
    return merged;
  }

  /** Removes and returns the first `n` bytes (requires length >= n). */
  take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0];
    if (first.length - this.head >= n) {
      const view = first.subarray(this.head, this.head + n);
      this.dropBytes(n);
      return view;
    }
    const copy = this.copyOut(n);
    this.dropBytes(n);
    return copy;
  }

  /** Discards up to `n` bytes; returns how many were discarded. */
  skip(n: number): number {
    const k = Math.min(n, this.total);
    this.dropBytes(k);
    return k;
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

  private dropBytes(n: number): void {
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
