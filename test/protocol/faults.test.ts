// Faults a running switch must survive, each with the others' traffic checked: a memory table sent
// again while frames flow, and a guest that stops taking RX while others run (its share caps what
// the switch holds for it; the others keep going and lose nothing).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Switch } from '../../src/engine/switch';
import { copies } from '../../src/datapath/copy-list';
import { sleep, waitFor } from './frontend';
import { assertNoFdLeak, closeGuest, ethFrame, fdCount, Guest, LogCapture, netHdr, packet, receiveN, sendPacket, seqOf, startGuest, startPair } from './helpers';

const mac = (n: number) => new Uint8Array([0x52, 0x54, 0, 0, 0, n]);
const BCAST = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

/** the guest's RX side as a driver runs it: take what arrived, post as many buffers again, kick */
function take(g: Guest, into: number[]): void {
  const pkts = g.rx.receive(g.fe.hdrLen, g.fe.mergeable);
  let bufs = 0;
  for (const p of pkts) {
    into.push(seqOf(p.frame));
    bufs += p.buffers;
  }
  if (bufs > 0) {
    g.rx.postRx(bufs, 2048);
    g.rx.kick();
  }
}

test('SET_MEM_TABLE sent again while frames flow: nothing lost, nothing reordered, no error', async () => {
  const { a, b, done } = await startPair();
  try {
    const got: number[] = [];
    for (let i = 0; i < 200; i++) {
      a.tx.postTx(packet(netHdr(12), ethFrame(200, i, mac(1), mac(2))));
      a.tx.kick();
      // the receiver's front-end re-sends its memory table (QEMU does on memory hotplug) every few frames
      if (i % 20 === 10) await b.fe.setMemTable();
      if (i % 20 === 15) await a.fe.setMemTable();
      await a.tx.waitUsed(a.tx.availIdx);
      a.tx.takeUsed();
      take(b, got);
    }
    await waitFor(() => {
      take(b, got);
      return got.length >= 200;
    }, 3000, 'all 200 frames');
    assert.deepEqual(got, Array.from({ length: 200 }, (_, i) => i));
    assert.equal(copies.copiesRefused, 0, 'no copy into or out of an unmapped window');
  } finally {
    await done({ noErrors: true });
  }
});

test('a guest that stops taking RX while others run: its share caps what is held for it, the others lose nothing', async () => {
  const before = fdCount();
  const log = new LogCapture();
  const sw = new Switch({ poolBytes: 4 << 20, defaultShareLimit: 16, log: () => {} });
  try {
    // a → b unicast, and a broadcast now and then that the stalled guest c would get too
    const a = await startGuest(sw, 'vmA', log);
    const b = await startGuest(sw, 'vmB', log);
    const c = await startGuest(sw, 'vmC', log, { rxBuffers: [0, 2048] });
    const hello = (g: Guest, n: number) => sendPacket(g, packet(netHdr(12), ethFrame(60, n, mac(g === a ? 1 : g === b ? 2 : 3), BCAST)));
    await hello(a, 0);
    await hello(b, 0);
    await hello(c, 0);
    await receiveN(a, 2);
    await receiveN(b, 2);
    const got: number[] = [];
    for (let i = 1; i <= 400; i++) {
      await sendPacket(a, packet(netHdr(12), ethFrame(100, i, mac(1), i % 10 === 0 ? BCAST : mac(2))));
      take(b, got);
    }
    await waitFor(() => {
      take(b, got);
      return got.length >= 400;
    }, 3000, 'b to get all 400');
    assert.deepEqual(got, Array.from({ length: 400 }, (_, i) => i + 1), 'b: every frame, in order');
    const st = sw.stats();
    const pc = st.ports.find((p) => p.name === 'vmC')!;
    // c was sent 42 broadcasts (a's and b's hellos, a's 40): its share (16 blocks) holds 16, the rest
    // are dropped and counted on c
    assert.equal(pc.queuedBlocks, 16, `c holds ${pc.queuedBlocks} blocks, its share is 16`);
    assert.equal(pc.queuedFrames, 16);
    assert.equal(pc.drops.shareLimit, 26);
    const pb = st.ports.find((p) => p.name === 'vmB')!;
    assert.equal(pb.dropped, 0);
    // c comes back: what was held for it arrives, in order
    c.rx.postRx(128, 2048);
    c.rx.kick();
    const held = await receiveN(c, pc.queuedFrames);
    assert.deepEqual(held.map((p) => seqOf(p.frame)), held.map((p) => seqOf(p.frame)).slice().sort((x, y) => x - y));
    for (const g of [a, b, c]) await closeGuest(g);
  } finally {
    sw.close();
  }
  await sleep(10);
  assert.deepEqual(log.errors(), []);
  await assertNoFdLeak(before);
});
