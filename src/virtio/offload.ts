// Checksum and TCP segmentation offloads done in software, for a destination that did not negotiate
// them (virtio 1.x 5.1.6.2 / 5.1.6.4). Everything works on engine frames: buf[off, off+len) is a
// 12-byte virtio_net_hdr_v1 followed by the Ethernet frame. Offsets named "rel" below are relative to
// the Ethernet frame (as csum_start is).
//
// Pure and allocation-free: results go into caller-owned typed arrays. Every length is checked
// against len before it is used — the header and the frame come from a guest.
import { ENGINE_HDR_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP } from '../datapath/layout';
import { copyBytes } from '../datapath/copy';
import { VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6 } from './net-header';

/** gso_type bit: the TCP stream uses ECN, CWR may be set on the super-frame (NET_F_HOST_ECN / GUEST_ECN) */
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;

// virtio_net_hdr field offsets (defined once, in datapath/layout.ts)
import { HDR_CSUM_OFFSET, HDR_CSUM_START, HDR_FLAGS, HDR_GSO_SIZE, HDR_GSO_TYPE, HDR_HDR_LEN } from '../datapath/layout';
export { HDR_CSUM_OFFSET, HDR_CSUM_START, HDR_FLAGS, HDR_GSO_SIZE, HDR_GSO_TYPE, HDR_HDR_LEN };

// error results (negative); segment counts and OFFLOAD_OK are >= 0
export const OFFLOAD_OK = 0;
export const OFFLOAD_BAD_GSO_TYPE = -1;
export const OFFLOAD_BAD_GSO_SIZE = -2;
export const OFFLOAD_BAD_CSUM = -3;
/** not Ethernet [+ one VLAN tag] + IPv4 (options ok, no fragment) / IPv6 (no extension header) + TCP, or lengths beyond the frame */
export const OFFLOAD_BAD_HEADERS = -4;
export const OFFLOAD_BAD_ARGS = -5;

// GsoInfo slots, filled by parseTcpGso
export const GSO_L3 = 0;
export const GSO_L4 = 1;
/** end of the TCP header = length of the headers copied into every segment */
export const GSO_HDRS = 2;
export const GSO_MSS = 3;
export const GSO_PAYLOAD = 4;
export const GSO_SEGMENTS = 5;
export const GSO_IPV6 = 6;
export const GSO_INFO_LEN = 8;

export function newGsoInfo(): Int32Array {
  return new Int32Array(GSO_INFO_LEN);
}

const TCP_FIN = 0x01;
const TCP_PSH = 0x08;
const TCP_CWR = 0x80;

function le16(b: Uint8Array, o: number): number {
  return b[o] | (b[o + 1] << 8);
}

function be16(b: Uint8Array, o: number): number {
  return (b[o] << 8) | b[o + 1];
}

function putBe16(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 8) & 0xff;
  b[o + 1] = v & 0xff;
}

/**
 * One's-complement sum of b[start, end) as big-endian 16-bit words (an odd last byte padded with
 * zero), added to s, folded to at most 17 bits so calls can be chained without overflow.
 */
export function sum16(b: Uint8Array, start: number, end: number, s: number): number {
  let i = start;
  // 8 bytes per turn: at most 65536 bytes per call keeps s far below 2^32
  for (const e8 = end - 7; i < e8; i += 8) {
    s += ((b[i] << 8) | b[i + 1]) + ((b[i + 2] << 8) | b[i + 3]) + ((b[i + 4] << 8) | b[i + 5]) + ((b[i + 6] << 8) | b[i + 7]);
  }
  for (const e2 = end - 1; i < e2; i += 2) s += (b[i] << 8) | b[i + 1];
  if (i < end) s += b[i] << 8;
  return (s & 0xffff) + (s >>> 16);
}

