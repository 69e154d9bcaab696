import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ElasticFifo } from '../../src/engine/elastic-fifo';
import { Frame } from '../../src/datapath/frame';
import { copies } from '../../src/datapath/copy-list';
import { ByteFrames, frameBytes } from '../../src/datapath/byte-frame';

const frames = new ByteFrames();
/** take() for an engine frame in plain bytes (12-byte header, then Ethernet) */
function take(f: ElasticFifo, b: Uint8Array, off = 0, len = b.length - off): number {
  return f.take(frames.of(b, off, len));
}

function bytes(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (i * 13 + seed) & 0xff;
  return b;
}

test('take, queue, describe and release a chained frame; the header is kept beside the blocks', () => {
  const f = new ElasticFifo(64 * 1024, 1024, 3);
  assert.equal(f.blockCount, 64);
  const big = bytes(5012, 1); // 12-byte header + 5000 Ethernet bytes: 5 blocks
  const h = take(f, big);
  assert.ok(h >= 0);
  assert.equal(f.frameBlocks[h], 5);
  assert.equal(f.blocksInUse, 5);
  copies.run();
  assert.deepEqual(f.store.subarray(h * 1024, h * 1024 + 5000), big.subarray(12));
  assert.deepEqual(f.frameHdr.subarray(h * 12, h * 12 + 12), big.subarray(0, 12));
  f.push(1, h);
  assert.equal(f.checkInvariants(), null);
  // interleave small frames so that the next big frame's blocks are not adjacent
  const s1 = take(f, bytes(100, 2));
  f.push(2, s1);
  assert.equal(f.shift(1), h);
  f.release(h);
  const small = take(f, bytes(100, 3));
  f.push(2, small);
  const h2 = take(f, big);
  f.push(0, h2);
  const d = new Frame(f.maxFrameBlocks);
  f.describe(h2, d);
  assert.ok(d.segEnd - d.segFirst === 5);
  let adjacent = true;
  for (let k = 1; k < 5; k++) if (d.segOff[k] !== d.segOff[k - 1] + 1024) adjacent = false;
  assert.equal(adjacent, false, 'one of its blocks went to the small frame');
  assert.deepEqual(frameBytes(d), big);
  assert.equal(f.checkInvariants(), null);
  assert.equal(f.clear(0) + f.clear(2), 3);
  assert.equal(f.blocksInUse, 0);
  assert.equal(f.blocksTaken, f.blocksReturned);
  assert.equal(f.highWater, 7);
  assert.equal(f.checkInvariants(), null);
});

test('pool exhaustion takes nothing; unlink from the middle keeps order', () => {
  const f = new ElasticFifo(4 * 256, 256, 2);
  const a = take(f, bytes(268, 1));
  const b = take(f, bytes(268, 2));
  const c = take(f, bytes(268, 3));
  f.push(0, a);
  f.push(0, b);
  f.push(0, c);
  assert.equal(take(f, bytes(312, 4)), -1, 'needs 2 blocks, 1 free');
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
      const h = take(f, src, rnd(10), 26 + rnd(3000));
      if (h >= 0) f.push(q, h);
    } else {
      const h = f.shift(q);
      if (h >= 0) f.release(h);
    }
    const problem = f.checkInvariants();
    if (problem !== null) assert.fail(`step ${step}: ${problem}`);
  }
});
