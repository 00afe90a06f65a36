// Pure parts of the plugin and attach modules: Create options, the fit of an
// existing volume, the mount-ID table, and the parsers of tool output.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseBlkid } from '../../src/attach/filesystem';
import { parseMountInfo } from '../../src/attach/mounts';
import { parseNbdUnixUri } from '../../src/attach/nbd-kernel';
import { BUILTIN_PROFILES } from '../../src/core/profiles';
import type { VolumeRecord } from '../../src/core/types';
import { MountTable } from '../../src/plugin/mount-table';
import { createMismatches, parseCreateOptions } from '../../src/plugin/options';
import { parseBody } from '../../src/plugin/socket-server';

const MiB = 1024 * 1024;

test('Create options: known keys in any case, empty values dropped, values checked', () => {
  assert.deepEqual(parseCreateOptions('v', undefined), { options: {} });
  assert.deepEqual(parseCreateOptions('v', null), { options: {} });
  assert.deepEqual(parseCreateOptions('v', { Capacity: ' 20GB ', level: '3', profile: 'mysql', type: '', iopsmax: '900' }), {
    profile: 'mysql',
    options: { capacity: '20GB', level: '3', iopsmax: '900' },
  });
  assert.throws(() => parseCreateOptions('v', { size: '1GB' }), /unknown option "size" for volume v \(allowed: profile, capacity, level, type, provision, filesystem, iopsmin, iopsmax\)/);
  assert.throws(() => parseCreateOptions('v', { level: '4' }), /cannot create volume v: level must be a whole number from 1 to 3, not "4"/);
  assert.throws(() => parseCreateOptions('v', { filesystem: 'btrfs' }), /filesystem must be one of ext4, xfs/);
  assert.throws(() => parseCreateOptions('v', { capacity: 'lots' }), /not a size/);
  assert.throws(() => parseCreateOptions('v', { level: { x: 1 } }), /option level of volume v must be a string/);
  assert.throws(() => parseCreateOptions('v', ['a']), /Opts of volume v must be an object/);
  assert.throws(() => parseCreateOptions('v', 'level=2'), /must be an object/);
});

test('an existing volume fits a Create that names only options it has', () => {
  const vol = {
    name: 'db', sizeBytes: 20 * 1024 * MiB, level: 3, driveType: 'SSD', provision: 'thin', filesystem: 'ext4', iopsMin: 500, iopsMax: 5000,
  } as VolumeRecord;
  const mysql = BUILTIN_PROFILES.find((p) => p.name === 'MYSQL')!;
  assert.deepEqual(createMismatches(vol, { options: {} }), []);
  assert.deepEqual(createMismatches(vol, { options: { capacity: '20GB', type: 'ssd' } }), []);
  assert.deepEqual(createMismatches(vol, { profile: 'mysql', options: {} }, mysql), []);
  assert.deepEqual(createMismatches(vol, { options: { capacity: '30GB', level: '2' } }), ['capacity is 20GB, not 30GB', 'level is 3, not 2']);
  assert.deepEqual(createMismatches(vol, { options: { filesystem: 'xfs', type: 'hdd' } }), ['type is ssd, not hdd', 'filesystem is ext4, not xfs']);
  assert.deepEqual(createMismatches({ ...vol, iopsMax: undefined }, { options: { iopsmax: '10' } }), ['iopsmax is not set, not 10']);
  // Explicit options beat the profile's, as at creation.
  assert.deepEqual(createMismatches(vol, { profile: 'mysql', options: { level: '2' } }, mysql), ['level is 3, not 2']);
});

test('mount table: counts by ID, a repeated ID counts once, unknown IDs are not held', () => {
  const t = new MountTable();
  assert.equal(t.remove('a', 'x'), 'not-held');
  t.add('a', 'id1');
  t.add('a', 'id1');
  t.add('a', 'id2');
  t.setMounted('a', '/cio/volumes/a', 'nbdfuse-loop');
  assert.deepEqual(t.get('a')?.ids, ['id1', 'id2']);
  assert.equal(t.holds('a', 'id2'), true);
  assert.equal(t.remove('a', 'other'), 'not-held');
  assert.equal(t.remove('a', 'id1'), 'still-used');
  assert.equal(t.remove('a', 'id1'), 'not-held', 'an ID is released once');
  assert.equal(t.remove('a', 'id2'), 'last');
  assert.deepEqual(t.get('a')?.ids, [], 'kept with no IDs until the release is done');
  const copy = MountTable.fromJSON(JSON.parse(JSON.stringify(t)));
  assert.deepEqual(copy.get('a'), { ids: [], mountpoint: '/cio/volumes/a', method: 'nbdfuse-loop' });
  t.delete('a');
  assert.equal(t.get('a'), undefined);
  assert.deepEqual(MountTable.fromJSON(null).names(), []);
});

test('mountinfo: optional fields, escaped spaces', () => {
  const text = [
    '36 35 98:0 / /mnt/with\\040space rw,noatime master:1 shared:2 - ext4 /dev/loop3 rw,errors=continue',
    '42 27 0:39 / /var/lib/cio/plugin/nbdfuse/v1 rw,nosuid,nodev,relatime - fuse /dev/fuse rw,user_id=0,group_id=0',
    'garbage',
    '',
  ].join('\n');
  assert.deepEqual(parseMountInfo(text), [
    { majMin: '98:0', mountpoint: '/mnt/with space', fstype: 'ext4', source: '/dev/loop3' },
    { majMin: '0:39', mountpoint: '/var/lib/cio/plugin/nbdfuse/v1', fstype: 'fuse', source: '/dev/fuse' },
  ]);
});

test('blkid: a filesystem, a partition table, other signatures', () => {
  assert.deepEqual(parseBlkid('DEVNAME=/dev/loop0\nUUID=x\nTYPE=xfs\nUSAGE=filesystem\n'), { kind: 'filesystem', type: 'xfs' });
  assert.deepEqual(parseBlkid('DEVNAME=/dev/loop0\nPTUUID=1\nPTTYPE=gpt\n'), { kind: 'other', what: 'a gpt partition table' });
  assert.deepEqual(parseBlkid('DEVNAME=/dev/loop0\nTYPE=linux_raid_member\nUSAGE=raid\n'), { kind: 'other', what: 'linux_raid_member' });
});

test('nbd+unix URIs give the socket and export name; others are refused', () => {
  assert.deepEqual(parseNbdUnixUri('nbd+unix:///db?socket=/var/lib/cio/nbd/1a2b.sock'), { socket: '/var/lib/cio/nbd/1a2b.sock', exportName: 'db' });
  assert.throws(() => parseNbdUnixUri('nbd://host/db'), /not an nbd\+unix URI/);
  assert.throws(() => parseNbdUnixUri('nbd+unix:///db'), /not an nbd\+unix URI/);
  assert.throws(() => parseNbdUnixUri('::'), /not an NBD URI/);
});

test('plugin request bodies: empty is {}, JSON objects only', () => {
  assert.deepEqual(parseBody(''), {});
  assert.deepEqual(parseBody('null'), {});
  assert.deepEqual(parseBody('{"Name":"a"}'), { Name: 'a' });
  assert.throws(() => parseBody('{"Name":'), /not valid JSON/);
  assert.throws(() => parseBody('[1]'), /must be a JSON object/);
  assert.throws(() => parseBody('"x"'), /must be a JSON object/);
});
