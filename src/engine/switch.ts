// The switch: the pipeline that ties classifier, fast path, store engine, elastic FIFO and monitor
// together (claim 1 of US 7,751,400 with the ordering rule of US 7,760,736).
//
//   input(src, frame) ─► port security, learn source MAC (a new MAC resolves held frames)
//                     ─► classify: destination | flood set | unknown
//                     ─► per destination: nothing waiting for it AND port.deliver() ok → fast path
//                                         else store engine → its numbered queue (+ wantResources)
//                     ─► unknown: store engine → unresolved queue (hold time, then flood or drop)
//
// Time: "now" is one Float64Array cell shared by the MAC table, store engine and monitor. tick()
// runs from one unref()'d interval timer created by the constructor (every tickMs) and is the only
// reader of the clock: it sets now, expires held frames, ages the MAC table and retries
// connections with waiting frames in case a kick was lost. Reading Date.now() on the data path
// would allocate (it returns a boxed double), so time there has the tick's precision: a held frame
// is flooded or dropped between holdTimeMs - tickMs and holdTimeMs + tickMs after it arrived.
// With tickMs = 0 there is no timer; the clock is then read once per batch (first input() after a
// flush(), and in flush() while frames are held) and the caller runs tick() itself — tests do this
// with a fake clock.
//
// Re-entrancy: ports must not call back into the switch (input, resourcesAvailable, …) from inside
// deliver(), flush() or wantResources(); report kicks from their own event handler.

import {
  DESTINATION_FLOOD,
  DESTINATION_UNKNOWN,
  DST_MAC_OFFSET,
  SRC_MAC_OFFSET,
  LEARN_NEW,
  MacTable,
  classify,
  formatMac,
  keyHi,
  keyLo,
  isGroupHi,
  macHi,
  macKey,
  macLo,
  parseMac,
} from './classifier';
import { ConnectionTable } from './connections';
import {
  Counters,
  DROP_DETACHED,
  DROP_MALFORMED,
  DROP_PORT_SECURITY,
  DROP_SAME_CONNECTION,
  DROP_TOO_BIG,
  FAST_FRAMES,
  HANDED_FRAMES,
  RX_FRAMES,
  STORED_FRAMES,
  DROP_SHARE_LIMIT,
  type TrafficCounts,
} from './counters';
import { ElasticFifo, type FifoShare } from './elastic-fifo';
import { Monitor, type Flooder, type UnknownPolicy } from './monitor';
import type { EnginePort, Handoff } from './port';
import { StoreEngine } from './store-engine';
import { MAX_FRAME, MIN_FRAME } from '../datapath/layout';
import { Frame } from '../datapath/frame';
import { DEST_NONE, type Burst } from '../datapath/burst';
import { copies } from '../datapath/copy-list';
import { DEFAULTS, MiB } from '../defaults';
import type { Log } from '../log';

/** virtio-net header + Ethernet header */
export const MIN_FRAME_LEN = MIN_FRAME;
/** virtio-net header + a 64 KiB GSO payload + Ethernet header with one VLAN tag */
export const MAX_FRAME_LEN = MAX_FRAME;
/** most connections at once (--max-ports) */
export const DEFAULT_MAX_PORTS = DEFAULTS.maxPorts;

export interface SwitchOptions {
  /** size of the local data store in bytes (default DEFAULTS.poolMb MiB) */
  poolBytes?: number;
  /** block size in bytes, a multiple of 8, >= 128 (default DEFAULTS.blockSize: one block per 1518-byte frame + header) */
  blockSize?: number;
  /** how long a frame to an unknown MAC is held before the unknownPolicy applies (default DEFAULTS.holdMs) */
  holdTimeMs?: number;
  /** what happens to held frames past the hold time (default DEFAULTS.unknown) */
  unknownPolicy?: UnknownPolicy;
  /** most blocks one connection's numbered queue may hold (default half the pool) */
  defaultShareLimit?: number;
  /** most blocks the unresolved queue may hold (default a quarter of the pool) */
  unresolvedShareLimit?: number;
  /** learned MACs unused this long are forgotten (default DEFAULTS.macAgeS) */
  macAgeMs?: number;
  /** MAC table slots (default DEFAULTS.macTableSize; at most 3/4 are used) */
  macTableSize?: number;
  /** most connections at once (default DEFAULT_MAX_PORTS); a connection beyond is refused, counted */
  maxPorts?: number;
  /** RX queues per connection kept apart (default DEFAULTS.queues): a multiqueue port's frames are
   * held and delivered in order per RX queue, so a full queue does not hold up the others */
  queues?: number;
  /** largest frame taken, virtio-net header included (default and most MAX_FRAME_LEN); longer ones are dropped, counted (tooBig) */
  maxFrameLen?: number;
  /** period of tick() in ms; 0 = no timer, clock read per batch (default: a quarter of the hold time, 10…1000 ms) */
  tickMs?: number;
  /** milliseconds, monotonic enough (default Date.now); tests pass a fake clock */
  clock?: () => number;
  log?: Log;
  /** one of several data-plane threads (src/workers/): what it shares with the others */
  shard?: ShardOptions;
}

