// Errors raised by the replica layer. `code` is an errno name so that the
// same value travels over the wire (protocol.ts maps it to a status number)
// and compares equal to Node's own fs errors ('ENOSPC', 'ENOENT' …).

export class ReplicaError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'ReplicaError';
  }
}

/** The request's epoch is older than the replica's: the sender was fenced off. */
export function staleEpoch(replicaId: string, requested: number, current: number): ReplicaError {
  return new ReplicaError('ESTALE', `replica ${replicaId}: epoch ${requested} is older than the replica's epoch ${current}`);
}

export function errnoCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') return err.code;
  return undefined;
}
