// `make bench` (HA part): failover, rebuild and resync measured on a local
// 4-node cluster, each beside a baseline measured in the same run:
//  - time from kill -9 of a volume's owner to the first successful I/O on a
//    new owner, with default settings (lease TTL 5 s);
//  - rebuild throughput against a plain copy (cp + sync) of the same data on this disk;
//  - incremental resync time against a full rebuild of the same volume.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { RecordWriter, verifyRecords } from '../src/cluster/record-writer';
import type { NodeRecord, VolumeRecord } from '../src/core/types';
import { SimpleNbdClient } from '../src/nbd/client';
import { LocalCluster } from '../test/helpers/local-cluster';

const run = promisify(execFile);
const MiB = 1024 * 1024;
// 1 GiB: smaller volumes rebuild in well under a second, below what polling the CLI can time.
const DATA_MIB = Number(process.env.BENCH_REBUILD_MIB ?? 1024);

async function json<T>(cluster: LocalCluster, args: string[]): Promise<T> {
  const res = await cluster.cli([...args, '--json']);
  if (res.code !== 0) throw new Error(`cio ${args.join(' ')}: ${res.stderr}`);
  return JSON.parse(res.stdout) as T;
}

async function until(what: string, probe: () => Promise<boolean>, timeoutMs = 180_000, stepMs = 100): Promise<number> {
  const t0 = Date.now();
  while (Date.now() - t0 < timeoutMs) {
    if (await probe().catch(() => false)) return Date.now() - t0;
    await new Promise((r) => setTimeout(r, stepMs));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const socketOf = (v: VolumeRecord): string => /\?socket=(.+)$/.exec(v.attachment!.uri)![1];

async function failoverTime(): Promise<number> {
  const cluster = await LocalCluster.up({ nodes: 4, ipPrefix: '127.0.32.', leaseTtl: 5 });
  try {
    await cluster.cli(['volume', 'create', 'fo', '--capacity', '1', '--level', '2', '--node', 'v3']);
    const v = await json<VolumeRecord>(cluster, ['volume', 'attach', 'fo', '--node', 'v3']);
    const writer = new RecordWriter(await SimpleNbdClient.connect(socketOf(v), 'fo'), 'fo', 0);
    writer.start(2000);
    await writer.done;
    await cluster.nodeAction('kill', 'v3');
    const t0 = Date.now();
    // As Swarm would: keep trying to mount on another node until it works, then read.
    for (;;) {
      const res = await cluster.cli(['volume', 'attach', 'fo', '--node', 'v1', '--json']);
      if (res.code === 0) {
        const moved = JSON.parse(res.stdout) as VolumeRecord;
        const client = await SimpleNbdClient.connect(socketOf(moved), 'fo');
        const problems = await verifyRecords(client, 'fo', 0, [0]);
        client.close();
        if (problems.length) throw new Error(problems.join('; '));
        return (Date.now() - t0) / 1000;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  } finally {
    await cluster.down();
  }
}

interface RebuildFigures {
  fullSeconds: number;
  fullMiBps: number;
  resyncSeconds: number;
  resyncWrittenMiB: number;
}

/** A 2-copy volume holding DATA_MIB of random data, attached on v1. */
async function filledVolume(cluster: LocalCluster, data: string): Promise<VolumeRecord> {
  await cluster.cli(['volume', 'create', 'rb', '--capacity', `${DATA_MIB * 2}MB`, '--level', '2', '--node', 'v1']);
  const v = await json<VolumeRecord>(cluster, ['volume', 'attach', 'rb', '--node', 'v1']);
  await run('nbdcopy', [data, v.attachment!.uri]);
  return v;
}

async function rebuildAndResync(scratch: string): Promise<RebuildFigures> {
  const data = path.join(scratch, 'data.img');
  await run('sh', ['-c', `head -c ${DATA_MIB * MiB} /dev/urandom > ${data}`]);
  const fullSeconds = await fullRebuildSeconds(data);
  const resyncSeconds = await resyncSecondsAfterOutage(data);
  return { fullSeconds, fullMiBps: DATA_MIB / fullSeconds, resyncSeconds, resyncWrittenMiB: 4 };
}

async function fullRebuildSeconds(data: string): Promise<number> {
  const cluster = await LocalCluster.up({ nodes: 4, ipPrefix: '127.0.33.', leaseTtl: 3, extraArgs: ['--rebuild-grace', '1'] });
  try {
    const v = await filledVolume(cluster, data);
    const nodes = await json<NodeRecord[]>(cluster, ['node', 'ls']);
    const other = (await json<VolumeRecord>(cluster, ['volume', 'info', 'rb'])).replicas.find((r) => r.nodeId !== v.owner)!;
    const otherName = nodes.find((n) => n.id === other.nodeId)!.name;

    // Full rebuild: lose the copy, a new one is placed and filled.
    await cluster.nodeAction('kill', otherName);
    let rebuildingSince = 0;
    await until('a rebuilding copy', async () => {
      const r = (await json<VolumeRecord>(cluster, ['volume', 'info', 'rb'])).replicas.some((x) => x.state === 'rebuilding');
      if (r) rebuildingSince = Date.now();
      return r;
    }, 60_000, 50);
    await until('the rebuild to finish', async () => {
      const vol = await json<VolumeRecord>(cluster, ['volume', 'info', 'rb']);
      return vol.replicas.filter((x) => x.state === 'in-sync').length === 2 && !vol.replicas.some((x) => x.state === 'rebuilding');
    }, 300_000, 50);
    return (Date.now() - rebuildingSince) / 1000;
  } finally {
    await cluster.down();
  }
}

/** A copy's node is away briefly while 4 MiB are written; time from its restart to in-sync. */
async function resyncSecondsAfterOutage(data: string): Promise<number> {
  // A long grace period: the copy must wait for its node, not be replaced.
  const cluster = await LocalCluster.up({ nodes: 4, ipPrefix: '127.0.34.', leaseTtl: 3, extraArgs: ['--rebuild-grace', '600'] });
  try {
    await filledVolume(cluster, data);
    const now = await json<VolumeRecord>(cluster, ['volume', 'info', 'rb']);
    const second = now.replicas.find((r) => r.nodeId !== now.owner)!;
    const secondName = (await json<NodeRecord[]>(cluster, ['node', 'ls'])).find((n) => n.id === second.nodeId)!.name;
    await cluster.nodeAction('stop', secondName);
    await until('the copy marked stale', async () => (await json<VolumeRecord>(cluster, ['volume', 'info', 'rb'])).replicas.find((r) => r.id === second.id)?.state === 'stale', 60_000, 50);
    const client = await SimpleNbdClient.connect(socketOf(now), 'rb');
    const writer = new RecordWriter(client, 'away', 200_000, 0, 8);
    writer.start(1024);
    await writer.done;
    client.close();
    const t0 = Date.now();
    await cluster.cli(['cluster', 'start', secondName, '--dir', cluster.dir]);
    await until('the resync to finish', async () => (await json<VolumeRecord>(cluster, ['volume', 'info', 'rb'])).replicas.find((r) => r.id === second.id)?.state === 'in-sync', 120_000, 50);
    return (Date.now() - t0) / 1000;
  } finally {
    await cluster.down();
  }
}

async function plainCopyMiBps(scratch: string): Promise<number> {
  const src = path.join(scratch, 'plain-src.img');
  await run('sh', ['-c', `head -c ${DATA_MIB * MiB} /dev/urandom > ${src} && sync`]);
  const t0 = Date.now();
  await run('sh', ['-c', `cp ${src} ${path.join(scratch, 'plain-dst.img')} && sync`]);
  return DATA_MIB / ((Date.now() - t0) / 1000);
}

async function main(): Promise<void> {
  const scratch = await mkdtemp(path.join(os.tmpdir(), 'cio-bench-ha-'));
  try {
    process.stderr.write('measuring failover (default settings)…\n');
    const failover = await failoverTime();
    process.stderr.write('measuring rebuild and resync…\n');
    const rb = await rebuildAndResync(scratch);
    const plain = await plainCopyMiBps(scratch);
    const lines = [
      `\ncio HA benchmark (local 4-node cluster on this machine)\n`,
      `failover: kill -9 of the owner to first successful I/O on a new owner: ${failover.toFixed(1)} s (goal < 10 s; lease TTL 5 s)`,
      `full rebuild of ${DATA_MIB} MiB: ${rb.fullSeconds.toFixed(1)} s = ${rb.fullMiBps.toFixed(0)} MiB/s; plain copy (cp + sync) on this disk: ${plain.toFixed(0)} MiB/s; ratio ${(rb.fullMiBps / plain).toFixed(2)}x`,
      `incremental resync after ${rb.resyncWrittenMiB} MiB written while away: ${rb.resyncSeconds.toFixed(1)} s from node start to in-sync (includes the agent start); full rebuild: ${rb.fullSeconds.toFixed(1)} s; ratio ${(rb.resyncSeconds / rb.fullSeconds).toFixed(2)}x`,
    ];
    console.log(lines.join('\n'));
    await writeFile(path.join(scratch, 'done'), '');
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(`bench failed: ${(err as Error).message}`);
  process.exit(1);
});
