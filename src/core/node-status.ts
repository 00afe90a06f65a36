// Pure decisions about node status: given what etcd says (the node records and
// which nodes hold a live lease), which status changes must the controller make
// and which events must it write. No I/O here, so it is tested exhaustively.
import { EventCode, type EventLevel, type NodeRecord, type NodeStatus } from './types';

export interface NodeStatusChange {
  nodeId: string;
  from: NodeStatus;
  to: NodeStatus;
  /** Written in the same transaction as the change, so neither exists without the other. */
  events: EventDraft[];
}

export interface EventDraft {
  level: EventLevel;
  component: string;
  message: string;
  code: number;
}

/** The status a node should have. A node without a live lease is in maintenance, whatever else is set. */
export function desiredStatus(node: Pick<NodeRecord, 'cordoned' | 'status'>, alive: boolean): NodeStatus {
  if (!alive) return 'maintenance';
  if (node.status === 'leaving') return 'leaving';
  return node.cordoned ? 'cordoned' : 'normal';
}

/**
 * Compare every node's recorded status with the status its liveness and flags call for.
 * `leader` is the node running the controller, named in the failover event as the seed does.
 */
export function decideNodeStatus(
  nodes: readonly NodeRecord[],
  aliveIds: ReadonlySet<string>,
  leader: Pick<NodeRecord, 'name' | 'ip'>,
): NodeStatusChange[] {
  const changes: NodeStatusChange[] = [];
  for (const node of nodes) {
    const to = desiredStatus(node, aliveIds.has(node.id));
    if (to === node.status) continue;
    changes.push({ nodeId: node.id, from: node.status, to, events: eventsForChange(node, node.status, to, leader) });
  }
  return changes;
}

function eventsForChange(
  node: NodeRecord,
  from: NodeStatus,
  to: NodeStatus,
  leader: Pick<NodeRecord, 'name' | 'ip'>,
): EventDraft[] {
  const who = `node (${node.id})`;
  if (to === 'maintenance') {
    return [
      { level: 'warn', component: 'DFS', message: `${who} ${node.name} is not responding, status maintenance`, code: EventCode.nodeNotResponding },
      {
        level: 'info',
        component: 'DFS',
        message: `${who} failover completed. hostname=${leader.name}, ip address=${leader.ip}`,
        code: EventCode.nodeFailoverCompleted,
      },
    ];
  }
  if (from === 'maintenance' && node.statusSince === node.registeredAt) {
    return [{ level: 'info', component: 'DFS', message: `${who} ${node.name} joined the cluster as ${node.role}, ip address=${node.ip}`, code: EventCode.nodeJoined }];
  }
  if (from === 'maintenance') {
    return [{ level: 'info', component: 'DFS', message: `${who} ${node.name} is back, status ${to}`, code: EventCode.nodeBackToNormal }];
  }
  if (to === 'cordoned') {
    return [{ level: 'info', component: 'DFS', message: `${who} ${node.name} cordoned`, code: EventCode.nodeCordoned }];
  }
  if (from === 'cordoned') {
    return [{ level: 'info', component: 'DFS', message: `${who} ${node.name} uncordoned`, code: EventCode.nodeUncordoned }];
  }
  return [];
}
