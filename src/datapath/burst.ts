// The burst table: the frames of one TX burst as a struct of arrays, filled and read by the stages
// of the data path v2 (DESIGN.md "Data path v2"):
//
//   take      the port pops up to BURST chains (avail index read once) and describes each entry:
//             its sanitized virtio-net header (hdr), its length, where its Ethernet bytes lie
//   classify  the switch learns sources and looks up destinations: dest and lane per entry
//   forward   runs of entries for the same destination RX queue go to the port in one call
//             (EnginePort.deliverBurst); what it cannot take goes to the store engine, in order
//   copy      every copy recorded in the copy list runs in one addon call at the end of the batch
//
// One Burst per thread and port kind is made once; nothing in it is allocated per frame. An entry
// can be seen as a Frame (point()), for the per-frame paths: the store engine, flooding, the offload
// fallback, capture. The Frame is reused entry after entry, as every Frame is.
import { ENGINE_HDR_LEN } from './layout';
import { Frame, PEEK_MIN } from './frame';
import type { Segments } from '../virtio/chain';

/** most frames in one burst (a TX batch: TX_BUDGET chains) */
export const BURST = 256;

/** dest of an entry the take stage or the classifier dropped (counted where it was dropped) */
export const DEST_NONE = -3;

/** an entry whose Ethernet bytes are one range of one segment and whose header is all zero (no
 * offload asked): the fast write of VhostRx takes it without a Frame */
export const SHAPE_PLAIN = 1;

export class Burst {
  n = 0;
  /** each entry's engine header (12 bytes at i * ENGINE_HDR_LEN), sanitized by the take stage */
  readonly hdr = new Uint8Array(BURST * ENGINE_HDR_LEN);
  /** hdr as words (an entry is three) */
  readonly hdr32 = new Int32Array(this.hdr.buffer);
  /** engine length: header + Ethernet bytes; 0 when the take stage dropped the entry */
  readonly len = new Int32Array(BURST);
  /** SHAPE_PLAIN or 0 */
  readonly shape = new Uint8Array(BURST);
  /** the Ethernet bytes: segments [segFirst, segEnd) of `segs`, the first one segSkip bytes in */
  readonly segFirst = new Int32Array(BURST);
  readonly segEnd = new Int32Array(BURST);
  readonly segSkip = new Int32Array(BURST);
  /** the first Ethernet bytes, contiguous (in guest memory, or in peek when the guest split them) */
  readonly eth: Uint8Array[] = new Array<Uint8Array>(BURST);
  readonly ethOff = new Int32Array(BURST);
  readonly ethPeek = new Int32Array(BURST);
  /** PEEK_MIN bytes per entry for headers split over buffers */
  readonly peek = new Uint8Array(BURST * PEEK_MIN);
  /** classify stage: destination connection (>= 0), DESTINATION_FLOOD, DESTINATION_UNKNOWN or DEST_NONE */
  readonly dest = new Int32Array(BURST);
  /** classify stage: RX queue of the destination */
  readonly lane = new Int32Array(BURST);
  /** the TX queue pair the burst was sent on (Frame.txQueue) */
  txQueue = -1;
  /** the gather the entries' segments index */
  segs: Segments;
  /** the entry point() shows */
  readonly frame = new Frame(0);

  constructor(segs: Segments) {
    this.segs = segs;
    const empty = new Uint8Array(0);
    for (let i = 0; i < BURST; i++) this.eth[i] = empty;
    const f = this.frame;
    f.segBuf = segs.buf;
    f.segArea = segs.area;
    f.segOff = segs.off;
    f.segLen = segs.len;
  }

  /** The Frame over entry i (valid until the next point()). */
  point(i: number): Frame {
    const f = this.frame;
    f.hdr = this.hdr;
    f.hdrOff = i * ENGINE_HDR_LEN;
    f.len = this.len[i];
    f.eth = this.eth[i];
    f.ethOff = this.ethOff[i];
    f.ethPeek = this.ethPeek[i];
    f.segFirst = this.segFirst[i];
    f.segEnd = this.segEnd[i];
    f.segSkip = this.segSkip[i];
    f.txQueue = this.txQueue;
    return f;
  }
}
