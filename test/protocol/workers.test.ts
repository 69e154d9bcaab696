// --workers: the data plane over two threads (the control thread and one worker thread) with the
// TypeScript front-end. Guest A's queue pair is served by the control thread, guest B's by the
// worker thread (the owner table spreads connections round-robin): frames cross between the
// threads both ways, in order, counted once; the worker thread's ring gives its base back on
// GET_VRING_BASE; the counters the control thread reports include the worker thread's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { SwitchOptions } from '../../src/engine/switch';
import { STOP_WAIT_MS, WorkerPool } from '../../src/workers/pool';
import { PollLoop } from '../../src/ports/poll-loop';
import { MAX_PAIRS } from '../../src/workers/layout';
import { sleep, waitEventfd, waitFor } from './frontend';
import { native } from '../../src/native';
import { bindPair, closeGuest, ethFrame, Guest, LogCapture, MAC_A, MAC_B, makePort, netHdr, packet, receiveN, sendPacket, seqOf, fdCount, assertNoFdLeak } from './helpers';

async function startOn(pool: WorkerPool, name: string, log: LogCapture, pollLoop: PollLoop | null): Promise<Guest> {
  const port = makePort(pool.sw, name, log, { threads: pool.threads, pollLoop });
  const fe = bindPair(port);
  const { rx, tx } = await fe.start({ rxBuffers: [256, 2048] });
  await waitFor(() => port.session!.rings[0].started, 3000, `${name} RX ring started`);
  return { port, fe, rx, tx };
}

async function crossing(pollUs: number): Promise<void> {
  const before = fdCount();
  const log = new LogCapture();
  const pool = new WorkerPool({ threads: 2, switchOptions: { queues: MAX_PAIRS, maxPorts: 8 }, poolBytes: 8 << 20, blockSize: 2048, maxPorts: 8, lanes: MAX_PAIRS, macTableSize: 256, macAgeMs: 300_000, pollUs, log: log.fn });
  const pollLoop = pollUs > 0 ? new PollLoop(pollUs) : null;
  try {
    const a = await startOn(pool, 'vmA', log, pollLoop);
    const b = await startOn(pool, 'vmB', log, pollLoop);
    const owner = new Uint8Array(pool.layout.owner);
    assert.equal(owner[a.port.index * MAX_PAIRS], 0, 'A served by the control thread');
    assert.equal(owner[b.port.index * MAX_PAIRS], 1, 'B served by the worker thread');
    // each side announces itself (broadcast), so both MACs are learned in the shared table
    await sendPacket(a, packet(netHdr(12), ethFrame(60, 0, MAC_A)));
    await sendPacket(b, packet(netHdr(12), ethFrame(60, 0, MAC_B)));
    await receiveN(b, 1, 5000);
    await receiveN(a, 1, 5000);
    const N = 200;
    for (let i = 1; i <= N; i++) await sendPacket(a, packet(netHdr(12), ethFrame(60 + (i % 900), i, MAC_A, MAC_B)));
    const atB = await receiveN(b, N, 10_000);
    assert.deepEqual(atB.map((p) => seqOf(p.frame)), Array.from({ length: N }, (_, i) => i + 1), 'A → B (control thread → worker thread) in order');
    for (let i = 1; i <= N; i++) await sendPacket(b, packet(netHdr(12), ethFrame(60 + (i % 900), i, MAC_B, MAC_A)));
    const atA = await receiveN(a, N, 10_000);
    assert.deepEqual(atA.map((p) => seqOf(p.frame)), Array.from({ length: N }, (_, i) => i + 1), 'B → A (worker thread → control thread) in order');
    await sleep(150); // the worker thread publishes its port counters every 50 ms
    const st = pool.sw.stats();
    const pb = st.ports.find((p) => p.name === 'vmB')!;
    const pa = st.ports.find((p) => p.name === 'vmA')!;
    assert.equal(pb.rxFrames, N + 1, 'B: frames taken from it (counted by the worker thread)');
    assert.equal(pa.rxFrames, N + 1, 'A: frames taken from it');
    assert.equal(st.total.dropped, 0, 'nothing dropped');
    assert.ok(st.total.handedFrames >= 2 * N, `frames handed between the threads: ${st.total.handedFrames}`);
    const cb = b.port.allCounters();
    assert.equal(cb.txFrames, N + 1, "B's port counters include the worker thread's TX");
    assert.equal(cb.rxFrames, N + 1, "B's port counters include the worker thread's RX");
    // GET_VRING_BASE on B's TX ring: the worker thread stops it and gives its index back
    const base = await b.fe.getVringBase(1);
    assert.equal(base, N + 1, "B's TX ring base is the worker thread's index");
    await closeGuest(a);
    await closeGuest(b);
  } finally {
    // the worker thread closes what was duplicated for it and ends by itself (not terminated: an error)
    await pool.close();
  }
  await sleep(100);
  assert.deepEqual(log.errors(), []);
  await assertNoFdLeak(before);
}

