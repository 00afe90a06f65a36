// `cio cluster demo` (and `make demo`): the seed's story on a local 4-node
// cluster. Two volumes in use, a writer that checks its own data, node v3
// losing power, the volume moving, copies rebuilt, v3 coming back — printing
// the same tables as the seed, with the time each step took.
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { NodeRecord, VolumeRecord } from '../core/types';
import { SimpleNbdClient } from '../nbd/client';
import { UserError } from '../util/errors';
import { RecordWriter, verifyRecords } from './record-writer';

const CLI = path.resolve(__dirname, '../cli/main.js');

interface DemoOptions {
  dir?: string;
  out: (line: string) => void;
}

export async function runDemo(opts: DemoOptions): Promise<void> {
  const home = await mkdtemp(path.join(os.tmpdir(), 'cio-demo-'));
  const dir = opts.dir ?? path.join(home, 'cluster');
  const env = { ...process.env, CIO_HOME: home };
  const started = Date.now();
  let stepStarted = started;
  const out = opts.out;

  const cio = (args: string[]): Promise<string> =>
    new Promise((resolve, reject) => {
      execFile(process.execPath, [CLI, ...args], { env, encoding: 'utf8', timeout: 120_000 }, (err, stdout, stderr) => {
        if (err) reject(new UserError(`cio ${args.join(' ')} failed: ${stderr.trim() || err.message}`));
        else resolve(stdout);
      });
    });
  const show = async (args: string[]): Promise<void> => {
    out(`\nroot@v1:~# cio ${args.join(' ')}`);
    out((await cio(args)).trimEnd());
  };
  const step = (title: string): void => {
    const now = Date.now();
    out(`\n== ${title}   [previous step ${((now - stepStarted) / 1000).toFixed(1)} s, total ${((now - started) / 1000).toFixed(1)} s]`);
    stepStarted = now;
  };
  const json = async <T>(args: string[]): Promise<T> => JSON.parse(await cio([...args, '--json'])) as T;
  const waitFor = async (what: string, probe: () => Promise<boolean>, timeoutMs = 120_000): Promise<number> => {
    const t0 = Date.now();
    while (Date.now() - t0 < timeoutMs) {
      if (await probe().catch(() => false)) return (Date.now() - t0) / 1000;
      await new Promise((r) => setTimeout(r, 250));
    }
    throw new UserError(`the demo timed out waiting for ${what}`);
  };
  const clients: SimpleNbdClient[] = [];
  const connect = async (v: VolumeRecord): Promise<SimpleNbdClient> => {
    const socket = /\?socket=(.+)$/.exec(v.attachment?.uri ?? '')?.[1];
    if (!socket) throw new Error(`volume ${v.name} has no NBD socket`);
    const c = await SimpleNbdClient.connect(socket, v.name);
    clients.push(c);
    return c;
  };

  try {
    step('a 4-node cluster: etcd and agents v1..v4, each on its own loopback address');
    await cio(['cluster', 'up', '--nodes', '4', '--dir', dir, '--lease-ttl', '3', '--rebuild-grace', '5', '--quiet']);
    await show(['node', 'ls']);

    step('two volumes, as the stack file would make them: portainer (2-copy) and wp_mysql-data (3-copy)');
    await cio(['volume', 'create', 'portainer', '--capacity', '20', '--level', '2', '--node', 'v2']);
    await cio(['volume', 'create', 'wp_mysql-data', '--profile', 'MYSQL', '--capacity', '10', '--node', 'v3']);
    const portainer = await json<VolumeRecord>(['volume', 'attach', 'portainer', '--node', 'v2']);
    const wp = await json<VolumeRecord>(['volume', 'attach', 'wp_mysql-data', '--node', 'v3']);
    await show(['volume', 'ls']);

    step('the services write: each writer numbers its records and checks them later');
    const wpWriter = new RecordWriter(await connect(wp), 'wp_db', 0);
    const portainerWriter = new RecordWriter(await connect(portainer), 'portainer', 0);
    wpWriter.start();
    portainerWriter.start();
    await waitFor('the writers to start', async () => wpWriter.acked.size > 500 && portainerWriter.acked.size > 500);
    out(`wp_db has written ${wpWriter.acked.size} records on v3, portainer ${portainerWriter.acked.size} on v2`);

    step('power loss on v3, where wp_db runs (SIGKILL of its agent)');
    await cio(['cluster', 'kill', 'v3', '--dir', dir]);
    const killedAt = Date.now();
    await wpWriter.done;
    const acked = wpWriter.acked.size;
    out(`wp_db's connection failed after ${acked} acknowledged records (${wpWriter.error ?? 'no error'})`);
    const detect = await waitFor('v3 in maintenance', async () => (await json<NodeRecord[]>(['node', 'ls'])).find((n) => n.name === 'v3')?.status === 'maintenance');
    out(`v3 detected as failed after ${detect.toFixed(1)} s`);
    await show(['node', 'ls']);

    step('Swarm restarts wp_db on another node; cio moves wp_mysql-data there');
    await waitFor('wp_mysql-data to be released', async () => (await json<VolumeRecord>(['volume', 'info', 'wp_mysql-data'])).owner === null);
    const nodes = await json<NodeRecord[]>(['node', 'ls']);
    const released = await json<VolumeRecord>(['volume', 'info', 'wp_mysql-data']);
    const target = nodes.find((n) => n.status === 'normal' && !released.replicas.some((r) => r.nodeId === n.id)) ?? nodes.find((n) => n.name === 'v1')!;
    const moved = await json<VolumeRecord>(['volume', 'attach', 'wp_mysql-data', '--node', target.name]);
    const client = await connect(moved);
    const problems = await verifyRecords(client, 'wp_db', 0, wpWriter.acked, wpWriter.unknown);
    out(`wp_mysql-data attached on ${target.name} ${((Date.now() - killedAt) / 1000).toFixed(1)} s after the power loss;`);
    out(problems.length === 0 ? `all ${acked} acknowledged records read back intact` : `DATA PROBLEMS: ${problems.slice(0, 5).join('; ')}`);
    if (problems.length) throw new UserError('acknowledged writes were lost');
    const wpWriter2 = new RecordWriter(client, 'wp_db-after', 100_000);
    wpWriter2.start();
    await show(['volume', 'ls']);

    step('data recovery: lost copies rebuilt on the remaining nodes, a copy made local to the new owner');
    const rebuilt = await waitFor('the volumes to be whole again', async () => {
      const live = new Set((await json<NodeRecord[]>(['node', 'ls'])).filter((n) => n.status !== 'maintenance').map((n) => n.id));
      const whole = async (name: string, level: number, owner?: string): Promise<boolean> => {
        const v = await json<VolumeRecord>(['volume', 'info', name]);
        const inSync = v.replicas.filter((r) => r.state === 'in-sync' && live.has(r.nodeId));
        return inSync.length >= level && v.replicas.length === level && (!owner || inSync.some((r) => r.nodeId === owner));
      };
      return (await whole('portainer', 2)) && (await whole('wp_mysql-data', 3, target.id));
    });
    out(`redundancy restored ${rebuilt.toFixed(1)} s after the move`);
    await show(['events', '-n', '14']);

    step('node recovery: v3 boots again');
    await cio(['cluster', 'start', 'v3', '--dir', dir]);
    const back = await waitFor('v3 normal', async () => (await json<NodeRecord[]>(['node', 'ls'])).find((n) => n.name === 'v3')?.status === 'normal');
    out(`v3 back to normal ${back.toFixed(1)} s after it started, with the same NODE_ID`);
    await show(['node', 'ls']);

    step('the writers check every record they wrote');
    await wpWriter2.stop();
    await portainerWriter.stop();
    const all = [
      ...(await verifyRecords(client, 'wp_db', 0, wpWriter.acked, wpWriter.unknown)),
      ...(await verifyRecords(client, 'wp_db-after', 100_000, wpWriter2.acked)),
      ...(await verifyRecords(clients[1], 'portainer', 0, portainerWriter.acked)),
    ];
    out(`${wpWriter.acked.size + wpWriter2.acked.size} wp_db records and ${portainerWriter.acked.size} portainer records checked: ${all.length === 0 ? 'no acknowledged write lost' : `${all.length} PROBLEMS`}`);
    if (all.length) throw new UserError('acknowledged writes were lost');
    step('done; stopping everything the demo started');
  } finally {
    for (const c of clients) c.close();
    await cio(['cluster', 'down', '--dir', dir, '--wipe']).catch(() => undefined);
    await rm(home, { recursive: true, force: true });
  }
}
