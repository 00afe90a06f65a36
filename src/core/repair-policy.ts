// Which copies of an attached volume its owner starts to rebuild now: the
// host's repair decision, pure, so the host and the simulation share it; and
// which node takes a detached volume below its level to repair it.
import type { ReplicaState, VolumeRecord } from './types';

export interface RepairCopy {
  id: string;
  nodeId: string;
  /** State recorded in etcd. */
  state: ReplicaState;
  fullResync?: boolean;
}

export interface RepairInput {
  copies: readonly RepairCopy[];
  level: number;
  nodeUp: (nodeId: string) => boolean;
  /** Copies whose rebuild runs now. */
  running: ReadonlySet<string>;
  /** Whether a missed map is stored for the copy. */
  hasMissedMap: (id: string) => boolean;
  /** The copy's state in the owner's engine, if it knows the copy. */
  engineState: (id: string) => ReplicaState | undefined;
}

export interface RepairDecision {
  id: string;
  mode: 'full' | 'incremental';
}

/**
 * A copy placed new by the controller ('rebuilding' in etcd) is filled in
 * full; a stale copy whose node is up is resynced — from its missed map if one
 * is stored and it does not need a full copy — unless the volume already has
 * `level` in-sync copies (then the controller drops it). Never two rebuilds of
 * one copy at once.
 */
export function decideRepairs(input: RepairInput): RepairDecision[] {
  // As the controller counts (mayDropStaleCopy): whole copies on live nodes; a rebuilding one may yet fail.
  const inSync = input.copies.filter((c) => c.state === 'in-sync' && input.nodeUp(c.nodeId)).length;
  const out: RepairDecision[] = [];
  for (const c of input.copies) {
    if (input.running.has(c.id) || !input.nodeUp(c.nodeId)) continue;
    const inEngine = input.engineState(c.id);
    if (c.state === 'rebuilding' && inEngine !== 'in-sync' && inEngine !== 'rebuilding') out.push({ id: c.id, mode: 'full' });
    else if (c.state === 'stale' && inEngine !== 'rebuilding' && inSync < input.level) {
      out.push({ id: c.id, mode: c.fullResync || !input.hasMissedMap(c.id) ? 'full' : 'incremental' });
    }
  }
  return out;
}

export interface DetachedRepairInput {
  volume: Pick<VolumeRecord, 'phase' | 'level' | 'replicas'>;
  /** Alive and not in maintenance. */
  nodeUp: (nodeId: string) => boolean;
  /** How long the copy's node has been down (in maintenance), or undefined if it is up. */
  downForMs: (nodeId: string) => number | undefined;
  /** How long copies on a down node are waited for before the controller replaces them. */
  rebuildGraceMs: number;
}

/**
 * Does a volume nobody uses need an owner to repair it, and which node? Only
 * an owner's engine rebuilds copies, so a detached volume below its level
 * (its service scaled to 0, say) would otherwise stay degraded. It needs one
 * when it has fewer whole copies on live nodes than its level and there is
 * copy work: a stale copy whose node is up (a resync), a stale copy whose
 * node has been down past the grace period (the controller replaces it once
 * the volume has an owner), or a copy missing. The repairer holds a whole
 * copy (it is the source); every node computes the same one, the lowest id,
 * and the owner transaction lets only one attach anyway. The repairer
 * releases the volume as soon as this answers undefined for it again.
 */
export function repairOwnerFor(input: DetachedRepairInput): string | undefined {
  const v = input.volume;
  if (v.phase !== 'ready') return undefined;
  const sources = v.replicas.filter((r) => r.state === 'in-sync' && input.nodeUp(r.nodeId)).map((r) => r.nodeId);
  if (sources.length === 0 || sources.length >= v.level) return undefined;
  const work =
    v.replicas.length < v.level ||
    v.replicas.some((r) => r.state === 'rebuilding' || (r.state === 'stale' && (input.nodeUp(r.nodeId) || (input.downForMs(r.nodeId) ?? -1) >= input.rebuildGraceMs)));
  return work ? sources.sort()[0] : undefined;
}
