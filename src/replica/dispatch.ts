// Carries out one decoded request against the node's replicas and says what
// to reply. No sockets here (connection.ts does the framing and flow
// control). Every data operation goes through Replica.runFenced, so the epoch
// rule is enforced in one place.
import { type Logger } from '../util/log';
import { errnoCode } from './errors';
import { decodeJson, encodeAllocMap, encodeJson } from './codec';
import { type ReplicaLocator } from './locator';
import { isReplicaState, isValidEpoch, isValidReplicaId } from './meta';
import {
  type CreatePayload,
  Flag,
  MAX_ALLOC_MAP_EXTENTS,
  MAX_IO_BYTES,
  OP_NAMES,
  Op,
  type ReplicaInfo,
  type Request,
  Status,
  statusForCode,
} from './protocol';
import type { Replica } from './replica';

export interface Outcome {
  status: number;
  /** The replica's epoch after the operation (0 when there is no replica). */
  epoch: number;
  payload?: Buffer;
}

const EMPTY = Buffer.alloc(0);

class RequestError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function fail(status: number, message: string): Outcome {
  return { status, epoch: 0, payload: Buffer.from(message, 'utf8') };
}

export async function replicaInfo(replica: Replica): Promise<ReplicaInfo> {
  return { ...replica.info(), allocatedBytes: await replica.allocatedBytes() };
}

/** READ as the protocol defines it: at the replica's epoch, after earlier overlapping writes. */
export function fencedRead(r: Replica, epoch: number, offset: number, length: number): Promise<Buffer> {
  return r.runFenced(epoch, offset, length, 'shared', () => r.read(offset, length));
}

/** WRITE as the protocol defines it: at the replica's epoch, in arrival order against overlapping requests. */
export function fencedWrite(r: Replica, epoch: number, offset: number, data: Uint8Array, fua: boolean): Promise<void> {
  return r.runFenced(epoch, offset, data.length, 'exclusive', async (lease) => {
    await r.write(offset, data);
    if (fua) {
      lease.release(); // durability needs no ordering against later writes
      await r.flush();
    }
  });
}

/** Replicas one connection may have opened: a bound on the map below. */
const MAX_OPEN_PER_CONNECTION = 4096;

/**
 * The session each replica got when this connection opened it. An owner that
 * reconnects to a copy sends OPEN on the new connection before any change;
 * from then on, changes still arriving on an older connection (held in a send
 * buffer by a cut link, retransmitted after the new connection's writes) are
 * refused, or they would overwrite newer data. A connection that never opened
 * the replica (management requests) is not checked.
 */
export class ConnectionSessions {
  private readonly opened = new Map<string, number>();

  record(r: Replica, session: number): void {
    if (!this.opened.has(r.id) && this.opened.size >= MAX_OPEN_PER_CONNECTION) {
      throw new RequestError(Status.EBUSY, `a connection may open at most ${MAX_OPEN_PER_CONNECTION} replicas`);
    }
    this.opened.set(r.id, session);
  }

  /** Refuse a change from this connection if another OPEN of the replica came after its own. */
  checkCurrent(r: Replica, epoch: number): void {
    if (epoch < r.epoch) return; // the epoch fence refuses it, and its ESTALE tells an old owner it lost the volume
    const mine = this.opened.get(r.id);
    if (mine !== undefined && mine !== r.session) {
      throw new RequestError(Status.ENOTCONN, `replica ${r.id}: this connection was superseded by a newer OPEN; changes go on the newer one`);
    }
  }
}

export class Dispatcher {
  constructor(
    private readonly locator: ReplicaLocator,
    private readonly logger: Logger,
  ) {}

  /**
   * The replica a READ or WRITE of `length` bytes at `epoch` may go to
   * straight away: open already (no lookup), with nothing for the full path
   * to refuse. Undefined means: take the full path (`execute`).
   */
  shortPathReplica(replicaId: string, epoch: number, length: number): Replica | undefined {
    if (length > MAX_IO_BYTES || !isValidEpoch(epoch)) return undefined;
    return this.locator.open(replicaId);
  }

