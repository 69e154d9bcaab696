// Benchmark of the real data path: guest A's TX split virtqueue in shared memory → VhostUserPort A
// (TX gather) → Switch → VhostUserPort B (RX delivery, mergeable buffers) → guest B's RX virtqueue.
// Both ports are bound to in-process vhost-user front-ends (test/protocol/frontend.ts) over real
// socketpairs, with memfd guest RAM mapped by both sides and real kick/call eventfds.
//
//   npm run bench:datapath                            all cells
//   node dist/bench/datapath-bench.js kick:fast:64:256   one cell: drive:path:frame bytes:ring size
//   BENCH_NO_CALLS=1 node --cpu-prof dist/bench/datapath-bench.js direct:fast:1518:256
//
// The guest drivers are written here, not taken from the test front-end (whose helpers allocate
// objects per buffer): fixed descriptors, fixed buffers, typed-array views made once at set-up.
//   guest A  TX chains of two descriptors (12-byte virtio-net header | Ethernet frame), written at
//            set-up; per frame the driver writes the header and a sequence number into the frame,
//            puts the head in the avail ring, and kicks when avail_event asks for it.
//   guest B  every RX descriptor is one 2 KiB device-writable buffer (Linux's mergeable buffers);
//            it reads num_buffers and the sequence number of each packet, checks order and length,
//            and posts the buffers again (kicking when avail_event asks for it).
//   Both re-arm their interrupt after each pass (used_event = last used seen, as a NAPI poll does
//   when it completes), so the back-end writes each call eventfd once per batch.
//   EVENT_IDX, MRG_RXBUF, VERSION_1 and the rest of what the back-end offers are negotiated.
//
// Drive:
//   kick    everything through eventfds and the event loop: guest A kicks with an eventfd write, the
//           back-end's uv_poll kick handler runs its TX processing (the switch and B's RX delivery
//           happen inside it) and signals both call eventfds; the guests run their next pass from
//           uv_poll handlers on those call eventfds (their "interrupts"). One batch per loop turn.
//           (Not setImmediate: a setImmediate per turn allocates ~345 bytes; a uv_poll callback
//           through the addon ~56.)
//   direct  no event loop: the guest loop calls port.kick(ring) itself, the method the session's
//           kick handler calls after reading the kick eventfd; only the kick eventfd write/read and
//           the uv_poll wake-ups are left out (the back-end still writes the call eventfds).
// Paths:
//   fast         B keeps its RX ring stocked; A sends a batch once the previous one is through, and a
//                batch never exceeds what B's ring holds (nor the port's TX budget of 256 chains per
//                kick), so every frame takes the fast path (asserted: no frame stored).
//   store+drain  B's RX ring is empty while a burst of 256 frames arrives (all stored in the
//                elastic FIFO), then B posts buffers and kicks and the monitor drains them; 9000-byte
//                frames take 5 buffers each, so B refills its ring as often as the burst needs (5
//                times for a 256-entry ring), kicking each time. Rate = burst / (store + drain time).
// Throughput counts Ethernet bytes (the virtio-net header excluded), as the engine benchmark does.
// After each cell: every frame received exactly once, in order, right length; nothing dropped.

import { PerformanceObserver } from 'node:perf_hooks';
import { setImmediate as yieldLoop } from 'node:timers/promises';
import { native, Poller } from '../src/native';
import { Switch } from '../src/engine/switch';
import { VhostUserPort } from '../src/ports/vhost-user/port';
import type { Virtqueue as DeviceRing } from '../src/virtio/virtqueue';
import { FrontEnd, Virtqueue, waitFor } from '../test/protocol/frontend';
import { PackedVirtqueue } from '../test/protocol/packed-frontend';

const DESC_F_NEXT = 1;
const DESC_F_WRITE = 2;
const HDR = 12;
const RX_BUF = 2048;
const MAC_A = '52:54:00:00:00:01';
const MAC_B = '52:54:00:00:00:02';
const MAC_A_BYTES = [0x52, 0x54, 0, 0, 0, 1];
const MAC_B_BYTES = [0x52, 0x54, 0, 0, 0, 2];
/** frames per store+drain round */
export const BURST = 256;
/** the port's TX_BUDGET (src/ports/vhost-user-port.ts): chains processed per kick before it yields */
const TX_BUDGET = 256;

/** vring_need_event */
function needEvent(event: number, newIdx: number, old: number): boolean {
  return ((newIdx - event - 1) & 0xffff) < ((newIdx - old) & 0xffff);
}

/** u16/u32 views over the one RAM region of a front-end (guest-physical address = byte offset). */
interface RamViews {
  u8: Uint8Array;
  u16: Uint16Array;
  u32: Uint32Array;
}

function ramViews(fe: FrontEnd): RamViews {
  const r = fe.ram!.regions[0];
  if (r.gpa !== 0) throw new Error('expected guest RAM at guest-physical 0');
  const b = r.bytes;
  return { u8: b, u16: new Uint16Array(b.buffer, b.byteOffset, b.length >>> 1), u32: new Uint32Array(b.buffer, b.byteOffset, b.length >>> 2) };
}

