import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { encodeServerHello, encodeServerProof, newNonce, verifyClientHello, CLIENT_HELLO_SIZE } from '../../src/replica/auth';
import { ByteQueue } from '../../src/util/byte-queue';
import { ReplicaClient, ReplicaConnectionError, ReplicaRequestError } from '../../src/replica/client';
import { RequestDecoder, encodeReplyHeader, encodeRequestHeader } from '../../src/replica/codec';
import { MAX_IO_BYTES, Op, type RequestHeader, Status } from '../../src/replica/protocol';
import { Cleanup, LOOPBACK, type TestServer, makeSecret, randomBytes, rawConnect, startServer, tempDir } from './helpers';

const KiB = 1024;
const MiB = 1024 * KiB;
const cleanup = new Cleanup();
const secret = makeSecret();
let drive: string;
let srv: TestServer;

async function connect(opts: { secret?: Buffer; port?: number; maxInFlightBytes?: number } = {}): Promise<ReplicaClient> {
  const client = await ReplicaClient.connect({ host: LOOPBACK, port: opts.port ?? srv.port, secret: opts.secret ?? secret, maxInFlightBytes: opts.maxInFlightBytes });
  cleanup.add(() => client.close());
  return client;
}

function isCode(code: string, epoch?: number) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof ReplicaRequestError, `expected a ReplicaRequestError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (epoch !== undefined) assert.equal(err.epoch, epoch, 'the reply tells the current epoch');
    return true;
  };
}

function rawFrame(h: Omit<RequestHeader, 'payloadLength'>, payload: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([encodeRequestHeader({ ...h, payloadLength: payload.length }, Buffer.from(h.replicaId, 'latin1')), payload]);
}

/** Sets the epoch field (bytes 12..19) to 2^60, beyond what a JS number holds exactly. */
function withHugeEpoch(frame: Buffer): Buffer {
  frame.writeBigUInt64BE(2n ** 60n, 12);
  return frame;
}

before(async () => {
  drive = await tempDir(cleanup);
  srv = await startServer(cleanup, drive, secret);
});
after(() => cleanup.run());

describe('authentication', () => {
  test('a client with the wrong secret is refused and can do nothing', async () => {
    const owner = await connect();
    await owner.create({ replicaId: 'auth1', volumeUuid: 'v-auth', size: MiB, epoch: 1 });
    await assert.rejects(connect({ secret: makeSecret() }), (err: unknown) => err instanceof ReplicaConnectionError && err.code === 'EAUTH');

    // A peer that skips the handshake and sends a request gets only the server hello, then a close.
    const received: Buffer[] = [];
    const sock = net.connect({ host: LOOPBACK, port: srv.port });
    cleanup.add(() => sock.destroy());
    sock.on('data', (b: Buffer) => received.push(b));
    sock.on('error', () => undefined);
    const closed = new Promise((resolve) => sock.on('close', resolve));
    const write = rawFrame({ op: Op.WRITE, flags: 0, requestId: 1, replicaId: 'auth1', epoch: 1, offset: 0, length: 4096 }, Buffer.alloc(4096, 0xff));
    sock.write(Buffer.concat([write, write]));
    await closed;
    assert.equal(Buffer.concat(received).length, 40, 'nothing but the server hello was sent back');
    assert.ok((await owner.read('auth1', 1, 0, 4096)).equals(Buffer.alloc(4096)), 'the data is untouched');
  });

  test('the client refuses a server that cannot prove the secret', async () => {
    const fake = net.createServer((sock) => {
      const q = new ByteQueue();
      sock.write(encodeServerHello(newNonce()));
      sock.on('data', (b: Buffer) => {
        q.push(b);
        if (q.length >= CLIENT_HELLO_SIZE) sock.write(Buffer.concat([Buffer.from('CIOK'), crypto.randomBytes(32)]));
      });
      sock.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => fake.listen(0, LOOPBACK, resolve));
    cleanup.add(() => new Promise((resolve) => fake.close(resolve)));
    const port = (fake.address() as net.AddressInfo).port;
    await assert.rejects(ReplicaClient.connect({ host: LOOPBACK, port, secret }), (err: unknown) => err instanceof Error && (err as { code?: string }).code === 'EAUTH');
  });
});

describe('data path', () => {
  test('1000 pipelined random writes, trims and overlaps end up exactly as if applied in order', async () => {
    const size = 32 * MiB;
    const c = await connect();
    await c.create({ replicaId: 'pipe1', volumeUuid: 'v-pipe', size, epoch: 1 });
    await c.open('pipe1', 1);
    const model = Buffer.alloc(size);
    const ops: Array<Promise<void>> = [];
    const rnd = (n: number): number => crypto.randomInt(n);
    for (let i = 0; i < 1000; i++) {
      const len = [512, 4096, 4096, 4096, 65536, 3000][rnd(6)];
      // Half of the writes go to a small hot area so that many overlap.
      const offset = i % 2 === 0 ? rnd(256 * KiB) : rnd(size - len);
      if (i % 10 === 9) {
        ops.push(c.trim('pipe1', 1, offset, len));
        model.fill(0, offset, offset + len);
      } else {
        const data = randomBytes(len);
        ops.push(c.write('pipe1', 1, offset, data));
        data.copy(model, offset);
      }
    }
    await Promise.all(ops);
    const reads = [];
    for (let off = 0; off < size; off += MiB) reads.push(c.read('pipe1', 1, off, MiB));
    const back = Buffer.concat(await Promise.all(reads));
    assert.ok(back.equals(model), 'replica content equals the in-order model');
  });

  test('overlapping writes in flight apply in arrival order', async () => {
    const c = await connect();
    await c.create({ replicaId: 'order1', volumeUuid: 'v-order', size: 4 * MiB, epoch: 1 });
    const big = randomBytes(2 * MiB);
    const last = randomBytes(64 * KiB);
    const pending: Array<Promise<void>> = [c.write('order1', 1, 0, big)];
    for (let i = 0; i < 100; i++) pending.push(c.write('order1', 1, 512 * KiB, randomBytes(64 * KiB)));
    pending.push(c.write('order1', 1, 512 * KiB, last));
    pending.push(c.writeZeroes('order1', 1, 0, 4096));
    pending.push(c.write('order1', 1, 2 * KiB, Buffer.alloc(1024, 7), { fua: true }));
    await Promise.all(pending);
    const expected = Buffer.from(big);
    last.copy(expected, 512 * KiB);
    expected.fill(0, 0, 4096);
    expected.fill(7, 2 * KiB, 3 * KiB);
    assert.ok((await c.read('order1', 1, 0, 2 * MiB)).equals(expected));
  });

  test('a small write issued after a large overlapping one is never overtaken by it', async () => {
    // Without ordering, the small write (fast) usually lands first and the
    // large one (slow, written front to back) then overwrites it.
    const c = await connect();
    const rounds = 48;
    await c.create({ replicaId: 'order2', volumeUuid: 'v-order2', size: rounds * MiB, epoch: 1 });
    const model = Buffer.alloc(rounds * MiB);
    const pending: Array<Promise<void>> = [];
    for (let r = 0; r < rounds; r++) {
      const big = randomBytes(MiB);
      const small = randomBytes(4 * KiB);
      pending.push(c.write('order2', 1, r * MiB, big));
      pending.push(c.write('order2', 1, (r + 1) * MiB - 4 * KiB, small));
      big.copy(model, r * MiB);
      small.copy(model, (r + 1) * MiB - 4 * KiB);
    }
    await Promise.all(pending);
    const back = await Promise.all(Array.from({ length: rounds }, (_, r) => c.read('order2', 1, r * MiB, MiB)));
    assert.ok(Buffer.concat(back).equals(model));
  });

  test('replies are matched by id when they come back out of order', async () => {
    const count = 50;
    const fake = net.createServer((sock) => {
      const serverNonce = newNonce();
      const q = new ByteQueue();
      const decoder = new RequestDecoder();
      let authed = false;
      const held: Array<{ requestId: number; offset: number; length: number }> = [];
      sock.write(encodeServerHello(serverNonce));
      sock.on('error', () => undefined);
      sock.on('data', (b: Buffer) => {
        if (!authed) {
          q.push(b);
          if (q.length < CLIENT_HELLO_SIZE) return;
          const clientNonce = verifyClientHello(secret, serverNonce, q.take(CLIENT_HELLO_SIZE));
          sock.write(encodeServerProof(secret, serverNonce, clientNonce));
          authed = true;
          decoder.takeOver(q);
        } else {
          decoder.push(b);
        }
        for (let r = decoder.next(); r; r = decoder.next()) held.push(r);
        if (held.length < count) return;
        // Answer the last request first.
        for (const r of held.reverse()) {
          sock.write(encodeReplyHeader({ status: Status.OK, requestId: r.requestId, epoch: 1, payloadLength: r.length }));
          sock.write(Buffer.alloc(r.length, r.offset % 251));
        }
        held.length = 0;
      });
    });
    await new Promise<void>((resolve) => fake.listen(0, LOOPBACK, resolve));
    cleanup.add(() => new Promise((resolve) => fake.close(resolve)));
    const c = await connect({ port: (fake.address() as net.AddressInfo).port });
    const reads = Array.from({ length: count }, (_, i) => c.read('any', 1, i * 1000, 100 + i));
    const results = await Promise.all(reads);
    results.forEach((buf, i) => assert.ok(buf.equals(Buffer.alloc(100 + i, (i * 1000) % 251)), `read ${i} got its own reply`));
  });

  test('ALLOC_MAP lists only what was written; management ops work over the wire', async () => {
    const c = await connect();
    const info = await c.create({ replicaId: 'mgmt1', volumeUuid: 'v-mgmt', size: 8 * MiB, epoch: 4, state: 'rebuilding' });
    assert.deepEqual([info.epoch, info.size, info.state, info.thick], [4, 8 * MiB, 'rebuilding', false]);
    await assert.rejects(c.create({ replicaId: 'mgmt1', volumeUuid: 'v-mgmt', size: 8 * MiB }), isCode('EEXIST'));
    await c.write('mgmt1', 4, MiB, randomBytes(MiB));
    await c.write('mgmt1', 4, 6 * MiB, randomBytes(4 * KiB));
    assert.deepEqual(await c.allocMap('mgmt1', 4, 0, 8 * MiB), [
      { offset: MiB, length: MiB },
      { offset: 6 * MiB, length: 4 * KiB },
    ]);
    await c.trim('mgmt1', 4, MiB, MiB, { fua: true });
    assert.deepEqual(await c.allocMap('mgmt1', 4, 0, 8 * MiB), [{ offset: 6 * MiB, length: 4 * KiB }]);
    await c.flush('mgmt1', 4);
    assert.equal((await c.setState('mgmt1', 4, 'in-sync')).state, 'in-sync');
    assert.equal((await c.resize('mgmt1', 4, 16 * MiB)).size, 16 * MiB);
    assert.equal((await c.stat('mgmt1')).size, 16 * MiB);
    await c.write('mgmt1', 4, 15 * MiB, randomBytes(4096));
    await assert.rejects(c.delete('mgmt1', 3), isCode('ESTALE', 4));
    await c.delete('mgmt1', 4);
    await assert.rejects(c.stat('mgmt1'), isCode('ENOENT'));
    await assert.rejects(c.read('mgmt1', 4, 0, 1), isCode('ENOENT'));
  });

  test('in-flight bytes stay under the caps and everything still arrives', async () => {
    const small = await startServer(cleanup, await tempDir(cleanup), secret, { maxInFlightBytesPerConnection: 256 * KiB });
    const cap = 512 * KiB;
    const c = await connect({ port: small.port, maxInFlightBytes: cap });
    await c.create({ replicaId: 'bp1', volumeUuid: 'v-bp', size: 16 * MiB, epoch: 1 });
    const model = Buffer.alloc(16 * MiB);
    const writes: Array<Promise<void>> = [];
    let maxSeen = 0;
    for (let i = 0; i < 200; i++) {
      const data = randomBytes(64 * KiB);
      data.copy(model, (i % 256) * 64 * KiB);
      writes.push(c.write('bp1', 1, (i % 256) * 64 * KiB, data).then(() => void (maxSeen = Math.max(maxSeen, c.inFlightBytes))));
      maxSeen = Math.max(maxSeen, c.inFlightBytes);
    }
    assert.ok(c.queuedBytes > 0, 'calls beyond the cap wait inside the client');
    await Promise.all(writes);
    assert.ok(maxSeen <= cap, `in flight ${maxSeen} > cap ${cap}`);
    assert.equal(c.inFlightBytes, 0);
    await c.waitForCapacity(cap);
    assert.ok((await c.read('bp1', 1, 0, 16 * MiB)).equals(model));
  });
});

describe('fencing', () => {
  test('after OPEN at a higher epoch the old owner can change and read nothing', async () => {
    const oldOwner = await connect();
    const newOwner = await connect();
    await oldOwner.create({ replicaId: 'fence1', volumeUuid: 'v-fence', size: 4 * MiB, epoch: 1 });
    assert.equal((await oldOwner.open('fence1', 1)).epoch, 1);
    const original = randomBytes(MiB);
    await oldOwner.write('fence1', 1, 0, original);

    assert.equal((await newOwner.open('fence1', 2)).epoch, 2);
    const stale = isCode('ESTALE', 2);
    await assert.rejects(oldOwner.write('fence1', 1, 0, randomBytes(4096)), stale);
    await assert.rejects(oldOwner.write('fence1', 1, 0, randomBytes(4096), { fua: true }), stale);
    await assert.rejects(oldOwner.trim('fence1', 1, 0, MiB), stale);
    await assert.rejects(oldOwner.writeZeroes('fence1', 1, 0, MiB, { noHole: true }), stale);
    await assert.rejects(oldOwner.read('fence1', 1, 0, 4096), stale);
    await assert.rejects(oldOwner.flush('fence1', 1), stale);
    await assert.rejects(oldOwner.allocMap('fence1', 1, 0, MiB), stale);
    await assert.rejects(oldOwner.setState('fence1', 1, 'stale'), stale);
    await assert.rejects(oldOwner.resize('fence1', 1, 8 * MiB), stale);
    await assert.rejects(oldOwner.delete('fence1', 1), stale);
    await assert.rejects(oldOwner.open('fence1', 1), stale, 'an old owner cannot re-open at its epoch');
    // A newer epoch than the replica's needs an OPEN first.
    await assert.rejects(newOwner.write('fence1', 3, 0, randomBytes(4096)), isCode('ENOTCONN', 2));

    assert.ok((await newOwner.read('fence1', 2, 0, MiB)).equals(original), 'data unchanged by the fenced writes');
    const info = await newOwner.stat('fence1');
    assert.equal(info.epoch, 2);
    assert.equal(info.size, 4 * MiB);
  });

  test('a connection superseded by a newer OPEN at the same epoch can read but no longer change data', async () => {
    // The owner reconnected: what its old connection still delivers (a cut link's
    // retransmission) must not overwrite what it wrote since on the new one.
    const first = await connect();
    const second = await connect();
    const older = await connect();
    await first.create({ replicaId: 'session1', volumeUuid: 'v-session', size: 4 * MiB, epoch: 1 });
    await first.open('session1', 3);
    await first.write('session1', 3, 0, randomBytes(4096));
    await second.open('session1', 3);
    const newer = randomBytes(MiB);
    await second.write('session1', 3, 0, newer);
    const superseded = isCode('ENOTCONN', 3);
    await assert.rejects(first.write('session1', 3, 0, randomBytes(4096)), superseded);
    await assert.rejects(first.trim('session1', 3, 0, MiB), superseded);
    await assert.rejects(first.writeZeroes('session1', 3, 0, MiB, { noHole: true }), superseded);
    assert.ok((await first.read('session1', 3, 0, MiB)).equals(newer), 'reads still answer on the old connection');
    await first.flush('session1', 3);
    // An OPEN the replica refuses (an older epoch) supersedes nothing.
    await assert.rejects(older.open('session1', 2), isCode('ESTALE', 3));
    await second.write('session1', 3, 0, newer);
    // A connection that never opened it (management) is not checked.
    const manager = await connect();
    await manager.write('session1', 3, MiB, randomBytes(4096));
    assert.ok((await second.read('session1', 3, 0, MiB)).equals(newer), 'nothing from the superseded connection landed');
  });

  test('writes of the old epoch still in flight cannot land after OPEN returns', async () => {
    const oldOwner = await connect();
    const newOwner = await connect();
    await oldOwner.create({ replicaId: 'fence2', volumeUuid: 'v-fence2', size: 4 * MiB, epoch: 1 });
    const writes = Array.from({ length: 300 }, (_, i) =>
      oldOwner.write('fence2', 1, (i % 64) * 64 * KiB, randomBytes(64 * KiB)).then(
        () => 'ok',
        (err: unknown) => {
          assert.ok(err instanceof ReplicaRequestError && err.code === 'ESTALE', String(err));
          return 'stale';
        },
      ),
    );
    await newOwner.open('fence2', 2);
    const atOpen = await newOwner.read('fence2', 2, 0, 4 * MiB);
    await Promise.all(writes);
    assert.ok((await newOwner.read('fence2', 2, 0, 4 * MiB)).equals(atOpen), 'nothing changed after the new owner opened');
  });

  test('the epoch persists across a restart of the server', async () => {
    const dir = await tempDir(cleanup);
    const first = await startServer(cleanup, dir, secret);
    const c1 = await connect({ port: first.port });
    await c1.create({ replicaId: 'persist1', volumeUuid: 'v-persist', size: MiB, epoch: 1 });
    const data = randomBytes(8 * KiB);
    await c1.write('persist1', 1, 0, data);
    await c1.open('persist1', 5);
    await first.stop();

    const second = await startServer(cleanup, dir, secret);
    const c2 = await connect({ port: second.port });
    // The first requests find the replica not yet open: they must still be
    // applied in arrival order (all wait for the same lookup).
    const model = Buffer.from(data);
    const writes: Array<Promise<void>> = [];
    for (let i = 0; i < 20; i++) {
      const chunk = randomBytes(8 * KiB - i * 256);
      writes.push(c2.write('persist1', 5, i * 256, chunk));
      chunk.copy(model, i * 256);
    }
    await Promise.all(writes);
    data.set(model.subarray(0, 8 * KiB));
    assert.equal((await c2.stat('persist1')).epoch, 5);
    await assert.rejects(c2.write('persist1', 1, 0, randomBytes(8 * KiB)), isCode('ESTALE', 5));
    await assert.rejects(c2.open('persist1', 4), isCode('ESTALE', 5));
    assert.ok((await c2.read('persist1', 5, 0, 8 * KiB)).equals(data));
  });
});

describe('bad input', () => {
  test('garbage closes only that connection', async () => {
    const bystander = await connect();
    await bystander.create({ replicaId: 'bad1', volumeUuid: 'v-bad', size: MiB, epoch: 1 });
    const raw = await rawConnect(cleanup, srv.port, secret);
    raw.socket.write(Buffer.alloc(100, 0xab));
    await raw.closed;
    assert.equal(raw.replies.length, 0);
    await bystander.write('bad1', 1, 0, Buffer.alloc(4096, 1));
    assert.ok((await bystander.read('bad1', 1, 0, 4096)).equals(Buffer.alloc(4096, 1)));
  });

  test('unknown op, unknown replica, out of range and oversized requests get an error and the connection lives on', async () => {
    const c = await connect();
    await c.create({ replicaId: 'bad2', volumeUuid: 'v-bad2', size: MiB, epoch: 1 });
    await c.write('bad2', 1, 0, Buffer.alloc(4096, 9));
    const raw = await rawConnect(cleanup, srv.port, secret);
    const base = { flags: 0, replicaId: 'bad2', epoch: 1, offset: 0, length: 0 };
    const cases: Array<[Buffer, number]> = [
      [rawFrame({ ...base, op: 200, requestId: 1 }, Buffer.alloc(10)), Status.ENOSYS],
      [rawFrame({ ...base, op: Op.READ, requestId: 2, offset: MiB - 10, length: 4096 }), Status.EINVAL],
      [rawFrame({ ...base, op: Op.READ, requestId: 3, length: MAX_IO_BYTES + 1 }), Status.EMSGSIZE],
      [rawFrame({ ...base, op: Op.WRITE, requestId: 4, length: MAX_IO_BYTES + 1 }, Buffer.alloc(MAX_IO_BYTES + 1)), Status.EMSGSIZE],
      [rawFrame({ ...base, op: Op.WRITE, requestId: 5, length: 100 }, Buffer.alloc(50)), Status.EINVAL],
      [rawFrame({ ...base, op: Op.READ, requestId: 6, replicaId: 'nosuch', length: 10 }), Status.ENOENT],
      [rawFrame({ ...base, op: Op.READ, requestId: 7, replicaId: '../x', length: 10 }), Status.EINVAL],
      [rawFrame({ ...base, op: Op.CREATE, requestId: 8, replicaId: 'bad3' }, Buffer.from('{not json')), Status.EINVAL],
      [withHugeEpoch(rawFrame({ ...base, op: Op.READ, requestId: 9, length: 10 })), Status.EINVAL],
    ];
    for (const [frame, status] of cases) {
      raw.socket.write(frame);
      const reply = await raw.nextReply();
      assert.equal(reply.status, status, `request ${reply.requestId}: ${reply.payload.toString()}`);
    }
    raw.socket.write(rawFrame({ ...base, op: Op.READ, requestId: 10, length: 4096 }));
    const ok = await raw.nextReply();
    assert.equal(ok.status, Status.OK);
    assert.equal(ok.requestId, 10);
    assert.ok(ok.payload.equals(Buffer.alloc(4096, 9)));
    // The client maps statuses to errors the same way.
    await assert.rejects(c.read('bad2', 1, MiB - 1, 2), isCode('EINVAL', 1));
    await assert.rejects(c.read('nosuch', 1, 0, 1), isCode('ENOENT', 0));
    await assert.rejects(c.read('bad2', -1, 0, 1), RangeError, 'the client refuses to encode a negative epoch');
    assert.ok((await c.read('bad2', 1, 0, 4096)).equals(Buffer.alloc(4096, 9)), 'and the connection still works');
  });
});

describe('server death', () => {
  const children = new Set<ChildProcess>();
  after(() => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });

  async function spawnServer(driveDir: string): Promise<{ child: ChildProcess; port: number }> {
    const script = path.join(__dirname, 'server-child.js');
    const child = spawn(process.execPath, [script], {
      env: { ...process.env, CIO_REPLICA_CHILD: JSON.stringify({ driveDir, port: 0, secretHex: secret.toString('hex') }) },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.add(child);
    const port = await new Promise<number>((resolve, reject) => {
      let out = '';
      child.stdout!.on('data', (b: Buffer) => {
        out += b.toString();
        const m = /listening (\d+)/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      child.once('exit', (code) => reject(new Error(`server child exited early (${code})`)));
    });
    return { child, port };
  }

  test('pending requests reject when the server is killed; the epoch survives SIGKILL', async () => {
    const dir = await tempDir(cleanup);
    const { child, port } = await spawnServer(dir);
    const c = await connect({ port });
    await c.create({ replicaId: 'kill1', volumeUuid: 'v-kill', size: 4 * MiB, epoch: 5 });
    await c.open('kill1', 6);
    const data = randomBytes(64 * KiB);
    await c.write('kill1', 6, 0, data, { fua: true });

    const closeEvent = new Promise((resolve) => c.once('close', resolve));
    child.kill('SIGSTOP'); // requests sent now stay unanswered
    const pending = [
      ...Array.from({ length: 10 }, () => c.read('kill1', 6, 0, 64 * KiB)),
      ...Array.from({ length: 10 }, () => c.write('kill1', 6, MiB, randomBytes(4096))),
    ];
    child.kill('SIGKILL');
    const results = await Promise.allSettled(pending);
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      assert.ok(r.reason instanceof ReplicaConnectionError, String(r.reason));
      assert.match((r.reason as Error).message, /closed/);
    }
    await closeEvent;
    assert.equal(c.closed, true);
    await assert.rejects(c.stat('kill1'), ReplicaConnectionError);

    const again = await spawnServer(dir);
    const c2 = await connect({ port: again.port });
    assert.equal((await c2.stat('kill1')).epoch, 6, 'the OPEN was durable before its reply');
    await assert.rejects(c2.read('kill1', 5, 0, 1), isCode('ESTALE', 6));
    assert.ok((await c2.read('kill1', 6, 0, 64 * KiB)).equals(data));
    again.child.kill('SIGTERM');
    await new Promise((resolve) => again.child.once('exit', resolve));
  });
});
