// `make bench`: the data path measured with fio's nbd engine through cio's
// NBD export, beside baselines measured in the same run on the same disk:
// nbdkit's file plugin (the NBD path's limit) and fio on the raw file (the
// disk's limit). Prints figures and ratios; asserts nothing about time.
// On a shared 2-core machine one fio run varies by ±10%, so every target is
// measured in BENCH_ROUNDS rounds (targets taken in turn within a round, so a
// slow spell hits all of them) and the median is reported, with the spread.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { LocalCluster } from '../test/helpers/local-cluster';
import { mustRun } from '../test/helpers/tools';
import type { VolumeRecord } from '../src/core/types';

const SIZE = '256M';
const RUNTIME_S = Number(process.env.BENCH_RUNTIME ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);

interface Job {
  name: string;
  rw: string;
  bs: string;
  iodepth: number;
  metric: 'iops' | 'bw';
}

const JOBS: Job[] = [
  { name: '4k randread qd32', rw: 'randread', bs: '4k', iodepth: 32, metric: 'iops' },
  { name: '4k randwrite qd32', rw: 'randwrite', bs: '4k', iodepth: 32, metric: 'iops' },
  { name: '1M seq read', rw: 'read', bs: '1M', iodepth: 4, metric: 'bw' },
  { name: '1M seq write', rw: 'write', bs: '1M', iodepth: 4, metric: 'bw' },
];

interface Target {
  label: string;
  args: string[];
}

async function fio(target: Target, job: Job): Promise<number> {
  const out = await mustRun('fio', [
    `--name=${job.rw}`, ...target.args, `--rw=${job.rw}`, `--bs=${job.bs}`, `--iodepth=${job.iodepth}`, `--size=${SIZE}`,
    '--time_based', `--runtime=${RUNTIME_S}`, '--ramp_time=1', '--output-format=json',
  ], (RUNTIME_S + 60) * 1000);
  const res = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: Array<{ read: { iops: number; bw: number }; write: { iops: number; bw: number } }> };
  const side = job.rw.includes('read') ? res.jobs[0].read : res.jobs[0].write;
  return job.metric === 'iops' ? side.iops : side.bw / 1024; // bw in MiB/s
}

function fmt(v: number, metric: Job['metric']): string {
  return metric === 'iops' ? `${Math.round(v)} IOPS` : `${v.toFixed(0)} MiB/s`;
}

function median(xs: number[]): number {
  const sorted = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function pct(v: number, of: number): string {
  return `${Math.round((100 * v) / of)}%`;
}

async function prefill(target: Target): Promise<void> {
  await mustRun('fio', ['--name=prefill', ...target.args, '--rw=write', '--bs=1M', '--iodepth=4', `--size=${SIZE}`, '--output-format=json']);
}

async function main(): Promise<void> {
  const scratch = await mkdtemp(path.join(os.tmpdir(), 'cio-bench-'));
  let cluster: LocalCluster | undefined;
  let nbdkit: ChildProcess | undefined;
  try {
    process.stderr.write('starting a local 4-node cluster…\n');
    cluster = await LocalCluster.up({ nodes: 4, ipPrefix: '127.0.30.', leaseTtl: 5 });
    const rawFile = path.join(scratch, 'raw.img');
    await mustRun('truncate', ['-s', '1G', rawFile]);
    const nbdkitFile = path.join(scratch, 'nbdkit.img');
    await mustRun('truncate', ['-s', '1G', nbdkitFile]);
    const nbdkitSock = path.join(scratch, 'nbdkit.sock');
    nbdkit = spawn('nbdkit', ['-f', '-U', nbdkitSock, 'file', nbdkitFile], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 500));

    const targets: Target[] = [
      { label: 'raw file (fio libaio, direct)', args: ['--ioengine=libaio', '--direct=1', `--filename=${rawFile}`] },
      { label: 'nbdkit file', args: ['--ioengine=nbd', `--uri=nbd+unix:///?socket=${nbdkitSock}`] },
    ];
    for (const level of [1, 2, 3]) {
      const name = `bench-l${level}`;
      const c = await cluster.cli(['volume', 'create', name, '--capacity', '1GB', '--level', String(level), '--node', 'v1']);
      if (c.code !== 0) throw new Error(c.stderr);
      const a = await cluster.cli(['volume', 'attach', name, '--node', 'v1', '--json']);
      if (a.code !== 0) throw new Error(a.stderr);
      const vol = JSON.parse(a.stdout) as VolumeRecord;
      targets.push({ label: `cio ${level}-copy`, args: ['--ioengine=nbd', `--uri=${vol.attachment!.uri}`] });
    }

    for (const t of targets) {
      process.stderr.write(`filling ${t.label}…\n`);
      await prefill(t);
    }
    // samples[target][job] = one figure per round
    const samples = new Map<string, number[][]>(targets.map((t) => [t.label, JOBS.map(() => [])]));
    for (let round = 1; round <= ROUNDS; round++) {
      for (const t of targets) {
        process.stderr.write(`round ${round}/${ROUNDS}: measuring ${t.label}…\n`);
        for (const [i, job] of JOBS.entries()) samples.get(t.label)![i].push(await fio(t, job));
      }
    }
    const results = new Map<string, number[]>([...samples].map(([label, perJob]) => [label, perJob.map(median)]));

    const base = results.get('nbdkit file')!;
    const raw = results.get('raw file (fio libaio, direct)')!;
    console.log(`\ncio data path benchmark (fio nbd engine, ${RUNTIME_S}s per job, median of ${ROUNDS} rounds, ${SIZE} working set, same disk)\n`);
    console.log(`${'target'.padEnd(32)}${JOBS.map((j) => j.name.padStart(20)).join('')}`);
    for (const [label, row] of results) {
      console.log(`${label.padEnd(32)}${row.map((v, i) => fmt(v, JOBS[i].metric).padStart(20)).join('')}`);
    }
    console.log(`\nspread over the rounds (lowest-highest, as a share of the median)`);
    for (const [label, perJob] of samples) {
      const row = perJob.map((xs) => `${pct(Math.min(...xs), median(xs))}..${pct(Math.max(...xs), median(xs))}`);
      console.log(`${label.padEnd(32)}${row.map((c) => c.padStart(20)).join('')}`);
    }
    console.log(`\nratios against nbdkit file (goal: 1-copy >= 0.7, 3-copy writes >= 0.4)`);
    for (const [label, row] of results) {
      if (!label.startsWith('cio')) continue;
      console.log(`${label.padEnd(32)}${row.map((v, i) => `${(v / base[i]).toFixed(2)}x`.padStart(20)).join('')}`);
    }
    console.log(`\nratios against the raw file`);
    for (const [label, row] of results) {
      if (label.startsWith('raw')) continue;
      console.log(`${label.padEnd(32)}${row.map((v, i) => `${(v / raw[i]).toFixed(2)}x`.padStart(20)).join('')}`);
    }
  } finally {
    if (nbdkit?.pid) nbdkit.kill('SIGTERM');
    await cluster?.down();
    await rm(scratch, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(`bench failed: ${(err as Error).message}`);
  process.exit(1);
});