/** Writes one descriptor (addresses < 2^32 here). */
function writeDesc(m: RamViews, vq: Virtqueue, i: number, addr: number, len: number, flags: number, next: number): void {
  const o32 = (vq.descGpa >>> 2) + i * 4;
  m.u32[o32] = addr >>> 0;
  m.u32[o32 + 1] = 0;
  m.u32[o32 + 2] = len;
  const o16 = (vq.descGpa >>> 1) + i * 8;
  m.u16[o16 + 6] = flags;
  m.u16[o16 + 7] = next;
}

/** Guest A's TX driver: fixed two-descriptor chains, allocation-free per frame. */
export class TxDriver {
  readonly num: number;
  readonly chains: number;
  availIdx = 0;
  lastUsed = 0;
  kickedAt = 0;
  /** next sequence number written into a frame */
  seq = 0;
  /** chains posted and not yet used */
  inFlight = 0;
  kicks = 0;
  private readonly mask: number;
  private readonly u16: Uint16Array;
  private readonly u32: Uint32Array;
  private readonly availBase: number;
  private readonly usedBase16: number;
  private readonly usedBase32: number;
  /** free chain heads, a circular FIFO */
  private readonly free: Uint16Array;
  private freeAt = 0;
  private freeCount: number;
  /** per head: u32 index of its header buffer, u16 index of the frame's sequence number */
  private readonly hdrAt: Int32Array;
  private readonly seqAt: Int32Array;
  readonly kickFd: number;
  readonly callFd: number;

  constructor(readonly vq: Virtqueue, m: RamViews, readonly frameLen: number) {
    const num = vq.num;
    this.num = num;
    this.mask = num - 1;
    this.chains = num >>> 1;
    this.u16 = m.u16;
    this.u32 = m.u32;
    this.availBase = vq.availGpa >>> 1;
    this.usedBase16 = vq.usedGpa >>> 1;
    this.usedBase32 = vq.usedGpa >>> 2;
    this.kickFd = vq.kickFd;
    this.callFd = vq.callFd;
    this.free = new Uint16Array(this.chains);
    this.freeCount = this.chains;
    this.hdrAt = new Int32Array(num);
    this.seqAt = new Int32Array(num);
    const ram = vq.ram;
    for (let k = 0; k < this.chains; k++) {
      const head = 2 * k;
      const h = ram.alloc(16, 16);
      const f = ram.alloc(frameLen, 64);
      writeDesc(m, vq, head, h, HDR, DESC_F_NEXT, head + 1);
      writeDesc(m, vq, head + 1, f, frameLen, 0, 0);
      m.u8.fill(0, h, h + 16);
      for (let i = 0; i < 6; i++) {
        m.u8[f + i] = MAC_B_BYTES[i];
        m.u8[f + 6 + i] = MAC_A_BYTES[i];
      }
      m.u8[f + 12] = 0x88;
      m.u8[f + 13] = 0xb5;
      for (let i = 18; i < frameLen; i++) m.u8[f + i] = (i * 7) & 0xff;
      this.hdrAt[head] = h >>> 2;
      this.seqAt[head] = (f + 14) >>> 1;
      this.free[k] = head;
    }
  }

  get freeChains(): number {
    return this.freeCount;
  }

  /** Posts n frames (n <= freeChains) with the next sequence numbers; publishes the avail index. */
  post(n: number): void {
    const u16 = this.u16;
    const u32 = this.u32;
    const free = this.free;
    const mask = this.mask;
    const cmask = this.chains - 1;
    let idx = this.availIdx;
    let seq = this.seq;
    for (let i = 0; i < n; i++) {
      const head = free[this.freeAt];
      this.freeAt = (this.freeAt + 1) & cmask;
      const h = this.hdrAt[head];
      u32[h] = 0; // flags, gso_type, hdr_len
      u32[h + 1] = 0; // gso_size, csum_start
      u32[h + 2] = 0; // csum_offset, num_buffers
      const s = this.seqAt[head];
      u16[s] = seq & 0xffff;
      u16[s + 1] = seq >>> 16;
      seq = (seq + 1) >>> 0;
      u16[this.availBase + 2 + (idx & mask)] = head;
      idx = (idx + 1) & 0xffff;
    }
    this.freeCount -= n;
    this.inFlight += n;
    this.seq = seq;
    this.availIdx = idx;
    Atomics.store(u16, this.availBase + 1, idx);
  }

  /** Takes back the chains the device used; re-arms the interrupt. Returns how many. */
  reclaim(): number {
    const u16 = this.u16;
    const end = Atomics.load(u16, this.usedBase16 + 1);
    let n = 0;
    const cmask = this.chains - 1;
    while (this.lastUsed !== end) {
      const id = this.u32[this.usedBase32 + 1 + 2 * (this.lastUsed & this.mask)];
      this.free[(this.freeAt + this.freeCount) & cmask] = id;
      this.freeCount++;
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
      n++;
    }
    this.inFlight -= n;
    u16[this.availBase + 2 + this.num] = this.lastUsed; // used_event
    return n;
  }

