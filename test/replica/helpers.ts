// Shared test fixtures for the replica layer: temp drives, servers on
// loopback, raw authenticated sockets. Not a test file itself.
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { CLIENT_HELLO_SIZE, SERVER_HELLO_SIZE, SERVER_PROOF_SIZE, decodeServerHello, encodeClientHello, newNonce, verifyServerProof } from '../../src/replica/auth';
import { ByteQueue } from '../../src/util/byte-queue';
import { ReplyDecoder } from '../../src/replica/codec';
import type { Reply } from '../../src/replica/protocol';
import { ReplicaServer } from '../../src/replica/server';
import { ReplicaStore } from '../../src/replica/store';

export const LOOPBACK = '127.0.0.1';

export function makeSecret(): Buffer {
  return crypto.randomBytes(32);
}

/** Collects cleanup steps; run them all (in reverse) from after(), even if some fail. */
export class Cleanup {
  private steps: Array<() => unknown> = [];
  add(step: () => unknown): void {
    this.steps.push(step);
  }
  async run(): Promise<void> {
    const steps = this.steps.reverse();
    this.steps = [];
    for (const step of steps) {
      try {
        await step();
      } catch (err) {
        console.error('cleanup step failed:', err);
      }
    }
  }
}

export async function tempDir(cleanup: Cleanup, prefix = 'cio-replica-'): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), prefix));
  cleanup.add(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

export interface TestServer {
  server: ReplicaServer;
  store: ReplicaStore;
  port: number;
  /** Closes the server and the store (idempotent). */
  stop(): Promise<void>;
}

export async function startServer(cleanup: Cleanup, driveDir: string, secret: Buffer, opts: { maxInFlightBytesPerConnection?: number; port?: number } = {}): Promise<TestServer> {
  const store = new ReplicaStore(driveDir);
  const server = new ReplicaServer({ host: LOOPBACK, port: opts.port ?? 0, secret, stores: new Map([['d1', store]]), maxInFlightBytesPerConnection: opts.maxInFlightBytesPerConnection });
  const { port } = await server.listen();
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await server.close();
    await store.close();
  };
  cleanup.add(stop);
  return { server, store, port, stop };
}

export function randomBytes(n: number): Buffer {
  return crypto.randomBytes(n);
}

/**
 * A raw socket that has completed the handshake, for sending hand-made
 * frames: `replies` collects decoded replies, `closed` resolves on close.
 */
export interface RawConnection {
  socket: net.Socket;
  replies: Reply[];
  closed: Promise<void>;
  nextReply(): Promise<Reply>;
}

export async function rawConnect(cleanup: Cleanup, port: number, secret: Buffer): Promise<RawConnection> {
  const socket = net.connect({ host: LOOPBACK, port });
  cleanup.add(() => socket.destroy());
  const queue = new ByteQueue();
  const clientNonce = newNonce();
  let serverNonce: Buffer | undefined;
  const decoder = new ReplyDecoder();
  const replies: Reply[] = [];
  let waiter: (() => void) | undefined;
  let authed: () => void;
  const authDone = new Promise<void>((resolve) => (authed = resolve));
  const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
  socket.on('error', () => undefined);
  let phase: 'hello' | 'proof' | 'frames' = 'hello';
  socket.on('data', (chunk: Buffer) => {
    if (phase === 'frames') {
      decoder.push(chunk);
    } else {
      queue.push(chunk);
      if (phase === 'hello' && queue.length >= SERVER_HELLO_SIZE) {
        serverNonce = decodeServerHello(queue.take(SERVER_HELLO_SIZE));
        const hello = encodeClientHello(secret, serverNonce, clientNonce);
        if (hello.length !== CLIENT_HELLO_SIZE) throw new Error('bad hello size');
        socket.write(hello);
        phase = 'proof';
      }
      if (phase === 'proof' && queue.length >= SERVER_PROOF_SIZE) {
        verifyServerProof(secret, serverNonce!, clientNonce, queue.take(SERVER_PROOF_SIZE));
        phase = 'frames';
        if (queue.length > 0) decoder.push(queue.take(queue.length));
        authed();
      }
    }
    for (let r = decoder.next(); r; r = decoder.next()) replies.push(r);
    waiter?.();
  });
  await authDone;
  return {
    socket,
    replies,
    closed,
    nextReply: async () => {
      while (replies.length === 0) {
        await Promise.race([new Promise<void>((resolve) => (waiter = resolve)), closed.then(() => Promise.reject(new Error('connection closed')))]);
      }
      return replies.shift()!;
    },
  };
}

/** Whether a mounted loop filesystem can be made here (root, mkfs.ext4, loop devices). */
export function canLoopMount(): boolean {
  return process.getuid?.() === 0 && fs.existsSync('/dev/loop-control');
}
