// Structure-aware packets for the offload and flow-hash fuzz targets (offload.ts): a virtio-net
// header with valid, boundary and hostile values over an Ethernet frame built from real headers —
// 0 to 3 VLAN tags (802.1Q, 802.1ad), IPv4 with options and fragments, IPv6 with extension
// headers, TCP with options, UDP, UDP-Lite, SCTP, other protocols and ethertypes — whose length
// fields may disagree with the buffer, then sometimes mutated (truncated, bad IHL or version,
// bad data offset, flipped header bytes, garbage appended).
//
// The generator says what it built (offsets, kind, whether a mutation touched it), so that a
// target can tell a frame that must be segmented or hashed by its 5-tuple from one that may be
// refused.
import { onesSum } from '../checksum';
import type { Rng } from './targets';
import { MAX_ETH_LEN } from '../../src/datapath/layout';

export const HDR = 12;

export const K_TCP4 = 0;
export const K_TCP6 = 1;
export const K_UDP4 = 2;
export const K_UDP6 = 3;
/** IPv4 with a protocol other than TCP/UDP (ICMP, GRE, SCTP, UDP-Lite, anything) */
export const K_IP4 = 4;
/** IPv6 whose next header is not TCP/UDP (SCTP, UDP-Lite, ICMPv6, no next header) */
export const K_IP6 = 5;
/** neither IPv4 nor IPv6 (ARP, LLDP, MPLS, a random ethertype) */
export const K_OTHER = 6;
const KINDS = [K_TCP4, K_TCP4, K_TCP4, K_TCP4, K_TCP6, K_TCP6, K_TCP6, K_UDP4, K_UDP4, K_UDP6, K_IP4, K_IP6, K_OTHER];

const NON_IP_TYPES = [0x0806, 0x88cc, 0x8847, 0x22f0, 0x9000];
const EXT_HEADERS = [0, 43, 60, 44]; // hop-by-hop (first only), routing, destination options, fragment

export const TCP = 6;
export const UDP = 17;
export const SCTP = 132;
export const UDPLITE = 136;

export function put16(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 8) & 0xff;
  b[o + 1] = v & 0xff;
}

export function get16(b: Uint8Array, o: number): number {
  return (b[o] << 8) | b[o + 1];
}

function putLe16(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
}

export function getLe16(b: Uint8Array, o: number): number {
  return b[o] | (b[o + 1] << 8);
}

/** One generated packet in engine format at buf[0, len); offsets are from the Ethernet frame's start. */
export class PacketGen {
  /** room for the largest engine frame and some garbage beyond it */
  readonly buf = new Uint8Array(HDR + MAX_ETH_LEN + 256);
  len = 0;
  kind = K_OTHER;
  vlans = 0;
  /** the IP header (or a non-IP payload) */
  l3 = 14;
  /** the L4 header: l3 + the IPv4 header length, or l3 + 40 + extension headers; 0 for K_OTHER */
  l4 = 0;
  /** the end of the L4 header (the headers a TSO segment repeats) */
  hdrs = 0;
  /** protocol number in the IP header (the first extension header's for IPv6 with any) */
  proto = -1;
  /** the transport protocol built at l4 */
  l4proto = -1;
  /** IPv4 fragment (MF or an offset) */
  fragment = false;
  /** IPv6 with extension headers */
  ext = false;
  /** the L4 checksum field (Ethernet offset), -1 when the protocol has none the offload does */
  csumField = -1;
  /** a mutation touched the frame after it was built: its headers may be anything */
  mutated = false;

  constructor(private readonly rng: Rng) {}

  get ethLen(): number {
    return this.len - HDR;
  }

