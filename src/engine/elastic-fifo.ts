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

export class ElasticFifo {
  readonly blockSize: number;
  readonly blockCount: number;
  /** the local data store: Ethernet bytes of the queued frames */
  readonly store: Uint8Array;
  /** its copy-list area id */
  readonly storeArea: number;
  readonly queueCount: number;

  // per block
  private readonly blockNext: Int32Array;
  private readonly freeStack: Int32Array;
  private freeTop: number;
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
  /** [blocks taken, blocks returned, high-water mark of blocks in use] */
  private readonly tally = new Float64Array(3);

  /** groupSize consecutive queues form one group: queue q is in group floor(q / groupSize) */
  constructor(poolBytes: number, blockSize: number, queueCount: number, readonly groupSize = 1) {
    if (!Number.isInteger(blockSize) || blockSize < 128 || blockSize % 8 !== 0) {
      throw new RangeError(`blockSize must be a multiple of 8, at least 128 (got ${blockSize})`);
    }
    const blockCount = Math.floor(poolBytes / blockSize);
    if (blockCount < 1) throw new RangeError(`poolBytes ${poolBytes} holds no block of ${blockSize}`);
    this.blockSize = blockSize;
    this.blockCount = blockCount;
    this.queueCount = queueCount;
    this.store = new Uint8Array(blockCount * blockSize);
    this.storeArea = copies.register(this.store);
    this.frameHdr = new Uint8Array(blockCount * ENGINE_HDR_LEN);
    this.blockNext = new Int32Array(blockCount).fill(NIL);
    this.freeStack = new Int32Array(blockCount);
    for (let i = 0; i < blockCount; i++) this.freeStack[i] = blockCount - 1 - i; // pops 0, 1, 2, …
    this.freeTop = blockCount;
    this.frameLen = new Int32Array(blockCount);
    this.frameBlocks = new Int32Array(blockCount);
    this.frameNext = new Int32Array(blockCount).fill(NIL);
    this.frameSrc = new Int32Array(blockCount);
    this.frameKey = new Float64Array(blockCount);
    this.frameTime = new Float64Array(blockCount);
    this.frameTxq = new Int16Array(blockCount);
    this.qHead = new Int32Array(queueCount).fill(NIL);
    this.qTail = new Int32Array(queueCount).fill(NIL);
    this.qFrames = new Int32Array(queueCount);
    this.qBlocks = new Int32Array(queueCount);
    this.qGroup = new Int32Array(queueCount);
    for (let q = 0; q < queueCount; q++) this.qGroup[q] = Math.floor(q / groupSize);
    const groups = Math.ceil(queueCount / groupSize);
    this.gFrames = new Int32Array(groups);
    this.gBlocks = new Int32Array(groups);
  }

  get freeBlocks(): number {
    return this.freeTop;
  }
  get blocksInUse(): number {
    return this.blockCount - this.freeTop;
  }
  get highWater(): number {
    return this.tally[2];
  }
  get blocksTaken(): number {
    return this.tally[0];
  }
  get blocksReturned(): number {
    return this.tally[1];
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
    this.tally[0] += n;
    const inUse = this.blockCount - this.freeTop;
    if (inUse > this.tally[2]) this.tally[2] = inUse;
    return head;
  }

  /** Return a frame's blocks to the free pool (it must not be on a queue any more). Pushed in
   * reverse so the next take() gets them back in ascending order. */
  release(head: number): void {
    const n = this.frameBlocks[head];
    let b = head;
    for (let k = n - 1; k >= 0; k--) {
      this.freeStack[this.freeTop + k] = b;
      b = this.blockNext[b];
    }
    this.freeTop += n;
    this.tally[1] += n;
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

  /** Walks every queue and the free pool; returns a description of the first broken invariant, or null. */
  checkInvariants(): string | null {
    let queued = 0;
    const seen = new Uint8Array(this.blockCount);
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
      if (seen[this.freeStack[i]]++) return `free block ${this.freeStack[i]} is also queued or free twice`;
    }
    if (this.freeTop + queued !== this.blockCount) {
      return `free ${this.freeTop} + queued ${queued} != ${this.blockCount} blocks (leak)`;
    }
    if (this.tally[0] !== this.tally[1] + queued) {
      return `taken ${this.tally[0]} != returned ${this.tally[1]} + queued ${queued}`;
    }
    return null;
  }
}
