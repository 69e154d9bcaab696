// The control thread's side of the data-plane threads (--workers N): it makes the shared memory,
// starts N-1 worker threads (src/workers/ring-thread.ts), is thread 0 itself (its Switch is the
// one the ports of the control thread and the ops layer use), gives each queue pair of a new
// connection a thread (layout.defaultOwner), and forwards the session's ring events of queue pairs
// another thread serves to it (RingForward). A ring stop (GET_VRING_BASE, reset) is answered by the
// serving thread by message, matched by sequence number; GET_VRING_BASE's reply goes out when the
// answer comes (at most STOP_WAIT_MS later) and the control thread never waits for it.
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { Shard } from './shard';
import { defaultOwner, laneViews, makeLayout, MAX_PAIRS, portRow, type ThreadsLayout } from './layout';
import { type FromWorker, type RingState, type ToWorker } from './ring-thread';
import { VhostUserPort, type PortThreads, type RingForward } from '../ports/vhost-user/port';
import type { Switch, SwitchOptions } from '../engine/switch';
import type { EnginePort } from '../engine/port';
import type { Virtqueue } from '../virtio/virtqueue';
import type { NetConfig } from '../virtio/net-config';
import type { GuestMemory } from '../memory/guest-memory';
import { native, Poller } from '../native';
import { safeClose } from '../vhost-user/connection';
import type { Log } from '../log';

/** how long a ring stop waits for the thread serving it */
export const STOP_WAIT_MS = 1000;
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


/** the fds duplicated into a message (for a thread that will not take them) */
function closeFdsOf(m: ToWorker): void {
  if (m.t === 'memory') for (const r of m.regions) safeClose(r.fd);
  else if (m.t === 'kickfd') safeClose(m.fd);
  else if (m.t === 'ring') {
    safeClose(m.state.callFd);
    safeClose(m.state.errFd);
  } else if (m.t === 'fds') {
    safeClose(m.callFd);
    safeClose(m.errFd);
  }
}

export class WorkerPool implements RingForward {
  readonly layout: ThreadsLayout;
  readonly shard: Shard;
  readonly sw: Switch;
  readonly threads: PortThreads;
  private readonly workers: Worker[] = [];
  private readonly owner: Uint8Array;
  /** ring stops waiting for their thread's answer, by sequence number */
  private readonly stops = new Map<number, { thread: number; done: (base: number) => void }>();
  private stopSeq = 0;
  /** the answer of each ring's last stop (connection × rings + ring) until stopReply() takes it */
  private readonly lastStop = new Map<number, Promise<number>>();
  private readonly ports = new Map<number, VhostUserPort>();
  private readonly doorbell: Poller;
  private readonly log: Log;
  private closed = false;
  private closing: Promise<void> | null = null;
  private readonly exited: boolean[] = [];
  /** per (connection, queue pair): a ring or kick fd of it was handed to its thread */
  private readonly handed: Uint8Array;

