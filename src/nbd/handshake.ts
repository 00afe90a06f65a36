// Fixed-newstyle handshake and option haggling, up to the point where the
// client enters the transmission phase with NBD_OPT_GO or NBD_OPT_EXPORT_NAME.

import type { Logger } from '../util/log';
import { backendGeometryProblems, type NbdBackend } from './backend';
import {
  BASE_ALLOCATION,
  BASE_ALLOCATION_ID,
  HandshakeFlag,
  IHAVEOPT,
  Info,
  MAX_STRING_LENGTH,
  NBD_MAGIC,
  Option,
  OptionReply,
  TransmissionFlag,
} from './constants';
import { optionReply, writeUInt64BE } from './replies';

/** Byte transport for the handshake; reads reject once the connection is gone. */
export interface HandshakeChannel {
  read(n: number): Promise<Buffer>;
  skip(n: number): Promise<void>;
  /** Resolves once the transport can take more (or is closed). */
  write(buf: Buffer): Promise<void>;
}

export interface ExportCatalog {
  lookup(name: string): NbdBackend | undefined;
  list(): string[];
}

export interface NegotiatedExport {
  name: string;
  backend: NbdBackend;
  /** Transmission flags as sent to the client. */
  flags: number;
  structuredReplies: boolean;
  /** base:allocation was selected with SET_META_CONTEXT for this export. */
  baseAllocation: boolean;
}

/** The client broke a rule that leaves no way to answer it: close the connection. */
export class HandshakeViolation extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HandshakeViolation';
  }
}

/** Known options with more data than this are answered ERR_TOO_BIG (their data is skipped, not buffered). */
const MAX_OPTION_DATA = 64 * 1024;
/**
 * A client haggling longer than this is not going anywhere. Generous because
 * `nbdinfo --list` sends a few options per export over one connection.
 */
const MAX_OPTIONS = 10_000;
const SERVER_HANDSHAKE_FLAGS = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES;

export function transmissionFlags(backend: NbdBackend, structuredReplies: boolean): number {
  let flags = TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH | TransmissionFlag.SEND_CACHE;
  if (backend.readOnly) {
    flags |= TransmissionFlag.READ_ONLY;
  } else {
    flags |= TransmissionFlag.SEND_FUA | TransmissionFlag.SEND_TRIM | TransmissionFlag.SEND_WRITE_ZEROES;
  }
  // Every READ reply is a single chunk, so "don't fragment" costs nothing; the
  // spec only allows the flag once structured replies are on.
  if (structuredReplies) flags |= TransmissionFlag.SEND_DF;
  if (backend.canMultiConn) flags |= TransmissionFlag.CAN_MULTI_CONN;
  return flags;
}

/** A cursor over one option's data that reports truncation instead of throwing. */
class OptionData {
  private at = 0;
  constructor(private readonly buf: Buffer) {}
  get remaining(): number {
    return this.buf.length - this.at;
  }
  u16(): number | undefined {
    if (this.remaining < 2) return undefined;
    const v = this.buf.readUInt16BE(this.at);
    this.at += 2;
    return v;
  }
  u32(): number | undefined {
    if (this.remaining < 4) return undefined;
    const v = this.buf.readUInt32BE(this.at);
    this.at += 4;
    return v;
  }
  string(length: number): string | undefined {
    if (length > this.remaining || length > MAX_STRING_LENGTH) return undefined;
    const s = this.buf.toString('utf8', this.at, this.at + length);
    this.at += length;
    return s;
  }
}

function u32Prefixed(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const buf = Buffer.allocUnsafe(4 + bytes.length);
  buf.writeUInt32BE(bytes.length, 0);
  bytes.copy(buf, 4);
  return buf;
}

function metaContextReply(option: number, contextId: number): Buffer {
  const name = Buffer.from(BASE_ALLOCATION, 'utf8');
  const data = Buffer.allocUnsafe(4 + name.length);
  data.writeUInt32BE(contextId, 0);
  name.copy(data, 4);
  return optionReply(option, OptionReply.META_CONTEXT, data);
}

/**
 * Runs option haggling. Resolves with the chosen export when the client
 * enters transmission, or undefined after a soft disconnect (NBD_OPT_ABORT).
 * Throws HandshakeViolation when the connection must be closed.
 */
export class Handshake {
  private fixedNewstyle = false;
  private noZeroes = false;
  private structuredReplies = false;
  /** Export name that base:allocation was selected for, if any. */
  private metaContextExport: string | undefined;

  constructor(
    private readonly channel: HandshakeChannel,
    private readonly catalog: ExportCatalog,
    private readonly log: Logger,
  ) {}

