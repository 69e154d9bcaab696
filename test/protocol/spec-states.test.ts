// Spec-exact ring and device states (QEMU docs/interop/vhost-user.rst, "Ring states" and
// "Suspended device state"): a stopped ring is never written, a started but disabled TX ring is
// processed and its frames discarded, and the netdev MTU is enforced on what a guest receives.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bit, VirtioFeature } from '../../src/vhost-user/features';
import { DEFAULT_FEATURES } from '../../src/vhost-user/session';
import { sleep, waitFor, Virtqueue } from './frontend';
import { ethFrame, netHdr, packet, receiveN, sendPacket, seqOf, withSwitch } from './helpers';

const mac = (n: number) => new Uint8Array([0x52, 0x54, 0, 0, 0, n]);
const BCAST = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
const DEFAULT_NO_EVENT_IDX = DEFAULT_FEATURES & ~bit(VirtioFeature.RING_F_EVENT_IDX);

/** the bytes of a ring's used area as the guest sees them: flags, idx, ring[num], avail_event */
function usedBytes(vq: Virtqueue): Uint8Array {
  return vq.ram.view(vq.usedGpa, 6 + 8 * vq.num).slice();
}

/** Runs body with a switch; every guest it started is closed afterwards, failed or not. */
for (const eventIdx of [true, false]) {
  test(`a stopped ring is never written (${eventIdx ? 'EVENT_IDX' : 'NO_NOTIFY flags'}): frames for it wait in the elastic FIFO and arrive after the restart`, async () => {
    await withSwitch({ poolBytes: 4 << 20 }, async (sw, log, startGuest) => {
      const opts = eventIdx ? {} : { features: DEFAULT_NO_EVENT_IDX };
      const a = await startGuest(sw, 'vmA', log, opts);
      const b = await startGuest(sw, 'vmB', log, opts);
      // both MACs learned
      await sendPacket(a, packet(netHdr(12), ethFrame(60, 0, mac(1), BCAST)));
      await sendPacket(b, packet(netHdr(12), ethFrame(60, 0, mac(2), BCAST)));
      await receiveN(a, 1);
      await receiveN(b, 1);
      // B stops both rings (QEMU's vhost_dev_stop: GET_VRING_BASE on each)
      const rxBase = await b.fe.getVringBase(0);
      const txBase = await b.fe.getVringBase(1);
      const rxBefore = usedBytes(b.rx);
      const txBefore = usedBytes(b.tx);
      b.rx.calls();
      // the guest, unaware, posts a TX frame; frames for B arrive, unicast and broadcast
      b.tx.postTx(packet(netHdr(12), ethFrame(80, 99, mac(2), mac(1))));
      b.tx.kick();
      for (let i = 1; i <= 20; i++) await sendPacket(a, packet(netHdr(12), ethFrame(100, i, mac(1), i % 5 === 0 ? BCAST : mac(2))));
      await sleep(30);
      // the engine's periodic work (the lost-kick sweep tries every connection with frames waiting)
      // runs now, not whenever its timer would: it too must leave the stopped rings alone
      sw.tick();
      await sleep(5);
      assert.deepEqual(usedBytes(b.rx), rxBefore, 'the stopped RX ring: used flags, idx, ring and avail_event untouched');
      assert.deepEqual(usedBytes(b.tx), txBefore, 'the stopped TX ring: used flags, idx, ring and avail_event untouched');
      assert.equal(b.rx.calls(), 0, 'no interrupt for a stopped ring');
      const pb = sw.stats().ports.find((p) => p.name === 'vmB')!;
      assert.equal(pb.queuedFrames, 20, 'the frames for B wait in the elastic FIFO');
      assert.equal(pb.dropped, 0);
      // B starts again where it stopped (NUM, BASE, ADDR, KICK, CALL; then a kick)
      await b.fe.setupRing(b.rx, rxBase);
      await b.fe.setupRing(b.tx, txBase);
      b.rx.kick();
      const got = await receiveN(b, 20);
      assert.deepEqual(got.map((p) => seqOf(p.frame)), Array.from({ length: 20 }, (_, i) => i + 1), 'every held frame, in order');
      b.tx.kick();
      await b.tx.waitUsed(txBase + 1);
      assert.deepEqual((await receiveN(a, 1)).map((p) => seqOf(p.frame)), [99]);
    });
  });
}

