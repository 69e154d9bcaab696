// Checksum and TSO offloads through the vhost-user ports: front-end A (CSUM, HOST_TSO4) sends a
// 30 000-byte TSO frame with NEEDS_CSUM; a front-end with GUEST_TSO4 gets it as one frame with the
// header intact, front-ends without GUEST_TSO/GUEST_CSUM get checksummed MSS-sized segments; with
// too few RX buffers nothing is consumed and the frame arrives whole once buffers are posted.
import { ByteFrames } from '../../src/datapath/byte-frame';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bit, VirtioFeature } from '../../src/vhost-user/features';
import { DEFAULT_FEATURES, OFFLOAD_FEATURES } from '../../src/vhost-user/session';
import { Switch } from '../../src/engine/switch';
import { Packet, sleep, waitFor } from './frontend';
import { assertNoFdLeak, closeGuest, fdCount, Guest, LogCapture, netHdr, NetHdrFields, packet, receiveN, sendPacket, startGuest, TestHub } from './helpers';
import { EngineApi } from '../../src/ports/engine-api';
import { onesSum } from '../checksum';

const NO_GUEST_OFFLOAD =
  DEFAULT_FEATURES &
  ~(bit(VirtioFeature.NET_F_GUEST_CSUM) | bit(VirtioFeature.NET_F_GUEST_TSO4) | bit(VirtioFeature.NET_F_GUEST_TSO6) | bit(VirtioFeature.NET_F_GUEST_ECN));
const NO_OFFLOAD = DEFAULT_FEATURES & ~OFFLOAD_FEATURES;
const NO_OFFLOAD_NO_MRG = NO_OFFLOAD & ~bit(VirtioFeature.NET_F_MRG_RXBUF);
const MAC_A = [0x52, 0x54, 0, 0, 0, 0x0a];
const MAC_C = [0x52, 0x54, 0, 0, 0, 0x0c];
const MSS = 1448;

// ---- the independent checksum is test/checksum.ts ----
const u16 = (b: Uint8Array, o: number) => (b[o] << 8) | b[o + 1];
const u32 = (b: Uint8Array, o: number) => ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;

/** Ethernet + IPv4 + TCP (20-byte headers) with payloadLen bytes; the TCP checksum left partial (pseudo-header sum), as Linux sends with NEEDS_CSUM. */
function tcpFrame(payloadLen: number, dst = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff], seq = 1000): { frame: Uint8Array; payload: Uint8Array } {
  const f = new Uint8Array(54 + payloadLen);
  f.set(dst, 0);
  f.set(MAC_A, 6);
  f.set([0x08, 0x00], 12);
  f.set([0x45, 0, (40 + payloadLen) >> 8, (40 + payloadLen) & 0xff, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 3], 14);
  const ipSum = 0xffff - onesSum(f.subarray(14, 34));
  f[24] = ipSum >> 8;
  f[25] = ipSum & 0xff;
  f.set([0x9c, 0x40, 0x14, 0x51, seq >>> 24, (seq >>> 16) & 0xff, (seq >>> 8) & 0xff, seq & 0xff, 0, 0, 0, 1, 0x50, 0x19, 0x01, 0xf5], 34); // FIN|PSH|ACK
  const payload = f.subarray(54);
  for (let i = 0; i < payloadLen; i++) payload[i] = (i * 31 + (i >> 8)) & 0xff;
  const pseudo = onesSum([...f.subarray(26, 34), 0, 6, 0, 0]); // length 0: Linux seeds GSO frames so
  f[50] = pseudo >> 8;
  f[51] = pseudo & 0xff;
  return { frame: f, payload: payload.slice() };
}

const TSO_HDR: NetHdrFields = { flags: 1, gsoType: 1, hdrLen: 54, gsoSize: MSS, csumStart: 34, csumOffset: 16 };

/** Checks segments as received by a guest without offloads; returns the payload put together. */
function verifySegments(pkts: Packet[], hdrLen: number, want: { payload: Uint8Array; seq: number }): void {
  const n = Math.ceil(want.payload.length / MSS);
  assert.equal(pkts.length, n, 'segment count');
  const parts: Uint8Array[] = [];
  pkts.forEach((p, i) => {
    const last = i === n - 1;
    const plen = last ? want.payload.length - (n - 1) * MSS : MSS;
    assert.deepEqual([...p.header.subarray(0, 10)], new Array(10).fill(0), `segment ${i}: flags 0, GSO_NONE`);
    if (hdrLen === 12) assert.equal(p.numBuffers, p.buffers);
    const f = p.frame;
    assert.equal(f.length, 54 + plen, `segment ${i}: length`);
    assert.equal(u16(f, 16), 40 + plen, `segment ${i}: IPv4 total length`);
    assert.equal(u16(f, 18), (0x1234 + i) & 0xffff, `segment ${i}: IPv4 id`);
    assert.equal(onesSum(f.subarray(14, 34)), 0xffff, `segment ${i}: IPv4 header checksum`);
    assert.equal(u32(f, 38), (want.seq + i * MSS) % 2 ** 32, `segment ${i}: seq`);
    assert.equal(f[47], last ? 0x19 : 0x10, `segment ${i}: TCP flags`);
    const tcp = f.subarray(34);
    assert.equal(onesSum([...f.subarray(26, 34), 0, 6, tcp.length >> 8, tcp.length & 0xff, ...tcp]), 0xffff, `segment ${i}: TCP checksum`);
    parts.push(tcp.subarray(20));
  });
  const joined = new Uint8Array(want.payload.length);
  let at = 0;
  for (const p of parts) {
    joined.set(p, at);
    at += p.length;
  }
  assert.deepEqual(joined, want.payload, 'payload put back together');
}