  async run(): Promise<NegotiatedExport | undefined> {
    const greeting = Buffer.allocUnsafe(18);
    greeting.writeBigUInt64BE(NBD_MAGIC, 0);
    greeting.writeBigUInt64BE(IHAVEOPT, 8);
    greeting.writeUInt16BE(SERVER_HANDSHAKE_FLAGS, 16);
    await this.channel.write(greeting);

    const clientFlags = (await this.channel.read(4)).readUInt32BE(0);
    if (clientFlags & ~SERVER_HANDSHAKE_FLAGS) {
      throw new HandshakeViolation(`unknown client flags 0x${clientFlags.toString(16)}`);
    }
    this.fixedNewstyle = (clientFlags & HandshakeFlag.FIXED_NEWSTYLE) !== 0;
    this.noZeroes = (clientFlags & HandshakeFlag.NO_ZEROES) !== 0;

    for (let count = 0; count < MAX_OPTIONS; count++) {
      const header = await this.channel.read(16);
      if (header.readBigUInt64BE(0) !== IHAVEOPT) throw new HandshakeViolation('bad option magic');
      const option = header.readUInt32BE(8);
      const length = header.readUInt32BE(12);
      const outcome = await this.handleOption(option, length);
      if (outcome !== 'continue') return outcome;
    }
    throw new HandshakeViolation(`more than ${MAX_OPTIONS} options`);
  }

  private async handleOption(option: number, length: number): Promise<NegotiatedExport | undefined | 'continue'> {
    this.log.debug({ option, length }, 'nbd option');
    if (!this.fixedNewstyle && option !== Option.EXPORT_NAME) {
      // Non-fixed newstyle has no way to refuse an option.
      throw new HandshakeViolation(`option ${option} from a client without fixed newstyle`);
    }
    if (option === Option.EXPORT_NAME) return this.exportName(length);
    if (!isKnownOption(option)) {
      await this.channel.skip(length);
      await this.reply(option, OptionReply.ERR_UNSUP, `option ${option} is not supported`);
      return 'continue';
    }
    if (length > MAX_OPTION_DATA) {
      await this.channel.skip(length);
      await this.reply(option, OptionReply.ERR_TOO_BIG, 'option data too long');
      return 'continue';
    }
    const data = await this.channel.read(length);
    switch (option) {
      case Option.ABORT:
        await this.reply(option, OptionReply.ACK);
        return undefined;
      case Option.LIST:
        await this.list(data);
        return 'continue';
      case Option.INFO:
      case Option.GO:
        return this.infoOrGo(option, data);
      case Option.STRUCTURED_REPLY:
        if (data.length !== 0) {
          await this.reply(option, OptionReply.ERR_INVALID, 'STRUCTURED_REPLY takes no data');
        } else {
          this.structuredReplies = true;
          await this.reply(option, OptionReply.ACK);
        }
        return 'continue';
      case Option.LIST_META_CONTEXT:
      case Option.SET_META_CONTEXT:
        await this.metaContext(option, data);
        return 'continue';
      default:
        await this.reply(option, OptionReply.ERR_UNSUP, `option ${option} is not supported`);
        return 'continue';
    }
  }

  private async exportName(length: number): Promise<NegotiatedExport> {
    if (length > MAX_STRING_LENGTH) throw new HandshakeViolation('EXPORT_NAME name too long');
    const name = (await this.channel.read(length)).toString('utf8');
    const backend = this.findBackend(name);
    // EXPORT_NAME has no error reply: the only refusal is closing the connection.
    if (typeof backend === 'string') throw new HandshakeViolation(`EXPORT_NAME: ${backend}`);
    const negotiated = this.negotiated(name, backend);
    const reply = Buffer.alloc(this.noZeroes ? 10 : 134);
    writeUInt64BE(reply, backend.size, 0);
    reply.writeUInt16BE(negotiated.flags, 8);
    await this.channel.write(reply);
    return negotiated;
  }

  private async list(data: Buffer): Promise<void> {
    if (data.length !== 0) {
      await this.reply(Option.LIST, OptionReply.ERR_INVALID, 'LIST takes no data');
      return;
    }
    for (const name of this.catalog.list()) {
      await this.reply(Option.LIST, OptionReply.SERVER, u32Prefixed(name));
    }
    await this.reply(Option.LIST, OptionReply.ACK);
  }

