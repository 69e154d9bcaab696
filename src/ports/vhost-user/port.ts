// A vhost-user connection as a switch port: it composes the TX side (guest → engine), the RX side
// (engine → guest) and the offload fallback, and follows the session's events.
//
//   guest TX ring ──kick / poll──► VhostTx.take() ──► Switch.input() … Switch.flush() ──► TX used published
//   Switch ──deliver(frame, lane)──► [OffloadFallback] ──► VhostRx of RX queue `lane`
//          (reserve, header, copies recorded) ──flush()──► RX used published, call signalled
//          (once per batch, per RX queue delivered to)
//
// Multiqueue: each RX queue pair has its own VhostRx. laneFor() spreads frames over the RX queues
// the guest has enabled: a frame sent on TX queue k of a multiqueue sender goes to RX queue k when
// that is enabled here, any other by its flow hash (src/datapath/flow-hash.ts), so a flow stays on
// one queue. The set laneFor() uses changes only at one point (applyLanes, deferred out of any
// engine call), where the switch is told and spreads the frames it holds for us again.
//
// Neither side calls back into the port; scheduling (budget, polling, RX re-checks) is here.
import { native } from '../../native';
import type { EnginePort } from '../../engine/port';
import { Frame } from '../../datapath/frame';
import { SHAPE_PLAIN, type Burst } from '../../datapath/burst';
import { ETH_HDR_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_TYPE, ENGINE_HDR_LEN, HDR_CSUM_OFFSET, HDR_CSUM_START, HDR_FLAGS, HDR_GSO_SIZE, HDR_GSO_TYPE, HDR_HDR_LEN, HDR_NUM_BUFFERS } from '../../datapath/layout';
import { Session, SessionDevice, SessionOptions } from '../../vhost-user/session';
import { Connection } from '../../vhost-user/connection';
import { Log, withFields } from '../../log';
import type { Virtqueue } from '../../virtio/virtqueue';
import { DEFAULT_NET_CONFIG, NetConfig } from '../../virtio/net-config';
import type { GuestMemory } from '../../memory/guest-memory';
import { VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE } from '../../virtio/net-header';
import { offloadNeeds, RX_CSUM, VIRTIO_NET_HDR_GSO_ECN } from '../../virtio/offload';
import { EngineApi, PortAttachOptions } from '../engine-api';
import { OffloadFallback, FALLBACK_DROPPED, PacketSink } from '../offload-fallback';
import { PollLoop, Pollable } from '../poll-loop';
import { Pieces, RES_BAD, RES_BROKEN, RES_BUDGET, RES_OK, RES_TOO_BIG, VhostRx } from './rx';
import { VhostTx } from './tx';
import { copies } from '../../datapath/copy-list';
import type { FrameCapture } from '../../datapath/capture';
import { flowHash } from '../../datapath/flow-hash';

/** an 802.1Q / 802.1ad tag */
const VLAN_TAG_LEN = 4;

/** TX chains processed per batch before yielding to the event loop. */
export const TX_BUDGET = 256;

/** queue pairs a port can spread over (the command line's most, MOST_QUEUE_PAIRS) */
const MAX_PAIRS = 128;

/** Least time between two re-spreads of one port's held frames: a guest that toggles its queues
 * (SET_VRING_ENABLE) without pause costs the shared loop at most one re-spread per this many ms. */
export const RESPREAD_MIN_MS = 20;

export interface PortCounters {
  txFrames: number;
  txBytes: number;
  txDropped: number;
  rxFrames: number;
  rxBytes: number;
  rxTooBig: number;
  rxNoBuffers: number;
  brokenRings: number;
  /** frames from the guest with a bad or unnegotiated offload header (also counted in txDropped) */
  txBadOffload: number;
  /** frames whose partial checksum was completed for this guest (no GUEST_CSUM) */
  rxChecksummed: number;
  /** GSO frames segmented for this guest (no GUEST_TSO4/6/ECN); their segments count in rxFrames */
  rxSegmented: number;
  /** offload frames the fallback could not handle (headers it does not segment, too many segments) */
  rxOffloadDropped: number;
  /** frames dropped because a copy range was refused (a bug or a hostile buffer layout) */
  rxBadRange: number;
  /** frames the guest sent on a started but disabled TX ring: processed and discarded (the spec) */
  txDisabledDropped: number;
  /** non-GSO frames longer than this guest's MTU (NET_SET_MTU with VIRTIO_NET_F_MTU): not delivered */
  rxOverMtu: number;
  /** times the set of enabled RX queues changed (the frames held for the port spread again) */
  rxQueueChanges: number;
  /** descriptors (segments) walked in RX / TX chains */
  rxDescWalked: number;
  txDescWalked: number;
  /** turns an RX queue / a TX batch stopped early at its descriptor budget (RX_DESC_BUDGET, TX_DESC_BUDGET) */
  rxDescBudgetHits: number;
  txDescBudgetHits: number;
}

export interface VhostUserPortOptions extends PortAttachOptions {
  name: string;
  log: Log;
  session?: Partial<SessionOptions>;
  /** adaptive polling: the loop the TX rings are polled by after a batch (none: event mode) */
  pollLoop?: PollLoop | null;
  /** worker threads (src/workers/): which queue pairs this thread serves, and the shared state */
  threads?: PortThreads | null;
}

