// Agent-to-agent calls: an attach or detach must run on the node that will
// (or does) own the volume, so the agent that received the request forwards
// it there, authenticated with its own certificate.
import { readFileSync } from 'node:fs';
import https from 'node:https';
import type { NodeRecord } from '../core/types';
import type { CertPaths } from '../security/pki';
import { UserError } from '../util/errors';

export class PeerClient {
  private readonly creds: { ca: Buffer; cert: Buffer; key: Buffer };

  constructor(tls: CertPaths, private readonly timeoutMs = 120_000) {
    this.creds = { ca: readFileSync(tls.ca), cert: readFileSync(tls.cert), key: readFileSync(tls.key) };
  }

  call<T>(node: Pick<NodeRecord, 'ip' | 'apiPort' | 'name'>, method: string, path: string, body?: unknown): Promise<T> {
    return new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const req = https.request(
        { host: node.ip, port: node.apiPort, path, method, ...this.creds, timeout: this.timeoutMs, headers: payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {} },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown;
            try {
              parsed = text ? JSON.parse(text) : undefined;
            } catch {
              reject(new UserError(`node ${node.name} sent a reply that is not JSON`, 'EIO', 502));
              return;
            }
            const status = res.statusCode ?? 500;
            if (status >= 400) {
              const p = parsed as { error?: string; code?: string } | undefined;
              reject(new UserError(p?.error ?? `node ${node.name} answered HTTP ${status}`, p?.code ?? 'EIO', status));
            } else resolve(parsed as T);
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error('timed out')));
      req.on('error', (err) => reject(new UserError(`cannot reach node ${node.name}: ${err.message}`, 'EUNREACHABLE', 503)));
      req.end(payload);
    });
  }
}
