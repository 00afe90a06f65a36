// A database on a cio volume mounted through the Docker plugin path: PostgreSQL
// runs on node v1 with pgbench load and a client that counts its committed
// inserts; v1 dies (agent, nbdfuse and PostgreSQL killed with SIGKILL); the
// volume is mounted on v2, PostgreSQL recovers there, and every committed
// insert is present. Then the filesystem is checked with e2fsck -fn.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess, execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { loopBackingFile, startNbdfuse, stopNbdfuse, nbdfuseFile } from '../../src/attach/nbdfuse';
import type { VolumeRecord } from '../../src/core/types';
import { silentLogger } from '../../src/util/log';
import { eventually, LocalCluster } from '../helpers/local-cluster';
import { pluginCall } from '../helpers/plugin-client';
import { findLeftovers, sweepLeftovers } from './leftovers';

const run = promisify(execFile);
const IP_PREFIX = '127.0.41.';
const PG_BIN = '/usr/lib/postgresql/15/bin';
const PORT = '5439';

async function postgresUid(): Promise<{ uid: number; gid: number }> {
  const { stdout } = await run('id', ['-u', 'postgres']);
  const gid = await run('id', ['-g', 'postgres']);
  return { uid: Number(stdout.trim()), gid: Number(gid.stdout.trim()) };
}

/** Let the postgres user reach `dir`: every directory from the test's home down to it gets o+x. */
async function traversable(home: string, dir: string): Promise<void> {
  for (let d = dir; d.startsWith(home); d = path.dirname(d)) {
    const mode = (await stat(d)).mode & 0o777;
    await chmod(d, mode | 0o011);
  }
}

/** Run a PostgreSQL program as the postgres user. */
function asPostgres(cmd: string, args: string[]): Promise<{ stdout: string; stderr: string }> {
  return run('runuser', ['-u', 'postgres', '--', path.join(PG_BIN, cmd), ...args], { cwd: '/tmp', timeout: 120_000 });
}

