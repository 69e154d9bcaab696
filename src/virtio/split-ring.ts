// A split virtqueue (virtio 1.x, 2.7) living in guest memory, seen from the device side.
//
//   descriptor table  16 bytes each: le64 addr, le32 len, le16 flags, le16 next   (16-byte aligned)
//   avail ring        le16 flags, le16 idx, le16 ring[num], le16 used_event       (2-byte aligned)
//   used ring         le16 flags, le16 idx, {le32 id, le32 len}[num], le16 avail_event (4-byte aligned)
//
// All three are typed-array views on the mapped windows (made once at setup, never per frame).
// The avail index is read with Atomics.load and the used index published with Atomics.store
// (sequentially consistent: a full barrier on x86), which orders our used-ring writes before the
// index, and the index before we read the guest's used_event for notification suppression.
import { GuestMemory, Translation } from '../memory/guest-memory';
import { Segments, MAX_CHAINS, MAX_SEGMENTS } from './chain';
import type { Virtqueue } from './virtqueue';
import type { DirtyLog } from '../memory/dirty-log';
import { DEFAULTS } from '../defaults';

export const VRING_DESC_F_NEXT = 1;
export const VRING_DESC_F_WRITE = 2;
export const VRING_DESC_F_INDIRECT = 4;
export const VRING_USED_F_NO_NOTIFY = 1;
export const VRING_AVAIL_F_NO_INTERRUPT = 1;
export const MAX_RING_SIZE = 32768;
/** longest single buffer taken (1 GiB): lengths stay far from the Int32 segment fields' limit */
export const MAX_DESC_LEN = 1 << 30;
/** most descriptors one chain may have, indirect ones included (--max-chain-descriptors) */
export const DEFAULT_MAX_CHAIN_DESCRIPTORS = DEFAULTS.maxChainDescriptors;
/** chains refused for having more than maxChain descriptors, process-wide ([0]) */
export const chainLimitHits = new Float64Array(1);

/** popChain results other than a head index */
export const NONE = -1;
export const BROKEN = -2;

const TWO32 = 0x100000000;

/**
 * A split virtqueue. Its state (size, addresses, indices, enable/start, broken) changes only through
 * its methods, each checking what it is given; the session configures it and the data path uses it.
 */
export class SplitRing implements Virtqueue {
  readonly packed = false;
  private _num = 0;
  private mask = 0;
  private _descAddr = 0;
  private _availAddr = 0;
  private _usedAddr = 0;
  /** addresses set by SET_VRING_ADDR, not yet translated */
  private _addrSet = false;

  /** SET_VRING_ENABLE state; starts disabled when PROTOCOL_FEATURES is negotiated */
  private _enabled = false;
  /** started on the first kick after SET_VRING_KICK, stopped by GET_VRING_BASE */
  private _started = false;
  /** set when the front-end or guest broke the ring; nothing more is done on it until reset */
  private _broken: string | null = null;

  private _lastAvail = 0;
  private _usedIdx = 0;
  private signalledUsed = 0;
  private _eventIdx = false;
  private indirectAllowed = true;

  private _kickFd = -1;
  private _callFd = -1;
  private _errFd = -1;

  // views, made at setup()
  private desc32: Uint32Array = new Uint32Array(0);
  private desc16: Uint16Array = new Uint16Array(0);
  private desc32Base = 0;
  private desc16Base = 0;
  private avail: Uint16Array = new Uint16Array(0);
  private usedFlags: Uint16Array = new Uint16Array(0);
  private used32: Uint32Array = new Uint32Array(0);
  private availEventIdx = 0;
  /** live migration: the log the used ring's writes go to, and where the used ring is logged */
  private log: DirtyLog | null = null;
  private logAddr = -1;
  private usedGpa = -1;

  private readonly t = new Translation();
  // the window the last descriptor was found in: most buffers of a ring lie in one window, so
  // translation is two compares and a subtraction (reset whenever the memory table changes)
  private cBuf: Uint8Array = new Uint8Array(0);
  private cArea = 0;
  private cGpa = 0;
  private cStart = 0;
  private cEnd = 0;

