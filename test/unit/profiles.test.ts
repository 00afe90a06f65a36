import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BUILTIN_PROFILES, parseProfile, resolveSpec, validateVolumeName } from '../../src/core/profiles';

const GB = 1024 ** 3;

test('explicit options override the profile, which overrides the defaults', () => {
  const mysql = BUILTIN_PROFILES.find((p) => p.name === 'MYSQL')!;
  assert.deepEqual(resolveSpec({}, mysql), { sizeBytes: 20 * GB, level: 3, driveType: 'SSD', provision: 'thin', filesystem: 'ext4', iopsMin: 500, iopsMax: 5000 });
  const spec = resolveSpec({ capacity: '5', level: '2', filesystem: 'XFS' }, mysql);
  assert.deepEqual([spec.sizeBytes, spec.level, spec.filesystem], [5 * GB, 2, 'xfs']);
  assert.equal(resolveSpec({}).level, 2);
  assert.equal(resolveSpec({ capacity: '1.5MB' }).sizeBytes, 2 * 1024 * 1024, 'rounded up to whole MiB');
});

test('bad option values are refused with the field and allowed values', () => {
  assert.throws(() => resolveSpec({ level: 4 }), /level must be a whole number from 1 to 3/);
  assert.throws(() => resolveSpec({ type: 'tape' }), /type must be one of ssd, hdd, nvme/);
  assert.throws(() => resolveSpec({ provision: 'fat' }), /provision must be one of thin, thick/);
  assert.throws(() => resolveSpec({ capacity: 'lots' }), /not a size/);
  assert.throws(() => resolveSpec({ capacity: '100TB' }), /64TB limit/);
  assert.throws(() => resolveSpec({ iopsmin: 10, iopsmax: 5 }), /iopsmin \(10\) is larger than iopsmax \(5\)/);
});

test('volume names: no path tricks, length limits', () => {
  for (const ok of ['portainer', 'wp_mysql-data', 'a', 'A.b-c_1', 'x'.repeat(63)]) validateVolumeName(ok);
  for (const bad of ['', '..', '../x', 'a/b', '.hidden', '-x', 'x'.repeat(64), 'a b', 'é']) assert.throws(() => validateVolumeName(bad), /invalid volume name/);
});

test('profile files are validated, unknown fields named', () => {
  assert.deepEqual(parseProfile({ name: 'fast', capacity: '1GB', level: 1, type: 'nvme' }, 'f.yaml'), {
    name: 'FAST', description: undefined, options: { capacity: '1GB', level: 1, type: 'nvme' },
  });
  assert.throws(() => parseProfile({ name: 'x', colour: 'red' }, 'f.yaml'), /unknown field\(s\) colour/);
  assert.throws(() => parseProfile({ capacity: '1GB' }, 'f.yaml'), /name/);
  assert.throws(() => parseProfile({ name: 'x', level: 9 }, 'f.yaml'), /level must be/);
  assert.throws(() => parseProfile({ name: '../x' }, 'f.yaml'), /name/);
});