/** What the rings' data path reports to: the session (control thread), or a worker thread's ring host. */
export interface RingHost {
  internalError(where: string, e: unknown): void;
  ringBroken(ring: Virtqueue): void;
}

/** The PortCounters fields in a fixed order: a worker thread's counters of a port live in a
 * shared Float64Array row in this order, which the control thread adds to its own. */
export const PORT_COUNTER_KEYS: readonly (keyof PortCounters)[] = [
  'txFrames', 'txBytes', 'txDropped', 'rxFrames', 'rxBytes', 'rxTooBig', 'rxNoBuffers', 'brokenRings', 'txBadOffload',
  'rxChecksummed', 'rxSegmented', 'rxOffloadDropped', 'rxBadRange', 'txDisabledDropped', 'rxOverMtu', 'rxQueueChanges',
  'rxDescWalked', 'txDescWalked', 'rxDescBudgetHits', 'txDescBudgetHits',
];

/** A connection's state shared by the data-plane threads (worker threads). */
export interface PortSharedViews {
  /** RX queue pairs frames are spread over, ascending (the control thread writes them) */
  laneSet: Int32Array;
  laneHas: Uint8Array;
  /** [RX queues in laneSet, guest sends on several TX queues (1/0), version (bumped on a change)] */
  laneCell: Int32Array;
}

/** Worker threads: the queue pairs of a connection are spread over the data-plane threads. */
export interface PortThreads {
  /** this thread serves queue pair `pair` of connection `index` */
  serves(index: number, pair: number): boolean;
  shared(index: number): PortSharedViews;
  /** the control thread: ring events of queue pairs another thread serves go there */
  forward: RingForward | null;
  /** the control thread: the other threads' counters of connection index (PORT_COUNTER_KEYS rows; per-queue frames) */
  peerCounters(index: number): { port: Float64Array; rxq: Float64Array; txq: Float64Array }[];
}

/** The control thread's side of the rings another thread serves (src/workers/pool.ts). */
export interface RingForward {
  connected(index: number, port: VhostUserPort): void;
  disconnected(index: number): void;
  features(index: number, cfg: NetConfig): void;
  mtu(index: number, mtu: number): void;
  memory(index: number, mem: GuestMemory): void;
  /** the ring's state changed (started enabled/disabled), as the session told it */
  started(index: number, q: Virtqueue): void;
  /** the ring stopped: returns once the serving thread stopped it, with q's base brought up to date */
  stopped(index: number, q: Virtqueue): void;
  kick(index: number, q: Virtqueue): void;
  kickFd(index: number, q: Virtqueue, fd: number): void;
  /** the base the serving thread answered for q's last stop (null: nothing to wait for) */
  stopReply(index: number, q: Virtqueue): Promise<number> | null;
  /** q's call or err eventfd changed: the serving thread signals q.callFd / q.errFd from now on */
  notifyFds(index: number, q: Virtqueue): void;
}

const writeEventfd = (fd: number): void => {
  try {
    native.eventfdWrite(fd, 1);
  } catch {
    /* the front-end closed it; it will tell us on the socket */
  }
};

/** One TX ring as something the poll loop can poll. */
class TxPoller implements Pollable {
  /** in the poll loop now: the loop, not kicks, decides when notifications come back */
  polled = false;
  constructor(private readonly port: VhostUserPort, readonly ring: Virtqueue) {}
  pollOnce(): boolean {
    return this.port.pollTx(this.ring);
  }
  hasWork(): boolean {
    return this.port.processing(this.ring) && this.ring.availCount() !== 0;
  }
  pollEnd(): boolean {
    const keep = this.port.endPollTx(this.ring);
    if (!keep) this.polled = false;
    return keep;
  }
}

export class VhostUserPort implements EnginePort, SessionDevice, PacketSink {
  readonly name: string;
  session: Session | null = null;
  /** connection number in the switch while a front-end is connected, else -1 */
  index = -1;
  readonly counters: PortCounters = {
    txFrames: 0,
    txBytes: 0,
    txDropped: 0,
    rxFrames: 0,
    rxBytes: 0,
    rxTooBig: 0,
    rxNoBuffers: 0,
    brokenRings: 0,
    txBadOffload: 0,
    rxChecksummed: 0,
    rxSegmented: 0,
    rxOffloadDropped: 0,
    rxBadRange: 0,
    txDisabledDropped: 0,
    rxOverMtu: 0,
    rxQueueChanges: 0,
    rxDescWalked: 0,
    txDescWalked: 0,
    rxDescBudgetHits: 0,
    txDescBudgetHits: 0,
  };