async function guests(hub: EngineApi, log: LogCapture, specs: [string, Parameters<typeof startGuest>[3]][]): Promise<Guest[]> {
  const out: Guest[] = [];
  for (const [name, opts] of specs) out.push(await startGuest(hub, name, log, opts));
  return out;
}

test('a 30 000-byte TSO frame: as is to a GUEST_TSO4 guest, segmented and checksummed for guests without offloads (mergeable and not)', async () => {
  const before = fdCount();
  const hub = new TestHub();
  const log = new LogCapture();
  // the fallback ports come first in the flood: the frame the later port gets must be untouched
  const [a, c, d, b] = await guests(hub, log, [
    ['vmA', {}],
    ['vmC', { features: NO_GUEST_OFFLOAD }],
    ['vmD', { features: NO_OFFLOAD_NO_MRG, rxBuffers: [64, 1600] }],
    ['vmB', { rxBuffers: [64, 2048] }],
  ]);
  try {
    const { frame, payload } = tcpFrame(30000);
    await sendPacket(a, packet(netHdr(12, TSO_HDR), frame), { split: [12, 54] });
    assert.deepEqual(hub.refused, []);

    const [pb] = await receiveN(b, 1);
    assert.deepEqual(pb.header, netHdr(12, { ...TSO_HDR, numBuffers: pb.buffers }), 'B: header intact');
    assert.equal(pb.buffers, Math.ceil((12 + frame.length) / 2048));
    assert.deepEqual(pb.frame, frame, 'B: one frame, byte-identical');

    const n = Math.ceil(30000 / MSS);
    verifySegments(await receiveN(c, n), 12, { payload, seq: 1000 });
    verifySegments(await receiveN(d, n), 12, { payload, seq: 1000 });
    assert.equal(c.port.counters.rxSegmented, 1);
    assert.equal(c.port.counters.rxFrames, n);
    assert.equal(d.port.counters.rxSegmented, 1);
    assert.equal(b.port.counters.rxSegmented, 0);

    // hdr_len as the guest claims it is not passed on: the receiver gets the real headers' length
    await sendPacket(a, packet(netHdr(12, { ...TSO_HDR, hdrLen: 0xffff }), frame), { split: [12, 54] });
    const [pb2] = await receiveN(b, 1);
    assert.deepEqual(pb2.header, netHdr(12, { ...TSO_HDR, numBuffers: pb2.buffers }), 'B: hdr_len 54, as the headers are');
    assert.deepEqual(pb2.frame, frame);
    await receiveN(c, n);
    await receiveN(d, n);
    assert.equal(a.port.counters.txBadOffload, 0);

    // a checksum-only frame: completed for C and D, as is for B
    const small = tcpFrame(1000, undefined, 77);
    const pseudo = onesSum([...small.frame.subarray(26, 34), 0, 6, (20 + 1000) >> 8, (20 + 1000) & 0xff]);
    small.frame[50] = pseudo >> 8;
    small.frame[51] = pseudo & 0xff;
    const csumHdr = { flags: 1, csumStart: 34, csumOffset: 16 };
    await sendPacket(a, packet(netHdr(12, csumHdr), small.frame));
    const [qb] = await receiveN(b, 1);
    assert.deepEqual(qb.header, netHdr(12, { ...csumHdr, numBuffers: 1 }));
    assert.deepEqual(qb.frame, small.frame);
    for (const g of [c, d]) {
      const [q] = await receiveN(g, 1);
      assert.equal(q.header[0], 0, `${g.port.name}: flags 0`);
      const tcp = q.frame.subarray(34);
      assert.equal(onesSum([...q.frame.subarray(26, 34), 0, 6, tcp.length >> 8, tcp.length & 0xff, ...tcp]), 0xffff, `${g.port.name}: checksum completed`);
      assert.deepEqual(q.frame.subarray(52), small.frame.subarray(52));
      assert.equal(g.port.counters.rxChecksummed, 1);
    }
  } finally {
    for (const g of [a, b, c, d]) await closeGuest(g);
  }
  assert.deepEqual(log.errors(), []);
  await assertNoFdLeak(before);
});

