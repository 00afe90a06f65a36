// The filesystem on a volume's block device: made on first use only, checked
// before every mount, mounted and unmounted. Never runs mkfs over anything
// that could be data.
import type { Filesystem } from '../core/types';
import { FILESYSTEMS } from '../core/types';
import { UserError } from '../util/errors';
import type { Logger } from '../util/log';
import { mountAt } from './mounts';
import { mustRunTool, runTool, toolOutput } from './run';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** What blkid finds on a device: a filesystem type, another signature (partition table, RAID …), or nothing. */
export type Probe = { kind: 'filesystem'; type: string } | { kind: 'other'; what: string } | { kind: 'nothing' };

/** Parse `blkid -p -o export` output (exit 0). */
export function parseBlkid(stdout: string): Probe {
  const fields = new Map(stdout.split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)] as const));
  const type = fields.get('TYPE');
  if (type && (fields.get('USAGE') ?? 'filesystem') === 'filesystem') return { kind: 'filesystem', type };
  const what = type ?? (fields.has('PTTYPE') ? `a ${fields.get('PTTYPE')} partition table` : 'an unknown signature');
  return { kind: 'other', what };
}

export async function probe(device: string): Promise<Probe> {
  const res = await runTool('blkid', ['-p', '-o', 'export', device], 60_000);
  if (res.code === 2) return { kind: 'nothing' };
  if (res.code !== 0) throw new Error(`blkid -p ${device} failed: ${toolOutput(res)}`);
  return parseBlkid(res.stdout);
}

/** True when the first MiB reads as zeroes: a fresh volume, not data blkid cannot name. */
async function startsBlank(device: string): Promise<boolean> {
  const res = await runTool('cmp', ['-s', '-n', String(1024 * 1024), device, '/dev/zero'], 60_000);
  if (res.code > 1) throw new Error(`cannot read ${device}: ${toolOutput(res)}`);
  return res.code === 0;
}

async function makeFilesystem(device: string, fs: Filesystem): Promise<void> {
  // No discard: a new volume reads as zeroes already, and a whole-device TRIM through nbdfuse is slow.
  if (fs === 'ext4') await mustRunTool('mkfs.ext4', ['-q', '-E', 'nodiscard', device], 30 * 60_000);
  else await mustRunTool('mkfs.xfs', ['-q', '-K', device], 30 * 60_000);
}

/**
 * Find the filesystem on `device`, making `wanted` if the device is blank.
 * A volume that already holds a filesystem keeps it, even if its record asks
 * for another type (the data wins); anything else is refused.
 */
export async function ensureFilesystem(volume: string, device: string, wanted: Filesystem, logger: Logger): Promise<{ type: Filesystem; formatted: boolean }> {
  const found = await probe(device);
  if (found.kind === 'filesystem') {
    if (!(FILESYSTEMS as readonly string[]).includes(found.type)) throw new UserError(`volume ${volume} holds a ${found.type} filesystem; cio mounts only ${FILESYSTEMS.join(' and ')}`);
    if (found.type !== wanted) logger.warn({ volume, found: found.type, wanted }, 'the volume holds another filesystem than its record says; mounting what is there');
    return { type: found.type as Filesystem, formatted: false };
  }
  if (found.kind === 'other') throw new UserError(`volume ${volume} holds ${found.what}, not a filesystem; cio will not format over it`);
  if (!(await startsBlank(device))) throw new UserError(`volume ${volume} holds data but no filesystem cio recognizes; cio will not format over it`);
  logger.info({ volume, filesystem: wanted }, 'first use of the volume: making its filesystem');
  await makeFilesystem(device, wanted);
  return { type: wanted, formatted: true };
}

function mountOptions(fs: Filesystem): string[] {
  // XFS refuses a second filesystem with the same UUID on one host; a volume is
  // mounted once per host, but a dead mount left by a crashed agent (or another
  // node of a one-machine test cluster) must not block the takeover.
  return fs === 'xfs' ? ['-o', 'nouuid'] : [];
}

/**
 * Check the filesystem before mounting. ext4: `fsck.ext4 -p` replays the
 * journal and fixes what is safe. XFS needs no check at mount, but a check
 * catches corruption: a dirty log (normal after a crash or failover) is first
 * replayed by a mount and unmount, as xfs_repair asks, then checked.
 */
export async function checkFilesystem(volume: string, device: string, fs: Filesystem, scratchMount: string, logger: Logger): Promise<void> {
  if (fs === 'ext4') {
    const res = await runTool('fsck.ext4', ['-p', device], 30 * 60_000);
    if (res.code >= 4) throw new UserError(`the ext4 filesystem of volume ${volume} has errors fsck.ext4 -p cannot fix (${toolOutput(res)}); repair it by hand with fsck.ext4`);
    if (res.code !== 0) logger.warn({ volume, output: toolOutput(res) }, 'fsck.ext4 fixed the filesystem');
    return;
  }
  let res = await runTool('xfs_repair', ['-n', device], 30 * 60_000);
  if (res.code !== 0 && /metadata changes in a log/.test(res.stdout + res.stderr)) {
    logger.info({ volume }, 'XFS log is dirty (unclean shutdown); replaying it before the check');
    await mountFilesystem(device, fs, scratchMount);
    await unmountFilesystem(scratchMount, logger);
    res = await runTool('xfs_repair', ['-n', device], 30 * 60_000);
  }
  if (res.code !== 0) throw new UserError(`the XFS filesystem of volume ${volume} is damaged (xfs_repair -n: ${toolOutput(res)}); repair it by hand with xfs_repair`);
}

export async function mountFilesystem(device: string, fs: Filesystem, mountpoint: string): Promise<void> {
  const existing = await mountAt(mountpoint);
  if (existing) throw new Error(`${mountpoint} is already a mount point (of ${existing.source})`);
  await mustRunTool('mount', ['-t', fs, ...mountOptions(fs), device, mountpoint], 10 * 60_000);
}

/**
 * Unmount, waiting a little for users to go away; a lazy unmount is the last
 * resort, so the node can still give the volume up. Data is synced first, so
 * even a lazily unmounted filesystem has nothing unwritten at that point.
 * Returns 'lazy' when the filesystem may live on until its last user leaves.
 */
export async function unmountFilesystem(mountpoint: string, logger: Logger, busyWaitMs = 5000): Promise<'unmounted' | 'lazy' | 'not-mounted'> {
  if (!(await mountAt(mountpoint))) return 'not-mounted';
  await runTool('sync', ['-f', mountpoint], 10 * 60_000);
  const deadline = Date.now() + busyWaitMs;
  let last = '';
  while (true) {
    const res = await runTool('umount', [mountpoint], 10 * 60_000);
    if (res.code === 0 || !(await mountAt(mountpoint))) return 'unmounted';
    last = toolOutput(res);
    if (Date.now() >= deadline) break;
    await sleep(250);
  }
  logger.warn({ mountpoint, err: last }, 'filesystem still busy; unmounting it lazily');
  await mustRunTool('umount', ['-l', mountpoint], 60_000);
  return 'lazy';
}
