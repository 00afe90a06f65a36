// Node records and liveness keys in etcd.
import type { Etcd3 } from 'etcd3';
import { roleForNewNode } from '../core/roles';
import type { NodeRecord } from '../core/types';
import { casUpdate } from './cas';
import { getAllJson, getJson } from './etcd';
import { keys } from './keys';

export async function listNodes(etcd: Etcd3): Promise<NodeRecord[]> {
  const nodes = [...(await getAllJson<NodeRecord>(etcd, keys.nodesPrefix)).values()];
  return nodes.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
}

export async function aliveNodeIds(etcd: Etcd3): Promise<Set<string>> {
  const found = await etcd.getAll().prefix(keys.alivePrefix).keys();
  return new Set(found.map((k) => k.slice(keys.alivePrefix.length)));
}

export function getNode(etcd: Etcd3, id: string): Promise<NodeRecord | undefined> {
  return getJson<NodeRecord>(etcd, keys.node(id));
}

export async function findNodeByName(etcd: Etcd3, name: string): Promise<NodeRecord | undefined> {
  return (await listNodes(etcd)).find((n) => n.name === name || n.id === name);
}

export type NodeIdentity = Omit<NodeRecord, 'role' | 'status' | 'cordoned' | 'registeredAt' | 'statusSince'>;

/**
 * Record a node in the cluster. A node seen before keeps its role, status and
 * cordon flag (the controller moves the status); a new node gets the next free
 * role in one transaction, so two nodes joining at once never share a role.
 */
export async function registerNode(etcd: Etcd3, identity: NodeIdentity, now = new Date()): Promise<NodeRecord> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const existing = await getJson<NodeRecord>(etcd, keys.node(identity.id));
    if (existing) {
      return casUpdate<NodeRecord>(etcd, keys.node(identity.id), (cur) => ({ ...cur, ...identity }));
    }
    const seqRes = await etcd.get(keys.membershipSeq).exec();
    const seqKv = seqRes.kvs[0];
    const seqRevision = seqKv ? seqKv.mod_revision : '0';
    const seq = seqKv ? Number(seqKv.value.toString()) : 0;
    const others = await listNodes(etcd);
    const nameTaken = others.find((n) => n.name === identity.name);
    if (nameTaken) {
      throw new Error(`node name ${identity.name} is already used by node ${nameTaken.id}; pick another name or reuse that node's data directory`);
    }
    const record: NodeRecord = {
      ...identity,
      role: roleForNewNode(others.map((n) => n.role)),
      // A new node is 'maintenance' until the controller sees its lease and admits it.
      status: 'maintenance',
      cordoned: false,
      registeredAt: now.toISOString(),
      statusSince: now.toISOString(),
    };
    const res = await etcd
      .if(keys.membershipSeq, 'Mod', '==', seqRevision)
      .and(keys.node(identity.id), 'Create', '==', 0)
      .then(etcd.put(keys.membershipSeq).value(String(seq + 1)), etcd.put(keys.node(identity.id)).value(JSON.stringify(record)))
      .commit();
    if (res.succeeded) return record;
  }
  throw new Error('could not register the node: too many concurrent registrations');
}

export function updateNode(etcd: Etcd3, id: string, change: (cur: NodeRecord) => NodeRecord | undefined): Promise<NodeRecord> {
  return casUpdate<NodeRecord>(etcd, keys.node(id), change);
}
