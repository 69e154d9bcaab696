// Test doubles for the offload fuzz target (offload.ts):
//   Placer    lays a packet's Ethernet bytes over several segments of a registered area (odd cuts,
//             cuts inside the headers, a first segment that starts segSkip bytes in, garbage in
//             the gaps), with the header elsewhere and eth/ethPeek as a TX ring's frame has them
//   FuzzSink  a PacketSink with bounded buffers: ring size (maxPackets), buffers posted, buffer
//             capacity, a broken ring, a used-up descriptor budget, and buffers whose range the
//             copy list must refuse. It
//             records what each packet should hold and throws on any write outside what it gave.
import { copies } from '../../src/datapath/copy-list';
import { Frame, PEEK_MIN } from '../../src/datapath/frame';
import { MAX_ETH_LEN } from '../../src/datapath/layout';
import type { PacketSink } from '../../src/ports/offload-fallback';
import { PIECE_FRAME, Pieces, RES_BAD, RES_BROKEN, RES_BUDGET, RES_OK, RES_SHORT, RES_TOO_BIG } from '../../src/ports/vhost-user/rx';
import { MAX_CHAINS } from '../../src/virtio/chain';
import type { Rng } from './targets';
import { HDR } from './packets';

export { RES_BAD, RES_BROKEN, RES_BUDGET, RES_OK, RES_SHORT, RES_TOO_BIG };

const MAX_SEGS = 16;
const GAP = 48;
const SRC_BYTES = HDR + MAX_ETH_LEN + 256 + (MAX_SEGS + 1) * (GAP + 16) + 64;

export class Placer {
  readonly src = new Uint8Array(SRC_BYTES);
  readonly srcArea = copies.register(this.src);
  readonly hdrBuf = new Uint8Array(64);
  private readonly peek = new Uint8Array(PEEK_MIN);
  /** one spare entry in front (segFirst 1: the header's own buffer, as a TX chain has it) */
  readonly frame = new Frame(MAX_SEGS + 1);
  private readonly cuts: number[] = [];

  constructor(private readonly rng: Rng) {}

  /** The engine frame pkt[0, len) as a Frame over several segments of src. */
  place(pkt: Uint8Array, len: number): Frame {
    const rng = this.rng;
    const f = this.frame;
    const eth = len - HDR;
    const hdrOff = rng.below(this.hdrBuf.length - HDR + 1);
    for (let k = 0; k < HDR; k++) this.hdrBuf[hdrOff + k] = pkt[k];
    f.hdr = this.hdrBuf;
    f.hdrOff = hdrOff;
    f.len = len;
    f.txQueue = -1;
    // cut points: anywhere, often inside the first 200 bytes (headers split over buffers)
    const nseg = Math.min(eth, rng.pick([1, 1, 1, 1, 2, 2, 3, 4, 6, 9, MAX_SEGS]));
    const cuts = this.cuts;
    cuts.length = 0;
    cuts.push(0);
    for (let tries = 0; cuts.length < nseg && tries < 4 * nseg; tries++) {
      const c = 1 + (rng.chance(0.5) ? rng.below(Math.min(eth - 1, 200)) : rng.below(eth - 1));
      if (!cuts.includes(c)) cuts.push(c);
    }
    cuts.sort((a, b) => a - b);
    cuts.push(eth);
    const first = rng.chance(0.2) ? 1 : 0;
    const skip = rng.chance(0.3) ? 1 + rng.below(16) : 0;
    const s = this.src;
    let pos = rng.below(GAP);
    for (let i = 0; i < pos; i++) s[i] = rng.below(256);
    if (first === 1) {
      // an entry before segFirst, never part of the frame
      f.segBuf[0] = s;
      f.segArea[0] = this.srcArea;
      f.segOff[0] = 0;
      f.segLen[0] = pos;
    }
    const n = cuts.length - 1;
    for (let k = 0; k < n; k++) {
      const lead = k === 0 ? skip : 0;
      const bytes = cuts[k + 1] - cuts[k];
      for (let i = 0; i < lead; i++) s[pos + i] = rng.below(256);
      s.set(pkt.subarray(HDR + cuts[k], HDR + cuts[k + 1]), pos + lead);
      f.segBuf[first + k] = s;
      f.segArea[first + k] = this.srcArea;
      f.segOff[first + k] = pos;
      f.segLen[first + k] = lead + bytes;
      pos += lead + bytes;
      const gap = rng.below(GAP);
      for (let i = 0; i < gap; i++) s[pos + i] = rng.below(256);
      pos += gap;
    }
    for (let i = 0; i < 16; i++) s[pos + i] = rng.below(256);
    f.segFirst = first;
    f.segEnd = first + n;
    f.segSkip = skip;
    // eth/ethPeek as the TX side makes them: the first buffer's bytes, or the first PEEK_MIN gathered
    const room = cuts[1];
    const want = eth < PEEK_MIN ? eth : PEEK_MIN;
    if (room >= want) {
      f.eth = s;
      f.ethOff = f.segOff[first] + skip;
      f.ethPeek = room;
    } else {
      f.read(0, want, this.peek, 0);
      f.eth = this.peek;
      f.ethOff = 0;
      f.ethPeek = want;
    }
    return f;
  }