  /** Builds the next packet (header and frame). */
  next(): void {
    const rng = this.rng;
    const b = this.buf;
    const e = HDR;
    this.mutated = false;
    this.fragment = false;
    this.ext = false;
    this.csumField = -1;
    this.proto = -1;
    this.l4proto = -1;
    for (let i = 0; i < 12; i++) b[e + i] = rng.below(256);
    if (rng.chance(0.1)) b.fill(0xff, e, e + 6);
    this.vlans = rng.pick([0, 0, 0, 0, 0, 1, 1, 1, 2, 3]);
    let o = 12;
    for (let v = 0; v < this.vlans; v++) {
      const outer = v === 0 && this.vlans > 1;
      put16(b, e + o, outer && rng.chance(0.7) ? 0x88a8 : rng.chance(0.85) ? 0x8100 : 0x88a8);
      put16(b, e + o + 2, rng.below(65536));
      o += 4;
    }
    const kind = rng.pick(KINDS);
    this.kind = kind;
    this.l3 = o + 2;
    let end: number;
    if (kind === K_OTHER) {
      let t = rng.pick(NON_IP_TYPES);
      if (rng.chance(0.3)) {
        t = rng.below(65536);
        if (t === 0x0800 || t === 0x86dd || t === 0x8100 || t === 0x88a8) t = 0x0806;
      }
      put16(b, e + o, t);
      this.l4 = 0;
      end = this.l3;
    } else if (kind === K_TCP4 || kind === K_UDP4 || kind === K_IP4) {
      put16(b, e + o, 0x0800);
      end = this.ipv4(kind);
    } else {
      put16(b, e + o, 0x86dd);
      end = this.ipv6(kind);
    }
    this.hdrs = end;
    const plen = this.payloadLength(end);
    for (let i = end; i < end + plen; i += 4) {
      const w = rng.u32();
      b[e + i] = w;
      b[e + i + 1] = w >>> 8;
      b[e + i + 2] = w >>> 16;
      b[e + i + 3] = w >>> 24;
    }
    this.len = HDR + end + plen;
    this.lengths();
    this.header();
    if (rng.chance(0.3)) this.mutate();
  }

  private ipv4(kind: number): number {
    const rng = this.rng;
    const b = this.buf;
    const p = HDR + this.l3;
    const ihl = 5 + (rng.chance(0.25) ? 1 + rng.below(10) : 0);
    b[p] = 0x40 | ihl;
    b[p + 1] = rng.below(256);
    put16(b, p + 4, rng.below(65536));
    let frag = rng.chance(0.7) ? 0x4000 : 0;
    if (rng.chance(0.1)) {
      frag = rng.pick([0x2000, 0x2000 | (1 + rng.below(0x1fff)), 1 + rng.below(0x1fff)]);
      this.fragment = true;
    }
    put16(b, p + 6, frag);
    b[p + 8] = 1 + rng.below(255);
    const proto = kind === K_TCP4 ? TCP : kind === K_UDP4 ? UDP : rng.pick([1, 47, SCTP, UDPLITE, 50, rng.below(256)]);
    b[p + 9] = proto;
    this.proto = proto;
    for (let i = 12; i < 20; i++) b[p + i] = rng.below(256);
    const opts = rng.chance(0.3);
    for (let i = 20; i < ihl * 4; i++) b[p + i] = opts ? rng.below(256) : 1; // NOPs or anything
    this.l4 = this.l3 + ihl * 4;
    return this.transport(proto);
  }

  private ipv6(kind: number): number {
    const rng = this.rng;
    const b = this.buf;
    const p = HDR + this.l3;
    b[p] = 0x60 | rng.below(16);
    b[p + 1] = rng.below(256);
    b[p + 2] = rng.below(256);
    b[p + 3] = rng.below(256);
    b[p + 7] = rng.below(256);
    for (let i = 8; i < 40; i++) b[p + i] = rng.below(256);
    const proto = kind === K_TCP6 ? TCP : kind === K_UDP6 ? UDP : rng.pick([SCTP, UDPLITE, 58, 59, rng.below(256)]);
    let at = this.l3 + 40;
    let nextAt = p + 6;
    if (rng.chance(kind === K_IP6 ? 0.4 : 0.12)) {
      this.ext = true;
      const n = 1 + rng.below(3);
      for (let k = 0; k < n; k++) {
        const t = k === 0 ? rng.pick(EXT_HEADERS) : rng.pick(EXT_HEADERS.slice(1));
        b[nextAt] = t;
        const q = HDR + at;
        const size = t === 44 ? 8 : 8 * (1 + rng.below(4));
        for (let i = 0; i < size; i++) b[q + i] = rng.below(256);
        if (t === 44) b[q + 1] = 0;
        else b[q + 1] = size / 8 - 1;
        nextAt = q;
        at += size;
      }
    }
    b[nextAt] = proto;
    // flowHash sees the first next header; the L4 header (if any) follows the extension headers
    this.proto = b[p + 6];
    this.l4 = at;
    return this.transport(proto);
  }

