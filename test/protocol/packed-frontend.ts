// The guest driver's side of a PACKED virtqueue (virtio 1.1+ 2.8), for the TypeScript front-end.
// Layout in guest RAM:
//   desc    [num] x { le64 addr, le32 len, le16 id, le16 flags }   16-byte aligned
//   driver  le16 off_wrap, le16 flags   (we write it: used buffer notifications; SET_VRING_ADDR "avail")
//   device  le16 off_wrap, le16 flags   (the device writes it: kicks; SET_VRING_ADDR "used")
// The driver writes a chain's descriptors in ring order, the head's flags last; the device writes
// one used descriptor per chain (over its first descriptor) and skips the chain's length. Written as
// the spec's example driver (2.8.21-22), with EVENT_IDX kick and interrupt suppression as Linux does.
import { native } from '../../src/native';
import { Buf, closeFd, concat, GuestRam, needEvent, Packet, UsedElem, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, waitEventfd, waitFor } from './frontend';

export const VRING_PACKED_DESC_F_AVAIL = 1 << 7;
export const VRING_PACKED_DESC_F_USED = 1 << 15;
export const RING_EVENT_FLAGS_ENABLE = 0;
export const RING_EVENT_FLAGS_DISABLE = 1;
export const RING_EVENT_FLAGS_DESC = 2;
/** GET/SET_VRING_BASE value of a fresh packed ring: avail and used at 0 with wrap counters 1 */
export const PACKED_BASE_START = 0x80008000;

const DEFAULT_TIMEOUT = 2000;

export class PackedVirtqueue {
  readonly descGpa: number;
  /** driver event suppression: SET_VRING_ADDR's "avail" address */
  readonly availGpa: number;
  /** device event suppression: SET_VRING_ADDR's "used" address */
  readonly usedGpa: number;
  kickFd: number;
  callFd: number;
  errFd: number;
  eventIdx: boolean;
  /** the driver's next descriptor position and its wrap counter */
  availPos = 0;
  availWrap = 1;
  /** the next used descriptor position and its wrap counter */
  usedPos = 0;
  usedWrap = 1;
  /** buffers made available / used buffers taken (free-running u16 counts, as a split ring's indices) */
  availIdx = 0;
  lastUsed = 0;
  /** descriptors not in the device's hands */
  freeDescs: number;
  /** descriptors made available since the last kick (EVENT_IDX kick suppression) */
  private addedSinceKick = 0;
  private freeIds: number[] = [];
  /** id → descriptors its chain took in the ring, and its buffers (for reading RX data back) */
  private readonly chainLen = new Map<number, number>();
  readonly chains = new Map<number, Buf[]>();
  /** chains written but not exposed yet: id → head position and flags */
  private readonly unexposed = new Map<number, { pos: number; flags: number }>();
  private readonly desc: DataView;
  private readonly driver: DataView;
  private readonly device: DataView;

  constructor(readonly ram: GuestRam, readonly index: number, readonly num: number, opts: { eventIdx?: boolean } = {}) {
    this.eventIdx = opts.eventIdx ?? false;
    this.descGpa = ram.alloc(16 * num, 16);
    this.availGpa = ram.alloc(4, 4);
    this.usedGpa = ram.alloc(4, 4);
    this.desc = ram.dataView(this.descGpa, 16 * num);
    this.driver = ram.dataView(this.availGpa, 4);
    this.device = ram.dataView(this.usedGpa, 4);
    this.freeDescs = num;
    for (let i = num - 1; i >= 0; i--) this.freeIds.push(i);
    this.kickFd = native.eventfd(0);
    this.callFd = native.eventfd(0);
    this.errFd = native.eventfd(0);
  }

  get isRx(): boolean {
    return this.index % 2 === 0;
  }

  /** avail bits of a descriptor made available now */
  private get availFlags(): number {
    return this.availWrap ? VRING_PACKED_DESC_F_AVAIL : VRING_PACKED_DESC_F_USED;
  }

