// The vhost-user requests this back-end serves, one entry each: what its payload decodes to, the
// file descriptors it takes, whether it must wait for stopped rings, and how it is answered. The
// session's dispatcher (Session.dispatch) reads an entry, does the checks the entry declares, runs
// it and sends the one reply, ack or refusal; the entry itself only decodes and calls one method of
// the back-end. Modelled on DPDK lib/vhost's VHOST_MESSAGE_HANDLERS(id, handler, accepts_fd,
// lock_all_qps) with its one validate_msg_fds, and on rust-vmm vhost's backend_req_handler, where
// each request calls one back-end method and the ack policy lives in send_ack_message alone.
//
// DPDK's lock_all_qps pauses data-plane cores while a handler changes ring state. Here handlers
// run on the control thread between data-path turns, and data-plane threads get ring state only
// in messages, so nothing needs locking; what the column keeps is the spec's rule behind it: what
// may not change under running rings (see RingRule).
import * as fs from 'node:fs';
import { native } from '../native';
import type { Virtqueue } from '../virtio/virtqueue';
import { bit, protocolFeatureNames, VirtioFeature, virtioFeatureNames } from './features';
import { Refusal, refuseOnError } from './refusal';
import {
  getU64,
  MAX_TABLE_REGIONS,
  MEM_REGION_SIZE,
  MemRegion,
  Message,
  ProtocolFeature,
  readRegion,
  Req,
  requestName,
  u64Payload,
  VRING_IDX_MASK,
  VRING_NOFD_MASK,
  vringStatePayload,
} from './message';

/** VHOST_VRING_F_LOG in SET_VRING_ADDR's flags: the used ring's writes go to the dirty log */
const VRING_F_LOG = 1;

/** SET_VRING_ADDR's addresses (guest user addresses: the front-end's, translated by the table) */
export interface VringAddr {
  desc: number;
  used: number;
  avail: number;
  /** where the used ring is in guest-physical memory, for the dirty log; -1: not logged */
  log: number;
}

/**
 * What the request table calls: the session's state it reads to decode and check a request, and
 * one method per request, given decoded and checked arguments. Each throws a Refusal when the
 * request is refused and changes nothing, any other error when the connection has to go.
 */
export interface RequestBackend {
  readonly rings: readonly Virtqueue[];
  readonly offeredFeatures: bigint;
  readonly offeredProtocol: bigint;
  readonly maxQueuePairs: number;
  readonly maxMemSlots: number;
  readonly features: bigint;
  readonly featuresSet: boolean;
  readonly status: number;
  hasProtocol(n: number): boolean;
  /** the ring a request names; refused (counted as a limit hit) beyond the rings offered */
  ring(index: number): Virtqueue;

  setFeatures(f: bigint): void;
  setProtocolFeatures(f: bigint): void;
  setOwner(): void;
  resetOwner(): void;
  resetDevice(): void;
  /**
   * Maps the regions, each taking its fd out of `fds` once the table passed the limits (what is
   * left there when it throws is closed by the dispatcher); a promise when the mapping goes on
   * across turns.
   */
  setMemTable(regions: MemRegion[], fds: number[]): void | Promise<void>;
  /** as setMemTable, for one region */
  addMemRegion(d: MemRegion, fds: number[]): void | Promise<void>;
  removeMemRegion(d: MemRegion): void;
  /** LOG_SHMFD's form: the log is in the fd, taken out of `fds` once checked */
  setLogBase(size: number, offset: number, fds: number[]): void;
  /** the kernel's form (a front-end user address): nothing to log into */
  ignoreLogBase(): void;
  setLogFd(fd: number): void;
  setVringNum(r: Virtqueue, num: number): void;
  setVringAddr(r: Virtqueue, a: VringAddr): void;
  setVringBase(r: Virtqueue, base: number): void;
  /** stops the ring; its base */
  /** the base now, or once the thread serving the ring stopped it */
  getVringBase(r: Virtqueue): number | Promise<number>;
  /** fd -1: no fd (the "no fd" bit) */
  setVringKick(r: Virtqueue, fd: number): void;
  setVringCall(r: Virtqueue, fd: number): void;
  setVringErr(r: Virtqueue, fd: number): void;
  setVringEnable(r: Virtqueue, on: boolean): void;
  sendRarp(mac: Uint8Array): void;
  setMtu(mtu: number): void;
  setStatus(v: number): void;
}

