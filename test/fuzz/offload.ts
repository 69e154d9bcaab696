// Fuzz target for the offload fallback (packets from packets.ts, laid over several segments by
// offload-sink.ts's Placer):
//   offload   what a vhost-user port does for a receiver that did not negotiate an offload the frame
//             asks for (port.ts deliver(): offloadNeeds & ~rxOffload, then OffloadFallback into a
//             PacketSink), with half the frames first put through a TX ring's checks (tx.ts
//             checkOffload). Into a FuzzSink with bounded buffers. Properties: no exception; no
//             copy outside the buffers given, every copy accepted or refused as its range says,
//             the addon refuses nothing; results and counters agree (a drop counted once, before
//             any buffer is taken; every reserved packet written); packets ≤ the ring; each
//             packet plain (header 0) and a valid one: segments ≤ headers + gso_size with lengths,
//             ids, seq, flags and both checksums right by an independent ones-complement sum
//             (test/checksum.ts) and the payload put back together, a completed checksum equal to
//             the independent one; a well-formed super-frame and a checksum field inside the
//             frame are never dropped.
import { onesSum } from '../checksum';
import { copies } from '../../src/datapath/copy-list';
import { MAX_ETH_LEN, MAX_HEADERS } from '../../src/datapath/layout';
import { FALLBACK_DROPPED, OffloadFallback, type FallbackCounters } from '../../src/ports/offload-fallback';
import { MAX_CHAINS } from '../../src/virtio/chain';
import { VIRTIO_NET_HDR_F_NEEDS_CSUM } from '../../src/virtio/net-header';
import { checkSenderHeader, GSO_HDRS, newGsoInfo, OFFLOAD_OK, offloadNeeds, RX_CSUM, RX_ECN, RX_TSO4, RX_TSO6 } from '../../src/virtio/offload';
import { FuzzSink, Placer, RES_BAD, RES_BROKEN, RES_BUDGET, RES_OK, RES_SHORT, RES_TOO_BIG } from './offload-sink';
import { get16, getLe16, HDR, K_TCP4, K_TCP6, PacketGen, TCP } from './packets';
import { Rng } from './targets';

/** what a peer may negotiate, as netFeaturesUsable leaves it (virtio 5.1.3.1: TSO needs CSUM, ECN a TSO) */
const OFFLOAD_SETS = [
  0,
  RX_CSUM,
  RX_CSUM | RX_TSO4,
  RX_CSUM | RX_TSO6,
  RX_CSUM | RX_TSO4 | RX_TSO6,
  RX_CSUM | RX_TSO4 | RX_ECN,
  RX_CSUM | RX_TSO6 | RX_ECN,
  RX_CSUM | RX_TSO4 | RX_TSO6 | RX_ECN,
];

/** What the offload target's cases came to, over all runs (the fuzz report, the test's coverage checks). */
export const offloadStats = {
  cases: 0,
  /** refused by the TX ring's checks, never reaching a receiver */
  senderRefused: 0,
  /** the receiver takes the frame as it is: no fallback */
  plain: 0,
  segmented: 0,
  segments: 0,
  checksummed: 0,
  dropped: 0,
  /** the sink had no buffers, too small ones, a broken ring or no descriptor budget left */
  sinkFailed: 0,
  /** a buffer's copies were refused (RES_BAD) */
  refused: 0,
  maxCaseMs: 0,
};

