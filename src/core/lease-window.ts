// How long this node may still count on its etcd lease, by its own clock.
//
// etcd extends a lease by its TTL from the moment it handles a keepalive (or
// the grant), which is after this node sent it. So once a keepalive sent at
// time t is answered, the lease holds at least until t + TTL here, less a
// margin for the two clocks running at slightly different rates. A volume's
// next owner can take it only after this node's lease expired in etcd, so I/O
// this node serves before that bound cannot overlap with the next owner's
// (failure 6: a cut-off old owner kept serving reads from its own copy).
import { invariant } from '../util/errors';

/** Part of the TTL not counted on: clock rate differences between this node and etcd. */
export const LEASE_CLOCK_MARGIN = 0.05;
/** Keepalives sent and not yet answered that are remembered (one every TTL/3, so a few suffice). */
const MAX_UNANSWERED = 32;

export class LeaseWindow {
  private readonly unanswered: number[] = [];
  private heldUntil = 0;
  /** Counts leases: a lost lease ends a generation, and I/O armed under it stays stopped. */
  generation = 0;

  constructor(private readonly ttlMs: number) {
    invariant(ttlMs > 0, 'lease TTL must be positive');
  }

  /** The lease was granted (or its key written) by a request sent at `sentAt`. */
  granted(sentAt: number): void {
    this.extend(sentAt);
  }

  /** A keepalive is sent now; answers come back in order on one stream. */
  keepaliveSent(now: number): void {
    // Full: this send is not remembered, so its answer extends nothing (pairing
    // an answer with a later send than its own would overstate the lease).
    if (this.unanswered.length < MAX_UNANSWERED) this.unanswered.push(now);
  }

  /** The oldest unanswered keepalive was answered: the lease holds a TTL past its sending. */
  keepaliveAnswered(): void {
    const sentAt = this.unanswered.shift();
    if (sentAt !== undefined) this.extend(sentAt);
  }

  /** A new keepalive stream: answers to keepalives sent on the old one never come. */
  streamRestarted(): void {
    this.unanswered.length = 0;
  }

  /** etcd says the lease is gone (or it expired before a keepalive got through). */
  lost(): void {
    this.generation++;
    this.heldUntil = 0;
    this.unanswered.length = 0;
  }

  /** Whether the lease of `generation` is still held at `now`. */
  held(generation: number, now: number): boolean {
    return generation === this.generation && now < this.heldUntil;
  }

  until(): number {
    return this.heldUntil;
  }

  private extend(sentAt: number): void {
    this.heldUntil = Math.max(this.heldUntil, sentAt + this.ttlMs * (1 - LEASE_CLOCK_MARGIN));
  }
}