/**
 * The file descriptors a request takes: exactly that many (0: none at all), or 'unused': whatever
 * comes is closed unread (requests some front-ends send an fd with that this back-end has no use for).
 */
export type FdCount = number | 'unused';

/**
 * How a request is answered: 'reply' — a reply of its own, always (its payload, or zero-length when
 * refused: GET_CONFIG's convention); 'ack' — the REPLY_ACK ack when the front-end asked for one
 * (0, or non-zero when refused); 'none' — nothing, not even an asked-for ack.
 */
export type ReplyKind = 'reply' | 'ack' | 'none';

/**
 * A request that may not change some of what running rings depend on. `change` names what this
 * request would change that way (null: nothing: it passes while rings run); the request is
 * refused while any ring is started. `allowed` says what may change on running rings instead.
 */
export interface RingRule<A> {
  change(b: RequestBackend, a: A): string | null;
  allowed: string;
}

export interface RequestEntry<A> {
  /** the protocol feature it needs negotiated (refused without it) */
  protocol?: keyof typeof ProtocolFeature;
  /** reads and checks the payload, throwing a Refusal or an Error as the message deserves */
  decode(p: DataView, b: RequestBackend, m: Message): A;
  fds: FdCount | ((a: A, b: RequestBackend) => FdCount);
  /** the fd-count error in the request's own terms (default: "expected N file descriptor(s), got M") */
  fdError?(a: A, want: number, got: number): string;
  /** 'any': it may come while rings run (the spec's on-the-fly changes) */
  rings: 'any' | RingRule<A>;
  reply: ReplyKind | ((b: RequestBackend) => ReplyKind);
  /**
   * Runs it, taking over the fds it keeps out of `fds` (any left there are closed when it throws).
   * Returns a 'reply' request's payload (nothing: zero-length), or a promise when it completes on a
   * later turn (the connection reads nothing meanwhile; the answer goes out when it settles).
   */
  run(b: RequestBackend, a: A, fds: number[]): Uint8Array | void | Promise<Uint8Array | void>;
}

/** the default fd-count error */
export function fdCountError(want: number, got: number): string {
  return want === 0 ? `unexpected ${got} file descriptor(s)` : `expected ${want} file descriptor${want === 1 ? '' : 's'}, got ${got}`;
}

/**
 * Entries are type-checked one by one (entry()) and stored with their argument type erased: the
 * dispatcher hands each run() what the same entry's decode() returned.
 */
export type AnyEntry = RequestEntry<unknown>;
const entry = <A>(e: RequestEntry<A>): AnyEntry => e as unknown as AnyEntry;

// ---- decoders ----

const nothing = (): null => null;

function u64Bits(p: DataView): bigint {
  return p.getBigUint64(0, true);
}

/** VhostUserVringState: index u32, num u32 */
function vringState(p: DataView, b: RequestBackend): { ring: Virtqueue; num: number } {
  return { ring: b.ring(p.getUint32(0, true)), num: p.getUint32(4, true) };
}

/** SET_VRING_KICK/CALL/ERR's u64: ring index, and the "no fd" bit */
function vringFile(p: DataView, b: RequestBackend): { ring: Virtqueue; nofd: boolean } {
  const v = getU64(p, 0);
  return { ring: b.ring(v & VRING_IDX_MASK), nofd: (v & VRING_NOFD_MASK) !== 0 };
}

/** what an fd is, as /proc/self/fd shows it ("anon_inode:[eventfd]", "pipe:[…]", a path) */
function fdKind(fd: number): string {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return 'unknown';
  }
}

/**
 * Takes the one fd of a request that must be an eventfd. Only eventfds: anything else (a pipe, a
 * socket) could block or fail our writes and reads for every port; made non-blocking, so that a
 * counter filled to the maximum cannot block us either.
 */
