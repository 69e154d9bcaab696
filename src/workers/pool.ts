// The control thread's side of the data-plane threads (--workers N): it makes the shared memory,
// starts N-1 worker threads (src/workers/ring-thread.ts), is thread 0 itself (its Switch is the
// one the ports of the control thread and the ops layer use), gives each queue pair of a new
// connection a thread (layout.defaultOwner), and forwards the session's ring events of queue pairs
// another thread serves to it (RingForward). A ring stop (GET_VRING_BASE, reset) waits for the
// serving thread's answer through shared memory, at most STOP_WAIT_MS.
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { Shard } from './shard';
import { defaultOwner, laneViews, makeLayout, MAX_PAIRS, portRow, type ThreadsLayout } from './layout';
import { REPLY_WORDS, type FromWorker, type RingState, type ToWorker } from './ring-thread';
import { VhostUserPort, type PortThreads, type RingForward } from '../ports/vhost-user/port';
import type { Switch, SwitchOptions } from '../engine/switch';
import type { EnginePort } from '../engine/port';
import type { Virtqueue } from '../virtio/virtqueue';
import type { NetConfig } from '../virtio/net-config';
import type { GuestMemory } from '../memory/guest-memory';
import { native, Poller } from '../native';
import type { Log } from '../log';

/** how long a ring stop waits for the thread serving it */
export const STOP_WAIT_MS = 2000;
/** how long close() lets a worker thread end by itself before it is terminated */
export const EXIT_WAIT_MS = 5000;

export interface PoolOptions {
  threads: number;
  switchOptions: SwitchOptions;
  poolBytes: number;
  blockSize: number;
  maxPorts: number;
  lanes: number;
  macTableSize: number;
  macAgeMs: number;
  /** --poll-us for the worker threads' rings too */
  pollUs?: number;
  log: Log;
}

const dupOrNone = (fd: number): number => (fd >= 0 ? native.dup(fd) : -1);

export class WorkerPool implements RingForward {
  readonly layout: ThreadsLayout;
  readonly shard: Shard;
  readonly sw: Switch;
  readonly threads: PortThreads;
  private readonly workers: Worker[] = [];
  private readonly owner: Uint8Array;
  private readonly replies: Int32Array;
  private readonly ports = new Map<number, VhostUserPort>();
  private readonly doorbell: Poller;
  private readonly log: Log;
  private closed = false;
  private closing: Promise<void> | null = null;
  private readonly exited: boolean[] = [];

  constructor(o: PoolOptions) {
    this.log = o.log;
    const doorbells = Array.from({ length: o.threads }, () => native.eventfd(0));
    this.layout = makeLayout({ threads: o.threads, maxPorts: o.maxPorts, lanes: o.lanes, poolBytes: o.poolBytes, blockSize: o.blockSize, macTableSize: o.macTableSize, macAgeMs: o.macAgeMs, doorbells });
    this.owner = new Uint8Array(this.layout.owner);
    this.replies = new Int32Array(this.layout.replies);
    this.shard = new Shard(this.layout, 0, { ...o.switchOptions, log: o.log });
    this.sw = this.shard.sw;
    const layout = this.layout;
    this.threads = {
      serves: (index, pair) => this.owner[index * MAX_PAIRS + pair] === 0,
      shared: (index) => laneViews(layout, index),
      forward: this,
      peerCounters: (index) => Array.from({ length: layout.threads - 1 }, (_, k) => portRow(layout, k + 1, index)),
    };
    const file = path.join(__dirname, 'ring-thread.js');
    const { log: _log, clock: _clock, ...plain } = o.switchOptions;
    for (let t = 1; t < o.threads; t++) {
      const w = new Worker(file, { workerData: { layout, me: t, switchOptions: plain, pollUs: o.pollUs ?? 0 } });
      w.on('message', (m: FromWorker) => this.fromWorker(t, m));
      w.on('error', (e) => this.log(`error: data-plane thread ${t} failed: ${e.stack ?? e}`, { level: 'error' }));
      const k = this.workers.length;
      this.exited.push(false);
      w.once('exit', () => {
        this.exited[k] = true;
      });
      w.unref();
      this.workers.push(w);
    }
    this.doorbell = native.poll(doorbells[0], () => {
      try {
        native.eventfdRead(doorbells[0]);
      } catch {
        /* read already */
      }
      try {
        while (this.shard.pump() > 0) {
          /* each pump takes a budget per sender */
        }
      } catch (e) {
        this.log(`error while taking frames from the data-plane threads: ${(e as Error).stack}`, { level: 'error' });
      }
    });
    this.doorbell.start(native.POLL_READABLE);
    const sw = this.sw;
    sw.onAttach = (index, port, opts) => this.attached(index, port, opts);
    sw.onDetach = (index) => this.post(-1, { t: 'detach', index });
  }

  /** data-plane threads, the control thread included */
  get count(): number {
    return this.layout.threads;
  }

  private post(to: number, m: ToWorker): void {
    if (this.closed) return;
    if (to < 0) for (const w of this.workers) w.postMessage(m);
    else if (to >= 1) this.workers[to - 1].postMessage(m);
  }

