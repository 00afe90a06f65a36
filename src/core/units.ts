// Sizes as users write them ("20GB", "512MiB", "10") and as cio prints them.
import { UserError } from '../util/errors';

const UNITS: Record<string, number> = {
  '': 1,
  B: 1,
  K: 1024, KB: 1024, KIB: 1024,
  M: 1024 ** 2, MB: 1024 ** 2, MIB: 1024 ** 2,
  G: 1024 ** 3, GB: 1024 ** 3, GIB: 1024 ** 3,
  T: 1024 ** 4, TB: 1024 ** 4, TIB: 1024 ** 4,
};

/**
 * Parse a size. Units are binary (1GB = 2^30 bytes), as disk tools print them;
 * a bare number is bytes unless `defaultUnit` says otherwise.
 */
export function parseSize(text: string, defaultUnit = ''): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = (m?.[2] || defaultUnit).toUpperCase();
  if (!m || !(unit in UNITS)) throw new UserError(`not a size: "${text}" (use e.g. 512MB, 20GB, 1TB)`);
  const bytes = Math.round(Number(m[1]) * UNITS[unit]);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new UserError(`size out of range: "${text}"`);
  return bytes;
}

/** "20GB", "512MB", "1.5GB": the largest unit that keeps the number readable. */
export function formatSize(bytes: number): string {
  const units: Array<[string, number]> = [['TB', 1024 ** 4], ['GB', 1024 ** 3], ['MB', 1024 ** 2], ['KB', 1024]];
  for (const [name, size] of units) {
    if (bytes >= size) {
      const v = bytes / size;
      return `${Number.isInteger(v) ? v : v.toFixed(1)}${name}`;
    }
  }
  return `${bytes}B`;
}