  /**
   * Never rejects: failures become error outcomes. READ and WRITE on an open
   * replica, the per-I/O case, take a short path with the same checks.
   */
  execute(req: Request, sessions?: ConnectionSessions): Promise<Outcome> {
    const dataOp = req.refused === undefined && (req.op === Op.READ || (req.op === Op.WRITE && req.payload.length === req.length));
    const replica = dataOp ? this.shortPathReplica(req.replicaId, req.epoch, req.length) : undefined;
    return replica ? this.dataOp(req, replica, sessions) : this.executeFull(req, sessions);
  }

  private dataOp(req: Request, r: Replica, sessions: ConnectionSessions | undefined): Promise<Outcome> {
    const { epoch, offset, length } = req;
    const onError = (err: unknown): Outcome => this.failure(req.op, req.replicaId, err, r);
    if (req.op === Op.WRITE && sessions) {
      try {
        sessions.checkCurrent(r, epoch);
      } catch (err) {
        return Promise.resolve(onError(err));
      }
    }
    if (req.op === Op.READ) {
      return fencedRead(r, epoch, offset, length).then((data): Outcome => ({ status: Status.OK, epoch: r.epoch, payload: data }), onError);
    }
    return fencedWrite(r, epoch, offset, req.payload, (req.flags & Flag.FUA) !== 0).then((): Outcome => ({ status: Status.OK, epoch: r.epoch }), onError);
  }

  private async executeFull(req: Request, sessions: ConnectionSessions | undefined): Promise<Outcome> {
    if (req.refused) return fail(req.refused.status, req.refused.message);
    let replica: Replica | undefined;
    try {
      if (OP_NAMES[req.op] === undefined) throw new RequestError(Status.ENOSYS, `unknown op ${req.op}`);
      if (!isValidReplicaId(req.replicaId)) throw new RequestError(Status.EINVAL, `invalid replica id ${JSON.stringify(req.replicaId)}`);
      if (!isValidEpoch(req.epoch)) throw new RequestError(Status.EINVAL, `invalid epoch ${req.epoch}`);
      if (req.op === Op.CREATE) return await this.create(req);
      if (req.op === Op.DELETE) {
        // Found first only so that a refusal can report the replica's epoch;
        // a replica too broken to open can still be deleted.
        replica = await Promise.resolve(this.locator.find(req.replicaId)).catch(() => undefined);
        await this.locator.delete(req.replicaId, req.epoch);
        return { status: Status.OK, epoch: req.epoch };
      }
      const found = this.locator.find(req.replicaId);
      replica = found instanceof Promise ? await found : found;
      return await this.onReplica(req, replica, sessions);
    } catch (err) {
      return this.failure(req.op, req.replicaId, err, replica);
    }
  }

