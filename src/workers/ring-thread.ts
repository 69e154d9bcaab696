// A worker thread of the data plane (--workers N, threads 1 … N-1; thread 0 is the control thread,
// which also serves queue pairs). It serves the queue pairs the owner table gives it: it maps the
// guests' memory itself from (duplicated) fds, watches the kick eventfds of its rings, takes frames
// from their TX rings into its Shard and writes frames into their RX rings. The control thread
// keeps the sockets and sessions and tells it, by message, what a session changed:
//
//   attach / detach            a connection (vhost-user: a port of its own here; other: a stand-in)
//   features / mtu / memory    the negotiated header and offloads, the MTU, the memory table
//   kickfd                     a ring's kick eventfd (the first kick goes back up: the ring starts)
//   ring                       a ring started, or its enable state changed: set up here from its state
//   stop                       GET_VRING_BASE and the like: stopped here, the base sent back
//                              ('stopped', with the stop's sequence number)
//   kick                       a ring without a kick fd (polling mode) is to be looked at
import { parentPort, workerData } from 'node:worker_threads';
import { Shard } from './shard';
import { laneViews, MAX_PAIRS, portRow, type ThreadsLayout } from './layout';
import { VhostUserPort, PortThreads, RingHost } from '../ports/vhost-user/port';
import type { EnginePort } from '../engine/port';
import type { SettingChange, SwitchOptions } from '../engine/switch';
import { GuestMemory, MemRegion, Region } from '../memory/guest-memory';
import { SplitRing } from '../virtio/split-ring';
import { PackedRing } from '../virtio/packed-ring';
import type { Virtqueue } from '../virtio/virtqueue';
import type { NetConfig } from '../virtio/net-config';
import { native, Poller } from '../native';
import { safeClose } from '../vhost-user/connection';
import { copies } from '../datapath/copy-list';
import type { Log } from '../log';
import { PollLoop } from '../ports/poll-loop';

export interface RingThreadData {
  layout: ThreadsLayout;
  me: number;
  switchOptions: SwitchOptions;
  /** --poll-us: this thread polls its TX rings after a batch as the main thread does (0: event mode) */
  pollUs?: number;
}

/** a ring as the control thread describes it when it starts */
export interface RingState {
  index: number;
  name: string;
  packed: boolean;
  num: number;
  desc: number;
  avail: number;
  used: number;
  base: number;
  eventIdx: boolean;
  indirect: boolean;
  maxChain: number;
  enabled: boolean;
  /** duplicated for this thread (-1: none) */
  callFd: number;
  errFd: number;
}

export type ToWorker =
  | { t: 'attach'; index: number; vhost: boolean; name: string; staticMac?: string; shareLimit: number }
  | { t: 'detach'; index: number }
  | { t: 'features'; index: number; cfg: NetConfig }
  | { t: 'mtu'; index: number; mtu: number }
  | { t: 'memory'; index: number; regions: { desc: MemRegion; fd: number }[] }
  | { t: 'kickfd'; index: number; ring: number; fd: number }
  | { t: 'ring'; index: number; state: RingState }
  | { t: 'stop'; index: number; ring: number; seq: number }
  /** tests: block this thread for ms, as a thread stuck in a long batch would be */
  | { t: 'stall'; ms: number }
  | { t: 'kick'; index: number; ring: number }
  | { t: 'setting'; change: SettingChange }
  | { t: 'fds'; index: number; ring: number; callFd: number; errFd: number }
  | { t: 'close' };

export type FromWorker =
  | { t: 'kicked'; index: number; ring: number }
  /** the answer to stop `seq`: the ring's base (-1: not running here) */
  | { t: 'stopped'; index: number; ring: number; seq: number; base: number }
  | { t: 'broken'; index: number; ring: number; reason: string }
  | { t: 'error'; index: number; where: string; message: string }
  | { t: 'log'; msg: string; fields?: Record<string, unknown> };



/**
 * Maps a memory table from fds duplicated for this thread (each region takes its fd). All or
 * nothing: when one region cannot be mapped, those mapped are unmapped and the fds of those not
 * reached yet are closed too, then the error is thrown (none of the table's fds stays open).
 */
export function mapRegions(list: { desc: MemRegion; fd: number }[], onFault: () => void): Region[] {
  const regions: Region[] = [];
  let k = 0;
  try {
    for (; k < list.length; k++) {
      const region = new Region(list[k].desc, list[k].fd, false); // closes its fd when it throws
      region.onFault = onFault;
      regions.push(region);
    }
    return regions;
  } catch (e) {
    for (const r of regions) r.unmap();
    for (let j = k + 1; j < list.length; j++) safeClose(list[j].fd);
    throw e;
  }
}

/** A connection this thread serves no ring of: the engine hands its frames to their thread. */
class Elsewhere implements EnginePort {
  constructor(readonly name: string) {}
  deliver(): boolean {
    return false;
  }
  flush(): void {}
  wantResources(): void {}
}

