// Typed access to the native fsext addon (fsext.c beside this file): hole
// punching, preallocation, SEEK_DATA/SEEK_HOLE, pwrite in pieces and
// SO_RCVLOWAT, which Node.js does not expose.
// Built by `node-gyp rebuild` into <repo>/build/Release/fsext.node.
import fs from 'node:fs';
import path from 'node:path';

interface FsextBinding {
  punchHole(fd: number, offset: number, length: number): Promise<void>;
  zeroRange(fd: number, offset: number, length: number): Promise<void>;
  allocate(fd: number, offset: number, length: number): Promise<void>;
  seekData(fd: number, offset: number): number;
  seekHole(fd: number, offset: number): number;
  writePieces(fd: number, data: Uint8Array, offset: number, piece: number): Promise<void>;
  setRecvLowWater(fd: number, bytes: number): void;
}

export interface Extent {
  offset: number;
  length: number;
}

const ADDON_RELATIVE_PATH = path.join('build', 'Release', 'fsext.node');

let binding: FsextBinding | undefined;

/**
 * The addon sits at the repository root, while this file runs from src/native
 * (ts sources) or dist/src/native (compiled): walk up until it is found.
 */
function findAddon(): string {
  let dir = __dirname;
  for (let i = 0; i < 5; i++) {
    const candidate = path.join(dir, ADDON_RELATIVE_PATH);
    if (fs.existsSync(candidate)) return candidate;
    dir = path.dirname(dir);
  }
  throw new Error(`native addon ${ADDON_RELATIVE_PATH} not found above ${__dirname}: run \`node-gyp rebuild\` in the repository root`);
}

function native(): FsextBinding {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  binding ??= require(findAddon()) as FsextBinding;
  return binding;
}

/** pwrite()s all of `data` at `offset`, at most `piece` bytes per call, in one threadpool job. Keep `data` unchanged until it settles. */
export async function writePieces(fd: number, data: Uint8Array, offset: number, piece: number): Promise<void> {
  if (data.length === 0) return;
  await native().writePieces(fd, data, offset, piece);
}

/** setsockopt(SO_RCVLOWAT): the socket reports readable once `bytes` are queued (or at EOF). */
export function setRecvLowWater(fd: number, bytes: number): void {
  native().setRecvLowWater(fd, bytes);
}

/** Deallocates [offset, offset+length); reads return zeros; the file size is kept. */
export async function punchHole(fd: number, offset: number, length: number): Promise<void> {
  if (length === 0) return;
  await native().punchHole(fd, offset, length);
}

/** Zeroes [offset, offset+length) keeping (or making) it allocated; the file size is kept. */
export async function zeroRange(fd: number, offset: number, length: number): Promise<void> {
  if (length === 0) return;
  await native().zeroRange(fd, offset, length);
}

/** Reserves blocks for [offset, offset+length) (thick provisioning); may grow the file. */
export async function allocate(fd: number, offset: number, length: number): Promise<void> {
  if (length === 0) return;
  await native().allocate(fd, offset, length);
}

/** Start of the first data region at or after `offset`, or -1 if there is none before EOF. */
export function seekData(fd: number, offset: number): number {
  return native().seekData(fd, offset);
}

/** Start of the first hole at or after `offset` (EOF counts as a hole), or -1 if offset >= EOF. */
export function seekHole(fd: number, offset: number): number {
  return native().seekHole(fd, offset);
}

/**
 * The allocated (data) regions within [offset, offset+length), in order,
 * clipped to the range. At most `maxExtents` are returned; `scannedTo` tells
 * how far the listing is complete, so a caller can continue from there.
 * Filesystems without hole tracking report everything below EOF as data.
 */
export function allocatedExtents(
  fd: number,
  offset: number,
  length: number,
  maxExtents = Number.POSITIVE_INFINITY,
): { extents: Extent[]; scannedTo: number } {
  const end = offset + length;
  const extents: Extent[] = [];
  let pos = offset;
  while (pos < end) {
    if (extents.length >= maxExtents) return { extents, scannedTo: pos };
    const dataStart = seekData(fd, pos);
    if (dataStart < 0 || dataStart >= end) break;
    let holeStart = seekHole(fd, dataStart);
    // -1 would mean the file shrank under us (replica files only grow): be
    // conservative and report the rest of the range as data.
    if (holeStart < 0 || holeStart > end) holeStart = end;
    extents.push({ offset: dataStart, length: holeStart - dataStart });
    pos = holeStart;
  }
  return { extents, scannedTo: end };
}
