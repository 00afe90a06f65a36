// The Docker volume plugin (legacy socket plugin, "VolumeDriver"): Docker's
// calls mapped onto cio. Mount attaches the volume on this node (taking it
// over from a dead owner) and mounts its filesystem; Unmount of the last
// mount ID unmounts and releases it. Ownership itself is fenced by the volume
// host (one writer, epoch bump); this class only keeps the per-node counts.
import path from 'node:path';
import { attachFilesystem, cleanupAttachments, detachFilesystem, loadAttachState, type AttachMethod } from '../attach';
import { mountAt } from '../attach/mounts';
import { validateVolumeName, type Profile } from '../core/profiles';
import type { VolumeRecord } from '../core/types';
import { formatSize } from '../core/units';
import type { CreateRequest } from '../volumes/lifecycle';
import { ConflictError, NotFoundError, UserError, errorMessage } from '../util/errors';
import type { Logger } from '../util/log';
import { MountTable, loadMountTable, saveMountTable } from './mount-table';
import { createMismatches, parseCreateOptions } from './options';
import { PluginSocketServer, type PluginBody, type PluginHandler } from './socket-server';

export const DEFAULT_PLUGIN_SOCKET = '/run/docker/plugins/cio.sock';

/** What the plugin needs of the volume host (src/volumes/host.ts VolumeHost). */
export interface PluginHost {
  attach(name: string): Promise<VolumeRecord>;
  detach(name: string): Promise<VolumeRecord>;
  isAttached(name: string): boolean;
}

/** The cluster's volumes as the plugin sees them (etcd and the lifecycle functions behind it). */
export interface PluginVolumes {
  get(name: string): Promise<VolumeRecord | undefined>;
  list(): Promise<VolumeRecord[]>;
  create(req: CreateRequest): Promise<VolumeRecord>;
  remove(name: string): Promise<void>;
  findProfile(name: string): Promise<Profile | undefined>;
  nodeName(id: string): Promise<string | undefined>;
  /** Record in the volume's attachment how and where it is mounted (shown by `cio volume info`). */
  recordMount(name: string, method: string, mountpoint: string): Promise<void>;
}

export interface VolumePluginOptions {
  host: PluginHost;
  volumes: PluginVolumes;
  /** This node's id, to tell whether it owns a volume. */
  selfId: () => string;
  socketPath: string;
  mountRoot: string;
  /** Per-node state: mount table, attachment records, nbdfuse mounts. */
  workDir: string;
  /** Force an attach method (tests); by default chosen per host. */
  attachMethod?: AttachMethod;
  /** How long Mount waits for a volume another node is still creating. */
  creatingWaitMs?: number;
  logger: Logger;
}

function requireString(body: PluginBody, key: 'Name' | 'ID'): string {
  const v = body[key];
  if (v === undefined || v === null || v === '') throw new UserError(`${key} is missing from the request`);
  if (typeof v !== 'string') throw new UserError(`${key} must be a string`);
  return v;
}

function volumeName(body: PluginBody): string {
  const name = requireString(body, 'Name');
  validateVolumeName(name);
  return name;
}

const noSuchVolume = (name: string): NotFoundError => new NotFoundError(`no such volume: ${name}`);

export class VolumePlugin {
  private table = new MountTable();
  private server: PluginSocketServer | undefined;
  /** One call at a time per volume on this node. */
  private readonly busy = new Map<string, Promise<unknown>>();
  private readonly tableFile: string;

  constructor(private readonly opts: VolumePluginOptions) {
    this.tableFile = path.join(opts.workDir, 'mounts.json');
  }

  /** Take down what a previous agent left, finish releases it did not, then serve Docker. */
  async start(): Promise<void> {
    const { logger, workDir } = this.opts;
    this.table = await loadMountTable(this.tableFile);
    await cleanupAttachments(workDir, logger);
    for (const name of this.table.names()) {
      this.table.setMounted(name, null, null); // mounted again by the next Mount
      if (this.table.get(name)?.ids.length === 0) await this.release(name).catch((err: unknown) => logger.warn({ volume: name, err: errorMessage(err) }, 'pending release failed; retried at the next call'));
    }
    await this.saveTable();
    const routes = new Map<string, PluginHandler>([
      ['/Plugin.Activate', async () => ({ Implements: ['VolumeDriver'] })],
      ['/VolumeDriver.Capabilities', async () => ({ Capabilities: { Scope: 'global' } })],
      ['/VolumeDriver.Create', (b) => this.create(b)],
      ['/VolumeDriver.Remove', (b) => this.remove(b)],
      ['/VolumeDriver.Get', (b) => this.get(b)],
      ['/VolumeDriver.List', () => this.list()],
      ['/VolumeDriver.Path', (b) => this.path(b)],
      ['/VolumeDriver.Mount', (b) => this.mount(b)],
      ['/VolumeDriver.Unmount', (b) => this.unmount(b)],
    ]);
    this.server = new PluginSocketServer(this.opts.socketPath, routes, logger);
    await this.server.listen();
    logger.info({ socket: this.opts.socketPath, mountRoot: this.opts.mountRoot }, 'docker volume plugin listening');
  }

