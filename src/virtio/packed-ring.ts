// A packed virtqueue (virtio 1.1+, 2.8) living in guest memory, seen from the device side.
//
//   descriptor ring           16 bytes each: le64 addr, le32 len, le16 id, le16 flags   (16-byte aligned)
//   driver event suppression  le16 off_wrap, le16 flags   (SET_VRING_ADDR's "avail" address; we read it)
//   device event suppression  le16 off_wrap, le16 flags   (SET_VRING_ADDR's "used" address; we write it)
//
// One ring serves both ways: the driver makes a descriptor available by setting its AVAIL flag
// bit to its wrap counter and USED to the inverse; the device writes one used descriptor per chain
// (id and len, then AVAIL = USED = its wrap counter) over the first descriptor of the chain and
// skips forward by the chain's length. Chains are used in the order they were taken (the data path
// never completes out of order), so the used position is always the start of the oldest chain in
// flight. The flags are read with Atomics.load and written with Atomics.store (sequentially
// consistent: a full barrier on x86), which orders the descriptor reads after the flags that expose
// them, and our id/len writes before the flags that hand them back.
//
// Positions are kept as (index in [0, num), wrap bit); lastAvail and usedIdx show them as
// index | wrap << 15, and GET/SET_VRING_BASE carry avail in bits 0-15 and used in bits 16-31.
import { GuestMemory, Translation } from '../memory/guest-memory';
import { Segments, MAX_CHAINS, MAX_SEGMENTS } from './chain';
import { BROKEN, chainLimitHits, DEFAULT_MAX_CHAIN_DESCRIPTORS, MAX_DESC_LEN, MAX_RING_SIZE, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from './split-ring';
import type { Virtqueue } from './virtqueue';
import type { DirtyLog } from '../memory/dirty-log';

export const VRING_PACKED_DESC_F_AVAIL = 1 << 7;
export const VRING_PACKED_DESC_F_USED = 1 << 15;
export const RING_EVENT_FLAGS_ENABLE = 0;
export const RING_EVENT_FLAGS_DISABLE = 1;
/** only with VIRTIO_RING_F_EVENT_IDX: an event for one descriptor position (off_wrap) */
export const RING_EVENT_FLAGS_DESC = 2;

const TWO32 = 0x100000000;
/** the base of a fresh ring: avail and used at 0, both wrap counters 1 */
const START_BASE = 0x80008000;

/** 16-bit index of the flags of descriptor i (byte 14 of 16), of its id (byte 12) */
const FLAGS16 = 7;
const ID16 = 6;

/** flags f show a descriptor made available in the lap with wrap counter w: AVAIL = w, USED = !w */
function availIn(f: number, w: number): boolean {
  return ((f >>> 7) & 1) === w && f >>> 15 !== w;
}

export class PackedRing implements Virtqueue {
  readonly packed = true;
  private _num = 0;
  private _descAddr = 0;
  /** driver event suppression ("avail" address of SET_VRING_ADDR) */
  private _driverAddr = 0;
  /** device event suppression ("used" address) */
  private _deviceAddr = 0;
  private _addrSet = false;
  private _enabled = false;
  private _started = false;
  private _broken: string | null = null;
  private _eventIdx = false;
  private indirectAllowed = true;

  // the next descriptor to take, the next used descriptor to write: index and wrap counter
  private availPos = 0;
  private availWrap = 1;
  private usedPos = 0;
  private usedWrap = 1;
  /** the used position at the last signal(), and whether used descriptors went out since */
  private signalledPos = 0;
  private unsignalled = false;

  // The scan: complete chains the driver made available beyond availPos, counted by availCount()
  // once and taken by popChain(). The cursor sits on a chain boundary.
  private scanPos = 0;
  private scanWrap = 1;
  private scanChains = 0;
  private scanDescs = 0;

  // Chains taken and not used yet, oldest first (a ring of num entries: each takes a descriptor):
  // where each started (index | wrap << 15) and how many ring descriptors it took.
  private inflightAt: Uint16Array = new Uint16Array(0);
  private inflightLen: Uint16Array = new Uint16Array(0);
  private inflightFirst = 0;
  private inflightCount = 0;
  private inflightDescs = 0;

  // used descriptors written but not yet handed back (their flags are written by publish())
  private pendingAt: Uint16Array = new Uint16Array(0);
  private pendingFlags: Uint16Array = new Uint16Array(0);
  private pendingCount = 0;

  private _kickFd = -1;
  private _callFd = -1;
  private _errFd = -1;

  // views, made at setup()
  private desc32: Uint32Array = new Uint32Array(0);
  private desc16: Uint16Array = new Uint16Array(0);
  private desc32Base = 0;
  private desc16Base = 0;
  private driverEvent: Uint16Array = new Uint16Array(0);
  private deviceEvent: Uint16Array = new Uint16Array(0);

  private readonly t = new Translation();
  /** the indirect table being walked (its own: buffers are translated through t meanwhile) */
  private readonly ti = new Translation();
  // the window the last buffer was found in (as SplitRing: reset whenever the memory table changes)
  private cBuf: Uint8Array = new Uint8Array(0);
  private cArea = 0;
  private cGpa = 0;
  private cStart = 0;
  private cEnd = 0;

  /** live migration: the log the ring's writes go to; where its parts lie guest-physically */
  private log: DirtyLog | null = null;
  private logAddr = -1;
  private descGpa = -1;
  private deviceGpa = -1;

  constructor(readonly index: number, readonly name: string, readonly maxChain = DEFAULT_MAX_CHAIN_DESCRIPTORS) {}

  get num(): number {
    return this._num;
  }
  get addrSet(): boolean {
    return this._addrSet;
  }
  get descAddr(): number {
    return this._descAddr;
  }
  /** the driver event suppression area */
  get availAddr(): number {
    return this._driverAddr;
  }
  /** the device event suppression area */
  get usedAddr(): number {
    return this._deviceAddr;
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
  /** the next descriptor to take: index | wrap counter << 15 */
  get lastAvail(): number {
    return this.availPos | (this.availWrap << 15);
  }
  /** the next used descriptor to write: index | wrap counter << 15 */
  get usedIdx(): number {
    return this.usedPos | (this.usedWrap << 15);
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
  get eventIdx(): boolean {
    return this._eventIdx;
  }
  get usable(): boolean {
    return this._started && this._enabled && this.ready;
  }
  get ready(): boolean {
    return this._num > 0 && this._addrSet && this.desc32.length > 0 && this._broken === null;
  }

  /** VIRTIO_RING_F_INDIRECT_DESC negotiated */
  get indirect(): boolean {
    return this.indirectAllowed;
  }

  setFeatures(eventIdx: boolean, indirect: boolean): void {
    this._eventIdx = eventIdx;
    this.indirectAllowed = indirect;
  }

  /** SET_VRING_ADDR: desc = descriptor ring, avail = driver area, used = device area */
  setAddresses(desc: number, used: number, avail: number): void {
    this._descAddr = desc;
    this._deviceAddr = used;
    this._driverAddr = avail;
    this._addrSet = true;
    this._broken = null;
  }

  enable(on: boolean): void {
    this._enabled = on;
  }
  start(): void {
    this._started = true;
  }
  stop(): void {
    this._started = false;
    // used descriptors written but not handed back yet cannot be left unlogged
    if (this.log !== null && this.desc32.length > 0) {
      this.logDescs();
      this.logDevice();
    }
  }

  setLogAddress(gpa: number): void {
    this.logAddr = gpa;
  }

  setLog(log: DirtyLog | null): void {
    this.log = log;
  }

  /** live migration: the descriptor ring was written (used descriptors: id, len, flags) */
  private logDescs(): void {
    if (this.descGpa >= 0) (this.log as DirtyLog).mark(this.descGpa, 16 * this._num);
  }

  /** live migration: the device event suppression area was written (and what QEMU logs as the
   * "used" address of the ring, VHOST_VRING_F_LOG) */
  private logDevice(): void {
    const log = this.log as DirtyLog;
    if (this.deviceGpa >= 0) log.mark(this.deviceGpa, 4);
    if (this.logAddr >= 0) log.mark(this.logAddr, 4);
  }
  markBroken(reason: string): void {
    if (this._broken === null) this._broken = reason;
  }

  setKickFd(fd: number): number {
    const old = this._kickFd;
    this._kickFd = fd;
    this._broken = null;
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

  reset(): void {
    this._started = false;
    this._enabled = false;
    this._addrSet = false;
    this._broken = null;
    this._num = 0;
    this._kickFd = this._callFd = this._errFd = -1;
    this.logAddr = -1;
    this.log = null;
    this.detachViews();
    this.setBase(START_BASE);
  }

  /** Packed rings need not be a power of 2 in size (2.8: up to 2^15 entries). */
  setNum(num: number): void {
    if (!Number.isInteger(num) || num < 1 || num > MAX_RING_SIZE) {
      throw new Error(`${this.name}: ring size ${num} is not in [1, ${MAX_RING_SIZE}]`);
    }
    this._num = num;
    this.inflightAt = new Uint16Array(num);
    this.inflightLen = new Uint16Array(num);
    this.pendingAt = new Uint16Array(num);
    this.pendingFlags = new Uint16Array(num);
    this.forgetProgress();
  }

  /**
   * SET_VRING_BASE: avail index and wrap counter in bits 0-14 and 15, used ones in bits 16-30 and
   * 31 (QEMU). A front-end that sends only the avail half (DPDK's virtio-user sends 0x8000 at
   * start) means used = avail, as DPDK's own vhost back-end takes it. Chains taken by an earlier
   * device and never used cannot be completed: used must equal avail.
   */
  setBase(base: number): void {
    if (!Number.isInteger(base) || base < 0 || base > 0xffffffff) throw new Error(`${this.name}: base ${base} is not a 32-bit value`);
    const avail = base & 0xffff;
    const used = base >>> 16 === 0 ? avail : base >>> 16;
    if (used !== avail) {
      throw new Error(`${this.name}: base 0x${base.toString(16)}: used index 0x${used.toString(16)} differs from avail index 0x${avail.toString(16)} (buffers in flight from before are not supported)`);
    }
    if (this._num > 0 && (avail & 0x7fff) >= this._num) {
      throw new Error(`${this.name}: base 0x${base.toString(16)}: index ${avail & 0x7fff} beyond the ring size ${this._num}`);
    }
    this.availPos = this.usedPos = this.signalledPos = this.scanPos = avail & 0x7fff;
    this.availWrap = this.usedWrap = this.scanWrap = avail >>> 15;
    this.forgetProgress();
  }

  /** nothing counted, taken or written beyond the positions (a new base or ring size) */
  private forgetProgress(): void {
    this.scanPos = this.availPos;
    this.scanWrap = this.availWrap;
    this.usedPos = this.signalledPos = this.availPos;
    this.usedWrap = this.availWrap;
    this.unsignalled = false;
    this.scanChains = this.scanDescs = 0;
    this.inflightFirst = this.inflightCount = this.inflightDescs = 0;
    this.pendingCount = 0;
  }

  getBase(): number {
    return (this.lastAvail | (this.usedIdx << 16)) >>> 0;
  }

  setup(mem: GuestMemory): void {
    const num = this._num;
    this.forgetWindow();
    this.desc32 = new Uint32Array(0);
    if (!this._addrSet || num === 0) return;
    const d = mem.translateUva(this._descAddr, 16 * num);
    const drv = mem.translateUva(this._driverAddr, 4);
    const dev = mem.translateUva(this._deviceAddr, 4);
    if (!d || !drv || !dev) {
      const which = !d ? 'descriptor ring' : !drv ? 'driver event suppression area' : 'device event suppression area';
      const addr = !d ? this._descAddr : !drv ? this._driverAddr : this._deviceAddr;
      throw new Error(`${this.name}: ${which} at 0x${addr.toString(16)} (packed ring size ${num}) is not inside guest memory`);
    }
    if (d.off % 16 || drv.off % 4 || dev.off % 4) {
      throw new Error(`${this.name}: misaligned packed ring (desc 0x${this._descAddr.toString(16)}, driver area 0x${this._driverAddr.toString(16)}, device area 0x${this._deviceAddr.toString(16)})`);
    }
    if (this.availPos >= num) throw new Error(`${this.name}: ring index ${this.availPos} beyond the ring size ${num}`);
    this.desc32 = d.u32;
    this.desc16 = d.u16;
    this.desc32Base = d.off >>> 2;
    this.desc16Base = d.off >>> 1;
    this.driverEvent = new Uint16Array(drv.buf.buffer, drv.buf.byteOffset + drv.off, 2);
    this.deviceEvent = new Uint16Array(dev.buf.buffer, dev.buf.byteOffset + dev.off, 2);
    this.descGpa = mem.uvaToGpa(this._descAddr);
    this.deviceGpa = mem.uvaToGpa(this._deviceAddr);
  }

  private forgetWindow(): void {
    this.cBuf = new Uint8Array(0);
    this.cArea = 0;
    this.cGpa = 0;
    this.cStart = 0;
    this.cEnd = 0;
  }

  detachViews(): void {
    this.forgetWindow();
    this.desc32 = new Uint32Array(0);
    this.desc16 = new Uint16Array(0);
    this.driverEvent = new Uint16Array(0);
    this.deviceEvent = new Uint16Array(0);
  }

  /** descriptor i made available in the lap with wrap counter w (an atomic load: what follows is read after it) */
  private isAvail(i: number, w: number): boolean {
    return availIn(Atomics.load(this.desc16, this.desc16Base + i * 8 + FLAGS16), w);
  }

  /**
   * Complete chains made available and not taken yet; -1 when the ring is found broken. Counts on
   * from where the last call stopped, never beyond the descriptors the ring has free.
   */
  availCount(): number {
    if (this.desc32.length === 0 || this._broken !== null) return 0;
    const num = this._num;
    const t16 = this.desc16;
    const b16 = this.desc16Base;
    let free = num - this.inflightDescs - this.scanDescs;
    let pos = this.scanPos;
    let wrap = this.scanWrap;
    while (free > 0 && this.isAvail(pos, wrap)) {
      // a chain: descriptors with NEXT, then one without; the head was exposed last by the driver
      let p = pos;
      let w = wrap;
      let n = 0;
      let complete = false;
      while (n < free) {
        // the rest was written before the head was exposed: plain reads after the head's atomic one
        if (n > 0 && !availIn(t16[b16 + p * 8 + FLAGS16], w)) break; // not written yet: look again later
        n++;
        const more = (t16[b16 + p * 8 + FLAGS16] & VRING_DESC_F_NEXT) !== 0;
        if (++p === num) {
          p = 0;
          w ^= 1;
        }
        if (!more) {
          complete = true;
          break;
        }
      }
      if (!complete) {
        if (n < free) break;
        this._broken = `descriptor chain at ${pos} goes on beyond the ${free} descriptors the ring has free`;
        this.scanPos = pos; // the chains counted so far stay counted (consistent if set up again)
        this.scanWrap = wrap;
        return -1;
      }
      this.scanChains++;
      this.scanDescs += n;
      free -= n;
      pos = p;
      wrap = w;
    }
    this.scanPos = pos;
    this.scanWrap = wrap;
    return this.scanChains;
  }

  /**
   * Takes the next available chain (counted by availCount()) and appends its buffers to segs.
   * Returns its buffer id, or BROKEN (and sets this.broken) on a bad chain.
   */
  /** availCount() already read the descriptors it counted (their flags, in ring order) */
  touch(_k: number): number {
    return 0;
  }

  popChain(mem: GuestMemory, segs: Segments, writable: boolean): number {
    if (this.scanChains === 0) return this.fail('a chain was taken that availCount() did not count');
    if (segs.chains >= MAX_CHAINS) return this.fail('too many chains in one gather');
    const num = this._num;
    const t32 = this.desc32;
    const t16 = this.desc16;
    const b32 = this.desc32Base;
    const b16 = this.desc16Base;
    const start = this.availPos;
    let p = start;
    let w = this.availWrap;
    let n = 0;
    let id = 0;
    let cap = 0;
    const first = segs.count;
    for (;;) {
      // the driver must not touch a descriptor once available: one that changed under us breaks the ring
      if (++n > this.scanDescs || !availIn(t16[b16 + p * 8 + FLAGS16], w)) return this.fail(`descriptor chain at ${start}: descriptor ${p} was changed after it was made available`);
      if (n > this.maxChain) return this.chainTooLong(start);
      const o32 = b32 + p * 4;
      const addr = t32[o32] + t32[o32 + 1] * TWO32;
      const len = t32[o32 + 2];
      const flags = t16[b16 + p * 8 + FLAGS16];
      id = t16[b16 + p * 8 + ID16];
      if (++p === num) {
        p = 0;
        w ^= 1;
      }
      if (flags & VRING_DESC_F_INDIRECT) {
        if (!this.indirectAllowed) return this.fail(`descriptor chain at ${start}: indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC`);
        if (n !== 1 || flags & VRING_DESC_F_NEXT) return this.fail(`descriptor chain at ${start}: indirect descriptor in a chain (only alone)`);
        const r = this.walkIndirect(mem, segs, writable, start, addr, len);
        if (r < 0) return BROKEN;
        cap = r;
        break;
      }
      const r = this.addBuffer(mem, segs, writable, start, addr, len, flags);
      if (r < 0) return BROKEN;
      cap += r;
      if ((flags & VRING_DESC_F_NEXT) === 0) break;
    }
    if (segs.count === first) return this.fail(`descriptor chain at ${start}: no buffers`);
    const c = segs.chains;
    segs.chainHead[c] = id;
    segs.chainEnd[c] = segs.count;
    segs.chainCap[c] = cap;
    segs.chains = c + 1;
    segs.total += cap;
    // in flight until used
    const k = (this.inflightFirst + this.inflightCount) % num;
    this.inflightAt[k] = start | (this.availWrap << 15);
    this.inflightLen[k] = n;
    this.inflightCount++;
    this.inflightDescs += n;
    this.scanChains--;
    this.scanDescs -= n;
    this.availPos = p;
    this.availWrap = w;
    return id;
  }

  private chainTooLong(start: number): number {
    chainLimitHits[0]++;
    return this.fail(`descriptor chain at ${start} has more than ${this.maxChain} descriptors (--max-chain-descriptors)`);
  }

  /** An indirect table: len / 16 consecutive descriptors; only their WRITE flag counts (2.8). */
  private walkIndirect(mem: GuestMemory, segs: Segments, writable: boolean, start: number, addr: number, len: number): number {
    const t = this.ti;
    if (len === 0 || len % 16 !== 0 || len / 16 > MAX_SEGMENTS) return this.fail(`descriptor chain at ${start}: bad indirect table length ${len}`);
    if (!mem.contiguousGpa(addr, len, t)) return this.fail(`descriptor chain at ${start}: indirect table at 0x${addr.toString(16)} length ${len} is not inside guest memory`);
    if (t.off % 16 !== 0) return this.fail(`descriptor chain at ${start}: indirect table at 0x${addr.toString(16)} is not 16-byte aligned`);
    const t32 = t.u32;
    const t16 = t.u16;
    const b32 = t.off >>> 2;
    const b16 = t.off >>> 1;
    const n = len / 16;
    if (n > this.maxChain) return this.chainTooLong(start);
    let cap = 0;
    for (let i = 0; i < n; i++) {
      const o32 = b32 + i * 4;
      const flags = t16[b16 + i * 8 + FLAGS16];
      if (flags & VRING_DESC_F_INDIRECT) return this.fail(`descriptor chain at ${start}: indirect descriptor inside an indirect table`);
      const r = this.addBuffer(mem, segs, writable, start, t32[o32] + t32[o32 + 1] * TWO32, t32[o32 + 2], flags);
      if (r < 0) return r;
      cap += r;
    }
    return cap;
  }

  /** Appends one buffer to segs (translated, split at window ends); its length, or BROKEN. */
  private addBuffer(mem: GuestMemory, segs: Segments, writable: boolean, start: number, addr: number, len: number, flags: number): number {
    if (len === 0) return this.fail(`descriptor chain at ${start}: zero-length buffer (zero sized buffers are not allowed)`);
    if (len > MAX_DESC_LEN) return this.fail(`descriptor chain at ${start}: buffer length ${len} beyond ${MAX_DESC_LEN}`);
    if (((flags & VRING_DESC_F_WRITE) !== 0) !== writable) {
      return this.fail(`descriptor chain at ${start}: ${writable ? 'device-readable descriptor in an RX' : 'device-writable descriptor in a TX'} chain`);
    }
    const total = len;
    if (addr >= this.cStart && addr + len <= this.cEnd) {
      const n = segs.count;
      if (n >= segs.limit) return this.fail(`descriptor chain at ${start} has more than ${MAX_SEGMENTS} segments`);
      segs.buf[n] = this.cBuf;
      segs.area[n] = this.cArea;
      segs.off[n] = addr - this.cGpa;
      segs.len[n] = len;
      segs.count = n + 1;
      return total;
    }
    const t = this.t;
    while (len > 0) {
      if (!mem.translateGpa(addr, len, t)) {
        return this.fail(`descriptor chain at ${start}: buffer at 0x${addr.toString(16)} length ${len} is outside guest memory`);
      }
      const n = segs.count;
      if (n >= segs.limit) return this.fail(`descriptor chain at ${start} has more than ${MAX_SEGMENTS} segments`);
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
    return total;
  }

  /** Gives back the last n chains taken (not used yet): they will be taken again. */
  unpop(n: number): void {
    const num = this._num;
    for (; n > 0 && this.inflightCount > 0; n--) {
      const k = (this.inflightFirst + this.inflightCount - 1) % num;
      const at = this.inflightAt[k];
      const len = this.inflightLen[k];
      this.inflightCount--;
      this.inflightDescs -= len;
      this.scanChains++;
      this.scanDescs += len;
      this.availPos = at & 0x7fff;
      this.availWrap = at >>> 15;
    }
  }

  /**
   * The oldest chain in flight is used: id and len written where its first descriptor was (its
   * flags by publish()), the used position skips its descriptors.
   */
  pushUsed(id: number, len: number): void {
    if (this.inflightCount === 0 || this.desc32.length === 0) {
      this.markBroken('a used descriptor without a chain in flight');
      return;
    }
    const num = this._num;
    const k = this.inflightFirst;
    const n = this.inflightLen[k];
    this.inflightFirst = k + 1 === num ? 0 : k + 1;
    this.inflightCount--;
    this.inflightDescs -= n;
    const pos = this.usedPos;
    this.desc16[this.desc16Base + pos * 8 + ID16] = id;
    this.desc32[this.desc32Base + pos * 4 + 2] = len;
    const c = this.pendingCount++;
    this.pendingAt[c] = pos;
    this.pendingFlags[c] = (this.usedWrap !== 0 ? VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED : 0) | (len > 0 ? VRING_DESC_F_WRITE : 0);
    let p = pos + n;
    if (p >= num) {
      p -= num;
      this.usedWrap ^= 1;
    }
    this.usedPos = p;
  }

  /**
   * Hands the used descriptors back: the first one's flags last, so the driver sees a batch (a
   * mergeable RX packet's buffers among them) whole (2.8.10 "Multi-buffer requests").
   */
  publish(): void {
    const c = this.pendingCount;
    if (c === 0 || this.desc16.length === 0) return;
    const t16 = this.desc16;
    const b16 = this.desc16Base;
    // plain stores, then the first with a sequentially consistent one (ordered after them, as
    // SplitRing's used entries before its index)
    for (let i = 1; i < c; i++) t16[b16 + this.pendingAt[i] * 8 + FLAGS16] = this.pendingFlags[i];
    Atomics.store(t16, b16 + this.pendingAt[0] * 8 + FLAGS16, this.pendingFlags[0]);
    if (this.log !== null) this.logDescs();
    this.pendingCount = 0;
    this.unsignalled = true;
  }

  /** Signals the guest through the call eventfd if its event suppression asks for it. */
  signal(write: (fd: number) => void): void {
    if (!this.unsignalled || this._callFd < 0 || this.desc32.length === 0) return;
    this.unsignalled = false;
    const num = this._num;
    const now = this.usedPos;
    let old = this.signalledPos;
    this.signalledPos = now;
    const flags = Atomics.load(this.driverEvent, 1) & 3;
    let need: boolean;
    if (flags === RING_EVENT_FLAGS_DESC && this._eventIdx) {
      // vring_need_event over positions made linear across the wrap
      const offWrap = this.driverEvent[0];
      let off = offWrap & 0x7fff;
      if (now <= old) old -= num;
      if (offWrap >>> 15 !== this.usedWrap) off -= num;
      need = ((now - off - 1) & 0xffff) < ((now - old) & 0xffff);
    } else {
      need = flags !== RING_EVENT_FLAGS_DISABLE;
    }
    if (need) write(this._callFd);
  }

  /** Ask for a kick when the driver makes the descriptor at availPos available (or any, without EVENT_IDX). */
  enableNotify(): void {
    if (this.deviceEvent.length === 0) return;
    if (this._eventIdx) {
      Atomics.store(this.deviceEvent, 0, this.lastAvail);
      Atomics.store(this.deviceEvent, 1, RING_EVENT_FLAGS_DESC);
    } else {
      Atomics.store(this.deviceEvent, 1, RING_EVENT_FLAGS_ENABLE);
    }
    if (this.log !== null) this.logDevice();
  }

  /**
   * RX, holding a frame that needs more buffers than are available: ask for a kick on the next
   * descriptor beyond those already seen. Returns true when one came in meanwhile.
   */
  enableNotifyBeyond(): boolean {
    if (this.deviceEvent.length === 0) return false;
    if (this.availCount() < 0) return false;
    const pos = this.scanPos;
    const wrap = this.scanWrap;
    if (this._eventIdx) {
      Atomics.store(this.deviceEvent, 0, pos | (wrap << 15));
      Atomics.store(this.deviceEvent, 1, RING_EVENT_FLAGS_DESC);
    } else {
      Atomics.store(this.deviceEvent, 1, RING_EVENT_FLAGS_ENABLE);
    }
    if (this.log !== null) this.logDevice();
    return this.isAvail(pos, wrap);
  }

  disableNotify(): void {
    if (this.deviceEvent.length === 0) return;
    Atomics.store(this.deviceEvent, 1, RING_EVENT_FLAGS_DISABLE);
    if (this.log !== null) this.logDevice();
  }

  private fail(reason: string): number {
    this.markBroken(reason);
    return BROKEN;
  }
}
