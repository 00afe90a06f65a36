// Connections from this agent to the replica servers of other nodes (and its
// own): for volume lifecycle operations and for engines.
import { ReplicaClient, ReplicaConnectionError } from '../replica/client';
import type { NodeRecord } from '../core/types';
import type { ReplicaChannel } from '../engine/engine';

export interface ReplicaLinkOptions {
  secret: Buffer;
  connectTimeoutMs: number;
  /** This node's address: replica traffic is sent from it (see ReplicaClientOptions.localAddress). */
  localAddress?: string;
}

export function connectReplica(node: Pick<NodeRecord, 'ip' | 'replicaPort'>, opts: ReplicaLinkOptions): Promise<ReplicaClient> {
  return ReplicaClient.connect({ host: node.ip, port: node.replicaPort, secret: opts.secret, timeoutMs: opts.connectTimeoutMs, localAddress: opts.localAddress });
}

/** A channel to a copy whose node could not be reached: every call fails, so the engine retires it. */
export function unreachableChannel(reason: string): ReplicaChannel {
  const fail = (): Promise<never> => Promise.reject(new ReplicaConnectionError('ENOTCONN', reason));
  return { open: fail, read: fail, write: fail, flush: fail, trim: fail, writeZeroes: fail, allocMap: fail, close: () => Promise.resolve() };
}

/** Run `fn` with a short-lived connection to a node's replica server. */
export async function withReplicaClient<T>(node: Pick<NodeRecord, 'ip' | 'replicaPort' | 'name'>, opts: ReplicaLinkOptions, fn: (c: ReplicaClient) => Promise<T>): Promise<T> {
  const client = await connectReplica(node, opts);
  try {
    return await fn(client);
  } finally {
    await client.close().catch(() => undefined);
  }
}