function fold(s: number): number {
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

function get32(b: Uint8Array, o: number): number {
  return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
}

/** -1 when a[ao, +n) equals b[bo, +n), else the first differing index */
function differs(a: Uint8Array, ao: number, b: Uint8Array, bo: number, n: number): number {
  for (let i = 0; i < n; i++) if (a[ao + i] !== b[bo + i]) return i;
  return -1;
}

type Fail = (why: string) => never;

/**
 * The packets in sink are the segments of the super-frame ref[HDR, +eth) (gso_size mss), checked
 * from the frame's own headers, not from what the offload code parsed.
 */
function verifySegments(sink: FuzzSink, ref: Uint8Array, eth: number, fail: Fail): number {
  const E = HDR;
  const base = ref[1] & 0x7f;
  const mss = getLe16(ref, 4);
  const v6 = base === 4;
  if (base !== 1 && !v6) fail(`segmented a frame of gso_type ${ref[1]}`);
  let l3 = 14;
  let t = get16(ref, E + 12);
  if (t === 0x8100 || t === 0x88a8) {
    l3 = 18;
    t = get16(ref, E + 16);
  }
  if (t !== (v6 ? 0x86dd : 0x0800) || l3 + (v6 ? 40 : 20) > eth || ref[E + l3] >> 4 !== (v6 ? 6 : 4)) fail(`segmented a frame that is not ${v6 ? 'IPv6' : 'IPv4'} behind at most one tag`);
  const l4 = v6 ? l3 + 40 : l3 + (ref[E + l3] & 15) * 4;
  if (l4 - l3 < 20 || (v6 ? ref[E + l3 + 6] : ref[E + l3 + 9]) !== TCP) fail('segmented a frame that is not TCP (or has an IHL below 5)');
  if (!v6 && (get16(ref, E + l3 + 6) & 0x3fff) !== 0) fail('segmented an IPv4 fragment');
  if (l4 + 20 > eth) fail('segmented a frame whose TCP header passes its end');
  const hdrs = l4 + (ref[E + l4 + 12] >> 4) * 4;
  if (hdrs < l4 + 20 || hdrs >= eth) fail(`segmented a frame with data offset ${hdrs - l4} and ${eth - hdrs} payload bytes`);
  if (hdrs > MAX_HEADERS) fail(`headers of ${hdrs} bytes, beyond MAX_HEADERS`);
  const plen = eth - hdrs;
  const n = Math.ceil(plen / mss);
  if (sink.packets !== n) fail(`${sink.packets} segments of a ${plen}-byte payload with gso_size ${mss} (${n})`);
  if (n > sink.maxPackets || n > MAX_CHAINS) fail(`${n} segments for a ring of ${sink.maxPackets}`);
  const seq0 = get32(ref, E + l4 + 4);
  const flags0 = ref[E + l4 + 13];
  for (let i = 0; i < n; i++) {
    if (sink.hostile[i] !== 0) continue;
    const at = (what: string, d = -1): never => fail(`segment ${i}/${n}: ${what}${d >= 0 ? ` (byte ${d})` : ''}`);
    const P = sink.packet(i);
    const L = P.length;
    const seg = Math.min(mss, plen - i * mss);
    if (L !== hdrs + seg || L > hdrs + mss) at(`${L} bytes, ${hdrs} + ${seg} expected`);
    if (sink.header(i).some((v) => v !== 0)) at('virtio-net header not all zero (flags 0, GSO_NONE)');
    let d = differs(P, 0, ref, E, l3);
    if (d >= 0) at('Ethernet header changed', d);
    if (!v6) {
      if (P[l3] !== ref[E + l3] || P[l3 + 1] !== ref[E + l3 + 1]) at('IPv4 version/IHL/TOS changed');
      if (get16(P, l3 + 2) !== L - l3) at(`IPv4 total length ${get16(P, l3 + 2)}, ${L - l3} expected`);
      if (get16(P, l3 + 4) !== ((get16(ref, E + l3 + 4) + i) & 0xffff)) at('IPv4 id not the first + i');
      if (differs(P, l3 + 6, ref, E + l3 + 6, 4) >= 0 || differs(P, l3 + 12, ref, E + l3 + 12, l4 - l3 - 12) >= 0) at('IPv4 flags/TTL/protocol/addresses/options changed');
      if (onesSum(P.subarray(l3, l4)) !== 0xffff) at('IPv4 header checksum does not verify');
    } else {
      if (differs(P, l3, ref, E + l3, 4) >= 0 || differs(P, l3 + 6, ref, E + l3 + 6, 34) >= 0) at('IPv6 header changed beyond its payload length');
      if (get16(P, l3 + 4) !== L - l3 - 40) at(`IPv6 payload length ${get16(P, l3 + 4)}, ${L - l3 - 40} expected`);
    }
    if (differs(P, l4, ref, E + l4, 4) >= 0) at('TCP ports changed');
    if (get32(P, l4 + 4) !== ((seq0 + i * mss) >>> 0)) at('TCP seq not the first + i * gso_size');
    if (differs(P, l4 + 8, ref, E + l4 + 8, 5) >= 0) at('TCP ack or data offset changed');
    let want = flags0;
    if (i < n - 1) want &= ~0x09; // FIN, PSH only on the last
    if (i > 0) want &= ~0x80; // CWR only on the first
    if (P[l4 + 13] !== want) at(`TCP flags ${P[l4 + 13].toString(16)}, ${want.toString(16)} expected`);
    if (differs(P, l4 + 14, ref, E + l4 + 14, 2) >= 0 || differs(P, l4 + 18, ref, E + l4 + 18, hdrs - l4 - 18) >= 0) at('TCP window/urgent/options changed');
    const pseudo = onesSum(v6 ? P.subarray(l3 + 8, l3 + 40) : P.subarray(l3 + 12, l3 + 20)) + TCP + (L - l4);
    if (fold(pseudo + onesSum(P.subarray(l4, L))) !== 0xffff) at('TCP checksum does not verify');
    d = differs(P, hdrs, ref, E + hdrs + i * mss, seg);
    if (d >= 0) at('payload is not the super-frame\'s', d);
  }
  return n;
}

/** The one packet in sink is ref[HDR, +eth) with its partial checksum completed, by onesSum. */
function verifyChecksum(sink: FuzzSink, ref: Uint8Array, eth: number, fail: Fail): void {
  const start = getLe16(ref, 6);
  const field = start + getLe16(ref, 8);
  if (field + 2 > eth) fail(`completed a checksum field at ${field} of a ${eth}-byte frame`);
  if (sink.packets !== 1) fail(`checksum completion made ${sink.packets} packets`);
  if (sink.hostile[0] !== 0) return;
  const P = sink.packet(0);
  if (P.length !== eth) fail(`checksummed packet of ${P.length} bytes from a ${eth}-byte frame`);
  if (sink.header(0).some((v) => v !== 0)) fail('checksummed packet: virtio-net header not all zero');
  const d = Math.max(differs(P, 0, ref, HDR, field), differs(P, field + 2, ref, HDR + field + 2, eth - field - 2));
  if (d >= 0) fail('checksummed packet: a byte other than the checksum field changed');
  const c = ~onesSum(ref.subarray(HDR + start, HDR + eth)) & 0xffff;
  const want = c === 0 ? 0xffff : c;
  if (get16(P, field) !== want) fail(`checksum ${get16(P, field).toString(16)} at ${field} (start ${start}), ${want.toString(16)} expected`);
}

/** why the fallback must segment this frame (null: it may refuse it) */
function mustSegment(gen: PacketGen, sink: FuzzSink): string | null {
  const b = gen.buf;
  const base = b[1] & 0x7f;
  const mss = getLe16(b, 4);
  if (gen.mutated || gen.vlans > 1 || gen.fragment || gen.ext || mss === 0 || gen.len > HDR + MAX_ETH_LEN) return null;
  if (!((gen.kind === K_TCP4 && base === 1) || (gen.kind === K_TCP6 && base === 4))) return null;
  const plen = gen.ethLen - gen.hdrs;
  if (plen <= 0) return null;
  const n = Math.ceil(plen / mss);
  if (n > sink.maxPackets || n > MAX_CHAINS) return null;
  const first = Math.min(plen, mss);
  if ((base === 1 ? gen.hdrs - gen.l3 : gen.hdrs - gen.l4) + first > 0xffff) return null;
  return `a well-formed ${base === 1 ? 'IPv4' : 'IPv6'} TCP super-frame of ${n} segments (vlans ${gen.vlans}, ring ${sink.maxPackets})`;
}

/**
 * What a vhost-user TX ring does to a frame before anyone sees it (tx.ts): lengths checked,
 * DATA_VALID and num_buffers cleared, the header checked against what the sender negotiated,
 * hdr_len set to the headers as they are. False: the sender's port drops it.
 */
function senderChecks(b: Uint8Array, len: number, txOffload: number, head: Uint8Array, info: Int32Array): boolean {
  const eth = len - HDR;
  if (eth < 14 || eth > MAX_ETH_LEN) return false;
  b[10] = 0;
  b[11] = 0;
  b[0] &= VIRTIO_NET_HDR_F_NEEDS_CSUM;
  if ((b[0] | b[1]) === 0) return true;
  head.set(b.subarray(0, HDR + Math.min(eth, MAX_HEADERS)));
  if (checkSenderHeader(head, 0, len, txOffload, info) !== OFFLOAD_OK) return false;
  if (b[1] !== 0) {
    b[2] = info[GSO_HDRS] & 0xff;
    b[3] = info[GSO_HDRS] >>> 8;
  }
  return true;
}

/** deliver()'s result r against what the sink saw and the counters moved (dc checksummed, ds segmented, dd dropped). */
function judge(r: number, dc: number, ds: number, dd: number, gen: PacketGen, sink: FuzzSink, need: number, fail: Fail): void {
  const st = offloadStats;
  const b = gen.buf;
  const eth = gen.ethLen;
  const gso = b[1];
  if (r === FALLBACK_DROPPED) {
    if (dd !== 1 || dc !== 0 || ds !== 0) fail(`dropped, counters moved by checksummed ${dc}, segmented ${ds}, dropped ${dd}`);
    if (sink.begins !== 0) fail('dropped after it took the receiver\'s buffers');
    const field = getLe16(b, 6) + getLe16(b, 8);
    if (gso !== 0) {
      const why = mustSegment(gen, sink);
      if (why !== null) fail(`dropped ${why}`);
    } else if (field + 2 <= eth) {
      fail(`dropped a frame whose checksum field (${field}) lies inside it (${eth} bytes)`);
    }
    st.dropped++;
    return;
  }
  if (dd !== 0) fail(`result ${r}, yet counted as dropped`);
  if (r === RES_SHORT || r === RES_TOO_BIG || r === RES_BROKEN || r === RES_BUDGET) {
    if (r !== sink.lastFailure) fail(`result ${r}, the sink said ${sink.lastFailure}`);
    if (sink.writes !== 0) fail(`${sink.writes} packets written into a reservation that failed`);
    if (dc !== 0 || ds !== 0) fail('a failed reservation counted as delivered');
    st.sinkFailed++;
    return;
  }
  if (r !== RES_OK && r !== RES_BAD) fail(`result ${r}`);
  if (sink.writes !== sink.packets) fail(`${sink.packets} packets reserved, ${sink.writes} written (a buffer lost)`);
  if (r === RES_BAD) {
    if (sink.refusedWrites === 0) fail('RES_BAD, yet every write was taken');
    if (dc !== 0 || ds !== 0) fail('a refused packet counted as delivered');
    st.refused++;
  } else if (sink.refusedWrites !== 0) {
    fail('RES_OK after a refused write');
  }
  // the receiver lacks an offload the frame asks for: a GSO frame must come out as segments
  if (gso !== 0) {
    if (r === RES_OK && ds !== 1) {
      fail(`a GSO frame (gso_type 0x${gso.toString(16)}, ${eth} bytes, gso_size ${getLe16(b, 4)}) for a receiver lacking 0x${need.toString(16)} went out ${dc === 1 ? 'whole, as one plain packet with its checksum completed' : 'uncounted'}`);
    }
    st.segments += verifySegments(sink, b, eth, fail);
    if (r === RES_OK) st.segmented++;
  } else {
    if (r === RES_OK && dc !== 1) fail('checksum completed, not counted');
    verifyChecksum(sink, b, eth, fail);
    if (r === RES_OK) st.checksummed++;
  }
}

/** Offload fallback cases; throws on the first violation. Returns the number of cases. */
export function fuzzOffload(seed: number, cases: number): number {
  const rng = new Rng(seed);
  const gen = new PacketGen(rng);
  const placer = new Placer(rng);
  const sink = new FuzzSink(rng);
  const counters: FallbackCounters = { rxChecksummed: 0, rxSegmented: 0, rxOffloadDropped: 0 };
  const fallback = new OffloadFallback(counters);
  const head = new Uint8Array(HDR + MAX_ETH_LEN);
  const info = newGsoInfo();
  const refused = copies.copiesRefused;
  const st = offloadStats;
  try {
    for (let c = 0; c < cases; c++) {
      const t0 = performance.now();
      st.cases++;
      const fail: Fail = (why) => {
        throw new Error(`offload: seed ${seed} case ${c}: ${why}`);
      };
      gen.next();
      // half the frames as a vhost-user TX ring passes them on, half as they were made (hostile)
      if (rng.chance(0.5)) {
        const txOffload = rng.chance(0.6) ? OFFLOAD_SETS[OFFLOAD_SETS.length - 1] : rng.pick(OFFLOAD_SETS);
        if (!senderChecks(gen.buf, gen.len, txOffload, head, info)) {
          st.senderRefused++;
          continue;
        }
      }
      const frame = placer.place(gen.buf, gen.len);
      // as port.ts deliver(); mostly a receiver that lacks something (no offloads, VXLAN: rxOffload 0)
      let need = offloadNeeds(frame.hdr, frame.hdrOff) & ~rng.pick(OFFLOAD_SETS);
      if (need === 0 && rng.chance(0.7)) need = offloadNeeds(frame.hdr, frame.hdrOff);
      if (need === 0) {
        st.plain++;
        continue;
      }
      sink.setup(frame, gen.buf, HDR);
      const c0 = counters.rxChecksummed;
      const s0 = counters.rxSegmented;
      const d0 = counters.rxOffloadDropped;
      let r = 0;
      try {
        r = fallback.deliver(sink, frame, need);
      } catch (e) {
        const err = e as Error;
        fail(err.message.startsWith('sink: ') ? err.message : `deliver() threw: ${err.stack ?? String(e)}`);
      }
      copies.run();
      if (copies.copiesRefused !== refused) fail('the addon refused copies the TypeScript checks let through');
      sink.check();
      judge(r, counters.rxChecksummed - c0, counters.rxSegmented - s0, counters.rxOffloadDropped - d0, gen, sink, need, fail);
      const ms = performance.now() - t0;
      if (ms > st.maxCaseMs) st.maxCaseMs = ms;
    }
  } finally {
    placer.close();
    sink.close();
  }
  return cases;
}
