// readIntoReusedBuffer relies on fields Node's own `onread` option sets; this
// checks, on the Node version in use, that an accepted socket really switches
// (so an upgrade that moves those fields is noticed here, not as a slowdown),
// that bytes buffered before the switch come first, and that a direct target
// receives bytes in place.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { readIntoReusedBuffer } from '../../src/util/socket-input';

async function socketPair(dir: string): Promise<{ server: net.Server; accepted: net.Socket; client: net.Socket }> {
  const sock = path.join(dir, 's.sock');
  const server = net.createServer({ pauseOnConnect: true });
  await new Promise<void>((resolve) => server.listen(sock, resolve));
  const acceptedP = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const client = net.connect(sock);
  await new Promise<void>((resolve) => client.once('connect', resolve));
  return { server, accepted: await acceptedP, client };
}

test('an accepted socket reads into the reused buffer, earlier bytes first, direct targets in place', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cio-socket-input-'));
  const { server, accepted, client } = await socketPair(dir);
  try {
    // Bytes that arrive while the socket is still a plain stream (paused).
    const early = crypto.randomBytes(1000);
    client.write(early);
    await new Promise((r) => setTimeout(r, 50));
    accepted.resume();
    accepted.pause();

    const received: Buffer[] = [];
    const views = new Set<ArrayBufferLike>();
    // Like ByteQueue: once a message buffer (`target`) is waiting, bytes go
    // into it, either in place or copied from the reused buffer.
    let target: Buffer | undefined = undefined;
    let filled = 0;
    let inPlace = 0;
    const switched = readIntoReusedBuffer(
      accepted,
      (chunk) => {
        if (target && chunk.buffer === target.buffer) {
          inPlace += chunk.length;
          filled += chunk.length;
          return;
        }
        views.add(chunk.buffer);
        if (target) filled += chunk.copy(target, filled);
        else received.push(Buffer.from(chunk)); // copy: the chunk is reused
      },
      () => (target && filled < target.length ? target.subarray(filled) : undefined),
      64 * 1024,
    );
    assert.equal(switched, true, 'this Node version no longer lets an accepted socket read into a reused buffer');
    accepted.resume();

    const later = crypto.randomBytes(300 * 1024);
    client.write(later);
    const total = early.length + later.length;
    for (let i = 0; i < 200 && Buffer.concat(received).length < total; i++) await new Promise((r) => setTimeout(r, 10));
    const got = Buffer.concat(received);
    assert.ok(got.equals(Buffer.concat([early, later])), 'bytes lost, duplicated or reordered across the switch');
    // After the early chunk, reads land in one reused buffer, not a new one per read.
    assert.ok(views.size <= 3, `${views.size} distinct read buffers`);

    // A direct target gets the next bytes without going through the reused buffer.
    target = Buffer.alloc(200 * 1024);
    const payload = crypto.randomBytes(target.length);
    client.write(payload);
    for (let i = 0; i < 200 && filled < target.length; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(filled, target.length);
    assert.ok(target.equals(payload));
    // The first read was already placed in the reused buffer; most later ones land in place.
    assert.ok(inPlace >= target.length - 64 * 1024, `only ${inPlace} of ${target.length} bytes landed in place`);
  } finally {
    client.destroy();
    accepted.destroy();
    await new Promise((r) => server.close(r));
    await rm(dir, { recursive: true, force: true });
  }
});
