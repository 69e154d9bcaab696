// Claim 1's invariants under concurrency: data-plane threads (real worker_threads) sharing the MAC
// table and the local data store, handing frames over through SPSC rings, driven by random
// traffic (unicast to learned and not-yet-learned MACs, broadcast, RX buffers that come and go):
// one script of steps per thread, made by fast-check, so that a failing run shrinks to a minimal
// set of scripts and replays from the printed seed and path (property.ts).
// After the run every thread drains; then no frame is lost inside the pool (each one expected was
// delivered or counted as dropped), frames arrived in order per source and destination RX queue,
// each RX queue was delivered to only by the thread that serves it, and every block of every
// partition is back in its owner's free pool.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { makeLayout, defaultOwner, MAX_PAIRS } from '../../src/workers/layout';
import { native } from '../../src/native';
import fc from 'fast-check';
import { checkAsyncProperty } from './property';
import type { Step } from './shard-worker';

interface Report {
  received: number;
  orderErrors: number;
  wrongThread: number;
  firstErrors: string[];
  sentTo: number[];
  broadcasts: number;
  problem: string | null;
  outstanding: number;
  queuedOwn: number;
  queuedAll: number;
  dropped: number;
  handed: number;
  /** thread 0: its stats() total, which adds the other threads' counters */
  summed: number;
  tally: number[];
  macs: number;
}

async function run(threads: number, conns: number, poolBytes: number, scripts: Step[][]): Promise<Report[]> {
  const doorbells = Array.from({ length: threads }, () => native.eventfd(0));
  const layout = makeLayout({ threads, maxPorts: 16, lanes: 2, poolBytes, blockSize: 2048, macTableSize: 256, macAgeMs: 600_000, doorbells });
  const owner = new Uint8Array(layout.owner);
  for (let c = 0; c < 16; c++) for (let p = 0; p < MAX_PAIRS; p++) owner[c * MAX_PAIRS + p] = defaultOwner(c, p, threads);
  const file = path.join(__dirname, 'shard-worker.js');
  const workers = Array.from({ length: threads }, (_, me) => new Worker(file, { workerData: { layout, me, conns, script: scripts[me] } }));
  const next = (w: Worker, t: string): Promise<any> =>
    new Promise((resolve, reject) => {
      const on = (m: any): void => {
        if (m.t !== t) return;
        w.off('message', on);
        w.off('error', reject);
        resolve(m);
      };
      w.on('message', on);
      w.once('error', reject);
    });
  try {
    const sent = workers.map((w) => next(w, 'sent'));
    for (const w of workers) w.postMessage({ t: 'start' });
    await Promise.all(sent);
    let quiet = 0;
    for (let round = 0; round < 500 && quiet < 3; round++) {
      const d = await Promise.all(workers.map((w) => { const p = next(w, 'drained'); w.postMessage({ t: 'drain' }); return p; }));
      quiet = d.every((x) => x.queued === 0 && x.inbound === 0) ? quiet + 1 : 0;
      await new Promise((r) => setTimeout(r, 5));
    }
    const reports: Report[] = await Promise.all(workers.map((w) => { const p = next(w, 'report'); w.postMessage({ t: 'report' }); return p; }));
    return reports;
  } finally {
    for (const w of workers) w.postMessage({ t: 'close' });
    await Promise.all(workers.map((w) => new Promise((r) => w.once('exit', r))));
    for (const fd of doorbells) native.close(fd);
  }
}

interface Totals {
  expected: number;
  received: number;
  dropped: number;
  handedOut: number;
}

