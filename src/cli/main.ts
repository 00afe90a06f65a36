#!/usr/bin/env node
// cio: the command line. Every command talks to the cluster through an agent's
// API (found via the client config), except `cio cluster …`, which manages a
// local cluster's processes directly.
import '../util/quiet-warnings';
import path from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import cliProgress from 'cli-progress';
import type { ClusterSummary } from '../core/cluster-summary';
import { formatEvent } from '../core/event-format';
import type { ClusterEvent } from '../core/types';
import { UserError, errorMessage } from '../util/errors';
import { formatSize } from '../core/units';
import { ApiClient } from './api-client';
import { cioHome, loadClientConfig, saveClientConfig } from './client-config';
import { readFile } from 'node:fs/promises';
import type { Profile } from '../core/profiles';
import type { VolumeRecord } from '../core/types';
import { clusterDetail, nodeDetail, nodeTable, profileDetail, profileTable, volumeDetail, volumeTable, type NodeView, type VolumeView } from './views';
import {
  API_PORT,
  clusterDown,
  clusterNodeAction,
  clusterProcesses,
  clusterUp,
  type NodeAction,
} from '../cluster/launcher';
import { runDemo } from '../cluster/demo';

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('must be a whole number of at least 1');
  return n;
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

function print(text: string): void {
  process.stdout.write(`${text}\n`);
}

function printJson(value: unknown): void {
  print(JSON.stringify(value, null, 2));
}

async function api(): Promise<ApiClient> {
  return new ApiClient(await loadClientConfig());
}

/** Progress bars, one per copy being rebuilt, until no rebuild is left. */
async function watchRebuilds(fetch: () => Promise<VolumeView>): Promise<void> {
  const bars = new cliProgress.MultiBar(
    { format: ' {replica} {mode} [{bar}] {percentage}% | {rate}/s | {eta_formatted} left', hideCursor: true, clearOnComplete: false },
    cliProgress.Presets.shades_classic,
  );
  const shown = new Map<string, cliProgress.SingleBar>();
  try {
    for (;;) {
      const v = await fetch();
      const running = v.replicas.filter((r) => r.state === 'rebuilding' || r.rebuild);
      for (const r of running) {
        const p = r.rebuild;
        const payload = { replica: `${r.nodeName ?? r.nodeId}:${r.id}`, mode: p?.mode ?? 'waiting', rate: formatSize(p?.bytesPerSecond ?? 0) };
        let bar = shown.get(r.id);
        if (!bar) shown.set(r.id, (bar = bars.create(100, 0, payload)));
        bar.update(Math.floor(p?.percent ?? 0), payload);
      }
      for (const [id, bar] of shown) {
        if (!running.some((r) => r.id === id)) bar.update(100);
      }
      if (running.length === 0) return;
      await new Promise((r) => setTimeout(r, 1000));
    }
  } finally {
    bars.stop();
  }
}

function defaultClusterDir(): string {
  return path.join(cioHome(), 'cluster');
}

