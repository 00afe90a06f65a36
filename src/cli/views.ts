// What the CLI prints for each kind of record: the seed's tables, and the
// detail views of `info` commands.
import { formatSize } from '../core/units';
import type { ClusterSummary } from '../core/cluster-summary';
import type { NodeRecord } from '../core/types';
import { renderTable, type Column } from './table';

export type NodeView = NodeRecord & { controller?: boolean };

const nodeColumns: Column<NodeView>[] = [
  { header: 'NODENAME', width: 21, value: (n) => n.name },
  { header: 'IP', width: 18, value: (n) => n.ip },
  { header: 'NODE_ID', width: 11, value: (n) => n.id },
  { header: 'ROLE', width: 11, value: (n) => n.role },
  { header: 'STATUS', width: 0, value: (n) => n.status },
];

export function nodeTable(nodes: readonly NodeView[]): string {
  return renderTable(nodeColumns, nodes);
}

function kv(pairs: Array<[string, string]>): string {
  const width = Math.max(...pairs.map(([k]) => k.length)) + 2;
  return pairs.map(([k, v]) => `${`${k}:`.padEnd(width)}${v}`).join('\n');
}

export function nodeDetail(n: NodeView): string {
  const head = kv([
    ['Name', n.name],
    ['Node ID', n.id],
    ['IP', n.ip],
    ['Role', n.role],
    ['Status', `${n.status} (since ${n.statusSince})`],
    ['Cordoned', n.cordoned ? 'yes' : 'no'],
    ['Controller', n.controller ? 'yes (elected leader)' : 'no'],
    ['API', `https://${n.ip}:${n.apiPort}`],
    ['Replica port', String(n.replicaPort)],
    ['Registered', n.registeredAt],
    ['Version', n.version],
  ]);
  const drives = renderTable(
    [
      { header: 'DRIVE', width: 8, value: (d: NodeRecord['drives'][number]) => d.id },
      { header: 'TYPE', width: 6, value: (d) => d.type },
      { header: 'CAPACITY', width: 10, value: (d) => formatSize(d.capacityBytes) },
      { header: 'USED', width: 10, value: (d) => formatSize(d.usedBytes) },
      { header: 'PATH', width: 0, value: (d) => d.path },
    ],
    n.drives,
  );
  return `${head}\nDrives:\n${drives}`;
}

export function clusterDetail(s: ClusterSummary): string {
  const c = s.capacity;
  const pct = c.totalBytes ? ((100 * c.usedBytes) / c.totalBytes).toFixed(1) : '0.0';
  return kv([
    ['Cluster', s.name],
    ['Condition', s.condition],
    ['Controller', s.controller ?? '(none elected)'],
    ['Nodes', `${s.nodes.total} (normal ${s.nodes.normal}, maintenance ${s.nodes.maintenance}, cordoned ${s.nodes.cordoned})`],
    ['Capacity', `${formatSize(c.totalBytes)} total, ${formatSize(c.usedBytes)} used (${pct}%), ${formatSize(c.freeBytes)} free`],
  ]);
}
