// What an attachment holds, written to WORKDIR/attach/NAME.json after every
// step, so that an agent that crashed half-way (or was restarted) finds
// exactly which process, loop device and mounts to take down.
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Filesystem } from '../core/types';

/** nbd-kernel: nbd-client + /dev/nbdX; nbdfuse-loop: nbdfuse exposes a file, a loop device makes it a block device. */
export type AttachMethod = 'nbd-kernel' | 'nbdfuse-loop';

export interface NbdfuseProcess {
  pid: number;
  /** The FUSE mount directory; the export is the file `dir/nbd`. It also identifies the process (its command line names it). */
  dir: string;
  pidFile: string;
  logFile: string;
}

export interface LoopDevice {
  device: string;
  /** The file it was bound to (as sysfs shows it), so a loop device number reused by someone else is never detached. */
  backingFile: string;
}

export interface AttachState {
  name: string;
  uri: string;
  sizeBytes: number;
  filesystem: Filesystem;
  method: AttachMethod;
  workDir: string;
  nbdfuse?: NbdfuseProcess;
  loop?: LoopDevice;
  /** nbd-kernel: the /dev/nbdX that nbd-client connected. */
  nbdDevice?: string;
  /** The block device that holds the filesystem. */
  device?: string;
  /** Set just before mounting, so a crash right after the mount is still undone. */
  mountpoint?: string;
  /** The filesystem was made by this attachment (first use of the volume). */
  formatted: boolean;
  startedAt: string;
}

export function attachStateDir(workDir: string): string {
  return path.join(workDir, 'attach');
}

function stateFile(workDir: string, name: string): string {
  return path.join(attachStateDir(workDir), `${name}.json`);
}

export async function saveAttachState(state: AttachState): Promise<void> {
  const file = stateFile(state.workDir, state.name);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(`${file}.tmp`, JSON.stringify(state, null, 2));
  await rename(`${file}.tmp`, file);
}

export async function removeAttachState(state: Pick<AttachState, 'workDir' | 'name'>): Promise<void> {
  await rm(stateFile(state.workDir, state.name), { force: true });
}

export async function loadAttachState(workDir: string, name: string): Promise<AttachState | undefined> {
  try {
    return JSON.parse(await readFile(stateFile(workDir, name), 'utf8')) as AttachState;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** Every attachment recorded in this work directory (left by this or a previous agent process). */
export async function loadAttachStates(workDir: string): Promise<AttachState[]> {
  let files: string[];
  try {
    files = await readdir(attachStateDir(workDir));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const states: AttachState[] = [];
  for (const f of files.filter((x) => x.endsWith('.json')).sort()) {
    const s = await loadAttachState(workDir, f.slice(0, -'.json'.length));
    if (s) states.push(s);
  }
  return states;
}
