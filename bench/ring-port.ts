// An in-memory port for the benchmark and the heap test: deliver() copies the frame into a
// preallocated "guest RX area" and allocates nothing, like a vhost-user port writing guest memory.
// Buffers are counted in slots of slotSize bytes with merged-buffer (MRG_RXBUF) semantics.

import type { EnginePort } from '../src/engine/port';
import { copyBytes } from '../src/engine/copy';

export class RingPort implements EnginePort {
  /** free RX buffers the guest has posted */
  free: number;
  started = true;
  frames = 0;
  bytes = 0;
  flushes = 0;
  wanting = false;
  /** last byte of the last frame delivered: keeps the copy observable */
  last = 0;
  private readonly area: Uint8Array;
  private cursor = 0;

  constructor(
    readonly name: string,
    readonly slots: number,
    readonly slotSize = 2048,
    areaBytes = 2 * 1024 * 1024,
  ) {
    this.free = slots;
    this.area = new Uint8Array(areaBytes);
  }

  deliver(buf: Uint8Array, off: number, len: number): boolean {
    const need = ((len + this.slotSize - 1) / this.slotSize) | 0;
    if (!this.started || need > this.free) return false;
    this.free -= need;
    if (this.cursor + len > this.area.length) this.cursor = 0;
    copyBytes(this.area, this.cursor, buf, off, len);
    this.last = this.area[this.cursor + len - 1];
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