/** Folds a sum16 result to 16 bits and complements it: the value stored in a checksum field. */
export function foldComplement(s: number): number {
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

function validRange(buf: Uint8Array, off: number, len: number): boolean {
  return off >= 0 && len >= ENGINE_HDR_LEN + 14 && off + len <= buf.length;
}

/**
 * NEEDS_CSUM: the sender left the checksum partial (the field holds the pseudo-header sum). Sums
 * from csum_start to the end of the frame, stores the result at csum_start + csum_offset and clears
 * the flag, in place. Returns OFFLOAD_OK or OFFLOAD_BAD_CSUM (csum field beyond the frame).
 */
export function completeChecksum(buf: Uint8Array, off: number, len: number): number {
  if (!validRange(buf, off, len)) return OFFLOAD_BAD_ARGS;
  const start = le16(buf, off + HDR_CSUM_START);
  const field = start + le16(buf, off + HDR_CSUM_OFFSET);
  const e = off + ENGINE_HDR_LEN;
  if (field + 2 > len - ENGINE_HDR_LEN) return OFFLOAD_BAD_CSUM;
  let c = foldComplement(sum16(buf, e + start, off + len, 0));
  // as Linux's skb_checksum_help: a computed 0 goes out as 0xffff (UDP reads 0 as "no checksum")
  if (c === 0) c = 0xffff;
  putBe16(buf, e + field, c);
  buf[off + HDR_FLAGS] &= ~VIRTIO_NET_HDR_F_NEEDS_CSUM;
  return OFFLOAD_OK;
}

/**
 * Parses a GSO_TCPV4/TCPV6 super-frame (ECN bit allowed) from its headers — hdr_len is not trusted —
 * into info. Returns the number of segments (>= 1) or a negative OFFLOAD_BAD_*.
 */
export function parseTcpGso(buf: Uint8Array, off: number, len: number, info: Int32Array): number {
  if (!validRange(buf, off, len) || info.length < GSO_INFO_LEN) return OFFLOAD_BAD_ARGS;
  const type = buf[off + HDR_GSO_TYPE] & ~VIRTIO_NET_HDR_GSO_ECN;
  if (type !== VIRTIO_NET_HDR_GSO_TCPV4 && type !== VIRTIO_NET_HDR_GSO_TCPV6) return OFFLOAD_BAD_GSO_TYPE;
  const mss = le16(buf, off + HDR_GSO_SIZE);
  if (mss === 0) return OFFLOAD_BAD_GSO_SIZE;
  const e = off + ENGINE_HDR_LEN;
  const flen = len - ENGINE_HDR_LEN;
  let l3 = 14;
  let ethertype = be16(buf, e + 12);
  if (ethertype === ETH_P_8021Q || ethertype === ETH_P_8021AD) {
    if (flen < 18) return OFFLOAD_BAD_HEADERS;
    ethertype = be16(buf, e + 16);
    l3 = 18;
  }
  let l4: number;
  const v6 = type === VIRTIO_NET_HDR_GSO_TCPV6;
  if (!v6) {
    if (ethertype !== ETH_P_IP || l3 + 20 > flen) return OFFLOAD_BAD_HEADERS;
    const vihl = buf[e + l3];
    const ihl = (vihl & 0x0f) << 2;
    if (vihl >>> 4 !== 4 || ihl < 20 || l3 + ihl > flen) return OFFLOAD_BAD_HEADERS;
    if (buf[e + l3 + 9] !== IPPROTO_TCP) return OFFLOAD_BAD_HEADERS;
    if ((be16(buf, e + l3 + 6) & 0x3fff) !== 0) return OFFLOAD_BAD_HEADERS; // MF or a fragment offset
    l4 = l3 + ihl;
  } else {
    if (ethertype !== ETH_P_IPV6 || l3 + 40 > flen) return OFFLOAD_BAD_HEADERS;
    if (buf[e + l3] >>> 4 !== 6 || buf[e + l3 + 6] !== IPPROTO_TCP) return OFFLOAD_BAD_HEADERS;
    l4 = l3 + 40;
  }
  if (l4 + 20 > flen) return OFFLOAD_BAD_HEADERS;
  const doff = (buf[e + l4 + 12] >>> 4) << 2;
  if (doff < 20 || l4 + doff > flen) return OFFLOAD_BAD_HEADERS;
  const hdrs = l4 + doff;
  const payload = flen - hdrs;
  if (payload <= 0) return OFFLOAD_BAD_HEADERS;
  // the largest segment must still fit the IP length field
  const first = payload < mss ? payload : mss;
  if ((v6 ? doff : hdrs - l3) + first > 0xffff) return OFFLOAD_BAD_HEADERS;
  const n = Math.floor((payload + mss - 1) / mss);
  info[GSO_L3] = l3;
  info[GSO_L4] = l4;
  info[GSO_HDRS] = hdrs;
  info[GSO_MSS] = mss;
  info[GSO_PAYLOAD] = payload;
  info[GSO_SEGMENTS] = n;
  info[GSO_IPV6] = v6 ? 1 : 0;
  return n;
}

/** Engine-frame length of segment i (after parseTcpGso filled info); -1 when i is out of range. */
export function segmentLength(info: Int32Array, i: number): number {
  if (i < 0 || i >= info[GSO_SEGMENTS]) return -1;
  const start = i * info[GSO_MSS];
  const rest = info[GSO_PAYLOAD] - start;
  return ENGINE_HDR_LEN + info[GSO_HDRS] + (rest < info[GSO_MSS] ? rest : info[GSO_MSS]);
}

/**
 * Writes segment i of the super-frame buf[off, off+len) (parsed into info by parseTcpGso with the
 * same buf/off/len) as an engine frame at out[outOff, …): a zero virtio-net header (flags 0,
 * GSO_NONE), the headers with lengths, IPv4 id + i and header checksum, seq + i*mss, FIN/PSH only
 * on the last segment, CWR only on the first, and the full TCP checksum. Returns its length, or -1
 * when i or out's room is wrong. buf is only read.
 */
export function writeTcpSegment(buf: Uint8Array, off: number, len: number, info: Int32Array, i: number, out: Uint8Array, outOff: number): number {
  const total = segmentLength(info, i);
  const hdrs = info[GSO_HDRS];
  if (total < 0 || outOff < 0 || outOff + total > out.length || off + ENGINE_HDR_LEN + hdrs + info[GSO_PAYLOAD] > Math.min(off + len, buf.length)) return -1;
  const segLen = total - ENGINE_HDR_LEN - hdrs;
  for (let k = 0; k < ENGINE_HDR_LEN; k++) out[outOff + k] = 0;
  const o = outOff + ENGINE_HDR_LEN;
  const p = off + ENGINE_HDR_LEN + hdrs + i * info[GSO_MSS];
  copyBytes(out, o + hdrs, buf, p, segLen);
  writeTcpSegmentHeaders(buf, off, info, i, out, o, sum16(buf, p, p + segLen, 0));
  return total;
}

/**
 * The headers of segment i (info[GSO_HDRS] bytes) at out[outOff, …), for a payload whose sum16 is
 * payloadSum (summed where the payload lies, so it need not be copied here first): lengths, IPv4
 * id + i and header checksum, seq + i*mss, FIN/PSH only on the last segment, CWR only on the first,
 * and the full TCP checksum. buf[off…] is the super-frame in engine format (only its headers are
 * read). Returns the segment's payload length, or -1 when i or out's room is wrong.
 */
export function writeTcpSegmentHeaders(buf: Uint8Array, off: number, info: Int32Array, i: number, out: Uint8Array, outOff: number, payloadSum: number): number {
  const total = segmentLength(info, i);
  const hdrs = info[GSO_HDRS];
  if (total < 0 || outOff < 0 || outOff + hdrs > out.length || off + ENGINE_HDR_LEN + hdrs > buf.length) return -1;
  const mss = info[GSO_MSS];
  const l3 = info[GSO_L3];
  const l4 = info[GSO_L4];
  const start = i * mss;
  const segLen = total - ENGINE_HDR_LEN - hdrs;
  const last = i === info[GSO_SEGMENTS] - 1;
  const o = outOff;
  for (let k = 0; k < hdrs; k++) out[o + k] = buf[off + ENGINE_HDR_LEN + k];
  const ip = o + l3;
  const tcp = o + l4;
  const tcpLen = hdrs - l4 + segLen;
  let s: number;
  if (info[GSO_IPV6] === 0) {
    putBe16(out, ip + 2, hdrs - l3 + segLen);
    putBe16(out, ip + 4, (be16(out, ip + 4) + i) & 0xffff);
    out[ip + 10] = 0;
    out[ip + 11] = 0;
    putBe16(out, ip + 10, foldComplement(sum16(out, ip, tcp, 0)));
    s = sum16(out, ip + 12, ip + 20, IPPROTO_TCP + tcpLen); // pseudo-header: addresses, protocol, length
  } else {
    putBe16(out, ip + 4, tcpLen);
    s = sum16(out, ip + 8, ip + 40, IPPROTO_TCP + tcpLen);
  }
  const seq = (((out[tcp + 4] << 24) | (out[tcp + 5] << 16) | (out[tcp + 6] << 8) | out[tcp + 7]) + start) >>> 0;
  out[tcp + 4] = seq >>> 24;
  out[tcp + 5] = (seq >>> 16) & 0xff;
  out[tcp + 6] = (seq >>> 8) & 0xff;
  out[tcp + 7] = seq & 0xff;
  let flags = out[tcp + 13];
  if (!last) flags &= ~(TCP_FIN | TCP_PSH);
  if (i !== 0) flags &= ~TCP_CWR;
  out[tcp + 13] = flags;
  out[tcp + 16] = 0;
  out[tcp + 17] = 0;
  // the TCP header's length is even (data offset * 4), so the payload's words line up with it
  s = sum16(out, tcp, o + hdrs, s) + payloadSum;
  putBe16(out, tcp + 16, foldComplement(s));
  return segLen;
}

/**
 * What a frame's offload header asks of a receiver, as RX_* bits (0: a plain frame). A receiver
 * without all of them needs the software fallback.
 */
export const RX_CSUM = 1;
export const RX_TSO4 = 2;
export const RX_TSO6 = 4;
export const RX_ECN = 8;

export function offloadNeeds(buf: Uint8Array, off: number): number {
  const gso = buf[off + HDR_GSO_TYPE];
  let need = (buf[off + HDR_FLAGS] & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0 ? RX_CSUM : 0;
  if (gso === VIRTIO_NET_HDR_GSO_NONE) return need;
  const base = gso & ~VIRTIO_NET_HDR_GSO_ECN;
  need |= base === VIRTIO_NET_HDR_GSO_TCPV4 ? RX_TSO4 : base === VIRTIO_NET_HDR_GSO_TCPV6 ? RX_TSO6 : RX_TSO4 | RX_TSO6;
  if (gso & VIRTIO_NET_HDR_GSO_ECN) need |= RX_ECN;
  return need;
}

/**
 * Checks a frame's offload header as a sender gave it, against what that sender negotiated
 * (allowed: RX_* bits standing for CSUM / HOST_TSO4 / HOST_TSO6 / HOST_ECN). Returns OFFLOAD_OK
 * or a negative OFFLOAD_BAD_*. info is scratch for parseTcpGso.
 */
export function checkSenderHeader(buf: Uint8Array, off: number, len: number, allowed: number, info: Int32Array): number {
  if (!validRange(buf, off, len)) return OFFLOAD_BAD_ARGS;
  const flags = buf[off + HDR_FLAGS];
  const gso = buf[off + HDR_GSO_TYPE];
  const need = offloadNeeds(buf, off);
  if (need & ~allowed) return (need & ~allowed) === RX_CSUM ? OFFLOAD_BAD_CSUM : OFFLOAD_BAD_GSO_TYPE;
  if (flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) {
    const field = le16(buf, off + HDR_CSUM_START) + le16(buf, off + HDR_CSUM_OFFSET);
    if (field + 2 > len - ENGINE_HDR_LEN) return OFFLOAD_BAD_CSUM;
  }
  if (gso === VIRTIO_NET_HDR_GSO_NONE) return OFFLOAD_OK;
  const n = parseTcpGso(buf, off, len, info);
  return n < 0 ? n : OFFLOAD_OK;
}
