// One accepted client connection on the replica server: the handshake, then
// framing, pipelining and flow control. Requests are dispatched as soon as
// they are decoded and replied to as they complete (any order). Inbound
// reading pauses while the bytes held for this connection exceed the cap, or
// while the socket's send buffer is full, so a fast client cannot make the
// server buffer without bound.
import type net from 'node:net';
import { invariant } from '../util/errors';
import { ioBuffers } from '../util/buffer-pool';
import { type Logger } from '../util/log';
import { AuthError, CLIENT_HELLO_SIZE, encodeServerHello, encodeServerProof, newNonce, verifyClientHello } from './auth';
import { ByteQueue } from '../util/byte-queue';
import { readIntoReusedBuffer } from '../util/socket-input';
import { TurnCork } from '../util/turn-cork';
import { RequestDecoder, encodeReplyHeader } from './codec';
import { ConnectionSessions, type Dispatcher, type Outcome } from './dispatch';
import { Op, ProtocolError, type Request, Status } from './protocol';

export interface ConnectionLimits {
  /** Request and reply bytes held for one connection before reading pauses. */
  maxInFlightBytes: number;
  /** Time allowed for the handshake. */
  authTimeoutMs: number;
}

type Phase = 'auth' | 'ready' | 'closed';

const REQUEST_OVERHEAD_BYTES = 1024;

export class ServerConnection {
  private phase: Phase = 'auth';
  private readonly serverNonce = newNonce();
  private readonly authBytes = new ByteQueue();
  private readonly decoder = new RequestDecoder();
  private authTimer: NodeJS.Timeout | undefined;
  private inFlightBytes = 0;
  private inFlightRequests = 0;
  private awaitingDrain = false;
  private paused = false;
  private readonly cork: TurnCork;
  private idleWaiters: Array<() => void> = [];
  /** Which replicas this connection opened, at which session: changes after a newer OPEN elsewhere are refused. */
  private readonly sessions = new ConnectionSessions();

  constructor(
    private readonly socket: net.Socket,
    private readonly secret: Buffer,
    private readonly dispatcher: Dispatcher,
    private readonly logger: Logger,
    private readonly limits: ConnectionLimits,
  ) {
    this.cork = new TurnCork(socket);
  }

  start(): void {
    const s = this.socket;
    s.setNoDelay(true);
    s.setKeepAlive(true, 10_000);
    s.on('data', (chunk: Buffer) => this.onData(chunk, false));
    s.on('drain', () => {
      this.awaitingDrain = false;
      this.pump();
    });
    s.on('error', (err) => this.logger.debug({ err }, 'replica connection error'));
    s.on('close', () => this.onClose());
    this.authTimer = setTimeout(() => {
      this.logger.warn('replica client did not authenticate in time');
      this.socket.destroy();
    }, this.limits.authTimeoutMs);
    s.write(encodeServerHello(this.serverNonce));
  }

  /** Drops the connection; requests already running finish, their replies are discarded. */
  destroy(): void {
    this.socket.destroy();
  }

  /** Resolves once the connection is closed and no request of it is running any more. */
  whenIdle(): Promise<void> {
    if (this.phase === 'closed' && this.inFlightRequests === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private onData(chunk: Buffer, borrowed: boolean): void {
    if (this.phase === 'ready') {
      this.decoder.push(chunk, borrowed);
      this.pump();
      this.decoder.settle();
    } else if (this.phase === 'auth') {
      this.authBytes.push(chunk);
      this.authenticate();
    }
  }

  private authenticate(): void {
    if (this.authBytes.length < CLIENT_HELLO_SIZE) return;
    let clientNonce: Buffer;
    try {
      clientNonce = verifyClientHello(this.secret, this.serverNonce, this.authBytes.take(CLIENT_HELLO_SIZE));
    } catch (err) {
      invariant(err instanceof AuthError, 'client hello check threw an unexpected error');
      this.logger.warn({ remote: this.socket.remoteAddress, reason: err.message }, 'replica client rejected');
      this.socket.destroy();
      return;
    }
    clearTimeout(this.authTimer);
    this.phase = 'ready';
    this.socket.write(encodeServerProof(this.secret, this.serverNonce, clientNonce));
    this.decoder.takeOver(this.authBytes);
    readIntoReusedBuffer(this.socket, (chunk) => this.onData(chunk, true), () => this.decoder.directTarget());
    this.pump();
  }

  /** Dispatches decoded requests while under the caps, then pauses or resumes the socket. */
  private pump(): void {
    while (this.phase === 'ready' && !this.overCap()) {
      let req: Request | undefined;
      try {
        req = this.decoder.next();
      } catch (err) {
        invariant(err instanceof ProtocolError, 'request decoder threw an unexpected error');
        this.logger.warn({ remote: this.socket.remoteAddress, reason: err.message }, 'closing replica connection: protocol error');
        this.socket.destroy();
        return;
      }
      if (req === undefined) break;
      this.dispatch(req);
    }
    const shouldPause = this.overCap();
    if (shouldPause && !this.paused) this.socket.pause();
    else if (!shouldPause && this.paused) this.socket.resume();
    this.paused = shouldPause;
  }

  private overCap(): boolean {
    return this.awaitingDrain || this.inFlightBytes >= this.limits.maxInFlightBytes;
  }

  private dispatch(req: Request): void {
    // Payload held now, the reply READ will produce, and a flat charge for
    // the bookkeeping of any request (so a flood of empty requests is capped too).
    const cost = REQUEST_OVERHEAD_BYTES + req.payload.length + (req.op === Op.READ && !req.refused ? req.length : 0);
    this.inFlightBytes += cost;
    this.inFlightRequests++;
    const requestId = req.requestId;
    this.dispatcher.execute(req, this.sessions).then(
      (outcome) => {
        ioBuffers.give(req.payload); // a WRITE's data is on the replica now
        this.complete(requestId, outcome, cost);
      },
      (err: unknown) => {
        // execute() turns every failure into an outcome: this is a bug.
        this.logger.error({ err }, 'replica dispatcher rejected');
        this.complete(requestId, { status: Status.EIO, epoch: 0 }, cost);
      },
    );
  }

  private complete(requestId: number, outcome: Outcome, cost: number): void {
    this.inFlightBytes -= cost;
    this.inFlightRequests--;
    if (this.phase === 'ready') {
      this.sendReply(requestId, outcome);
      this.pump();
    } else if (this.phase === 'closed') {
      this.notifyIdle();
    }
  }

  private sendReply(requestId: number, outcome: Outcome): void {
    const payload = outcome.payload;
    const header = encodeReplyHeader({ status: outcome.status, requestId, epoch: outcome.epoch, payloadLength: payload ? payload.length : 0 });
    this.cork.hold();
    let ok = this.socket.write(header);
    // A READ's data comes from the buffer pool; it is reused once the kernel has it.
    if (payload && payload.length > 0) ok = this.socket.write(payload, (err) => err || ioBuffers.give(payload));
    if (!ok) this.awaitingDrain = true;
  }

  private onClose(): void {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    clearTimeout(this.authTimer);
    this.notifyIdle();
  }

  private notifyIdle(): void {
    if (this.inFlightRequests > 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}