  // ---- raw ring access (also for hostile tests) ----

  writeDesc(i: number, addr: number, len: number, flags: number, id = 0): void {
    const o = i * 16;
    this.desc.setBigUint64(o, BigInt(addr), true);
    this.desc.setUint32(o + 8, len, true);
    this.desc.setUint16(o + 12, id, true);
    this.desc.setUint16(o + 14, flags, true);
  }

  readDesc(i: number): { addr: number; len: number; id: number; flags: number } {
    const o = i * 16;
    return {
      addr: Number(this.desc.getBigUint64(o, true)),
      len: this.desc.getUint32(o + 8, true),
      id: this.desc.getUint16(o + 12, true),
      flags: this.desc.getUint16(o + 14, true),
    };
  }

  /**
   * Writes raw descriptors at the next positions (flags get the AVAIL/USED bits of this lap), the
   * first one's flags last, and advances as a driver would (hostile tests: anything goes).
   */
  postRaw(descs: { addr: number; len: number; flags: number; id?: number }[]): void {
    const head = this.availPos;
    let headFlags = 0;
    descs.forEach((d, k) => {
      const f = d.flags | this.availFlags;
      this.writeDesc(this.availPos, d.addr, d.len, k === 0 ? 0 : f, d.id ?? 0);
      if (k === 0) headFlags = f;
      this.advanceAvail();
    });
    this.desc.setUint16(head * 16 + 14, headFlags, true);
    this.availIdx = (this.availIdx + 1) & 0xffff;
  }

  private advanceAvail(): void {
    this.addedSinceKick++;
    if (++this.availPos === this.num) {
      this.availPos = 0;
      this.availWrap ^= 1;
    }
  }

  /** the device's event suppression (it asks for kicks with it) */
  get deviceEventFlags(): number {
    return this.device.getUint16(2, true);
  }
  get deviceEventOffWrap(): number {
    return this.device.getUint16(0, true);
  }

  /** driver event suppression: ENABLE, DISABLE, or DESC with off_wrap (EVENT_IDX) */
  setDriverEvent(flags: number, offWrap = 0): void {
    this.driver.setUint16(0, offWrap, true);
    this.driver.setUint16(2, flags, true);
  }

  /** As a split ring's used_event: interrupt me once the device writes the used descriptor at the next used position. */
  interruptOnNext(): void {
    this.setDriverEvent(RING_EVENT_FLAGS_DESC, this.usedPos | (this.usedWrap << 15));
  }

  setNoInterrupt(on: boolean): void {
    this.setDriverEvent(on ? RING_EVENT_FLAGS_DISABLE : RING_EVENT_FLAGS_ENABLE);
  }

  // ---- chains ----

  /** Writes bufs as a chain at the next positions; returns its id (exposed by makeAvailable). */
  addChain(bufs: Buf[]): number {
    if (bufs.length > this.freeDescs) throw new Error(`ring ${this.index}: no room for ${bufs.length} descriptors`);
    const id = this.takeId();
    const head = this.availPos;
    let headFlags = 0;
    bufs.forEach((b, k) => {
      const last = k === bufs.length - 1;
      const f = (b.write ? VRING_DESC_F_WRITE : 0) | (last ? 0 : VRING_DESC_F_NEXT) | this.availFlags;
      // the head's flags last: the device never sees half a chain
      this.writeDesc(this.availPos, b.addr, b.len, k === 0 ? 0 : f, id);
      if (k === 0) headFlags = f;
      this.advanceAvail();
    });
    this.freeDescs -= bufs.length;
    this.chainLen.set(id, bufs.length);
    this.chains.set(id, bufs);
    this.unexposed.set(id, { pos: head, flags: headFlags });
    return id;
  }

