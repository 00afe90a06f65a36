// A local cio cluster for integration tests, started through the real CLI
// (`cio cluster up`) with its own CIO_HOME, directory and loopback prefix.
// Teardown stops every process by the PIDs the launcher recorded, also when
// the test failed.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Etcd3 } from 'etcd3';
import YAML from 'yaml';
import { etcdClientFor } from '../../src/cluster/launcher';
import { isOurProcess, stopDaemon } from '../../src/cluster/processes';
import { readState, type LocalClusterState } from '../../src/cluster/state';

export const CLI_MAIN = path.resolve(__dirname, '../../src/cli/main.js');
export const AGENT_MAIN = path.resolve(__dirname, '../../src/agent/main.js');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function runNode(script: string, args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 120_000): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [script, ...args], { env: { ...process.env, ...env }, timeout: timeoutMs, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

export async function eventually<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs = 30_000, stepMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await probe();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, stepMs));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
}

export class LocalCluster {
  private etcdClient: Etcd3 | undefined;

  private constructor(
    readonly home: string,
    readonly dir: string,
    readonly ipPrefix: string,
  ) {}

  static async up(opts: { nodes: number; ipPrefix: string; leaseTtl?: number; extraArgs?: string[] }): Promise<LocalCluster> {
    const home = await mkdtemp(path.join(os.tmpdir(), 'cio-test-'));
    const cluster = new LocalCluster(home, path.join(home, 'cluster'), opts.ipPrefix);
    const res = await cluster.cli([
      'cluster', 'up', '--nodes', String(opts.nodes), '--dir', cluster.dir, '--ip-prefix', opts.ipPrefix,
      '--lease-ttl', String(opts.leaseTtl ?? 3), '--quiet', ...(opts.extraArgs ?? []),
    ]);
    if (res.code !== 0) {
      await cluster.down();
      throw new Error(`cio cluster up failed (${res.code}): ${res.stderr}`);
    }
    return cluster;
  }

  cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
    return runNode(CLI_MAIN, args, { CIO_HOME: this.home, ...env });
  }

  /**
   * Run the CLI as an operator on one node would: its client config lists
   * only that node's agent, so no request waits on agents that are paused or
   * cut off.
   */
  async cliOn(node: string, args: string[]): Promise<CliResult> {
    const target = (await this.state()).nodes.find((n) => n.name === node);
    if (!target) throw new Error(`no node ${node} in the test cluster`);
    const config = YAML.parse(await readFile(path.join(this.home, 'config.yaml'), 'utf8')) as { endpoints: string[] };
    config.endpoints = config.endpoints.filter((e) => new URL(e).hostname === target.ip);
    const home = path.join(this.home, `on-${node}`);
    await mkdir(home, { recursive: true });
    await writeFile(path.join(home, 'config.yaml'), YAML.stringify(config));
    return runNode(CLI_MAIN, args, { CIO_HOME: home });
  }

  /** Run a `cio cluster <action> <node>` against this cluster. */
  async nodeAction(action: 'kill' | 'pause' | 'resume' | 'start' | 'stop', node: string): Promise<CliResult> {
    const res = await this.cli(['cluster', action, node, '--dir', this.dir]);
    if (res.code !== 0) throw new Error(`cio cluster ${action} ${node} failed: ${res.stderr}`);
    return res;
  }

  async state(): Promise<LocalClusterState> {
    const s = await readState(this.dir);
    if (!s) throw new Error('no cluster state');
    return s;
  }

  async etcd(): Promise<Etcd3> {
    this.etcdClient ??= etcdClientFor(await this.state());
    return this.etcdClient;
  }

  /** Stop everything by PID (through the launcher, and directly if that fails), then delete the files. */
  async down(): Promise<void> {
    this.etcdClient?.close();
    await this.cli(['cluster', 'down', '--dir', this.dir]).catch(() => undefined);
    const state = await readState(this.dir).catch(() => undefined);
    if (state) {
      for (const n of state.nodes) if (n.pid && isOurProcess(n.pid, n.configFile)) await stopDaemon(n.pid, n.configFile, 2000);
      if (state.etcd.pid && isOurProcess(state.etcd.pid, state.etcd.dataDir)) await stopDaemon(state.etcd.pid, state.etcd.dataDir, 2000);
    }
    // CIO_TEST_KEEP=1 keeps the logs and images of every cluster for a post-mortem.
    if (process.env.CIO_TEST_KEEP) console.log(`# kept ${this.home}`);
    else await rm(this.home, { recursive: true, force: true });
  }
}

/** Parse `cio node ls` output into rows keyed by column name. */
export function parseTable(text: string): Array<Record<string, string>> {
  const lines = text.trimEnd().split('\n');
  const headers = lines[0].trim().split(/\s+/);
  return lines.slice(1).map((line) => {
    const cells = line.trim().split(/\s+/);
    return Object.fromEntries(headers.map((h, i) => [h, cells[i] ?? '']));
  });
}