test('--workers 2: frames cross between the control thread and a worker thread both ways, in order, counted once', { timeout: 60_000 }, () => crossing(0));

test('--workers 2 --poll-us 200: the same with both threads polling their TX rings after a batch', { timeout: 60_000 }, () => crossing(200));

/** two data-plane threads (the control thread and one worker thread), as the tests below use them */
function twoThreads(log: LogCapture, switchOptions: Partial<SwitchOptions> = {}): WorkerPool {
  return new WorkerPool({ threads: 2, switchOptions: { queues: MAX_PAIRS, maxPorts: 8, ...switchOptions }, poolBytes: 8 << 20, blockSize: 2048, maxPorts: 8, lanes: MAX_PAIRS, macTableSize: 256, macAgeMs: 300_000, log: log.fn });
}

/** A and B each announce themselves (a broadcast the other receives): both MACs learned */
async function announce(a: Guest, b: Guest): Promise<void> {
  await sendPacket(a, packet(netHdr(12), ethFrame(60, 0, MAC_A)));
  await sendPacket(b, packet(netHdr(12), ethFrame(60, 0, MAC_B)));
  await receiveN(b, 1, 5000);
  await receiveN(a, 1, 5000);
}

// SET_VRING_CALL on a running ring of a queue pair a worker thread serves (QEMU does this when it
// masks a guest's notifiers, under KVM): the worker thread signals the new call eventfd, not the
// one the ring started with.
test('--workers 2: a new call eventfd on a running RX ring served by the worker thread is the one signalled', { timeout: 60_000 }, async () => {
  const before = fdCount();
  const log = new LogCapture();
  const pool = twoThreads(log);
  let fresh = -1;
  try {
    const a = await startOn(pool, 'vmA', log, null);
    const b = await startOn(pool, 'vmB', log, null);
    assert.equal(new Uint8Array(pool.layout.owner)[b.port.index * MAX_PAIRS], 1, 'B served by the worker thread');
    await announce(a, b);
    fresh = native.eventfd(0);
    await b.fe.setVringCall(0, fresh);
    b.rx.calls(); // what the old call eventfd got so far
    b.rx.setUsedEvent(b.rx.usedIdx); // EVENT_IDX: interrupt me on the next packet
    for (let i = 1; i <= 20; i++) await sendPacket(a, packet(netHdr(12), ethFrame(60, i, MAC_A, MAC_B)));
    await receiveN(b, 20, 10_000);
    assert.ok((await waitEventfd(fresh, 5000)) > 0, 'the new call eventfd was signalled');
    assert.equal(b.rx.calls(), 0, 'the old call eventfd was not signalled after SET_VRING_CALL');
    await closeGuest(a);
    await closeGuest(b);
  } finally {
    await pool.close();
    if (fresh >= 0) native.close(fresh);
  }
  await sleep(100);
  assert.deepEqual(log.errors(), []);
  await assertNoFdLeak(before);
});

