// One simulated world for the deterministic simulation: three copies of a
// volume on three nodes, an etcd record with the same guarded semantics as
// src/store/owned.ts, owners that run the real VolumeEngine on a virtual
// clock, a workload that records what was acknowledged, and faults — copy
// crashes (with or without power loss), cut links, an owner that dies, is
// paused past its lease or is cut from etcd — with takeovers, resyncs and
// rebuilds. After each quiet moment and at the end it checks the invariant the
// product exists for: every in-sync copy holds the same bytes, and every read
// returns an acknowledged write (or one that may legitimately be there).
import { DirtyMap, type DirtyMapJson } from '../../src/core/dirty-map';
import { decideRepairs, type RepairCopy } from '../../src/core/repair-policy';
import { copiesAfterOwnerLoss } from '../../src/core/volume-decisions';
import type { ReplicaRecord } from '../../src/core/types';
import { VolumeEngine, type EngineJournal, type EngineReplica, type ReplicaChannel } from '../../src/engine/engine';
import { FencedError } from '../../src/util/errors';
import pino from 'pino';
import { silentLogger, type Logger } from '../../src/util/log';
import { FakeChannel, FakeCopy, healLink, newLink, type LinkState } from './fake-copy';
import { Rng, SimClock } from './sim-clock';

const BLOCK = 4096;
export const VOLUME_BYTES = 4 * 1024 * 1024;
const BLOCKS = VOLUME_BYTES / BLOCK;
const NODES = ['n1', 'n2', 'n3', 'n4'];
const COPY_NODES = ['n1', 'n2', 'n3'];
const LEASE_MS = 3000;
const REPLICA_TIMEOUT_MS = 400;
const MAX_OPS_IN_FLIGHT = 4;
/** With tracing on, changes touching this block are traced. */
const WATCH_BLOCK = Number(process.env.SIM_WATCH_BLOCK ?? -1);

export class SimFailure extends Error {}


/** The volume's etcd record, with the owner's side keys. */
interface Store {
  owner: string | null;
  epoch: number;
  replicas: ReplicaRecord[];
  dirty: Map<string, DirtyMapJson>;
  intents: number[];
}

interface Entry {
  id: number;
  state: 'pending' | 'acked' | 'failed';
  /** Acknowledged, and made durable by FUA or a completed flush since. */
  durable: boolean;
  /** Event counts (see World.seq) when it was issued and acknowledged. */
  issuedAt: number;
  ackedAt: number;
  /** The copies recorded in-sync when it was acknowledged: each holds it. */
  holders: readonly string[];
}

type Gate = 'open' | 'paused' | 'dead';

/** An owner node's process: its engine, and a gate on everything it sends. */
class Owner {
  gate: Gate = 'open';
  ready = false;
  engine!: VolumeEngine;
  readonly held: Array<() => void> = [];
  readonly rebuilding = new Set<string>();
  /** Workload operations this owner has not answered yet. */
  ops = 0;
  constructor(
    readonly node: string,
    readonly epoch: number,
  ) {}
  /** Run `fn` as this process would: now, when it resumes, or never. */
  through<T>(fn: () => Promise<T>): Promise<T> {
    if (this.gate === 'open') return fn();
    if (this.gate === 'dead') return new Promise<T>(() => undefined);
    return new Promise<T>((resolve, reject) => this.held.push(() => void fn().then(resolve, reject)));
  }
  resume(): void {
    if (this.gate !== 'paused') return;
    this.gate = 'open';
    for (const f of this.held.splice(0)) f();
  }
}

export interface RunStats {
  acked: number;
  takeovers: number;
  rebuilds: number;
  faults: number;
  checks: number;
}

