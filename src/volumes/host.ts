// The volumes attached on this node: for each, a replication engine and an NBD
// server on a unix socket. Attaching makes this node the owner by an etcd
// transaction that bumps the epoch (DESIGN invariant 1); the engine then opens
// every copy at that epoch before serving (invariant 2).
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Etcd3 } from 'etcd3';
import type { Watcher } from 'etcd3';
import { VolumeEngine, type EngineJournal, type EngineReplica } from '../engine/engine';
import type { ReplicaOps } from '../replica/ops';
import { DirtyMap, type DirtyMapJson } from '../core/dirty-map';
import { getJson } from '../store/etcd';
import { NbdServer } from '../nbd';
import { EventCode, type NodeRecord, type VolumeRecord } from '../core/types';
import type { EventLog } from '../store/events';
import { getVersioned } from '../store/cas';
import { idFromKey, keys } from '../store/keys';
import { listNodes } from '../store/nodes';
import { listVolumes, requireVolume, updateVolume } from '../store/volumes';
import { ConflictError, FencedError, UserError, errorMessage } from '../util/errors';
import { commitOwned } from '../store/owned';
import type { Logger } from '../util/log';
import { connectReplica, unreachableChannel, type ReplicaLinkOptions } from './replica-links';
import { volumeLabel } from './lifecycle';
import { decideRepairs, repairOwnerFor } from '../core/repair-policy';
import { copiesAfterOwnerLoss } from '../core/volume-decisions';
import type { LeaseWindow } from '../core/lease-window';

export interface HostOptions {
  etcd: Etcd3;
  events: EventLog;
  self: () => NodeRecord;
  links: ReplicaLinkOptions;
  /** Directory for the NBD sockets. */
  socketDir: string;
  replicaTimeoutMs: number;
  rebuildBytesPerSecond: number;
  /** How long copies on a down node are waited for (the controller's grace period; see repairOwnerFor). */
  rebuildGraceMs: number;
  /** How long a detached volume must have needed repair before this node takes it (the repair delay). */
  repairDelayMs: number;
  /** This node's lease bound: an owner serves I/O only while its lease surely holds. */
  lease: LeaseWindow;
  /** Ask another node to give up its repair ownership of a volume (an attach wants it). */
  releaseElsewhere: (node: NodeRecord, volume: string) => Promise<void>;
  /** In-process channel to this node's own replicas. */
  localChannel: () => ReplicaOps;
  logger: Logger;
}

interface Attached {
  engine: VolumeEngine;
  /** Absent while attached only to repair. */
  nbd?: NbdServer;
  /** Attached by this node to rebuild the copies of a volume nobody uses (repairOwnerFor). */
  repair: boolean;
  /** The lease generation ownership was taken (or last confirmed) under: I/O only while it holds. */
  leaseGeneration: number;
  socketPath: string;
  epoch: number;
  vdisk: string;
  /** Copies whose rebuild or resync this node runs now. */
  rebuilding: Set<string>;
  /** A reconcile pass runs now; the newest record seen meanwhile waits for the next one. */
  reconciling?: boolean;
  reconcileNext?: VolumeRecord;
  progressTimer?: NodeJS.Timeout;
}

/** How long a node leaves alone a volume whose repair it gave up for an attach elsewhere. */
const REPAIR_HOLDOFF_MS = 30_000;

export function nbdUri(name: string, socketPath: string): string {
  return `nbd+unix:///${name}?socket=${socketPath}`;
}

export class VolumeHost {
  private readonly attached = new Map<string, Attached>();
  /** One attach/detach at a time per volume on this node. */
  private readonly busy = new Map<string, Promise<unknown>>();

  /** Volumes whose repair an attach elsewhere just took over: not repaired again before this time (ms). */
  private readonly repairHoldoff = new Map<string, number>();
  /** Detached volumes this node should repair, and since when it has seen them so (ms); one entry per volume at most. */
  private readonly repairWanted = new Map<string, number>();