  private async infoOrGo(option: number, data: Buffer): Promise<NegotiatedExport | 'continue'> {
    const cursor = new OptionData(data);
    const nameLength = cursor.u32();
    const name = nameLength === undefined ? undefined : cursor.string(nameLength);
    const requestCount = cursor.u16();
    const requests: number[] = [];
    for (let i = 0; requestCount !== undefined && i < requestCount; i++) {
      const info = cursor.u16();
      if (info === undefined) break;
      requests.push(info);
    }
    if (name === undefined || requestCount === undefined || requests.length !== requestCount || cursor.remaining !== 0) {
      await this.reply(option, OptionReply.ERR_INVALID, 'malformed INFO/GO request');
      return 'continue';
    }
    const backend = this.findBackend(name);
    if (typeof backend === 'string') {
      await this.reply(option, OptionReply.ERR_UNKNOWN, backend);
      return 'continue';
    }
    const negotiated = this.negotiated(name, backend);
    // INFO_EXPORT is mandatory and INFO_BLOCK_SIZE is always sent because the
    // server enforces alignment; other unknown requests are ignored as the spec asks.
    if (requests.includes(Info.NAME)) {
      const nameBytes = Buffer.from(name, 'utf8');
      const info = Buffer.allocUnsafe(2 + nameBytes.length);
      info.writeUInt16BE(Info.NAME, 0);
      nameBytes.copy(info, 2);
      await this.reply(option, OptionReply.INFO, info);
    }
    const blockSize = Buffer.allocUnsafe(14);
    blockSize.writeUInt16BE(Info.BLOCK_SIZE, 0);
    blockSize.writeUInt32BE(backend.minBlockSize, 2);
    blockSize.writeUInt32BE(backend.preferredBlockSize, 6);
    blockSize.writeUInt32BE(backend.maxPayload, 10);
    await this.reply(option, OptionReply.INFO, blockSize);
    const exportInfo = Buffer.allocUnsafe(12);
    exportInfo.writeUInt16BE(Info.EXPORT, 0);
    writeUInt64BE(exportInfo, backend.size, 2);
    exportInfo.writeUInt16BE(negotiated.flags, 10);
    await this.reply(option, OptionReply.INFO, exportInfo);
    await this.reply(option, OptionReply.ACK);
    return option === Option.GO ? negotiated : 'continue';
  }

  private async metaContext(option: number, data: Buffer): Promise<void> {
    if (!this.structuredReplies) {
      await this.reply(option, OptionReply.ERR_INVALID, 'meta contexts need structured replies first');
      return;
    }
    const cursor = new OptionData(data);
    const nameLength = cursor.u32();
    const name = nameLength === undefined ? undefined : cursor.string(nameLength);
    const queryCount = cursor.u32();
    const queries: string[] = [];
    for (let i = 0; queryCount !== undefined && i < queryCount; i++) {
      const queryLength = cursor.u32();
      const query = queryLength === undefined ? undefined : cursor.string(queryLength);
      if (query === undefined) break;
      queries.push(query);
    }
    if (name === undefined || queryCount === undefined || queries.length !== queryCount || cursor.remaining !== 0) {
      await this.reply(option, OptionReply.ERR_INVALID, 'malformed meta context request');
      return;
    }
    const backend = this.findBackend(name);
    if (typeof backend === 'string') {
      await this.reply(option, OptionReply.ERR_UNKNOWN, backend);
      return;
    }
    if (option === Option.LIST_META_CONTEXT) {
      // No queries lists everything; "base:" lists the whole base namespace.
      const listed = queries.length === 0 || queries.some((q) => q === 'base:' || q === BASE_ALLOCATION);
      // The spec reserves the context ID in LIST replies; it should be zero.
      if (listed) await this.channel.write(metaContextReply(option, 0));
    } else {
      // Each SET replaces the previous selection.
      const selected = queries.includes(BASE_ALLOCATION);
      this.metaContextExport = selected ? name : undefined;
      if (selected) await this.channel.write(metaContextReply(option, BASE_ALLOCATION_ID));
    }
    await this.reply(option, OptionReply.ACK);
  }

  /** The backend for `name`, or why there is none (sent to the client). */
  private findBackend(name: string): NbdBackend | string {
    let backend: NbdBackend | undefined;
    try {
      backend = this.catalog.lookup(name);
    } catch (err) {
      this.log.error({ err, export: name }, 'nbd export lookup failed');
      return `export "${name}" is not available`;
    }
    if (!backend) {
      this.log.debug({ export: name }, 'nbd client asked for an unknown export');
      return `no export named "${name}"`;
    }
    const problems = backendGeometryProblems(backend);
    if (problems.length > 0) {
      this.log.error({ export: name, problems }, 'nbd export has invalid geometry');
      return `export "${name}" is misconfigured`;
    }
    return backend;
  }

  private negotiated(name: string, backend: NbdBackend): NegotiatedExport {
    return {
      name,
      backend,
      flags: transmissionFlags(backend, this.structuredReplies),
      structuredReplies: this.structuredReplies,
      // A selection made for another export does not carry over.
      baseAllocation: this.structuredReplies && this.metaContextExport === name,
    };
  }

  private async reply(option: number, type: number, data?: Buffer | string): Promise<void> {
    const payload = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    await this.channel.write(optionReply(option, type, payload));
  }
}

const KNOWN_OPTIONS: ReadonlySet<number> = new Set([
  Option.ABORT,
  Option.LIST,
  Option.INFO,
  Option.GO,
  Option.STRUCTURED_REPLY,
  Option.LIST_META_CONTEXT,
  Option.SET_META_CONTEXT,
]);

function isKnownOption(option: number): boolean {
  return KNOWN_OPTIONS.has(option);
}
