// The store engine — the patent's "otherwise" branch: take free packet buffers from the elastic
// FIFO, copy the frame in, and submit it to the numbered queue of its destination connection or,
// for an unknown destination, to the named queue of unresolved frames. The copy is recorded in the
// copy list and runs with the batch. Every refusal is a counted
// drop: pool exhausted, or the queue's share limit reached.

import type { ConnectionTable } from './connections';
import {
  Counters,
  DROP_POOL_EXHAUSTED,
  DROP_MALFORMED,
  DROP_SHARE_LIMIT,
  STORED_FRAMES,
} from './counters';
import type { ElasticFifo } from './elastic-fifo';
import { macKey } from './classifier';
import type { Frame } from '../datapath/frame';

export class StoreEngine {
  /** the named queue of unresolved frames: the queue after the numbered ones */
  readonly unresolvedQueue: number;

  constructor(
    private readonly fifo: ElasticFifo,
    private readonly conns: ConnectionTable,
    private readonly counters: Counters,
    /** most blocks the unresolved queue may hold */
    public unresolvedShareLimit: number,
    /** shared clock cell, ms: stamps each stored frame */
    private readonly time: Float64Array,
  ) {
    this.unresolvedQueue = conns.maxPorts * conns.lanes;
  }

  /**
   * Store a frame on queue q: a destination connection's RX-queue queue (connection * lanes +
   * lane), or this.unresolvedQueue with the destination MAC as dstHi/dstLo (see classifier.ts).
   * src is the connection it came from (-1 if none). Counted on the destination connection, or on
   * src for unresolved frames; the share limit is the connection's, over all its queues. Returns
   * false when dropped.
   */
  store(q: number, frame: Frame, src: number, dstHi: number, dstLo: number): boolean {
    const len = frame.len;
    const fifo = this.fifo;
    const unresolved = q === this.unresolvedQueue;
    const dest = fifo.qGroup[q];
    const chargeTo = unresolved ? src : dest;
    const limit = unresolved ? this.unresolvedShareLimit : this.conns.shareLimit[dest];
    const need = fifo.blocksFor(len);
    if (fifo.gBlocks[dest] + need > limit) {
      this.counters.add(chargeTo, DROP_SHARE_LIMIT, 1);
      return false;
    }
    const head = fifo.take(frame);
    if (head < 0) {
      this.counters.add(chargeTo, head === -1 ? DROP_POOL_EXHAUSTED : DROP_MALFORMED, 1);
      return false;
    }
    fifo.frameSrc[head] = src;
    fifo.frameKey[head] = macKey(dstHi, dstLo);
    fifo.frameTime[head] = this.time[0];
    fifo.push(q, head);
    this.counters.frame(chargeTo, STORED_FRAMES, len);
    return true;
  }
}