  /** One ring descriptor pointing at an indirect table holding bufs. Returns its id. */
  addIndirect(bufs: Buf[]): number {
    if (this.freeDescs < 1) throw new Error(`ring ${this.index}: no free descriptor`);
    const table = this.ram.alloc(16 * bufs.length, 16);
    const tv = this.ram.dataView(table, 16 * bufs.length);
    bufs.forEach((b, k) => {
      tv.setBigUint64(k * 16, BigInt(b.addr), true);
      tv.setUint32(k * 16 + 8, b.len, true);
      tv.setUint16(k * 16 + 12, 0, true);
      tv.setUint16(k * 16 + 14, b.write ? VRING_DESC_F_WRITE : 0, true);
    });
    const id = this.takeId();
    const head = this.availPos;
    const f = VRING_DESC_F_INDIRECT | this.availFlags;
    this.writeDesc(head, table, 16 * bufs.length, 0, id);
    this.advanceAvail();
    this.freeDescs--;
    this.chainLen.set(id, 1);
    this.chains.set(id, bufs);
    this.unexposed.set(id, { pos: head, flags: f });
    return id;
  }

  /** Exposes a chain written by addChain/addIndirect (its head's flags). */
  makeAvailable(id: number): void {
    const u = this.unexposed.get(id);
    if (!u) throw new Error(`ring ${this.index}: chain ${id} was not written`);
    this.unexposed.delete(id);
    this.desc.setUint16(u.pos * 16 + 14, u.flags, true);
    this.availIdx = (this.availIdx + 1) & 0xffff;
  }

  private takeId(): number {
    const id = this.freeIds.pop();
    if (id === undefined) throw new Error(`ring ${this.index}: no free buffer id`);
    return id;
  }

  private isUsed(pos: number, wrap: number): boolean {
    const f = this.desc.getUint16(pos * 16 + 14, true);
    return ((f >>> 15) & 1) === wrap && ((f >>> 7) & 1) === wrap;
  }

  /** Used descriptors not taken yet, left in place. */
  peekUsed(): UsedElem[] {
    return this.walkUsed(false);
  }

  /** Used descriptors since the last call; their descriptors and ids are free again. */
  takeUsed(): UsedElem[] {
    return this.walkUsed(true);
  }

  private walkUsed(take: boolean): UsedElem[] {
    const out: UsedElem[] = [];
    let pos = this.usedPos;
    let wrap = this.usedWrap;
    while (this.isUsed(pos, wrap)) {
      const id = this.desc.getUint16(pos * 16 + 12, true);
      const len = this.desc.getUint32(pos * 16 + 8, true);
      const n = this.chainLen.get(id);
      if (n === undefined) throw new Error(`ring ${this.index}: used descriptor at ${pos} names buffer id ${id}, not in flight`);
      out.push({ id, len });
      pos += n;
      if (pos >= this.num) {
        pos -= this.num;
        wrap ^= 1;
      }
      if (take) {
        this.chainLen.delete(id);
        this.freeIds.push(id);
        this.freeDescs += n;
        this.lastUsed = (this.lastUsed + 1) & 0xffff;
      } else if (out.length > this.num) {
        break;
      }
    }
    if (take) {
      this.usedPos = pos;
      this.usedWrap = wrap;
    }
    return out;
  }

  /** used buffers so far (taken + waiting), as a split ring's used index */
  get usedIdx(): number {
    return (this.lastUsed + this.peekUsed().length) & 0xffff;
  }

  /** Puts the driver at a ring position (as after a migration): base as GET/SET_VRING_BASE carry it. */
  resetIndices(base: number): void {
    this.availPos = this.usedPos = base & 0x7fff;
    this.availWrap = this.usedWrap = (base >>> 15) & 1;
  }

  // ---- notifications ----

  kick(): void {
    native.eventfdWrite(this.kickFd, 1);
    this.addedSinceKick = 0;
  }

