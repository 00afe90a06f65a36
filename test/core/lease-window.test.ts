// The lease bound: counted from when keepalives were sent, ended by a loss.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LEASE_CLOCK_MARGIN, LeaseWindow } from '../../src/core/lease-window';

const TTL = 3000;
const BOUND = TTL * (1 - LEASE_CLOCK_MARGIN);

test('the lease holds a TTL (less the margin) past the sending of the last answered keepalive', () => {
  const w = new LeaseWindow(TTL);
  assert.equal(w.held(0, 0), false, 'nothing granted yet');
  w.granted(1000);
  assert.equal(w.held(0, 1000 + BOUND - 1), true);
  assert.equal(w.held(0, 1000 + BOUND), false);
  w.keepaliveSent(2000);
  w.keepaliveSent(3000);
  assert.equal(w.until(), 1000 + BOUND, 'unanswered keepalives extend nothing');
  w.keepaliveAnswered();
  assert.equal(w.until(), 2000 + BOUND, 'the first answer is for the first send, not the newest');
  w.keepaliveAnswered();
  assert.equal(w.until(), 3000 + BOUND);
  w.keepaliveAnswered();
  assert.equal(w.until(), 3000 + BOUND, 'an answer with no remembered send extends nothing');
});

test('a restarted stream forgets unanswered sends; a loss ends the generation for good', () => {
  const w = new LeaseWindow(TTL);
  w.granted(0);
  w.keepaliveSent(1000);
  w.streamRestarted();
  w.keepaliveAnswered();
  assert.equal(w.until(), BOUND);
  w.lost();
  assert.equal(w.generation, 1);
  w.granted(5000);
  assert.equal(w.held(0, 5001), false, 'I/O armed under the lost lease stays stopped');
  assert.equal(w.held(1, 5001), true);
});

test('a long run of unanswered sends never pairs an answer with a later send', () => {
  const w = new LeaseWindow(TTL);
  for (let t = 0; t < 100; t++) w.keepaliveSent(t * 10);
  for (let i = 0; i < 100; i++) w.keepaliveAnswered();
  assert.ok(w.until() <= 31 * 10 + BOUND, `held until ${w.until()}`);
});