  close(): void {
    copies.settle();
    copies.unregister(this.srcArea);
  }
}

/** space for the packets of one frame: its bytes plus, per packet, a header, guard bytes, MAX_HEADERS */
const OUT_NORMAL = 2 * MAX_ETH_LEN + MAX_CHAINS * (HDR + 16 + 192) + 4096;
/** past OUT_NORMAL: where buffers whose copies must be refused end (the area's end cuts them) */
const OUT_ZONE = MAX_ETH_LEN + 512;
const GUARD = 16;
const FILL = 0x5a;

export class FuzzSink implements PacketSink {
  readonly out = new Uint8Array(OUT_NORMAL + OUT_ZONE);
  readonly outArea = copies.register(this.out);
  /** what out[0, used) must hold once the copies ran */
  readonly expected = new Uint8Array(OUT_NORMAL);
  // configuration of the case
  maxPackets = 0;
  /** buffers posted */
  avail = 0;
  /** bytes per buffer (virtio-net header included) */
  cap = 0;
  broken = false;
  /** this turn's descriptor budget used up (VhostRx RES_BUDGET) */
  budget = false;
  /** chance that a packet's buffer lies where the copy list must refuse it */
  hostileChance = 0;
  // the reservation
  begins = 0;
  packets = 0;
  writes = 0;
  refusedWrites = 0;
  used = 0;
  lastFailure = RES_OK;
  readonly slot = new Int32Array(MAX_CHAINS + 1);
  readonly ethLen = new Int32Array(MAX_CHAINS + 1);
  readonly hostile = new Uint8Array(MAX_CHAINS + 1);
  readonly written = new Uint8Array(MAX_CHAINS + 1);
  /** the frame deliver() was given (pieces of kind frame must be its bytes) */
  frame: Frame | null = null;
  /** its Ethernet bytes, contiguous */
  ref: Uint8Array = new Uint8Array(0);
  refOff = 0;

  constructor(private readonly rng: Rng) {}

  /** Sets up a case: fresh reservation state and random resources. */
  setup(frame: Frame, ref: Uint8Array, refOff: number): void {
    const rng = this.rng;
    this.frame = frame;
    this.ref = ref;
    this.refOff = refOff;
    this.maxPackets = rng.pick([1, 2, 4, 16, 64, 128, 256, 256, 512, 1024, 4096]);
    this.avail = rng.chance(0.85) ? this.maxPackets : rng.below(this.maxPackets + 1);
    this.cap = rng.pick([HDR + 1514, HDR + 1518, 2048, 4096, HDR + MAX_ETH_LEN, HDR + MAX_ETH_LEN, 65536, 1 + rng.below(HDR + MAX_ETH_LEN + 100)]);
    this.broken = rng.chance(0.02);
    this.budget = rng.chance(0.02);
    this.hostileChance = rng.chance(0.15) ? 0.3 : 0;
    this.begins = 0;
    this.packets = 0;
    this.writes = 0;
    this.refusedWrites = 0;
    this.used = 0;
    this.lastFailure = RES_OK;
  }

  private fail(why: string): never {
    throw new Error(`sink: ${why}`);
  }

  begin(): number {
    if (++this.begins > 1) this.fail('begin() twice for one frame');
    this.packets = 0;
    this.used = 0;
    const r = this.broken ? RES_BROKEN : this.budget ? RES_BUDGET : this.avail === 0 ? RES_SHORT : RES_OK;
    if (r !== RES_OK) this.lastFailure = r;
    return r;
  }

  reserve(ethLen: number): number {
    if (this.begins !== 1) this.fail('reserve() outside a reservation');
    if (!Number.isInteger(ethLen) || ethLen <= 0) this.fail(`reserve(${ethLen})`);
    if (this.packets >= this.maxPackets) this.fail(`packet ${this.packets + 1} reserved from a ring of ${this.maxPackets}`);
    let r = RES_OK;
    if (this.packets >= MAX_CHAINS) r = RES_TOO_BIG;
    else if (this.packets >= this.avail) r = RES_SHORT;
    else if (HDR + ethLen > this.cap) r = RES_TOO_BIG;
    else if (this.used + GUARD + HDR + ethLen > OUT_NORMAL) r = RES_SHORT;
    if (r !== RES_OK) {
      this.lastFailure = r;
      return r;
    }
    const p = this.packets++;
    const at = this.used + GUARD;
    this.out.fill(FILL, this.used, at + HDR + ethLen);
    this.expected.fill(FILL, this.used, at + HDR + ethLen);
    this.slot[p] = at;
    this.ethLen[p] = ethLen;
    this.written[p] = 0;
    this.hostile[p] = this.hostileChance > 0 && this.rng.chance(this.hostileChance) ? 1 : 0;
    this.used = at + HDR + ethLen;
    return RES_OK;
  }