  private watchers: Watcher[] = [];
  private reconcileTimer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(private readonly opts: HostOptions) {}

  /** Follow volume and node changes: lost ownership, copies to rebuild, nodes that died. */
  async watch(): Promise<void> {
    const volumes = await this.opts.etcd.watch().prefix(keys.volumesPrefix).create();
    volumes.on('put', (kv) => this.onVolumeRecord(JSON.parse(kv.value.toString()) as VolumeRecord));
    volumes.on('delete', (kv) => {
      const name = kv.key.toString().slice(keys.volumesPrefix.length);
      if (this.attached.has(name)) void this.serial(name, () => this.stopLocal(name));
    });
    const nodes = await this.opts.etcd.watch().prefix(keys.nodesPrefix).create();
    nodes.on('put', (kv) => this.onNodeRecord(JSON.parse(kv.value.toString()) as NodeRecord));
    for (const w of [volumes, nodes]) w.on('error', (err) => this.opts.logger.warn({ err: err.message }, 'volume host watch error'));
    this.watchers = [volumes, nodes];
    // Periodic pass: resyncs wait for a copy's node to come back, which is a node change, not a volume change.
    this.reconcileTimer = setInterval(() => void this.reconcileAll(), 3000);
    this.reconcileTimer.unref();
  }

  private async reconcileAll(): Promise<void> {
    if (this.stopped) return;
    try {
      const volumes = await listVolumes(this.opts.etcd);
      for (const vol of volumes) if (this.attached.has(vol.name)) this.onVolumeRecord(vol);
      const detached = volumes.filter((v) => !v.owner && !this.attached.has(v.name));
      await this.repairDetached(detached);
    } catch (err) {
      this.opts.logger.debug({ err: errorMessage(err) }, 'reconcile pass failed');
    }
  }

  private onVolumeRecord(vol: VolumeRecord): void {
    const a = this.attached.get(vol.name);
    if (!a || this.stopped) return;
    const self = this.opts.self();
    if (vol.owner !== self.id || vol.epoch !== a.epoch) {
      // Another node owns it now (we were cut off or paused past our lease): drop it by ourselves.
      this.opts.logger.warn({ volume: vol.name, owner: vol.owner, epoch: vol.epoch, ours: a.epoch }, 'lost ownership of the volume; dropping it here');
      void this.serial(vol.name, () => this.stopLocal(vol.name, a));
      return;
    }
    this.reconcileSoon(vol, a);
  }

  /** One reconcile pass per volume at a time; a record that arrives meanwhile is handled by one more pass. */
  private reconcileSoon(vol: VolumeRecord, a: Attached): void {
    if (a.reconciling) {
      a.reconcileNext = vol;
      return;
    }
    a.reconciling = true;
    void this.reconcileReplicas(vol, a)
      .catch((err: unknown) => this.opts.logger.warn({ volume: vol.name, err: errorMessage(err) }, 'replica reconcile failed'))
      .finally(() => {
        a.reconciling = false;
        const next = a.reconcileNext;
        a.reconcileNext = undefined;
        if (next && this.attached.get(vol.name) === a) this.reconcileSoon(next, a);
      });
  }

