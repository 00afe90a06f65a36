// Volume profiles: named sets of defaults (YAML), built-in samples, and the
// resolution of a volume's spec from a profile plus explicit options, which
// always win. Validation errors name the field and the allowed values.
import { z } from 'zod';
import { UserError } from '../util/errors';
import { DRIVE_TYPES, FILESYSTEMS, PROVISIONING, type VolumeSpec } from './types';
import { parseSize } from './units';

export const VOLUME_NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;
export const PROFILE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/;
/** Volumes are sized in whole MiB so every client's block size divides the size. */
export const SIZE_ALIGN = 1024 * 1024;
export const MAX_VOLUME_BYTES = 64 * 1024 ** 4;

/** Options as users give them (CLI flags, Docker --opt, profile YAML): all strings or numbers. */
export interface VolumeOptions {
  capacity?: string | number;
  level?: string | number;
  type?: string;
  provision?: string;
  filesystem?: string;
  iopsmin?: string | number;
  iopsmax?: string | number;
}

export const VOLUME_OPTION_KEYS = ['capacity', 'level', 'type', 'provision', 'filesystem', 'iopsmin', 'iopsmax'] as const;

export interface Profile {
  name: string;
  description?: string;
  builtin?: boolean;
  options: VolumeOptions;
}

const optionSchema = z
  .object({
    capacity: z.union([z.string(), z.number()]).optional(),
    level: z.union([z.string(), z.number()]).optional(),
    type: z.string().optional(),
    provision: z.string().optional(),
    filesystem: z.string().optional(),
    iopsmin: z.union([z.string(), z.number()]).optional(),
    iopsmax: z.union([z.string(), z.number()]).optional(),
  })
  .strict();

export const profileFileSchema = z
  .object({
    name: z.string().regex(PROFILE_NAME_PATTERN, 'letters, digits, ., - and _, at most 32 characters'),
    description: z.string().max(200).optional(),
  })
  .merge(optionSchema)
  .strict();

export const BUILTIN_PROFILES: readonly Profile[] = [
  { name: 'SMALL', description: 'small general-purpose volume', builtin: true, options: { capacity: '10GB', level: 2, type: 'ssd', provision: 'thin', filesystem: 'ext4' } },
  { name: 'MEDIUM', description: 'general-purpose volume', builtin: true, options: { capacity: '50GB', level: 2, type: 'ssd', provision: 'thin', filesystem: 'ext4' } },
  { name: 'LARGE', description: 'large volume, three copies', builtin: true, options: { capacity: '200GB', level: 3, type: 'ssd', provision: 'thin', filesystem: 'xfs' } },
  { name: 'MYSQL', description: 'MySQL/MariaDB data directory', builtin: true, options: { capacity: '20GB', level: 3, type: 'ssd', provision: 'thin', filesystem: 'ext4', iopsmin: 500, iopsmax: 5000 } },
  { name: 'POSTGRES', description: 'PostgreSQL data directory', builtin: true, options: { capacity: '20GB', level: 3, type: 'ssd', provision: 'thin', filesystem: 'ext4', iopsmin: 500, iopsmax: 5000 } },
  { name: 'REDIS', description: 'Redis AOF/RDB files', builtin: true, options: { capacity: '5GB', level: 2, type: 'ssd', provision: 'thin', filesystem: 'xfs', iopsmin: 200, iopsmax: 2000 } },
];

export const DEFAULT_OPTIONS: Required<Pick<VolumeOptions, 'capacity' | 'level' | 'type' | 'provision' | 'filesystem'>> = {
  capacity: '10GB',
  level: 2,
  type: 'ssd',
  provision: 'thin',
  filesystem: 'ext4',
};

export function validateVolumeName(name: string): void {
  if (!VOLUME_NAME_PATTERN.test(name)) {
    throw new UserError(`invalid volume name "${name}": use 1-63 letters, digits, ., - and _, starting with a letter or digit`);
  }
}

export function parseProfile(raw: unknown, source: string): Profile {
  const parsed = profileFileSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const field = issue.path.join('.') || 'profile';
    const msg = issue.code === 'unrecognized_keys' ? `unknown field(s) ${issue.keys.join(', ')} (allowed: name, description, ${VOLUME_OPTION_KEYS.join(', ')})` : issue.message;
    throw new UserError(`bad profile ${source}: ${field}: ${msg}`);
  }
  const { name, description, ...options } = parsed.data;
  resolveSpec(options); // reject bad values now, not when a volume is made from it
  return { name: name.toUpperCase(), description, options };
}

function intIn(field: string, value: string | number, min: number, max: number): number {
  const n = typeof value === 'number' ? value : Number(value.trim());
  if (!Number.isInteger(n) || n < min || n > max) throw new UserError(`${field} must be a whole number from ${min} to ${max}, not "${value}"`);
  return n;
}

function oneOf<T extends string>(field: string, value: string, allowed: readonly T[], normalize: (v: string) => string): T {
  const v = normalize(value.trim());
  if (!(allowed as readonly string[]).includes(v)) throw new UserError(`${field} must be one of ${allowed.join(', ').toLowerCase()}, not "${value}"`);
  return v as T;
}

/** The spec a volume gets: defaults, then the profile, then explicit options. */
export function resolveSpec(explicit: VolumeOptions, profile?: Profile): VolumeSpec {
  const merged: VolumeOptions = { ...DEFAULT_OPTIONS };
  for (const source of [profile?.options ?? {}, explicit]) {
    for (const key of VOLUME_OPTION_KEYS) {
      const v = source[key];
      if (v !== undefined && v !== '') (merged as Record<string, unknown>)[key] = v;
    }
  }
  let sizeBytes = typeof merged.capacity === 'number' ? merged.capacity * 1024 ** 3 : parseSize(String(merged.capacity), 'GB');
  if (!Number.isSafeInteger(Math.round(sizeBytes)) || sizeBytes <= 0) throw new UserError(`capacity must be a positive size, not "${merged.capacity}"`);
  sizeBytes = Math.ceil(sizeBytes / SIZE_ALIGN) * SIZE_ALIGN;
  if (sizeBytes > MAX_VOLUME_BYTES) throw new UserError(`capacity ${merged.capacity} is larger than the 64TB limit`);
  const spec: VolumeSpec = {
    sizeBytes,
    level: intIn('level', merged.level ?? 2, 1, 3) as 1 | 2 | 3,
    driveType: oneOf('type', String(merged.type), DRIVE_TYPES, (v) => v.toUpperCase()),
    provision: oneOf('provision', String(merged.provision), PROVISIONING, (v) => v.toLowerCase()),
    filesystem: oneOf('filesystem', String(merged.filesystem), FILESYSTEMS, (v) => v.toLowerCase()),
  };
  if (merged.iopsmin !== undefined) spec.iopsMin = intIn('iopsmin', merged.iopsmin, 0, 10_000_000);
  if (merged.iopsmax !== undefined) spec.iopsMax = intIn('iopsmax', merged.iopsmax, 1, 10_000_000);
  if (spec.iopsMin !== undefined && spec.iopsMax !== undefined && spec.iopsMin > spec.iopsMax) {
    throw new UserError(`iopsmin (${spec.iopsMin}) is larger than iopsmax (${spec.iopsMax})`);
  }
  return spec;
}
