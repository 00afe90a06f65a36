// Volume and profile routes of the agent API.
import type { Server } from 'node:https';
import type { FastifyInstance } from 'fastify';
import YAML from 'yaml';
import type { Etcd3 } from 'etcd3';
import { parseProfile, VOLUME_OPTION_KEYS, type VolumeOptions } from '../core/profiles';
import type { NodeRecord, VolumeRecord } from '../core/types';
import { findNodeByName, listNodes } from '../store/nodes';
import { getJson } from '../store/etcd';
import { keys } from '../store/keys';
import { deleteProfile, findProfile, listProfiles, listVolumes, putProfile, requireVolume } from '../store/volumes';
import { NotFoundError, UserError } from '../util/errors';
import type { VolumeHost } from '../volumes/host';
import { createVolume, growVolume, removeVolume, type LifecycleDeps } from '../volumes/lifecycle';
import { withReplicaClient } from '../volumes/replica-links';
import type { PeerClient } from './peer';

export interface RebuildProgressView {
  replicaId: string;
  mode: 'full' | 'incremental';
  totalBytes: number;
  doneBytes: number;
  percent: number;
  bytesPerSecond: number;
  secondsLeft: number | null;
}

export interface VolumeRouteContext {
  etcd: Etcd3;
  self: () => NodeRecord;
  lifecycle: LifecycleDeps;
  host: VolumeHost;
  peers: PeerClient;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(body: Record<string, unknown>, key: string): string | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string' || v.length > 256) throw new UserError(`${key} must be a string`);
  return v;
}

export function registerVolumeRoutes(app: FastifyInstance<Server>, ctx: VolumeRouteContext): void {
  app.get('/v1/volumes', async () => listVolumes(ctx.etcd));

  app.get<{ Params: { name: string } }>('/v1/volumes/:name', async (req) => {
    const vol = await requireVolume(ctx.etcd, req.params.name);
    const nodes = await listNodes(ctx.etcd);
    // Allocated bytes of each copy, asked of its node; a node that does not answer shows null.
    const replicas = await Promise.all(
      vol.replicas.map(async (r) => {
        const node = nodes.find((n) => n.id === r.nodeId);
        let allocatedBytes: number | null = null;
        if (node && node.status !== 'maintenance') {
          allocatedBytes = await withReplicaClient(node, ctx.lifecycle.links, (c) => c.stat(r.id))
            .then((s) => s.allocatedBytes)
            .catch(() => null);
        }
        return { ...r, nodeName: node?.name ?? r.nodeId, allocatedBytes };
      }),
    );
    const owner = nodes.find((n) => n.id === vol.owner);
    // Rebuild progress, kept in etcd by the owner while copies are rebuilt.
    const progress = (await getJson<RebuildProgressView[]>(ctx.etcd, keys.progress(vol.name))) ?? [];
    return {
      ...vol,
      ownerName: owner?.name ?? null,
      replicas: replicas.map((r) => ({ ...r, rebuild: progress.find((p) => p.replicaId === r.id) ?? null })),
    };
  });

  app.post('/v1/volumes', async (req, reply) => {
    const body = req.body;
    if (!isObject(body)) throw new UserError('expected a JSON object');
    const name = str(body, 'name');
    if (!name) throw new UserError('name is required');
    const options = body.options ?? {};
    if (!isObject(options)) throw new UserError('options must be an object');
    for (const key of Object.keys(options)) {
      if (!(VOLUME_OPTION_KEYS as readonly string[]).includes(key)) throw new UserError(`unknown option ${key} (allowed: ${VOLUME_OPTION_KEYS.join(', ')})`);
      const v = options[key];
      if (v !== undefined && typeof v !== 'string' && typeof v !== 'number') throw new UserError(`option ${key} must be a string or number`);
    }
    const vol = await createVolume(ctx.lifecycle, { name, options: options as VolumeOptions, profile: str(body, 'profile'), node: str(body, 'node') });
    return reply.code(201).send(vol);
  });

  app.delete<{ Params: { name: string } }>('/v1/volumes/:name', async (req) => {
    await removeVolume(ctx.lifecycle, req.params.name);
    return { removed: req.params.name };
  });

  app.patch<{ Params: { name: string } }>('/v1/volumes/:name', async (req) => {
    const body = req.body;
    if (!isObject(body) || body.capacity === undefined) throw new UserError('capacity is required');
    if (typeof body.capacity !== 'string' && typeof body.capacity !== 'number') throw new UserError('capacity must be a size');
    return growVolume(ctx.lifecycle, req.params.name, body.capacity);
  });

  // Attach runs on the node that is to own the volume; any agent forwards it there.
  app.post<{ Params: { name: string } }>('/v1/volumes/:name/attach', async (req) => {
    const body = isObject(req.body) ? req.body : {};
    const target = str(body, 'node');
    const self = ctx.self();
    if (!target || target === self.name || target === self.id) return ctx.host.attach(req.params.name);
    const node = await findNodeByName(ctx.etcd, target);
    if (!node) throw new NotFoundError(`no node named ${target} in this cluster`);
    if (node.status === 'maintenance') throw new UserError(`node ${node.name} is in maintenance and cannot take the volume`, 'EUNAVAIL', 409);
    return ctx.peers.call<VolumeRecord>(node, 'POST', `/v1/volumes/${encodeURIComponent(req.params.name)}/attach`, { node: node.name });
  });

  // Detach runs on the owner.
  app.post<{ Params: { name: string } }>('/v1/volumes/:name/detach', async (req) => {
    const vol = await requireVolume(ctx.etcd, req.params.name);
    const self = ctx.self();
    if (!vol.owner) throw new UserError(`volume ${vol.name} is not attached`, 'ENOTATTACHED', 409);
    if (vol.owner === self.id) return ctx.host.detach(vol.name);
    const nodes = await listNodes(ctx.etcd);
    const owner = nodes.find((n) => n.id === vol.owner);
    if (!owner) throw new Error(`owner ${vol.owner} is not in the cluster`);
    return ctx.peers.call<VolumeRecord>(owner, 'POST', `/v1/volumes/${encodeURIComponent(vol.name)}/detach`, {});
  });

  // ---- profiles
  app.get('/v1/profiles', async () => listProfiles(ctx.etcd));
  app.get<{ Params: { name: string } }>('/v1/profiles/:name', async (req) => {
    const p = await findProfile(ctx.etcd, req.params.name);
    if (!p) throw new NotFoundError(`no profile named ${req.params.name}`);
    return p;
  });
  app.post('/v1/profiles', async (req, reply) => {
    const body = req.body;
    if (!isObject(body) || typeof body.yaml !== 'string') throw new UserError('expected {"yaml": "<profile YAML>"}');
    if (body.yaml.length > 16_384) throw new UserError('profile YAML is too long (16 KiB at most)');
    let raw: unknown;
    try {
      raw = YAML.parse(body.yaml);
    } catch (err) {
      throw new UserError(`profile is not valid YAML: ${(err as Error).message.split('\n')[0]}`);
    }
    const profile = parseProfile(raw, typeof body.source === 'string' ? body.source : '(request)');
    await putProfile(ctx.etcd, profile, body.replace === true);
    return reply.code(201).send(profile);
  });
  app.delete<{ Params: { name: string } }>('/v1/profiles/:name', async (req) => {
    await deleteProfile(ctx.etcd, req.params.name);
    return { removed: req.params.name.toUpperCase() };
  });
}
