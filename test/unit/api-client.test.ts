import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { ApiClient } from '../../src/cli/api-client';
import type { ClientConfig } from '../../src/cli/client-config';

const TIMEOUT_MS = 300;

interface Agent {
  url: string;
  hits: string[];
  server: http.Server;
}

/** A local agent on 127.0.0.1 that records each request and answers it with `answer`. */
async function agent(answer: (req: http.IncomingMessage, res: http.ServerResponse) => void): Promise<Agent> {
  const hits: string[] = [];
  const server = http.createServer((req, res) => {
    hits.push(`${req.method} ${req.url}`);
    req.resume();
    req.on('end', () => answer(req, res));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, hits, server };
}

async function close(a: Agent): Promise<void> {
  a.server.closeAllConnections();
  await new Promise<void>((resolve) => a.server.close(() => resolve()));
}

/** A port on 127.0.0.1 that refuses connections: bound, then closed. */
async function refusedUrl(): Promise<string> {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return `http://127.0.0.1:${port}`;
}

let dir = '';
let slow: Agent; // takes every request but never answers in time
let reset: Agent; // takes every request, then drops the connection
let good: Agent; // answers at once

function client(...endpoints: string[]): ApiClient {
  const file = path.join(dir, 'dummy.pem');
  const config: ClientConfig = { cluster: 'test', endpoints, ca: file, cert: file, key: file };
  return new ApiClient(config, TIMEOUT_MS, http.request);
}

before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'cio-api-client-'));
  writeFileSync(path.join(dir, 'dummy.pem'), 'not used over plain HTTP\n');
  slow = await agent(() => undefined);
  reset = await agent((req) => req.socket.destroy());
  good = await agent((req, res) => {
    res.writeHead(req.method === 'POST' ? 201 : 200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ ok: true, method: req.method }));
  });
});

after(async () => {
  await Promise.all([close(slow), close(reset), close(good)]);
  rmSync(dir, { recursive: true, force: true });
});

test('a POST that timed out after it was sent is not sent to another agent', async () => {
  const seen = { slow: slow.hits.length, good: good.hits.length };
  await assert.rejects(client(slow.url, good.url).post('/v1/volumes', { name: 'v1' }), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'EUNCERTAIN');
    assert.match(err.message, /POST \/v1\/volumes .*ETIMEDOUT.*may have been carried out.*not sent to another agent/);
    return true;
  });
  assert.equal(slow.hits.length, seen.slow + 1, 'the first agent got the request');
  assert.equal(good.hits.length, seen.good, 'the second agent never got it');
});

test('a POST whose connection was reset after it was sent is not sent to another agent', async () => {
  const seen = good.hits.length;
  await assert.rejects(client(reset.url, good.url).post('/v1/volumes/v1/attach'), { code: 'EUNCERTAIN' });
  assert.equal(good.hits.length, seen);
});

test('a POST refused by the first agent is sent to the next one', async () => {
  const seen = good.hits.length;
  const res = await client(await refusedUrl(), good.url).post<{ method: string }>('/v1/volumes', { name: 'v2' });
  assert.equal(res.method, 'POST');
  assert.deepEqual(good.hits.slice(seen), ['POST /v1/volumes']);
});

test('a GET that timed out is sent to the next agent', async () => {
  const seen = good.hits.length;
  const res = await client(slow.url, good.url).get<{ method: string }>('/v1/volumes');
  assert.equal(res.method, 'GET');
  assert.deepEqual(good.hits.slice(seen), ['GET /v1/volumes']);
});

test('when no agent can be reached, the error says so', async () => {
  await assert.rejects(client(await refusedUrl(), await refusedUrl()).post('/v1/volumes', {}), { code: 'EUNREACHABLE', message: /no agent answered.*ECONNREFUSED/ });
});
