// The channel from an engine to the replicas of its own node: requests go
// straight to the replica server's dispatcher, with the same fencing, ordering
// and error statuses as over TCP, but without the socket, framing and copies.
import type { Dispatcher } from './dispatch';
import { ReplicaConnectionError, ReplicaOps, ReplicaRequestError } from './ops';
import { OP_NAMES, type Op, type Reply, Status, statusName } from './protocol';

const EMPTY = Buffer.alloc(0);

function asBuffer(data: Uint8Array | undefined): Buffer {
  if (!data) return EMPTY;
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

export class LocalReplicaChannel extends ReplicaOps {
  private closed = false;

  constructor(private readonly dispatcher: Dispatcher) {
    super();
  }

  protected async send(op: Op, replicaId: string, epoch: number, offset: number, length: number, flags: number, payload?: Uint8Array): Promise<Reply> {
    if (this.closed) throw new ReplicaConnectionError('ECONNABORTED', 'local replica channel closed');
    const body = asBuffer(payload);
    const outcome = await this.dispatcher.execute({ op, flags, requestId: 0, replicaId, epoch, offset, length, payloadLength: body.length, payload: body });
    const out = outcome.payload ?? EMPTY;
    if (outcome.status !== Status.OK) {
      throw new ReplicaRequestError(statusName(outcome.status), outcome.status, outcome.epoch, OP_NAMES[op], replicaId, out.toString('utf8'));
    }
    return { status: outcome.status, requestId: 0, epoch: outcome.epoch, payloadLength: out.length, payload: out };
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}