/** A switch that is one data-plane thread of several (src/workers/): the MAC table, the local data
 * store and the counters live in shared memory. */
export interface ShardOptions {
  /** makes the shared MAC table (a MacTable over a SharedArrayBuffer) reading "now" from `time` */
  table: (time: Float64Array) => MacTable;
  /** this thread's partition of the shared data store */
  fifo: FifoShare;
  /** this thread's counters (Counters.sharedBytes) */
  counters: SharedArrayBuffer;
  /** this thread configures the table (static MACs, removal on detach, ageing): the control thread */
  tableKeeper: boolean;
  /** the other threads' counters, summed into stats() (the control thread) */
  peerCounters?: Counters[];
}

export interface AttachOptions {
  /** MAC known from the start; frames from this port with another source MAC are dropped */
  staticMac?: string;
  /** most blocks this connection's queue may hold (default: the switch's defaultShareLimit) */
  shareLimit?: number;
}

export interface PoolStats {
  blockSize: number;
  blocks: number;
  blocksFree: number;
  blocksInUse: number;
  highWater: number;
  blocksTaken: number;
  blocksReturned: number;
  unresolvedFrames: number;
  unresolvedBlocks: number;
  /** how long the oldest unresolved frame has waited, ms (null: none waits) */
  unresolvedOldestMs: number | null;
}

export interface PortStats extends TrafficCounts {
  index: number;
  name: string;
  staticMac: string | null;
  shareLimit: number;
  queuedFrames: number;
  queuedBlocks: number;
  /** frames held per RX queue (index = queue pair), up to the last queue that holds any */
  queuedPerQueue: number[];
  /** how long the oldest frame queued for this connection has waited, ms (null: none waits);
   * stamped with the engine's clock, so within one tick (tickMs) */
  queuedOldestMs: number | null;
  wantsResources: boolean;
}

export interface SwitchStats {
  total: TrafficCounts;
  pool: PoolStats;
  macTable: { entries: number; capacity: number };
  /** connections refused because maxPorts were attached */
  refusedConnections: number;
  ports: PortStats[];
}

export interface SwitchSettings {
  poolBytes: number;
  blockSize: number;
  holdTimeMs: number;
  unknownPolicy: UnknownPolicy;
  defaultShareLimit: number;
  macAgeMs: number;
  macTableSize: number;
  maxPorts: number;
  queues: number;
  maxFrameLen: number;
}

/** the tick period for a hold time: a quarter of it, 10…1000 ms */
function tickFor(holdTimeMs: number): number {
  return Math.min(1000, Math.max(10, holdTimeMs / 4));
}

/** A setting changed at run time (SIGHUP reload, ctl): worker threads apply the same to theirs. */
export type SettingChange =
  | { kind: 'share'; index: number; blocks: number | undefined }
  | { kind: 'defaultShare'; blocks: number | undefined }
  | { kind: 'hold'; ms: number }
  | { kind: 'unknown'; policy: UnknownPolicy };

export interface MacEntry {
  mac: string;
  index: number;
  isStatic: boolean;
  /** since the MAC was last seen as a source, ms (null for a static MAC: it never ages) */
  ageMs: number | null;
}

export class Switch implements Flooder {
  readonly fifo: ElasticFifo;
  readonly table: MacTable;
  private readonly conns: ConnectionTable;
  private readonly counters: Counters;
  private readonly storeEngine: StoreEngine;
  private readonly monitor: Monitor;
  private readonly unresolvedQueue: number;
  /** RX queues kept apart per connection: connection i's queue for RX queue l is i * lanes + l */
  private readonly lanes: number;
  private defaultShareLimit: number;
  /** tickMs as given (undefined: it follows the hold time) */
  private readonly tickMsGiven: number | undefined;
  private readonly poolBytes: number;
  private readonly clock: () => number;
  private readonly log: Log;
  private timer: NodeJS.Timeout | null;
  /** [now in ms, last MAC-table aging]: cell 0 is shared with the table, store engine and monitor */
  private readonly time = new Float64Array(2);
  /** no timer: read the clock once per batch */
  private readonly clockPerBatch: boolean;
  /** the clock must be read before the next frame (set by flush, only when clockPerBatch) */
  private stale = true;
  private readonly maxFrameLen: number;
  private refusedConnections = 0;
  /** worker threads: what the shared table's change count was when this thread last looked */
  private tableChanges = 0;
  private readonly tableKeeper: boolean;
  private readonly peerCounters: Counters[];
  /** worker threads: the control thread tells the others of connections coming and going */
  onAttach: ((index: number, port: EnginePort, opts: { staticMac?: string; shareLimit: number }) => void) | null = null;
  /** worker threads: a setting changed here (the control thread's switch), for the other threads */
  onSetting: ((change: SettingChange) => void) | null = null;
  onDetach: ((index: number) => void) | null = null;
  /** worker threads: runs after every batch's copies (frames handed to other threads go out) */
  onBatchEnd: (() => void) | null = null;
  /** worker threads: RX queues another thread serves (set by src/workers/shard.ts) */
  get handoff(): Handoff | null {
    return this.monitor.handoff;
  }
  set handoff(h: Handoff | null) {
    this.monitor.handoff = h;
  }
  /** scratch frame for adopt() */
  private readonly adoptFrame: Frame;

