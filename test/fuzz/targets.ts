// Fuzz targets: structure-aware random inputs for the parts a guest or front-end controls.
//   chains    random descriptor tables, avail rings, indices and indirect tables over real mapped
//             memory (two adjacent memfd regions), clean cases and hostile ones, walked by
//             SplitRing.popChain; every popped chain is compared with a reference walk of the
//             table the fuzzer wrote (ring-model.ts): the same buffers as consecutive segments,
//             whose bytes copy (through the addon's copy list) as the guest has them; every chain
//             the ring refuses must be invalid by the reference, and every valid one taken
//   packed    the same for packed rings (PackedRing): random flags (AVAIL/USED bits of either lap,
//             NEXT, WRITE, INDIRECT), ids, start positions and wrap counters, unpop and re-take,
//             used descriptors written back; the buffer id and the position after each chain too
//   messages  random vhost-user message sequences (valid headers with random requests, sizes,
//             payloads and fds; half after a front-end's set-up) against a Session over a real
//             socketpair: no exception escapes, a close logs its reason at level error, no handler
//             fails with anything but a check's error (a TypeError is a bug), no fd leaks
//   offload   (offload.ts) virtio-net headers over mutated frames (packets.ts) through the
//             offload fallback into bounded buffers
//   flowhash  (flowhash.ts) flowHash over the same frames
// Each returns what it saw (cases, and for the rings chains and segments popped). A deterministic
// PRNG: a failing seed reproduces.
import * as fs from 'node:fs';
import { native } from '../../src/native';
import { SplitRing, BROKEN } from '../../src/virtio/split-ring';
import { PackedRing } from '../../src/virtio/packed-ring';
import { Segments } from '../../src/virtio/chain';
import { compareSegments, INDIRECT, ModelMemory, NEXT, walkPacked, walkSplit, WRITE } from './ring-model';
import { copies } from '../../src/datapath/copy-list';
import { encode, FLAG_NEED_REPLY, payloadSize, ProtocolFeature, Req, setU64, VERSION, VRING_NOFD_MASK, vringStatePayload } from '../../src/vhost-user/message';
import { bit, VirtioFeature } from '../../src/vhost-user/features';
import { VhostUserPort } from '../../src/ports/vhost-user/port';
import type { EngineApi } from '../../src/ports/engine-api';
import type { EnginePort } from '../../src/engine/port';
import { DEFAULT_FEATURES, DEFAULT_PROTOCOL_FEATURES, Session } from '../../src/vhost-user/session';
import { Refusal } from '../../src/vhost-user/refusal';
import type { LogFields } from '../../src/log';

export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 1;
  }
  u32(): number {
    // xorshift32
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s;
  }
  below(n: number): number {
    return this.u32() % n;
  }
  pick<T>(a: readonly T[]): T {
    return a[this.below(a.length)];
  }
  chance(p: number): boolean {
    return this.u32() / 4294967296 < p;
  }
}

const REGION_GPA = 0x100000;
const REGION_SIZE = 1 << 20;
const REGION_UVA = 0x7f0000000000;
/** the ring targets' memory: two adjacent regions (a buffer may span both), then nothing */
const RING_REGIONS = [
  { gpa: REGION_GPA, size: REGION_SIZE, uva: REGION_UVA },
  { gpa: REGION_GPA + REGION_SIZE, size: REGION_SIZE, uva: REGION_UVA + 0x40000000 },
];

/** what a ring fuzz run saw: the targets' reach, which the tests hold to minimums */
export interface RingStats {
  cases: number;
  /** chains popped (and found equal to the reference walk) */
  chains: number;
  /** segments of those chains */
  segments: number;
  /** chains through an indirect table */
  indirect: number;
  /** buffers that span the two regions */
  spanning: number;
  /** chains of more than one descriptor */
  multi: number;
  /** chains the ring refused (and the reference walk refused too) */
  refused: number;
}

export function emptyRingStats(): RingStats {
  return { cases: 0, chains: 0, segments: 0, indirect: 0, spanning: 0, multi: 0, refused: 0 };
}

export function addRingStats(a: RingStats, b: RingStats): RingStats {
  const out = { ...a };
  for (const k of Object.keys(b) as (keyof RingStats)[]) out[k] += b[k];
  return out;
}

/** fills the data area with a pattern (so that copies are compared with something) */
function pattern(m: ModelMemory, seed: number): void {
  for (const r of m.regions) for (let i = 0; i < r.u32.length; i++) r.u32[i] = Math.imul(i + seed, 0x9e3779b1) >>> 0;
}

