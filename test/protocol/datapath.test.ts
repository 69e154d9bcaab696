// The data path through two front-ends: A's TX ring → VhostUserPort A → test hub → VhostUserPort B →
// B's RX ring. Frames and virtio-net headers must arrive byte-identical.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bit, VirtioFeature } from '../../src/vhost-user/features';
import { DEFAULT_FEATURES } from '../../src/vhost-user/session';
import { sleep, StartOptions, waitFor } from './frontend';
import {
  ethFrame,
  netHdr,
  NetHdrFields,
  packet,
  receiveN,
  sendPacket,
  seqOf,
  startPair,
} from './helpers';

const WITHOUT_MRG = DEFAULT_FEATURES & ~bit(VirtioFeature.NET_F_MRG_RXBUF);
const LEGACY = WITHOUT_MRG & ~bit(VirtioFeature.F_VERSION_1);
const WITHOUT_EVENT_IDX = DEFAULT_FEATURES & ~bit(VirtioFeature.RING_F_EVENT_IDX);

/** A checksum-offload header as a guest sends it for a TCP/IPv4 frame */
const CSUM: NetHdrFields = { flags: 1, gsoType: 0, hdrLen: 54, gsoSize: 0, csumStart: 34, csumOffset: 16 };
/** what the receiver gets for it: the header is rebuilt by the switch, hdr_len (a GSO field) is zero */
const CSUM_RX: NetHdrFields = { ...CSUM, hdrLen: 0 };

/** two guests on a test hub; done() also checks that nothing was logged as an error */
async function pair(aOpts: StartOptions = {}, bOpts: StartOptions = {}) {
  const p = await startPair(aOpts, bOpts);
  return { ...p, done: () => p.done({ noErrors: true }) };
}

test('mergeable RX: a 9000-byte frame spreads over five 2 KiB buffers with num_buffers 5, byte-identical', async () => {
  const { a, b, done } = await pair({}, { rxBuffers: [16, 2048] });
  const frame = ethFrame(9000, 7);
  await sendPacket(a, packet(netHdr(12, CSUM), frame));
  await waitFor(() => b.rx.usedIdx === 5);
  const used = b.rx.peekUsed();
  assert.deepEqual(
    used.map((u) => u.len),
    [2048, 2048, 2048, 2048, 12 + 9000 - 4 * 2048],
  );
  const [p] = await receiveN(b, 1);
  assert.equal(p.buffers, 5);
  assert.equal(p.numBuffers, 5);
  assert.deepEqual(p.header, netHdr(12, { ...CSUM_RX, numBuffers: 5 }));
  assert.deepEqual(p.frame, frame);
  // and a small one takes one buffer
  await sendPacket(a, packet(netHdr(12), ethFrame(60, 8)));
  const [q] = await receiveN(b, 1);
  assert.equal(q.numBuffers, 1);
  assert.equal(seqOf(q.frame), 8);
  await done();
});

test('mergeable RX: a frame needing more buffers than posted is refused, nothing consumed; later buffers take it', async () => {
  const { hub, a, b, done } = await pair({}, { rxBuffers: [3, 2048] });
  await sendPacket(a, packet(netHdr(12), ethFrame(9000, 1)));
  assert.deepEqual(hub.refused, [{ to: 'vmB', len: 12 + 9000 }]);
  assert.equal(b.rx.usedIdx, 0);
  assert.equal(b.port.session!.rings[0].lastAvail, 0, 'the three buffers were given back');
  // More buffers: the port asks the engine to try again (resourcesAvailable) once kicked.
  b.port.wantResources(true);
  b.rx.postRx(4, 2048);
  b.rx.kick();
  await waitFor(() => hub.available.length > 0);
  await sendPacket(a, packet(netHdr(12), ethFrame(9000, 2)));
  const [p] = await receiveN(b, 1);
  assert.equal(p.numBuffers, 5);
  assert.equal(seqOf(p.frame), 2);
  await done();
});

