// The host uplink: a TAP device opened with IFF_VNET_HDR, so frames cross it in the engine's own
// format (a 12-byte virtio-net header, then the Ethernet frame) with no conversion.
//
//   kernel ──readable──► read() into one of SLOTS scratch slots ──► Switch.input()
//   Switch ──deliver()──► header + recorded copy into the out buffer, copies run, write(); EAGAIN
//   (socket buffer full) counts as "no resources now", and the monitor is told when the fd turns
//   writable again.
//
// The kernel's read() and write() are copies of their own, so the uplink costs one more copy each
// way than guest to guest. A slot is reused only after the copies reading it ran.
import { native, Poller } from '../native';
import type { EnginePort } from '../engine/port';
import { ENGINE_HDR_LEN, MAX_FRAME, MIN_FRAME } from '../datapath/layout';
import { Frame } from '../datapath/frame';
import { copies } from '../datapath/copy-list';
import { Log } from '../vhost-user/connection';
import { EngineApi, PortAttachOptions } from './engine-api';
import type { FrameCapture } from '../datapath/capture';

/** receive slots: frames read in one callback before the copy list must run */
const SLOTS = 16;
const SLOT = (MAX_FRAME + 16 + 63) & ~63;

// linux/if_tun.h
const TUN_F_CSUM = 0x01;
const TUN_F_TSO4 = 0x02;
const TUN_F_TSO6 = 0x04;
const TUN_F_TSO_ECN = 0x08;

/** frames read per readiness callback before yielding to the event loop */
const RX_BUDGET = 256;

export interface TapCounters {
  fromHostFrames: number;
  fromHostBytes: number;
  toHostFrames: number;
  toHostBytes: number;
  toHostErrors: number;
}

export class TapPort implements EnginePort {
  readonly name: string;
  readonly ifname: string;
  readonly index: number;
  readonly counters: TapCounters = { fromHostFrames: 0, fromHostBytes: 0, toHostFrames: 0, toHostBytes: 0, toHostErrors: 0 };
  private readonly fd: number;
  private readonly poller: Poller;
  private readonly inBuf = new Uint8Array(SLOTS * SLOT);
  private readonly inArea: number;
  private readonly inFrame = new Frame();
  private readonly outBuf = new Uint8Array(MAX_FRAME + 16);
  private readonly outArea: number;
  private want = false;
  private closed = false;
  /** packet capture: frames read from the host and written to it (null: none) */
  private capture: FrameCapture | null = null;

  /**
   * offload: TUNSETOFFLOAD CSUM|TSO4|TSO6|TSO_ECN, so the kernel hands us GSO frames with partial
   * checksums (guests that cannot take them get them segmented by their port) and takes ours.
   */
  constructor(private readonly sw: EngineApi, ifname: string, private readonly log: Log, opts: PortAttachOptions = {}, offload = true) {
    const t = native.openTap(ifname);
    this.fd = t.fd;
    this.ifname = t.name;
    this.name = `tap:${t.name}`;
    try {
      native.tapSetVnetHdrSize(this.fd, ENGINE_HDR_LEN);
      native.tapSetOffload(this.fd, offload ? TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN : 0);
    } catch (e) {
      native.close(this.fd);
      throw e;
    }
    this.inArea = copies.register(this.inBuf);
    this.outArea = copies.register(this.outBuf);
    this.index = sw.attach(this, opts);
    this.poller = native.poll(this.fd, (status, events) => this.onReady(status, events));
    this.poller.start(native.POLL_READABLE);
    this.log(`${this.name}: uplink attached`, { port: this.name, connection: this.index });
  }

  private onReady(status: number, events: number): void {
    if (this.closed) return;
    if (status < 0) {
      // the TAP device was deleted under us (or its fd broke): the uplink is gone, the rest goes on
      this.log(`${this.name}: error: the TAP device is gone (poll status ${status}); uplink detached, its queued frames dropped`, { level: 'error', port: this.name, connection: this.index });
      this.close();
      return;
    }
    try {
      if (events & native.POLL_WRITABLE) {
        this.poller.start(native.POLL_READABLE);
        this.sw.resourcesAvailable(this.index);
      }
      if (events & native.POLL_READABLE) this.readFrames();
    } catch (e) {
      // a bug on the data path must not take every port down; the uplink stays up
      this.log(`${this.name}: internal error: ${(e as Error)?.stack ?? String(e)}`, { level: 'error', port: this.name, connection: this.index });
    }
  }

  private readFrames(): void {
    const buf = this.inBuf;
    let n = 0;
    for (; n < RX_BUDGET; n++) {
      const slot = n % SLOTS;
      if (slot === 0 && n > 0) copies.run(); // the copies reading the slots ran: reuse them
      const at = slot * SLOT;
      let len: number;
      try {
        len = native.read(this.fd, buf, at, SLOT);
      } catch (e) {
        this.log(`${this.name}: read: ${(e as Error).message}`, { level: 'error', port: this.name, connection: this.index });
        break;
      }
      if (len < 0) break;
      if (len < MIN_FRAME) continue;
      this.counters.fromHostFrames++;
      this.counters.fromHostBytes += len - ENGINE_HDR_LEN;
      this.inFrame.setBytes(this.inArea, buf, at, len);
      if (this.capture !== null) this.capture.frame(this.inFrame);
      this.sw.input(this.index, this.inFrame);
    }
    this.sw.flush();
    // Budget used up with more waiting: libuv calls us again on the next loop turn (level-triggered).
  }

  deliver(frame: Frame): boolean {
    if (this.closed) return true;
    const out = this.outBuf;
    const len = frame.len;
    if (len > out.length) return true;
    for (let k = 0; k < ENGINE_HDR_LEN; k++) out[k] = frame.hdr[frame.hdrOff + k];
    frame.seek(0);
    if (!frame.copyOut(frame.ethLen, this.outArea, ENGINE_HDR_LEN)) {
      this.counters.toHostErrors++;
      return true;
    }
    copies.run(); // the bytes must be there for write(); earlier copies of the batch run with them
    let n: number;
    try {
      n = native.write(this.fd, out, 0, len);
    } catch {
      // EIO while the interface is down, and the like: the frame is lost to the host, counted.
      this.counters.toHostErrors++;
      return true;
    }
    if (n < 0) return false;
    this.counters.toHostFrames++;
    this.counters.toHostBytes += len - ENGINE_HDR_LEN;
    // what the kernel took: the out buffer's Ethernet bytes (the next frame's copy into it is
    // recorded after this one, so it runs after it)
    const cap = this.capture;
    if (cap !== null && cap.begin(len - ENGINE_HDR_LEN)) cap.fromArea(this.outArea, ENGINE_HDR_LEN, len - ENGINE_HDR_LEN);
    return true;
  }

  /** Packet capture on (frames from the host as read, to the host as written) or off. */
  setCapture(capture: FrameCapture | null): void {
    this.capture = capture;
  }

  flush(): void {
    /* the kernel needs no signal */
  }

  wantResources(want: boolean): void {
    if (this.want === want || this.closed) return;
    this.want = want;
    this.poller.start(want ? native.POLL_READABLE | native.POLL_WRITABLE : native.POLL_READABLE);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.poller.close();
    this.sw.detach(this.index);
    native.close(this.fd);
    copies.settle();
    copies.unregister(this.inArea);
    copies.unregister(this.outArea);
  }
}
