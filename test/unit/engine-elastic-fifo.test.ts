import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ElasticFifo } from '../../src/engine/elastic-fifo';
import { Frame } from '../../src/datapath/frame';
import { copies } from '../../src/datapath/copy-list';
import { ByteFrames, frameBytes } from '../../src/datapath/byte-frame';
import fc from 'fast-check';
import { checkProperty } from './property';

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

// ---- randomized, with fast-check: a failing sequence of operations shrinks to a minimal one and
// replays from the printed seed and path (property.ts)

type FifoOp =
  | { k: 'take'; q: number; off: number; len: number }
  | { k: 'shift'; q: number }
  | { k: 'unlink'; q: number; at: number }
  | { k: 'clear'; q: number };

const Q = 4;
const fifoOp: fc.Arbitrary<FifoOp> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ k: fc.constant('take' as const), q: fc.nat(Q - 1), off: fc.nat(9), len: fc.integer({ min: 26, max: 3025 }) }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('shift' as const), q: fc.nat(Q - 1) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('unlink' as const), q: fc.nat(Q - 1), at: fc.nat(50) }) },
  { weight: 1, arbitrary: fc.constant({ k: 'clear' as const, q: 0 }) },
);

test('randomized (fast-check): takes, shifts, unlinks from the middle and clears against a model — FIFO order per queue, the bytes kept, taken = returned + queued, a take refused only when the pool lacks the blocks', (t) => {
  const src = bytes(4000, 5);
  checkProperty(
    t,
    fc.property(fc.array(fifoOp, { minLength: 1, maxLength: 400, size: 'max' }), fc.integer({ min: 8, max: 200 }), (ops, poolBlocks) => {
      const f = new ElasticFifo(poolBlocks * 512, 512, Q);
      const model: { h: number; off: number; len: number }[][] = Array.from({ length: Q }, () => []);
      const d = new Frame(f.maxFrameBlocks);
      const check = (step: number, e: { h: number; off: number; len: number }): void => {
        f.describe(e.h, d);
        assert.deepEqual(frameBytes(d), src.subarray(e.off, e.off + e.len), `step ${step}: frame ${e.h}'s bytes`);
      };
      for (const [step, op] of ops.entries()) {
        if (op.k === 'take') {
          const need = f.blocksFor(op.len);
          const free = f.freeBlocks;
          const h = take(f, src, op.off, op.len);
          if (h < 0) assert.ok(need > free, `step ${step}: a take of ${need} blocks refused with ${free} free`);
          else {
            assert.ok(need <= free, `step ${step}: took ${need} blocks with ${free} free`);
            copies.run();
            f.push(op.q, h);
            model[op.q].push({ h, off: op.off, len: op.len });
          }
        } else if (op.k === 'shift') {
          const h = f.shift(op.q);
          const e = model[op.q].shift();
          assert.equal(h, e?.h ?? -1, `step ${step}: shift(${op.q})`);
          if (e) {
            check(step, e);
            f.release(h);
          }
        } else if (op.k === 'unlink') {
          const m = model[op.q];
          if (m.length === 0) continue;
          const i = op.at % m.length;
          const [e] = m.splice(i, 1);
          f.unlink(op.q, i === 0 ? -1 : m[i - 1].h, e.h);
          check(step, e);
          f.release(e.h);
        } else {
          const n = model.reduce((a, m) => a + m.length, 0);
          let cleared = 0;
          for (let q = 0; q < Q; q++) cleared += f.clear(q);
          assert.equal(cleared, n, `step ${step}: clear`);
          for (const m of model) m.length = 0;
        }
        const problem = f.checkInvariants();
        if (problem !== null) assert.fail(`step ${step}: ${problem}`);
        for (let q = 0; q < Q; q++) assert.equal(f.qFrames[q], model[q].length, `step ${step}: queue ${q} length`);
        assert.equal(f.blocksTaken - f.blocksReturned, f.blocksInUse, `step ${step}: taken = returned + in use`);
      }
      // every queued frame still holds its bytes, in order
      for (let q = 0; q < Q; q++) for (const e of model[q]) check(ops.length, e);
    }),
    { numRuns: 400 },
  );
});