  private readonly tx = new VhostTx(this.counters);
  /** the RX side of each queue pair (created when its RX ring is first seen) */
  private readonly rxs: (VhostRx | null)[] = new Array<VhostRx | null>(MAX_PAIRS).fill(null);
  /** the one deliver() is writing to now (the offload fallback writes through the port) */
  private rx: VhostRx;
  /** frames written to each RX queue pair / chains taken from each TX queue pair (kept across reconnects, as the counters are) */
  readonly rxQueueFrames = new Float64Array(MAX_PAIRS);
  readonly txQueueFrames = new Float64Array(MAX_PAIRS);
  /** the RX queue pairs laneFor() spreads over (enabled RX rings), ascending; laneHas[p] = p is one
   * (worker threads: shared, written by the control thread) */
  private laneSet: Int32Array = new Int32Array(MAX_PAIRS);
  private laneHas: Uint8Array = new Uint8Array(MAX_PAIRS);
  /** [RX queues in laneSet, several TX queues (1/0), version] */
  private laneCell: Int32Array = new Int32Array(3);
  private get laneCount(): number {
    return this.laneCell[0];
  }
  private set laneCount(n: number) {
    this.laneCell[0] = n;
  }
  /** the session (control thread) or a worker thread's ring host */
  host: RingHost | null = null;
  private readonly threads: PortThreads | null;
  private lanesScheduled = false;
  /** when the RX queue set last took effect (performance.now(), ms) */
  private lanesAppliedAt = -Infinity;
  /** the guest sends on more than one TX queue: frames carry their TX queue pair */
  private get txMulti(): boolean {
    return this.laneCell[1] !== 0;
  }
  private set txMulti(on: boolean) {
    this.laneCell[1] = on ? 1 : 0;
  }
  /** RX queue pairs delivered to since the last flush */
  private readonly rxDirty = new Uint8Array(MAX_PAIRS);
  private readonly rxDirtyList = new Int32Array(MAX_PAIRS);
  private rxDirtyCount = 0;
  /** per RX queue pair: the engine holds frames for it (wantResources) */
  private readonly wantRx = new Uint8Array(MAX_PAIRS);
  /** per RX queue pair: an RX check is scheduled */
  private readonly rxCheckLane = new Uint8Array(MAX_PAIRS);
  private readonly fallback = new OffloadFallback(this.counters);
  private readonly pieces = new Pieces();
  /** the header written to this guest (10 bytes used; num_buffers is the RX side's) */
  private readonly rxHdr = new Uint8Array(ENGINE_HDR_LEN);
  /** RX_* bits the guest takes as is (GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN) */
  private rxOffload = 0;
  /** RX_* bits the guest may send (CSUM, HOST_TSO4/6, HOST_ECN) */
  private txOffload = 0;
  private hdrLen = 12;
  /** longest non-GSO Ethernet frame this guest takes (its MTU + header), 0: no MTU given */
  private maxEthLen = 0;
  private rxCheckScheduled = false;
  /** the RX queue pair of this.rx */
  private rxLane = 0;
  private readonly txPending: boolean[] = [];
  private txScheduled = false;
  private readonly txPollers: (TxPoller | null)[] = [];
  /** the started queues by index (enabled or not), as the session's events say */
  private readonly queues: (Virtqueue | null)[] = new Array<Virtqueue | null>(2 * MAX_PAIRS).fill(null);
  /** every ring started since the front-end connected, stopped or not (its enabled flag is read) */
  private readonly seen: (Virtqueue | null)[] = new Array<Virtqueue | null>(2 * MAX_PAIRS).fill(null);
  private cfg: NetConfig = DEFAULT_NET_CONFIG;
  private mem: GuestMemory | null = null;
  private readonly pollLoop: PollLoop | null;
  private readonly log: Log;
  /** the session's and connection's log: every event names this port and its connection */
  private readonly sessionLog: Log;
  /** SEND_RARP's frame (control path) */
  private readonly rarpBytes = new Uint8Array(ENGINE_HDR_LEN + 60);
  private rarpArea = 0;
  private readonly rarpFrame = new Frame();
  /** most local-data-store blocks frames waiting for this port may hold, from the next attach on
   * (undefined: the switch's default); a reload changes it, and the attached connection's too */
  shareLimit: number | undefined;
  /** called when the session ends (server/client code uses it to accept or reconnect) */
  onSessionEnd: (reason: string | null) => void = () => {};

  private readonly rxCheck = (): void => {
    this.rxCheckScheduled = false;
    try {
      for (let l = 0; l < MAX_PAIRS; l++) {
        if (this.rxCheckLane[l] === 0) continue;
        this.rxCheckLane[l] = 0;
        const rx = this.rxs[l];
        if (rx !== null) rx.newTurn();
        if (this.index >= 0 && rx !== null && rx.usable()) this.sw.resourcesAvailable(this.index, l);
      }
    } catch (e) {
      this.host?.internalError('RX delivery', e);
    }
  };

  private readonly lanesApply = (): void => {
    this.lanesScheduled = false;
    try {
      this.applyLanes();
    } catch (e) {
      this.host?.internalError('RX queue change', e);
    }
  };

  private readonly txResume = (): void => {
    this.txScheduled = false;
    const s = this.host;
    if (!s) return;
    try {
      for (let i = 1; i < this.queues.length; i += 2) {
        const q = this.queues[i];
        if (this.txPending[i]) {
          this.txPending[i] = false;
          if (q) this.processTx(q);
        }
      }
    } catch (e) {
      s.internalError('TX processing', e);
    }
  };

