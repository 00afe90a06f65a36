// Orphan sweep: a node deletes copies that no volume record names any more —
// copies replaced while the node was down, or whose removal it missed. Files
// younger than a minute are left alone: their record may be on its way.
import type { Etcd3 } from 'etcd3';
import type { ReplicaStore } from '../replica/store';
import { listVolumes } from '../store/volumes';
import { errorMessage } from '../util/errors';
import type { Logger } from '../util/log';

const MIN_AGE_MS = 60_000;

export async function sweepOrphans(etcd: Etcd3, stores: ReadonlyMap<string, ReplicaStore>, nodeId: string, logger: Logger, now = Date.now()): Promise<string[]> {
  const volumes = await listVolumes(etcd);
  const named = new Set(volumes.flatMap((v) => v.replicas.filter((r) => r.nodeId === nodeId).map((r) => r.id)));
  const creating = new Set(volumes.filter((v) => v.phase === 'creating').map((v) => v.uuid));
  const removed: string[] = [];
  for (const store of stores.values()) {
    for (const meta of await store.list()) {
      if (named.has(meta.replicaId) || creating.has(meta.volumeUuid)) continue;
      if (now - new Date(meta.createdAt).getTime() < MIN_AGE_MS) continue;
      try {
        await store.delete(meta.replicaId);
        removed.push(meta.replicaId);
        logger.info({ replica: meta.replicaId, volume: meta.volumeUuid }, 'removed a copy no volume names (space freed)');
      } catch (err) {
        logger.warn({ replica: meta.replicaId, err: errorMessage(err) }, 'could not remove an orphan copy');
      }
    }
  }
  return removed;
}