  constructor(opts: SwitchOptions = {}) {
    const blockSize = opts.blockSize ?? DEFAULTS.blockSize;
    const poolBytes = opts.poolBytes ?? DEFAULTS.poolMb * MiB;
    const maxPorts = opts.maxPorts ?? DEFAULT_MAX_PORTS;
    this.maxFrameLen = opts.maxFrameLen ?? MAX_FRAME_LEN;
    if (!(this.maxFrameLen >= MIN_FRAME_LEN && this.maxFrameLen <= MAX_FRAME_LEN)) {
      throw new RangeError(`largest frame ${this.maxFrameLen} outside [${MIN_FRAME_LEN}, ${MAX_FRAME_LEN}]`);
    }
    const lanes = opts.queues ?? DEFAULTS.queues;
    if (!(Number.isInteger(lanes) && lanes >= 1 && lanes <= 1024)) throw new RangeError(`queues ${lanes} outside [1, 1024]`);
    this.lanes = lanes;
    this.conns = new ConnectionTable(maxPorts, lanes);
    const shard = opts.shard ?? null;
    this.fifo = new ElasticFifo(poolBytes, blockSize, maxPorts * lanes + 1, lanes, shard === null ? null : shard.fifo);
    this.unresolvedQueue = maxPorts * lanes;
    this.counters = new Counters(maxPorts, shard === null ? null : shard.counters);
    this.tableKeeper = shard === null || shard.tableKeeper;
    this.peerCounters = shard?.peerCounters ?? [];
    this.adoptFrame = new Frame(this.fifo.maxFrameBlocks);
    const blocks = this.fifo.blockCount;
    this.poolBytes = poolBytes;
    this.defaultShareLimit = opts.defaultShareLimit ?? Math.max(1, blocks >>> 1);
    this.storeEngine = new StoreEngine(this.fifo, this.conns, this.counters, opts.unresolvedShareLimit ?? Math.max(1, blocks >>> 2), this.time);
    const holdTimeMs = opts.holdTimeMs ?? DEFAULTS.holdMs;
    this.monitor = new Monitor(this.fifo, this.conns, this.counters, this.storeEngine, this, holdTimeMs, opts.unknownPolicy ?? DEFAULTS.unknown, this.time);
    this.table = shard !== null ? shard.table(this.time) : new MacTable(opts.macTableSize ?? DEFAULTS.macTableSize, opts.macAgeMs ?? DEFAULTS.macAgeS * 1000, this.time);
    if (shard !== null) this.tableChanges = this.table.changes;
    this.clock = opts.clock ?? Date.now;
    this.log = opts.log ?? (() => {});
    this.time[0] = this.clock();
    this.time[1] = this.time[0];
    this.tickMsGiven = opts.tickMs;
    const tickMs = opts.tickMs ?? tickFor(holdTimeMs);
    this.timer = tickMs > 0 ? setInterval(() => this.tick(), tickMs).unref() : null;
    this.clockPerBatch = this.timer === null;
    this.stale = this.clockPerBatch;
  }

  /** Add a port; returns its connection number (worker threads: `at`, the number the control
   * thread gave it). */
  attach(port: EnginePort, opts: AttachOptions = {}, at = -1): number {
    const index = at >= 0 ? (this.conns.ports[at] === null ? at : -1) : this.conns.freeIndex();
    if (index < 0) {
      this.refusedConnections++;
      throw new Error(`switch full: ${this.conns.maxPorts} connections (--max-ports)`);
    }
    this.conns.add(index, port, opts.shareLimit ?? this.defaultShareLimit);
    this.counters.resetPort(index);
    if (this.onAttach !== null) this.onAttach(index, port, { staticMac: opts.staticMac, shareLimit: this.conns.shareLimit[index] });
    this.log(`attach ${port.name} as connection ${index}`, { port: port.name, connection: index });
    if (opts.staticMac !== undefined) this.setStaticMac(index, opts.staticMac);
    return index;
  }

