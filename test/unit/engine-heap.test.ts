// The data path allocates no objects per frame in steady state. Measured, not eyeballed: a
// PerformanceObserver counts garbage collections during 1e6 frames through the fast path, the
// store-and-drain path, broadcast, and unknown → learned; a loop that allocates one small object
// per frame (the control) must show collections, or the detector is not working. With --expose-gc
// the retained heap growth is checked too.
//
// Bound: a 16-byte object per frame (one boxed double) is 16 MB per 1e6 frames, about 16 young-
// generation collections here; the control's 16-byte views give ~46. The engine loop shows 0, and
// occasionally 1–2 from the test runner and the JIT in the background, hence "at most 4".
const MAX_GCS = 4;

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PerformanceObserver } from 'node:perf_hooks';
import { setImmediate as tick } from 'node:timers/promises';
import { Switch } from '../../src/engine/switch';
import { frameFor, RingPort, writeFrame } from '../../bench/ring-port';

const MAC_A = [0x52, 0x54, 0, 0, 0, 1];
const MAC_B = [0x52, 0x54, 0, 0, 0, 2];
const MAC_C = [0x52, 0x54, 0, 0, 0, 3];
const BCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];

async function countGcs(fn: () => void): Promise<number> {
  let n = 0;
  const obs = new PerformanceObserver((list) => {
    n += list.getEntries().length;
  });
  obs.observe({ entryTypes: ['gc'] });
  fn();
  await tick();
  await tick();
  obs.disconnect();
  return n;
}

test('steady state: 1e6 frames through fast path, store path, flood and resolve allocate nothing', async (t0) => {
  let t = 0;
  const sw = new Switch({ tickMs: 0, clock: () => t, macAgeMs: 1, holdTimeMs: 1e12, poolBytes: 16 * 1024 * 1024 });
  const pa = new RingPort('a', 1 << 20);
  const pb = new RingPort('b', 32);
  const pc = new RingPort('c', 64);
  const a = sw.attach(pa, { staticMac: '52:54:00:00:00:01' });
  const b = sw.attach(pb, { staticMac: '52:54:00:00:00:02' });
  const c = sw.attach(pc);
  const toB = new Uint8Array(2048);
  const toC = new Uint8Array(2048);
  const bc = new Uint8Array(2048);
  const fromC = new Uint8Array(2048);
  const lenB = writeFrame(toB, MAC_B, MAC_A, 64);
  const lenC = writeFrame(toC, MAC_C, MAC_A, 1000);
  const lenBc = writeFrame(bc, BCAST, MAC_A, 100);
  const lenFromC = writeFrame(fromC, BCAST, MAC_C, 64);

  // one round = 64 frames: 32 fast to b, 24 stored for b (b out of buffers) then drained, 4
  // broadcasts, 4 to c while c's MAC is aged out (held) then resolved when c speaks.
  const round = () => {
    pb.refill();
    for (let i = 0; i < 56; i++) sw.input(a, frameFor(toB, lenB)); // 64 slots: the last ones are stored
    for (let i = 0; i < 4; i++) sw.input(a, frameFor(bc, lenBc));
    t += 2; // c's MAC ages out (macAgeMs 1)
    sw.flush();
    for (let i = 0; i < 4; i++) sw.input(a, frameFor(toC, lenC));
    sw.flush();
    pc.refill();
    sw.input(c, frameFor(fromC, lenFromC)); // learned → held frames resolved and delivered
    sw.flush();
    pb.refill();
    sw.resourcesAvailable(b);
  };
  const rounds = 1e6 / 65;
  for (let r = 0; r < 2000; r++) round(); // warm up the JIT
  const gc: { heapUsed: () => number } = { heapUsed: () => process.memoryUsage().heapUsed };
  const g = (globalThis as { gc?: () => void }).gc;
  g?.();
  const before = gc.heapUsed();
  const s0 = sw.stats();
  const gcs = await countGcs(() => {
    for (let r = 0; r < rounds; r++) round();
  });
  const s1 = sw.stats();
  g?.();
  const growth = gc.heapUsed() - before;
  sw.checkInvariants();

  const frames = s1.total.rxFrames - s0.total.rxFrames;
  assert.ok(frames >= 1e6, `${frames} frames`);
  assert.ok(s1.total.fastFrames - s0.total.fastFrames > 0);
  assert.ok(s1.total.drainedFrames - s0.total.drainedFrames > 100_000, 'store path exercised');
  assert.ok(s1.total.resolvedFrames - s0.total.resolvedFrames > 10_000, 'resolve exercised');
  assert.equal(s1.total.dropped, 0);
  assert.equal(s1.pool.blocksInUse, 0);

  // control: one 16-byte view per frame must trigger collections
  let sink: Uint8Array | null = null;
  const control = await countGcs(() => {
    for (let i = 0; i < 1e6; i++) sink = new Uint8Array(toB.buffer, i & 63, 16);
  });
  assert.ok(sink !== null);
  assert.ok(control > 4 * MAX_GCS, `control loop allocating per frame caused ${control} collections`);
  t0.diagnostic(`engine loop: ${gcs} collections over ${frames} frames; control: ${control}; heap growth ${g ? growth : 'n/a (no --expose-gc)'}`);
  assert.ok(gcs <= MAX_GCS, `engine loop: ${gcs} collections over ${frames} frames (control: ${control})`);
  if (g) assert.ok(growth < 256 * 1024, `heap grew ${growth} bytes`);
  sw.close();
});

test('steady state with the production clock (timer + Date.now): 1e6 frames, fast and store paths, no collection', async (t0) => {
  const sw = new Switch({ poolBytes: 16 * 1024 * 1024 }); // default tickMs: the timer owns the clock
  const pa = new RingPort('a', 1 << 20);
  const pb = new RingPort('b', 32);
  const pc = new RingPort('c', 1 << 20);
  const a = sw.attach(pa, { staticMac: '52:54:00:00:00:01' });
  const b = sw.attach(pb, { staticMac: '52:54:00:00:00:02' });
  sw.attach(pc, { staticMac: '52:54:00:00:00:03' });
  const toB = new Uint8Array(2048);
  const bc = new Uint8Array(2048);
  const lenB = writeFrame(toB, MAC_B, MAC_A, 64);
  const lenBc = writeFrame(bc, BCAST, MAC_A, 1500);
  const round = () => {
    pb.refill();
    for (let i = 0; i < 60; i++) sw.input(a, frameFor(toB, lenB));
    for (let i = 0; i < 4; i++) sw.input(a, frameFor(bc, lenBc));
    sw.flush();
    pb.refill();
    sw.resourcesAvailable(b);
  };
  for (let r = 0; r < 2000; r++) round();
  const s0 = sw.stats();
  const gcs = await countGcs(() => {
    for (let r = 0; r < 1e6 / 64; r++) round();
  });
  const s1 = sw.stats();
  assert.ok(s1.total.rxFrames - s0.total.rxFrames >= 1e6);
  assert.ok(s1.total.drainedFrames - s0.total.drainedFrames > 100_000, 'store path exercised');
  assert.equal(s1.total.dropped, 0);
  t0.diagnostic(`${gcs} collections over ${s1.total.rxFrames - s0.total.rxFrames} frames`);
  assert.ok(gcs <= MAX_GCS, `${gcs} collections`);
  sw.close();
});
