// The channel from an engine to the replicas of its own node: requests go
// straight to the replica server's dispatcher, with the same fencing, ordering
// and error statuses as over TCP, but without the socket, framing and copies.
// READ and WRITE, the per-I/O path, skip building a request and an outcome
// when the replica is open: fewer promise layers per I/O (each one costs a
// thenable check on the resolved Buffer).
import { type Dispatcher, type Outcome, fencedRead, fencedWrite } from './dispatch';
import { ReplicaConnectionError, ReplicaOps, ReplicaRequestError } from './ops';
import { OP_NAMES, Op, type Reply, Status, statusName } from './protocol';
import type { Replica } from './replica';

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

  override read(replicaId: string, epoch: number, offset: number, length: number): Promise<Buffer> {
    const replica = this.fastPath(replicaId, epoch, length);
    if (!replica) return super.read(replicaId, epoch, offset, length);
    return fencedRead(replica, epoch, offset, length).catch((err: unknown) => this.refuse(Op.READ, replicaId, err, replica));
  }

  override write(replicaId: string, epoch: number, offset: number, data: Uint8Array, opts: { fua?: boolean } = {}): Promise<void> {
    const replica = this.fastPath(replicaId, epoch, data.length);
    if (!replica) return super.write(replicaId, epoch, offset, data, opts);
    return fencedWrite(replica, epoch, offset, data, opts.fua === true).catch((err: unknown) => this.refuse(Op.WRITE, replicaId, err, replica));
  }

  protected async send(op: Op, replicaId: string, epoch: number, offset: number, length: number, flags: number, payload?: Uint8Array): Promise<Reply> {
    if (this.closed) throw new ReplicaConnectionError('ECONNABORTED', 'local replica channel closed');
    const body = asBuffer(payload);
    const outcome = await this.dispatcher.execute({ op, flags, requestId: 0, replicaId, epoch, offset, length, payloadLength: body.length, payload: body });
    const out = outcome.payload ?? EMPTY;
    if (outcome.status !== Status.OK) throw refusal(op, replicaId, outcome);
    return { status: outcome.status, requestId: 0, epoch: outcome.epoch, payloadLength: out.length, payload: out };
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }

  /** The open replica when the request needs nothing but fencing and I/O; else undefined (full path). */
  private fastPath(replicaId: string, epoch: number, length: number): Replica | undefined {
    return this.closed ? undefined : this.dispatcher.shortPathReplica(replicaId, epoch, length);
  }

  /** The same error the full path would raise for this failure. */
  private refuse(op: Op, replicaId: string, err: unknown, replica: Replica): never {
    throw refusal(op, replicaId, this.dispatcher.failure(op, replicaId, err, replica));
  }
}

/** The error a caller sees for an outcome that is not OK, as over TCP. */
function refusal(op: Op, replicaId: string, outcome: Outcome): ReplicaRequestError {
  const message = (outcome.payload ?? EMPTY).toString('utf8');
  return new ReplicaRequestError(statusName(outcome.status), outcome.status, outcome.epoch, OP_NAMES[op], replicaId, message);
}