  /** avail_event says the device wants a kick for what was published since the last kick */
  needsKick(): boolean {
    const need = needEvent(this.u16[this.usedBase16 + 2 + 4 * this.num], this.availIdx, this.kickedAt);
    this.kickedAt = this.availIdx;
    if (need) this.kicks++;
    return need;
  }
}

/** Guest B's RX driver: one 2 KiB buffer per descriptor, mergeable; checks order. */
export class RxDriver {
  readonly num: number;
  availIdx = 0;
  lastUsed = 0;
  kickedAt = 0;
  /** packets received, and their Ethernet bytes */
  packets = 0;
  bytes = 0;
  /** next sequence number expected */
  expect = 0;
  /** packets out of order, with a wrong length, or with a bad num_buffers */
  errors = 0;
  firstError = '';
  kicks = 0;
  /** called per packet received (tests: the allocation test's control allocates here) */
  onPacket: ((seq: number) => void) | null = null;
  private readonly mask: number;
  private readonly u16: Uint16Array;
  private readonly u32: Uint32Array;
  private readonly availBase: number;
  private readonly usedBase16: number;
  private readonly usedBase32: number;
  /** buffers the guest holds (not posted), a circular FIFO of descriptor ids */
  private readonly free: Uint16Array;
  private freeAt = 0;
  private freeCount: number;
  /** u16 index of each buffer's start */
  private readonly bufAt: Int32Array;
  readonly kickFd: number;
  readonly callFd: number;

  constructor(readonly vq: Virtqueue, m: RamViews, readonly frameLen: number) {
    const num = vq.num;
    this.num = num;
    this.mask = num - 1;
    this.u16 = m.u16;
    this.u32 = m.u32;
    this.availBase = vq.availGpa >>> 1;
    this.usedBase16 = vq.usedGpa >>> 1;
    this.usedBase32 = vq.usedGpa >>> 2;
    this.kickFd = vq.kickFd;
    this.callFd = vq.callFd;
    this.free = new Uint16Array(num);
    this.freeCount = num;
    this.bufAt = new Int32Array(num);
    for (let i = 0; i < num; i++) {
      const b = vq.ram.alloc(RX_BUF, RX_BUF);
      writeDesc(m, vq, i, b, RX_BUF, DESC_F_WRITE, 0);
      this.bufAt[i] = b >>> 1;
      this.free[i] = i;
    }
  }

  /** buffers one packet of frameLen takes */
  get buffersPerPacket(): number {
    return Math.ceil((HDR + this.frameLen) / RX_BUF);
  }

  get held(): number {
    return this.freeCount;
  }

  /** Posts up to n of the buffers it holds; returns how many. */
  post(n: number): number {
    if (n > this.freeCount) n = this.freeCount;
    const u16 = this.u16;
    const mask = this.mask;
    let idx = this.availIdx;
    for (let i = 0; i < n; i++) {
      u16[this.availBase + 2 + (idx & mask)] = this.free[this.freeAt];
      this.freeAt = (this.freeAt + 1) & mask;
      idx = (idx + 1) & 0xffff;
    }
    this.freeCount -= n;
    this.availIdx = idx;
    Atomics.store(u16, this.availBase + 1, idx);
    return n;
  }

  /** Reads every complete packet off the used ring; the buffers come back to the guest. Re-arms the interrupt. */
  consume(): number {
    const u16 = this.u16;
    const u32 = this.u32;
    const mask = this.mask;
    const end = Atomics.load(u16, this.usedBase16 + 1);
    let got = 0;
    while (this.lastUsed !== end) {
      const o = this.usedBase32 + 1 + 2 * (this.lastUsed & mask);
      const id = u32[o];
      let len = u32[o + 1];
      const b = this.bufAt[id];
      const nb = u16[b + 5];
      const seq = u16[b + 13] | (u16[b + 14] << 16);
      if (nb < 1 || ((end - this.lastUsed) & 0xffff) < nb) {
        this.fail(`num_buffers ${nb} with ${(end - this.lastUsed) & 0xffff} used elements`);
        break;
      }
      this.give(id);
      for (let k = 1; k < nb; k++) {
        const o2 = this.usedBase32 + 1 + 2 * ((this.lastUsed + k) & mask);
        len += u32[o2 + 1];
        this.give(u32[o2]);
      }
      this.lastUsed = (this.lastUsed + nb) & 0xffff;
      if (seq >>> 0 !== this.expect) this.fail(`sequence ${seq >>> 0}, expected ${this.expect}`);
      this.expect = ((seq >>> 0) + 1) >>> 0;
      if (len !== HDR + this.frameLen) this.fail(`packet of ${len} bytes, expected ${HDR + this.frameLen}`);
      this.packets++;
      this.bytes += len - HDR;
      got++;
      if (this.onPacket !== null) this.onPacket(seq);
    }
    u16[this.availBase + 2 + this.num] = this.lastUsed; // used_event
    return got;
  }

  needsKick(): boolean {
    const need = needEvent(this.u16[this.usedBase16 + 2 + 4 * this.num], this.availIdx, this.kickedAt);
    this.kickedAt = this.availIdx;
    if (need) this.kicks++;
    return need;
  }

  private give(id: number): void {
    this.free[(this.freeAt + this.freeCount) & this.mask] = id;
    this.freeCount++;
  }

