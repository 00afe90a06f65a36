// ciod: one agent per node. It wires the parts together — membership,
// controller candidacy, API — and takes them down in reverse order.
import { readFile } from 'node:fs/promises';
import type { Etcd3 } from 'etcd3';
import { Controller } from '../controller/controller';
import { isControllerGauge } from '../api/metrics';
import { startApi } from '../api/server';
import type { NodeRecord } from '../core/types';
import { connectEtcd } from '../store/etcd';
import { EventLog } from '../store/events';
import { keys } from '../store/keys';
import type { NodeIdentity } from '../store/nodes';
import type { Logger } from '../util/log';
import { errorMessage } from '../util/errors';
import type { AgentConfig } from './config';
import { measureDrives, prepareDrives } from './drives';
import { Membership } from './membership';
import { ReplicaServer } from '../replica/server';
import { ReplicaStore } from '../replica/store';
import { VolumeHost } from '../volumes/host';
import { sweepOrphans } from '../volumes/sweep';
import { PeerClient } from '../api/peer';
import path from 'node:path';
import { loadOrCreateNodeId } from './node-id';
import { startPlugin } from '../plugin/wire';

const VERSION = '0.1.0';

export class Agent {
  private etcd: Etcd3 | undefined;
  private membership: Membership | undefined;
  private controller: Controller | undefined;
  private api: { close(): Promise<void> } | undefined;
  private gaugeTimer: NodeJS.Timeout | undefined;
  private replicaServer: ReplicaServer | undefined;
  private stores = new Map<string, ReplicaStore>();
  private host: VolumeHost | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private plugin: { stop(): Promise<void> } | undefined;
  nodeId = '';

  constructor(
    private readonly config: AgentConfig,
    private readonly logger: Logger,
  ) {}

  async start(): Promise<NodeRecord> {
    const cfg = this.config;
    this.nodeId = await loadOrCreateNodeId(cfg.dataDir);
    await prepareDrives(cfg.drives);
    const tls = { ca: cfg.tls.ca, cert: cfg.tls.cert, key: cfg.tls.key };
    const etcd = connectEtcd({ endpoints: cfg.etcd.endpoints, tls });
    this.etcd = etcd;
    // The first agent of a cluster names it; later ones leave the record alone.
    await etcd
      .if(keys.cluster, 'Create', '==', 0)
      .then(etcd.put(keys.cluster).value(JSON.stringify({ name: cfg.clusterName, createdAt: new Date().toISOString() })))
      .commit();

    // Serve this node's copies before joining, so a node that looks alive can serve.
    const secret = Buffer.from((await readFile(cfg.tls.replicaSecret, 'utf8')).trim());
    for (const d of cfg.drives) this.stores.set(d.id ?? 'd1', new ReplicaStore(d.path));
    const replicaServer = new ReplicaServer({ host: cfg.ip, port: cfg.replicaPort, secret, stores: this.stores, logger: this.logger.child({ component: 'replica' }) });
    this.replicaServer = replicaServer;
    await replicaServer.listen();
    const links = { secret, connectTimeoutMs: 3000, localAddress: cfg.ip };

    const identity = async (): Promise<NodeIdentity> => ({
      id: this.nodeId,
      name: cfg.name,
      ip: cfg.ip,
      apiPort: cfg.apiPort,
      replicaPort: cfg.replicaPort,
      drives: await measureDrives(cfg.drives),
      version: VERSION,
    });
    const membership = new Membership(etcd, { identity, leaseTtlSeconds: cfg.leaseTtlSeconds, logger: this.logger.child({ component: 'membership' }) });
    this.membership = membership;
    const record = await membership.start();

    const events = new EventLog(etcd);
    const self = (): NodeRecord => {
      if (!membership.record) throw new Error('membership not started');
      return membership.record;
    };
    this.controller = new Controller(etcd, {
      self,
      electionTtlSeconds: cfg.leaseTtlSeconds,
      rebuildGraceMs: cfg.rebuildGraceSeconds * 1000,
      events,
      logger: this.logger.child({ component: 'controller' }),
    });
    this.controller.start();
    this.gaugeTimer = setInterval(() => isControllerGauge.set(this.controller?.isLeader ? 1 : 0), 1000);
    this.gaugeTimer.unref();

    const controller = this.controller;
    const peers = new PeerClient(tls);
    const host = new VolumeHost({
      etcd,
      events,
      self,
      links,
      socketDir: path.join(cfg.dataDir, 'nbd'),
      replicaTimeoutMs: cfg.replicaTimeoutMs,
      rebuildBytesPerSecond: cfg.rebuildMaxMiBps * 1024 * 1024,
      rebuildGraceMs: cfg.rebuildGraceSeconds * 1000,
      repairDelayMs: cfg.repairDelaySeconds * 1000,
      lease: membership.window,
      releaseElsewhere: async (node, volume) => {
        await peers.call(node, 'POST', `/v1/volumes/${encodeURIComponent(volume)}/detach`, {});
      },
      localChannel: () => replicaServer.localChannel(),
      logger: this.logger.child({ component: 'volumes' }),
    });
    this.host = host;
    // A new lease after a lost one: volumes still ours serve I/O again under it.
    membership.on('alive', () => {
      host.leaseRenewed().catch((err: unknown) => this.logger.warn({ err: errorMessage(err) }, 'could not check ownership under the new lease'));
    });
    const lifecycle = { etcd, events, links, logger: this.logger.child({ component: 'volumes' }) };
    this.api = await startApi(
      {
        etcd,
        events,
        self,
        controllerId: () => controller.leaderId(),
        logger: this.logger,
        volumes: { etcd, self, lifecycle, host, peers },
      },
      { host: cfg.ip, port: cfg.apiPort, tls, token: (await readFile(cfg.tls.token, 'utf8')).trim() },
    );
    await host.watch();
    await host.resumeOwned();
    if (cfg.pluginSocket) {
      this.plugin = await startPlugin({
        etcd, lifecycle, host, self,
        socketPath: cfg.pluginSocket, mountRoot: cfg.mountRoot, workDir: path.join(cfg.dataDir, 'plugin'),
        logger: this.logger.child({ component: 'plugin' }),
      });
    }
    const sweep = (): void => {
      sweepOrphans(etcd, this.stores, this.logger.child({ component: 'sweep' })).catch((err: Error) =>
        this.logger.warn({ err: err.message }, 'orphan sweep failed'),
      );
    };
    sweep();
    this.sweepTimer = setInterval(sweep, 10_000);
    this.sweepTimer.unref();
    this.logger.info({ node: record.name, id: record.id, role: record.role, api: `https://${cfg.ip}:${cfg.apiPort}` }, 'agent started');
    return record;
  }

  async stop(): Promise<void> {
    clearInterval(this.gaugeTimer);
    clearInterval(this.sweepTimer);
    // Unmount Docker's volumes while the NBD exports under them still run.
    await this.plugin?.stop().catch(() => undefined);
    await this.api?.close().catch(() => undefined);
    await this.host?.stop().catch(() => undefined);
    await this.replicaServer?.close().catch(() => undefined);
    for (const s of this.stores.values()) await s.close().catch(() => undefined);
    await this.controller?.stop();
    await this.membership?.stop();
    this.etcd?.close();
  }
}