export class World {
  readonly clock = new SimClock();
  readonly rng: Rng;
  readonly copies = new Map<string, FakeCopy>();
  private readonly links = new Map<string, LinkState>();
  private readonly etcdCut = new Set<string>();
  private readonly store: Store;
  private owner: Owner | undefined;
  private readonly blocks: Entry[][] = [];
  private nextWriteId = 1;
  /** Counts issues, acks, power losses and owner changes: their order is what the oracle needs. */
  private seq = 0;
  private takingOver = false;
  private workloadOn = true;
  /** Per copy: the ack count when it last lost power (acks up to it may be gone from it). */
  private readonly powerLossSeq = new Map<string, number>();
  /** The ack count when the owner last changed after a crash or pause (the application restarted). */
  private ownerChangeSeq = -1;
  readonly stats: RunStats = { acked: 0, takeovers: 0, rebuilds: 0, faults: 0, checks: 0 };
  readonly trace: string[] = [];
  private failure: string | undefined;

  constructor(readonly seed: number, private readonly traceOn = false) {
    this.rng = new Rng(seed);
    for (const n of COPY_NODES) this.copies.set(`r-${n}`, new FakeCopy(`r-${n}`, VOLUME_BYTES));
    this.store = {
      owner: null,
      epoch: 1,
      replicas: COPY_NODES.map((n) => ({ id: `r-${n}`, nodeId: n, driveId: 'd1', state: 'in-sync' as const, createdAt: '', fullResync: false })),
      dirty: new Map(),
      intents: [],
    };
    for (let b = 0; b < BLOCKS; b++) this.blocks.push([{ id: 0, state: 'acked', durable: true, issuedAt: 0, ackedAt: 0, holders: [] }]);
  }

  private log(msg: string): void {
    if (this.traceOn) this.trace.push(`${String(this.clock.now()).padStart(7)} ${msg}`);
  }

  /** With tracing on, the engine's log lines join the trace (in virtual time). */
  private engineLogger(who: string): Logger {
    if (!this.traceOn) return silentLogger;
    return pino({ level: 'debug', base: null, timestamp: false }, { write: (line: string) => this.log(`${who} engine: ${line.trim()}`) });
  }

  private fail(msg: string): never {
    this.failure ??= msg;
    throw new SimFailure(`seed ${this.seed} at ${this.clock.now()} ms: ${msg}`);
  }

  private link(owner: string, copy: string): LinkState {
    const key = `${owner}->${copy}`;
    let l = this.links.get(key);
    if (!l) this.links.set(key, (l = newLink()));
    return l;
  }

  private copyOnNode(node: string): FakeCopy | undefined {
    return this.copies.get(`r-${node}`);
  }

  private nodeUp(node: string): boolean {
    return this.copyOnNode(node)?.up ?? true;
  }

  // ---- the fake etcd, with owner-guarded writes like src/store/owned.ts

  private etcd<T>(o: Owner, fn: () => T): Promise<T> {
    return o.through(
      () =>
        new Promise<T>((resolve, reject) => {
          this.clock.setTimer(this.rng.int(1, 5), () => {
            if (this.etcdCut.has(o.node)) return reject(new Error('etcd unreachable'));
            try {
              const v = fn();
              // The answer may be lost to a cut that started meanwhile: the write stands.
              this.clock.setTimer(this.rng.int(1, 5), () => (this.etcdCut.has(o.node) ? reject(new Error('etcd answer lost')) : resolve(v)));
            } catch (err) {
              reject(err);
            }
          });
        }),
    );
  }

  private guard(o: Owner): void {
    if (this.store.owner !== o.node || this.store.epoch !== o.epoch) throw new FencedError(`not owner ${o.node}@${o.epoch}`);
  }

  // ---- owners

  private channel(o: Owner, copy: FakeCopy): ReplicaChannel {
    const ch = new FakeChannel(copy, this.link(o.node, copy.id), this.clock, this.rng);
    const gated = {} as ReplicaChannel;
    for (const m of ['open', 'read', 'write', 'flush', 'trim', 'writeZeroes', 'allocMap'] as const) {
      (gated as unknown as Record<string, unknown>)[m] = (...args: unknown[]) => o.through(() => (ch[m] as (...a: unknown[]) => Promise<unknown>)(...args));
    }
    gated.close = () => ch.close();
    return gated;
  }