  constructor(private readonly sw: EngineApi, private readonly opts: VhostUserPortOptions) {
    this.name = opts.name;
    this.log = opts.log;
    this.sessionLog = withFields(opts.log, () => (this.index >= 0 ? { port: this.name, connection: this.index } : { port: this.name }));
    this.pollLoop = opts.pollLoop ?? null;
    this.threads = opts.threads ?? null;
    this.shareLimit = opts.shareLimit;
    this.rx = this.rxOf(0);
  }

  private rxOf(pair: number): VhostRx {
    let rx = this.rxs[pair];
    if (rx === null) {
      rx = new VhostRx(this.counters);
      rx.hdrLen = this.hdrLen;
      rx.mrg = this.cfg.mergeableRx;
      rx.mem = this.mem;
      rx.capture = this.tx.capture;
      this.rxs[pair] = rx;
    }
    return rx;
  }

  /** frames per queue pair, RX (written to the guest) and TX (taken from it), up to the last used one */
  queueFrames(): { rx: number[]; tx: number[] } {
    const trim = (a: Float64Array): number[] => {
      let n = a.length;
      while (n > 0 && a[n - 1] === 0) n--;
      return Array.from(a.subarray(0, n));
    };
    if (this.threads === null || this.index < 0) return { rx: trim(this.rxQueueFrames), tx: trim(this.txQueueFrames) };
    const rx = new Float64Array(this.rxQueueFrames);
    const tx = new Float64Array(this.txQueueFrames);
    for (const row of this.threads.peerCounters(this.index)) {
      for (let p = 0; p < MAX_PAIRS; p++) {
        rx[p] += row.rxq[p];
        tx[p] += row.txq[p];
      }
    }
    return { rx: trim(rx), tx: trim(tx) };
  }

  get connected(): boolean {
    return this.host !== null;
  }

  /** this thread serves queue pair `pair` (always, without worker threads) */
  private serves(pair: number): boolean {
    return this.threads === null || this.threads.serves(this.index, pair);
  }

  stopAnswer(q: Virtqueue): Promise<number> | null {
    return this.forwarded(q)?.stopReply(this.index, q) ?? null;
  }

  notifyFdsChanged(q: Virtqueue): void {
    this.forwarded(q)?.notifyFds(this.index, q);
  }

  /** ring events of queue pairs another thread serves go to it (control thread, worker threads) */
  private forwarded(q: Virtqueue): RingForward | null {
    const t = this.threads;
    if (t === null || t.forward === null || this.index < 0) return null;
    return t.serves(this.index, q.index >> 1) ? null : t.forward;
  }

  /** worker threads: the lane state of this connection is the shared one */
  private useShared(index: number): void {
    if (this.threads === null) return;
    const v = this.threads.shared(index);
    this.laneSet = v.laneSet;
    this.laneHas = v.laneHas;
    this.laneCell = v.laneCell;
  }

  /** The counters with those the other data-plane threads counted for this port added. */
  allCounters(): PortCounters {
    const c = { ...this.counters };
    if (this.threads === null || this.index < 0) return c;
    for (const row of this.threads.peerCounters(this.index)) {
      for (let k = 0; k < PORT_COUNTER_KEYS.length; k++) c[PORT_COUNTER_KEYS[k]] += row.port[k];
    }
    return c;
  }

  /** Worker threads: copies the counters into a shared row (PORT_COUNTER_KEYS order). */
  writeCounters(row: Float64Array): void {
    const c = this.counters;
    for (let k = 0; k < PORT_COUNTER_KEYS.length; k++) row[k] = c[PORT_COUNTER_KEYS[k]];
  }

  /** packets one reservation may hold: the RX ring deliver() is writing to now */
  get maxPackets(): number {
    const r = this.rx.ring;
    return r === null ? 0 : r.num;
  }

  /** Takes over a connected socket fd: one front-end at a time. */
  bind(fd: number): void {
    if (this.session) throw new Error(`${this.name}: a front-end is already connected`);
    try {
      this.index = this.sw.attach(this, { staticMac: this.opts.staticMac, shareLimit: this.shareLimit });
    } catch (e) {
      // a limit of the switch (--max-ports): this front-end is refused, counted by the switch
      native.close(fd);
      this.log(`${this.name}: error: front-end refused: ${(e as Error).message}`, { level: 'error', port: this.name });
      return;
    }
    const conn = new Connection(fd, this.name, this.sessionLog);
    this.useShared(this.index);
    this.session = new Session(conn, this, { ...this.opts.session, name: this.name, log: this.sessionLog });
    this.host = this.session;
    for (const rx of this.rxs) if (rx) rx.ring = null;
    this.wantRx.fill(0);
    this.laneCount = 0;
    this.laneHas.fill(0);
    this.txMulti = false;
    this.threads?.forward?.connected(this.index, this);
    conn.start();
    this.sessionLog(`${this.name}: front-end connected`);
  }

  close(): void {
    this.session?.close();
  }

  /** Packet capture on (both directions: TX as taken from the guest, RX as written to it) or off. */
  setCapture(capture: FrameCapture | null): void {
    this.tx.capture = capture;
    for (const rx of this.rxs) if (rx) rx.capture = capture;
  }

  // ---- SessionDevice: the session's one-way events ----

