// The elastic FIFO: one local data store cut into packet-sized blocks, a free pool, and queues that
// are linked lists of frames in typed arrays — they grow and shrink with the shared pool instead of
// being fixed rings, so one connection's burst can borrow what the others do not use.
//
// Frames larger than one block are a chain of blocks (blockNext). A frame is named by its first
// block ("head"); per-frame fields (length, virtio-net header, queue link, source, destination MAC,
// arrival time) live in arrays indexed by that head block, so the blocks hold Ethernet bytes only
// and JavaScript never writes into them: the copy list does (a block released in a batch may still
// be read by a copy of that batch). Why chains and not size classes: one pool means one share limit
// and one free count to reason about, and a burst of 64 KiB GSO frames borrows exactly the blocks
// it needs; delivery copies block by block, so a chain need not be contiguous. The free pool is a
// stack, released chains are pushed in reverse, so the next take() pops ascending blocks.
//
// Invariant (checkInvariants): blocks taken = blocks returned + blocks queued, and
// free + queued = all blocks, after every public operation of the engine.

import { copies } from '../datapath/copy-list';
import { ENGINE_HDR_LEN, MAX_ETH_LEN } from '../datapath/layout';
import type { Frame } from '../datapath/frame';

const NIL = -1;

/**
 * Where the blocks of a data store shared by several data-plane threads lie (worker threads):
 * one SharedArrayBuffer holds the store and every per-block array, another (per thread) the
 * queue counts the control thread reads. Each thread takes free blocks only from its own
 * partition [first, first + count); a frame handed to another thread (src/workers/) travels as
 * its head block and keeps its blocks, and the thread that frees them hands them back to their
 * owner (releaseForeign), so no block is in two free pools.
 */
export interface FifoShare {
  /** store + per-block arrays: sharedStoreBytes(totalBlocks, blockSize) */
  blocks: SharedArrayBuffer;
  /** this thread's counters and queue arrays: sharedLocalBytes(queueCount, groupSize) */
  local: SharedArrayBuffer;
  totalBlocks: number;
  first: number;
  count: number;
  /** frees a frame whose blocks belong to another thread's partition (its head block) */
  releaseForeign: (head: number) => void;
  /** another thread made the buffers: read them, initialise nothing (a control-path view) */
  view?: boolean;
}

const align8 = (n: number): number => (n + 7) & ~7;

/** the per-block arrays, in this order, in FifoShare.blocks after the store */
function blockArrays(buf: ArrayBuffer | SharedArrayBuffer, at: number, total: number): {
  blockNext: Int32Array; frameLen: Int32Array; frameBlocks: Int32Array; frameNext: Int32Array; frameSrc: Int32Array;
  frameKey: Float64Array; frameTime: Float64Array; frameTxq: Int16Array; frameHdr: Uint8Array; end: number;
} {
  let o = at;
  const f64 = (): Float64Array => { const a = new Float64Array(buf, o, total); o += 8 * total; return a; };
  const i32 = (): Int32Array => { const a = new Int32Array(buf, o, total); o += align8(4 * total); return a; };
  const frameKey = f64();
  const frameTime = f64();
  const blockNext = i32();
  const frameLen = i32();
  const frameBlocks = i32();
  const frameNext = i32();
  const frameSrc = i32();
  const frameTxq = new Int16Array(buf, o, total);
  o += align8(2 * total);
  const frameHdr = new Uint8Array(buf, o, total * ENGINE_HDR_LEN);
  o += align8(total * ENGINE_HDR_LEN);
  return { blockNext, frameLen, frameBlocks, frameNext, frameSrc, frameKey, frameTime, frameTxq, frameHdr, end: o };
}

/** per-thread words: [freeTop, taken, returned, highWater, handedBack] as Float64 */
const LOCAL_SCALARS = 8;

function localArrays(buf: ArrayBuffer | SharedArrayBuffer, queueCount: number, groupSize: number): {
  scalars: Float64Array; qHead: Int32Array; qTail: Int32Array; qFrames: Int32Array; qBlocks: Int32Array; gFrames: Int32Array; gBlocks: Int32Array; end: number;
} {
  let o = 0;
  const scalars = new Float64Array(buf, o, LOCAL_SCALARS);
  o += 8 * LOCAL_SCALARS;
  const i32 = (n: number): Int32Array => { const a = new Int32Array(buf, o, n); o += align8(4 * n); return a; };
  const groups = Math.ceil(queueCount / groupSize);
  const qHead = i32(queueCount);
  const qTail = i32(queueCount);
  const qFrames = i32(queueCount);
  const qBlocks = i32(queueCount);
  const gFrames = i32(groups);
  const gBlocks = i32(groups);
  return { scalars, qHead, qTail, qFrames, qBlocks, gFrames, gBlocks, end: o };
}

