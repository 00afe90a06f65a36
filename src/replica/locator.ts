// Finds a replica among the stores (drives) of this node, and picks the
// store for a new one. The server knows replicas only by id; the id is
// unique cluster-wide, so at most one drive holds it.
import { ReplicaError } from './errors';
import type { Replica } from './replica';
import type { CreateReplicaOptions, ReplicaStore } from './store';

export class ReplicaLocator {
  // One lookup per replica id at a time. Requests that find the replica not
  // yet open all await this same promise, so they resume in arrival order and
  // take their range locks in that order (separate lookups could finish in
  // any order and let a later write overtake an earlier one).
  private readonly lookups = new Map<string, Promise<Replica>>();

  constructor(private readonly stores: ReadonlyMap<string, ReplicaStore>) {}

  /** The replica if it is open already; never starts a lookup. */
  open(replicaId: string): Replica | undefined {
    for (const store of this.stores.values()) {
      const replica = store.cached(replicaId);
      if (replica) return replica;
    }
    return undefined;
  }

  /** The open replica, or its opening; rejects with ENOENT if no drive has it. */
  find(replicaId: string): Replica | Promise<Replica> {
    const open = this.open(replicaId);
    if (open) return open;
    let lookup = this.lookups.get(replicaId);
    if (!lookup) {
      lookup = this.findSlow(replicaId).finally(() => this.lookups.delete(replicaId));
      this.lookups.set(replicaId, lookup);
    }
    return lookup;
  }

  async create(opts: CreateReplicaOptions & { driveId?: string }): Promise<Replica> {
    for (const store of this.stores.values()) {
      if (await store.exists(opts.replicaId)) throw new ReplicaError('EEXIST', `replica ${opts.replicaId} already exists on ${store.driveDir}`);
    }
    return this.storeFor(opts.driveId).create(opts);
  }

  async delete(replicaId: string, epoch: number): Promise<void> {
    for (const store of this.stores.values()) {
      if (await store.exists(replicaId)) return store.delete(replicaId, { epoch });
    }
    throw new ReplicaError('ENOENT', `no replica ${replicaId} on this node`);
  }

  private async findSlow(replicaId: string): Promise<Replica> {
    for (const store of this.stores.values()) {
      if (await store.exists(replicaId)) return store.open(replicaId);
    }
    throw new ReplicaError('ENOENT', `no replica ${replicaId} on this node`);
  }

  private storeFor(driveId: string | undefined): ReplicaStore {
    if (driveId === undefined) {
      if (this.stores.size !== 1) throw new ReplicaError('EINVAL', `this node has ${this.stores.size} drives: CREATE must name one`);
      return this.stores.values().next().value as ReplicaStore;
    }
    const store = this.stores.get(driveId);
    if (!store) throw new ReplicaError('ENOENT', `no drive ${driveId} on this node`);
    return store;
  }
}
