// Volume records and profiles in etcd.
import type { Etcd3 } from 'etcd3';
import { BUILTIN_PROFILES, type Profile } from '../core/profiles';
import type { VolumeRecord } from '../core/types';
import { ConflictError, NotFoundError } from '../util/errors';
import { casUpdate } from './cas';
import { getAllJson, getJson } from './etcd';
import { keys } from './keys';

export async function listVolumes(etcd: Etcd3): Promise<VolumeRecord[]> {
  const volumes = [...(await getAllJson<VolumeRecord>(etcd, keys.volumesPrefix)).values()];
  return volumes.sort((a, b) => Number(a.vdisk.slice(2)) - Number(b.vdisk.slice(2)));
}

export function getVolume(etcd: Etcd3, name: string): Promise<VolumeRecord | undefined> {
  return getJson<VolumeRecord>(etcd, keys.volume(name));
}

export async function requireVolume(etcd: Etcd3, name: string): Promise<VolumeRecord> {
  const v = await getVolume(etcd, name);
  if (!v) throw new NotFoundError(`no volume named ${name}`);
  return v;
}

/**
 * Insert a new volume record with the next vdisk number, in one transaction
 * that fails if the name exists. Returns the record as stored.
 */
export async function insertVolume(etcd: Etcd3, build: (vdisk: string) => VolumeRecord): Promise<VolumeRecord> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const seqRes = await etcd.get(keys.vdiskSeq).exec();
    const seqKv = seqRes.kvs[0];
    const seq = seqKv ? Number(seqKv.value.toString()) : 0;
    const record = build(`vd${seq + 1}`);
    const res = await etcd
      .if(keys.vdiskSeq, 'Mod', '==', seqKv ? seqKv.mod_revision : '0')
      .and(keys.volume(record.name), 'Create', '==', 0)
      .then(etcd.put(keys.vdiskSeq).value(String(seq + 1)), etcd.put(keys.volume(record.name)).value(JSON.stringify(record)))
      .commit();
    if (res.succeeded) return record;
    if (await getVolume(etcd, record.name)) throw new ConflictError(`a volume named ${record.name} already exists`);
  }
  throw new Error('could not create the volume: too many concurrent creations');
}

export function updateVolume(etcd: Etcd3, name: string, change: (cur: VolumeRecord) => VolumeRecord | undefined): Promise<VolumeRecord> {
  return casUpdate<VolumeRecord>(etcd, keys.volume(name), change);
}

/** Delete a volume's record (its copies are gone or left to their nodes' orphan sweep). */
export async function deleteVolumeRecord(etcd: Etcd3, name: string): Promise<void> {
  await etcd
    .if(keys.volume(name), 'Version', '>', -1) // always true: one transaction deletes the record and its side keys
    .then(etcd.delete().key(keys.volume(name)), etcd.delete().prefix(keys.dirtyPrefix(name)), etcd.delete().key(keys.intents(name)))
    .commit();
}

// ---- profiles: built-in ones are read-only; user ones live in etcd.

export async function listProfiles(etcd: Etcd3): Promise<Profile[]> {
  const user = [...(await getAllJson<Profile>(etcd, keys.profilesPrefix)).values()];
  return [...BUILTIN_PROFILES, ...user.sort((a, b) => a.name.localeCompare(b.name))];
}

export async function findProfile(etcd: Etcd3, name: string): Promise<Profile | undefined> {
  const upper = name.toUpperCase();
  return BUILTIN_PROFILES.find((p) => p.name === upper) ?? (await getJson<Profile>(etcd, keys.profile(upper)));
}

export async function putProfile(etcd: Etcd3, profile: Profile, replace: boolean): Promise<void> {
  if (BUILTIN_PROFILES.some((p) => p.name === profile.name)) throw new ConflictError(`${profile.name} is a built-in profile and cannot be changed; pick another name`);
  if (replace) {
    await etcd.put(keys.profile(profile.name)).value(JSON.stringify(profile));
    return;
  }
  const res = await etcd.if(keys.profile(profile.name), 'Create', '==', 0).then(etcd.put(keys.profile(profile.name)).value(JSON.stringify(profile))).commit();
  if (!res.succeeded) throw new ConflictError(`a profile named ${profile.name} already exists (use --replace to change it)`);
}

export async function deleteProfile(etcd: Etcd3, name: string): Promise<void> {
  const upper = name.toUpperCase();
  if (BUILTIN_PROFILES.some((p) => p.name === upper)) throw new ConflictError(`${upper} is a built-in profile and cannot be removed`);
  const res = await etcd.delete().key(keys.profile(upper)).exec();
  if (Number(res.deleted) === 0) throw new NotFoundError(`no profile named ${upper}`);
}
