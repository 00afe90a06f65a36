// Membership: the node's record in etcd and its liveness key under a lease.
// While the agent runs, the lease is kept alive; if etcd declares it lost
// (the agent was paused or cut off for longer than the TTL), a new lease is
// granted and the liveness key written again, so the node rejoins by itself.
import { EventEmitter } from 'node:events';
import type { Etcd3, Lease } from 'etcd3';
import type { NodeLiveness, NodeRecord } from '../core/types';
import { LeaseWindow } from '../core/lease-window';
import { keys } from '../store/keys';
import { registerNode, updateNode, type NodeIdentity } from '../store/nodes';
import type { Logger } from '../util/log';

export interface MembershipOptions {
  identity: () => Promise<NodeIdentity>;
  leaseTtlSeconds: number;
  /** How often drive usage is refreshed in the node record. */
  refreshIntervalMs?: number;
  logger: Logger;
}

export class Membership extends EventEmitter {
  private lease: Lease | undefined;
  private stopped = false;
  private refreshTimer: NodeJS.Timeout | undefined;
  private regrantTimer: NodeJS.Timeout | undefined;
  record: NodeRecord | undefined;
  /** How long the current lease surely holds; owners serve I/O only within it. */
  readonly window: LeaseWindow;

  constructor(
    private readonly etcd: Etcd3,
    private readonly opts: MembershipOptions,
  ) {
    super();
    this.window = new LeaseWindow(opts.leaseTtlSeconds * 1000);
  }

  async start(): Promise<NodeRecord> {
    this.record = await registerNode(this.etcd, await this.opts.identity());
    await this.grantLease();
    const every = this.opts.refreshIntervalMs ?? 15_000;
    this.refreshTimer = setInterval(() => {
      this.refresh().catch((err) => this.opts.logger.warn({ err }, 'could not refresh the node record'));
    }, every);
    this.refreshTimer.unref();
    return this.record;
  }

  /** Lease id in hex, for display and tests. */
  async leaseId(): Promise<string | undefined> {
    return this.lease?.grant();
  }

  private async grantLease(): Promise<void> {
    const sentAt = Date.now(); // the grant is sent as the lease is made, so it starts after this
    const lease = this.etcd.lease(this.opts.leaseTtlSeconds);
    this.lease = lease;
    lease.on('lost', (err) => {
      if (lease !== this.lease) return;
      this.window.lost();
      if (this.stopped) return;
      this.opts.logger.warn({ err: err.message }, 'node lease lost; registering again');
      this.emit('lease-lost');
      this.scheduleRegrant(0);
    });
    lease.on('keepaliveEstablished', () => lease === this.lease && this.window.streamRestarted());
    lease.on('keepaliveFired', () => lease === this.lease && this.window.keepaliveSent(Date.now()));
    lease.on('keepaliveSucceeded', () => lease === this.lease && this.window.keepaliveAnswered());
    const liveness: NodeLiveness = { id: this.identityId(), pid: process.pid, startedAt: new Date().toISOString() };
    try {
      await lease.put(keys.alive(liveness.id)).value(JSON.stringify(liveness));
      if (lease === this.lease) this.window.granted(sentAt);
    } catch (err) {
      if (this.stopped) return;
      this.opts.logger.warn({ err: (err as Error).message }, 'could not write the liveness key; retrying');
      lease.removeAllListeners('lost');
      void lease.revoke().catch(() => undefined);
      this.scheduleRegrant(1000);
      return;
    }
    this.opts.logger.info({ ttl: this.opts.leaseTtlSeconds }, 'node is alive under its lease');
    this.emit('alive');
  }

  private scheduleRegrant(delayMs: number): void {
    clearTimeout(this.regrantTimer);
    this.regrantTimer = setTimeout(() => {
      if (!this.stopped) void this.grantLease();
    }, delayMs);
  }

  private identityId(): string {
    if (!this.record) throw new Error('membership not started');
    return this.record.id;
  }

  async refresh(): Promise<void> {
    const identity = await this.opts.identity();
    this.record = await updateNode(this.etcd, identity.id, (cur) =>
      JSON.stringify(cur.drives) === JSON.stringify(identity.drives) ? undefined : { ...cur, drives: identity.drives },
    );
  }

  /** Leave cleanly: revoking the lease removes the liveness key at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.refreshTimer);
    clearTimeout(this.regrantTimer);
    await this.lease?.revoke().catch(() => undefined);
  }
}
