// Which Docker mount IDs use which volume on this node. dockerd sends a fresh
// random ID per mount and the same ID on Unmount; the volume stays mounted
// while any ID holds it. Kept in WORKDIR/mounts.json so an agent restart
// keeps the counts.
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { AttachMethod } from '../attach';

export interface VolumeMounts {
  /** Mount IDs holding the volume on this node. None left means a release is pending (it failed or was cut short). */
  ids: string[];
  /** Where it is mounted now; null when it is not (e.g. after an agent restart) and must be mounted again. */
  mountpoint: string | null;
  method: AttachMethod | null;
}

export type Release = 'not-held' | 'still-used' | 'last';

export class MountTable {
  private readonly volumes = new Map<string, VolumeMounts>();

  static fromJSON(json: unknown): MountTable {
    const table = new MountTable();
    const volumes = (json as { volumes?: Record<string, VolumeMounts> } | null)?.volumes ?? {};
    for (const [name, v] of Object.entries(volumes)) table.volumes.set(name, { ids: [...v.ids], mountpoint: v.mountpoint ?? null, method: v.method ?? null });
    return table;
  }

  toJSON(): { volumes: Record<string, VolumeMounts> } {
    return { volumes: Object.fromEntries([...this.volumes].sort(([a], [b]) => a.localeCompare(b))) };
  }

  get(name: string): Readonly<VolumeMounts> | undefined {
    return this.volumes.get(name);
  }

  names(): string[] {
    return [...this.volumes.keys()];
  }

  holds(name: string, id: string): boolean {
    return this.volumes.get(name)?.ids.includes(id) ?? false;
  }

  /** Record a mount ID (again is harmless: dockerd reuses an ID while its mount is active). */
  add(name: string, id: string): void {
    const v = this.volumes.get(name) ?? { ids: [], mountpoint: null, method: null };
    if (!v.ids.includes(id)) v.ids.push(id);
    this.volumes.set(name, v);
  }

  /** Drop a mount ID; 'last' means the volume is no longer used here and should be released. */
  remove(name: string, id: string): Release {
    const v = this.volumes.get(name);
    if (!v || !v.ids.includes(id)) return 'not-held';
    v.ids = v.ids.filter((x) => x !== id);
    return v.ids.length ? 'still-used' : 'last';
  }

  setMounted(name: string, mountpoint: string | null, method: AttachMethod | null): void {
    const v = this.volumes.get(name) ?? { ids: [], mountpoint: null, method: null };
    this.volumes.set(name, { ...v, mountpoint, method });
  }

  /** Forget the volume: released, removed, or never mounted. */
  delete(name: string): void {
    this.volumes.delete(name);
  }
}

export async function loadMountTable(file: string): Promise<MountTable> {
  try {
    return MountTable.fromJSON(JSON.parse(await readFile(file, 'utf8')));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return new MountTable();
    throw new Error(`cannot read the plugin's mount table ${file}: ${(err as Error).message}`);
  }
}

export async function saveMountTable(file: string, table: MountTable): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(`${file}.tmp`, JSON.stringify(table, null, 2));
  await rename(`${file}.tmp`, file);
}
