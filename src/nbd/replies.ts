// Encoders for everything the server sends: option replies during the
// handshake, and simple replies / structured reply chunks afterwards.
// Payload data is never copied here: callers write header and payload as
// separate buffers into a corked socket.

import type { BlockStatusExtent } from './backend';
import {
  ChunkType,
  OPTION_REPLY_MAGIC,
  ReplyFlag,
  SIMPLE_REPLY_HEADER_SIZE,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_CHUNK_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
} from './constants';
import type { NbdRequest } from './request';

const TWO_32 = 0x100000000;

export function writeUInt64BE(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO_32), at);
  buf.writeUInt32BE(value % TWO_32, at + 4);
}

export function optionReply(option: number, type: number, data?: Buffer): Buffer {
  const dataLength = data?.length ?? 0;
  const buf = Buffer.allocUnsafe(20 + dataLength);
  buf.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  buf.writeUInt32BE(option, 8);
  buf.writeUInt32BE(type, 12);
  buf.writeUInt32BE(dataLength, 16);
  if (data) data.copy(buf, 20);
  return buf;
}

export function simpleReply(req: NbdRequest, errno: number): Buffer {
  const buf = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_SIZE);
  buf.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  buf.writeUInt32BE(errno, 4);
  buf.writeUInt32BE(req.cookieHi, 8);
  buf.writeUInt32BE(req.cookieLo, 12);
  return buf;
}

function writeChunkHeader(buf: Buffer, req: NbdRequest, flags: number, type: number, length: number): void {
  buf.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  buf.writeUInt16BE(flags, 4);
  buf.writeUInt16BE(type, 6);
  buf.writeUInt32BE(req.cookieHi, 8);
  buf.writeUInt32BE(req.cookieLo, 12);
  buf.writeUInt32BE(length, 16);
}

/** Header of a final OFFSET_DATA chunk; the `dataLength` bytes of data follow it. */
export function offsetDataChunkHeader(req: NbdRequest, dataLength: number): Buffer {
  const buf = Buffer.allocUnsafe(STRUCTURED_CHUNK_HEADER_SIZE + 8);
  writeChunkHeader(buf, req, ReplyFlag.DONE, ChunkType.OFFSET_DATA, 8 + dataLength);
  writeUInt64BE(buf, req.offset, STRUCTURED_CHUNK_HEADER_SIZE);
  return buf;
}

/** A final ERROR chunk carrying a human-readable message. */
export function errorChunk(req: NbdRequest, errno: number, message: string): Buffer {
  // The message length field is 16 bits; the spec caps strings at 4096 bytes.
  const text = Buffer.from(message, 'utf8').subarray(0, 4096);
  const buf = Buffer.allocUnsafe(STRUCTURED_CHUNK_HEADER_SIZE + 6 + text.length);
  writeChunkHeader(buf, req, ReplyFlag.DONE, ChunkType.ERROR, 6 + text.length);
  buf.writeUInt32BE(errno, STRUCTURED_CHUNK_HEADER_SIZE);
  buf.writeUInt16BE(text.length, STRUCTURED_CHUNK_HEADER_SIZE + 4);
  text.copy(buf, STRUCTURED_CHUNK_HEADER_SIZE + 6);
  return buf;
}

/** A final BLOCK_STATUS chunk for one metadata context. */
export function blockStatusChunk(req: NbdRequest, contextId: number, extents: readonly BlockStatusExtent[]): Buffer {
  const payloadLength = 4 + 8 * extents.length;
  const buf = Buffer.allocUnsafe(STRUCTURED_CHUNK_HEADER_SIZE + payloadLength);
  writeChunkHeader(buf, req, ReplyFlag.DONE, ChunkType.BLOCK_STATUS, payloadLength);
  let at = STRUCTURED_CHUNK_HEADER_SIZE;
  buf.writeUInt32BE(contextId, at);
  at += 4;
  for (const extent of extents) {
    buf.writeUInt32BE(extent.length, at);
    buf.writeUInt32BE(extent.flags, at + 4);
    at += 8;
  }
  return buf;
}