  /**
   * Attach on `node`: the epoch is bumped in one guarded step, then the engine
   * opens every copy. `deadOwner`: taken from that owner, whose lease is gone,
   * before the controller released it; the attach marks its copies as the
   * release would (src/volumes/host.ts).
   */
  private async takeOver(node: string, deadOwner?: string): Promise<void> {
    if (this.store.owner !== null && this.store.owner !== deadOwner) return;
    if (deadOwner !== undefined && this.store.owner === deadOwner) this.store.replicas = copiesAfterOwnerLoss(this.store.replicas, deadOwner, () => false, '');
    this.store.owner = node;
    this.store.epoch++;
    const o = new Owner(node, this.store.epoch);
    this.owner = o;
    this.stats.takeovers++;
    this.log(`takeover by ${node} at epoch ${o.epoch}; record ${this.store.replicas.map((r) => `${r.id}:${r.state}${r.fullResync ? '(full)' : ''}`).join(' ')} intents [${this.store.intents.join(',')}]`);
    const replicas: EngineReplica[] = this.store.replicas.map((r) => ({
      id: r.id,
      nodeId: r.nodeId,
      state: r.state === 'in-sync' ? 'in-sync' : 'stale',
      local: r.nodeId === node,
      channel: this.channel(o, this.copies.get(r.id)!),
    }));
    const dirtyMaps = new Map<string, DirtyMap>();
    for (const r of this.store.replicas) {
      const json = this.store.dirty.get(r.id);
      if (r.state !== 'in-sync' && !r.fullResync && json) dirtyMaps.set(r.id, DirtyMap.fromJSON(json));
    }
    o.engine = new VolumeEngine({
      volume: 'sim',
      size: VOLUME_BYTES,
      epoch: o.epoch,
      replicas,
      dirtyMaps,
      intents: [...this.store.intents],
      intentExtentBytes: 256 * 1024,
      intentCap: 6,
      replicaTimeoutMs: REPLICA_TIMEOUT_MS,
      reconnect: (id) => Promise.resolve(this.channel(o, this.copies.get(id)!)),
      clock: this.clock,
      logger: this.engineLogger(`${node}@${this.store.epoch}`),
      markStale: (ids) =>
        this.etcd(o, () => {
          this.guard(o);
          this.store.replicas = this.store.replicas.map((r) =>
            ids.includes(r.id) && r.state !== 'stale' ? { ...r, state: 'stale', fullResync: r.state === 'rebuilding' || r.fullResync } : r,
          );
          this.log(`${o.node}@${o.epoch} recorded stale: ${ids.join(',')}`);
        }),
      persistJournal: (j: EngineJournal) =>
        this.etcd(o, () => {
          this.guard(o);
          for (const [id, map] of j.missed) this.store.dirty.set(id, map);
          this.store.intents = [...j.intents];
        }),
    });
    try {
      await o.engine.open();
      o.ready = true;
      this.log(`${node}@${o.epoch} open; engine ${o.engine.replicaStates().map((r) => `${r.id}:${r.state}`).join(' ')}`);
    } catch (err) {
      this.log(`${node}@${o.epoch} could not open: ${(err as Error).message}`);
      if (o.gate === 'open') {
        o.gate = 'dead';
        if (this.store.owner === o.node && this.store.epoch === o.epoch) this.store.owner = null;
      }
    }
  }

  /** The controller after the owner's lease expired: release at a new epoch; copies on dead nodes go stale, in full. */
  private release(): void {
    if (!this.store.owner) return;
    const owner = this.store.owner;
    this.store.owner = null;
    this.store.epoch++;
    // The controller's own rule (src/core/volume-decisions.ts).
    this.store.replicas = copiesAfterOwnerLoss(this.store.replicas, owner, (n) => !this.nodeUp(n), '');
    this.log(`released at epoch ${this.store.epoch}`);
  }

