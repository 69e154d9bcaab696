// The batched copy machinery: areas registered with the addon, the copy list, and the addon's own
// range checks (it refuses a bad entry rather than faulting).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/native';
import { copies } from '../../src/datapath/copy-list';
import { Frame } from '../../src/datapath/frame';

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + seed) & 0xff;
  return b;
}

test('copies run in list order, one addon call for the batch; a copy sees what earlier ones wrote', () => {
  const a = pattern(4096, 1);
  const b = new Uint8Array(4096);
  const c = new Uint8Array(4096);
  const ia = copies.register(a);
  const ib = copies.register(b);
  const ic = copies.register(c);
  try {
    const before = copies.copiesRun;
    assert.ok(copies.record(ia, 100, ib, 0, 1000));
    assert.ok(copies.record(ib, 0, ic, 10, 1000)); // reads what the first one writes
    assert.ok(copies.record(ia, 0, ib, 0, 50)); // then overwrites the start of b
    assert.equal(copies.pending, 3);
    assert.equal(b[0], 0, 'nothing ran yet');
    copies.run();
    assert.equal(copies.pending, 0);
    assert.equal(copies.copiesRun - before, 3);
    assert.deepEqual(c.subarray(10, 1010), a.subarray(100, 1100));
    assert.deepEqual(b.subarray(0, 50), a.subarray(0, 50));
    assert.deepEqual(b.subarray(50, 1000), a.subarray(150, 1100));
  } finally {
    for (const id of [ia, ib, ic]) copies.unregister(id);
  }
});

test('record() refuses ranges outside their areas and unknown areas (nothing recorded)', () => {
  const a = new Uint8Array(256);
  const ia = copies.register(a);
  try {
    assert.equal(copies.record(ia, 200, ia, 0, 57), false, 'source end beyond');
    assert.equal(copies.record(ia, 0, ia, 255, 2), false, 'destination end beyond');
    assert.equal(copies.record(ia, -1, ia, 0, 1), false, 'negative offset');
    assert.equal(copies.record(ia, 0, ia, 0, -1), false, 'negative length');
    assert.equal(copies.record(0, 0, ia, 0, 1), false, 'area 0');
    assert.equal(copies.record(ia + 100000, 0, ia, 0, 1), false, 'unknown area');
    assert.equal(copies.pending, 0);
  } finally {
    copies.unregister(ia);
  }
  assert.equal(copies.record(ia, 0, ia, 0, 1), false, 'unregistered area');
});

test('the addon refuses bad entries itself: unknown or stale areas, ranges past the end, never faults', () => {
  const a = pattern(8192, 3);
  const b = new Uint8Array(8192);
  const fd = native.memfdCreate('copy-list-test', 65536);
  const ab = native.mmap(fd, 65536, 0);
  const win = new Uint8Array(ab);
  win.set(pattern(100, 9), 0);
  const ia = native.registerArea(a);
  const ib = native.registerArea(b);
  const iw = native.registerArea(win);
  const list = new Uint32Array(5 * 8);
  native.setCopyList(list);
  try {
    const put = (k: number, sa: number, so: number, da: number, dof: number, len: number) => list.set([sa, so, da, dof, len], k * 5);
    put(0, ia, 0, ib, 0, 100); // good
    put(1, ia, 8100, ib, 0, 100); // source past the end
    put(2, ia, 0, ib, 0xffffff00, 0x200); // destination offset + length wraps 32 bits: refused
    put(3, 999999, 0, ib, 0, 10); // unknown area
    put(4, 0, 0, ib, 0, 10); // area 0
    put(5, iw, 0, ib, 200, 100); // good: out of the guest window
    assert.equal(native.runCopies(6), 4);
    assert.deepEqual(b.subarray(0, 100), a.subarray(0, 100));
    assert.deepEqual(b.subarray(200, 300), win.subarray(0, 100));
    assert.equal(native.areaLength(iw), 65536);
    // munmap makes the window's area stale: a copy into or out of it is refused, not a fault
    native.munmap(ab);
    assert.equal(native.areaLength(iw), 0);
    put(0, ia, 0, iw, 0, 10);
    put(1, iw, 0, ib, 0, 10);
    assert.equal(native.runCopies(2), 2);
    // an unregistered area likewise
    native.unregisterArea(ib);
    put(0, ia, 0, ib, 0, 10);
    assert.equal(native.runCopies(1), 1);
    assert.throws(() => native.runCopies(9), RangeError, 'count beyond the list');
  } finally {
    native.unregisterArea(ia);
    native.unregisterArea(ib);
    native.close(fd);
    copies.attach();
  }
});

test('a Frame over several segments copies out across segment boundaries and sums like one buffer', () => {
  const src = pattern(3000, 5);
  const dst = new Uint8Array(3000);
  const is = copies.register(src);
  const id = copies.register(dst);
  try {
    const f = new Frame(4);
    // Ethernet bytes = src[12..400) + src[400..401) + src[401..2000): odd-sized middle segment
    f.hdr = src;
    f.hdrOff = 0;
    f.eth = src;
    f.ethOff = 12;
    f.ethPeek = 388;
    f.len = 2000;
    const cuts = [12, 400, 401, 2000];
    for (let k = 0; k < 3; k++) {
      f.segBuf[k] = src;
      f.segArea[k] = is;
      f.segOff[k] = cuts[k];
      f.segLen[k] = cuts[k + 1] - cuts[k];
    }
    f.segFirst = 0;
    f.segEnd = 3;
    f.segSkip = 0;
    f.seek(380);
    assert.ok(f.copyOut(1000, id, 5));
    copies.run();
    assert.deepEqual(dst.subarray(5, 1005), src.subarray(12 + 380, 12 + 1380));
    // sum16 over the scatter list equals sum16 over the same bytes contiguous
    const flat = src.subarray(12, 2000);
    let ref = 0;
    for (let i = 2; i + 1 < 1988; i += 2) ref += (flat[i] << 8) | flat[i + 1];
    const fold = (x: number) => {
      while (x > 0xffff) x = (x & 0xffff) + (x >>> 16);
      return x;
    };
    assert.equal(fold(f.sum16(2, 1988, 0)), fold(ref));
    assert.equal(f.copyOut(5000, id, 0), false, 'more bytes than the frame has');
  } finally {
    copies.settle();
    copies.unregister(is);
    copies.unregister(id);
  }
});
