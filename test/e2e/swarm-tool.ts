// Helpers for test/e2e/swarm.sh (`make e2e-swarm`), run as
//   node dist/test/e2e/swarm-tool.js pki DIR CLUSTER NAME=IP[,IP…]…
//   node dist/test/e2e/swarm-tool.js check --data FILE --acks DIR [--fenced HOST:CID:MAXSEQ]
//
// pki: the lab's CA and certificates, made by the project's own functions.
//
// check: compares what the writer containers acknowledged with what the
// volume holds. Each writer appends `R HOST CID SEQ` to /data/log, fsyncs the
// file (busybox `sync FILE`), and only then appends SEQ to /acks/HOST-CID (a
// host directory outside the volume). So:
//   - every SEQ in an ack file must be in the data, from that writer: else it is lost;
//   - a record is written only after the one before it was fsynced, so the
//     data's sequence must have no gaps either (a gap is a lost fsynced record);
//   - --fenced HOST:CID:MAX names a writer that lost the volume (frozen while
//     another node took over): none of its records past MAX may be in the data.
// Prints one JSON object; exits 0 whatever it finds (the caller judges).
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { ensureCa, issueCert } from '../../src/security/pki';

export interface DataRecord {
  host: string;
  cid: string;
  seq: number;
}

export interface CheckResult {
  /** Acknowledged records, over all writers. */
  records: number;
  /** Acknowledged records missing from the data. */
  lost: number;
  /** Sequence numbers skipped in the data (fsynced records that are gone). */
  gaps: number;
  /** Lines that are not records (a torn append). */
  torn: number;
  /** Records of the fenced writer past its limit. */
  leaked: number;
  /** Records in the data. */
  dataRecords: number;
  lastSeq: number;
  /** Per writer (HOST-CID): acknowledged count, first and last acknowledged SEQ, records in the data. */
  writers: Record<string, { acked: number; first: number | null; last: number | null; inData: number }>;
  lostExamples: string[];
  leakedExamples: string[];
}

export function parseData(text: string): { records: DataRecord[]; torn: number } {
  const records: DataRecord[] = [];
  let torn = 0;
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const m = /^R (\S+) ([0-9a-f]+) (\d+)$/.exec(line);
    if (m) records.push({ host: m[1], cid: m[2], seq: Number(m[3]) });
    else torn++;
  }
  return { records, torn };
}

export function checkRecords(dataText: string, acks: ReadonlyMap<string, string>, fenced?: { writer: string; maxSeq: number }): CheckResult {
  const { records, torn } = parseData(dataText);
  const have = new Set(records.map((r) => `${r.host}-${r.cid}:${r.seq}`));
  const result: CheckResult = { records: 0, lost: 0, gaps: 0, torn, leaked: 0, dataRecords: records.length, lastSeq: 0, writers: {}, lostExamples: [], leakedExamples: [] };
  for (const [writer, text] of [...acks].sort(([a], [b]) => a.localeCompare(b))) {
    const seqs = text.split('\n').filter((l) => /^\d+$/.test(l)).map(Number);
    const w = { acked: seqs.length, first: seqs.length ? seqs[0] : null, last: seqs.length ? seqs[seqs.length - 1] : null, inData: 0 };
    result.writers[writer] = w;
    result.records += seqs.length;
    for (const s of seqs) {
      if (have.has(`${writer}:${s}`)) continue;
      result.lost++;
      if (result.lostExamples.length < 5) result.lostExamples.push(`${writer}:${s}`);
    }
  }
  let prev: number | undefined;
  for (const r of records) {
    const writer = `${r.host}-${r.cid}`;
    const w = (result.writers[writer] ??= { acked: 0, first: null, last: null, inData: 0 });
    w.inData++;
    if (prev !== undefined && r.seq !== prev + 1) result.gaps++;
    prev = r.seq;
    result.lastSeq = Math.max(result.lastSeq, r.seq);
    if (fenced && writer === fenced.writer && r.seq > fenced.maxSeq) {
      result.leaked++;
      if (result.leakedExamples.length < 5) result.leakedExamples.push(`${writer}:${r.seq}`);
    }
  }
  return result;
}

async function readAcks(dir: string): Promise<Map<string, string>> {
  const acks = new Map<string, string>();
  if (!existsSync(dir)) return acks;
  for (const f of await readdir(dir)) acks.set(f, await readFile(path.join(dir, f), 'utf8'));
  return acks;
}

function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

async function main(argv: string[]): Promise<void> {
  const [cmd, ...args] = argv;
  if (cmd === 'pki') {
    const [dir, cluster, ...names] = args;
    await ensureCa(dir, cluster);
    for (const spec of names) {
      const [name, ips = ''] = spec.split('=');
      await issueCert(dir, name, ips.split(',').filter(Boolean));
    }
    return;
  }
  if (cmd === 'check') {
    const data = flag(args, '--data');
    const ackDir = flag(args, '--acks');
    if (!data || !ackDir) throw new Error('check needs --data FILE and --acks DIR');
    const f = flag(args, '--fenced');
    let fenced: { writer: string; maxSeq: number } | undefined;
    if (f) {
      const i = f.lastIndexOf(':');
      fenced = { writer: f.slice(0, i), maxSeq: Number(f.slice(i + 1)) };
    }
    const text = await readFile(data, 'utf8');
    process.stdout.write(JSON.stringify(checkRecords(text, await readAcks(ackDir), fenced)) + '\n');
    return;
  }
  throw new Error('usage: swarm-tool pki DIR CLUSTER NAME=IP,… | check --data FILE --acks DIR [--fenced HOST-CID:MAXSEQ]');
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    process.stderr.write(`swarm-tool: ${(err as Error).message}\n`);
    process.exit(1);
  });
}
