// Who may call the agent API: a client presenting a certificate signed by the
// cluster CA (verified by TLS itself), or one presenting the cluster's API
// token. Anything else gets 401 before any handler runs.
import { timingSafeEqual } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import type { FastifyReply, FastifyRequest } from 'fastify';

function tokenMatches(header: string | undefined, token: string): boolean {
  if (!header?.startsWith('Bearer ')) return false;
  const given = Buffer.from(header.slice('Bearer '.length).trim());
  const expected = Buffer.from(token);
  return given.length === expected.length && timingSafeEqual(given, expected);
}

export function authenticate(token: string) {
  return async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const socket = req.raw.socket as TLSSocket;
    if (socket.authorized === true) return;
    if (tokenMatches(req.headers.authorization, token)) return;
    await reply.code(401).send({ error: 'authentication required: present a certificate signed by the cluster CA or the cluster API token' });
  };
}
