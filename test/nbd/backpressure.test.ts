// Back-pressure: a client that floods requests, or never reads its replies,
// must stall on its own socket while the server's memory for that
// connection stays under maxInFlightBytes (plus one request).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { NbdBackend } from '../../src/nbd/backend';
import type { ConnectionStats } from '../../src/nbd/connection';
import type { NbdServer } from '../../src/nbd/server';
import { REQUEST_OVERHEAD_BYTES } from '../../src/nbd/transmission';
import { CMD, RawNbdClient, replyOutcome, requestHeader } from '../helpers/nbd-client';
import { eventually, gate, makeTempDir, MemoryBackend, overrideBackend, removeTempDir, startServer } from '../helpers/nbd-fixtures';

const MiB = 1024 * 1024;
const CAP = 4 * MiB;
const MAX_PAYLOAD = MiB;
/** Admission stops at the cap, so one more request can push past it. */
const BOUND = CAP + MAX_PAYLOAD + REQUEST_OVERHEAD_BYTES;

describe('NBD back-pressure', { timeout: 120_000 }, () => {
  let dir: string;
  let socketPath: string;
  let server: NbdServer;
  let mem: MemoryBackend;
  const exports: Record<string, NbdBackend> = {};
  const clients: RawNbdClient[] = [];

  async function open(name: string): Promise<RawNbdClient> {
    const { client } = await RawNbdClient.open(socketPath, name);
    clients.push(client);
    return client;
  }

  /** Stats of the (single) open connection to `name`. */
  function connection(name: string): ConnectionStats {
    const found = server.stats().perConnection.filter((c) => c.exportName === name && c.phase === 'transmission');
    assert.equal(found.length, 1, `one connection to ${name}`);
    return found[0];
  }

  /** Wait until the server has stopped reading this connection and stays stopped. */
  async function waitUntilStalled(name: string): Promise<void> {
    let pausedPolls = 0;
    let lastReceived = -1;
    await eventually(() => {
      const conn = connection(name);
      assert.ok(conn.peakInFlightBytes <= BOUND, `peak ${conn.peakInFlightBytes} exceeds ${BOUND}`);
      const steady = conn.inputPaused && conn.requestsReceived === lastReceived;
      lastReceived = conn.requestsReceived;
      pausedPolls = steady ? pausedPolls + 1 : 0;
      return pausedPolls >= 10;
    }, 'the server to pause reading');
  }

  before(async () => {
    dir = makeTempDir('nbd-backpressure');
    socketPath = path.join(dir, 'nbd.sock');
    mem = new MemoryBackend(128 * MiB, { maxPayload: MAX_PAYLOAD });
    randomBytes(128 * MiB).copy(mem.data);
    exports.mem = mem;
    server = await startServer(socketPath, exports, { maxInFlightBytes: CAP });
  });

  after(async () => {
    for (const c of clients) c.destroy();
    await server?.close();
    removeTempDir(dir);
  });

  test('a client that never reads its READ replies is paused at the cap, then gets every byte', async () => {
    const client = await open('mem');
    const count = 128; // 128 MiB of replies against a 4 MiB cap
    const headers: Buffer[] = [];
    for (let i = 0; i < count; i++) {
      headers.push(requestHeader(CMD.READ, 0, BigInt(i), i * MiB, MiB));
      client.expectRead(BigInt(i), MiB);
    }
    client.pauseReading();
    client.write(Buffer.concat(headers));

    await waitUntilStalled('mem');
    const stalled = connection('mem');
    assert.ok(stalled.requestsReceived < count, `only part of the requests were taken (${stalled.requestsReceived})`);
    assert.ok(stalled.inFlightBytes <= BOUND);
    assert.ok(stalled.queuedReplyBytes <= BOUND, `queued replies ${stalled.queuedReplyBytes}`);

    client.resumeReading();
    for (let i = 0; i < count; i++) {
      const reply = await client.readReply();
      const index = Number(reply.cookie);
      assert.ok(replyOutcome(reply).data?.equals(mem.data.subarray(index * MiB, (index + 1) * MiB)), `data of read ${index}`);
    }
    const done = connection('mem');
    assert.equal(done.requestsReceived, count);
    assert.ok(done.peakInFlightBytes <= BOUND, `peak ${done.peakInFlightBytes}`);
    client.disconnect();
    await client.whenClosed();
  });

  test('pending WRITEs stop being read at the cap while the backend is slow; all land afterwards', async () => {
    const held = gate();
    let started = 0;
    exports.slow = overrideBackend(mem, {
      write: async (offset, data, fua) => {
        started++;
        await held.promise;
        await mem.write(offset, data, fua);
      },
    });
    try {
      const client = await open('slow');
      const count = 64; // 64 MiB of payload against a 4 MiB cap
      const payloads = Array.from({ length: count }, () => randomBytes(MiB));
      payloads.forEach((payload, i) => client.sendRequest({ type: CMD.WRITE, cookie: BigInt(i), offset: i * MiB, payload }));

      await waitUntilStalled('slow');
      const stalled = connection('slow');
      assert.ok(started < count && started === stalled.inFlightRequests, `writes held: ${started}`);
      assert.ok(stalled.inFlightBytes <= BOUND);
      assert.ok(stalled.bufferedInputBytes <= 2 * MAX_PAYLOAD, `buffered input ${stalled.bufferedInputBytes}`);
      assert.ok(client.socket.writableLength > 32 * MiB, 'the client is left holding its unsent requests');

      held.open();
      for (let i = 0; i < count; i++) assert.equal(replyOutcome(await client.readReply()).error, 0);
      payloads.forEach((payload, i) => assert.ok(mem.data.subarray(i * MiB, (i + 1) * MiB).equals(payload), `write ${i}`));
      assert.ok(connection('slow').peakInFlightBytes <= BOUND);
      client.disconnect();
      await client.whenClosed();
    } finally {
      held.open();
      delete exports.slow;
    }
  });

  test('a flood of tiny requests is bounded by the per-request overhead', async () => {
    const held = gate();
    exports.slowflush = overrideBackend(mem, { flush: () => held.promise });
    try {
      const client = await open('slowflush');
      const count = 20_000; // 20 000 x 512 bytes of overhead is over twice the cap
      const headers: Buffer[] = [];
      for (let i = 0; i < count; i++) headers.push(requestHeader(CMD.FLUSH, 0, BigInt(i), 0, 0));
      client.write(Buffer.concat(headers));

      await waitUntilStalled('slowflush');
      const stalled = connection('slowflush');
      assert.ok(stalled.inFlightRequests <= CAP / REQUEST_OVERHEAD_BYTES + 1, `in flight: ${stalled.inFlightRequests}`);

      held.open();
      const seen = new Set<bigint>();
      for (let i = 0; i < count; i++) {
        const reply = await client.readReply();
        assert.equal(replyOutcome(reply).error, 0);
        seen.add(reply.cookie);
      }
      assert.equal(seen.size, count);
      client.disconnect();
      await client.whenClosed();
    } finally {
      held.open();
      delete exports.slowflush;
    }
  });
});
