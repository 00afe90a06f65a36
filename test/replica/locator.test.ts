import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ReplicaLocator } from '../../src/replica/locator';
import type { Replica } from '../../src/replica/replica';
import type { ReplicaStore } from '../../src/replica/store';

test('requests that find a replica not yet open resume in arrival order', async () => {
  // A store whose existence checks complete in reverse order of the calls,
  // as threadpool completions may.
  const checks: Array<(found: boolean) => void> = [];
  const replica = { id: 'r1' } as unknown as Replica;
  let opened = false;
  const store = {
    driveDir: '/fake',
    cached: () => (opened ? replica : undefined),
    exists: () => new Promise<boolean>((resolve) => checks.push(resolve)),
    open: () => {
      opened = true;
      return Promise.resolve(replica);
    },
  } as unknown as ReplicaStore;
  const locator = new ReplicaLocator(new Map([['d1', store]]));

  const order: number[] = [];
  const lookups = [0, 1, 2, 3].map(async (i) => {
    const found = locator.find('r1');
    assert.ok(found instanceof Promise);
    assert.equal(await found, replica);
    order.push(i);
  });
  for (const check of checks.reverse()) check(true);
  await Promise.all(lookups);
  assert.equal(checks.length, 1, 'one lookup serves all waiting requests');
  assert.deepEqual(order, [0, 1, 2, 3]);
  assert.equal(locator.find('r1'), replica, 'then the open replica is found without waiting');
});
