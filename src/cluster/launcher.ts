// `cio cluster …`: a whole cio cluster on one machine, for trying cio and for
// the tests. One etcd and N agents, each agent on its own loopback address
// with its own drive directories, all authenticated by a CA made here.
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import YAML from 'yaml';
import type { Etcd3 } from 'etcd3';
import type { NodeRecord } from '../core/types';
import { formatSize, parseSize } from '../core/units';
import { caPaths, ensureCa, issueCert } from '../security/pki';
import { connectEtcd } from '../store/etcd';
import { listNodes } from '../store/nodes';
import { UserError } from '../util/errors';
import { run } from '../util/exec';
import { silentLogger } from '../util/log';
import { readMounts } from '../attach/mounts';
import { sweepUnrecordedLoops } from '../attach/nbdfuse';
import { isOurProcess, processState, signalGroup, startDaemon, stopDaemon, waitForExit } from './processes';
import { readState, writeState, type LocalClusterState, type LocalNode } from './state';

export interface UpOptions {
  dir: string;
  nodes: number;
  name: string;
  /** First three octets and a dot, e.g. "127.0.0."; etcd gets .10, nodes .11, .12 … */
  ipPrefix: string;
  leaseTtlSeconds: number;
  /** Seconds before copies on a failed node are replaced. */
  rebuildGraceSeconds: number;
  /** Seconds a detached volume below its level waits before a node takes it to repair it. */
  repairDelaySeconds: number;
  /** A copy silent this long is marked stale. */
  replicaTimeoutMs: number;
  /** Rebuild copy cap in MiB/s (0: none). */
  rebuildMaxMiBps: number;
  /** Per node: "ssd:100GB" … */
  drives: string[];
  logLevel: string;
  /** Reports progress lines to the user. */
  progress: (line: string) => void;
}

const ETCD_CLIENT_PORT = 2379;
/**
 * Each agent reaches etcd on a port of its own (base + node number), so that a
 * test can cut one node off from etcd — on one machine every loopback
 * connection leaves from 127.0.0.1, so addresses alone cannot tell nodes apart.
 */
export const ETCD_NODE_PORT_BASE = 23790;
const ETCD_PEER_PORT = 2380;
const API_PORT = 7411;
const REPLICA_PORT = 7412;
const MAX_NODES = 32;

const AGENT_MAIN = path.resolve(__dirname, '../agent/main.js');

function parseDriveSpec(spec: string): { type: string; capacity: number } {
  const [type, capacity, ...rest] = spec.split(':');
  if (!type || !capacity || rest.length) throw new UserError(`--drive ${spec}: expected TYPE:CAPACITY, e.g. ssd:100GB`);
  if (!['ssd', 'hdd', 'nvme'].includes(type.toLowerCase())) throw new UserError(`--drive ${spec}: type must be ssd, hdd or nvme`);
  return { type: type.toUpperCase(), capacity: parseSize(capacity) };
}

function validateIpPrefix(prefix: string): void {
  if (!/^127\.\d{1,3}\.\d{1,3}\.$/.test(prefix) || prefix.split('.').slice(1, 3).some((o) => Number(o) > 255)) {
    throw new UserError(`--ip-prefix ${prefix}: must be a loopback prefix such as 127.0.0. (the local cluster only uses 127.0.0.0/8)`);
  }
}

function runningParts(state: LocalClusterState): string[] {
  const parts: string[] = [];
  if (isOurProcess(state.etcd.pid, state.etcd.dataDir)) parts.push('etcd');
  for (const n of state.nodes) if (isOurProcess(n.pid, n.configFile)) parts.push(n.name);
  return parts;
}

async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError = '';
  while (Date.now() < deadline) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (err) {
      lastError = (err as Error).message;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new UserError(`timed out waiting for ${what}${lastError ? ` (${lastError})` : ''}`);
}

export function etcdClientFor(state: LocalClusterState): Etcd3 {
  return connectEtcd({ endpoints: [state.etcd.clientUrl], tls: state.cli, callTimeoutMs: 2000 });
}

/** Extra Node.js flags for the agents (e.g. CIO_AGENT_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" to profile). */
function agentNodeArgs(): string[] {
  return (process.env.CIO_AGENT_NODE_ARGS ?? '').split(' ').filter(Boolean);
}