  private attached(index: number, port: EnginePort, opts: { staticMac?: string; shareLimit: number }): void {
    const vhost = port instanceof VhostUserPort;
    for (let p = 0; p < MAX_PAIRS; p++) this.owner[index * MAX_PAIRS + p] = vhost ? defaultOwner(index, p, this.count) : 0;
    this.post(-1, { t: 'attach', index, vhost, name: port.name, staticMac: opts.staticMac, shareLimit: opts.shareLimit });
  }

  private ownerOf(index: number, q: Virtqueue): number {
    return this.owner[index * MAX_PAIRS + (q.index >> 1)];
  }

  // ---- RingForward (the control thread's port tells)

  connected(index: number, port: VhostUserPort): void {
    this.ports.set(index, port);
  }

  disconnected(index: number): void {
    this.ports.delete(index);
  }

  features(index: number, cfg: NetConfig): void {
    this.post(-1, { t: 'features', index, cfg: { ...cfg } });
  }

  mtu(index: number, mtu: number): void {
    this.post(-1, { t: 'mtu', index, mtu });
  }

  memory(index: number, mem: GuestMemory): void {
    for (let t = 1; t < this.count; t++) {
      const regions = mem.list().map((r) => ({ desc: { ...r.desc }, fd: native.dup(r.fd) }));
      this.post(t, { t: 'memory', index, regions });
    }
  }

  started(index: number, q: Virtqueue): void {
    const state: RingState = {
      index: q.index,
      name: q.name,
      packed: q.packed,
      num: q.num,
      desc: q.descAddr,
      avail: q.availAddr,
      used: q.usedAddr,
      base: q.getBase(),
      eventIdx: q.eventIdx,
      indirect: q.indirect,
      maxChain: q.maxChain,
      enabled: q.enabled,
      callFd: dupOrNone(q.callFd),
      errFd: dupOrNone(q.errFd),
    };
    this.post(this.ownerOf(index, q), { t: 'ring', index, state });
  }

  stopped(index: number, q: Virtqueue): void {
    const t = this.ownerOf(index, q);
    if (t === 0 || this.closed) return;
    const at = t * REPLY_WORDS;
    Atomics.store(this.replies, at, 0);
    this.post(t, { t: 'stop', index, ring: q.index });
    const r = Atomics.wait(this.replies, at, 0, STOP_WAIT_MS);
    const flag = Atomics.load(this.replies, at);
    if (r === 'timed-out' && flag === 0) {
      this.log(`error: ${q.name}: data-plane thread ${t} did not stop the ring within ${STOP_WAIT_MS} ms; its base is reported as last known`, { level: 'error' });
      return;
    }
    if (flag === 1) {
      try {
        q.setBase(this.replies[at + 1] >>> 0);
      } catch (e) {
        this.log(`error: ${q.name}: base from data-plane thread ${t}: ${(e as Error).message}`, { level: 'error' });
      }
    }
  }

  kick(index: number, q: Virtqueue): void {
    this.post(this.ownerOf(index, q), { t: 'kick', index, ring: q.index });
  }

  kickFd(index: number, q: Virtqueue, fd: number): void {
    this.post(this.ownerOf(index, q), { t: 'kickfd', index, ring: q.index, fd: dupOrNone(fd) });
  }

  notifyFds(index: number, q: Virtqueue): void {
    this.post(this.ownerOf(index, q), { t: 'fds', index, ring: q.index, callFd: dupOrNone(q.callFd), errFd: dupOrNone(q.errFd) });
  }

  private fromWorker(t: number, m: FromWorker): void {
    if (m.t === 'log') {
      this.log(m.msg, { ...(m.fields ?? {}), thread: t });
      return;
    }
    const port = this.ports.get(m.index);
    const s = port?.session ?? null;
    if (s === null) return;
    if (m.t === 'kicked') s.kickedElsewhere(m.ring);
    else if (m.t === 'error') s.internalError(`${m.where} (data-plane thread ${t})`, new Error(m.message));
    else if (m.t === 'broken') s.ringBrokenElsewhere(m.ring, m.reason);
  }

  /** frames waiting between the threads (tests) */
  inFlight(): number {
    return this.shard.inbound();
  }

  /**
   * Stops the worker threads. Each one is told to close what it serves (its rings, kick pollers,
   * mappings and the fds duplicated for it) and ends its own loop; only one that has not ended within
   * EXIT_WAIT_MS is terminated. The doorbells are closed once no thread polls them. Resolves when every
   * worker thread has ended, so that nothing duplicated for one is still open after it.
   */
  close(): Promise<void> {
    if (this.closing !== null) return this.closing;
    this.post(-1, { t: 'close' });
    this.closed = true;
    this.doorbell.close();
    const ends = this.workers.map(
      (w, k) =>
        new Promise<void>((resolve) => {
          if (this.exited[k]) return resolve();
          const timer = setTimeout(() => {
            this.log(`error: data-plane thread ${k + 1} did not end within ${EXIT_WAIT_MS} ms of close: terminated`, { level: 'error' });
            void w.terminate();
          }, EXIT_WAIT_MS);
          w.once('exit', () => {
            clearTimeout(timer);
            resolve();
          });
        }),
    );
    this.closing = Promise.all(ends).then(() => {
      for (const fd of this.layout.doorbells) {
        try {
          native.close(fd);
        } catch {
          /* closed */
        }
      }
    });
    return this.closing;
  }
}