export class ElasticFifo {
  readonly blockSize: number;
  /** blocks of this pool (of this thread's partition when the store is shared) */
  readonly blockCount: number;
  /** the local data store: Ethernet bytes of the queued frames */
  readonly store: Uint8Array;
  /** its copy-list area id */
  readonly storeArea: number;
  readonly queueCount: number;
  /** the first block of this pool's partition (0 unless shared) */
  readonly first: number;
  /** blocks of the whole store (= blockCount unless shared) */
  readonly totalBlocks: number;
  /** the store is shared with other threads (FifoShare) */
  readonly shared: boolean;
  private readonly releaseForeign: ((head: number) => void) | null;

  // per block
  private readonly blockNext: Int32Array;
  private readonly freeStack: Int32Array;
  // per frame, indexed by its head block
  /** engine length: header + Ethernet bytes */
  readonly frameLen: Int32Array;
  /** the frame's 12-byte virtio-net header, at head * ENGINE_HDR_LEN */
  readonly frameHdr: Uint8Array;
  readonly frameBlocks: Int32Array;
  readonly frameNext: Int32Array;
  readonly frameSrc: Int32Array;
  readonly frameKey: Float64Array;
  readonly frameTime: Float64Array;
  /** the sender's TX queue pair (Frame.txQueue), -1: a single-queue sender */
  readonly frameTxq: Int16Array;
  // per queue
  readonly qHead: Int32Array;
  readonly qTail: Int32Array;
  readonly qFrames: Int32Array;
  readonly qBlocks: Int32Array;
  /** per queue: its group (a connection's queues, one per RX queue of it, form one group) */
  readonly qGroup: Int32Array;
  // per group: what its queues hold together (share limits and "anything waiting" are per group)
  readonly gFrames: Int32Array;
  readonly gBlocks: Int32Array;
  /** [free top, blocks taken, blocks returned, high-water mark of blocks in use, frames handed back to their owner] */
  private readonly tally: Float64Array;

  static sharedStoreBytes(totalBlocks: number, blockSize: number): number {
    return blockArrays(new ArrayBuffer(0), 0, 0).end + align8(totalBlocks * blockSize) + totalBlocks * (8 + 8 + 4 * 5 + 2 + ENGINE_HDR_LEN) + 64;
  }
  static sharedLocalBytes(queueCount: number, groupSize: number): number {
    const groups = Math.ceil(queueCount / groupSize);
    return 8 * LOCAL_SCALARS + 4 * align8(4 * queueCount) / 4 * 4 + 2 * align8(4 * groups) + 64;
  }

