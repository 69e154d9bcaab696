// Packed virtqueues (VIRTIO_F_RING_PACKED) driven by the TypeScript front-end's packed driver:
// TX and RX, chains and indirect tables, mergeable RX buffers, event suppression both ways, ring
// wraps, GET/SET_VRING_BASE with the wrap counters.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bit, VirtioFeature } from '../../src/vhost-user/features';
import { DEFAULT_FEATURES } from '../../src/vhost-user/session';
import { sleep, waitFor } from './frontend';
import { RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_ENABLE, PACKED_BASE_START } from './packed-frontend';
import { ethFrame, LogCapture, netHdr, packet, receiveN, sendPacket, seqOf, startGuest, startPackedGuest, startPackedPair, TestHub, closeGuest, fdCount, assertNoFdLeak } from './helpers';

const WITHOUT_EVENT_IDX = DEFAULT_FEATURES & ~bit(VirtioFeature.RING_F_EVENT_IDX);
const WITHOUT_MRG = DEFAULT_FEATURES & ~bit(VirtioFeature.NET_F_MRG_RXBUF);
const frameOf = (seq: number, len = 100) => packet(netHdr(12), ethFrame(len, seq));

async function pair(aOpts = {}, bOpts = {}) {
  const p = await startPackedPair(aOpts, bOpts);
  return { ...p, done: () => p.done({ noErrors: true }) };
}

test('packed rings: VIRTIO_F_RING_PACKED negotiated, frames A → B and B → A byte-identical and in order', async () => {
  const { a, b, done } = await pair();
  for (const g of [a, b]) {
    assert.ok((g.port.session!.features & bit(VirtioFeature.F_RING_PACKED)) !== 0n, 'bit 34 negotiated');
    assert.equal(g.port.session!.rings[0].packed, true);
    assert.equal(g.port.session!.rings[1].packed, true);
  }
  const frames = [ethFrame(60, 1), ethFrame(1514, 2), ethFrame(333, 3)];
  for (const f of frames) await sendPacket(a, packet(netHdr(12), f));
  const got = await receiveN(b, 3);
  assert.deepEqual(got.map((p) => p.frame), frames);
  await sendPacket(b, frameOf(9));
  assert.deepEqual((await receiveN(a, 1)).map((p) => seqOf(p.frame)), [9]);
  await done();
});

test('packed and split guests on one switch: split → packed and packed → split', async () => {
  const before = fdCount();
  const hub = new TestHub();
  const log = new LogCapture();
  const s = await startGuest(hub, 'split', log);
  const p = await startPackedGuest(hub, 'packed', log);
  assert.equal(s.port.session!.rings[0].packed, false);
  assert.equal(p.port.session!.rings[0].packed, true);
  await sendPacket(s, frameOf(1, 800));
  assert.deepEqual((await receiveN(p, 1)).map((x) => seqOf(x.frame)), [1]);
  await sendPacket(p, frameOf(2, 900));
  assert.deepEqual((await receiveN(s, 1)).map((x) => seqOf(x.frame)), [2]);
  await closeGuest(s);
  await closeGuest(p);
  assert.deepEqual(log.errors(), []);
  await assertNoFdLeak(before);
});

test('packed mergeable RX: a 9000-byte frame over five 2-descriptor chains, one used descriptor per chain at its first descriptor', async () => {
  const { a, b, done } = await pair({}, { rxBuffers: [16, 2048], rxLayout: { split: [1000] } });
  const frame = ethFrame(9000, 7);
  await sendPacket(a, packet(netHdr(12), frame));
  await waitFor(() => b.rx.usedIdx === 5);
  const used = b.rx.peekUsed();
  assert.deepEqual(used.map((u) => u.id), [0, 1, 2, 3, 4], 'buffer ids in order');
  assert.deepEqual(used.map((u) => u.len), [2048, 2048, 2048, 2048, 12 + 9000 - 4 * 2048]);
  // the used descriptors lie at positions 0, 2, 4, 6, 8 (each chain took two), the others untouched
  for (let k = 0; k < 5; k++) {
    const d = b.rx.readDesc(2 * k);
    assert.equal(d.id, k);
    assert.equal(d.flags & 0x8080, 0x8080, `descriptor ${2 * k} used in wrap 1`);
    assert.equal(b.rx.readDesc(2 * k + 1).flags & 0x8080, 0x80, `descriptor ${2 * k + 1} still as the driver wrote it`);
  }
  const [p] = await receiveN(b, 1);
  assert.equal(p.numBuffers, 5);
  assert.deepEqual(p.frame, frame);
  assert.equal(b.rx.usedPos, 10, 'the driver skipped to position 10');
  assert.equal(b.port.session!.rings[0].usedIdx, 0x8000 | 10);
  await done();
});

