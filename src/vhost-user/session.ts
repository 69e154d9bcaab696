// The back-end state machine of one vhost-user connection: features, memory table, rings.
// It knows nothing of switching; the device (a virtio-net port) is told about kicks and ring state.
import * as fs from 'node:fs';
import { native, Poller } from '../native';
import { DEFAULTS, GiB } from '../defaults';
import { GuestMemory, mapInSlices, MemRegion, Region } from '../memory/guest-memory';
import { DirtyLog } from '../memory/dirty-log';
import { DEFAULT_MAX_CHAIN_DESCRIPTORS, SplitRing } from '../virtio/split-ring';
import { PackedRing } from '../virtio/packed-ring';
import type { Virtqueue } from '../virtio/virtqueue';
import { NetConfig, netConfigOf } from '../virtio/net-config';
import { Connection, Log, safeClose } from './connection';
import { bit, has, protocolFeatureNames, VirtioFeature, virtioFeatureNames } from './features';
import { netFeaturesUsable } from '../virtio/features';
import { Refusal, refuseOnError } from './refusal';
import {
  encode,
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  getU64,
  MAX_TABLE_REGIONS,
  MEM_REGION_SIZE,
  Message,
  ProtocolFeature,
  readRegion,
  Req,
  requestName,
  u64Payload,
  VERSION,
  VRING_IDX_MASK,
  VRING_NOFD_MASK,
  vringStatePayload,
} from './message';

/**
 * What a device behind the session is told: one-way events. The device never reads the session's
 * rings or feature bits; what it needs comes with the events.
 */
export interface SessionDevice {
  /** SET_FEATURES: the net configuration derived once from the negotiated bits */
  featuresNegotiated(cfg: NetConfig): void;
  /** the memory table changed (the rings are translated again, events follow for each) */
  memoryChanged(mem: GuestMemory): void;
  /**
   * q is to be processed: started and set up (after a kick, a new table…). Told again when its
   * enabled state changes: a started but disabled ring is processed without side effects (the
   * spec's "Ring states": no new RX packets supplied, TX packets processed and discarded).
   */
  ringStarted(q: Virtqueue): void;
  /** q is not to be processed, not even read or written: stopped (GET_VRING_BASE), reset, broken
   * or its memory gone */
  ringStopped(q: Virtqueue): void;
  /** q was found broken (logged, err eventfd signalled); ringStopped follows */
  ringBroken(q: Virtqueue, reason: string): void;
  /** a kick arrived on a usable q (or polling mode looked at it) */
  kick(q: Virtqueue): void;
  /**
   * Worker threads: q's kick fd is watched by another thread (true; fd -1: no longer), which
   * reports the first kick through Session.kickedElsewhere(). Without it, or false, the session
   * watches the fd itself.
   */
  watchKick?(q: Virtqueue, fd: number): boolean;
  /**
   * Worker threads: q's call or err eventfd changed (SET_VRING_CALL / SET_VRING_ERR, also on a
   * running ring: QEMU switches call fds when it masks a guest's notifiers), so that the thread
   * serving q signals the new one.
   */
  notifyFdsChanged?(q: Virtqueue): void;
  /** the MTU the guest was given (NET_SET_MTU, with VIRTIO_NET_F_MTU negotiated); 0: none */
  mtuChanged(mtu: number): void;
  /** SEND_RARP: announce mac on behalf of the guest (after migration) */
  rarp(mac: Uint8Array): void;
  /** the session ended (connection closed by either side) */
  disconnected(reason: string | null): void;
}

/**
 * Checksum and TCP segmentation offloads both ways (not UFO/USO). A destination that did not
 * negotiate the receive side gets frames checksummed and segmented in software by its port.
 */
export const OFFLOAD_FEATURES: bigint =
  bit(VirtioFeature.NET_F_CSUM) |
  bit(VirtioFeature.NET_F_GUEST_CSUM) |
  bit(VirtioFeature.NET_F_HOST_TSO4) |
  bit(VirtioFeature.NET_F_HOST_TSO6) |
  bit(VirtioFeature.NET_F_HOST_ECN) |
  bit(VirtioFeature.NET_F_GUEST_TSO4) |
  bit(VirtioFeature.NET_F_GUEST_TSO6) |
  bit(VirtioFeature.NET_F_GUEST_ECN);

export const DEFAULT_FEATURES: bigint =
  OFFLOAD_FEATURES |
  bit(VirtioFeature.NET_F_MRG_RXBUF) |
  bit(VirtioFeature.NET_F_MTU) |
  bit(VirtioFeature.NET_F_STATUS) |
  // QEMU passes MQ through from the back-end (its control queue stays in QEMU): offering it lets a
  // guest started with queues=N use them; all RX still goes to the lowest enabled RX ring.
  bit(VirtioFeature.NET_F_MQ) |
  bit(VirtioFeature.F_ANY_LAYOUT) |
  bit(VirtioFeature.RING_F_INDIRECT_DESC) |
  bit(VirtioFeature.RING_F_EVENT_IDX) |
  bit(VirtioFeature.F_RING_PACKED) |
  bit(VirtioFeature.USER_F_PROTOCOL_FEATURES) |
  // live migration: dirty-page logging (with LOG_SHMFD below)
  bit(VirtioFeature.LOG_ALL) |
  bit(VirtioFeature.F_VERSION_1);

export const DEFAULT_PROTOCOL_FEATURES: bigint =
  bit(ProtocolFeature.MQ) |
  bit(ProtocolFeature.LOG_SHMFD) |
  bit(ProtocolFeature.REPLY_ACK) |
  bit(ProtocolFeature.NET_MTU) |
  bit(ProtocolFeature.RARP) |
  bit(ProtocolFeature.CONFIGURE_MEM_SLOTS) |
  bit(ProtocolFeature.STATUS);

