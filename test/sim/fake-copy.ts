// A simulated copy: an image with a page cache (what reads see) over a disk
// (what survives power loss), the replica's epoch fence, and channels to it
// that behave like a replica connection — each request travels with a seeded
// delay, a restarted copy breaks every connection made before, and a cut link
// holds what is sent (the engine's timeout decides) until it heals; then TCP's
// retransmission delivers it, after a backoff of its own, so a newer
// connection's requests can arrive first. The replica's session fence (a
// connection superseded by a newer OPEN may not change data) is modelled too.
import { ReplicaConnectionError, ReplicaRequestError } from '../../src/replica/ops';
import type { ReplicaChannel } from '../../src/engine/engine';
import type { Rng, SimClock } from './sim-clock';

const PAGE = 4096;

export class FakeCopy {
  /** What a read returns now. */
  readonly cache: Buffer;
  /** What a power loss leaves. */
  readonly disk: Buffer;
  /** Pages written (not trimmed): the allocation map, as reads see it and as on disk. */
  readonly allocated: Uint8Array;
  readonly allocatedOnDisk: Uint8Array;
  epoch = 0;
  up = true;
  /** Pages changed in the cache since the last flush. */
  private readonly unflushed = new Set<number>();
  /** Bumped by every restart: connections from before fail. */
  incarnation = 0;
  /** The incarnation that last opened it (kept on disk with the epoch). */
  openedBy = 0;
  /** Bumped by every OPEN: changes from a connection opened before are refused (src/replica/replica.ts). */
  session = 0;

  constructor(
    readonly id: string,
    readonly size: number,
  ) {
    this.cache = Buffer.alloc(size);
    this.disk = Buffer.alloc(size);
    this.allocated = new Uint8Array(size / PAGE);
    this.allocatedOnDisk = new Uint8Array(size / PAGE);
  }

  /** The process dies; with `powerLoss`, the page cache is lost too. */
  crash(powerLoss: boolean): void {
    this.up = false;
    this.incarnation++;
    if (powerLoss) {
      for (const p of this.unflushed) {
        this.disk.copy(this.cache, p * PAGE, p * PAGE, (p + 1) * PAGE);
        this.allocated[p] = this.allocatedOnDisk[p];
      }
      this.unflushed.clear();
    }
  }

  restart(): void {
    this.up = true;
  }

  flush(): void {
    for (const p of this.unflushed) {
      this.cache.copy(this.disk, p * PAGE, p * PAGE, (p + 1) * PAGE);
      this.allocatedOnDisk[p] = this.allocated[p];
    }
    this.unflushed.clear();
  }

  apply(offset: number, data: Uint8Array | undefined, length: number, fua: boolean): void {
    if (data) this.cache.set(data, offset);
    else this.cache.fill(0, offset, offset + length);
    for (let p = Math.floor(offset / PAGE); p * PAGE < offset + length; p++) {
      this.allocated[p] = data ? 1 : 0;
      this.unflushed.add(p);
    }
    if (fua) this.flush();
  }

  allocMap(offset: number, length: number): Array<{ offset: number; length: number }> {
    const out: Array<{ offset: number; length: number }> = [];
    for (let p = Math.floor(offset / PAGE); p * PAGE < offset + length; p++) {
      if (!this.allocated[p]) continue;
      const last = out[out.length - 1];
      if (last && last.offset + last.length === p * PAGE) last.length += PAGE;
      else out.push({ offset: p * PAGE, length: PAGE });
    }
    return out;
  }
}

export interface LinkState {
  /** A cut link: requests wait (TCP retransmits them), nothing answers. */
  cut: boolean;
  /** Connections with requests held by the cut, resumed when it heals. */
  held: Array<() => void>;
}

export function newLink(): LinkState {
  return { cut: false, held: [] };
}

export function healLink(link: LinkState): void {
  link.cut = false;
  for (const resume of link.held.splice(0)) resume();
}

/** Set SIM_NO_SESSION_FENCE=1 to see the simulation fail without the replica's session fence. */
const SESSION_FENCE = !process.env.SIM_NO_SESSION_FENCE;

/** One connection from an owner to a copy, made at the copy's current incarnation. */
export class FakeChannel implements ReplicaChannel {
  private readonly incarnation: number;
  private closed = false;
  /** A connection is a byte stream: requests arrive, and answers return, in the order sent. */
  private lastArrival = 0;
  private lastAnswer = 0;
  /** The copy's session this connection opened (changes from it are refused once another OPEN came). */
  private session: number | undefined;
  /** Requests sent while the link was cut, in order. */
  private held: Array<() => void> = [];

  constructor(
    private readonly copy: FakeCopy,
    private readonly link: LinkState,
    private readonly clock: SimClock,
    private readonly rng: Rng,
  ) {
    this.incarnation = copy.incarnation;
  }