describe('PostgreSQL on a cio volume survives the loss of its node', () => {
  let cluster: LocalCluster;
  let sockets: string;
  const servers: ChildProcess[] = [];
  const dataDirs: string[] = [];

  before(async () => {
    cluster = await LocalCluster.up({ nodes: 3, ipPrefix: IP_PREFIX, leaseTtl: 3, extraArgs: ['--rebuild-grace', '600'] });
    sockets = await mkdtemp(path.join(os.tmpdir(), 'cio-pg-'));
    const { uid, gid } = await postgresUid();
    await chown(sockets, uid, gid);
  });
  after(async () => {
    for (const dir of dataDirs) await killPostgres(dir);
    for (const s of servers) if (s.pid) killGroup(s.pid);
    if (cluster) {
      await cluster.cli(['cluster', 'down', '--dir', cluster.dir]).catch(() => undefined);
      await sweepLeftovers(cluster.dir);
      await cluster.down();
    }
    if (sockets) await rm(sockets, { recursive: true, force: true });
  });

  function killGroup(pid: number): void {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }

  /**
   * Kill a PostgreSQL server as a power loss would: the postmaster and every
   * backend at once. Backends run in sessions of their own, so the process
   * group of the launcher does not reach them; they are the postmaster's children.
   */
  async function killPostgres(pgdata: string): Promise<void> {
    const pidText = await readFile(path.join(pgdata, 'postmaster.pid'), 'utf8').catch(() => '');
    const postmaster = Number(pidText.split('\n')[0]);
    if (!Number.isInteger(postmaster) || postmaster <= 1) return;
    const victims = [postmaster];
    for (const entry of readdirSync('/proc').filter((e) => /^\d+$/.test(e))) {
      try {
        const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
        if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === postmaster) victims.push(Number(entry));
      } catch {
        /* gone */
      }
    }
    for (const pid of victims) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }

  async function startPostgres(pgdata: string): Promise<ChildProcess> {
    dataDirs.push(pgdata);
    const log = openSync(path.join(sockets, `postgres-${servers.length}.log`), 'a');
    const server = spawn('runuser', ['-u', 'postgres', '--', path.join(PG_BIN, 'postgres'), '-D', pgdata, '-k', sockets, '-p', PORT, '-c', 'listen_addresses=', '-c', 'fsync=on', '-c', 'synchronous_commit=on'], {
      detached: true,
      stdio: ['ignore', log, log],
      cwd: '/tmp',
    });
    closeSync(log);
    servers.push(server);
    try {
      await eventually('PostgreSQL to accept connections', async () => run(path.join(PG_BIN, 'pg_isready'), ['-h', sockets, '-p', PORT]).then(() => true, () => false), 60_000, 250);
    } catch (err) {
      const tail = await readFile(path.join(sockets, `postgres-${servers.length - 1}.log`), 'utf8').catch(() => '');
      throw new Error(`${(err as Error).message}; PostgreSQL said: ${tail.slice(-1500)}`);
    }
    return server;
  }

  const psql = (sql: string): Promise<{ stdout: string; stderr: string }> => run('psql', ['-h', sockets, '-p', PORT, '-U', 'postgres', '-At', '-c', sql], { timeout: 60_000 });

  async function ok(node: string, endpoint: string, body: unknown): Promise<{ Mountpoint?: string }> {
    const r = await pluginCall(cluster, node, endpoint, body);
    assert.equal(r.body.Err, '', `${endpoint} on ${node}: ${r.body.Err}`);
    return r.body;
  }

  test('every committed transaction is there after the failover, and fsck is clean', async () => {
    await ok('v1', 'VolumeDriver.Create', { Name: 'pgdata', Opts: { profile: 'POSTGRES', capacity: '1', level: '2', filesystem: 'ext4' } });
    const mp1 = (await ok('v1', 'VolumeDriver.Mount', { Name: 'pgdata', ID: randomBytes(32).toString('hex') })).Mountpoint!;
    const { uid, gid } = await postgresUid();
    await traversable(cluster.home, mp1);
    const pgdata1 = path.join(mp1, 'pg');
    await mkdir(pgdata1, { mode: 0o700 });
    await chown(pgdata1, uid, gid);
    await asPostgres('initdb', ['-D', pgdata1, '--auth=trust', '-U', 'postgres']);
    const server1 = await startPostgres(pgdata1);
    await psql('CREATE TABLE committed (id integer PRIMARY KEY, pad text)');
    await run('pgbench', ['-h', sockets, '-p', PORT, '-U', 'postgres', '-i', '-s', '2', 'postgres'], { timeout: 120_000 });

    // Load from pgbench, and a client that counts what PostgreSQL said was committed.
    const bench = spawn('pgbench', ['-h', sockets, '-p', PORT, '-U', 'postgres', '-c', '2', '-T', '120', 'postgres'], { stdio: 'ignore' });
    const counter = spawn('psql', ['-h', sockets, '-p', PORT, '-U', 'postgres', '-v', 'ON_ERROR_STOP=1'], { stdio: ['pipe', 'pipe', 'ignore'] });
    let committed = 0;
    counter.stdout.on('data', (d: Buffer) => (committed += (d.toString().match(/^INSERT 0 1$/gm) ?? []).length));
    let nextId = 1;
    const feed = setInterval(() => {
      if (!counter.stdin.writable) return;
      const lines: string[] = [];
      for (let i = 0; i < 20; i++) lines.push(`INSERT INTO committed VALUES (${nextId++}, repeat('x', 300));`);
      counter.stdin.write(`${lines.join('\n')}\n`);
    }, 20);
    counter.stdin.on('error', () => undefined);
    try {
      await eventually('the client to commit a few hundred inserts', async () => committed >= 400, 60_000);

      // v1 dies: its agent (and nbdfuse with it) and PostgreSQL, all at once.
      await killPostgres(pgdata1);
      await cluster.nodeAction('kill', 'v1');
      if (server1.pid) killGroup(server1.pid);
      clearInterval(feed);
      await new Promise((r) => setTimeout(r, 300));
      counter.kill('SIGKILL');
      bench.kill('SIGKILL');
    } finally {
      clearInterval(feed);
    }
    const acknowledged = committed;
    // What a dead node leaves in this one kernel (a real crash takes it with the machine).
    await sweepLeftovers(path.join(cluster.dir, 'nodes', 'v1'));

    // Swarm restarts the database on v2; its Mount takes the volume over once v1's lease is gone.
    const mp2 = await eventually('v2 to take the volume over', async () => {
      const r = await pluginCall(cluster, 'v2', 'VolumeDriver.Mount', { Name: 'pgdata', ID: randomBytes(32).toString('hex') });
      return r.body.Err === '' ? r.body.Mountpoint : undefined;
    }, 60_000, 500);
    await traversable(cluster.home, mp2);
    await startPostgres(path.join(mp2, 'pg'));
    const present = Number((await psql(`SELECT count(*) FROM committed WHERE id <= ${acknowledged}`)).stdout.trim());
    console.log(`# PostgreSQL: ${acknowledged} inserts acknowledged before the crash, ${present} of them present after recovery on v2`);
    assert.equal(present, acknowledged, `${acknowledged - present} committed transactions lost`);
    const pgbenchRows = Number((await psql('SELECT count(*) FROM pgbench_accounts')).stdout.trim());
    assert.equal(pgbenchRows, 200_000);

    await asPostgres('pg_ctl', ['stop', '-D', path.join(mp2, 'pg'), '-m', 'fast']);
    await ok('v2', 'VolumeDriver.Unmount', { Name: 'pgdata', ID: 'x'.repeat(64) }).catch(() => undefined);
    const vol0 = JSON.parse((await cluster.cli(['volume', 'info', 'pgdata', '--json'])).stdout) as VolumeRecord;
    assert.ok(vol0.owner, 'still mounted on v2 (the unknown mount ID changed nothing)');
  });

  test('the filesystem checks clean (e2fsck -fn) after the crash and recovery', async () => {
    // Unmount on v2 with the ID it holds: the plugin's table says which.
    const owner = JSON.parse((await cluster.cli(['volume', 'info', 'pgdata', '--json'])).stdout) as VolumeRecord;
    assert.ok(owner.owner);
    const mounts = JSON.parse(await (await import('node:fs/promises')).readFile(path.join(cluster.dir, 'nodes', 'v2', 'data', 'plugin', 'mounts.json'), 'utf8')) as Record<string, unknown>;
    const ids = JSON.stringify(mounts).match(/[0-9a-f]{64}/g) ?? [];
    for (const id of ids) await pluginCall(cluster, 'v2', 'VolumeDriver.Unmount', { Name: 'pgdata', ID: id });
    await eventually('pgdata detached', async () => (JSON.parse((await cluster.cli(['volume', 'info', 'pgdata', '--json'])).stdout) as VolumeRecord).owner === null);

    const attached = JSON.parse((await cluster.cli(['volume', 'attach', 'pgdata', '--node', 'v3', '--json'])).stdout) as VolumeRecord;
    const work = await mkdtemp(path.join(os.tmpdir(), 'cio-fsck-'));
    const proc = await startNbdfuse(work, 'pgdata', attached.attachment!.uri, attached.sizeBytes, async () => undefined);
    try {
      const fsck = await run('e2fsck', ['-fn', nbdfuseFile(proc)]).then(
        (r) => ({ code: 0, out: r.stdout + r.stderr }),
        (e: { code?: number; stdout?: string; stderr?: string }) => ({ code: e.code ?? 1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` }),
      );
      assert.equal(fsck.code, 0, `e2fsck -fn found problems:\n${fsck.out}`);
    } finally {
      await stopNbdfuse(proc, silentLogger);
      await rm(work, { recursive: true, force: true });
    }
    await cluster.cli(['volume', 'detach', 'pgdata']);
    // Loops bound to a dead "/nbd" are what v1's crash left in this shared kernel; only v2's own count here.
    const v2Dir = path.join(cluster.dir, 'nodes', 'v2');
    const left = await findLeftovers(v2Dir);
    const ownLoops: string[] = [];
    for (const dev of left.loops) if ((await loopBackingFile(dev))?.startsWith(v2Dir)) ownLoops.push(dev);
    assert.deepEqual({ loops: ownLoops, mounts: left.mounts, processes: left.processes }, { loops: [], mounts: [], processes: [] });
  });
});
