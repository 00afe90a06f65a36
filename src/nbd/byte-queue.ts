// A FIFO of received socket chunks. Messages are cut out of it without
// copying when they lie inside one chunk (the common case for headers and
// small payloads); only a message that spans chunks is copied, once.

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

  /** Remove and return the next `n` bytes; the caller checked `length >= n`. */
  take(n: number): Buffer {
    if (n > this.total) throw new RangeError(`take(${n}) with only ${this.total} bytes queued`);
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0];
    const inFirst = first.length - this.head;
    if (n <= inFirst) {
      const out = first.subarray(this.head, this.head + n);
      this.consumeFromFirst(n, inFirst);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.chunks[0];
      const available = chunk.length - this.head;
      const count = Math.min(available, n - filled);
      chunk.copy(out, filled, this.head, this.head + count);
      filled += count;
      this.consumeFromFirst(count, available);
    }
    return out;
  }

  /** Move up to `target.length - at` queued bytes into `target` at `at`; returns how many were moved. */
  takeInto(target: Buffer, at: number): number {
    let moved = 0;
    const wanted = target.length - at;
    while (moved < wanted && this.chunks.length > 0) {
      const chunk = this.chunks[0];
      const available = chunk.length - this.head;
      const count = Math.min(available, wanted - moved);
      chunk.copy(target, at + moved, this.head, this.head + count);
      this.consumeFromFirst(count, available);
      moved += count;
    }
    return moved;
  }

  /** Drop up to `n` bytes; returns how many were dropped. */
  skip(n: number): number {
    let dropped = 0;
    while (dropped < n && this.chunks.length > 0) {
      const available = this.chunks[0].length - this.head;
      const count = Math.min(available, n - dropped);
      this.consumeFromFirst(count, available);
      dropped += count;
    }
    return dropped;
  }

  clear(): void {
    this.chunks.length = 0;
    this.head = 0;
    this.total = 0;
  }

  private consumeFromFirst(count: number, available: number): void {
    this.total -= count;
    if (count === available) {
      this.chunks.shift();
      this.head = 0;
    } else {
      this.head += count;
    }
  }
}
