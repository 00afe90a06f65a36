// NODE_ID: 8 hex digits, created once and kept in the node's data directory,
// so a node that restarts (or reboots) comes back as itself.
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';

const NODE_ID_PATTERN = /^[0-9a-f]{8}$/;

export async function loadOrCreateNodeId(dataDir: string): Promise<string> {
  const file = path.join(dataDir, 'node-id');
  try {
    const id = (await readFile(file, 'utf8')).trim();
    if (!NODE_ID_PATTERN.test(id)) throw new Error(`${file} holds "${id}", not an 8-hex node id; fix or remove it`);
    return id;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  await mkdir(dataDir, { recursive: true });
  const id = randomBytes(4).toString('hex');
  const tmp = `${file}.tmp`;
  await writeFile(tmp, `${id}\n`, { flush: true });
  await rename(tmp, file);
  return id;
}
