// The ring fuzz targets' reference: guest memory as the fuzzer wrote it (its own mappings of the
// memfds) and a walk of a descriptor chain written from the virtio spec (2.7.5 split, 2.8.6 packed,
// indirect tables 2.7.5.3 / 2.8.8) plus this back-end's documented refusals (zero-length buffers,
// buffers beyond MAX_DESC_LEN, the wrong direction for the queue, an indirect table that is not
// 16-byte aligned in one region, nested indirect tables). The targets compare what the ring under
// test popped with it: the same chains, the same buffers, byte for byte.
import { native } from '../../src/native';
import { GuestMemory, Region } from '../../src/memory/guest-memory';
import { MAX_SEGMENTS, Segments } from '../../src/virtio/chain';
import { MAX_DESC_LEN } from '../../src/virtio/split-ring';

export const NEXT = 1;
export const WRITE = 2;
export const INDIRECT = 4;
const TWO32 = 0x100000000;

export interface ModelRegion {
  gpa: number;
  size: number;
  uva: number;
  u8: Uint8Array;
  u16: Uint16Array;
  u32: Uint32Array;
  /** the back-end's window of this region (what a segment's buf is) */
  window: Uint8Array;
}

/** Two adjacent regions (so a buffer may span both) mapped by the back-end's GuestMemory and here. */
export class ModelMemory {
  readonly mem = new GuestMemory();
  readonly regions: ModelRegion[] = [];
  private readonly abs: ArrayBuffer[] = [];

  constructor(specs: { gpa: number; size: number; uva: number }[]) {
    const rs: Region[] = [];
    for (const s of specs) {
      const fd = native.memfdCreate('fuzz-ring-ram', s.size);
      rs.push(new Region({ guestPhysAddr: s.gpa, memorySize: s.size, userspaceAddr: s.uva, mmapOffset: 0 }, fd));
      const ab = native.mmap(fd, s.size, 0);
      this.abs.push(ab);
      this.regions.push({ ...s, u8: new Uint8Array(ab), u16: new Uint16Array(ab), u32: new Uint32Array(ab), window: new Uint8Array(0) });
    }
    this.mem.replace(rs);
    const list = this.mem.list();
    for (const r of this.regions) {
      const m = list.find((x) => x.desc.guestPhysAddr === r.gpa);
      if (!m || m.windows.length !== 1) throw new Error('fuzz: a region of one window expected');
      r.window = m.windows[0];
    }
  }

  get end(): number {
    const last = this.regions[this.regions.length - 1];
    return last.gpa + last.size;
  }

  /** the region holding [gpa, gpa+len) entirely, or null */
  within(gpa: number, len: number): ModelRegion | null {
    for (const r of this.regions) if (gpa >= r.gpa && gpa + len <= r.gpa + r.size) return r;
    return null;
  }

  /** [gpa, gpa+len) split where regions end; null when any byte is outside guest memory */
  pieces(gpa: number, len: number): { gpa: number; len: number }[] | null {
    const out: { gpa: number; len: number }[] = [];
    while (len > 0) {
      const r = this.regions.find((x) => gpa >= x.gpa && gpa < x.gpa + x.size);
      if (!r) return null;
      const n = Math.min(len, r.gpa + r.size - gpa);
      out.push({ gpa, len: n });
      gpa += n;
      len -= n;
    }
    return out;
  }

  /** a 16-byte descriptor at gpa (inside a region): addr, len and its two 16-bit words (split:
   * flags, next; packed: id, flags) */
  desc(gpa: number): { addr: number; len: number; w6: number; w7: number } {
    const r = this.within(gpa, 16);
    if (!r) throw new Error(`fuzz model: descriptor at 0x${gpa.toString(16)} outside memory`);
    const o = gpa - r.gpa;
    const w32 = o >>> 2;
    return { addr: r.u32[w32] + r.u32[w32 + 1] * TWO32, len: r.u32[w32 + 2], w6: r.u16[(o >>> 1) + 6], w7: r.u16[(o >>> 1) + 7] };
  }

  byteAt(gpa: number): number {
    const r = this.within(gpa, 1)!;
    return r.u8[gpa - r.gpa];
  }

  close(): void {
    this.mem.clear();
    for (const ab of this.abs) native.munmap(ab);
  }
}

export type Walk = { ok: true; bufs: { gpa: number; len: number }[]; descs: number; indirect: boolean } | { ok: false; why: string };

/** one buffer of a chain: the checks every ring format shares */
function buffer(m: ModelMemory, addr: number, len: number, flags: number, writable: boolean, out: { gpa: number; len: number }[]): string | null {
  if (len === 0) return 'zero-length buffer';
  if (len > MAX_DESC_LEN) return 'buffer beyond MAX_DESC_LEN';
  if (((flags & WRITE) !== 0) !== writable) return 'wrong direction';
  if (m.pieces(addr, len) === null) return 'buffer outside guest memory';
  out.push({ gpa: addr, len });
  return null;
}

/** the checks of an indirect table's own descriptor: null, or why it is refused */
function indirectTable(m: ModelMemory, addr: number, len: number): string | null {
  if (len === 0 || len % 16 !== 0 || len / 16 > MAX_SEGMENTS) return 'bad indirect table length';
  const r = m.within(addr, len);
  if (!r) return 'indirect table not inside one region';
  if ((addr - r.gpa) % 16 !== 0) return 'indirect table not 16-byte aligned';
  return null;
}

/**
 * A split ring's chain from head, read from the descriptor table at descGpa (num entries): the
 * spec's walk (NEXT links, one indirect table, loops refused) with this back-end's checks.
 */
