// Volume helpers for cluster tests: info, attach, and connecting an NBD client.
import { existsSync, readdirSync } from 'node:fs';
import { open } from 'node:fs/promises';
import path from 'node:path';
import type { VolumeRecord } from '../../src/core/types';
import type { LocalCluster } from './local-cluster';
import { SimpleNbdClient } from '../../src/nbd/client';

export type VolumeInfo = Omit<VolumeRecord, 'replicas'> & { ownerName: string | null; replicas: Array<VolumeRecord['replicas'][number] & { nodeName: string; allocatedBytes: number | null }> };

/** Run the CLI and return its output, or throw with its error; `onNode`: as on that node (LocalCluster.cliOn). */
export async function cliOk(cluster: LocalCluster, args: string[], onNode?: string): Promise<string> {
  const res = onNode ? await cluster.cliOn(onNode, args) : await cluster.cli(args);
  if (res.code !== 0) throw new Error(`cio ${args.join(' ')} failed: ${res.stderr.trim()}`);
  return res.stdout;
}

export async function volumeInfo(cluster: LocalCluster, name: string): Promise<VolumeInfo> {
  return JSON.parse(await cliOk(cluster, ['volume', 'info', name, '--json'])) as VolumeInfo;
}

export function socketOf(uri: string): string {
  const m = /\?socket=(.+)$/.exec(uri);
  if (!m) throw new Error(`no socket in ${uri}`);
  return m[1];
}

/** Attach on `node` and connect to its export; `onNode`: run the CLI there (see LocalCluster.cliOn). */
export async function attachAndConnect(cluster: LocalCluster, name: string, node: string, onNode = false): Promise<{ record: VolumeRecord; client: SimpleNbdClient }> {
  const record = JSON.parse(await cliOk(cluster, ['volume', 'attach', name, '--node', node, '--json'], onNode ? node : undefined)) as VolumeRecord;
  const client = await SimpleNbdClient.connect(socketOf(record.attachment!.uri), name);
  return { record, client };
}

/** In-sync copies on nodes that are up, and whether one is on the owner's node. */
export function health(v: VolumeInfo, nodes: Array<{ id: string; status: string }>): { inSync: number; local: boolean; states: string } {
  const up = new Set(nodes.filter((n) => n.status !== 'maintenance').map((n) => n.id));
  const inSync = v.replicas.filter((r) => r.state === 'in-sync' && up.has(r.nodeId));
  return {
    inSync: inSync.length,
    local: v.owner !== null && inSync.some((r) => r.nodeId === v.owner),
    states: v.replicas.map((r) => `${r.nodeName}:${r.state}`).join(' '),
  };
}

/** The image file of a copy, wherever it lives in the local cluster. */
export function replicaFile(cluster: LocalCluster, replicaId: string): string {
  const nodesDir = path.join(cluster.dir, 'nodes');
  for (const node of readdirSync(nodesDir)) {
    const drives = path.join(nodesDir, node, 'drives');
    if (!existsSync(drives)) continue;
    for (const d of readdirSync(drives)) {
      const file = path.join(drives, d, 'replicas', `${replicaId}.img`);
      if (existsSync(file)) return file;
    }
  }
  throw new Error(`no image file for copy ${replicaId}`);
}

/** `length` bytes of a file at `offset` (e.g. of a copy's image, to see what reached it). */
export async function readFileRange(file: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    await fh.read(buf, 0, length, offset);
    return buf;
  } finally {
    await fh.close();
  }
}

/** Whether a file contains the byte string `needle` anywhere. */
export async function fileContains(file: string, needle: Buffer): Promise<boolean> {
  const fh = await open(file, 'r');
  try {
    const chunk = Buffer.alloc(4 * 1024 * 1024);
    let carry = Buffer.alloc(0);
    for (let pos = 0; ; ) {
      const { bytesRead } = await fh.read(chunk, 0, chunk.length, pos);
      if (bytesRead === 0) return false;
      const hay = Buffer.concat([carry, chunk.subarray(0, bytesRead)]);
      if (hay.includes(needle)) return true;
      carry = hay.subarray(Math.max(0, hay.length - needle.length + 1));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
}

/** Whether an NBD export answers on this socket. */
export async function canConnect(socket: string, name: string): Promise<boolean> {
  try {
    (await SimpleNbdClient.connect(socket, name)).close();
    return true;
  } catch {
    return false;
  }
}
