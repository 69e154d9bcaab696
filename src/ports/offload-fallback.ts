// The software offload fallback: a frame whose header asks for more than its receiver negotiated
// (a partial checksum for a guest without GUEST_CSUM, a TSO super-frame for one without
// GUEST_TSO4/6/ECN) is fixed on its way in — still written straight into the receiver's buffers:
//
//   checksum   summed where the frame lies; the packet is frame[0, field) + 2 staged bytes + the rest
//   TSO        per segment: headers rebuilt into staging (lengths, ids, seq, flags, checksums with
//              the payload summed where it lies) + the payload range of the frame
//
// It works on any PacketSink (the RX side of a vhost-user port); a port without the need (TAP: the
// kernel does it) does not use it.
import { copies } from '../datapath/copy-list';
import type { Frame } from '../datapath/frame';
import { ENGINE_HDR_LEN, HDR_CSUM_OFFSET, HDR_CSUM_START, MAX_ETH_LEN, MAX_HEADERS } from '../datapath/layout';
import {
  foldComplement,
  GSO_HDRS,
  GSO_MSS,
  newGsoInfo,
  parseTcpGso,
  RX_ECN,
  RX_TSO4,
  RX_TSO6,
  segmentLength,
  writeTcpSegmentHeaders,
} from '../virtio/offload';
import { MAX_CHAINS } from '../virtio/chain';
import { Pieces, RES_OK, RES_BAD } from './vhost-user/rx';

/** What the fallback writes packets into. */
export interface PacketSink {
  /** starts a reservation: RES_OK or a failure code */
  begin(): number;
  /** reserves buffers for one more packet of ethLen Ethernet bytes */
  reserve(ethLen: number): number;
  /** writes packet p (header: 10 bytes at hdr[hdrOff]) */
  write(p: number, hdr: Uint8Array, hdrOff: number, frame: Frame | null, pieces: Pieces): boolean;
  /** most packets one frame may become (the ring size) */
  readonly maxPackets: number;
}

export interface FallbackCounters {
  /** frames whose partial checksum was completed for this guest (no GUEST_CSUM) */
  rxChecksummed: number;
  /** GSO frames segmented for this guest (no GUEST_TSO4/6/ECN); their segments count in rxFrames */
  rxSegmented: number;
  /** offload frames the fallback could not handle (headers it does not segment, too many segments) */
  rxOffloadDropped: number;
}

/** result of deliver(): RES_OK (written), FALLBACK_DROPPED (counted), or the sink's failure code */
export const FALLBACK_DROPPED = -1;


export class OffloadFallback {
  private readonly pieces = new Pieces();
  /** all-zero virtio-net header of the packets it makes (flags 0, GSO_NONE) */
  private readonly zeroHdr = new Uint8Array(ENGINE_HDR_LEN);
  /** the frame's header and first bytes, contiguous (sized for parseTcpGso's length checks) */
  private readonly head = new Uint8Array(ENGINE_HDR_LEN + MAX_ETH_LEN);
  private readonly info = newGsoInfo();

  constructor(private readonly counters: FallbackCounters) {}

  /** need: offloadNeeds() bits the receiver lacks. */
  deliver(sink: PacketSink, frame: Frame, need: number): number {
    // a receiver that takes TSO but not ECN (GUEST_TSO4 without GUEST_ECN) lacks only RX_ECN for a
    // TCPV4|ECN frame: that frame is segmented too, never passed on whole as a plain packet
    return need & (RX_TSO4 | RX_TSO6 | RX_ECN) ? this.segment(sink, frame) : this.checksum(sink, frame);
  }

  private checksum(sink: PacketSink, frame: Frame): number {
    const h = frame.hdr;
    const o = frame.hdrOff;
    const start = h[o + HDR_CSUM_START] | (h[o + HDR_CSUM_START + 1] << 8);
    const field = start + (h[o + HDR_CSUM_OFFSET] | (h[o + HDR_CSUM_OFFSET + 1] << 8));
    const eth = frame.ethLen;
    if (field + 2 > eth) return this.dropped();
    let r = sink.begin();
    if (r === RES_OK) r = sink.reserve(eth);
    if (r !== RES_OK) return r;
    let c = foldComplement(frame.sum16(start, eth, 0));
    // as Linux's skb_checksum_help: a computed 0 goes out as 0xffff (UDP reads 0 as "no checksum")
    if (c === 0) c = 0xffff;
    const at = copies.stage(2);
    copies.staging[at] = c >>> 8;
    copies.staging[at + 1] = c & 0xff;
    const p = this.pieces.reset().frame(0, field).bytes(copies.stagingArea, at, 2).frame(field + 2, eth - field - 2);
    if (!sink.write(0, this.zeroHdr, 0, frame, p)) return RES_BAD; // (used with length 0: dropped)
    this.counters.rxChecksummed++;
    return RES_OK;
  }

  private segment(sink: PacketSink, frame: Frame): number {
    const head = this.head;
    const h = frame.hdr;
    for (let k = 0; k < ENGINE_HDR_LEN; k++) head[k] = h[frame.hdrOff + k];
    const eth = frame.ethLen;
    frame.read(0, eth < MAX_HEADERS ? eth : MAX_HEADERS, head, ENGINE_HDR_LEN);
    const info = this.info;
    const nseg = parseTcpGso(head, 0, frame.len, info);
    // more segments than the ring has entries could never be delivered
    if (nseg < 0 || info[GSO_HDRS] > MAX_HEADERS || nseg > sink.maxPackets || nseg > MAX_CHAINS) return this.dropped();
    let r = sink.begin();
    for (let i = 0; i < nseg && r === RES_OK; i++) r = sink.reserve(segmentLength(info, i) - ENGINE_HDR_LEN);
    if (r !== RES_OK) return r;
    const hdrs = info[GSO_HDRS];
    const mss = info[GSO_MSS];
    // every reserved packet is written (a refused one goes back empty), so no chain is lost
    let ok = true;
    for (let i = 0; i < nseg; i++) {
      const from = hdrs + i * mss;
      const n = segmentLength(info, i) - ENGINE_HDR_LEN - hdrs;
      const sum = frame.sum16(from, from + n, 0);
      const at = copies.stage(hdrs);
      writeTcpSegmentHeaders(head, 0, info, i, copies.staging, at, sum);
      const p = this.pieces.reset().bytes(copies.stagingArea, at, hdrs).frame(from, n);
      ok = sink.write(i, this.zeroHdr, 0, frame, p) && ok;
    }
    if (!ok) return RES_BAD;
    this.counters.rxSegmented++;
    return RES_OK;
  }

  private dropped(): number {
    this.counters.rxOffloadDropped++;
    return FALLBACK_DROPPED;
  }
}