  private fail(what: string): void {
    if (this.errors === 0) this.firstError = `packet ${this.packets}: ${what}`;
    this.errors++;
  }
}

// ---- the same two guest drivers on packed rings (VIRTIO_F_RING_PACKED), allocation-free too

const PACKED_AVAIL = 1 << 7;
const PACKED_USED = 1 << 15;
const EVENT_DISABLE = 1;
const EVENT_DESC = 2;

/** The device's event suppression (Linux's virtqueue_kick_prepare_packed): kick for the descriptors added since the last kick? */
function packedNeedsKick(u16: Uint16Array, deviceBase16: number, num: number, pos: number, wrap: number, added: number): boolean {
  const flags = Atomics.load(u16, deviceBase16 + 1);
  if (flags === EVENT_DISABLE) return false;
  if (flags !== EVENT_DESC) return true;
  const ow = u16[deviceBase16];
  let ev = ow & 0x7fff;
  if (ow >>> 15 !== wrap) ev -= num;
  return needEvent(ev, pos, pos - added);
}

/** Guest A's TX driver on a packed ring: two-descriptor chains (header, frame), one buffer id per chain. */
export class PackedTxDriver {
  readonly num: number;
  readonly chains: number;
  seq = 0;
  inFlight = 0;
  kicks = 0;
  private pos = 0;
  private wrap = 1;
  private usedPos = 0;
  private usedWrap = 1;
  private added = 0;
  private readonly u16: Uint16Array;
  private readonly u32: Uint32Array;
  private readonly d16: number;
  private readonly d32: number;
  private readonly dev16: number;
  private readonly free: Uint16Array;
  private freeAt = 0;
  private freeCount: number;
  private readonly hdrGpa: Int32Array;
  private readonly frameGpa: Int32Array;
  readonly kickFd: number;
  readonly callFd: number;

  constructor(readonly vq: PackedVirtqueue, m: RamViews, readonly frameLen: number) {
    const num = vq.num;
    this.num = num;
    this.chains = num >>> 1;
    this.u16 = m.u16;
    this.u32 = m.u32;
    this.d16 = vq.descGpa >>> 1;
    this.d32 = vq.descGpa >>> 2;
    this.dev16 = vq.usedGpa >>> 1;
    this.kickFd = vq.kickFd;
    this.callFd = vq.callFd;
    this.free = new Uint16Array(this.chains);
    this.freeCount = this.chains;
    this.hdrGpa = new Int32Array(this.chains);
    this.frameGpa = new Int32Array(this.chains);
    for (let k = 0; k < this.chains; k++) {
      const h = vq.ram.alloc(16, 16);
      const f = vq.ram.alloc(frameLen, 64);
      m.u8.fill(0, h, h + 16);
      for (let i = 0; i < 6; i++) {
        m.u8[f + i] = MAC_B_BYTES[i];
        m.u8[f + 6 + i] = MAC_A_BYTES[i];
      }
      m.u8[f + 12] = 0x88;
      m.u8[f + 13] = 0xb5;
      for (let i = 18; i < frameLen; i++) m.u8[f + i] = (i * 7) & 0xff;
      this.hdrGpa[k] = h;
      this.frameGpa[k] = f;
      this.free[k] = k;
    }
  }

  get freeChains(): number {
    return this.freeCount;
  }

  private put(id: number, addr: number, len: number, flags: number, head: boolean): void {
    const p = this.pos;
    const o32 = this.d32 + p * 4;
    this.u32[o32] = addr >>> 0;
    this.u32[o32 + 1] = 0;
    this.u32[o32 + 2] = len;
    this.u16[this.d16 + p * 8 + 6] = id;
    const f = flags | (this.wrap ? PACKED_AVAIL : PACKED_USED);
    if (!head) Atomics.store(this.u16, this.d16 + p * 8 + 7, f);
    if (++this.pos === this.num) {
      this.pos = 0;
      this.wrap ^= 1;
    }
    this.added++;
  }

  post(n: number): void {
    const u16 = this.u16;
    const cmask = this.chains - 1;
    let seq = this.seq;
    for (let i = 0; i < n; i++) {
      const id = this.free[this.freeAt];
      this.freeAt = (this.freeAt + 1) & cmask;
      const h = this.hdrGpa[id];
      this.u32[h >>> 2] = 0;
      this.u32[(h >>> 2) + 1] = 0;
      this.u32[(h >>> 2) + 2] = 0;
      const s = (this.frameGpa[id] + 14) >>> 1;
      u16[s] = seq & 0xffff;
      u16[s + 1] = seq >>> 16;
      seq = (seq + 1) >>> 0;
      // the head's flags last: the device never sees half a chain
      const headPos = this.pos;
      const headFlags = DESC_F_NEXT | (this.wrap ? PACKED_AVAIL : PACKED_USED);
      this.put(id, h, HDR, DESC_F_NEXT, true);
      this.put(id, this.frameGpa[id], this.frameLen, 0, false);
      Atomics.store(u16, this.d16 + headPos * 8 + 7, headFlags);
    }
    this.freeCount -= n;
    this.inFlight += n;
    this.seq = seq;
  }

