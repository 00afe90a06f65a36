// The replica server of one node: accepts TCP connections from volume owners
// and serves the replicas on this node's drives (see protocol.ts).
import net from 'node:net';
import { type Logger, silentLogger } from '../util/log';
import { checkSecret } from './auth';
import { ServerConnection } from './connection';
import { Dispatcher } from './dispatch';
import { ReplicaLocator } from './locator';
import { LocalReplicaChannel } from './local';
import type { ReplicaStore } from './store';

export interface ReplicaServerOptions {
  host: string;
  /** 0 picks a free port (see address()). */
  port: number;
  /** The cluster's shared secret (at least 16 bytes). */
  secret: Buffer;
  /** This node's drives by drive id. */
  stores: ReadonlyMap<string, ReplicaStore>;
  logger?: Logger;
  /** Per-connection cap on request/reply bytes held in memory. Default 64 MiB. */
  maxInFlightBytesPerConnection?: number;
  /** Time a client has to authenticate. Default 10 s. */
  authTimeoutMs?: number;
}

const DEFAULT_MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024;
const DEFAULT_AUTH_TIMEOUT_MS = 10_000;
// Socket buffer size: large enough for a burst of 4 KiB writes or a few big
// ones per read() call (the default 16 KiB costs many more syscalls).
const SOCKET_HIGH_WATER_MARK = 1024 * 1024;

export class ReplicaServer {
  private readonly server: net.Server;
  private readonly connections = new Set<ServerConnection>();
  private readonly dispatcher: Dispatcher;
  private readonly logger: Logger;
  private listening = false;

  constructor(private readonly opts: ReplicaServerOptions) {
    checkSecret(opts.secret);
    this.logger = opts.logger ?? silentLogger;
    this.dispatcher = new Dispatcher(new ReplicaLocator(opts.stores), this.logger);
    const limits = {
      maxInFlightBytes: opts.maxInFlightBytesPerConnection ?? DEFAULT_MAX_IN_FLIGHT_BYTES,
      authTimeoutMs: opts.authTimeoutMs ?? DEFAULT_AUTH_TIMEOUT_MS,
    };
    const serverOptions: net.ServerOpts & { highWaterMark?: number } = { noDelay: true, highWaterMark: SOCKET_HIGH_WATER_MARK };
    this.server = net.createServer(serverOptions, (socket) => {
      const conn = new ServerConnection(socket, opts.secret, this.dispatcher, this.logger, limits);
      this.connections.add(conn);
      socket.once('close', () => this.connections.delete(conn));
      conn.start();
    });
    this.server.on('error', (err) => this.logger.error({ err }, 'replica server error'));
  }

  /** An in-process channel to this server's replicas (for an engine on the same node). */
  localChannel(): LocalReplicaChannel {
    return new LocalReplicaChannel(this.dispatcher);
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  listen(): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.server.once('error', onError);
      this.server.listen({ host: this.opts.host, port: this.opts.port }, () => {
        this.server.off('error', onError);
        this.listening = true;
        const addr = this.address();
        this.logger.info(addr, 'replica server listening');
        resolve(addr);
      });
    });
  }

  address(): { host: string; port: number } {
    const addr = this.server.address();
    if (addr === null || typeof addr === 'string') throw new Error('replica server is not listening');
    return { host: addr.address, port: addr.port };
  }

  /**
   * Stops accepting, drops every connection and waits for requests already
   * running to finish (so the stores can be closed safely afterwards).
   */
  async close(): Promise<void> {
    const closed = this.listening ? new Promise<void>((resolve) => this.server.close(() => resolve())) : Promise.resolve();
    this.listening = false;
    const conns = [...this.connections];
    for (const c of conns) c.destroy();
    await Promise.all([closed, ...conns.map((c) => c.whenIdle())]);
  }
}