  /** Take the detached volumes this node should repair (repairOwnerFor), one at a time, after the repair delay. */
  private async repairDetached(volumes: readonly VolumeRecord[]): Promise<void> {
    const now = Date.now();
    for (const [name, until] of this.repairHoldoff) if (until <= now) this.repairHoldoff.delete(name);
    const detached = new Set(volumes.map((v) => v.name));
    for (const name of this.repairWanted.keys()) if (!detached.has(name)) this.repairWanted.delete(name);
    if (volumes.length === 0) return;
    const self = this.opts.self();
    const view = await this.nodeView();
    for (const vol of volumes) {
      if (repairOwnerFor({ volume: vol, ...view, rebuildGraceMs: this.opts.rebuildGraceMs }) !== self.id) {
        this.repairWanted.delete(vol.name);
        continue;
      }
      // An application restarting elsewhere usually attaches it within the delay; its owner then repairs it.
      const since = this.repairWanted.get(vol.name) ?? now;
      this.repairWanted.set(vol.name, since);
      if (now - since < this.opts.repairDelayMs || this.repairHoldoff.has(vol.name)) continue;
      await this.serial(vol.name, () => this.attachNow(vol.name, true)).catch((err: unknown) =>
        this.opts.logger.debug({ volume: vol.name, err: errorMessage(err) }, 'could not take the volume to repair it'),
      );
    }
  }

  /** Which nodes are up (alive and not in maintenance) and how long the others have been down. */
  private async nodeView(): Promise<{ nodes: NodeRecord[]; nodeUp: (id: string) => boolean; downForMs: (id: string) => number | undefined }> {
    const nodes = await listNodes(this.opts.etcd);
    const alive = new Set((await this.opts.etcd.getAll().prefix(keys.alivePrefix).keys()).map((k) => idFromKey(keys.alivePrefix, k)));
    const nodeUp = (id: string): boolean => alive.has(id) && nodes.some((n) => n.id === id && n.status !== 'maintenance');
    const downForMs = (id: string): number | undefined => {
      const n = nodes.find((x) => x.id === id);
      return n?.status === 'maintenance' ? Date.now() - new Date(n.statusSince).getTime() : undefined;
    };
    return { nodes, nodeUp, downForMs };
  }

  private onNodeRecord(node: NodeRecord): void {
    // A node back: its stale copies can be resynced now.
    if (node.status === 'normal') void this.reconcileAll();
    if (node.status !== 'maintenance') return;
    for (const [name, a] of this.attached) {
      const ids = a.engine.replicaStates().filter((r) => r.nodeId === node.id && r.state !== 'stale').map((r) => r.id);
      if (ids.length) {
        this.opts.logger.warn({ volume: name, node: node.name, replicas: ids }, 'node of a copy is down; marking it stale');
        void a.engine.retireReplicas(ids).catch((err: unknown) => this.opts.logger.warn({ volume: name, err: errorMessage(err) }, 'could not retire copies'));
      }
    }
  }

  /** Start rebuilds and resyncs the record calls for; forget copies that left the set. */
  private async reconcileReplicas(vol: VolumeRecord, a: Attached): Promise<void> {
    const engine = a.engine;
    for (const known of engine.replicaStates()) {
      if (!vol.replicas.some((r) => r.id === known.id) && !a.rebuilding.has(known.id)) await engine.removeReplica(known.id);
    }
    const { nodes, nodeUp, downForMs } = await this.nodeView();
    const mapPrefix = keys.dirtyPrefix(vol.name);
    const maps = new Set((await this.opts.etcd.getAll().prefix(mapPrefix).keys()).map((k) => idFromKey(mapPrefix, k)));
    const decisions = decideRepairs({
      copies: vol.replicas,
      level: vol.level,
      nodeUp,
      running: a.rebuilding,
      hasMissedMap: (id) => maps.has(id),
      engineState: (id) => engine.replicaStates().find((x) => x.id === id)?.state,
    });
    for (const d of decisions) {
      const r = vol.replicas.find((x) => x.id === d.id)!;
      this.startRebuild(vol, a, d.id, nodes.find((n) => n.id === r.nodeId)!, d.mode);
    }
    // A repair owner gives the volume back once nothing is left for it to do.
    if (a.repair && a.rebuilding.size === 0 && repairOwnerFor({ volume: vol, nodeUp, downForMs, rebuildGraceMs: this.opts.rebuildGraceMs }) !== this.opts.self().id) {
      void this.serial(vol.name, () => this.releaseRepair(vol.name, a)).catch((err: unknown) =>
        this.opts.logger.warn({ volume: vol.name, err: errorMessage(err) }, 'could not give back a repaired volume'),
      );
    }
  }

