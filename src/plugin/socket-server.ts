// The transport of a legacy Docker plugin: JSON over HTTP on a unix socket,
// every call a POST to /<Method>. Replies carry "Err": "" on success; an
// error is HTTP 500 with {"Err": "one sentence"}, as Docker's own
// go-plugins-helpers answer (dockerd reads Err either way).
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { UserError, errorMessage } from '../util/errors';
import type { Logger } from '../util/log';

export type PluginBody = Record<string, unknown>;
export type PluginHandler = (body: PluginBody) => Promise<PluginBody>;

const CONTENT_TYPE = 'application/vnd.docker.plugins.v1.2+json';
const MAX_BODY_BYTES = 1024 * 1024;

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        reject(new UserError('request body is larger than 1 MiB'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/** An empty body (Plugin.Activate, List …) is an empty object. */
export function parseBody(text: string): PluginBody {
  if (text.trim() === '') return {};
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new UserError('request body is not valid JSON');
  }
  if (body === null) return {};
  if (typeof body !== 'object' || Array.isArray(body)) throw new UserError('request body must be a JSON object');
  return body as PluginBody;
}

/** True when something accepts connections on the socket (another agent's plugin). */
function socketInUse(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(socketPath);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export class PluginSocketServer {
  private server: Server | undefined;

  constructor(
    private readonly socketPath: string,
    private readonly routes: ReadonlyMap<string, PluginHandler>,
    private readonly logger: Logger,
  ) {}

  async listen(): Promise<void> {
    await mkdir(path.dirname(this.socketPath), { recursive: true });
    if (await socketInUse(this.socketPath)) throw new Error(`another process serves the plugin socket ${this.socketPath}`);
    await rm(this.socketPath, { force: true }); // left by an agent that did not stop cleanly
    const server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.logger.error({ err: err.message }, 'plugin socket error'));
    this.server = server;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const endpoint = (req.url ?? '/').split('?')[0];
    const send = (status: number, body: PluginBody): void => {
      const text = JSON.stringify(body);
      res.writeHead(status, { 'Content-Type': CONTENT_TYPE, 'Content-Length': Buffer.byteLength(text) });
      res.end(text);
    };
    const handler = this.routes.get(endpoint);
    try {
      if (req.method !== 'POST') return send(405, { Err: `${endpoint} takes POST, not ${req.method}` });
      if (!handler) return send(404, { Err: `unknown plugin endpoint ${endpoint}` });
      const body = parseBody(await readBody(req));
      const started = Date.now();
      const result = await handler(body);
      this.logger.debug({ endpoint, name: body.Name, ms: Date.now() - started }, 'plugin call');
      send(200, { Err: '', ...result });
    } catch (err) {
      const message = errorMessage(err);
      if (err instanceof UserError) this.logger.info({ endpoint, err: message }, 'plugin call refused');
      else this.logger.error({ endpoint, err: message, stack: (err as Error).stack }, 'plugin call failed');
      if (!res.headersSent) send(500, { Err: message });
    }
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
    await rm(this.socketPath, { force: true });
  }
}
