// The Internet checksum as the tests check it: an independent implementation (plain arrays, no
// folding tricks), so that the switch's own summing (src/virtio/offload.ts) is not checked against
// itself.

/** one's-complement sum of the bytes as 16-bit big-endian words (an odd last byte padded with 0) */
export function onesSum(bytes: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < bytes.length; i += 2) {
    s += bytes[i] * 256 + (i + 1 < bytes.length ? bytes[i + 1] : 0);
    s = (s % 65536) + Math.floor(s / 65536);
  }
  return s;
}