  reclaim(): number {
    const u16 = this.u16;
    const cmask = this.chains - 1;
    let n = 0;
    for (;;) {
      const f = Atomics.load(u16, this.d16 + this.usedPos * 8 + 7);
      if (((f >>> 15) & 1) !== this.usedWrap || ((f >>> 7) & 1) !== this.usedWrap) break;
      const id = u16[this.d16 + this.usedPos * 8 + 6];
      this.free[(this.freeAt + this.freeCount) & cmask] = id;
      this.freeCount++;
      this.usedPos += 2;
      if (this.usedPos >= this.num) {
        this.usedPos -= this.num;
        this.usedWrap ^= 1;
      }
      n++;
    }
    this.inFlight -= n;
    return n;
  }

  needsKick(): boolean {
    const need = packedNeedsKick(this.u16, this.dev16, this.num, this.pos, this.wrap, this.added);
    this.added = 0;
    if (need) this.kicks++;
    return need;
  }
}

/** Guest B's RX driver on a packed ring: one 2 KiB buffer per descriptor (buffer id = buffer), mergeable; checks order. */
export class PackedRxDriver {
  readonly num: number;
  packets = 0;
  bytes = 0;
  expect = 0;
  errors = 0;
  firstError = '';
  kicks = 0;
  onPacket: ((seq: number) => void) | null = null;
  private pos = 0;
  private wrap = 1;
  private usedPos = 0;
  private usedWrap = 1;
  private added = 0;
  private readonly mask: number;
  private readonly u16: Uint16Array;
  private readonly u32: Uint32Array;
  private readonly d16: number;
  private readonly d32: number;
  private readonly dev16: number;
  private readonly free: Uint16Array;
  private freeAt = 0;
  private freeCount: number;
  private readonly bufGpa: Int32Array;
  readonly kickFd: number;
  readonly callFd: number;

  constructor(readonly vq: PackedVirtqueue, m: RamViews, readonly frameLen: number) {
    const num = vq.num;
    this.num = num;
    this.mask = num - 1;
    this.u16 = m.u16;
    this.u32 = m.u32;
    this.d16 = vq.descGpa >>> 1;
    this.d32 = vq.descGpa >>> 2;
    this.dev16 = vq.usedGpa >>> 1;
    this.kickFd = vq.kickFd;
    this.callFd = vq.callFd;
    this.free = new Uint16Array(num);
    this.freeCount = num;
    this.bufGpa = new Int32Array(num);
    for (let i = 0; i < num; i++) {
      this.bufGpa[i] = vq.ram.alloc(RX_BUF, RX_BUF);
      this.free[i] = i;
    }
  }

  get buffersPerPacket(): number {
    return Math.ceil((HDR + this.frameLen) / RX_BUF);
  }

  get held(): number {
    return this.freeCount;
  }

  post(n: number): number {
    if (n > this.freeCount) n = this.freeCount;
    for (let i = 0; i < n; i++) {
      const id = this.free[this.freeAt];
      this.freeAt = (this.freeAt + 1) & this.mask;
      const p = this.pos;
      const o32 = this.d32 + p * 4;
      this.u32[o32] = this.bufGpa[id];
      this.u32[o32 + 1] = 0;
      this.u32[o32 + 2] = RX_BUF;
      this.u16[this.d16 + p * 8 + 6] = id;
      Atomics.store(this.u16, this.d16 + p * 8 + 7, DESC_F_WRITE | (this.wrap ? PACKED_AVAIL : PACKED_USED));
      if (++this.pos === this.num) {
        this.pos = 0;
        this.wrap ^= 1;
      }
    }
    this.added += n;
    this.freeCount -= n;
    return n;
  }

  private usedAt(k: number): boolean {
    let p = this.usedPos + k;
    let w = this.usedWrap;
    if (p >= this.num) {
      p -= this.num;
      w ^= 1;
    }
    const f = Atomics.load(this.u16, this.d16 + p * 8 + 7);
    return ((f >>> 15) & 1) === w && ((f >>> 7) & 1) === w;
  }

  consume(): number {
    const u16 = this.u16;
    const u32 = this.u32;
    let got = 0;
    while (this.usedAt(0)) {
      const id = u16[this.d16 + this.usedPos * 8 + 6];
      let len = u32[this.d32 + this.usedPos * 4 + 2];
      const b = this.bufGpa[id] >>> 1;
      const nb = u16[b + 5];
      const seq = u16[b + 13] | (u16[b + 14] << 16);
      if (nb < 1 || nb > this.num || !this.usedAt(nb - 1)) {
        this.fail(`num_buffers ${nb} and fewer used descriptors`);
        break;
      }
      this.give(id);
      for (let k = 1; k < nb; k++) {
        let p = this.usedPos + k;
        if (p >= this.num) p -= this.num;
        len += u32[this.d32 + p * 4 + 2];
        this.give(u16[this.d16 + p * 8 + 6]);
      }
      this.usedPos += nb;
      if (this.usedPos >= this.num) {
        this.usedPos -= this.num;
        this.usedWrap ^= 1;
      }
      if (seq >>> 0 !== this.expect) this.fail(`sequence ${seq >>> 0}, expected ${this.expect}`);
      this.expect = ((seq >>> 0) + 1) >>> 0;
      if (len !== HDR + this.frameLen) this.fail(`packet of ${len} bytes, expected ${HDR + this.frameLen}`);
      this.packets++;
      this.bytes += len - HDR;
      got++;
      if (this.onPacket !== null) this.onPacket(seq);
    }
    return got;
  }

