// The CLI's client config: which cluster to talk to and with which
// certificate, kept in $CIO_HOME/config.yaml (default ~/.cio), like a docker context.
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import YAML from 'yaml';
import { z } from 'zod';
import { describeZodError } from '../agent/config';
import { UserError } from '../util/errors';

export const clientConfigSchema = z.object({
  cluster: z.string().min(1),
  endpoints: z.array(z.string().url()).min(1),
  ca: z.string().min(1),
  cert: z.string().min(1),
  key: z.string().min(1),
});
export type ClientConfig = z.infer<typeof clientConfigSchema>;

export function cioHome(): string {
  return process.env.CIO_HOME ?? path.join(os.homedir(), '.cio');
}

export function clientConfigPath(): string {
  return path.join(cioHome(), 'config.yaml');
}

export async function loadClientConfig(): Promise<ClientConfig> {
  const file = clientConfigPath();
  if (!existsSync(file)) {
    throw new UserError(`no cluster configured: ${file} does not exist (start one with \`cio cluster up\`, or write that file)`);
  }
  let raw: unknown;
  try {
    raw = YAML.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new UserError(`client config ${file} is not valid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  const parsed = clientConfigSchema.safeParse(raw);
  if (!parsed.success) throw new UserError(`bad client config ${file}: ${describeZodError(parsed.error)}`);
  return parsed.data;
}

export async function saveClientConfig(config: ClientConfig): Promise<string> {
  const file = clientConfigPath();
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.tmp`;
  await writeFile(tmp, YAML.stringify(config), { mode: 0o600 });
  await rename(tmp, file);
  return file;
}
