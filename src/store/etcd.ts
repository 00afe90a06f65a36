// The etcd client, configured once: TLS client certificate, timeouts, and a
// namespace-free handle (keys.ts carries the prefix).
import { readFileSync } from 'node:fs';
import { Etcd3 } from 'etcd3';
import type { CertPaths } from '../security/pki';

export interface EtcdConfig {
  endpoints: string[];
  tls?: CertPaths;
  /** Deadline for a single call; calls fail instead of hanging when etcd is gone. */
  callTimeoutMs?: number;
}

export function connectEtcd(config: EtcdConfig): Etcd3 {
  const timeout = config.callTimeoutMs ?? 5000;
  return new Etcd3({
    hosts: config.endpoints,
    dialTimeout: timeout,
    credentials: config.tls
      ? {
          rootCertificate: readFileSync(config.tls.ca),
          certChain: readFileSync(config.tls.cert),
          privateKey: readFileSync(config.tls.key),
        }
      : undefined,
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeout }),
  });
}

export async function getJson<T>(client: Etcd3, key: string): Promise<T | undefined> {
  const raw = await client.get(key).string();
  return raw === null ? undefined : (JSON.parse(raw) as T);
}

export async function getAllJson<T>(client: Etcd3, prefix: string): Promise<Map<string, T>> {
  const raw = await client.getAll().prefix(prefix).strings();
  const out = new Map<string, T>();
  for (const [key, value] of Object.entries(raw)) out.set(key.slice(prefix.length), JSON.parse(value) as T);
  return out;
}
