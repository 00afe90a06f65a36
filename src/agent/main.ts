#!/usr/bin/env node
// ciod: the node agent's command line. Config from a YAML file, flags override.
import '../util/quiet-warnings';
import { Command, InvalidArgumentError } from 'commander';
import { UserError, errorMessage } from '../util/errors';
import { createLogger } from '../util/log';
import { Agent } from './agent';
import { loadAgentConfigFile, parseAgentConfig } from './config';

function intFlag(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new InvalidArgumentError('not a whole number');
  return n;
}

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

interface Flags {
  config?: string;
  name?: string;
  ip?: string;
  apiPort?: number;
  replicaPort?: number;
  dataDir?: string;
  etcd?: string;
  drive?: string[];
  leaseTtl?: number;
  ca?: string;
  cert?: string;
  key?: string;
  tokenFile?: string;
  replicaSecretFile?: string;
  clusterName?: string;
  logLevel?: string;
}

/** `--drive PATH:TYPE:CAPACITY`, e.g. /var/lib/cio/d1:ssd:100GB */
function parseDriveFlag(text: string): { path: string; type: string; capacity: string } {
  const parts = text.split(':');
  if (parts.length !== 3 || parts.some((p) => p === '')) throw new UserError(`--drive ${text}: expected PATH:TYPE:CAPACITY, e.g. /srv/cio/d1:ssd:100GB`);
  return { path: parts[0], type: parts[1], capacity: parts[2] };
}

async function main(): Promise<void> {
  const program = new Command('ciod')
    .description('cio node agent')
    .option('-c, --config <file>', 'agent config file (YAML)')
    .option('--cluster-name <name>', 'cluster name (recorded by the first agent)')
    .option('--name <name>', 'node name')
    .option('--ip <ip>', 'IP address to bind and advertise')
    .option('--api-port <port>', 'API port', intFlag)
    .option('--replica-port <port>', 'replica server port', intFlag)
    .option('--data-dir <dir>', 'data directory (node id, state)')
    .option('--etcd <urls>', 'etcd endpoints, comma-separated')
    .option('--drive <path:type:capacity>', 'a drive (repeatable)', collect)
    .option('--lease-ttl <seconds>', 'node lease TTL', intFlag)
    .option('--ca <file>', 'cluster CA certificate')
    .option('--cert <file>', 'this node certificate')
    .option('--key <file>', 'this node key')
    .option('--token-file <file>', 'file holding the cluster API token')
    .option('--replica-secret-file <file>', 'file holding the replica traffic secret')
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace')
    .showHelpAfterError(false)
    .exitOverride();
  program.parse(process.argv);
  const flags = program.opts<Flags>();

  const fromFile = flags.config ? ((await loadAgentConfigFile(flags.config)) ?? {}) : {};
  if (typeof fromFile !== 'object' || Array.isArray(fromFile)) throw new UserError(`agent config ${flags.config}: expected a YAML mapping`);
  const raw: Record<string, unknown> = { ...(fromFile as Record<string, unknown>) };
  const set = (key: string, value: unknown): void => {
    if (value !== undefined) raw[key] = value;
  };
  set('clusterName', flags.clusterName);
  set('name', flags.name);
  set('ip', flags.ip);
  set('apiPort', flags.apiPort);
  set('replicaPort', flags.replicaPort);
  set('dataDir', flags.dataDir);
  set('leaseTtlSeconds', flags.leaseTtl);
  set('logLevel', flags.logLevel);
  if (flags.etcd) raw.etcd = { endpoints: flags.etcd.split(',') };
  if (flags.drive) raw.drives = flags.drive.map(parseDriveFlag);
  const tls = { ...((raw.tls as Record<string, unknown> | undefined) ?? {}) };
  for (const [key, value] of [['ca', flags.ca], ['cert', flags.cert], ['key', flags.key], ['token', flags.tokenFile], ['replicaSecret', flags.replicaSecretFile]] as const) {
    if (value !== undefined) tls[key] = value;
  }
  raw.tls = tls;
  const config = parseAgentConfig(raw, flags.config ?? '(flags)');

  const logger = createLogger('ciod', config.logLevel).child({ node: config.name });
  const agent = new Agent(config, logger);
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'stopping');
    const force = setTimeout(() => process.exit(1), 10_000);
    force.unref();
    void agent.stop().finally(() => process.exit(0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  try {
    await agent.start();
  } catch (err) {
    await agent.stop().catch(() => undefined);
    throw err;
  }
}

main().catch((err: unknown) => {
  const code = (err as { code?: string }).code;
  if (code === 'commander.helpDisplayed' || code === 'commander.version') process.exit(0);
  if (typeof code === 'string' && code.startsWith('commander.')) process.exit(2);
  process.stderr.write(`ciod: ${errorMessage(err)}\n`);
  process.exit(1);
});
