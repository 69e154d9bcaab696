// The monitor: watches for the two conditions of the patent together — connection-specific
// resources appearing, and waiting frames whose destination is now known — and moves frames from
// the local data store into the destination guest when both hold.
//
//   drain(i,l)   resources appeared on RX queue l of connection i (RX buffers posted + kick, or
//                ring started): deliver that queue's frames in order as far as deliver() succeeds.
//   resolve(k,i) MAC k became known on connection i (learned or configured): move the unresolved
//                frames for k to i's queues (the RX queue each goes to), in arrival order. The
//                caller then drains i.
//   respread(i)  connection i's set of RX queues changed: its held frames move to the queue each
//                goes to now, each flow's in order.
//   expire(now)  unresolved frames older than the hold time: flood (as a learning switch would)
//                or drop, by policy.
//   sweep()      try every connection with waiting frames: the safety net for a lost kick, run by
//                the periodic tick, not per frame.

import type { ConnectionTable } from './connections';
import {
  Counters,
  DRAINED_FRAMES,
  DROP_HOLD_EXPIRED,
  DROP_SAME_CONNECTION,
  FOLLOWED_FRAMES,
  HANDED_FRAMES,
  HOLD_FLOODED,
  RESOLVED_FRAMES,
} from './counters';
import type { ElasticFifo } from './elastic-fifo';
import type { EnginePort, Handoff } from './port';
import type { StoreEngine } from './store-engine';
import { keyHi, keyLo, macKey, type MacTable } from './classifier';
import { Frame } from '../datapath/frame';
import { copies } from '../datapath/copy-list';

export type UnknownPolicy = 'flood' | 'drop';

/** What the monitor needs of the switch to flood an expired frame: the second test and fast path
 * (or store) for every connection but the source. */
export interface Flooder {
  floodFrom(src: number, frame: Frame): void;
}

export class Monitor {
  /** the queued frame being delivered, described over its blocks */
  private readonly frame: Frame;
  /** respread()'s list of frames, in the order they are taken off their queues */
  private readonly spread: Int32Array;
  private readonly lanes: number;
  /** resolveKnown()'s keys found unknown in one walk */
  private readonly failedKeys = new Float64Array(64);
  /** worker threads: RX queues another thread serves get the frame handed over */
  handoff: Handoff | null = null;

  constructor(
    private readonly fifo: ElasticFifo,
    private readonly conns: ConnectionTable,
    private readonly counters: Counters,
    private readonly store: StoreEngine,
    private readonly flooder: Flooder,
    public holdTimeMs: number,
    public unknownPolicy: UnknownPolicy,
    /** shared clock cell, ms */
    private readonly time: Float64Array,
  ) {
    this.frame = new Frame(fifo.maxFrameBlocks);
    this.spread = new Int32Array(fifo.totalBlocks);
    this.lanes = conns.lanes;
  }

  /** queue of connection i for RX queue l */
  private q(i: number, l: number): number {
    return i * this.lanes + l;
  }

  /** the queue of connection i frame `head` goes to (its blocks are settled) */
  private queueFor(i: number, head: number): number {
    if (this.conns.laned[i] === 0) return i * this.lanes;
    this.fifo.describe(head, this.frame);
    return i * this.lanes + this.conns.laneFor(i, this.frame);
  }