  needsKick(): boolean {
    const need = packedNeedsKick(this.u16, this.dev16, this.num, this.pos, this.wrap, this.added);
    this.added = 0;
    if (need) this.kicks++;
    return need;
  }

  private give(id: number): void {
    this.free[(this.freeAt + this.freeCount) & this.mask] = id;
    this.freeCount++;
  }

  private fail(what: string): void {
    if (this.errors === 0) this.firstError = `packet ${this.packets}: ${what}`;
    this.errors++;
  }
}

/** what the rig needs of a guest's TX and RX driver (split or packed) */
type TxSide = TxDriver | PackedTxDriver;
type RxSide = RxDriver | PackedRxDriver;

export type Drive = 'kick' | 'direct';
export type Path = 'fast' | 'store';

export interface RigOptions {
  ring: number;
  frameBytes: number;
  /** packed virtqueues on both guests (VIRTIO_F_RING_PACKED) */
  packed?: boolean;
  log?: (msg: string) => void;
}

/** Two VhostUserPorts on a Switch, each with a started in-process front-end, and the two drivers. */
export class Rig {
  sw!: Switch;
  portA!: VhostUserPort;
  portB!: VhostUserPort;
  feA!: FrontEnd;
  feB!: FrontEnd;
  tx!: TxSide;
  rx!: RxSide;
  txRing!: DeviceRing;
  rxRing!: DeviceRing;
  /** frames per TX batch on the fast path: what A's ring and B's ring both hold, at most TX_BUDGET */
  batch = 0;
  /** frames per store+drain round */
  burst = BURST;
  private constructor(readonly opts: RigOptions) {}

  static async create(opts: RigOptions): Promise<Rig> {
    const rig = new Rig(opts);
    await rig.setUp();
    return rig;
  }

  private async setUp(): Promise<void> {
    const { ring, frameBytes } = this.opts;
    const log = this.opts.log ?? (() => {});
    this.sw = new Switch({ poolBytes: 64 * 1024 * 1024, defaultShareLimit: 32768 });
    this.portA = new VhostUserPort(this.sw, { name: 'vmA', log, staticMac: MAC_A });
    this.portB = new VhostUserPort(this.sw, { name: 'vmB', log, staticMac: MAC_B });
    const ramBytes = 16 * 1024 * 1024 + ring * 9216;
    const a = FrontEnd.pair('feA');
    this.portA.bind(a.backendFd);
    this.feA = a.fe;
    const startOpts = { num: ring, ram: [{ gpa: 0, size: ramBytes }], rxBuffers: [0, RX_BUF] as [number, number] };
    if (this.opts.packed) await this.feA.startPacked(startOpts);
    else await this.feA.start(startOpts);
    const b = FrontEnd.pair('feB');
    this.portB.bind(b.backendFd);
    this.feB = b.fe;
    if (this.opts.packed) await this.feB.startPacked(startOpts);
    else await this.feB.start(startOpts);
    if (!this.feB.mergeable) throw new Error('MRG_RXBUF not negotiated');
    if (this.opts.packed) {
      this.tx = new PackedTxDriver(this.feA.packedRings[1], ramViews(this.feA), frameBytes);
      this.rx = new PackedRxDriver(this.feB.packedRings[0], ramViews(this.feB), frameBytes);
    } else {
      this.tx = new TxDriver(this.feA.rings[1], ramViews(this.feA), frameBytes);
      this.rx = new RxDriver(this.feB.rings[0], ramViews(this.feB), frameBytes);
    }
    this.txRing = this.portA.session!.rings[1];
    this.rxRing = this.portB.session!.rings[0];
    // the first kick starts A's TX ring in the back-end (B's RX ring was kicked by start())
    native.eventfdWrite(this.tx.kickFd, 1);
    await waitFor(() => this.txRing.started && this.rxRing.started, 2000, 'rings to start');
    const fits = Math.floor(ring / this.rx.buffersPerPacket);
    this.batch = Math.min(this.tx.chains, fits, TX_BUDGET);
    this.burst = BURST;
    // B's RX ring starts empty: the fast path stocks it on its first pass, store+drain keeps it so
  }

  // ---- the guest loop, one pass

  private kickTx(drive: Drive): void {
    if (!this.tx.needsKick()) return;
    if (drive === 'kick') native.eventfdWrite(this.tx.kickFd, 1);
    else this.portA.kick(this.txRing);
  }

  private kickRx(drive: Drive): void {
    if (!this.rx.needsKick()) return;
    if (drive === 'kick') native.eventfdWrite(this.rx.kickFd, 1);
    else this.portB.kick(this.rxRing);
  }

  /** the fast path posts no more frames (to let the last batch land) */
  stopSending = false;

