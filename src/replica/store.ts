// The replicas on one drive: `<drive>/replicas/<id>.img` (sparse image) and
// `<id>.meta.json`. The metadata file is the commit record: a replica exists
// iff its metadata does; create writes it last and delete removes it first,
// so a crash in between leaves at most an orphan image that the next create
// of the same id clears.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { invariant } from '../util/errors';
import { ReplicaError, errnoCode, staleEpoch } from './errors';
import * as fsext from '../native/fsext';
import { type ReplicaMeta, type ReplicaState, isValidEpoch, isValidReplicaId, isValidSize, readMeta, syncDir, writeMeta } from './meta';
import { Replica } from './replica';

export interface CreateReplicaOptions {
  replicaId: string;
  volumeUuid: string;
  size: number;
  /** Reserve every block now (fails with ENOSPC, leaving nothing, if the drive is too small). */
  thick?: boolean;
  /** Initial epoch (the volume's epoch at placement time). Default 0. */
  epoch?: number;
  state?: ReplicaState;
}

const META_SUFFIX = '.meta.json';
const IMAGE_SUFFIX = '.img';

export class ReplicaStore {
  /** Directory holding the image and metadata files. */
  readonly dir: string;
  private readonly opened = new Map<string, Replica>();
  private readonly opening = new Map<string, Promise<Replica>>();
  // Ids with a create or delete in progress: those exclude each other.
  private readonly busy = new Set<string>();
  private closed = false;

  constructor(readonly driveDir: string) {
    this.dir = path.join(driveDir, 'replicas');
  }

  imagePath(replicaId: string): string {
    return path.join(this.dir, replicaId + IMAGE_SUFFIX);
  }

  metaPath(replicaId: string): string {
    return path.join(this.dir, replicaId + META_SUFFIX);
  }

  /** The replica if it is already open (no I/O): the server's fast path. */
  cached(replicaId: string): Replica | undefined {
    return this.opened.get(replicaId);
  }

  async exists(replicaId: string): Promise<boolean> {
    if (!isValidReplicaId(replicaId)) return false;
    if (this.opened.has(replicaId)) return true;
    try {
      await fsp.access(this.metaPath(replicaId));
      return true;
    } catch {
      return false;
    }
  }

  async create(opts: CreateReplicaOptions): Promise<Replica> {
    const { replicaId, volumeUuid, size } = opts;
    const thick = opts.thick ?? false;
    const epoch = opts.epoch ?? 0;
    this.checkOpen();
    if (!isValidReplicaId(replicaId)) throw new ReplicaError('EINVAL', `invalid replica id ${JSON.stringify(replicaId)}`);
    if (typeof volumeUuid !== 'string' || volumeUuid.length === 0 || volumeUuid.length > 64) {
      throw new ReplicaError('EINVAL', `replica ${replicaId}: invalid volume uuid`);
    }
    if (!isValidSize(size)) throw new ReplicaError('EINVAL', `replica ${replicaId}: size must be a positive multiple of 512, got ${size}`);
    if (!isValidEpoch(epoch)) throw new ReplicaError('EINVAL', `replica ${replicaId}: invalid epoch ${epoch}`);
    return this.exclusively(replicaId, async () => {
      if (await this.exists(replicaId)) throw new ReplicaError('EEXIST', `replica ${replicaId} already exists`);
      await fsp.mkdir(this.dir, { recursive: true });
      const image = this.imagePath(replicaId);
      await fsp.rm(image, { force: true }); // orphan of a crashed create or delete
      const fh = await fsp.open(image, 'wx+', 0o600);
      try {
        await fh.truncate(size);
        if (thick) await fsext.allocate(fh.fd, 0, size);
        await fh.sync();
        const now = new Date().toISOString();
        const meta: ReplicaMeta = { version: 1, replicaId, volumeUuid, size, epoch, state: opts.state ?? 'empty', thick, createdAt: now, updatedAt: now };
        await writeMeta(this.metaPath(replicaId), meta);
        const replica = new Replica(fh, meta, this.metaPath(replicaId));
        this.opened.set(replicaId, replica);
        return replica;
      } catch (err) {
        await fh.close().catch(() => undefined);
        await fsp.rm(image, { force: true }).catch(() => undefined);
        await syncDir(this.dir).catch(() => undefined);
        throw err;
      }
    });
  }

  /** Opens a replica (once: later calls share the same Replica, its epoch and its range lock). */
  async open(replicaId: string): Promise<Replica> {
    this.checkOpen();
    const open = this.opened.get(replicaId);
    if (open) return open;
    let pending = this.opening.get(replicaId);
    if (!pending) {
      pending = this.load(replicaId).finally(() => this.opening.delete(replicaId));
      this.opening.set(replicaId, pending);
    }
    return pending;
  }