  featuresNegotiated(cfg: NetConfig): void {
    this.cfg = cfg;
    this.hdrLen = cfg.hdrLen;
    for (const rx of this.rxs) {
      if (!rx) continue;
      rx.hdrLen = cfg.hdrLen;
      rx.mrg = cfg.mergeableRx;
    }
    this.rxOffload = cfg.rxOffload;
    this.txOffload = cfg.txOffload;
    if (this.threads?.forward && this.index >= 0) this.threads.forward.features(this.index, cfg);
  }

  mtuChanged(mtu: number): void {
    this.maxEthLen = mtu > 0 ? mtu + ETH_HDR_LEN : 0;
    if (this.threads?.forward && this.index >= 0) this.threads.forward.mtu(this.index, mtu);
  }

  memoryChanged(mem: GuestMemory): void {
    this.mem = mem;
    for (const rx of this.rxs) if (rx) rx.mem = mem;
    if (this.threads?.forward && this.index >= 0) this.threads.forward.memory(this.index, mem);
  }

  watchKick(q: Virtqueue, fd: number): boolean {
    const f = this.forwarded(q);
    if (f === null) return false;
    f.kickFd(this.index, q, fd);
    return true;
  }

  /**
   * Worker threads: this thread serves some of connection index's queue pairs; `host` (the
   * thread's ring host) stands where the session is on the control thread. attach() was done by
   * the caller with this index.
   */
  attachHere(index: number, host: RingHost): void {
    this.index = index;
    this.host = host;
    this.useShared(index);
    for (const rx of this.rxs) if (rx) rx.ring = null;
    this.wantRx.fill(0);
  }

  ringStarted(q: Virtqueue): void {
    if (q.index >= 2 * MAX_PAIRS) return;
    const f = this.forwarded(q);
    if (f !== null) {
      // another thread serves this queue pair: it gets the ring, this thread keeps the spread
      this.seen[q.index] = q;
      f.started(this.index, q);
      this.queueSetChanged();
      return;
    }
    this.queues[q.index] = q;
    this.seen[q.index] = q;
    if (q.index & 1) {
      // A TX ring (re)started: frames may already be waiting in it.
      this.txPending[q.index] = true;
      this.scheduleTx();
    } else {
      this.rxRingChanged(q.index >> 1);
    }
    this.queueSetChanged();
  }

  ringStopped(q: Virtqueue): void {
    if (q.index >= 2 * MAX_PAIRS) return;
    const f = this.forwarded(q);
    if (f !== null) {
      f.stopped(this.index, q);
      this.queueSetChanged();
      return;
    }
    this.queues[q.index] = null;
    if (q.index & 1) this.stopPolling(q);
    else this.rxRingChanged(q.index >> 1);
    this.queueSetChanged();
  }

  ringBroken(_q: Virtqueue, _reason: string): void {
    this.counters.brokenRings++;
  }

  kick(q: Virtqueue): void {
    const f = this.forwarded(q);
    if (f !== null) f.kick(this.index, q);
    else if (q.index & 1) this.processTx(q);
    else if (this.index >= 0) {
      const l = q.index >> 1;
      const rx = this.rxs[l];
      if (rx !== null && q === rx.ring) {
        rx.newTurn();
        this.sw.resourcesAvailable(this.index, l);
      }
    }
  }

  /** RX queue pair l's ring changed state: delivered to while it is usable (started, enabled, ready). */
  private rxRingChanged(l: number): void {
    if (l >= MAX_PAIRS) return;
    const rx = this.rxOf(l);
    const q = this.queues[2 * l];
    const ring = q && q.usable ? q : null;
    if (ring !== rx.ring) {
      // used entries of the old ring go out now (their copies first)
      copies.run();
      rx.flush(writeEventfd);
      rx.ring = ring;
    }
    if (ring && this.wantRx[l] !== 0) ring.enableNotify();
    if (rx.usable()) this.scheduleRxCheck(l);
  }

  /**
   * The rings' states changed: work out again which RX queues frames are spread over (the enabled
   * RX rings, started or stopped: a paused guest keeps its spread) and whether the guest sends on
   * several TX queues. A new RX set takes effect in applyLanes(), outside any engine call.
   */
  private queueSetChanged(): void {
    // worker threads: the control thread sees every ring and works the spread out for all
    if (this.threads !== null && this.threads.forward === null) return;
    let tx = 0;
    let changed = false;
    let n = 0;
    for (let l = 0; l < MAX_PAIRS; l++) {
      const r = this.seen[2 * l];
      const on = r !== null && r.enabled;
      if (on) n++;
      if ((on ? 1 : 0) !== this.laneHas[l]) changed = true;
      const t = this.queues[2 * l + 1];
      if (t !== null && t.enabled) tx++;
    }
    this.txMulti = tx > 1;
    if (n !== this.laneCount) changed = true;
    if (changed && !this.lanesScheduled) {
      this.lanesScheduled = true;
      const wait = this.lanesAppliedAt + RESPREAD_MIN_MS - performance.now();
      if (wait <= 0) setImmediate(this.lanesApply);
      else setTimeout(this.lanesApply, wait).unref();
    }
  }

