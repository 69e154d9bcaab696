// Software checksum completion and TCP segmentation (src/virtio/offload.ts), checked against an
// independent checksum (test/checksum.ts): every segment's IPv4 header checksum and TCP checksum (with the
// pseudo-header), lengths, ids, sequence numbers, flags, and the payload put back together.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { onesSum } from '../checksum';
import {
  checkSenderHeader,
  completeChecksum,
  GSO_HDRS,
  newGsoInfo,
  OFFLOAD_BAD_CSUM,
  OFFLOAD_BAD_GSO_SIZE,
  OFFLOAD_BAD_GSO_TYPE,
  OFFLOAD_BAD_HEADERS,
  OFFLOAD_OK,
  offloadNeeds,
  parseTcpGso,
  RX_CSUM,
  RX_ECN,
  RX_TSO4,
  RX_TSO6,
  segmentLength,
  writeTcpSegment,
} from '../../src/virtio/offload';

const HDR = 12;
const ALL = RX_CSUM | RX_TSO4 | RX_TSO6 | RX_ECN;

// ---- the independent checksum (test/checksum.ts) ----


/** true when the bytes (checksum field included) sum to all ones */
function checksumOk(bytes: ArrayLike<number>): boolean {
  return onesSum(bytes) === 0xffff;
}

function pseudoHeader(ip: Uint8Array, v6: boolean, tcpLen: number): number[] {
  if (v6) return [...ip.slice(8, 40), 0, 0, tcpLen >> 8, tcpLen & 0xff, 0, 0, 0, 6];
  return [...ip.slice(12, 20), 0, 6, tcpLen >> 8, tcpLen & 0xff];
}