test('non-mergeable RX with VERSION_1: 12-byte header, one buffer per frame, num_buffers 1', async () => {
  const { a, b, done } = await pair({ features: WITHOUT_MRG }, { features: WITHOUT_MRG, rxBuffers: [8, 2048] });
  assert.equal(b.fe.hdrLen, 12);
  const frame = ethFrame(1514, 3);
  await sendPacket(a, packet(netHdr(12, CSUM), frame));
  const [p] = await receiveN(b, 1);
  assert.equal(p.buffers, 1);
  assert.deepEqual(p.header, netHdr(12, { ...CSUM_RX, numBuffers: 1 }));
  assert.deepEqual(p.frame, frame);
  await done();
});

test('legacy (neither VERSION_1 nor MRG_RXBUF): 10-byte header on both sides', async () => {
  const { a, b, done } = await pair({ features: LEGACY }, { features: LEGACY, rxBuffers: [8, 2048] });
  assert.equal(a.fe.hdrLen, 10);
  assert.equal(a.port.session!.hdrLen, 10);
  const frame = ethFrame(1000, 4);
  await sendPacket(a, packet(netHdr(10, CSUM), frame));
  const used = b.rx.peekUsed();
  assert.equal(used[0]?.len, 10 + 1000);
  const [p] = await receiveN(b, 1);
  assert.deepEqual(p.header, netHdr(10, CSUM_RX));
  assert.deepEqual(p.frame, frame);
  await done();
});

test('legacy sender to a mergeable receiver and back: header fields carried, lengths adapted', async () => {
  const { a, b, done } = await pair({ features: LEGACY }, {});
  const f1 = ethFrame(500, 5);
  await sendPacket(a, packet(netHdr(10, CSUM), f1));
  const [p] = await receiveN(b, 1);
  assert.deepEqual(p.header, netHdr(12, { ...CSUM_RX, numBuffers: 1 }));
  assert.deepEqual(p.frame, f1);
  const f2 = ethFrame(700, 6);
  await sendPacket(b, packet(netHdr(12, { ...CSUM, numBuffers: 0x1234 }), f2)); // num_buffers ignored on TX
  const [q] = await receiveN(a, 1);
  assert.deepEqual(q.header, netHdr(10, CSUM_RX));
  assert.deepEqual(q.frame, f2);
  await done();
});

test('non-mergeable RX: a frame larger than the buffer is dropped, the buffer kept for the next frame', async () => {
  const { a, b, done } = await pair({}, { features: WITHOUT_MRG, rxBuffers: [4, 1024] });
  await sendPacket(a, packet(netHdr(12), ethFrame(1500, 1)));
  await sleep(10);
  assert.equal(b.rx.usedIdx, 0);
  assert.equal(b.port.counters.rxTooBig, 1);
  await sendPacket(a, packet(netHdr(12), ethFrame(900, 2)));
  assert.deepEqual((await receiveN(b, 1)).map((p) => seqOf(p.frame)), [2]);
  await done();
});

test('TX chains split over several descriptors (header split too) arrive byte-identical', async () => {
  const { a, b, done } = await pair();
  const frames = [ethFrame(1400, 1), ethFrame(64, 2), ethFrame(3000, 3)];
  await sendPacket(a, packet(netHdr(12, CSUM), frames[0]), { split: [12, 100, 1, 700] });
  await sendPacket(a, packet(netHdr(12), frames[1]), { split: [5, 7, 14, 30] });
  await sendPacket(a, packet(netHdr(12), frames[2]), { split: [2000] }); // header + first bytes together
  assert.equal(a.tx.readDesc(0).flags & 1, 1, 'the first chain really is chained');
  const got = await receiveN(b, 3);
  assert.deepEqual(got[0].header, netHdr(12, { ...CSUM_RX, numBuffers: 1 }));
  assert.deepEqual(
    got.map((p) => p.frame),
    frames,
  );
  await done();
});

test('TX chains through an indirect table arrive byte-identical', async () => {
  const { a, b, done } = await pair();
  const frames = [ethFrame(1400, 1), ethFrame(9000, 2)];
  await sendPacket(a, packet(netHdr(12, CSUM), frames[0]), { indirect: true, split: [12, 500] });
  await sendPacket(a, packet(netHdr(12), frames[1]), { indirect: true, split: [3, 9, 4000, 1000, 1000] });
  assert.equal(a.tx.readDesc(0).flags, 4, 'the ring descriptor is VRING_DESC_F_INDIRECT');
  const got = await receiveN(b, 2);
  assert.deepEqual(got[0].header, netHdr(12, { ...CSUM_RX, numBuffers: 1 }));
  assert.deepEqual(
    got.map((p) => p.frame),
    frames,
  );
  await done();
});

