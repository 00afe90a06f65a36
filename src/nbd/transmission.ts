// The transmission phase of one connection: cuts requests out of the input
// stream, runs them against the backend concurrently (replies may go out of
// order), and keeps memory bounded.
//
// Back-pressure: every request is charged its payload (WRITE data held, READ
// data to be sent) plus a fixed overhead from the moment its header is parsed
// until its reply has been handed to the kernel. While the charge is at or
// above `maxInFlightBytes`, no new request header is parsed and the socket is
// paused, so a client that floods requests (or never reads replies) stalls on
// its own socket instead of growing our memory. The charge per connection
// therefore stays below maxInFlightBytes + maxPayload + REQUEST_OVERHEAD_BYTES;
// unparsed input adds at most a socket read or two on top.

import type { Socket } from 'node:net';
import type { Logger } from '../util/log';
import { invariant } from '../util/errors';
import { ioBuffers } from '../util/buffer-pool';
import { NbdError, type BlockStatusExtent, type NbdBackend } from './backend';
import type { ByteQueue } from '../util/byte-queue';
import { BASE_ALLOCATION_ID, Command, CommandFlag, Errno, isWireErrno, REQUEST_HEADER_SIZE } from './constants';
import type { NegotiatedExport } from './handshake';
import { blockStatusChunk, errorChunk, offsetDataChunkHeader, simpleReply } from './replies';
import { ReplyWriter } from './reply-writer';
import { parseRequestHeader, rejectRequest, type ExportLimits, type NbdRequest } from './request';

/** Bookkeeping cost charged per request, so floods of tiny requests are bounded too. */
export const REQUEST_OVERHEAD_BYTES = 512;
/** Oversized WRITE payloads up to this size are read and dropped to stay in sync; larger ones mean a broken client. */
const MIN_DISCARDABLE_WRITE = 64 * 1024 * 1024;
/** The spec lets a server describe less than the requested range; this bounds the reply size. */
const MAX_EXTENTS_PER_REPLY = 16 * 1024;

export interface TransmissionStats {
  inFlightRequests: number;
  inFlightBytes: number;
  peakInFlightBytes: number;
  /** Received bytes not yet handed to the backend as requests (including a partial WRITE payload). */
  bufferedInputBytes: number;
  /** Reply bytes accepted by the socket but not yet written to the kernel. */
  queuedReplyBytes: number;
  inputPaused: boolean;
  requestsReceived: number;
}

/** What a request may hold in memory; oversized READ/WRITE are refused without holding data. */
function requestCost(req: NbdRequest, maxPayload: number): number {
  const carriesData = req.type === Command.READ || req.type === Command.WRITE;
  return REQUEST_OVERHEAD_BYTES + (carriesData && req.length <= maxPayload ? req.length : 0);
}

export class Transmission {
  private readonly backend: NbdBackend;
  private readonly limits: ExportLimits;
  private readonly writer: ReplyWriter;
  private readonly maxDiscardableWrite: number;

