// Orphan sweep: a node deletes copies that no volume record names any more —
// copies replaced while the node was down, or whose removal it missed. A copy
// is always named in its volume's record before its file is made, and copy ids
// are never reused, so a file no record names is garbage. The record is read
// again just before deleting, and files of unknown volumes younger than a
// minute are left alone (a volume being created).
import type { Etcd3 } from 'etcd3';
import type { ReplicaStore } from '../replica/store';
import { getVolume, listVolumes } from '../store/volumes';
import { errorMessage } from '../util/errors';
import type { Logger } from '../util/log';

const MIN_AGE_MS = 60_000;

export async function sweepOrphans(etcd: Etcd3, stores: ReadonlyMap<string, ReplicaStore>, logger: Logger, now = Date.now()): Promise<string[]> {
  const volumes = await listVolumes(etcd);
  const named = new Set(volumes.flatMap((v) => v.replicas.map((r) => r.id)));
  const byUuid = new Map(volumes.map((v) => [v.uuid, v]));
  const removed: string[] = [];
  for (const store of stores.values()) {
    for (const meta of await store.list()) {
      if (named.has(meta.replicaId)) continue;
      const volume = byUuid.get(meta.volumeUuid);
      if (!volume && now - new Date(meta.createdAt).getTime() < MIN_AGE_MS) continue;
      if (volume?.phase === 'creating') continue;
      if (volume) {
        const fresh = await getVolume(etcd, volume.name);
        if (fresh?.replicas.some((r) => r.id === meta.replicaId)) continue;
      }
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
