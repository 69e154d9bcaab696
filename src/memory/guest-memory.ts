// Guest memory as the front-end described it (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG): each region
// is an fd mapped once, shared with the guest. Two address spaces point into it: guest-physical
// addresses (what descriptors carry) and front-end virtual addresses (what SET_VRING_ADDR carries).
//
// Node 20 aborts on an external ArrayBuffer over 4 GiB, so a large region is mapped as overlapping
// windows: window k covers [k*STEP, k*STEP + WINDOW) of the region. Any range of up to
// WINDOW - STEP bytes lies inside a single window; longer ranges are handed out piecewise.
//
// Each window is an external ArrayBuffer, and V8 runs a full garbage collection for every 64 MiB of
// them created (its heuristic for memory a collection could give back; a mapping is given back
// only by munmap): a window costs a few milliseconds. A large region is therefore mapped in slices
// across event-loop turns (mapInSlices), never in one go.
//
// A file that shrinks under its mapping makes the next access to the missing pages fault: the addon
// contains the fault (zero pages over the page, counted on the window), and watchFaults() tells
// the region's owner (Region.onFault), which resets that connection only.
import * as fs from 'node:fs';
import { native } from '../native';
import { copies } from '../datapath/copy-list';
import type { DirtyLog } from './dirty-log';

/** One region of guest memory as the front-end describes it (VhostUserMemoryRegion). */
export interface MemRegion {
  guestPhysAddr: number;
  memorySize: number;
  userspaceAddr: number;
  mmapOffset: number;
}

const GiB = 1024 * 1024 * 1024;
export const WINDOW = 2 * GiB;
export const STEP = 1 * GiB;
const PAGE = 4096;
/** a slice of mapInSlices() stops mapping windows after this long (at least one window a turn) */
export const MAP_SLICE_MS = 2;

/** every region with live mappings, for the fault watch */
const live = new Set<Region>();
/** the addon's count of contained faults ([0]), read without a call */
const faultWord = native.guestFaultWord();
let faultsSeen = faultWord[0];
let faultTimer: NodeJS.Timeout | null = null;
let faultCheckQueued = false;
/** how often the fault watch looks, for faults taken in JavaScript between copy runs */
const FAULT_WATCH_MS = 5;

export class Region {
  readonly windows: Uint8Array[] = [];
  /** the same windows as 32- and 16-bit views (made once), for descriptor tables found in them */
  readonly windows32: Uint32Array[] = [];
  readonly windows16: Uint16Array[] = [];
  /** copy-list area id of each window */
  readonly areas: number[] = [];
  /** bytes between the start of window 0 and the region start (mmap_offset rounded down to a page) */
  private readonly delta: number;
  private mapped = true;
  /**
   * How many ADD_MEM_REG messages added this very region. QEMU drives a multiqueue vhost-user NIC
   * as one vhost device per queue pair over one socket, and each device adds (and later removes)
   * the same regions; the region goes away with the last removal.
   */
  refs = 1;
  /** the file cannot shrink under our mapping (F_SEAL_SHRINK in place) */
  sealed = false;
  /** told (once, on a later turn) when an access to this region faulted: its file shrank */
  onFault: ((r: Region) => void) | null = null;
  /** onFault was called (it is called once) */
  faultTold = false;
  private readonly mapStart: number;
  /** bytes of the file the windows cover (delta + memorySize) */
  private readonly total: number;
  /** every window mapped (mapInSlices maps the rest of a deferred region) */
  complete = false;

