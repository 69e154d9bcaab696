// The RX side of a vhost-user port: engine frames into the guest's RX virtqueue, one copy each.
//
//   begin() ─► reserve(len) per packet (RX chains popped into segs; all or nothing)
//           ─► write(packet, header, pieces): the virtio-net header is written here, the bytes are
//              recorded in the copy list (frame ranges or staged bytes → RX buffers); used entries
//              are added but not published
//   flush()  (after the batch's copies ran) ─► used index published once, call signalled once
//
// A packet's content is a list of pieces: ranges of the frame (where it lies) and staged bytes
// (checksums, rebuilt headers). The plain fast path is one piece, the whole Ethernet frame.
import { copies } from '../../datapath/copy-list';
import type { Frame } from '../../datapath/frame';
import { ENGINE_HDR_LEN, HDR_NUM_BUFFERS } from '../../datapath/layout';
import { GuestMemory } from '../../memory/guest-memory';
import { Segments, MAX_CHAINS } from '../../virtio/chain';
import { BROKEN } from '../../virtio/split-ring';
import type { Virtqueue } from '../../virtio/virtqueue';
import type { FrameCapture } from '../../datapath/capture';

export const RES_OK = 0;
/** too few RX buffers now: give back what was taken, try again later */
export const RES_SHORT = 1;
/** can never fit this guest's buffers: drop */
export const RES_TOO_BIG = 2;
export const RES_BROKEN = 3;
/** a range was outside its area (a bug or a hostile layout): drop */
export const RES_BAD = 4;
/** this queue used up its descriptor budget for this turn of the event loop: try again on the next */
export const RES_BUDGET = 5;

/**
 * Descriptors (segments) one RX queue may walk per turn of the event loop: a guest that posts
 * chains of thousands of tiny descriptors costs the shared loop at most this much per turn (legit
 * traffic: 256 frames of 64 KiB in 4 KiB buffers walk about 4 400).
 */
export const RX_DESC_BUDGET = 16384;

/** the header of a plain frame as a guest receives it: no flags, no GSO, num_buffers 1 (the
 * 10-byte legacy form is its first 10 bytes) */
const PLAIN_HEADER = Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0);
let plainArea = 0;
function plainHeaderArea(): number {
  if (plainArea === 0) plainArea = copies.register(PLAIN_HEADER);
  return plainArea;
}

/** RX chains begin() reads ahead when it reads the avail index (a TX burst's worth) */
const RX_TOUCH = 256;

export const PIECE_FRAME = 0;
export const PIECE_AREA = 1;
const MAX_PIECES = 8;

/** What one packet is made of, in order. */
export class Pieces {
  count = 0;
  readonly kind = new Uint8Array(MAX_PIECES);
  readonly area = new Int32Array(MAX_PIECES);
  readonly off = new Int32Array(MAX_PIECES);
  readonly len = new Int32Array(MAX_PIECES);
  /** bytes in all pieces */
  total = 0;

  reset(): this {
    this.count = 0;
    this.total = 0;
    return this;
  }

  /** Ethernet bytes [from, from+n) of the frame */
  frame(from: number, n: number): this {
    return this.add(PIECE_FRAME, 0, from, n);
  }

  /** bytes [off, off+n) of a registered area (staging) */
  bytes(area: number, off: number, n: number): this {
    return this.add(PIECE_AREA, area, off, n);
  }

  private add(kind: number, area: number, off: number, n: number): this {
    const c = this.count;
    if (n <= 0 || c >= MAX_PIECES) return this;
    this.kind[c] = kind;
    this.area[c] = area;
    this.off[c] = off;
    this.len[c] = n;
    this.count = c + 1;
    this.total += n;
    return this;
  }
}

export interface RxCounters {
  /** descriptors (segments) walked in RX chains */
  rxDescWalked: number;
  /** deliveries put off because the queue had walked its RX_DESC_BUDGET this turn */
  rxDescBudgetHits: number;
  rxFrames: number;
  rxBytes: number;
  rxTooBig: number;
  rxNoBuffers: number;
}

export class VhostRx {
  private _ring: Virtqueue | null = null;
  mem: GuestMemory | null = null;
  hdrLen = 12;
  mrg = false;
  readonly segs = new Segments();
  /** per packet of this reservation: index one past its last chain in segs */
  private readonly packetEnd = new Int32Array(MAX_CHAINS);
  packets = 0;
  private avail = 0;
  /** used entries added since the last flush() */
  private unpublished = false;
  // piece cursor of write()
  private piece = 0;
  private pieceAt = 0;
  private pieceLeft = 0;
  /** packet capture of what the guest receives (null: none, the usual case) */
  capture: FrameCapture | null = null;
  /** what the read-ahead of begin() read (kept so that it is not optimised away) */
  touched = 0;

  constructor(private readonly counters: RxCounters) {}

  get ring(): Virtqueue | null {
    return this._ring;
  }
  set ring(q: Virtqueue | null) {
    this._ring = q;
    this.avail = 0;
  }

  usable(): boolean {
    const r = this.ring;
    return r !== null && this.mem !== null && r.usable;
  }