  /** Whether the device's event suppression asks for a kick for what was made available since the last one. */
  needsKick(): boolean {
    const f = this.deviceEventFlags;
    if (f === RING_EVENT_FLAGS_DISABLE) return false;
    if (f !== RING_EVENT_FLAGS_DESC || !this.eventIdx) return true;
    const ow = this.deviceEventOffWrap;
    let ev = ow & 0x7fff;
    if (ow >>> 15 !== this.availWrap) ev -= this.num;
    return needEvent(ev, this.availPos, this.availPos - this.addedSinceKick);
  }

  kickIfNeeded(): boolean {
    const need = this.needsKick();
    if (need) this.kick();
    else this.addedSinceKick = 0;
    return need;
  }

  waitCall(timeoutMs = DEFAULT_TIMEOUT): Promise<number> {
    return waitEventfd(this.callFd, timeoutMs);
  }

  calls(): number {
    return native.eventfdRead(this.callFd);
  }

  async waitUsed(idx: number, timeoutMs = DEFAULT_TIMEOUT): Promise<void> {
    await waitFor(() => ((this.usedIdx - idx) & 0xffff) < 0x8000, timeoutMs, `ring ${this.index} used count to reach ${idx}`);
  }

  // ---- virtio-net helpers (as Virtqueue's) ----

  postTx(packet: Uint8Array, opts: { split?: number[]; indirect?: boolean; region?: number } = {}): number {
    const bufs: Buf[] = [];
    let at = 0;
    for (const n of [...(opts.split ?? []), packet.length]) {
      const len = Math.min(n, packet.length - at);
      if (len <= 0) break;
      const addr = this.ram.alloc(len, 8, opts.region ?? 0);
      this.ram.view(addr, len).set(packet.subarray(at, at + len));
      bufs.push({ addr, len });
      at += len;
    }
    const id = opts.indirect ? this.addIndirect(bufs) : this.addChain(bufs);
    this.makeAvailable(id);
    return id;
  }

  postRx(count: number, size: number, opts: { split?: number[]; indirect?: boolean } = {}): number[] {
    const ids: number[] = [];
    for (let i = 0; i < count; i++) {
      const bufs: Buf[] = [];
      let left = size;
      for (const n of [...(opts.split ?? []), size]) {
        const len = Math.min(n, left);
        if (len <= 0) break;
        bufs.push({ addr: this.ram.alloc(len, 8), len, write: true });
        left -= len;
      }
      const id = opts.indirect ? this.addIndirect(bufs) : this.addChain(bufs);
      this.makeAvailable(id);
      ids.push(id);
    }
    return ids;
  }

  readChain(id: number, len: number): Uint8Array {
    const bufs = this.chains.get(id);
    if (!bufs) throw new Error(`ring ${this.index}: used descriptor names unknown id ${id}`);
    const out = new Uint8Array(len);
    let at = 0;
    for (const b of bufs) {
      if (at >= len) break;
      const n = Math.min(b.len, len - at);
      out.set(this.ram.view(b.addr, n), at);
      at += n;
    }
    return out;
  }

  receive(hdrLen: number, mergeable: boolean): Packet[] {
    const used = this.takeUsed();
    const out: Packet[] = [];
    for (let k = 0; k < used.length; ) {
      const first = this.readChain(used[k].id, used[k].len);
      const numBuffers = hdrLen === 12 ? first[10] | (first[11] << 8) : 1;
      const n = mergeable ? numBuffers : 1;
      if (n === 0) throw new Error('packet claims 0 buffers');
      if (k + n > used.length) throw new Error(`packet claims ${n} buffers, only ${used.length - k} used`);
      const parts = [first];
      for (let j = 1; j < n; j++) parts.push(this.readChain(used[k + j].id, used[k + j].len));
      const all = concat(parts);
      out.push({ header: all.slice(0, hdrLen), frame: all.slice(hdrLen), buffers: n, numBuffers });
      k += n;
    }
    return out;
  }

  close(): void {
    closeFd(this.kickFd);
    closeFd(this.callFd);
    closeFd(this.errFd);
    this.kickFd = this.callFd = this.errFd = -1;
  }
}