  // ---- repair: the host's policy (src/core/repair-policy.ts), carried out with the engine

  private repair(): void {
    if (this.store.owner === null && !this.takingOver) {
      // Nobody owns the volume (an attach failed): the orchestrator tries again on a live node.
      const next = this.rng.pick(NODES.filter((n) => this.nodeUp(n)));
      this.takingOver = true;
      void this.takeOver(next).finally(() => (this.takingOver = false));
      return;
    }
    const o = this.owner;
    if (!o || !o.ready || o.gate !== 'open') return;
    const copies: RepairCopy[] = this.store.replicas.map((r) => ({ id: r.id, nodeId: r.nodeId, state: r.state, fullResync: r.fullResync }));
    const decisions = decideRepairs({
      copies,
      level: 3,
      nodeUp: (n) => this.nodeUp(n),
      running: o.rebuilding,
      hasMissedMap: (id) => this.store.dirty.has(id),
      engineState: (id) => o.engine.replicaStates().find((r) => r.id === id)?.state,
    });
    for (const d of decisions) {
      const copy = this.copies.get(d.id)!;
      o.rebuilding.add(d.id);
      this.stats.rebuilds++;
      this.log(`${o.node}@${o.epoch} ${d.mode} rebuild of ${d.id}`);
      const nodeId = this.store.replicas.find((r) => r.id === d.id)!.nodeId;
      const target: EngineReplica = { id: d.id, nodeId, state: 'stale', local: nodeId === o.node, channel: this.channel(o, copy) };
      void o.engine
        .rebuild(target, d.mode, () =>
          this.etcd(o, () => {
            this.guard(o);
            this.store.replicas = this.store.replicas.map((r) => (r.id === d.id ? { ...r, state: 'in-sync', fullResync: false } : r));
            this.store.dirty.delete(d.id);
            this.log(`${o.node}@${o.epoch} recorded in-sync: ${d.id}`);
          }),
        )
        .catch((err: unknown) => this.log(`rebuild of ${d.id} ended: ${(err as Error).message}`))
        .finally(() => o.rebuilding.delete(d.id));
    }
  }

  // ---- workload and oracle

  private startOp(): void {
    const o = this.owner;
    if (!o || !o.ready || o.gate !== 'open' || !this.workloadOn || o.ops >= MAX_OPS_IN_FLIGHT) return;
    const kind = this.rng.next();
    o.ops++;
    const done = (): void => {
      o.ops--;
    };
    if (kind < 0.15) {
      const mark = ++this.seq;
      o.engine.flush().then(
        () => {
          if (WATCH_BLOCK >= 0) this.log(`flush acked on ${o.node}@${o.epoch}${o.gate === 'dead' ? ' (dead)' : ''}`);
          if (o.gate !== 'dead') this.markDurable(mark);
          done();
        },
        () => done(),
      );
      return;
    }
    const first = this.rng.int(0, BLOCKS - 1);
    const count = Math.min(this.rng.int(1, 16), BLOCKS - first);
    const fua = this.rng.chance(0.1);
    const id = kind < 0.85 ? this.nextWriteId++ : 0;
    const entries: Entry[] = [];
    const issuedAt = ++this.seq;
    for (let b = first; b < first + count; b++) {
      const e: Entry = { id, state: 'pending', durable: false, issuedAt, ackedAt: 0, holders: [] };
      this.blocks[b].push(e);
      entries.push(e);
    }
    const offset = first * BLOCK;
    const length = count * BLOCK;
    const watched = WATCH_BLOCK >= first && WATCH_BLOCK < first + count;
    if (watched) this.log(`op ${id === 0 ? (kind < 0.93 ? 'trim' : 'zeroes') : `write ${id}`} blocks ${first}+${count}${fua ? ' fua' : ''} on ${o.node}@${o.epoch}`);
    let p: Promise<void>;
    if (id !== 0) p = o.engine.write(offset, blockData(id, count), fua);
    else if (kind < 0.93) p = o.engine.trim(offset, length, fua);
    else p = o.engine.writeZeroes(offset, length, fua, false);
    p.then(
      () => {
        // An answer from a process that died is never seen by anyone.
        if (o.gate === 'dead') return done();
        const seq = ++this.seq;
        const holders = this.store.replicas.filter((r) => r.state === 'in-sync').map((r) => r.id);
        for (const e of entries) {
          e.holders = holders;
          e.state = 'acked';
          e.ackedAt = seq;
          e.durable = fua;
        }
        this.stats.acked++;
        if (watched) this.log(`acked ${id} blocks ${first}+${count}`);
        done();
      },
      (err: unknown) => {
        for (const e of entries) e.state = 'failed';
        if (watched) this.log(`failed ${id} blocks ${first}+${count}: ${(err as Error).message}`);
        done();
      },
    );
  }