  constructor(readonly index: number, readonly name: string, readonly maxChain = DEFAULT_MAX_CHAIN_DESCRIPTORS) {}

  get num(): number {
    return this._num;
  }
  get descAddr(): number {
    return this._descAddr;
  }
  get availAddr(): number {
    return this._availAddr;
  }
  get usedAddr(): number {
    return this._usedAddr;
  }
  get addrSet(): boolean {
    return this._addrSet;
  }
  get enabled(): boolean {
    return this._enabled;
  }
  get started(): boolean {
    return this._started;
  }
  get broken(): string | null {
    return this._broken;
  }
  get lastAvail(): number {
    return this._lastAvail;
  }
  get usedIdx(): number {
    return this._usedIdx;
  }
  get kickFd(): number {
    return this._kickFd;
  }
  get callFd(): number {
    return this._callFd;
  }
  get errFd(): number {
    return this._errFd;
  }
  /** EVENT_IDX negotiated: notifications through used_event / avail_event */
  get eventIdx(): boolean {
    return this._eventIdx;
  }
  /** started, enabled and set up: the data path may use it */
  get usable(): boolean {
    return this._started && this._enabled && this.ready;
  }

  /** SET_FEATURES: how the ring is driven */
  /** VIRTIO_RING_F_INDIRECT_DESC negotiated */
  get indirect(): boolean {
    return this.indirectAllowed;
  }

  setFeatures(eventIdx: boolean, indirect: boolean): void {
    this._eventIdx = eventIdx;
    this.indirectAllowed = indirect;
  }

  /** SET_VRING_ADDR (front-end virtual addresses); a broken ring gets a fresh start */
  setAddresses(desc: number, used: number, avail: number): void {
    this._descAddr = desc;
    this._usedAddr = used;
    this._availAddr = avail;
    this._addrSet = true;
    this._broken = null;
  }

  enable(on: boolean): void {
    this._enabled = on;
  }

  /** first kick (or polling mode) */
  start(): void {
    this._started = true;
  }

  /** GET_VRING_BASE: nothing is written to the ring until it starts again */
  stop(): void {
    this._started = false;
    // used entries pushed but not published yet cannot be left unlogged
    if (this.log !== null && this.desc32.length > 0) this.logUsed();
  }

  /** The front-end or guest broke the ring: nothing more is done on it until it is set up again. */
  markBroken(reason: string): void {
    if (this._broken === null) this._broken = reason;
  }

  setLogAddress(gpa: number): void {
    this.logAddr = gpa;
  }

  setLog(log: DirtyLog | null): void {
    this.log = log;
    // what was written before logging started is in QEMU's first full pass
  }

  /** the used ring was written: mark it (flags, index, elements, avail_event: 6 + 8 num bytes) */
  private logUsed(): void {
    const at = this.logAddr >= 0 ? this.logAddr : this.usedGpa;
    if (at >= 0) (this.log as DirtyLog).mark(at, 6 + 8 * this._num);
  }

  /** the fds: each setter returns the one it replaces (the caller closes it) */
  setKickFd(fd: number): number {
    const old = this._kickFd;
    this._kickFd = fd;
    this._broken = null; // a new kick fd is a fresh start (QEMU sends one after fixing a ring)
    return old;
  }
  setCallFd(fd: number): number {
    const old = this._callFd;
    this._callFd = fd;
    return old;
  }
  setErrFd(fd: number): number {
    const old = this._errFd;
    this._errFd = fd;
    return old;
  }

  /** RESET_OWNER / RESET_DEVICE: back to the state before any message (fds are the caller's to close first) */
  reset(): void {
    this._started = false;
    this._enabled = false;
    this._addrSet = false;
    this._broken = null;
    this._num = 0;
    this.mask = 0;
    this._kickFd = this._callFd = this._errFd = -1;
    this.logAddr = -1;
    this.log = null;
    this.detachViews();
    this.setBase(0);
  }

  get ready(): boolean {
    return this._num > 0 && this._addrSet && this.desc32.length > 0 && this._broken === null;
  }

