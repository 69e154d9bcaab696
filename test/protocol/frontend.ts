// A vhost-user FRONT-END in TypeScript: what QEMU does to a vhost-user-net back-end, written to be
// read. The protocol tests drive the back-end (src/vhost-user, src/ports/vhost-user-port.ts) with it
// over a real Unix socket, with real memfds as guest memory and real eventfds for kicks and calls.
//
// Three layers:
//   GuestRam   guest memory: memfds mapped here, each region with a guest-physical address (what
//              descriptors carry) and a front-end "user" address (what SET_VRING_ADDR carries),
//              both of our choosing, as QEMU's are of its choosing.
//   Virtqueue  the guest driver's side of one split virtqueue in that memory: descriptor table,
//              avail ring, used ring, the kick/call/err eventfds, TX and RX buffer helpers.
//   FrontEnd   the socket: message framing with SCM_RIGHTS fds, one method per request, REPLY_ACK,
//              and start(), the sequence QEMU runs when the guest's virtio-net driver comes up.
//
// Everything runs on one thread and one event loop with the back-end under test: the back-end only
// looks at the rings in its own event-loop callbacks, so plain stores here are ordered enough.
import { native, Poller } from '../../src/native';
import {
  CONFIG_HDR_SIZE,
  encode,
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  HDR_SIZE,
  MEM_REGION_SIZE,
  MemRegion,
  ProtocolFeature,
  Req,
  requestName,
  u64Payload,
  VERSION,
  VRING_NOFD_MASK,
  vringStatePayload,
  writeRegion,
} from '../../src/vhost-user/message';
import { bit, has, VirtioFeature } from '../../src/vhost-user/features';
import { PackedVirtqueue, PACKED_BASE_START } from './packed-frontend';

export const VRING_DESC_F_NEXT = 1;
export const VRING_DESC_F_WRITE = 2;
export const VRING_DESC_F_INDIRECT = 4;
export const VRING_AVAIL_F_NO_INTERRUPT = 1;
export const VRING_USED_F_NO_NOTIFY = 1;

const PAGE = 4096;
const DEFAULT_TIMEOUT = 2000;

// ---------------------------------------------------------------------------------------------
// Guest memory

export interface RamRegionSpec {
  /** guest-physical start */
  gpa: number;
  size: number;
  /** front-end virtual start (default: gpa + 0x7f00_0000_0000, so the two never coincide) */
  uva?: number;
  /** where in the memfd the region starts (default 0); the memfd is sized offset + size */
  mmapOffset?: number;
  /** memfd created with MFD_ALLOW_SEALING (as QEMU's memory-backend-memfd) */
  sealable?: boolean;
  /** memfd created with MFD_HUGETLB: 2 MiB huge pages (reserve them first: vm.nr_hugepages) */
  hugetlb?: boolean;
}

export interface RamRegion {
  gpa: number;
  uva: number;
  size: number;
  mmapOffset: number;
  fd: number;
  /** the region's bytes, mapped here (the back-end maps the same memfd on its own) */
  bytes: Uint8Array;
  /** bump allocator: next free region offset */
  next: number;
}

/** Guest memory made of memfds. Allocation is a bump pointer: tests are short-lived. */
export class GuestRam {
  readonly regions: RamRegion[] = [];

  constructor(specs: RamRegionSpec[] = [{ gpa: 0, size: 4 << 20 }]) {
    for (const s of specs) this.addRegion(s);
  }

  addRegion(s: RamRegionSpec): RamRegion {
    const mmapOffset = s.mmapOffset ?? 0;
    const fd = native.memfdCreate(`guest-ram-${s.gpa.toString(16)}`, mmapOffset + s.size, s.sealable ?? false, s.hugetlb ?? false);
    const mapStart = Math.floor(mmapOffset / PAGE) * PAGE;
    const ab = native.mmap(fd, mmapOffset - mapStart + s.size, mapStart);
    const r: RamRegion = {
      gpa: s.gpa,
      uva: s.uva ?? s.gpa + 0x7f0000000000,
      size: s.size,
      mmapOffset,
      fd,
      bytes: new Uint8Array(ab, mmapOffset - mapStart, s.size),
      next: 0,
    };
    this.regions.push(r);
    return r;
  }

  /** Forgets a region (after REM_MEM_REG) and releases it. */
  dropRegion(r: RamRegion): void {
    const i = this.regions.indexOf(r);
    if (i >= 0) this.regions.splice(i, 1);
    release(r);
  }

  /** The VhostUserMemoryRegion describing r, as sent in SET_MEM_TABLE / ADD_MEM_REG. */
  static describe(r: RamRegion): MemRegion {
    return { guestPhysAddr: r.gpa, memorySize: r.size, userspaceAddr: r.uva, mmapOffset: r.mmapOffset };
  }

  /** Allocates len bytes (aligned) in region `region` (default the first); returns the guest-physical address. */
  alloc(len: number, align = 16, region = 0): number {
    const r = this.regions[region];
    const at = Math.ceil(r.next / align) * align;
    if (at + len > r.size) throw new Error(`guest RAM region ${region} is full`);
    r.next = at + len;
    return r.gpa + at;
  }

  private find(gpa: number, len: number): RamRegion {
    for (const r of this.regions) if (gpa >= r.gpa && gpa + len <= r.gpa + r.size) return r;
    throw new Error(`guest address 0x${gpa.toString(16)}+${len} is not in guest RAM`);
  }

