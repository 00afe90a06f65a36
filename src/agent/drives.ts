// The agent's drives: directories where replica files live. Usage is what the
// files really occupy on disk (st_blocks), so thin volumes count what is written.
import { mkdir, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import type { DriveRecord, DriveType } from '../core/types';

export interface DriveConfig {
  id?: string;
  path: string;
  type: DriveType;
  capacity: number;
}

async function allocatedBytesUnder(dir: string): Promise<number> {
  let total = 0;
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw err;
  }
  for (const entry of entries) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) total += await allocatedBytesUnder(full);
    else if (entry.isFile()) total += (await stat(full)).blocks * 512;
  }
  return total;
}

export async function prepareDrives(drives: readonly DriveConfig[]): Promise<void> {
  for (const d of drives) await mkdir(d.path, { recursive: true });
}

export async function measureDrives(drives: readonly DriveConfig[]): Promise<DriveRecord[]> {
  return Promise.all(
    drives.map(async (d, i) => ({
      id: d.id ?? `d${i + 1}`,
      path: d.path,
      type: d.type,
      capacityBytes: d.capacity,
      usedBytes: await allocatedBytesUnder(d.path),
    })),
  );
}
