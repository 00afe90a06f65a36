// Encoding and incremental decoding of the frames described in protocol.ts.
// Pure: no sockets here. Decoders are fed chunks and hand out whole frames.
import { invariant } from '../util/errors';
import { ByteQueue } from '../util/byte-queue';
import type { Extent } from '../native/fsext';
import {
  MAX_CONTROL_PAYLOAD,
  MAX_IO_BYTES,
  MAX_REPLY_PAYLOAD,
  Op,
  ProtocolError,
  REPLY_HEADER_SIZE,
  REPLY_MAGIC,
  REQUEST_HEADER_SIZE,
  REQUEST_MAGIC,
  type Reply,
  type ReplyHeader,
  type Request,
  type RequestHeader,
  Status,
} from './protocol';

const TWO_32 = 0x1_0000_0000;
const EMPTY = Buffer.alloc(0);

function writeU64(buf: Buffer, at: number, value: number): void {
  invariant(Number.isSafeInteger(value) && value >= 0, `u64 field out of range: ${value}`);
  buf.writeUInt32BE(Math.floor(value / TWO_32), at);
  buf.writeUInt32BE(value >>> 0, at + 4);
}

function readU64(buf: Buffer, at: number): number {
  return buf.readUInt32BE(at) * TWO_32 + buf.readUInt32BE(at + 4);
}

/** Header and replica id of a request as one buffer; the payload is written after it. */
export function encodeRequestHeader(h: RequestHeader, replicaIdBytes: Buffer): Buffer {
  invariant(replicaIdBytes.length <= 255, 'replica id longer than 255 bytes');
  const buf = Buffer.allocUnsafe(REQUEST_HEADER_SIZE + replicaIdBytes.length);
  buf.writeUInt32BE(REQUEST_MAGIC, 0);
  buf[4] = h.op;
  buf[5] = h.flags;
  buf[6] = replicaIdBytes.length;
  buf[7] = 0;
  buf.writeUInt32BE(h.requestId, 8);
  writeU64(buf, 12, h.epoch);
  writeU64(buf, 20, h.offset);
  buf.writeUInt32BE(h.length, 28);
  buf.writeUInt32BE(h.payloadLength, 32);
  replicaIdBytes.copy(buf, REQUEST_HEADER_SIZE);
  return buf;
}

export function encodeReplyHeader(h: ReplyHeader): Buffer {
  const buf = Buffer.allocUnsafe(REPLY_HEADER_SIZE);
  buf.writeUInt32BE(REPLY_MAGIC, 0);
  buf.writeUInt16BE(h.status, 4);
  buf.writeUInt16BE(0, 6);
  buf.writeUInt32BE(h.requestId, 8);
  writeU64(buf, 12, h.epoch);
  buf.writeUInt32BE(h.payloadLength, 20);
  return buf;
}

/** Largest payload a request of this op may carry. */
function requestPayloadLimit(op: number): number {
  return op === Op.WRITE ? MAX_IO_BYTES : MAX_CONTROL_PAYLOAD;
}

/** The input side both decoders share: received chunks, borrowed or owned, and payloads gathered in place. */
abstract class FrameDecoder {
  protected readonly queue = new ByteQueue();

  /** Queue received bytes; a `borrowed` chunk is valid only until `settle()` (see ByteQueue). */
  push(chunk: Buffer, borrowed = false): void {
    this.queue.receive(chunk, borrowed);
  }

  /** Where the socket may put its next bytes directly (a payload being gathered). */
  directTarget(): Buffer | undefined {
    return this.queue.directTarget();
  }

  /** Call once the frames decodable now have been taken: keeps what is left of a borrowed chunk. */
  settle(): void {
    this.queue.settle();
  }
}

/**
 * Cuts request frames out of the byte stream. A bad magic throws
 * ProtocolError (the stream cannot be resynchronised: close it); an
 * oversized payload is skipped and the request returned with `refused` set,
 * so the connection lives on.
 */
export class RequestDecoder extends FrameDecoder {
  private pending: Request | undefined; // header decoded, payload not yet complete
  private discarding = 0;

  get bufferedBytes(): number {
    return this.queue.length;
  }

  /** Hands over bytes that arrived before the decoder took over the stream. */
  takeOver(queue: ByteQueue): void {
    const n = queue.length;
    if (n > 0) this.queue.push(queue.take(n));
  }

