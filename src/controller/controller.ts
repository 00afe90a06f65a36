// The controller: one leader in the whole cluster, elected through etcd. The
// leader watches node records and liveness keys and, on every change (and on a
// slow timer, as a safety net), asks the pure decision functions in core/
// what must happen, then applies it with transactions that hold only while it
// is still the leader.
import type { Campaign, Etcd3, Watcher } from 'etcd3';
import { decideNodeStatus } from '../core/node-status';
import { decideVolumes } from '../core/volume-decisions';
import { listVolumes } from '../store/volumes';
import { newReplicaId } from '../volumes/lifecycle';
import { EventCode, type NodeRecord } from '../core/types';
import { EventLog } from '../store/events';
import { keys } from '../store/keys';
import { aliveNodeIds, listNodes } from '../store/nodes';
import { getVersioned } from '../store/cas';
import type { Logger } from '../util/log';

export interface ControllerOptions {
  self: () => Pick<NodeRecord, 'id' | 'name' | 'ip'>;
  electionTtlSeconds: number;
  events: EventLog;
  logger: Logger;
  /** Full reconcile even without a watch event, in case a watch was missed (and for grace periods). */
  resyncIntervalMs?: number;
  /** How long copies on a failed node are waited for before they are replaced. */
  rebuildGraceMs: number;
}

export class Controller {
  private campaign: Campaign | undefined;
  private watchers: Watcher[] = [];
  private resyncTimer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private leading = false;
  private stopped = false;
  private reconcileRunning = false;
  private reconcileAgain = false;
  private campaignKey = '';

  constructor(
    private readonly etcd: Etcd3,
    private readonly opts: ControllerOptions,
  ) {}

  get isLeader(): boolean {
    return this.leading;
  }

  start(): void {
    this.runCampaign();
  }

  /** The current leader's node id, from the election itself. */
  async leaderId(): Promise<string | undefined> {
    return this.etcd.election(keys.controllerElection).leader();
  }

  private runCampaign(): void {
    if (this.stopped) return;
    const election = this.etcd.election(keys.controllerElection, this.opts.electionTtlSeconds);
    const campaign = election.campaign(this.opts.self().id);
    this.campaign = campaign;
    campaign.on('elected', () => {
      if (campaign !== this.campaign) return;
      void this.becomeLeader(campaign);
    });
    campaign.on('error', (err) => {
      if (campaign !== this.campaign) return;
      this.opts.logger.warn({ err: err.message }, 'controller campaign failed; campaigning again');
      this.stepDown();
      this.campaign = undefined;
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => this.runCampaign(), 1000);
    });
  }

  private async becomeLeader(campaign: Campaign): Promise<void> {
    try {
      this.campaignKey = await campaign.getCampaignKey();
    } catch (err) {
      this.opts.logger.warn({ err: (err as Error).message }, 'elected but the campaign key is gone');
      return;
    }
    this.leading = true;
    const self = this.opts.self();
    this.opts.logger.info('this node is now the controller');
    await this.opts.events
      .write({ level: 'info', component: 'DFS', message: `controller elected on node (${self.id}) ${self.name}`, code: EventCode.controllerElected })
      .catch((err: Error) => this.opts.logger.warn({ err: err.message }, 'could not write the election event'));
    for (const prefix of [keys.nodesPrefix, keys.alivePrefix, keys.volumesPrefix]) {
      try {
        const watcher = await this.etcd.watch().prefix(prefix).create();
        watcher.on('data', () => this.triggerReconcile());
        watcher.on('error', (err) => this.opts.logger.warn({ err: err.message }, 'controller watch error'));
        this.watchers.push(watcher);
      } catch (err) {
        this.opts.logger.warn({ err: (err as Error).message }, 'could not watch; relying on the resync timer');
      }
    }
    this.resyncTimer = setInterval(() => this.triggerReconcile(), this.opts.resyncIntervalMs ?? 2000);
    this.triggerReconcile();
  }

  private stepDown(): void {
    if (!this.leading) return;
    this.leading = false;
    clearInterval(this.resyncTimer);
    for (const w of this.watchers) void w.cancel().catch(() => undefined);
    this.watchers = [];
    this.opts.logger.info('this node is no longer the controller');
  }

  /** Coalesce bursts of watch events into one reconcile at a time. */
  private triggerReconcile(): void {
    if (!this.leading) return;
    if (this.reconcileRunning) {
      this.reconcileAgain = true;
      return;
    }
    this.reconcileRunning = true;
    void this.reconcile()
      .catch((err: Error) => this.opts.logger.warn({ err: err.message }, 'reconcile failed; will retry'))
      .finally(() => {
        this.reconcileRunning = false;
        if (this.reconcileAgain) {
          this.reconcileAgain = false;
          this.triggerReconcile();
        }
      });
  }

  private async reconcile(): Promise<void> {
    const [nodes, alive] = await Promise.all([listNodes(this.etcd), aliveNodeIds(this.etcd)]);
    const changes = decideNodeStatus(nodes, alive, this.opts.self());
    const now = new Date();
    for (const change of changes) {
      const applied = await this.guardedUpdate(
        keys.node(change.nodeId),
        (cur: NodeRecord) => (cur.status === change.from ? { ...cur, status: change.to, statusSince: now.toISOString() } : undefined),
        change.events.map((e) => EventLog.record(e, now)),
      );
      // Lost leadership or the record moved on: the watch brings the next reconcile.
      if (!applied) return;
      this.opts.logger.info({ node: change.nodeId, from: change.from, to: change.to }, 'node status changed');
      await this.opts.events.written(change.events.length);
    }
    if (changes.length > 0) return; // volume decisions need the new node statuses: the watch brings the next round

    const volumes = await listVolumes(this.etcd);
    const volumeChanges = decideVolumes({ volumes, nodes, alive, now, rebuildGraceMs: this.opts.rebuildGraceMs, newReplicaId: (v) => newReplicaId(v.uuid) });
    for (const change of volumeChanges) {
      const expected = JSON.stringify(change.before);
      const applied = await this.guardedUpdate(
        keys.volume(change.volume),
        (cur: unknown) => (JSON.stringify(cur) === expected ? change.after : undefined),
        change.events.map((e) => EventLog.record(e, now)),
      );
      if (!applied) continue;
      this.opts.logger.info({ volume: change.volume, kind: change.kind, epoch: change.after.epoch }, 'volume changed');
      await this.opts.events.written(change.events.length);
    }
  }

  /**
   * Compare-and-swap a record, but only while our campaign key still exists:
   * a controller that was paused past its lease must not act on old decisions.
   */
  private async guardedUpdate<T>(
    key: string,
    change: (cur: T) => T | undefined,
    alsoPut: ReadonlyArray<{ key: string; value: string }> = [],
  ): Promise<boolean> {
    const current = await getVersioned<T>(this.etcd, key);
    if (!current) return false;
    const next = change(current.value);
    if (next === undefined) return false;
    const res = await this.etcd
      .if(key, 'Mod', '==', current.modRevision)
      .and(this.campaignKey, 'Create', '>', 0)
      .then(this.etcd.put(key).value(JSON.stringify(next)), ...alsoPut.map((p) => this.etcd.put(p.key).value(p.value)))
      .commit();
    return res.succeeded;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.stepDown();
    const campaign = this.campaign;
    this.campaign = undefined;
    await campaign?.resign().catch(() => undefined);
  }
}