test('packed mergeable RX: a frame needing more buffers than posted is refused and its chains given back; later buffers take it', async () => {
  const { hub, a, b, done } = await pair({}, { rxBuffers: [3, 2048] });
  await sendPacket(a, frameOf(1, 9000));
  assert.deepEqual(hub.refused, [{ to: 'vmB', len: 12 + 9000 }]);
  assert.equal(b.rx.usedIdx, 0);
  assert.equal(b.port.session!.rings[0].lastAvail, 0x8000, 'the three chains were given back');
  b.port.wantResources(true);
  b.rx.postRx(4, 2048);
  b.rx.kick();
  await waitFor(() => hub.available.length > 0);
  await sendPacket(a, frameOf(2, 9000));
  const [p] = await receiveN(b, 1);
  assert.equal(p.numBuffers, 5);
  assert.equal(seqOf(p.frame), 2);
  await done();
});

test('packed chains and indirect tables: TX split and indirect, RX chains and indirect, non-mergeable', async () => {
  const { a, b, done } = await pair({ features: WITHOUT_MRG }, { features: WITHOUT_MRG, rxBuffers: [6, 3000], rxLayout: { split: [12, 500] } });
  const frames = [ethFrame(1400, 1), ethFrame(64, 2), ethFrame(2900, 3)];
  await sendPacket(a, packet(netHdr(12), frames[0]), { split: [12, 100, 1, 700] });
  await sendPacket(a, packet(netHdr(12), frames[1]), { indirect: true, split: [5, 20] });
  await sendPacket(a, packet(netHdr(12), frames[2]), { indirect: true });
  const got = await receiveN(b, 3);
  assert.deepEqual(got.map((p) => p.frame), frames);
  assert.ok(got.every((p) => p.buffers === 1));
  await done();
});

test('packed RX through indirect tables (mergeable): each table one chain, num_buffers counts tables', async () => {
  const { a, b, done } = await pair({}, { rxBuffers: [8, 1024], rxLayout: { indirect: true, split: [300] } });
  const frame = ethFrame(2500, 4);
  await sendPacket(a, packet(netHdr(12), frame));
  const [p] = await receiveN(b, 1);
  assert.equal(p.numBuffers, 3);
  assert.deepEqual(p.frame, frame);
  assert.equal(b.rx.usedPos, 3, 'one ring descriptor per indirect table');
  await done();
});

test('packed EVENT_IDX: the driver area decides interrupts (DISABLE, ENABLE, DESC at a position); the device area asks for kicks at the next descriptor', async () => {
  const { a, b, done } = await pair({}, { rxBuffers: [64, 2048] });
  b.rx.calls();
  // DISABLE: no interrupt
  b.rx.setNoInterrupt(true);
  await sendPacket(a, frameOf(1));
  await b.rx.waitUsed(1);
  await sleep(10);
  assert.equal(b.rx.calls(), 0, 'DISABLE: no call');
  // DESC at the next used position: one call
  b.rx.takeUsed();
  b.rx.interruptOnNext();
  await sendPacket(a, frameOf(2));
  assert.ok((await b.rx.waitCall()) > 0, 'DESC at the next used descriptor: called');
  // DESC far ahead (position 40 in this lap): the next frames do not call until it is reached
  b.rx.takeUsed();
  b.rx.setDriverEvent(RING_EVENT_FLAGS_DESC, 40 | (1 << 15));
  for (let i = 0; i < 5; i++) await sendPacket(a, frameOf(10 + i));
  await b.rx.waitUsed(7);
  await sleep(10);
  assert.equal(b.rx.calls(), 0, 'DESC beyond the used descriptors written: no call');
  // DESC in the other lap (wrap 0): not reached in this one either
  b.rx.setDriverEvent(RING_EVENT_FLAGS_DESC, 8);
  await sendPacket(a, frameOf(20));
  await sleep(10);
  assert.equal(b.rx.calls(), 0, 'DESC with the other wrap counter: no call');
  // ENABLE: a call per batch
  b.rx.setNoInterrupt(false);
  await sendPacket(a, frameOf(21));
  assert.ok((await b.rx.waitCall()) > 0, 'ENABLE: called');
  assert.equal((await receiveN(b, 7)).length, 7);
  // the device area of A's TX ring: after its batch the back-end asks for a kick at its next descriptor
  const tx = a.tx;
  assert.equal(tx.deviceEventFlags, RING_EVENT_FLAGS_DESC);
  assert.equal(tx.deviceEventOffWrap, tx.availPos | (tx.availWrap << 15));
  // so a driver that posts one more frame kicks, and one that posts without reaching it would not
  tx.postTx(frameOf(30));
  assert.equal(tx.needsKick(), true);
  await done();
});