  /** Clear this node's ownership of the volume (only at `epoch`, if given); a record owned by another node is left as it is. */
  private giveBack(name: string, epoch?: number): Promise<VolumeRecord> {
    const self = this.opts.self().id;
    return updateVolume(this.opts.etcd, name, (cur) => (cur.owner === self && (epoch === undefined || cur.epoch === epoch) ? { ...cur, owner: null, attachment: null } : undefined));
  }

  /** Give back a volume this node held only to repair it. */
  private async releaseRepair(name: string, a: Attached): Promise<void> {
    if (this.attached.get(name) !== a) return;
    const self = this.opts.self();
    await this.stopLocal(name, a);
    const vol = await this.giveBack(name, a.epoch);
    this.opts.logger.info({ volume: name }, 'repair done; the volume is free again');
    await this.opts.events.write({ level: 'info', component: 'DFS', message: `${volumeLabel(vol)} repair on node ${self.id} ended, copies in sync ${vol.replicas.filter((r) => r.state === 'in-sync').length}/${vol.level}`, code: EventCode.repairEnded });
  }

  private startRebuild(vol: VolumeRecord, a: Attached, replicaId: string, node: NodeRecord, wanted: 'full' | 'incremental'): void {
    let mode = wanted;
    a.rebuilding.add(replicaId);
    const record = vol.replicas.find((r) => r.id === replicaId)!;
    const run = async (): Promise<void> => {
      const channel: ReplicaOps = node.id === this.opts.self().id ? this.opts.localChannel() : await connectReplica(node, this.opts.links);
      const create = (): Promise<unknown> =>
        channel.create({ replicaId, volumeUuid: vol.uuid, size: vol.sizeBytes, thick: vol.provision === 'thick', epoch: a.epoch, driveId: record.driveId, state: 'rebuilding' });
      if (record.state === 'rebuilding') {
        // A new copy placed by the controller: make its file (again, if a previous owner began it).
        await create().catch((err: unknown) => {
          if (!/EEXIST/.test(errorMessage(err))) throw err;
        });
      } else if (!(await replicaExists(channel, replicaId))) {
        // A stale copy whose files are gone (a wiped or replaced drive): made again, empty, and filled in full.
        this.opts.logger.warn({ volume: vol.name, replica: replicaId, node: node.name }, 'the files of a stale copy are gone; making it again');
        await create();
        mode = 'full';
      }
      await this.opts.events.write({ level: 'info', component: 'DFS', message: `${volumeLabel(vol)} rebuilding on node ${node.id}`, code: EventCode.volumeRebuilding });
      this.opts.logger.info({ volume: vol.name, replica: replicaId, node: node.name, mode }, 'rebuild started');
      const started = Date.now();
      const copied = await a.engine.rebuild(
        { id: replicaId, nodeId: node.id, state: 'rebuilding', local: node.id === this.opts.self().id, channel },
        mode,
        () => this.markInSync(vol.name, a.epoch, replicaId),
      );
      const seconds = (Date.now() - started) / 1000;
      this.opts.logger.info({ volume: vol.name, replica: replicaId, mode, copiedBytes: copied, seconds }, 'rebuild completed');
      await this.opts.events.write({
        level: 'info', component: 'DFS',
        message: mode === 'incremental'
          ? `${volumeLabel(vol)} resync completed on node ${node.id}, copied ${copied} bytes, ret:0`
          : `${volumeLabel(vol)} volume rebuild completed, copied ${copied} bytes, ret:0`,
        code: mode === 'incremental' ? EventCode.resyncCompleted : EventCode.rebuildCompleted,
      });
      if (record.locality) {
        await this.opts.events.write({ level: 'info', component: 'DFS', message: `${volumeLabel(vol)} locality rebuild completed, ret:0`, code: EventCode.localityRebuildCompleted });
      }
    };
    this.publishProgress(vol.name, a);
    void run()
      .catch((err: unknown) => this.opts.logger.warn({ volume: vol.name, replica: replicaId, err: errorMessage(err) }, 'rebuild did not complete'))
      .finally(() => {
        a.rebuilding.delete(replicaId);
        this.publishProgress(vol.name, a);
      });
  }

