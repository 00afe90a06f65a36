// Placement: which drives get a volume's copies. Pure, so every rule is tested
// directly: distinct nodes, the requested drive type, room for the copy, never
// on cordoned or failed nodes, spread by free space.
import type { DriveType, NodeRecord, VolumeRecord } from './types';

export interface PlacementRequest {
  sizeBytes: number;
  driveType: DriveType;
  /** How many new copies to place. */
  count: number;
  /** Nodes that already hold a copy of this volume (never a second one there). */
  excludeNodes?: ReadonlySet<string>;
  /** Put the first copy here if the node qualifies (locality). */
  preferNode?: string;
}

export interface PlacedReplica {
  nodeId: string;
  driveId: string;
}

export type PlacementResult = { ok: true; replicas: PlacedReplica[] } | { ok: false; reason: string };

/** Bytes promised to existing copies on each drive (key: nodeId/driveId). */
export function reservedBytes(volumes: readonly VolumeRecord[]): Map<string, number> {
  const reserved = new Map<string, number>();
  for (const v of volumes) {
    for (const r of v.replicas) {
      const key = `${r.nodeId}/${r.driveId}`;
      reserved.set(key, (reserved.get(key) ?? 0) + v.sizeBytes);
    }
  }
  return reserved;
}

interface Candidate {
  nodeId: string;
  nodeName: string;
  driveId: string;
  free: number;
}

export function placeReplicas(nodes: readonly NodeRecord[], volumes: readonly VolumeRecord[], req: PlacementRequest): PlacementResult {
  if (req.count <= 0) return { ok: true, replicas: [] };
  const reserved = reservedBytes(volumes);
  const exclude = req.excludeNodes ?? new Set<string>();
  const schedulable = nodes.filter((n) => n.status === 'normal' && !n.cordoned && !exclude.has(n.id));
  const withType = schedulable.filter((n) => n.drives.some((d) => d.type === req.driveType));

  // Best drive per node: the one of the right type with the most free space.
  const candidates: Candidate[] = [];
  for (const node of withType) {
    let best: Candidate | undefined;
    for (const d of node.drives) {
      if (d.type !== req.driveType) continue;
      const free = d.capacityBytes - (reserved.get(`${node.id}/${d.id}`) ?? 0);
      if (free < req.sizeBytes) continue;
      if (!best || free > best.free) best = { nodeId: node.id, nodeName: node.name, driveId: d.id, free };
    }
    if (best) candidates.push(best);
  }

  if (candidates.length < req.count) {
    const why =
      withType.length < req.count
        ? `only ${withType.length} schedulable node(s) have a ${req.driveType} drive`
        : `only ${candidates.length} node(s) have ${req.driveType} room for ${req.sizeBytes} bytes`;
    return { ok: false, reason: `cannot place ${req.count} new copy(ies): ${why} (nodes in maintenance or cordoned are not used)` };
  }
  // Most free space first; ties broken by name so placement is deterministic.
  candidates.sort((a, b) => b.free - a.free || a.nodeName.localeCompare(b.nodeName));
  const preferred = candidates.findIndex((c) => c.nodeId === req.preferNode);
  if (preferred > 0) candidates.unshift(...candidates.splice(preferred, 1));
  return { ok: true, replicas: candidates.slice(0, req.count).map((c) => ({ nodeId: c.nodeId, driveId: c.driveId })) };
}
