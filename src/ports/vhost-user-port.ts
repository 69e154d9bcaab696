// A vhost-user connection as a switch port: TX rings feed the engine, one RX ring takes its output.
//
//   guest TX ring ──kick──► gather chain into scratch ──► Switch.input()
//   Switch ──deliver()──► RX chains (merged when MRG_RXBUF) ──► used ring ──flush()──► call eventfd
//
// Everything on the data path works on buffers allocated once per port.
import { native } from '../native';
import { EnginePort, ENGINE_HDR_LEN } from '../engine/port';
import { Session, SessionDevice, SessionOptions } from '../vhost-user/session';
import { Connection, Log } from '../vhost-user/connection';
import { VirtioFeature } from '../vhost-user/features';
import { SplitRing, BROKEN } from '../virtio/split-ring';
import { Segments, MAX_CHAINS } from '../virtio/chain';
import { copyBytes } from '../engine/copy';
import { NET_HDR_V1, NUM_BUFFERS_OFFSET, VIRTIO_NET_HDR_F_NEEDS_CSUM } from '../virtio/net-header';
import {
  checkSenderHeader,
  completeChecksum,
  newGsoInfo,
  offloadNeeds,
  OFFLOAD_OK,
  parseTcpGso,
  RX_CSUM,
  RX_ECN,
  RX_TSO4,
  RX_TSO6,
  segmentLength,
  writeTcpSegment,
} from '../virtio/offload';
import { EngineApi, PortAttachOptions } from './engine-api';

/** Largest frame taken from a guest: 64 KiB of payload + Ethernet/VLAN header + virtio-net header. */
export const MAX_FRAME = 65536 + 18 + ENGINE_HDR_LEN;
/** TX chains processed per kick before yielding to the event loop. */
const TX_BUDGET = 256;

// reserveRx results
const RES_OK = 0;
/** too few RX buffers now: give back what was taken, try again later */
const RES_SHORT = 1;
/** can never fit this guest's buffers: drop */
const RES_TOO_BIG = 2;
const RES_BROKEN = 3;

export interface PortCounters {
  txFrames: number;
  txBytes: number;
  txDropped: number;
  rxFrames: number;
  rxBytes: number;
  rxTooBig: number;
  rxNoBuffers: number;
  brokenRings: number;
  /** frames from the guest with a bad or unnegotiated offload header (also counted in txDropped) */
  txBadOffload: number;
  /** frames whose partial checksum was completed for this guest (no GUEST_CSUM) */
  rxChecksummed: number;
  /** GSO frames segmented for this guest (no GUEST_TSO4/6/ECN); their segments count in rxFrames */
  rxSegmented: number;
  /** offload frames the fallback could not handle (headers it does not segment, too many segments) */
  rxOffloadDropped: number;
}

export interface VhostUserPortOptions extends PortAttachOptions {
  name: string;
  log: Log;
  session?: Partial<SessionOptions>;
}

const writeEventfd = (fd: number): void => {
  try {
    native.eventfdWrite(fd, 1);
  } catch {
    /* the front-end closed it; it will tell us on the socket */
  }
};

export class VhostUserPort implements EnginePort, SessionDevice {
  readonly name: string;
  session: Session | null = null;
  /** connection number in the switch while a front-end is connected, else -1 */
  index = -1;
  readonly counters: PortCounters = {
    txFrames: 0,
    txBytes: 0,
    txDropped: 0,
    rxFrames: 0,
    rxBytes: 0,
    rxTooBig: 0,
    rxNoBuffers: 0,
    brokenRings: 0,
    txBadOffload: 0,
    rxChecksummed: 0,
    rxSegmented: 0,
    rxOffloadDropped: 0,
  };