test('packed without EVENT_IDX: ENABLE/DISABLE only, the device area left at ENABLE when idle', async () => {
  const { a, b, done } = await pair({ features: WITHOUT_EVENT_IDX }, { features: WITHOUT_EVENT_IDX });
  assert.equal(b.port.session!.rings[0].eventIdx, false);
  b.rx.calls();
  await sendPacket(a, frameOf(1));
  assert.ok((await b.rx.waitCall()) > 0);
  // DESC is only valid with EVENT_IDX: a driver writing it anyway still gets its interrupts
  b.rx.setDriverEvent(RING_EVENT_FLAGS_DESC, 100);
  await sendPacket(a, frameOf(2));
  assert.ok((await b.rx.waitCall()) > 0);
  assert.equal(a.tx.deviceEventFlags, RING_EVENT_FLAGS_ENABLE);
  assert.deepEqual((await receiveN(b, 2)).map((p) => seqOf(p.frame)), [1, 2]);
  await done();
});

test('packed rings wrap many times (16 entries, 3-descriptor TX chains straddling the end); GET/SET_VRING_BASE carry both wrap counters', async () => {
  const { a, b, done } = await pair({ num: 16, rxBuffers: [8, 2048] }, { num: 16, rxBuffers: [16, 2048] });
  let seq = 0;
  const round = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) {
      await sendPacket(a, frameOf(seq++, 200), { split: [12, 50] });
      const [p] = await receiveN(b, 1);
      assert.equal(seqOf(p.frame), seq - 1);
      b.rx.postRx(1, 2048);
      b.rx.kick();
    }
  };
  await round(7); // TX: 21 descriptors: position 5, wrap 0
  assert.equal(a.tx.availPos, 5);
  assert.equal(a.tx.availWrap, 0);
  const base = await a.fe.getVringBase(1);
  assert.equal(base, 5 | (5 << 16), 'avail 5 and used 5, both wrap counters 0');
  const rxBase = await b.fe.getVringBase(0);
  assert.equal(rxBase, (7 | 0x8000) * 0x10001, 'RX: 16 posted then 7 more: position 7, wrap counters 1 again');
  // resume both where they stopped
  await a.fe.setupRing(a.tx, base);
  await b.fe.setupRing(b.rx, rxBase);
  b.rx.kick();
  await waitFor(() => b.port.session!.rings[0].started);
  await round(30); // two more laps of TX, beyond one of RX
  // 111 descriptors in all: position 15 after 6 laps, wrap counter back at 1
  assert.equal(a.tx.availPos, 15);
  assert.equal(a.tx.availWrap, 1);
  assert.equal(await a.fe.getVringBase(1), (15 | 0x8000) * 0x10001);
  assert.equal(b.port.counters.rxFrames, 37);
  await done();
});

test('packed SET_VRING_BASE: only the avail half (as DPDK virtio-user sends) means used = avail', async () => {
  const { a, b, done } = await pair({ base: 0x8000 }, { base: 0x8000 });
  assert.equal(a.port.session!.rings[1].getBase(), PACKED_BASE_START);
  await sendPacket(a, frameOf(1));
  assert.deepEqual((await receiveN(b, 1)).map((p) => seqOf(p.frame)), [1]);
  await done();
});

test('packed, then stop, RESET_OWNER and a split start on the same connection (and packed again): the rings change layout each time', async () => {
  const before = fdCount();
  const hub = new TestHub();
  const log = new LogCapture();
  const b = await startGuest(hub, 'vmB', log);
  const a = await startPackedGuest(hub, 'vmA', log);
  const s = a.port.session!;
  await sendPacket(a, frameOf(1));
  assert.deepEqual((await receiveN(b, 1)).map((p) => seqOf(p.frame)), [1]);
  // as QEMU's vhost_dev_stop: every ring stopped (GET_VRING_BASE) before the reset — features
  // may change only while no ring is started
  for (const i of [0, 1]) await a.fe.getVringBase(i);
  await a.fe.resetOwner();
  const split = await a.fe.start();
  await waitFor(() => s.rings[0].started);
  assert.equal(s.rings[0].packed, false);
  assert.equal(s.rings[1].packed, false);
  await sendPacket({ ...a, ...split }, frameOf(2));
  assert.deepEqual((await receiveN(b, 1)).map((p) => seqOf(p.frame)), [2]);
  for (const i of [0, 1]) await a.fe.getVringBase(i);
  await a.fe.resetOwner();
  const packed = await a.fe.startPacked();
  await waitFor(() => s.rings[0].started);
  assert.equal(s.rings[1].packed, true);
  await sendPacket({ ...a, ...packed }, frameOf(3));
  assert.deepEqual((await receiveN(b, 1)).map((p) => seqOf(p.frame)), [3]);
  await sendPacket(b, frameOf(4));
  assert.deepEqual((await receiveN({ ...a, ...packed }, 1)).map((p) => seqOf(p.frame)), [4]);
  await closeGuest(a);
  await closeGuest(b);
  assert.deepEqual(log.errors(), []);
  await assertNoFdLeak(before);
});