  /** Makes the current enabled RX set the one laneFor() spreads over; the switch re-spreads what it holds. */
  private applyLanes(): void {
    let n = 0;
    let changed = false;
    for (let l = 0; l < MAX_PAIRS; l++) {
      const r = this.seen[2 * l];
      const on = r !== null && r.enabled ? 1 : 0;
      if (on !== this.laneHas[l]) changed = true;
      this.laneHas[l] = on;
      if (on) this.laneSet[n++] = l;
    }
    this.laneCount = n;
    if (changed) Atomics.add(this.laneCell, 2, 1); // worker threads spread what they hold again
    if (changed && this.index >= 0) {
      this.lanesAppliedAt = performance.now();
      this.counters.rxQueueChanges++;
      this.sessionLog(`${this.name}: frames spread over ${n} RX queue${n === 1 ? '' : 's'}`, { rxQueues: n });
      this.sw.queuesChanged(this.index);
    }
  }

  rarp(mac: Uint8Array): void {
    if (this.index < 0) return;
    // RARP "reverse request" broadcast from mac, as QEMU's own announce does after migration.
    const f = this.rarpBytes;
    f.fill(0);
    const e = ENGINE_HDR_LEN;
    f.fill(0xff, e, e + 6);
    f.set(mac, e + 6);
    f[e + 12] = 0x80;
    f[e + 13] = 0x35;
    const a = e + 14;
    f[a + 1] = 1; // htype Ethernet
    f[a + 2] = 0x08; // ptype IPv4
    f[a + 4] = 6;
    f[a + 5] = 4;
    f[a + 7] = 3; // reverse request
    f.set(mac, a + 8);
    f.set(mac, a + 18);
    if (this.rarpArea === 0) this.rarpArea = copies.register(f);
    this.rarpFrame.setBytes(this.rarpArea, f, 0, f.length);
    this.sw.input(this.index, this.rarpFrame);
    this.sw.flush();
  }

  disconnected(reason: string | null): void {
    for (let i = 0; i < this.txPollers.length; i++) {
      const p = this.txPollers[i];
      if (p) this.pollLoop?.drop(p);
      this.txPollers[i] = null;
    }
    if (this.index >= 0) {
      this.threads?.forward?.disconnected(this.index);
      this.sw.detach(this.index);
    }
    this.index = -1;
    this.session = null;
    this.host = null;
    for (const rx of this.rxs) {
      if (!rx) continue;
      rx.ring = null;
      rx.mem = null;
    }
    this.mem = null;
    this.queues.fill(null);
    this.seen.fill(null);
    if (this.threads !== null && this.threads.forward === null) {
      // a worker thread's port: the shared lane state is the control thread's
      this.laneSet = new Int32Array(MAX_PAIRS);
      this.laneHas = new Uint8Array(MAX_PAIRS);
      this.laneCell = new Int32Array(3);
    }
    this.laneCount = 0;
    this.laneHas.fill(0);
    this.rxDirtyCount = 0;
    this.rxDirty.fill(0);
    this.onSessionEnd(reason);
  }

  // ---- TX: guest → engine ----

  private scheduleTx(): void {
    if (this.txScheduled) return;
    this.txScheduled = true;
    setImmediate(this.txResume);
  }

  /** ring is to be processed, as the session's events say (started; enabled or not) */
  processing(ring: Virtqueue): boolean {
    return this.queues[ring.index] === ring && ring.broken === null;
  }

  private txUsable(ring: Virtqueue): boolean {
    return this.host !== null && this.index >= 0 && this.mem !== null && this.processing(ring);
  }

  /** One batch from ring: frames into the engine, its copies run, TX and RX used entries published. */
  private txBatch(ring: Virtqueue): number {
    const s = this.host as RingHost;
    // a started but disabled TX ring is processed and its frames discarded (the spec's "Ring states")
    const pair = ring.index >> 1;
    const n = this.tx.take(ring, this.mem as GuestMemory, this.sw, this.index, this.hdrLen, this.txOffload, TX_BUDGET, !ring.enabled, this.txMulti ? pair : -1);
    this.txQueueFrames[pair] += n;
    if (n > 0 || ring.broken !== null) {
      this.sw.flush();
      ring.publish();
      ring.signal(writeEventfd);
    }
    if (ring.broken !== null) s.ringBroken(ring);
    return n;
  }

  private processTx(ring: Virtqueue): void {
    if (!this.txUsable(ring)) return;
    ring.disableNotify();
    const n = this.txBatch(ring);
    if (ring.broken !== null) return;
    if (this.pollLoop !== null) {
      // keep polling it; notifications stay off until the poll loop gives up on it
      const p = this.txPoller(ring);
      if (n > 0 || p.polled || ring.availCount() > 0) {
        p.polled = true;
        this.pollLoop.keep(p);
        return;
      }
    } else if (n === TX_BUDGET) {
      // budget used up: yield, then go on (notifications stay off meanwhile)
      this.txPending[ring.index] = true;
      this.scheduleTx();
      return;
    }
    this.endPollTx(ring);
  }

  private txPoller(ring: Virtqueue): TxPoller {
    let p = this.txPollers[ring.index];
    if (!p || p.ring !== ring) {
      p = new TxPoller(this, ring);
      this.txPollers[ring.index] = p;
    }
    return p;
  }