class Conn implements RingHost {
  readonly rings: (Virtqueue | null)[] = new Array<Virtqueue | null>(2 * MAX_PAIRS).fill(null);
  readonly kicks: ({ fd: number; poller: Poller } | null)[] = new Array<{ fd: number; poller: Poller } | null>(2 * MAX_PAIRS).fill(null);
  mem = new GuestMemory();
  regions: Region[] = [];
  constructor(readonly index: number, readonly port: VhostUserPort, private readonly post: (m: FromWorker) => void) {}

  internalError(where: string, e: unknown): void {
    this.post({ t: 'error', index: this.index, where, message: (e as Error)?.stack ?? String(e) });
  }

  ringBroken(ring: Virtqueue): void {
    this.post({ t: 'broken', index: this.index, ring: ring.index, reason: ring.broken ?? 'broken' });
  }

  setMemory(list: { desc: MemRegion; fd: number }[]): void {
    let regions: Region[];
    try {
      regions = mapRegions(list, () => this.internalError('guest memory access (its file shrank under the mapping)', new Error('memory fault')));
    } catch (e) {
      this.internalError('mapping guest memory', e);
      return;
    }
    const mem = new GuestMemory();
    mem.replace(regions);
    const old = this.regions;
    this.mem = mem;
    this.regions = regions;
    this.port.memoryChanged(mem);
    for (const q of this.rings) {
      if (q === null) continue;
      try {
        q.setup(mem);
      } catch (e) {
        q.detachViews();
        q.markBroken((e as Error).message);
        this.ringBroken(q);
      }
    }
    for (const r of old) r.unmap();
  }

  watchKick(ring: number, fd: number): void {
    const old = this.kicks[ring];
    if (old !== null) {
      old.poller.close();
      safeClose(old.fd);
      this.kicks[ring] = null;
    }
    if (fd < 0) return;
    const poller = native.poll(fd, (status) => {
      if (status < 0) return;
      try {
        native.eventfdRead(fd);
      } catch {
        /* read by now */
      }
      const q = this.rings[ring];
      try {
        if (q !== null && q.started) this.port.kick(q);
        else this.post({ t: 'kicked', index: this.index, ring });
      } catch (e) {
        this.internalError(`kick on ring ${ring}`, e);
      }
    });
    this.kicks[ring] = { fd, poller };
    poller.start(native.POLL_READABLE);
  }

  startRing(s: RingState): void {
    const cur = this.rings[s.index];
    if (cur !== null) {
      // running here already: only its enable state can have changed
      cur.enable(s.enabled);
      safeClose(s.callFd);
      safeClose(s.errFd);
      this.port.ringStarted(cur);
      return;
    }
    const q: Virtqueue = s.packed ? new PackedRing(s.index, s.name, s.maxChain) : new SplitRing(s.index, s.name, s.maxChain);
    q.setFeatures(s.eventIdx, s.indirect);
    q.setNum(s.num);
    q.setAddresses(s.desc, s.used, s.avail);
    q.setBase(s.base);
    q.enable(s.enabled);
    q.setCallFd(s.callFd);
    q.setErrFd(s.errFd);
    q.start();
    try {
      q.setup(this.mem);
    } catch (e) {
      q.detachViews();
      q.markBroken((e as Error).message);
      this.rings[s.index] = q;
      this.ringBroken(q);
      return;
    }
    this.rings[s.index] = q;
    this.port.ringStarted(q);
  }

  /** SET_VRING_CALL / SET_VRING_ERR on a ring running here: signal the new eventfds (duplicated
   * for this thread; the old ones closed). A ring not running here gets them when it starts. */
  setNotifyFds(ring: number, callFd: number, errFd: number): void {
    const q = this.rings[ring];
    if (q === null) {
      safeClose(callFd);
      safeClose(errFd);
      return;
    }
    safeClose(q.setCallFd(callFd));
    safeClose(q.setErrFd(errFd));
  }

  /** stops ring `ring` here; its base (-1: not running here) */
  stopRing(ring: number): number {
    const q = this.rings[ring];
    if (q === null) return -1;
    this.rings[ring] = null;
    copies.run();
    this.port.ringStopped(q);
    q.stop();
    const base = q.getBase();
    safeClose(q.setCallFd(-1));
    safeClose(q.setErrFd(-1));
    q.detachViews();
    return base;
  }

  close(): void {
    for (let r = 0; r < this.rings.length; r++) if (this.rings[r] !== null) this.stopRing(r);
    for (let r = 0; r < this.kicks.length; r++) this.watchKick(r, -1);
    this.port.disconnected(null);
    for (const r of this.regions) r.unmap();
    this.regions = [];
  }
}