  private readonly scratch = new Uint8Array(MAX_FRAME + 16);
  private readonly txSegs = new Segments();
  private readonly rxSegs = new Segments();
  private readonly hdr = new Uint8Array(NET_HDR_V1);
  /** RX fallback work area: the frame passed to deliver() is never modified (floods share it) */
  private readonly rxScratch = new Uint8Array(MAX_FRAME + 16);
  private readonly rxGso = newGsoInfo();
  private readonly txGso = newGsoInfo();
  /** per GSO segment: index one past its last chain in rxSegs */
  private readonly segChainEnd = new Int32Array(MAX_CHAINS);
  /** RX buffers still available during one deliver() */
  private rxAvail = 0;
  /** RX_* bits the guest takes as is (GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN) */
  private rxOffload = 0;
  /** RX_* bits the guest may send (CSUM, HOST_TSO4/6, HOST_ECN) */
  private txOffload = 0;
  private rxRing: SplitRing | null = null;
  private mrg = false;
  private hdrLen = NET_HDR_V1;
  private wantRx = false;
  private rxCheckScheduled = false;
  private readonly txPending: boolean[] = [];
  private txScheduled = false;
  private readonly log: Log;
  /** called when the session ends (server/client code uses it to accept or reconnect) */
  onSessionEnd: (reason: string | null) => void = () => {};

  private readonly rxCheck = (): void => {
    this.rxCheckScheduled = false;
    try {
      if (this.index >= 0 && this.rxUsable()) this.sw.resourcesAvailable(this.index);
    } catch (e) {
      this.session?.internalError('RX delivery', e);
    }
  };

  private readonly txResume = (): void => {
    this.txScheduled = false;
    const s = this.session;
    if (!s) return;
    try {
      for (let i = 1; i < s.rings.length; i += 2) {
        if (this.txPending[i]) {
          this.txPending[i] = false;
          this.processTx(s.rings[i]);
        }
      }
    } catch (e) {
      s.internalError('TX processing', e);
    }
  };

  constructor(private readonly sw: EngineApi, private readonly opts: VhostUserPortOptions) {
    this.name = opts.name;
    this.log = opts.log;
  }

  get connected(): boolean {
    return this.session !== null;
  }

  /** Takes over a connected socket fd: one front-end at a time. */
  bind(fd: number): void {
    if (this.session) throw new Error(`${this.name}: a front-end is already connected`);
    const conn = new Connection(fd, this.name, this.log);
    this.session = new Session(conn, this, { ...this.opts.session, name: this.name, log: this.log });
    this.index = this.sw.attach(this, { staticMac: this.opts.staticMac, shareLimit: this.opts.shareLimit });
    this.rxRing = null;
    this.wantRx = false;
    conn.start();
    this.log(`${this.name}: front-end connected`);
  }

  close(): void {
    this.session?.close();
  }

  // ---- SessionDevice ----

  onKick(ring: SplitRing): void {
    if (ring.index & 1) this.processTx(ring);
    else if (ring === this.rxRing && this.index >= 0) this.sw.resourcesAvailable(this.index);
  }

  onRingState(ring: SplitRing): void {
    const s = this.session;
    if (!s) return;
    if (ring.broken !== null) this.counters.brokenRings++;
    this.mrg = s.hasFeature(VirtioFeature.NET_F_MRG_RXBUF);
    this.hdrLen = s.hdrLen;
    this.rxOffload =
      (s.hasFeature(VirtioFeature.NET_F_GUEST_CSUM) ? RX_CSUM : 0) |
      (s.hasFeature(VirtioFeature.NET_F_GUEST_TSO4) ? RX_TSO4 : 0) |
      (s.hasFeature(VirtioFeature.NET_F_GUEST_TSO6) ? RX_TSO6 : 0) |
      (s.hasFeature(VirtioFeature.NET_F_GUEST_ECN) ? RX_ECN : 0);
    this.txOffload =
      (s.hasFeature(VirtioFeature.NET_F_CSUM) ? RX_CSUM : 0) |
      (s.hasFeature(VirtioFeature.NET_F_HOST_TSO4) ? RX_TSO4 : 0) |
      (s.hasFeature(VirtioFeature.NET_F_HOST_TSO6) ? RX_TSO6 : 0) |
      (s.hasFeature(VirtioFeature.NET_F_HOST_ECN) ? RX_ECN : 0);
    // The RX ring used is the lowest-numbered one that is enabled and set up: one ring keeps the
    // frames of one destination in order.
    let rx: SplitRing | null = null;
    for (let i = 0; i < s.rings.length; i += 2) {
      const r = s.rings[i];
      if (r.enabled && r.ready) {
        rx = r;
        break;
      }
    }
    this.rxRing = rx;
    if (rx && this.wantRx) rx.enableNotify();
    if (this.rxUsable()) this.scheduleRxCheck();
    if (ring.index & 1 && ring.started && ring.enabled && ring.ready) {
      // A TX ring (re)started: frames may already be waiting in it.
      this.txPending[ring.index] = true;
      this.scheduleTx();
    }
  }