function startAgent(node: LocalNode): number {
  return startDaemon({ command: process.execPath, args: [...agentNodeArgs(), AGENT_MAIN, '--config', node.configFile], logFile: node.logFile });
}

export async function clusterUp(opts: UpOptions): Promise<LocalClusterState> {
  if (!Number.isInteger(opts.nodes) || opts.nodes < 1 || opts.nodes > MAX_NODES) throw new UserError(`--nodes must be from 1 to ${MAX_NODES}`);
  validateIpPrefix(opts.ipPrefix);
  const drives = opts.drives.map(parseDriveSpec);
  if (drives.length === 0) throw new UserError('at least one --drive is needed');
  const dir = path.resolve(opts.dir);
  const previous = await readState(dir);
  if (previous) {
    const running = runningParts(previous);
    if (running.length) throw new UserError(`a cluster is already up in ${dir} (running: ${running.join(', ')}); stop it with \`cio cluster down\` first`);
  }

  opts.progress(`${opts.nodes} nodes, each with ${drives.map((d) => `${d.type} ${formatSize(d.capacity)}`).join(', ')}`);
  await mkdir(path.join(dir, 'logs'), { recursive: true });
  const pki = path.join(dir, 'pki');
  opts.progress(`creating the cluster CA and certificates in ${pki}`);
  await ensureCa(pki, opts.name);
  const etcdIp = `${opts.ipPrefix}10`;
  const etcdCert = await issueCert(pki, 'etcd', [etcdIp, '127.0.0.1']);
  const cliCert = await issueCert(pki, 'cli', ['127.0.0.1']);
  const ca = caPaths(pki);

  const clientUrl = `https://${etcdIp}:${ETCD_CLIENT_PORT}`;
  const peerUrl = `http://${etcdIp}:${ETCD_PEER_PORT}`;
  const etcdData = path.join(dir, 'etcd');
  const nodeEtcdUrl = (i: number): string => `https://${etcdIp}:${ETCD_NODE_PORT_BASE + i + 1}`;
  const etcdArgs = [
    '--name', 'cio-etcd', '--data-dir', etcdData,
    '--listen-client-urls', [clientUrl, ...Array.from({ length: opts.nodes }, (_, i) => nodeEtcdUrl(i))].join(','),
    '--advertise-client-urls', clientUrl,
    '--listen-peer-urls', peerUrl, '--initial-advertise-peer-urls', peerUrl,
    '--initial-cluster', `cio-etcd=${peerUrl}`,
    '--cert-file', etcdCert.cert, '--key-file', etcdCert.key,
    '--client-cert-auth', '--trusted-ca-file', etcdCert.ca,
    '--logger', 'zap', '--log-level', 'warn',
  ];
  const nodes: LocalNode[] = [];
  for (let i = 0; i < opts.nodes; i++) {
    const name = `v${i + 1}`;
    const ip = `${opts.ipPrefix}${11 + i}`;
    const nodeDir = path.join(dir, 'nodes', name);
    const cert = await issueCert(pki, name, [ip]);
    const config = {
      clusterName: opts.name,
      name,
      ip,
      apiPort: API_PORT,
      replicaPort: REPLICA_PORT,
      dataDir: path.join(nodeDir, 'data'),
      etcd: { endpoints: [nodeEtcdUrl(i)] },
      tls: { ca: cert.ca, cert: cert.cert, key: cert.key, token: ca.token, replicaSecret: ca.secret },
      drives: drives.map((d, j) => ({ id: `d${j + 1}`, path: path.join(nodeDir, 'drives', `d${j + 1}`), type: d.type, capacity: d.capacity })),
      leaseTtlSeconds: opts.leaseTtlSeconds,
      rebuildGraceSeconds: opts.rebuildGraceSeconds,
      repairDelaySeconds: opts.repairDelaySeconds,
      replicaTimeoutMs: opts.replicaTimeoutMs,
      rebuildMaxMiBps: opts.rebuildMaxMiBps,
      // Per node, so that several agents on one machine do not share Docker's socket or mount root.
      pluginSocket: path.join(nodeDir, 'plugin', 'cio.sock'),
      mountRoot: path.join(nodeDir, 'mnt'),
      logLevel: opts.logLevel,
    };
    await mkdir(nodeDir, { recursive: true });
    const configFile = path.join(nodeDir, 'ciod.yaml');
    await writeFile(configFile, YAML.stringify(config));
    nodes.push({ name, ip, configFile, logFile: path.join(dir, 'logs', `${name}.log`) });
  }

  const state: LocalClusterState = {
    name: opts.name,
    dir,
    createdAt: new Date().toISOString(),
    etcd: { clientUrl, dataDir: etcdData, logFile: path.join(dir, 'logs', 'etcd.log'), args: etcdArgs },
    nodes,
    cli: { ca: cliCert.ca, cert: cliCert.cert, key: cliCert.key },
  };

  opts.progress(`starting etcd on ${clientUrl}`);
  state.etcd.pid = startDaemon({ command: 'etcd', args: etcdArgs, logFile: state.etcd.logFile });
  await writeState(state);
  const etcd = etcdClientFor(state);
  try {
    await waitFor('etcd to answer', 20_000, async () => {
      if (!isOurProcess(state.etcd.pid, etcdData)) throw new UserError(`etcd exited at start; see ${state.etcd.logFile}`);
      await etcd.get('/cio/cluster').string();
      return true;
    });
    // Agents join one after another so roles follow node order (v1 sds, v2 backup1, …).
    for (const node of nodes) {
      opts.progress(`starting ciod ${node.name} on ${node.ip}`);
      node.pid = startAgent(node);
      await writeState(state);
      await waitFor(`${node.name} to register (see ${node.logFile})`, 30_000, async () => {
        if (!isOurProcess(node.pid, node.configFile)) throw new UserError(`ciod ${node.name} exited at start; see ${node.logFile}`);
        return (await listNodes(etcd)).find((n) => n.name === node.name);
      });
    }
    opts.progress('waiting for every node to be normal');
    await waitForNodes(etcd, nodes.map((n) => n.name), 'normal', 30_000);
  } catch (err) {
    etcd.close();
    await clusterDown({ dir, wipe: false }).catch(() => undefined);
    throw err;
  }
  etcd.close();
  return state;
}

