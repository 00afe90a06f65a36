// The agent's HTTPS API, used by the CLI (and later the dashboard). Every route
// is authenticated (auth.ts); errors are JSON `{ error: "one sentence" }`.
import { readFileSync } from 'node:fs';
import Fastify, { type FastifyBaseLogger, LogController } from 'fastify';
import type { Etcd3 } from 'etcd3';
import { summarizeCluster } from '../core/cluster-summary';
import type { NodeRecord } from '../core/types';
import type { EventLog } from '../store/events';
import { keys } from '../store/keys';
import { findNodeByName, listNodes, updateNode } from '../store/nodes';
import { getJson } from '../store/etcd';
import type { CertPaths } from '../security/pki';
import { NotFoundError, UserError } from '../util/errors';
import type { Logger } from '../util/log';
import { authenticate } from './auth';
import { metricsRegistry } from './metrics';
import { registerVolumeRoutes, type VolumeRouteContext } from './volume-routes';

export interface ApiContext {
  etcd: Etcd3;
  events: EventLog;
  self: () => NodeRecord;
  controllerId: () => Promise<string | undefined>;
  logger: Logger;
  volumes: VolumeRouteContext;
}

export interface ApiOptions {
  host: string;
  port: number;
  tls: CertPaths;
  token: string;
}

const MAX_EVENTS = 10_000;

export async function startApi(ctx: ApiContext, opts: ApiOptions): Promise<{ close(): Promise<void> }> {
  const app = Fastify({
    loggerInstance: ctx.logger.child({ component: 'api' }) as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    https: {
      ca: readFileSync(opts.tls.ca),
      cert: readFileSync(opts.tls.cert),
      key: readFileSync(opts.tls.key),
      requestCert: true,
      // Checked per request in auth.ts, so a client without a certificate gets a
      // clear 401 (or may use the token) instead of a failed handshake.
      rejectUnauthorized: false,
    },
  });

  app.addHook('onRequest', authenticate(opts.token));

  app.setErrorHandler(async (err: Error & { statusCode?: number }, _req, reply) => {
    if (err instanceof UserError) return reply.code(err.httpStatus).send({ error: err.message, code: err.code });
    if (err.statusCode && err.statusCode < 500) return reply.code(err.statusCode).send({ error: err.message });
    ctx.logger.error({ err }, 'API request failed');
    return reply.code(500).send({ error: `internal error: ${err.message}` });
  });

  app.get('/v1/health', async () => ({ ok: true, node: ctx.self().name }));

  app.get('/v1/info', async () => {
    const cluster = await getJson<{ name: string }>(ctx.etcd, keys.cluster);
    return summarizeCluster(cluster?.name ?? 'cio', await listNodes(ctx.etcd), await ctx.controllerId());
  });

  app.get('/v1/nodes', async () => {
    const controller = await ctx.controllerId();
    return (await listNodes(ctx.etcd)).map((n) => ({ ...n, controller: n.id === controller }));
  });

  const nodeByName = async (name: string): Promise<NodeRecord> => {
    const node = await findNodeByName(ctx.etcd, name);
    if (!node) throw new NotFoundError(`no node named ${name} in this cluster`);
    return node;
  };

  app.get<{ Params: { name: string } }>('/v1/nodes/:name', async (req) => {
    const node = await nodeByName(req.params.name);
    return { ...node, controller: node.id === (await ctx.controllerId()) };
  });

  for (const action of ['cordon', 'uncordon'] as const) {
    app.post<{ Params: { name: string } }>(`/v1/nodes/:name/${action}`, async (req) => {
      const node = await nodeByName(req.params.name);
      const cordoned = action === 'cordon';
      return updateNode(ctx.etcd, node.id, (cur) => (cur.cordoned === cordoned ? undefined : { ...cur, cordoned }));
    });
  }

  app.get<{ Querystring: { n?: string } }>('/v1/events', async (req) => {
    const n = req.query.n === undefined ? 50 : Number(req.query.n);
    if (!Number.isInteger(n) || n < 1 || n > MAX_EVENTS) throw new UserError(`n must be a whole number from 1 to ${MAX_EVENTS}`);
    return ctx.events.last(n);
  });

  // New events as newline-delimited JSON, for `cio events -f`.
  app.get('/v1/events/follow', async (req, reply) => {
    reply.raw.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-cache' });
    reply.raw.write('\n');
    const watcher = await ctx.events.follow((event) => reply.raw.write(`${JSON.stringify(event)}\n`));
    req.raw.on('close', () => void watcher.cancel());
    return reply.hijack();
  });

  registerVolumeRoutes(app, ctx.volumes);

  app.get('/metrics', async (_req, reply) => {
    return reply.type(metricsRegistry.contentType).send(await metricsRegistry.metrics());
  });

  await app.listen({ host: opts.host, port: opts.port });
  return { close: () => app.close() };
}
