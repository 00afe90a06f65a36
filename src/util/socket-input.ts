// Socket input through one reused buffer. Node's streams allocate a fresh
// 64 KiB buffer for every read from a socket; at gigabytes per second those
// allocations make V8 run a full collection every few tens of milliseconds
// ("external memory pressure"), which cost more CPU than the I/O itself.
// Node can read into a caller's buffer instead (the `onread` option), but
// only offers that for sockets it connects, not for accepted ones; this sets
// the same per-socket fields the option sets, which works on any socket.
import type { Socket } from 'node:net';
import { setRecvLowWater } from '../native/fsext';

/** Size of the reused buffer: above a Unix or loopback socket's receive buffer, so one read drains it. */
export const SOCKET_READ_BUFFER = 256 * 1024;

interface StreamHandle {
  useUserBuffer?: (buf: Uint8Array) => void;
  fd?: number;
}

/** Largest SO_RCVLOWAT asked for (the kernel caps it at half the receive buffer anyway). */
const LOW_WATER_MAX = 512 * 1024;

/**
 * From now on, hand every chunk the socket receives to `onChunk` as a view of
 * one reused buffer, valid only during the call (copy what must outlive it;
 * ByteQueue.pushReceived/settle do), or of the buffer `directTarget` offered
 * for it (see ByteQueue.directTarget). Bytes the stream had already buffered are
 * passed on first, and 'data' listeners are removed (they would never fire
 * again). Returns false, changing nothing, where this Node version does not
 * support it; the 'data' listeners then keep working.
 */
export function readIntoReusedBuffer(
  socket: Socket,
  onChunk: (chunk: Buffer) => void,
  directTarget: () => Buffer | undefined = () => undefined,
  size = SOCKET_READ_BUFFER,
): boolean {
  const fields = socket as unknown as Record<symbol, unknown> & { _handle?: StreamHandle | null };
  const symbols = Object.getOwnPropertySymbols(socket);
  const kBuffer = symbols.find((s) => s.description === 'kBuffer');
  const kBufferCb = symbols.find((s) => s.description === 'kBufferCb');
  const kBufferGen = symbols.find((s) => s.description === 'kBufferGen');
  const handle = fields._handle;
  if (!kBuffer || !kBufferCb || !kBufferGen || !handle || typeof handle.useUserBuffer !== 'function') return false;
  if (socket.destroyed) return false;
  // No 'data' event fires from now on; the listeners go first so that
  // draining what the stream already holds does not emit it to them too.
  socket.removeAllListeners('data');
  // Anything the stream already read but has not emitted yet comes first.
  const buffered: Buffer[] = [];
  for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null) buffered.push(chunk);
  const buffer = Buffer.allocUnsafe(size);
  // After every read Node asks where the next one goes: into the consumer's
  // own message buffer when it has one waiting (it stays referenced from
  // the socket until the next read is placed elsewhere), else the reused one.
  let current: Buffer = buffer;
  // While a message of known size is arriving over TCP, the socket wakes us
  // only once the rest of it (up to LOW_WATER_MAX) is there, instead of once
  // per segment. The mark never exceeds what is still to come, so the last
  // bytes of a message always wake us; between messages it is 1 again.
  const lowWater = socket.remotePort !== undefined && typeof handle.fd === 'number' && handle.fd >= 0 ? new LowWater(handle.fd) : undefined;
  fields[kBuffer] = buffer;
  fields[kBufferGen] = (): Buffer => {
    const target = directTarget();
    current = target !== undefined && target.length > 0 ? target : buffer;
    lowWater?.set(current === buffer ? 1 : Math.min(current.length, LOW_WATER_MAX));
    return current;
  };
  fields[kBufferCb] = (bytes: number): boolean => {
    onChunk(current.subarray(0, bytes));
    return true; // pausing is done explicitly with socket.pause()
  };
  handle.useUserBuffer(buffer);
  for (const chunk of buffered) onChunk(chunk);
  return true;
}

/** The socket's SO_RCVLOWAT, set only when it changes; given up on if the call fails. */
class LowWater {
  private bytes = 1;
  private broken = false;

  constructor(private readonly fd: number) {}

  set(bytes: number): void {
    if (bytes === this.bytes || this.broken) return;
    try {
      setRecvLowWater(this.fd, bytes);
      this.bytes = bytes;
    } catch {
      // A closed or unusual socket: reads still work, with a wake-up per segment.
      this.broken = true;
    }
  }
}
