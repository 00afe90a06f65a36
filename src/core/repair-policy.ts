// Which copies of an attached volume its owner starts to rebuild now: the
// host's repair decision, pure, so the host and the simulation share it.
import type { ReplicaState } from './types';

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