test('bad offload headers from a guest are dropped and counted on its port; DATA_VALID from a guest is not passed on', async () => {
  const before = fdCount();
  const hub = new TestHub();
  const log = new LogCapture();
  const [a, b, e] = await guests(hub, log, [
    ['vmA', {}],
    ['vmB', {}],
    ['vmE', { features: NO_OFFLOAD }],
  ]);
  try {
    const { frame } = tcpFrame(5000);
    const bad: [Guest, NetHdrFields, string][] = [
      [a, { ...TSO_HDR, gsoType: 2 }, 'unknown gso_type'],
      [a, { ...TSO_HDR, gsoType: 3 }, 'GSO_UDP (not offered)'],
      [a, { ...TSO_HDR, gsoSize: 0 }, 'gso_size 0'],
      [a, { ...TSO_HDR, csumStart: 6000 }, 'csum_start beyond the frame'],
      [a, { ...TSO_HDR, gsoType: 4 }, 'TCPV6 on an IPv4 frame'],
      [e, TSO_HDR, 'TSO without HOST_TSO4 negotiated'],
      [e, { flags: 1, csumStart: 34, csumOffset: 16 }, 'NEEDS_CSUM without CSUM negotiated'],
    ];
    for (const [g, h, what] of bad) {
      const dropped = g.port.counters.txBadOffload;
      await sendPacket(g, packet(netHdr(12, h), frame));
      assert.equal(g.port.counters.txBadOffload, dropped + 1, what);
    }
    await sleep(10);
    assert.equal(b.rx.usedIdx, 0, 'nothing reached B');
    assert.equal(e.rx.usedIdx, 0, 'nothing reached E');
    assert.equal(a.port.counters.txDropped, 5);
    // DATA_VALID set by a guest is cleared
    const plain = tcpFrame(100).frame;
    await sendPacket(a, packet(netHdr(12, { flags: 2 }), plain));
    const [p] = await receiveN(b, 1);
    assert.equal(p.header[0], 0);
    assert.deepEqual(p.frame, plain);
    assert.equal((await receiveN(e, 1))[0].header[0], 0);
    // DATA_VALID from the TAP uplink (the kernel sets it): kept for a GUEST_CSUM guest, cleared for one without
    const fromTap = packet(netHdr(12, { flags: 2 }), plain);
    const bytes = new ByteFrames();
    assert.ok(b.port.deliver(bytes.of(fromTap)));
    assert.ok(e.port.deliver(bytes.of(fromTap)));
    bytes.close();
    b.port.flush();
    e.port.flush();
    assert.equal((await receiveN(b, 1))[0].header[0], 2);
    assert.equal((await receiveN(e, 1))[0].header[0], 0);
  } finally {
    for (const g of [a, b, e]) await closeGuest(g);
  }
  assert.deepEqual(log.errors(), []);
  await assertNoFdLeak(before);
});

test('too few RX buffers for all segments: nothing consumed, the frame waits in the switch and arrives whole once buffers are posted', async () => {
  const before = fdCount();
  const sw = new Switch({ tickMs: 0 });
  const log = new LogCapture();
  const a = await startGuest(sw, 'vmA', log);
  const c = await startGuest(sw, 'vmC', log, { features: NO_GUEST_OFFLOAD, rxBuffers: [5, 2048] });
  try {
    const n = Math.ceil(30000 / MSS);
    // C announces itself so the switch knows its MAC
    const hello = new Uint8Array(60);
    hello.fill(0xff, 0, 6);
    hello.set(MAC_C, 6);
    hello.set([0x88, 0xb5], 12);
    await sendPacket(c, packet(netHdr(12), hello));
    await waitFor(() => sw.macEntries().length === 1);
    const { frame, payload } = tcpFrame(30000, MAC_C, 0xffffc000);
    await sendPacket(a, packet(netHdr(12, TSO_HDR), frame));
    await sleep(20);
    const rxRing = c.port.session!.rings[0];
    assert.equal(c.rx.usedIdx, 0, 'no segment was written');
    assert.equal(rxRing.lastAvail, 0, 'the five buffers were given back');
    assert.ok(c.port.counters.rxNoBuffers >= 1);
    assert.equal(sw.stats().total.storedFrames, 1, 'the frame waits in the elastic FIFO');
    // More buffers, kicked only if the device asks (as Linux does with EVENT_IDX): it must ask,
    // although the guest's avail index was already past the buffers it holds.
    await sleep(10);
    c.rx.postRx(n, 2048);
    assert.equal(c.rx.kickIfNeeded(), true, 'the device asked for a kick on new buffers');
    const got = await receiveN(c, n);
    verifySegments(got, 12, { payload, seq: 0xffffc000 });
    assert.equal(c.port.counters.rxSegmented, 1);
  } finally {
    await closeGuest(a);
    await closeGuest(c);
    sw.close();
  }
  assert.deepEqual(log.errors(), []);
  await assertNoFdLeak(before);
});
