// A frame's flow hash, for spreading a multiqueue receiver's frames over its RX queues: the
// 5-tuple (addresses, protocol, ports) of TCP, UDP, SCTP and UDP-Lite over IPv4 or IPv6, the
// address pair of other IP (and of IPv4 fragments, so every fragment of a datagram takes the same
// queue), the MAC pair of anything else. VLAN tags (802.1Q, 802.1ad, stacked) are looked through.
// Only the bytes a Frame's owner makes contiguous (eth[ethOff, +ethPeek)) are read: a header that
// lies beyond them hashes by the next shorter tuple. Allocates nothing; returns an unsigned 32-bit value.
import type { Frame } from './frame';
import { ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP } from './layout';

const IPPROTO_SCTP = 132;
const IPPROTO_UDPLITE = 136;

/** murmur3's finaliser step over one more 32-bit word */
function mix(h: number, w: number): number {
  w = Math.imul(w, 0xcc9e2d51);
  w = (w << 15) | (w >>> 17);
  h ^= Math.imul(w, 0x1b873593);
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

function fin(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

function word(b: Uint8Array, o: number): number {
  return (b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3];
}

function hasPorts(proto: number): boolean {
  return proto === IPPROTO_TCP || proto === IPPROTO_UDP || proto === IPPROTO_SCTP || proto === IPPROTO_UDPLITE;
}

export function flowHash(frame: Frame): number {
  const b = frame.eth;
  const base = frame.ethOff;
  const end = base + frame.ethPeek;
  let o = base + 12;
  if (o + 2 > end) return 0;
  let type = (b[o] << 8) | b[o + 1];
  while ((type === ETH_P_8021Q || type === ETH_P_8021AD) && o + 6 <= end) {
    o += 4;
    type = (b[o] << 8) | b[o + 1];
  }
  o += 2;
  let h = 0x9747b28c;
  if (type === ETH_P_IP && o + 20 <= end && b[o] >> 4 === 4) {
    const ihl = (b[o] & 0x0f) * 4;
    const proto = b[o + 9];
    h = mix(mix(mix(h, word(b, o + 12)), word(b, o + 16)), proto);
    const fragmented = (((b[o + 6] & 0x3f) << 8) | b[o + 7]) !== 0; // MF or an offset
    const l4 = o + ihl;
    if (ihl >= 20 && !fragmented && hasPorts(proto) && l4 + 4 <= end) h = mix(h, word(b, l4));
    return fin(h);
  }
  if (type === ETH_P_IPV6 && o + 40 <= end && b[o] >> 4 === 6) {
    const proto = b[o + 6];
    for (let k = 8; k < 40; k += 4) h = mix(h, word(b, o + k));
    h = mix(h, proto);
    // extension headers are not walked: such packets hash by their address pair
    if (hasPorts(proto) && o + 44 <= end) h = mix(h, word(b, o + 40));
    return fin(h);
  }
  if (base + 12 > end) return 0;
  h = mix(mix(mix(h, word(b, base)), word(b, base + 4)), word(b, base + 8));
  return fin(mix(h, type));
}
