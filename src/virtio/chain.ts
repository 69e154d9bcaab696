// A scatter list of guest-memory segments, preallocated once per ring so that walking a
// descriptor chain allocates nothing. For mergeable RX buffers several chains are gathered into one
// list; chainHead/chainEnd/chainCap record where each chain's segments stop.
export const MAX_SEGMENTS = 4096;
export const MAX_CHAINS = 1024;

export class Segments {
  readonly buf: Uint8Array[];
  /** copy-list area id of buf[i] */
  readonly area: Int32Array;
  readonly off: Int32Array;
  readonly len: Int32Array;
  count = 0;
  total = 0;
  /**
   * index the segment list may not reach: a chain that would is refused as having more than
   * MAX_SEGMENTS segments. A list that gathers one chain after another (a TX burst) moves it on
   * before each chain with startChain(), so each chain may have MAX_SEGMENTS of its own.
   */
  limit = MAX_SEGMENTS;
  readonly chainHead = new Uint16Array(MAX_CHAINS);
  /** index one past the chain's last segment */
  readonly chainEnd = new Int32Array(MAX_CHAINS);
  readonly chainCap = new Float64Array(MAX_CHAINS);
  chains = 0;

  /** capacity: segments in all the chains of one gather (at least MAX_SEGMENTS) */
  constructor(readonly capacity = MAX_SEGMENTS) {
    const empty = new Uint8Array(0);
    this.buf = new Array<Uint8Array>(capacity);
    for (let i = 0; i < capacity; i++) this.buf[i] = empty;
    this.area = new Int32Array(capacity);
    this.off = new Int32Array(capacity);
    this.len = new Int32Array(capacity);
  }

  reset(): void {
    this.count = 0;
    this.total = 0;
    this.chains = 0;
    this.limit = MAX_SEGMENTS;
  }

  /** The next chain may have MAX_SEGMENTS segments of its own (within the capacity). */
  startChain(): void {
    const l = this.count + MAX_SEGMENTS;
    this.limit = l < this.capacity ? l : this.capacity;
  }

  /** index of chain c's first segment */
  chainStart(c: number): number {
    return c === 0 ? 0 : this.chainEnd[c - 1];
  }
}
