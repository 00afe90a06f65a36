// Starting and signalling the local cluster's daemons. Each daemon runs in its
// own process group, so a signal reaches it and anything it started (as a power
// loss would). Before signalling, we check that the PID still runs the command
// we started — a PID reused by an unrelated process is never touched.
import { spawn } from 'node:child_process';
import { openSync, closeSync, readFileSync } from 'node:fs';

export interface DaemonSpec {
  command: string;
  args: string[];
  logFile: string;
  env?: NodeJS.ProcessEnv;
}

export function startDaemon(spec: DaemonSpec): number {
  const log = openSync(spec.logFile, 'a');
  try {
    const child = spawn(spec.command, spec.args, {
      detached: true,
      stdio: ['ignore', log, log],
      env: { ...process.env, ...spec.env },
    });
    if (child.pid === undefined) throw new Error(`could not start ${spec.command}`);
    child.unref();
    return child.pid;
  } finally {
    closeSync(log);
  }
}

/** True when `pid` is alive and its command line contains `marker` (a path unique to our daemon). */
export function isOurProcess(pid: number | undefined, marker: string): boolean {
  if (!pid) return false;
  try {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    if (!cmdline.split('\0').some((arg) => arg.includes(marker))) return false;
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // A zombie has exited; it only waits to be reaped.
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z';
  } catch {
    return false;
  }
}

/** 'T' when stopped (SIGSTOP), 'R'/'S'/'D' when running, undefined when gone. */
export function processState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return undefined;
  }
}

export function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

export async function waitForExit(pid: number, marker: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!isOurProcess(pid, marker)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return !isOurProcess(pid, marker);
}

/** SIGTERM, then SIGKILL if it has not exited in time. A stopped process is continued so it can exit. */
export async function stopDaemon(pid: number, marker: string, graceMs = 8000): Promise<void> {
  if (!isOurProcess(pid, marker)) return;
  signalGroup(pid, 'SIGTERM');
  signalGroup(pid, 'SIGCONT');
  if (await waitForExit(pid, marker, graceMs)) return;
  signalGroup(pid, 'SIGKILL');
  await waitForExit(pid, marker, 5000);
}