  /**
   * Whether an acknowledged write not yet flushed may be gone: every copy
   * holding it lost power since; or one did and the owner changed (the
   * application restarted, as after a power loss of one disk, and the new
   * owner could not tell which copy kept it).
   */
  private mayBeLost(e: Entry): boolean {
    if (e.durable) return false;
    // A power loss after the write was issued may have taken it (applied, not yet flushed).
    const lost = e.holders.filter((h) => (this.powerLossSeq.get(h) ?? -1) > e.issuedAt).length;
    return lost > 0 && (lost === e.holders.length || this.ownerChangeSeq > e.issuedAt);
  }

  private notePowerLoss(copyId: string): void {
    this.powerLossSeq.set(copyId, ++this.seq);
  }

  /** A flush issued when `mark` acks had been seen completed: those writes are durable. */
  private markDurable(mark: number): void {
    for (const hist of this.blocks) for (const e of hist) if (e.state === 'acked' && e.ackedAt < mark && !this.mayBeLost(e)) e.durable = true;
  }

  /** Values a block may read as now: from the newest write that must survive, anything issued after it. */
  private allowed(b: number): Set<number> {
    const hist = this.blocks[b];
    let base = 0;
    for (let i = hist.length - 1; i >= 0; i--) {
      const e = hist[i];
      if (e.state === 'acked' && !this.mayBeLost(e)) {
        base = i;
        break;
      }
    }
    return new Set(hist.slice(base).map((e) => e.id));
  }

  /** After a check read `value` everywhere: that is the block's state now. */
  private settle(b: number, value: number): void {
    const hist = this.blocks[b];
    let i = hist.length - 1;
    while (hist[i].id !== value) i--;
    // Read after the check's flush, with nothing written since: on disk everywhere.
    this.blocks[b] = [{ ...hist[i], state: 'acked', durable: true, issuedAt: this.seq, ackedAt: this.seq }];
  }

  // ---- checks

