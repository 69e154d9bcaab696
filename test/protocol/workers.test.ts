// --workers: the data plane over two threads (the control thread and one worker thread) with the
// TypeScript front-end. Guest A's queue pair is served by the control thread, guest B's by the
// worker thread (the owner table spreads connections round-robin): frames cross between the
// threads both ways, in order, counted once; the worker thread's ring gives its base back on
// GET_VRING_BASE; the counters the control thread reports include the worker thread's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WorkerPool } from '../../src/workers/pool';
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

// SET_VRING_CALL on a running ring of a queue pair a worker thread serves (QEMU does this when it
// masks a guest's notifiers, under KVM): the worker thread signals the new call eventfd, not the
// one the ring started with.
test('--workers 2: a new call eventfd on a running RX ring served by the worker thread is the one signalled', { timeout: 60_000 }, async () => {
  const before = fdCount();
  const log = new LogCapture();
  const pool = new WorkerPool({ threads: 2, switchOptions: { queues: MAX_PAIRS, maxPorts: 8 }, poolBytes: 8 << 20, blockSize: 2048, maxPorts: 8, lanes: MAX_PAIRS, macTableSize: 256, macAgeMs: 300_000, log: log.fn });
  let fresh = -1;
  try {
    const a = await startOn(pool, 'vmA', log, null);
    const b = await startOn(pool, 'vmB', log, null);
    assert.equal(new Uint8Array(pool.layout.owner)[b.port.index * MAX_PAIRS], 1, 'B served by the worker thread');
    await sendPacket(a, packet(netHdr(12), ethFrame(60, 0, MAC_A)));
    await sendPacket(b, packet(netHdr(12), ethFrame(60, 0, MAC_B)));
    await receiveN(b, 1, 5000);
    await receiveN(a, 1, 5000);
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