  /** The bytes at [gpa, gpa+len): a view on the mapping (writes are seen by the back-end). */
  view(gpa: number, len: number): Uint8Array {
    const r = this.find(gpa, len);
    return r.bytes.subarray(gpa - r.gpa, gpa - r.gpa + len);
  }

  dataView(gpa: number, len: number): DataView {
    const v = this.view(gpa, len);
    return new DataView(v.buffer, v.byteOffset, v.byteLength);
  }

  /** Guest-physical → front-end virtual (what SET_VRING_ADDR carries). */
  uva(gpa: number): number {
    const r = this.find(gpa, 1);
    return r.uva + (gpa - r.gpa);
  }

  close(): void {
    for (const r of this.regions.splice(0)) release(r);
  }
}

function release(r: RamRegion): void {
  try {
    native.munmap(r.bytes.buffer as ArrayBuffer);
  } catch {
    /* already unmapped */
  }
  closeFd(r.fd);
  r.fd = -1;
}

export function closeFd(fd: number): void {
  if (fd < 0) return;
  try {
    native.close(fd);
  } catch {
    /* already closed */
  }
}

// ---------------------------------------------------------------------------------------------
// The guest driver's side of a split virtqueue

export interface Buf {
  addr: number;
  len: number;
  /** device-writable (an RX buffer) */
  write?: boolean;
}

export interface UsedElem {
  id: number;
  len: number;
}

export interface Packet {
  /** the virtio-net header as the device wrote it (10 or 12 bytes) */
  header: Uint8Array;
  frame: Uint8Array;
  /** used elements this packet took (1 unless mergeable) */
  buffers: number;
  /** num_buffers from the header (12-byte header only) */
  numBuffers: number;
}

/** Waits for an eventfd to become readable (native.poll); returns its counter, or 0 on timeout. */
export function waitEventfd(fd: number, timeoutMs = DEFAULT_TIMEOUT): Promise<number> {
  const now = native.eventfdRead(fd);
  if (now > 0) return Promise.resolve(now);
  return new Promise((resolve) => {
    let done = false;
    const finish = (v: number): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      poller.close(); // stops watching before anyone may close fd
      resolve(v);
    };
    const poller = native.poll(fd, (status) => {
      if (status < 0) return finish(0);
      const v = native.eventfdRead(fd);
      if (v > 0) finish(v);
    });
    const timer = setTimeout(() => finish(0), timeoutMs);
    poller.start(native.POLL_READABLE);
  });
}

export interface VirtqueueOptions {
  /** VIRTIO_RING_F_EVENT_IDX negotiated: used_event / avail_event are live */
  eventIdx?: boolean;
}

/**
 * One split virtqueue as the guest driver sees it. Layout in guest RAM (virtio 1.x 2.7):
 *   desc  [num] x { le64 addr, le32 len, le16 flags, le16 next }          16-byte aligned
 *   avail le16 flags, le16 idx, le16 ring[num], le16 used_event            2-byte aligned
 *   used  le16 flags, le16 idx, { le32 id, le32 len }[num], le16 avail_event  4-byte aligned
 */
export class Virtqueue {
  readonly descGpa: number;
  readonly availGpa: number;
  readonly usedGpa: number;
  /** eventfds, as QEMU creates them: kick (guest → device), call (device → guest), err */
  kickFd: number;
  callFd: number;
  errFd: number;
  eventIdx: boolean;
  /** next avail index the driver will publish (free-running u16) */
  availIdx = 0;
  /** used index up to which the driver has consumed */
  lastUsed = 0;
  /** avail index at the last kick, for EVENT_IDX kick suppression */
  private kickedAt = 0;
  private free: number[] = [];
  /** head → the buffers of its chain (for reading RX data back) */
  readonly chains = new Map<number, Buf[]>();
  private readonly desc: DataView;
  private readonly avail: DataView;
  private readonly used: DataView;

  constructor(readonly ram: GuestRam, readonly index: number, readonly num: number, opts: VirtqueueOptions = {}) {
    this.eventIdx = opts.eventIdx ?? false;
    this.descGpa = ram.alloc(16 * num, 16);
    this.availGpa = ram.alloc(6 + 2 * num, 2);
    this.usedGpa = ram.alloc(6 + 8 * num, 4);
    this.desc = ram.dataView(this.descGpa, 16 * num);
    this.avail = ram.dataView(this.availGpa, 6 + 2 * num);
    this.used = ram.dataView(this.usedGpa, 6 + 8 * num);
    for (let i = num - 1; i >= 0; i--) this.free.push(i);
    this.kickFd = native.eventfd(0);
    this.callFd = native.eventfd(0);
    this.errFd = native.eventfd(0);
  }

  get isRx(): boolean {
    return this.index % 2 === 0;
  }

  // ---- raw ring access (also for hostile tests) ----

  writeDesc(i: number, addr: number, len: number, flags: number, next = 0): void {
    writeDescAt(this.desc, i * 16, addr, len, flags, next);
  }

  readDesc(i: number): { addr: number; len: number; flags: number; next: number } {
    const o = i * 16;
    return {
      addr: Number(this.desc.getBigUint64(o, true)),
      len: this.desc.getUint32(o + 8, true),
      flags: this.desc.getUint16(o + 12, true),
      next: this.desc.getUint16(o + 14, true),
    };
  }