  private inFlightRequests = 0;
  private inFlightBytes = 0;
  private peakInFlightBytes = 0;
  private requestsReceived = 0;
  private backendCalls = 0;
  private inputPaused = false;
  private parsing = false;
  /** A WRITE whose header was parsed and whose payload is still arriving. */
  private awaitingPayload: NbdRequest | undefined;
  /** Bytes of a rejected oversized WRITE payload still to be dropped. */
  private discardRemaining = 0;
  /** No further requests are accepted (DISC, client EOF, server shutdown, or a fatal error). */
  private stopped = false;
  private ended = false;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly socket: Socket,
    private readonly queue: ByteQueue,
    negotiated: NegotiatedExport,
    private readonly maxInFlightBytes: number,
    private readonly log: Logger,
  ) {
    this.backend = negotiated.backend;
    this.limits = {
      size: this.backend.size,
      minBlockSize: this.backend.minBlockSize,
      maxPayload: this.backend.maxPayload,
      readOnly: this.backend.readOnly === true,
      structuredReplies: negotiated.structuredReplies,
      baseAllocation: negotiated.baseAllocation,
    };
    this.writer = new ReplyWriter(socket);
    this.maxDiscardableWrite = Math.max(MIN_DISCARDABLE_WRITE, 2 * this.backend.maxPayload);
  }

  start(): void {
    this.parse();
  }

  /** Input from the socket; a `borrowed` chunk is valid only during this call (see ByteQueue). */
  onData(chunk: Buffer, borrowed = false): void {
    if (this.stopped && this.discardRemaining === 0 && this.awaitingPayload === undefined) return;
    this.queue.receive(chunk, borrowed);
    this.parse();
    this.queue.settle();
  }

  /** Where the socket may put its next bytes directly (a WRITE payload being gathered). */
  directTarget(): Buffer | undefined {
    return this.awaitingPayload === undefined ? undefined : this.queue.directTarget();
  }

  /** The client closed its sending side: finish what was asked, then close ours. */
  onInputEnd(): void {
    this.stopped = true;
    // A WRITE cut off mid-payload can never run; forget it so the end is not held up.
    const cutOff = this.awaitingPayload;
    if (cutOff !== undefined) {
      this.awaitingPayload = undefined;
      this.queue.clear();
      this.release(cutOff);
    }
    this.discardRemaining = 0;
    this.finishAndEnd();
  }

  /** Graceful stop (server shutdown): take no new requests, finish in-flight ones, then end. */
  stop(): void {
    this.finishAndEnd();
  }

  /** Resolves once no backend call is outstanding. */
  whenIdle(): Promise<void> {
    if (this.backendCalls === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  stats(): TransmissionStats {
    return {
      inFlightRequests: this.inFlightRequests,
      inFlightBytes: this.inFlightBytes,
      peakInFlightBytes: this.peakInFlightBytes,
      bufferedInputBytes: this.queue.length + this.queue.gatheringBytes,
      queuedReplyBytes: this.writer.queuedBytes,
      inputPaused: this.inputPaused,
      requestsReceived: this.requestsReceived,
    };
  }

  private parse(): void {
    if (this.parsing) return;
    this.parsing = true;
    try {
      this.parseRequests();
    } finally {
      this.parsing = false;
    }
  }

  private parseRequests(): void {
    const queue = this.queue;
    while (true) {
      if (this.discardRemaining > 0) {
        this.discardRemaining -= queue.skip(this.discardRemaining);
        if (this.discardRemaining > 0) return;
        continue;
      }
      const pending = this.awaitingPayload;
      if (pending !== undefined) {
        const payload = this.queue.takeWhole(pending.length);
        if (payload === undefined) return;
        this.awaitingPayload = undefined;
        this.execute(pending, payload);
        continue;
      }
      if (this.stopped) {
        queue.clear();
        return;
      }
      if (this.inFlightBytes >= this.maxInFlightBytes) {
        this.pauseInput();
        return;
      }
      if (queue.length < REQUEST_HEADER_SIZE) return;
      const req = parseRequestHeader(queue.peek(REQUEST_HEADER_SIZE));
      queue.skip(REQUEST_HEADER_SIZE);
      if (req === undefined) {
        this.fatal('bad request magic');
        return;
      }
      this.requestsReceived++;
      if (req.type === Command.DISC) {
        this.log.debug('nbd client sent DISC');
        this.finishAndEnd();
        return;
      }
      this.admit(req);
      if (req.type !== Command.WRITE) {
        this.execute(req, undefined);
      } else if (req.length <= this.limits.maxPayload) {
        this.awaitingPayload = req;
      } else if (req.length <= this.maxDiscardableWrite) {
        this.discardRemaining = req.length;
        this.execute(req, undefined); // rejected as oversized
      } else {
        this.fatal(`WRITE payload of ${req.length} bytes is not plausible`);
        return;
      }
    }
  }

  private admit(req: NbdRequest): void {
    this.inFlightRequests++;
    this.inFlightBytes += requestCost(req, this.limits.maxPayload);
    if (this.inFlightBytes > this.peakInFlightBytes) this.peakInFlightBytes = this.inFlightBytes;
  }

  /** The reply to `req` has left (or was dropped with the socket). */
  private release(req: NbdRequest): void {
    this.inFlightRequests--;
    this.inFlightBytes -= requestCost(req, this.limits.maxPayload);
    invariant(this.inFlightBytes >= 0 && this.inFlightRequests >= 0, 'nbd in-flight accounting went negative');
    if (this.inputPaused && this.inFlightBytes < this.maxInFlightBytes) {
      this.resumeInput();
      this.parse();
    }
  }

  private pauseInput(): void {
    if (this.inputPaused) return;
    this.inputPaused = true;
    this.socket.pause();
  }

  private resumeInput(): void {
    this.inputPaused = false;
    if (!this.socket.destroyed) this.socket.resume();
  }

  private execute(req: NbdRequest, payload: Buffer | undefined): void {
    const rejection = rejectRequest(req, this.limits);
    if (rejection !== undefined) {
      this.log.debug({ type: req.type, offset: req.offset, length: req.length, errno: rejection.errno }, rejection.message);
      this.replyError(req, rejection.errno, rejection.message);
      return;
    }
    const backend = this.backend;
    const fua = (req.flags & CommandFlag.FUA) !== 0;
    switch (req.type) {
      case Command.READ:
        this.call(req, () => backend.read(req.offset, req.length), this.replyData);
        return;
      case Command.WRITE:
        invariant(payload !== undefined, 'WRITE executed without its payload');
        this.call(req, () => backend.write(req.offset, payload, fua), (done) => {
          ioBuffers.give(payload); // the backend is done with it (see NbdBackend.write)
          this.replyOk(done);
        });
        return;
      case Command.FLUSH:
        this.call(req, () => backend.flush(), this.replyOk);
        return;
      case Command.TRIM:
        this.call(req, () => backend.trim(req.offset, req.length, fua), this.replyOk);
        return;
      case Command.WRITE_ZEROES: {
        const noHole = (req.flags & CommandFlag.NO_HOLE) !== 0;
        this.call(req, () => backend.writeZeroes(req.offset, req.length, fua, noHole), this.replyOk);
        return;
      }
      case Command.CACHE:
        // A prefetch hint; every read goes to the backend anyway.
        this.replyOk(req);
        return;
      case Command.BLOCK_STATUS: {
        const blockStatus = backend.blockStatus;
        if (blockStatus === undefined) {
          // Nothing known about allocation: one extent of plain data is always a truthful answer.
          this.replyBlockStatus(req, [{ length: req.length, flags: 0 }]);
        } else {
          this.call(req, () => blockStatus.call(backend, req.offset, req.length), this.replyBlockStatus);
        }
        return;
      }
      default:
        invariant(false, `command ${req.type} passed validation`);
    }
  }

  /**
   * Start one backend operation and reply when it settles. Written with a
   * single `then` rather than an async wrapper: this is the per-request hot path.
   */
  private call<T>(req: NbdRequest, operation: () => Promise<T>, reply: (req: NbdRequest, result: T) => void): void {
    this.backendCalls++;
    let pending: Promise<T>;
    try {
      // Promise.resolve returns a native promise as is, and tolerates a backend that returns a plain value.
      pending = Promise.resolve(operation());
    } catch (err) {
      pending = Promise.reject(err);
    }
    pending.then(
      (result) => {
        try {
          reply(req, result);
        } catch (err) {
          // A malformed backend result (reply senders throw before sending anything).
          this.replyError(req, this.errnoOf(req, err), 'I/O error');
        }
        this.settled();
      },
      (err: unknown) => {
        this.replyError(req, this.errnoOf(req, err), errorText(err));
        this.settled();
      },
    );
  }

  private settled(): void {
    this.backendCalls--;
    if (this.backendCalls === 0) this.onIdle();
  }

  private errnoOf(req: NbdRequest, err: unknown): number {
    if (err instanceof NbdError && isWireErrno(err.errno)) {
      this.log.debug({ type: req.type, offset: req.offset, length: req.length, errno: err.errno }, err.message);
      return err.errno;
    }
    this.log.error({ err, type: req.type, offset: req.offset, length: req.length }, 'nbd backend operation failed');
    return Errno.EIO;
  }

  // Reply senders are arrow properties so `call` can take them without binding per request.

  private readonly replyOk = (req: NbdRequest): void => {
    // Simple replies are allowed for data-less successes even with structured replies.
    this.writer.send([simpleReply(req, 0)], () => this.release(req));
  };

  private readonly replyData = (req: NbdRequest, data: Buffer): void => {
    if (!Buffer.isBuffer(data) || data.length !== req.length) {
      throw new Error(`backend read returned ${Buffer.isBuffer(data) ? `${data.length} bytes` : typeof data} for ${req.length} bytes`);
    }
    const header = this.limits.structuredReplies ? offsetDataChunkHeader(req, data.length) : simpleReply(req, 0);
    this.writer.send([header, data], (released) => {
      if (released) ioBuffers.give(data);
      this.release(req);
    });
  };

  private readonly replyBlockStatus = (req: NbdRequest, extents: readonly BlockStatusExtent[]): void => {
    const clipped = clipExtents(extents, req.length, (req.flags & CommandFlag.REQ_ONE) !== 0);
    this.writer.send([blockStatusChunk(req, BASE_ALLOCATION_ID, clipped)], () => this.release(req));
  };

  private replyError(req: NbdRequest, errno: number, message: string): void {
    const reply = this.limits.structuredReplies ? errorChunk(req, errno, message) : simpleReply(req, errno);
    this.writer.send([reply], () => this.release(req));
  }

  /** Stop taking requests; once every started backend call has replied, end the socket. */
  private finishAndEnd(): void {
    this.stopped = true;
    if (this.awaitingPayload === undefined && this.discardRemaining === 0) this.queue.clear();
    if (this.backendCalls === 0) this.onIdle();
  }

  private onIdle(): void {
    for (const resolve of this.idleWaiters.splice(0)) resolve();
    if (this.stopped && !this.ended && this.awaitingPayload === undefined) {
      this.ended = true;
      this.writer.flush();
      this.socket.end();
    }
  }

  /** The stream is out of sync or the client is broken: drop this connection only. */
  private fatal(reason: string): void {
    this.log.warn({ reason }, 'nbd protocol error, closing connection');
    this.stopped = true;
    this.ended = true;
    this.queue.clear();
    this.socket.destroy();
  }
}

/**
 * Make backend extents a valid reply: no zero lengths, nothing past the
 * requested range, one extent for REQ_ONE, a bounded count, and never empty.
 */
export function clipExtents(extents: readonly BlockStatusExtent[], length: number, reqOne: boolean): BlockStatusExtent[] {
  const out: BlockStatusExtent[] = [];
  let covered = 0;
  for (const extent of extents) {
    if (covered >= length) break;
    if (!(extent.length > 0)) continue;
    const take = Math.min(extent.length, length - covered);
    const flags = extent.flags >>> 0;
    const previous = out[out.length - 1];
    if (previous !== undefined && previous.flags === flags) {
      previous.length += take;
    } else {
      if ((reqOne && out.length === 1) || out.length >= MAX_EXTENTS_PER_REPLY) break;
      out.push({ length: take, flags });
    }
    covered += take;
  }
  if (out.length === 0) throw new Error('backend blockStatus returned no extents');
  return out;
}

function errorText(err: unknown): string {
  return err instanceof NbdError ? err.message : 'I/O error';
}
