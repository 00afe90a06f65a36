// The local cluster's state file, DIR/cluster.json: what was started where,
// so that `down`, `kill`, `start` … act on exactly those processes.
import { existsSync } from 'node:fs';
import { readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';

export interface LocalNode {
  name: string;
  ip: string;
  configFile: string;
  logFile: string;
  pid?: number;
}

export interface LocalClusterState {
  name: string;
  dir: string;
  createdAt: string;
  etcd: { pid?: number; clientUrl: string; dataDir: string; logFile: string; args: string[] };
  nodes: LocalNode[];
  cli: { ca: string; cert: string; key: string };
}

export function stateFile(dir: string): string {
  return path.join(dir, 'cluster.json');
}

export async function readState(dir: string): Promise<LocalClusterState | undefined> {
  const file = stateFile(dir);
  if (!existsSync(file)) return undefined;
  return JSON.parse(await readFile(file, 'utf8')) as LocalClusterState;
}

export async function writeState(state: LocalClusterState): Promise<void> {
  const file = stateFile(state.dir);
  await writeFile(`${file}.tmp`, JSON.stringify(state, null, 2));
  await rename(`${file}.tmp`, file);
}
