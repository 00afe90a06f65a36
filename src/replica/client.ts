// Client of the replica server (used by the replication engine). One TCP
// connection, many requests in flight: each call sends one request frame and
// resolves when the reply with its id arrives. Requests leave in call order;
// once `maxInFlightBytes` (request + expected reply bytes) are outstanding,
// further calls wait in a FIFO inside the client, so nothing is reordered and
// memory stays bounded. When the connection drops, every pending and waiting
// call rejects with a ReplicaConnectionError.
import net from 'node:net';
import { invariant } from '../util/errors';
import {
  CLIENT_HELLO_SIZE,
  SERVER_HELLO_SIZE,
  SERVER_PROOF_SIZE,
  checkSecret,
  decodeServerHello,
  encodeClientHello,
  newNonce,
  verifyServerProof,
} from './auth';
import { ByteQueue } from '../util/byte-queue';
import { readIntoReusedBuffer } from '../util/socket-input';
import { TurnCork } from '../util/turn-cork';
import { ReplicaOps, ReplicaRequestError, ReplicaConnectionError } from './ops';
import { ReplyDecoder, encodeRequestHeader } from './codec';
import { OP_NAMES, Op, type Reply, Status, statusName } from './protocol';

export interface ReplicaClientOptions {
  host: string;
  port: number;
  secret: Buffer;
  /** Time allowed for connect + handshake. Default 10 s. */
  timeoutMs?: number;
  /** Outstanding request + reply bytes before calls queue inside the client. Default 64 MiB. */
  maxInFlightBytes?: number;
  /**
   * The node's own address to send from. Without it the kernel picks one (on
   * loopback always 127.0.0.1), and a cut between two nodes' addresses would
   * not touch their replica traffic.
   */
  localAddress?: string;
}

export { ReplicaRequestError, ReplicaConnectionError };

interface Pending {
  op: Op;
  replicaId: string;
  cost: number;
  expectedPayload: number; // exact reply payload length for READ, -1 for "any"
  sent: boolean;
  resolve: (reply: Reply) => void;
  reject: (err: Error) => void;
}

interface Waiting {
  header: Buffer;
  payload: Uint8Array | undefined;
  pending: Pending;
}

const DEFAULT_TIMEOUT_MS = 10_000;
const DEFAULT_MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024;
const REPLY_OVERHEAD = 24;
/** Requests carrying at least this much data are sent at once instead of with the turn's batch. */
const SEND_NOW_BYTES = 64 * 1024;

export class ReplicaClient extends ReplicaOps {
  private readonly decoder = new ReplyDecoder();
  private readonly pending = new Map<number, Pending>();
  private readonly waiting: Waiting[] = [];
  private capacityWaiters: Array<{ bytes: number; resolve: () => void; reject: (err: Error) => void }> = [];
  private readonly idBytes = new Map<string, Buffer>();
  private nextRequestId = 1;
  private inFlight = 0; // bytes of requests sent and not answered
  private waitingBytes = 0; // bytes of requests queued in the client
  private socketClosed = false;
  private readonly cork: TurnCork;
  private closeError: ReplicaConnectionError | undefined;
  private readonly maxInFlightBytes: number;
  private readonly peer: string;