function takeEventfd(fds: number[], notEventfd: (kind: string) => Error): number {
  const kind = fdKind(fds[0]);
  if (kind !== 'anon_inode:[eventfd]') throw notEventfd(kind);
  native.setNonBlocking(fds[0]);
  return fds.pop()!;
}

/** SET_VRING_KICK/CALL/ERR: one eventfd, or none with the "no fd" bit */
function vringFdEntry(request: number, set: (b: RequestBackend, r: Virtqueue, fd: number) => void): AnyEntry {
  return entry({
    decode: vringFile,
    fds: (a) => (a.nofd ? 0 : 1),
    fdError: (a, _want, got) => (a.nofd ? `${a.ring.name}: "no fd" flag set but a file descriptor was sent` : `${a.ring.name}: expected 1 file descriptor, got ${got}`),
    rings: 'any',
    reply: 'ack',
    run: (b, a, fds) => {
      const fd = a.nofd ? -1 : takeEventfd(fds, (kind) => new Refusal(`${a.ring.name}: ${requestName(request)} fd is not an eventfd (${kind})`));
      set(b, a.ring, fd);
    },
  });
}

/** the table: every request this back-end serves (connection.ts frames exactly these: payloadSize) */
export const REQUESTS: ReadonlyMap<number, AnyEntry> = new Map<number, AnyEntry>([
  [Req.GET_FEATURES, entry({ decode: nothing, fds: 0, rings: 'any', reply: 'reply', run: (b) => u64Payload(b.offeredFeatures) })],
  [
    Req.SET_FEATURES,
    entry({
      decode: (p, b) => {
        const f = u64Bits(p);
        if (f & ~b.offeredFeatures) throw new Refusal(`features 0x${f.toString(16)} include ones not offered: ${virtioFeatureNames(f & ~b.offeredFeatures)}`);
        return f;
      },
      fds: 0,
      // vhost-user.rst, Migration: while rings run, SET_FEATURES toggles VHOST_F_LOG_ALL only. Before
      // the first SET_FEATURES nothing was negotiated that running rings could depend on.
      rings: {
        change: (b, f) => {
          const changed = (f ^ b.features) & ~bit(VirtioFeature.LOG_ALL);
          return b.featuresSet && changed ? virtioFeatureNames(changed) : null;
        },
        allowed: 'only VHOST_F_LOG_ALL may change then',
      },
      reply: 'ack',
      run: (b, f) => b.setFeatures(f),
    }),
  ],
  [Req.SET_OWNER, entry({ decode: nothing, fds: 0, rings: 'any', reply: 'ack', run: (b) => b.setOwner() })],
  [Req.RESET_OWNER, entry({ decode: nothing, fds: 0, rings: 'any', reply: 'ack', run: (b) => b.resetOwner() })],
  [
    Req.SET_MEM_TABLE,
    entry({
      // every field first (a value beyond 2^53 throws here, while the fds are still the message's
      // and are closed with it); the regions then take their fds over
      decode: (p, _b, m) => {
        const n = p.getUint32(0, true);
        if (n === 0 || n > MAX_TABLE_REGIONS) throw new Error(`${n} regions (1 to ${MAX_TABLE_REGIONS} allowed)`);
        if (m.size !== 8 + n * MEM_REGION_SIZE) throw new Error(`payload size ${m.size} does not match ${n} regions`);
        const regions: MemRegion[] = [];
        for (let i = 0; i < n; i++) regions.push(readRegion(p, 8 + i * MEM_REGION_SIZE));
        return regions;
      },
      fds: (regions) => regions.length,
      fdError: (regions, _want, got) => `${regions.length} regions but ${got} file descriptors`,
      // QEMU sends a new table to running rings when guest memory is hot-plugged
      rings: 'any',
      reply: 'ack',
      run: (b, regions, fds) => b.setMemTable(regions, fds),
    }),
  ],
  [
    Req.SET_LOG_BASE,
    entry({
      // without LOG_SHMFD the payload is the kernel's form, a user address of the front-end's: not read
      decode: (p, b) => (b.hasProtocol(ProtocolFeature.LOG_SHMFD) ? { size: getU64(p, 0), offset: getU64(p, 8) } : null),
      fds: (log) => (log === null ? 'unused' : 1),
      rings: 'any',
      // with LOG_SHMFD the front-end waits for a reply (empty, as QEMU and DPDK have it); without, for nothing
      reply: (b) => (b.hasProtocol(ProtocolFeature.LOG_SHMFD) ? 'reply' : 'none'),
      run: (b, log, fds) => (log === null ? b.ignoreLogBase() : b.setLogBase(log.size, log.offset, fds)),
    }),
  ],
  [
    Req.SET_LOG_FD,
    entry({
      decode: nothing,
      fds: 1,
      rings: 'any',
      reply: 'ack',
      run: (b, _a, fds) => b.setLogFd(takeEventfd(fds, (kind) => new Error(`SET_LOG_FD fd is not an eventfd (${kind})`))),
    }),
  ],
  [Req.SET_VRING_NUM, entry({ decode: vringState, fds: 0, rings: 'any', reply: 'ack', run: (b, a) => b.setVringNum(a.ring, a.num) })],
  [
    Req.SET_VRING_ADDR,
    entry({
      decode: (p, b) => {
        const ring = b.ring(p.getUint32(0, true));
        const flags = p.getUint32(4, true);
        const log = flags & VRING_F_LOG ? getU64(p, 32) : -1;
        return { ring, addr: { desc: getU64(p, 8), used: getU64(p, 16), avail: getU64(p, 24), log } };
      },
      fds: 0,
      // QEMU sends it to running rings to switch the used ring's logging on and off (migration)
      rings: 'any',
      reply: 'ack',
      run: (b, a) => b.setVringAddr(a.ring, a.addr),
    }),
  ],
  [Req.SET_VRING_BASE, entry({ decode: vringState, fds: 0, rings: 'any', reply: 'ack', run: (b, a) => b.setVringBase(a.ring, a.num) })],
  [
    Req.GET_VRING_BASE,
    entry({
      decode: vringState,
      fds: 0,
      rings: 'any',
      reply: 'reply',
      run: (b, a) => {
        const base = b.getVringBase(a.ring);
        // a ring another thread served: answered when that thread has stopped it
        return typeof base === 'number' ? vringStatePayload(a.ring.index, base) : base.then((v) => vringStatePayload(a.ring.index, v));
      },
    }),
  ],
  [Req.SET_VRING_KICK, vringFdEntry(Req.SET_VRING_KICK, (b, r, fd) => b.setVringKick(r, fd))],
  // QEMU sets call fds on running rings (vector masking)
  [Req.SET_VRING_CALL, vringFdEntry(Req.SET_VRING_CALL, (b, r, fd) => b.setVringCall(r, fd))],
  [Req.SET_VRING_ERR, vringFdEntry(Req.SET_VRING_ERR, (b, r, fd) => b.setVringErr(r, fd))],
  [Req.GET_PROTOCOL_FEATURES, entry({ decode: nothing, fds: 0, rings: 'any', reply: 'reply', run: (b) => u64Payload(b.offeredProtocol) })],
  [
    Req.SET_PROTOCOL_FEATURES,
    entry({
      decode: (p, b) => {
        const f = u64Bits(p);
        if (f & ~b.offeredProtocol) throw new Refusal(`protocol features include ones not offered: ${protocolFeatureNames(f & ~b.offeredProtocol)}`);
        return f;
      },
      fds: 0,
      rings: 'any',
      reply: 'ack',
      run: (b, f) => b.setProtocolFeatures(f),
    }),
  ],
  [Req.GET_QUEUE_NUM, entry({ protocol: 'MQ', decode: nothing, fds: 0, rings: 'any', reply: 'reply', run: (b) => u64Payload(b.maxQueuePairs) })],
  [
    Req.SET_VRING_ENABLE,
    entry({
      decode: (p, b) => {
        const { ring, num } = vringState(p, b);
        if (num > 1) throw new Refusal(`${ring.name}: enable value ${num} is neither 0 nor 1`);
        return { ring, on: num === 1 };
      },
      fds: 0,
      rings: 'any',
      reply: 'ack',
      run: (b, a) => b.setVringEnable(a.ring, a.on),
    }),
  ],
  [
    Req.SEND_RARP,
    entry({
      decode: (p) => {
        const mac = new Uint8Array(6);
        for (let i = 0; i < 6; i++) mac[i] = p.getUint8(i);
        return mac;
      },
      fds: 0,
      rings: 'any',
      reply: 'ack',
      run: (b, mac) => b.sendRarp(mac),
    }),
  ],
  [
    Req.NET_SET_MTU,
    entry({
      // refused as 'ignore': without an ack the front-end is not told, and the guest is given its
      // MTU anyway: none is enforced
      decode: (p) => {
        const mtu = refuseOnError(() => getU64(p, 0), 'ignore');
        if (mtu < 68 || mtu > 65535) throw new Refusal(`MTU ${mtu} outside [68, 65535]`, 'ignore');
        return mtu;
      },
      fds: 0,
      rings: 'any',
      reply: 'ack',
      run: (b, mtu) => b.setMtu(mtu),
    }),
  ],
  // the back-end → front-end channel is not used (BACKEND_REQ not offered): its socket is closed
  [Req.SET_BACKEND_REQ_FD, entry({ decode: nothing, fds: 'unused', rings: 'any', reply: 'ack', run: () => undefined })],
  [
    Req.SET_VRING_ENDIAN,
    entry({
      decode: (p, b) => {
        const { ring, num } = vringState(p, b);
        if (num !== 0) throw new Refusal(`${ring.name}: big-endian rings are not supported`);
        return ring;
      },
      fds: 0,
      rings: 'any',
      reply: 'ack',
      // little-endian, as every ring here already is: nothing to change
      run: () => undefined,
    }),
  ],
  // CONFIG is not offered; a zero-length payload is the spec's way to report failure
  [Req.GET_CONFIG, entry({ decode: nothing, fds: 0, rings: 'any', reply: 'reply', run: () => undefined })],
  [
    Req.SET_CONFIG,
    entry({
      decode: nothing,
      fds: 0,
      rings: 'any',
      reply: 'ack',
      run: () => {
        throw new Refusal('VHOST_USER_PROTOCOL_F_CONFIG was not offered');
      },
    }),
  ],
  [Req.RESET_DEVICE, entry({ decode: nothing, fds: 0, rings: 'any', reply: 'ack', run: (b) => b.resetDevice() })],
  [Req.GET_MAX_MEM_SLOTS, entry({ decode: nothing, fds: 0, rings: 'any', reply: 'reply', run: (b) => u64Payload(b.maxMemSlots) })],
  [
    Req.ADD_MEM_REG,
    entry({
      // VhostUserSingleMemoryRegion: 8 bytes of padding, then the region
      decode: (p) => readRegion(p, 8),
      fds: 1,
      rings: 'any',
      reply: 'ack',
      run: (b, d, fds) => b.addMemRegion(d, fds),
    }),
  ],
  // a front-end may send the region's fd along; the region is found by its description
  [Req.REM_MEM_REG, entry({ decode: (p) => readRegion(p, 8), fds: 'unused', rings: 'any', reply: 'ack', run: (b, d) => b.removeMemRegion(d) })],
  [
    Req.SET_STATUS,
    entry({
      protocol: 'STATUS',
      decode: (p) => {
        const v = refuseOnError(() => getU64(p, 0));
        if (v > 0xff) throw new Refusal(`status 0x${v.toString(16)} is not a status byte`);
        return v;
      },
      fds: 0,
      rings: 'any',
      reply: 'ack',
      run: (b, v) => b.setStatus(v),
    }),
  ],
  [Req.GET_STATUS, entry({ protocol: 'STATUS', decode: nothing, fds: 0, rings: 'any', reply: 'reply', run: (b) => u64Payload(b.status) })],
]);