function judge(reports: Report[], conns: number, expectDrops: boolean): Totals {
  let expected = 0;
  let received = 0;
  let dropped = 0;
  let handedOut = 0;
  let handedIn = 0;
  let backOut = 0;
  let backIn = 0;
  for (const r of reports) {
    for (const n of r.sentTo) expected += n;
    expected += r.broadcasts * (conns - 1);
    received += r.received;
    dropped += r.dropped;
    handedOut += r.tally[0];
    handedIn += r.tally[1];
    backOut += r.tally[2];
    backIn += r.tally[3];
    assert.equal(r.problem, null, `a thread's elastic FIFO is consistent: ${r.problem}`);
    assert.equal(r.orderErrors, 0, `order per source and destination RX queue: ${r.firstErrors.join('; ')}`);
    assert.equal(r.wrongThread, 0, 'an RX queue is delivered to only by the thread serving it');
    assert.equal(r.queuedAll, 0, 'nothing left queued after the drain');
    assert.equal(r.outstanding, 0, "every block of the thread's partition is back in its free pool");
  }
  assert.equal(handedIn, handedOut, 'every handed-over frame was taken by its thread');
  assert.equal(backIn, backOut, 'every freed foreign frame went home');
  assert.equal(received + dropped, expected, 'no frame lost within the pool: delivered + counted drops = expected');
  assert.equal(reports[0].summed, dropped, "the control thread's stats() sum every thread's counters");
  if (!expectDrops) assert.equal(dropped, 0, 'a large pool drops nothing');
  return { expected, received, dropped, handedOut };
}

/** a thread's script: sends of 1 to 12 frames (1 in 20 a broadcast), RX buffers posted on about a
 * third of the queues, pumps */
function scriptOf(conns: number, maxSteps: number): fc.Arbitrary<Step[]> {
  const frameArb = fc.record({ dst: fc.nat(conns - 2), bcast: fc.nat(19).map((x) => x === 0), flow: fc.nat(7) });
  const step: fc.Arbitrary<Step> = fc.oneof(
    { weight: 6, arbitrary: fc.record({ k: fc.constant('send' as const), src: fc.nat(15), frames: fc.array(frameArb, { minLength: 1, maxLength: 12 }) }) },
    { weight: 3, arbitrary: fc.record({ k: fc.constant('give' as const), credits: fc.array(fc.oneof(fc.constant(0), fc.constant(0), fc.nat(5)), { minLength: conns * 2, maxLength: conns * 2 }) }) },
    { weight: 1, arbitrary: fc.constant({ k: 'pump' as const }) },
  );
  return fc.array(step, { maxLength: maxSteps, size: 'max' });
}

async function property(t: { diagnostic: (s: string) => void }, threads: number, conns: number, poolBytes: number, expectDrops: boolean, numRuns: number): Promise<Totals> {
  const sum: Totals = { expected: 0, received: 0, dropped: 0, handedOut: 0 };
  await checkAsyncProperty(
    t,
    fc.asyncProperty(fc.array(scriptOf(conns, 1500), { minLength: threads, maxLength: threads }), async (scripts) => {
      const reports = await run(threads, conns, poolBytes, scripts);
      const r = judge(reports, conns, expectDrops);
      for (const rep of reports) assert.equal(rep.macs, conns, 'every connection learned in the one shared MAC table');
      for (const k of Object.keys(sum) as (keyof Totals)[]) sum[k] += r[k];
    }),
    { numRuns },
  );
  t.diagnostic(`${threads} threads over the runs: expected ${sum.expected}, delivered ${sum.received}, counted drops ${sum.dropped}, handed over ${sum.handedOut}`);
  return sum;
}

test('workers (fast-check): 3 threads, random traffic, large pool: nothing lost, order per destination RX queue, blocks all home', { timeout: 600_000 }, async (t) => {
  const sum = await property(t, 3, 7, 128 << 20, false, 6);
  // the generator's reach: frames crossed threads. The scripts' lengths are random, so the totals
  // over 6 cases vary widely (a clean-clone CI run saw 27 601 delivered, 19 861 handed over, where
  // this once asked for 30 000): the bound is the order of magnitude, not a typical run
  if (!process.env.FC_PATH) assert.ok(sum.handedOut > 3000 && sum.received > 8000, `${sum.handedOut} frames handed over, ${sum.received} delivered`);
});

test('workers (fast-check): 2 threads, a pool of a few blocks: drops happen and are counted, the rest delivered in order', { timeout: 600_000 }, async (t) => {
  const sum = await property(t, 2, 5, 96 * 2048, true, 6);
  if (!process.env.FC_PATH) assert.ok(sum.dropped > 1000 && sum.handedOut > 0, `${sum.dropped} drops counted, ${sum.handedOut} handed over`);
});
