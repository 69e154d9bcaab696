// The elastic FIFO: one local data store cut into packet-sized blocks, a free pool, and queues that
// are linked lists of frames in typed arrays — they grow and shrink with the shared pool instead of
// being fixed rings, so one connection's burst can borrow what the others do not use.
//
// Frames larger than one block are a chain of blocks (blockNext). A frame is named by its first
// block ("head"); per-frame fields (length, queue link, source, destination MAC, arrival time) live
// in arrays indexed by that head block. Why chains and not size classes: one pool means one share
// limit and one free count to reason about, and a burst of 64 KiB GSO frames borrows exactly the
// blocks it needs. The cost is a contiguous copy at delivery, paid only when the chain is not
// already contiguous — and it usually is: the free pool is a stack, released chains are pushed in
// reverse, so the next take() pops ascending, adjacent blocks (see isContiguous()).
//
// Invariant (checkInvariants): blocks taken = blocks returned + blocks queued, and
// free + queued = all blocks, after every public operation of the engine.

import { copyBytes } from './copy';

const NIL = -1;

export class ElasticFifo {
  readonly blockSize: number;
  readonly blockCount: number;
  /** the local data store */
  readonly store: Uint8Array;
  readonly queueCount: number;

  // per block
  private readonly blockNext: Int32Array;
  private readonly freeStack: Int32Array;
  private freeTop: number;
  // per frame, indexed by its head block
  readonly frameLen: Int32Array;
  readonly frameBlocks: Int32Array;
  readonly frameNext: Int32Array;
  readonly frameSrc: Int32Array;
  readonly frameKey: Float64Array;
  readonly frameTime: Float64Array;
  // per queue
  readonly qHead: Int32Array;
  readonly qTail: Int32Array;
  readonly qFrames: Int32Array;
  readonly qBlocks: Int32Array;
  /** [blocks taken, blocks returned, high-water mark of blocks in use] */
  private readonly tally = new Float64Array(3);

  constructor(poolBytes: number, blockSize: number, queueCount: number) {
    if (!Number.isInteger(blockSize) || blockSize < 128 || blockSize % 8 !== 0) {
      throw new RangeError(`blockSize must be a multiple of 8, at least 128 (got ${blockSize})`);
    }
    const blockCount = Math.floor(poolBytes / blockSize);
    if (blockCount < 1) throw new RangeError(`poolBytes ${poolBytes} holds no block of ${blockSize}`);
    this.blockSize = blockSize;
    this.blockCount = blockCount;
    this.queueCount = queueCount;
    this.store = new Uint8Array(blockCount * blockSize);
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
    this.qHead = new Int32Array(queueCount).fill(NIL);
    this.qTail = new Int32Array(queueCount).fill(NIL);
    this.qFrames = new Int32Array(queueCount);
    this.qBlocks = new Int32Array(queueCount);
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

  blocksFor(len: number): number {
    return ((len + this.blockSize - 1) / this.blockSize) | 0;
  }

  /** Take free packet buffers for len bytes and copy the frame in. Returns the head block, or -1 if
   * the pool has too few free blocks (nothing taken then). */
  takeAndWrite(src: Uint8Array, off: number, len: number): number {
    const n = ((len + this.blockSize - 1) / this.blockSize) | 0;
    if (n > this.freeTop) return NIL;
    const bs = this.blockSize;
    const head = this.freeStack[--this.freeTop];
    let b = head;
    let done = 0;
    for (;;) {
      const chunk = len - done < bs ? len - done : bs;
      copyBytes(this.store, b * bs, src, off + done, chunk);
      done += chunk;
      if (done >= len) break;
      const next = this.freeStack[--this.freeTop];
      this.blockNext[b] = next;
      b = next;
    }
    this.blockNext[b] = NIL;
    this.frameLen[head] = len;
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

  /** true when the chain is blocks head, head+1, … so the frame can be delivered from the store directly */
  isContiguous(head: number): boolean {
    let b = head;
    for (let k = this.frameBlocks[head] - 1; k > 0; k--) {
      const next = this.blockNext[b];
      if (next !== b + 1) return false;
      b = next;
    }
    return true;
  }

  /** copy a chained frame into dst[dstOff…) */
  gather(head: number, dst: Uint8Array, dstOff: number): void {
    const bs = this.blockSize;
    const len = this.frameLen[head];
    let b = head;
    for (let done = 0; done < len; ) {
      const chunk = len - done < bs ? len - done : bs;
      copyBytes(dst, dstOff + done, this.store, b * bs, chunk);
      done += chunk;
      b = this.blockNext[b];
    }
  }

  push(q: number, head: number): void {
    this.frameNext[head] = NIL;
    const tail = this.qTail[q];
    if (tail === NIL) this.qHead[q] = head;
    else this.frameNext[tail] = head;
    this.qTail[q] = head;
    this.qFrames[q]++;
    this.qBlocks[q] += this.frameBlocks[head];
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
    this.qBlocks[q] -= this.frameBlocks[cur];
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
