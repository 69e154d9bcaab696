// A frame as the switch passes it around without copying it: where its header and Ethernet bytes
// lie (guest TX buffers, blocks of the local data store, a port's scratch), not the bytes.
//
//   hdr[hdrOff, +12)        the engine's virtio-net header (read-only for everyone but its owner)
//   eth[ethOff, +ethPeek)   the first bytes of the Ethernet frame, contiguous: at least
//                           min(ethLen, PEEK_MIN), so the classifier reads MACs where they lie
//   segments                every Ethernet byte, as (area, offset, length) over registered areas:
//                           entries [segFirst, segEnd) of the seg* arrays, the first one starting
//                           segSkip bytes in
//
// A receiver copies the bytes it needs with a cursor (seek, then copyOut for each destination
// piece), which records copies in the copy list; nothing is read or written until the list runs.
// A Frame object is reused frame after frame by its owner; nobody keeps one past the call it was
// handed to them in.
import { ENGINE_HDR_LEN } from './layout';
import { copies } from './copy-list';

/** bytes of Ethernet header a Frame's owner makes contiguous at eth[ethOff] (or the whole frame) */
export const PEEK_MIN = 64;

const EMPTY = new Uint8Array(0);

export class Frame {
  hdr: Uint8Array = EMPTY;
  hdrOff = 0;
  eth: Uint8Array = EMPTY;
  ethOff = 0;
  ethPeek = 0;
  /** header + Ethernet bytes (the engine's frame length) */
  len = 0;
  /** the TX queue pair it was sent on, when its sender spreads over more than one; else -1
   * (receivers with several RX queues then pick one by the flow's hash: flow-hash.ts) */
  txQueue = -1;

  segBuf: Uint8Array[];
  segArea: Int32Array;
  segOff: Int32Array;
  segLen: Int32Array;
  segFirst = 0;
  segEnd = 0;
  segSkip = 0;

  // cursor
  private curSeg = 0;
  private curAt = 0;
  private curLeft = 0;

  /** capacity: own segment arrays of this many entries (0: the owner points seg* at its own) */
  constructor(capacity = 1) {
    this.segBuf = new Array<Uint8Array>(capacity).fill(EMPTY);
    this.segArea = new Int32Array(capacity);
    this.segOff = new Int32Array(capacity);
    this.segLen = new Int32Array(capacity);
  }

  get ethLen(): number {
    return this.len - ENGINE_HDR_LEN;
  }

  /** The frame is buf[off, off+len) in engine format (header, then Ethernet), buf being area `area`. */
  setBytes(area: number, buf: Uint8Array, off: number, len: number): void {
    this.hdr = buf;
    this.hdrOff = off;
    this.eth = buf;
    this.ethOff = off + ENGINE_HDR_LEN;
    this.ethPeek = len - ENGINE_HDR_LEN;
    this.len = len;
    this.segBuf[0] = buf;
    this.segArea[0] = area;
    this.segOff[0] = off + ENGINE_HDR_LEN;
    this.segLen[0] = len - ENGINE_HDR_LEN;
    this.segFirst = 0;
    this.segEnd = 1;
    this.segSkip = 0;
  }

  /** Puts the cursor at Ethernet byte `from`. */
  seek(from: number): void {
    let i = this.segFirst;
    let at = this.segOff[i] + this.segSkip;
    let left = this.segLen[i] - this.segSkip;
    while (from > 0 && i < this.segEnd) {
      if (from < left) {
        at += from;
        left -= from;
        from = 0;
        break;
      }
      from -= left;
      i++;
      if (i < this.segEnd) {
        at = this.segOff[i];
        left = this.segLen[i];
      }
    }
    this.curSeg = i;
    this.curAt = at;
    this.curLeft = i < this.segEnd ? left : 0;
  }

  /** Moves the cursor to the next segment with bytes; false past the last one. */
  private nextSegment(): boolean {
    do {
      if (++this.curSeg >= this.segEnd) return false;
      this.curAt = this.segOff[this.curSeg];
      this.curLeft = this.segLen[this.curSeg];
    } while (this.curLeft === 0);
    return true;
  }

  /**
   * Records copies of the next n bytes at the cursor to dstArea[dstOff, +n) and advances. Returns
   * false when the frame has fewer bytes or a range is outside its area (nothing more recorded).
   */
  copyOut(n: number, dstArea: number, dstOff: number): boolean {
    while (n > 0) {
      if (this.curLeft === 0 && !this.nextSegment()) return false;
      const k = n < this.curLeft ? n : this.curLeft;
      if (!copies.record(this.segArea[this.curSeg], this.curAt, dstArea, dstOff, k)) return false;
      this.curAt += k;
      this.curLeft -= k;
      dstOff += k;
      n -= k;
    }
    return true;
  }

  /**
   * JavaScript read of Ethernet bytes [from, from+n) into dst (slow paths, tests). The bytes must
   * not be the target of a pending copy: true of guest TX buffers, and of the local data store
   * once the monitor settled the copy list (it does before it delivers or floods queued frames).
   */
  read(from: number, n: number, dst: Uint8Array, dstOff: number): void {
    this.seek(from);
    while (n > 0) {
      if (this.curLeft === 0 && !this.nextSegment()) return;
      const k = n < this.curLeft ? n : this.curLeft;
      const b = this.segBuf[this.curSeg];
      for (let j = 0; j < k; j++) dst[dstOff + j] = b[this.curAt + j];
      this.curAt += k;
      this.curLeft -= k;
      dstOff += k;
      n -= k;
    }
  }

  /**
   * One's-complement sum (offload.ts sum16 semantics: big-endian words, folded to 17 bits) of
   * Ethernet bytes [from, to), read where they lie; from is taken as an even offset of the summed
   * range, and segment boundaries at odd offsets are handled. Same rule as read().
   */
  sum16(from: number, to: number, s: number): number {
    this.seek(from);
    let n = to - from;
    let odd = false;
    while (n > 0) {
      if (this.curLeft === 0 && !this.nextSegment()) return s;
      const k = n < this.curLeft ? n : this.curLeft;
      const b = this.segBuf[this.curSeg];
      let i = this.curAt;
      const end = i + k;
      if (odd) {
        s += b[i++];
        odd = false;
      }
      for (const e8 = end - 7; i < e8; i += 8) {
        s += ((b[i] << 8) | b[i + 1]) + ((b[i + 2] << 8) | b[i + 3]) + ((b[i + 4] << 8) | b[i + 5]) + ((b[i + 6] << 8) | b[i + 7]);
      }
      for (const e2 = end - 1; i < e2; i += 2) s += (b[i] << 8) | b[i + 1];
      if (i < end) {
        s += b[i] << 8;
        odd = true;
      }
      s = (s & 0xffff) + (s >>> 16);
      this.curAt += k;
      this.curLeft -= k;
      n -= k;
    }
    return s;
  }
}