  write(p: number, hdr: Uint8Array, hdrOff: number, frame: Frame | null, pieces: Pieces): boolean {
    if (this.begins !== 1) this.fail('write() outside a reservation');
    if (!Number.isInteger(p) || p < 0 || p >= this.packets) this.fail(`write of packet ${p}, ${this.packets} reserved`);
    if (this.written[p] !== 0) this.fail(`packet ${p} written twice`);
    this.written[p] = 1;
    this.writes++;
    if (hdrOff < 0 || hdrOff + 10 > hdr.length) this.fail(`header at ${hdrOff} of ${hdr.length} bytes`);
    if (pieces.count < 1) this.fail(`packet ${p} of no pieces`);
    let total = 0;
    for (let i = 0; i < pieces.count; i++) total += pieces.len[i];
    if (total !== pieces.total) this.fail(`packet ${p}: pieces sum to ${total}, total says ${pieces.total}`);
    if (pieces.total !== this.ethLen[p]) this.fail(`packet ${p}: ${pieces.total} bytes written into a buffer reserved for ${this.ethLen[p]}`);
    const out = this.out;
    const exp = this.expected;
    const hostile = this.hostile[p] !== 0;
    let at = this.slot[p];
    if (hostile) {
      // a buffer the guest placed across the end of its memory: its copies are refused (as
      // VhostRx, the packet then goes back empty)
      at = out.length - HDR - this.rng.below(pieces.total);
    } else {
      for (let k = 0; k < 10; k++) out[at + k] = exp[at + k] = hdr[hdrOff + k];
      out[at + 10] = exp[at + 10] = 1; // num_buffers
      out[at + 11] = exp[at + 11] = 0;
    }
    at += HDR;
    for (let i = 0; i < pieces.count; i++) {
      const n = pieces.len[i];
      const off = pieces.off[i];
      if (!hostile && at + n > this.slot[p] + HDR + this.ethLen[p]) this.fail(`packet ${p}: piece ${i} past its buffer`);
      const dstOk = at >= 0 && at + n <= out.length;
      let predicted: boolean;
      let got: boolean;
      if (pieces.kind[i] === PIECE_FRAME) {
        if (frame === null || frame !== this.frame) this.fail(`packet ${p}: frame piece without the frame`);
        if (off < 0 || off + n > frame.ethLen) this.fail(`packet ${p}: frame bytes [${off}, +${n}) of a ${frame.ethLen}-byte frame`);
        predicted = dstOk;
        frame.seek(off);
        got = frame.copyOut(n, this.outArea, at);
        if (got && !hostile) exp.set(this.ref.subarray(this.refOff + off, this.refOff + off + n), at);
      } else {
        const area = pieces.area[i];
        if (area !== copies.stagingArea) this.fail(`packet ${p}: piece from area ${area}, not staging`);
        if (off < 0 || off + n > copies.areaLength(area)) this.fail(`packet ${p}: staging bytes [${off}, +${n}) outside staging`);
        predicted = dstOk;
        got = copies.record(area, off, this.outArea, at, n);
        if (got && !hostile) exp.set(copies.staging.subarray(off, off + n), at);
      }
      if (got !== predicted) this.fail(`packet ${p}: copy of piece ${i} to [${at}, +${n}) of ${out.length} ${got ? 'accepted' : 'refused'}`);
      if (!got) {
        this.refusedWrites++;
        return false;
      }
      at += n;
    }
    if (hostile) this.fail(`packet ${p}: a buffer past the end of its area took every copy`);
    return true;
  }

  /** After the copies ran: the bytes of out[0, used) are what was recorded, guards untouched. */
  check(): void {
    const n = this.used;
    const a = Buffer.from(this.out.buffer, this.out.byteOffset, n);
    const b = Buffer.from(this.expected.buffer, this.expected.byteOffset, n);
    if (a.equals(b)) return;
    for (let i = 0; i < n; i++) {
      if (this.out[i] !== this.expected[i]) this.fail(`out[${i}] = ${this.out[i]}, ${this.expected[i]} expected (a copy landed wrong or outside its buffer)`);
    }
  }

  /** packet p's virtio-net header (10 bytes) and Ethernet bytes, as written */
  header(p: number): Uint8Array {
    return this.out.subarray(this.slot[p], this.slot[p] + 10);
  }
  packet(p: number): Uint8Array {
    return this.out.subarray(this.slot[p] + HDR, this.slot[p] + HDR + this.ethLen[p]);
  }

  close(): void {
    copies.settle();
    copies.unregister(this.outArea);
  }
}