  /** Remove a port: its queued blocks return to the pool at once (counted as drops), its MACs are
   * forgotten; unresolved frames it sent stay held. */
  detach(index: number): void {
    const port = this.portAt(index);
    const fifo = this.fifo;
    const dropped = fifo.clearGroup(index);
    this.counters.add(index, DROP_DETACHED, dropped);
    if (this.tableKeeper) this.table.removePort(index);
    const q = this.unresolvedQueue;
    for (let f = fifo.qHead[q]; f !== -1; f = fifo.frameNext[f]) if (fifo.frameSrc[f] === index) fifo.frameSrc[f] = -1;
    this.conns.remove(index);
    if (this.onDetach !== null) this.onDetach(index);
    this.log(`detach ${port.name} (connection ${index}), ${dropped} queued frames dropped`, { port: port.name, connection: index, dropped });
  }

  /** Set (or with null clear) a port's static MAC. Frames held for that MAC move to its queue. */
  setStaticMac(index: number, mac: string | null): void {
    this.portAt(index);
    const old = this.conns.staticKey[index];
    if (old >= 0 && this.tableKeeper) this.table.remove(keyHi(old), keyLo(old));
    this.conns.staticKey[index] = -1;
    if (mac === null) return;
    const key = parseMac(mac);
    const hi = keyHi(key);
    const lo = keyLo(key);
    if (isGroupHi(hi)) throw new Error(`static MAC ${mac} is a group address`);
    if (this.tableKeeper && !this.table.setStatic(hi, lo, index)) throw new Error('MAC table full');
    this.conns.staticKey[index] = key;
    this.resolveTo(hi, lo, index);
    copies.run();
    this.conns.flushOne(index);
  }

  /**
   * A MAC that lies behind connection index (an uplink's configured remote MAC): known from the
   * start, never ages, no port security (the uplink carries many MACs). Frames held for it move to
   * that connection's queue.
   */
  setRemoteMac(index: number, mac: string): void {
    this.portAt(index);
    const key = parseMac(mac);
    const hi = keyHi(key);
    const lo = keyLo(key);
    if (isGroupHi(hi)) throw new Error(`remote MAC ${mac} is a group address`);
    if (this.tableKeeper && !this.table.setStatic(hi, lo, index)) throw new Error('MAC table full');
    this.resolveTo(hi, lo, index);
    copies.run();
    this.conns.flushOne(index);
  }

  /** A connection's share limit (undefined: the default one). Frames queued beyond it stay. */
  setShareLimit(index: number, blocks: number | undefined): void {
    this.portAt(index);
    this.conns.shareLimit[index] = blocks ?? this.defaultShareLimit;
    this.onSetting?.({ kind: 'share', index, blocks });
  }

  /** The share limit of connections attached without one from now on (undefined: half the pool). */
  setDefaultShareLimit(blocks: number | undefined): void {
    this.defaultShareLimit = blocks ?? Math.max(1, this.fifo.blockCount >>> 1);
    this.onSetting?.({ kind: 'defaultShare', blocks });
  }

  /** Hold time of frames to an unknown MAC from now on; the tick follows it unless tickMs was given. */
  setHoldTime(ms: number): void {
    if (!(Number.isInteger(ms) && ms >= 0)) throw new RangeError(`hold time ${ms} ms`);
    this.monitor.holdTimeMs = ms;
    this.onSetting?.({ kind: 'hold', ms });
    if (this.tickMsGiven !== undefined || this.timer === null) return;
    clearInterval(this.timer);
    this.timer = setInterval(() => this.tick(), tickFor(ms)).unref();
  }

  setUnknownPolicy(policy: UnknownPolicy): void {
    if (policy !== 'flood' && policy !== 'drop') throw new RangeError(`unknown policy ${String(policy)}`);
    this.monitor.unknownPolicy = policy;
    this.onSetting?.({ kind: 'unknown', policy });
  }

  /** What the switch runs with now (defaults filled in). */
  settings(): SwitchSettings {
    return {
      poolBytes: this.poolBytes,
      blockSize: this.fifo.blockSize,
      holdTimeMs: this.monitor.holdTimeMs,
      unknownPolicy: this.monitor.unknownPolicy,
      defaultShareLimit: this.defaultShareLimit,
      macAgeMs: this.table.ageMs,
      macTableSize: this.table.capacity,
      maxPorts: this.conns.maxPorts,
      queues: this.lanes,
      maxFrameLen: this.maxFrameLen,
    };
  }

