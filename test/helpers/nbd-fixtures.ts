// Shared fixtures for the NBD tests: an in-memory backend with an allocation
// map, a server started on a temp socket, and child processes that are
// always reaped.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { BlockStatusExtent, NbdBackend } from '../../src/nbd/backend';
import { NbdServer, type NbdServerOptions } from '../../src/nbd/server';

export interface MemoryBackendOptions {
  minBlockSize?: number;
  preferredBlockSize?: number;
  maxPayload?: number;
  canMultiConn?: boolean;
  readOnly?: boolean;
}

/** Granule of the allocation map that blockStatus reports. */
const GRANULE = 4096;

/** A RAM disk that remembers which 4 KiB granules hold data, and what it was asked to do. */
export class MemoryBackend implements NbdBackend {
  readonly data: Buffer;
  readonly minBlockSize: number;
  readonly preferredBlockSize: number;
  readonly maxPayload: number;
  readonly canMultiConn: boolean;
  readonly readOnly: boolean;
  private readonly allocated: Uint8Array;
  flushes = 0;
  readonly calls: { op: string; offset: number; length: number; fua?: boolean; noHole?: boolean }[] = [];

  constructor(
    readonly size: number,
    opts: MemoryBackendOptions = {},
  ) {
    this.data = Buffer.alloc(size);
    this.allocated = new Uint8Array(Math.ceil(size / GRANULE));
    this.minBlockSize = opts.minBlockSize ?? 512;
    this.preferredBlockSize = opts.preferredBlockSize ?? 4096;
    this.maxPayload = opts.maxPayload ?? 1024 * 1024;
    this.canMultiConn = opts.canMultiConn ?? true;
    this.readOnly = opts.readOnly ?? false;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.calls.push({ op: 'read', offset, length });
    return Buffer.from(this.data.subarray(offset, offset + length));
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.calls.push({ op: 'write', offset, length: data.length, fua });
    data.copy(this.data, offset);
    this.mark(offset, data.length, true, false);
  }

  async flush(): Promise<void> {
    this.calls.push({ op: 'flush', offset: 0, length: 0 });
    this.flushes++;
  }

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    this.calls.push({ op: 'trim', offset, length, fua });
    this.data.fill(0, offset, offset + length);
    this.mark(offset, length, false, true);
  }

  async writeZeroes(offset: number, length: number, fua: boolean, noHole: boolean): Promise<void> {
    this.calls.push({ op: 'writeZeroes', offset, length, fua, noHole });
    this.data.fill(0, offset, offset + length);
    this.mark(offset, length, noHole, !noHole);
  }

  async blockStatus(offset: number, length: number): Promise<BlockStatusExtent[]> {
    const extents: BlockStatusExtent[] = [];
    let at = offset;
    const end = offset + length;
    while (at < end) {
      const granule = Math.floor(at / GRANULE);
      const next = Math.min(end, (granule + 1) * GRANULE);
      const flags = this.allocated[granule] ? 0 : 3;
      const last = extents[extents.length - 1];
      if (last && last.flags === flags) last.length += next - at;
      else extents.push({ length: next - at, flags });
      at = next;
    }
    return extents;
  }

  /** Writes set granules allocated; trims clear only granules they cover entirely. */
  private mark(offset: number, length: number, allocate: boolean, deallocate: boolean): void {
    const end = offset + length;
    for (let g = Math.floor(offset / GRANULE); g * GRANULE < end; g++) {
      const covers = g * GRANULE >= offset && (g + 1) * GRANULE <= end;
      if (allocate) this.allocated[g] = 1;
      else if (deallocate && covers) this.allocated[g] = 0;
    }
  }
}

/** A backend that behaves like `base` except for the methods given. */
export function overrideBackend(base: NbdBackend, overrides: Partial<NbdBackend>): NbdBackend {
  return {
    size: base.size,
    minBlockSize: base.minBlockSize,
    preferredBlockSize: base.preferredBlockSize,
    maxPayload: base.maxPayload,
    canMultiConn: base.canMultiConn,
    readOnly: base.readOnly,
    read: (o, l) => base.read(o, l),
    write: (o, d, f) => base.write(o, d, f),
    flush: () => base.flush(),
    trim: (o, l, f) => base.trim(o, l, f),
    writeZeroes: (o, l, f, n) => base.writeZeroes(o, l, f, n),
    blockStatus: base.blockStatus ? (o, l) => base.blockStatus!(o, l) : undefined,
    ...overrides,
  };
}

/** A promise with its resolve function, for holding backend calls until a test releases them. */
export function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

export function makeTempDir(prefix: string): string {
  return mkdtempSync(path.join(os.tmpdir(), `cio-${prefix}-`));
}

export function removeTempDir(dir: string | undefined): void {
  if (dir) rmSync(dir, { recursive: true, force: true });
}

export async function startServer(
  socketPath: string,
  exports: Record<string, NbdBackend>,
  extra: Partial<NbdServerOptions> = {},
): Promise<NbdServer> {
  const server = new NbdServer({
    socketPath,
    lookup: (name) => exports[name],
    list: () => Object.keys(exports),
    ...extra,
  });
  await server.listen();
  return server;
}

export function nbdUri(socketPath: string, exportName: string): string {
  return `nbd+unix:///${exportName}?socket=${socketPath}`;
}

/** Poll `check` until it returns true (the limit only stops a broken test from hanging). */
export async function eventually(check: () => boolean | Promise<boolean>, what: string, limitMs = 30_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs external tools asynchronously (the server under test lives in this process) and kills leftovers. */
export class ChildProcesses {
  private readonly running = new Set<ChildProcess>();

  /** `cwd` matters for tools that leave files behind (fio writes verify state files there). */
  run(command: string, args: string[], opts: { timeoutMs?: number; cwd?: string } = {}): Promise<RunResult> {
    return new Promise((resolve, reject) => {
      const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: opts.cwd });
      this.running.add(child);
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
      child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
      const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
      child.once('error', (err) => {
        clearTimeout(timer);
        this.running.delete(child);
        reject(err);
      });
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        this.running.delete(child);
        resolve({ code, signal, stdout, stderr });
      });
    });
  }

  killAll(): void {
    for (const child of this.running) child.kill('SIGKILL');
    this.running.clear();
  }
}