  /**
   * Takes ownership of fd: it is closed by unmap(), or at once if the region cannot be mapped.
   * deferred: map no window yet (mapInSlices() maps them; the region is not usable before).
   */
  constructor(readonly desc: MemRegion, readonly fd: number, deferred = false) {
    const { memorySize, mmapOffset } = desc;
    const mapStart = Math.floor(mmapOffset / PAGE) * PAGE;
    this.mapStart = mapStart;
    this.delta = mmapOffset - mapStart;
    this.total = this.delta + memorySize;
    try {
      if (memorySize <= 0) throw new Error('memory region of size 0');
      if (desc.guestPhysAddr + memorySize > Number.MAX_SAFE_INTEGER || desc.userspaceAddr + memorySize > Number.MAX_SAFE_INTEGER) {
        throw new Error('memory region wraps the address space');
      }
      // Touching a mapping beyond the end of its file raises SIGBUS and would kill every port:
      // check the file is large enough before mapping it.
      const st = fs.fstatSync(fd);
      if (st.isFile() && mmapOffset + memorySize > st.size) {
        throw new Error(`memory region [offset ${mmapOffset}, +${memorySize}) extends past the end of its fd (size ${st.size})`);
      }
      // ...and make sure it stays so: a memfd is sealed against shrinking where the front-end made
      // it sealable (QEMU's memfd backend seals it itself); other files are trusted not to shrink
      this.sealed = st.isFile() && native.sealShrink(fd) === 1;
      live.add(this);
      if (!this.sealed) watchFaults();
      if (!deferred) while (!this.mapNext());
    } catch (e) {
      this.unmap();
      throw e;
    }
  }

  /** windows this region needs */
  get windowCount(): number {
    return this.total <= WINDOW ? 1 : Math.ceil((this.total - WINDOW) / STEP) + 1;
  }

  /** Maps the next window; true when every window is mapped. */
  mapNext(): boolean {
    if (this.complete) return true;
    if (!this.mapped) throw new Error('memory region already unmapped');
    const at = this.windows.length * STEP;
    const len = Math.min(WINDOW, this.total - at);
    const ab = native.mmap(this.fd, len, this.mapStart + at);
    this.windows.push(new Uint8Array(ab));
    this.windows32.push(new Uint32Array(ab, 0, len >>> 2));
    this.windows16.push(new Uint16Array(ab, 0, len >>> 1));
    this.areas.push(copies.register(this.windows[this.windows.length - 1]));
    this.complete = at + len >= this.total;
    return this.complete;
  }

  /** faults contained in this region's windows so far */
  faults(): number {
    let n = 0;
    for (const w of this.windows) n += native.mappingFaults(w.buffer as ArrayBuffer);
    return n;
  }

  get guestEnd(): number {
    return this.desc.guestPhysAddr + this.desc.memorySize;
  }

  get userEnd(): number {
    return this.desc.userspaceAddr + this.desc.memorySize;
  }

  /** window holding region offset `rel` (and as much after it as possible); sets Translation fields */
  locate(rel: number, len: number, out: Translation): void {
    const r = this.delta + rel;
    let k = Math.floor(r / STEP);
    if (k >= this.windows.length) k = this.windows.length - 1;
    const w = this.windows[k];
    const off = r - k * STEP;
    out.buf = w;
    out.u32 = this.windows32[k];
    out.u16 = this.windows16[k];
    out.area = this.areas[k];
    out.off = off;
    const room = w.length - off;
    const left = this.desc.memorySize - rel;
    out.len = Math.min(len, room, left);
    // the guest-physical range this window serves contiguously, for callers that cache it
    out.winGpa = this.desc.guestPhysAddr + (k * STEP - this.delta);
    out.winStart = this.desc.guestPhysAddr + Math.max(0, k * STEP - this.delta);
    out.winEnd = this.desc.guestPhysAddr + rel + Math.min(room, left);
  }

  /** Live migration: copies into this region's windows are marked in log (null: no longer). */
  setLog(log: DirtyLog | null): void {
    for (let k = 0; k < this.areas.length; k++) {
      copies.setAreaLog(this.areas[k], log, this.desc.guestPhysAddr + k * STEP - this.delta);
    }
  }

  unmap(): void {
    if (!this.mapped) return;
    this.mapped = false;
    live.delete(this);
    // copies recorded into or out of these windows run now, or never
    copies.settle();
    for (const a of this.areas) copies.unregister(a);
    this.areas.length = 0;
    for (const w of this.windows) {
      try {
        native.munmap(w.buffer as ArrayBuffer);
      } catch {
        /* already detached */
      }
    }
    this.windows.length = 0;
    this.windows32.length = 0;
    this.windows16.length = 0;
    try {
      native.close(this.fd);
    } catch {
      /* ignore */
    }
  }
}

