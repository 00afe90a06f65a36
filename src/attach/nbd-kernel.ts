// The preferred block device where the kernel has the nbd module: nbd-client
// connects /dev/nbdX to the export. (Not exercised by the tests on hosts
// without the module; the fallback is nbdfuse.ts.)
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { mustRunTool, runTool } from './run';

/** Socket path and export name of an `nbd+unix:///NAME?socket=PATH` URI. */
export function parseNbdUnixUri(uri: string): { socket: string; exportName: string } {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw new Error(`not an NBD URI: ${uri}`);
  }
  const socket = url.searchParams.get('socket');
  if (url.protocol !== 'nbd+unix:' || !socket) throw new Error(`not an nbd+unix URI with a socket: ${uri}`);
  return { socket, exportName: decodeURIComponent(url.pathname.replace(/^\//, '')) };
}

function onPath(cmd: string): boolean {
  return (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':').some((dir) => dir && existsSync(`${dir}/${cmd}`));
}

/** True when /dev/nbdX devices exist (module loaded or built in) and nbd-client is installed. */
export function kernelNbdAvailable(): boolean {
  return existsSync('/sys/module/nbd') && existsSync('/dev/nbd0') && onPath('nbd-client');
}

const sysBlock = (device: string): string => `/sys/block/${device.replace('/dev/', '')}`;

async function isFree(device: string): Promise<boolean> {
  if (existsSync(`${sysBlock(device)}/pid`)) return false; // present while a client is connected
  const size = await readFile(`${sysBlock(device)}/size`, 'utf8').catch(() => '');
  return size.trim() === '0';
}

/** Device picking and connecting run one at a time in this process, so two attaches never pick the same device. */
let queue: Promise<unknown> = Promise.resolve();

export function connectKernelNbd(uri: string): Promise<string> {
  const { socket, exportName } = parseNbdUnixUri(uri);
  const next = queue.then(async () => {
    for (let i = 0; existsSync(`/dev/nbd${i}`); i++) {
      const device = `/dev/nbd${i}`;
      if (!(await isFree(device))) continue;
      // Without -persist: after the agent restarts, the attachment is taken down and made again.
      const res = await runTool('nbd-client', ['-unix', socket, device, '-name', exportName, '-block-size', '4096'], 60_000);
      if (res.code === 0) return device;
      if (!(await isFree(device))) continue; // taken by someone else meanwhile
      throw new Error(`nbd-client could not connect ${device} to ${uri}: ${res.stderr.trim() || res.stdout.trim()}`);
    }
    throw new Error('no free /dev/nbdX device (load the module with more devices: modprobe nbd nbds_max=64)');
  });
  queue = next.catch(() => undefined);
  return next;
}

export async function disconnectKernelNbd(device: string): Promise<void> {
  if (await isFree(device)) return;
  await mustRunTool('nbd-client', ['-d', device], 60_000);
}