function rnd(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

// ---- super-frame builder ----

interface SuperOpts {
  v6?: boolean;
  vlan?: boolean;
  /** IPv4 option bytes (multiple of 4) */
  ipOpts?: number;
  /** TCP option bytes (multiple of 4) */
  tcpOpts?: number;
  payload: number;
  mss: number;
  ecn?: boolean;
  tcpFlags?: number;
  seq?: number;
  seed?: number;
}

interface Built {
  pkt: Uint8Array;
  payload: Uint8Array;
  l3: number;
  l4: number;
  hdrs: number;
}

function be16(b: Uint8Array, o: number, v: number): void {
  b[o] = v >> 8;
  b[o + 1] = v & 0xff;
}

function superFrame(o: SuperOpts): Built {
  const r = rnd(o.seed ?? 7);
  const l3 = o.vlan ? 18 : 14;
  const ipLen = o.v6 ? 40 : 20 + (o.ipOpts ?? 0);
  const l4 = l3 + ipLen;
  const tcpHdr = 20 + (o.tcpOpts ?? 0);
  const hdrs = l4 + tcpHdr;
  const f = new Uint8Array(hdrs + o.payload);
  f.set([0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1], 0);
  if (o.vlan) {
    be16(f, 12, 0x8100);
    be16(f, 14, 0x0005); // VID 5
  }
  be16(f, l3 - 2, o.v6 ? 0x86dd : 0x0800);
  const ip = l3;
  if (o.v6) {
    f[ip] = 0x60;
    be16(f, ip + 4, tcpHdr + o.payload);
    f[ip + 6] = 6;
    f[ip + 7] = 64;
    for (let i = 0; i < 16; i++) f[ip + 8 + i] = 0x20 + i;
    for (let i = 0; i < 16; i++) f[ip + 24 + i] = 0x40 + i * 3;
  } else {
    f[ip] = 0x40 | (ipLen >> 2);
    be16(f, ip + 2, (ipLen + tcpHdr + o.payload) & 0xffff);
    be16(f, ip + 4, 0xfffe); // id wraps after two segments
    be16(f, ip + 6, 0x4000); // DF
    f[ip + 8] = 64;
    f[ip + 9] = 6;
    f.set([10, 0, 0, 1, 10, 0, 0, 2], ip + 12);
    for (let i = 20; i < ipLen; i++) f[ip + i] = 1; // NOP options
  }
  const t = l4;
  be16(f, t, 40000);
  be16(f, t + 2, 5201);
  const seq = o.seq ?? 0xffffe000; // wraps inside the super-frame
  f[t + 4] = seq >>> 24;
  f[t + 5] = (seq >>> 16) & 0xff;
  f[t + 6] = (seq >>> 8) & 0xff;
  f[t + 7] = seq & 0xff;
  f.set([0, 0, 0x12, 0x34], t + 8);
  f[t + 12] = (tcpHdr >> 2) << 4;
  f[t + 13] = o.tcpFlags ?? 0x18; // PSH|ACK
  be16(f, t + 14, 512);
  for (let i = 20; i < tcpHdr; i++) f[t + i] = 1;
  const payload = new Uint8Array(o.payload);
  for (let i = 0; i < payload.length; i++) payload[i] = (r() * 256) | 0;
  f.set(payload, hdrs);
  // the TCP checksum field holds the folded pseudo-header sum (length 0 for GSO, as Linux seeds it)
  const seed = onesSum(pseudoHeader(f.subarray(ip), !!o.v6, 0));
  be16(f, t + 16, seed);
  const pkt = new Uint8Array(HDR + f.length);
  pkt[0] = 1; // NEEDS_CSUM
  pkt[1] = (o.v6 ? 4 : 1) | (o.ecn ? 0x80 : 0);
  be16le(pkt, 2, 0); // hdr_len: wrong on purpose, must not matter
  be16le(pkt, 4, o.mss);
  be16le(pkt, 6, l4);
  be16le(pkt, 8, 16);
  pkt.set(f, HDR);
  return { pkt, payload, l3, l4, hdrs };
}

function be16le(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = v >> 8;
}

function u32(b: Uint8Array, o: number): number {
  return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
}

function u16(b: Uint8Array, o: number): number {
  return (b[o] << 8) | b[o + 1];
}

/** Segments b and checks every segment independently; returns the segments. */
function segmentAndVerify(b: Built, o: SuperOpts): Uint8Array[] {
  const info = newGsoInfo();
  const before = b.pkt.slice();
  const n = parseTcpGso(b.pkt, 0, b.pkt.length, info);
  const want = Math.ceil(o.payload / o.mss);
  assert.equal(n, want, 'segment count');
  assert.equal(info[GSO_HDRS], b.hdrs);
  // write into a sub-range of a larger buffer with sentinels around it
  const big = new Uint8Array(70000 + 64).fill(0xa5);
  const segs: Uint8Array[] = [];
  for (let i = 0; i < n; i++) {
    const len = segmentLength(info, i);
    big.fill(0xa5);
    const out = big.subarray(32, 32 + len);
    assert.equal(writeTcpSegment(b.pkt, 0, b.pkt.length, info, i, out, 0), len);
    for (let k = 0; k < 32; k++) assert.equal(big[k], 0xa5, 'wrote before out');
    assert.equal(big[32 + len], 0xa5, 'wrote past out');
    segs.push(out.slice());
  }
  assert.deepEqual(b.pkt, before, 'the super-frame is not modified');
  const ipHdr = b.l4 - b.l3;
  const tcpHdr = b.hdrs - b.l4;
  const seq0 = u32(b.pkt, HDR + b.l4 + 4);
  const flags0 = b.pkt[HDR + b.l4 + 13];
  const parts: Uint8Array[] = [];
  segs.forEach((s, i) => {
    const last = i === n - 1;
    const segPayload = last ? o.payload - (n - 1) * o.mss : o.mss;
    assert.equal(s.length, HDR + b.hdrs + segPayload, `segment ${i} length`);
    assert.deepEqual([...s.subarray(0, HDR)], new Array(HDR).fill(0), 'virtio header: flags 0, GSO_NONE');
    const f = s.subarray(HDR);
    assert.deepEqual(f.subarray(0, b.l3), b.pkt.subarray(HDR, HDR + b.l3), 'Ethernet (+VLAN) header copied');
    const ip = f.subarray(b.l3, b.l4);
    if (o.v6) {
      assert.equal(u16(ip, 4), tcpHdr + segPayload, 'IPv6 payload length');
      assert.deepEqual(ip.subarray(6), b.pkt.subarray(HDR + b.l3 + 6, HDR + b.l4));
    } else {
      assert.equal(u16(ip, 2), ipHdr + tcpHdr + segPayload, 'IPv4 total length');
      assert.equal(u16(ip, 4), (0xfffe + i) & 0xffff, 'IPv4 id + i');
      assert.ok(checksumOk(ip), `segment ${i}: IPv4 header checksum`);
      assert.deepEqual(ip.subarray(12), b.pkt.subarray(HDR + b.l3 + 12, HDR + b.l4), 'addresses and options copied');
    }
    const tcp = f.subarray(b.l4);
    assert.equal(u32(tcp, 4), (seq0 + i * o.mss) % 2 ** 32, `segment ${i}: seq`);
    let wantFlags = flags0;
    if (!last) wantFlags &= ~0x09;
    if (i > 0) wantFlags &= ~0x80;
    assert.equal(tcp[13], wantFlags, `segment ${i}: TCP flags`);
    assert.ok(checksumOk([...pseudoHeader(ip, !!o.v6, tcp.length), ...tcp]), `segment ${i}: TCP checksum`);
    parts.push(tcp.subarray(tcpHdr));
  });
  const joined = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    joined.set(p, at);
    at += p.length;
  }
  assert.deepEqual(joined, b.payload, 'payload put back together');
  return segs;
}

