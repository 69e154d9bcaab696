// One data-plane thread's engine among several (--workers N): a Switch over the shared MAC table
// and this thread's partition of the shared data store, and the hand-over of frames to the thread
// that serves their destination RX queue.
//
//   Switch.forward / Monitor.drain ── remote(dest, lane)? ──► send(): free blocks of our partition,
//       copy recorded into them, (queue, head) staged ──► after the batch's copies ran: published on
//       the SPSC ring to that thread, its doorbell written
//   doorbell ──► pump(): heads handed back (our blocks, freed elsewhere) return to our pool; frames
//       handed to us go through Switch.adopt (the second test: delivered now, or queued on our
//       elastic-FIFO queue for that RX queue), in ring order, so order per destination queue holds
//
// Each frame is copied once into the store by the thread that took it from its sender and once out
// by the thread that serves its receiver (a frame that waits here waits in the blocks it came in).
// A frame whose ring to the serving thread is full waits in this thread's queue for that RX queue
// and is retried when the ring has room (pump, tick); it goes over in the blocks it waits in.
import { Switch, type SwitchOptions } from '../engine/switch';
import { Counters } from '../engine/counters';
import { MacTable, DST_MAC_OFFSET, macHi, macLo, macKey } from '../engine/classifier';
import type { Handoff } from '../engine/port';
import type { Frame } from '../datapath/frame';
import { copies } from '../datapath/copy-list';
import { native } from '../native';
import { SpscRing } from './spsc';
import { FRAME_MSG_WORDS, FRAME_RING_CAPACITY, MAX_PAIRS, type ThreadsLayout } from './layout';

/** pump() calls one doorbell turn makes at most (each takes up to its budget per sending thread) */
export const PUMP_ROUNDS = 4;

export class Shard implements Handoff {
  readonly sw: Switch;
  readonly owner: Uint8Array;
  private readonly out: (SpscRing | null)[] = [];
  private readonly inn: (SpscRing | null)[] = [];
  private readonly retOut: (SpscRing | null)[] = [];
  private readonly retIn: (SpscRing | null)[] = [];
  /** frames staged for each thread (copies recorded, not run yet): [to, queue, head] triples */
  private readonly staged: Int32Array;
  private stagedCount = 0;
  private readonly stagedTo: Int32Array;
  /** room last seen on each outgoing ring */
  private readonly room: Int32Array;
  /** heads to hand back to their owner after the batch: [to, head] pairs */
  private readonly back: Int32Array;
  private backCount = 0;
  /** (connection × lanes + lane) whose ring was full: retried when it has room */
  private readonly blocked: Int32Array;
  private blockedCount = 0;
  private readonly retry: Int32Array;
  private readonly isBlocked: Uint8Array;
  private readonly rang: Uint8Array;
  private readonly lanes: number;
  private readonly partEnd: Int32Array;
  private readonly partFirst: Int32Array;
  /** frames handed out / in, heads handed back / reclaimed (this thread's view; tests read them) */
  readonly tally = new Float64Array(4);
  private pumping = false;