  /** groupSize consecutive queues form one group: queue q is in group floor(q / groupSize) */
  constructor(poolBytes: number, blockSize: number, queueCount: number, readonly groupSize = 1, share: FifoShare | null = null) {
    if (!Number.isInteger(blockSize) || blockSize < 128 || blockSize % 8 !== 0) {
      throw new RangeError(`blockSize must be a multiple of 8, at least 128 (got ${blockSize})`);
    }
    const blockCount = share === null ? Math.floor(poolBytes / blockSize) : share.count;
    if (blockCount < 1) throw new RangeError(`poolBytes ${poolBytes} holds no block of ${blockSize}`);
    const total = share === null ? blockCount : share.totalBlocks;
    this.blockSize = blockSize;
    this.blockCount = blockCount;
    this.totalBlocks = total;
    this.first = share === null ? 0 : share.first;
    this.queueCount = queueCount;
    this.shared = share !== null;
    this.releaseForeign = share === null ? null : share.releaseForeign;
    const blocksBuf = share === null ? new ArrayBuffer(align8(total * blockSize) + total * (8 + 8 + 4 * 5 + 2 + ENGINE_HDR_LEN) + 64) : share.blocks;
    this.store = new Uint8Array(blocksBuf, 0, total * blockSize);
    const b = blockArrays(blocksBuf, align8(total * blockSize), total);
    this.blockNext = b.blockNext;
    this.frameLen = b.frameLen;
    this.frameBlocks = b.frameBlocks;
    this.frameNext = b.frameNext;
    this.frameSrc = b.frameSrc;
    this.frameKey = b.frameKey;
    this.frameTime = b.frameTime;
    this.frameTxq = b.frameTxq;
    this.frameHdr = b.frameHdr;
    const l = localArrays(share === null ? new ArrayBuffer(ElasticFifo.sharedLocalBytes(queueCount, groupSize)) : share.local, queueCount, groupSize);
    this.tally = l.scalars;
    this.qHead = l.qHead;
    this.qTail = l.qTail;
    this.qFrames = l.qFrames;
    this.qBlocks = l.qBlocks;
    this.gFrames = l.gFrames;
    this.gBlocks = l.gBlocks;
    this.qGroup = new Int32Array(queueCount);
    for (let q = 0; q < queueCount; q++) this.qGroup[q] = Math.floor(q / groupSize);
    this.freeStack = new Int32Array(blockCount);
    const view = share !== null && share.view === true;
    this.storeArea = view ? 0 : copies.register(this.store);
    if (view) return;
    const first = this.first;
    for (let i = first; i < first + blockCount; i++) {
      this.blockNext[i] = NIL;
      this.frameNext[i] = NIL;
    }
    for (let i = 0; i < blockCount; i++) this.freeStack[i] = first + blockCount - 1 - i; // pops first, first + 1, …
    this.tally[0] = blockCount;
    this.qHead.fill(NIL);
    this.qTail.fill(NIL);
  }

  private get freeTop(): number {
    return this.tally[0];
  }
  private set freeTop(v: number) {
    this.tally[0] = v;
  }

  get freeBlocks(): number {
    return this.freeTop;
  }
  get blocksInUse(): number {
    return this.blockCount - this.freeTop;
  }
  get highWater(): number {
    return this.tally[3];
  }
  get blocksTaken(): number {
    return this.tally[1];
  }
  get blocksReturned(): number {
    return this.tally[2];
  }
  /** frames of another thread's partition freed here and handed back to it (shared store) */
  get handedBack(): number {
    return this.tally[4];
  }

  /** blocks a frame of engine length len takes (its Ethernet bytes; the header lives in frameHdr) */
  blocksFor(len: number): number {
    const eth = len - ENGINE_HDR_LEN;
    return eth <= 0 ? 1 : ((eth + this.blockSize - 1) / this.blockSize) | 0;
  }

  /**
   * Take free packet buffers for the frame and record the copy of its Ethernet bytes into them
   * (the header is kept in frameHdr). Returns the head block, -1 if the pool has too few free
   * blocks, -2 if the frame's own ranges are bad (nothing taken either way).
   */
  take(frame: Frame): number {
    const len = frame.len;
    const n = this.blocksFor(len);
    if (n > this.freeTop) return NIL;
    const bs = this.blockSize;
    const top = this.freeTop;
    const head = this.freeStack[--this.freeTop];
    let b = head;
    let left = len - ENGINE_HDR_LEN;
    frame.seek(0);
    for (;;) {
      const chunk = left < bs ? left : bs;
      if (!frame.copyOut(chunk, this.storeArea, b * bs)) {
        this.freeTop = top; // the blocks were only read from the stack: nothing to undo but this
        return -2;
      }
      left -= chunk;
      if (left <= 0) break;
      const next = this.freeStack[--this.freeTop];
      this.blockNext[b] = next;
      b = next;
    }
    this.blockNext[b] = NIL;
    const h = frame.hdr;
    const ho = frame.hdrOff;
    const d = head * ENGINE_HDR_LEN;
    const fh = this.frameHdr;
    for (let k = 0; k < ENGINE_HDR_LEN; k++) fh[d + k] = h[ho + k];
    this.frameLen[head] = len;
    this.frameTxq[head] = frame.txQueue;
    this.frameBlocks[head] = n;
    this.frameNext[head] = NIL;
    this.tally[1] += n;
    const inUse = this.blockCount - this.freeTop;
    if (inUse > this.tally[3]) this.tally[3] = inUse;
    return head;
  }

