// The cluster's certificate authority. Created with the cluster; every agent,
// the etcd member and the CLI get a certificate signed by it, so every
// connection inside the cluster is mutually authenticated (TLS client certs).
// openssl does the cryptography: we only decide names and file locations.
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { run } from '../util/exec';

export interface CertPaths {
  ca: string;
  cert: string;
  key: string;
}

const VALID_DAYS = '3650';

export function caPaths(pkiDir: string): { crt: string; key: string; token: string; secret: string } {
  return {
    crt: path.join(pkiDir, 'ca.crt'),
    key: path.join(pkiDir, 'ca.key'),
    token: path.join(pkiDir, 'api-token'),
    secret: path.join(pkiDir, 'replica-secret'),
  };
}

/** Create the CA, the API token and the replica secret once; an existing CA is kept. */
export async function ensureCa(pkiDir: string, clusterName: string): Promise<void> {
  await mkdir(pkiDir, { recursive: true, mode: 0o700 });
  const ca = caPaths(pkiDir);
  if (!existsSync(ca.crt)) {
    await run('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', ca.key, '-out', ca.crt, '-days', VALID_DAYS,
      '-subj', `/O=cio/CN=cio cluster ${clusterName} CA`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ]);
    await chmod(ca.key, 0o600);
  }
  for (const file of [ca.token, ca.secret]) {
    if (!existsSync(file)) await writeFile(file, randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
  }
}

/**
 * Issue a certificate for `name`, valid for the given IPs, usable both as a
 * server and as a client certificate (agents are both).
 */
export async function issueCert(pkiDir: string, name: string, ips: readonly string[]): Promise<CertPaths> {
  const ca = caPaths(pkiDir);
  const key = path.join(pkiDir, `${name}.key`);
  const cert = path.join(pkiDir, `${name}.crt`);
  const csr = path.join(pkiDir, `${name}.csr`);
  const ext = path.join(pkiDir, `${name}.ext`);
  if (!existsSync(cert)) {
    const sans = [...ips.map((ip) => `IP:${ip}`), 'DNS:localhost', `DNS:${name}`].join(',');
    await writeFile(
      ext,
      `subjectAltName=${sans}\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature,keyAgreement\nbasicConstraints=CA:FALSE\n`,
    );
    await run('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', csr, '-subj', `/O=cio/CN=${name}`]);
    await run('openssl', ['x509', '-req', '-in', csr, '-CA', ca.crt, '-CAkey', ca.key, '-CAcreateserial', '-out', cert, '-days', VALID_DAYS, '-extfile', ext]);
    await chmod(key, 0o600);
  }
  return { ca: ca.crt, cert, key };
}

export async function readSecret(file: string): Promise<string> {
  return (await readFile(file, 'utf8')).trim();
}
