// The dirty map of a stale copy: which regions of the volume were written
// while that copy missed them (DESIGN invariant 5). A returning copy is
// resynced by copying only these regions. Regions are a power of two in size,
// chosen so the map stays small (at most 2^18 bits) for any volume size.

const MIN_REGION = 64 * 1024;
const MAX_BITS = 1 << 18;

export function regionSizeFor(volumeBytes: number): number {
  let region = MIN_REGION;
  while (Math.ceil(volumeBytes / region) > MAX_BITS) region *= 2;
  return region;
}

export interface DirtyMapJson {
  regionSize: number;
  volumeBytes: number;
  /** base64 of the bitmap, bit i = region i. */
  bits: string;
}

export class DirtyMap {
  readonly regionSize: number;
  private readonly bits: Uint8Array;

  constructor(
    readonly volumeBytes: number,
    regionSize = regionSizeFor(volumeBytes),
    bits?: Uint8Array,
  ) {
    this.regionSize = regionSize;
    const count = Math.ceil(volumeBytes / regionSize);
    this.bits = new Uint8Array(Math.ceil(count / 8));
    if (bits) this.bits.set(bits.subarray(0, this.bits.length));
  }

  get regionCount(): number {
    return Math.ceil(this.volumeBytes / this.regionSize);
  }

  /** Mark [offset, offset+length) dirty; returns true if any region was clean before. */
  mark(offset: number, length: number): boolean {
    if (length <= 0) return false;
    const first = Math.floor(offset / this.regionSize);
    const last = Math.min(this.regionCount - 1, Math.floor((offset + length - 1) / this.regionSize));
    let changed = false;
    for (let i = first; i <= last; i++) {
      const mask = 1 << (i & 7);
      if ((this.bits[i >> 3] & mask) === 0) {
        this.bits[i >> 3] |= mask;
        changed = true;
      }
    }
    return changed;
  }

  isDirty(region: number): boolean {
    return (this.bits[region >> 3] & (1 << (region & 7))) !== 0;
  }

  /** Dirty ranges as (offset, length), adjacent regions merged, clipped to the volume. */
  ranges(): Array<{ offset: number; length: number }> {
    const out: Array<{ offset: number; length: number }> = [];
    for (let i = 0; i < this.regionCount; i++) {
      if (!this.isDirty(i)) continue;
      const offset = i * this.regionSize;
      const length = Math.min(this.regionSize, this.volumeBytes - offset);
      const prev = out[out.length - 1];
      if (prev && prev.offset + prev.length === offset) prev.length += length;
      else out.push({ offset, length });
    }
    return out;
  }

  dirtyBytes(): number {
    return this.ranges().reduce((n, r) => n + r.length, 0);
  }

  union(other: DirtyMap): void {
    if (other.regionSize !== this.regionSize) {
      for (const r of other.ranges()) this.mark(r.offset, r.length);
      return;
    }
    for (let i = 0; i < this.bits.length; i++) this.bits[i] |= other.bits[i] ?? 0;
  }

  toJSON(): DirtyMapJson {
    return { regionSize: this.regionSize, volumeBytes: this.volumeBytes, bits: Buffer.from(this.bits).toString('base64') };
  }

  static fromJSON(json: DirtyMapJson): DirtyMap {
    return new DirtyMap(json.volumeBytes, json.regionSize, Buffer.from(json.bits, 'base64'));
  }
}