  constructor(readonly layout: ThreadsLayout, readonly me: number, opts: SwitchOptions) {
    const l = layout;
    const n = l.threads;
    this.lanes = l.lanes;
    this.owner = new Uint8Array(l.owner);
    const part = l.partitions[me];
    this.partFirst = Int32Array.from(l.partitions.map((p) => p.first));
    this.partEnd = Int32Array.from(l.partitions.map((p) => p.first + p.count));
    this.sw = new Switch({
      ...opts,
      queues: l.lanes,
      maxPorts: l.maxPorts,
      blockSize: l.blockSize,
      shard: {
        table: (time) => new MacTable(l.macTableSize, l.macAgeMs, time, l.table, true),
        counters: l.counters[me],
        tableKeeper: me === 0,
        peerCounters: me === 0 ? l.counters.slice(1).map((c) => new Counters(l.maxPorts, c)) : [],
        fifo: {
          blocks: l.store,
          local: l.local[me],
          totalBlocks: l.totalBlocks,
          first: part.first,
          count: part.count,
          releaseForeign: (head) => this.handBack(head),
        },
      },
    });
    for (let t = 0; t < n; t++) {
      this.out.push(t === me ? null : new SpscRing(l.frames[me][t] as SharedArrayBuffer, FRAME_RING_CAPACITY, FRAME_MSG_WORDS));
      this.inn.push(t === me ? null : new SpscRing(l.frames[t][me] as SharedArrayBuffer, FRAME_RING_CAPACITY, FRAME_MSG_WORDS));
      this.retOut.push(t === me ? null : new SpscRing(l.returns[me][t] as SharedArrayBuffer, l.returnCapacity, 1));
      this.retIn.push(t === me ? null : new SpscRing(l.returns[t][me] as SharedArrayBuffer, l.returnCapacity, 1));
    }
    this.staged = new Int32Array(3 * FRAME_RING_CAPACITY * Math.max(1, n - 1));
    this.stagedTo = new Int32Array(n);
    this.room = new Int32Array(n);
    this.back = new Int32Array(2 * l.totalBlocks);
    const qn = l.maxPorts * l.lanes;
    this.blocked = new Int32Array(qn);
    this.retry = new Int32Array(qn);
    this.isBlocked = new Uint8Array(qn);
    this.rang = new Uint8Array(n);
    this.sw.handoff = this;
    this.sw.onBatchEnd = () => this.publish();
  }

  // ---- Handoff (the engine asks)

  remote(dest: number, lane: number): boolean {
    return lane < MAX_PAIRS && this.owner[dest * MAX_PAIRS + lane] !== this.me;
  }

  send(dest: number, lane: number, frame: Frame): boolean {
    const to = this.owner[dest * MAX_PAIRS + lane];
    const q = dest * this.lanes + lane;
    if (!this.roomFor(to)) {
      this.block(q);
      return false;
    }
    const fifo = this.sw.fifo;
    const head = fifo.take(frame);
    if (head < 0) return false; // pool empty (or a bad range): the engine stores it, or counts the drop
    const buf = frame.eth;
    const off = frame.ethOff + DST_MAC_OFFSET;
    fifo.frameKey[head] = macKey(macHi(buf, off), macLo(buf, off));
    fifo.frameSrc[head] = -1;
    this.stage(to, q, head);
    return true;
  }

  sendHead(dest: number, lane: number, head: number): boolean {
    const to = this.owner[dest * MAX_PAIRS + lane];
    const q = dest * this.lanes + lane;
    if (!this.roomFor(to)) {
      this.block(q);
      return false;
    }
    this.stage(to, q, head);
    return true;
  }

  private roomFor(to: number): boolean {
    if (this.stagedTo[to] < this.room[to]) return true;
    this.room[to] = (this.out[to] as SpscRing).room();
    return this.stagedTo[to] < this.room[to];
  }

  private stage(to: number, q: number, head: number): void {
    const k = 3 * this.stagedCount++;
    this.staged[k] = to;
    this.staged[k + 1] = q;
    this.staged[k + 2] = head;
    this.stagedTo[to]++;
  }

  private block(q: number): void {
    if (this.isBlocked[q] !== 0) return;
    this.isBlocked[q] = 1;
    this.blocked[this.blockedCount++] = q;
  }

  /** a frame of another thread's partition was freed here: its head goes back after the batch
   * (a copy of this batch may still read its blocks) */
  private handBack(head: number): void {
    let to = 0;
    while (head >= this.partEnd[to]) to++;
    const k = 2 * this.backCount++;
    this.back[k] = to;
    this.back[k + 1] = head;
  }