  /**
   * Deletes a replica and frees its space. With `epoch`, refuses (ESTALE) if
   * the replica has accepted a newer epoch: a fenced-off owner cannot delete.
   */
  async delete(replicaId: string, opts: { epoch?: number } = {}): Promise<void> {
    this.checkOpen();
    if (!isValidReplicaId(replicaId)) throw new ReplicaError('EINVAL', `invalid replica id ${JSON.stringify(replicaId)}`);
    await this.exclusively(replicaId, async () => {
      let replica: Replica | undefined;
      let epoch: number;
      try {
        replica = await this.open(replicaId);
        epoch = replica.epoch;
      } catch (err) {
        // A replica whose image is gone or unreadable can still be deleted,
        // as long as its metadata (and so its epoch) can be read.
        if (err instanceof ReplicaError && err.code === 'ENOENT') throw err;
        epoch = (await readMeta(this.metaPath(replicaId))).epoch;
      }
      if (opts.epoch !== undefined && opts.epoch < epoch) throw staleEpoch(replicaId, opts.epoch, epoch);
      this.opened.delete(replicaId);
      await replica?.retire('deleted');
      await fsp.unlink(this.metaPath(replicaId));
      await fsp.rm(this.imagePath(replicaId), { force: true });
      await syncDir(this.dir);
    });
  }

  /** Metadata of every replica on this drive. */
  async list(): Promise<ReplicaMeta[]> {
    const names = await this.readDir();
    const metas: ReplicaMeta[] = [];
    for (const name of names) {
      if (!name.endsWith(META_SUFFIX)) continue;
      const id = name.slice(0, -META_SUFFIX.length);
      const open = this.opened.get(id);
      if (open) {
        metas.push(open.info());
        continue;
      }
      try {
        metas.push(await readMeta(path.join(this.dir, name)));
      } catch (err) {
        if (errnoCode(err) !== 'ENOENT') throw err; // deleted meanwhile
      }
    }
    return metas.sort((a, b) => a.replicaId.localeCompare(b.replicaId));
  }

  /** Bytes allocated on disk by all replica images (sum of st_blocks * 512). */
  async allocatedBytes(): Promise<number> {
    let total = 0;
    for (const name of await this.readDir()) {
      if (!name.endsWith(IMAGE_SUFFIX)) continue;
      try {
        total += (await fsp.stat(path.join(this.dir, name))).blocks * 512;
      } catch (err) {
        if (errnoCode(err) !== 'ENOENT') throw err;
      }
    }
    return total;
  }

  /** Closes every open replica (after their running operations finish). */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.opening.values()]);
    const replicas = [...this.opened.values()];
    this.opened.clear();
    await Promise.all(replicas.map((r) => r.retire('store closed')));
  }

  private async load(replicaId: string): Promise<Replica> {
    if (!isValidReplicaId(replicaId)) throw new ReplicaError('EINVAL', `invalid replica id ${JSON.stringify(replicaId)}`);
    let meta: ReplicaMeta;
    try {
      meta = await readMeta(this.metaPath(replicaId));
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') throw new ReplicaError('ENOENT', `no replica ${replicaId} on ${this.driveDir}`);
      throw err;
    }
    invariant(meta.replicaId === replicaId, `metadata of ${replicaId} names ${meta.replicaId}`);
    const fh = await fsp.open(this.imagePath(replicaId), 'r+');
    try {
      // Growing is truncate-then-metadata, so the image is never shorter than
      // the recorded size unless something outside cio cut it.
      const st = await fh.stat();
      if (st.size < meta.size) await fh.truncate(meta.size);
    } catch (err) {
      await fh.close();
      throw err;
    }
    const replica = new Replica(fh, meta, this.metaPath(replicaId));
    if (this.closed) {
      await replica.retire('store closed');
      this.checkOpen();
    }
    this.opened.set(replicaId, replica);
    return replica;
  }

  private async exclusively<T>(replicaId: string, fn: () => Promise<T>): Promise<T> {
    if (this.busy.has(replicaId)) throw new ReplicaError('EBUSY', `replica ${replicaId} is being created or deleted`);
    this.busy.add(replicaId);
    try {
      return await fn();
    } finally {
      this.busy.delete(replicaId);
    }
  }

  private async readDir(): Promise<string[]> {
    try {
      return await fsp.readdir(this.dir);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return [];
      throw err;
    }
  }

  private checkOpen(): void {
    if (this.closed) throw new ReplicaError('ESHUTDOWN', `replica store ${this.driveDir} is closed`);
  }
}
