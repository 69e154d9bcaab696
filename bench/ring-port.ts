// An in-memory port for the benchmark and the heap test: deliver() copies the frame into a
// preallocated "guest RX area" and allocates nothing, like a vhost-user port writing guest memory.
// Buffers are counted in slots of slotSize bytes with merged-buffer (MRG_RXBUF) semantics.

import type { EnginePort } from '../src/engine/port';
import { Frame } from '../src/datapath/frame';
import { copies } from '../src/datapath/copy-list';

export class RingPort implements EnginePort {
  /** free RX buffers the guest has posted */
  free: number;
  started = true;
  frames = 0;
  bytes = 0;
  flushes = 0;
  wanting = false;
  private readonly area: Uint8Array;
  private readonly areaId: number;
  private cursor = 0;

  constructor(
    readonly name: string,
    readonly slots: number,
    readonly slotSize = 2048,
    areaBytes = 2 * 1024 * 1024,
  ) {
    this.free = slots;
    this.area = new Uint8Array(areaBytes);
    this.areaId = copies.register(this.area);
  }

  deliver(frame: Frame): boolean {
    const len = frame.len;
    const need = ((len + this.slotSize - 1) / this.slotSize) | 0;
    if (!this.started || need > this.free) return false;
    this.free -= need;
    if (this.cursor + len > this.area.length) this.cursor = 0;
    // the header as a vhost-user port writes it (by hand), the Ethernet bytes as one recorded copy
    const a = this.area;
    for (let k = 0; k < 12; k++) a[this.cursor + k] = frame.hdr[frame.hdrOff + k];
    frame.seek(0);
    if (!frame.copyOut(len - 12, this.areaId, this.cursor + 12)) throw new Error('copy refused');
    this.cursor += (len + 63) & ~63;
    this.frames++;
    this.bytes += len - 12;
    return true;
  }
  flush(): void {
    this.flushes++;
  }
  wantResources(want: boolean): void {
    this.wanting = want;
  }
  /** the guest consumed everything and reposted all its buffers */
  refill(): void {
    this.free = this.slots;
  }
}

/** a Frame over buf[0, len): buf is registered as a copy area once */
export function bytesFrame(buf: Uint8Array, len: number): Frame {
  const f = new Frame();
  f.setBytes(copies.register(buf), buf, 0, len);
  return f;
}

const made = new WeakMap<Uint8Array, Frame>();
/** bytesFrame(buf, len), made once per buffer (later calls return the same Frame, for the same len) */
export function frameFor(buf: Uint8Array, len: number): Frame {
  let f = made.get(buf);
  if (f === undefined) {
    f = bytesFrame(buf, len);
    made.set(buf, f);
  } else if (f.len !== len) {
    f.setBytes(f.segArea[0], buf, 0, len);
  }
  return f;
}

/** write a frame (zero virtio-net header + Ethernet) into buf at 0; macs as 6-byte arrays */
export function writeFrame(buf: Uint8Array, dst: ArrayLike<number>, src: ArrayLike<number>, ethLen: number): number {
  buf.fill(0, 0, 12);
  for (let i = 0; i < 6; i++) {
    buf[12 + i] = dst[i];
    buf[18 + i] = src[i];
  }
  buf[24] = 0x88;
  buf[25] = 0xb5;
  for (let i = 26; i < 12 + ethLen; i++) buf[i] = i & 0xff;
  return 12 + ethLen;
}
