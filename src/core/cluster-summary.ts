// `cio info`: the cluster at a glance, computed from the node records.
import type { NodeRecord, NodeStatus } from './types';

export interface ClusterSummary {
  name: string;
  controller: string | null;
  nodes: { total: number } & Record<NodeStatus, number>;
  capacity: { totalBytes: number; usedBytes: number; freeBytes: number };
  /** healthy: every node normal; degraded: some node in maintenance; no-quorum: no controller. */
  condition: 'healthy' | 'degraded' | 'no-controller';
}

export function summarizeCluster(name: string, nodes: readonly NodeRecord[], controllerId: string | undefined): ClusterSummary {
  const counts = { total: nodes.length, normal: 0, maintenance: 0, cordoned: 0, leaving: 0 };
  let totalBytes = 0;
  let usedBytes = 0;
  for (const node of nodes) {
    counts[node.status]++;
    // Capacity of nodes in maintenance still counts: their data is still there.
    for (const drive of node.drives) {
      totalBytes += drive.capacityBytes;
      usedBytes += drive.usedBytes;
    }
  }
  const controller = nodes.find((n) => n.id === controllerId);
  const condition = !controller ? 'no-controller' : counts.maintenance > 0 ? 'degraded' : 'healthy';
  return {
    name,
    controller: controller ? controller.name : null,
    nodes: counts,
    capacity: { totalBytes, usedBytes, freeBytes: Math.max(0, totalBytes - usedBytes) },
    condition,
  };
}