  private async onReplica(req: Request, r: Replica, sessions: ConnectionSessions | undefined): Promise<Outcome> {
    const { epoch, offset, length, flags } = req;
    const fua = (flags & Flag.FUA) !== 0;
    if (sessions && (req.op === Op.WRITE || req.op === Op.TRIM || req.op === Op.WRITE_ZEROES)) sessions.checkCurrent(r, epoch);
    switch (req.op as Op) {
      case Op.OPEN: {
        const { restarted } = await r.raiseEpoch(epoch);
        // Only an OPEN that was not refused supersedes: an older owner's must not stop the current one.
        sessions?.record(r, r.newSession());
        return this.info(r, { restarted });
      }
      case Op.STAT:
        return this.info(r);
      case Op.READ: {
        if (length > MAX_IO_BYTES) throw new RequestError(Status.EMSGSIZE, `READ of ${length} bytes exceeds the limit of ${MAX_IO_BYTES}`);
        const data = await fencedRead(r, epoch, offset, length);
        return { status: Status.OK, epoch: r.epoch, payload: data };
      }
      case Op.WRITE:
        if (req.payload.length !== length) throw new RequestError(Status.EINVAL, `WRITE length ${length} but payload of ${req.payload.length} bytes`);
        await fencedWrite(r, epoch, offset, req.payload, fua);
        return { status: Status.OK, epoch: r.epoch };
      case Op.FLUSH:
        await r.runFencedUnlocked(epoch, async () => {
          await r.ranges.barrier(0, r.size); // cover writes that arrived before the flush
          await r.flush();
        });
        return { status: Status.OK, epoch: r.epoch };
      case Op.TRIM:
      case Op.WRITE_ZEROES: {
        const noHole = req.op === Op.WRITE_ZEROES && (flags & Flag.NO_HOLE) !== 0;
        await r.runFenced(epoch, offset, length, 'exclusive', async (lease) => {
          await r.writeZeroes(offset, length, { noHole });
          if (fua) {
            lease.release();
            await r.flush();
          }
        });
        return { status: Status.OK, epoch: r.epoch };
      }
      case Op.ALLOC_MAP: {
        const map = await r.runFenced(epoch, offset, length, 'shared', () => Promise.resolve(r.allocatedExtents(offset, length, MAX_ALLOC_MAP_EXTENTS)));
        return { status: Status.OK, epoch: r.epoch, payload: encodeAllocMap(map.extents, map.scannedTo) };
      }
      case Op.SET_STATE: {
        const body = this.json(req) as { state?: unknown };
        const state = body.state;
        if (!isReplicaState(state)) throw new RequestError(Status.EINVAL, `invalid replica state ${JSON.stringify(state)}`);
        await r.runFencedUnlocked(epoch, () => r.setState(state));
        return this.info(r);
      }
      case Op.RESIZE:
        await r.runFencedUnlocked(epoch, () => r.resize(offset));
        return this.info(r);
      default:
        throw new RequestError(Status.ENOSYS, `op ${req.op} does not apply to an existing replica`);
    }
  }

  private async create(req: Request): Promise<Outcome> {
    const body = this.json(req) as Partial<CreatePayload>;
    if (typeof body.volumeUuid !== 'string' || typeof body.size !== 'number') {
      throw new RequestError(Status.EINVAL, 'CREATE needs { volumeUuid, size }');
    }
    if (body.state !== undefined && !isReplicaState(body.state)) throw new RequestError(Status.EINVAL, `invalid replica state ${JSON.stringify(body.state)}`);
    if (body.driveId !== undefined && typeof body.driveId !== 'string') throw new RequestError(Status.EINVAL, 'driveId must be a string');
    const replica = await this.locator.create({
      replicaId: req.replicaId,
      volumeUuid: body.volumeUuid,
      size: body.size,
      thick: (req.flags & Flag.THICK) !== 0,
      epoch: req.epoch,
      driveId: body.driveId,
      state: body.state,
    });
    return this.info(replica);
  }

  private async info(r: Replica, extra: Partial<ReplicaInfo> = {}): Promise<Outcome> {
    return { status: Status.OK, epoch: r.epoch, payload: encodeJson({ ...(await replicaInfo(r)), ...extra }) };
  }

  private json(req: Request): unknown {
    try {
      const value = decodeJson(req.payload);
      if (typeof value !== 'object' || value === null) throw new Error('not an object');
      return value;
    } catch {
      throw new RequestError(Status.EINVAL, `${OP_NAMES[req.op]}: payload is not a JSON object`);
    }
  }

  /** The outcome `execute` replies with for a failure (also used by the in-process fast path). */
  failure(op: number, replicaId: string, err: unknown, replica: Replica | undefined): Outcome {
    const status = err instanceof RequestError ? err.status : statusForCode(errnoCode(err));
    const message = err instanceof Error ? err.message : String(err);
    if (status === Status.EIO && !(err instanceof RequestError)) {
      this.logger.error({ err, op: OP_NAMES[op], replicaId }, 'replica request failed');
    }
    return { status, epoch: replica?.epoch ?? 0, payload: message.length > 0 ? Buffer.from(message, 'utf8') : EMPTY };
  }
}