  /** Quiesce, flush through the owner, then compare every in-sync copy and read every block. */
  private async check(reason: string): Promise<void> {
    const o = this.owner;
    if (!o || !o.ready || o.gate !== 'open') return;
    this.workloadOn = false;
    await this.clock.runUntil(() => o.ops === 0, 60_000);
    if (o.ops !== 0) {
      const e = o.engine as unknown as Record<string, unknown>;
      const lock = e.lock as { size: number };
      this.fail(`operations never completed: ${o.ops} in flight; lock entries ${lock.size}; journal stored ${String(e.journalStored)}; intents ${JSON.stringify([...((e.intents as Record<string, unknown>).extents as Map<number, unknown>)])}; failing ${JSON.stringify((e.copies as { failingIds(): string[] }).failingIds())}; copies ${JSON.stringify(o.engine.replicaStates())}; rebuilds ${JSON.stringify(o.engine.rebuildProgress())}`);
    }
    let flushed = false;
    o.engine.flush().then(
      () => (flushed = true),
      (err: unknown) => this.log(`check flush failed: ${(err as Error).message}`),
    );
    await this.clock.runUntil(() => flushed || o.gate !== 'open' || o.engine.fencedReason !== undefined, 30_000);
    if (!flushed) {
      this.workloadOn = true;
      return;
    }
    this.stats.checks++;
    const inSync = this.store.replicas.filter((r) => r.state === 'in-sync').map((r) => this.copies.get(r.id)!);
    // A rebuilt copy is recorded in-sync in etcd a moment before the engine reads from it; until then it gets every write.
    const engineWhole = new Set(o.engine.replicaStates().filter((r) => r.state === 'in-sync' || r.state === 'rebuilding').map((r) => r.id));
    for (const c of inSync) if (!engineWhole.has(c.id)) this.fail(`${reason}: ${c.id} in-sync in etcd but not in the engine`);
    for (let b = 0; b < BLOCKS; b++) {
      const values = inSync.map((c) => blockValue(c.cache, b));
      for (let i = 1; i < values.length; i++) {
        if (values[i] !== values[0]) this.fail(`${reason}: in-sync copies differ at block ${b}: ${inSync.map((c, k) => `${c.id}=${values[k]}`).join(' ')}`);
      }
      const ok = this.allowed(b);
      if (!ok.has(values[0])) this.fail(`${reason}: block ${b} reads ${values[0]}, expected one of ${[...ok].join(',')}`);
      this.settle(b, values[0]);
    }
    // And through the engine, as an application reads it.
    let read: Buffer | undefined;
    o.engine.read(0, VOLUME_BYTES).then(
      (buf) => (read = buf),
      () => undefined,
    );
    await this.clock.runUntil(() => read !== undefined, 30_000);
    if (read && inSync.length && !read.equals(inSync[0].cache)) this.fail(`${reason}: the engine reads other bytes than its in-sync copies hold`);
    this.log(`check (${reason}) passed; in-sync ${inSync.map((c) => c.id).join(',')}`);
    this.workloadOn = true;
  }

  // ---- faults

  private async fault(): Promise<void> {
    this.stats.faults++;
    const f = this.rng.int(0, 7);
    const o = this.owner;
    const copyIds = [...this.copies.keys()];
    switch (f) {
      case 0:
      case 1: {
        const c = this.copies.get(this.rng.pick(copyIds))!;
        if (!c.up) return;
        const powerLoss = f === 0;
        if (powerLoss) this.notePowerLoss(c.id);
        c.crash(powerLoss);
        this.log(`copy ${c.id} crashed${powerLoss ? ' with power loss' : ''}`);
        this.clock.setTimer(this.rng.int(200, 4000), () => {
          c.restart();
          this.log(`copy ${c.id} restarted`);
        });
        return;
      }
      case 2: {
        if (!o) return;
        const l = this.link(o.node, this.rng.pick(copyIds));
        l.cut = true;
        this.log(`link ${o.node} -> copy cut`);
        this.clock.setTimer(this.rng.int(100, 3000), () => healLink(l));
        return;
      }
      case 3: {
        if (!o) return;
        this.etcdCut.add(o.node);
        this.log(`${o.node} cut from etcd`);
        this.clock.setTimer(this.rng.int(100, 2500), () => this.etcdCut.delete(o.node));
        return;
      }
      case 4:
      case 5: {
        // The owner's node loses power (its own copy with it), or the owner is paused past its lease.
        if (!o || o.gate !== 'open') return;
        const paused = f === 5;
        o.gate = paused ? 'paused' : 'dead';
        if (!paused) {
          const local = this.copyOnNode(o.node);
          if (local?.up) {
            this.notePowerLoss(local.id);
            local.crash(true);
            this.clock.setTimer(LEASE_MS + this.rng.int(500, 4000), () => local.restart());
          }
        }
        this.log(`owner ${o.node}@${o.epoch} ${paused ? 'paused' : 'lost power'}`);
        this.clock.setTimer(LEASE_MS, () => {
          // Usually the controller releases the volume first; sometimes an attach elsewhere comes first.
          const attachFirst = this.rng.chance(0.25);
          if (!attachFirst) this.release();
          this.ownerChangeSeq = ++this.seq;
          const next = this.rng.pick(NODES.filter((n) => n !== o.node && this.nodeUp(n)));
          this.takingOver = true;
          void this.takeOver(next, attachFirst ? o.node : undefined).finally(() => (this.takingOver = false));
        });
        if (paused) this.clock.setTimer(LEASE_MS + this.rng.int(50, 3000), () => o.resume());
        return;
      }
      default:
        return; // a quiet spell
    }
  }

