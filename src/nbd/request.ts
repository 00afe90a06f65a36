// The transmission-phase request header: parsing, and the per-command
// checks that decide whether a request reaches the backend at all.

import { Command, CommandFlag, Errno, REQUEST_MAGIC } from './constants';

export interface NbdRequest {
  flags: number;
  type: number;
  /** The 64-bit cookie ("handle"), kept as two halves: it is only echoed back. */
  cookieHi: number;
  cookieLo: number;
  /** Exact up to 2^53; anything larger is far beyond any export, so range checks still fail. */
  offset: number;
  length: number;
}

const TWO_32 = 0x100000000;

/** Parse a 28-byte request header; undefined if the magic is wrong. */
export function parseRequestHeader(buf: Buffer): NbdRequest | undefined {
  if (buf.readUInt32BE(0) !== REQUEST_MAGIC) return undefined;
  return {
    flags: buf.readUInt16BE(4),
    type: buf.readUInt16BE(6),
    cookieHi: buf.readUInt32BE(8),
    cookieLo: buf.readUInt32BE(12),
    offset: buf.readUInt32BE(16) * TWO_32 + buf.readUInt32BE(20),
    length: buf.readUInt32BE(24),
  };
}

export interface ExportLimits {
  size: number;
  minBlockSize: number;
  maxPayload: number;
  readOnly: boolean;
  structuredReplies: boolean;
  baseAllocation: boolean;
}

export interface Rejection {
  errno: number;
  message: string;
}

/** Command flags each command accepts; FUA is valid on every command per the spec. */
const ALLOWED_FLAGS: Record<number, number> = {
  [Command.READ]: CommandFlag.FUA | CommandFlag.DF,
  [Command.WRITE]: CommandFlag.FUA,
  [Command.DISC]: CommandFlag.FUA,
  [Command.FLUSH]: CommandFlag.FUA,
  [Command.TRIM]: CommandFlag.FUA,
  [Command.CACHE]: CommandFlag.FUA,
  [Command.WRITE_ZEROES]: CommandFlag.FUA | CommandFlag.NO_HOLE,
  [Command.BLOCK_STATUS]: CommandFlag.FUA | CommandFlag.REQ_ONE,
};

const WRITING_COMMANDS: ReadonlySet<number> = new Set([Command.WRITE, Command.TRIM, Command.WRITE_ZEROES]);

/**
 * Why this request must be refused, or undefined if the backend may serve it.
 * Error choices follow the spec: ENOSPC for writes past the end, EINVAL for
 * other out-of-range, misaligned, malformed or unknown requests, EPERM for
 * writes to a read-only export.
 */
export function rejectRequest(req: NbdRequest, limits: ExportLimits): Rejection | undefined {
  const allowed = ALLOWED_FLAGS[req.type];
  if (allowed === undefined) return { errno: Errno.EINVAL, message: `unknown command ${req.type}` };
  let allowedFlags = allowed;
  if (!limits.structuredReplies) allowedFlags &= ~CommandFlag.DF;
  if (req.flags & ~allowedFlags) {
    return { errno: Errno.EINVAL, message: `command flags 0x${req.flags.toString(16)} not valid for command ${req.type}` };
  }
  if (req.type === Command.FLUSH) return undefined; // offset and length are reserved; ignore them
  if (req.type === Command.BLOCK_STATUS && !limits.baseAllocation) {
    return { errno: Errno.EINVAL, message: 'no metadata context was negotiated' };
  }
  if (WRITING_COMMANDS.has(req.type) && limits.readOnly) {
    return { errno: Errno.EPERM, message: 'export is read-only' };
  }
  if (req.length === 0) return { errno: Errno.EINVAL, message: 'zero-length request' };
  if (req.offset + req.length > limits.size) {
    const errno = req.type === Command.WRITE || req.type === Command.WRITE_ZEROES ? Errno.ENOSPC : Errno.EINVAL;
    return { errno, message: `request [${req.offset}, +${req.length}) is beyond the export size ${limits.size}` };
  }
  // BLOCK_STATUS is a query, not I/O: unaligned ranges are answered as asked.
  if (req.type !== Command.BLOCK_STATUS && (req.offset % limits.minBlockSize !== 0 || req.length % limits.minBlockSize !== 0)) {
    return { errno: Errno.EINVAL, message: `request is not aligned to the minimum block size ${limits.minBlockSize}` };
  }
  if ((req.type === Command.READ || req.type === Command.WRITE) && req.length > limits.maxPayload) {
    // With DF the client asked for one chunk; EOVERFLOW is the spec's word for "too big for that".
    const errno = req.flags & CommandFlag.DF ? Errno.EOVERFLOW : Errno.EINVAL;
    return { errno, message: `payload of ${req.length} bytes exceeds the maximum ${limits.maxPayload}` };
  }
  return undefined;
}