  /**
   * Stop serving and unmount what is mounted here, in order, while the NBD
   * exports still run (the agent stops the volume host after this). The mount
   * IDs and the ownership stay: after a restart the next Mount mounts again.
   */
  async stop(): Promise<void> {
    await this.server?.close();
    this.server = undefined;
    await Promise.all(
      this.table.names().map((name) =>
        this.serial(name, async () => {
          const state = await loadAttachState(this.opts.workDir, name);
          if (state) await detachFilesystem(state, this.opts.logger);
          this.table.setMounted(name, null, null);
        }).catch((err: unknown) => this.opts.logger.error({ volume: name, err: errorMessage(err) }, 'could not unmount at stop; cleaned up at the next start')),
      ),
    );
    await this.saveTable().catch(() => undefined);
  }

  private serial<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.busy.get(name) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const settled = next.catch(() => undefined);
    this.busy.set(name, settled);
    void settled.then(() => {
      if (this.busy.get(name) === settled) this.busy.delete(name);
    });
    return next;
  }

  private saveTable(): Promise<void> {
    return saveMountTable(this.tableFile, this.table);
  }

  /** The mount point if the volume is mounted on this node for Docker, else "". */
  private mountpointOf(name: string): string {
    const v = this.table.get(name);
    return v && v.ids.length > 0 && v.mountpoint ? v.mountpoint : '';
  }

  private async create(body: PluginBody): Promise<PluginBody> {
    const name = volumeName(body);
    const req = parseCreateOptions(name, body.Opts);
    return this.serial(name, async () => {
      const profile = req.profile ? await this.opts.volumes.findProfile(req.profile) : undefined;
      if (req.profile && !profile) throw new NotFoundError(`no profile named ${req.profile} (see \`cio profile ls\`)`);
      let existing = await this.opts.volumes.get(name);
      if (!existing) {
        try {
          await this.opts.volumes.create({ name, options: req.options, profile: req.profile });
          this.opts.logger.info({ volume: name, profile: req.profile, options: req.options }, 'volume created for docker');
          return {};
        } catch (err) {
          // Swarm sends Create from every node that runs the service: another may have won.
          if (!(err instanceof ConflictError)) throw err;
          existing = await this.opts.volumes.get(name);
          if (!existing) throw err;
        }
      }
      if (existing.phase === 'deleting') throw new ConflictError(`volume ${name} is being removed; create it again once it is gone`);
      const diffs = createMismatches(existing, req, profile);
      if (diffs.length) throw new ConflictError(`volume ${name} already exists with other options: ${diffs.join('; ')}`);
      return {};
    });
  }

  private async remove(body: PluginBody): Promise<PluginBody> {
    const name = volumeName(body);
    return this.serial(name, async () => {
      const held = this.table.get(name)?.ids.length ?? 0;
      if (held > 0) throw new ConflictError(`volume ${name} is in use by ${held} mount(s) on this node; unmount it first`);
      if (this.table.get(name)) await this.release(name);
      if (!(await this.opts.volumes.get(name))) throw noSuchVolume(name);
      await this.opts.volumes.remove(name);
      this.opts.logger.info({ volume: name }, 'volume removed for docker');
      return {};
    });
  }

  private async get(body: PluginBody): Promise<PluginBody> {
    const name = volumeName(body);
    const vol = await this.opts.volumes.get(name);
    if (!vol) throw noSuchVolume(name);
    const owner = vol.owner ? ((await this.opts.volumes.nodeName(vol.owner)) ?? vol.owner) : null;
    const here = this.table.get(name);
    const status: Record<string, unknown> = {
      vdisk: vol.vdisk,
      uuid: vol.uuid,
      size: formatSize(vol.sizeBytes),
      level: `${vol.level}-copy`,
      type: vol.driveType,
      provision: vol.provision,
      filesystem: vol.filesystem,
      profile: vol.profile,
      phase: vol.phase,
      owner,
      replicas: vol.replicas.map((r) => r.state).join(', '),
    };
    if (here?.ids.length) {
      status.mounts = here.ids.length;
      status.attachMethod = here.method;
    }
    return { Volume: { Name: vol.name, Mountpoint: this.mountpointOf(name), CreatedAt: vol.createdAt, Status: status } };
  }

  private async list(): Promise<PluginBody> {
    const volumes = await this.opts.volumes.list();
    return { Volumes: volumes.map((v) => ({ Name: v.name, Mountpoint: this.mountpointOf(v.name) })) };
  }

  private async path(body: PluginBody): Promise<PluginBody> {
    const name = volumeName(body);
    if (!this.table.get(name) && !(await this.opts.volumes.get(name))) throw noSuchVolume(name);
    return { Mountpoint: this.mountpointOf(name) };
  }

  /** The volume's record once it is ready; a volume another node is creating is waited for. */
  private async readyVolume(name: string): Promise<VolumeRecord> {
    const deadline = Date.now() + (this.opts.creatingWaitMs ?? 60_000);
    while (true) {
      const vol = await this.opts.volumes.get(name);
      if (!vol) throw noSuchVolume(name);
      if (vol.phase === 'ready') return vol;
      if (vol.phase === 'deleting') throw new ConflictError(`volume ${name} is being removed`);
      if (Date.now() > deadline) throw new ConflictError(`volume ${name} is still being created; try again`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  private async mount(body: PluginBody): Promise<PluginBody> {
    const name = volumeName(body);
    const id = requireString(body, 'ID');
    return this.serial(name, async () => {
      await this.readyVolume(name);
      const here = this.table.get(name);
      // Mounted already, and still ours: another container shares the mount.
      if (here?.mountpoint && this.opts.host.isAttached(name) && (await mountAt(here.mountpoint))) {
        this.table.add(name, id);
        await this.saveTable();
        return { Mountpoint: here.mountpoint };
      }
      // A mount left from before an agent restart or a lost ownership is dead: take it down first.
      const stale = await loadAttachState(this.opts.workDir, name);
      if (stale) await detachFilesystem(stale, this.opts.logger);
      if (here) {
        this.table.setMounted(name, null, null);
        await this.saveTable();
      }

      const wasAttached = this.opts.host.isAttached(name);
      const vol = await this.opts.host.attach(name); // refuses while a live node owns it
      if (!vol.attachment) throw new Error(`volume ${name} was attached without an NBD export`);
      let mounted;
      try {
        mounted = await attachFilesystem({
          name,
          uri: vol.attachment.uri,
          sizeBytes: vol.sizeBytes,
          filesystem: vol.filesystem,
          mountRoot: this.opts.mountRoot,
          workDir: this.opts.workDir,
          method: this.opts.attachMethod,
          logger: this.opts.logger,
        });
      } catch (err) {
        if (!wasAttached && !this.table.get(name)?.ids.length) {
          await this.opts.host.detach(name).catch((e: unknown) => this.opts.logger.warn({ volume: name, err: errorMessage(e) }, 'could not give the volume back after a failed mount'));
        }
        throw new UserError(`cannot mount volume ${name}: ${errorMessage(err)}`, 'EIO', 500);
      }
      this.table.add(name, id);
      this.table.setMounted(name, mounted.mountpoint, mounted.method);
      await this.saveTable();
      await this.opts.volumes
        .recordMount(name, mounted.method, mounted.mountpoint)
        .catch((err: unknown) => this.opts.logger.warn({ volume: name, err: errorMessage(err) }, 'could not record the mount in the volume record'));
      this.opts.logger.info({ volume: name, id, epoch: vol.epoch, method: mounted.method, mountpoint: mounted.mountpoint, formatted: mounted.formatted }, 'volume mounted for docker');
      return { Mountpoint: mounted.mountpoint };
    });
  }

  private async unmount(body: PluginBody): Promise<PluginBody> {
    const name = volumeName(body);
    const id = requireString(body, 'ID');
    return this.serial(name, async () => {
      const result = this.table.remove(name, id);
      if (result === 'not-held') {
        // E.g. a late Unmount from before a failover: the volume may be in use elsewhere now; leave it be.
        this.opts.logger.info({ volume: name, id }, 'Unmount for a mount ID this node does not hold; nothing to do');
        return {};
      }
      await this.saveTable();
      if (result === 'last') await this.release(name);
      return {};
    });
  }

  /**
   * The last mount ID is gone: unmount, and give the volume up if this node
   * still owns it. If another node took it over meanwhile, only the local
   * (dead) mount is taken down; the new owner is not touched.
   */
  private async release(name: string): Promise<void> {
    const state = await loadAttachState(this.opts.workDir, name);
    if (state) await detachFilesystem(state, this.opts.logger);
    this.table.setMounted(name, null, null);
    const vol = await this.opts.volumes.get(name);
    if (vol && vol.owner === this.opts.selfId()) await this.opts.host.detach(name);
    this.table.delete(name);
    await this.saveTable();
    this.opts.logger.info({ volume: name, detached: vol?.owner === this.opts.selfId() }, 'volume released by docker');
  }
}
