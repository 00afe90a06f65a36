// Volume helpers for cluster tests: info, attach, and connecting an NBD client.
import type { VolumeRecord } from '../../src/core/types';
import type { LocalCluster } from './local-cluster';
import { SimpleNbdClient } from './nbd-simple-client';

export type VolumeInfo = Omit<VolumeRecord, 'replicas'> & { ownerName: string | null; replicas: Array<VolumeRecord['replicas'][number] & { nodeName: string; allocatedBytes: number | null }> };

export async function cliOk(cluster: LocalCluster, args: string[]): Promise<string> {
  const res = await cluster.cli(args);
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

export async function attachAndConnect(cluster: LocalCluster, name: string, node: string): Promise<{ record: VolumeRecord; client: SimpleNbdClient }> {
  const record = JSON.parse(await cliOk(cluster, ['volume', 'attach', name, '--node', node, '--json'])) as VolumeRecord;
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
