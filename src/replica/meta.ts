// The metadata record of one replica, `<replicaId>.meta.json`, and the
// crash-safe way to write it: a reader sees either the old or the new record,
// never a torn one, and once a write returns it survives power loss.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ReplicaError } from './errors';

export const REPLICA_STATES = ['empty', 'rebuilding', 'in-sync', 'stale'] as const;
export type ReplicaState = (typeof REPLICA_STATES)[number];

export interface ReplicaMeta {
  version: 1;
  replicaId: string;
  volumeUuid: string;
  /** Logical size in bytes (the image file may be longer after a crashed resize). */
  size: number;
  /** Highest epoch accepted: requests carrying an older one are refused. */
  epoch: number;
  state: ReplicaState;
  thick: boolean;
  createdAt: string;
  updatedAt: string;
  /** Incarnation of the process that last opened it (absent in records from before it was kept). */
  openedBy?: string;
}

// Replica ids become file names: keep them to a safe alphabet, no leading dot.
const REPLICA_ID_RE = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$/;

export function isValidReplicaId(id: string): boolean {
  return REPLICA_ID_RE.test(id);
}

export function isReplicaState(value: unknown): value is ReplicaState {
  return typeof value === 'string' && (REPLICA_STATES as readonly string[]).includes(value);
}

export function isValidSize(size: number): boolean {
  return Number.isSafeInteger(size) && size > 0 && size % 512 === 0;
}

export function isValidEpoch(epoch: number): boolean {
  return Number.isSafeInteger(epoch) && epoch >= 0;
}

export function parseMeta(text: string, file: string): ReplicaMeta {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new ReplicaError('EIO', `${file}: not valid JSON`);
  }
  const m = raw as Partial<ReplicaMeta>;
  const ok =
    m.version === 1 &&
    typeof m.replicaId === 'string' &&
    isValidReplicaId(m.replicaId) &&
    typeof m.volumeUuid === 'string' &&
    typeof m.size === 'number' &&
    isValidSize(m.size) &&
    typeof m.epoch === 'number' &&
    isValidEpoch(m.epoch) &&
    isReplicaState(m.state) &&
    typeof m.thick === 'boolean' &&
    typeof m.createdAt === 'string' &&
    typeof m.updatedAt === 'string' &&
    (m.openedBy === undefined || typeof m.openedBy === 'string');
  if (!ok) throw new ReplicaError('EIO', `${file}: malformed replica metadata`);
  return m as ReplicaMeta;
}

let tmpCounter = 0;

/** Writes `data` to `file` atomically and durably: tmp + fsync + rename + fsync(dir). */
export async function writeFileDurable(file: string, data: string): Promise<void> {
  const dir = path.dirname(file);
  const tmp = `${file}.tmp-${process.pid}-${++tmpCounter}`;
  const fh = await fsp.open(tmp, 'wx', 0o644);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => undefined);
    await fsp.unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fh.close();
  try {
    await fsp.rename(tmp, file);
  } catch (err) {
    await fsp.unlink(tmp).catch(() => undefined);
    throw err;
  }
  await syncDir(dir);
}

/** Makes directory entries (creates, renames, unlinks) in `dir` durable. */
export async function syncDir(dir: string): Promise<void> {
  const dh = await fsp.open(dir, 'r');
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

export async function writeMeta(file: string, meta: ReplicaMeta): Promise<void> {
  await writeFileDurable(file, JSON.stringify(meta, null, 2) + '\n');
}

export async function readMeta(file: string): Promise<ReplicaMeta> {
  return parseMeta(await fsp.readFile(file, 'utf8'), file);
}
