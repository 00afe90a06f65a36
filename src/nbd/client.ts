// A small NBD client: fixed newstyle handshake with NBD_OPT_GO, simple
// replies, pipelined requests. It stands in for an application in the demo
// and the HA tests, which must see exactly which writes were acknowledged.
import net from 'node:net';

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const OPT_REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const OPT_GO = 7;
const REP_ACK = 1;
const REP_INFO = 3;
const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, WRITE_ZEROES: 6 } as const;
const FLAG_FUA = 1;
const FLAG_NO_HOLE = 2;

export class NbdRequestError extends Error {
  constructor(readonly errno: number) {
    super(`NBD error ${errno}`);
  }
}

interface Pending {
  resolve: (data: Buffer | undefined) => void;
  reject: (err: Error) => void;
  readLength: number;
}

export class SimpleNbdClient {
  private buffer: Buffer = Buffer.alloc(0);
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private closedError: Error | undefined;
  size = 0;

  private constructor(private readonly socket: net.Socket) {}

  static async connect(socketPath: string, exportName: string): Promise<SimpleNbdClient> {
    const socket = net.connect(socketPath);
    const client = new SimpleNbdClient(socket);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    await client.handshake(exportName);
    socket.on('data', (chunk: Buffer) => client.onData(chunk));
    const fail = (err: Error): void => client.failAll(err);
    socket.on('error', fail);
    socket.on('close', () => fail(new Error('connection closed')));
    return client;
  }

  private async readExactly(n: number): Promise<Buffer> {
    while (this.buffer.length < n) {
      const chunk = await new Promise<Buffer>((resolve, reject) => {
        const onData = (d: Buffer): void => {
          cleanup();
          resolve(d);
        };
        const onEnd = (): void => {
          cleanup();
          reject(new Error('connection closed during handshake'));
        };
        const cleanup = (): void => {
          this.socket.off('data', onData);
          this.socket.off('close', onEnd);
          this.socket.off('error', onEnd);
        };
        this.socket.on('data', onData);
        this.socket.on('close', onEnd);
        this.socket.on('error', onEnd);
      });
      this.buffer = Buffer.concat([this.buffer, chunk]);
    }
    const out = this.buffer.subarray(0, n);
    this.buffer = this.buffer.subarray(n);
    return out;
  }

  private async handshake(exportName: string): Promise<void> {
    const hello = await this.readExactly(18);
    if (hello.readBigUInt64BE(0) !== NBDMAGIC || hello.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('not an NBD server');
    const clientFlags = Buffer.alloc(4);
    clientFlags.writeUInt32BE(3); // FIXED_NEWSTYLE | NO_ZEROES
    const name = Buffer.from(exportName);
    const data = Buffer.alloc(4 + name.length + 2);
    data.writeUInt32BE(name.length, 0);
    name.copy(data, 4);
    data.writeUInt16BE(0, 4 + name.length);
    const opt = Buffer.alloc(16);
    opt.writeBigUInt64BE(IHAVEOPT, 0);
    opt.writeUInt32BE(OPT_GO, 8);
    opt.writeUInt32BE(data.length, 12);
    this.socket.write(Buffer.concat([clientFlags, opt, data]));
    for (;;) {
      const head = await this.readExactly(20);
      if (head.readBigUInt64BE(0) !== OPT_REPLY_MAGIC) throw new Error('bad option reply');
      const type = head.readUInt32BE(12);
      const body = await this.readExactly(head.readUInt32BE(16));
      if (type === REP_ACK) return;
      if (type === REP_INFO && body.readUInt16BE(0) === 0) this.size = Number(body.readBigUInt64BE(2));
      else if (type >= 0x80000000) throw new Error(`export ${exportName} refused: option error ${type - 0x80000000}`);
    }
  }

  private onData(chunk: Buffer): void {
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    for (;;) {
      if (this.buffer.length < 16) return;
      if (this.buffer.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) {
        this.failAll(new Error('bad reply magic'));
        this.socket.destroy();
        return;
      }
      const error = this.buffer.readUInt32BE(4);
      const cookie = this.buffer.readBigUInt64BE(8);
      const p = this.pending.get(cookie);
      if (!p) {
        this.failAll(new Error(`reply for unknown cookie ${cookie}`));
        this.socket.destroy();
        return;
      }
      const dataLength = error === 0 ? p.readLength : 0;
      if (this.buffer.length < 16 + dataLength) return;
      const data = dataLength ? Buffer.from(this.buffer.subarray(16, 16 + dataLength)) : undefined;
      this.buffer = this.buffer.subarray(16 + dataLength);
      this.pending.delete(cookie);
      if (error) p.reject(new NbdRequestError(error));
      else p.resolve(data);
    }
  }

  private failAll(err: Error): void {
    this.closedError ??= err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  private request(type: number, flags: number, offset: number, length: number, payload?: Buffer): Promise<Buffer | undefined> {
    if (this.closedError) return Promise.reject(this.closedError);
    const cookie = this.nextCookie++;
    const header = Buffer.alloc(28);
    header.writeUInt32BE(REQUEST_MAGIC, 0);
    header.writeUInt16BE(flags, 4);
    header.writeUInt16BE(type, 6);
    header.writeBigUInt64BE(cookie, 8);
    header.writeBigUInt64BE(BigInt(offset), 16);
    header.writeUInt32BE(length, 24);
    return new Promise((resolve, reject) => {
      this.pending.set(cookie, { resolve, reject, readLength: type === CMD.READ ? length : 0 });
      this.socket.write(payload ? Buffer.concat([header, payload]) : header);
    });
  }

  async read(offset: number, length: number): Promise<Buffer> {
    return (await this.request(CMD.READ, 0, offset, length)) as Buffer;
  }

  async write(offset: number, data: Buffer, fua = false): Promise<void> {
    await this.request(CMD.WRITE, fua ? FLAG_FUA : 0, offset, data.length, data);
  }

  async flush(): Promise<void> {
    await this.request(CMD.FLUSH, 0, 0, 0);
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.request(CMD.TRIM, 0, offset, length);
  }

  /** WRITE_ZEROES; unless `noHole`, the server may punch a hole instead of writing zeros. */
  async writeZeroes(offset: number, length: number, noHole = false): Promise<void> {
    await this.request(CMD.WRITE_ZEROES, noHole ? FLAG_NO_HOLE : 0, offset, length);
  }

  close(): void {
    this.socket.destroy();
  }
}