// Supervision: a data-plane thread that ends (here terminated, as a crash would end it) is noticed
// at once; the port it served is reset with a logged error, its queue pairs go to the threads
// still running, and the port that reconnects is served and passes frames; the other port keeps
// running throughout.
test('--workers 2: a worker thread that dies is noticed, its port reset, its queue pairs served by the control thread after reconnecting', { timeout: 60_000 }, async () => {
  const log = new LogCapture();
  const pool = twoThreads(log);
  try {
    const a = await startOn(pool, 'vmA', log, null);
    const b = await startOn(pool, 'vmB', log, null);
    const owner = new Uint8Array(pool.layout.owner);
    assert.equal(owner[b.port.index * MAX_PAIRS], 1, 'B served by the worker thread');
    const bIndex = b.port.index;
    await pool.worker(1).terminate();
    await waitFor(() => !b.port.connected, 5000, "B's port reset after its thread died");
    await log.waitLine(/data-plane thread 1 ended/, 2000);
    assert.ok(a.port.connected, 'A keeps its session');
    b.fe.close();
    // B comes back (as QEMU reconnects): the same connection number, now served by thread 0
    const b2 = await startOn(pool, 'vmB2', log, null);
    assert.equal(b2.port.index, bIndex, 'the connection number is reused');
    assert.equal(owner[b2.port.index * MAX_PAIRS], 0, 'its queue pair is served by the control thread now');
    await sendPacket(a, packet(netHdr(12), ethFrame(60, 0, MAC_A)));
    await sendPacket(b2, packet(netHdr(12), ethFrame(60, 0, MAC_B)));
    await receiveN(b2, 1, 5000);
    await receiveN(a, 1, 5000);
    for (let i = 1; i <= 50; i++) await sendPacket(a, packet(netHdr(12), ethFrame(60, i, MAC_A, MAC_B)));
    const atB = await receiveN(b2, 50, 10_000);
    assert.deepEqual(atB.map((p) => seqOf(p.frame)), Array.from({ length: 50 }, (_, i) => i + 1), 'A → B after the thread died, in order');
    for (let i = 1; i <= 50; i++) await sendPacket(b2, packet(netHdr(12), ethFrame(60, i, MAC_B, MAC_A)));
    const atA = await receiveN(a, 50, 10_000);
    assert.deepEqual(atA.map((p) => seqOf(p.frame)), Array.from({ length: 50 }, (_, i) => i + 1), 'B → A after the thread died, in order');
    await closeGuest(a);
    await closeGuest(b2);
  } finally {
    await pool.close();
  }
  // no fd-leak check here: the fds duplicated for the dead thread stay open (see WorkerPool.threadDied)
  const errors = log.errors();
  assert.ok(errors.length >= 1 && errors.every((l) => /data-plane thread 1 ended|internal error during data-plane work/.test(l)), `only the thread's end and B's reset logged as errors:\n${errors.join('\n')}`);
});

