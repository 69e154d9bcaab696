import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ElasticFifo } from '../../src/engine/elastic-fifo';

function bytes(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (i * 13 + seed) & 0xff;
  return b;
}

test('take, queue, gather and release a chained frame; blocks come back adjacent', () => {
  const f = new ElasticFifo(64 * 1024, 1024, 3);
  assert.equal(f.blockCount, 64);
  const big = bytes(5000, 1);
  const h = f.takeAndWrite(big, 0, big.length);
  assert.ok(h >= 0);
  assert.equal(f.frameBlocks[h], 5);
  assert.equal(f.blocksInUse, 5);
  assert.ok(f.isContiguous(h), 'fresh pool gives adjacent blocks');
  assert.deepEqual(f.store.subarray(h * 1024, h * 1024 + 5000), big);
  f.push(1, h);
  assert.equal(f.checkInvariants(), null);
  // interleave small frames to break adjacency, then check gather
  const s1 = f.takeAndWrite(bytes(100, 2), 0, 100);
  f.push(2, s1);
  assert.equal(f.shift(1), h);
  f.release(h);
  const small = f.takeAndWrite(bytes(100, 3), 0, 100);
  f.push(2, small);
  const h2 = f.takeAndWrite(big, 0, big.length);
  f.push(0, h2);
  assert.equal(f.isContiguous(h2), false, 'one of its blocks went to the small frame');
  const out = new Uint8Array(5000);
  f.gather(h2, out, 0);
  assert.deepEqual(out, big);
  assert.equal(f.checkInvariants(), null);
  assert.equal(f.clear(0) + f.clear(2), 3);
  assert.equal(f.blocksInUse, 0);
  assert.equal(f.blocksTaken, f.blocksReturned);
  assert.equal(f.highWater, 7);
  assert.equal(f.checkInvariants(), null);
});

test('pool exhaustion takes nothing; unlink from the middle keeps order', () => {
  const f = new ElasticFifo(4 * 256, 256, 2);
  const a = f.takeAndWrite(bytes(256, 1), 0, 256);
  const b = f.takeAndWrite(bytes(256, 2), 0, 256);
  const c = f.takeAndWrite(bytes(256, 3), 0, 256);
  f.push(0, a);
  f.push(0, b);
  f.push(0, c);
  assert.equal(f.takeAndWrite(bytes(300, 4), 0, 300), -1, 'needs 2 blocks, 1 free');
  assert.equal(f.freeBlocks, 1);
  f.unlink(0, a, b);
  f.release(b);
  assert.equal(f.qFrames[0], 2);
  assert.equal(f.shift(0), a);
  assert.equal(f.shift(0), c);
  assert.equal(f.shift(0), -1);
  f.release(a);
  f.release(c);
  assert.equal(f.checkInvariants(), null);
});

test('random operations keep taken = returned + queued', () => {
  const f = new ElasticFifo(200 * 512, 512, 4);
  let seed = 99;
  const rnd = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % n);
  const src = bytes(4000, 5);
  for (let step = 0; step < 5000; step++) {
    const q = rnd(4);
    if (rnd(3) !== 0) {
      const h = f.takeAndWrite(src, rnd(10), 1 + rnd(3000));
      if (h >= 0) f.push(q, h);
    } else {
      const h = f.shift(q);
      if (h >= 0) f.release(h);
    }
    const problem = f.checkInvariants();
    if (problem !== null) assert.fail(`step ${step}: ${problem}`);
  }
});