/** a ring's state as the device is told it (see SessionDevice.ringStarted) */
const STOPPED = 0;
const STARTED_DISABLED = 1;
const STARTED_ENABLED = 2;

/** virtio device status bits (virtio 1.x 2.1) */
export const STATUS_DRIVER_OK = 4;

/** requests with a reply of their own: a refusal is a zero-length reply (GET_CONFIG's convention) */
const HAS_REPLY: ReadonlySet<number> = new Set([
  Req.GET_FEATURES,
  Req.GET_PROTOCOL_FEATURES,
  Req.GET_QUEUE_NUM,
  Req.GET_VRING_BASE,
  Req.GET_MAX_MEM_SLOTS,
  Req.GET_CONFIG,
  Req.GET_STATUS,
]);

/** a memory table of at most this many windows is mapped at once, a larger one in slices */
const MAP_AT_ONCE_WINDOWS = 4;

/** how often rings without a kick fd are looked at */
const POLL_MS = 1;
/** the dirty log may cover this much at most (1 GiB of bits: 32 TiB of guest-physical space) */
export const MAX_LOG_BYTES = 1024 * 1024 * 1024;
/** how often, while logging, the SET_LOG_FD eventfd is told the log changed */
const LOG_NOTIFY_MS = 50;
/** VHOST_VRING_F_LOG in SET_VRING_ADDR's flags */
const VRING_F_LOG = 1;

export interface SessionOptions {
  name: string;
  log: Log;
  features?: bigint;
  protocolFeatures?: bigint;
  /** queue pairs offered through GET_QUEUE_NUM */
  maxQueuePairs?: number;
  /** memory slots offered through GET_MAX_MEM_SLOTS: the most regions a table may have (--max-regions) */
  maxMemSlots?: number;
  /** most descriptors one chain may have (--max-chain-descriptors) */
  maxChainDescriptors?: number;
  /** most guest memory bytes this connection may map (default DEFAULT_MAX_MAPPED) */
  maxMappedBytes?: number;
  /** most guest memory bytes all connections of the process may map together (default DEFAULT_MAX_TOTAL_MAPPED) */
  maxTotalMappedBytes?: number;
}

/** what an fd is, as /proc/self/fd shows it ("anon_inode:[eventfd]", "pipe:[…]", a path) */
function fdKind(fd: number): string {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return 'unknown';
  }
}

/** per connection (a larger VM needs --max-guest-mem-gb) */
export const DEFAULT_MAX_MAPPED = DEFAULTS.maxGuestMemGb * GiB;
/** all connections together */
export const DEFAULT_MAX_TOTAL_MAPPED = DEFAULTS.maxTotalMemGb * GiB;

/** queue pairs offered per connection (--queues) */
export const DEFAULT_MAX_QUEUE_PAIRS = DEFAULTS.queues;
/** memory regions one connection may have (--max-regions; GET_MAX_MEM_SLOTS) */
export const DEFAULT_MAX_MEM_SLOTS = DEFAULTS.maxRegions;

/** requests refused for a limit, process-wide, by limit (the CLI's stats show them) */
export const limitHits = { regions: 0, mappedBytes: 0, queuePairs: 0 };

/** bytes of guest memory mapped by every session of this process */
let totalMapped = 0;
export function mappedBytesTotal(): number {
  return totalMapped;
}

function fmtBytes(n: number): string {
  return n >= GiB ? `${(n / GiB).toFixed(n % GiB === 0 ? 0 : 1)} GiB` : `${(n / (1024 * 1024)).toFixed(n % (1024 * 1024) === 0 ? 0 : 1)} MiB`;
}

export class Session {
  readonly name: string;
  readonly mem = new GuestMemory();
  /** split rings, packed ones once VIRTIO_F_RING_PACKED is negotiated */
  readonly rings: Virtqueue[] = [];
  /** most descriptors one chain may have (--max-chain-descriptors) */
  private readonly maxChain: number;
  private readonly kickPollers: (Poller | null)[] = [];
  readonly offeredFeatures: bigint;
  readonly offeredProtocol: bigint;
  readonly maxQueuePairs: number;
  readonly maxMemSlots: number;
  private readonly maxMapped: number;
  private readonly maxTotalMapped: number;
  /** bytes of guest memory this connection has mapped */
  private mapped = 0;
  features = 0n;
  protocolFeatures = 0n;
  featuresSet = false;
  owner = false;
  mtu = 0;
  status = 0;
  /** the net configuration of the negotiated features (tests and logs; the device gets it as an event) */
  netConfig: NetConfig | null = null;
  private unsealedNoted = false;
  /** live migration: the log from SET_LOG_BASE, whether it is written (LOG_ALL), SET_LOG_FD's eventfd */
  private dirtyLog: DirtyLog | null = null;
  private logging = false;
  private logFd = -1;
  private logTimer: NodeJS.Timeout | null = null;
  private logSeen = 0;
  private logMissedSeen = 0;
  /** page marks of the log just dropped (for the "logging off" line) */
  private logMarksDropped = 0;
  /** a memory table (or region) being mapped in slices; messages wait until it is in place */
  private mapping: { cancel(): void; regions: Region[]; bytes: number } | null = null;
  /** per ring as last told to the device: STOPPED, STARTED_DISABLED or STARTED_ENABLED */
  private readonly told: number[] = [];
  private readonly log: Log;
  private closed = false;
  /** checks rings that have no kick fd (the front-end asked for polling with the "no fd" bit) */
  private pollTimer: NodeJS.Timeout | null = null;

