// The record checker of the Swarm e2e test must see loss, gaps and leaks, or
// the e2e test passes for nothing. Run by test/e2e/swarm.sh before the lab starts.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkRecords } from './swarm-tool';

const data = (lines: string[]): string => lines.map((l) => `${l}\n`).join('');
const acks = (entries: Record<string, number[]>): Map<string, string> => new Map(Object.entries(entries).map(([w, s]) => [w, data(s.map(String))]));

test('a clean failover: every acknowledged record is there, no gaps', () => {
  const r = checkRecords(data(['R h2 aa 1', 'R h2 aa 2', 'R h2 aa 3', 'R h3 bb 4', 'R h3 bb 5']), acks({ 'h2-aa': [1, 2], 'h3-bb': [4, 5] }));
  assert.equal(r.records, 4);
  assert.equal(r.lost, 0);
  assert.equal(r.gaps, 0);
  assert.equal(r.leaked, 0);
  assert.equal(r.dataRecords, 5);
  assert.equal(r.lastSeq, 5);
  assert.deepEqual(r.writers['h2-aa'], { acked: 2, first: 1, last: 2, inData: 3 });
});

test('an acknowledged record missing from the data is lost', () => {
  const r = checkRecords(data(['R h2 aa 1', 'R h3 bb 2']), acks({ 'h2-aa': [1, 2], 'h3-bb': [2] }));
  assert.equal(r.lost, 1);
  assert.deepEqual(r.lostExamples, ['h2-aa:2']);
});

test('a record of the same number by another writer does not count', () => {
  const r = checkRecords(data(['R h2 aa 1', 'R h3 bb 2']), acks({ 'h2-aa': [1, 2] }));
  assert.equal(r.lost, 1);
});

test('a skipped sequence number is a gap; a torn line is counted apart', () => {
  const r = checkRecords(data(['R h2 aa 1', 'R h2 aa 3', 'R h2 a', 'R h3 bb 4']), acks({}));
  assert.equal(r.gaps, 1);
  assert.equal(r.torn, 1);
});

test('records of a fenced writer past its limit have leaked', () => {
  const text = data(['R h2 aa 1', 'R h2 aa 2', 'R h3 bb 3', 'R h2 aa 3', 'R h2 aa 4']);
  const r = checkRecords(text, acks({ 'h2-aa': [1] }), { writer: 'h2-aa', maxSeq: 2 });
  assert.equal(r.leaked, 2);
  assert.deepEqual(r.leakedExamples, ['h2-aa:3', 'h2-aa:4']);
});
