// A seeded random source and a virtual clock: with them, a simulation run is a
// pure function of its seed. Every delay in the simulated world is a timer on
// this clock; between timers the microtask queue is drained, so promise chains
// in the engine run in the same order every time.
import type { Clock, Timer } from '../../src/util/clock';

/** mulberry32: small, fast, and good enough to pick faults and delays. */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0 || 0x9e3779b9;
  }
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)];
  }
}

interface Pending {
  at: number;
  seq: number;
  fn: () => void;
  cancelled: boolean;
}

const MAX_TIMERS = 1 << 20;

function before(a: Pending, b: Pending): boolean {
  return a.at < b.at || (a.at === b.at && a.seq < b.seq);
}

/** Timers in (time, creation) order: a binary heap, as most timers are cancelled timeouts. */
class TimerHeap {
  private readonly items: Pending[] = [];
  get size(): number {
    return this.items.length;
  }
  peek(): Pending | undefined {
    return this.items[0];
  }
  push(p: Pending): void {
    const h = this.items;
    h.push(p);
    let i = h.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(h[i], h[parent])) break;
      [h[i], h[parent]] = [h[parent], h[i]];
      i = parent;
    }
  }
  pop(): Pending | undefined {
    const h = this.items;
    const top = h[0];
    const last = h.pop();
    if (h.length > 0 && last) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && before(h[l], h[m])) m = l;
        if (r < h.length && before(h[r], h[m])) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m], h[i]];
        i = m;
      }
    }
    return top;
  }
}

export class SimClock implements Clock {
  private time = 0;
  private seq = 0;
  private readonly queue = new TimerHeap();

  now(): number {
    return this.time;
  }

  setTimer(ms: number, fn: () => void): Timer {
    if (this.queue.size >= MAX_TIMERS) throw new Error('simulation: too many timers (a loop that never ends?)');
    const p: Pending = { at: this.time + Math.max(0, ms), seq: this.seq++, fn, cancelled: false };
    this.queue.push(p);
    return { cancel: () => (p.cancelled = true) };
  }

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.setTimer(ms, resolve));
  }

  /** Run timers in time order until `done()` holds or no timer is due by the limit; false if it never held. */
  async runUntil(done: () => boolean, limitMs = Infinity): Promise<boolean> {
    const deadline = this.time + limitMs;
    await drainMicrotasks();
    while (!done()) {
      const next = this.queue.peek();
      if (!next || next.at > deadline) return false;
      this.queue.pop();
      if (next.cancelled) continue;
      this.time = next.at;
      next.fn();
      await drainMicrotasks();
    }
    return true;
  }
}

/** Every promise reaction queued now (and those they queue) runs before this resolves. */
export function drainMicrotasks(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