test('IPv4 TCP super-frame: 30000 bytes in 1448-byte segments', () => {
  const o = { payload: 30000, mss: 1448 };
  segmentAndVerify(superFrame(o), o);
});

test('IPv4 with IP options and TCP options, FIN|PSH|CWR, ECN gso_type', () => {
  const o = { payload: 10001, mss: 1000, ipOpts: 12, tcpOpts: 12, ecn: true, tcpFlags: 0x80 | 0x18 | 0x01 };
  const segs = segmentAndVerify(superFrame(o), o);
  assert.equal(segs.length, 11);
});

test('VLAN-tagged IPv4 and IPv6, odd sizes, one-segment and exact-multiple cases', () => {
  for (const o of [
    { vlan: true, payload: 7777, mss: 1400 },
    { v6: true, payload: 20000, mss: 1428, tcpOpts: 12 },
    { v6: true, vlan: true, payload: 4096, mss: 1024, tcpFlags: 0x99 },
    { payload: 900, mss: 1448 },
    { v6: true, payload: 1, mss: 1 },
    { payload: 63 * 1021, mss: 1021, seed: 3 },
    { payload: 65535 - 52, mss: 65535, seq: 5 },
  ]) {
    segmentAndVerify(superFrame(o), o);
  }
});

test('checksum completion: TCP and UDP with a partial checksum, VLAN, odd lengths', () => {
  for (const [udp, vlan, plen] of [
    [false, false, 1000],
    [false, true, 1],
    [true, false, 333],
    [true, true, 0],
  ] as const) {
    const b = superFrame({ payload: plen, mss: 1448, vlan });
    const pkt = b.pkt;
    pkt[1] = 0; // GSO_NONE
    const f = pkt.subarray(HDR);
    const ip = f.subarray(b.l3, b.l4);
    be16(ip, 2, f.length - b.l3);
    let csumOff = 16;
    if (udp) {
      ip[9] = 17;
      const u = f.subarray(b.l4);
      be16(u, 4, u.length);
      csumOff = 6;
      // the seed: folded pseudo-header sum with the UDP length
      be16(u, 6, onesSum(pseudoHeader(ip, false, u.length).map((v, k) => (k === 9 ? 17 : v))));
      u[16] = 0;
      u[17] = 0;
    } else {
      be16(f, b.l4 + 16, onesSum(pseudoHeader(ip, false, f.length - b.l4)));
    }
    be16le(pkt, 8, csumOff);
    const orig = pkt.slice();
    assert.equal(completeChecksum(pkt, 0, pkt.length), OFFLOAD_OK);
    assert.equal(pkt[0] & 1, 0, 'NEEDS_CSUM cleared');
    const l4 = f.subarray(b.l4);
    const pseudo = pseudoHeader(ip, false, l4.length);
    if (udp) pseudo[9] = 17;
    assert.ok(checksumOk([...pseudo, ...l4]), `udp=${udp} vlan=${vlan} len=${plen}: checksum verifies`);
    // only the checksum field and the flag changed
    for (let k = 0; k < pkt.length; k++) {
      if (k === 0 || k === HDR + b.l4 + csumOff || k === HDR + b.l4 + csumOff + 1) continue;
      assert.equal(pkt[k], orig[k], `byte ${k} changed`);
    }
  }
});

