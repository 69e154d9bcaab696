// Fuzz targets: structure-aware random inputs for the parts a guest or front-end controls.
//   chains    random descriptor tables, avail rings, indices and indirect tables over real mapped
//             memory (a memfd region), walked by SplitRing.popChain with the copy list recording
//             every segment: no exception, every segment inside a mapped window, no fault
//   packed    the same for packed rings (PackedRing): random flags (AVAIL/USED bits of either lap,
//             NEXT, WRITE, INDIRECT), ids, start positions and wrap counters, unpop and re-take,
//             used descriptors written back
//   messages  random vhost-user message sequences (valid headers with random requests, sizes,
//             payloads and fds) against a Session over a real socketpair: no exception escapes,
//             the connection stays up or closes with a logged error, no fd leaks
//   offload   (offload.ts) virtio-net headers over mutated frames (packets.ts) through the
//             offload fallback into bounded buffers
//   flowhash  (flowhash.ts) flowHash over the same frames
// Each returns how many cases ran. A deterministic PRNG: a failing seed reproduces.
import * as fs from 'node:fs';
import { native } from '../../src/native';
import { GuestMemory, Region } from '../../src/memory/guest-memory';
import { SplitRing, BROKEN } from '../../src/virtio/split-ring';
import { PackedRing } from '../../src/virtio/packed-ring';
import { Segments } from '../../src/virtio/chain';
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

/** Walks random rings over one mapped region. Throws on the first violation. */
export function fuzzChains(seed: number, cases: number): number {
  const rng = new Rng(seed);
  const fd = native.memfdCreate('fuzz-chains', REGION_SIZE);
  const mem = new GuestMemory();
  mem.replace([new Region({ guestPhysAddr: REGION_GPA, memorySize: REGION_SIZE, userspaceAddr: REGION_UVA, mmapOffset: 0 }, fd)]);
  const ab = native.mmap(fd, REGION_SIZE, 0); // our own view of the guest memory, to scribble on
  const ram = new Uint8Array(ab);
  const ram32 = new Uint32Array(ab);
  const ram16 = new Uint16Array(ab);
  const window = mem.list()[0].windows[0];
  const segs = new Segments();
  const scratch = new Uint8Array(1 << 16);
  const scratchArea = copies.register(scratch);
  try {
    for (let c = 0; c < cases; c++) {
      const num = 1 << rng.below(9); // 1 … 256
      const ring = new SplitRing(1, `fuzz ring (seed ${seed} case ${c})`);
      ring.setNum(num);
      ring.setFeatures(rng.chance(0.5), rng.chance(0.8));
      // ring structures at the start of the region, the rest is buffers and indirect tables
      const desc = 0;
      const avail = 16 * num;
      const used = (avail + 6 + 2 * num + 3) & ~3;
      ring.setAddresses(REGION_UVA + desc, REGION_UVA + used, REGION_UVA + avail);
      ring.setup(mem);
      ring.enable(true);
      ring.start();
      const dataStart = (used + 6 + 8 * num + 4095) & ~4095;
      // descriptors: mostly plausible, sometimes hostile
      for (let i = 0; i < num; i++) {
        const o = (desc + 16 * i) >>> 2;
        const inside = REGION_GPA + dataStart + rng.below(REGION_SIZE - dataStart);
        const addr = rng.pick([inside, inside, inside, rng.u32(), REGION_GPA + REGION_SIZE - rng.below(64), 0]);
        const hi = rng.chance(0.05) ? rng.u32() : 0;
        const len = rng.pick([rng.below(64), rng.below(2048), rng.below(70000), rng.u32(), 0, 16 * (1 + rng.below(8))]);
        ram32[o] = addr >>> 0;
        ram32[o + 1] = hi;
        ram32[o + 2] = len >>> 0;
        ram16[(desc + 16 * i + 12) >>> 1] = rng.below(8); // NEXT | WRITE | INDIRECT in any mix
        ram16[(desc + 16 * i + 14) >>> 1] = rng.chance(0.9) ? rng.below(num) : rng.below(65536);
      }
      // some random bytes where indirect tables may point
      for (let k = 0; k < 64; k++) ram32[(dataStart >>> 2) + rng.below((REGION_SIZE - dataStart) >>> 2)] = rng.u32();
      // avail ring
      const avail16 = avail >>> 1;
      ram16[avail16] = 0;
      const idx = rng.chance(0.9) ? rng.below(num + 1) : rng.below(65536);
      for (let i = 0; i < num; i++) ram16[avail16 + 2 + i] = rng.chance(0.95) ? rng.below(num) : rng.below(65536);
      ram16[avail16 + 1] = idx;
      ring.setBase(0);
      const writable = rng.chance(0.5);
      let n = ring.availCount();
      for (; n > 0; n--) {
        segs.reset();
        const head = ring.popChain(mem, segs, writable);
        if (head === BROKEN) {
          if (ring.broken === null) throw new Error(`seed ${seed} case ${c}: BROKEN without a reason`);
          break;
        }
        if (head < 0 || head >= num) throw new Error(`seed ${seed} case ${c}: head ${head} outside the ring`);
        let total = 0;
        for (let i = 0; i < segs.count; i++) {
          const b = segs.buf[i];
          if (b !== window) throw new Error(`seed ${seed} case ${c}: a segment outside the guest's window`);
          if (segs.len[i] <= 0 || segs.off[i] < 0 || segs.off[i] + segs.len[i] > b.length) {
            throw new Error(`seed ${seed} case ${c}: segment [${segs.off[i]}, +${segs.len[i]}) outside its window (${b.length})`);
          }
          total += segs.len[i];
          // record (and later run) a copy of the segment's start: the addon must take it
          const k = Math.min(segs.len[i], scratch.length);
          if (!copies.record(segs.area[i], segs.off[i], scratchArea, 0, k)) throw new Error(`seed ${seed} case ${c}: an in-window segment refused by the copy list`);
        }
        if (total !== segs.total) throw new Error(`seed ${seed} case ${c}: segment lengths ${total} != total ${segs.total}`);
        ring.pushUsed(head, writable ? Math.min(total, 4096) : 0);
      }
      ring.publish();
      copies.run();
      if (copies.copiesRefused !== 0) throw new Error(`seed ${seed} case ${c}: the addon refused ${copies.copiesRefused} copies`);
    }
  } finally {
    copies.settle();
    copies.unregister(scratchArea);
    mem.clear();
    native.munmap(ab);
  }
  return cases;
}

