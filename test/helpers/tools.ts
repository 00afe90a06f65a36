// Running the independent NBD clients (nbdinfo, nbdcopy, qemu-img, fio) and
// other tools from tests, with output captured for assertion messages.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';

export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function tool(cmd: string, args: string[], timeoutMs = 300_000): Promise<ToolResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

export async function mustRun(cmd: string, args: string[], timeoutMs?: number): Promise<string> {
  const res = await tool(cmd, args, timeoutMs);
  if (res.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${res.code}: ${res.stderr.slice(-2000)}`);
  return res.stdout;
}

export function sha256File(file: string, length?: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    createReadStream(file, length === undefined ? {} : { start: 0, end: length - 1 })
      .on('data', (c) => hash.update(c))
      .on('end', () => resolve(hash.digest('hex')))
      .on('error', reject);
  });
}

/** Write a file and fsync it, as an application that needs its data durable would. */
export async function writeSynced(file: string, data: Buffer): Promise<void> {
  const fh = await open(file, 'w');
  try {
    await fh.write(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}
