// Claim 1's invariants under concurrency: data-plane threads (real worker_threads) sharing the MAC
// table and the local data store, handing frames over through SPSC rings, driven by random
// traffic (unicast to learned and not-yet-learned MACs, broadcast, RX buffers that come and go).
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

async function run(threads: number, conns: number, poolBytes: number, steps: number, seed: number): Promise<Report[]> {
  const doorbells = Array.from({ length: threads }, () => native.eventfd(0));
  const layout = makeLayout({ threads, maxPorts: 16, lanes: 2, poolBytes, blockSize: 2048, macTableSize: 256, macAgeMs: 600_000, doorbells });
  const owner = new Uint8Array(layout.owner);
  for (let c = 0; c < 16; c++) for (let p = 0; p < MAX_PAIRS; p++) owner[c * MAX_PAIRS + p] = defaultOwner(c, p, threads);
  const file = path.join(__dirname, 'shard-worker.js');
  const workers = Array.from({ length: threads }, (_, me) => new Worker(file, { workerData: { layout, me, conns, seed: seed + me * 7919, steps } }));
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

function judge(reports: Report[], conns: number, expectDrops: boolean): void {
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
    assert.equal(r.macs, conns, 'every connection learned in the one shared MAC table');
  }
  console.log(`# ${reports.length} threads: expected ${expected}, delivered ${received}, counted drops ${dropped}; handed over ${handedOut} (taken ${handedIn}), heads handed back ${backOut} (reclaimed ${backIn})`);
  assert.ok(handedOut > 0, 'frames crossed threads');
  assert.equal(handedIn, handedOut, 'every handed-over frame was taken by its thread');
  assert.equal(backIn, backOut, 'every freed foreign frame went home');
  assert.equal(received + dropped, expected, 'no frame lost within the pool: delivered + counted drops = expected');
  assert.equal(reports[0].summed, dropped, "the control thread's stats() sum every thread's counters");
  if (expectDrops) assert.ok(dropped > 0, 'the small pool dropped (and counted) some frames');
  else assert.equal(dropped, 0, 'a large pool drops nothing');
}

test('workers: 3 threads, random traffic, large pool: nothing lost, order per destination RX queue, blocks all home', { timeout: 120_000 }, async () => {
  const conns = 7;
  judge(await run(3, conns, 128 << 20, 3000, 12345), conns, false);
});

test('workers: 2 threads, a pool of a few blocks: drops happen and are counted, the rest delivered in order', { timeout: 120_000 }, async () => {
  const conns = 5;
  judge(await run(2, conns, 96 * 2048, 3000, 777), conns, true);
});
