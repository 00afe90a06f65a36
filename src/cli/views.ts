// What the CLI prints for each kind of record: the seed's tables, and the
// detail views of `info` commands.
import { formatSize } from '../core/units';
import type { ClusterSummary } from '../core/cluster-summary';
import YAML from 'yaml';
import type { Profile } from '../core/profiles';
import type { NodeRecord, VolumeRecord } from '../core/types';
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

// ---- volumes

export type VolumeView = Omit<VolumeRecord, 'replicas'> & {
  ownerName?: string | null;
  replicas: Array<
    VolumeRecord['replicas'][number] & {
      nodeName?: string;
      allocatedBytes?: number | null;
      rebuild?: { mode: string; percent: number; bytesPerSecond: number; secondsLeft: number | null } | null;
    }
  >;
};

function rebuildText(r: VolumeView['replicas'][number]): string {
  if (!r.rebuild) return '';
  const left = r.rebuild.secondsLeft === null ? '?' : `${Math.ceil(r.rebuild.secondsLeft)}s`;
  return ` (${r.rebuild.mode} ${r.rebuild.percent.toFixed(0)}%, ${formatSize(r.rebuild.bytesPerSecond)}/s, ${left} left)`;
}

/** `cio volume ls` shows where each volume is attached; NODENAME is "-" for a volume attached nowhere. */
export function volumeTable(volumes: readonly VolumeRecord[], nodes: readonly NodeRecord[]): string {
  const nameOf = (id: string | null): string => (id ? (nodes.find((n) => n.id === id)?.name ?? id) : '-');
  const columns: Column<VolumeRecord>[] = [
    { header: 'NODENAME', width: 21, value: (v) => nameOf(v.owner) },
    { header: 'VDISK', width: 10, value: (v) => v.vdisk },
    { header: 'DRIVE', width: 6, value: (v) => v.driveType },
    { header: 'TYPE', width: 22, value: (v) => `${v.level}-copy` },
    { header: 'SIZE', width: 6, align: 'right', value: (v) => formatSize(v.sizeBytes) },
    { header: '', width: 2, value: () => '' },
    { header: 'UUID', width: 10, value: (v) => v.uuid },
    { header: 'VOLUMENAME', width: 0, value: (v) => v.name },
  ];
  return renderTable(columns, volumes);
}

export function volumeDetail(v: VolumeView): string {
  const head = kv([
    ['Name', v.name],
    ['VDisk', v.vdisk],
    ['UUID', v.uuid],
    ['Size', formatSize(v.sizeBytes)],
    ['Copies', `${v.level}-copy on ${v.driveType}`],
    ['Provisioning', v.provision],
    ['Filesystem', v.filesystem],
    ['Profile', v.profile ?? '-'],
    ['IOPS', v.iopsMin !== undefined || v.iopsMax !== undefined ? `min ${v.iopsMin ?? '-'}, max ${v.iopsMax ?? '-'}` : '-'],
    ['Phase', v.phase],
    ['Owner', v.owner ? `${v.ownerName ?? v.owner} (${v.owner})${v.attachment?.repair ? ', rebuilding its copies (nobody uses it)' : ''}` : '- (not attached)'],
    ['NBD URI', v.attachment?.uri || '-'],
    ['Mounted', v.attachment?.mountpoint ? `${v.attachment.mountpoint} (${v.attachment.method ?? '?'})` : '-'],
    ['Epoch', String(v.epoch)],
    ['Created', v.createdAt],
  ]);
  const replicas = renderTable(
    [
      { header: 'REPLICA', width: 17, value: (r: VolumeView['replicas'][number]) => r.id },
      { header: 'NODE', width: 10, value: (r) => r.nodeName ?? r.nodeId },
      { header: 'NODE_ID', width: 10, value: (r) => r.nodeId },
      { header: 'DRIVE', width: 7, value: (r) => r.driveId },
      { header: 'ALLOCATED', width: 11, value: (r) => (r.allocatedBytes === null || r.allocatedBytes === undefined ? '?' : formatSize(r.allocatedBytes)) },
      { header: 'STATE', width: 0, value: (r) => `${r.state}${rebuildText(r)}` },
    ],
    v.replicas,
  );
  return `${head}\nReplicas:\n${replicas}`;
}

export function profileTable(profiles: readonly Profile[]): string {
  return renderTable(
    [
      { header: 'PROFILE', width: 12, value: (p: Profile) => p.name },
      { header: 'CAPACITY', width: 10, value: (p) => String(p.options.capacity ?? '-') },
      { header: 'LEVEL', width: 7, value: (p) => String(p.options.level ?? '-') },
      { header: 'TYPE', width: 6, value: (p) => String(p.options.type ?? '-').toUpperCase() },
      { header: 'PROVISION', width: 11, value: (p) => String(p.options.provision ?? '-') },
      { header: 'FS', width: 6, value: (p) => String(p.options.filesystem ?? '-') },
      { header: 'SOURCE', width: 0, value: (p) => (p.builtin ? 'built-in' : 'user') },
    ],
    profiles,
  );
}

export function profileDetail(p: Profile): string {
  return YAML.stringify({ name: p.name, ...(p.description ? { description: p.description } : {}), ...p.options }).trimEnd();
}