  /** Translates the ring addresses against the memory table (SET_VRING_ADDR, or after the table changed). */
  setup(mem: GuestMemory): void {
    const num = this._num;
    this.forgetWindow();
    this.desc32 = new Uint32Array(0);
    if (!this._addrSet || num === 0) return;
    const d = mem.translateUva(this._descAddr, 16 * num);
    const a = mem.translateUva(this._availAddr, 6 + 2 * num);
    const u = mem.translateUva(this._usedAddr, 6 + 8 * num);
    if (!d || !a || !u) {
      const which = !d ? 'descriptor table' : !a ? 'avail ring' : 'used ring';
      const addr = !d ? this._descAddr : !a ? this._availAddr : this._usedAddr;
      throw new Error(`${this.name}: ${which} at 0x${addr.toString(16)} (ring size ${num}) is not inside guest memory`);
    }
    if (d.off % 16 || a.off % 2 || u.off % 4) {
      throw new Error(`${this.name}: misaligned ring (desc 0x${this._descAddr.toString(16)}, avail 0x${this._availAddr.toString(16)}, used 0x${this._usedAddr.toString(16)})`);
    }
    this.desc32 = d.u32;
    this.desc16 = d.u16;
    this.desc32Base = d.off >>> 2;
    this.desc16Base = d.off >>> 1;
    this.avail = new Uint16Array(a.buf.buffer, a.buf.byteOffset + a.off, 3 + num);
    this.usedFlags = new Uint16Array(u.buf.buffer, u.buf.byteOffset + u.off, 3 + 4 * num);
    this.used32 = new Uint32Array(u.buf.buffer, u.buf.byteOffset + u.off, 1 + 2 * num);
    this.availEventIdx = 2 + 4 * num;
    this.usedGpa = mem.uvaToGpa(this._usedAddr);
  }

  setNum(num: number): void {
    if (num === 0 || num > MAX_RING_SIZE || (num & (num - 1)) !== 0) {
      throw new Error(`${this.name}: ring size ${num} is not a power of 2 in [1, ${MAX_RING_SIZE}]`);
    }
    this._num = num;
    this.mask = num - 1;
  }

  setBase(base: number): void {
    if (base > 0xffff) throw new Error(`${this.name}: base ${base} does not fit a split ring index`);
    this._lastAvail = base & 0xffff;
    this._usedIdx = base & 0xffff;
    this.signalledUsed = base & 0xffff;
  }

  getBase(): number {
    return this._lastAvail;
  }

  private forgetWindow(): void {
    this.cBuf = new Uint8Array(0);
    this.cArea = 0;
    this.cGpa = 0;
    this.cStart = 0;
    this.cEnd = 0;
  }

  /** Drops the views (memory going away, ring reset). */
  detachViews(): void {
    this.forgetWindow();
    this.desc32 = new Uint32Array(0);
    this.desc16 = new Uint16Array(0);
    this.avail = new Uint16Array(0);
    this.usedFlags = new Uint16Array(0);
    this.used32 = new Uint32Array(0);
  }

  /** Number of chains the guest made available that we have not taken yet; -1 when broken. */
  availCount(): number {
    if (this.desc32.length === 0 || this._broken !== null) return 0;
    const n = (Atomics.load(this.avail, 1) - this._lastAvail) & 0xffff;
    if (n > this._num) {
      this._broken = `avail index jumped by ${n}, more than the ring size ${this._num}`;
      return -1;
    }
    return n;
  }

