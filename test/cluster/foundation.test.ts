// The cluster foundation against real etcd and real agents: roles, failure
// detection, recovery with the same id, controller failover, events, cordon,
// authentication, and clear errors for bad input.
import assert from 'node:assert/strict';
import https from 'node:https';
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { eventually, LocalCluster, parseTable } from '../helpers/local-cluster';

const IP_PREFIX = '127.0.21.';

describe('cluster foundation (4 nodes, real etcd)', () => {
  let cluster: LocalCluster;

  before(async () => {
    cluster = await LocalCluster.up({ nodes: 4, ipPrefix: IP_PREFIX, leaseTtl: 3 });
  });
  after(async () => {
    await cluster?.down();
  });

  const nodeLs = async (): Promise<Array<Record<string, string>>> => {
    const res = await cluster.cli(['node', 'ls']);
    assert.equal(res.code, 0, res.stderr);
    return parseTable(res.stdout);
  };
  const statusOf = async (name: string): Promise<string | undefined> => (await nodeLs()).find((r) => r.NODENAME === name)?.STATUS;
  const eventLines = async (): Promise<string[]> => {
    const res = await cluster.cli(['events', '-n', '200']);
    assert.equal(res.code, 0, res.stderr);
    return res.stdout.trim().split('\n');
  };

  test('node ls shows v1…v4 with the control roles, all normal, in the seed columns', async () => {
    const res = await cluster.cli(['node', 'ls']);
    assert.equal(res.stdout.split('\n')[0], 'NODENAME             IP                NODE_ID    ROLE       STATUS');
    const rows = parseTable(res.stdout);
    assert.deepEqual(rows.map((r) => [r.NODENAME, r.IP, r.ROLE, r.STATUS]), [
      ['v1', `${IP_PREFIX}11`, 'sds', 'normal'],
      ['v2', `${IP_PREFIX}12`, 'backup1', 'normal'],
      ['v3', `${IP_PREFIX}13`, 'backup2', 'normal'],
      ['v4', `${IP_PREFIX}14`, 'standard', 'normal'],
    ]);
    for (const r of rows) assert.match(r.NODE_ID, /^[0-9a-f]{8}$/);
    const json = JSON.parse((await cluster.cli(['node', 'ls', '--json'])).stdout) as Array<{ name: string; id: string }>;
    assert.deepEqual(json.map((n) => n.id), rows.map((r) => r.NODE_ID));
  });

  test('a killed node goes to maintenance with events, and comes back normal with the same NODE_ID', async () => {
    const before = (await nodeLs()).find((r) => r.NODENAME === 'v3')!;
    await cluster.nodeAction('kill', 'v3');
    await eventually('v3 in maintenance', async () => (await statusOf('v3')) === 'maintenance');
    const lines = await eventLines();
    assert.ok(lines.some((l) => l.includes(`node (${before.NODE_ID}) failover completed.`) && l.endsWith(':1019')), lines.join('\n'));
    assert.ok(lines.some((l) => /^\d\d\/\d\d\/\d{4}-\d\d:\d\d:\d\d \[warn\] \[DFS\] node \(\w{8}\) v3 is not responding/.test(l)));
    const info = await cluster.cli(['info']);
    assert.match(info.stdout, /Condition:\s+degraded/);

    await cluster.nodeAction('start', 'v3');
    await eventually('v3 normal again', async () => (await statusOf('v3')) === 'normal');
    const again = (await nodeLs()).find((r) => r.NODENAME === 'v3')!;
    assert.equal(again.NODE_ID, before.NODE_ID);
    assert.equal(again.ROLE, 'backup2');
    assert.ok((await eventLines()).some((l) => l.includes(`node (${before.NODE_ID}) v3 is back, status normal`)));
  });

  test('killing the controller: another node takes over and still detects the failure', async () => {
    const nodes = JSON.parse((await cluster.cli(['node', 'ls', '--json'])).stdout) as Array<{ name: string; id: string; controller: boolean }>;
    const leader = nodes.find((n) => n.controller);
    assert.ok(leader, 'a controller is elected');
    await cluster.nodeAction('kill', leader.name);
    await eventually(`${leader.name} in maintenance`, async () => (await statusOf(leader.name)) === 'maintenance');
    const now = JSON.parse((await cluster.cli(['node', 'ls', '--json'])).stdout) as Array<{ name: string; controller: boolean }>;
    const newLeader = now.find((n) => n.controller);
    assert.ok(newLeader && newLeader.name !== leader.name, 'a new controller is elected');
    const lines = await eventLines();
    assert.ok(lines.some((l) => l.includes(`node (${leader.id}) failover completed. hostname=${newLeader.name}`)), lines.join('\n'));
    await cluster.nodeAction('start', leader.name);
    await eventually(`${leader.name} normal`, async () => (await statusOf(leader.name)) === 'normal');
  });

  test('a paused node (SIGSTOP) goes to maintenance and rejoins by itself when continued', async () => {
    await cluster.nodeAction('pause', 'v2');
    await eventually('v2 in maintenance', async () => (await statusOf('v2')) === 'maintenance');
    await cluster.nodeAction('resume', 'v2');
    await eventually('v2 normal', async () => (await statusOf('v2')) === 'normal');
  });

  test('cordon and uncordon', async () => {
    const res = await cluster.cli(['node', 'cordon', 'v4']);
    assert.equal(res.code, 0, res.stderr);
    await eventually('v4 cordoned', async () => (await statusOf('v4')) === 'cordoned');
    const info = JSON.parse((await cluster.cli(['node', 'info', 'v4', '--json'])).stdout) as { cordoned: boolean };
    assert.equal(info.cordoned, true);
    assert.equal((await cluster.cli(['node', 'uncordon', 'v4'])).code, 0);
    await eventually('v4 normal', async () => (await statusOf('v4')) === 'normal');
  });

  test('info and node info summarise the cluster', async () => {
    const info = await cluster.cli(['info', '--json']);
    const s = JSON.parse(info.stdout) as { nodes: { total: number; normal: number }; capacity: { totalBytes: number }; condition: string };
    assert.equal(s.nodes.total, 4);
    assert.equal(s.capacity.totalBytes, 4 * 100 * 2 ** 30);
    const text = await cluster.cli(['node', 'info', 'v1']);
    assert.match(text.stdout, /Role:\s+sds/);
    assert.match(text.stdout, /SSD\s+100GB/);
  });

  test('events -f follows new events', async () => {
    const child = (await import('node:child_process')).spawn(process.execPath, [require.resolve('../../src/cli/main.js'), 'events', '-n', '1', '-f'], {
      env: { ...process.env, CIO_HOME: cluster.home },
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    try {
      await eventually('the follower to print the last event', async () => out.split('\n').length >= 2, 10_000);
      await cluster.cli(['node', 'cordon', 'v1']);
      await eventually('the cordon event to be followed', async () => out.includes('v1 cordoned'), 15_000);
    } finally {
      child.kill('SIGTERM');
      await cluster.cli(['node', 'uncordon', 'v1']);
    }
  });

  test('the API refuses requests without a valid certificate or token', async () => {
    const state = await cluster.state();
    const ca = readFileSync(state.cli.ca);
    const url = `https://${IP_PREFIX}11:7411/v1/nodes`;
    const get = (opts: https.RequestOptions): Promise<number> =>
      new Promise((resolve, reject) => {
        https.get(url, { ca, ...opts }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        }).on('error', reject);
      });
    assert.equal(await get({}), 401, 'no client certificate, no token');
    assert.equal(await get({ headers: { authorization: 'Bearer wrong' } }), 401, 'wrong token');
    const token = readFileSync(`${state.dir}/pki/api-token`, 'utf8').trim();
    assert.equal(await get({ headers: { authorization: `Bearer ${token}` } }), 200, 'cluster token');
    assert.equal(await get({ cert: readFileSync(state.cli.cert), key: readFileSync(state.cli.key) }), 200, 'client certificate');
    // A plain-HTTP request does not get through at all.
    const plain = await new Promise<string>((resolve) => {
      http.get(`http://${IP_PREFIX}11:7411/v1/nodes`, (res) => { res.resume(); resolve(`HTTP ${res.statusCode}`); }).on('error', (e) => resolve(`error ${(e as NodeJS.ErrnoException).code ?? e.message}`));
    });
    assert.ok(!plain.startsWith('HTTP 2'), plain);
  });

  test('bad input gives one clear line and a non-zero exit', async () => {
    const cases: Array<[string[], RegExp, NodeJS.ProcessEnv?]> = [
      [['node', 'info', 'nosuch'], /^cio: no node named nosuch in this cluster\n$/],
      [['node', 'cordon', 'nosuch'], /^cio: no node named nosuch/],
      [['node', 'ls', '--bogus'], /^cio: unknown option '--bogus'\n$/],
      [['events', '-n', 'x'], /^cio: option '-n, --lines <n>' argument 'x' is invalid/],
      [['nosuchcommand'], /^cio: unknown command 'nosuchcommand'/],
      [['cluster', 'kill', 'v9', '--dir', cluster.dir], /^cio: no node v9 in the local cluster/],
      [['cluster', 'up', '--nodes', '2', '--dir', cluster.dir, '--ip-prefix', IP_PREFIX], /^cio: a cluster is already up in/],
      [['cluster', 'up', '--ip-prefix', '10.0.0.', '--dir', `${cluster.home}/other`], /must be a loopback prefix/],
      [['cluster', 'down', '--dir', `${cluster.home}/nothing-here`], /^cio: no local cluster in .*: nothing to stop\n$/],
      [['node', 'ls'], /^cio: no cluster configured/, { CIO_HOME: `${cluster.home}/empty` }],
    ];
    for (const [args, pattern, env] of cases) {
      const res = await cluster.cli(args, env);
      assert.notEqual(res.code, 0, `${args.join(' ')} should fail`);
      assert.match(res.stderr, pattern, `${args.join(' ')}: ${res.stderr}`);
      assert.equal(res.stderr.trim().split('\n').length, 1, `one line for ${args.join(' ')}: ${res.stderr}`);
    }
  });
});