  /** descriptors walked this turn (reset by flush() and newTurn()) */
  private walked = 0;

  /** A new turn of the event loop (a kick, a scheduled check): the descriptor budget starts again. */
  newTurn(): void {
    this.walked = 0;
  }

  /** Starts a reservation. RES_OK, RES_SHORT (nothing posted), RES_BROKEN (ring broken now) or
   * RES_BUDGET (this turn's descriptor budget is used up; nothing taken). */
  begin(): number {
    this.account();
    this.packets = 0;
    if (this.walked >= RX_DESC_BUDGET) {
      this.counters.rxDescBudgetHits++;
      return RES_BUDGET;
    }
    // the avail index is read again only when what it last showed is used up (an atomic load per
    // batch rather than per frame)
    if (this.avail === 0) {
      const ring = this.ring as Virtqueue;
      const n = ring.availCount();
      if (n <= 0) return n < 0 ? RES_BROKEN : RES_SHORT;
      this.avail = n;
      // the chains this burst will likely take: their entries and descriptors read ahead, together
      this.touched = ring.touch(n < RX_TOUCH ? n : RX_TOUCH);
    }
    return RES_OK;
  }

  /** one more avail entry for this reservation: true, or false when the guest has posted no more */
  private take(): boolean {
    if (this.avail === 0) {
      const n = (this.ring as Virtqueue).availCount();
      if (n <= 0) return false;
      this.avail = n;
    }
    this.avail--;
    return true;
  }

  /**
   * Takes RX chains for one more packet of ethLen Ethernet bytes (plus this guest's header): as
   * many as it takes when mergeable, else exactly one that must hold it all.
   */
  reserve(ethLen: number): number {
    const ring = this.ring as Virtqueue;
    const mem = this.mem as GuestMemory;
    const segs = this.segs;
    const need = ethLen + this.hdrLen;
    if (this.packets >= MAX_CHAINS) return RES_TOO_BIG;
    if (this.mrg) {
      let got = 0;
      while (got < need) {
        if (segs.chains >= MAX_CHAINS) return RES_TOO_BIG;
        if (!this.take()) return ring.broken !== null ? RES_BROKEN : RES_SHORT;
        if (ring.popChain(mem, segs, true) === BROKEN) return RES_BROKEN;
        got += segs.chainCap[segs.chains - 1];
      }
    } else {
      if (segs.chains >= MAX_CHAINS) return RES_TOO_BIG;
      if (!this.take()) return ring.broken !== null ? RES_BROKEN : RES_SHORT;
      if (ring.popChain(mem, segs, true) === BROKEN) return RES_BROKEN;
      if (segs.chainCap[segs.chains - 1] < need) return RES_TOO_BIG;
    }
    this.packetEnd[this.packets++] = segs.chains;
    return RES_OK;
  }

  /** Gives back every chain of this reservation: the guest sees nothing. */
  abort(): void {
    (this.ring as Virtqueue).unpop(this.segs.chains);
    this.avail += this.segs.chains;
    this.account();
    this.packets = 0;
  }

  /** the reservation's segments count against the budget; segs emptied */
  private account(): void {
    const n = this.segs.count;
    this.walked += n;
    this.counters.rxDescWalked += n;
    this.segs.reset();
  }