  /** Keep the rebuild progress in etcd while rebuilds run, for `cio volume info`. */
  private publishProgress(name: string, a: Attached): void {
    const key = keys.progress(name);
    const write = (): void => {
      const progress = a.engine.rebuildProgress();
      const now = Date.now();
      const value = progress.map((p) => {
        const rate = p.doneBytes / Math.max(0.001, (now - p.startedAt) / 1000);
        return { ...p, percent: p.totalBytes ? (100 * p.doneBytes) / p.totalBytes : 100, bytesPerSecond: rate, secondsLeft: rate > 0 ? (p.totalBytes - p.doneBytes) / rate : null };
      });
      void this.opts.etcd.put(key).value(JSON.stringify(value)).catch(() => undefined);
    };
    if (a.rebuilding.size > 0) {
      if (!a.progressTimer) {
        a.progressTimer = setInterval(write, 1000);
        a.progressTimer.unref();
      }
      write();
    } else {
      clearInterval(a.progressTimer);
      a.progressTimer = undefined;
      void this.opts.etcd.delete().key(key).catch(() => undefined);
    }
  }

  /** Record a rebuilt copy as in-sync (and drop its missed map), only while this node owns the volume at this epoch. */
  private async markInSync(name: string, epoch: number, replicaId: string): Promise<void> {
    await commitOwned(this.opts.etcd, name, this.opts.self().id, epoch, (cur) => {
      if (!cur.replicas.some((r) => r.id === replicaId)) throw new FencedError(`volume ${name}: the copy ${replicaId} left the volume during its rebuild`);
      return {
        record: {
          ...cur,
          replicas: cur.replicas.map((r) => (r.id === replicaId ? { id: r.id, nodeId: r.nodeId, driveId: r.driveId, state: 'in-sync' as const, createdAt: r.createdAt } : r)),
        },
        deletes: [keys.dirty(name, replicaId)],
      };
    });
  }

  /** Store the engine's journal (missed maps, intent extents), only while this node owns the volume at this epoch. */
  private async persistJournal(name: string, epoch: number, journal: EngineJournal): Promise<void> {
    await commitOwned(this.opts.etcd, name, this.opts.self().id, epoch, () => ({
      puts: [...[...journal.missed].map(([id, map]) => [keys.dirty(name, id), JSON.stringify(map)] as const), [keys.intents(name), JSON.stringify(journal.intents)] as const],
    }));
  }

  isAttached(name: string): boolean {
    return this.attached.has(name);
  }

  engineOf(name: string): VolumeEngine | undefined {
    return this.attached.get(name)?.engine;
  }

