// Public surface of the NBD server. The replication engine implements
// NbdBackend; everything else here is protocol machinery.

export { NbdError, Errno, backendGeometryProblems, type NbdBackend, type BlockStatusExtent } from './backend';
export { AllocationFlag } from './constants';
export { NbdServer, DEFAULT_MAX_IN_FLIGHT_BYTES, type NbdServerOptions, type NbdServerStats } from './server';
export type { ConnectionStats } from './connection';
export { FileBackend, type FileBackendOptions } from './file-backend';