/** An address and length for a buffer: mostly inside memory, sometimes across the regions' seam,
 * and (with probability bad) past the end or anything. */
function bufferAddr(rng: Rng, m: ModelMemory, dataStart: number, bad: number): number {
  const seam = REGION_GPA + REGION_SIZE;
  if (rng.chance(bad)) return rng.pick([rng.u32(), m.end - rng.below(64), 0, REGION_GPA - 1 - rng.below(4096)]);
  if (rng.chance(0.06)) return seam - 1 - rng.below(2048);
  return REGION_GPA + dataStart + rng.below(m.end - REGION_GPA - dataStart - 9000);
}
function bufferLen(rng: Rng, bad: number): number {
  if (rng.chance(bad)) return rng.pick([rng.below(70000), rng.u32(), 0, 0x40000001]);
  return rng.pick([1 + rng.below(64), 1 + rng.below(2048), 1 + rng.below(9000), 16 * (1 + rng.below(8))]);
}

/** descriptor flags: a plausible chain link for a queue of this direction, or (probability bad) anything */
function descFlags(rng: Rng, writable: boolean, bad: number): number {
  if (rng.chance(bad)) return rng.below(8);
  return (rng.chance(0.3) ? NEXT : 0) | (writable ? WRITE : 0) | (rng.chance(0.1) ? INDIRECT : 0);
}

/**
 * Writes a plausible indirect table at (16-aligned) addr in the data area for a descriptor that
 * says INDIRECT; returns the descriptor's (addr, len). Split tables link with NEXT (entry i → i+1),
 * packed ones are consecutive. Sometimes left as it is (random bytes), misaligned or oversized.
 */
function indirectTableAt(rng: Rng, m: ModelMemory, dataStart: number, writable: boolean, packed: boolean, bad: number): [number, number] {
  const k = 1 + rng.below(8);
  let at = (REGION_GPA + dataStart + rng.below(m.end - REGION_GPA - dataStart - 16 * k)) & ~15;
  if (rng.chance(bad / 4)) at += 8;
  const len = rng.chance(1 - bad / 2) ? 16 * k : rng.pick([0, 16 * k + 8, 16 * 5000]);
  if (rng.chance(bad / 4)) return [at, len];
  for (let i = 0; i < k; i++) {
    const d = at + 16 * i;
    const r = m.within(d, 16);
    if (!r) continue;
    const o = d - r.gpa;
    r.u32[o >>> 2] = bufferAddr(rng, m, dataStart, bad) >>> 0;
    r.u32[(o >>> 2) + 1] = rng.chance(bad / 4) ? rng.u32() : 0;
    r.u32[(o >>> 2) + 2] = bufferLen(rng, bad) >>> 0;
    const flags = (rng.chance(bad / 2) !== writable ? WRITE : 0) | (rng.chance(bad / 4) ? INDIRECT : 0) | (!packed && i < k - 1 && rng.chance(1 - bad / 4) ? NEXT : 0);
    if (packed) {
      r.u16[(o >>> 1) + 6] = rng.below(65536);
      r.u16[(o >>> 1) + 7] = flags | (rng.chance(bad / 4) ? rng.below(65536) : 0);
    } else {
      r.u16[(o >>> 1) + 6] = flags;
      r.u16[(o >>> 1) + 7] = rng.chance(1 - bad / 4) ? i + 1 : rng.below(65536);
    }
  }
  return [at, len];
}

/**
 * Records a copy of each of the chain's segments (its first bytes) into scratch and runs it: the
 * addon must take every in-window segment, and the bytes must be those at the segment's guest
 * address as the fuzzer sees them (so the segment's copy-list area is its window's).
 */
function copyAndCheck(m: ModelMemory, segs: Segments, from: number, scratch: Uint8Array, scratchArea: number): string | null {
  const want: [number, number, number][] = [];
  let at = 0;
  for (let i = from; i < segs.count && at < scratch.length; i++) {
    const k = Math.min(segs.len[i], 32, scratch.length - at);
    if (!copies.record(segs.area[i], segs.off[i], scratchArea, at, k)) return 'an in-window segment refused by the copy list';
    const r = m.regions.find((x) => x.window === segs.buf[i])!;
    want.push([at, r.gpa + segs.off[i], k]);
    at += k;
  }
  copies.run();
  if (copies.copiesRefused !== 0) return `the addon refused ${copies.copiesRefused} copies`;
  for (const [off, gpa, k] of want) {
    for (let j = 0; j < k; j++) if (scratch[off + j] !== m.byteAt(gpa + j)) return `byte ${j} copied from 0x${(gpa + j).toString(16)} is ${scratch[off + j]}, the guest has ${m.byteAt(gpa + j)}`;
  }
  return null;
}