/** Result slots of a translation, reused so the data path allocates nothing. */
export class Translation {
  buf: Uint8Array = EMPTY;
  /** the same window as buf, viewed as u32 and u16 (index = off >> 2, off >> 1 when aligned) */
  u32: Uint32Array = EMPTY32;
  u16: Uint16Array = EMPTY16;
  /** copy-list area id of buf */
  area = 0;
  off = 0;
  /** contiguous bytes available at buf[off]: at most the length asked for */
  len = 0;
  /** guest-physical address of buf[0] (it may lie before the region: see winEnd) and the end of
   *  of the region range it holds */
  winGpa = 0;
  /** [winStart, winEnd): the guest-physical range buf holds (inside the region) */
  winStart = 0;
  winEnd = 0;
}
const EMPTY = new Uint8Array(0);
const EMPTY32 = new Uint32Array(0);
const EMPTY16 = new Uint16Array(0);

export class GuestMemory {
  private regions: Region[] = [];
  private lastHit = 0;

  get size(): number {
    return this.regions.length;
  }

  list(): readonly Region[] {
    return this.regions;
  }

  /** Replaces the whole table (SET_MEM_TABLE). Returns the old regions: unmap them once no ring uses them. */
  replace(regions: Region[]): Region[] {
    checkOverlap(regions);
    const old = this.regions;
    this.regions = regions.slice().sort((a, b) => a.desc.guestPhysAddr - b.desc.guestPhysAddr);
    this.lastHit = 0;
    return old;
  }

  /** The region already in the table with exactly this description, if any. */
  find(d: MemRegion): Region | null {
    for (const r of this.regions) {
      const e = r.desc;
      if (e.guestPhysAddr === d.guestPhysAddr && e.memorySize === d.memorySize && e.userspaceAddr === d.userspaceAddr && e.mmapOffset === d.mmapOffset) return r;
    }
    return null;
  }

  /** ADD_MEM_REG */
  add(region: Region): void {
    checkOverlap([...this.regions, region]);
    this.regions.push(region);
    this.regions.sort((a, b) => a.desc.guestPhysAddr - b.desc.guestPhysAddr);
    this.lastHit = 0;
  }

  /**
   * REM_MEM_REG: identified by guest address, user address and size. Returns the region when this
   * was its last reference (the caller unmaps it), the region itself still in place when other
   * references remain (check refs), or null when there is no such region.
   */
  remove(d: MemRegion): Region | null {
    const i = this.regions.findIndex(
      (r) => r.desc.guestPhysAddr === d.guestPhysAddr && r.desc.userspaceAddr === d.userspaceAddr && r.desc.memorySize === d.memorySize,
    );
    if (i < 0) return null;
    if (--this.regions[i].refs > 0) return this.regions[i];
    const [r] = this.regions.splice(i, 1);
    this.lastHit = 0;
    return r;
  }

  /** Unmaps everything (connection gone). */
  clear(): void {
    for (const r of this.regions) r.unmap();
    this.regions = [];
  }

  /**
   * Guest-physical address → the mapped bytes. Returns false when addr is in no region. On success,
   * out.len may be less than len when the range crosses a window or region end: continue at addr+out.len.
   */
  translateGpa(addr: number, len: number, out: Translation): boolean {
    const rs = this.regions;
    let r = rs[this.lastHit];
    if (r === undefined || addr < r.desc.guestPhysAddr || addr >= r.guestEnd) {
      let i = 0;
      for (; i < rs.length; i++) {
        r = rs[i];
        if (addr >= r.desc.guestPhysAddr && addr < r.guestEnd) break;
      }
      if (i === rs.length) return false;
      this.lastHit = i;
    }
    r.locate(addr - r.desc.guestPhysAddr, len, out);
    return true;
  }

