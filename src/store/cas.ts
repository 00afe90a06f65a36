// Compare-and-swap updates of JSON records: read a key with its mod revision,
// compute the new value, and write it only if nobody wrote in between. Every
// record that several components write (node records; later volumes) changes
// through here, so no update is lost to a race.
import type { Etcd3 } from 'etcd3';

export interface Versioned<T> {
  value: T;
  modRevision: string;
}

export async function getVersioned<T>(etcd: Etcd3, key: string): Promise<Versioned<T> | undefined> {
  const res = await etcd.get(key).exec();
  const kv = res.kvs[0];
  if (!kv) return undefined;
  return { value: JSON.parse(kv.value.toString()) as T, modRevision: kv.mod_revision };
}

export class RecordMissingError extends Error {}

/**
 * Apply `change` to the record at `key` atomically. `change` returns the new
 * value, or `undefined` to leave the record as it is. Retries on conflict.
 */
export async function casUpdate<T>(
  etcd: Etcd3,
  key: string,
  change: (current: T) => T | undefined,
  maxAttempts = 20,
): Promise<T> {
  for (let attempt = 0; attempt < maxAttempts; attempt++) {
    const current = await getVersioned<T>(etcd, key);
    if (!current) throw new RecordMissingError(`no record at ${key}`);
    const next = change(current.value);
    if (next === undefined) return current.value;
    const res = await etcd.if(key, 'Mod', '==', current.modRevision).then(etcd.put(key).value(JSON.stringify(next))).commit();
    if (res.succeeded) return next;
  }
  throw new Error(`too many concurrent updates of ${key}`);
}
