// The replica layer's public surface: what the agent (server side) and the
// replication engine (client side) import.
export { ReplicaClient, ReplicaConnectionError, ReplicaRequestError, type ReplicaClientOptions } from './client';
export { ReplicaError } from './errors';
export { type Extent } from '../native/fsext';
export { REPLICA_STATES, type ReplicaMeta, type ReplicaState } from './meta';
export { MAX_IO_BYTES, type ReplicaInfo } from './protocol';
export { Replica } from './replica';
export { ReplicaServer, type ReplicaServerOptions } from './server';
export { ReplicaStore, type CreateReplicaOptions } from './store';
