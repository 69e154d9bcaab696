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
import type { Connection, Log } from './connection';
import { safeClose } from './connection';
import { bit, has, protocolFeatureNames, VirtioFeature, virtioFeatureNames } from './features';
import { netFeaturesUsable } from '../virtio/features';
import { Refusal, refuseOnError } from './refusal';
import { encode, FLAG_NEED_REPLY, FLAG_REPLY, Message, ProtocolFeature, Req, requestName, u64Payload, VERSION } from './message';
import { MappedMemory, processMappedMemory } from './mapped-memory';
import { AnyEntry as Entry, fdCountError, ReplyKind, RequestBackend, REQUESTS, VringAddr } from './requests';

/**
 * What the session needs of its connection (src/vhost-user/connection.ts; a test double in the
 * unit tests): messages in with their fds, replies out, and the one way to drop a broken peer.
 * Session is generic over it so that its owner still sees the connection it gave (port.session.conn).
 */
export interface SessionConnection {
  /** each message, in order; set by the session */
  onMessage: (m: Message) => void;
  /** the connection closed (by either side); set by the session */
  onClose: (reason: string | null) => void;
  send(bytes: Uint8Array, fds?: number[]): void;
  /** logs the reason as an error and closes the connection */
  fail(reason: string, request?: string): void;
  close(reason?: string | null): void;
  /** reads no more messages until release(): the last one is still being handled across turns */
  hold(): void;
  release(): void;
}

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
  /**
   * Worker threads: q just stopped and another thread served it; its base comes from that thread.
   * The promise gives it (GET_VRING_BASE is answered then; nothing waits meanwhile). null: q was
   * served here and its base is q.getBase().
   */
  stopAnswer?(q: Virtqueue): Promise<number> | null;
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

/** a memory table of at most this many windows is mapped at once, a larger one in slices */
const MAP_AT_ONCE_WINDOWS = 4;

/** how often rings without a kick fd are looked at */
const POLL_MS = 1;
/** the dirty log may cover this much at most (1 GiB of bits: 32 TiB of guest-physical space) */
export const MAX_LOG_BYTES = 1024 * 1024 * 1024;
/** how often, while logging, the SET_LOG_FD eventfd is told the log changed */
const LOG_NOTIFY_MS = 50;

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
  /** most guest memory bytes all connections of `mappedMemory` may map together (default DEFAULT_MAX_TOTAL_MAPPED) */
  maxTotalMappedBytes?: number;
  /** the account of guest memory mapped that maxTotalMappedBytes limits (default: the process's) */
  mappedMemory?: MappedMemory;
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

/** bytes of guest memory mapped by the sessions of this process that use its account (the default) */
export function mappedBytesTotal(): number {
  return processMappedMemory.bytes;
}

function fmtBytes(n: number): string {
  return n >= GiB ? `${(n / GiB).toFixed(n % GiB === 0 ? 0 : 1)} GiB` : `${(n / (1024 * 1024)).toFixed(n % (1024 * 1024) === 0 ? 0 : 1)} MiB`;
}

export class Session<C extends SessionConnection = Connection> implements RequestBackend {
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
  /** guest memory mapped by all the connections maxTotalMapped counts */
  private readonly mappedMemory: MappedMemory;
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

