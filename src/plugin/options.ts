// Docker `--opt` / stack `driver_opts` for a cio volume: which keys exist,
// their values checked before anything is created, and whether an existing
// volume fits a repeated Create (Swarm sends Create on every node it uses).
import { resolveSpec, VOLUME_OPTION_KEYS, type Profile, type VolumeOptions } from '../core/profiles';
import type { VolumeRecord } from '../core/types';
import { formatSize } from '../core/units';
import { UserError, errorMessage } from '../util/errors';

export const PLUGIN_OPTION_KEYS = ['profile', ...VOLUME_OPTION_KEYS] as const;

export interface CreateOptions {
  profile?: string;
  options: VolumeOptions;
}

/** Parse Create's Opts: keys are case-insensitive, values strings (or numbers); empty values are left out. */
export function parseCreateOptions(volume: string, raw: unknown): CreateOptions {
  if (raw === undefined || raw === null) return { options: {} };
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new UserError(`Opts of volume ${volume} must be an object of option=value pairs`);
  const result: CreateOptions = { options: {} };
  for (const [rawKey, value] of Object.entries(raw as Record<string, unknown>)) {
    const key = rawKey.trim().toLowerCase();
    if (!(PLUGIN_OPTION_KEYS as readonly string[]).includes(key)) {
      throw new UserError(`unknown option "${rawKey}" for volume ${volume} (allowed: ${PLUGIN_OPTION_KEYS.join(', ')})`);
    }
    if (typeof value !== 'string' && typeof value !== 'number') throw new UserError(`option ${key} of volume ${volume} must be a string, not ${JSON.stringify(value)}`);
    if (typeof value === 'string' && value.trim() === '') continue;
    if (key === 'profile') result.profile = String(value).trim();
    else (result.options as Record<string, string | number>)[key] = typeof value === 'string' ? value.trim() : value;
  }
  try {
    resolveSpec(result.options); // bad values are refused now, before a profile is looked up
  } catch (err) {
    throw new UserError(`cannot create volume ${volume}: ${errorMessage(err)}`);
  }
  return result;
}

/**
 * How an existing volume differs from what a Create asks for, one phrase per
 * option. Only options the request (or its profile) names are compared: a
 * Create without options fits any existing volume.
 */
export function createMismatches(vol: VolumeRecord, req: CreateOptions, profile?: Profile): string[] {
  const asked: VolumeOptions = {};
  for (const source of [profile?.options ?? {}, req.options]) {
    for (const key of VOLUME_OPTION_KEYS) {
      const v = source[key];
      if (v !== undefined && v !== '') (asked as Record<string, unknown>)[key] = v;
    }
  }
  const spec = resolveSpec(asked);
  const diffs: string[] = [];
  const compare = (key: keyof VolumeOptions, have: unknown, want: unknown, show: (v: unknown) => string = String): void => {
    if (asked[key] !== undefined && have !== want) diffs.push(`${key} is ${have === undefined ? 'not set' : show(have)}, not ${show(want)}`);
  };
  compare('capacity', vol.sizeBytes, spec.sizeBytes, (v) => formatSize(v as number));
  compare('level', vol.level, spec.level);
  compare('type', vol.driveType, spec.driveType, (v) => String(v).toLowerCase());
  compare('provision', vol.provision, spec.provision);
  compare('filesystem', vol.filesystem, spec.filesystem);
  compare('iopsmin', vol.iopsMin, spec.iopsMin);
  compare('iopsmax', vol.iopsMax, spec.iopsMax);
  return diffs;
}
