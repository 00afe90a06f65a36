// The fallback block device for hosts without the kernel nbd module: nbdfuse
// shows the NBD export as the file DIR/nbd (a FUSE mount), and a loop device
// turns that file into a block device.
//
// nbdfuse runs as a child of the agent, in the agent's process group, so that
// a power-loss style kill of the group takes it down too. It is started with
// SIGTERM/SIGINT/SIGHUP ignored (libfuse keeps an ignored signal ignored): a
// graceful stop of the agent's group then does not pull the file out from
// under a mounted filesystem before the agent has unmounted it in order.
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdir, readdir, readFile, realpath, rm, rmdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { isOurProcess, waitForExit } from '../cluster/processes';
import type { Logger } from '../util/log';
import { mountAt } from './mounts';
import { mustRunTool, runTool, toolOutput } from './run';
import type { LoopDevice, NbdfuseProcess } from './state';

const READY_TIMEOUT_MS = 15_000;
const EXIT_TIMEOUT_MS = 10_000;

export function nbdfuseFile(p: Pick<NbdfuseProcess, 'dir'>): string {
  return path.join(p.dir, 'nbd');
}

async function logTail(file: string): Promise<string> {
  const text = await readFile(file, 'utf8').catch(() => '');
  return text.trim().split('\n').slice(-3).join(' ');
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Start nbdfuse on `uri` with its mount at `baseDir/NAME`; resolves once the
 * export file is there with the expected size. `onStarted` is called as soon
 * as the PID is known, so the caller can record it before anything else can fail.
 */
export async function startNbdfuse(baseDir: string, name: string, uri: string, sizeBytes: number, onStarted: (p: NbdfuseProcess) => Promise<void>): Promise<NbdfuseProcess> {
  await mkdir(path.join(baseDir, name), { recursive: true });
  // The canonical path: it is what /proc/self/mountinfo and the loop device's sysfs entry show.
  const base = await realpath(baseDir);
  const proc: NbdfuseProcess = { pid: 0, dir: path.join(base, name), pidFile: path.join(base, `${name}.pid`), logFile: path.join(base, `${name}.log`) };
  if (await mountAt(proc.dir)) throw new Error(`${proc.dir} is already mounted; an earlier attachment of ${name} was not cleaned up`);
  await rm(proc.pidFile, { force: true });
  const log = openSync(proc.logFile, 'w');
  let exited = false;
  try {
    const child = spawn('sh', ['-c', 'trap "" TERM INT HUP; exec nbdfuse "$@"', 'nbdfuse', '-P', proc.pidFile, proc.dir, uri], {
      stdio: ['ignore', log, log],
    });
    if (child.pid === undefined) throw new Error('could not start nbdfuse');
    child.on('exit', () => (exited = true));
    child.unref();
    proc.pid = child.pid;
  } finally {
    closeSync(log);
  }
  // Until the fork has exec'd, /proc shows our own command line; stopNbdfuse
  // recognises the process by its command line, so wait for that first.
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (!exited && !isOurProcess(proc.pid, proc.dir) && Date.now() < deadline) await sleep(5);
  await onStarted(proc);

  // nbdfuse writes its pid file once it serves; the file size proves it reached the right export.
  while (Date.now() < deadline) {
    if (exited) throw new Error(`nbdfuse could not open ${uri}: ${(await logTail(proc.logFile)) || 'it exited'}`);
    const ready = await stat(proc.pidFile).then(() => true, () => false);
    if (ready) {
      const size = (await stat(nbdfuseFile(proc))).size;
      if (size !== sizeBytes) throw new Error(`nbdfuse shows ${size} bytes for ${uri}, expected ${sizeBytes}`);
      return proc;
    }
    await sleep(50);
  }
  throw new Error(`nbdfuse did not become ready within ${READY_TIMEOUT_MS / 1000} s: ${await logTail(proc.logFile)}`);
}

/**
 * Stop nbdfuse and make sure its FUSE mount is gone. Unmounting is nbdfuse's
 * documented way to stop (it then exits by itself); a process that does not
 * exit is killed, and a FUSE mount that outlives it is detached lazily.
 */
export async function stopNbdfuse(proc: NbdfuseProcess, logger: Logger): Promise<void> {
  let unmounted = false;
  if (await mountAt(proc.dir)) {
    const res = await runTool('umount', [proc.dir], 30_000);
    unmounted = res.code === 0;
    if (!unmounted) logger.warn({ dir: proc.dir, err: toolOutput(res) }, 'could not unmount nbdfuse; killing it');
  }
  if (proc.pid && isOurProcess(proc.pid, proc.dir)) {
    if (!unmounted || !(await waitForExit(proc.pid, proc.dir, EXIT_TIMEOUT_MS))) {
      try {
        process.kill(proc.pid, 'SIGKILL');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
      }
      if (!(await waitForExit(proc.pid, proc.dir, 5000))) throw new Error(`nbdfuse (pid ${proc.pid}) did not exit after SIGKILL`);
    }
  }
  if (await mountAt(proc.dir)) {
    // Left behind by a killed nbdfuse ("transport endpoint is not connected").
    await mustRunTool('umount', ['-l', proc.dir], 30_000);
  }
  await rmdir(proc.dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
  await rm(proc.pidFile, { force: true });
  await rm(proc.logFile, { force: true });
}

/**
 * The file behind a loop device, from sysfs, or undefined when the device is
 * not bound. Not from `losetup --list`: its ioctl stats the backing file,
 * which fails once nbdfuse is dead — exactly when cleanup needs the answer.
 * A FUSE mount detached lazily while the loop device held its file shows as
 * "/nbd" (the path inside the detached mount).
 */
export async function loopBackingFile(device: string): Promise<string | undefined> {
  const sys = `/sys/block/${path.basename(device)}/loop/backing_file`;
  const text = await readFile(sys, 'utf8').catch(() => undefined);
  return text?.trim() || undefined;
}

/** Bind a free loop device to `file`. Buffered I/O: direct I/O is not what a FUSE file is for. */
export async function attachLoop(file: string): Promise<LoopDevice> {
  const device = (await mustRunTool('losetup', ['--find', '--show', '--direct-io=off', file], 30_000)).trim();
  const backingFile = await loopBackingFile(device);
  if (backingFile !== file) {
    if (backingFile) await runTool('losetup', ['-d', device], 30_000);
    throw new Error(`losetup bound ${device} to ${file} but sysfs shows ${backingFile ?? 'nothing'}`);
  }
  return { device, backingFile };
}

/**
 * Free loop devices bound to nbdfuse files under `dir` that no attachment
 * records (an agent that died between losetup and writing its state). Only
 * for an agent's start, when no attachment of its own is live.
 */
export async function sweepUnrecordedLoops(dir: string, logger: Logger): Promise<void> {
  const prefix = `${await realpath(dir).catch(() => dir)}/`;
  const devices = await readdir('/sys/block').catch(() => [] as string[]);
  for (const dev of devices.filter((d) => d.startsWith('loop'))) {
    const backing = await loopBackingFile(`/dev/${dev}`);
    if (!backing?.startsWith(prefix)) continue;
    logger.warn({ device: `/dev/${dev}`, backing }, 'freeing a loop device no attachment records');
    await runTool('losetup', ['-d', `/dev/${dev}`], 30_000);
  }
}

/** Still bound to our nbdfuse file — also when that FUSE mount was detached lazily (then it is dead, and ours to free). */
async function boundToUs(loop: LoopDevice): Promise<boolean> {
  const now = await loopBackingFile(loop.device);
  return now === loop.backingFile || (now === `/${path.basename(loop.backingFile)}` && !(await mountAt(path.dirname(loop.backingFile))));
}

/**
 * Unbind the loop device if it is still bound to our file. Returns false when
 * the kernel could only mark it to be freed later (something still holds it,
 * e.g. a filesystem that had to be unmounted lazily).
 */
export async function detachLoop(loop: LoopDevice): Promise<boolean> {
  if (!(await boundToUs(loop))) return true;
  await mustRunTool('losetup', ['-d', loop.device], 30_000);
  for (let i = 0; i < 50; i++) {
    if (!(await boundToUs(loop))) return true;
    await sleep(100);
  }
  return false;
}