  /** One frame from connection src. Its copies (to destinations, into the local data store) are
   * recorded and run at flush(); the frame's buffers must stay as they are until then. */
  input(src: number, frame: Frame): void {
    const len = frame.len;
    const buf = frame.eth;
    const off = frame.ethOff;
    if (this.stale) {
      this.time[0] = this.clock();
      this.stale = false;
    }
    const counters = this.counters;
    if (len < MIN_FRAME_LEN || len > this.maxFrameLen) {
      counters.add(src, len > MAX_FRAME_LEN || len < MIN_FRAME_LEN ? DROP_MALFORMED : DROP_TOO_BIG, 1);
      return;
    }
    counters.frame(src, RX_FRAMES, len);
    const sHi = macHi(buf, off + SRC_MAC_OFFSET);
    const sLo = macLo(buf, off + SRC_MAC_OFFSET);
    const staticKey = this.conns.staticKey[src];
    if (staticKey >= 0) {
      if (macKey(sHi, sLo) !== staticKey) {
        counters.add(src, DROP_PORT_SECURITY, 1);
        return;
      }
    } else if (!isGroupHi(sHi)) {
      if (this.table.learn(sHi, sLo, src) === LEARN_NEW) this.learnedNew(sHi, sLo, src, this.table.movedFrom);
    }
    this.forwardOne(src, frame, classify(this.table, buf, off));
  }

  /** A MAC new on connection src (or moved there from `from`, else -1): what was held for it
   * follows it from its old connection, or resolves from the unresolved queue. */
  private learnedNew(hi: number, lo: number, src: number, from: number): void {
    if (from >= 0 && this.fifo.gFrames[from] > 0) this.followTo(hi, lo, from, src);
    if (this.fifo.qFrames[this.unresolvedQueue] > 0) this.resolveTo(hi, lo, src);
  }

  /**
   * A burst from connection src (the data path v2): the same decisions as input() for each entry,
   * taken stage by stage over the whole burst.
   *
   *   classify  per entry in order: length check, port security, learn the source (skipped when it
   *             is the source just learned), look up the destination (a last-destination cache:
   *             one table probe per run of frames to one MAC), and the RX queue it goes to
   *   forward   a run of consecutive entries for one RX queue of one port goes to the port in one
   *             deliverBurst() call when nothing waits for that queue; what it does not take is
   *             stored, in order. Everything else (flood, unknown, another thread's queue, a port
   *             without deliverBurst) goes entry by entry as in input().
   *
   * Order: entries are forwarded in burst order, so order per destination queue is kept as input()
   * keeps it. Learning all sources of a burst before forwarding it changes nothing for frames to
   * other ports (a burst has one source); a frame to a MAC learned later in the same burst is
   * stored and resolved at once, as input() resolved it when it learned the MAC. The differential
   * property test (test/unit/engine-burst.test.ts) holds both paths to the same deliveries and counters.
   */
  inputBurst(src: number, b: Burst): void {
    if (this.stale) {
      this.time[0] = this.clock();
      this.stale = false;
    }
    const counters = this.counters;
    const conns = this.conns;
    const table = this.table;
    const n = b.n;
    const staticKey = conns.staticKey[src];
    // ---- classify (forwarding what was classified before whenever the table changes)
    let lastSrcHi = -1;
    let lastSrcLo = -1;
    let lastDstHi = -1;
    let lastDstLo = -1;
    let lastDest = DESTINATION_UNKNOWN;
    let start = 0;
    for (let i = 0; i < n; i++) {
      const len = b.len[i];
      if (len === 0) {
        b.dest[i] = DEST_NONE;
        continue;
      }
      if (len < MIN_FRAME_LEN || len > this.maxFrameLen) {
        counters.add(src, len > MAX_FRAME_LEN || len < MIN_FRAME_LEN ? DROP_MALFORMED : DROP_TOO_BIG, 1);
        b.dest[i] = DEST_NONE;
        continue;
      }
      counters.frame(src, RX_FRAMES, len);
      const buf = b.eth[i];
      const off = b.ethOff[i];
      const sHi = macHi(buf, off + SRC_MAC_OFFSET);
      const sLo = macLo(buf, off + SRC_MAC_OFFSET);
      if (staticKey >= 0) {
        if (macKey(sHi, sLo) !== staticKey) {
          counters.add(src, DROP_PORT_SECURITY, 1);
          b.dest[i] = DEST_NONE;
          continue;
        }
      } else if ((sHi !== lastSrcHi || sLo !== lastSrcLo) && !isGroupHi(sHi)) {
        lastSrcHi = sHi;
        lastSrcLo = sLo;
        if (table.learn(sHi, sLo, src) === LEARN_NEW) {
          // The table changed (a new MAC, or one that moved here): the frames before this one go
          // first, as input() forwarded them before it learned; then what was held for that MAC
          // follows it or resolves, as input() did at this frame. The last-destination cache
          // starts over.
          const from = table.movedFrom;
          this.forwardRange(src, b, start, i);
          start = i;
          lastDstHi = -1;
          this.learnedNew(sHi, sLo, src, from);
        }
      }
      const dHi = macHi(buf, off + DST_MAC_OFFSET);
      const dLo = macLo(buf, off + DST_MAC_OFFSET);
      let dest: number;
      if (dHi === lastDstHi && dLo === lastDstLo) {
        dest = lastDest;
      } else {
        dest = classify(table, buf, off);
        lastDstHi = dHi;
        lastDstLo = dLo;
        lastDest = dest;
      }
      b.dest[i] = dest;
      b.lane[i] = dest >= 0 && conns.laned[dest] !== 0 ? conns.laneFor(dest, b.point(i)) : 0;
    }
    this.forwardRange(src, b, start, n);
  }

