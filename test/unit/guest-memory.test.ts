// GuestMemory: regions mapped as windows, guest-physical and front-end-virtual translation, bounds.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { native } from '../../src/native';
import { GuestMemory, Region, STEP, Translation, WINDOW } from '../../src/memory/guest-memory';

const GiB = 1024 * 1024 * 1024;

function fdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

describe('GuestMemory', () => {
  it('translates guest-physical and front-end-virtual addresses within each region, and nothing outside', () => {
    const before = fdCount();
    const mem = new GuestMemory();
    const fd1 = native.memfdCreate('r1', 1 << 20);
    const fd2 = native.memfdCreate('r2', 2 << 20);
    mem.replace([
      new Region({ guestPhysAddr: 0, memorySize: 1 << 20, userspaceAddr: 0x7f0000000000, mmapOffset: 0 }, fd1),
      new Region({ guestPhysAddr: 0x100000000, memorySize: 1 << 20, userspaceAddr: 0x7f1000000000, mmapOffset: 1 << 20 }, fd2),
    ]);
    const t = new Translation();
    assert.ok(mem.translateGpa(0x1000, 16, t));
    t.buf[t.off] = 0xab;
    assert.equal(t.len, 16);
    // the same byte through the front-end virtual address
    const v = mem.translateUva(0x7f0000001000, 16)!;
    assert.equal(v.buf[v.off], 0xab);
    // second region: offset into its fd by mmap_offset
    assert.ok(mem.translateGpa(0x100000000 + 5, 1, t));
    t.buf[t.off] = 0xcd;
    const m = new Uint8Array(native.mmap(fd2, 2 << 20, 0));
    assert.equal(m[(1 << 20) + 5], 0xcd);
    native.munmap(m.buffer as ArrayBuffer);
    // a range running past the region end is cut at the end
    assert.ok(mem.translateGpa((1 << 20) - 4, 100, t));
    assert.equal(t.len, 4);
    // outside every region
    assert.equal(mem.translateGpa(1 << 20, 1, t), false);
    assert.equal(mem.translateGpa(0xffffffff, 1, t), false);
    assert.equal(mem.translateUva(0x7f0000000000 + (1 << 20) - 8, 16), null);
    mem.clear();
    assert.equal(fdCount(), before);
  });

  it('maps a region larger than one window as overlapping windows and translates across them', () => {
    const size = 5 * GiB; // sparse memfd: costs address space only
    const fd = native.memfdCreate('big', size);
    const r = new Region({ guestPhysAddr: 0, memorySize: size, userspaceAddr: 0x7e0000000000, mmapOffset: 0 }, fd);
    const mem = new GuestMemory();
    mem.replace([r]);
    assert.ok(r.windows.length >= 4);
    for (const w of r.windows) assert.ok(w.length <= WINDOW);
    const t = new Translation();
    // any range up to WINDOW - STEP bytes lies in one window, wherever it starts
    for (const addr of [0, STEP - 8, 2 * STEP - 3, 3 * GiB + 12345, size - 64]) {
      assert.ok(mem.translateGpa(addr, 64, t), `0x${addr.toString(16)}`);
      assert.equal(t.len, Math.min(64, size - addr));
      t.buf[t.off] = (addr & 0xff) ^ 0x5a;
    }
    // the overlap: the same guest byte seen through two windows is one byte of memory
    const a = 1 * GiB + 100;
    assert.ok(mem.translateGpa(a, 1, t));
    t.buf[t.off] = 0x77;
    assert.equal(r.windows[0][a], 0x77);
    assert.equal(r.windows[1][a - STEP], 0x77);
    // the last byte, and one past it
    assert.ok(mem.translateGpa(size - 1, 1, t));
    assert.equal(mem.translateGpa(size, 1, t), false);
    mem.clear();
  });

  it('refuses overlapping regions and regions beyond the end of their fd, leaking no fd', () => {
    const before = fdCount();
    const mem = new GuestMemory();
    const fd = native.memfdCreate('small', 4096);
    assert.throws(
      () => new Region({ guestPhysAddr: 0, memorySize: 8192, userspaceAddr: 0x10000, mmapOffset: 0 }, fd),
      /extends past the end of its fd/,
    );
    const fa = native.memfdCreate('a', 1 << 20);
    const fb = native.memfdCreate('b', 1 << 20);
    const ra = new Region({ guestPhysAddr: 0, memorySize: 1 << 20, userspaceAddr: 0x100000, mmapOffset: 0 }, fa);
    const rb = new Region({ guestPhysAddr: 0x80000, memorySize: 1 << 20, userspaceAddr: 0x900000, mmapOffset: 0 }, fb);
    assert.throws(() => mem.replace([ra, rb]), /overlaps/);
    mem.replace([ra]);
    assert.throws(() => mem.add(rb), /overlaps/);
    rb.unmap();
    // REM: by guest address, user address and size
    assert.equal(mem.remove({ guestPhysAddr: 0, memorySize: 1 << 20, userspaceAddr: 0x999, mmapOffset: 0 }), null);
    const removed = mem.remove({ guestPhysAddr: 0, memorySize: 1 << 20, userspaceAddr: 0x100000, mmapOffset: 0 });
    assert.equal(removed, ra);
    ra.unmap();
    assert.equal(mem.size, 0);
    assert.equal(fdCount(), before);
  });
});