test('checksum completion at an offset inside a larger buffer, odd csum_start', () => {
  const frame = new Uint8Array(HDR + 14 + 41);
  for (let i = HDR; i < frame.length; i++) frame[i] = (i * 37) & 0xff;
  frame[0] = 1;
  be16le(frame, 6, 15); // csum_start odd
  be16le(frame, 8, 4);
  frame[HDR + 19] = 0;
  frame[HDR + 20] = 0;
  const big = new Uint8Array(frame.length + 10).fill(0xee);
  big.set(frame, 5);
  assert.equal(completeChecksum(big, 5, frame.length), OFFLOAD_OK);
  assert.ok(checksumOk(big.subarray(5 + HDR + 15, 5 + frame.length)));
  assert.equal(big[4], 0xee);
  assert.equal(big[5 + frame.length], 0xee);
});

test('what a header asks of a receiver', () => {
  const b = superFrame({ payload: 3000, mss: 1000 });
  assert.equal(offloadNeeds(b.pkt, 0), RX_CSUM | RX_TSO4);
  b.pkt[1] = 0x84;
  assert.equal(offloadNeeds(b.pkt, 0), RX_CSUM | RX_TSO6 | RX_ECN);
  b.pkt[0] = 0;
  b.pkt[1] = 0;
  assert.equal(offloadNeeds(b.pkt, 0), 0);
  b.pkt[1] = 3; // UDP GSO: nobody here takes it as is
  assert.equal(offloadNeeds(b.pkt, 0), RX_TSO4 | RX_TSO6);
});

test('hostile headers are rejected, never read or written out of bounds', () => {
  const info = newGsoInfo();
  const fresh = () => superFrame({ payload: 5000, mss: 1448 });
  const check = (mut: (p: Uint8Array) => Uint8Array | void, want: number, what: string, allowed = ALL) => {
    const b = fresh();
    const p = mut(b.pkt) ?? b.pkt;
    assert.equal(checkSenderHeader(p, 0, p.length, allowed, info), want, what);
  };
  check(() => {}, OFFLOAD_OK, 'the valid frame');
  check((p) => void (p[1] = 2), OFFLOAD_BAD_GSO_TYPE, 'gso_type 2 (unknown)');
  check((p) => void (p[1] = 3), OFFLOAD_BAD_GSO_TYPE, 'GSO_UDP (not offered)');
  check((p) => void (p[1] = 0x80), OFFLOAD_BAD_GSO_TYPE, 'ECN bit without a GSO type');
  check((p) => void (p[1] = 4), OFFLOAD_BAD_HEADERS, 'TCPV6 on an IPv4 frame');
  check((p) => be16le(p, 4, 0), OFFLOAD_BAD_GSO_SIZE, 'gso_size 0');
  check((p) => be16le(p, 6, p.length), OFFLOAD_BAD_CSUM, 'csum_start beyond the frame');
  check((p) => be16le(p, 8, 0xffff), OFFLOAD_BAD_CSUM, 'csum_offset beyond the frame');
  check((p) => be16le(p, 6, p.length - HDR - 17), OFFLOAD_BAD_CSUM, 'csum field one byte past the end');
  check(() => {}, OFFLOAD_BAD_GSO_TYPE, 'TSO from a sender without HOST_TSO4', RX_CSUM | RX_TSO6);
  check((p) => void (p[1] = 0x81), OFFLOAD_BAD_GSO_TYPE, 'ECN from a sender without HOST_ECN', RX_CSUM | RX_TSO4);
  check((p) => void (p[1] = 0), OFFLOAD_BAD_CSUM, 'NEEDS_CSUM from a sender without CSUM', RX_TSO4);
  check((p) => {
    p[0] = 0;
    p[HDR + 14] = 0x4f;
    return p.slice(0, HDR + 14 + 60 + 10);
  }, OFFLOAD_BAD_HEADERS, 'IHL 60, TCP header beyond the frame');
  check((p) => void (p[HDR + 14] = 0x44), OFFLOAD_BAD_HEADERS, 'IHL below 5');
  check((p) => void (p[HDR + 14 + 9] = 17), OFFLOAD_BAD_HEADERS, 'not TCP');
  check((p) => void (p[HDR + 14 + 6] = 0x20), OFFLOAD_BAD_HEADERS, 'a fragment (MF)');
  check((p) => void (p[HDR + 14 + 7] = 1), OFFLOAD_BAD_HEADERS, 'a fragment (offset)');
  check((p) => void (p[HDR + 34 + 12] = 0x40), OFFLOAD_BAD_HEADERS, 'TCP data offset below 5');
  check((p) => ((p[0] = 0), p.slice(0, HDR + 50)), OFFLOAD_BAD_HEADERS, 'truncated inside the TCP header');
  check((p) => p.slice(0, HDR + 54), OFFLOAD_BAD_HEADERS, 'no payload');
  check((p) => ((p[0] = 0), p.slice(0, HDR + 20)), OFFLOAD_BAD_HEADERS, 'truncated inside the IP header');
  check((p) => {
    be16(p, HDR + 12, 0x8100);
  }, OFFLOAD_BAD_HEADERS, 'VLAN tag in front of garbage');
  // IPv6 with an extension header (hop-by-hop) instead of TCP
  const v6 = superFrame({ v6: true, payload: 3000, mss: 1000 });
  v6.pkt[HDR + 14 + 6] = 0;
  assert.equal(checkSenderHeader(v6.pkt, 0, v6.pkt.length, ALL, info), OFFLOAD_BAD_HEADERS, 'IPv6 extension header');
  // double VLAN tag
  const q = superFrame({ vlan: true, payload: 3000, mss: 1000 });
  be16(q.pkt, HDR + 16, 0x8100);
  assert.equal(parseTcpGso(q.pkt, 0, q.pkt.length, info), OFFLOAD_BAD_HEADERS, 'two VLAN tags');
  // a len beyond the buffer is refused rather than read
  const b = fresh();
  assert.ok(parseTcpGso(b.pkt, 0, b.pkt.length + 1, info) < 0);
  assert.ok(completeChecksum(b.pkt, 1, b.pkt.length) < 0);
  // a segment index out of range writes nothing
  const n = parseTcpGso(b.pkt, 0, b.pkt.length, info);
  const out = new Uint8Array(2000).fill(9);
  assert.equal(writeTcpSegment(b.pkt, 0, b.pkt.length, info, n, out, 0), -1);
  assert.equal(writeTcpSegment(b.pkt, 0, b.pkt.length, info, -1, out, 0), -1);
  assert.equal(writeTcpSegment(b.pkt, 0, b.pkt.length, info, 0, out.subarray(0, 100), 0), -1, 'out too small');
  assert.ok(out.every((v) => v === 9));
});