function countSpanning(bufs: { gpa: number; len: number }[]): number {
  const seam = REGION_GPA + REGION_SIZE;
  return bufs.filter((b) => b.gpa < seam && b.gpa + b.len > seam).length;
}

/**
 * Walks random split rings over two mapped regions; throws on the first violation. Each popped
 * chain is compared with a reference walk of the descriptor table the fuzzer wrote (ring-model.ts):
 * the same buffers, as consecutive segments, whose bytes copy as the guest has them; a chain the
 * ring refuses must be one the reference refuses too (and vice versa).
 */
export function fuzzChainsStats(seed: number, cases: number): RingStats {
  const rng = new Rng(seed);
  const m = new ModelMemory(RING_REGIONS);
  pattern(m, seed);
  const r0 = m.regions[0];
  const ram16 = r0.u16;
  const ram32 = r0.u32;
  const segs = new Segments();
  const scratch = new Uint8Array(1 << 16);
  const scratchArea = copies.register(scratch);
  const st = emptyRingStats();
  try {
    for (let c = 0; c < cases; c++) {
      const fail: (why: string) => never = (why) => {
        throw new Error(`chains: seed ${seed} case ${c}: ${why}`);
      };
      const num = 1 << rng.below(9); // 1 … 256
      const ring = new SplitRing(1, `fuzz ring (seed ${seed} case ${c})`);
      ring.setNum(num);
      const indirectOk = rng.chance(0.8);
      ring.setFeatures(rng.chance(0.5), indirectOk);
      const writable = rng.chance(0.5);
      // ring structures at the start of region 0, the rest is buffers and indirect tables
      const desc = 0;
      const avail = 16 * num;
      const used = (avail + 6 + 2 * num + 3) & ~3;
      ring.setAddresses(REGION_UVA + desc, REGION_UVA + used, REGION_UVA + avail);
      ring.setup(m.mem);
      ring.enable(true);
      ring.start();
      const dataStart = (used + 6 + 8 * num + 4095) & ~4095;
      // some random bytes where indirect tables may point
      for (let k = 0; k < 64; k++) ram32[(dataStart >>> 2) + rng.below((REGION_SIZE - dataStart) >>> 2)] = rng.u32();
      // a case is clean (a rare bad descriptor) or hostile (a bad field in every few)
      const bad = rng.chance(0.35) ? 0.25 : 0.005;
      for (let i = 0; i < num; i++) {
        const o = (desc + 16 * i) >>> 2;
        let flags = descFlags(rng, writable, bad);
        let addr = bufferAddr(rng, m, dataStart, bad);
        let len = bufferLen(rng, bad);
        if (flags & INDIRECT && rng.chance(1 - bad)) {
          flags &= ~NEXT;
          [addr, len] = indirectTableAt(rng, m, dataStart, writable, false, bad);
        }
        ram32[o] = addr >>> 0;
        ram32[o + 1] = rng.chance(bad / 4) ? rng.u32() : 0;
        ram32[o + 2] = len >>> 0;
        ram16[(desc + 16 * i + 12) >>> 1] = flags;
        // a NEXT link goes forward (no loop) unless the case is hostile
        ram16[(desc + 16 * i + 14) >>> 1] = rng.chance(bad) ? rng.below(65536) : rng.chance(0.9) ? (i + 1 + rng.below(3)) % num : rng.below(num);
      }
      // avail ring
      const avail16 = avail >>> 1;
      ram16[avail16] = 0;
      const idx = rng.chance(1 - bad) ? rng.below(num + 1) : rng.below(65536);
      for (let i = 0; i < num; i++) ram16[avail16 + 2 + i] = rng.chance(1 - bad / 4) ? rng.below(num) : rng.below(65536);
      ram16[avail16 + 1] = idx;
      ring.setBase(0);
      st.cases++;
      let n = ring.availCount();
      if (n < 0 && idx <= num) fail(`availCount broke the ring with avail idx ${idx} in a ring of ${num}: ${ring.broken}`);
      if (n >= 0 && n !== idx) fail(`availCount ${n}, the avail index says ${idx}`);
      for (let k = 0; n > 0; n--, k++) {
        segs.reset();
        const head = ram16[avail16 + 2 + (k & (num - 1))];
        const ref = walkSplit(m, REGION_GPA + desc, num, head, writable, indirectOk, ring.maxChain);
        const got = ring.popChain(m.mem, segs, writable);
        if (got === BROKEN) {
          if (ring.broken === null) fail('BROKEN without a reason');
          if (ref.ok) fail(`a valid chain from head ${head} refused: ${ring.broken}`);
          st.refused++;
          break;
        }
        if (!ref.ok) fail(`chain from head ${head} taken, but it is invalid (${ref.why})`);
        if (got !== head) fail(`popChain returned ${got}, the avail ring says ${head}`);
        const diff = compareSegments(m, segs, 0, ref.bufs);
        if (diff !== null) fail(`chain from head ${head}: ${diff}`);
        let total = 0;
        for (const b of ref.bufs) total += b.len;
        if (segs.total !== total || segs.chains !== 1 || segs.chainHead[0] !== head || segs.chainEnd[0] !== segs.count) fail(`chain bookkeeping: total ${segs.total} (${total}), ${segs.chains} chains, head ${segs.chainHead[0]}`);
        const bad = copyAndCheck(m, segs, 0, scratch, scratchArea);
        if (bad !== null) fail(`chain from head ${head}: ${bad}`);
        st.chains++;
        st.segments += segs.count;
        if (ref.indirect) st.indirect++;
        if (ref.descs > 1) st.multi++;
        st.spanning += countSpanning(ref.bufs);
        ring.pushUsed(head, writable ? Math.min(total, 4096) : 0);
      }
      ring.publish();
      if (ring.broken === null && ring.lastAvail !== (n < 0 ? 0 : idx)) fail(`lastAvail ${ring.lastAvail} after taking every chain up to ${idx}`);
    }
  } finally {
    copies.settle();
    copies.unregister(scratchArea);
    m.close();
  }
  return st;
}

