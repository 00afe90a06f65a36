// The agent's configuration: a YAML file, overridden by command-line flags.
// Validation gives one clear sentence naming the bad field.
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import YAML from 'yaml';
import { z } from 'zod';
import { DRIVE_TYPES } from '../core/types';
import { parseSize } from '../core/units';
import { UserError } from '../util/errors';

export const NODE_NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;

const sizeField = z.union([z.number().int().positive(), z.string()]).transform((v, ctx) => {
  try {
    return typeof v === 'number' ? v : parseSize(v);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
    return z.NEVER;
  }
});

const driveSchema = z.object({
  id: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,31}$/, 'drive id: lowercase letters, digits, - and _').optional(),
  path: z.string().min(1),
  type: z.string().transform((v) => v.toUpperCase()).pipe(z.enum(DRIVE_TYPES)),
  capacity: sizeField,
});

export const agentConfigSchema = z.object({
  clusterName: z.string().regex(NODE_NAME_PATTERN, 'cluster name: letters, digits, ., - and _').default('cio'),
  name: z.string().regex(NODE_NAME_PATTERN, 'node name: letters, digits, ., - and _, at most 63 characters'),
  ip: z.string().refine((v) => isIP(v) !== 0, 'ip: not an IP address'),
  apiPort: z.number().int().min(1).max(65535).default(7411),
  replicaPort: z.number().int().min(1).max(65535).default(7412),
  dataDir: z.string().min(1),
  etcd: z.object({ endpoints: z.array(z.string().url()).min(1) }),
  tls: z.object({ ca: z.string(), cert: z.string(), key: z.string(), token: z.string(), replicaSecret: z.string() }),
  drives: z.array(driveSchema).min(1, 'drives: at least one drive is needed'),
  leaseTtlSeconds: z.number().int().min(2).max(600).default(5),
  /** A copy that does not answer a request within this time is marked stale. */
  replicaTimeoutMs: z.number().int().min(100).max(600_000).default(5000),
  /** Copies on a failed node are replaced after this long (a node back sooner is resynced instead). */
  rebuildGraceSeconds: z.number().int().min(0).max(86_400).default(30),
  /**
   * A volume nobody uses that is below its level is taken to be repaired once
   * it has been so this long (an application restarting elsewhere usually
   * attaches it sooner, and then its owner repairs it).
   */
  repairDelaySeconds: z.number().int().min(0).max(86_400).default(60),
  /** Cap on rebuild copying per copy, in MiB/s (0: none). */
  rebuildMaxMiBps: z.number().min(0).max(100_000).default(0),
  /** Unix socket of the Docker volume plugin; '' leaves the plugin off. */
  pluginSocket: z.string().default('/run/docker/plugins/cio.sock'),
  /** Docker volumes are mounted at mountRoot/NAME. */
  mountRoot: z.string().min(1).default('/cio/volumes'),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info'),
});

export type AgentConfig = z.infer<typeof agentConfigSchema>;

/** One line per problem, naming the field: what a user fixing a config file needs. */
export function describeZodError(err: z.ZodError): string {
  return err.issues.map((i) => `${i.path.length ? i.path.join('.') : 'config'}: ${i.message}`).join('; ');
}

export function parseAgentConfig(raw: unknown, source: string): AgentConfig {
  const parsed = agentConfigSchema.safeParse(raw);
  if (!parsed.success) throw new UserError(`bad agent config ${source}: ${describeZodError(parsed.error)}`);
  const ids = new Set<string>();
  parsed.data.drives.forEach((d, i) => {
    d.id ??= `d${i + 1}`;
    if (ids.has(d.id)) throw new UserError(`bad agent config ${source}: drive id ${d.id} appears twice`);
    ids.add(d.id);
  });
  return parsed.data;
}

export async function loadAgentConfigFile(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new UserError(`cannot read agent config ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  try {
    return YAML.parse(text) as unknown;
  } catch (err) {
    throw new UserError(`agent config ${file} is not valid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
}