// GET_VRING_BASE on a ring a worker thread serves, while that thread is stuck (a long batch): the
// control thread does not wait for it (it used to block in Atomics.wait for up to 2 s, every port
// with it); the reply goes out when the thread answers. And an answer that comes too late (after
// STOP_WAIT_MS) is never taken for the answer to the next stop, which may be another ring's.
test('--workers 2: GET_VRING_BASE of a stuck worker thread blocks nothing, and a late answer is not taken for the next stop', { timeout: 60_000 }, async () => {
  const before = fdCount();
  const log = new LogCapture();
  const pool = twoThreads(log);
  try {
    const a = await startOn(pool, 'vmA', log, null);
    const b = await startOn(pool, 'vmB', log, null);
    assert.equal(new Uint8Array(pool.layout.owner)[b.port.index * MAX_PAIRS], 1, 'B served by the worker thread');
    await sendPacket(a, packet(netHdr(12), ethFrame(60, 0, MAC_A)));
    const N = 30;
    for (let i = 1; i <= N; i++) await sendPacket(b, packet(netHdr(12), ethFrame(60, i, MAC_B)));
    await receiveN(a, N, 5000);
    // 1. the worker thread is stuck for 0.9 s: a 50 ms timer of the control thread fires about on
    // time (a control thread blocked until the worker answers runs it ~0.85 s late)
    pool.worker(1).postMessage({ t: 'stall', ms: 900 });
    await sleep(50); // the stall has begun
    const base = b.fe.getVringBase(1);
    const t0 = performance.now();
    const late = await new Promise<number>((resolve) => setTimeout(() => resolve(performance.now() - t0 - 50), 50));
    assert.ok(late < 450, `the control thread ran its 50 ms timer ${late.toFixed(0)} ms late while the worker thread was stuck`);
    assert.equal(await base, N, "B's TX base, answered once the worker thread stopped the ring");
    // 2. stuck beyond STOP_WAIT_MS, with two running rings: the stop of D's RX ring is answered
    // with its last known base (logged); D's TX ring is stopped while the thread is still stuck.
    // When the thread wakes it answers both, the RX one late: that answer (0) must not become the
    // TX ring's (5; it did: one reply slot per thread). D is connection 3: the worker thread's too.
    const c = await startOn(pool, 'vmC', log, null);
    const d = await startOn(pool, 'vmD', log, null);
    assert.equal(new Uint8Array(pool.layout.owner)[d.port.index * MAX_PAIRS], 1, 'D served by the worker thread');
    const MAC_D = Uint8Array.of(0x52, 0x54, 0, 0, 0, 0x0d);
    for (let i = 1; i <= 5; i++) await sendPacket(d, packet(netHdr(12), ethFrame(60, i, MAC_D)));
    await receiveN(a, 5, 5000); // D's frames went through: its TX ring's base is 5
    pool.worker(1).postMessage({ t: 'stall', ms: STOP_WAIT_MS + 600 });
    await sleep(50);
    await d.fe.getVringBase(0);
    assert.equal(await d.fe.getVringBase(1), 5, "D's TX ring base, not the late answer for its RX ring");
    await log.waitLine(/did not stop the ring within/, 3000);
    await closeGuest(a);
    await closeGuest(b);
    await closeGuest(c);
    await closeGuest(d);
  } finally {
    await pool.close();
  }
  await sleep(100);
  assert.deepEqual(log.errors().filter((l) => !/did not stop the ring within/.test(l)), []);
  await assertNoFdLeak(before);
});

// A SIGHUP reload (or ctl) changes settings on the control thread's switch; every thread must apply
// them. Here the unknown-destination policy becomes "drop" with a short hold time: frames from B
// (its queue pair served by the worker thread) to an unknown MAC are held there and must be dropped
// when the new hold time passes, not flooded to A after the old one.
test('--workers 2: settings changed at run time (hold time, unknown policy) apply on the worker threads too', { timeout: 60_000 }, async () => {
  const before = fdCount();
  const log = new LogCapture();
  const pool = twoThreads(log, { holdTimeMs: 400 });
  try {
    const a = await startOn(pool, 'vmA', log, null);
    const b = await startOn(pool, 'vmB', log, null);
    assert.equal(new Uint8Array(pool.layout.owner)[b.port.index * MAX_PAIRS], 1, 'B served by the worker thread');
    await announce(a, b);
    pool.sw.setUnknownPolicy('drop');
    pool.sw.setHoldTime(50);
    await sleep(100); // the worker thread has taken the messages
    const unknown = Uint8Array.of(0x52, 0x54, 0, 0, 0, 0x99);
    for (let i = 1; i <= 5; i++) await sendPacket(b, packet(netHdr(12), ethFrame(60, i, MAC_B, unknown)));
    await sleep(1000); // well past the old hold time (400 ms) and the new one
    const flooded = a.rx.receive(a.fe.hdrLen, a.fe.mergeable);
    assert.equal(flooded.length, 0, 'nothing flooded to A: the policy is "drop" on the worker thread too');
    await sleep(100); // the worker thread publishes its counters every 50 ms
    assert.equal(pool.sw.stats().total.drops.holdExpired, 5, 'the five held frames dropped at the new hold time');
    await closeGuest(a);
    await closeGuest(b);
  } finally {
    await pool.close();
  }
  await sleep(100);
  assert.deepEqual(log.errors(), []);
  await assertNoFdLeak(before);
});
