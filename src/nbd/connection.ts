// One client connection: handshake first, then the transmission phase, over
// a single input queue so bytes the client pipelines across the switch are
// not lost.

import type { Socket } from 'node:net';
import type { Logger } from '../util/log';
import { ByteQueue } from '../util/byte-queue';
import { readIntoReusedBuffer } from '../util/socket-input';
import { Handshake, HandshakeViolation, type ExportCatalog, type HandshakeChannel } from './handshake';
import { Transmission, type TransmissionStats } from './transmission';

/** During the handshake we read option by option; stop reading ahead beyond this. */
const HANDSHAKE_READ_AHEAD = 1024 * 1024;

class ConnectionClosed extends Error {
  constructor() {
    super('connection closed during handshake');
    this.name = 'ConnectionClosed';
  }
}

/** Handshake I/O on the socket: awaitable reads from the shared queue. */
class SocketHandshakeChannel implements HandshakeChannel {
  private wake: (() => void) | undefined;
  private inputClosed = false;
  private paused = false;

  constructor(
    private readonly socket: Socket,
    private readonly queue: ByteQueue,
  ) {}

  onData(chunk: Buffer): void {
    this.queue.push(chunk);
    if (this.queue.length > HANDSHAKE_READ_AHEAD && !this.paused) {
      this.paused = true;
      this.socket.pause();
    }
    this.notify();
  }

  onInputClosed(): void {
    this.inputClosed = true;
    this.notify();
  }

  /** Hand the socket over to the transmission phase in flowing mode. */
  detach(): void {
    if (this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }

  async read(n: number): Promise<Buffer> {
    await this.waitFor(n);
    return this.queue.take(n);
  }

  async skip(n: number): Promise<void> {
    let remaining = n;
    while (remaining > 0) {
      await this.waitFor(1);
      remaining -= this.queue.skip(remaining);
    }
  }

  write(buf: Buffer): Promise<void> {
    const socket = this.socket;
    if (socket.destroyed) return Promise.reject(new ConnectionClosed());
    if (socket.write(buf)) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        socket.off('drain', done);
        socket.off('close', done);
        resolve();
      };
      socket.on('drain', done);
      socket.on('close', done);
    });
  }

  private async waitFor(n: number): Promise<void> {
    while (this.queue.length < n) {
      if (this.paused) {
        this.paused = false;
        this.socket.resume();
      }
      if (this.inputClosed) throw new ConnectionClosed();
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }
}

export interface ConnectionStats extends TransmissionStats {
  phase: 'handshake' | 'transmission' | 'closed';
  exportName?: string;
}

export interface ConnectionLimits {
  /** See Transmission: cap on bytes of requests being served. */
  maxInFlightBytes: number;
  /** A client that has not entered transmission by then is dropped (it holds a socket for nothing). */
  handshakeTimeoutMs: number;
}

export class NbdConnection {
  /** Resolves when the socket is closed and no backend call of this connection is outstanding. */
  readonly closed: Promise<void>;
  private readonly queue = new ByteQueue();
  private readonly channel: SocketHandshakeChannel;
  private transmission: Transmission | undefined;
  private exportName: string | undefined;
  private socketClosed = false;
  private shuttingDown = false;

  constructor(
    private readonly socket: Socket,
    private readonly catalog: ExportCatalog,
    private readonly limits: ConnectionLimits,
    private readonly log: Logger,
  ) {
    this.channel = new SocketHandshakeChannel(socket, this.queue);
    let markClosed!: () => void;
    const socketClosed = new Promise<void>((resolve) => {
      markClosed = resolve;
    });
    this.closed = socketClosed.then(() => this.transmission?.whenIdle());

    socket.on('data', (chunk: Buffer) => {
      if (this.transmission) this.transmission.onData(chunk);
      else this.channel.onData(chunk);
    });
    socket.on('end', () => {
      if (this.transmission) this.transmission.onInputEnd();
      else this.channel.onInputClosed();
    });
    socket.on('error', (err) => this.log.debug({ err }, 'nbd socket error'));
    socket.on('close', () => {
      this.socketClosed = true;
      this.channel.onInputClosed();
      markClosed();
    });
  }

  start(): void {
    this.socket.setTimeout(this.limits.handshakeTimeoutMs, () => {
      this.log.warn('nbd handshake timed out, closing connection');
      this.socket.destroy();
    });
    void this.negotiate();
  }

  /** Stop gracefully: a handshaking client is dropped, a transmitting one gets its in-flight replies first. */
  shutdown(): void {
    this.shuttingDown = true;
    if (this.transmission) this.transmission.stop();
    else this.socket.destroy();
  }

  destroy(): void {
    this.socket.destroy();
  }

  stats(): ConnectionStats {
    const phase = this.socketClosed ? 'closed' : this.transmission ? 'transmission' : 'handshake';
    const transmission: TransmissionStats = this.transmission?.stats() ?? {
      inFlightRequests: 0,
      inFlightBytes: 0,
      peakInFlightBytes: 0,
      bufferedInputBytes: this.queue.length,
      queuedReplyBytes: this.socket.writableLength,
      inputPaused: this.socket.isPaused(),
      requestsReceived: 0,
    };
    return { ...transmission, phase, exportName: this.exportName };
  }

  private async negotiate(): Promise<void> {
    try {
      const negotiated = await new Handshake(this.channel, this.catalog, this.log).run();
      if (negotiated === undefined) {
        this.log.debug('nbd client aborted the handshake');
        this.socket.end();
        return;
      }
      if (this.socketClosed || this.shuttingDown) {
        this.socket.destroy();
        return;
      }
      this.exportName = negotiated.name;
      this.log.debug({ export: negotiated.name, flags: negotiated.flags }, 'nbd transmission started');
      this.socket.setTimeout(0); // transmission may idle as long as it likes
      const transmission = new Transmission(this.socket, this.queue, negotiated, this.limits.maxInFlightBytes, this.log);
      this.transmission = transmission;
      readIntoReusedBuffer(this.socket, (chunk) => transmission.onData(chunk, true), () => transmission.directTarget());
      this.channel.detach();
      this.transmission.start();
    } catch (err) {
      if (err instanceof HandshakeViolation) this.log.warn({ reason: err.message }, 'nbd handshake failed, closing connection');
      else if (!(err instanceof ConnectionClosed)) this.log.error({ err }, 'nbd handshake error');
      this.socket.destroy();
    }
  }
}