  /** The forward stage over entries [from, to) of a classified burst: runs of one RX queue to the
   * port at once, the rest one by one, in order. */
  private forwardRange(src: number, b: Burst, from: number, to: number): void {
    const counters = this.counters;
    const conns = this.conns;
    const h = this.handoff;
    const lanes = this.lanes;
    let i = from;
    while (i < to) {
      const dest = b.dest[i];
      if (dest === DEST_NONE) {
        i++;
        continue;
      }
      if (dest >= 0 && dest !== src) {
        // worker threads: frames another thread's learning resolved go first (see input())
        if (this.table.shared && this.fifo.qFrames[this.unresolvedQueue] > 0) this.resolveShared();
        const port = conns.ports[dest] as EnginePort;
        const lane = b.lane[i];
        const q = dest * lanes + lane;
        if (port.deliverBurst !== undefined && (h === null || !h.remote(dest, lane)) && this.fifo.qFrames[q] === 0) {
          let j = i + 1;
          while (j < to && b.dest[j] === dest && b.lane[j] === lane) j++;
          const k = port.deliverBurst(b, i, j, lane);
          if (k > 0) {
            let bytes = 0;
            for (let m = i; m < i + k; m++) bytes += b.len[m];
            counters.frames(dest, FAST_FRAMES, k, bytes);
            conns.markDirty(dest);
          }
          // the rest waits, in order, in that queue's elastic FIFO
          for (let m = i + k; m < j; m++) this.hold(dest, lane, q, b.point(m), src);
          i = j;
          continue;
        }
      }
      this.forwardOne(src, b.point(i), dest);
      i++;
    }
  }

  /**
   * The second half for one classified frame (input(), and inputBurst's entries that go one by
   * one): known → forward (same connection: dropped), flood, or unknown → the unresolved queue.
   */
  private forwardOne(src: number, frame: Frame, dest: number): void {
    if (dest === DESTINATION_UNKNOWN) {
      const buf = frame.eth;
      const off = frame.ethOff + DST_MAC_OFFSET;
      const hi = macHi(buf, off);
      const lo = macLo(buf, off);
      this.storeEngine.store(this.unresolvedQueue, frame, src, hi, lo);
      // learned since it was classified (by a later frame of the same burst, or by another
      // thread): resolved now, as the per-frame order would have resolved it on that learn
      const now = this.table.lookup(hi, lo);
      if (now >= 0) this.resolveTo(hi, lo, now);
      return;
    }
    // worker threads: a MAC another thread just learned may have frames held here as unknown; they
    // go first, or this frame would overtake them
    if (dest >= 0 && this.table.shared && this.fifo.qFrames[this.unresolvedQueue] > 0) this.resolveShared();
    if (dest === DESTINATION_FLOOD) this.floodFrom(src, frame);
    else if (dest === src) this.counters.add(src, DROP_SAME_CONNECTION, 1);
    else this.forward(dest, frame, src);
  }

  /** End of a batch: expire held frames if due, run the batch's copies, then let every port
   * delivered to publish and signal. */
  flush(): void {
    if (this.fifo.qFrames[this.unresolvedQueue] > 0) {
      if (this.clockPerBatch) this.time[0] = this.clock();
      this.monitor.expire();
      if (this.table.shared) this.resolveShared();
    }
    this.stale = this.clockPerBatch;
    copies.run();
    this.conns.flushDirty();
    if (this.onBatchEnd !== null) this.onBatchEnd();
  }

