// Byte copies between guest memory, the local data store and port scratch buffers.
// TypedArray.set(src.subarray()) and Buffer.copy both allocate a view object per call (measured:
// ~470 scavenges per 5 M copies), and a JavaScript byte loop costs ~1 ns per byte, so copies go
// through the addon's memmove, which takes the two arrays as they are and allocates nothing.
import { native } from '../native';

export function copyBytes(dst: Uint8Array, dstOff: number, src: Uint8Array, srcOff: number, len: number): void {
  native.copy(dst, dstOff, src, srcOff, len);
}
