// A single-producer single-consumer ring of fixed-size messages (int32 words) in a
// SharedArrayBuffer: the one structure two data-plane threads exchange frames through. Lock-free:
// the producer alone writes `tail`, the consumer alone writes `head`; each reads the other's with
// Atomics.load, and a message's words are written before the Atomics.store that publishes it (and
// read after the Atomics.load that sees it), which orders them in the JavaScript memory model.
//
//   words: [head, …pad…, tail, …pad…, slots: capacity × width]   (head and tail on their own
//   64-byte lines, so the two threads do not write one cache line)
//
// Nothing allocates after construction; push/pop take and give plain numbers.

const HEAD = 0;
const TAIL = 16;
const SLOTS = 32;

export class SpscRing {
  readonly words: Int32Array;
  readonly capacity: number;
  readonly width: number;
  private readonly mask: number;
  /** the producer's copy of tail, the consumer's copy of head (each side uses one) */
  private tailLocal: number;
  private headLocal: number;
  /** what the other side published last (re-read only when the cached value says full / empty) */
  private headSeen: number;
  private tailSeen: number;

  /** capacity: messages, a power of two; width: int32 words per message */
  static bytesFor(capacity: number, width: number): number {
    return (SLOTS + capacity * width) * 4;
  }

  static create(capacity: number, width: number): SpscRing {
    return new SpscRing(new SharedArrayBuffer(SpscRing.bytesFor(capacity, width)), capacity, width);
  }

  constructor(readonly sab: SharedArrayBuffer, capacity: number, width: number) {
    if (capacity < 2 || (capacity & (capacity - 1)) !== 0) throw new RangeError(`ring capacity ${capacity} is not a power of two`);
    if (sab.byteLength < SpscRing.bytesFor(capacity, width)) throw new RangeError('ring buffer too small');
    this.words = new Int32Array(sab);
    this.capacity = capacity;
    this.width = width;
    this.mask = capacity - 1;
    this.tailLocal = Atomics.load(this.words, TAIL);
    this.headLocal = Atomics.load(this.words, HEAD);
    this.headSeen = this.headLocal;
    this.tailSeen = this.tailLocal;
  }

  // ---- producer

  /** room for one more message (the producer asks before it writes one) */
  hasRoom(): boolean {
    if (((this.tailLocal - this.headSeen) | 0) < this.capacity) return true;
    this.headSeen = Atomics.load(this.words, HEAD);
    return ((this.tailLocal - this.headSeen) | 0) < this.capacity;
  }

  /** messages that fit now */
  room(): number {
    this.headSeen = Atomics.load(this.words, HEAD);
    return this.capacity - ((this.tailLocal - this.headSeen) | 0);
  }

  /** offset of the next message's first word (after hasRoom() said yes); commit() publishes it */
  slot(): number {
    return SLOTS + (this.tailLocal & this.mask) * this.width;
  }

  /** publishes the message written at slot() */
  commit(): void {
    this.tailLocal = (this.tailLocal + 1) | 0;
    Atomics.store(this.words, TAIL, this.tailLocal);
  }

  /** one-word message (block heads on a return ring): false when full */
  push1(v: number): boolean {
    if (!this.hasRoom()) return false;
    this.words[this.slot()] = v;
    this.commit();
    return true;
  }

  // ---- consumer

  /** messages waiting */
  available(): number {
    if (this.tailSeen === this.headLocal) this.tailSeen = Atomics.load(this.words, TAIL);
    return (this.tailSeen - this.headLocal) | 0;
  }

  /** offset of the first waiting message's first word (after available() > 0); release() frees it */
  front(): number {
    return SLOTS + (this.headLocal & this.mask) * this.width;
  }

  release(): void {
    this.headLocal = (this.headLocal + 1) | 0;
    Atomics.store(this.words, HEAD, this.headLocal);
  }

  /** how many messages are in the ring, as seen from either side (control path, tests) */
  size(): number {
    return (Atomics.load(this.words, TAIL) - Atomics.load(this.words, HEAD)) | 0;
  }
}