  /** Return a frame's blocks to the free pool (it must not be on a queue any more). Pushed in
   * reverse so the next take() gets them back in ascending order. */
  release(head: number): void {
    if (this.releaseForeign !== null && (head < this.first || head >= this.first + this.blockCount)) {
      this.tally[4]++;
      this.releaseForeign(head);
      return;
    }
    this.reclaim(head);
  }

  /** A frame of this pool's own partition comes back (freed here, or handed back by the thread
   * that freed it): its blocks return to the free pool. */
  reclaim(head: number): void {
    const n = this.frameBlocks[head];
    let b = head;
    for (let k = n - 1; k >= 0; k--) {
      this.freeStack[this.freeTop + k] = b;
      b = this.blockNext[b];
    }
    this.freeTop += n;
    this.tally[2] += n;
  }

  /** most blocks one frame can take: the capacity a Frame needs for describe() */
  get maxFrameBlocks(): number {
    return Math.ceil(MAX_ETH_LEN / this.blockSize) + 1;
  }

  /**
   * Points frame at the queued frame `head`: header in frameHdr, Ethernet bytes in its blocks.
   * The caller settles the copy list first if it reads the bytes itself.
   */
  describe(head: number, frame: Frame): void {
    const bs = this.blockSize;
    const len = this.frameLen[head];
    const eth = len - ENGINE_HDR_LEN;
    frame.hdr = this.frameHdr;
    frame.hdrOff = head * ENGINE_HDR_LEN;
    frame.eth = this.store;
    frame.ethOff = head * bs;
    frame.ethPeek = eth < bs ? eth : bs;
    frame.len = len;
    frame.txQueue = this.frameTxq[head];
    frame.segFirst = 0;
    frame.segSkip = 0;
    let b = head;
    let k = 0;
    for (let left = eth; left > 0; left -= bs, k++) {
      frame.segBuf[k] = this.store;
      frame.segArea[k] = this.storeArea;
      frame.segOff[k] = b * bs;
      frame.segLen[k] = left < bs ? left : bs;
      b = this.blockNext[b];
    }
    frame.segEnd = k;
  }

  /** When queue q's first frame was stored (ms, the engine's clock), NaN when q is empty: the age
   * of a queue's oldest frame, read on the control path from the stamp the hold timer uses. */
  headTime(q: number): number {
    const head = this.qHead[q];
    return head === NIL ? NaN : this.frameTime[head];
  }

  push(q: number, head: number): void {
    this.frameNext[head] = NIL;
    const tail = this.qTail[q];
    if (tail === NIL) this.qHead[q] = head;
    else this.frameNext[tail] = head;
    this.qTail[q] = head;
    this.qFrames[q]++;
    const n = this.frameBlocks[head];
    this.qBlocks[q] += n;
    const g = this.qGroup[q];
    this.gFrames[g]++;
    this.gBlocks[g] += n;
  }

  /** remove and return the first frame of queue q (-1 if empty) */
  shift(q: number): number {
    const head = this.qHead[q];
    if (head === NIL) return NIL;
    this.unlink(q, NIL, head);
    return head;
  }

  /** remove frame cur from queue q, where prev is the frame before it (-1 if cur is first) */
  unlink(q: number, prev: number, cur: number): void {
    const next = this.frameNext[cur];
    if (prev === NIL) this.qHead[q] = next;
    else this.frameNext[prev] = next;
    if (this.qTail[q] === cur) this.qTail[q] = prev;
    this.frameNext[cur] = NIL;
    this.qFrames[q]--;
    const n = this.frameBlocks[cur];
    this.qBlocks[q] -= n;
    const g = this.qGroup[q];
    this.gFrames[g]--;
    this.gBlocks[g] -= n;
  }

  /** when the oldest frame of group g's queues was stored (NaN: none waits) */
  groupHeadTime(g: number): number {
    let t = NaN;
    const first = g * this.groupSize;
    for (let q = first; q < first + this.groupSize && q < this.queueCount; q++) {
      const h = this.qHead[q];
      if (h !== NIL && !(this.frameTime[h] >= t)) t = this.frameTime[h];
    }
    return t;
  }

  /** release every frame of group g's queues; returns how many frames */
  clearGroup(g: number): number {
    let n = 0;
    const first = g * this.groupSize;
    for (let q = first; q < first + this.groupSize && q < this.queueCount; q++) n += this.clear(q);
    return n;
  }

