// The replica wire protocol: constants, frame layouts and status numbers.
// Everything is big-endian. After the handshake (auth.ts) the client sends
// request frames and the server answers each with one reply frame carrying
// the same request id; many requests may be in flight and replies come in
// completion order.
//
// Request frame (REQUEST_HEADER_SIZE bytes, then the replica id, then payload):
//    0 u32 magic 'CIOQ'      4 u8 op       5 u8 flags     6 u8 replica id length
//    7 u8  reserved (0)      8 u32 request id
//   12 u64 epoch            20 u64 offset  28 u32 length  32 u32 payload length
// Reply frame (REPLY_HEADER_SIZE bytes, then payload):
//    0 u32 magic 'CIOR'      4 u16 status  6 u16 reserved (0)
//    8 u32 request id       12 u64 epoch (the replica's current one, 0 if unknown)
//   20 u32 payload length
// The payload length is explicit for every op, so a server can skip the
// payload of a request it refuses (unknown op, oversized) and stay in sync.

export const REQUEST_MAGIC = 0x43494f51; // 'CIOQ'
export const REPLY_MAGIC = 0x43494f52; // 'CIOR'
export const REQUEST_HEADER_SIZE = 36;
export const REPLY_HEADER_SIZE = 24;
export const MAX_REPLICA_ID_BYTES = 64;

/** Largest READ length / WRITE payload a server accepts. */
export const MAX_IO_BYTES = 32 * 1024 * 1024;
/** Largest payload of a management request (JSON). */
export const MAX_CONTROL_PAYLOAD = 64 * 1024;
/** Largest reply payload a client accepts; anything bigger is a broken peer. */
export const MAX_REPLY_PAYLOAD = MAX_IO_BYTES + 1024 * 1024;
/** At most this many extents per ALLOC_MAP reply (16 bytes each); the client continues from `scannedTo`. */
export const MAX_ALLOC_MAP_EXTENTS = 32 * 1024;

export enum Op {
  /** Raise the replica's epoch to the request's (durably) and return its info. */
  OPEN = 1,
  READ = 2,
  WRITE = 3,
  FLUSH = 4,
  TRIM = 5,
  WRITE_ZEROES = 6,
  /** Allocated extents of [offset, offset+length). */
  ALLOC_MAP = 7,
  /** payload: JSON CreatePayload; epoch: the replica's initial epoch. */
  CREATE = 8,
  DELETE = 9,
  /** Info without any epoch check or change. */
  STAT = 10,
  /** payload: JSON { state }. */
  SET_STATE = 11,
  /** offset: the new size (grow only). */
  RESIZE = 12,
}

export const OP_NAMES: Readonly<Record<number, string>> = Object.fromEntries(
  Object.entries(Op).filter(([, v]) => typeof v === 'number').map(([k, v]) => [v, k]),
);

export function isKnownOp(op: number): op is Op {
  return OP_NAMES[op] !== undefined;
}

export const Flag = {
  /** Force unit access: the data is durable before the reply (WRITE, TRIM, WRITE_ZEROES). */
  FUA: 1,
  /** WRITE_ZEROES: keep the range allocated instead of punching a hole. */
  NO_HOLE: 2,
  /** CREATE: thick provisioning. */
  THICK: 4,
} as const;

/** Reply statuses: Linux errno numbers, so they read like the errors they stand for. */
export const Status = {
  OK: 0,
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EBUSY: 16,
  EEXIST: 17,
  EINVAL: 22,
  EFBIG: 27,
  ENOSPC: 28,
  EROFS: 30,
  ENOSYS: 38,
  EPROTO: 71,
  EOVERFLOW: 75,
  EMSGSIZE: 90,
  EOPNOTSUPP: 95,
  ENOTCONN: 107,
  ESHUTDOWN: 108,
  ESTALE: 116,
  EDQUOT: 122,
} as const;

const STATUS_NAMES = new Map<number, string>(Object.entries(Status).map(([k, v]) => [v, k]));
const STATUS_BY_NAME = new Map<string, number>(Object.entries(Status));

/** The wire status for an errno name; unknown names become EIO. */
export function statusForCode(code: string | undefined): number {
  return (code !== undefined ? STATUS_BY_NAME.get(code) : undefined) ?? Status.EIO;
}

/** The errno name of a status ('E123' for numbers this side does not know). */
export function statusName(status: number): string {
  return STATUS_NAMES.get(status) ?? `E${status}`;
}

export interface RequestHeader {
  op: number;
  flags: number;
  requestId: number;
  replicaId: string;
  /** Decoded as a double: values above 2^53 arrive inexact and fail validation. */
  epoch: number;
  offset: number;
  length: number;
  payloadLength: number;
}

export interface Request extends RequestHeader {
  /** WRITE data or management JSON; empty when the payload was refused. */
  payload: Buffer;
  /**
   * Set when the decoder refused the request while framing it (oversized
   * payload, bad replica id): the server replies with this status without
   * looking further.
   */
  refused?: { status: number; message: string };
}

export interface ReplyHeader {
  status: number;
  requestId: number;
  epoch: number;
  payloadLength: number;
}

export interface Reply extends ReplyHeader {
  payload: Buffer;
}

/** What OPEN, STAT and CREATE return. */
export interface ReplicaInfo {
  replicaId: string;
  volumeUuid: string;
  size: number;
  epoch: number;
  state: string;
  thick: boolean;
  createdAt: string;
  updatedAt: string;
  allocatedBytes: number;
  /** OPEN only: the replica's process restarted since it was last opened (unflushed writes may be lost). */
  restarted?: boolean;
}

export interface CreatePayload {
  volumeUuid: string;
  size: number;
  /** Which drive of the node to place it on; may be omitted when the node has one. */
  driveId?: string;
  state?: string;
}

/** Raised by the decoders when the peer is not speaking this protocol: close the connection. */
export class ProtocolError extends Error {
  readonly code = 'EPROTO';
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}
