// SIGBUS containment in the addon: an access to pages of a guest mapping whose file shrank
// completes (zero pages stand in) and is counted on that mapping; any other SIGBUS still kills.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { native } from '../../src/native';

const faultWord = native.guestFaultWord();

test('a JavaScript access and a copy-runner copy over a truncated mapping complete on zero pages and are counted', () => {
  const MiB = 1 << 20;
  const fd = native.memfdCreate('shrinks', MiB);
  const ab = native.mmap(fd, MiB, 0);
  const other = native.memfdCreate('stays', MiB);
  const ab2 = native.mmap(other, MiB, 0);
  try {
    const u = new Uint8Array(ab);
    u[10] = 1;
    u[500000] = 2;
    const before = faultWord[0];
    native.ftruncate(fd, 4096);
    assert.equal(u[10], 1, 'the page still in the file keeps its bytes');
    assert.equal(u[500000], 0, 'a read of a missing page gives zero');
    u[600000] = 5; // a write completes too (on a private zero page)
    assert.equal(u[600000], 5);
    assert.equal(native.mappingFaults(ab), 2);
    // the copy runner: copying from missing pages reads zeros
    const dst = new Uint8Array(8192).fill(0xee);
    const srcArea = native.registerArea(u);
    const dstArea = native.registerArea(dst);
    const list = new Uint32Array(5);
    native.setCopyList(list);
    list.set([srcArea, 800000, dstArea, 0, 8192]);
    assert.equal(native.runCopies(1), 0);
    assert.ok(dst.every((b) => b === 0));
    assert.equal(native.mappingFaults(ab), 5, 'one fault per missing page: [800000, 808192) spans 3');
    assert.equal(faultWord[0] - before, 5, 'process-wide count');
    assert.equal(native.mappingFaults(ab2), 0, 'another mapping: no fault');
    native.unregisterArea(srcArea);
    native.unregisterArea(dstArea);
  } finally {
    native.munmap(ab);
    native.munmap(ab2);
    native.close(fd);
    native.close(other);
  }
  assert.equal(native.mappingFaults(ab), 0, 'unmapped: forgotten');
});

test('a SIGBUS outside every guest mapping keeps the default action (the process dies)', () => {
  const addon = path.resolve(__dirname, '..', '..', 'src', 'native.js');
  const r = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(addon)}); process.kill(process.pid, 'SIGBUS'); setTimeout(() => {}, 2000)`], { encoding: 'utf8' });
  assert.equal(r.signal, 'SIGBUS', `exit ${r.status} ${r.stderr}`);
});