export function buildProgram(): Command {
  const program = new Command('cio')
    .description('cio: highly available replicated volumes for stateful containers')
    .version('0.1.0')
    .exitOverride()
    .configureOutput({ outputError: (str, write) => write(`cio: ${str.replace(/^error: /, '')}`) });

  // ---- nodes
  const node = program.command('node').description('nodes of the cluster');
  node
    .command('ls')
    .description('list the nodes')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const nodes = await (await api()).get<NodeView[]>('/v1/nodes');
      if (o.json) printJson(nodes);
      else print(nodeTable(nodes));
    });
  node
    .command('info <name>')
    .description('show one node (by name or NODE_ID)')
    .option('--json', 'print JSON')
    .action(async (name: string, o: { json?: boolean }) => {
      const n = await (await api()).get<NodeView>(`/v1/nodes/${encodeURIComponent(name)}`);
      if (o.json) printJson(n);
      else print(nodeDetail(n));
    });
  for (const action of ['cordon', 'uncordon'] as const) {
    node
      .command(`${action} <name>`)
      .description(action === 'cordon' ? 'place no new replicas on a node' : 'allow new replicas on a node again')
      .action(async (name: string) => {
        const n = await (await api()).post<NodeView>(`/v1/nodes/${encodeURIComponent(name)}/${action}`);
        print(`node ${n.name} (${n.id}) ${action === 'cordon' ? 'cordoned: it gets no new replicas' : 'uncordoned'}`);
      });
  }

  // ---- volumes
  const volume = program.command('volume').description('replicated volumes');
  volume
    .command('create <name>')
    .description('create a volume (options override the profile)')
    .option('--capacity <size>', 'size, in GB unless a unit is given (e.g. 20, 512MB)')
    .option('--level <n>', 'copies: 1, 2 or 3')
    .option('--type <type>', 'drive type: ssd, hdd or nvme')
    .option('--provision <p>', 'thin or thick')
    .option('--filesystem <fs>', 'ext4 or xfs')
    .option('--iopsmin <n>', 'minimum IOPS (kept for QoS)')
    .option('--iopsmax <n>', 'maximum IOPS (kept for QoS)')
    .option('--profile <name>', 'profile giving the defaults')
    .option('--node <node>', 'put a copy on this node')
    .option('--json', 'print JSON')
    .action(async (name: string, o: Record<string, string | boolean | undefined>) => {
      const options: Record<string, string> = {};
      for (const key of ['capacity', 'level', 'type', 'provision', 'filesystem', 'iopsmin', 'iopsmax']) {
        if (typeof o[key] === 'string') options[key] = o[key] as string;
      }
      const v = await (await api()).post<VolumeRecord>('/v1/volumes', { name, options, profile: o.profile, node: o.node });
      if (o.json) printJson(v);
      else print(`volume ${v.name} (${v.vdisk}, uuid ${v.uuid}) created: ${v.level}-copy, ${v.driveType}, ${v.provision}, ${v.filesystem}`);
    });
  volume
    .command('ls')
    .description('list the volumes')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const client = await api();
      const [volumes, nodes] = await Promise.all([client.get<VolumeRecord[]>('/v1/volumes'), client.get<NodeView[]>('/v1/nodes')]);
      if (o.json) printJson(volumes);
      else print(volumeTable(volumes, nodes));
    });
  volume
    .command('info <name>')
    .description('one volume: owner, NBD URI, epoch, copies and their states')
    .option('--json', 'print JSON')
    .option('--watch', 'show progress bars while copies are rebuilt, until they are done')
    .action(async (name: string, o: { json?: boolean; watch?: boolean }) => {
      const client = await api();
      const path = `/v1/volumes/${encodeURIComponent(name)}`;
      const v = await client.get<VolumeView>(path);
      if (o.json) printJson(v);
      else print(volumeDetail(v));
      if (o.watch) await watchRebuilds(() => client.get<VolumeView>(path));
    });
  volume
    .command('rm <name>')
    .description('remove a volume and its copies (refused while attached)')
    .action(async (name: string) => {
      await (await api()).request('DELETE', `/v1/volumes/${encodeURIComponent(name)}`);
      print(`volume ${name} removed`);
    });
  volume
    .command('update <name>')
    .description('grow a volume')
    .requiredOption('--capacity <size>', 'new size, in GB unless a unit is given')
    .action(async (name: string, o: { capacity: string }) => {
      const v = await (await api()).request<VolumeRecord>('PATCH', `/v1/volumes/${encodeURIComponent(name)}`, { capacity: o.capacity });
      print(`volume ${v.name} is now ${formatSize(v.sizeBytes)}`);
    });
  volume
    .command('attach <name>')
    .description('make a node the owner and export the volume over NBD there')
    .option('--node <node>', 'the node (default: the agent that answers)')
    .option('--json', 'print JSON')
    .action(async (name: string, o: { node?: string; json?: boolean }) => {
      let client = await api();
      if (o.node) {
        // Asked of the target node's own agent first: it need not be reachable from the others' side of a failure.
        const target = (await client.get<NodeView[]>('/v1/nodes')).find((n) => n.name === o.node || n.id === o.node);
        if (target) client = client.preferring(target.ip);
      }
      const v = await client.post<VolumeRecord>(`/v1/volumes/${encodeURIComponent(name)}/attach`, { node: o.node });
      if (o.json) printJson(v);
      else print(`volume ${v.name} attached (epoch ${v.epoch}): ${v.attachment?.uri ?? ''}`);
    });
  volume
    .command('detach <name>')
    .description('stop serving the volume and release ownership')
    .action(async (name: string) => {
      await (await api()).post(`/v1/volumes/${encodeURIComponent(name)}/detach`);
      print(`volume ${name} detached`);
    });

  // ---- profiles
  const profile = program.command('profile').description('volume profiles (YAML)');
  profile
    .command('create <file>')
    .description('add a profile from a YAML file')
    .option('--replace', 'replace a profile of the same name')
    .action(async (file: string, o: { replace?: boolean }) => {
      let yaml: string;
      try {
        yaml = await readFile(file, 'utf8');
      } catch (err) {
        throw new UserError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
      const p = await (await api()).post<Profile>('/v1/profiles', { yaml, source: file, replace: o.replace === true });
      print(`profile ${p.name} ${o.replace ? 'saved' : 'created'}`);
    });
  profile
    .command('ls')
    .description('list profiles')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const ps = await (await api()).get<Profile[]>('/v1/profiles');
      if (o.json) printJson(ps);
      else print(profileTable(ps));
    });
  profile
    .command('info <name>')
    .description('show a profile as YAML')
    .option('--json', 'print JSON')
    .action(async (name: string, o: { json?: boolean }) => {
      const p = await (await api()).get<Profile>(`/v1/profiles/${encodeURIComponent(name)}`);
      if (o.json) printJson(p);
      else print(profileDetail(p));
    });
  profile
    .command('rm <name>')
    .description('remove a user profile')
    .action(async (name: string) => {
      await (await api()).request('DELETE', `/v1/profiles/${encodeURIComponent(name)}`);
      print(`profile ${name.toUpperCase()} removed`);
    });

  // ---- cluster summary
  program
    .command('info')
    .description('cluster summary: nodes, capacity, condition')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const summary = await (await api()).get<ClusterSummary>('/v1/info');
      if (o.json) printJson(summary);
      else print(clusterDetail(summary));
    });

  // ---- events
  program
    .command('events')
    .description('the cluster event log')
    .option('-n, --lines <n>', 'how many of the latest events', positiveInt, 50)
    .option('-f, --follow', 'keep printing new events')
    .option('--json', 'print JSON (one event per line with --follow)')
    .action(async (o: { lines: number; follow?: boolean; json?: boolean }) => {
      const client = await api();
      const events = await client.get<ClusterEvent[]>(`/v1/events?n=${o.lines}`);
      const show = (e: ClusterEvent): void => print(o.json ? JSON.stringify(e) : formatEvent(e));
      if (o.json && !o.follow) printJson(events);
      else events.forEach(show);
      if (!o.follow) return;
      for await (const e of client.stream<ClusterEvent>('/v1/events/follow')) show(e);
      throw new UserError('the agent closed the event stream');
    });

  // ---- local cluster
  const cluster = program.command('cluster').description('a local cluster on this machine (for trying cio and for tests)');
  cluster
    .command('up')
    .description('start etcd and N agents on loopback addresses')
    .option('--nodes <n>', 'number of nodes', positiveInt, 4)
    .option('--dir <dir>', 'where the cluster keeps its files', defaultClusterDir())
    .option('--name <name>', 'cluster name', 'cio')
    .option('--ip-prefix <prefix>', 'loopback prefix; etcd gets .10, nodes .11 …', '127.0.0.')
    .option('--lease-ttl <seconds>', 'node lease TTL', positiveInt, 5)
    .option('--rebuild-grace <seconds>', 'wait this long before replacing copies on a failed node', positiveInt, 30)
    .option('--repair-delay <seconds>', 'a detached volume below its level is repaired after this long', positiveInt, 60)
    .option('--replica-timeout <ms>', 'a copy silent this long is marked stale', positiveInt, 5000)
    .option('--rebuild-rate <MiBps>', 'cap on rebuild copying per copy, MiB/s (0: none)', (v) => {
      const n = Number(v);
      if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError('must be a number of MiB/s, 0 for no cap');
      return n;
    }, 0)
    .option('--drive <type:capacity>', 'a drive on every node (repeatable)', collect)
    .option('--log-level <level>', 'agent log level', 'info')
    .option('--quiet', 'do not print progress')
    .action(async (o: { nodes: number; dir: string; name: string; ipPrefix: string; leaseTtl: number; rebuildGrace: number; repairDelay: number; replicaTimeout: number; rebuildRate: number; drive?: string[]; logLevel: string; quiet?: boolean }) => {
      const drives = o.drive ?? ['ssd:100GB'];
      const progress = (line: string): void => {
        if (!o.quiet) process.stderr.write(`${line}\n`);
      };
      const state = await clusterUp({
        dir: o.dir, nodes: o.nodes, name: o.name, ipPrefix: o.ipPrefix, leaseTtlSeconds: o.leaseTtl,
        rebuildGraceSeconds: o.rebuildGrace, repairDelaySeconds: o.repairDelay, replicaTimeoutMs: o.replicaTimeout, rebuildMaxMiBps: o.rebuildRate, drives, logLevel: o.logLevel, progress,
      });
      const file = await saveClientConfig({
        cluster: state.name,
        endpoints: state.nodes.map((n) => `https://${n.ip}:${API_PORT}`),
        ...state.cli,
      });
      progress(`cluster ${state.name} is up; client config written to ${file}`);
      const nodes = await (await api()).get<NodeView[]>('/v1/nodes');
      print(nodeTable(nodes));
    });
  cluster
    .command('down')
    .description('stop everything the local cluster started')
    .option('--dir <dir>', 'the cluster directory', defaultClusterDir())
    .option('--wipe', 'also delete the cluster directory (all data)')
    .action(async (o: { dir: string; wipe?: boolean }) => {
      const res = await clusterDown({ dir: o.dir, wipe: o.wipe ?? false });
      print(`stopped: ${res.stopped.join(', ') || 'nothing was running'}${res.wiped ? `; removed ${path.resolve(o.dir)}` : ''}`);
    });
  cluster
    .command('ps')
    .description('the local cluster processes')
    .option('--dir <dir>', 'the cluster directory', defaultClusterDir())
    .action(async (o: { dir: string }) => {
      for (const p of await clusterProcesses(o.dir)) print(`${p.name.padEnd(8)}${String(p.pid ?? '-').padEnd(10)}${p.state}`);
    });
  cluster
    .command('demo')
    .description("tell the seed's story on a fresh local 4-node cluster, then stop it")
    .action(async () => runDemo({ out: print }));
  const nodeActions: Array<[NodeAction, string]> = [
    ['kill', 'SIGKILL a node, as a power loss'],
    ['pause', 'SIGSTOP a node (it freezes, its lease runs out)'],
    ['resume', 'SIGCONT a paused node'],
    ['start', 'start a stopped or killed node again (same id and data)'],
    ['stop', 'stop a node gracefully'],
  ];
  for (const [action, description] of nodeActions) {
    cluster
      .command(`${action} <node>`)
      .description(description)
      .option('--dir <dir>', 'the cluster directory', defaultClusterDir())
      .action(async (nodeName: string, o: { dir: string }) => print(await clusterNodeAction(o.dir, nodeName, action)));
  }
  return program;
}

async function main(): Promise<void> {
  await buildProgram().parseAsync(process.argv);
}

main().catch((err: unknown) => {
  const code = (err as { code?: string }).code;
  if (code === 'commander.helpDisplayed' || code === 'commander.version' || code === 'commander.help') process.exit(0);
  // commander has already printed its one line.
  if (typeof code === 'string' && code.startsWith('commander.')) process.exit(2);
  if (!(err instanceof UserError)) {
    process.stderr.write(`cio: internal error: ${errorMessage(err)}\n`);
    if (process.env.CIO_DEBUG) process.stderr.write(`${(err as Error).stack}\n`);
    process.exit(70);
  }
  process.stderr.write(`cio: ${err.message}\n`);
  process.exit(1);
});