/** Walks random packed rings over one mapped region. Throws on the first violation. */
export function fuzzPackedChains(seed: number, cases: number): number {
  const rng = new Rng(seed);
  const fd = native.memfdCreate('fuzz-packed', REGION_SIZE);
  const mem = new GuestMemory();
  mem.replace([new Region({ guestPhysAddr: REGION_GPA, memorySize: REGION_SIZE, userspaceAddr: REGION_UVA, mmapOffset: 0 }, fd)]);
  const ab = native.mmap(fd, REGION_SIZE, 0);
  const ram32 = new Uint32Array(ab);
  const ram16 = new Uint16Array(ab);
  const window = mem.list()[0].windows[0];
  const segs = new Segments();
  const scratch = new Uint8Array(1 << 16);
  const scratchArea = copies.register(scratch);
  const fail = (c: number, why: string): never => {
    throw new Error(`packed: seed ${seed} case ${c}: ${why}`);
  };
  try {
    for (let c = 0; c < cases; c++) {
      const num = rng.chance(0.8) ? 1 << rng.below(9) : 1 + rng.below(300); // packed sizes need not be powers of 2
      const ring = new PackedRing(1, `fuzz packed ring (seed ${seed} case ${c})`);
      ring.setNum(num);
      ring.setFeatures(rng.chance(0.5), rng.chance(0.8));
      const desc = 0;
      const driver = 16 * num;
      const device = driver + 4;
      const start = rng.below(num);
      const wrap = rng.below(2);
      ring.setBase(((start | (wrap << 15)) * 0x10001) >>> 0);
      ring.setAddresses(REGION_UVA + desc, REGION_UVA + device, REGION_UVA + driver);
      ring.setup(mem);
      ring.enable(true);
      ring.start();
      const dataStart = (device + 4 + 4095) & ~4095;
      const writable = rng.chance(0.5);
      for (let i = 0; i < num; i++) {
        const o = (desc + 16 * i) >>> 2;
        const inside = REGION_GPA + dataStart + rng.below(REGION_SIZE - dataStart);
        ram32[o] = rng.pick([inside, inside, inside, rng.u32(), REGION_GPA + REGION_SIZE - rng.below(64), 0]) >>> 0;
        ram32[o + 1] = rng.chance(0.05) ? rng.u32() : 0;
        ram32[o + 2] = rng.pick([rng.below(64), rng.below(2048), rng.below(70000), rng.u32(), 0, 16 * (1 + rng.below(8))]) >>> 0;
        // the lap descriptor i is in, seen from start: before start it is already the next one
        const lap = i >= start ? wrap : wrap ^ 1;
        const availBits = rng.chance(0.75) ? (lap ? 0x80 : 0x8000) : rng.pick([0, 0x80, 0x8000, 0x8080]);
        const kind = (rng.chance(0.3) ? 1 : 0) | (rng.chance(0.9) === writable ? 2 : 0) | (rng.chance(0.08) ? 4 : 0);
        ram16[((desc + 16 * i) >>> 1) + 6] = rng.below(65536); // id
        ram16[((desc + 16 * i) >>> 1) + 7] = availBits | kind | (rng.chance(0.02) ? rng.below(65536) & 0x7f78 : 0);
      }
      for (let k = 0; k < 64; k++) ram32[(dataStart >>> 2) + rng.below((REGION_SIZE - dataStart) >>> 2)] = rng.u32();
      ram16[(driver >>> 1) + 0] = rng.below(65536);
      ram16[(driver >>> 1) + 1] = rng.below(4);
      let taken = 0;
      for (let round = 0; round < 3; round++) {
        const n = ring.availCount();
        if (n < 0) {
          if (ring.broken === null) fail(c, 'availCount -1 without a reason');
          break;
        }
        if (n > num) fail(c, `${n} chains counted in a ring of ${num}`);
        let popped = 0;
        for (let k = 0; k < n; k++) {
          segs.reset();
          const id = ring.popChain(mem, segs, writable);
          if (id === BROKEN) {
            if (ring.broken === null) fail(c, 'BROKEN without a reason');
            break;
          }
          if (id < 0 || id > 0xffff) fail(c, `id ${id}`);
          let total = 0;
          for (let i = 0; i < segs.count; i++) {
            const b = segs.buf[i];
            if (b !== window) fail(c, 'a segment outside the guest window');
            if (segs.len[i] <= 0 || segs.off[i] < 0 || segs.off[i] + segs.len[i] > b.length) fail(c, `segment [${segs.off[i]}, +${segs.len[i]}) outside its window`);
            total += segs.len[i];
            if (!copies.record(segs.area[i], segs.off[i], scratchArea, 0, Math.min(segs.len[i], scratch.length))) fail(c, 'an in-window segment refused by the copy list');
          }
          if (total !== segs.total) fail(c, `segment lengths ${total} != total ${segs.total}`);
          popped++;
        }
        if (ring.broken !== null) break;
        // give some back and take them again: the same chains must come out
        const back = popped > 0 && rng.chance(0.3) ? 1 + rng.below(popped) : 0;
        if (back > 0) {
          const before = ring.lastAvail;
          ring.unpop(back);
          const again = ring.availCount();
          if (again < back) fail(c, `after unpop(${back}) only ${again} counted`);
          for (let k = 0; k < back; k++) {
            segs.reset();
            if (ring.popChain(mem, segs, writable) === BROKEN) fail(c, `a chain given back broke when taken again: ${ring.broken}`);
          }
          if (ring.lastAvail !== before) fail(c, `taken again, lastAvail ${ring.lastAvail} != ${before}`);
        }
        for (let k = 0; k < popped; k++) ring.pushUsed(k, writable ? 64 : 0);
        taken += popped;
        ring.publish();
        ring.signal(() => {});
        if (ring.broken !== null) fail(c, `used descriptors broke the ring: ${ring.broken}`);
        if (ring.lastAvail !== ring.usedIdx) fail(c, `used position ${ring.usedIdx} != avail position ${ring.lastAvail} with nothing in flight`);
      }
      copies.run();
      if (copies.copiesRefused !== 0) fail(c, `the addon refused ${copies.copiesRefused} copies`);
      if (taken > 3 * num) fail(c, `${taken} chains from a ring of ${num}`);
    }
  } finally {
    copies.settle();
    copies.unregister(scratchArea);
    mem.clear();
    native.munmap(ab);
  }
  return cases;
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
