// The cluster model shared by every part of cio. Plain data only: these
// records are what is stored in etcd and sent over the API.

export const DRIVE_TYPES = ['SSD', 'HDD', 'NVME'] as const;
export type DriveType = (typeof DRIVE_TYPES)[number];

export const NODE_ROLES = ['sds', 'backup1', 'backup2', 'standard'] as const;
export type NodeRole = (typeof NODE_ROLES)[number];

/** normal: alive and schedulable; maintenance: lease expired (failed or rebooting). */
export const NODE_STATUSES = ['normal', 'maintenance', 'cordoned', 'leaving'] as const;
export type NodeStatus = (typeof NODE_STATUSES)[number];

export interface DriveRecord {
  /** Stable id of the drive within its node, e.g. "d1". */
  id: string;
  path: string;
  type: DriveType;
  capacityBytes: number;
  /** Bytes really allocated by replicas on this drive (sparse files count what is written). */
  usedBytes: number;
}

/** The persistent record of a node, kept in etcd without a lease. */
export interface NodeRecord {
  id: string;
  name: string;
  ip: string;
  apiPort: number;
  replicaPort: number;
  role: NodeRole;
  /** Written by the controller only: the status users see. */
  status: NodeStatus;
  /** Set by `cio node cordon`; a cordoned node gets no new replicas. */
  cordoned: boolean;
  drives: DriveRecord[];
  registeredAt: string;
  /** When the status last changed (ISO time). */
  statusSince: string;
  version: string;
}

/** What an agent publishes under its lease while it is alive. */
export interface NodeLiveness {
  id: string;
  pid: number;
  startedAt: string;
}

export const EVENT_LEVELS = ['info', 'warn', 'error'] as const;
export type EventLevel = (typeof EVENT_LEVELS)[number];

export interface ClusterEvent {
  /** Sortable key suffix, unique across the cluster. */
  id: string;
  time: string;
  level: EventLevel;
  /** e.g. "DFS"; empty for messages printed without a component. */
  component: string;
  message: string;
  code: number;
}

/** Event codes, as in the seed's event log. */
export const EventCode = {
  volumeRebuilding: 1003,
  volumeCreatedOnNode: 1009,
  volumeRemovedOnNode: 1011,
  nodeNotResponding: 1018,
  nodeFailoverCompleted: 1019,
  rebuildCompleted: 1020,
  localityRebuildCompleted: 1021,
  nodeBackToNormal: 1022,
  nodeCordoned: 1023,
  nodeUncordoned: 1024,
  nodeJoined: 1025,
  controllerElected: 1026,
  replicaStale: 1027,
  volumeReleased: 1028,
  resyncCompleted: 1029,
  repairStarted: 1030,
  repairEnded: 1031,
} as const;

export const REPLICA_STATES = ['in-sync', 'rebuilding', 'stale'] as const;
/** in-sync: has every acknowledged write; rebuilding: being filled; stale: missed writes, never read. */
export type ReplicaState = (typeof REPLICA_STATES)[number];

export interface ReplicaRecord {
  /** Unique id of this copy (also its file name on the drive). */
  id: string;
  nodeId: string;
  driveId: string;
  state: ReplicaState;
  createdAt: string;
  /** Stale copies only: when it went stale, and whether only a full copy can make it whole again. */
  staleSince?: string;
  fullResync?: boolean;
  /** Added to bring a copy next to the owner; a remote copy is retired when it is in sync. */
  locality?: boolean;
}

export const PROVISIONING = ['thin', 'thick'] as const;
export type Provisioning = (typeof PROVISIONING)[number];
export const FILESYSTEMS = ['ext4', 'xfs'] as const;
export type Filesystem = (typeof FILESYSTEMS)[number];

/** The options a volume is made with; a profile gives defaults for them. */
export interface VolumeSpec {
  sizeBytes: number;
  level: 1 | 2 | 3;
  driveType: DriveType;
  provision: Provisioning;
  filesystem: Filesystem;
  iopsMin?: number;
  iopsMax?: number;
}

export type VolumePhase = 'creating' | 'ready' | 'deleting';

export interface VolumeAttachment {
  nodeId: string;
  /** NBD export URI on the owner, e.g. nbd+unix:///NAME?socket=… */
  uri: string;
  since: string;
  /** Taken by cio itself to rebuild the copies of a volume nobody uses: no NBD export, given up to any attach. */
  repair?: true;
  /** Set when the Docker plugin mounted it: how the block device was made, and where it is mounted. */
  method?: string;
  mountpoint?: string;
}

export interface VolumeRecord extends VolumeSpec {
  name: string;
  /** Short handle shown by `cio volume ls`, e.g. "vd2". */
  vdisk: string;
  /** 8 hex digits, unique for the life of the volume. */
  uuid: string;
  profile: string | null;
  phase: VolumePhase;
  /** Node that may write (attached there), or null. Changes only with an epoch bump. */
  owner: string | null;
  /** Fencing epoch: replicas refuse requests carrying an older one. */
  epoch: number;
  attachment: VolumeAttachment | null;
  replicas: ReplicaRecord[];
  createdAt: string;
}
