// The deterministic simulation (see world.ts): seeded runs of the real engine
// against simulated copies, etcd and faults. A failing seed replays exactly:
//   SIM_SEED=1234 SIM_TRACE=1 node --test dist/test/sim/simulation.test.js
// SIM_RUNS sets how many seeds (default 50; `make sim` runs 2000), SIM_FIRST_SEED where they start.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { World } from './world';

const RUN_MS = Number(process.env.SIM_RUN_MS ?? 12_000);

async function runSeed(seed: number, trace: boolean): Promise<World> {
  const world = new World(seed, trace);
  try {
    await world.run(RUN_MS);
  } catch (err) {
    if (trace) console.log(world.trace.join('\n'));
    throw err;
  }
  return world;
}

test('simulation: every in-sync copy holds the same bytes and every acknowledged write survives', async () => {
  const only = process.env.SIM_SEED;
  const seeds = only ? [Number(only)] : Array.from({ length: Number(process.env.SIM_RUNS ?? 50) }, (_, i) => Number(process.env.SIM_FIRST_SEED ?? 1) + i);
  const totals = { acked: 0, takeovers: 0, rebuilds: 0, faults: 0, checks: 0 };
  for (const seed of seeds) {
    const world = await runSeed(seed, process.env.SIM_TRACE === '1');
    for (const k of Object.keys(totals) as Array<keyof typeof totals>) totals[k] += world.stats[k];
  }
  console.log(`# simulation: ${seeds.length} seeds, ${totals.acked} acknowledged changes, ${totals.faults} faults, ${totals.takeovers} takeovers, ${totals.rebuilds} rebuilds, ${totals.checks} checks`);
  assert.ok(totals.checks >= seeds.length, 'every run reached its checks');
});

test('simulation: a seed replays exactly', async () => {
  const a = await runSeed(7, true);
  const b = await runSeed(7, true);
  assert.deepEqual(a.stats, b.stats);
  assert.deepEqual(a.trace, b.trace);
});
