// Sends transmission-phase replies. Replies that complete in the same turn of
// the event loop are corked together so the socket emits one writev for all
// of them (header and payload buffers go out without being concatenated).

import type { Socket } from 'node:net';
import { TurnCork } from '../util/turn-cork';

export class ReplyWriter {
  private readonly cork: TurnCork;

  constructor(private readonly socket: Socket) {
    this.cork = new TurnCork(socket);
  }

  /** Bytes accepted by `send` but not yet handed to the kernel. */
  get queuedBytes(): number {
    return this.socket.writableLength;
  }

  /**
   * Queue one reply. `flushed` runs exactly once: when the last buffer has been
   * handed to the kernel (`released` true: the buffers are ours again), or
   * when the socket is gone and the reply is dropped (`released` false unless
   * the buffers were never queued).
   */
  send(buffers: readonly Buffer[], flushed: (released: boolean) => void): void {
    const socket = this.socket;
    if (socket.destroyed || !socket.writable) {
      flushed(true);
      return;
    }
    this.cork.hold();
    const last = buffers.length - 1;
    for (let i = 0; i < last; i++) socket.write(buffers[i]);
    // The callback also fires (with an error) if the socket is destroyed first;
    // then libuv may not be done with the memory, so it is not reused.
    socket.write(buffers[last], (err) => flushed(!err));
  }

  /** Push corked replies out now (before ending the socket). */
  flush(): void {
    this.cork.release();
  }
}