  /** Writes the L4 header at l4; returns its end. */
  private transport(proto: number): number {
    this.l4proto = proto;
    const rng = this.rng;
    const b = this.buf;
    const t = HDR + this.l4;
    if (proto === TCP) {
      put16(b, t, rng.chance(0.3) ? rng.pick([22, 80, 443, 5201]) : rng.below(65536));
      put16(b, t + 2, rng.below(65536));
      for (let i = 4; i < 12; i++) b[t + i] = rng.below(256);
      const doff = 5 + (rng.chance(0.4) ? 1 + rng.below(10) : 0);
      b[t + 12] = (doff << 4) | (rng.chance(0.1) ? rng.below(16) : 0);
      b[t + 13] = rng.chance(0.7) ? 0x10 | (rng.below(256) & rng.below(256)) : rng.below(256);
      put16(b, t + 14, rng.below(65536));
      put16(b, t + 18, rng.chance(0.9) ? 0 : rng.below(65536));
      for (let i = 20; i < doff * 4; i++) b[t + i] = rng.chance(0.5) ? 1 : rng.below(256);
      this.csumField = this.l4 + 16;
      return this.l4 + doff * 4;
    }
    if (proto === UDP || proto === UDPLITE || proto === SCTP) {
      const n = proto === SCTP ? 12 : 8;
      for (let i = 0; i < n; i++) b[t + i] = rng.below(256);
      if (proto !== SCTP) this.csumField = this.l4 + 6;
      return this.l4 + n;
    }
    return this.l4;
  }

  private payloadLength(end: number): number {
    const rng = this.rng;
    const cap = MAX_ETH_LEN - end;
    const r = rng.below(100);
    let n: number;
    if (r < 5) n = 0;
    else if (r < 20) n = 1 + rng.below(63);
    else if (r < 50) n = rng.below(1501);
    else if (r < 65) n = 1448 * (1 + rng.below(8)) + rng.below(7) - 3;
    else if (r < 85) n = rng.below(9001);
    else if (r < 95) n = rng.below(cap + 1);
    else if (r < 98) n = cap;
    else n = cap + 1 + rng.below(100); // beyond the largest frame taken from anyone
    return n < 0 ? 0 : n;
  }

  /** IP and UDP length fields (right, or not), IPv4 header checksum, L4 pseudo-header seed. */
  private lengths(): void {
    const rng = this.rng;
    const b = this.buf;
    const e = HDR;
    const eth = this.ethLen;
    const lie = (right: number): number => (rng.chance(0.9) ? right & 0xffff : rng.pick([0, right + 1, right - 1, rng.below(65536)]) & 0xffff);
    const p = e + this.l3;
    let l4len = eth - this.l4;
    if (this.kind === K_OTHER) return;
    if (this.kind === K_TCP4 || this.kind === K_UDP4 || this.kind === K_IP4) {
      put16(b, p + 2, lie(eth - this.l3));
      b[p + 10] = 0;
      b[p + 11] = 0;
      const ihl = (b[p] & 0x0f) * 4;
      put16(b, p + 10, rng.chance(0.95) ? ~onesSum(b.subarray(p, p + ihl)) & 0xffff : rng.below(65536));
    } else {
      put16(b, p + 4, lie(eth - this.l3 - 40));
    }
    if (this.csumField < 0) return;
    if (this.kind === K_UDP4 || this.kind === K_UDP6) put16(b, e + this.l4 + 4, lie(l4len));
    // the seed a sender leaves with NEEDS_CSUM: the folded pseudo-header sum (length 0 or the real one)
    if (rng.chance(0.2)) l4len = 0;
    const proto = this.l4proto;
    const v4 = this.kind === K_TCP4 || this.kind === K_UDP4 || this.kind === K_IP4;
    const a = v4 ? b.subarray(p + 12, p + 20) : b.subarray(p + 8, p + 40);
    const pseudo = [...a, 0, proto, (l4len >>> 8) & 0xff, l4len & 0xff];
    if (!v4) pseudo.push(0, 0, 0, 0); // (order does not matter to a ones-complement sum)
    if (!v4 && l4len > 0xffff) pseudo.push(l4len >>> 24, (l4len >>> 16) & 0xff);
    put16(b, e + this.csumField, rng.chance(0.95) ? onesSum(pseudo) : rng.below(65536));
  }