  /** Deliver the frames waiting for RX queue l of connection i in order while it has resources.
   * Marks the port dirty (the caller flushes) and keeps wantResources in step with whether frames
   * still wait there. */
  drain(i: number, l: number): number {
    const fifo = this.fifo;
    const port = this.conns.ports[i] as EnginePort;
    const frame = this.frame;
    const q = this.q(i, l);
    let n = 0;
    const h = this.handoff;
    const remote = h !== null && h.remote(i, l);
    // The blocks may still be waiting for their copy in (stored in this batch): ports read headers.
    if (fifo.qFrames[q] > 0) copies.settle();
    while (fifo.qFrames[q] > 0) {
      const head = fifo.qHead[q];
      const len = fifo.frameLen[head];
      if (remote) {
        // the frame goes to the serving thread in the blocks it waits in
        if (!(h as Handoff).sendHead(i, l, head)) break;
        fifo.shift(q);
        this.counters.frame(i, HANDED_FRAMES, len);
        n++;
        continue;
      }
      fifo.describe(head, frame);
      if (!port.deliver(frame, l)) break;
      // released now, reused by a later copy of this batch at the earliest: its copy out runs first
      fifo.shift(q);
      fifo.release(head);
      this.counters.frame(i, DRAINED_FRAMES, len);
      n++;
    }
    if (n > 0) this.conns.markDirty(i);
    this.conns.want(i, l, fifo.qFrames[q] > 0);
    return n;
  }

  /** drain every RX queue of connection i that has frames waiting */
  drainAll(i: number): number {
    let n = 0;
    if (this.fifo.gFrames[i] === 0) return 0;
    for (let l = 0; l < this.lanes; l++) if (this.fifo.qFrames[this.q(i, l)] > 0) n += this.drain(i, l);
    return n;
  }

  /**
   * Connection i's set of RX queues changed: every frame held for it moves to the queue it goes to
   * now. Taken off queue by queue, each in order: a flow's frames all wait on one queue (the one
   * the old set gave it), so they reach their new one in order too. Returns frames moved.
   */
  respread(i: number): number {
    const fifo = this.fifo;
    if (fifo.gFrames[i] === 0 || this.conns.laned[i] === 0) return 0;
    copies.settle();
    let n = 0;
    for (let l = 0; l < this.lanes; l++) {
      const q = this.q(i, l);
      for (let head = fifo.shift(q); head !== -1; head = fifo.shift(q)) this.spread[n++] = head;
    }
    for (let k = 0; k < n; k++) {
      const head = this.spread[k];
      fifo.push(this.queueFor(i, head), head);
    }
    for (let l = 0; l < this.lanes; l++) this.conns.want(i, l, fifo.qFrames[this.q(i, l)] > 0);
    return n;
  }

  /**
   * Frame cur (after prev) leaves queue q for connection i's queue (the RX queue it goes to there),
   * counted as `counter` on i; a frame that came from i itself is dropped instead (a switch never
   * sends a frame back out of its source). Already in the pool, so the move does not take blocks:
   * it is not refused by i's share limit (the queue may exceed it until drained). Returns 1 when
   * moved, 0 when dropped.
   */
  private moveHeld(q: number, prev: number, cur: number, i: number, counter: number): number {
    const fifo = this.fifo;
    fifo.unlink(q, prev, cur);
    if (fifo.frameSrc[cur] === i) {
      fifo.release(cur);
      this.counters.add(i, DROP_SAME_CONNECTION, 1);
      return 0;
    }
    fifo.push(this.queueFor(i, cur), cur);
    this.counters.add(i, counter, 1);
    return 1;
  }

  /** Move unresolved frames for MAC hi/lo to connection i's queue, in arrival order. Frames that
   * came from i itself are dropped (a switch never sends a frame back out of its source). */
  resolve(hi: number, lo: number, i: number): number {
    const fifo = this.fifo;
    const key = macKey(hi, lo);
    const q = this.store.unresolvedQueue;
    let prev = -1;
    let moved = 0;
    if (this.conns.laned[i] !== 0) copies.settle(); // queueFor() reads the frames' headers
    for (let cur = fifo.qHead[q]; cur !== -1; ) {
      const next = fifo.frameNext[cur];
      if (fifo.frameKey[cur] === key) {
        moved += this.moveHeld(q, prev, cur, i, RESOLVED_FRAMES);
      } else {
        prev = cur;
      }
      cur = next;
    }
    return moved;
  }

