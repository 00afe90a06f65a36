// A deliberately low-level NBD client for protocol tests: every message is
// built and read by hand, so tests can also send what real clients never would.
import * as net from 'node:net';
import { ByteQueue } from '../../src/util/byte-queue';

export const NBD_MAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, LIST_META_CONTEXT: 9, SET_META_CONTEXT: 10 } as const;
export const REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_INVALID: 0x80000003,
  ERR_UNKNOWN: 0x80000006,
} as const;
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const;
export const CMD_FLAG = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16 } as const;
export const CHUNK = { NONE: 0, OFFSET_DATA: 1, BLOCK_STATUS: 5, ERROR: 0x8001 } as const;
export const TFLAG = {
  HAS_FLAGS: 1,
  READ_ONLY: 2,
  SEND_FLUSH: 4,
  SEND_FUA: 8,
  SEND_TRIM: 32,
  SEND_WRITE_ZEROES: 64,
  SEND_DF: 128,
  CAN_MULTI_CONN: 256,
  SEND_CACHE: 1024,
  SEND_FAST_ZERO: 2048,
} as const;
export const ERRNO = { EPERM: 1, EIO: 5, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75 } as const;

export interface OptionReplyMessage {
  option: number;
  type: number;
  data: Buffer;
}

export interface SimpleReplyMessage {
  kind: 'simple';
  error: number;
  cookie: bigint;
  data?: Buffer;
}

export interface ChunkMessage {
  kind: 'chunk';
  flags: number;
  type: number;
  cookie: bigint;
  payload: Buffer;
}

export type ReplyMessage = SimpleReplyMessage | ChunkMessage;

export interface RequestSpec {
  type: number;
  cookie: bigint;
  offset?: number;
  length?: number;
  flags?: number;
  /** WRITE data; its length is used unless `length` overrides it. */
  payload?: Buffer;
}

export class ConnectionClosedError extends Error {
  constructor() {
    super('connection closed by the server');
  }
}