  constructor(readonly conn: Connection, private readonly device: SessionDevice, opts: SessionOptions) {
    this.name = opts.name;
    this.log = opts.log;
    this.offeredFeatures = opts.features ?? DEFAULT_FEATURES;
    this.offeredProtocol = opts.protocolFeatures ?? DEFAULT_PROTOCOL_FEATURES;
    this.maxQueuePairs = opts.maxQueuePairs ?? DEFAULT_MAX_QUEUE_PAIRS;
    this.maxMemSlots = opts.maxMemSlots ?? DEFAULT_MAX_MEM_SLOTS;
    const maxChain = opts.maxChainDescriptors ?? DEFAULT_MAX_CHAIN_DESCRIPTORS;
    this.maxChain = maxChain;
    this.maxMapped = opts.maxMappedBytes ?? DEFAULT_MAX_MAPPED;
    this.maxTotalMapped = opts.maxTotalMappedBytes ?? DEFAULT_MAX_TOTAL_MAPPED;
    for (let i = 0; i < 2 * this.maxQueuePairs; i++) {
      this.rings.push(new SplitRing(i, `${this.name} ${i % 2 === 0 ? 'RX' : 'TX'} ring ${i}`, maxChain));
      this.told.push(STOPPED);
      this.kickPollers.push(null);
    }
    conn.onMessage = (m) => this.dispatch(m);
    conn.onClose = (reason) => this.dispose(reason);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  hasFeature(n: number): boolean {
    return has(this.features, n);
  }

  hasProtocol(n: number): boolean {
    return has(this.protocolFeatures, n);
  }

  /** Tells the device what changed about q's usability (the one place ring events come from). */
  private sync(q: Virtqueue): void {
    const st = !this.processable(q) ? STOPPED : q.enabled ? STARTED_ENABLED : STARTED_DISABLED;
    if (st === this.told[q.index]) return;
    this.told[q.index] = st;
    if (st === STOPPED) this.device.ringStopped(q);
    else this.device.ringStarted(q);
  }

  private syncAll(): void {
    for (const r of this.rings) this.sync(r);
  }

  /**
   * Started and set up (not broken), and, with VHOST_USER_PROTOCOL_F_STATUS, the driver is ready
   * (virtio 2.1: no buffer consumed, no notification sent before DRIVER_OK): processed, enabled or not.
   */
  private processable(q: Virtqueue): boolean {
    return q.started && q.ready && (!this.hasProtocol(ProtocolFeature.STATUS) || (this.status & STATUS_DRIVER_OK) !== 0);
  }

  /** the MTU limit as the device is to enforce it (NET_SET_MTU counts with VIRTIO_NET_F_MTU only) */
  private tellMtu(): void {
    this.device.mtuChanged(this.hasFeature(VirtioFeature.NET_F_MTU) ? this.mtu : 0);
  }

  /**
   * Runs one request. A Refusal (it failed validation, nothing changed) keeps the connection where
   * the front-end can be told: a zero-length reply to a request with a reply of its own, a non-zero
   * REPLY_ACK ack when it asked for one. Otherwise the refusal says: closed (front-end and back-end
   * would disagree on the state), or logged and ignored. Any other error closes the connection.
   */
  private dispatch(m: Message): void {
    const request = requestName(m.request);
    this.log(`${this.name}: ${request}`, { level: 'debug', request });
    try {
      this.handle(m);
    } catch (e) {
      if (!(e instanceof Refusal)) throw e;
      for (const fd of m.fds.splice(0)) safeClose(fd);
      const what = `${this.name}: error: ${request}: ${e.message}`;
      if (HAS_REPLY.has(m.request)) {
        this.log(`${what}; refused (zero-length reply)`, { level: 'error', request });
        this.conn.send(encode(m.request, VERSION | FLAG_REPLY));
      } else if (m.flags & FLAG_NEED_REPLY && this.hasProtocol(ProtocolFeature.REPLY_ACK)) {
        this.log(`${what}; refused (non-zero reply)`, { level: 'error', request });
        this.conn.send(encode(m.request, VERSION | FLAG_REPLY, u64Payload(1)));
      } else if (e.withoutAck === 'ignore') {
        this.log(`${what}; ignored (no reply asked for)`, { level: 'error', request });
      } else {
        throw new Error(`${e.message} (refused; no reply asked for)`);
      }
    }
  }

  get hdrLen(): number {
    return this.netConfig?.hdrLen ?? 12;
  }

  /** A ring the guest broke (the data path found it): log it once, tell the front-end through the
   * err eventfd, tell the device, stop using it. */
  ringBroken(ring: Virtqueue): void {
    const r = this.rings[ring.index];
    if (r !== ring) return;
    const prefix = `${ring.name}: `;
    const why = ring.broken ?? 'broken';
    this.log(`${prefix}error: ${why.startsWith(prefix) ? why.slice(prefix.length) : why}; ring marked broken`, { level: 'error', ring: ring.index });
    if (ring.errFd >= 0) {
      try {
        native.eventfdWrite(ring.errFd, 1);
      } catch {
        /* front-end gone */
      }
    }
    this.device.ringBroken(r, why);
    this.sync(r);
  }

  private handle(m: Message): void {
    const p = m.payload;
    let reply: Uint8Array | null = null;
    switch (m.request) {
      case Req.GET_FEATURES:
        reply = u64Payload(this.offeredFeatures);
        break;
      case Req.SET_FEATURES: {
        const f = p.getBigUint64(0, true);
        if (f & ~this.offeredFeatures) throw new Refusal(`features 0x${f.toString(16)} include ones not offered: ${virtioFeatureNames(f & ~this.offeredFeatures)}`);
        // vhost-user.rst, Migration: while rings run, SET_FEATURES toggles VHOST_F_LOG_ALL only
        const changed = (f ^ this.features) & ~bit(VirtioFeature.LOG_ALL);
        const running = this.rings.find((r) => r.started);
        if (this.featuresSet && changed && running) {
          throw new Refusal(`${virtioFeatureNames(changed)} changed while ${running.name} is started (only VHOST_F_LOG_ALL may change then)`);
        }
        if (this.featuresSet && (f ^ this.features) === bit(VirtioFeature.LOG_ALL)) {
          // migration starts or ends: only logging changes, the rings run on as they are
          this.features = f;
          this.applyLog();
          break;
        }
        this.features = f;
        this.featuresSet = true;
        const { usable, unmet } = netFeaturesUsable(f);
        this.netConfig = netConfigOf(usable);
        const defaultEnabled = !has(f, VirtioFeature.USER_F_PROTOCOL_FEATURES);
        this.setRingLayout(has(f, VirtioFeature.F_RING_PACKED));
        for (const r of this.rings) {
          r.setFeatures(has(f, VirtioFeature.RING_F_EVENT_IDX), has(f, VirtioFeature.RING_F_INDIRECT_DESC));
          if (defaultEnabled) r.enable(true);
        }
        this.log(`${this.name}: features ${virtioFeatureNames(f)}`, { request: requestName(Req.SET_FEATURES), features: virtioFeatureNames(f).split('|') });
        if (unmet.length) this.log(`${this.name}: not used, their requirement missing (virtio 5.1.3.1): ${unmet.join('; ')}`, { level: 'warn', request: requestName(Req.SET_FEATURES), unmet });
        this.device.featuresNegotiated(this.netConfig);
        this.tellMtu();
        this.applyLog();
        this.syncAll();
        break;
      }
      case Req.GET_PROTOCOL_FEATURES:
        reply = u64Payload(this.offeredProtocol);
        break;
      case Req.SET_PROTOCOL_FEATURES: {
        const f = p.getBigUint64(0, true);
        if (f & ~this.offeredProtocol) throw new Refusal(`protocol features include ones not offered: ${protocolFeatureNames(f & ~this.offeredProtocol)}`);
        this.protocolFeatures = f;
        this.log(`${this.name}: protocol features ${protocolFeatureNames(f)}`, { request: requestName(Req.SET_PROTOCOL_FEATURES), protocolFeatures: protocolFeatureNames(f).split('|') });
        break;
      }
      case Req.SET_OWNER:
        this.owner = true;
        break;
      case Req.RESET_OWNER:
        // Deprecated; the spec recommends ignoring it or disabling all rings, never discarding
        // the connection's state (that interpretation "would lead to bugs"): every ring disabled.
        for (const r of this.rings) {
          r.enable(false);
          this.sync(r);
        }
        break;
      case Req.RESET_DEVICE:
        this.reset();
        break;
      case Req.GET_QUEUE_NUM:
        if (!this.hasProtocol(ProtocolFeature.MQ)) throw new Refusal('VHOST_USER_PROTOCOL_F_MQ was not negotiated');
        reply = u64Payload(this.maxQueuePairs);
        break;
      case Req.GET_MAX_MEM_SLOTS:
        reply = u64Payload(this.maxMemSlots);
        break;
      case Req.SET_MEM_TABLE:
        this.setMemTable(m);
        return; // acknowledged once the table is in place
      case Req.ADD_MEM_REG: {
        if (m.fds.length !== 1) throw new Error(`expected 1 file descriptor, got ${m.fds.length}`);
        const d = readRegion(p, 8); // may throw: the fd is still the message's then, closed with it
        const same = this.mem.find(d);
        if (!same) this.checkMapping(this.mapped + d.memorySize, d.memorySize);
        const fd = m.fds.pop()!;
        if (same) {
          // another vhost device of the same NIC (one per queue pair) adding the same region
          safeClose(fd);
          same.refs++;
          break;
        }
        if (this.mem.size >= this.maxMemSlots) {
          safeClose(fd);
          limitHits.regions++;
          throw new Refusal(`more than ${this.maxMemSlots} memory slots (--max-regions)`);
        }
        const region = this.newRegion(d, fd);
        this.whenMapped([region], d.memorySize, m, () => {
          try {
            this.mem.add(region);
          } catch (e) {
            region.unmap();
            throw e;
          }
          this.noteSeal(region);
          this.account(this.mapped + d.memorySize);
          this.resetupRings();
        });
        return;
      }
      case Req.REM_MEM_REG: {
        for (const fd of m.fds.splice(0)) safeClose(fd); // sent along, not used
        const d = readRegion(p, 8);
        const r = this.mem.remove(d);
        // nothing is mapped there: as if removed, whether the front-end hears of it or not
        if (!r) throw new Refusal(`no memory region at guest address 0x${d.guestPhysAddr.toString(16)} size 0x${d.memorySize.toString(16)}`, 'ignore');
        if (r.refs > 0) break; // still added by another vhost device
        this.resetupRings();
        r.unmap();
        this.account(this.mapped - r.desc.memorySize);
        break;
      }
      case Req.SET_LOG_BASE:
        if (!this.hasProtocol(ProtocolFeature.LOG_SHMFD)) {
          // the kernel's form (a user address of the front-end's): nothing a separate process can
          // log into. No reply is expected without LOG_SHMFD; logging stays off.
          for (const fd of m.fds.splice(0)) safeClose(fd);
          this.log(`${this.name}: error: SET_LOG_BASE without VHOST_USER_PROTOCOL_F_LOG_SHMFD negotiated: ignored, no dirty-page log`, { level: 'error', request: requestName(Req.SET_LOG_BASE) });
          return;
        }
        this.setLogBase(m);
        // with LOG_SHMFD the front-end waits for a reply (empty, as QEMU and DPDK have it)
        reply = new Uint8Array(0);
        break;
      case Req.SET_LOG_FD: {
        if (m.fds.length !== 1) throw new Error(`SET_LOG_FD: expected 1 file descriptor, got ${m.fds.length}`);
        const kind = fdKind(m.fds[0]);
        if (kind !== 'anon_inode:[eventfd]') throw new Error(`SET_LOG_FD fd is not an eventfd (${kind})`);
        native.setNonBlocking(m.fds[0]);
        safeClose(this.logFd);
        this.logFd = m.fds.pop()!;
        this.applyLog();
        break;
      }
      case Req.SET_BACKEND_REQ_FD:
        for (const fd of m.fds.splice(0)) safeClose(fd);
        break;
      case Req.SET_VRING_NUM: {
        const r = this.ring(p.getUint32(0, true));
        refuseOnError(() => r.setNum(p.getUint32(4, true)));
        if (r.addrSet && this.mem.size > 0) {
          // Views made for the old size would disagree with the new one: translate again, or, when
          // the old addresses cannot hold a ring this size, wait for the next SET_VRING_ADDR.
          try {
            r.setup(this.mem);
          } catch {
            r.detachViews();
          }
        }
        this.sync(r);
        break;
      }
      case Req.SET_VRING_ADDR: {
        const r = this.ring(p.getUint32(0, true));
        const flags = p.getUint32(4, true);
        const logAddr = flags & VRING_F_LOG ? getU64(p, 32) : -1;
        r.setAddresses(getU64(p, 8), getU64(p, 16), getU64(p, 24));
        r.setLogAddress(logAddr);
        if (this.mem.size > 0) r.setup(this.mem);
        this.sync(r);
        break;
      }
      case Req.SET_VRING_BASE: {
        const r = this.ring(p.getUint32(0, true));
        try {
          r.setBase(p.getUint32(4, true));
        } catch (e) {
          throw new Refusal((e as Error).message);
        }
        break;
      }
      case Req.GET_VRING_BASE: {
        const r = this.ring(p.getUint32(0, true));
        this.stopRing(r);
        reply = vringStatePayload(r.index, r.getBase());
        break;
      }
      case Req.SET_VRING_KICK:
      case Req.SET_VRING_CALL:
      case Req.SET_VRING_ERR:
        this.setVringFd(m);
        break;
      case Req.SET_VRING_ENABLE: {
        const r = this.ring(p.getUint32(0, true));
        const on = p.getUint32(4, true);
        if (on > 1) throw new Refusal(`${r.name}: enable value ${on} is neither 0 nor 1`);
        r.enable(on === 1);
        this.sync(r);
        break;
      }
      case Req.SEND_RARP: {
        const mac = new Uint8Array(6);
        for (let i = 0; i < 6; i++) mac[i] = p.getUint8(i);
        this.device.rarp(mac);
        break;
      }
      case Req.NET_SET_MTU: {
        const mtu = refuseOnError(() => getU64(p, 0), 'ignore');
        // without an ack the front-end is not told, and the guest is given its MTU anyway: none is enforced
        if (mtu < 68 || mtu > 65535) throw new Refusal(`MTU ${mtu} outside [68, 65535]`, 'ignore');
        this.mtu = mtu;
        this.log(`${this.name}: MTU ${mtu}`, { request: requestName(Req.NET_SET_MTU), mtu });
        this.tellMtu();
        break;
      }
      case Req.SET_VRING_ENDIAN: {
        const r = this.ring(p.getUint32(0, true));
        if (p.getUint32(4, true) !== 0) throw new Refusal(`${r.name}: big-endian rings are not supported`);
        break;
      }
      case Req.GET_CONFIG:
        // CONFIG is not offered; a zero-length payload is the spec's way to report failure.
        reply = new Uint8Array(0);
        break;
      case Req.SET_CONFIG:
        throw new Refusal('VHOST_USER_PROTOCOL_F_CONFIG was not offered');
      case Req.SET_STATUS:
        if (!this.hasProtocol(ProtocolFeature.STATUS)) throw new Refusal('VHOST_USER_PROTOCOL_F_STATUS was not negotiated');
        this.setStatus(refuseOnError(() => getU64(p, 0)));
        break;
      case Req.GET_STATUS:
        if (!this.hasProtocol(ProtocolFeature.STATUS)) throw new Refusal('VHOST_USER_PROTOCOL_F_STATUS was not negotiated');
        reply = u64Payload(this.status);
        break;
      default:
        throw new Error('request not supported by this back-end');
    }
    if (m.fds.length > 0) throw new Error(`unexpected ${m.fds.length} file descriptor(s)`);
    if (reply) {
      this.conn.send(encode(m.request, VERSION | FLAG_REPLY, reply));
    } else if (m.flags & FLAG_NEED_REPLY && this.hasProtocol(ProtocolFeature.REPLY_ACK)) {
      this.conn.send(encode(m.request, VERSION | FLAG_REPLY, u64Payload(0)));
    }
  }

  private ring(index: number): Virtqueue {
    const r = this.rings[index];
    if (!r) {
      limitHits.queuePairs++;
      throw new Refusal(`ring index ${index} beyond the ${this.rings.length} rings offered (${this.maxQueuePairs} queue pairs: --queues)`);
    }
    return r;
  }

  /**
   * SET_STATUS (virtio 1.x 2.1, the device status byte). DRIVER_OK lets the started rings be
   * processed. 0 is a device reset: every ring stops as on GET_VRING_BASE, its indices kept — QEMU
   * 7.2 sends SET_STATUS 0 in vhost_dev_stop before it asks each ring's base, and sends features,
   * table and rings again before the next DRIVER_OK.
   */
  private setStatus(v: number): void {
    if (v > 0xff) throw new Refusal(`status 0x${v.toString(16)} is not a status byte`);
    this.status = v;
    this.log(`${this.name}: device status 0x${v.toString(16)}`, { request: requestName(Req.SET_STATUS), status: v });
    if (v === 0) for (const r of this.rings) this.stopRing(r);
    else this.syncAll();
  }

  private setMemTable(m: Message): void {
    const p = m.payload;
    const n = p.getUint32(0, true);
    if (n === 0 || n > MAX_TABLE_REGIONS) throw new Error(`${n} regions (1 to ${MAX_TABLE_REGIONS} allowed)`);
    if (m.size !== 8 + n * MEM_REGION_SIZE) throw new Error(`payload size ${m.size} does not match ${n} regions`);
    if (m.fds.length !== n) throw new Error(`${n} regions but ${m.fds.length} file descriptors`);
    if (n > this.maxMemSlots) {
      limitHits.regions++;
      throw new Error(`${n} regions, more than the ${this.maxMemSlots} allowed (--max-regions)`);
    }
    // every field first (a value beyond 2^53 throws here, while the fds are still the message's and
    // are closed with it), then the regions, each taking its fd over
    const descs: MemRegion[] = [];
    for (let i = 0; i < n; i++) descs.push(readRegion(p, 8 + i * MEM_REGION_SIZE));
    let bytes = 0;
    for (const d of descs) bytes += d.memorySize;
    // the new table replaces the old one: it is checked on its own (the old one goes away)
    this.checkMapping(bytes, bytes - this.mapped);
    const fds = m.fds.splice(0);
    const regions: Region[] = [];
    try {
      for (let i = 0; i < n; i++) regions.push(this.newRegion(descs[i], fds[i]));
    } catch (e) {
      for (const r of regions) r.unmap();
      for (let i = regions.length + 1; i < n; i++) safeClose(fds[i]);
      throw e;
    }
    this.whenMapped(regions, bytes, m, () => {
      let old: Region[];
      try {
        old = this.mem.replace(regions);
      } catch (e) {
        for (const r of regions) r.unmap();
        throw e;
      }
      for (const r of regions) this.noteSeal(r);
      this.account(bytes);
      // Rings move to the new mappings first; only then are the old ones unmapped.
      this.resetupRings();
      for (const r of old) r.unmap();
      this.log(
        `${this.name}: memory table: ${regions
          .map((r) => `0x${r.desc.guestPhysAddr.toString(16)}+0x${r.desc.memorySize.toString(16)}`)
          .join(', ')}`,
        { request: requestName(m.request) },
      );
    });
  }

  /** A region of this connection's memory (its windows mapped by whenMapped). */
  private newRegion(d: MemRegion, fd: number): Region {
    const r = new Region(d, fd, true);
    r.onFault = () => this.memoryFault(r);
    return r;
  }

  /**
   * Maps the regions' windows, then runs install and acknowledges m. A table of a few windows is
   * mapped at once; a larger one in slices across event-loop turns (each window costs a garbage
   * collection: see guest-memory.ts), with no message read from this front-end meanwhile, so the
   * other connections' traffic goes on while one front-end declares a huge memory table.
   */
  private whenMapped(regions: Region[], bytes: number, m: Message, install: () => void): void {
    const finish = (): void => {
      install();
      this.ack(m);
    };
    let windows = 0;
    for (const r of regions) windows += r.windowCount;
    if (windows <= MAP_AT_ONCE_WINDOWS) {
      try {
        for (const r of regions) while (!r.mapNext());
      } catch (e) {
        for (const r of regions) r.unmap();
        throw e;
      }
      return finish();
    }
    this.conn.hold();
    totalMapped += bytes; // held for this table while it is mapped
    const job = mapInSlices(regions, (err) => {
      this.mapping = null;
      totalMapped -= bytes;
      try {
        if (err) throw err;
        finish();
      } catch (e) {
        for (const r of regions) r.unmap();
        this.conn.fail(`${requestName(m.request)}: ${(e as Error).message}`);
        return;
      }
      this.conn.release();
    });
    this.mapping = { cancel: job.cancel, regions, bytes };
  }

  private ack(m: Message): void {
    if (m.flags & FLAG_NEED_REPLY && this.hasProtocol(ProtocolFeature.REPLY_ACK)) {
      this.conn.send(encode(m.request, VERSION | FLAG_REPLY, u64Payload(0)));
    }
  }

  /** A contained fault in this connection's guest memory: its file shrank under the mapping. */
  private memoryFault(r: Region): void {
    if (this.closed) return;
    this.conn.fail(
      `guest memory file shrunk under the mapping of the region at guest address 0x${r.desc.guestPhysAddr.toString(16)} ` +
        `(${r.faults()} page fault(s) contained, zero pages stand in): the front-end truncated a memory file it did not seal; resetting this connection`,
    );
  }

  /** SET_LOG_BASE with LOG_SHMFD: maps the log (u64 size, u64 offset, the fd attached). */
  private setLogBase(m: Message): void {
    if (m.fds.length !== 1) throw new Error(`SET_LOG_BASE: expected 1 file descriptor, got ${m.fds.length}`);
    const size = getU64(m.payload, 0);
    const offset = getU64(m.payload, 8);
    if (size === 0 || size + offset > MAX_LOG_BYTES) {
      throw new Error(`SET_LOG_BASE: log of ${size} bytes at offset ${offset} (1 byte to ${MAX_LOG_BYTES} in all allowed)`);
    }
    const st = fs.fstatSync(m.fds[0]);
    if (!st.isFile() || offset + size > st.size) {
      throw new Error(`SET_LOG_BASE: log [${offset}, +${size}) is not inside its file (size ${st.size})`);
    }
    native.sealShrink(m.fds[0]); // QEMU seals its log memfd itself; this is for other front-ends
    const log = new DirtyLog(m.fds.pop()!, size, offset); // takes the fd
    const old = this.dirtyLog;
    this.dirtyLog = log;
    this.logSeen = 0;
    this.logMissedSeen = 0;
    this.applyLog();
    old?.unmap();
    this.log(`${this.name}: dirty-page log of ${size} bytes (${log.pages} pages of 4 KiB)`, { request: requestName(Req.SET_LOG_BASE) });
  }

  /**
   * Logging is on while LOG_ALL is negotiated and a log is mapped: every guest window, every ring
   * writes through it. Called whenever one of those, or the memory table, changes.
   */
  private applyLog(): void {
    const on = this.hasFeature(VirtioFeature.LOG_ALL) && this.dirtyLog !== null && !this.closed;
    const log = on ? this.dirtyLog : null;
    this.mem.setLog(log);
    for (const r of this.rings) r.setLog(log);
    if (on !== this.logging) {
      this.logging = on;
      this.log(`${this.name}: dirty-page logging ${on ? 'on' : 'off'}${on ? '' : ` (${this.dirtyLog?.pagesMarked ?? this.logMarksDropped} page marks)`}`);
    }
    if (on && this.logTimer === null) {
      this.logTimer = setInterval(() => this.logTick(), LOG_NOTIFY_MS);
      this.logTimer.unref();
    } else if (!on && this.logTimer !== null) {
      clearInterval(this.logTimer);
      this.logTimer = null;
    }
  }

  /** While logging: tell SET_LOG_FD's eventfd the log changed; say once if writes fell beyond it. */
  private logTick(): void {
    const log = this.dirtyLog;
    if (log === null) return;
    if (log.pagesMarked !== this.logSeen) {
      this.logSeen = log.pagesMarked;
      if (this.logFd >= 0) {
        try {
          native.eventfdWrite(this.logFd, 1);
        } catch {
          /* front-end gone or counter full */
        }
      }
    }
    if (log.missed !== this.logMissedSeen) {
      if (this.logMissedSeen === 0) {
        this.log(`${this.name}: error: dirty-page log of ${log.pages} pages is too small for the guest memory written (page beyond its end): those writes are not logged`, { level: 'error' });
      }
      this.logMissedSeen = log.missed;
    }
  }

  /** pages marked in the dirty log so far and writes beyond it (tests, stats) */
  get logStats(): { logging: boolean; pagesMarked: number; missed: number } {
    return { logging: this.logging, pagesMarked: this.dirtyLog?.pagesMarked ?? 0, missed: this.dirtyLog?.missed ?? 0 };
  }

  private dropLog(): void {
    this.logMarksDropped = this.dirtyLog?.pagesMarked ?? 0;
    this.dirtyLog?.unmap();
    this.dirtyLog = null;
    safeClose(this.logFd);
    this.logFd = -1;
    this.applyLog();
  }

  /**
   * Refuses, before anything is mapped, a table that would take this connection to `mine` bytes,
   * or the process `more` bytes beyond what it maps now: one front-end cannot exhaust the mappings
   * (vm.max_map_count, address space) of all the others.
   */
  private checkMapping(mine: number, more: number): void {
    if (mine > this.maxMapped) {
      limitHits.mappedBytes++;
      throw new Refusal(`memory table of ${fmtBytes(mine)} is beyond the ${fmtBytes(this.maxMapped)} one connection may map (--max-guest-mem-gb)`);
    }
    if (totalMapped + more > this.maxTotalMapped) {
      limitHits.mappedBytes++;
      throw new Refusal(`memory table would take the guest memory mapped by all connections to ${fmtBytes(totalMapped + more)}, beyond ${fmtBytes(this.maxTotalMapped)} (--max-total-mem-gb)`);
    }
  }

  private account(mine: number): void {
    totalMapped += mine - this.mapped;
    this.mapped = mine;
  }

  /** A region whose file could shrink under us is the one trust assumption left: say so, once. */
  private noteSeal(r: Region): void {
    if (r.sealed || this.unsealedNoted) return;
    this.unsealedNoted = true;
    this.log(`${this.name}: memory region at 0x${r.desc.guestPhysAddr.toString(16)} cannot be sealed against shrinking (not a sealable memfd): the front-end is trusted not to truncate it`, { level: 'warn' });
  }

  private resetupRings(): void {
    this.applyLog(); // new regions are logged from the start
    this.device.memoryChanged(this.mem);
    for (const r of this.rings) {
      if (!r.addrSet) continue;
      try {
        r.setup(this.mem);
      } catch (e) {
        r.detachViews();
        r.markBroken((e as Error).message);
        this.ringBroken(r);
        continue;
      }
      this.sync(r);
    }
  }

  private setVringFd(m: Message): void {
    const v = getU64(m.payload, 0);
    const r = this.ring(v & VRING_IDX_MASK);
    const nofd = (v & VRING_NOFD_MASK) !== 0;
    if (nofd && m.fds.length !== 0) throw new Error(`${r.name}: "no fd" flag set but a file descriptor was sent`);
    if (!nofd && m.fds.length !== 1) throw new Error(`${r.name}: expected 1 file descriptor, got ${m.fds.length}`);
    if (!nofd) {
      // Only eventfds: anything else (a pipe, a socket) could block or fail our writes and reads
      // for every port; written non-blocking, so a counter filled to the maximum cannot block us.
      const kind = fdKind(m.fds[0]);
      if (kind !== 'anon_inode:[eventfd]') throw new Refusal(`${r.name}: ${requestName(m.request)} fd is not an eventfd (${kind})`);
      native.setNonBlocking(m.fds[0]);
    }
    const fd = nofd ? -1 : m.fds.pop()!;
    if (m.request === Req.SET_VRING_CALL) {
      safeClose(r.setCallFd(fd));
      this.device.notifyFdsChanged?.(r);
    } else if (m.request === Req.SET_VRING_ERR) {
      safeClose(r.setErrFd(fd));
      this.device.notifyFdsChanged?.(r);
    } else {
      this.stopKick(r);
      r.setKickFd(fd);
      if (fd >= 0 && this.device.watchKick?.(r, fd) === true) return;
      if (fd < 0) {
        // Polling mode: no kicks will come; the ring counts as started now and is looked at
        // every POLL_MS as if it had been kicked.
        r.start();
        this.sync(r);
        this.startPolling();
        return;
      }
      const i = r.index; // the ring object changes with the layout (setRingLayout)
      const poller = native.poll(fd, (status) => {
        const q = this.rings[i];
        if (status < 0 || q.kickFd !== fd) return;
        try {
          native.eventfdRead(fd);
          if (!q.started) {
            q.start();
            this.sync(q);
          }
          if (this.processable(q)) this.device.kick(q);
        } catch (e) {
          this.internalError(`kick on ${q.name}`, e);
        }
      });
      this.kickPollers[r.index] = poller;
      poller.start(native.POLL_READABLE);
    }
  }

  /**
   * An exception out of the data path is a bug, but whatever a guest did to trigger it, it must
   * not take the process and every other port down: log it, close this connection only.
   */
  internalError(where: string, e: unknown): void {
    this.log(`${this.name}: internal error during ${where}: ${(e as Error)?.stack ?? String(e)}`, { level: 'error' });
    this.conn.fail(`internal error during ${where}`);
  }

  private startPolling(): void {
    if (this.pollTimer) return;
    this.pollTimer = setInterval(() => {
      let polled = 0;
      try {
        for (const r of this.rings) {
          if (r.kickFd >= 0 || !r.started) continue;
          polled++;
          if (this.processable(r)) this.device.kick(r);
        }
      } catch (e) {
        this.internalError('ring polling', e);
      }
      if (polled === 0) this.stopPolling();
    }, POLL_MS);
    this.pollTimer.unref();
  }

  private stopPolling(): void {
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = null;
  }

  /** Worker threads: the thread serving ring `index` found it broken. */
  ringBrokenElsewhere(index: number, reason: string): void {
    const r = this.rings[index];
    if (r === undefined || this.closed) return;
    r.markBroken(reason);
    this.ringBroken(r);
  }

  /** Worker threads: the thread watching ring `index`'s kick fd saw a kick: the ring starts. */
  kickedElsewhere(index: number): void {
    const q = this.rings[index];
    if (q === undefined || q.kickFd < 0 || this.closed) return;
    try {
      if (!q.started) {
        q.start();
        this.sync(q);
      } else if (this.processable(q)) {
        this.device.kick(q);
      }
    } catch (e) {
      this.internalError(`kick on ${q.name}`, e);
    }
  }

  private stopKick(r: Virtqueue): void {
    if (r.kickFd >= 0 && this.kickPollers[r.index] === null) this.device.watchKick?.(r, -1);
    const p = this.kickPollers[r.index];
    if (p) p.close();
    this.kickPollers[r.index] = null;
    safeClose(r.setKickFd(-1));
  }

  /**
   * SET_FEATURES: the rings take the negotiated layout. A ring changing layout keeps its fds and
   * its enable and started state; its size, addresses and base are the front-end's to send next
   * (QEMU and DPDK send features before setting rings up).
   */
  private setRingLayout(packed: boolean): void {
    for (let i = 0; i < this.rings.length; i++) {
      const old = this.rings[i];
      if (old.packed === packed) continue;
      const q: Virtqueue = packed ? new PackedRing(i, old.name, this.maxChain) : new SplitRing(i, old.name, this.maxChain);
      q.setKickFd(old.kickFd);
      q.setCallFd(old.callFd);
      q.setErrFd(old.errFd);
      q.enable(old.enabled);
      if (old.started) q.start();
      if (this.told[i] !== STOPPED) {
        this.told[i] = STOPPED;
        this.device.ringStopped(old);
      }
      this.rings[i] = q;
    }
  }

  /** GET_VRING_BASE: the ring stops until the front-end sets it up and kicks again. */
  private stopRing(r: Virtqueue): void {
    this.stopKick(r);
    r.stop();
    this.sync(r);
  }

  private reset(): void {
    for (const r of this.rings) {
      this.stopKick(r);
      safeClose(r.setCallFd(-1));
      safeClose(r.setErrFd(-1));
      r.reset();
      this.sync(r);
    }
    this.features = 0n;
    this.netConfig = null;
    this.featuresSet = false;
    this.status = 0;
    this.dropLog();
    // Protocol features stay: they belong to the connection, and QEMU does not negotiate them again
    // after a reset (it would wait forever for REPLY_ACK acks, starting with this request's own).
  }

  close(): void {
    this.conn.close(null);
  }

  private dispose(reason: string | null): void {
    if (this.closed) return;
    this.closed = true;
    this.stopPolling();
    if (this.mapping) {
      this.mapping.cancel();
      for (const r of this.mapping.regions) r.unmap();
      totalMapped -= this.mapping.bytes;
      this.mapping = null;
    }
    for (const r of this.rings) {
      this.stopKick(r);
      safeClose(r.setCallFd(-1));
      safeClose(r.setErrFd(-1));
      r.stop();
      r.detachViews();
      this.told[r.index] = STOPPED;
    }
    this.dropLog();
    this.mem.clear();
    this.account(0);
    this.log(`${this.name}: disconnected${reason ? ` (${reason})` : ''}`, reason ? { reason } : undefined);
    this.device.disconnected(reason);
  }
}

export { requestName };