test('fuzz: random header bytes and lengths never throw and never write outside out', () => {
  const r = rnd(12345);
  const info = newGsoInfo();
  const big = new Uint8Array(70000 + 64);
  let segmented = 0;
  for (let iter = 0; iter < 3000; iter++) {
    const b = superFrame({ v6: r() < 0.5, vlan: r() < 0.3, ipOpts: r() < 0.3 ? 8 : 0, payload: 1 + ((r() * 6000) | 0), mss: 1 + ((r() * 2000) | 0), seed: iter });
    const p = b.pkt;
    const flips = 1 + ((r() * 4) | 0);
    for (let k = 0; k < flips; k++) p[(r() * Math.min(p.length, HDR + 80)) | 0] = (r() * 256) | 0;
    const len = r() < 0.3 ? (r() * p.length) | 0 : p.length;
    const c = p.slice(0, Math.max(len, 0));
    completeChecksum(c, 0, c.length);
    checkSenderHeader(p, 0, len, ALL, info);
    const n = parseTcpGso(p, 0, len, info);
    if (n <= 0 || n > 300) continue;
    segmented++;
    for (let i = 0; i < n; i++) {
      const sl = segmentLength(info, i);
      assert.ok(sl > 0 && sl <= 65535 + 18 + HDR);
      big.fill(0x5a);
      const out = big.subarray(32, 32 + sl);
      assert.equal(writeTcpSegment(p, 0, len, info, i, out, 0), sl);
      assert.equal(big[31], 0x5a);
      assert.equal(big[32 + sl], 0x5a);
    }
  }
  assert.ok(segmented > 100, `some mutated frames still segment (${segmented})`);
});