export class RawNbdClient {
  private readonly queue = new ByteQueue();
  private wake: (() => void) | undefined;
  private closed = false;
  private readonly closedPromise: Promise<void>;
  /** Lengths of READs sent, so simple replies (which carry no length) can be read. */
  private readonly pendingReads = new Map<bigint, number>();
  /** Set once STRUCTURED_REPLY is acknowledged: READ replies are chunks then. */
  structured = false;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      this.notify();
    });
    socket.on('error', () => undefined);
    this.closedPromise = new Promise((resolve) => {
      socket.on('close', () => {
        this.closed = true;
        this.notify();
        resolve();
      });
    });
  }

  static connect(socketPath: string): Promise<RawNbdClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(socketPath);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new RawNbdClient(socket));
      });
      socket.once('error', reject);
    });
  }

  /** Connect, read the greeting, send client flags (FIXED_NEWSTYLE | NO_ZEROES by default). */
  static async handshake(socketPath: string, clientFlags = 3): Promise<{ client: RawNbdClient; serverFlags: number }> {
    const client = await RawNbdClient.connect(socketPath);
    const greeting = await client.read(18);
    if (greeting.readBigUInt64BE(0) !== NBD_MAGIC || greeting.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('bad greeting');
    client.write(u32(clientFlags));
    return { client, serverFlags: greeting.readUInt16BE(16) };
  }

  /** Handshake plus GO (optionally after STRUCTURED_REPLY and SET_META_CONTEXT base:allocation). */
  static async open(
    socketPath: string,
    name: string,
    opts: { structured?: boolean; baseAllocation?: boolean } = {},
  ): Promise<{ client: RawNbdClient; size: number; flags: number }> {
    const { client } = await RawNbdClient.handshake(socketPath);
    if (opts.structured || opts.baseAllocation) {
      client.sendOption(OPT.STRUCTURED_REPLY);
      const reply = await client.readOptionReply();
      if (reply.type !== REP.ACK) throw new Error(`STRUCTURED_REPLY refused: ${reply.type}`);
      client.structured = true;
    }
    if (opts.baseAllocation) {
      client.sendOption(OPT.SET_META_CONTEXT, metaContextData(name, ['base:allocation']));
      const replies = await client.readOptionReplies();
      if (!replies.some((r) => r.type === REP.META_CONTEXT)) throw new Error('base:allocation not selected');
    }
    const { size, flags, replies } = await client.go(name);
    const last = replies[replies.length - 1];
    if (last.type !== REP.ACK) throw new Error(`GO failed with reply type ${last.type}: ${last.data.toString()}`);
    return { client, size, flags };
  }

  get isClosed(): boolean {
    return this.closed;
  }

  whenClosed(): Promise<void> {
    return this.closedPromise;
  }

  write(buf: Buffer): boolean {
    return this.socket.write(buf);
  }

  async read(n: number): Promise<Buffer> {
    while (this.queue.length < n) {
      if (this.closed) throw new ConnectionClosedError();
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
    return this.queue.take(n);
  }

  /** Resolves true if the server closed the connection without sending anything more. */
  async closesWithoutData(): Promise<boolean> {
    await this.closedPromise;
    return this.queue.length === 0;
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0)): void {
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(IHAVEOPT, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(data.length, 12);
    this.write(Buffer.concat([header, data]));
  }

  async readOptionReply(): Promise<OptionReplyMessage> {
    const header = await this.read(20);
    if (header.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new Error('bad option reply magic');
    const data = await this.read(header.readUInt32BE(16));
    return { option: header.readUInt32BE(8), type: header.readUInt32BE(12), data };
  }

  /** Read replies to one option up to its final one (ACK or an error). */
  async readOptionReplies(): Promise<OptionReplyMessage[]> {
    const replies: OptionReplyMessage[] = [];
    while (true) {
      const reply = await this.readOptionReply();
      replies.push(reply);
      if (reply.type === REP.ACK || reply.type >= 0x80000000) return replies;
    }
  }

  /** Send INFO or GO and collect the replies; size and flags come from INFO_EXPORT. */
  async go(name: string, infos: number[] = [], option: number = OPT.GO): Promise<{ size: number; flags: number; replies: OptionReplyMessage[] }> {
    const nameBytes = Buffer.from(name);
    const data = Buffer.alloc(4 + nameBytes.length + 2 + 2 * infos.length);
    data.writeUInt32BE(nameBytes.length, 0);
    nameBytes.copy(data, 4);
    data.writeUInt16BE(infos.length, 4 + nameBytes.length);
    infos.forEach((info, i) => data.writeUInt16BE(info, 6 + nameBytes.length + 2 * i));
    this.sendOption(option, data);
    const replies = await this.readOptionReplies();
    let size = -1;
    let flags = -1;
    for (const r of replies) {
      if (r.type === REP.INFO && r.data.readUInt16BE(0) === 0) {
        size = Number(r.data.readBigUInt64BE(2));
        flags = r.data.readUInt16BE(10);
      }
    }
    return { size, flags, replies };
  }

  sendRequest(spec: RequestSpec): void {
    const length = spec.length ?? spec.payload?.length ?? 0;
    const header = requestHeader(spec.type, spec.flags ?? 0, spec.cookie, spec.offset ?? 0, length);
    if (spec.type === CMD.READ) this.pendingReads.set(spec.cookie, length);
    this.write(spec.payload ? Buffer.concat([header, spec.payload]) : header);
  }

  /** Stop taking bytes off the socket, like a client that does not read its replies. */
  pauseReading(): void {
    this.socket.pause();
  }

  resumeReading(): void {
    this.socket.resume();
  }

  /** Register a READ sent by hand (with `write`), so its simple reply can be parsed. */
  expectRead(cookie: bigint, length: number): void {
    this.pendingReads.set(cookie, length);
  }

  async readReply(): Promise<ReplyMessage> {
    const magic = (await this.read(4)).readUInt32BE(0);
    if (magic === SIMPLE_REPLY_MAGIC) {
      const rest = await this.read(12);
      const error = rest.readUInt32BE(0);
      const cookie = rest.readBigUInt64BE(4);
      const readLength = this.pendingReads.get(cookie);
      this.pendingReads.delete(cookie);
      if (error === 0 && readLength !== undefined) return { kind: 'simple', error, cookie, data: await this.read(readLength) };
      return { kind: 'simple', error, cookie };
    }
    if (magic === STRUCTURED_REPLY_MAGIC) {
      const rest = await this.read(16);
      const length = rest.readUInt32BE(12);
      const cookie = rest.readBigUInt64BE(4);
      this.pendingReads.delete(cookie);
      return { kind: 'chunk', flags: rest.readUInt16BE(0), type: rest.readUInt16BE(2), cookie, payload: await this.read(length) };
    }
    throw new Error(`bad reply magic 0x${magic.toString(16)}`);
  }

  /** Send a READ and return the data, or throw with the error number. */
  async readAt(cookie: bigint, offset: number, length: number): Promise<Buffer> {
    this.sendRequest({ type: CMD.READ, cookie, offset, length });
    const reply = await this.readReply();
    if (reply.cookie !== cookie) throw new Error(`reply for cookie ${reply.cookie}, expected ${cookie}`);
    const { error, data } = replyOutcome(reply);
    if (error !== 0 || data === undefined) throw new Error(`read failed with errno ${error}`);
    return data;
  }

  /** Errno of a request without data in its reply (0 on success). */
  async roundTrip(spec: RequestSpec): Promise<number> {
    this.sendRequest(spec);
    const reply = await this.readReply();
    if (reply.cookie !== spec.cookie) throw new Error(`reply for cookie ${reply.cookie}, expected ${spec.cookie}`);
    return replyOutcome(reply).error;
  }

  disconnect(): void {
    this.sendRequest({ type: CMD.DISC, cookie: 0n });
  }

  destroy(): void {
    this.socket.destroy();
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }
}

/** Error and data of a reply, for simple replies and single final chunks alike. */
export function replyOutcome(reply: ReplyMessage): { error: number; data?: Buffer; message?: string } {
  if (reply.kind === 'simple') return { error: reply.error, data: reply.data };
  if (reply.type === CHUNK.OFFSET_DATA) return { error: 0, data: reply.payload.subarray(8) };
  if (reply.type & 0x8000) {
    const messageLength = reply.payload.readUInt16BE(4);
    return { error: reply.payload.readUInt32BE(0), message: reply.payload.toString('utf8', 6, 6 + messageLength) };
  }
  return { error: 0 };
}

export function requestHeader(type: number, flags: number, cookie: bigint, offset: number, length: number): Buffer {
  const header = Buffer.alloc(28);
  header.writeUInt32BE(REQUEST_MAGIC, 0);
  header.writeUInt16BE(flags, 4);
  header.writeUInt16BE(type, 6);
  header.writeBigUInt64BE(cookie, 8);
  header.writeBigUInt64BE(BigInt(offset), 16);
  header.writeUInt32BE(length, 24);
  return header;
}

export function metaContextData(exportName: string, queries: string[]): Buffer {
  const parts: Buffer[] = [u32(Buffer.byteLength(exportName)), Buffer.from(exportName), u32(queries.length)];
  for (const q of queries) parts.push(u32(Buffer.byteLength(q)), Buffer.from(q));
  return Buffer.concat(parts);
}

export function u32(value: number): Buffer {
  const buf = Buffer.alloc(4);
  buf.writeUInt32BE(value, 0);
  return buf;
}