function main(): void {
  const { layout, me, switchOptions, pollUs } = workerData as RingThreadData;
  const pollLoop = (pollUs ?? 0) > 0 ? new PollLoop(pollUs as number) : null;
  const port = parentPort!;
  const post = (m: FromWorker): void => port.postMessage(m);
  const log: Log = (msg, fields) => post({ t: 'log', msg, fields: fields as Record<string, unknown> | undefined });
  const shard = new Shard(layout, me, { ...switchOptions, log });
  const sw = shard.sw;
  const owner = new Uint8Array(layout.owner);
  const threads: PortThreads = {
    serves: (index, pair) => owner[index * MAX_PAIRS + pair] === me,
    shared: (index) => laneViews(layout, index),
    forward: null,
    peerCounters: () => [],
  };
  const conns = new Map<number, Conn>();
  const doorbell = native.poll(layout.doorbells[me], () => {
    try {
      native.eventfdRead(layout.doorbells[me]);
    } catch {
      /* read already */
    }
    try {
      shard.pumpTurn(layout.doorbells[me]);
    } catch (e) {
      log(`worker ${me}: error while taking frames from the other threads: ${(e as Error).stack}`, { level: 'error' });
    }
  });
  doorbell.start(native.POLL_READABLE);
  // the lane state the control thread publishes: a change spreads what is held here again
  const versions = new Int32Array(layout.maxPorts);
  const timer = setInterval(() => {
    for (const c of conns.values()) {
      const row = portRow(layout, me, c.index);
      c.port.writeCounters(row.port);
      row.rxq.set(c.port.rxQueueFrames);
      row.txq.set(c.port.txQueueFrames);
      const v = Atomics.load(laneViews(layout, c.index).laneCell, 2);
      if (v !== versions[c.index]) {
        versions[c.index] = v;
        sw.queuesChanged(c.index);
      }
    }
    shard.pump();
  }, 50);
  timer.unref();

  port.on('message', (m: ToWorker) => {
    const c = 'index' in m ? conns.get(m.index) : undefined;
    try {
      switch (m.t) {
        case 'attach': {
          if (!m.vhost) {
            sw.attach(new Elsewhere(m.name), { staticMac: m.staticMac, shareLimit: m.shareLimit }, m.index);
            break;
          }
          const p = new VhostUserPort(sw, { name: m.name, log, threads, pollLoop, staticMac: m.staticMac, shareLimit: m.shareLimit });
          sw.attach(p, { staticMac: m.staticMac, shareLimit: m.shareLimit }, m.index);
          const conn = new Conn(m.index, p, post);
          p.attachHere(m.index, conn);
          conns.set(m.index, conn);
          versions[m.index] = Atomics.load(laneViews(layout, m.index).laneCell, 2);
          break;
        }
        case 'detach':
          if (c !== undefined) {
            conns.delete(m.index);
            c.close();
          } else {
            try {
              sw.detach(m.index);
            } catch {
              /* not attached here */
            }
          }
          break;
        case 'features':
          c?.port.featuresNegotiated(m.cfg);
          break;
        case 'mtu':
          c?.port.mtuChanged(m.mtu);
          break;
        case 'memory':
          if (c) c.setMemory(m.regions);
          else for (const r of m.regions) safeClose(r.fd);
          break;
        case 'kickfd':
          if (c) c.watchKick(m.ring, m.fd);
          else safeClose(m.fd);
          break;
        case 'ring':
          if (c) c.startRing(m.state);
          else {
            safeClose(m.state.callFd);
            safeClose(m.state.errFd);
          }
          break;
        case 'stop': {
          const base = c ? c.stopRing(m.ring) : -1;
          post({ t: 'stopped', index: m.index, ring: m.ring, seq: m.seq, base });
          break;
        }
        case 'stall':
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, m.ms);
          break;
        case 'setting': {
          const s = m.change;
          if (s.kind === 'share') {
            try {
              sw.setShareLimit(s.index, s.blocks);
            } catch {
              /* that connection is gone here already */
            }
          } else if (s.kind === 'defaultShare') sw.setDefaultShareLimit(s.blocks);
          else if (s.kind === 'hold') sw.setHoldTime(s.ms);
          else sw.setUnknownPolicy(s.policy);
          break;
        }
        case 'fds':
          if (c) c.setNotifyFds(m.ring, m.callFd, m.errFd);
          else {
            safeClose(m.callFd);
            safeClose(m.errFd);
          }
          break;
        case 'kick': {
          const q = c?.rings[m.ring];
          if (q) c!.port.kick(q);
          break;
        }
        case 'close':
          for (const k of conns.values()) k.close();
          conns.clear();
          clearInterval(timer);
          doorbell.close();
          sw.close();
          // nothing of this thread is left open: its loop ends and the control thread sees it exit
          port.close();
          break;
      }
    } catch (e) {
      if (c) c.internalError(m.t, e);
      else log(`worker ${me}: error in ${m.t}: ${(e as Error).stack}`, { level: 'error' });
      if (m.t === 'stop') post({ t: 'stopped', index: m.index, ring: m.ring, seq: m.seq, base: -1 });
    }
  });
}

if (parentPort !== null && (workerData as RingThreadData | undefined)?.layout !== undefined) main();
