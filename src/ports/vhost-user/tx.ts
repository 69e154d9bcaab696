// The TX side of a vhost-user port: chains from the guest's TX virtqueue to the engine, not copied,
// a burst at a time (the take stage of the data path v2; src/datapath/burst.ts):
//
//   take      avail index read once, up to BURST chains popped into one segment list
//   touch     the first byte of each frame read in a loop of its own (the cache misses overlap)
//   describe  each burst entry: header sanitized into the burst table, Ethernet bytes where they lie
//   ─► Switch.inputBurst(): classify, forward, store ─► used entries added, in order
//   the port, after the batch: Switch.flush() runs the copies, then the TX used index is published
//
// So a TX descriptor goes back to the guest only after its frame was copied or stored.
import { PEEK_MIN } from '../../datapath/frame';
import { Burst, BURST, DEST_NONE, SHAPE_PLAIN } from '../../datapath/burst';
import { ENGINE_HDR_LEN, HDR_FLAGS, HDR_GSO_TYPE, HDR_HDR_LEN, HDR_NUM_BUFFERS, MAX_ETH_LEN, MAX_HEADERS, ETH_HDR_LEN } from '../../datapath/layout';
import { GuestMemory } from '../../memory/guest-memory';
import { Segments, MAX_CHAINS, MAX_SEGMENTS } from '../../virtio/chain';
import { BROKEN } from '../../virtio/split-ring';
import type { Virtqueue } from '../../virtio/virtqueue';
import { VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE } from '../../virtio/net-header';
import { checkSenderHeader, GSO_HDRS, newGsoInfo, OFFLOAD_OK } from '../../virtio/offload';
import { EngineApi } from '../engine-api';
import type { FrameCapture } from '../../datapath/capture';

/**
 * Descriptors (segments) one TX batch may walk before it yields to the event loop (the ring is
 * taken up again on the next turn): chains of thousands of tiny descriptors cost the shared loop at
 * most this much per turn. Legit: 256 chains of a 64 KiB frame in 4 KiB buffers walk about 4 400.
 */
export const TX_DESC_BUDGET = 16384;

export interface TxCounters {
  txDescWalked: number;
  txDescBudgetHits: number;
  txFrames: number;
  txBytes: number;
  txDropped: number;
  txBadOffload: number;
  txDisabledDropped: number;
}


export class VhostTx {
  /** the burst's chains (TX_DESC_BUDGET descriptors, and the last chain's own MAX_SEGMENTS) */
  private readonly segs = new Segments(TX_DESC_BUDGET + MAX_SEGMENTS);
  /** the burst table the stages fill and read */
  readonly burst = new Burst(this.segs);
  /** contiguous headers for checkSenderHeader (sized for its length checks, filled only at the front) */
  private readonly head = new Uint8Array(ENGINE_HDR_LEN + MAX_ETH_LEN);
  private readonly gso = newGsoInfo();
  /** sum of the touched bytes (kept so that the touch loop is not optimised away) */
  touched = 0;
  /** packet capture of what the guest sends (null: none, the usual case) */
  capture: FrameCapture | null = null;

  constructor(private readonly counters: TxCounters) {}

  /**
   * Takes up to budget chains from ring into the engine (as connection src). Returns the number
   * taken; stops early when the ring breaks (ring.broken set) or has nothing more. discard: the
   * chains are taken and given back used, their frames counted and not handed to the engine.
   * txQueue: the frames' Frame.txQueue (the ring's queue pair when the guest sends on several).
   * Also stops once the chains taken walked TX_DESC_BUDGET descriptors (the rest on the next turn).
   */
  take(ring: Virtqueue, mem: GuestMemory, sw: EngineApi, src: number, hdrLen: number, txOffload: number, budget: number, discard = false, txQueue = -1): number {
    const segs = this.segs;
    let n = ring.availCount();
    if (n <= 0) return 0;
    if (n > budget) n = budget;
    if (n > BURST) n = BURST;
    // take: the burst's chains, one after another into one segment list (the descriptor reads)
    segs.reset();
    let popped = 0;
    while (popped < n) {
      segs.startChain();
      if (ring.popChain(mem, segs, false) === BROKEN) break;
      popped++;
      if (segs.count >= TX_DESC_BUDGET && popped < n) {
        this.counters.txDescBudgetHits++;
        break;
      }
    }
    this.counters.txDescWalked += segs.count;
    // touch: the header and the first Ethernet byte of every frame (often on the next cache line:
    // DPDK puts the header just before a line-aligned frame), in a loop that does nothing else, so
    // that the cache misses on buffers the guest's CPU just wrote overlap instead of coming one by one
    let t = 0;
    for (let c = 0; c < popped; c++) {
      const s0 = segs.chainStart(c);
      const b = segs.buf[s0];
      const o = segs.off[s0];
      t += b[o];
      if (segs.len[s0] > hdrLen) t += b[o + hdrLen];
      else if (s0 + 1 < segs.chainEnd[c]) t += segs.buf[s0 + 1][segs.off[s0 + 1]];
    }
    this.touched = t;
    // describe: each entry of the burst table (header sanitized, Ethernet bytes where they lie)
    const b = this.burst;
    b.txQueue = txQueue;
    for (let c = 0; c < popped; c++) {
      const total = segs.chainCap[c];
      b.len[c] = 0;
      b.dest[c] = DEST_NONE;
      if (discard) {
        this.counters.txDisabledDropped++;
      } else if (total < hdrLen + ETH_HDR_LEN || total - hdrLen > MAX_ETH_LEN) {
        this.counters.txDropped++;
      } else {
        this.describe(c, hdrLen, total, segs.chainStart(c), segs.chainEnd[c]);
        // as the guest sent it, before the switch judges it (a frame dropped below is in the capture)
        if (this.capture !== null) this.capture.frame(b.point(c));
        if (this.checkOffload(c, txOffload)) {
          this.counters.txFrames++;
          this.counters.txBytes += total - hdrLen;
        } else {
          b.len[c] = 0;
        }
      }
    }
    b.n = popped;
    // classify, forward, store: the switch's stages over the whole burst
    if (sw.inputBurst !== undefined) {
      sw.inputBurst(src, b);
    } else {
      for (let c = 0; c < popped; c++) if (b.len[c] !== 0) sw.input(src, b.point(c));
    }
    for (let c = 0; c < popped; c++) ring.pushUsed(segs.chainHead[c], 0);
    return popped;
  }