  constructor(readonly conn: C, private readonly device: SessionDevice, opts: SessionOptions) {
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
    this.mappedMemory = opts.mappedMemory ?? processMappedMemory;
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

  // ---- the dispatcher: the one place a request is checked, run and answered ----

  /**
   * Runs one request from its table entry (requests.ts): the checks the entry declares, then the
   * request, then its answer. A Refusal (it failed validation, nothing changed) keeps the
   * connection where the front-end can be told: a zero-length reply to a request with a reply of
   * its own, a non-zero REPLY_ACK ack when it asked for one. Otherwise the refusal says: closed
   * (front-end and back-end would disagree on the state), or logged and ignored. Any other error
   * closes the connection. Either way the fds the request did not take over are closed.
   */
  private dispatch(m: Message): void {
    const request = requestName(m.request);
    this.log(`${this.name}: ${request}`, { level: 'debug', request });
    const e = REQUESTS.get(m.request);
    let out: Uint8Array | void | Promise<Uint8Array | void>;
    try {
      if (e === undefined) throw new Error('request not supported by this back-end');
      out = this.run(e, m);
    } catch (err) {
      this.failed(e, m, err);
      return;
    }
    if (!(out instanceof Promise)) return this.answer(e, m, out);
    // A memory table mapped across turns, a ring another thread stops: nothing more is read from
    // this front-end until the request is done and answered (the answer goes out before the next
    // message is read); every other port goes on meanwhile.
    this.conn.hold();
    out.then(
      (payload) => this.answer(e, m, payload),
      (err: unknown) => this.failed(e, m, err),
    ).finally(() => this.conn.release());
  }

  /** The entry's checks in the order a message is read (its feature, its payload, its fds, the rings' state), then the request. */
  private run(e: Entry, m: Message): Uint8Array | void | Promise<Uint8Array | void> {
    if (e.protocol !== undefined && !this.hasProtocol(ProtocolFeature[e.protocol])) {
      throw new Refusal(`VHOST_USER_PROTOCOL_F_${e.protocol} was not negotiated`);
    }
    const a = e.decode(m.payload, this, m);
    // DPDK's validate_msg_fds: a wrong count is a broken front-end (the fds are closed by failed())
    const want = typeof e.fds === 'function' ? e.fds(a, this) : e.fds;
    if (want === 'unused') {
      for (const fd of m.fds.splice(0)) safeClose(fd);
    } else if (m.fds.length !== want) {
      throw new Error(e.fdError ? e.fdError(a, want, m.fds.length) : fdCountError(want, m.fds.length));
    }
    if (e.rings !== 'any') {
      const change = e.rings.change(this, a);
      const running = change === null ? undefined : this.rings.find((r) => r.started);
      if (running !== undefined) throw new Refusal(`${change} changed while ${running.name} is started (${e.rings.allowed})`);
    }
    return e.run(this, a, m.fds);
  }

  private replyKind(e: Entry): ReplyKind {
    return typeof e.reply === 'function' ? e.reply(this) : e.reply;
  }

  /** whether m asked for a REPLY_ACK ack that the negotiated protocol features let us send */
  private ackAsked(m: Message): boolean {
    return (m.flags & FLAG_NEED_REPLY) !== 0 && this.hasProtocol(ProtocolFeature.REPLY_ACK);
  }

  /** A request that ran: its reply (a payload, or zero-length), or its ack when asked for. */
  private answer(e: Entry, m: Message, out?: Uint8Array | void): void {
    const kind = this.replyKind(e);
    if (kind === 'reply') this.conn.send(encode(m.request, VERSION | FLAG_REPLY, out instanceof Uint8Array ? out : undefined));
    else if (kind === 'ack' && this.ackAsked(m)) this.conn.send(encode(m.request, VERSION | FLAG_REPLY, u64Payload(0)));
  }

  /** A request that threw: refused as its entry and the front-end's flags allow, or the connection closed. */
  private failed(e: Entry | undefined, m: Message, err: unknown): void {
    for (const fd of m.fds.splice(0)) safeClose(fd);
    const request = requestName(m.request);
    if (!(err instanceof Refusal)) {
      this.conn.fail(`${request}: ${(err as Error)?.message ?? String(err)}`, request);
      return;
    }
    const kind = e === undefined ? 'none' : this.replyKind(e);
    const what = `${this.name}: error: ${request}: ${err.message}`;
    if (kind === 'reply') {
      this.log(`${what}; refused (zero-length reply)`, { level: 'error', request });
      this.conn.send(encode(m.request, VERSION | FLAG_REPLY));
    } else if (kind === 'ack' && this.ackAsked(m)) {
      this.log(`${what}; refused (non-zero reply)`, { level: 'error', request });
      this.conn.send(encode(m.request, VERSION | FLAG_REPLY, u64Payload(1)));
    } else if (err.withoutAck === 'ignore') {
      this.log(`${what}; ignored (no reply asked for)`, { level: 'error', request });
    } else {
      this.conn.fail(`${request}: ${err.message} (refused; no reply asked for)`, request);
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

  ring(index: number): Virtqueue {
    const r = this.rings[index];
    if (!r) {
      limitHits.queuePairs++;
      throw new Refusal(`ring index ${index} beyond the ${this.rings.length} rings offered (${this.maxQueuePairs} queue pairs: --queues)`);
    }
    return r;
  }

  // ---- the requests (RequestBackend), one method each, given decoded and checked arguments ----

  setFeatures(f: bigint): void {
    if (this.featuresSet && (f ^ this.features) === bit(VirtioFeature.LOG_ALL)) {
      // migration starts or ends: only logging changes, the rings run on as they are
      this.features = f;
      this.applyLog();
      return;
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
  }

  setProtocolFeatures(f: bigint): void {
    this.protocolFeatures = f;
    this.log(`${this.name}: protocol features ${protocolFeatureNames(f)}`, { request: requestName(Req.SET_PROTOCOL_FEATURES), protocolFeatures: protocolFeatureNames(f).split('|') });
  }

  setOwner(): void {
    this.owner = true;
  }

  /**
   * Deprecated; the spec recommends ignoring it or disabling all rings, never discarding the
   * connection's state (that interpretation "would lead to bugs"): every ring disabled.
   */
  resetOwner(): void {
    for (const r of this.rings) {
      r.enable(false);
      this.sync(r);
    }
  }

  resetDevice(): void {
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

  /** The new table replaces the old one; the regions take their fds out of `fds` once it passed the limits. */
  setMemTable(descs: MemRegion[], fds: number[]): void | Promise<void> {
    const n = descs.length;
    if (n > this.maxMemSlots) {
      limitHits.regions++;
      throw new Error(`${n} regions, more than the ${this.maxMemSlots} allowed (--max-regions)`);
    }
    let bytes = 0;
    for (const d of descs) bytes += d.memorySize;
    // the new table is checked on its own (the old one goes away)
    this.checkMapping(bytes, bytes - this.mapped);
    const taken = fds.splice(0);
    const regions: Region[] = [];
    try {
      for (let i = 0; i < n; i++) regions.push(this.newRegion(descs[i], taken[i]));
    } catch (e) {
      // the region that failed closed its own fd; the ones after it were not handed out
      for (const r of regions) r.unmap();
      for (let i = regions.length + 1; i < n; i++) safeClose(taken[i]);
      throw e;
    }
    return this.whenMapped(regions, bytes, () => {
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
        `${this.name}: memory table: ${regions.map((r) => `0x${r.desc.guestPhysAddr.toString(16)}+0x${r.desc.memorySize.toString(16)}`).join(', ')}`,
        { request: requestName(Req.SET_MEM_TABLE) },
      );
    });
  }

  /** The region takes its fd out of `fds` once it passed the limits. */
  addMemRegion(d: MemRegion, fds: number[]): void | Promise<void> {
    const same = this.mem.find(d);
    if (!same) this.checkMapping(this.mapped + d.memorySize, d.memorySize);
    const fd = fds.pop()!;
    if (same) {
      // another vhost device of the same NIC (one per queue pair) adding the same region
      safeClose(fd);
      same.refs++;
      return;
    }
    if (this.mem.size >= this.maxMemSlots) {
      safeClose(fd);
      limitHits.regions++;
      throw new Refusal(`more than ${this.maxMemSlots} memory slots (--max-regions)`);
    }
    const region = this.newRegion(d, fd);
    return this.whenMapped([region], d.memorySize, () => {
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
  }

  removeMemRegion(d: MemRegion): void {
    const r = this.mem.remove(d);
    // nothing is mapped there: as if removed, whether the front-end hears of it or not
    if (!r) throw new Refusal(`no memory region at guest address 0x${d.guestPhysAddr.toString(16)} size 0x${d.memorySize.toString(16)}`, 'ignore');
    if (r.refs > 0) return; // still added by another vhost device
    this.resetupRings();
    r.unmap();
    this.account(this.mapped - r.desc.memorySize);
  }

  /** SET_LOG_BASE with LOG_SHMFD: maps the log (its fd taken out of `fds` once checked). */
  setLogBase(size: number, offset: number, fds: number[]): void {
    if (size === 0 || size + offset > MAX_LOG_BYTES) {
      throw new Error(`SET_LOG_BASE: log of ${size} bytes at offset ${offset} (1 byte to ${MAX_LOG_BYTES} in all allowed)`);
    }
    const st = fs.fstatSync(fds[0]);
    if (!st.isFile() || offset + size > st.size) {
      throw new Error(`SET_LOG_BASE: log [${offset}, +${size}) is not inside its file (size ${st.size})`);
    }
    native.sealShrink(fds[0]); // QEMU seals its log memfd itself; this is for other front-ends
    const log = new DirtyLog(fds.pop()!, size, offset); // takes the fd
    const old = this.dirtyLog;
    this.dirtyLog = log;
    this.logSeen = 0;
    this.logMissedSeen = 0;
    this.applyLog();
    old?.unmap();
    this.log(`${this.name}: dirty-page log of ${size} bytes (${log.pages} pages of 4 KiB)`, { request: requestName(Req.SET_LOG_BASE) });
  }

  /**
   * SET_LOG_BASE without LOG_SHMFD: the kernel's form (a user address of the front-end's), nothing
   * a separate process can log into. No reply is expected without LOG_SHMFD; logging stays off.
   */
  ignoreLogBase(): void {
    this.log(`${this.name}: error: SET_LOG_BASE without VHOST_USER_PROTOCOL_F_LOG_SHMFD negotiated: ignored, no dirty-page log`, { level: 'error', request: requestName(Req.SET_LOG_BASE) });
  }

  setLogFd(fd: number): void {
    safeClose(this.logFd);
    this.logFd = fd;
    this.applyLog();
  }

  setVringNum(r: Virtqueue, num: number): void {
    refuseOnError(() => r.setNum(num));
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
  }

  setVringAddr(r: Virtqueue, a: VringAddr): void {
    r.setAddresses(a.desc, a.used, a.avail);
    r.setLogAddress(a.log);
    if (this.mem.size > 0) r.setup(this.mem);
    this.sync(r);
  }

  setVringBase(r: Virtqueue, base: number): void {
    refuseOnError(() => r.setBase(base));
  }

  /** The ring stops until the front-end sets it up and kicks again; its base is the reply. */
  getVringBase(r: Virtqueue): number | Promise<number> {
    this.stopRing(r);
    return this.device.stopAnswer?.(r) ?? r.getBase();
  }

  setVringCall(r: Virtqueue, fd: number): void {
    safeClose(r.setCallFd(fd));
    this.device.notifyFdsChanged?.(r);
  }

  setVringErr(r: Virtqueue, fd: number): void {
    safeClose(r.setErrFd(fd));
    this.device.notifyFdsChanged?.(r);
  }

  /**
   * A kick fd is watched for the ring's first kick (which starts it) and those after: by a
   * data-plane thread when the device has one watch it, else here. No fd: polling mode.
   */
  setVringKick(r: Virtqueue, fd: number): void {
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

  setVringEnable(r: Virtqueue, on: boolean): void {
    r.enable(on);
    this.sync(r);
  }

  sendRarp(mac: Uint8Array): void {
    this.device.rarp(mac);
  }

  setMtu(mtu: number): void {
    this.mtu = mtu;
    this.log(`${this.name}: MTU ${mtu}`, { request: requestName(Req.NET_SET_MTU), mtu });
    this.tellMtu();
  }

  /**
   * SET_STATUS (virtio 1.x 2.1, the device status byte). DRIVER_OK lets the started rings be
   * processed. 0 is a device reset: every ring stops as on GET_VRING_BASE, its indices kept — QEMU
   * 7.2 sends SET_STATUS 0 in vhost_dev_stop before it asks each ring's base, and sends features,
   * table and rings again before the next DRIVER_OK.
   */
  setStatus(v: number): void {
    this.status = v;
    this.log(`${this.name}: device status 0x${v.toString(16)}`, { request: requestName(Req.SET_STATUS), status: v });
    if (v === 0) for (const r of this.rings) this.stopRing(r);
    else this.syncAll();
  }

  // ---- guest memory ----

  /** A region of this connection's memory (its windows mapped by whenMapped). */
  private newRegion(d: MemRegion, fd: number): Region {
    const r = new Region(d, fd, true);
    r.onFault = () => this.memoryFault(r);
    return r;
  }

  /**
   * Maps the regions' windows, then runs install. A table of a few windows is mapped at once; a
   * larger one in slices across event-loop turns (each window costs a garbage collection: see
   * guest-memory.ts): then the promise settles once it is installed, and the dispatcher reads no
   * message from this front-end meanwhile, so the other connections' traffic goes on while one
   * front-end declares a huge memory table.
   */
  private whenMapped(regions: Region[], bytes: number, install: () => void): void | Promise<void> {
    let windows = 0;
    for (const r of regions) windows += r.windowCount;
    if (windows <= MAP_AT_ONCE_WINDOWS) {
      try {
        for (const r of regions) while (!r.mapNext());
      } catch (e) {
        for (const r of regions) r.unmap();
        throw e;
      }
      install();
      return;
    }
    this.mappedMemory.add(bytes); // held for this table while it is mapped
    return new Promise((resolve, reject) => {
      const job = mapInSlices(regions, (err) => {
        this.mapping = null;
        this.mappedMemory.add(-bytes);
        try {
          if (err) throw err;
          install();
        } catch (e) {
          for (const r of regions) r.unmap();
          reject(e);
          return;
        }
        resolve();
      });
      this.mapping = { cancel: job.cancel, regions, bytes };
    });
  }

  /** A contained fault in this connection's guest memory: its file shrank under the mapping. */
  private memoryFault(r: Region): void {
    if (this.closed) return;
    this.conn.fail(
      `guest memory file shrunk under the mapping of the region at guest address 0x${r.desc.guestPhysAddr.toString(16)} ` +
        `(${r.faults()} page fault(s) contained, zero pages stand in): the front-end truncated a memory file it did not seal; resetting this connection`,
    );
  }

  /**
   * Refuses, before anything is mapped, a table that would take this connection to `mine` bytes,
   * or the connections sharing its account `more` bytes beyond what they map now: one front-end
   * cannot exhaust the mappings (vm.max_map_count, address space) of all the others.
   */
  private checkMapping(mine: number, more: number): void {
    if (mine > this.maxMapped) {
      limitHits.mappedBytes++;
      throw new Refusal(`memory table of ${fmtBytes(mine)} is beyond the ${fmtBytes(this.maxMapped)} one connection may map (--max-guest-mem-gb)`);
    }
    const total = this.mappedMemory.bytes + more;
    if (total > this.maxTotalMapped) {
      limitHits.mappedBytes++;
      throw new Refusal(`memory table would take the guest memory mapped by all connections to ${fmtBytes(total)}, beyond ${fmtBytes(this.maxTotalMapped)} (--max-total-mem-gb)`);
    }
  }

  /** this connection now maps `mine` bytes */
  private account(mine: number): void {
    this.mappedMemory.add(mine - this.mapped);
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

  // ---- dirty-page log (live migration) ----

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

  // ---- rings: kicks, polling, the worker-thread hooks, layout, stop ----

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

  /** GET_VRING_BASE, SET_STATUS 0: the ring stops until the front-end sets it up and kicks again. */
  private stopRing(r: Virtqueue): void {
    this.stopKick(r);
    r.stop();
    this.sync(r);
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
      this.mappedMemory.add(-this.mapping.bytes);
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