export function walkSplit(m: ModelMemory, descGpa: number, num: number, head: number, writable: boolean, indirectAllowed: boolean, maxChain: number): Walk {
  if (head >= num) return { ok: false, why: 'head beyond the ring' };
  let table = descGpa;
  let size = num;
  let i = head;
  let inTable = 0;
  let total = 0;
  let indirect = false;
  const bufs: { gpa: number; len: number }[] = [];
  for (;;) {
    if (++total > maxChain) return { ok: false, why: 'chain longer than maxChain' };
    if (++inTable > size) return { ok: false, why: 'loop' };
    const raw = m.desc(table + 16 * i);
    const d = { addr: raw.addr, len: raw.len, flags: raw.w6, next: raw.w7 };
    if (d.flags & INDIRECT) {
      if (indirect) return { ok: false, why: 'nested indirect' };
      if (!indirectAllowed) return { ok: false, why: 'indirect not negotiated' };
      if (d.flags & NEXT) return { ok: false, why: 'indirect with NEXT' };
      const bad = indirectTable(m, d.addr, d.len);
      if (bad) return { ok: false, why: bad };
      table = d.addr;
      size = d.len / 16;
      i = 0;
      inTable = 0;
      indirect = true;
      continue;
    }
    const bad = buffer(m, d.addr, d.len, d.flags, writable, bufs);
    if (bad) return { ok: false, why: bad };
    if ((d.flags & NEXT) === 0) break;
    i = d.next;
    if (i >= size) return { ok: false, why: 'next beyond the table' };
  }
  return { ok: true, bufs, descs: total, indirect };
}

function availIn(flags: number, wrap: number): boolean {
  return ((flags >>> 7) & 1) === wrap && flags >>> 15 !== wrap;
}

/**
 * A packed ring's chain from position pos with wrap counter wrap: descriptors in ring order while
 * NEXT is set, each made available in the current lap; an indirect descriptor only alone, its table
 * consecutive descriptors of which only WRITE counts. The buffer id is the last descriptor's.
 */
export function walkPacked(m: ModelMemory, descGpa: number, num: number, pos: number, wrap: number, writable: boolean, indirectAllowed: boolean): (Walk & { ok: true; id: number; endPos: number; endWrap: number }) | { ok: false; why: string } {
  const bufs: { gpa: number; len: number }[] = [];
  let p = pos;
  let w = wrap;
  let n = 0;
  let id = 0;
  let indirect = false;
  for (;;) {
    const raw = m.desc(descGpa + 16 * p);
    const d = { addr: raw.addr, len: raw.len, id: raw.w6, flags: raw.w7 };
    if (!availIn(d.flags, w)) return { ok: false, why: 'descriptor not available' };
    if (++n > num) return { ok: false, why: 'chain longer than the ring' };
    id = d.id;
    if (++p === num) {
      p = 0;
      w ^= 1;
    }
    if (d.flags & INDIRECT) {
      if (!indirectAllowed) return { ok: false, why: 'indirect not negotiated' };
      if (n !== 1 || d.flags & NEXT) return { ok: false, why: 'indirect in a chain' };
      const bad = indirectTable(m, d.addr, d.len);
      if (bad) return { ok: false, why: bad };
      for (let k = 0; k < d.len / 16; k++) {
        const raw2 = m.desc(d.addr + 16 * k);
        const e = { addr: raw2.addr, len: raw2.len, flags: raw2.w7 };
        if (e.flags & INDIRECT) return { ok: false, why: 'nested indirect' };
        const why = buffer(m, e.addr, e.len, e.flags, writable, bufs);
        if (why) return { ok: false, why };
      }
      indirect = true;
      break;
    }
    const why = buffer(m, d.addr, d.len, d.flags, writable, bufs);
    if (why) return { ok: false, why };
    if ((d.flags & NEXT) === 0) break;
  }
  return { ok: true, bufs, descs: n, indirect, id, endPos: p, endWrap: w };
}

/**
 * Compares the segments [from, segs.count) with the buffers of a reference walk: each buffer
 * covered by consecutive segments from its first byte to its last (split only where a window ends),
 * each segment in the window of the region its guest address is in. Null, or what differs.
 */
export function compareSegments(m: ModelMemory, segs: Segments, from: number, bufs: { gpa: number; len: number }[]): string | null {
  let k = from;
  for (const [bi, b] of bufs.entries()) {
    let at = b.gpa;
    let left = b.len;
    while (left > 0) {
      if (k >= segs.count) return `buffer ${bi} (0x${b.gpa.toString(16)}+${b.len}): segments end at 0x${at.toString(16)} with ${left} bytes left`;
      const r = m.regions.find((x) => x.window === segs.buf[k]);
      if (!r) return `segment ${k - from} is in no region's window`;
      const gpa = r.gpa + segs.off[k];
      if (gpa !== at) return `buffer ${bi}: segment ${k - from} starts at 0x${gpa.toString(16)}, 0x${at.toString(16)} expected`;
      if (segs.len[k] <= 0 || segs.len[k] > left) return `buffer ${bi}: segment ${k - from} of ${segs.len[k]} bytes, ${left} left in the buffer`;
      if (segs.off[k] + segs.len[k] > segs.buf[k].length) return `segment ${k - from} goes past its window`;
      at += segs.len[k];
      left -= segs.len[k];
      k++;
    }
  }
  if (k !== segs.count) return `${segs.count - k} segments more than the descriptors' buffers`;
  return null;
}