  /** fast path: B takes what arrived and reposts, A reclaims and posts the next batch. */
  fastPass(drive: Drive): void {
    const rx = this.rx;
    if (rx.consume() > 0 || rx.held > 0) {
      rx.post(rx.held);
      this.kickRx(drive);
    }
    const tx = this.tx;
    tx.reclaim();
    // a new batch only once the last one went through (B's ring must hold a whole batch)
    if (tx.inFlight === 0 && !this.stopSending) {
      tx.post(this.batch);
      this.kickTx(drive);
    }
  }

  // store+drain state
  private sending = true;
  private roundStart = 0;

  /** Starts a store+drain round: B holds all its buffers (its ring is empty). */
  beginStoreRound(): void {
    this.sending = true;
    this.roundStart = this.tx.seq;
  }

  /** store+drain: returns true when the round's burst has all been received. */
  storePass(drive: Drive): boolean {
    const tx = this.tx;
    const rx = this.rx;
    tx.reclaim();
    if (this.sending) {
      const left = this.burst - (tx.seq - this.roundStart);
      if (left > 0 && tx.freeChains > 0) {
        tx.post(left < tx.freeChains ? left : tx.freeChains);
        this.kickTx(drive);
        return false;
      }
      if (tx.inFlight > 0) return false;
      this.sending = false; // the whole burst is in the elastic FIFO
    }
    rx.consume();
    const waiting = this.roundStart + this.burst - rx.expect;
    if (waiting === 0) return true;
    // post buffers for what is still waiting, no more: the ring is empty again when the round ends
    const posted = this.rx.num - rx.held;
    const want = waiting * rx.buffersPerPacket - posted;
    if (want > 0 && rx.held > 0) {
      rx.post(want);
      this.kickRx(drive);
    }
    return false;
  }

  /** the ring is empty: B holds every buffer */
  get rxEmpty(): boolean {
    return this.rx.held === this.rx.num;
  }

  /** Checks the run: every frame received in order, nothing dropped, the right path taken. */
  check(path: Path): void {
    const s = this.sw.stats();
    const problems: string[] = [];
    if (this.rx.errors > 0) problems.push(`${this.rx.errors} bad packets (first: ${this.rx.firstError})`);
    if (s.total.dropped !== 0) problems.push(`${s.total.dropped} frames dropped by the switch`);
    const ca = this.portA.counters;
    const cb = this.portB.counters;
    if (ca.txDropped !== 0 || cb.rxTooBig !== 0 || ca.brokenRings + cb.brokenRings !== 0) problems.push(`port counters ${JSON.stringify({ a: ca, b: cb })}`);
    if (path === 'fast' && s.total.storedFrames !== 0) problems.push(`fast path stored ${s.total.storedFrames} frames`);
    if (path === 'store' && s.total.fastFrames !== 0) problems.push(`store path sent ${s.total.fastFrames} frames by the fast path`);
    if (problems.length > 0) throw new Error(`${this.opts.frameBytes}-byte ${path}: ${problems.join('; ')}`);
  }

  // ---- drive 'kick': the guests run on their interrupts (call eventfds), the back-end on kicks

  /** the pass the interrupts run, while runOnInterrupts is active */
  private step: (() => void) | null = null;
  private irqs: Poller[] = [];
  private readonly onIrqTx = (status: number): void => {
    native.eventfdRead(this.tx.callFd);
    if (status >= 0 && this.step !== null) this.step();
  };
  private readonly onIrqRx = (status: number): void => {
    native.eventfdRead(this.rx.callFd);
    if (status >= 0 && this.step !== null) this.step();
  };

  /**
   * Runs pass() once now and then on every interrupt (A's TX completion, B's RX) until it returns
   * true. Fails when nothing moves for 2 s (a lost kick or interrupt).
   */
  runOnInterrupts(pass: () => boolean): Promise<void> {
    if (this.irqs.length === 0) {
      this.irqs = [native.poll(this.tx.callFd, this.onIrqTx), native.poll(this.rx.callFd, this.onIrqRx)];
      for (const p of this.irqs) p.start(native.POLL_READABLE);
    }
    return new Promise((resolve, reject) => {
      let last = -1;
      const watchdog = setInterval(() => {
        const now = this.tx.seq + this.rx.packets;
        if (now === last) {
          finish();
          reject(new Error(`no progress for 2 s: sent ${this.tx.seq}, received ${this.rx.packets}, ${JSON.stringify(this.sw.stats().total)}`));
        }
        last = now;
      }, 2000);
      const finish = (): void => {
        clearInterval(watchdog);
        this.step = null;
      };
      this.step = () => {
        if (pass()) {
          finish();
          resolve();
        }
      };
      this.step();
    });
  }

  async close(): Promise<void> {
    for (const p of this.irqs) p.close();
    this.irqs = [];
    this.feA.close();
    this.feB.close();
    await waitFor(() => !this.portA.connected && !this.portB.connected, 2000, 'ports to see the disconnect');
    this.sw.close();
  }
}

// ---- runners: move frames until a condition holds (frames counted at B)