/** fuzzChainsStats, returning the number of cases run */
export function fuzzChains(seed: number, cases: number): number {
  return fuzzChainsStats(seed, cases).cases;
}

/**
 * Walks random packed rings over two mapped regions; throws on the first violation. Random flags
 * (AVAIL/USED bits of either lap, NEXT, WRITE, INDIRECT), ids, start positions and wrap counters;
 * unpop and re-take; used descriptors written back. Each popped chain is compared with a reference
 * walk (ring-model.ts): its buffer id, its buffers as segments (bytes included), where the ring
 * stands after it; a refused chain must be one the reference refuses.
 */
export function fuzzPackedChainsStats(seed: number, cases: number): RingStats {
  const rng = new Rng(seed);
  const m = new ModelMemory(RING_REGIONS);
  pattern(m, seed);
  const r0 = m.regions[0];
  const ram32 = r0.u32;
  const ram16 = r0.u16;
  const segs = new Segments();
  const scratch = new Uint8Array(1 << 16);
  const scratchArea = copies.register(scratch);
  const st = emptyRingStats();
  try {
    for (let c = 0; c < cases; c++) {
      const fail: (why: string) => never = (why) => {
        throw new Error(`packed: seed ${seed} case ${c}: ${why}`);
      };
      const num = rng.chance(0.8) ? 1 << rng.below(9) : 1 + rng.below(300); // packed sizes need not be powers of 2
      const ring = new PackedRing(1, `fuzz packed ring (seed ${seed} case ${c})`);
      ring.setNum(num);
      const indirectOk = rng.chance(0.8);
      ring.setFeatures(rng.chance(0.5), indirectOk);
      const desc = 0;
      const driver = 16 * num;
      const device = driver + 4;
      const start = rng.below(num);
      const wrap = rng.below(2);
      ring.setBase(((start | (wrap << 15)) * 0x10001) >>> 0);
      ring.setAddresses(REGION_UVA + desc, REGION_UVA + device, REGION_UVA + driver);
      ring.setup(m.mem);
      ring.enable(true);
      ring.start();
      const dataStart = (device + 4 + 4095) & ~4095;
      const writable = rng.chance(0.5);
      for (let k = 0; k < 64; k++) ram32[(dataStart >>> 2) + rng.below((REGION_SIZE - dataStart) >>> 2)] = rng.u32();
      const bad = rng.chance(0.35) ? 0.25 : 0.005;
      for (let i = 0; i < num; i++) {
        const o = (desc + 16 * i) >>> 2;
        let flags = descFlags(rng, writable, bad);
        let addr = bufferAddr(rng, m, dataStart, bad);
        let len = bufferLen(rng, bad);
        if (flags & INDIRECT && rng.chance(1 - bad)) {
          flags &= ~NEXT;
          [addr, len] = indirectTableAt(rng, m, dataStart, writable, true, bad);
        }
        ram32[o] = addr >>> 0;
        ram32[o + 1] = rng.chance(bad / 4) ? rng.u32() : 0;
        ram32[o + 2] = len >>> 0;
        // the lap descriptor i is in, seen from start: before start it is already the next one
        const lap = i >= start ? wrap : wrap ^ 1;
        const availBits = rng.chance(1 - bad) ? (lap ? 0x80 : 0x8000) : rng.pick([0, 0x80, 0x8000, 0x8080]);
        ram16[((desc + 16 * i) >>> 1) + 6] = rng.below(65536); // id
        ram16[((desc + 16 * i) >>> 1) + 7] = availBits | flags | (rng.chance(bad / 4) ? rng.below(65536) & 0x7f78 : 0);
      }
      // some descriptors not made available yet (the driver is still writing them)
      if (rng.chance(0.3)) {
        const p = rng.below(num);
        ram16[((desc + 16 * p) >>> 1) + 7] ^= 0x8080;
      }
      ram16[(driver >>> 1) + 0] = rng.below(65536);
      ram16[(driver >>> 1) + 1] = rng.below(4);
      st.cases++;
      let taken = 0;
      for (let round = 0; round < 3; round++) {
        const n = ring.availCount();
        if (n < 0) {
          if (ring.broken === null) fail('availCount -1 without a reason');
          break;
        }
        if (n > num) fail(`${n} chains counted in a ring of ${num}`);
        let popped = 0;
        for (let k = 0; k < n; k++) {
          segs.reset();
          const at = ring.lastAvail;
          const ref = walkPacked(m, REGION_GPA + desc, num, at & 0x7fff, at >>> 15, writable, indirectOk);
          const id = ring.popChain(m.mem, segs, writable);
          if (id === BROKEN) {
            if (ring.broken === null) fail('BROKEN without a reason');
            if (ref.ok) fail(`a valid chain at ${at & 0x7fff} (lap ${at >>> 15}) refused: ${ring.broken}`);
            st.refused++;
            break;
          }
          if (!ref.ok) fail(`chain at ${at & 0x7fff} taken, but it is invalid (${ref.why})`);
          if (id !== ref.id) fail(`buffer id ${id}, the chain's last descriptor says ${ref.id}`);
          if (ring.lastAvail !== (ref.endPos | (ref.endWrap << 15))) fail(`after the chain at ${at & 0x7fff} the ring stands at ${ring.lastAvail & 0x7fff} (lap ${ring.lastAvail >>> 15}), ${ref.endPos} (lap ${ref.endWrap}) expected`);
          const diff = compareSegments(m, segs, 0, ref.bufs);
          if (diff !== null) fail(`chain at ${at & 0x7fff}: ${diff}`);
          let total = 0;
          for (const b of ref.bufs) total += b.len;
          if (segs.total !== total) fail(`segment total ${segs.total}, the buffers add up to ${total}`);
          const bad = copyAndCheck(m, segs, 0, scratch, scratchArea);
          if (bad !== null) fail(`chain at ${at & 0x7fff}: ${bad}`);
          st.chains++;
          st.segments += segs.count;
          if (ref.indirect) st.indirect++;
          if (ref.descs > 1) st.multi++;
          st.spanning += countSpanning(ref.bufs);
          popped++;
        }
        if (ring.broken !== null) break;
        // give some back and take them again: the same chains must come out
        const back = popped > 0 && rng.chance(0.3) ? 1 + rng.below(popped) : 0;
        if (back > 0) {
          const before = ring.lastAvail;
          ring.unpop(back);
          const again = ring.availCount();
          if (again < back) fail(`after unpop(${back}) only ${again} counted`);
          for (let k = 0; k < back; k++) {
            segs.reset();
            const at = ring.lastAvail;
            const ref = walkPacked(m, REGION_GPA + desc, num, at & 0x7fff, at >>> 15, writable, indirectOk);
            const id = ring.popChain(m.mem, segs, writable);
            if (id === BROKEN) fail(`a chain given back broke when taken again: ${ring.broken}`);
            if (!ref.ok || id !== ref.id) fail(`a chain given back came out as id ${id}, not as the reference's ${ref.ok ? ref.id : ref.why}`);
            const diff = compareSegments(m, segs, 0, ref.bufs);
            if (diff !== null) fail(`a chain given back, taken again: ${diff}`);
          }
          if (ring.lastAvail !== before) fail(`taken again, lastAvail ${ring.lastAvail} != ${before}`);
        }
        for (let k = 0; k < popped; k++) ring.pushUsed(k, writable ? 64 : 0);
        taken += popped;
        ring.publish();
        ring.signal(() => {});
        if (ring.broken !== null) fail(`used descriptors broke the ring: ${ring.broken}`);
        if (ring.lastAvail !== ring.usedIdx) fail(`used position ${ring.usedIdx} != avail position ${ring.lastAvail} with nothing in flight`);
      }
      if (taken > 3 * num) fail(`${taken} chains from a ring of ${num}`);
    }
  } finally {
    copies.settle();
    copies.unregister(scratchArea);
    m.close();
  }
  return st;
}