  private stopPolling(ring: Virtqueue): void {
    const p = this.txPollers[ring.index];
    if (p && this.pollLoop) this.pollLoop.drop(p);
    if (p) p.polled = false;
  }

  /** poll loop: one batch; true when there was work */
  pollTx(ring: Virtqueue): boolean {
    if (!this.txUsable(ring)) return false;
    try {
      const n = this.txBatch(ring);
      return n > 0 && ring.broken === null;
    } catch (e) {
      this.host?.internalError('TX processing', e);
      return false;
    }
  }

  /** Re-enable kicks; if a chain came in before the guest saw the flag, take it (true: keep polling). */
  endPollTx(ring: Virtqueue): boolean {
    if (!this.txUsable(ring)) return false;
    ring.enableNotify();
    if (ring.availCount() === 0) return false;
    ring.disableNotify();
    if (this.pollLoop !== null) return true;
    this.txPending[ring.index] = true;
    this.scheduleTx();
    return false;
  }

  // ---- RX: engine → guest ----

  /** The RX queue pair frame goes to: see the header comment (Multiqueue). */
  laneFor(frame: Frame): number {
    const n = this.laneCount;
    if (n <= 1) return n === 1 ? this.laneSet[0] : 0;
    const k = frame.txQueue;
    if (k >= 0 && k < MAX_PAIRS && this.laneHas[k] !== 0) return k;
    return this.laneSet[flowHash(frame) % n];
  }