  /** Puts head in the avail ring and publishes the new avail index. */
  makeAvailable(head: number): void {
    this.avail.setUint16(4 + 2 * (this.availIdx % this.num), head, true);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.avail.setUint16(2, this.availIdx, true);
  }

  /** Writes the avail index directly (hostile tests). */
  setAvailIdx(idx: number): void {
    this.availIdx = idx & 0xffff;
    this.avail.setUint16(2, this.availIdx, true);
  }

  get usedIdx(): number {
    return this.used.getUint16(2, true);
  }

  get usedFlags(): number {
    return this.used.getUint16(0, true);
  }

  /** avail_event (EVENT_IDX): the device asks for a kick once avail idx passes this */
  get availEvent(): number {
    return this.used.getUint16(4 + 8 * this.num, true);
  }

  /** used_event (EVENT_IDX): interrupt me once the used idx passes this */
  setUsedEvent(idx: number): void {
    this.avail.setUint16(4 + 2 * this.num, idx & 0xffff, true);
  }

  /** VRING_AVAIL_F_NO_INTERRUPT (without EVENT_IDX) */
  setNoInterrupt(on: boolean): void {
    this.avail.setUint16(0, on ? VRING_AVAIL_F_NO_INTERRUPT : 0, true);
  }

  // ---- chains ----

  private takeDesc(): number {
    const d = this.free.pop();
    if (d === undefined) throw new Error(`ring ${this.index}: no free descriptor`);
    return d;
  }

  /** Links bufs into a chain of ring descriptors; returns the head (not yet available). */
  addChain(bufs: Buf[]): number {
    const ids = bufs.map(() => this.takeDesc());
    bufs.forEach((b, k) => {
      const last = k === bufs.length - 1;
      this.writeDesc(ids[k], b.addr, b.len, (b.write ? VRING_DESC_F_WRITE : 0) | (last ? 0 : VRING_DESC_F_NEXT), last ? 0 : ids[k + 1]);
    });
    this.chains.set(ids[0], bufs);
    return ids[0];
  }

  /** Puts bufs in an indirect table in guest RAM; one ring descriptor points at it. Returns the head. */
  addIndirect(bufs: Buf[]): number {
    const table = this.ram.alloc(16 * bufs.length, 16);
    const tv = this.ram.dataView(table, 16 * bufs.length);
    bufs.forEach((b, k) => {
      const last = k === bufs.length - 1;
      writeDescAt(tv, k * 16, b.addr, b.len, (b.write ? VRING_DESC_F_WRITE : 0) | (last ? 0 : VRING_DESC_F_NEXT), last ? 0 : k + 1);
    });
    const head = this.takeDesc();
    this.writeDesc(head, table, 16 * bufs.length, VRING_DESC_F_INDIRECT);
    this.chains.set(head, bufs);
    return head;
  }

  /** Used elements not yet taken, left in place. */
  peekUsed(): UsedElem[] {
    const out: UsedElem[] = [];
    for (let i = this.lastUsed; i !== this.usedIdx; i = (i + 1) & 0xffff) {
      const o = 4 + 8 * (i % this.num);
      out.push({ id: this.used.getUint32(o, true), len: this.used.getUint32(o + 4, true) });
    }
    return out;
  }

  /** Used elements since the last call; their descriptors go back to the free list. */
  takeUsed(): UsedElem[] {
    const out: UsedElem[] = [];
    const end = this.usedIdx;
    while (this.lastUsed !== end) {
      const o = 4 + 8 * (this.lastUsed % this.num);
      const e = { id: this.used.getUint32(o, true), len: this.used.getUint32(o + 4, true) };
      out.push(e);
      this.freeChain(e.id);
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return out;
  }

  private freeChain(head: number): void {
    if (!this.chains.has(head)) return; // not ours (hostile tests write descriptors by hand)
    let i = head;
    for (let n = 0; n < this.num; n++) {
      const d = this.readDesc(i);
      this.free.push(i);
      if (!(d.flags & VRING_DESC_F_NEXT)) break;
      i = d.next;
    }
  }

  // ---- notifications ----

  /** Kicks the device unconditionally. */
  kick(): void {
    native.eventfdWrite(this.kickFd, 1);
    this.kickedAt = this.availIdx;
  }

  /** Whether the device asked to be kicked for what was published since the last kick. */
  needsKick(): boolean {
    if (this.eventIdx) return needEvent(this.availEvent, this.availIdx, this.kickedAt);
    return (this.usedFlags & VRING_USED_F_NO_NOTIFY) === 0;
  }

  /** Kicks only when the device's suppression (avail_event or NO_NOTIFY) says so; returns whether it did. */
  kickIfNeeded(): boolean {
    const need = this.needsKick();
    if (need) this.kick();
    else this.kickedAt = this.availIdx;
    return need;
  }

  /** Waits for the call eventfd; returns the counter read (0 on timeout). */
  waitCall(timeoutMs = DEFAULT_TIMEOUT): Promise<number> {
    return waitEventfd(this.callFd, timeoutMs);
  }

  /** Reads (and clears) the call eventfd counter now, without waiting. */
  calls(): number {
    return native.eventfdRead(this.callFd);
  }

  /** Waits until the used index reaches `idx` (polling the ring, not the eventfd). */
  async waitUsed(idx: number, timeoutMs = DEFAULT_TIMEOUT): Promise<void> {
    await waitFor(() => ((this.usedIdx - idx) & 0xffff) < 0x8000, timeoutMs, `ring ${this.index} used idx to reach ${idx}`);
  }

  // ---- virtio-net helpers ----

  /**
   * Posts a TX packet (virtio-net header + Ethernet frame). split: lengths of the first pieces
   * (the rest goes in a last piece), e.g. [hdrLen] puts the header in its own descriptor.
   * indirect: the pieces go through an indirect table. Returns the head.
   */
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
    const head = opts.indirect ? this.addIndirect(bufs) : this.addChain(bufs);
    this.makeAvailable(head);
    return head;
  }