  constructor(o: PoolOptions) {
    this.log = o.log;
    const doorbells = Array.from({ length: o.threads }, () => native.eventfd(0));
    this.layout = makeLayout({ threads: o.threads, maxPorts: o.maxPorts, lanes: o.lanes, poolBytes: o.poolBytes, blockSize: o.blockSize, macTableSize: o.macTableSize, macAgeMs: o.macAgeMs, doorbells });
    this.owner = new Uint8Array(this.layout.owner);
    this.handed = new Uint8Array(this.owner.length);
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
      w.once('exit', (code) => {
        this.exited[k] = true;
        if (!this.closed) this.threadDied(t, code);
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
        this.shard.pumpTurn(doorbells[0]);
      } catch (e) {
        this.log(`error while taking frames from the data-plane threads: ${(e as Error).stack}`, { level: 'error' });
      }
    });
    this.doorbell.start(native.POLL_READABLE);
    const sw = this.sw;
    sw.onAttach = (index, port, opts) => this.attached(index, port, opts);
    sw.onDetach = (index) => this.post(-1, { t: 'detach', index });
    // a SIGHUP reload or ctl changes the control thread's switch: every thread applies the same
    sw.onSetting = (change) => this.post(-1, { t: 'setting', change });
  }

  /** data-plane threads, the control thread included */
  get count(): number {
    return this.layout.threads;
  }

  private post(to: number, m: ToWorker): void {
    if (this.closed) return;
    if (to < 0) {
      for (let t = 1; t < this.count; t++) if (!this.exited[t - 1]) this.workers[t - 1].postMessage(m);
    } else if (to >= 1) {
      if (this.exited[to - 1]) closeFdsOf(m); // nobody will take them
      else this.workers[to - 1].postMessage(m);
    }
  }

  /** The thread for queue pair `pair` of connection index: the default spread over the threads
   * still running (a dead one's share goes to the others). */
  private ownerFor(index: number, pair: number): number {
    let t = defaultOwner(index, pair, this.count);
    for (let k = 0; k < this.count && t !== 0 && this.exited[t - 1]; k++) t = (t + 1) % this.count;
    return t !== 0 && this.exited[t - 1] ? 0 : t;
  }

  /**
   * Supervision: data-plane thread t ended while the pool runs (an uncaught error, a crash, a
   * terminate). Its queue pairs go to the threads still running and every port it served is reset
   * (its session closed, logged): the front-end reconnects (QEMU's reconnect=1) and starts its rings
   * again on their new threads. Other ports go on untouched. The fds duplicated for the dead thread
   * that it had not closed yet stay open: which ones it closed is not known here, and closing a
   * number it already gave back could close another port's fd.
   */
  private threadDied(t: number, code: number): void {
    this.log(`error: data-plane thread ${t} ended (exit code ${code}): its queue pairs move to the other threads, the ports it served are reset`, { level: 'error', thread: t });
    for (const [seq, w] of this.stops) {
      if (w.thread !== t) continue;
      this.stops.delete(seq);
      w.done(-1);
    }
    const hit = new Set<number>();
    for (let i = 0; i < this.owner.length; i++) {
      if (this.owner[i] !== t) continue;
      const index = Math.floor(i / MAX_PAIRS);
      this.owner[i] = this.ownerFor(index, i % MAX_PAIRS);
      // a port is reset when a ring of it was handed to that thread (its other pairs are unused)
      if (this.handed[i] !== 0) hit.add(index);
    }
    for (const index of hit) {
      const s = this.ports.get(index)?.session ?? null;
      s?.internalError(`data-plane work (data-plane thread ${t}, which served its queue pairs, ended)`, new Error(`data-plane thread ${t} ended with exit code ${code}`));
    }
  }

  /** The worker thread that is data-plane thread t (1 … count − 1), for supervision and tests. */
  worker(t: number): Worker {
    return this.workers[t - 1];
  }

  private attached(index: number, port: EnginePort, opts: { staticMac?: string; shareLimit: number }): void {
    const vhost = port instanceof VhostUserPort;
    for (let p = 0; p < MAX_PAIRS; p++) this.owner[index * MAX_PAIRS + p] = vhost ? this.ownerFor(index, p) : 0;
    this.handed.fill(0, index * MAX_PAIRS, (index + 1) * MAX_PAIRS);
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
    this.handed[index * MAX_PAIRS + (q.index >> 1)] = 1;
  }

  /**
   * The ring stopped (GET_VRING_BASE, reset, …): the thread serving it is told to stop it and
   * answers with its base by message. Nothing waits here: the control thread goes on serving every
   * other port. stopReply() gives the answer to whoever needs it (GET_VRING_BASE's reply), matched
   * to this very stop by its sequence number, so a late answer is never taken for another stop.
   */
  stopped(index: number, q: Virtqueue): void {
    const t = this.ownerOf(index, q);
    if (t === 0 || this.closed) return;
    const seq = ++this.stopSeq;
    let settle: (base: number) => void = () => {};
    const answer = new Promise<number>((resolve) => {
      settle = resolve;
    });
    const timer = setTimeout(() => {
      if (!this.stops.delete(seq)) return;
      this.log(`error: ${q.name}: data-plane thread ${t} did not stop the ring within ${STOP_WAIT_MS} ms; its base is reported as last known`, { level: 'error' });
      settle(q.getBase());
    }, STOP_WAIT_MS);
    timer.unref();
    this.stops.set(seq, {
      thread: t,
      done: (base) => {
        clearTimeout(timer);
        if (base >= 0) {
          try {
            q.setBase(base);
          } catch (e) {
            this.log(`error: ${q.name}: base from data-plane thread ${t}: ${(e as Error).message}`, { level: 'error' });
          }
        }
        settle(q.getBase());
      },
    });
    this.lastStop.set(index * 2 * MAX_PAIRS + q.index, answer);
    this.post(t, { t: 'stop', index, ring: q.index, seq });
  }

  /** The base the serving thread answered for ring q's last stop (null: served here, nothing to wait for). */
  stopReply(index: number, q: Virtqueue): Promise<number> | null {
    const key = index * 2 * MAX_PAIRS + q.index;
    const p = this.lastStop.get(key) ?? null;
    this.lastStop.delete(key);
    return p;
  }

  kick(index: number, q: Virtqueue): void {
    this.post(this.ownerOf(index, q), { t: 'kick', index, ring: q.index });
  }

  kickFd(index: number, q: Virtqueue, fd: number): void {
    this.post(this.ownerOf(index, q), { t: 'kickfd', index, ring: q.index, fd: dupOrNone(fd) });
    this.handed[index * MAX_PAIRS + (q.index >> 1)] = 1;
  }

  notifyFds(index: number, q: Virtqueue): void {
    this.post(this.ownerOf(index, q), { t: 'fds', index, ring: q.index, callFd: dupOrNone(q.callFd), errFd: dupOrNone(q.errFd) });
  }

  private fromWorker(t: number, m: FromWorker): void {
    if (m.t === 'stopped') {
      const w = this.stops.get(m.seq);
      if (w === undefined || w.thread !== t) return; // answered already (timed out): a late answer is dropped
      this.stops.delete(m.seq);
      w.done(m.base);
      return;
    }
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