/** fuzzPackedChainsStats, returning the number of cases run */
export function fuzzPackedChains(seed: number, cases: number): number {
  return fuzzPackedChainsStats(seed, cases).cases;
}

class NullHub implements EngineApi {
  private readonly ports: (EnginePort | null)[] = [];
  attach(port: EnginePort): number {
    this.ports.push(port);
    return this.ports.length - 1;
  }
  detach(index: number): void {
    this.ports[index] = null;
  }
  input(): void {}
  flush(): void {
    copies.run();
  }
  resourcesAvailable(): void {}
  queuesChanged(): void {}
}

const REQUESTS = [...payloadSize.keys()];

function u64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v & 0xffffffffffffffffn, true);
  return b;
}

function memTable(gpa: number, size: number, uva: number): Uint8Array {
  const b = new Uint8Array(8 + 32);
  const v = new DataView(b.buffer);
  v.setUint32(0, 1, true);
  v.setBigUint64(8, BigInt(gpa), true);
  v.setBigUint64(16, BigInt(size), true);
  v.setBigUint64(24, BigInt(uva), true);
  return b;
}

function fdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

/** the fds a well-formed request of this kind carries */
function fdsFor(req: number, payload: Uint8Array): number {
  const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  switch (req) {
    case Req.SET_VRING_KICK:
    case Req.SET_VRING_CALL:
    case Req.SET_VRING_ERR:
      return payload.length >= 2 && (v.getUint16(0, true) & VRING_NOFD_MASK) !== 0 ? 0 : 1;
    case Req.SET_MEM_TABLE:
      return payload.length >= 4 ? Math.min(v.getUint32(0, true), 8) : 0;
    case Req.SET_LOG_BASE:
    case Req.SET_LOG_FD:
    case Req.ADD_MEM_REG:
    case Req.SET_INFLIGHT_FD:
      return 1;
    default:
      return 0;
  }
}