  /**
   * Worker threads: another thread learned MACs (the shared table changed). Every unresolved frame
   * whose destination is known now moves to its connection's queue, in arrival order (as
   * resolve() does for one MAC). Returns frames moved; the caller drains.
   */
  resolveKnown(table: MacTable): number {
    const fifo = this.fifo;
    const q = this.store.unresolvedQueue;
    let prev = -1;
    let moved = 0;
    // A MAC may be learned by another thread while this walk runs: its earlier frames were found
    // unknown, its later ones known. Those later ones must wait too (they would overtake), so a key
    // once found unknown stays unknown for the rest of the walk; the next walk (the table's change
    // count moved) takes them all, in order. Past failedKeys.length (64) distinct unknown keys
    // nothing more moves in this walk.
    let unknown = 0;
    const failed = this.failedKeys;
    copies.settle();
    for (let cur = fifo.qHead[q]; cur !== -1; ) {
      const next = fifo.frameNext[cur];
      const key = fifo.frameKey[cur];
      let i = -1;
      let seenUnknown = unknown >= failed.length;
      for (let k = 0; k < unknown && !seenUnknown; k++) if (failed[k] === key) seenUnknown = true;
      if (!seenUnknown) {
        i = table.lookup(keyHi(key), keyLo(key));
        if (i < 0 || this.conns.ports[i] === null) {
          i = -1;
          failed[unknown++] = key;
        }
      }
      if (i >= 0) {
        moved += this.moveHeld(q, prev, cur, i, RESOLVED_FRAMES);
      } else {
        prev = cur;
      }
      cur = next;
    }
    return moved;
  }

  /**
   * MAC key moved from connection `from` to connection `to` (a VM migrated: its new port announced
   * it): the frames held for `from` that carry it move to `to`'s queue, in order, after what `to`
   * already holds (only floods, which came earlier). Frames that came from `to` itself are dropped.
   */
  follow(key: number, from: number, to: number): number {
    const fifo = this.fifo;
    let moved = 0;
    if (this.conns.laned[to] !== 0) copies.settle();
    // queue by queue of `from`: a flow's frames wait on one of them, so they stay in order
    for (let l = 0; l < this.lanes; l++) {
      const fq = this.q(from, l);
      let prev = -1;
      for (let cur = fifo.qHead[fq]; cur !== -1; ) {
        const next = fifo.frameNext[cur];
        if (fifo.frameKey[cur] === key) {
          moved += this.moveHeld(fq, prev, cur, to, FOLLOWED_FRAMES);
        } else {
          prev = cur;
        }
        cur = next;
      }
      if (fifo.qFrames[fq] === 0) this.conns.want(from, l, false);
    }
    return moved;
  }

  /** Unresolved frames past the hold time: flood or drop. The queue is in arrival order, so only
   * its head needs looking at. */
  expire(): void {
    const now = this.time[0];
    const fifo = this.fifo;
    const q = this.store.unresolvedQueue;
    for (let head = fifo.qHead[q]; head !== -1 && now - fifo.frameTime[head] >= this.holdTimeMs; head = fifo.qHead[q]) {
      fifo.shift(q);
      const src = fifo.frameSrc[head];
      if (this.unknownPolicy === 'flood') {
        // released after the flood: its copies (into guests, or into new blocks) read these blocks
        copies.settle();
        fifo.describe(head, this.frame);
        this.counters.add(src, HOLD_FLOODED, 1);
        this.flooder.floodFrom(src, this.frame);
        fifo.release(head);
      } else {
        fifo.release(head);
        this.counters.add(src, DROP_HOLD_EXPIRED, 1);
      }
    }
  }

  /** try to drain every connection with waiting frames; returns frames delivered */
  sweep(): number {
    let n = 0;
    const conns = this.conns;
    for (let k = 0; k < conns.attachedCount; k++) n += this.drainAll(conns.attached[k]);
    return n;
  }
}