test('EVENT_IDX: the RX call eventfd is signalled only when the used index passes used_event', async () => {
  const { a, b, done } = await pair();
  b.rx.calls(); // clear
  b.rx.setUsedEvent(2); // "interrupt me after the third buffer is used"
  await sendPacket(a, packet(netHdr(12), ethFrame(100, 1)));
  await waitFor(() => b.rx.usedIdx === 1);
  await sleep(10);
  assert.equal(b.rx.calls(), 0, 'no call at used idx 1');
  await sendPacket(a, packet(netHdr(12), ethFrame(100, 2)));
  await waitFor(() => b.rx.usedIdx === 2);
  await sleep(10);
  assert.equal(b.rx.calls(), 0, 'no call at used idx 2');
  await sendPacket(a, packet(netHdr(12), ethFrame(100, 3)));
  assert.ok((await b.rx.waitCall()) > 0, 'call when used idx passes 2');
  assert.equal(b.rx.usedIdx, 3);
  await sendPacket(a, packet(netHdr(12), ethFrame(100, 4)));
  await waitFor(() => b.rx.usedIdx === 4);
  await sleep(10);
  assert.equal(b.rx.calls(), 0, 'used_event still 2: no call at 4');
  b.rx.setUsedEvent(4);
  await sendPacket(a, packet(netHdr(12), ethFrame(100, 5)));
  assert.ok((await b.rx.waitCall()) > 0, 'call when used idx passes 4');
  assert.deepEqual((await receiveN(b, 5)).map((p) => seqOf(p.frame)), [1, 2, 3, 4, 5]);
  await done();
});

test('EVENT_IDX on TX: call per used_event, and avail_event asks for the next kick', async () => {
  const { a, b, done } = await pair();
  a.tx.calls();
  a.tx.setUsedEvent(0); // interrupt after the first TX completion
  await sendPacket(a, packet(netHdr(12), ethFrame(100, 1)));
  assert.ok((await a.tx.waitCall()) > 0);
  await sendPacket(a, packet(netHdr(12), ethFrame(100, 2)));
  await sleep(10);
  assert.equal(a.tx.calls(), 0, 'used_event 0 was passed already: no second call');
  // The back-end, idle again, set avail_event to its next avail index: the driver must kick.
  assert.equal(a.tx.availEvent, 2);
  a.tx.postTx(packet(netHdr(12), ethFrame(100, 3)));
  assert.equal(a.tx.kickIfNeeded(), true);
  await a.tx.waitUsed(3);
  assert.deepEqual((await receiveN(b, 3)).map((p) => seqOf(p.frame)), [1, 2, 3]);
  await done();
});

test('without EVENT_IDX: VRING_AVAIL_F_NO_INTERRUPT suppresses calls; cleared, calls come back', async () => {
  const { a, b, done } = await pair({ features: WITHOUT_EVENT_IDX }, { features: WITHOUT_EVENT_IDX });
  assert.equal(b.port.session!.rings[0].eventIdx, false);
  b.rx.calls();
  b.rx.setNoInterrupt(true);
  await sendPacket(a, packet(netHdr(12), ethFrame(100, 1)));
  await waitFor(() => b.rx.usedIdx === 1);
  await sleep(10);
  assert.equal(b.rx.calls(), 0);
  b.rx.setNoInterrupt(false);
  await sendPacket(a, packet(netHdr(12), ethFrame(100, 2)));
  assert.ok((await b.rx.waitCall()) > 0);
  // TX: the back-end clears VRING_USED_F_NO_NOTIFY when idle, so the driver kicks.
  assert.equal(a.tx.usedFlags & 1, 0);
  assert.deepEqual((await receiveN(b, 2)).map((p) => seqOf(p.frame)), [1, 2]);
  await done();
});