  /** After a batch's copies ran: staged frames and heads go out, doorbells rung. */
  publish(): void {
    if (this.stagedCount === 0 && this.backCount === 0) return;
    copies.run(); // normally run already; a no-op then
    const st = this.staged;
    for (let i = 0; i < this.stagedCount; i++) {
      const to = st[3 * i];
      const r = this.out[to] as SpscRing;
      const w = r.words;
      const s = r.slot();
      w[s] = st[3 * i + 1];
      w[s + 1] = st[3 * i + 2];
      r.commit();
      this.rang[to] = 1;
    }
    this.tally[0] += this.stagedCount;
    for (let t = 0; t < this.stagedTo.length; t++) {
      this.room[t] -= this.stagedTo[t];
      this.stagedTo[t] = 0;
    }
    this.stagedCount = 0;
    const b = this.back;
    for (let i = 0; i < this.backCount; i++) {
      // capacity covers every frame of the owner's partition: never full
      if (!(this.retOut[b[2 * i]] as SpscRing).push1(b[2 * i + 1])) throw new Error('return ring full (a block handed back twice)');
    }
    this.tally[2] += this.backCount;
    this.backCount = 0;
    for (let t = 0; t < this.rang.length; t++) {
      if (this.rang[t] === 0) continue;
      this.rang[t] = 0;
      try {
        native.eventfdWrite(this.layout.doorbells[t], 1);
      } catch {
        /* the process is going down */
      }
    }
  }

  /**
   * Takes what the other threads sent: our blocks back, then frames for our RX queues (at most
   * `budget` per thread per call, so one busy sender cannot hold this thread), then retries the
   * RX queues whose ring was full. Returns frames taken (more may wait: call again).
   */
  /**
   * The doorbell's work for one turn of the event loop: pump() at most PUMP_ROUNDS times. When
   * frames are still coming after that (a sender as fast as we take), the doorbell is written
   * again and the rest waits for the next turn, so sockets, timers and kicks of this thread run in
   * between (an unbounded loop here let one busy sender hold the thread).
   */
  pumpTurn(doorbell: number): void {
    for (let r = 0; r < PUMP_ROUNDS; r++) if (this.pump() === 0) return;
    native.eventfdWrite(doorbell, 1);
  }

  pump(budget = 1024): number {
    if (this.pumping) return 0;
    this.pumping = true;
    const fifo = this.sw.fifo;
    let got = 0;
    try {
      for (let t = 0; t < this.retIn.length; t++) {
        const r = this.retIn[t];
        if (r === null) continue;
        for (let n = r.available(); n > 0; n--) {
          fifo.reclaim(r.words[r.front()]);
          r.release();
          this.tally[3]++;
        }
      }
      for (let t = 0; t < this.inn.length; t++) {
        const r = this.inn[t];
        if (r === null) continue;
        let n = r.available();
        if (n > budget) n = budget;
        for (; n > 0; n--) {
          const w = r.words;
          const f = r.front();
          const q = w[f];
          const head = w[f + 1];
          r.release();
          this.sw.adopt(q, head);
          got++;
        }
      }
      this.tally[1] += got;
      if (got > 0) this.sw.endAdopt();
      this.retryBlocked();
    } finally {
      this.pumping = false;
    }
    return got;
  }

  /** RX queues whose ring to their thread was full: delivered on as far as the ring has room */
  private retryBlocked(): void {
    const n = this.blockedCount;
    if (n === 0) return;
    this.blockedCount = 0;
    // a retry that finds the ring full again blocks anew: work from a copy of the list
    for (let i = 0; i < n; i++) this.retry[i] = this.blocked[i];
    for (let i = 0; i < n; i++) {
      const q = this.retry[i];
      this.isBlocked[q] = 0;
      const dest = (q / this.lanes) | 0;
      this.sw.resourcesAvailable(dest, q - dest * this.lanes);
    }
  }

  /** frames waiting in the rings to this thread (tests, stats) */
  inbound(): number {
    let n = 0;
    for (const r of this.inn) if (r !== null) n += r.size();
    return n;
  }
}