  open(id: string, epoch: number): Promise<unknown> {
    return this.request('OPEN', id, epoch, () => {
      if (epoch < this.copy.epoch) throw this.stale('OPEN', id, epoch);
      const restarted = this.copy.openedBy !== this.copy.incarnation;
      // Durable: the replica writes its meta before answering.
      this.copy.epoch = epoch;
      this.copy.openedBy = this.copy.incarnation;
      this.session = ++this.copy.session;
      return { restarted };
    }, true);
  }

  read(id: string, epoch: number, offset: number, length: number): Promise<Buffer> {
    return this.request('READ', id, epoch, () => Buffer.from(this.copy.cache.subarray(offset, offset + length)));
  }

  write(id: string, epoch: number, offset: number, data: Uint8Array, opts?: { fua?: boolean }): Promise<void> {
    const copyOfData = Buffer.from(data);
    return this.request('WRITE', id, epoch, () => this.change('WRITE', id, () => this.copy.apply(offset, copyOfData, copyOfData.length, opts?.fua === true)));
  }

  flush(id: string, epoch: number): Promise<void> {
    return this.request('FLUSH', id, epoch, () => this.copy.flush());
  }

  trim(id: string, epoch: number, offset: number, length: number, opts?: { fua?: boolean }): Promise<void> {
    return this.request('TRIM', id, epoch, () => this.change('TRIM', id, () => this.copy.apply(offset, undefined, length, opts?.fua === true)));
  }

  writeZeroes(id: string, epoch: number, offset: number, length: number, opts?: { fua?: boolean }): Promise<void> {
    return this.request('WRITE_ZEROES', id, epoch, () => this.change('WRITE_ZEROES', id, () => this.copy.apply(offset, undefined, length, opts?.fua === true)));
  }

  allocMap(id: string, epoch: number, offset: number, length: number): Promise<Array<{ offset: number; length: number }>> {
    return this.request('ALLOC_MAP', id, epoch, () => this.copy.allocMap(offset, length));
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }

  /** A change of data: refused if another connection opened the copy since this one did. */
  private change(op: string, id: string, apply: () => void): void {
    if (SESSION_FENCE && this.session !== undefined && this.session !== this.copy.session) {
      throw new ReplicaRequestError('ENOTCONN', 0, this.copy.epoch, op, id, 'this connection was superseded by a newer OPEN');
    }
    apply();
  }

  /** A request: travels, is applied if the copy is reachable and the epoch fits, and the answer travels back. */
  private request<T>(op: string, id: string, epoch: number, apply: () => T, isOpen = false): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.closed) return reject(new ReplicaConnectionError('ECONNABORTED', `${op} ${id}: connection closed`));
      const travel = (): void => this.travel(op, id, epoch, apply, isOpen, resolve, reject);
      // Cut: held in the send buffer (even if the caller gives up and closes), retransmitted after the heal.
      if (this.link.cut || this.held.length > 0) return this.hold(travel);
      travel();
    });
  }

  private hold(travel: () => void): void {
    if (this.held.length === 0) {
      this.link.held.push(() => {
        // Retransmission backoff: this connection's requests arrive a while after the heal, in order.
        this.lastArrival = Math.max(this.lastArrival, this.clock.now() + this.rng.int(0, 2000));
        for (const t of this.held.splice(0)) t();
      });
    }
    this.held.push(travel);
  }

  private travel<T>(op: string, id: string, epoch: number, apply: () => T, isOpen: boolean, resolve: (v: T) => void, reject: (err: unknown) => void): void {
    this.lastArrival = Math.max(this.lastArrival, this.clock.now() + this.rng.int(0, 3));
    this.clock.setTimer(this.lastArrival - this.clock.now(), () => {
      if (this.link.cut) return this.hold(() => this.travel(op, id, epoch, apply, isOpen, resolve, reject)); // cut on the way
      if (!this.copy.up || this.copy.incarnation !== this.incarnation) {
        return reject(new ReplicaConnectionError('ECONNRESET', `${op} ${id}: connection broken`));
      }
      let result: T;
      try {
        if (!isOpen && epoch < this.copy.epoch) throw this.stale(op, id, epoch);
        if (!isOpen && epoch > this.copy.epoch) throw new ReplicaRequestError('ENOTCONN', 0, this.copy.epoch, op, id, 'open it at that epoch first');
        result = apply();
      } catch (err) {
        return this.answer(() => reject(err), reject);
      }
      this.answer(() => resolve(result), reject);
    });
  }

  private answer(fn: () => void, reject: (err: unknown) => void): void {
    this.lastAnswer = Math.max(this.lastAnswer, this.clock.now() + this.rng.int(0, 3));
    this.clock.setTimer(this.lastAnswer - this.clock.now(), () => {
      if (this.link.cut) return;
      // The answer of a copy that restarted meanwhile is lost with its connection.
      if (this.copy.incarnation !== this.incarnation) return reject(new ReplicaConnectionError('ECONNRESET', 'connection broken'));
      fn();
    });
  }

  private stale(op: string, id: string, epoch: number): ReplicaRequestError {
    return new ReplicaRequestError('ESTALE', 0, this.copy.epoch, op, id, `epoch ${epoch} is older than ${this.copy.epoch}`);
  }
}
