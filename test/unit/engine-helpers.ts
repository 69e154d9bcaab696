// In-memory ports and frame builders for the engine tests.

import type { EnginePort } from '../../src/engine/port';
import { ENGINE_HDR_LEN } from '../../src/engine/port';
import { parseMac } from '../../src/engine/classifier';
import type { Switch } from '../../src/engine/switch';
import type { Frame } from '../../src/datapath/frame';
import { ByteFrames, frameBytes } from '../../src/datapath/byte-frame';

const byteFrames = new ByteFrames();
/** sw.input() of an engine frame held in a plain Uint8Array (copied into a registered scratch) */
export function input(sw: Switch, src: number, bytes: Uint8Array): void {
  sw.input(src, byteFrames.of(bytes));
}

/**
 * A port with a configurable number of free RX buffers of bufSize bytes. With mergeable (MRG_RXBUF)
 * a frame takes ceil(len / bufSize) buffers; without, it needs one buffer of at least len bytes.
 * Records a copy of every delivered frame.
 */
export class TestPort implements EnginePort {
  buffers: number;
  started = true;
  received: Uint8Array[] = [];
  flushes = 0;
  wanting = false;
  wantCalls: boolean[] = [];
  /** deliver() calls that returned false */
  refusals = 0;
  constructor(
    readonly name: string,
    opts: { buffers?: number; bufSize?: number; mergeable?: boolean } = {},
  ) {
    this.buffers = opts.buffers ?? 1 << 30;
    this.bufSize = opts.bufSize ?? 65_600;
    this.mergeable = opts.mergeable ?? false;
  }
  readonly bufSize: number;
  readonly mergeable: boolean;

  deliver(frame: Frame): boolean {
    const len = frame.len;
    const need = this.mergeable ? Math.ceil(len / this.bufSize) : len <= this.bufSize ? 1 : Infinity;
    if (!this.started || need > this.buffers) {
      this.refusals++;
      return false;
    }
    this.buffers -= need;
    this.received.push(frameBytes(frame));
    return true;
  }
  flush(): void {
    this.flushes++;
  }
  wantResources(want: boolean): void {
    this.wanting = want;
    this.wantCalls.push(want);
  }
  post(n: number): void {
    this.buffers += n;
  }
  /** sequence numbers of received frames, optionally only those from one source MAC */
  seqs(fromMac?: string): number[] {
    const out: number[] = [];
    for (const f of this.received) {
      if (fromMac !== undefined && macAt(f, ENGINE_HDR_LEN + 6) !== fromMac) continue;
      out.push(seqOf(f));
    }
    return out;
  }
}

export function macBytes(mac: string): number[] {
  const key = parseMac(mac);
  const out: number[] = [];
  for (let i = 5; i >= 0; i--) out.push(Math.floor(key / 2 ** (8 * i)) % 256);
  return out;
}

export function macAt(f: Uint8Array, off: number): string {
  return Array.from(f.subarray(off, off + 6), (b) => b.toString(16).padStart(2, '0')).join(':');
}

export const SEQ_OFFSET = ENGINE_HDR_LEN + 14;

/** virtio-net header (zero) + Ethernet frame of ethLen bytes (>= 22) with seq at SEQ_OFFSET and a
 * payload pattern derived from seq, so content can be checked too. */
export function frame(dst: string, src: string, seq: number, ethLen = 64): Uint8Array {
  const f = new Uint8Array(ENGINE_HDR_LEN + ethLen);
  f.set(macBytes(dst), ENGINE_HDR_LEN);
  f.set(macBytes(src), ENGINE_HDR_LEN + 6);
  f[ENGINE_HDR_LEN + 12] = 0x88;
  f[ENGINE_HDR_LEN + 13] = 0xb5;
  new DataView(f.buffer).setUint32(SEQ_OFFSET, seq);
  for (let i = SEQ_OFFSET + 4; i < f.length; i++) f[i] = (seq * 7 + i) & 0xff;
  return f;
}

export function seqOf(f: Uint8Array): number {
  return new DataView(f.buffer, f.byteOffset, f.byteLength).getUint32(SEQ_OFFSET);
}

export function patternOk(f: Uint8Array): boolean {
  const seq = seqOf(f);
  for (let i = SEQ_OFFSET + 4; i < f.length; i++) if (f[i] !== ((seq * 7 + i) & 0xff)) return false;
  return true;
}

export const BCAST = 'ff:ff:ff:ff:ff:ff';
export function mac(n: number): string {
  return `52:54:00:00:${((n >> 8) & 0xff).toString(16).padStart(2, '0')}:${(n & 0xff).toString(16).padStart(2, '0')}`;
}

/** a controllable clock */
export class FakeClock {
  t = 1_000_000;
  now = (): number => this.t;
  advance(ms: number): void {
    this.t += ms;
  }
}
