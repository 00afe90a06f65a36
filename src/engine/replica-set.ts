// Pure rules of the engine's replica set: which copies receive writes, which
// may serve reads, and what a failure means. No I/O, so the invariants are
// tested directly.
import type { ReplicaState } from '../core/types';

export interface ReplicaView {
  id: string;
  state: ReplicaState;
  local: boolean;
}

/** Writes go to every copy that is or is becoming whole (DESIGN invariant 6: rebuilding copies get new writes). */
export function writeTargets<R extends ReplicaView>(replicas: readonly R[]): R[] {
  return replicas.filter((r) => r.state === 'in-sync' || r.state === 'rebuilding');
}

/** Only in-sync copies are read (invariant 4); the local one, for locality, else the first in-sync one. */
export function readSource<R extends ReplicaView>(replicas: readonly R[]): R | undefined {
  let first: R | undefined;
  for (const r of replicas) {
    if (r.state !== 'in-sync') continue;
    if (r.local) return r;
    first ??= r;
  }
  return first;
}

/** An acknowledgement needs every in-sync copy; the volume is lost to I/O when none is left. */
export function canAcknowledge(replicas: readonly ReplicaView[]): boolean {
  return replicas.some((r) => r.state === 'in-sync');
}