export async function waitForNodes(etcd: Etcd3, names: string[], status: NodeRecord['status'], timeoutMs: number): Promise<NodeRecord[]> {
  return waitFor(`nodes ${names.join(', ')} to be ${status}`, timeoutMs, async () => {
    const all = await listNodes(etcd);
    const wanted = all.filter((n) => names.includes(n.name));
    return wanted.length === names.length && wanted.every((n) => n.status === status) ? all : undefined;
  });
}

async function requireState(dir: string): Promise<LocalClusterState> {
  const state = await readState(path.resolve(dir));
  if (!state) throw new UserError(`no local cluster in ${path.resolve(dir)} (start one with \`cio cluster up\`)`);
  return state;
}

export interface DownResult {
  stopped: string[];
  wiped: boolean;
}

export async function clusterDown(opts: { dir: string; wipe: boolean }): Promise<DownResult> {
  const dir = path.resolve(opts.dir);
  const state = await readState(dir);
  if (!state) {
    if (opts.wipe) await rm(dir, { recursive: true, force: true });
    throw new UserError(`no local cluster in ${dir}: nothing to stop`);
  }
  const stopped: string[] = [];
  await Promise.all(
    state.nodes.map(async (n) => {
      if (n.pid && isOurProcess(n.pid, n.configFile)) {
        await stopDaemon(n.pid, n.configFile);
        stopped.push(n.name);
      }
    }),
  );
  if (state.etcd.pid && isOurProcess(state.etcd.pid, state.etcd.dataDir)) {
    await stopDaemon(state.etcd.pid, state.etcd.dataDir);
    stopped.push('etcd');
  }
  // Mounts and loop devices a killed agent left under the cluster's directory.
  await releaseMountsUnder(dir);
  if (opts.wipe) {
    await rm(dir, { recursive: true, force: true });
  } else {
    for (const n of state.nodes) delete n.pid;
    delete state.etcd.pid;
    await writeState(state);
  }
  if (stopped.length === 0 && !opts.wipe) throw new UserError(`the cluster in ${dir} was not running: nothing to stop`);
  return { stopped: stopped.sort(), wiped: opts.wipe };
}

