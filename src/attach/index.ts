// Attach: an attached volume's NBD export → block device → filesystem → mount
// point, and back. Every step is recorded (state.ts) as soon as it is done,
// and `detachFilesystem` undoes whatever a state holds, so a failure at any
// step, or a crash of the agent, leaves nothing behind once it has run.
import { mkdir, realpath, rmdir } from 'node:fs/promises';
import path from 'node:path';
import type { Filesystem } from '../core/types';
import { errorMessage } from '../util/errors';
import { silentLogger, type Logger } from '../util/log';
import { checkFilesystem, ensureFilesystem, mountFilesystem, unmountFilesystem } from './filesystem';
import { mountAt } from './mounts';
import { connectKernelNbd, disconnectKernelNbd, kernelNbdAvailable } from './nbd-kernel';
import { attachLoop, detachLoop, nbdfuseFile, startNbdfuse, stopNbdfuse, sweepUnrecordedLoops } from './nbdfuse';
import { loadAttachState, loadAttachStates, removeAttachState, saveAttachState, type AttachMethod, type AttachState } from './state';

export type { AttachMethod, AttachState } from './state';
export { loadAttachState, loadAttachStates } from './state';

export const DEFAULT_MOUNT_ROOT = '/cio/volumes';

export interface AttachRequest {
  name: string;
  /** The export of the attached volume, `nbd+unix:///NAME?socket=…`. */
  uri: string;
  sizeBytes: number;
  filesystem: Filesystem;
  /** The volume is mounted at mountRoot/NAME. */
  mountRoot?: string;
  /** Where attachment state, nbdfuse mounts and logs live (per node). */
  workDir: string;
  /** Force a method; by default the kernel's nbd where present, else nbdfuse + loop. */
  method?: AttachMethod;
  logger?: Logger;
}

/** A volume mounted on this node. */
export interface MountedVolume extends AttachState {
  device: string;
  mountpoint: string;
}

const nbdfuseDir = (workDir: string): string => path.join(workDir, 'nbdfuse');

export function chooseAttachMethod(): AttachMethod {
  return kernelNbdAvailable() ? 'nbd-kernel' : 'nbdfuse-loop';
}

function mounted(state: AttachState): MountedVolume {
  if (!state.device || !state.mountpoint) throw new Error(`attachment of ${state.name} is incomplete`);
  return state as MountedVolume;
}

export async function attachFilesystem(req: AttachRequest): Promise<MountedVolume> {
  const logger = req.logger ?? silentLogger;
  if (await loadAttachState(req.workDir, req.name)) throw new Error(`volume ${req.name} is already attached on this node (or was not cleaned up); detach it first`);
  const state: AttachState = {
    name: req.name,
    uri: req.uri,
    sizeBytes: req.sizeBytes,
    filesystem: req.filesystem,
    method: req.method ?? chooseAttachMethod(),
    workDir: req.workDir,
    formatted: false,
    startedAt: new Date().toISOString(),
  };
  await saveAttachState(state);
  try {
    if (state.method === 'nbd-kernel') {
      state.nbdDevice = await connectKernelNbd(req.uri);
      state.device = state.nbdDevice;
    } else {
      const proc = await startNbdfuse(nbdfuseDir(req.workDir), req.name, req.uri, req.sizeBytes, async (p) => {
        state.nbdfuse = p;
        await saveAttachState(state);
      });
      state.loop = await attachLoop(nbdfuseFile(proc));
      state.device = state.loop.device;
    }
    await saveAttachState(state);

    await mkdir(path.join(req.mountRoot ?? DEFAULT_MOUNT_ROOT, req.name), { recursive: true });
    // Canonical, as /proc/self/mountinfo shows it (the mount root may be relative or behind a symlink).
    const mountpoint = await realpath(path.join(req.mountRoot ?? DEFAULT_MOUNT_ROOT, req.name));
    state.mountpoint = mountpoint;
    await saveAttachState(state);
    const fs = await ensureFilesystem(req.name, state.device, req.filesystem, logger);
    state.filesystem = fs.type;
    state.formatted = fs.formatted;
    if (!fs.formatted) await checkFilesystem(req.name, state.device, fs.type, mountpoint, logger);
    await mountFilesystem(state.device, fs.type, mountpoint);
    await saveAttachState(state);
    logger.info({ volume: req.name, method: state.method, device: state.device, mountpoint, formatted: state.formatted }, 'volume mounted');
    return mounted(state);
  } catch (err) {
    await detachFilesystem(state, logger).catch((undoErr: unknown) =>
      logger.error({ volume: req.name, err: errorMessage(undoErr) }, 'could not undo a failed attachment; it is retried when the agent starts'),
    );
    throw err;
  }
}

/**
 * Take an attachment down, top to bottom: filesystem, loop or nbd device,
 * nbdfuse. The filesystem must be unmounted (lazily at worst) before the
 * devices under it are touched; the lower steps are each tried even if one
 * fails. The state file is kept, reduced to what is left, until all is gone.
 */
export async function detachFilesystem(state: AttachState, logger: Logger = silentLogger): Promise<void> {
  const problems: string[] = [];
  if (state.mountpoint) {
    const m = await mountAt(state.mountpoint);
    if (m && state.device && m.source !== state.device) {
      logger.warn({ volume: state.name, mountpoint: state.mountpoint, source: m.source }, 'mount point holds another device now; leaving it alone');
    } else {
      const how = await unmountFilesystem(state.mountpoint, logger);
      if (how === 'lazy') logger.warn({ volume: state.name }, 'unmounted lazily: the loop or nbd device is freed when its last user leaves');
    }
    await rmdir(state.mountpoint).catch(() => undefined); // left if something was written under the mount point
    delete state.mountpoint;
    await saveAttachState(state);
  }
  if (state.loop) {
    try {
      if (!(await detachLoop(state.loop))) logger.warn({ volume: state.name, device: state.loop.device }, 'loop device still in use; the kernel frees it when its user leaves');
      delete state.loop;
      await saveAttachState(state);
    } catch (err) {
      problems.push(errorMessage(err));
    }
  }
  if (state.nbdDevice) {
    try {
      await disconnectKernelNbd(state.nbdDevice);
      delete state.nbdDevice;
      await saveAttachState(state);
    } catch (err) {
      problems.push(errorMessage(err));
    }
  }
  if (state.nbdfuse) {
    try {
      await stopNbdfuse(state.nbdfuse, logger);
      delete state.nbdfuse;
      await saveAttachState(state);
    } catch (err) {
      problems.push(errorMessage(err));
    }
  }
  if (problems.length) throw new Error(`could not take down the attachment of ${state.name} completely: ${problems.join('; ')}`);
  await removeAttachState(state);
}

/**
 * After an agent restart: take down every attachment a previous agent process
 * left. None can be reused, because the NBD export behind each one lived in
 * that process and its connection is gone. Returns the volumes taken down.
 */
export async function cleanupAttachments(workDir: string, logger: Logger = silentLogger): Promise<string[]> {
  const done: string[] = [];
  for (const state of await loadAttachStates(workDir)) {
    try {
      await detachFilesystem(state, logger);
      done.push(state.name);
      logger.info({ volume: state.name }, 'took down an attachment left by a previous agent');
    } catch (err) {
      logger.error({ volume: state.name, err: errorMessage(err) }, 'could not take down an attachment left by a previous agent');
    }
  }
  await sweepUnrecordedLoops(nbdfuseDir(workDir), logger);
  return done;
}
