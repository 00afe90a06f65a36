// The one guarded transaction for every write that only the volume's owner
// may make: its copies' states (stale, in-sync), their missed maps and its
// write-intent extents. The write lands only if, in the same etcd revision,
// the volume is still owned by this node at this epoch; otherwise it throws
// FencedError and nothing is written. So an old owner that was paused or cut
// off can never overwrite what the new owner recorded.
import type { Etcd3 } from 'etcd3';
import type { VolumeRecord } from '../core/types';
import { FencedError } from '../util/errors';
import { getVersioned } from './cas';
import { keys } from './keys';

export interface OwnedWrite {
  /** The volume record to store instead of the current one (undefined: leave it). */
  record?: VolumeRecord;
  puts?: ReadonlyArray<readonly [key: string, value: string]>;
  deletes?: readonly string[];
}

const MAX_ATTEMPTS = 20;

/**
 * Apply `write(current)` atomically while `owner` owns `volume` at `epoch`.
 * Retries when something else changed the record in between; returns the
 * record as stored.
 */
export async function commitOwned(etcd: Etcd3, volume: string, owner: string, epoch: number, write: (current: VolumeRecord) => OwnedWrite): Promise<VolumeRecord> {
  const key = keys.volume(volume);
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const cur = await getVersioned<VolumeRecord>(etcd, key);
    if (!cur || cur.value.owner !== owner || cur.value.epoch !== epoch) {
      throw new FencedError(`volume ${volume} is no longer owned by ${owner} at epoch ${epoch}`);
    }
    const w = write(cur.value);
    const ops = [
      ...(w.record ? [etcd.put(key).value(JSON.stringify(w.record))] : []),
      ...(w.puts ?? []).map(([k, v]) => etcd.put(k).value(v)),
      ...(w.deletes ?? []).map((k) => etcd.delete().key(k)),
    ];
    if (ops.length === 0) return cur.value;
    const res = await etcd.if(key, 'Mod', '==', cur.modRevision).then(...ops).commit();
    if (res.succeeded) return w.record ?? cur.value;
  }
  throw new Error(`too many concurrent updates of volume ${volume}`);
}