  /** Front-end virtual address → one contiguous view of exactly len bytes, or null (ring addresses). */
  translateUva(addr: number, len: number): Translation | null {
    for (const r of this.regions) {
      if (addr >= r.desc.userspaceAddr && addr + len <= r.userEnd) {
        const t = new Translation();
        r.locate(addr - r.desc.userspaceAddr, len, t);
        return t.len < len ? null : t;
      }
    }
    return null;
  }

  /** Front-end virtual address → guest-physical address, or -1 when it is in no region. */
  uvaToGpa(addr: number): number {
    for (const r of this.regions) {
      if (addr >= r.desc.userspaceAddr && addr < r.userEnd) return r.desc.guestPhysAddr + (addr - r.desc.userspaceAddr);
    }
    return -1;
  }

  /** Live migration: every region's windows logged into log (null: logging off). */
  setLog(log: DirtyLog | null): void {
    for (const r of this.regions) r.setLog(log);
  }

  /** Guest-physical → one contiguous view of exactly len bytes, or null (indirect tables, tests). */
  contiguousGpa(addr: number, len: number, out: Translation): boolean {
    if (!this.translateGpa(addr, len, out)) return false;
    return out.len === len;
  }
}

function checkOverlap(regions: Region[]): void {
  const s = regions.slice().sort((a, b) => a.desc.guestPhysAddr - b.desc.guestPhysAddr);
  for (let i = 1; i < s.length; i++) {
    if (s[i].desc.guestPhysAddr < s[i - 1].guestEnd) {
      throw new Error(
        `memory region at guest address 0x${s[i].desc.guestPhysAddr.toString(16)} overlaps the region at 0x${s[i - 1].desc.guestPhysAddr.toString(16)} (size 0x${s[i - 1].desc.memorySize.toString(16)})`,
      );
    }
  }
}

/**
 * Maps every window of the regions, a slice per event-loop turn (at least one window, then more
 * while the turn has taken less than MAP_SLICE_MS), so that one front-end's huge memory table does
 * not freeze the others' traffic. done(null) when all are mapped, done(error) when a mapping failed
 * (the regions are left to the caller to unmap); cancel() stops it (done is not called then).
 */
export function mapInSlices(regions: Region[], done: (err: Error | null) => void): { cancel(): void } {
  let cancelled = false;
  let i = 0;
  const slice = (): void => {
    if (cancelled) return;
    const t0 = performance.now();
    try {
      do {
        while (i < regions.length && regions[i].complete) i++;
        if (i === regions.length) return done(null);
        regions[i].mapNext();
      } while (performance.now() - t0 < MAP_SLICE_MS);
    } catch (e) {
      return done(e as Error);
    }
    setImmediate(slice);
  };
  setImmediate(slice);
  return {
    cancel: () => {
      cancelled = true;
    },
  };
}

/**
 * Looks for contained faults: when the addon counted new ones, the regions whose windows faulted
 * are told (each once, on a later turn: the owner may unmap them, which must not happen in the
 * middle of a copy run or a ring walk). Called after every copy run and every FAULT_WATCH_MS
 * while unsealed regions are mapped (faults taken in JavaScript, between runs).
 */
export function checkGuestFaults(): void {
  if (faultWord[0] === faultsSeen || faultCheckQueued) return;
  faultCheckQueued = true;
  setImmediate(() => {
    faultCheckQueued = false;
    faultsSeen = faultWord[0];
    for (const r of [...live]) {
      if (r.faultTold || r.faults() === 0) continue;
      r.faultTold = true;
      r.onFault?.(r);
    }
  });
}

function watchFaults(): void {
  if (faultTimer) return;
  faultTimer = setInterval(() => {
    let unsealed = false;
    for (const r of live) if (!r.sealed) unsealed = true;
    if (!unsealed) {
      clearInterval(faultTimer!);
      faultTimer = null;
    }
    checkGuestFaults();
  }, FAULT_WATCH_MS);
  faultTimer.unref();
}

copies.afterRun = checkGuestFaults;