  /**
   * Writes packet p of the reservation: hdr[hdrOff, +10) then num_buffers as the virtio-net
   * header, then the pieces. Adds its chains to the used ring (published by flush()). Returns
   * false when a range was refused (the chains are then used with length 0: the guest gets them
   * back empty, as a dropped packet).
   */
  write(p: number, hdr: Uint8Array, hdrOff: number, frame: Frame | null, pieces: Pieces): boolean {
    const ring = this.ring as Virtqueue;
    const segs = this.segs;
    const firstChain = p === 0 ? 0 : this.packetEnd[p - 1];
    const endChain = this.packetEnd[p];
    const nb = this.mrg ? endChain - firstChain : 1;
    const hl = this.hdrLen;
    // header bytes: hdr[0..10) then num_buffers (12-byte form only)
    let hLeft = hl;
    let hAt = 0;
    this.piece = 0;
    this.pieceAt = pieces.count > 0 ? pieces.off[0] : 0;
    this.pieceLeft = pieces.count > 0 ? pieces.len[0] : 0;
    if (frame !== null && pieces.count > 0 && pieces.kind[0] === PIECE_FRAME) frame.seek(pieces.off[0]);
    let ok = true;
    let seg = firstChain === 0 ? 0 : segs.chainEnd[firstChain - 1];
    if (endChain - firstChain === 1 && segs.chainEnd[firstChain] - seg === 1 && pieces.count === 1 && frame !== null && pieces.kind[0] === PIECE_FRAME && segs.len[seg] >= hl + pieces.total) {
      // the usual case: one buffer holds header and frame
      // The header is staged (our own, cache-hot memory) and copied by the copy runner with the
      // frame: JavaScript does not touch the guest's RX buffer, whose cache lines the guest's CPU
      // holds. A store miss there per frame cost more than the rest of write() (profile in
      // BENCHMARKS.md); in the runner's tight loop the misses of a burst overlap.
      const d = segs.off[seg];
      const st = copies.staging;
      const at = copies.stage(hl);
      for (let k = 0; k < HDR_NUM_BUFFERS; k++) st[at + k] = hdr[hdrOff + k];
      if (hl > HDR_NUM_BUFFERS) {
        st[at + HDR_NUM_BUFFERS] = 1;
        st[at + HDR_NUM_BUFFERS + 1] = 0;
      }
      ok = copies.record(copies.stagingArea, at, segs.area[seg], d, hl) && frame.copyOut(pieces.total, segs.area[seg], d + hl);
      ring.pushUsed(segs.chainHead[firstChain], ok ? hl + pieces.total : 0);
    } else {
      for (let c = firstChain; c < endChain; c++) {
        const end = segs.chainEnd[c];
        let written = 0;
        for (; seg < end; seg++) {
          const buf = segs.buf[seg];
          let dAt = segs.off[seg];
          let dLeft = segs.len[seg];
          if (hLeft > 0) {
            const from = dAt;
            while (hLeft > 0 && dLeft > 0) {
              buf[dAt++] = hAt < HDR_NUM_BUFFERS ? hdr[hdrOff + hAt] : hAt === HDR_NUM_BUFFERS ? nb & 0xff : nb >>> 8;
              hAt++;
              hLeft--;
              dLeft--;
              written++;
            }
            copies.dirty(segs.area[seg], from, dAt - from);
          }
          if (dLeft > 0 && ok) {
            const k = this.fill(frame, pieces, segs.area[seg], dAt, dLeft);
            if (k < 0) ok = false;
            else written += k;
          }
        }
        ring.pushUsed(segs.chainHead[c], ok ? written : 0);
      }
    }
    this.unpublished = true;
    if (ok) {
      this.counters.rxFrames++;
      this.counters.rxBytes += pieces.total;
      if (this.capture !== null) this.captureWrite(this.capture, frame, pieces);
    }
    return ok;
  }

  /**
   * The fast write of the burst pipeline: the reservation's one packet, a plain frame (no offload:
   * its header is all zero but num_buffers) of ethLen bytes at srcArea[srcOff…], when one RX buffer
   * holds header and frame. Records two copies (the header from a constant area, the frame) and
   * the used entry; JavaScript touches no guest byte. False, with nothing done, for any other
   * layout (the caller uses write()).
   */
  writePlain(srcArea: number, srcOff: number, ethLen: number): boolean {
    const segs = this.segs;
    const hl = this.hdrLen;
    if (this.packets !== 1 || segs.chains !== 1 || segs.chainEnd[0] !== 1 || segs.len[0] < hl + ethLen) return false;
    const area = segs.area[0];
    const d = segs.off[0];
    if (!copies.record(plainHeaderArea(), 0, area, d, hl) || !copies.record(srcArea, srcOff, area, d + hl, ethLen)) return false;
    (this.ring as Virtqueue).pushUsed(segs.chainHead[0], hl + ethLen);
    this.unpublished = true;
    this.counters.rxFrames++;
    this.counters.rxBytes += ethLen;
    return true;
  }

  /** The packet as written into the guest's buffers: the same pieces, read from the same places. */
  private captureWrite(cap: FrameCapture, frame: Frame | null, pieces: Pieces): void {
    if (!cap.begin(pieces.total)) return;
    for (let p = 0; p < pieces.count; p++) {
      if (pieces.kind[p] === PIECE_FRAME) cap.fromFrame(frame as Frame, pieces.off[p], pieces.len[p]);
      else cap.fromArea(pieces.area[p], pieces.off[p], pieces.len[p]);
    }
  }

  /** Records copies of up to room bytes of the pieces to area[at…]; returns bytes, -1 on a refused range. */
  private fill(frame: Frame | null, pieces: Pieces, area: number, at: number, room: number): number {
    let done = 0;
    while (room > 0) {
      if (this.pieceLeft === 0) {
        if (++this.piece >= pieces.count) break;
        this.pieceAt = pieces.off[this.piece];
        this.pieceLeft = pieces.len[this.piece];
        if (pieces.kind[this.piece] === PIECE_FRAME) (frame as Frame).seek(this.pieceAt);
      }
      const k = room < this.pieceLeft ? room : this.pieceLeft;
      const p = this.piece;
      const ok = pieces.kind[p] === PIECE_FRAME
        ? (frame as Frame).copyOut(k, area, at)
        : copies.record(pieces.area[p], this.pieceAt, area, at, k);
      if (!ok) return -1;
      this.pieceAt += k;
      this.pieceLeft -= k;
      at += k;
      room -= k;
      done += k;
    }
    return done;
  }

  /** Publishes the used entries added since the last call and signals the guest if it asks. */
  flush(write: (fd: number) => void): void {
    const r = this.ring;
    this.avail = 0;
    this.walked = 0;
    if (r === null) return;
    if (this.unpublished) {
      this.unpublished = false;
      r.publish();
    }
    r.signal(write);
  }
}