  next(): Request | undefined {
    if (this.discarding > 0) {
      this.discarding -= this.queue.skip(this.discarding);
      if (this.discarding > 0) return undefined;
    }
    if (this.pending === undefined) {
      if (this.queue.length < REQUEST_HEADER_SIZE) return undefined;
      const h = this.queue.peek(REQUEST_HEADER_SIZE);
      const magic = h.readUInt32BE(0);
      if (magic !== REQUEST_MAGIC) throw new ProtocolError(`bad request magic 0x${magic.toString(16)}`);
      const idLength = h[6];
      if (this.queue.length < REQUEST_HEADER_SIZE + idLength) return undefined;
      const request: Request = {
        op: h[4],
        flags: h[5],
        requestId: h.readUInt32BE(8),
        epoch: readU64(h, 12),
        offset: readU64(h, 20),
        length: h.readUInt32BE(28),
        payloadLength: h.readUInt32BE(32),
        replicaId: '',
        payload: EMPTY,
      };
      this.queue.skip(REQUEST_HEADER_SIZE);
      request.replicaId = this.queue.take(idLength).toString('latin1');
      const limit = requestPayloadLimit(request.op);
      if (request.payloadLength > limit) {
        this.discarding = request.payloadLength - this.queue.skip(request.payloadLength);
        request.refused = { status: Status.EMSGSIZE, message: `payload of ${request.payloadLength} bytes exceeds the limit of ${limit}` };
        return request;
      }
      this.pending = request;
    }
    const request = this.pending;
    if (request.payloadLength > 0) {
      const payload = this.queue.takeWhole(request.payloadLength);
      if (payload === undefined) return undefined;
      request.payload = payload;
    }
    this.pending = undefined;
    return request;
  }
}

/** Cuts reply frames out of the byte stream; anything malformed throws ProtocolError. */
export class ReplyDecoder extends FrameDecoder {
  private pending: Reply | undefined;

  next(): Reply | undefined {
    if (this.pending === undefined) {
      if (this.queue.length < REPLY_HEADER_SIZE) return undefined;
      const h = this.queue.peek(REPLY_HEADER_SIZE);
      const magic = h.readUInt32BE(0);
      if (magic !== REPLY_MAGIC) throw new ProtocolError(`bad reply magic 0x${magic.toString(16)}`);
      const payloadLength = h.readUInt32BE(20);
      if (payloadLength > MAX_REPLY_PAYLOAD) throw new ProtocolError(`reply payload of ${payloadLength} bytes exceeds ${MAX_REPLY_PAYLOAD}`);
      this.pending = { status: h.readUInt16BE(4), requestId: h.readUInt32BE(8), epoch: readU64(h, 12), payloadLength, payload: EMPTY };
      this.queue.skip(REPLY_HEADER_SIZE);
    }
    const reply = this.pending;
    if (reply.payloadLength > 0) {
      const payload = this.queue.takeWhole(reply.payloadLength);
      if (payload === undefined) return undefined;
      reply.payload = payload;
    }
    this.pending = undefined;
    return reply;
  }
}

// ---- payloads ---------------------------------------------------------------

/** ALLOC_MAP reply: u64 scannedTo, u32 count, count × (u64 offset, u64 length). */
export function encodeAllocMap(extents: readonly Extent[], scannedTo: number): Buffer {
  const buf = Buffer.allocUnsafe(12 + 16 * extents.length);
  writeU64(buf, 0, scannedTo);
  buf.writeUInt32BE(extents.length, 8);
  let at = 12;
  for (const e of extents) {
    writeU64(buf, at, e.offset);
    writeU64(buf, at + 8, e.length);
    at += 16;
  }
  return buf;
}

export function decodeAllocMap(buf: Buffer): { extents: Extent[]; scannedTo: number } {
  if (buf.length < 12) throw new ProtocolError('ALLOC_MAP reply too short');
  const scannedTo = readU64(buf, 0);
  const count = buf.readUInt32BE(8);
  if (buf.length !== 12 + 16 * count) throw new ProtocolError('ALLOC_MAP reply length does not match its extent count');
  const extents: Extent[] = [];
  for (let i = 0, at = 12; i < count; i++, at += 16) extents.push({ offset: readU64(buf, at), length: readU64(buf, at + 8) });
  return { extents, scannedTo };
}

export function encodeJson(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value), 'utf8');
}

/** Parses a JSON payload; malformed input is the peer's error, reported as EINVAL by the caller. */
export function decodeJson(buf: Buffer): unknown {
  return JSON.parse(buf.toString('utf8'));
}