test('a burst of 200 frames posted with one kick all arrive, in order', async () => {
  const { a, b, done } = await pair({ num: 256 }, { num: 256, rxBuffers: [250, 2048] });
  for (let i = 0; i < 200; i++) a.tx.postTx(packet(netHdr(12), ethFrame(60 + i, i)));
  a.tx.kick();
  await a.tx.waitUsed(200);
  const got = await receiveN(b, 200);
  assert.deepEqual(
    got.map((p) => seqOf(p.frame)),
    [...Array(200).keys()],
  );
  await done();
});

test('RX buffers as descriptor chains (header in its own descriptor) and through indirect tables', async () => {
  // Linux's non-mergeable "big packets" mode posts a header descriptor chained to data pages.
  const { a, b, done } = await pair({}, { features: WITHOUT_MRG, rxBuffers: [4, 12 + 4096 * 3], rxLayout: { split: [12, 4096, 4096] } });
  const big = ethFrame(9000, 1);
  await sendPacket(a, packet(netHdr(12, CSUM), big));
  const [p] = await receiveN(b, 1);
  assert.deepEqual(p.header, netHdr(12, { ...CSUM_RX, numBuffers: 1 }));
  assert.deepEqual(p.frame, big);
  assert.equal(b.rx.readDesc(0).flags, 2 | 1, 'the RX buffer really is a chain');

  const c = await pair({}, { rxBuffers: [8, 2048], rxLayout: { split: [100, 100], indirect: true } });
  const f = ethFrame(5000, 2); // mergeable over indirect chains of 3 descriptors
  await sendPacket(c.a, packet(netHdr(12), f));
  const [q] = await receiveN(c.b, 1);
  assert.equal(q.numBuffers, 3);
  assert.deepEqual(q.frame, f);
  await c.done();
  await done();
});

test('ring indices wrap around 65535 (rings set up at base 65530, as after a migration)', async () => {
  const { a, b, done } = await pair({ base: 65530 }, { base: 65530 });
  for (let i = 0; i < 12; i++) {
    await sendPacket(a, packet(netHdr(12), ethFrame(100, i)));
  }
  assert.equal(a.tx.usedIdx, (65530 + 12) & 0xffff);
  assert.deepEqual(
    (await receiveN(b, 12)).map((p) => seqOf(p.frame)),
    [...Array(12).keys()],
  );
  assert.equal(b.rx.usedIdx, 6);
  assert.equal(await b.fe.getVringBase(0), 6);
  await done();
});

test('a ring of 4 entries wraps many times', async () => {
  const { a, b, done } = await pair({ num: 4, rxBuffers: [0, 0] }, { num: 4, rxBuffers: [4, 2048] });
  for (let i = 0; i < 30; i++) {
    await sendPacket(a, packet(netHdr(12), ethFrame(64, i)));
    const [p] = await receiveN(b, 1);
    assert.equal(seqOf(p.frame), i);
    b.rx.postRx(1, 2048); // give the buffer back, as a driver refills
    b.rx.kick();
  }
  await done();
});

test('TX chains too short for a header and an Ethernet header are dropped, counted, and returned', async () => {
  const { a, b, done } = await pair();
  await sendPacket(a, netHdr(12)); // header only
  await sendPacket(a, packet(netHdr(12), new Uint8Array(13)));
  assert.equal(a.port.counters.txDropped, 2);
  assert.equal(a.tx.usedIdx, 2);
  await sendPacket(a, packet(netHdr(12), ethFrame(60, 3).subarray(0, 14))); // a bare Ethernet header passes
  assert.deepEqual((await receiveN(b, 1)).map((p) => p.frame.length), [14]);
  await done();
});

