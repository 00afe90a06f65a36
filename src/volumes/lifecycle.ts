// Volume lifecycle across the cluster: create (record + a copy on each placed
// node), remove, grow. Each either completes or undoes what it did, so a
// failure leaves nothing behind.
import { randomBytes } from 'node:crypto';
import type { Etcd3 } from 'etcd3';
import { placeReplicas, reservedBytes } from '../core/placement';
import { resolveSpec, validateVolumeName, type VolumeOptions } from '../core/profiles';
import { EventCode, type NodeRecord, type ReplicaRecord, type VolumeRecord } from '../core/types';
import { formatSize } from '../core/units';
import type { EventLog } from '../store/events';
import { listNodes } from '../store/nodes';
import { deleteVolumeRecord, findProfile, insertVolume, listVolumes, requireVolume, updateVolume } from '../store/volumes';
import { ConflictError, NotFoundError, UserError, errorMessage } from '../util/errors';
import type { Logger } from '../util/log';
import { withReplicaClient, type ReplicaLinkOptions } from './replica-links';

export interface LifecycleDeps {
  etcd: Etcd3;
  events: EventLog;
  links: ReplicaLinkOptions;
  logger: Logger;
}

export interface CreateRequest {
  name: string;
  options: VolumeOptions;
  profile?: string;
  /** Put a copy on this node (by name or id) if it qualifies. */
  node?: string;
}

export const INITIAL_EPOCH = 1;

export function newReplicaId(uuid: string): string {
  return `${uuid}-${randomBytes(3).toString('hex')}`;
}

export function volumeLabel(v: Pick<VolumeRecord, 'name' | 'vdisk'>): string {
  return `volume ${v.name} (${v.vdisk})`;
}

function nodeOf(nodes: readonly NodeRecord[], id: string): NodeRecord {
  const n = nodes.find((x) => x.id === id);
  if (!n) throw new Error(`node ${id} is not in the cluster`);
  return n;
}

export async function createVolume(deps: LifecycleDeps, req: CreateRequest): Promise<VolumeRecord> {
  const { etcd } = deps;
  validateVolumeName(req.name);
  const profile = req.profile ? await findProfile(etcd, req.profile) : undefined;
  if (req.profile && !profile) throw new NotFoundError(`no profile named ${req.profile} (see \`cio profile ls\`)`);
  const spec = resolveSpec(req.options, profile);
  const [nodes, volumes] = await Promise.all([listNodes(etcd), listVolumes(etcd)]);
  if (volumes.some((v) => v.name === req.name)) throw new ConflictError(`a volume named ${req.name} already exists`);
  let preferNode: string | undefined;
  if (req.node) {
    const n = nodes.find((x) => x.name === req.node || x.id === req.node);
    if (!n) throw new NotFoundError(`no node named ${req.node} in this cluster`);
    preferNode = n.id;
  }
  const withType = nodes.filter((n) => n.drives.some((d) => d.type === spec.driveType));
  if (spec.level > withType.length) {
    throw new UserError(`level ${spec.level} needs ${spec.level} nodes with a ${spec.driveType} drive; this cluster has ${withType.length}`);
  }
  const placed = placeReplicas(nodes, volumes, { sizeBytes: spec.sizeBytes, driveType: spec.driveType, count: spec.level, preferNode });
  if (!placed.ok) throw new UserError(`cannot create ${req.name} (${formatSize(spec.sizeBytes)}, ${spec.level}-copy): ${placed.reason}`);
  if (preferNode && placed.replicas[0].nodeId !== preferNode) {
    throw new UserError(`node ${req.node} cannot hold a copy of ${req.name}: it is not normal, is cordoned, or lacks ${spec.driveType} room`);
  }

  const uuid = randomBytes(4).toString('hex');
  const now = new Date().toISOString();
  const replicas: ReplicaRecord[] = placed.replicas.map((p) => ({ id: newReplicaId(uuid), nodeId: p.nodeId, driveId: p.driveId, state: 'in-sync', createdAt: now }));
  await insertVolume(etcd, (vdisk) => ({
    name: req.name,
    vdisk,
    uuid,
    ...spec,
    profile: profile?.name ?? null,
    phase: 'creating',
    owner: null,
    epoch: INITIAL_EPOCH,
    attachment: null,
    replicas,
    createdAt: now,
  }));

  const created: ReplicaRecord[] = [];
  try {
    // Copies start identical (all zeroes), so all are in-sync from birth.
    await Promise.all(
      replicas.map(async (r) => {
        const node = nodeOf(nodes, r.nodeId);
        await withReplicaClient(node, deps.links, (c) =>
          c.create({ replicaId: r.id, volumeUuid: uuid, size: spec.sizeBytes, thick: spec.provision === 'thick', epoch: INITIAL_EPOCH, driveId: r.driveId, state: 'in-sync' }),
        ).catch((err: unknown) => {
          throw new UserError(`could not create the copy on node ${node.name}: ${errorMessage(err)}`);
        });
        created.push(r);
      }),
    );
  } catch (err) {
    await Promise.all(
      created.map((r) =>
        withReplicaClient(nodeOf(nodes, r.nodeId), deps.links, (c) => c.delete(r.id, INITIAL_EPOCH)).catch((e: unknown) =>
          deps.logger.warn({ replica: r.id, err: errorMessage(e) }, 'could not remove a copy while undoing a failed create'),
        ),
      ),
    );
    await deleteVolumeRecord(etcd, req.name);
    throw err;
  }
  const ready = await updateVolume(etcd, req.name, (cur) => ({ ...cur, phase: 'ready' }));
  for (const r of replicas) {
    await deps.events.write({ level: 'info', component: 'DFS', message: `${volumeLabel(ready)} created on node ${r.nodeId}`, code: EventCode.volumeCreatedOnNode });
  }
  return ready;
}

