// An NBD server on a UNIX socket. It knows nothing about what stores the
// bytes: `lookup` maps an export name to an NbdBackend per connection.

import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import { silentLogger, type Logger } from '../util/log';
import type { NbdBackend } from './backend';
import { NbdConnection, type ConnectionLimits, type ConnectionStats } from './connection';

export interface NbdServerOptions {
  socketPath: string;
  lookup: (name: string) => NbdBackend | undefined;
  list: () => string[];
  logger?: Logger;
  /** Per-connection cap on bytes of requests being served (see transmission.ts). Default 64 MiB. */
  maxInFlightBytes?: number;
  /** How long close() lets connections finish in-flight requests before cutting them. Default 5 s. */
  closeGraceMs?: number;
  /** How long a client may take to get from connecting to transmission. Default 30 s. */
  handshakeTimeoutMs?: number;
}

export interface NbdServerStats {
  connections: number;
  /** Sums over open connections. */
  inFlightRequests: number;
  inFlightBytes: number;
  bufferedInputBytes: number;
  queuedReplyBytes: number;
  /** Highest in-flight bytes any connection ever reached (including closed ones). */
  peakInFlightBytes: number;
  perConnection: ConnectionStats[];
}

export const DEFAULT_MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024;
const DEFAULT_CLOSE_GRACE_MS = 5000;
const DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000;

export class NbdServer {
  private readonly log: Logger;
  private readonly limits: ConnectionLimits;
  private readonly closeGraceMs: number;
  private readonly connections = new Set<NbdConnection>();
  private server: net.Server | undefined;
  private nextConnectionId = 1;
  private peakInFlightBytes = 0;
  private closing: Promise<void> | undefined;

  constructor(private readonly opts: NbdServerOptions) {
    this.log = opts.logger ?? silentLogger;
    this.limits = {
      maxInFlightBytes: opts.maxInFlightBytes ?? DEFAULT_MAX_IN_FLIGHT_BYTES,
      handshakeTimeoutMs: opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS,
    };
    this.closeGraceMs = opts.closeGraceMs ?? DEFAULT_CLOSE_GRACE_MS;
    if (!(this.limits.maxInFlightBytes > 0)) throw new RangeError('maxInFlightBytes must be positive');
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  async listen(): Promise<void> {
    if (this.server) throw new Error('NbdServer is already listening');
    await removeStaleSocket(this.opts.socketPath);
    // allowHalfOpen: a client that shuts down its sending side still gets the
    // replies to what it already sent.
    const server = net.createServer({ allowHalfOpen: true }, (socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.log.error({ err }, 'nbd server socket error'));
    this.server = server;
    this.log.info({ socket: this.opts.socketPath }, 'nbd server listening');
  }

  /**
   * Stop accepting, let connections finish in-flight requests (up to the grace
   * period), close them all, and remove the socket file. Backend calls still
   * running are waited for up to one more grace period.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  stats(): NbdServerStats {
    const perConnection = [...this.connections].map((c) => c.stats());
    const sum = (pick: (s: ConnectionStats) => number): number => perConnection.reduce((acc, s) => acc + pick(s), 0);
    for (const s of perConnection) this.peakInFlightBytes = Math.max(this.peakInFlightBytes, s.peakInFlightBytes);
    return {
      connections: perConnection.length,
      inFlightRequests: sum((s) => s.inFlightRequests),
      inFlightBytes: sum((s) => s.inFlightBytes),
      bufferedInputBytes: sum((s) => s.bufferedInputBytes),
      queuedReplyBytes: sum((s) => s.queuedReplyBytes),
      peakInFlightBytes: this.peakInFlightBytes,
      perConnection,
    };
  }

  private accept(socket: net.Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const id = this.nextConnectionId++;
    const connection = new NbdConnection(
      socket,
      { lookup: this.opts.lookup, list: this.opts.list },
      this.limits,
      this.log.child({ conn: id }),
    );
    this.connections.add(connection);
    this.log.debug({ conn: id }, 'nbd client connected');
    void connection.closed.then(() => {
      const stats = connection.stats();
      this.peakInFlightBytes = Math.max(this.peakInFlightBytes, stats.peakInFlightBytes);
      this.connections.delete(connection);
      this.log.debug({ conn: id, export: stats.exportName, requests: stats.requestsReceived }, 'nbd client disconnected');
    });
    connection.start();
  }

  private async shutdown(): Promise<void> {
    const server = this.server;
    const stopped = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    const connections = [...this.connections];
    for (const c of connections) c.shutdown();
    const allClosed = Promise.all(connections.map((c) => c.closed)).then((): true => true);
    if (!(await this.withinGrace(allClosed))) {
      this.log.warn({ connections: this.connections.size }, 'nbd connections did not finish in time, closing them');
      for (const c of connections) c.destroy();
      // Their backend calls may still be running. Wait for them once more so the
      // caller can usually release the backends afterwards, but never hang on a
      // backend that does not answer.
      if (!(await this.withinGrace(allClosed))) {
        this.log.error('nbd backend calls still outstanding after close');
      }
    }
    await stopped;
    // Only a server that listened owns the socket path.
    if (server) await fs.rm(this.opts.socketPath, { force: true });
    this.log.info({ socket: this.opts.socketPath }, 'nbd server closed');
  }

  /** True if `done` resolves within closeGraceMs. */
  private async withinGrace(done: Promise<true>): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), this.closeGraceMs);
    });
    try {
      return await Promise.race([done, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}

/** Remove a socket file left by a dead server; refuse to steal one a live server is using. */
async function removeStaleSocket(socketPath: string): Promise<void> {
  let stat;
  try {
    stat = await fs.lstat(socketPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!stat.isSocket()) throw new Error(`${socketPath} exists and is not a socket`);
  const live = await new Promise<boolean>((resolve) => {
    const probe = net.connect(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new Error(`another server is listening on ${socketPath}`);
  await fs.rm(socketPath, { force: true });
}
