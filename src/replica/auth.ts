// Connection handshake: mutual challenge–response over a cluster-wide shared
// secret. Each side proves it knows the secret by an HMAC over both fresh
// nonces, with a different label per direction so that one side's proof can
// never be replayed as the other's. Nothing else is accepted before it.
//
//   server → client  SERVER_HELLO  u32 'CIOS', u16 version, u16 0, 32-byte server nonce
//   client → server  CLIENT_HELLO  u32 'CIOC', u16 version, u16 0, 32-byte client nonce,
//                                  32-byte HMAC(secret, CLIENT_LABEL | server nonce | client nonce)
//   server → client  SERVER_PROOF  u32 'CIOK', 32-byte HMAC(secret, SERVER_LABEL | server nonce | client nonce)
//
// Only authentication: frames after it are neither encrypted nor
// integrity-protected (the replica network is trusted not to tamper).
import crypto from 'node:crypto';

export const PROTOCOL_VERSION = 1;
const SERVER_HELLO_MAGIC = 0x43494f53; // 'CIOS'
const CLIENT_HELLO_MAGIC = 0x43494f43; // 'CIOC'
const SERVER_PROOF_MAGIC = 0x43494f4b; // 'CIOK'
const NONCE_BYTES = 32;
const PROOF_BYTES = 32;
const CLIENT_LABEL = Buffer.from('cio-replica/1 client proof', 'ascii');
const SERVER_LABEL = Buffer.from('cio-replica/1 server proof', 'ascii');

export const SERVER_HELLO_SIZE = 8 + NONCE_BYTES;
export const CLIENT_HELLO_SIZE = 8 + NONCE_BYTES + PROOF_BYTES;
export const SERVER_PROOF_SIZE = 4 + PROOF_BYTES;
export const MIN_SECRET_BYTES = 16;

export class AuthError extends Error {
  readonly code = 'EAUTH';
  constructor(message: string) {
    super(message);
    this.name = 'AuthError';
  }
}

export function checkSecret(secret: Buffer): void {
  if (!Buffer.isBuffer(secret) || secret.length < MIN_SECRET_BYTES) {
    throw new Error(`replica secret must be a Buffer of at least ${MIN_SECRET_BYTES} bytes`);
  }
}

export function newNonce(): Buffer {
  return crypto.randomBytes(NONCE_BYTES);
}

function proof(secret: Buffer, label: Buffer, serverNonce: Buffer, clientNonce: Buffer): Buffer {
  return crypto.createHmac('sha256', secret).update(label).update(serverNonce).update(clientNonce).digest();
}

function proofsEqual(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

export function encodeServerHello(serverNonce: Buffer): Buffer {
  const buf = Buffer.alloc(SERVER_HELLO_SIZE);
  buf.writeUInt32BE(SERVER_HELLO_MAGIC, 0);
  buf.writeUInt16BE(PROTOCOL_VERSION, 4);
  serverNonce.copy(buf, 8);
  return buf;
}

/** Client side: checks the server hello and returns the server nonce. */
export function decodeServerHello(buf: Buffer): Buffer {
  if (buf.length !== SERVER_HELLO_SIZE || buf.readUInt32BE(0) !== SERVER_HELLO_MAGIC) throw new AuthError('peer is not a cio replica server');
  const version = buf.readUInt16BE(4);
  if (version !== PROTOCOL_VERSION) throw new AuthError(`replica server speaks protocol version ${version}, this client ${PROTOCOL_VERSION}`);
  return Buffer.from(buf.subarray(8));
}

export function encodeClientHello(secret: Buffer, serverNonce: Buffer, clientNonce: Buffer): Buffer {
  const buf = Buffer.alloc(CLIENT_HELLO_SIZE);
  buf.writeUInt32BE(CLIENT_HELLO_MAGIC, 0);
  buf.writeUInt16BE(PROTOCOL_VERSION, 4);
  clientNonce.copy(buf, 8);
  proof(secret, CLIENT_LABEL, serverNonce, clientNonce).copy(buf, 8 + NONCE_BYTES);
  return buf;
}

/** Server side: verifies the client's proof and returns the client nonce; throws AuthError otherwise. */
export function verifyClientHello(secret: Buffer, serverNonce: Buffer, buf: Buffer): Buffer {
  if (buf.length !== CLIENT_HELLO_SIZE || buf.readUInt32BE(0) !== CLIENT_HELLO_MAGIC) throw new AuthError('peer is not a cio replica client');
  const version = buf.readUInt16BE(4);
  if (version !== PROTOCOL_VERSION) throw new AuthError(`client speaks protocol version ${version}, this server ${PROTOCOL_VERSION}`);
  const clientNonce = Buffer.from(buf.subarray(8, 8 + NONCE_BYTES));
  const expected = proof(secret, CLIENT_LABEL, serverNonce, clientNonce);
  if (!proofsEqual(expected, buf.subarray(8 + NONCE_BYTES))) throw new AuthError('client failed authentication (wrong cluster secret?)');
  return clientNonce;
}

export function encodeServerProof(secret: Buffer, serverNonce: Buffer, clientNonce: Buffer): Buffer {
  const buf = Buffer.alloc(SERVER_PROOF_SIZE);
  buf.writeUInt32BE(SERVER_PROOF_MAGIC, 0);
  proof(secret, SERVER_LABEL, serverNonce, clientNonce).copy(buf, 4);
  return buf;
}

/** Client side: verifies the server's proof; throws AuthError otherwise. */
export function verifyServerProof(secret: Buffer, serverNonce: Buffer, clientNonce: Buffer, buf: Buffer): void {
  if (buf.length !== SERVER_PROOF_SIZE || buf.readUInt32BE(0) !== SERVER_PROOF_MAGIC) throw new AuthError('replica server refused authentication');
  const expected = proof(secret, SERVER_LABEL, serverNonce, clientNonce);
  if (!proofsEqual(expected, buf.subarray(4))) throw new AuthError('replica server failed authentication (wrong cluster secret?)');
}