/**
 * How a request handler's error is judged. The dispatcher (Session) turns a Refusal into a refusal
 * (a zero-length reply, a non-zero ack, or a close when the front-end cannot be told) and any other
 * error into a close; by design "any other error" is a plain Error thrown by a check (a bad payload,
 * a wrong fd count, a memory table the kernel will not map). A TypeError, a ReferenceError or a
 * RangeError V8 threw (a handler that read past a payload or a missing object) is a bug, though it
 * closes the connection just like a refusal and logs alike. So the fuzz target listens in on the
 * dispatcher's one failure path and on internal errors, and judges the error itself.
 */
export function judgeHandlerError(err: unknown): string | null {
  if (err instanceof Refusal) return null;
  if (err instanceof Error && err.constructor === Error) return null;
  // the one deliberate RangeError on this path: a u64 field beyond 2^53 (message.ts)
  if (err instanceof RangeError && /is beyond 2\^53/.test(err.message)) return null;
  const e = err as Error;
  return `${e?.constructor?.name ?? typeof err} from a handler: ${e?.stack ?? String(err)}`;
}

type Hooked = { failed: (...a: unknown[]) => void; internalError: (where: string, e: unknown) => void };
/** errors the sessions reported through Session.failed / Session.internalError, by session name */
const handlerErrors = new Map<string, string[]>();
let hooked = false;
function hookSessionErrors(): void {
  if (hooked) return;
  const proto = Session.prototype as unknown as Hooked;
  // the dispatcher's failure path: if it is renamed, this target must be told, not pass silently
  if (typeof proto.failed !== 'function' || proto.failed.length !== 3) throw new Error('fuzz: Session.prototype.failed(entry, message, err) is gone: update the message fuzz target');
  if (typeof proto.internalError !== 'function') throw new Error('fuzz: Session.prototype.internalError is gone: update the message fuzz target');
  const failed = proto.failed;
  const internalError = proto.internalError;
  proto.failed = function (this: { name: string }, ...a: unknown[]): void {
    const why = judgeHandlerError(a[2]);
    if (why !== null) handlerErrors.set(this.name, [...(handlerErrors.get(this.name) ?? []), why]);
    failed.apply(this, a);
  };
  proto.internalError = function (this: { name: string }, where: string, e: unknown): void {
    handlerErrors.set(this.name, [...(handlerErrors.get(this.name) ?? []), `internal error during ${where}: ${(e as Error)?.stack ?? String(e)}`]);
    internalError.call(this, where, e);
  };
  hooked = true;
}