  // ---- a run

  async run(durationMs: number): Promise<void> {
    this.takingOver = true;
    void this.takeOver(this.rng.pick(NODES)).finally(() => (this.takingOver = false));
    const end = durationMs;
    let nextFault = this.rng.int(300, 1500);
    let nextCheck = this.rng.int(800, 2500);
    const tick = (): void => {
      if (this.clock.now() >= end) return;
      for (let i = 0; i < MAX_OPS_IN_FLIGHT; i++) this.startOp();
      this.clock.setTimer(this.rng.int(1, 4), tick);
    };
    tick();
    this.clock.setTimer(500, function repairLoop(this: World) {
      this.repair();
      if (this.clock.now() < end + 120_000) this.clock.setTimer(500, repairLoop.bind(this));
    }.bind(this));
    while (this.clock.now() < end) {
      const at = Math.min(nextFault, nextCheck, end);
      await this.clock.runUntil(() => this.clock.now() >= at || this.failure !== undefined);
      if (this.failure) this.fail(this.failure);
      if (this.clock.now() >= nextCheck) {
        await this.check('quiet moment');
        nextCheck = this.clock.now() + this.rng.int(800, 2500);
      }
      if (this.clock.now() >= nextFault) {
        await this.fault();
        nextFault = this.clock.now() + this.rng.int(300, 2000);
      }
    }
    await this.finish();
  }

  /** Heal everything, let repair finish, then every copy must be in sync and hold the same bytes. */
  private async finish(): Promise<void> {
    this.workloadOn = false;
    this.etcdCut.clear();
    for (const l of this.links.values()) healLink(l);
    for (const c of this.copies.values()) if (!c.up) c.restart();
    this.owner?.resume();
    // A check may find a copy that failed unnoticed (and retire it): repair and check again.
    for (let round = 0; round < 5; round++) {
      const settled = await this.clock.runUntil(() => {
        const o = this.owner;
        return !!o && o.ready && o.gate === 'open' && this.store.replicas.every((r) => r.state === 'in-sync') && o.rebuilding.size === 0;
      }, 120_000);
      if (!settled) this.fail(`the volume never got whole again: ${this.store.replicas.map((r) => `${r.id}:${r.state}`).join(' ')} owner ${this.owner?.node ?? '-'}`);
      await this.check('end of run');
      if (!this.store.replicas.every((r) => r.state === 'in-sync')) continue;
      const all = [...this.copies.values()];
      for (const c of all.slice(1)) if (!c.cache.equals(all[0].cache)) this.fail(`at the end ${c.id} differs from ${all[0].id}`);
      return;
    }
    this.fail('copies kept failing after every fault was healed');
  }
}

function blockData(id: number, count: number): Buffer {
  const buf = Buffer.alloc(count * BLOCK);
  new Uint32Array(buf.buffer, buf.byteOffset, buf.length / 4).fill(id);
  return buf;
}

/** The write id a block holds (every word of it), or -1 if it is torn. */
function blockValue(image: Buffer, b: number): number {
  const words = new Uint32Array(image.buffer, image.byteOffset + b * BLOCK, BLOCK / 4);
  const v = words[0];
  for (let i = 1; i < words.length; i++) if (words[i] !== v) return -1;
  return v;
}