  /**
   * Takes the next available chain and appends its buffers to segs (as a new chain entry).
   * writable: the chain must consist of device-writable buffers (RX) or device-readable ones (TX).
   * Returns the head index, NONE when nothing is available, BROKEN (and sets this._broken) on a bad chain.
   * Call availCount() first; this does not re-check it.
   */
  popChain(mem: GuestMemory, segs: Segments, writable: boolean): number {
    const head = this.avail[2 + (this._lastAvail & this.mask)];
    if (head >= this._num) return this.fail(`avail ring entry ${this._lastAvail} names descriptor ${head}, beyond the ring size ${this._num}`);
    if (segs.chains >= MAX_CHAINS) return this.fail('too many chains in one gather');
    let t32 = this.desc32;
    let t16 = this.desc16;
    let b32 = this.desc32Base;
    let b16 = this.desc16Base;
    let size = this._num;
    let i = head;
    let count = 0;
    let total = 0;
    let indirect = false;
    let cap = 0;
    const t = this.t;
    for (;;) {
      if (++total > this.maxChain) {
        chainLimitHits[0]++;
        return this.fail(`descriptor chain from head ${head} has more than ${this.maxChain} descriptors (--max-chain-descriptors)`);
      }
      if (++count > size) return this.fail(`descriptor chain from head ${head} loops (more than ${size} descriptors${indirect ? ' in its indirect table' : ''})`);
      const o32 = b32 + i * 4;
      let addr = t32[o32] + t32[o32 + 1] * TWO32;
      let len = t32[o32 + 2];
      const flags = t16[b16 + i * 8 + 6];
      if (flags & VRING_DESC_F_INDIRECT) {
        if (indirect) return this.fail(`descriptor chain from head ${head}: indirect descriptor inside an indirect table`);
        if (!this.indirectAllowed) return this.fail(`descriptor chain from head ${head}: indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC`);
        if (flags & VRING_DESC_F_NEXT) return this.fail(`descriptor chain from head ${head}: indirect descriptor with the NEXT flag`);
        if (len === 0 || len % 16 !== 0 || len / 16 > MAX_SEGMENTS) return this.fail(`descriptor chain from head ${head}: bad indirect table length ${len}`);
        if (!mem.contiguousGpa(addr, len, t)) return this.fail(`descriptor chain from head ${head}: indirect table at 0x${addr.toString(16)} length ${len} is not inside guest memory`);
        if (t.off % 16 !== 0) return this.fail(`descriptor chain from head ${head}: indirect table at 0x${addr.toString(16)} is not 16-byte aligned`);
        t32 = t.u32;
        t16 = t.u16;
        b32 = t.off >>> 2;
        b16 = t.off >>> 1;
        size = len / 16;
        i = 0;
        count = 0;
        indirect = true;
        continue;
      }
      // as QEMU and libvhost-user: a chain of empty buffers would cost a walk and give nothing
      if (len === 0) return this.fail(`descriptor chain from head ${head}: zero-length buffer (zero sized buffers are not allowed)`);
      if (len > MAX_DESC_LEN) return this.fail(`descriptor chain from head ${head}: buffer length ${len} beyond ${MAX_DESC_LEN}`);
      if (((flags & VRING_DESC_F_WRITE) !== 0) !== writable) {
        return this.fail(`descriptor chain from head ${head}: ${writable ? 'device-readable descriptor in an RX' : 'device-writable descriptor in a TX'} chain`);
      }
      cap += len;
      if (len > 0 && addr >= this.cStart && addr + len <= this.cEnd) {
        // the window of the last buffer holds this one too
        const n = segs.count;
        if (n >= segs.limit) return this.fail(`descriptor chain from head ${head} has more than ${MAX_SEGMENTS} segments`);
        segs.buf[n] = this.cBuf;
        segs.area[n] = this.cArea;
        segs.off[n] = addr - this.cGpa;
        segs.len[n] = len;
        segs.count = n + 1;
        len = 0;
      }
      while (len > 0) {
        if (!mem.translateGpa(addr, len, t)) {
          return this.fail(`descriptor chain from head ${head}: buffer at 0x${addr.toString(16)} length ${len} is outside guest memory`);
        }
        const n = segs.count;
        if (n >= segs.limit) return this.fail(`descriptor chain from head ${head} has more than ${MAX_SEGMENTS} segments`);
        segs.buf[n] = t.buf;
        segs.area[n] = t.area;
        segs.off[n] = t.off;
        segs.len[n] = t.len;
        segs.count = n + 1;
        this.cBuf = t.buf;
        this.cArea = t.area;
        this.cGpa = t.winGpa;
        this.cStart = t.winStart;
        this.cEnd = t.winEnd;
        addr += t.len;
        len -= t.len;
      }
      if ((flags & VRING_DESC_F_NEXT) === 0) break;
      i = t16[b16 + i * 8 + 7];
      if (i >= size) return this.fail(`descriptor chain from head ${head}: next index ${i} beyond the ${indirect ? 'indirect table' : 'ring'} size ${size}`);
    }
    const c = segs.chains;
    segs.chainHead[c] = head;
    segs.chainEnd[c] = segs.count;
    segs.chainCap[c] = cap;
    segs.chains = c + 1;
    segs.total += cap;
    this._lastAvail = (this._lastAvail + 1) & 0xffff;
    return head;
  }

