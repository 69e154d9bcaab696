// Bounded work per tenant (the isolation issue's first item): a guest whose RX or TX chains are
// made of thousands of one-byte descriptors makes every delivery to it, or every frame from it,
// walk thousands of descriptors. Unbounded, one batch of frames to it cost the shared loop tens of
// thousands of descriptor reads (153 ms for one deliver() in the review, 200 ms round trips
// between two healthy guests). Now each RX queue walks at most RX_DESC_BUDGET descriptors per turn
// of the event loop and each TX batch at most TX_DESC_BUDGET: the rest waits for the next turn
// (held in the elastic FIFO, or left in the TX ring), counted, nothing lost.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RX_DESC_BUDGET } from '../../src/ports/vhost-user/rx';
import { TX_DESC_BUDGET } from '../../src/ports/vhost-user/tx';
import { sleep, waitFor } from './frontend';
import { ethFrame, netHdr, packet, receiveN, sendPacket, seqOf, withSwitch } from './helpers';

const mac = (n: number) => new Uint8Array([0x52, 0x54, 0, 0, 0, n]);
const BCAST = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
/** descriptors per hostile chain: one-byte buffers through an indirect table, the longest chain allowed */
const TINY = 4095;
const BIG_RAM = [{ gpa: 0, size: 32 << 20 }];

/**
 * Samples counter() once per turn of the event loop (a self-requeueing setImmediate) while body
 * runs; returns the largest growth between two samples, i.e. within one turn.
 */
async function maxPerTurn(counter: () => number, body: () => Promise<void>): Promise<number> {
  let last = counter();
  let max = 0;
  let on = true;
  const tick = (): void => {
    const v = counter();
    if (v - last > max) max = v - last;
    last = v;
    if (on) setImmediate(tick);
  };
  setImmediate(tick);
  try {
    await body();
  } finally {
    on = false;
    await sleep(5);
  }
  return max;
}

test('RX chains of 4095 one-byte descriptors: the hostile guest walks at most RX_DESC_BUDGET per turn, the healthy one gets every frame in order', async () => {
  await withSwitch({ poolBytes: 8 << 20 }, async (sw, log, startGuest) => {
    const a = await startGuest(sw, 'vmA', log);
    const b = await startGuest(sw, 'vmB', log, { rxBuffers: [200, 2048] });
    const h = await startGuest(sw, 'vmH', log, { ram: BIG_RAM, rxBuffers: [0, 2048] });
    const CHAINS = 48;
    h.rx.postRx(CHAINS, TINY, { split: new Array<number>(TINY - 1).fill(1), indirect: true });
    h.rx.kick();
    await sleep(10);
    const N = 64;
    const walked = await maxPerTurn(
      () => h.port.counters.rxDescWalked,
      async () => {
        for (let i = 0; i < N; i++) a.tx.postTx(packet(netHdr(12), ethFrame(60, i, mac(1), BCAST)));
        a.tx.kick();
        const got = await receiveN(b, N, 5000);
        assert.deepEqual(got.map((p) => seqOf(p.frame)), Array.from({ length: N }, (_, i) => i), 'B: every broadcast, in order');
        await waitFor(() => h.rx.usedIdx >= CHAINS, 5000, 'H to fill its chains');
      },
    );
    console.log(`# hostile RX: ${h.port.counters.rxDescWalked} descriptors walked in all, at most ${walked} in one turn (budget ${RX_DESC_BUDGET}), ${h.port.counters.rxDescBudgetHits} deliveries put off to the next turn`);
    // within one turn: one budget for A's batch and one for the RX check that follows it, each
    // overshooting by at most one chain
    assert.ok(walked <= 2 * (RX_DESC_BUDGET + TINY), `${walked} descriptors walked in one turn`);
    assert.ok(h.port.counters.rxDescBudgetHits > 0);
    assert.equal(h.rx.usedIdx, CHAINS, 'H got a frame in each of its chains');
    const st = sw.stats().ports.find((p) => p.name === 'vmH')!;
    assert.equal(st.drops.poolExhausted + st.drops.shareLimit, 0);
    assert.equal(st.queuedFrames, N - CHAINS, 'the rest waits for H to post more');
    sw.checkInvariants();
  });
});

test('TX chains of 4095 one-byte descriptors: one batch walks at most TX_DESC_BUDGET, the rest comes on the next turns, nothing lost', async () => {
  await withSwitch({ poolBytes: 8 << 20 }, async (sw, log, startGuest) => {
    const h = await startGuest(sw, 'vmH', log, { ram: BIG_RAM });
    const b = await startGuest(sw, 'vmB', log, { rxBuffers: [200, 2048] });
    await sendPacket(b, packet(netHdr(12), ethFrame(60, 0, mac(2), BCAST)));
    const N = 40;
    const walked = await maxPerTurn(
      () => h.port.counters.txDescWalked,
      async () => {
        // a 60-byte frame behind a 12-byte header, spread over 4095 descriptors (most of them 0 bytes
        // long would be refused; these are 1 byte and the rest of the frame in the last)
        for (let i = 0; i < N; i++) {
          const pkt = packet(netHdr(12), ethFrame(TINY + 60, i, mac(8), mac(2)));
          h.tx.postTx(pkt, { split: new Array<number>(TINY - 1).fill(1), indirect: true });
        }
        h.tx.kick();
        const got = await receiveN(b, N, 10_000);
        assert.deepEqual(got.map((p) => seqOf(p.frame)), Array.from({ length: N }, (_, i) => i), 'every frame, in order');
      },
    );
    console.log(`# hostile TX: ${h.port.counters.txDescWalked} descriptors walked in all, at most ${walked} in one turn (budget ${TX_DESC_BUDGET}), ${h.port.counters.txDescBudgetHits} batches cut short`);
    assert.ok(walked <= TX_DESC_BUDGET + TINY, `${walked} descriptors walked in one turn`);
    assert.ok(h.port.counters.txDescBudgetHits > 0);
    assert.equal(sw.stats().total.dropped, 0);
  });
});
