// Calling a node's Docker volume plugin as dockerd does: POST /<Endpoint>
// with JSON on the node's unix socket (retried while the socket is not up yet).
import { request } from 'node:http';
import path from 'node:path';
import { eventually, type LocalCluster } from './local-cluster';

export interface PluginReply {
  status: number;
  body: {
    Err?: string;
    Mountpoint?: string;
    Implements?: string[];
    Capabilities?: { Scope: string };
    Volume?: { Name: string; Mountpoint: string; CreatedAt: string; Status: Record<string, unknown> };
    Volumes?: Array<{ Name: string; Mountpoint: string }>;
  };
}

export function pluginSocket(cluster: LocalCluster, node: string): string {
  return path.join(cluster.dir, 'nodes', node, 'plugin', 'cio.sock');
}

function post(socketPath: string, endpoint: string, text: string): Promise<PluginReply> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path: `/${endpoint}`, method: 'POST', headers: { Accept: 'application/vnd.docker.plugins.v1.2+json', 'Content-Length': Buffer.byteLength(text) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) as PluginReply['body'] }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(text);
  });
}

/** POST a plugin call to a node's socket; `body` as an object, or raw text to send bad JSON. */
export function pluginCall(cluster: LocalCluster, node: string, endpoint: string, body?: unknown): Promise<PluginReply> {
  const text = body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body);
  // dockerd retries a plugin it cannot connect to (for 30 s); so do we, e.g. while an agent starts.
  return eventually(`${node}'s plugin socket to answer ${endpoint}`, () => post(pluginSocket(cluster, node), endpoint, text).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') return undefined;
    throw err;
  }), 20_000, 100);
}
