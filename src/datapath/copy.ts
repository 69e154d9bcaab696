// Byte copy between two Uint8Arrays that allocates nothing.
//
// Why not `dst.set(src.subarray(a, b), o)` or `Buffer.prototype.copy`: on Node 20 both create a
// Uint8Array view per call (Buffer.copy builds one internally), which is one object per frame on the
// data path and shows up as scavenges under --trace-gc. A byte loop allocates nothing but runs at
// ~1 GB/s. So: bytes for short copies, and 32-bit words through Int32Array views of the whole
// underlying ArrayBuffer for the rest. Views are created once per ArrayBuffer and cached in a
// WeakMap (ports pass the same scratch buffer on every call, so this is a lookup in steady state).
// When source and destination differ in alignment, each destination word is combined from two
// source words with shifts; that assumes a little-endian host (x86-64, arm64) and falls back to
// bytes otherwise.

// From NATIVE_COPY_MIN bytes up, the addon's memmove is faster than any JavaScript loop and
// allocates nothing either (measured on the build machine: a native call costs ~70 ns whatever the
// size up to ~1 KiB; the word loop below takes ~100 ns at 256 bytes unaligned, ~480 ns at 1500 and
// ~19 µs at 65 000).
import { native } from '../native';

export const NATIVE_COPY_MIN = 256;

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
/** below this many bytes the byte loop wins over the view lookup */
const WORD_COPY_MIN = 48;

const wordViews = new WeakMap<ArrayBufferLike, Int32Array>();
// In front of the WeakMap, the last few arrays seen (the local data store, the ports' scratch and RX
// areas): the WeakMap lookup alone was a fifth of the 64-byte fast path in the profile. The cache
// keeps up to RECENT arrays alive after their owner drops them; that is the price.
const RECENT = 4;
const recentArrays: (Uint8Array | null)[] = [null, null, null, null];
const recentWords: (Int32Array | null)[] = [null, null, null, null];
let recentNext = 0;

function wordsOf(a: Uint8Array): Int32Array {
  for (let i = 0; i < RECENT; i++) if (recentArrays[i] === a) return recentWords[i] as Int32Array;
  const ab = a.buffer;
  let v = wordViews.get(ab);
  if (v === undefined) {
    v = new Int32Array(ab, 0, ab.byteLength >>> 2);
    wordViews.set(ab, v);
  }
  recentArrays[recentNext] = a;
  recentWords[recentNext] = v;
  recentNext = (recentNext + 1) % RECENT;
  return v;
}

/** dst[dstOff, dstOff+len) = src[srcOff, srcOff+len). Regions must not overlap. Bounds are the caller's. */
export function copyBytes(dst: Uint8Array, dstOff: number, src: Uint8Array, srcOff: number, len: number): void {
  if (len >= NATIVE_COPY_MIN) {
    native.copy(dst, dstOff, src, srcOff, len);
    return;
  }
  if (len < WORD_COPY_MIN || !LITTLE_ENDIAN) {
    for (let i = 0; i < len; i++) dst[dstOff + i] = src[srcOff + i];
    return;
  }
  // bring the destination to a 4-byte boundary
  const head = (4 - ((dst.byteOffset + dstOff) & 3)) & 3;
  for (let i = 0; i < head; i++) dst[dstOff + i] = src[srcOff + i];
  const d = dst.byteOffset + dstOff + head;
  const s = src.byteOffset + srcOff + head;
  const dw = wordsOf(dst);
  const sw = wordsOf(src);
  const di = d >>> 2;
  const si = s >>> 2;
  let n = (len - head) >>> 2;
  const shift = (s & 3) << 3;
  if (shift === 0) {
    let k = 0;
    for (const n8 = n - 7; k < n8; k += 8) {
      dw[di + k] = sw[si + k];
      dw[di + k + 1] = sw[si + k + 1];
      dw[di + k + 2] = sw[si + k + 2];
      dw[di + k + 3] = sw[si + k + 3];
      dw[di + k + 4] = sw[si + k + 4];
      dw[di + k + 5] = sw[si + k + 5];
      dw[di + k + 6] = sw[si + k + 6];
      dw[di + k + 7] = sw[si + k + 7];
    }
    for (; k < n; k++) dw[di + k] = sw[si + k];
  } else {
    // word k of the destination = high bytes of source word si+k and low bytes of si+k+1;
    // never read a word past the end of the source ArrayBuffer
    if (si + n >= sw.length) n = sw.length - 1 - si;
    if (n < 0) n = 0;
    const back = 32 - shift;
    let cur = sw[si];
    for (let k = 0; k < n; k++) {
      const next = sw[si + k + 1];
      dw[di + k] = (cur >>> shift) | (next << back);
      cur = next;
    }
  }
  for (let i = head + (n << 2); i < len; i++) dst[dstOff + i] = src[srcOff + i];
}