/** Unmount (deepest first) whatever is mounted under `dir`, then free loop devices backed by files there. */
async function releaseMountsUnder(dir: string): Promise<void> {
  const prefix = `${dir}/`;
  const mounts = (await readMounts().catch(() => [])).filter((m) => m.mountpoint.startsWith(prefix));
  for (const m of mounts.sort((a, b) => b.mountpoint.length - a.mountpoint.length)) {
    await run('umount', ['-l', m.mountpoint]).catch(() => undefined);
  }
  await sweepUnrecordedLoops(dir, silentLogger).catch(() => undefined);
}

export type NodeAction = 'kill' | 'pause' | 'resume' | 'start' | 'stop';

export async function clusterNodeAction(dir: string, nodeName: string, action: NodeAction): Promise<string> {
  const state = await requireState(dir);
  const node = state.nodes.find((n) => n.name === nodeName);
  if (!node) throw new UserError(`no node ${nodeName} in the local cluster (nodes: ${state.nodes.map((n) => n.name).join(', ')})`);
  const running = node.pid !== undefined && isOurProcess(node.pid, node.configFile);
  const pid = node.pid ?? 0;
  switch (action) {
    case 'kill':
      if (!running) throw new UserError(`${nodeName} is not running`);
      signalGroup(pid, 'SIGKILL');
      await waitForExit(pid, node.configFile, 5000);
      return `${nodeName} killed (SIGKILL, pid ${pid})`;
    case 'stop':
      if (!running) throw new UserError(`${nodeName} is not running`);
      await stopDaemon(pid, node.configFile);
      return `${nodeName} stopped (pid ${pid})`;
    case 'pause':
      if (!running) throw new UserError(`${nodeName} is not running`);
      if (processState(pid) === 'T') throw new UserError(`${nodeName} is already paused`);
      signalGroup(pid, 'SIGSTOP');
      return `${nodeName} paused (SIGSTOP, pid ${pid})`;
    case 'resume':
      if (!running) throw new UserError(`${nodeName} is not running`);
      if (processState(pid) !== 'T') throw new UserError(`${nodeName} is not paused`);
      signalGroup(pid, 'SIGCONT');
      return `${nodeName} resumed (SIGCONT, pid ${pid})`;
    case 'start': {
      if (running) throw new UserError(`${nodeName} is already running (pid ${pid})`);
      if (!isOurProcess(state.etcd.pid, state.etcd.dataDir)) throw new UserError(`etcd of the local cluster is not running; use \`cio cluster up\``);
      node.pid = startAgent(node);
      await writeState(state);
      const etcd = etcdClientFor(state);
      try {
        await waitFor(`${nodeName} to start (see ${node.logFile})`, 30_000, async () => {
          if (!isOurProcess(node.pid, node.configFile)) throw new UserError(`ciod ${nodeName} exited at start; see ${node.logFile}`);
          const rec = (await listNodes(etcd)).find((n) => n.name === nodeName);
          const alive = rec ? await etcd.get(`/cio/alive/${rec.id}`).string() : null;
          return alive ? true : undefined;
        });
      } finally {
        etcd.close();
      }
      return `${nodeName} started (pid ${node.pid})`;
    }
  }
}

export interface ProcessStatus {
  name: string;
  pid: number | null;
  state: 'running' | 'paused' | 'stopped';
}

export async function clusterProcesses(dir: string): Promise<ProcessStatus[]> {
  const state = await requireState(dir);
  const status = (pid: number | undefined, marker: string): ProcessStatus['state'] =>
    pid && isOurProcess(pid, marker) ? (processState(pid) === 'T' ? 'paused' : 'running') : 'stopped';
  return [
    { name: 'etcd', pid: state.etcd.pid ?? null, state: status(state.etcd.pid, state.etcd.dataDir) },
    ...state.nodes.map((n) => ({ name: n.name, pid: n.pid ?? null, state: status(n.pid, n.configFile) })),
  ];
}

export { API_PORT };
