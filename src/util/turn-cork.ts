// Writes made during one turn of the event loop (every file or socket callback
// of one poll phase, say) leave in a single writev: the socket is corked on the
// first write of the turn and uncorked in setImmediate, after the poll phase.
// Fewer syscalls and wake-ups on both sides of the data path.
import type { Writable } from 'node:stream';

export class TurnCork {
  private corked = false;

  constructor(private readonly socket: Writable) {}

  /** Call before writing: holds this turn's writes together. */
  hold(): void {
    if (this.corked) return;
    this.corked = true;
    this.socket.cork();
    setImmediate(this.release);
  }

  /** Push held writes out now (e.g. before ending the socket). */
  readonly release = (): void => {
    if (!this.corked) return;
    this.corked = false;
    this.socket.uncork();
  };
}