  /** Worker threads: another thread learned a MAC; frames held here as unknown for it move on. */
  private resolveShared(): void {
    const c = this.table.changes;
    if (c === this.tableChanges) return;
    this.tableChanges = c;
    if (this.monitor.resolveKnown(this.table) > 0) this.monitor.sweep();
  }

  /**
   * Worker threads: frame `head` of the shared data store, handed over by another thread for queue
   * q (connection × queues + RX queue, an RX queue this thread serves). The second test as for a
   * frame of our own: delivered now if nothing waits on that queue and the port takes it, else
   * queued there (within the connection's share limit; a drop is counted). The caller runs the
   * batch's copies and flushes (endAdopt).
   */
  adopt(q: number, head: number): void {
    const fifo = this.fifo;
    const lanes = this.lanes;
    const dest = (q / lanes) | 0;
    const lane = q - dest * lanes;
    const port = dest < this.conns.maxPorts ? this.conns.ports[dest] : null;
    const len = fifo.frameLen[head];
    if (port === null || q >= this.unresolvedQueue) {
      fifo.release(head);
      this.counters.add(-1, DROP_DETACHED, 1);
      return;
    }
    fifo.frameTime[head] = this.time[0];
    fifo.frameNext[head] = -1;
    if (fifo.qFrames[q] === 0) {
      copies.settle();
      fifo.describe(head, this.adoptFrame);
      if (port.deliver(this.adoptFrame, lane)) {
        fifo.release(head);
        this.counters.frame(dest, FAST_FRAMES, len);
        this.conns.markDirty(dest);
        return;
      }
    }
    if (fifo.gBlocks[dest] + fifo.frameBlocks[head] > this.conns.shareLimit[dest]) {
      fifo.release(head);
      this.counters.add(dest, DROP_SHARE_LIMIT, 1);
      return;
    }
    fifo.push(q, head);
    this.counters.frame(dest, STORED_FRAMES, len);
    this.conns.want(dest, lane, true);
  }

  /** after a run of adopt(): the batch's copies, then the ports delivered to publish and signal */
  endAdopt(): void {
    copies.run();
    this.conns.flushDirty();
    if (this.onBatchEnd !== null) this.onBatchEnd();
  }

  /** The monitor's trigger (a): RX queue `lane` of connection index got RX buffers or its ring
   * (re)started. Delivers the frames waiting for it in order as far as possible and signals the
   * port itself (port.flush()). */
  resourcesAvailable(index: number, lane = 0): void {
    if (this.conns.ports[index] === null || !(lane >= 0 && lane < this.lanes)) return;
    this.monitor.drain(index, lane);
    copies.run();
    this.conns.flushOne(index);
    if (this.onBatchEnd !== null) this.onBatchEnd();
  }

  /** Connection index's set of RX queues changed (a multiqueue guest enabled or disabled some):
   * the frames held for it move to the queue each goes to now, in order per flow, and are
   * delivered as far as possible. */
  queuesChanged(index: number): void {
    if (this.conns.ports[index] === null) return;
    if (this.monitor.respread(index) > 0) this.monitor.drainAll(index);
    copies.run();
    this.conns.flushOne(index);
    if (this.onBatchEnd !== null) this.onBatchEnd();
  }

  /** Periodic work (also run by the internal timer): hold-time expiry, MAC aging, lost-kick sweep. */
  tick(): void {
    const now = this.clock();
    this.time[0] = now;
    this.monitor.expire();
    if (this.table.shared) this.resolveShared();
    if (now - this.time[1] >= this.table.ageMs / 4) {
      this.time[1] = now;
      if (this.tableKeeper) this.table.expire();
    }
    this.monitor.sweep();
    copies.run();
    this.conns.flushDirty();
    if (this.onBatchEnd !== null) this.onBatchEnd();
  }

  /** Stop the timer. Queued frames stay until detach. */
  close(): void {
    if (this.timer !== null) clearInterval(this.timer);
  }

  // ---- the second test, fast path or store (also used by the monitor to flood expired frames)

  /** Flood: every connection but src, each its own destination. */
  floodFrom(src: number, frame: Frame): void {
    const conns = this.conns;
    for (let k = 0; k < conns.attachedCount; k++) {
      const dest = conns.attached[k];
      if (dest !== src) this.forward(dest, frame, src);
    }
  }

  private forward(dest: number, frame: Frame, src: number): void {
    const conns = this.conns;
    const lane = conns.laneFor(dest, frame);
    const q = dest * this.lanes + lane;
    const h = this.handoff;
    if (h !== null && h.remote(dest, lane)) {
      // another thread serves that RX queue: handed over (one copy, into the shared store)
      if (this.fifo.qFrames[q] === 0 && h.send(dest, lane, frame)) {
        this.counters.frame(dest, HANDED_FRAMES, frame.len);
        return;
      }
    } else if (this.fifo.qFrames[q] === 0 && (conns.ports[dest] as EnginePort).deliver(frame, lane)) {
      // frames already waiting make the resources count as unavailable: order per destination queue
      this.counters.frame(dest, FAST_FRAMES, frame.len);
      conns.markDirty(dest);
      return;
    }
    this.hold(dest, lane, q, frame, src);
  }

