// The operations of the replica protocol, independent of how a request
// travels: the TCP client (client.ts) and the in-process channel to this
// node's own replicas (local.ts) both implement `send`.
import { EventEmitter } from 'node:events';
import { invariant } from '../util/errors';
import { decodeAllocMap, decodeJson, encodeJson } from './codec';
import type { Extent } from '../native/fsext';
import type { ReplicaState } from './meta';
import { type CreatePayload, Flag, Op, type ReplicaInfo, type Reply } from './protocol';

/** The server answered with an error status. `epoch` is the replica's current epoch. */
export class ReplicaRequestError extends Error {
  constructor(
    readonly code: string,
    readonly status: number,
    readonly epoch: number,
    readonly op: string,
    readonly replicaId: string,
    message: string,
  ) {
    super(`${op} ${replicaId}: ${code}${message ? `: ${message}` : ''}`);
    this.name = 'ReplicaRequestError';
  }
}

/** The connection failed or closed; the request's outcome on the server is unknown. */
export class ReplicaConnectionError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'ReplicaConnectionError';
  }
}

export abstract class ReplicaOps extends EventEmitter {
  protected abstract send(op: Op, replicaId: string, epoch: number, offset: number, length: number, flags: number, payload?: Uint8Array, replyBytes?: number): Promise<Reply>;

  abstract close(): Promise<void>;

  // ---- operations ---------------------------------------------------------

  /** Raises the replica's epoch to `epoch` (refused with ESTALE if older) and returns its info. */
  async open(replicaId: string, epoch: number): Promise<ReplicaInfo> {
    return this.info(await this.send(Op.OPEN, replicaId, epoch, 0, 0, 0));
  }

  async stat(replicaId: string): Promise<ReplicaInfo> {
    return this.info(await this.send(Op.STAT, replicaId, 0, 0, 0, 0));
  }

  async create(opts: { replicaId: string; volumeUuid: string; size: number; thick?: boolean; epoch?: number; driveId?: string; state?: ReplicaState }): Promise<ReplicaInfo> {
    const body: CreatePayload = { volumeUuid: opts.volumeUuid, size: opts.size, driveId: opts.driveId, state: opts.state };
    const payload = encodeJson(body);
    const flags = opts.thick ? Flag.THICK : 0;
    return this.info(await this.send(Op.CREATE, opts.replicaId, opts.epoch ?? 0, 0, payload.length, flags, payload));
  }

  async delete(replicaId: string, epoch: number): Promise<void> {
    await this.send(Op.DELETE, replicaId, epoch, 0, 0, 0);
  }

  async read(replicaId: string, epoch: number, offset: number, length: number): Promise<Buffer> {
    return (await this.send(Op.READ, replicaId, epoch, offset, length, 0, undefined, length)).payload;
  }

  /** `data` is sent without a copy: do not modify it until the returned promise settles. */
  async write(replicaId: string, epoch: number, offset: number, data: Uint8Array, opts: { fua?: boolean } = {}): Promise<void> {
    await this.send(Op.WRITE, replicaId, epoch, offset, data.length, opts.fua ? Flag.FUA : 0, data);
  }

  async flush(replicaId: string, epoch: number): Promise<void> {
    await this.send(Op.FLUSH, replicaId, epoch, 0, 0, 0);
  }

  /** Discards the range; it reads back as zeros on every replica. */
  async trim(replicaId: string, epoch: number, offset: number, length: number, opts: { fua?: boolean } = {}): Promise<void> {
    await this.send(Op.TRIM, replicaId, epoch, offset, length, opts.fua ? Flag.FUA : 0);
  }

  async writeZeroes(replicaId: string, epoch: number, offset: number, length: number, opts: { fua?: boolean; noHole?: boolean } = {}): Promise<void> {
    const flags = (opts.fua ? Flag.FUA : 0) | (opts.noHole ? Flag.NO_HOLE : 0);
    await this.send(Op.WRITE_ZEROES, replicaId, epoch, offset, length, flags);
  }

  /** Allocated extents of [offset, offset+length) (several round trips for very fragmented ranges). */
  async allocMap(replicaId: string, epoch: number, offset: number, length: number): Promise<Extent[]> {
    const end = offset + length;
    const extents: Extent[] = [];
    let pos = offset;
    do {
      // The server caps one reply; lengths are u32 on the wire, so ask in pieces.
      const span = Math.min(end - pos, 0xffff_f000);
      const reply = await this.send(Op.ALLOC_MAP, replicaId, epoch, pos, span, 0);
      const map = decodeAllocMap(reply.payload);
      invariant(map.scannedTo > pos && map.scannedTo <= pos + span, 'ALLOC_MAP reply made no progress');
      extents.push(...map.extents);
      pos = map.scannedTo;
    } while (pos < end);
    return extents;
  }

  async setState(replicaId: string, epoch: number, state: ReplicaState): Promise<ReplicaInfo> {
    const payload = encodeJson({ state });
    return this.info(await this.send(Op.SET_STATE, replicaId, epoch, 0, payload.length, 0, payload));
  }

  /** Grows the replica to `newSize` bytes. */
  async resize(replicaId: string, epoch: number, newSize: number): Promise<ReplicaInfo> {
    return this.info(await this.send(Op.RESIZE, replicaId, epoch, newSize, 0, 0));
  }

  protected info(reply: Reply): ReplicaInfo {
    return decodeJson(reply.payload) as ReplicaInfo;
  }
}