  onRarp(mac: Uint8Array): void {
    if (this.index < 0) return;
    // RARP "reverse request" broadcast from mac, as QEMU's own announce does after migration.
    const f = this.scratch;
    f.fill(0, 0, ENGINE_HDR_LEN + 60);
    const e = ENGINE_HDR_LEN;
    f.fill(0xff, e, e + 6);
    f.set(mac, e + 6);
    f[e + 12] = 0x80;
    f[e + 13] = 0x35;
    const a = e + 14;
    f[a + 1] = 1; // htype Ethernet
    f[a + 2] = 0x08; // ptype IPv4
    f[a + 4] = 6;
    f[a + 5] = 4;
    f[a + 7] = 3; // reverse request
    f.set(mac, a + 8);
    f.set(mac, a + 18);
    this.sw.input(this.index, f, 0, ENGINE_HDR_LEN + 60);
    this.sw.flush();
  }

  onDisconnect(reason: string | null): void {
    if (this.index >= 0) this.sw.detach(this.index);
    this.index = -1;
    this.session = null;
    this.rxRing = null;
    this.onSessionEnd(reason);
  }

  // ---- TX: guest → engine ----

  private scheduleTx(): void {
    if (this.txScheduled) return;
    this.txScheduled = true;
    setImmediate(this.txResume);
  }

  private processTx(ring: SplitRing): void {
    const s = this.session;
    if (!s || this.index < 0 || !ring.started || !ring.enabled || !ring.ready) return;
    const mem = s.mem;
    const segs = this.txSegs;
    const scratch = this.scratch;
    const hl = this.hdrLen;
    const shift = ENGINE_HDR_LEN - hl;
    let budget = TX_BUDGET;
    ring.disableNotify();
    for (;;) {
      let n = ring.availCount();
      if (n === 0) {
        ring.enableNotify();
        n = ring.availCount(); // a chain may have come in before the guest saw the flag
        if (n === 0) break;
        ring.disableNotify();
      }
      if (n < 0) break;
      if (budget === 0) {
        this.txPending[ring.index] = true;
        this.scheduleTx();
        break;
      }
      for (; n > 0 && budget > 0; n--, budget--) {
        segs.reset();
        const head = ring.popChain(mem, segs, false);
        if (head === BROKEN) break;
        const total = segs.total;
        if (total < hl + 14 || total + shift > scratch.length) {
          this.counters.txDropped++;
        } else {
          let at = shift;
          for (let i = 0; i < segs.count; i++) {
            copyBytes(scratch, at, segs.buf[i], segs.off[i], segs.len[i]);
            at += segs.len[i];
          }
          if (shift !== 0) {
            // legacy 10-byte header: move it to the front of the 12-byte engine header
            scratch.copyWithin(0, shift, shift + hl);
            scratch[NUM_BUFFERS_OFFSET] = 0;
            scratch[NUM_BUFFERS_OFFSET + 1] = 0;
          }
          // DATA_VALID (and RSC_INFO) are the device's to set, never the driver's: a guest must not
          // vouch for checksums to other guests
          scratch[0] &= VIRTIO_NET_HDR_F_NEEDS_CSUM;
          if ((scratch[0] | scratch[1]) !== 0 && checkSenderHeader(scratch, 0, total + shift, this.txOffload, this.txGso) !== OFFLOAD_OK) {
            this.counters.txBadOffload++;
            this.counters.txDropped++;
          } else {
            this.counters.txFrames++;
            this.counters.txBytes += total - hl;
            this.sw.input(this.index, scratch, 0, total + shift);
          }
        }
        ring.pushUsed(head, 0);
      }
      ring.publish();
      ring.signal(writeEventfd);
      if (ring.broken !== null) break;
    }
    if (ring.broken !== null) {
      ring.publish();
      s.ringBroken(ring);
    }
    this.sw.flush();
  }

  // ---- RX: engine → guest ----