/**
 * Runs the guest loop until B has received `until()` true. drive 'direct' is a plain loop; 'kick'
 * runs one pass per event-loop turn (setImmediate) and resolves when done.
 */
export function run(rig: Rig, drive: Drive, path: Path, until: () => boolean): Promise<void> {
  const pass =
    path === 'fast'
      ? (): boolean => {
          rig.fastPass(drive);
          return until();
        }
      : (): boolean => {
          while (rig.storePass(drive)) {
            if (until()) return true;
            rig.beginStoreRound();
          }
          return false;
        };
  if (path === 'store') rig.beginStoreRound();
  if (drive === 'direct') {
    while (!pass());
    return Promise.resolve();
  }
  return rig.runOnInterrupts(pass);
}

/** B has received every frame A sent (and for store, the round is over) */
export function settled(rig: Rig): boolean {
  return rig.rx.expect === rig.tx.seq && rig.tx.inFlight === 0;
}

/** Counts garbage collections (PerformanceObserver 'gc' entries) while fn's promise runs. */
export async function countGcs(fn: () => Promise<void>): Promise<number> {
  let n = 0;
  const obs = new PerformanceObserver((list) => {
    n += list.getEntries().length;
  });
  obs.observe({ entryTypes: ['gc'] });
  await fn();
  await yieldLoop();
  await yieldLoop();
  obs.disconnect();
  return n;
}

// ---- the benchmark

const SECONDS = Number(process.env.BENCH_SECONDS ?? 1.5);
const WARMUP_MS = 300;

interface Cell {
  drive: Drive;
  path: Path;
  size: number;
  ring: number;
  frames: number;
  seconds: number;
  gcs: number;
  framesPerKick: number;
}

async function cell(drive: Drive, path: Path, size: number, ring: number): Promise<Cell> {
  const rig = await Rig.create({ ring, frameBytes: size });
  // time is read every few passes: performance.now() is not free
  let deadline = 0;
  let passes = 0;
  const timeUp = (): boolean => {
    if ((++passes & 15) !== 0) return false;
    return performance.now() >= deadline && (path === 'fast' || settled(rig));
  };
  // BENCH_NO_CALLS=1 (drive direct only, for profiles): the back-end's call eventfd writes become
  // no-ops; the sampling profiler charges them far more than they cost (see BENCHMARKS.md)
  const eventfdWrite = native.eventfdWrite;
  const noCalls = process.env.BENCH_NO_CALLS === '1' && drive === 'direct';
  if (noCalls) native.eventfdWrite = () => {};
  deadline = performance.now() + WARMUP_MS;
  await run(rig, drive, path, timeUp);
  const f0 = rig.rx.packets;
  const k0 = rig.tx.kicks;
  let t0 = 0;
  let t1 = 0;
  const gcs = await countGcs(async () => {
    t0 = performance.now();
    deadline = t0 + SECONDS * 1000;
    await run(rig, drive, path, timeUp);
    t1 = performance.now();
  });
  const frames = rig.rx.packets - f0;
  const kicks = rig.tx.kicks - k0;
  native.eventfdWrite = eventfdWrite;
  // let the last batch land, then check everything arrived in order
  rig.stopSending = true;
  await run(rig, drive, path, () => settled(rig));
  rig.check(path);
  await rig.close();
  return { drive, path, size, ring, frames, seconds: (t1 - t0) / 1000, gcs, framesPerKick: frames / Math.max(1, kicks) };
}

async function main(): Promise<void> {
  const only = process.argv[2];
  const cells: Cell[] = [];
  if (only) {
    const [drive, path, size, ring] = only.split(':');
    cells.push(await cell(drive as Drive, (path === 'store+drain' ? 'store' : path) as Path, Number(size), Number(ring ?? 256)));
  } else {
    for (const path of ['fast', 'store'] as Path[])
      for (const ring of [256, 1024])
        for (const size of [64, 1518, 9000])
          for (const drive of ['kick', 'direct'] as Drive[]) cells.push(await cell(drive, path, size, ring));
  }
  const rows = cells.map((c) => {
    const fps = c.frames / c.seconds;
    return [
      String(c.size),
      String(c.ring),
      c.path === 'store' ? 'store+drain' : 'fast',
      c.drive,
      (fps / 1e6).toFixed(3),
      ((fps * c.size * 8) / 1e9).toFixed(2),
      (1e9 / fps).toFixed(0),
      c.framesPerKick.toFixed(0),
      String(c.gcs),
    ];
  });
  const head = ['frame bytes', 'ring', 'path', 'drive', 'Mfps', 'Gbit/s', 'ns/frame', 'frames/TX kick', 'GCs'];
  const left = 4;
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => `| ${r.map((x, i) => (i < left ? x.padEnd(widths[i]) : x.padStart(widths[i]))).join(' | ')} |`;
  console.log(line(head));
  console.log(`|${widths.map((w, i) => (i < left ? ':' : '-') + '-'.repeat(w) + (i < left ? '-' : ':')).join('|')}|`);
  for (const r of rows) console.log(line(r));
  console.log(`\nnode ${process.version}, ${SECONDS}s per cell after ${WARMUP_MS / 1000}s warm-up; GCs = collections during the measured interval`);
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