  /** release every frame of queue q; returns how many frames */
  clear(q: number): number {
    let n = 0;
    for (let head = this.shift(q); head !== NIL; head = this.shift(q)) {
      this.release(head);
      n++;
    }
    return n;
  }

  /** own blocks not in the free pool: queued here, or (shared store) with another thread */
  get outstanding(): number {
    return this.blockCount - this.freeTop;
  }

  /** blocks queued here, all of them and those of this pool's own partition (control path) */
  queuedBlocks(): { all: number; own: number } {
    let all = 0;
    let own = 0;
    const end = this.first + this.blockCount;
    for (let q = 0; q < this.queueCount; q++) {
      all += this.qBlocks[q];
      if (!this.shared) continue;
      for (let f = this.qHead[q]; f !== NIL; f = this.frameNext[f]) if (f >= this.first && f < end) own += this.frameBlocks[f];
    }
    return { all, own: this.shared ? own : all };
  }

  /**
   * Walks every queue and the free pool; returns a description of the first broken invariant, or
   * null. With a shared store, blocks of this partition may be queued by other threads, so the
   * count check is: free + own blocks queued here + `elsewhere` = this partition (elsewhere: what the
   * caller knows the other threads and the rings between them hold; -1 skips the check).
   */
  checkInvariants(elsewhere = 0): string | null {
    let queued = 0;
    let ownQueued = 0;
    const end = this.first + this.blockCount;
    const seen = new Uint8Array(this.totalBlocks);
    const gf = new Int32Array(this.gFrames.length);
    const gb = new Int32Array(this.gBlocks.length);
    for (let q = 0; q < this.queueCount; q++) {
      gf[this.qGroup[q]] += this.qFrames[q];
      gb[this.qGroup[q]] += this.qBlocks[q];
    }
    for (let g = 0; g < gf.length; g++) {
      if (gf[g] !== this.gFrames[g] || gb[g] !== this.gBlocks[g]) return `group ${g}: ${this.gFrames[g]} frames / ${this.gBlocks[g]} blocks counted, its queues hold ${gf[g]} / ${gb[g]}`;
    }
    for (let q = 0; q < this.queueCount; q++) {
      let frames = 0;
      let blocks = 0;
      let last = NIL;
      for (let f = this.qHead[q]; f !== NIL; f = this.frameNext[f]) {
        frames++;
        let b = f;
        for (let k = 0; k < this.frameBlocks[f]; k++) {
          if (b === NIL) return `queue ${q}: frame ${f} chain shorter than ${this.frameBlocks[f]}`;
          if (seen[b]++) return `block ${b} is in two places`;
          blocks++;
          if (b >= this.first && b < end) ownQueued++;
          b = this.blockNext[b];
        }
        if (frames > this.blockCount) return `queue ${q} loops`;
        last = f;
      }
      if (last !== this.qTail[q]) return `queue ${q}: tail ${this.qTail[q]} but last frame ${last}`;
      if (frames !== this.qFrames[q]) return `queue ${q}: ${this.qFrames[q]} frames counted, ${frames} linked`;
      if (blocks !== this.qBlocks[q]) return `queue ${q}: ${this.qBlocks[q]} blocks counted, ${blocks} linked`;
      queued += blocks;
    }
    for (let i = 0; i < this.freeTop; i++) {
      const b = this.freeStack[i];
      if (b < this.first || b >= end) return `free block ${b} is outside this pool's partition`;
      if (seen[b]++) return `free block ${b} is also queued or free twice`;
    }
    if (!this.shared) {
      if (this.freeTop + queued !== this.blockCount) return `free ${this.freeTop} + queued ${queued} != ${this.blockCount} blocks (leak)`;
      if (this.tally[1] !== this.tally[2] + queued) return `taken ${this.tally[1]} != returned ${this.tally[2]} + queued ${queued}`;
      return null;
    }
    if (this.tally[1] - this.tally[2] !== this.blockCount - this.freeTop) return `taken ${this.tally[1]} - returned ${this.tally[2]} != ${this.blockCount - this.freeTop} blocks out of the pool`;
    if (elsewhere >= 0 && this.freeTop + ownQueued + elsewhere !== this.blockCount) {
      return `free ${this.freeTop} + own queued here ${ownQueued} + elsewhere ${elsewhere} != ${this.blockCount} blocks of this partition (leak)`;
    }
    return null;
  }
}