  /** The virtio-net header: mostly what a sender would write, sometimes boundary or hostile values. */
  private header(): void {
    const rng = this.rng;
    const b = this.buf;
    const eth = this.ethLen;
    const tcp4 = this.kind === K_TCP4;
    const tcp6 = this.kind === K_TCP6;
    b[0] = rng.chance(0.75) ? 1 : rng.pick([0, 2, 3, rng.below(256)]);
    let gso = 0;
    if ((tcp4 || tcp6) && rng.chance(0.6)) gso = tcp4 ? 1 : 4;
    if (rng.chance(0.08)) gso = rng.pick([3, 1, 4, 0x80, 2, 5, rng.below(256)]);
    if ((gso === 1 || gso === 4) && rng.chance(0.3)) gso |= 0x80;
    b[1] = gso;
    const hdrs = this.hdrs;
    putLe16(b, 2, rng.chance(0.75) ? hdrs : rng.pick([0, rng.below(65536), eth, 0xffff, hdrs + 1, hdrs - 1]));
    const plen = eth - hdrs;
    let mss: number;
    if (gso !== 0) {
      const n = rng.pick([1, 2, 3, 17, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1023, 1024, 1025]);
      mss = rng.chance(0.5)
        ? rng.pick([1448, 1460, 1428, 1440, 536, 8948])
        : rng.pick([Math.ceil(plen / n), Math.ceil(plen / n), 1, 2, plen, plen - 1, plen + 1, 0, 0xffff, rng.below(65536)]);
    } else {
      mss = rng.chance(0.8) ? 0 : rng.below(65536);
    }
    putLe16(b, 4, mss);
    const l4 = this.l4 > 0 ? this.l4 : this.l3;
    const start = rng.chance(0.8) ? l4 : rng.pick([0, 1, rng.below(eth + 1), eth - 2, eth - 1, eth, 0xffff, l4 + 1]);
    putLe16(b, 6, start);
    const natural = this.csumField >= 0 ? this.csumField - l4 : 16;
    putLe16(b, 8, rng.chance(0.8) ? natural : rng.pick([0, 1, rng.below(64), 0xffff, eth - start - 2, eth - start - 1]));
    putLe16(b, 10, rng.below(65536));
  }

  private mutate(): void {
    const rng = this.rng;
    const b = this.buf;
    const e = HDR;
    this.mutated = true;
    const n = 1 + rng.below(2);
    for (let k = 0; k < n; k++) {
      const eth = this.ethLen;
      switch (rng.below(6)) {
        case 0: // truncated anywhere, or just inside its end
          this.len = HDR + (rng.chance(0.5) ? 1 + rng.below(eth) : Math.max(1, eth - 1 - rng.below(8)));
          break;
        case 1: // IHL (IPv4) or the version nibble
          if (this.kind === K_TCP4 || this.kind === K_UDP4 || this.kind === K_IP4) b[e + this.l3] = (b[e + this.l3] & 0xf0) | rng.below(16);
          else b[e + this.l3] = (rng.below(16) << 4) | (b[e + this.l3] & 0x0f);
          break;
        case 2: // TCP data offset
          if (this.l4 > 0) b[e + this.l4 + 12] = (rng.below(16) << 4) | (b[e + this.l4 + 12] & 0x0f);
          break;
        case 3: { // garbage after the datagram: the frame is longer than its IP lengths say
          const more = 1 + rng.below(64);
          if (this.len + more <= b.length) {
            for (let i = 0; i < more; i++) b[this.len + i] = rng.below(256);
            this.len += more;
          }
          break;
        }
        default: { // bytes of the headers
          const span = Math.min(eth, this.hdrs + 8);
          for (let f = 1 + rng.below(4); f > 0; f--) b[e + rng.below(span)] = rng.below(256);
        }
      }
    }
  }
}