  /** The store engine's branch for a known destination: frame waits in queue q (dest's RX queue lane). */
  private hold(dest: number, lane: number, q: number, frame: Frame, src: number): void {
    // the destination MAC goes with it: should that MAC move to another connection (a migrated
    // VM announcing itself on its new port), the frame follows it there
    const buf = frame.eth;
    const off = frame.ethOff + DST_MAC_OFFSET;
    if (this.storeEngine.store(q, frame, src, macHi(buf, off), macLo(buf, off))) this.conns.want(dest, lane, true);
  }

  /** MAC hi/lo moved from connection `from` to `to`: what was held for it there follows it. */
  private followTo(hi: number, lo: number, from: number, to: number): void {
    const n = this.monitor.follow(macKey(hi, lo), from, to);
    if (n > 0) {
      this.log(`${formatMac(macKey(hi, lo))} moved from connection ${from} to ${to}: ${n} held frames follow it`, { mac: formatMac(macKey(hi, lo)), from, connection: to, frames: n });
      this.monitor.drainAll(to);
    }
  }

  private resolveTo(hi: number, lo: number, index: number): void {
    if (this.fifo.qFrames[this.unresolvedQueue] === 0) return;
    if (this.monitor.resolve(hi, lo, index) > 0) this.monitor.drainAll(index);
  }

  private portAt(index: number): EnginePort {
    const port = index >= 0 && index < this.conns.maxPorts ? this.conns.ports[index] : null;
    if (port === null) throw new Error(`no connection ${index}`);
    return port;
  }

  // ---- control path

  stats(): SwitchStats {
    const fifo = this.fifo;
    const conns = this.conns;
    const now = this.clock();
    const ageOf = (t: number): number | null => (Number.isNaN(t) ? null : Math.max(0, now - t));
    const perQueue = (i: number): number[] => {
      const out: number[] = [];
      for (let l = 0; l < this.lanes; l++) out.push(fifo.qFrames[i * this.lanes + l]);
      while (out.length > 0 && out[out.length - 1] === 0) out.pop();
      return out;
    };
    const ports: PortStats[] = [];
    for (let k = 0; k < conns.attachedCount; k++) {
      const i = conns.attached[k];
      const key = conns.staticKey[i];
      ports.push({
        index: i,
        name: (conns.ports[i] as EnginePort).name,
        staticMac: key >= 0 ? formatMac(key) : null,
        shareLimit: conns.shareLimit[i],
        queuedFrames: fifo.gFrames[i],
        queuedBlocks: fifo.gBlocks[i],
        queuedPerQueue: perQueue(i),
        queuedOldestMs: ageOf(fifo.groupHeadTime(i)),
        wantsResources: conns.wantingAny(i),
        ...this.counters.snapshot(i, this.peerCounters),
      });
    }
    ports.sort((a, b) => a.index - b.index);
    return {
      total: this.counters.snapshot(-1, this.peerCounters),
      pool: {
        blockSize: fifo.blockSize,
        blocks: fifo.blockCount,
        blocksFree: fifo.freeBlocks,
        blocksInUse: fifo.blocksInUse,
        highWater: fifo.highWater,
        blocksTaken: fifo.blocksTaken,
        blocksReturned: fifo.blocksReturned,
        unresolvedFrames: fifo.qFrames[this.unresolvedQueue],
        unresolvedBlocks: fifo.qBlocks[this.unresolvedQueue],
        unresolvedOldestMs: ageOf(fifo.headTime(this.unresolvedQueue)),
      },
      macTable: { entries: this.table.size, capacity: this.table.capacity },
      refusedConnections: this.refusedConnections,
      ports,
    };
  }

  macEntries(): MacEntry[] {
    const out: MacEntry[] = [];
    const now = this.clock();
    for (const e of this.table.entriesOf()) {
      out.push({ mac: formatMac(e.key), index: e.port, isStatic: e.isStatic, ageMs: e.isStatic ? null : Math.max(0, now - e.seen) });
    }
    return out;
  }

  /** Throws if the elastic FIFO's bookkeeping is broken (tests; cheap enough for a debug command). */
  checkInvariants(): void {
    const problem = this.fifo.checkInvariants();
    if (problem !== null) throw new Error(`elastic FIFO invariant: ${problem}`);
  }
}