  private rxUsable(): boolean {
    const r = this.rxRing;
    return r !== null && r.started && r.enabled && r.ready;
  }

  deliver(buf: Uint8Array, off: number, len: number): boolean {
    const ring = this.rxRing;
    const s = this.session;
    if (ring === null || s === null || !ring.started || !ring.enabled || !ring.ready) return false;
    const need = offloadNeeds(buf, off);
    if ((need & ~this.rxOffload) === 0) return this.deliverOne(ring, s, buf, off, len);
    if (need & (RX_TSO4 | RX_TSO6)) return this.deliverSegmented(ring, s, buf, off, len);
    // only the checksum is missing: complete it on a copy
    const w = this.rxScratch;
    if (len > w.length) {
      this.counters.rxOffloadDropped++;
      return true;
    }
    copyBytes(w, 0, buf, off, len);
    if (completeChecksum(w, 0, len) !== OFFLOAD_OK) {
      this.counters.rxOffloadDropped++;
      return true;
    }
    if (!this.deliverOne(ring, s, w, 0, len)) return false;
    this.counters.rxChecksummed++;
    return true;
  }

  /** Starts an RX reservation: false (counted) when the guest has posted nothing or broke the ring. */
  private beginRx(ring: SplitRing, s: Session): boolean {
    this.rxSegs.reset();
    const n = ring.availCount();
    if (n <= 0) {
      if (n < 0) s.ringBroken(ring);
      this.counters.rxNoBuffers++;
      return false;
    }
    this.rxAvail = n;
    return true;
  }

  /** One frame as one packet: all its RX buffers first, then the copy (nothing visible on failure). */
  private deliverOne(ring: SplitRing, s: Session, buf: Uint8Array, off: number, len: number): boolean {
    const segs = this.rxSegs;
    if (!this.beginRx(ring, s)) return false;
    const r = this.reserveRx(ring, s, len - ENGINE_HDR_LEN + this.hdrLen);
    if (r !== RES_OK) return this.reserveFailed(ring, s, r);
    // virtio-net header: the engine's first 10 bytes, then num_buffers; flags must be zero for a
    // guest without GUEST_CSUM (DATA_VALID from the TAP uplink, say)
    const h = this.hdr;
    copyBytes(h, 0, buf, off, NUM_BUFFERS_OFFSET);
    if ((this.rxOffload & RX_CSUM) === 0) h[0] = 0;
    this.writeRx(ring, 0, segs.chains, buf, off, len);
    ring.publish();
    return true;
  }

  /**
   * A GSO frame for a guest that cannot take it: RX buffers for every segment first (or none at
   * all), then each segment built in rxScratch and written as its own packet.
   */
  private deliverSegmented(ring: SplitRing, s: Session, buf: Uint8Array, off: number, len: number): boolean {
    const info = this.rxGso;
    const nseg = parseTcpGso(buf, off, len, info);
    // more segments than the ring has entries could never be delivered
    if (nseg < 0 || nseg > ring.num || nseg > MAX_CHAINS) {
      this.counters.rxOffloadDropped++;
      return true;
    }
    const segs = this.rxSegs;
    if (!this.beginRx(ring, s)) return false;
    const hl = this.hdrLen;
    for (let i = 0; i < nseg; i++) {
      const r = this.reserveRx(ring, s, segmentLength(info, i) - ENGINE_HDR_LEN + hl);
      if (r !== RES_OK) return this.reserveFailed(ring, s, r);
      this.segChainEnd[i] = segs.chains;
    }
    const w = this.rxScratch;
    const h = this.hdr;
    let first = 0;
    for (let i = 0; i < nseg; i++) {
      const slen = writeTcpSegment(buf, off, len, info, i, w, 0);
      // the segment's header is all zero (flags 0, GSO_NONE)
      copyBytes(h, 0, w, 0, NUM_BUFFERS_OFFSET);
      const end = this.segChainEnd[i];
      this.writeRx(ring, first, end, w, 0, slen);
      first = end;
    }
    ring.publish();
    this.counters.rxSegmented++;
    return true;
  }

