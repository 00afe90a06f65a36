// Pure decisions about volumes after failures: given the volume records, the
// node records and which nodes are alive, what must the controller change?
// Each decision is one new volume record (applied with compare-and-swap) plus
// the events that describe it. The copy work itself (rebuild, resync) is done
// by the owner's engine; the controller only changes the replica set.
import { placeReplicas } from './placement';
import type { EventDraft } from './node-status';
import { EventCode, type NodeRecord, type ReplicaRecord, type VolumeRecord } from './types';

export interface VolumeDecisionInput {
  volumes: readonly VolumeRecord[];
  nodes: readonly NodeRecord[];
  alive: ReadonlySet<string>;
  now: Date;
  /** How long a failed node's copies are waited for before they are replaced. */
  rebuildGraceMs: number;
  /** A fresh, never reused id for a new copy (random in production). */
  newReplicaId: (volume: VolumeRecord) => string;
}

export type VolumeChangeKind = 'failover' | 'mark-stale' | 'replace' | 'drop-stale' | 'locality' | 'retire-extra';

export interface VolumeChange {
  kind: VolumeChangeKind;
  volume: string;
  /** The record as read; the change applies only if it is still the same. */
  before: VolumeRecord;
  after: VolumeRecord;
  events: EventDraft[];
}

function label(v: VolumeRecord): string {
  return `volume ${v.name} (${v.vdisk})`;
}

/** A copy that holds or is receiving every write, on a node that is up. */
function isHealthy(r: ReplicaRecord, nodes: ReadonlyMap<string, NodeRecord>): boolean {
  return (r.state === 'in-sync' || r.state === 'rebuilding') && nodes.get(r.nodeId)?.status !== 'maintenance';
}

/**
 * May the stale copies of this volume be dropped? Only when enough copies are
 * in sync on nodes that are up to make the volume whole without them. A copy
 * still rebuilding does not count: until it is whole, a nearly whole stale
 * copy may be all there is to fall back on. The controller drops stale copies
 * by this rule; the owner skips resyncing a stale copy by the same rule, so
 * that every stale copy is either resynced or dropped.
 */
export function mayDropStaleCopy(vol: VolumeRecord, nodes: readonly NodeRecord[]): boolean {
  const inSync = vol.replicas.filter((r) => r.state === 'in-sync' && nodes.find((n) => n.id === r.nodeId)?.status !== 'maintenance');
  return inSync.length >= vol.level;
}

/**
 * Copies on down nodes become stale — unless that would leave no in-sync copy
 * on a live node: then they all keep their state, since they still hold every
 * acknowledged write, and the volume waits for one of their nodes to return.
 */
export function markDownStale(
  replicas: readonly ReplicaRecord[],
  down: (nodeId: string) => boolean,
  now: string,
  needsFullCopy: (r: ReplicaRecord) => boolean,
): ReplicaRecord[] {
  const survivors = replicas.filter((r) => r.state === 'in-sync' && !down(r.nodeId));
  if (survivors.length === 0) return [...replicas];
  return replicas.map((r) => (r.state !== 'stale' && down(r.nodeId) ? { ...r, state: 'stale', staleSince: now, fullResync: needsFullCopy(r) || r.fullResync } : r));
}

/**
 * The copies once their owner's node is gone (released by the controller, or
 * taken over by an attach that came first): copies on down nodes go stale by
 * markDownStale's rule. The dead owner's own copy may hold writes no other copy
 * got (sent to it, never acknowledged), and a half-rebuilt copy is not whole,
 * so only a full copy may make either whole again.
 */
export function copiesAfterOwnerLoss(replicas: readonly ReplicaRecord[], owner: string, down: (nodeId: string) => boolean, now: string): ReplicaRecord[] {
  return markDownStale(replicas, (id) => id === owner || down(id), now, (r) => r.nodeId === owner || r.state === 'rebuilding');
}