  /** Burst entry i over the chain in segs[s0, s1): header into the burst's, Ethernet bytes where they lie. */
  private describe(i: number, hdrLen: number, total: number, s0: number, s1: number): void {
    const segs = this.segs;
    const bt = this.burst;
    const h = bt.hdr;
    const ho = i * ENGINE_HDR_LEN;
    let seg = s0;
    let at = 0;
    if (segs.len[s0] >= hdrLen) {
      // the usual layout: the header at the start of the first buffer
      const b = segs.buf[s0];
      const o = segs.off[s0];
      if ((b[o + HDR_FLAGS] | b[o + HDR_GSO_TYPE]) === 0) {
        // no offload asked: the header means nothing else (deliver() gives such a frame an all-zero
        // header whatever the other fields say), so it is zero here, three word stores
        const w = i * 3;
        const h32 = bt.hdr32;
        h32[w] = 0;
        h32[w + 1] = 0;
        h32[w + 2] = 0;
      } else {
        for (let k = 0; k < hdrLen; k++) h[ho + k] = b[o + k];
      }
      at = hdrLen;
    } else {
      // the header split over buffers: gather it
      for (let k = 0; k < hdrLen; k++) {
        while (at >= segs.len[seg]) {
          seg++;
          at = 0;
        }
        h[ho + k] = segs.buf[seg][segs.off[seg] + at];
        at++;
      }
    }
    while (seg < s1 && at >= segs.len[seg]) {
      seg++;
      at = 0;
    }
    // legacy 10-byte header: num_buffers is ours; DATA_VALID (and RSC_INFO) are the device's to set,
    // never the driver's: a guest must not vouch for checksums to other guests
    h[ho + HDR_NUM_BUFFERS] = 0;
    h[ho + HDR_NUM_BUFFERS + 1] = 0;
    h[ho + HDR_FLAGS] &= VIRTIO_NET_HDR_F_NEEDS_CSUM;
    const ethLen = total - hdrLen;
    bt.len[i] = ethLen + ENGINE_HDR_LEN;
    bt.segFirst[i] = seg;
    bt.segSkip[i] = at;
    bt.segEnd[i] = s1;
    const room = segs.len[seg] - at;
    const want = ethLen < PEEK_MIN ? ethLen : PEEK_MIN;
    if (room >= want) {
      bt.eth[i] = segs.buf[seg];
      bt.ethOff[i] = segs.off[seg] + at;
      bt.ethPeek[i] = room;
      // plain: no offload asked, and every Ethernet byte in this one segment
      bt.shape[i] = (h[ho + HDR_FLAGS] | h[ho + HDR_GSO_TYPE]) === 0 && room >= ethLen ? SHAPE_PLAIN : 0;
    } else {
      // the guest split the Ethernet header across buffers: gather its start
      const f = bt.point(i);
      f.eth = bt.peek;
      f.ethOff = i * PEEK_MIN;
      f.read(0, want, bt.peek, i * PEEK_MIN);
      bt.eth[i] = bt.peek;
      bt.ethOff[i] = i * PEEK_MIN;
      bt.ethPeek[i] = want;
      bt.shape[i] = 0;
    }
  }

  /** A sender's offload header must be one it negotiated, with sane fields (else dropped, counted). */
  private checkOffload(i: number, txOffload: number): boolean {
    const bt = this.burst;
    const h = bt.hdr;
    const ho = i * ENGINE_HDR_LEN;
    if ((h[ho] | h[ho + 1]) === 0) return true;
    const f = bt.point(i);
    const head = this.head;
    for (let k = 0; k < ENGINE_HDR_LEN; k++) head[k] = h[ho + k];
    const n = f.ethLen < MAX_HEADERS ? f.ethLen : MAX_HEADERS;
    f.read(0, n, head, ENGINE_HDR_LEN);
    if (checkSenderHeader(head, 0, f.len, txOffload, this.gso) === OFFLOAD_OK) {
      if (h[ho + HDR_GSO_TYPE] !== VIRTIO_NET_HDR_GSO_NONE) {
        // hdr_len as the headers really are (checkSenderHeader parsed them), not as the guest said
        const hl = this.gso[GSO_HDRS];
        h[ho + HDR_HDR_LEN] = hl & 0xff;
        h[ho + HDR_HDR_LEN + 1] = hl >>> 8;
      }
      return true;
    }
    this.counters.txBadOffload++;
    this.counters.txDropped++;
    return false;
  }
}
