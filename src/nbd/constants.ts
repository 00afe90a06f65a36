// Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md).
// All integers on the wire are big-endian.

/** "NBDMAGIC": first 8 bytes the server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": follows NBDMAGIC, and prefixes every client option. */
export const IHAVEOPT = 0x49484156454f5054n;
/** Prefix of every option reply. */
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server) and client flags share the same bits. */
export const HandshakeFlag = {
  FIXED_NEWSTYLE: 1 << 0,
  NO_ZEROES: 1 << 1,
} as const;

export const Option = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const REP_ERROR_BIT = 0x80000000;
export const OptionReply = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: REP_ERROR_BIT + 1,
  ERR_POLICY: REP_ERROR_BIT + 2,
  ERR_INVALID: REP_ERROR_BIT + 3,
  ERR_PLATFORM: REP_ERROR_BIT + 4,
  ERR_TLS_REQD: REP_ERROR_BIT + 5,
  ERR_UNKNOWN: REP_ERROR_BIT + 6,
  ERR_SHUTDOWN: REP_ERROR_BIT + 7,
  ERR_BLOCK_SIZE_REQD: REP_ERROR_BIT + 8,
  ERR_TOO_BIG: REP_ERROR_BIT + 9,
} as const;

export const Info = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;

export const TransmissionFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

export const Command = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

export const CommandFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
} as const;

export const ReplyFlag = {
  DONE: 1 << 0,
} as const;

export const ChunkType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;

/** Error values allowed on the wire; the numbers match Linux errno. */
export const Errno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

const WIRE_ERRNOS: ReadonlySet<number> = new Set(Object.values(Errno));

export function isWireErrno(errno: number): boolean {
  return WIRE_ERRNOS.has(errno);
}

/** `base:allocation` block status flags. */
export const AllocationFlag = {
  HOLE: 1 << 0,
  ZERO: 1 << 1,
} as const;

export const BASE_ALLOCATION = 'base:allocation';
/** The context ID we hand out for base:allocation (any u32 would do). */
export const BASE_ALLOCATION_ID = 1;

export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_HEADER_SIZE = 16;
export const STRUCTURED_CHUNK_HEADER_SIZE = 20;

/** Strings (export names, queries) may be at most 4096 bytes per the spec. */
export const MAX_STRING_LENGTH = 4096;
