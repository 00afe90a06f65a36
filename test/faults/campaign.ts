// The fault campaign: each fault kind, several runs, on a real local cluster
// (real etcd, agents, replica servers, NBD) under a writer that records every
// acknowledged write. After each run: every acknowledged record reads back
// exactly, every copy is in sync again, and all copies' images are identical.
// Prints one line per kind:
//   FAULT owner-kill: runs 10, acked 123456, lost 0, copies differ 0
// and exits non-zero on any loss, difference or run that did not complete.
//
//   node dist/test/faults/campaign.js [--runs N] [--kinds a,b]
import { copyFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { ETCD_NODE_PORT_BASE } from '../../src/cluster/launcher';
import { RecordWriter, verifyRecords } from '../../src/cluster/record-writer';
import type { SimpleNbdClient } from '../../src/nbd/client';
import { eventually, LocalCluster } from '../helpers/local-cluster';
import { NetCut } from '../helpers/netcut';
import { attachAndConnect, cliOk, replicaFile, volumeInfo } from '../helpers/volumes';
import { sha256File } from '../helpers/tools';
import { keys } from '../../src/store/keys';

const IP_PREFIX = '127.0.42.';
const NODES = ['v1', 'v2', 'v3', 'v4'];
/** Records per stream at most; streams sit 4096 records (16 MiB) apart in a 128 MiB volume. */
const STREAM_BLOCKS = 4096;
const STREAM_RECORDS = 3000;

interface NodeRow {
  id: string;
  name: string;
  ip: string;
}

interface Stream {
  writer: RecordWriter;
  name: string;
  base: number;
}

/** One run's volume: its streams (each verified at the end) and the client in use now. */
class Run {
  readonly streams: Stream[] = [];
  client!: SimpleNbdClient;
  owner!: string;

  constructor(
    readonly ctx: Campaign,
    readonly volume: string,
  ) {}

  /** Start a new stream of records on the current client. */
  write(fua = true): RecordWriter {
    const i = this.streams.length;
    const writer = new RecordWriter(this.client, `${this.volume}-s${i}`, i * STREAM_BLOCKS, 0, 4, fua);
    this.streams.push({ writer, name: `${this.volume}-s${i}`, base: i * STREAM_BLOCKS });
    writer.start(STREAM_RECORDS);
    return writer;
  }

  async until(writer: RecordWriter, records: number): Promise<void> {
    await eventually(`${records} records acknowledged`, async () => writer.acked.size >= records || writer.error !== undefined || writer.highestSeq >= STREAM_RECORDS, 60_000);
  }

  /** The copies of the volume and where they are. */
  async copies(): Promise<Array<{ id: string; nodeId: string; state: string; node: NodeRow }>> {
    const nodes = await this.ctx.nodes();
    return (await volumeInfo(this.ctx.cluster, this.volume)).replicas.map((r) => ({ ...r, node: nodes.find((n) => n.id === r.nodeId)! }));
  }

  /** A node holding a copy, not the owner. */
  async copyNode(): Promise<NodeRow> {
    return (await this.copies()).find((c) => c.node.name !== this.owner)!.node;
  }

  /** Kill a copy's node once the writer is under way, and let it write `more` records without it. */
  async killCopyWhileWriting(w: RecordWriter, more: number): Promise<NodeRow> {
    await this.until(w, 200);
    const copy = await this.copyNode();
    await this.ctx.cluster.nodeAction('kill', copy.name);
    await this.until(w, w.acked.size + more);
    return copy;
  }

  /** After the owner is gone: wait for the release, attach on a node holding an in-sync copy, go on writing. */
  async failover(exclude: string[]): Promise<void> {
    await eventually('the volume released', async () => (await volumeInfo(this.ctx.cluster, this.volume)).owner === null, 60_000);
    const target = (await this.copies()).find((c) => c.state === 'in-sync' && !exclude.includes(c.node.name))!.node.name;
    this.client.close();
    const { client } = await attachAndConnect(this.ctx.cluster, this.volume, target);
    this.client = client;
    this.owner = target;
  }
}

interface FaultKind {
  name: string;
  level: 2 | 3;
  run(r: Run): Promise<void>;
}

/**
 * The owner fails (`fault`): the volume is released, attached on a node with
 * an in-sync copy and written on; then the owner comes back (`heal`) and must
 * not change anything.
 */
function ownerFault(name: string, fault: (r: Run, owner: string) => Promise<unknown>, heal: (r: Run, owner: string) => Promise<unknown>): FaultKind {
  return {
    name,
    level: 2,
    async run(r) {
      const w = r.write();
      await r.until(w, 200);
      const owner = r.owner;
      await fault(r, owner);
      await r.failover([owner]);
      await r.until(r.write(), 200);
      await heal(r, owner);
      await w.stop();
    },
  };
}

const KINDS: FaultKind[] = [
  ownerFault('owner-kill', (r, owner) => r.ctx.cluster.nodeAction('kill', owner), (r, owner) => r.ctx.cluster.nodeAction('start', owner)),

  {
    name: 'copy-kill',
    level: 2,
    async run(r) {
      const w = r.write();
      const copy = await r.killCopyWhileWriting(w, 300);
      await r.ctx.cluster.nodeAction('start', copy.name);
    },
  },
  {
    // Writes without FUA: a copy's power loss takes what it had not flushed.
    name: 'copy-power-loss',
    level: 2,
    async run(r) {
      const first = r.write(false);
      await r.until(first, 200);
      await first.stop();
      await r.client.flush();
      const copy = (await r.copies()).find((c) => c.node.name !== r.owner)!;
      const image = replicaFile(r.ctx.cluster, copy.id);
      const saved = path.join(r.ctx.cluster.dir, `${copy.id}.at-flush.img`);
      await copyFile(image, saved); // its disk as of the last completed flush
      const w = r.write(false);
      await r.until(w, 300); // acknowledged, in the copy's page cache only
      await r.ctx.cluster.nodeAction('kill', copy.node.name);
      await copyFile(saved, image);
      await rm(saved, { force: true });
      await r.until(w, w.acked.size + 200);
      await r.ctx.cluster.nodeAction('start', copy.node.name);
    },
  },
  ownerFault('owner-stop', (r, owner) => r.ctx.cluster.nodeAction('pause', owner), (r, owner) => r.ctx.cluster.nodeAction('resume', owner)),

  ownerFault('owner-etcd-cut', (r, owner) => r.ctx.net.cutPort(ETCD_NODE_PORT_BASE + NODES.indexOf(owner) + 1), (r) => r.ctx.net.heal()),

  {
    name: 'copy-cut',
    level: 2,
    async run(r) {
      const w = r.write();
      await r.until(w, 200);
      const owner = (await r.ctx.nodes()).find((n) => n.name === r.owner)!;
      const copy = await r.copyNode();
      await r.ctx.net.cut(owner.ip, copy.ip);
      await r.until(w, w.acked.size + 300);
      await r.ctx.net.heal();
    },
  },
  {
    name: 'rebuild-restart',
    level: 2,
    async run(r) {
      const w = r.write();
      const copy = await r.killCopyWhileWriting(w, 1500); // enough missed for a resync that takes a while
      await r.ctx.cluster.nodeAction('start', copy.name);
      await eventually('the resync under way', () => r.ctx.rebuilding(r.volume), 60_000, 10);
      await r.ctx.cluster.nodeAction('kill', copy.name);
      await r.until(w, w.acked.size + 200);
      await r.ctx.cluster.nodeAction('start', copy.name);
    },
  },
  {
    name: 'double-failure',
    level: 3,
    async run(r) {
      const w = r.write();
      await r.until(w, 200);
      const owner = r.owner;
      const copy = await r.copyNode();
      // One after the other: the launcher's state file takes one change at a time.
      await r.ctx.cluster.nodeAction('kill', owner);
      await r.ctx.cluster.nodeAction('kill', copy.name);
      await w.stop();
      await r.failover([owner, copy.name]);
      await r.until(r.write(), 200);
      await r.ctx.cluster.nodeAction('start', owner);
      await r.ctx.cluster.nodeAction('start', copy.name);
    },
  },
];

interface Totals {
  runs: number;
  acked: number;
  lost: number;
  differ: number;
  incomplete: number;
}

class Campaign {
  cluster!: LocalCluster;
  readonly net = new NetCut('cio_faults');
  private volumeSeq = 0;

  async nodes(): Promise<NodeRow[]> {
    return JSON.parse(await cliOk(this.cluster, ['node', 'ls', '--json'])) as NodeRow[];
  }

  /**
   * Whether the owner has a rebuild or resync of one of the volume's copies
   * starting or under way: it keeps the progress key while one runs (read from
   * etcd, fast enough to catch one).
   */
  async rebuilding(volume: string): Promise<boolean> {
    return (await (await this.cluster.etcd()).get(keys.progress(volume)).string()) !== null;
  }

  async up(): Promise<void> {
    this.cluster = await LocalCluster.up({ nodes: NODES.length, ipPrefix: IP_PREFIX, leaseTtl: 3, extraArgs: ['--rebuild-grace', '600', '--replica-timeout', '2000', '--rebuild-rate', '2'] });
  }

  async down(): Promise<void> {
    await this.net.heal();
    await this.cluster?.down();
  }

  /** One run of a kind; adds to the totals. Throws only if the run could not complete. */
  async once(kind: FaultKind, i: number, t: Totals): Promise<void> {
    const volume = `f${++this.volumeSeq}`;
    const owner = NODES[i % NODES.length];
    await cliOk(this.cluster, ['volume', 'create', volume, '--capacity', '128MB', '--level', String(kind.level), '--node', owner]);
    const run = new Run(this, volume);
    run.owner = owner;
    run.client = (await attachAndConnect(this.cluster, volume, owner)).client;
    await kind.run(run);
    for (const s of run.streams) await s.writer.stop();
    // Everything healed: every copy in sync again.
    await eventually(`${volume}: every copy in sync`, async () => {
      const v = await volumeInfo(this.cluster, volume);
      return v.replicas.length === kind.level && v.replicas.every((x) => x.state === 'in-sync');
    }, 180_000);
    for (const s of run.streams) {
      t.acked += s.writer.acked.size;
      t.lost += (await verifyRecords(run.client, s.name, s.base, s.writer.acked)).length;
    }
    run.client.close();
    await cliOk(this.cluster, ['volume', 'detach', volume]);
    const v = await volumeInfo(this.cluster, volume);
    const sums = await Promise.all(v.replicas.map((r) => sha256File(replicaFile(this.cluster, r.id))));
    if (new Set(sums).size !== 1) {
      t.differ++;
      console.error(`${kind.name} run ${i + 1}: copies of ${volume} differ: ${v.replicas.map((r, k) => `${r.nodeName}=${sums[k].slice(0, 12)}`).join(' ')}`);
    }
    await cliOk(this.cluster, ['volume', 'rm', volume]).catch(() => undefined);
    t.runs++;
  }
}

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  const runs = Number(args[args.indexOf('--runs') + 1] ?? 10) || 10;
  const only = args.includes('--kinds') ? args[args.indexOf('--kinds') + 1].split(',') : undefined;
  const kinds = KINDS.filter((k) => !only || only.includes(k.name));
  if (kinds.length === 0) throw new Error(`no such fault kind; known: ${KINDS.map((k) => k.name).join(', ')}`);
  const campaign = new Campaign();
  // Interrupted: stop this campaign's daemons (by PID, through the launcher) before leaving.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      console.error(`${signal}: stopping the campaign's cluster`);
      void campaign.down().finally(() => process.exit(130));
    });
  }
  let bad = false;
  try {
    for (const kind of kinds) {
      // A fresh cluster per kind: one kind's leftovers never explain another's result.
      await campaign.up();
      const t: Totals = { runs: 0, acked: 0, lost: 0, differ: 0, incomplete: 0 };
      for (let i = 0; i < runs; i++) {
        try {
          await campaign.once(kind, i, t);
        } catch (err) {
          t.incomplete++;
          console.error(`${kind.name} run ${i + 1} did not complete: ${(err as Error).message}`);
          // Whatever state it left, the next run starts on a fresh cluster.
          await campaign.down();
          await campaign.up();
        }
      }
      await campaign.down();
      const line = `FAULT ${kind.name}: runs ${t.runs}, acked ${t.acked}, lost ${t.lost}, copies differ ${t.differ}${t.incomplete ? `, incomplete ${t.incomplete}` : ''}`;
      console.log(line);
      if (t.lost || t.differ || t.incomplete) bad = true;
    }
  } finally {
    await campaign.down().catch(() => undefined);
  }
  return bad ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(2);
  },
);