/** what one message fuzz run saw */
export interface MessageStats {
  sent: number;
  sequences: number;
  /** sequences the back-end ended by closing the connection (a refusal it could not answer, broken framing) */
  closedByBackEnd: number;
  /** refusals answered on an open connection (zero-length reply, non-zero ack, ignored) */
  refusedOpen: number;
  /** sessions that got a memory table mapped and a ring set up */
  ringsSetUp: number;
}

/**
 * Random message sequences against a session over a real socketpair. Between sequences everything
 * is closed; at the end no fd may be left over. Every close and refusal is read from the port's own
 * log: a connection the back-end closes must have logged why ("…; closing connection"), no handler
 * may throw anything but a check's error (judgeHandlerError), no internal error may be logged.
 * Resolves with what it saw.
 */
export async function fuzzMessagesStats(seed: number, sequences: number, perSequence = 24): Promise<MessageStats> {
  hookSessionErrors();
  const rng = new Rng(seed);
  const before = fdCount();
  const hub = new NullHub();
  const stats: MessageStats = { sent: 0, sequences: 0, closedByBackEnd: 0, refusedOpen: 0, ringsSetUp: 0 };
  for (let q = 0; q < sequences; q++) {
    const name = `fuzz${q}`;
    const lines: { msg: string; level: string }[] = [];
    const log = (msg: string, fields?: LogFields): void => {
      lines.push({ msg, level: String(fields?.level ?? 'info') });
    };
    handlerErrors.delete(name);
    const port = new VhostUserPort(hub, { name, log });
    const [feFd, beFd] = native.socketpair();
    port.bind(beFd);
    let open = true;
    let endReason: string | null | undefined;
    port.onSessionEnd = (reason) => {
      open = false;
      endReason = reason;
    };
    const fail = (why: string): never => {
      throw new Error(`messages: seed ${seed} sequence ${q}: ${why}\n--- the port's log ---\n${lines.slice(-30).map((l) => `${l.level}: ${l.msg}`).join('\n')}`);
    };
    let sent = 0;
    const send = (req: number, payload: Uint8Array, fds: number[], flags = VERSION): number => {
      const m = encode(req, flags, payload);
      const n = native.sendmsg(feFd, m, 0, m.length, fds);
      for (const fd of fds) native.close(fd);
      return n < 0 ? n : n === m.length ? n : -2;
    };
    // half the sequences start like a front-end does (features it was offered, a memory table, most
    // of the time a ring set up), so that later messages meet a set-up session
    if (rng.chance(0.5)) {
      const protocol = rng.chance(0.9) ? DEFAULT_PROTOCOL_FEATURES & (BigInt(rng.u32()) | BigInt(1 << ProtocolFeature.REPLY_ACK)) : BigInt(rng.below(1 << 12));
      const prefix: [number, Uint8Array, number[]][] = [
        [Req.SET_OWNER, new Uint8Array(0), []],
        [Req.SET_FEATURES, u64((DEFAULT_FEATURES & (BigInt(rng.u32()) * 0x100000001n)) | bit(VirtioFeature.USER_F_PROTOCOL_FEATURES)), []],
        [Req.SET_PROTOCOL_FEATURES, u64(protocol), []],
        [Req.SET_MEM_TABLE, memTable(REGION_GPA, 1 << 20, REGION_UVA), [native.memfdCreate('fuzz-ram', 1 << 20)]],
      ];
      if (rng.chance(0.7)) {
        const idx = rng.below(2);
        const num = 1 << (4 + rng.below(5));
        const addr = new Uint8Array(40);
        const v = new DataView(addr.buffer);
        v.setUint32(0, idx, true);
        setU64(v, 8, REGION_UVA); // descriptors
        setU64(v, 16, REGION_UVA + 0x10000); // used
        setU64(v, 24, REGION_UVA + 0x8000); // avail
        prefix.push(
          [Req.SET_VRING_NUM, vringStatePayload(idx, num), []],
          [Req.SET_VRING_ADDR, addr, []],
          [Req.SET_VRING_BASE, vringStatePayload(idx, 0), []],
          [Req.SET_VRING_CALL, u64(BigInt(idx)), [native.eventfd(0)]],
          [Req.SET_VRING_KICK, u64(BigInt(idx)), [native.eventfd(0)]],
          [Req.SET_VRING_ENABLE, vringStatePayload(idx, 1), []],
        );
      }
      for (const [req, payload, fds] of prefix) {
        if (send(req, payload, fds) < 0) break;
        sent++;
      }
      for (let w = 0; w < 5; w++) await new Promise((r) => setImmediate(r));
      if (port.session?.rings.some((r) => r.ready)) stats.ringsSetUp++;
    }
    for (let k = 0; k < perSequence && open; k++) {
      const req = rng.chance(0.9) ? rng.pick(REQUESTS) : rng.below(64);
      const rule = payloadSize.get(req) ?? [0, 64];
      const size = rng.chance(0.9) ? rule[0] + rng.below(rule[1] - rule[0] + 1) : rng.below(300);
      const payload = new Uint8Array(size);
      for (let i = 0; i < size; i++) payload[i] = rng.chance(0.5) ? 0 : rng.below(256);
      // plausible small values where they matter (ring indices, counts)
      if (size >= 4 && rng.chance(0.7)) new DataView(payload.buffer).setUint32(0, rng.below(4), true);
      const fds: number[] = [];
      // mostly the fds the request takes (so that the request itself is checked), sometimes any
      const nfds = rng.chance(0.8) ? fdsFor(req, payload) : rng.below(3);
      for (let i = 0; i < nfds; i++) fds.push(rng.chance(0.5) ? native.eventfd(0) : native.memfdCreate('fuzz-msg', 4096 * (1 + rng.below(4))));
      const n = send(req, payload, fds, VERSION | (rng.chance(0.3) ? FLAG_NEED_REPLY : 0));
      if (n === -1) break; // socket full: the back-end is not reading (it waits for us to read)
      sent++;
      if (n === -2) break; // a part of it went: the rest of the sequence would be noise
      // drain replies now and then, like a front-end would
      if (rng.chance(0.5)) {
        const b = new Uint8Array(4096);
        for (;;) {
          const r = native.recvmsg(feFd, b, 0, b.length, 8);
          for (const fd of r.fds) native.close(fd);
          if (r.bytes <= 0) break;
        }
      }
      await new Promise((r) => setImmediate(r));
    }
    const closedByBackEnd = !open;
    native.close(feFd);
    for (let w = 0; w < 200 && port.connected; w++) await new Promise((r) => setTimeout(r, 1));
    if (port.connected) fail('the port did not see its front-end go');
    // the judgement, from the dispatcher's errors and the port's log
    const bugs = handlerErrors.get(name) ?? [];
    if (bugs.length > 0) fail(`a handler failed with something other than a check's error:\n${bugs.join('\n')}`);
    const internal = lines.find((l) => /internal error/.test(l.msg));
    if (internal) fail(`internal error logged: ${internal.msg}`);
    // a close by the back-end (before or after we left: it reads what we sent first) says why,
    // once, at level error; a close because we left has no reason
    const closing = lines.filter((l) => /; closing connection$/.test(l.msg));
    if (endReason === undefined) fail('the session never ended');
    if (endReason === null) {
      if (closing.length > 0) fail(`ended as a plain end, but logged: ${closing[0].msg}`);
    } else {
      if (closing.length !== 1) fail(`the back-end closed the connection (${endReason}) with ${closing.length} "closing connection" lines logged`);
      if (closing[0].level !== 'error') fail(`the close was logged at level ${closing[0].level}`);
      if (!closing[0].msg.includes(endReason as string)) fail(`the close logged "${closing[0].msg}", not its reason "${endReason}"`);
    }
    if (closedByBackEnd) stats.closedByBackEnd++;
    stats.refusedOpen += lines.filter((l) => /; refused \(|; ignored \(no reply asked for\)/.test(l.msg)).length;
    stats.sent += sent;
    stats.sequences++;
  }
  await new Promise((r) => setTimeout(r, 5));
  const after = fdCount();
  if (after > before) throw new Error(`seed ${seed}: ${after - before} fd(s) leaked over ${sequences} sequences`);
  return stats;
}

/** fuzzMessagesStats, resolving with the number of messages sent */
export async function fuzzMessages(seed: number, sequences: number, perSequence = 24): Promise<number> {
  return (await fuzzMessagesStats(seed, sequences, perSequence)).sent;
}
