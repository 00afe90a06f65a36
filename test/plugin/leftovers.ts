// What an attachment can leave on the host — loop devices, mounts (the
// filesystem and nbdfuse's FUSE mount) and nbdfuse processes — found by the
// directory they live under, so tests can assert there are none and clean
// up by PID and path whatever a failed test left.
import { readdirSync, readFileSync } from 'node:fs';
import { readMounts } from '../../src/attach/mounts';
import { loopBackingFile } from '../../src/attach/nbdfuse';
import { runTool } from '../../src/attach/run';

export interface Leftovers {
  loops: string[];
  mounts: string[];
  processes: number[];
}

function deadLoopsNow(): Set<string> {
  const dead = new Set<string>();
  for (const dev of readdirSync('/sys/block').filter((d) => d.startsWith('loop'))) {
    try {
      if (readFileSync(`/sys/block/${dev}/loop/backing_file`, 'utf8').trim() === '/nbd') dead.add(`/dev/${dev}`);
    } catch {
      /* not bound */
    }
  }
  return dead;
}

/**
 * Dead loop devices ("/nbd", see below) that were there before this test
 * process started: another run's crash left them in this shared kernel (a
 * real crash takes the kernel with it), so they are not this test's doing.
 */
const deadBeforeTests = deadLoopsNow();

/**
 * Loop devices bound to a file under `root`, read from sysfs (losetup's ioctl
 * fails once nbdfuse is dead). "/nbd" is a loop device whose nbdfuse mount
 * was detached under it: only an attachment can leave that, so it counts too
 * — unless it was already there when the tests started.
 */
async function loopsUnder(root: string): Promise<string[]> {
  const found: string[] = [];
  for (const dev of readdirSync('/sys/block').filter((d) => d.startsWith('loop'))) {
    const backing = await loopBackingFile(`/dev/${dev}`);
    const device = `/dev/${dev}`;
    if (backing && (backing.startsWith(root) || (backing === '/nbd' && !deadBeforeTests.has(device)))) found.push(device);
  }
  return found;
}

function nbdfuseProcessesUnder(root: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'Z') continue;
      if (argv.some((a) => a.endsWith('nbdfuse')) && argv.some((a) => a.includes(root))) pids.push(Number(entry));
    } catch {
      // the process exited while we looked
    }
  }
  return pids;
}

export async function findLeftovers(root: string): Promise<Leftovers> {
  const mounts = (await readMounts()).filter((m) => m.mountpoint.startsWith(root)).map((m) => `${m.mountpoint} (${m.fstype})`);
  return { loops: await loopsUnder(root), mounts, processes: nbdfuseProcessesUnder(root) };
}

/** Remove everything found under `root`: filesystems first, then loop devices, then nbdfuse (by PID) and its mounts. */
export async function sweepLeftovers(root: string): Promise<void> {
  const mountpoints = (await readMounts()).filter((m) => m.mountpoint.startsWith(root) && m.fstype !== 'fuse').map((m) => m.mountpoint);
  for (const mp of mountpoints.sort().reverse()) await runTool('umount', ['-l', mp]);
  for (const dev of await loopsUnder(root)) await runTool('losetup', ['-d', dev]);
  for (const pid of nbdfuseProcessesUnder(root)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  const fuse = (await readMounts()).filter((m) => m.mountpoint.startsWith(root)).map((m) => m.mountpoint);
  for (const mp of fuse.sort().reverse()) await runTool('umount', ['-l', mp]);
}