  /** Connects and authenticates; rejects on timeout, refusal or wrong secret. */
  static async connect(opts: ReplicaClientOptions): Promise<ReplicaClient> {
    checkSecret(opts.secret);
    const socket = net.connect({ host: opts.host, port: opts.port, noDelay: true, ...(opts.localAddress ? { localAddress: opts.localAddress } : {}) });
    try {
      const leftover = await handshake(socket, opts.secret, opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
      return new ReplicaClient(socket, opts, leftover);
    } catch (err) {
      socket.destroy();
      throw err;
    }
  }

  private constructor(
    private readonly socket: net.Socket,
    opts: ReplicaClientOptions,
    leftover: ByteQueue,
  ) {
    super();
    this.cork = new TurnCork(socket);
    this.maxInFlightBytes = opts.maxInFlightBytes ?? DEFAULT_MAX_IN_FLIGHT_BYTES;
    this.peer = `${opts.host}:${opts.port}`;
    socket.setKeepAlive(true, 10_000);
    let lastError: Error | undefined;
    socket.on('error', (err) => (lastError = err));
    socket.on('close', () => this.onClose(lastError));
    socket.on('data', (chunk: Buffer) => this.onData(chunk, false));
    if (leftover.length > 0) this.onData(leftover.take(leftover.length), false);
    readIntoReusedBuffer(socket, (chunk) => this.onData(chunk, true), () => this.decoder.directTarget());
    socket.resume(); // the handshake paused it so that no byte is missed in between
  }

  /** Request and expected reply bytes sent and not yet answered (at most maxInFlightBytes, or one request). */
  get inFlightBytes(): number {
    return this.inFlight;
  }

  /** Bytes of calls waiting inside the client for in-flight bytes to drop. */
  get queuedBytes(): number {
    return this.waitingBytes;
  }

  get pendingRequests(): number {
    return this.pending.size + this.waiting.length;
  }

  get closed(): boolean {
    return this.closeError !== undefined;
  }

  /** Resolves when `bytes` more could be sent without exceeding maxInFlightBytes. */
  waitForCapacity(bytes = 0): Promise<void> {
    if (this.closeError) return Promise.reject(this.closeError);
    if (this.hasCapacity(bytes)) return Promise.resolve();
    return new Promise((resolve, reject) => this.capacityWaiters.push({ bytes, resolve, reject }));
  }

  /** Closes the connection; calls still pending reject. */
  close(): Promise<void> {
    if (this.socketClosed) return Promise.resolve();
    return new Promise((resolve) => {
      this.socket.once('close', () => resolve());
      this.closeError ??= new ReplicaConnectionError('ECONNABORTED', `connection to replica server ${this.peer} closed by the client`);
      this.socket.destroy();
    });
  }

  // ---- internals ----------------------------------------------------------

  protected send(op: Op, replicaId: string, epoch: number, offset: number, length: number, flags: number, payload?: Uint8Array, replyBytes = 0): Promise<Reply> {
    if (this.closeError) return Promise.reject(this.closeError);
    if (!isU64(epoch) || !isU64(offset) || !(Number.isInteger(length) && length >= 0 && length <= 0xffff_ffff)) {
      return Promise.reject(new RangeError(`${OP_NAMES[op]} ${replicaId}: epoch, offset and length must be non-negative integers (got ${epoch}, ${offset}, ${length})`));
    }
    const requestId = this.allocateRequestId();
    const header = encodeRequestHeader({ op, flags, requestId, replicaId, epoch, offset, length, payloadLength: payload ? payload.length : 0 }, this.replicaIdBytes(replicaId));
    return new Promise<Reply>((resolve, reject) => {
      const cost = header.length + (payload ? payload.length : 0) + REPLY_OVERHEAD + replyBytes;
      const pending: Pending = { op, replicaId, cost, expectedPayload: op === Op.READ ? length : -1, sent: false, resolve, reject };
      if (this.waiting.length === 0 && this.hasCapacity(cost)) {
        this.transmit(header, payload, pending);
      } else {
        this.waiting.push({ header, payload, pending });
        this.waitingBytes += cost;
      }
      // Reserve the id now so a later call cannot take it while this one waits.
      this.pending.set(requestId, pending);
    });
  }

  private hasCapacity(cost: number): boolean {
    return this.inFlight === 0 || this.inFlight + cost <= this.maxInFlightBytes;
  }

  private transmit(header: Buffer, payload: Uint8Array | undefined, pending: Pending): void {
    this.inFlight += pending.cost;
    pending.sent = true;
    if (payload && payload.length >= SEND_NOW_BYTES) {
      // A large write gains nothing from waiting for the end of the turn, and
      // leaving now lets the copy work on it while this process goes on (with
      // its own copy's pwrite, typically). Earlier held requests go first.
      this.cork.release();
      this.socket.cork();
      this.socket.write(header);
      this.socket.write(payload);
      this.socket.uncork();
      return;
    }
    this.cork.hold();
    this.socket.write(header);
    if (payload && payload.length > 0) this.socket.write(payload);
  }

  private allocateRequestId(): number {
    for (;;) {
      const id = this.nextRequestId;
      this.nextRequestId = id === 0xffff_ffff ? 1 : id + 1;
      if (!this.pending.has(id)) return id;
    }
  }

  private replicaIdBytes(replicaId: string): Buffer {
    let bytes = this.idBytes.get(replicaId);
    if (!bytes) {
      bytes = Buffer.from(replicaId, 'latin1');
      if (this.idBytes.size < 1024) this.idBytes.set(replicaId, bytes);
    }
    return bytes;
  }

  private onData(chunk: Buffer, borrowed: boolean): void {
    this.decoder.push(chunk, borrowed);
    try {
      for (let reply = this.decoder.next(); reply; reply = this.decoder.next()) this.onReply(reply);
    } catch (err) {
      this.fatal(err instanceof Error ? err : new Error(String(err)));
      return;
    } finally {
      this.decoder.settle();
    }
    this.sendWaiting();
  }

  private onReply(reply: Reply): void {
    const p = this.pending.get(reply.requestId);
    if (!p || !p.sent) {
      throw new ReplicaConnectionError('EPROTO', `reply for unknown request id ${reply.requestId}`);
    }
    this.pending.delete(reply.requestId);
    this.inFlight -= p.cost;
    if (reply.status !== Status.OK) {
      const message = reply.payload.toString('utf8');
      p.reject(new ReplicaRequestError(statusName(reply.status), reply.status, reply.epoch, OP_NAMES[p.op], p.replicaId, message));
      return;
    }
    if (p.expectedPayload >= 0 && reply.payload.length !== p.expectedPayload) {
      const err = new ReplicaConnectionError('EPROTO', `${OP_NAMES[p.op]} reply has ${reply.payload.length} bytes, expected ${p.expectedPayload}`);
      p.reject(err);
      throw err;
    }
    p.resolve(reply);
  }

  private sendWaiting(): void {
    while (this.waiting.length > 0 && this.hasCapacity(this.waiting[0].pending.cost)) {
      const w = this.waiting.shift()!;
      this.waitingBytes -= w.pending.cost;
      this.transmit(w.header, w.payload, w.pending);
    }
    if (this.capacityWaiters.length === 0 || this.waiting.length > 0) return;
    const still = [];
    for (const c of this.capacityWaiters) {
      if (this.hasCapacity(c.bytes)) c.resolve();
      else still.push(c);
    }
    this.capacityWaiters = still;
  }

  private fatal(err: Error): void {
    const code = err instanceof ReplicaConnectionError ? err.code : 'EPROTO';
    this.closeError ??= new ReplicaConnectionError(code, `connection to replica server ${this.peer} broken: ${err.message}`);
    this.socket.destroy();
  }

  private onClose(socketError: Error | undefined): void {
    this.socketClosed = true;
    const reason = socketError ? `: ${socketError.message}` : '';
    const err = (this.closeError ??= new ReplicaConnectionError('ECONNRESET', `connection to replica server ${this.peer} closed${reason}`));
    const pending = [...this.pending.values()];
    this.pending.clear();
    this.waiting.length = 0;
    this.waitingBytes = 0;
    this.inFlight = 0;
    for (const p of pending) p.reject(err);
    for (const c of this.capacityWaiters) c.reject(err);
    this.capacityWaiters = [];
    this.emit('close', err);
  }

}

function isU64(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 0;
}

/** Runs the client side of the handshake; resolves with any bytes received after it. */
function handshake(socket: net.Socket, secret: Buffer, timeoutMs: number): Promise<ByteQueue> {
  return new Promise((resolve, reject) => {
    const queue = new ByteQueue();
    const clientNonce = newNonce();
    let serverNonce: Buffer | undefined;
    const finish = (err: Error | undefined): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
      if (err) reject(err);
      else resolve(queue);
    };
    const onData = (chunk: Buffer): void => {
      queue.push(chunk);
      try {
        if (serverNonce === undefined) {
          if (queue.length < SERVER_HELLO_SIZE) return;
          serverNonce = decodeServerHello(queue.take(SERVER_HELLO_SIZE));
          const hello = encodeClientHello(secret, serverNonce, clientNonce);
          invariant(hello.length === CLIENT_HELLO_SIZE, 'client hello size');
          socket.write(hello);
        }
        if (queue.length < SERVER_PROOF_SIZE) return;
        verifyServerProof(secret, serverNonce, clientNonce, queue.take(SERVER_PROOF_SIZE));
        // Hold further bytes until the client's own 'data' handler is attached.
        socket.pause();
        finish(undefined);
      } catch (err) {
        finish(err as Error);
      }
    };
    const onError = (err: Error): void => finish(new ReplicaConnectionError((err as NodeJS.ErrnoException).code ?? 'ECONNREFUSED', `replica server: ${err.message}`));
    const onClose = (): void => finish(new ReplicaConnectionError('EAUTH', 'replica server closed the connection during the handshake (wrong cluster secret?)'));
    const timer = setTimeout(() => finish(new ReplicaConnectionError('ETIMEDOUT', `replica server did not complete the handshake within ${timeoutMs} ms`)), timeoutMs);
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
  });
}