  /**
   * Takes RX chains for one packet of need bytes (header included) into rxSegs: as many as it
   * takes when mergeable, else exactly one that must hold it all.
   */
  private reserveRx(ring: SplitRing, s: Session, need: number): number {
    const segs = this.rxSegs;
    if (this.mrg) {
      let got = 0;
      while (got < need) {
        if (this.rxAvail === 0) return RES_SHORT;
        if (segs.chains >= MAX_CHAINS) return RES_TOO_BIG;
        this.rxAvail--;
        if (ring.popChain(s.mem, segs, true) === BROKEN) return RES_BROKEN;
        got += segs.chainCap[segs.chains - 1];
      }
      return RES_OK;
    }
    if (this.rxAvail === 0) return RES_SHORT;
    if (segs.chains >= MAX_CHAINS) return RES_TOO_BIG;
    this.rxAvail--;
    if (ring.popChain(s.mem, segs, true) === BROKEN) return RES_BROKEN;
    return segs.chainCap[segs.chains - 1] < need ? RES_TOO_BIG : RES_OK;
  }

  /** Undoes the chains taken in this deliver(): the guest sees nothing. */
  private reserveFailed(ring: SplitRing, s: Session, r: number): boolean {
    if (r === RES_BROKEN) {
      s.ringBroken(ring);
      return false;
    }
    ring.unpop(this.rxSegs.chains);
    if (r === RES_SHORT) {
      this.counters.rxNoBuffers++;
      // Some buffers but not enough (mergeable, or segments): the engine keeps waiting, so ask for a
      // kick on the next buffers posted, and look again ourselves if they came in meanwhile.
      if (this.wantRx && ring.enableNotifyBeyond()) this.scheduleRxCheck();
      return false;
    }
    // This frame can never fit this guest's buffers: drop it, keep the buffers.
    this.counters.rxTooBig++;
    return true;
  }

  /**
   * Writes this.hdr (num_buffers set here) then buf[off+12, off+len) over rxSegs chains
   * [firstChain, endChain) and adds them to the used ring (published by the caller).
   */
  private writeRx(ring: SplitRing, firstChain: number, endChain: number, buf: Uint8Array, off: number, len: number): void {
    const segs = this.rxSegs;
    const h = this.hdr;
    const nb = this.mrg ? endChain - firstChain : 1;
    h[NUM_BUFFERS_OFFSET] = nb & 0xff;
    h[NUM_BUFFERS_OFFSET + 1] = nb >>> 8;
    // scatter hdr[0, hl) then buf[off+12, off+len) over the segments, chain by chain
    let src: Uint8Array = h;
    let srcAt = 0;
    let srcLeft = this.hdrLen;
    let seg = firstChain === 0 ? 0 : segs.chainEnd[firstChain - 1];
    for (let c = firstChain; c < endChain; c++) {
      const end = segs.chainEnd[c];
      let written = 0;
      for (; seg < end; seg++) {
        let dAt = segs.off[seg];
        let dLeft = segs.len[seg];
        const dBuf = segs.buf[seg];
        while (dLeft > 0) {
          if (srcLeft === 0) {
            if (src === buf) break;
            src = buf;
            srcAt = off + ENGINE_HDR_LEN;
            srcLeft = len - ENGINE_HDR_LEN;
            continue;
          }
          const k = dLeft < srcLeft ? dLeft : srcLeft;
          copyBytes(dBuf, dAt, src, srcAt, k);
          dAt += k;
          dLeft -= k;
          srcAt += k;
          srcLeft -= k;
          written += k;
        }
      }
      ring.pushUsed(segs.chainHead[c], written);
    }
    this.counters.rxFrames++;
    this.counters.rxBytes += len - ENGINE_HDR_LEN;
  }

  flush(): void {
    const r = this.rxRing;
    if (r !== null) r.signal(writeEventfd);
  }

  wantResources(want: boolean): void {
    this.wantRx = want;
    const r = this.rxRing;
    if (r === null) return;
    if (want) {
      r.enableNotify();
      // Buffers posted between the failed deliver() and now would not be kicked for: look again.
      if (r.availCount() > 0) this.scheduleRxCheck();
    } else {
      r.disableNotify();
    }
  }

  private scheduleRxCheck(): void {
    if (this.rxCheckScheduled) return;
    this.rxCheckScheduled = true;
    setImmediate(this.rxCheck);
  }
}
