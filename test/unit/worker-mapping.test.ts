// A worker thread maps a memory table from fds duplicated for it (src/workers/ring-thread.ts
// mapRegions). When one region cannot be mapped, nothing of the table may stay open: the regions
// mapped are unmapped (their fds closed), the failing one closes its own, and the fds of the regions
// after it, never reached, are closed too (they leaked before: one failed table left them open).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { native } from '../../src/native';
import { mapRegions } from '../../src/workers/ring-thread';

const PAGE = 4096;
const fdCount = (): number => fs.readdirSync('/proc/self/fd').length;

function region(gpa: number, size: number, fd: number) {
  return { desc: { guestPhysAddr: gpa, memorySize: size, userspaceAddr: 0x7f0000000000 + gpa, mmapOffset: 0 }, fd };
}

test('mapRegions: a table with a region that cannot be mapped leaves none of its fds open', () => {
  const before = fdCount();
  const good1 = native.memfdCreate('wm-good1', 16 * PAGE);
  const bad = native.memfdCreate('wm-bad', PAGE);
  const good2 = native.memfdCreate('wm-good2', 16 * PAGE);
  const good3 = native.memfdCreate('wm-good3', 16 * PAGE);
  assert.equal(fdCount(), before + 4);
  // the second region has size 0: refused (and closes its own fd)
  const list = [region(0, 16 * PAGE, good1), { desc: { guestPhysAddr: 16 * PAGE, memorySize: 0, userspaceAddr: 0x7f0000100000, mmapOffset: 0 }, fd: bad }, region(32 * PAGE, 16 * PAGE, good2), region(48 * PAGE, 16 * PAGE, good3)];
  assert.throws(() => mapRegions(list, () => {}), /size 0/);
  assert.equal(fdCount(), before, 'every fd of the table closed');
});

test('mapRegions: a good table is mapped, each region owning its fd until unmapped', () => {
  const before = fdCount();
  const a = native.memfdCreate('wm-a', 16 * PAGE);
  const b = native.memfdCreate('wm-b', 16 * PAGE);
  const regions = mapRegions([region(0, 16 * PAGE, a), region(16 * PAGE, 16 * PAGE, b)], () => {});
  assert.equal(regions.length, 2);
  assert.equal(fdCount(), before + 2);
  for (const r of regions) r.unmap();
  assert.equal(fdCount(), before);
});