  private serial<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.busy.get(name) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    this.busy.set(name, next.catch(() => undefined));
    return next;
  }

  attach(name: string): Promise<VolumeRecord> {
    return this.serial(name, () => this.attachNow(name, false));
  }

  detach(name: string): Promise<VolumeRecord> {
    return this.serial(name, () => this.detachNow(name));
  }

  /**
   * Make this node the owner at a new epoch and start the engine: for an
   * application (NBD export), or with `repair` only to rebuild copies, and only
   * if the volume is free. An application's attach takes a volume from a
   * repair owner (asking it to give the volume back first).
   */
  private async attachNow(name: string, repair: boolean, tries = 3): Promise<VolumeRecord> {
    const { etcd } = this.opts;
    const self = this.opts.self();
    const current = await getVersioned<VolumeRecord>(etcd, keys.volume(name));
    if (!current) throw new UserError(`no volume named ${name}`, 'ENOENT', 404);
    const vol = current.value;
    if (vol.phase !== 'ready') throw new ConflictError(`volume ${name} is being ${vol.phase === 'creating' ? 'created' : 'removed'}`);
    const local = this.attached.get(name);
    if (repair && (vol.owner || local)) throw new ConflictError(`volume ${name} is in use`);
    if (vol.owner === self.id && local) {
      if (!local.repair) return vol;
      await this.stopLocal(name, local); // our own repair yields to the application; the new epoch fences it
    }

    // Ownership moves only if the volume is free, already ours, or its owner's
    // lease is gone; the transaction re-checks both, so a racing attach loses.
    const compares: Array<[string, 'Mod' | 'Create', '==', string | number]> = [[keys.volume(name), 'Mod', '==', current.modRevision]];
    let replicas = vol.replicas;
    if (vol.owner && vol.owner !== self.id) {
      const ownerAlive = await etcd.get(keys.alive(vol.owner)).string();
      if (ownerAlive) {
        const owner = (await listNodes(etcd)).find((n) => n.id === vol.owner);
        if (vol.attachment?.repair && owner && tries > 1) {
          this.opts.logger.info({ volume: name, repairer: owner.name }, 'asking the repair owner to give the volume back');
          // It may have given it back already (nothing attached there): look again either way.
          await this.opts.releaseElsewhere(owner, name).catch((err: unknown) => this.opts.logger.info({ volume: name, err: errorMessage(err) }, 'the repair owner did not give the volume back'));
          return this.attachNow(name, repair, tries - 1);
        }
        throw new ConflictError(`volume ${name} is attached on node ${owner?.name ?? vol.owner}; detach it there first`);
      }
      compares.push([keys.alive(vol.owner), 'Create', '==', 0]);
      // Taken from a dead owner before the controller released it: its copies
      // are marked as the release would have (failure 7 of the data-safety issue).
      replicas = copiesAfterOwnerLoss(vol.replicas, vol.owner, () => false, new Date().toISOString());
    }
    const leaseGeneration = this.opts.lease.generation; // before the transaction: a lease lost from here on stops I/O
    const socketPath = path.join(this.opts.socketDir, `${vol.uuid}.sock`);
    const epoch = vol.epoch + 1;
    const since = new Date().toISOString();
    const next: VolumeRecord = {
      ...vol,
      replicas,
      owner: self.id,
      epoch,
      attachment: repair ? { nodeId: self.id, uri: '', since, repair: true } : { nodeId: self.id, uri: nbdUri(name, socketPath), since },
    };
    let txn = etcd.if(...compares[0]);
    for (const c of compares.slice(1)) txn = txn.and(...c);
    const res = await txn.then(etcd.put(keys.volume(name)).value(JSON.stringify(next))).commit();
    if (!res.succeeded) {
      // Changed meanwhile (a repair owner may have taken it): an application's attach looks again.
      if (!repair && tries > 1) return this.attachNow(name, repair, tries - 1);
      throw new ConflictError(`volume ${name} changed while attaching; try again`);
    }
    this.opts.logger.info({ volume: name, epoch, repair }, 'this node owns the volume now');
    if (repair) {
      await this.opts.events.write({ level: 'info', component: 'DFS', message: `${volumeLabel(next)} taken by node ${self.id} to rebuild its copies (nobody uses it)`, code: EventCode.repairStarted });
    }

    try {
      await this.startEngine(next, socketPath, repair, leaseGeneration);
    } catch (err) {
      // Give the volume back; the epoch stays bumped, which is harmless.
      await this.giveBack(name, epoch).catch(() => undefined);
      throw new UserError(`could not attach ${name}: ${errorMessage(err)}`, 'EIO', 500);
    }
    return next;
  }

  private async startEngine(vol: VolumeRecord, socketPath: string, repair: boolean, leaseGeneration: number): Promise<void> {
    const self = this.opts.self();
    const nodes = await listNodes(this.opts.etcd);
    const replicas: EngineReplica[] = await Promise.all(
      vol.replicas.map(async (r) => {
        const node = nodes.find((n) => n.id === r.nodeId);
        // A copy being rebuilt when the previous owner stopped is rebuilt again from the start.
        const state = r.state === 'rebuilding' ? 'stale' : r.state;
        let channel;
        try {
          // Stale copies are connected too: the engine opens them at the new epoch so no older owner reaches them again.
          if (!node || node.status === 'maintenance') throw new Error(`node ${node?.name ?? r.nodeId} is down`);
          channel = node.id === self.id ? this.opts.localChannel() : await connectReplica(node, this.opts.links);
        } catch (err) {
          channel = unreachableChannel(`cannot reach the copy on node ${node?.name ?? r.nodeId}: ${errorMessage(err)}`);
        }
        return { id: r.id, nodeId: r.nodeId, state, local: r.nodeId === self.id, channel };
      }),
    );
    const dirtyMaps = new Map<string, DirtyMap>();
    for (const r of vol.replicas.filter((x) => x.state === 'stale')) {
      const json = await getJson<DirtyMapJson>(this.opts.etcd, keys.dirty(vol.name, r.id));
      if (json) dirtyMaps.set(r.id, DirtyMap.fromJSON(json));
    }
    let self_: Attached | undefined;
    const engine = new VolumeEngine({
      // Fenced by a copy: another node owns the volume, whatever etcd told us so far. Drop it here.
      onFenced: () => {
        if (self_) void this.serial(vol.name, () => this.stopLocal(vol.name, self_));
      },
      volume: vol.name,
      size: vol.sizeBytes,
      epoch: vol.epoch,
      replicas,
      replicaTimeoutMs: this.opts.replicaTimeoutMs,
      reconnect: async (replicaId) => {
        const r = vol.replicas.find((x) => x.id === replicaId);
        const node = (await listNodes(this.opts.etcd)).find((n) => n.id === r?.nodeId);
        if (!node) throw new Error(`copy ${replicaId} has no node`);
        return node.id === self.id ? this.opts.localChannel() : connectReplica(node, this.opts.links);
      },
      rebuildBytesPerSecond: this.opts.rebuildBytesPerSecond,
      leaseHeld: () => this.opts.lease.held(self_?.leaseGeneration ?? leaseGeneration, Date.now()),
      markStale: (ids) => this.markStale(vol.name, vol.epoch, ids),
      persistJournal: (journal) => this.persistJournal(vol.name, vol.epoch, journal),
      dirtyMaps,
      intents: (await getJson<number[]>(this.opts.etcd, keys.intents(vol.name))) ?? [],
      logger: this.opts.logger.child({ volume: vol.name }),
    });
    try {
      await engine.open();
      let nbd: NbdServer | undefined;
      if (!repair) {
        await mkdir(this.opts.socketDir, { recursive: true });
        await rm(socketPath, { force: true });
        nbd = new NbdServer({
          socketPath,
          lookup: (exportName) => (exportName === vol.name ? engine : undefined),
          list: () => [vol.name],
          logger: this.opts.logger.child({ component: 'nbd', volume: vol.name }),
        });
        await nbd.listen();
      }
      self_ = { engine, nbd, repair, leaseGeneration, socketPath, epoch: vol.epoch, vdisk: vol.vdisk, rebuilding: new Set() };
      this.attached.set(vol.name, self_);
      this.onVolumeRecord(vol);
    } catch (err) {
      await engine.close();
      throw err;
    }
  }

  /** Record copies as stale, only while this node still owns the volume at this epoch. */
  private async markStale(name: string, epoch: number, ids: string[]): Promise<void> {
    const now = new Date().toISOString();
    const vol = await commitOwned(this.opts.etcd, name, this.opts.self().id, epoch, (cur) => ({
      record: {
        ...cur,
        replicas: cur.replicas.map((r) =>
          ids.includes(r.id) && r.state !== 'stale' ? { ...r, state: 'stale' as const, staleSince: now, fullResync: r.state === 'rebuilding' || r.fullResync } : r,
        ),
      },
    }));
    for (const id of ids) {
      const r = vol.replicas.find((x) => x.id === id);
      await this.opts.events
        .write({ level: 'warn', component: 'DFS', message: `${volumeLabel(vol)} copy on node ${r?.nodeId ?? '?'} stopped answering, marked stale`, code: EventCode.replicaStale })
        .catch(() => undefined);
    }
  }

  private async stopLocal(name: string, expected?: Attached): Promise<void> {
    const a = this.attached.get(name);
    if (!a || (expected && a !== expected)) return;
    this.attached.delete(name);
    clearInterval(a.progressTimer);
    await a.nbd?.close().catch(() => undefined);
    await a.engine.flush().catch(() => undefined);
    await a.engine.close();
    await rm(a.socketPath, { force: true });
  }

  private async detachNow(name: string): Promise<VolumeRecord> {
    const self = this.opts.self();
    const vol = await requireVolume(this.opts.etcd, name);
    if (vol.owner && vol.owner !== self.id) throw new ConflictError(`volume ${name} is attached on another node, not here`);
    // A repair given up on request: an attach elsewhere wants the volume, so do not take it back at once.
    if (vol.attachment?.repair) this.repairHoldoff.set(name, Date.now() + REPAIR_HOLDOFF_MS);
    await this.stopLocal(name);
    return this.giveBack(name);
  }

  /**
   * After a lost lease, this node has a new one: volumes it still owns at the
   * same epoch serve I/O again under it; the others are dropped here.
   */
  async leaseRenewed(): Promise<void> {
    const self = this.opts.self();
    const generation = this.opts.lease.generation;
    for (const [name, a] of [...this.attached]) {
      if (a.leaseGeneration === generation) continue;
      const vol = await requireVolume(this.opts.etcd, name).catch(() => undefined);
      if (vol && vol.owner === self.id && vol.epoch === a.epoch) {
        a.leaseGeneration = generation;
        this.opts.logger.info({ volume: name }, 'still the owner under the new lease: I/O goes on');
      } else {
        this.opts.logger.warn({ volume: name }, 'the volume was taken while the lease was lost; dropping it here');
        await this.serial(name, () => this.stopLocal(name, a));
      }
    }
  }

  /** After an agent restart: serve again the volumes this node still owns. */
  async resumeOwned(): Promise<void> {
    const self = this.opts.self();
    for (const vol of await listVolumes(this.opts.etcd)) {
      if (vol.owner !== self.id || this.attached.has(vol.name)) continue;
      const repair = vol.attachment?.repair === true;
      // A repair resumes only if the volume is free: give it back, the next pass takes it again if still needed.
      const resume = repair
        ? this.giveBack(vol.name, vol.epoch).then(() => undefined)
        : this.attach(vol.name).then(() => undefined);
      await resume.catch((err: unknown) => this.opts.logger.error({ volume: vol.name, err: errorMessage(err) }, 'could not re-attach an owned volume'));
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.reconcileTimer);
    for (const w of this.watchers) await w.cancel().catch(() => undefined);
    for (const name of [...this.attached.keys()]) await this.stopLocal(name);
  }
}

/** Whether the copy's replica server has it (ENOENT: its files are gone). */
async function replicaExists(channel: ReplicaOps, replicaId: string): Promise<boolean> {
  try {
    await channel.stat(replicaId);
    return true;
  } catch (err) {
    if (/ENOENT/.test(errorMessage(err))) return false;
    throw err;
  }
}
