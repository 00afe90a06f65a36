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
  volumesPrefix: `${ROOT}volumes/`,
  volume: (name: string) => `${ROOT}volumes/${name}`,
  /** Counter behind the vdN handles. */
  vdiskSeq: `${ROOT}meta/vdisk-seq`,
  /** Dirty map of a stale copy: regions written while it missed them. */
  dirtyPrefix: (volume: string) => `${ROOT}dirty/${volume}/`,
  dirty: (volume: string, replicaId: string) => `${ROOT}dirty/${volume}/${replicaId}`,
  /** Write-intent extents of the owner: where its in-sync copies may disagree until reconciled. */
  intents: (volume: string) => `${ROOT}intents/${volume}`,
  /** Rebuild progress of a volume, written by its owner while copies are rebuilt. */
  progress: (volume: string) => `${ROOT}progress/${volume}`,
  profilesPrefix: `${ROOT}profiles/`,
  profile: (name: string) => `${ROOT}profiles/${name}`,
  eventsPrefix: `${ROOT}events/`,
  event: (id: string) => `${ROOT}events/${id}`,
  /** Prefix of the etcd3 client's election for the controller. */
  controllerElection: 'controller',
  electionPrefix: `${ROOT}election/`,
} as const;

export function idFromKey(prefix: string, key: string): string {
  return key.slice(prefix.length);
}
