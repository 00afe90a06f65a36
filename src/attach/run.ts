// Running the block and filesystem tools (losetup, blkid, mkfs, mount …).
// Unlike util/exec's `run`, the exit code is returned: several of these tools
// answer with it (blkid 2 = nothing found, fsck 1 = errors corrected).
import { execFile } from 'node:child_process';

export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Exit code reported when a tool was killed for running past its time. */
export const TIMED_OUT = 124;

export function runTool(cmd: string, args: readonly string[], timeoutMs = 120_000): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (!err) return resolve({ code: 0, stdout, stderr });
      const e = err as NodeJS.ErrnoException & { code?: unknown; killed?: boolean };
      if (e.code === 'ENOENT') return reject(new Error(`${cmd} is not installed (needed to mount volumes)`));
      const code = typeof e.code === 'number' ? e.code : e.killed ? TIMED_OUT : 1;
      resolve({ code, stdout, stderr });
    });
  });
}

/** The last lines a tool printed: what a user needs to see when it failed. */
export function toolOutput(res: ToolResult): string {
  return (res.stderr.trim() || res.stdout.trim()).split('\n').slice(-3).join(' ') || `exit code ${res.code}`;
}

/** Run a tool that must succeed; the error names the tool, its arguments and its last words. */
export async function mustRunTool(cmd: string, args: readonly string[], timeoutMs?: number): Promise<string> {
  const res = await runTool(cmd, args, timeoutMs);
  if (res.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${toolOutput(res)}`);
  return res.stdout;
}