test('two queue pairs: a frame sent on TX queue k goes to RX queue k; RX goes to the enabled RX rings only', async () => {
  const { a, b, done } = await pair({ queuePairs: 2 }, { queuePairs: 2 });
  const rx2 = b.fe.rings[2];
  await waitFor(() => b.port.session!.rings[2].started && b.port.session!.rings[0].started);
  await sleep(10); // the port's RX queue set is applied outside the session's event
  // TX ring 3 (queue pair 1) of a sender on two queues → RX ring 2 (queue pair 1) of the receiver
  const tx3 = a.fe.rings[3];
  tx3.postTx(packet(netHdr(12), ethFrame(100, 1)));
  tx3.kick();
  await tx3.waitUsed(1);
  await rx2.waitUsed(1);
  assert.deepEqual(rx2.receive(12, true).map((p) => seqOf(p.frame)), [1]);
  // TX ring 1 (queue pair 0) → RX ring 0
  await sendPacket(a, packet(netHdr(12), ethFrame(100, 2)));
  assert.deepEqual((await receiveN(b, 1)).map((p) => seqOf(p.frame)), [2]);
  // B disables ring 0: what would go there goes to ring 2, the one RX ring left enabled
  await b.fe.setVringEnable(0, false);
  await sleep(10);
  await sendPacket(a, packet(netHdr(12), ethFrame(100, 3)));
  await rx2.waitUsed(2);
  assert.deepEqual(rx2.receive(12, true).map((p) => seqOf(p.frame)), [3]);
  assert.equal(b.rx.usedIdx, 1);
  assert.deepEqual(b.port.queueFrames().rx, [1, 2]);
  assert.deepEqual(a.port.queueFrames().tx, [2, 1]);
  await done();
});

test('RX kick suppression: the back-end asks for kicks only while it wants buffers (EVENT_IDX and NO_NOTIFY)', async () => {
  for (const features of [DEFAULT_FEATURES, WITHOUT_EVENT_IDX]) {
    const { hub, a, b, done } = await pair({ features }, { features, rxBuffers: [2, 2048] });
    b.port.wantResources(false); // the engine holds nothing for B
    for (let i = 0; i < 3; i++) await sendPacket(a, packet(netHdr(12), ethFrame(100, i)));
    await sleep(10);
    const base = hub.available.length; // (the port also reports at start and on every RX kick)
    const asked = () => hub.available.slice(base).filter((i) => i === b.port.index).length;
    assert.equal(hub.refused.length, 1, 'the third frame found no buffer');
    // A buffer posted while nobody waits for one: no kick wanted.
    b.rx.postRx(1, 2048);
    assert.equal(b.rx.kickIfNeeded(), false, 'no kick wanted while the engine holds nothing');
    // The engine now holds a frame for B and asks: the buffer posted before the ask is found by
    // the port itself (no kick will come for it).
    b.port.wantResources(true);
    await waitFor(() => asked() === 1, 2000, 'resourcesAvailable after the ask');
    await sendPacket(a, packet(netHdr(12), ethFrame(100, 3))); // uses that buffer
    // Asked with no buffer left: the next buffer posted must be kicked for.
    b.port.wantResources(true);
    b.rx.postRx(1, 2048);
    assert.equal(b.rx.kickIfNeeded(), true, 'kick requested (avail_event / no NO_NOTIFY)');
    await waitFor(() => asked() === 2, 2000, 'resourcesAvailable after the kick');
    // Not wanting any more: the driver is told not to kick.
    b.port.wantResources(false);
    b.rx.postRx(1, 2048);
    assert.equal(b.rx.kickIfNeeded(), false);
    assert.deepEqual(
      (await receiveN(b, 3)).map((p) => seqOf(p.frame)),
      [0, 1, 3],
    );
    await done();
  }
});

test('polling mode: rings whose kick fd was set with the "no fd" bit are served without any kick', async () => {
  const { a, b, done } = await pair({}, {});
  // both front-ends switch to polling: A's TX and B's RX get SET_VRING_KICK with the no-fd bit
  await a.fe.setVringKick(1, null);
  await b.fe.setVringKick(0, null);
  for (let i = 0; i < 20; i++) a.tx.postTx(packet(netHdr(12), ethFrame(200, i)));
  // no kick at all: the back-end finds the chains by polling
  await waitFor(() => a.tx.usedIdx === 20, 2000, 'TX chains taken without a kick');
  const got = await receiveN(b, 20);
  assert.deepEqual(
    got.map((p) => seqOf(p.frame)),
    Array.from({ length: 20 }, (_, i) => i),
  );
  await done();
});