export async function removeVolume(deps: LifecycleDeps, name: string): Promise<void> {
  const { etcd } = deps;
  const vol = await requireVolume(etcd, name);
  if (vol.owner) {
    const owner = (await listNodes(etcd)).find((n) => n.id === vol.owner);
    throw new ConflictError(`volume ${name} is attached on node ${owner?.name ?? vol.owner}; detach it first`);
  }
  const marked = await updateVolume(etcd, name, (cur) => {
    if (cur.owner) throw new ConflictError(`volume ${name} was just attached; detach it first`);
    return { ...cur, phase: 'deleting' };
  });
  const nodes = await listNodes(etcd);
  for (const r of marked.replicas) {
    const node = nodes.find((n) => n.id === r.nodeId);
    try {
      if (!node) throw new Error('node is gone');
      await withReplicaClient(node, deps.links, (c) => c.delete(r.id, marked.epoch));
    } catch (err) {
      // The file is removed by that node's agent when it next starts (orphan sweep).
      deps.logger.warn({ replica: r.id, node: r.nodeId, err: errorMessage(err) }, 'copy not removed now; its node will sweep it');
    }
    await deps.events.write({ level: 'info', component: 'DFS', message: `${volumeLabel(marked)} removed on node ${r.nodeId}`, code: EventCode.volumeRemovedOnNode });
  }
  await deleteVolumeRecord(etcd, name);
}

export async function growVolume(deps: LifecycleDeps, name: string, capacity: string | number): Promise<VolumeRecord> {
  const { etcd } = deps;
  const vol = await requireVolume(etcd, name);
  const newSize = resolveSpec({ capacity, level: vol.level, type: vol.driveType, provision: vol.provision, filesystem: vol.filesystem }).sizeBytes;
  if (newSize < vol.sizeBytes) throw new UserError(`volumes only grow: ${name} is ${formatSize(vol.sizeBytes)}, asked for ${formatSize(newSize)}`);
  if (newSize === vol.sizeBytes) return vol;
  if (vol.owner) throw new ConflictError(`volume ${name} is attached; detach it before growing it`);
  if (vol.replicas.some((r) => r.state !== 'in-sync')) throw new ConflictError(`volume ${name} has copies that are not in sync; grow it once they are (see \`cio volume info ${name}\`)`);
  const [nodes, volumes] = await Promise.all([listNodes(etcd), listVolumes(etcd)]);
  const reserved = reservedBytes(volumes);
  for (const r of vol.replicas) {
    const node = nodeOf(nodes, r.nodeId);
    const drive = node.drives.find((d) => d.id === r.driveId);
    const after = (reserved.get(`${r.nodeId}/${r.driveId}`) ?? 0) + newSize - vol.sizeBytes;
    if (!drive || after > drive.capacityBytes) throw new UserError(`drive ${r.driveId} of node ${node.name} has no room to grow ${name} to ${formatSize(newSize)}`);
  }
  for (const r of vol.replicas) {
    const node = nodeOf(nodes, r.nodeId);
    await withReplicaClient(node, deps.links, (c) => c.resize(r.id, vol.epoch, newSize)).catch((err: unknown) => {
      throw new UserError(`could not grow the copy on node ${node.name}: ${errorMessage(err)}`);
    });
  }
  return updateVolume(etcd, name, (cur) => {
    if (cur.owner) throw new ConflictError(`volume ${name} was attached while growing; detach it and try again`);
    return { ...cur, sizeBytes: newSize };
  });
}
