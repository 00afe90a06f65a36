// An application stand-in for the demo and the HA tests: writes numbered 4 KiB records
// with FUA through NBD, a few in flight, and remembers exactly which were
// acknowledged. `verify` later reads them back and checks every byte.
import { createHash } from 'node:crypto';
import type { SimpleNbdClient } from '../nbd/client';

export const RECORD_SIZE = 4096;

/** The bytes of record `seq` of stream `stream`: a header and a hash-derived body, so any mix-up shows. */
export function recordBytes(stream: string, seq: number): Buffer {
  const buf = Buffer.alloc(RECORD_SIZE);
  buf.write(`CIO-RECORD ${stream} ${seq}\n`, 0);
  let block = createHash('sha256').update(`${stream}:${seq}`).digest();
  for (let off = 64; off < RECORD_SIZE; off += block.length) {
    block.copy(buf, off);
    block = createHash('sha256').update(block).digest();
  }
  return buf;
}

export interface WriterResult {
  /** Records the server acknowledged: they must all read back exactly. */
  acked: Set<number>;
  /** Records sent whose fate is unknown (in flight when the connection failed). */
  unknown: Set<number>;
  error?: string;
}

/** Record `seq` lives at block `base + seq`; streams never overlap. */
export class RecordWriter {
  readonly acked = new Set<number>();
  readonly unknown = new Set<number>();
  private next: number;
  private stopped = false;
  private running: Promise<void> | undefined;
  error: string | undefined;

  constructor(
    private readonly client: SimpleNbdClient,
    readonly stream: string,
    private readonly baseBlock: number,
    startSeq = 0,
    private readonly inFlight = 4,
    /** FUA writes are durable when acknowledged; without, only a later FLUSH makes them so. */
    private readonly fua = true,
  ) {
    this.next = startSeq;
  }

  offsetOf(seq: number): number {
    return (this.baseBlock + seq) * RECORD_SIZE;
  }

  /** Write until stopped, until the connection fails, or until the export is full (records never wrap). */
  start(maxRecords = Number.MAX_SAFE_INTEGER): void {
    if (this.client.size > 0) maxRecords = Math.min(maxRecords, Math.floor(this.client.size / RECORD_SIZE) - this.baseBlock);
    const lane = async (): Promise<void> => {
      while (!this.stopped && this.next < maxRecords) {
        const seq = this.next++;
        this.unknown.add(seq);
        try {
          await this.client.write(this.offsetOf(seq), recordBytes(this.stream, seq), this.fua);
          this.unknown.delete(seq);
          this.acked.add(seq);
        } catch (err) {
          this.error ??= (err as Error).message;
          this.stopped = true;
        }
      }
    };
    this.running = Promise.all(Array.from({ length: this.inFlight }, lane)).then(() => undefined);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.running;
  }

  get done(): Promise<void> | undefined {
    return this.running;
  }

  get highestSeq(): number {
    return this.next;
  }
}

/**
 * Check every acknowledged record byte for byte; an unacknowledged one may
 * hold its record or zeros, nothing else. Returns a list of problems.
 */
export async function verifyRecords(client: SimpleNbdClient, stream: string, baseBlock: number, acked: Iterable<number>, unknown: Iterable<number> = []): Promise<string[]> {
  const problems: string[] = [];
  const zero = Buffer.alloc(RECORD_SIZE);
  for (const seq of acked) {
    const got = await client.read((baseBlock + seq) * RECORD_SIZE, RECORD_SIZE);
    if (!got.equals(recordBytes(stream, seq))) problems.push(`${stream} record ${seq} (acknowledged) reads back wrong: ${JSON.stringify(got.subarray(0, 40).toString('latin1'))}`);
  }
  for (const seq of unknown) {
    const got = await client.read((baseBlock + seq) * RECORD_SIZE, RECORD_SIZE);
    if (!got.equals(recordBytes(stream, seq)) && !got.equals(zero)) problems.push(`${stream} record ${seq} (in flight) holds neither its record nor zeros`);
  }
  return problems;
}
