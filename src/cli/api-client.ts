// The CLI's HTTPS client for the agent API. It tries each agent of the cluster
// in turn, so a dead or frozen node does not make the CLI fail.
import { readFileSync } from 'node:fs';
import https from 'node:https';
import type { IncomingMessage } from 'node:http';
import { UserError } from '../util/errors';
import type { ClientConfig } from './client-config';

export class ApiError extends UserError {
  constructor(message: string, readonly status: number) {
    super(message, 'EAPI', status);
  }
}

interface Credentials {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

/** A failed request; `neverSent` when it failed before a connection to the agent was made. */
type RequestError = NodeJS.ErrnoException & { neverSent?: boolean };

/** Failures where another agent may well answer. */
function isUnreachable(err: NodeJS.ErrnoException): boolean {
  return ['ECONNREFUSED', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'ETIMEDOUT', 'EADDRNOTAVAIL', 'EPIPE'].includes(err.code ?? '');
}

/** Requests that change nothing, so sending one twice does no harm. */
function isIdempotent(method: string): boolean {
  return method === 'GET' || method === 'HEAD';
}

export class ApiClient {
  private readonly creds: Credentials;

  constructor(
    private readonly config: ClientConfig,
    private readonly timeoutMs = 4000,
    /** How requests are sent: HTTPS with the client certificate (tests pass http.request). */
    private readonly send: typeof https.request = https.request,
  ) {
    try {
      this.creds = { ca: readFileSync(config.ca), cert: readFileSync(config.cert), key: readFileSync(config.key) };
    } catch (err) {
      throw new UserError(`cannot read the client certificate files: ${(err as Error).message}`);
    }
  }

  /** The same client, asking the agent at `host` (an IP) first: a request about a node goes to that node's own agent. */
  preferring(host: string): ApiClient {
    const first = this.config.endpoints.filter((e) => new URL(e).hostname === host);
    const rest = this.config.endpoints.filter((e) => !first.includes(e));
    return new ApiClient({ ...this.config, endpoints: [...first, ...rest] }, this.timeoutMs, this.send);
  }

  private open(endpoint: string, method: string, path: string, body?: unknown, stream = false): Promise<IncomingMessage> {
    return new Promise((resolve, reject) => {
      const url = new URL(path, endpoint);
      const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const req = this.send(
        url,
        {
          method,
          ...this.creds,
          headers: payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {},
          timeout: this.timeoutMs,
        },
        (res) => {
          if (stream) req.setTimeout(0);
          resolve(res);
        },
      );
      // Until the connection is made (for TLS: its handshake done), not one
      // byte of the request has left this machine. A frozen agent still
      // accepts TCP connections in the kernel, but never completes a handshake.
      let connected = false;
      req.on('socket', (socket) => {
        const ready = 'encrypted' in socket ? 'secureConnect' : 'connect';
        if (socket.connecting) socket.once(ready, () => (connected = true));
        else connected = true; // a kept-alive connection: the request goes out at once
      });
      req.on('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })));
      req.on('error', (err: RequestError) => reject(Object.assign(err, { neverSent: !connected })));
      req.end(payload);
    });
  }

  /**
   * Send a request to the first agent that answers. A request that changes
   * something (create, attach, delete…) goes on to the next agent only if it
   * never reached this one: after a timeout or a reset it may well have been
   * carried out (slowly), and sending it again could do it twice.
   */
  private async openAny(method: string, path: string, body?: unknown, stream = false): Promise<IncomingMessage> {
    const failures: string[] = [];
    for (const endpoint of this.config.endpoints) {
      try {
        const res = await this.open(endpoint, method, path, body, stream);
        // An agent that cannot reach etcd answers 5xx: a read is asked of the next one.
        if (isIdempotent(method) && (res.statusCode ?? 500) >= 500 && endpoint !== this.config.endpoints[this.config.endpoints.length - 1]) {
          res.resume();
          failures.push(`${new URL(endpoint).host} (HTTP ${res.statusCode})`);
          continue;
        }
        return res;
      } catch (err) {
        const e = err as RequestError;
        const host = new URL(endpoint).host;
        if (!isUnreachable(e)) throw new UserError(`request to ${endpoint} failed: ${e.message}`);
        if (!isIdempotent(method) && !e.neverSent) {
          throw new UserError(
            `${method} ${path} to ${host} failed (${e.code}) after it was sent: it may have been carried out, so it was not sent to another agent; check the result before trying again`,
            'EUNCERTAIN',
          );
        }
        failures.push(`${host} (${e.code})`);
      }
    }
    throw new UserError(`cannot reach cluster ${this.config.cluster}: no agent answered (${failures.join(', ')})`, 'EUNREACHABLE');
  }

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.openAny(method, path, body);
    const chunks: Buffer[] = [];
    for await (const chunk of res) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      throw new ApiError(`the agent sent a reply that is not JSON (HTTP ${res.statusCode})`, res.statusCode ?? 500);
    }
    if ((res.statusCode ?? 500) >= 400) {
      const message = (parsed as { error?: string } | undefined)?.error ?? `HTTP ${res.statusCode}`;
      throw new ApiError(message, res.statusCode ?? 500);
    }
    return parsed as T;
  }

  get<T>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  post<T>(path: string, body: unknown = {}): Promise<T> {
    return this.request<T>('POST', path, body);
  }

  /** Read a newline-delimited JSON stream until the connection ends. */
  async *stream<T>(path: string): AsyncGenerator<T> {
    const res = await this.openAny('GET', path, undefined, true);
    if ((res.statusCode ?? 500) >= 400) throw new ApiError(`the agent refused the stream (HTTP ${res.statusCode})`, res.statusCode ?? 500);
    let pending = '';
    for await (const chunk of res) {
      pending += (chunk as Buffer).toString('utf8');
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl).trim();
        pending = pending.slice(nl + 1);
        if (line) yield JSON.parse(line) as T;
      }
    }
  }
}