export function decideVolumes(input: VolumeDecisionInput): VolumeChange[] {
  const nodes = new Map(input.nodes.map((n) => [n.id, n]));
  const changes: VolumeChange[] = [];
  const now = input.now.toISOString();
  const down = (nodeId: string): boolean => !input.alive.has(nodeId) && nodes.get(nodeId)?.status === 'maintenance';
  // Volumes changed in this round, so later decisions see the new placement.
  const current = input.volumes.map((v) => v);

  for (let i = 0; i < current.length; i++) {
    const v = current[i];
    if (v.phase !== 'ready') continue;

    // 1. The owner's node died: release the volume at a new epoch so any node can
    //    attach it at once; copies on dead nodes go stale (copiesAfterOwnerLoss).
    if (v.owner && down(v.owner)) {
      const owner = v.owner;
      const after: VolumeRecord = {
        ...v,
        owner: null,
        attachment: null,
        epoch: v.epoch + 1,
        replicas: copiesAfterOwnerLoss(v.replicas, owner, down, now),
      };
      changes.push({
        kind: 'failover', volume: v.name, before: v, after,
        events: [{ level: 'info', component: 'DFS', message: `${label(v)} released from failed node ${owner}, epoch ${after.epoch}`, code: EventCode.volumeReleased }],
      });
      current[i] = after;
      continue;
    }

    // 2. Not attached: nobody writes, so copies on dead nodes can be marked stale here.
    //    (An attached volume's engine marks its own copies, as it must record what they miss.)
    if (!v.owner && v.replicas.some((r) => r.state !== 'stale' && down(r.nodeId))) {
      const replicas = markDownStale(v.replicas, down, now, (r) => r.state === 'rebuilding');
      if (JSON.stringify(replicas) !== JSON.stringify(v.replicas)) {
        const after: VolumeRecord = { ...v, replicas };
        changes.push({ kind: 'mark-stale', volume: v.name, before: v, after, events: [] });
        current[i] = after;
        continue;
      }
    }

    // 2b. Not attached but a copy was half rebuilt (its owner detached or died):
    //     drop it when the volume is whole without it, else it needs a full copy.
    if (!v.owner && v.replicas.some((r) => r.state === 'rebuilding')) {
      const whole = v.replicas.filter((r) => r.state === 'in-sync' && !down(r.nodeId)).length >= v.level;
      const unfinished = v.replicas.filter((r) => r.state === 'rebuilding');
      const after: VolumeRecord = {
        ...v,
        replicas: whole
          ? v.replicas.filter((r) => r.state !== 'rebuilding')
          : v.replicas.map((r) => (r.state === 'rebuilding' ? { ...r, state: 'stale', staleSince: now, fullResync: true } : r)),
      };
      changes.push({
        kind: whole ? 'drop-stale' : 'mark-stale', volume: v.name, before: v, after,
        events: whole ? unfinished.map((r) => ({ level: 'info' as const, component: 'DFS', message: `${label(v)} removed on node ${r.nodeId}`, code: EventCode.volumeRemovedOnNode })) : [],
      });
      current[i] = after;
      continue;
    }

    const healthy = v.replicas.filter((r) => isHealthy(r, nodes));
    const inSync = v.replicas.filter((r) => r.state === 'in-sync' && nodes.get(r.nodeId)?.status !== 'maintenance');

    // 3. Whole again (in sync, not just rebuilding) while a stale copy remains: drop it (its node frees the space).
    const staleOnes = v.replicas.filter((r) => r.state === 'stale');
    if (staleOnes.length > 0 && mayDropStaleCopy(v, input.nodes)) {
      const after: VolumeRecord = { ...v, replicas: v.replicas.filter((r) => r.state !== 'stale') };
      changes.push({
        kind: 'drop-stale', volume: v.name, before: v, after,
        events: staleOnes.map((r) => ({ level: 'info', component: 'DFS', message: `${label(v)} removed on node ${r.nodeId}`, code: EventCode.volumeRemovedOnNode })),
      });
      current[i] = after;
      continue;
    }

    // Rebuilds are run by the owner's engine: only attached volumes on a live owner.
    if (!v.owner || !input.alive.has(v.owner)) continue;

    // 4. Below its level: replace copies whose node has been down past the grace
    //    period (or that are missing); copies on returned nodes are resynced by the owner.
    if (healthy.length < v.level) {
      // Copies on a down node wait for it through the grace period, whether the
      // owner has recorded them stale yet or not (it does so a moment after the
      // node is seen down); only stale ones past the grace period are replaced.
      const downSince = (r: ReplicaRecord): number | undefined => {
        const n = nodes.get(r.nodeId);
        return n?.status === 'maintenance' ? input.now.getTime() - new Date(n.statusSince).getTime() : undefined;
      };
      const expired = staleOnes.filter((r) => (downSince(r) ?? -1) >= input.rebuildGraceMs);
      const waiting = v.replicas.filter((r) => !isHealthy(r, nodes) && !expired.includes(r) && (r.state === 'stale' || downSince(r) !== undefined)).length;
      const needed = v.level - healthy.length - waiting;
      if (needed <= 0) continue;
      // The expired stale copies stay recorded until their replacements are
      // whole (rule 3 drops them then): should the owner fail meanwhile, a
      // nearly whole stale copy may be all there is to fall back on.
      const placed = placeReplicas(input.nodes, current, {
        sizeBytes: v.sizeBytes,
        driveType: v.driveType,
        count: needed,
        excludeNodes: new Set(v.replicas.map((r) => r.nodeId)),
        preferNode: v.owner,
      });
      if (!placed.ok) continue; // nowhere to put it now; decided again on the next change
      const hasLocal = v.replicas.some((r) => r.nodeId === v.owner && r.state === 'in-sync');
      const added: ReplicaRecord[] = placed.replicas.map((p) => ({
        id: input.newReplicaId(v), nodeId: p.nodeId, driveId: p.driveId, state: 'rebuilding', createdAt: now,
        // A copy placed next to an owner that had none is also a locality rebuild.
        ...(p.nodeId === v.owner && !hasLocal ? { locality: true } : {}),
      }));
      const after: VolumeRecord = { ...v, replicas: [...v.replicas, ...added] };
      changes.push({
        kind: 'replace', volume: v.name, before: v, after,
        events: added.map((r) => ({ level: 'info' as const, component: 'DFS', message: `${label(v)} created on node ${r.nodeId}`, code: EventCode.volumeCreatedOnNode })),
      });
      current[i] = after;
      continue;
    }

    const hasLocal = v.replicas.some((r) => r.nodeId === v.owner && r.state !== 'stale');
    // 5. Whole, but no copy next to the owner: add one there (a remote one is retired once it is in sync).
    if (!hasLocal && inSync.length >= v.level && v.replicas.every((r) => r.state === 'in-sync')) {
      const ownerNode = nodes.get(v.owner);
      const drive = ownerNode?.drives.find((d) => d.type === v.driveType);
      const placed = placeReplicas(input.nodes, current, { sizeBytes: v.sizeBytes, driveType: v.driveType, count: 1, excludeNodes: new Set(v.replicas.map((r) => r.nodeId)), preferNode: v.owner });
      if (!ownerNode || !drive || !placed.ok || placed.replicas[0].nodeId !== v.owner) continue;
      const added: ReplicaRecord = {
        id: input.newReplicaId(v), nodeId: v.owner, driveId: placed.replicas[0].driveId, state: 'rebuilding', createdAt: now, locality: true,
      };
      const after: VolumeRecord = { ...v, replicas: [...v.replicas, added] };
      changes.push({
        kind: 'locality', volume: v.name, before: v, after,
        events: [{ level: 'info', component: 'DFS', message: `${label(v)} created on node ${v.owner}`, code: EventCode.volumeCreatedOnNode }],
      });
      current[i] = after;
      continue;
    }

    // 6. More in-sync copies than the level (after a locality rebuild): retire remote ones.
    if (inSync.length > v.level && v.replicas.every((r) => r.state === 'in-sync')) {
      const remote = v.replicas.filter((r) => r.nodeId !== v.owner);
      const retire = remote.slice(0, inSync.length - v.level);
      const after: VolumeRecord = { ...v, replicas: v.replicas.filter((r) => !retire.includes(r)) };
      changes.push({
        kind: 'retire-extra', volume: v.name, before: v, after,
        events: retire.map((r) => ({ level: 'info' as const, component: 'DFS', message: `${label(v)} removed on node ${r.nodeId}`, code: EventCode.volumeRemovedOnNode })),
      });
      current[i] = after;
    }
  }
  return changes;
}
