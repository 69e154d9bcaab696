// The TX side of a vhost-user port: chains from the guest's TX virtqueue to the engine, not copied.
//
//   popChain ─► Frame over the chain's buffers (the virtio-net header read into our own 12 bytes,
//               the Ethernet bytes where they lie) ─► Switch.input() ─► used entry added
//   the port, after the batch: Switch.flush() runs the copies, then the TX used index is published
//
// So a TX descriptor goes back to the guest only after its frame was copied or stored.
import { Frame, PEEK_MIN } from '../../datapath/frame';
import { ENGINE_HDR_LEN, HDR_FLAGS, HDR_GSO_TYPE, HDR_HDR_LEN, HDR_NUM_BUFFERS, MAX_ETH_LEN, MAX_HEADERS, ETH_HDR_LEN } from '../../datapath/layout';
import { GuestMemory } from '../../memory/guest-memory';
import { Segments } from '../../virtio/chain';
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
  private readonly segs = new Segments();
  /** the frame handed to the engine, over segs */
  private readonly frame = new Frame(0);
  /** the sender's header, converted to the engine's 12 bytes and sanitized */
  private readonly hdr = new Uint8Array(ENGINE_HDR_LEN);
  /** the first Ethernet bytes when the first buffer holds fewer than PEEK_MIN */
  private readonly peek = new Uint8Array(PEEK_MIN);
  /** contiguous headers for checkSenderHeader (sized for its length checks, filled only at the front) */
  private readonly head = new Uint8Array(ENGINE_HDR_LEN + MAX_ETH_LEN);
  private readonly gso = newGsoInfo();
  /** packet capture of what the guest sends (null: none, the usual case) */
  capture: FrameCapture | null = null;

  constructor(private readonly counters: TxCounters) {
    const f = this.frame;
    f.segBuf = this.segs.buf;
    f.segArea = this.segs.area;
    f.segOff = this.segs.off;
    f.segLen = this.segs.len;
  }

  /**
   * Takes up to budget chains from ring into the engine (as connection src). Returns the number
   * taken; stops early when the ring breaks (ring.broken set) or has nothing more. discard: the
   * chains are taken and given back used, their frames counted and not handed to the engine.
   * txQueue: the frames' Frame.txQueue (the ring's queue pair when the guest sends on several).
   * Also stops once the chains taken walked TX_DESC_BUDGET descriptors (the rest on the next turn).
   */
  take(ring: Virtqueue, mem: GuestMemory, sw: EngineApi, src: number, hdrLen: number, txOffload: number, budget: number, discard = false, txQueue = -1): number {
    const segs = this.segs;
    this.frame.txQueue = txQueue;
    let done = 0;
    let walked = 0;
    let n = ring.availCount();
    if (n <= 0) return 0;
    if (n > budget) n = budget;
    for (; done < n; done++) {
      segs.reset();
      const head = ring.popChain(mem, segs, false);
      if (head === BROKEN) break;
      const total = segs.total;
      if (discard) {
        this.counters.txDisabledDropped++;
      } else if (total < hdrLen + ETH_HDR_LEN || total - hdrLen > MAX_ETH_LEN) {
        this.counters.txDropped++;
      } else {
        this.describe(hdrLen, total);
        // as the guest sent it, before the switch judges it (a frame dropped below is in the capture)
        if (this.capture !== null) this.capture.frame(this.frame);
        if (this.checkOffload(txOffload)) {
          this.counters.txFrames++;
          this.counters.txBytes += total - hdrLen;
          sw.input(src, this.frame);
        }
      }
      ring.pushUsed(head, 0);
      walked += segs.count;
      if (walked >= TX_DESC_BUDGET && done + 1 < n) {
        this.counters.txDescBudgetHits++;
        done++;
        break;
      }
    }
    this.counters.txDescWalked += walked;
    return done;
  }

  /** Points the frame at the chain in segs: header into this.hdr, Ethernet bytes where they lie. */
  private describe(hdrLen: number, total: number): void {
    const segs = this.segs;
    const f = this.frame;
    const h = this.hdr;
    let seg = 0;
    let at = 0;
    if (segs.len[0] >= hdrLen) {
      // the usual layout: the header at the start of the first buffer
      const b = segs.buf[0];
      const o = segs.off[0];
      for (let k = 0; k < hdrLen; k++) h[k] = b[o + k];
      at = hdrLen;
    } else {
      // the header split over buffers: gather it
      for (let k = 0; k < hdrLen; k++) {
        while (at >= segs.len[seg]) {
          seg++;
          at = 0;
        }
        h[k] = segs.buf[seg][segs.off[seg] + at];
        at++;
      }
    }
    while (seg < segs.count && at >= segs.len[seg]) {
      seg++;
      at = 0;
    }
    // legacy 10-byte header: num_buffers is ours; DATA_VALID (and RSC_INFO) are the device's to set,
    // never the driver's: a guest must not vouch for checksums to other guests
    h[HDR_NUM_BUFFERS] = 0;
    h[HDR_NUM_BUFFERS + 1] = 0;
    h[HDR_FLAGS] &= VIRTIO_NET_HDR_F_NEEDS_CSUM;
    const ethLen = total - hdrLen;
    f.hdr = h;
    f.hdrOff = 0;
    f.len = ethLen + ENGINE_HDR_LEN;
    f.segFirst = seg;
    f.segSkip = at;
    f.segEnd = segs.count;
    const room = segs.len[seg] - at;
    const want = ethLen < PEEK_MIN ? ethLen : PEEK_MIN;
    if (room >= want) {
      f.eth = segs.buf[seg];
      f.ethOff = segs.off[seg] + at;
      f.ethPeek = room;
    } else {
      // the guest split the Ethernet header across buffers: gather its start
      f.read(0, want, this.peek, 0);
      f.eth = this.peek;
      f.ethOff = 0;
      f.ethPeek = want;
    }
  }

  /** A sender's offload header must be one it negotiated, with sane fields (else dropped, counted). */
  private checkOffload(txOffload: number): boolean {
    const h = this.hdr;
    if ((h[0] | h[1]) === 0) return true;
    const f = this.frame;
    const head = this.head;
    for (let k = 0; k < ENGINE_HDR_LEN; k++) head[k] = h[k];
    const n = f.ethLen < MAX_HEADERS ? f.ethLen : MAX_HEADERS;
    f.read(0, n, head, ENGINE_HDR_LEN);
    if (checkSenderHeader(head, 0, f.len, txOffload, this.gso) === OFFLOAD_OK) {
      if (h[HDR_GSO_TYPE] !== VIRTIO_NET_HDR_GSO_NONE) {
        // hdr_len as the headers really are (checkSenderHeader parsed them), not as the guest said
        const hl = this.gso[GSO_HDRS];
        h[HDR_HDR_LEN] = hl & 0xff;
        h[HDR_HDR_LEN + 1] = hl >>> 8;
      }
      return true;
    }
    this.counters.txBadOffload++;
    this.counters.txDropped++;
    return false;
  }
}
