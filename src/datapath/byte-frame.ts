// Frames made from bytes in JavaScript memory (control path frames such as a RARP announce, tests,
// benchmarks): the bytes are copied into a registered scratch buffer and described by a Frame.
// The scratch is reused by the next call, after the copy list ran (pending copies read it).
import { copies } from './copy-list';
import { Frame } from './frame';
import { ENGINE_HDR_LEN, MAX_FRAME } from './layout';

export class ByteFrames {
  private readonly scratch: Uint8Array;
  private readonly area: number;
  readonly frame = new Frame();

  constructor(capacity = MAX_FRAME) {
    this.scratch = new Uint8Array(capacity);
    this.area = copies.register(this.scratch);
  }

  /** buf[off, off+len) in engine format (12-byte header, then Ethernet) as a Frame */
  of(buf: Uint8Array, off = 0, len = buf.length - off): Frame {
    if (len > this.scratch.length) throw new RangeError(`frame of ${len} bytes beyond the scratch (${this.scratch.length})`);
    copies.settle();
    const s = this.scratch;
    for (let i = 0; i < len; i++) s[i] = buf[off + i];
    this.frame.setBytes(this.area, s, 0, len);
    return this.frame;
  }

  /** Releases the scratch's area (after the copies reading it ran). */
  close(): void {
    copies.settle();
    copies.unregister(this.area);
  }
}

/** The bytes of a frame in engine format, read now (tests, diagnostics: allocates; settles the copy list). */
export function frameBytes(frame: Frame): Uint8Array {
  copies.settle();
  const out = new Uint8Array(frame.len);
  for (let k = 0; k < ENGINE_HDR_LEN; k++) out[k] = frame.hdr[frame.hdrOff + k];
  frame.read(0, frame.ethLen, out, ENGINE_HDR_LEN);
  return out;
}
