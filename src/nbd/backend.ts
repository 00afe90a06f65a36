// The contract between the NBD protocol server and whatever stores the bytes.
// The server validates every request (range, alignment, payload size,
// read-only) before calling the backend, so a backend only sees requests
// that lie within [0, size) and are aligned to minBlockSize.

import { Errno } from './constants';

export interface BlockStatusExtent {
  length: number;
  /** base:allocation flags: 1 HOLE, 2 ZERO. */
  flags: number;
}

export interface NbdBackend {
  /** Export size in bytes (safe integer, multiple of minBlockSize). */
  readonly size: number;
  /** Power of two, at most 64 KiB; every offset and length is aligned to it. */
  readonly minBlockSize: number;
  /** Power of two, >= max(minBlockSize, 512). */
  readonly preferredBlockSize: number;
  /** Largest READ/WRITE payload accepted; a multiple of minBlockSize. */
  readonly maxPayload: number;
  /** True only if FLUSH and FUA on one connection are visible on all of them. */
  readonly canMultiConn: boolean;
  readonly readOnly?: boolean;
  /**
   * The returned buffer belongs to the server from then on: once the reply
   * has been sent, a buffer taken from `ioBuffers` goes back to that pool.
   */
  read(offset: number, length: number): Promise<Buffer>;
  /** Once the returned promise resolves, `data` may be reused by the server: keep no reference to it. */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  flush(): Promise<void>;
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  writeZeroes(offset: number, length: number, fua: boolean, noHole: boolean): Promise<void>;
  /** Extents from `offset` on; may cover less or more than `length` (the server clips). */
  blockStatus?(offset: number, length: number): Promise<BlockStatusExtent[]>;
}

/** An error the client should see with this errno (see `Errno`); anything else becomes EIO. */
export class NbdError extends Error {
  constructor(
    readonly errno: number,
    message?: string,
  ) {
    super(message ?? `NBD error ${errno}`);
    this.name = 'NbdError';
  }
}

export { Errno };

const MAX_MIN_BLOCK_SIZE = 64 * 1024;

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/**
 * The geometry problems of a backend, empty if it is usable. Clients (qemu
 * in particular) reject exports whose block sizes break these rules, so a
 * bad backend is refused at negotiation rather than half-working.
 */
export function backendGeometryProblems(backend: NbdBackend): string[] {
  const problems: string[] = [];
  const { size, minBlockSize, preferredBlockSize, maxPayload } = backend;
  if (!Number.isSafeInteger(size) || size < 0) problems.push(`size ${size} is not a non-negative safe integer`);
  if (!isPowerOfTwo(minBlockSize) || minBlockSize > MAX_MIN_BLOCK_SIZE) {
    problems.push(`minBlockSize ${minBlockSize} is not a power of two <= 64 KiB`);
  } else if (size % minBlockSize !== 0) {
    problems.push(`size ${size} is not a multiple of minBlockSize ${minBlockSize}`);
  }
  if (!isPowerOfTwo(preferredBlockSize) || preferredBlockSize < Math.max(minBlockSize, 512)) {
    problems.push(`preferredBlockSize ${preferredBlockSize} is not a power of two >= max(minBlockSize, 512)`);
  }
  if (!Number.isSafeInteger(maxPayload) || maxPayload < preferredBlockSize || maxPayload > 0xffffffff) {
    problems.push(`maxPayload ${maxPayload} is not between preferredBlockSize and 2^32-1`);
  } else if (maxPayload % minBlockSize !== 0) {
    problems.push(`maxPayload ${maxPayload} is not a multiple of minBlockSize ${minBlockSize}`);
  }
  return problems;
}
