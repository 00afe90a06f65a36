// Every key cio keeps in etcd, in one place. All keys live under one prefix so
// several clusters (tests) could share an etcd without seeing each other.

export const ROOT = '/cio/';

export const keys = {
  cluster: `${ROOT}cluster`,
  /** Persistent node records (no lease). */
  nodesPrefix: `${ROOT}nodes/`,
  node: (id: string) => `${ROOT}nodes/${id}`,
  /** Liveness keys, each attached to its agent's lease: gone = node failed. */
  alivePrefix: `${ROOT}alive/`,
  alive: (id: string) => `${ROOT}alive/${id}`,
  /** Bumped by every registration of a new node, so role assignment is one transaction. */
  membershipSeq: `${ROOT}meta/membership-seq`,
  eventsPrefix: `${ROOT}events/`,
  event: (id: string) => `${ROOT}events/${id}`,
  /** Prefix of the etcd3 client's election for the controller. */
  controllerElection: 'controller',
  electionPrefix: `${ROOT}election/`,
} as const;

export function idFromKey(prefix: string, key: string): string {
  return key.slice(prefix.length);
}
