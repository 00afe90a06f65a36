// The NBD server at the byte level: handshake and option haggling, request
// validation, error mapping, pipelining and connection isolation, driven by a
// hand-written client so malformed traffic can be sent too.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { NbdError, type NbdBackend } from '../../src/nbd/backend';
import type { NbdServer } from '../../src/nbd/server';
import {
  CHUNK,
  CMD,
  CMD_FLAG,
  ERRNO,
  metaContextData,
  OPT,
  RawNbdClient,
  REP,
  replyOutcome,
  requestHeader,
  TFLAG,
  u32,
  type ReplyMessage,
} from '../helpers/nbd-client';
import {
  ChildProcesses,
  eventually,
  gate,
  makeTempDir,
  MemoryBackend,
  overrideBackend,
  removeTempDir,
  startServer,
} from '../helpers/nbd-fixtures';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

describe('NBD protocol', { timeout: 60_000 }, () => {
  let dir: string;
  let socketPath: string;
  let server: NbdServer;
  let mem: MemoryBackend;
  const exports: Record<string, NbdBackend> = {};
  const clients: RawNbdClient[] = [];
  const children = new ChildProcesses();

  /** Track every client so after() can destroy whatever a failed test left open. */
  async function open(name: string, opts: { structured?: boolean; baseAllocation?: boolean } = {}) {
    const result = await RawNbdClient.open(socketPath, name, opts);
    clients.push(result.client);
    return result;
  }
  async function handshake(clientFlags?: number) {
    const result = await RawNbdClient.handshake(socketPath, clientFlags);
    clients.push(result.client);
    return result;
  }

  before(async () => {
    dir = makeTempDir('nbd-protocol');
    socketPath = path.join(dir, 'nbd.sock');
    mem = new MemoryBackend(SIZE);
    randomBytes(SIZE).copy(mem.data);
    exports.mem = mem;
    exports.ro = new MemoryBackend(MiB, { readOnly: true });
    server = await startServer(socketPath, exports);
  });

  after(async () => {
    for (const c of clients) c.destroy();
    children.killAll();
    await server?.close();
    removeTempDir(dir);
  });

  test('greeting advertises fixed newstyle and NO_ZEROES; unknown options get ERR_UNSUP and haggling goes on', async () => {
    const { client, serverFlags } = await handshake();
    assert.equal(serverFlags, 3);

    client.sendOption(99, Buffer.from('whatever data'));
    let reply = await client.readOptionReply();
    assert.deepEqual([reply.option, reply.type], [99, REP.ERR_UNSUP]);
    client.sendOption(11); // EXTENDED_HEADERS, probed by newer clients
    reply = await client.readOptionReply();
    assert.deepEqual([reply.option, reply.type], [11, REP.ERR_UNSUP]);

    client.sendOption(OPT.LIST);
    const listed = await client.readOptionReplies();
    assert.equal(listed[listed.length - 1].type, REP.ACK);
    const names = listed.filter((r) => r.type === REP.SERVER).map((r) => r.data.toString('utf8', 4, 4 + r.data.readUInt32BE(0)));
    assert.deepEqual(names.sort(), Object.keys(exports).sort());

    const unknown = await client.go('no-such-export', [], OPT.INFO);
    assert.equal(unknown.replies[unknown.replies.length - 1].type, REP.ERR_UNKNOWN);

    const info = await client.go('mem', [3, 1], OPT.INFO);
    assert.equal(info.replies[info.replies.length - 1].type, REP.ACK);
    const nameInfo = info.replies.find((r) => r.type === REP.INFO && r.data.readUInt16BE(0) === 1);
    assert.equal(nameInfo?.data.toString('utf8', 2), 'mem');

    const go = await client.go('mem', [3]);
    assert.equal(go.replies[go.replies.length - 1].type, REP.ACK);
    assert.equal(go.size, SIZE);
    const expected = TFLAG.HAS_FLAGS | TFLAG.SEND_FLUSH | TFLAG.SEND_FUA | TFLAG.SEND_TRIM | TFLAG.SEND_WRITE_ZEROES | TFLAG.CAN_MULTI_CONN;
    assert.equal(go.flags & expected, expected);
    assert.equal(go.flags & (TFLAG.READ_ONLY | TFLAG.SEND_DF | TFLAG.SEND_FAST_ZERO), 0);
    const blockSize = go.replies.find((r) => r.type === REP.INFO && r.data.readUInt16BE(0) === 3);
    assert.ok(blockSize, 'INFO_BLOCK_SIZE sent');
    assert.deepEqual([blockSize.data.readUInt32BE(2), blockSize.data.readUInt32BE(6), blockSize.data.readUInt32BE(10)], [512, 4096, MiB]);

    assert.deepEqual(await client.readAt(1n, 4096, 8192), mem.data.subarray(4096, 4096 + 8192));
    client.disconnect();
    await client.whenClosed();
  });

  test('unknown client flags close the connection', async () => {
    const { client } = await handshake(0x4 | 0x1);
    assert.equal(await client.closesWithoutData(), true);
  });

  test('malformed GO gets ERR_INVALID and a later GO still works', async () => {
    const { client } = await handshake();
    client.sendOption(OPT.GO, Buffer.from([0, 0, 0]));
    assert.equal((await client.readOptionReply()).type, REP.ERR_INVALID);
    client.sendOption(OPT.GO, Buffer.concat([u32(100), Buffer.from('mem'), Buffer.from([0, 0])])); // name length lies
    assert.equal((await client.readOptionReply()).type, REP.ERR_INVALID);
    client.sendOption(OPT.LIST, Buffer.from('x'));
    assert.equal((await client.readOptionReply()).type, REP.ERR_INVALID);
    const go = await client.go('mem');
    assert.equal(go.size, SIZE);
    assert.deepEqual(await client.readAt(2n, 0, 512), mem.data.subarray(0, 512));
  });

  test('EXPORT_NAME enters transmission with and without the 124 zero bytes; an unknown name closes', async () => {
    const { client: noZeroes } = await handshake(3);
    noZeroes.sendOption(OPT.EXPORT_NAME, Buffer.from('mem'));
    const short = await noZeroes.read(10);
    assert.equal(Number(short.readBigUInt64BE(0)), SIZE);
    assert.equal(short.readUInt16BE(8) & TFLAG.HAS_FLAGS, TFLAG.HAS_FLAGS);
    assert.deepEqual(await noZeroes.readAt(3n, 512, 512), mem.data.subarray(512, 1024));

    const { client: withZeroes } = await handshake(1);
    withZeroes.sendOption(OPT.EXPORT_NAME, Buffer.from('mem'));
    const long = await withZeroes.read(134);
    assert.equal(Number(long.readBigUInt64BE(0)), SIZE);
    assert.ok(long.subarray(10).equals(Buffer.alloc(124)));
    assert.deepEqual(await withZeroes.readAt(4n, 1024, 512), mem.data.subarray(1024, 1536));

    const { client: unknown } = await handshake(3);
    unknown.sendOption(OPT.EXPORT_NAME, Buffer.from('nope'));
    assert.equal(await unknown.closesWithoutData(), true);
  });

  test('ABORT is acknowledged and the connection closes', async () => {
    const { client } = await handshake();
    client.sendOption(OPT.ABORT);
    const reply = await client.readOptionReply();
    assert.deepEqual([reply.option, reply.type], [OPT.ABORT, REP.ACK]);
    await client.whenClosed();
  });

  test('an export with invalid geometry is refused with ERR_UNKNOWN', async () => {
    exports.bad = new MemoryBackend(4096, { minBlockSize: 3 });
    try {
      const { client } = await handshake();
      const go = await client.go('bad');
      assert.equal(go.replies[go.replies.length - 1].type, REP.ERR_UNKNOWN);
    } finally {
      delete exports.bad;
    }
  });

  test('meta contexts: base:allocation is listed, selected, and answers BLOCK_STATUS (REQ_ONE honoured)', async () => {
    const sparse = new MemoryBackend(4 * MiB);
    exports.sparse = sparse;
    try {
      const { client } = await handshake();
      client.sendOption(OPT.LIST_META_CONTEXT, metaContextData('sparse', []));
      assert.equal((await client.readOptionReply()).type, REP.ERR_INVALID, 'needs structured replies first');
      client.sendOption(OPT.STRUCTURED_REPLY);
      assert.equal((await client.readOptionReply()).type, REP.ACK);
      client.structured = true;

      for (const queries of [[], ['base:'], ['base:allocation']]) {
        client.sendOption(OPT.LIST_META_CONTEXT, metaContextData('sparse', queries));
        const replies = await client.readOptionReplies();
        assert.deepEqual(replies.map((r) => r.type), [REP.META_CONTEXT, REP.ACK], `LIST ${JSON.stringify(queries)}`);
        assert.equal(replies[0].data.toString('utf8', 4), 'base:allocation');
      }
      client.sendOption(OPT.LIST_META_CONTEXT, metaContextData('sparse', ['x-other:thing']));
      assert.deepEqual((await client.readOptionReplies()).map((r) => r.type), [REP.ACK]);
      client.sendOption(OPT.SET_META_CONTEXT, metaContextData('nope', ['base:allocation']));
      assert.equal((await client.readOptionReply()).type, REP.ERR_UNKNOWN);

      client.sendOption(OPT.SET_META_CONTEXT, metaContextData('sparse', ['x-other:thing', 'base:allocation']));
      const set = await client.readOptionReplies();
      assert.deepEqual(set.map((r) => r.type), [REP.META_CONTEXT, REP.ACK]);
      const contextId = set[0].data.readUInt32BE(0);

      const go = await client.go('sparse');
      assert.equal(go.flags & TFLAG.SEND_DF, TFLAG.SEND_DF);
      assert.equal(await client.roundTrip({ type: CMD.WRITE, cookie: 1n, offset: MiB, payload: randomBytes(64 * 1024) }), 0);

      const status = async (cookie: bigint, flags: number): Promise<number[][]> => {
        client.sendRequest({ type: CMD.BLOCK_STATUS, cookie, offset: 0, length: 2 * MiB, flags });
        const reply = (await client.readReply()) as Extract<ReplyMessage, { kind: 'chunk' }>;
        assert.equal(reply.kind, 'chunk');
        assert.equal(reply.type, CHUNK.BLOCK_STATUS);
        assert.equal(reply.flags & 1, 1, 'DONE');
        assert.equal(reply.payload.readUInt32BE(0), contextId);
        const extents: number[][] = [];
        for (let at = 4; at < reply.payload.length; at += 8) extents.push([reply.payload.readUInt32BE(at), reply.payload.readUInt32BE(at + 4)]);
        return extents;
      };
      assert.deepEqual(await status(2n, 0), [
        [MiB, 3],
        [64 * 1024, 0],
        [MiB - 64 * 1024, 3],
      ]);
      assert.deepEqual(await status(3n, CMD_FLAG.REQ_ONE), [[MiB, 3]]);

      // Without a selected context, BLOCK_STATUS is invalid.
      const { client: plain } = await open('sparse', { structured: true });
      plain.sendRequest({ type: CMD.BLOCK_STATUS, cookie: 4n, offset: 0, length: 4096 });
      assert.equal(replyOutcome(await plain.readReply()).error, ERRNO.EINVAL);
    } finally {
      delete exports.sparse;
    }
  });

  test('a backend without blockStatus reports one data extent', async () => {
    const base = new MemoryBackend(MiB);
    exports.nostatus = overrideBackend(base, { blockStatus: undefined });
    try {
      const { client } = await open('nostatus', { baseAllocation: true });
      client.sendRequest({ type: CMD.BLOCK_STATUS, cookie: 1n, offset: 4096, length: 8192 });
      const reply = (await client.readReply()) as Extract<ReplyMessage, { kind: 'chunk' }>;
      assert.equal(reply.type, CHUNK.BLOCK_STATUS);
      assert.deepEqual([reply.payload.readUInt32BE(4), reply.payload.readUInt32BE(8), reply.payload.length], [8192, 0, 12]);
    } finally {
      delete exports.nostatus;
    }
  });

  /** Pipelines bad requests followed by a good read; every bad one fails alone. */
  async function checkRequestValidation(structured: boolean): Promise<void> {
    const { client } = await open('mem', { structured });
    const bad: [bigint, Parameters<RawNbdClient['sendRequest']>[0], number][] = [
      [10n, { type: CMD.READ, cookie: 10n, offset: 100, length: 512 }, ERRNO.EINVAL], // misaligned offset
      [11n, { type: CMD.READ, cookie: 11n, offset: 0, length: 700 }, ERRNO.EINVAL], // misaligned length
      [12n, { type: CMD.READ, cookie: 12n, offset: SIZE - 512, length: 1024 }, ERRNO.EINVAL], // past the end
      [13n, { type: CMD.READ, cookie: 13n, offset: 2 ** 60, length: 512 }, ERRNO.EINVAL], // far past the end
      [14n, { type: CMD.READ, cookie: 14n, offset: 0, length: 2 * MiB }, ERRNO.EINVAL], // over maxPayload
      [15n, { type: CMD.READ, cookie: 15n, offset: 0, length: 0 }, ERRNO.EINVAL],
      [16n, { type: CMD.WRITE, cookie: 16n, offset: SIZE, payload: Buffer.alloc(512) }, ERRNO.ENOSPC],
      [17n, { type: 42, cookie: 17n, offset: 0, length: 512 }, ERRNO.EINVAL], // unknown command
      [18n, { type: CMD.WRITE_ZEROES, cookie: 18n, offset: 0, length: 512, flags: CMD_FLAG.FAST_ZERO }, ERRNO.EINVAL],
      [19n, { type: CMD.TRIM, cookie: 19n, offset: 0, length: 512, flags: CMD_FLAG.REQ_ONE }, ERRNO.EINVAL], // flag of another command
      [20n, { type: CMD.BLOCK_STATUS, cookie: 20n, offset: 0, length: 512 }, ERRNO.EINVAL], // no context negotiated
      [21n, { type: CMD.TRIM, cookie: 21n, offset: SIZE - 512, length: 1024 }, ERRNO.EINVAL],
      [22n, { type: CMD.WRITE_ZEROES, cookie: 22n, offset: SIZE - 512, length: 1024 }, ERRNO.ENOSPC],
    ];
    if (!structured) bad.push([23n, { type: CMD.READ, cookie: 23n, offset: 0, length: 512, flags: CMD_FLAG.DF }, ERRNO.EINVAL]);
    else bad.push([23n, { type: CMD.READ, cookie: 23n, offset: 0, length: 2 * MiB, flags: CMD_FLAG.DF }, ERRNO.EOVERFLOW]);
    for (const [, spec] of bad) client.sendRequest(spec);
    client.sendRequest({ type: CMD.READ, cookie: 99n, offset: 3 * MiB, length: 4096, flags: structured ? CMD_FLAG.DF : 0 });

    const replies = new Map<bigint, ReplyMessage>();
    for (let i = 0; i < bad.length + 1; i++) {
      const reply = await client.readReply();
      replies.set(reply.cookie, reply);
    }
    for (const [cookie, , errno] of bad) {
      const reply = replies.get(cookie);
      assert.ok(reply, `reply for cookie ${cookie}`);
      assert.equal(replyOutcome(reply).error, errno, `errno for cookie ${cookie}`);
      if (structured) {
        assert.equal(reply.kind, 'chunk', 'errors are structured chunks once negotiated');
        if (reply.kind === 'chunk') assert.equal(reply.flags & 1, 1);
        assert.ok(replyOutcome(reply).message, 'error chunks carry a message');
      }
    }
    const good = replies.get(99n);
    assert.ok(good);
    if (structured) {
      assert.equal(good.kind, 'chunk');
      if (good.kind === 'chunk') {
        assert.equal(good.type, CHUNK.OFFSET_DATA);
        assert.equal(good.flags & 1, 1, 'single final chunk');
        assert.equal(Number(good.payload.readBigUInt64BE(0)), 3 * MiB);
      }
    }
    assert.deepEqual(replyOutcome(good).data, mem.data.subarray(3 * MiB, 3 * MiB + 4096));
    // And the connection is still fine for the next request.
    assert.deepEqual(await client.readAt(100n, 0, 512), mem.data.subarray(0, 512));
  }

  test('invalid requests fail alone with simple replies (EINVAL, ENOSPC) and the connection lives on', () => checkRequestValidation(false));
  test('invalid requests fail alone with structured error chunks (EINVAL, ENOSPC, EOVERFLOW)', () => checkRequestValidation(true));

  test('an oversized WRITE is read past and refused; an absurd one closes the connection', async () => {
    const { client } = await open('mem');
    const before = Buffer.from(mem.data.subarray(0, MiB + 512));
    assert.equal(await client.roundTrip({ type: CMD.WRITE, cookie: 1n, offset: 0, payload: randomBytes(MiB + 512) }), ERRNO.EINVAL);
    assert.ok(mem.data.subarray(0, MiB + 512).equals(before), 'nothing written');
    assert.deepEqual(await client.readAt(2n, 0, 4096), mem.data.subarray(0, 4096));

    client.write(requestHeader(CMD.WRITE, 0, 3n, 0, 0xfffffe00));
    assert.equal(await client.closesWithoutData(), true);
  });

  test('garbage closes only its own connection', async () => {
    const { client: bad } = await open('mem');
    const { client: good } = await open('mem');
    const countBefore = server.connectionCount;
    bad.write(Buffer.from('this is not an NBD request header!!'));
    await bad.whenClosed();
    await eventually(() => server.connectionCount === countBefore - 1, 'the bad connection to be dropped');
    assert.deepEqual(await good.readAt(1n, 4096, 4096), mem.data.subarray(4096, 8192));
    const { client: another } = await open('mem');
    assert.deepEqual(await another.readAt(1n, 0, 512), mem.data.subarray(0, 512));
  });

  test('backend errors: NbdError keeps its errno, anything else is EIO; the connection continues', async () => {
    const base = new MemoryBackend(MiB);
    exports.faulty = overrideBackend(base, {
      write: async (offset, data, fua) => {
        if (offset === 0) throw new NbdError(ERRNO.ENOSPC, 'thin pool exhausted');
        if (offset === 4096) throw new Error('disk on fire');
        await base.write(offset, data, fua);
      },
      read: async (offset, length) => {
        if (offset === 8192) throw new NbdError(12345, 'errno not on the wire list');
        if (offset === 12288) return Buffer.alloc(length - 512); // a buggy backend
        return base.read(offset, length);
      },
    });
    try {
      const { client } = await open('faulty');
      assert.equal(await client.roundTrip({ type: CMD.WRITE, cookie: 1n, offset: 0, payload: Buffer.alloc(512, 1) }), ERRNO.ENOSPC);
      assert.equal(await client.roundTrip({ type: CMD.WRITE, cookie: 2n, offset: 4096, payload: Buffer.alloc(512, 1) }), ERRNO.EIO);
      assert.equal(await client.roundTrip({ type: CMD.READ, cookie: 3n, offset: 8192, length: 512 }), ERRNO.EIO);
      assert.equal(await client.roundTrip({ type: CMD.READ, cookie: 33n, offset: 12288, length: 4096 }), ERRNO.EIO);
      assert.equal(await client.roundTrip({ type: CMD.WRITE, cookie: 4n, offset: 512, payload: Buffer.alloc(512, 7) }), 0);
      assert.deepEqual(await client.readAt(5n, 512, 512), Buffer.alloc(512, 7));

      const { client: structured } = await open('faulty', { structured: true });
      structured.sendRequest({ type: CMD.WRITE, cookie: 6n, offset: 0, payload: Buffer.alloc(512) });
      const reply = await structured.readReply();
      assert.equal(reply.kind, 'chunk');
      assert.deepEqual(replyOutcome(reply), { error: ERRNO.ENOSPC, message: 'thin pool exhausted' });
    } finally {
      delete exports.faulty;
    }
  });

  test('replies come out of order: a slow request does not hold up a fast one', async () => {
    const base = new MemoryBackend(MiB);
    randomBytes(MiB).copy(base.data);
    const slow = gate();
    exports.slowfirst = overrideBackend(base, {
      read: async (offset, length) => {
        if (offset === 0) await slow.promise;
        return base.read(offset, length);
      },
    });
    try {
      const { client } = await open('slowfirst');
      client.sendRequest({ type: CMD.READ, cookie: 1n, offset: 0, length: 4096 });
      client.sendRequest({ type: CMD.READ, cookie: 2n, offset: 4096, length: 4096 });
      const first = await client.readReply();
      assert.equal(first.cookie, 2n);
      assert.deepEqual(replyOutcome(first).data, base.data.subarray(4096, 8192));
      slow.open();
      const second = await client.readReply();
      assert.equal(second.cookie, 1n);
      assert.deepEqual(replyOutcome(second).data, base.data.subarray(0, 4096));
    } finally {
      slow.open();
      delete exports.slowfirst;
    }
  });

  test('DISC waits for in-flight writes to finish and reply, then closes', async () => {
    const base = new MemoryBackend(MiB);
    const held = gate();
    let pending = 0;
    exports.gated = overrideBackend(base, {
      write: async (offset, data, fua) => {
        pending++;
        await held.promise;
        await base.write(offset, data, fua);
      },
    });
    try {
      const { client } = await open('gated');
      const payloads = Array.from({ length: 8 }, () => randomBytes(4096));
      payloads.forEach((payload, i) => client.sendRequest({ type: CMD.WRITE, cookie: BigInt(i + 1), offset: i * 4096, payload }));
      client.disconnect();
      await eventually(() => pending === 8, 'all writes to reach the backend');
      assert.equal(client.isClosed, false, 'still open while writes are in flight');
      held.open();
      const cookies: bigint[] = [];
      for (let i = 0; i < 8; i++) {
        const reply = await client.readReply();
        assert.equal(replyOutcome(reply).error, 0);
        cookies.push(reply.cookie);
      }
      assert.deepEqual(cookies.sort(), [1n, 2n, 3n, 4n, 5n, 6n, 7n, 8n]);
      await client.whenClosed();
      payloads.forEach((payload, i) => assert.ok(base.data.subarray(i * 4096, (i + 1) * 4096).equals(payload), `write ${i} landed`));
    } finally {
      held.open();
      delete exports.gated;
    }
  });

  test('requests split into tiny pieces and many requests in one packet are both reassembled', async () => {
    const { client } = await open('mem');
    const payload = randomBytes(8192);
    const message = Buffer.concat([requestHeader(CMD.WRITE, 0, 1n, 2 * MiB, payload.length), payload]);
    for (let at = 0; at < message.length; at += 7) {
      client.write(message.subarray(at, at + 7));
      if (at % 700 === 0) await nextTurn();
    }
    assert.equal(replyOutcome(await client.readReply()).error, 0);
    assert.ok(mem.data.subarray(2 * MiB, 2 * MiB + 8192).equals(payload));

    const burst: Buffer[] = [];
    for (let i = 0; i < 200; i++) {
      burst.push(requestHeader(CMD.READ, 0, BigInt(1000 + i), i * 512, 512));
      client.expectRead(BigInt(1000 + i), 512);
    }
    client.write(Buffer.concat(burst));
    const seen = new Set<bigint>();
    for (let i = 0; i < 200; i++) {
      const reply = await client.readReply();
      const index = Number(reply.cookie) - 1000;
      assert.deepEqual(replyOutcome(reply).data, mem.data.subarray(index * 512, index * 512 + 512));
      seen.add(reply.cookie);
    }
    assert.equal(seen.size, 200);
  });

  test('FUA, NO_HOLE, FLUSH, TRIM and CACHE reach the backend as asked', async () => {
    const { client } = await open('mem');
    const callsBefore = mem.calls.length;
    const flushesBefore = mem.flushes;
    assert.equal(await client.roundTrip({ type: CMD.WRITE, cookie: 1n, offset: 4 * MiB, payload: Buffer.alloc(4096, 9), flags: CMD_FLAG.FUA }), 0);
    assert.equal(await client.roundTrip({ type: CMD.FLUSH, cookie: 2n }), 0);
    assert.equal(await client.roundTrip({ type: CMD.TRIM, cookie: 3n, offset: 5 * MiB, length: MiB, flags: CMD_FLAG.FUA }), 0);
    assert.equal(await client.roundTrip({ type: CMD.WRITE_ZEROES, cookie: 4n, offset: 4 * MiB, length: 2 * MiB, flags: CMD_FLAG.NO_HOLE }), 0);
    assert.equal(await client.roundTrip({ type: CMD.CACHE, cookie: 5n, offset: 0, length: MiB }), 0);
    assert.equal(await client.roundTrip({ type: CMD.READ, cookie: 6n, offset: 0, length: 512, flags: CMD_FLAG.FUA }), 0);
    assert.deepEqual(mem.calls.slice(callsBefore), [
      { op: 'write', offset: 4 * MiB, length: 4096, fua: true },
      { op: 'flush', offset: 0, length: 0 },
      { op: 'trim', offset: 5 * MiB, length: MiB, fua: true },
      { op: 'writeZeroes', offset: 4 * MiB, length: 2 * MiB, fua: false, noHole: true },
      { op: 'read', offset: 0, length: 512 },
    ]);
    assert.equal(mem.flushes, flushesBefore + 1);
    assert.ok(mem.data.subarray(4 * MiB, 6 * MiB).equals(Buffer.alloc(2 * MiB)));
  });

  test('a read-only export advertises READ_ONLY and refuses writes with EPERM', async () => {
    const { client, flags } = await open('ro');
    assert.equal(flags & TFLAG.READ_ONLY, TFLAG.READ_ONLY);
    assert.equal(flags & (TFLAG.SEND_TRIM | TFLAG.SEND_WRITE_ZEROES | TFLAG.SEND_FUA), 0);
    assert.equal(await client.roundTrip({ type: CMD.WRITE, cookie: 1n, offset: 0, payload: Buffer.alloc(512, 1) }), ERRNO.EPERM);
    assert.equal(await client.roundTrip({ type: CMD.TRIM, cookie: 2n, offset: 0, length: 512 }), ERRNO.EPERM);
    assert.equal(await client.roundTrip({ type: CMD.WRITE_ZEROES, cookie: 3n, offset: 0, length: 512 }), ERRNO.EPERM);
    assert.equal(await client.roundTrip({ type: CMD.FLUSH, cookie: 4n }), 0);
    assert.deepEqual(await client.readAt(5n, 0, 512), Buffer.alloc(512));
  });

  test('a client stuck in the handshake is dropped after the handshake timeout; transmission has none', async () => {
    const timedPath = path.join(dir, 'timed.sock');
    const timed = await startServer(timedPath, { mem }, { handshakeTimeoutMs: 100 });
    try {
      const idle = await RawNbdClient.connect(timedPath);
      clients.push(idle);
      assert.equal((await idle.read(18)).length, 18);
      await idle.whenClosed(); // never sent its flags

      const { client: active } = await RawNbdClient.open(timedPath, 'mem');
      clients.push(active);
      await new Promise((resolve) => setTimeout(resolve, 300));
      assert.deepEqual(await active.readAt(1n, 0, 512), mem.data.subarray(0, 512));
    } finally {
      await timed.close();
    }
  });

  test('close() does not hang on a backend call that never returns', async () => {
    const stuckPath = path.join(dir, 'stuck.sock');
    const never = new Promise<void>(() => undefined);
    const stuck = await startServer(stuckPath, { stuck: overrideBackend(mem, { write: () => never }) }, { closeGraceMs: 50 });
    const { client } = await RawNbdClient.open(stuckPath, 'stuck');
    clients.push(client);
    client.sendRequest({ type: CMD.WRITE, cookie: 1n, offset: 0, payload: Buffer.alloc(512) });
    await eventually(() => stuck.stats().inFlightRequests === 1, 'the write to reach the backend');
    await stuck.close();
    await client.whenClosed();
    assert.equal(existsSync(stuckPath), false);
  });

  test('close() ends connections and removes the socket; listen() replaces stale sockets but not live ones', async () => {
    const otherPath = path.join(dir, 'other.sock');
    const other = await startServer(otherPath, { mem });
    const { client } = await RawNbdClient.open(otherPath, 'mem');
    clients.push(client);
    assert.equal(other.connectionCount, 1);
    await assert.rejects(startServer(otherPath, { mem }), /another server is listening/);
    await other.close();
    await client.whenClosed();
    assert.equal(existsSync(otherPath), false);

    // A socket file left behind by a dead process.
    const bound = await children.run('python3', ['-c', `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(otherPath)})`]);
    assert.equal(bound.code, 0, bound.stderr);
    assert.equal(existsSync(otherPath), true);
    const revived = await startServer(otherPath, { mem });
    const { client: again } = await RawNbdClient.open(otherPath, 'mem');
    clients.push(again);
    assert.deepEqual(await again.readAt(1n, 0, 512), mem.data.subarray(0, 512));
    await revived.close();

    const notSocket = path.join(dir, 'regular-file');
    writeFileSync(notSocket, 'x');
    await assert.rejects(startServer(notSocket, { mem }), /not a socket/);
  });
});