  /**
   * Posts count device-writable RX buffers of size bytes each: one descriptor each, or split into a
   * chain of descriptors (split: lengths of the first pieces), optionally through an indirect table.
   */
  postRx(count: number, size: number, opts: { split?: number[]; indirect?: boolean } = {}): number[] {
    const heads: number[] = [];
    for (let i = 0; i < count; i++) {
      const bufs: Buf[] = [];
      let left = size;
      for (const n of [...(opts.split ?? []), size]) {
        const len = Math.min(n, left);
        if (len <= 0) break;
        bufs.push({ addr: this.ram.alloc(len, 8), len, write: true });
        left -= len;
      }
      const head = opts.indirect ? this.addIndirect(bufs) : this.addChain(bufs);
      this.makeAvailable(head);
      heads.push(head);
    }
    return heads;
  }

  /**
   * Puts the driver at ring index `base` (as after a migration): avail and used indices in memory
   * and the driver's own counters. The back-end is told with SET_VRING_BASE.
   */
  resetIndices(base: number): void {
    this.availIdx = this.lastUsed = this.kickedAt = base & 0xffff;
    this.avail.setUint16(2, this.availIdx, true);
    this.used.setUint16(2, this.availIdx, true);
  }

  /** Bytes the device wrote into a chain (len from the used element). */
  readChain(head: number, len: number): Uint8Array {
    const bufs = this.chains.get(head);
    if (!bufs) throw new Error(`ring ${this.index}: used element names unknown head ${head}`);
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

  /**
   * Reads received packets off the used ring. hdrLen 10 or 12; with mergeable, a packet spans the
   * number of used elements its header's num_buffers says.
   */
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

function writeDescAt(v: DataView, o: number, addr: number, len: number, flags: number, next: number): void {
  v.setBigUint64(o, BigInt(addr), true);
  v.setUint32(o + 8, len, true);
  v.setUint16(o + 12, flags, true);
  v.setUint16(o + 14, next, true);
}

/** vring_need_event(): has the index moved past `event` in (old, new]? */
export function needEvent(event: number, newIdx: number, old: number): boolean {
  return ((newIdx - event - 1) & 0xffff) < ((newIdx - old) & 0xffff);
}

export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export async function waitFor(cond: () => boolean, timeoutMs = DEFAULT_TIMEOUT, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// The front-end

export interface Reply {
  request: number;
  flags: number;
  payload: Uint8Array;
  fds: number[];
}

export interface StartOptions {
  /** virtio features to negotiate (masked with what the back-end offers); default: all offered */
  features?: bigint;
  /** protocol features to negotiate (masked with the offer); default: all offered */
  protocolFeatures?: bigint;
  /** guest RAM layout; default one 4 MiB region at guest address 0 */
  ram?: RamRegionSpec[];
  /** ring size, default 256 */
  num?: number;
  /** queue pairs to set up, default 1 (rings 0 = RX, 1 = TX) */
  queuePairs?: number;
  /** enable the rings (SET_VRING_ENABLE 1), default true */
  enable?: boolean;
  /** kick the RX rings once after posting rxBuffers (which starts them), default true */
  kickRx?: boolean;
  /** RX buffers posted before starting: [count, size]; default [64, 2048] */
  rxBuffers?: [number, number];
  /** RX buffers as descriptor chains or through indirect tables (see Virtqueue.postRx) */
  rxLayout?: { split?: number[]; indirect?: boolean };
  /** ring index every ring starts at (SET_VRING_BASE), default 0 (packed: PACKED_BASE_START) */
  base?: number;
  /** NET_SET_MTU after setup */
  mtu?: number;
  /** with VHOST_USER_PROTOCOL_F_STATUS: set DRIVER_OK once the rings are set up, default true */
  driverOk?: boolean;
}

/** virtio device status bits (virtio 1.x 2.1) */
export const STATUS_ACKNOWLEDGE = 1;
export const STATUS_DRIVER = 2;
export const STATUS_DRIVER_OK = 4;
export const STATUS_FEATURES_OK = 8;

/**
 * One vhost-user front-end connection. Requests are async: they resolve when the back-end has
 * answered (a reply, or the REPLY_ACK ack when negotiated), so a test can await them in order.
 */
export class FrontEnd {
  private poller: Poller | null = null;
  private inBuf: Uint8Array = new Uint8Array(0);
  private inFds: number[] = [];
  private readonly queue: Reply[] = [];
  private waiters: { resolve: (r: Reply) => void; reject: (e: Error) => void }[] = [];
  private closedWaiters: (() => void)[] = [];
  /** the back-end closed the connection (or we did) */
  closed = false;

  features = 0n;
  protocolFeatures = 0n;
  /** set NEED_REPLY on requests without a reply and wait for the ack (needs REPLY_ACK) */
  useReplyAck = true;
  ram: GuestRam | null = null;
  readonly rings: Virtqueue[] = [];
  /** the rings of startPacked() */
  readonly packedRings: PackedVirtqueue[] = [];

  constructor(readonly fd: number, readonly name = 'frontend') {
    this.poller = native.poll(fd, (status) => this.onReadable(status));
    this.poller.start(native.POLL_READABLE);
  }

  /** A connected socketpair: the front-end on one end, the other end for VhostUserPort.bind(). */
  static pair(name?: string): { fe: FrontEnd; backendFd: number } {
    const [a, b] = native.socketpair();
    return { fe: new FrontEnd(a, name), backendFd: b };
  }

  /** Connects to a back-end listening on path (server mode of the back-end). */
  static connect(path: string, name?: string): FrontEnd {
    return new FrontEnd(native.unixConnect(path), name);
  }

  /** Accepts the back-end's connection on a listening socket of ours (client mode of the back-end). */
  static async accept(listenFd: number, name?: string, timeoutMs = DEFAULT_TIMEOUT): Promise<FrontEnd> {
    let fd = -1;
    await waitFor(() => (fd = native.unixAccept(listenFd)) >= 0, timeoutMs, 'the back-end to connect');
    return new FrontEnd(fd, name);
  }

  get replyAck(): boolean {
    return this.useReplyAck && has(this.protocolFeatures, ProtocolFeature.REPLY_ACK);
  }

  // ---- framing ----

  /** Sends one raw message; fds go as SCM_RIGHTS. For hostile tests too: nothing is checked. */
  send(request: number, flags = VERSION, payload?: Uint8Array, fds: number[] = []): void {
    this.sendBytes(encode(request, flags, payload), fds);
  }

  /** Sends raw bytes (a truncated header, a lying size field…). */
  sendBytes(bytes: Uint8Array, fds: number[] = []): void {
    if (this.closed) throw new Error(`${this.name}: connection closed`);
    let at = 0;
    let first = true;
    while (at < bytes.length) {
      const n = native.sendmsg(this.fd, bytes, at, bytes.length - at, first ? fds : []);
      if (n < 0) throw new Error(`${this.name}: socket buffer full`); // messages here are tiny
      if (n > 0) first = false;
      at += n;
    }
  }

  private onReadable(status: number): void {
    if (this.closed) return;
    if (status < 0) return this.peerClosed();
    for (;;) {
      const chunk = new Uint8Array(4096);
      let r;
      try {
        r = native.recvmsg(this.fd, chunk, 0, chunk.length, 16);
      } catch {
        return this.peerClosed();
      }
      if (r.bytes < 0) break;
      this.inFds.push(...r.fds);
      if (r.bytes === 0) return this.peerClosed();
      this.inBuf = concat([this.inBuf, chunk.subarray(0, r.bytes)]);
      this.parse();
    }
  }

  private parse(): void {
    while (this.inBuf.length >= HDR_SIZE) {
      const v = new DataView(this.inBuf.buffer, this.inBuf.byteOffset);
      const size = v.getUint32(8, true);
      if (this.inBuf.length < HDR_SIZE + size) return;
      const reply: Reply = {
        request: v.getUint32(0, true),
        flags: v.getUint32(4, true),
        payload: this.inBuf.slice(HDR_SIZE, HDR_SIZE + size),
        fds: this.inFds.splice(0),
      };
      this.inBuf = this.inBuf.slice(HDR_SIZE + size);
      const w = this.waiters.shift();
      if (w) w.resolve(reply);
      else this.queue.push(reply);
    }
  }

  /** The back-end closed the connection: our end is closed too (the rings and RAM stay until close()). */
  private peerClosed(): void {
    this.shutdown();
  }

  /** The next message from the back-end. */
  recv(timeoutMs = DEFAULT_TIMEOUT): Promise<Reply> {
    const q = this.queue.shift();
    if (q) return Promise.resolve(q);
    if (this.closed) return Promise.reject(new Error(`${this.name}: connection closed by the back-end`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== entry);
        reject(new Error(`${this.name}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      const entry = {
        resolve: (r: Reply) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.waiters.push(entry);
    });
  }

  /** Resolves when the back-end has closed the connection; rejects on timeout. */
  waitClosed(timeoutMs = DEFAULT_TIMEOUT): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.name}: back-end did not close the connection`)), timeoutMs);
      this.closedWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** Sends a request and returns its reply, checking it answers that request. */
  async call(request: number, payload?: Uint8Array, fds: number[] = []): Promise<Uint8Array> {
    this.send(request, VERSION, payload, fds);
    const r = await this.recv();
    if (r.request !== request) throw new Error(`${this.name}: reply to ${requestName(r.request)} while waiting for ${requestName(request)}`);
    if (!(r.flags & FLAG_REPLY)) throw new Error(`${this.name}: ${requestName(request)} answered without the reply flag`);
    return r.payload;
  }

  /** A request without a reply of its own: with REPLY_ACK, asks for and checks the ack. */
  async request(request: number, payload?: Uint8Array, fds: number[] = []): Promise<void> {
    if (!this.replyAck) {
      this.send(request, VERSION, payload, fds);
      return;
    }
    this.send(request, VERSION | FLAG_NEED_REPLY, payload, fds);
    const r = await this.recv();
    if (r.request !== request) throw new Error(`${this.name}: ack for ${requestName(r.request)} while waiting for ${requestName(request)}`);
    if (r.payload.length !== 8) throw new Error(`${this.name}: ack of ${r.payload.length} bytes`);
    const status = new DataView(r.payload.buffer, r.payload.byteOffset).getBigUint64(0, true);
    if (status !== 0n) throw new Error(`${this.name}: ${requestName(request)} failed (ack ${status})`);
  }

  /** A round trip: every earlier message has been handled once it resolves. */
  async sync(): Promise<void> {
    await this.getFeatures();
  }

  // ---- one method per request ----

  async getFeatures(): Promise<bigint> {
    return u64(await this.call(Req.GET_FEATURES));
  }

  async setFeatures(f: bigint): Promise<void> {
    await this.request(Req.SET_FEATURES, u64Payload(f));
    this.features = f;
  }

  async getProtocolFeatures(): Promise<bigint> {
    return u64(await this.call(Req.GET_PROTOCOL_FEATURES));
  }

  /** With REPLY_ACK among f, the back-end acks this very message (it checks after applying f). */
  async setProtocolFeatures(f: bigint): Promise<void> {
    this.protocolFeatures = f;
    await this.request(Req.SET_PROTOCOL_FEATURES, u64Payload(f));
  }

  async setOwner(): Promise<void> {
    await this.request(Req.SET_OWNER);
  }

  async resetOwner(): Promise<void> {
    await this.request(Req.RESET_OWNER);
  }

  /** SET_STATUS (VHOST_USER_PROTOCOL_F_STATUS): the virtio device status byte */
  async setStatus(status: number): Promise<void> {
    await this.request(Req.SET_STATUS, u64Payload(status));
  }

  async getStatus(): Promise<number> {
    return Number(u64(await this.call(Req.GET_STATUS)));
  }

  /** QEMU 7.2's vhost_user_add_status: GET_STATUS, then SET_STATUS with the bits added if missing */
  async addStatus(bits: number): Promise<void> {
    const now = await this.getStatus();
    if ((now & bits) !== bits) await this.setStatus(now | bits);
  }

  async getQueueNum(): Promise<number> {
    return Number(u64(await this.call(Req.GET_QUEUE_NUM)));
  }

  async getMaxMemSlots(): Promise<number> {
    return Number(u64(await this.call(Req.GET_MAX_MEM_SLOTS)));
  }

  /** SET_MEM_TABLE with every region of ram (one fd per region). */
  async setMemTable(ram: GuestRam = this.ram!): Promise<void> {
    await this.setMemTableRaw(ram.regions.map(GuestRam.describe), ram.regions.map((r) => r.fd));
  }

  /** SET_MEM_TABLE from explicit region descriptors and fds (they need not match, for hostile tests). */
  async setMemTableRaw(regions: MemRegion[], fds: number[]): Promise<void> {
    await this.request(Req.SET_MEM_TABLE, memTablePayload(regions), fds);
  }

  async addMemReg(r: RamRegion): Promise<void> {
    await this.request(Req.ADD_MEM_REG, singleRegionPayload(GuestRam.describe(r)), [r.fd]);
  }

  async remMemReg(r: RamRegion): Promise<void> {
    await this.request(Req.REM_MEM_REG, singleRegionPayload(GuestRam.describe(r)));
  }

  async setVringNum(index: number, num: number): Promise<void> {
    await this.request(Req.SET_VRING_NUM, vringStatePayload(index, num));
  }

  /** Addresses are front-end virtual ("user") addresses. */
  async setVringAddr(index: number, desc: number, used: number, avail: number, flags = 0, logAddr = 0): Promise<void> {
    const b = new Uint8Array(40);
    const v = new DataView(b.buffer);
    v.setUint32(0, index, true);
    v.setUint32(4, flags, true);
    v.setBigUint64(8, BigInt(desc), true);
    v.setBigUint64(16, BigInt(used), true);
    v.setBigUint64(24, BigInt(avail), true);
    v.setBigUint64(32, BigInt(logAddr), true); // log_guest_addr (used with VHOST_VRING_F_LOG)
    await this.request(Req.SET_VRING_ADDR, b);
  }

  async setVringBase(index: number, base: number): Promise<void> {
    await this.request(Req.SET_VRING_BASE, vringStatePayload(index, base));
  }

  /** Stops the ring; returns the index of the next avail entry the back-end would have taken. */
  async getVringBase(index: number): Promise<number> {
    const p = await this.call(Req.GET_VRING_BASE, vringStatePayload(index, 0));
    const v = new DataView(p.buffer, p.byteOffset);
    if (v.getUint32(0, true) !== index) throw new Error(`GET_VRING_BASE answered for ring ${v.getUint32(0, true)}`);
    return v.getUint32(4, true);
  }

  /** fd null: the "no fd" bit (polling mode / no notifications). */
  async setVringKick(index: number, fd: number | null): Promise<void> {
    await this.vringFd(Req.SET_VRING_KICK, index, fd);
  }

  async setVringCall(index: number, fd: number | null): Promise<void> {
    await this.vringFd(Req.SET_VRING_CALL, index, fd);
  }

  async setVringErr(index: number, fd: number | null): Promise<void> {
    await this.vringFd(Req.SET_VRING_ERR, index, fd);
  }

  private async vringFd(req: number, index: number, fd: number | null): Promise<void> {
    await this.request(req, u64Payload(fd === null ? index | VRING_NOFD_MASK : index), fd === null ? [] : [fd]);
  }

  async setVringEnable(index: number, on: boolean): Promise<void> {
    await this.request(Req.SET_VRING_ENABLE, vringStatePayload(index, on ? 1 : 0));
  }

  async netSetMtu(mtu: number): Promise<void> {
    await this.request(Req.NET_SET_MTU, u64Payload(mtu));
  }

  /** The guest's MAC, in the first 6 bytes of a u64. */
  async sendRarp(mac: Uint8Array): Promise<void> {
    const b = new Uint8Array(8);
    b.set(mac.subarray(0, 6));
    await this.request(Req.SEND_RARP, b);
  }

  /** VhostUserConfig { offset, size, flags, region[size] }; returns the reply's fields, or null for
   * the zero-length reply by which a back-end reports failure. */
  async getConfig(offset: number, size: number, flags = 0): Promise<{ offset: number; size: number; flags: number; data: Uint8Array } | null> {
    const b = new Uint8Array(CONFIG_HDR_SIZE + size);
    const v = new DataView(b.buffer);
    v.setUint32(0, offset, true);
    v.setUint32(4, size, true);
    v.setUint32(8, flags, true);
    const p = await this.call(Req.GET_CONFIG, b);
    if (p.length === 0) return null;
    const r = new DataView(p.buffer, p.byteOffset, p.byteLength);
    return { offset: r.getUint32(0, true), size: r.getUint32(4, true), flags: r.getUint32(8, true), data: p.slice(CONFIG_HDR_SIZE) };
  }

  /** SET_LOG_BASE { mmap_size, mmap_offset } + the log fd; the back-end answers with a reply. */
  async setLogBase(size: number, offset: number, fd: number): Promise<Uint8Array> {
    const b = new Uint8Array(16);
    const v = new DataView(b.buffer);
    v.setBigUint64(0, BigInt(size), true);
    v.setBigUint64(8, BigInt(offset), true);
    return this.call(Req.SET_LOG_BASE, b, [fd]);
  }

  async setLogFd(fd: number): Promise<void> {
    await this.request(Req.SET_LOG_FD, undefined, [fd]);
  }

  // ---- what QEMU does ----

  /**
   * The whole bring-up, in QEMU's order: vhost_user_backend_init (GET_FEATURES, GET/SET_PROTOCOL_FEATURES,
   * GET_QUEUE_NUM, GET_MAX_MEM_SLOTS), SET_OWNER, then vhost_dev_start (SET_FEATURES, SET_MEM_TABLE,
   * per ring SET_VRING_NUM/BASE/ADDR/KICK/CALL, SET_VRING_ENABLE), with RX buffers posted by the
   * guest driver and a first kick on RX (which starts the ring in the back-end).
   */
  async start(opts: StartOptions = {}): Promise<{ rx: Virtqueue; tx: Virtqueue }> {
    await this.bringUp(opts, false);
    return { rx: this.rings[0], tx: this.rings[1] };
  }

  /** start() with VIRTIO_F_RING_PACKED negotiated: packed rings (in packedRings). */
  async startPacked(opts: StartOptions = {}): Promise<{ rx: PackedVirtqueue; tx: PackedVirtqueue }> {
    await this.bringUp(opts, true);
    if (!has(this.features, VirtioFeature.F_RING_PACKED)) throw new Error(`${this.name}: the back-end does not offer VIRTIO_F_RING_PACKED`);
    return { rx: this.packedRings[0], tx: this.packedRings[1] };
  }

  private async bringUp(opts: StartOptions, packed: boolean): Promise<void> {
    this.releaseGuest(); // starting over (after RESET_OWNER): a fresh guest
    const offered = await this.getFeatures();
    // VIRTIO_F_RING_PACKED only with packed rings (QEMU's packed=on), whatever opts.features says
    const pbit = bit(VirtioFeature.F_RING_PACKED);
    const features = (((opts.features ?? offered) & ~pbit) | (packed ? pbit : 0n)) & offered;
    let protocol = 0n;
    if (has(features, VirtioFeature.USER_F_PROTOCOL_FEATURES)) {
      const offeredProto = await this.getProtocolFeatures();
      protocol = (opts.protocolFeatures ?? offeredProto) & offeredProto;
      await this.setProtocolFeatures(protocol);
    }
    if (has(protocol, ProtocolFeature.MQ)) await this.getQueueNum();
    if (has(protocol, ProtocolFeature.CONFIGURE_MEM_SLOTS)) await this.getMaxMemSlots();
    await this.setOwner();
    await this.setFeatures(features);
    const status = has(protocol, ProtocolFeature.STATUS);
    if (status) await this.addStatus(STATUS_FEATURES_OK);
    this.ram = new GuestRam(opts.ram ?? [{ gpa: 0, size: 4 << 20 }]);
    await this.setMemTable(this.ram);
    const num = opts.num ?? 256;
    const eventIdx = has(features, VirtioFeature.RING_F_EVENT_IDX);
    const base = opts.base ?? (packed ? PACKED_BASE_START : 0);
    for (let i = 0; i < 2 * (opts.queuePairs ?? 1); i++) {
      const vq = packed ? new PackedVirtqueue(this.ram, i, num, { eventIdx }) : new Virtqueue(this.ram, i, num, { eventIdx });
      if (vq instanceof PackedVirtqueue) this.packedRings[i] = vq;
      else this.rings[i] = vq;
      vq.resetIndices(base);
      if (vq.isRx) {
        const [count, size] = opts.rxBuffers ?? [64, 2048];
        if (count > 0) vq.postRx(count, size, opts.rxLayout);
      }
      await this.setupRing(vq, base);
    }
    // vhost_user_dev_start(true), at the end of vhost_dev_start
    if (status && (opts.driverOk ?? true)) await this.addStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK);
    const all = packed ? this.packedRings : this.rings;
    // Without PROTOCOL_FEATURES rings are enabled from the start and SET_VRING_ENABLE is not sent.
    if ((opts.enable ?? true) && has(features, VirtioFeature.USER_F_PROTOCOL_FEATURES)) {
      for (const vq of all) await this.setVringEnable(vq.index, true);
    }
    if (opts.mtu !== undefined) await this.netSetMtu(opts.mtu);
    await this.sync();
    if (opts.kickRx ?? true) for (const vq of all) if (vq.isRx) vq.kick();
  }

  /** SET_VRING_NUM, BASE, ADDR, KICK, CALL, ERR for one ring (QEMU's vhost_virtqueue_start). */
  async setupRing(vq: Virtqueue | PackedVirtqueue, base = 0): Promise<void> {
    const ram = vq.ram;
    await this.setVringNum(vq.index, vq.num);
    await this.setVringBase(vq.index, base);
    await this.setVringAddr(vq.index, ram.uva(vq.descGpa), ram.uva(vq.usedGpa), ram.uva(vq.availGpa));
    await this.setVringKick(vq.index, vq.kickFd);
    await this.setVringCall(vq.index, vq.callFd);
    await this.setVringErr(vq.index, vq.errFd);
  }

  /** Header length the device uses with the negotiated features. */
  get hdrLen(): number {
    return has(this.features, VirtioFeature.F_VERSION_1) || has(this.features, VirtioFeature.NET_F_MRG_RXBUF) ? 12 : 10;
  }

  get mergeable(): boolean {
    return has(this.features, VirtioFeature.NET_F_MRG_RXBUF);
  }

  /** Closes the socket (the back-end sees the disconnect), the eventfds and the guest RAM. */
  close(): void {
    this.shutdown();
    this.releaseGuest();
  }

  private releaseGuest(): void {
    for (const vq of this.rings.splice(0)) vq?.close();
    for (const vq of this.packedRings.splice(0)) vq?.close();
    this.ram?.close();
    this.ram = null;
  }

  private shutdown(): void {
    if (this.poller) {
      this.poller.close();
      this.poller = null;
    }
    if (!this.closed) {
      this.closed = true;
      closeFd(this.fd);
      for (const fd of this.inFds.splice(0)) closeFd(fd);
      for (const r of this.queue.splice(0)) for (const fd of r.fds) closeFd(fd);
      for (const w of this.waiters.splice(0)) w.reject(new Error(`${this.name}: connection closed by the back-end`));
      for (const w of this.closedWaiters.splice(0)) w();
    }
  }
}

function u64(p: Uint8Array): bigint {
  if (p.length !== 8) throw new Error(`expected a u64 reply, got ${p.length} bytes`);
  return new DataView(p.buffer, p.byteOffset).getBigUint64(0, true);
}

/** VhostUserMemory: u32 nregions, u32 padding, then VhostUserMemoryRegion[nregions] */
export function memTablePayload(regions: MemRegion[]): Uint8Array {
  const b = new Uint8Array(8 + regions.length * MEM_REGION_SIZE);
  const v = new DataView(b.buffer);
  v.setUint32(0, regions.length, true);
  regions.forEach((r, i) => writeRegion(v, 8 + i * MEM_REGION_SIZE, r));
  return b;
}

/** VhostUserSingleMemRegion: u64 padding, then one VhostUserMemoryRegion */
export function singleRegionPayload(r: MemRegion): Uint8Array {
  const b = new Uint8Array(8 + MEM_REGION_SIZE);
  writeRegion(new DataView(b.buffer), 8, r);
  return b;
}

/** Every feature bit this front-end can drive (what QEMU's vhost-user-net asks for, roughly). */
export const FRONTEND_FEATURES: bigint =
  bit(VirtioFeature.NET_F_MRG_RXBUF) |
  bit(VirtioFeature.NET_F_MTU) |
  bit(VirtioFeature.NET_F_STATUS) |
  bit(VirtioFeature.F_ANY_LAYOUT) |
  bit(VirtioFeature.RING_F_INDIRECT_DESC) |
  bit(VirtioFeature.RING_F_EVENT_IDX) |
  bit(VirtioFeature.USER_F_PROTOCOL_FEATURES) |
  bit(VirtioFeature.F_VERSION_1);