  touch(k: number): number {
    const a = this.avail;
    const d = this.desc32;
    const m = this.mask;
    const b = this.desc32Base;
    const num = this._num;
    let s = 0;
    for (let j = 0; j < k; j++) {
      const head = a[2 + ((this._lastAvail + j) & m)];
      if (head < num) s += d[b + head * 4 + 2];
    }
    return s;
  }

  /** Gives back the last n chains taken with popChain (not yet used): they will be taken again. */
  unpop(n: number): void {
    this._lastAvail = (this._lastAvail - n) & 0xffff;
  }

  /** Adds a used element; visible to the guest only after publish(). */
  pushUsed(head: number, len: number): void {
    const o = 1 + 2 * (this._usedIdx & this.mask);
    this.used32[o] = head;
    this.used32[o + 1] = len;
    this._usedIdx = (this._usedIdx + 1) & 0xffff;
  }

  publish(): void {
    Atomics.store(this.usedFlags, 1, this._usedIdx);
    if (this.log !== null) this.logUsed();
  }

  /** Signals the guest through the call eventfd if it asked to be (used_event / NO_INTERRUPT). */
  signal(write: (fd: number) => void): void {
    if (this._usedIdx === this.signalledUsed || this._callFd < 0 || this.desc32.length === 0) return;
    let need: boolean;
    if (this._eventIdx) {
      const ev = this.avail[2 + this._num];
      const nw = this._usedIdx;
      need = ((nw - ev - 1) & 0xffff) < ((nw - this.signalledUsed) & 0xffff);
    } else {
      need = (this.avail[0] & VRING_AVAIL_F_NO_INTERRUPT) === 0;
    }
    this.signalledUsed = this._usedIdx;
    if (need) write(this._callFd);
  }

  /** Ask the guest to kick when it makes more buffers available. */
  enableNotify(): void {
    if (this.desc32.length === 0) return;
    if (this._eventIdx) Atomics.store(this.usedFlags, this.availEventIdx, this._lastAvail);
    else Atomics.store(this.usedFlags, 0, this.usedFlags[0] & ~VRING_USED_F_NO_NOTIFY);
    if (this.log !== null) this.logUsed();
  }

  /**
   * RX, holding a frame that needs more buffers than are available: ask for a kick when the guest
   * makes any more available. avail_event = lastAvail would not do — the guest is already past it,
   * so it would never kick. Returns true when buffers came in meanwhile (no kick will come for them).
   */
  enableNotifyBeyond(): boolean {
    if (this.desc32.length === 0) return false;
    const seen = Atomics.load(this.avail, 1);
    if (this._eventIdx) Atomics.store(this.usedFlags, this.availEventIdx, seen);
    else Atomics.store(this.usedFlags, 0, this.usedFlags[0] & ~VRING_USED_F_NO_NOTIFY);
    if (this.log !== null) this.logUsed();
    return Atomics.load(this.avail, 1) !== seen;
  }

  /** Tell the guest kicks are not needed (we are busy, or have nothing waiting for it). */
  disableNotify(): void {
    if (this.desc32.length === 0) return;
    // With EVENT_IDX leaving avail_event behind suppresses further kicks by itself.
    if (!this._eventIdx) {
      Atomics.store(this.usedFlags, 0, this.usedFlags[0] | VRING_USED_F_NO_NOTIFY);
      if (this.log !== null) this.logUsed();
    }
  }

  private fail(reason: string): number {
    this.markBroken(reason);
    return BROKEN;
  }
}