  deliver(frame: Frame, lane = 0): boolean {
    const rx = lane >= 0 && lane < MAX_PAIRS ? this.rxs[lane] : null;
    if (this.host === null || rx === null || !rx.usable()) return false;
    this.rx = rx;
    this.rxLane = lane;
    if (this.rxDirty[lane] === 0) {
      this.rxDirty[lane] = 1;
      this.rxDirtyList[this.rxDirtyCount++] = lane;
    }
    if (this.maxEthLen > 0 && frame.ethLen > this.maxEthLen && this.overMtu(frame)) {
      this.counters.rxOverMtu++;
      return true;
    }
    const need = offloadNeeds(frame.hdr, frame.hdrOff) & ~this.rxOffload;
    if (need !== 0) {
      const r = this.fallback.deliver(this, frame, need);
      return r === FALLBACK_DROPPED ? true : this.result(r);
    }
    let r = rx.begin();
    if (r === RES_OK) r = rx.reserve(frame.ethLen);
    if (r !== RES_OK) return this.result(r);
    // The header this guest gets is rebuilt from the sender's: only what the frame really uses,
    // and DATA_VALID only for a guest that negotiated GUEST_CSUM.
    const h = this.rxHdr;
    const s = frame.hdr;
    const o = frame.hdrOff;
    if ((s[o + HDR_FLAGS] | s[o + HDR_GSO_TYPE]) === 0) {
      for (let k = 0; k < HDR_NUM_BUFFERS; k++) h[k] = 0;
    } else {
      const flags = s[o + HDR_FLAGS] & ((this.rxOffload & RX_CSUM) !== 0 ? VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID : 0);
      const gso = s[o + HDR_GSO_TYPE];
      h[HDR_FLAGS] = flags;
      h[HDR_GSO_TYPE] = gso;
      const g = gso !== VIRTIO_NET_HDR_GSO_NONE;
      h[HDR_HDR_LEN] = g ? s[o + HDR_HDR_LEN] : 0;
      h[HDR_HDR_LEN + 1] = g ? s[o + HDR_HDR_LEN + 1] : 0;
      h[HDR_GSO_SIZE] = g ? s[o + HDR_GSO_SIZE] : 0;
      h[HDR_GSO_SIZE + 1] = g ? s[o + HDR_GSO_SIZE + 1] : 0;
      const c = (flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0;
      h[HDR_CSUM_START] = c ? s[o + HDR_CSUM_START] : 0;
      h[HDR_CSUM_START + 1] = c ? s[o + HDR_CSUM_START + 1] : 0;
      h[HDR_CSUM_OFFSET] = c ? s[o + HDR_CSUM_OFFSET] : 0;
      h[HDR_CSUM_OFFSET + 1] = c ? s[o + HDR_CSUM_OFFSET + 1] : 0;
    }
    if (!rx.write(0, h, 0, frame, this.pieces.reset().frame(0, frame.ethLen))) this.counters.rxBadRange++;
    else this.rxQueueFrames[lane]++;
    return true;
  }

  /**
   * The forward stage's run for RX queue `lane` (EnginePort.deliverBurst): plain entries (no
   * offload asked, Ethernet bytes in one range) are reserved and written here without a Frame, the
   * header copied from the burst table; any other entry goes through deliver(). Stops at the first
   * entry this queue cannot take now.
   */
  deliverBurst(b: Burst, from: number, to: number, lane: number): number {
    const rx = lane >= 0 && lane < MAX_PAIRS ? this.rxs[lane] : null;
    if (this.host === null || rx === null || !rx.usable()) return 0;
    if (rx.capture !== null) {
      // capture armed on this queue: the per-frame path, which records what is written
      for (let i = from; i < to; i++) if (!this.deliver(b.point(i), lane)) return i - from;
      return to - from;
    }
    this.rx = rx;
    this.rxLane = lane;
    if (this.rxDirty[lane] === 0) {
      this.rxDirty[lane] = 1;
      this.rxDirtyList[this.rxDirtyCount++] = lane;
    }
    const maxEth = this.maxEthLen;
    const segs = b.segs;
    let written = 0;
    let i = from;
    for (; i < to; i++) {
      const ethLen = b.len[i] - ENGINE_HDR_LEN;
      if (b.shape[i] !== SHAPE_PLAIN || (maxEth > 0 && ethLen > maxEth)) {
        if (!this.deliver(b.point(i), lane)) break;
        continue;
      }
      let r = rx.begin();
      if (r === RES_OK) r = rx.reserve(ethLen);
      if (r !== RES_OK) {
        // dropped for good (counted) and on to the next, or this queue can take no more now
        if (this.result(r)) continue;
        break;
      }
      const s = b.segFirst[i];
      if (rx.writePlain(segs.area[s], segs.off[s] + b.segSkip[i], ethLen)) written++;
      // not one RX buffer for it all: the general write
      else if (rx.write(0, b.hdr, i * ENGINE_HDR_LEN, b.point(i), this.pieces.reset().frame(0, ethLen))) written++;
      else this.counters.rxBadRange++;
    }
    this.rxQueueFrames[lane] += written;
    return i - from;
  }

  /**
   * virtio 1.x 5.1.6.3: with VIRTIO_NET_F_MTU the device passes no received packet with gso_type
   * NONE (ECN aside) longer than the MTU plus the Ethernet header (and a VLAN tag when there is one).
   */
  private overMtu(frame: Frame): boolean {
    if ((frame.hdr[frame.hdrOff + HDR_GSO_TYPE] & ~VIRTIO_NET_HDR_GSO_ECN) !== VIRTIO_NET_HDR_GSO_NONE) return false;
    const t = (frame.eth[frame.ethOff + ETH_TYPE] << 8) | frame.eth[frame.ethOff + ETH_TYPE + 1];
    const vlan = t === ETH_P_8021Q || t === ETH_P_8021AD ? VLAN_TAG_LEN : 0;
    return frame.ethLen > this.maxEthLen + vlan;
  }

  // PacketSink, for the offload fallback
  begin(): number {
    return this.rx.begin();
  }
  reserve(ethLen: number): number {
    return this.rx.reserve(ethLen);
  }
  write(p: number, hdr: Uint8Array, hdrOff: number, frame: Frame | null, pieces: Pieces): boolean {
    const ok = this.rx.write(p, hdr, hdrOff, frame, pieces);
    if (!ok) this.counters.rxBadRange++;
    else this.rxQueueFrames[this.rxLane]++;
    return ok;
  }

  /** deliver()'s answer for a reservation result other than RES_OK (chains given back first). */
  private result(r: number): boolean {
    const s = this.host as RingHost;
    const ring = this.rx.ring as Virtqueue;
    if (r === RES_OK) return true;
    if (r === RES_BAD) return true; // counted where it happened; the chains went back empty
    if (r === RES_BUDGET) {
      // this queue walked its descriptors for this turn: the frame waits, the next turn goes on
      this.scheduleRxCheck(this.rxLane);
      return false;
    }
    if (r === RES_BROKEN) {
      s.ringBroken(ring);
      return false;
    }
    const some = this.rx.segs.chains > 0;
    this.rx.abort();
    if (r === RES_TOO_BIG) {
      // This frame can never fit this guest's buffers: drop it, keep the buffers.
      this.counters.rxTooBig++;
      return true;
    }
    // RES_SHORT
    this.counters.rxNoBuffers++;
    // Some buffers but not enough (mergeable, or segments): the engine keeps waiting, so ask for a
    // kick on the next buffers posted, and look again ourselves if they came in meanwhile.
    if (some && this.wantRx[this.rxLane] !== 0 && ring.enableNotifyBeyond()) this.scheduleRxCheck(this.rxLane);
    return false;
  }

  flush(): void {
    const n = this.rxDirtyCount;
    this.rxDirtyCount = 0;
    for (let k = 0; k < n; k++) {
      const l = this.rxDirtyList[k];
      this.rxDirty[l] = 0;
      (this.rxs[l] as VhostRx).flush(writeEventfd);
    }
  }

  wantResources(want: boolean, lane = 0): void {
    if (!(lane >= 0 && lane < MAX_PAIRS)) return;
    this.wantRx[lane] = want ? 1 : 0;
    const rx = this.rxs[lane];
    const r = rx === null ? null : rx.ring;
    if (r === null) return;
    if (want) {
      r.enableNotify();
      // Buffers posted between the failed deliver() and now would not be kicked for: look again.
      if (r.availCount() > 0) this.scheduleRxCheck(lane);
    } else {
      r.disableNotify();
    }
  }

  private scheduleRxCheck(lane: number): void {
    this.rxCheckLane[lane] = 1;
    if (this.rxCheckScheduled) return;
    this.rxCheckScheduled = true;
    setImmediate(this.rxCheck);
  }
}