test('a started but disabled TX ring is processed and its frames discarded (counted); enabled again, frames pass', async () => {
  await withSwitch({ poolBytes: 4 << 20 }, async (sw, log, startGuest) => {
    const a = await startGuest(sw, 'vmA', log);
    const b = await startGuest(sw, 'vmB', log);
    await sendPacket(b, packet(netHdr(12), ethFrame(60, 0, mac(2), BCAST)));
    await receiveN(a, 1);
    await a.fe.setVringEnable(1, false);
    for (let i = 1; i <= 5; i++) a.tx.postTx(packet(netHdr(12), ethFrame(100, i, mac(1), i === 3 ? BCAST : mac(2))));
    a.tx.kick();
    await a.tx.waitUsed(5);
    const used = a.tx.takeUsed();
    assert.equal(used.length, 5, 'every chain given back');
    await sleep(20);
    sw.tick(); // the sweep would deliver anything wrongly held for B
    await sleep(5);
    assert.equal(b.rx.receive(12, true).length, 0, 'nothing of a disabled TX ring reaches anyone');
    assert.equal(a.port.counters.txDisabledDropped, 5);
    assert.equal(a.port.counters.txFrames, 0);
    const pb = sw.stats().ports.find((p) => p.name === 'vmB')!;
    assert.equal(pb.queuedFrames, 0, 'nothing held for B either');
    // the disabled ring is still started: a kick alone (no new SET_VRING_KICK) keeps it processed
    assert.equal(a.port.session!.rings[1].started, true);
    await a.fe.setVringEnable(1, true);
    await sendPacket(a, packet(netHdr(12), ethFrame(100, 6, mac(1), mac(2))));
    assert.deepEqual((await receiveN(b, 1)).map((p) => seqOf(p.frame)), [6]);
    assert.equal(a.port.counters.txDisabledDropped, 5);
  });
});

/** an Ethernet frame of len bytes with an 802.1Q tag (ethertype 0x8100, then 0x88b5) */
function vlanFrame(len: number, seq: number): Uint8Array {
  const f = ethFrame(len, seq, mac(1), mac(2));
  f.copyWithin(16, 12, len - 4);
  f[12] = 0x81;
  f[13] = 0x00;
  f[14] = 0x00;
  f[15] = 0x05; // VLAN 5
  new DataView(f.buffer).setUint32(14 + 4, seq, true);
  return f;
}

test('NET_SET_MTU is enforced: a non-GSO frame longer than MTU + Ethernet header (+ VLAN tag) is not delivered, counted as rxOverMtu', async () => {
  await withSwitch({ poolBytes: 4 << 20 }, async (sw, log, startGuest) => {
    const a = await startGuest(sw, 'vmA', log);
    const b = await startGuest(sw, 'vmB', log, { mtu: 1500 });
    const c = await startGuest(sw, 'vmC', log, { mtu: 1500, features: DEFAULT_FEATURES & ~bit(VirtioFeature.NET_F_MTU) });
    await sendPacket(b, packet(netHdr(12), ethFrame(60, 0, mac(2), BCAST)));
    await sendPacket(c, packet(netHdr(12), ethFrame(60, 0, mac(3), BCAST)));
    await receiveN(a, 2);
    await receiveN(c, 1);
    await receiveN(b, 1);
    const to = (d: number, len: number, seq: number) => packet(netHdr(12), ethFrame(len, seq, mac(1), mac(d)));
    await sendPacket(a, to(2, 1514, 1)); // MTU 1500 + 14: fits
    await sendPacket(a, to(2, 1515, 2)); // one byte more: not for B
    await sendPacket(a, packet(netHdr(12), vlanFrame(1518, 3))); // tagged: 4 bytes more fit
    await sendPacket(a, packet(netHdr(12), vlanFrame(1519, 4)));
    await sendPacket(a, to(3, 2000, 5)); // C did not negotiate VIRTIO_NET_F_MTU: no limit
    await sendPacket(a, to(2, 200, 6));
    assert.deepEqual((await receiveN(b, 3)).map((p) => [seqOf(p.frame.subarray(p.frame[12] === 0x81 ? 4 : 0)), p.frame.length]), [[1, 1514], [3, 1518], [6, 200]]);
    assert.deepEqual((await receiveN(c, 1)).map((p) => p.frame.length), [2000]);
    assert.equal(b.port.counters.rxOverMtu, 2);
    assert.equal(c.port.counters.rxOverMtu, 0);
    const pb = sw.stats().ports.find((p) => p.name === 'vmB')!;
    assert.equal(pb.queuedFrames, 0, 'dropped, not held');
  });
});
