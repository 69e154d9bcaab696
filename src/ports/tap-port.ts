// The host uplink: a TAP device opened with IFF_VNET_HDR, so frames cross it in the engine's own
// format (a 12-byte virtio-net header, then the Ethernet frame) with no conversion.
//
//   kernel ──readable──► read() into scratch ──► Switch.input()
//   Switch ──deliver()──► write(); EAGAIN (socket buffer full) counts as "no resources now", and the
//   monitor is told when the fd turns writable again.
import { native, Poller } from '../native';
import { EnginePort, ENGINE_HDR_LEN } from '../engine/port';
import { Log } from '../vhost-user/connection';
import { EngineApi, PortAttachOptions } from './engine-api';
import { MAX_FRAME } from './vhost-user-port';

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
  private readonly scratch = new Uint8Array(MAX_FRAME + 16);
  private want = false;
  private closed = false;

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
    this.index = sw.attach(this, opts);
    this.poller = native.poll(this.fd, (status, events) => this.onReady(status, events));
    this.poller.start(native.POLL_READABLE);
    this.log(`${this.name}: uplink attached`);
  }

  private onReady(status: number, events: number): void {
    if (this.closed) return;
    if (status < 0) {
      this.log(`${this.name}: poll error ${status}`);
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
      this.log(`${this.name}: internal error: ${(e as Error)?.stack ?? String(e)}`);
    }
  }

  private readFrames(): void {
    const buf = this.scratch;
    let n = 0;
    for (; n < RX_BUDGET; n++) {
      let len: number;
      try {
        len = native.read(this.fd, buf, 0, buf.length);
      } catch (e) {
        this.log(`${this.name}: read: ${(e as Error).message}`);
        break;
      }
      if (len < 0) break;
      if (len < ENGINE_HDR_LEN + 14) continue;
      this.counters.fromHostFrames++;
      this.counters.fromHostBytes += len - ENGINE_HDR_LEN;
      this.sw.input(this.index, buf, 0, len);
    }
    this.sw.flush();
    // Budget used up with more waiting: libuv calls us again on the next loop turn (level-triggered).
  }

  deliver(buf: Uint8Array, off: number, len: number): boolean {
    if (this.closed) return true;
    let n: number;
    try {
      n = native.write(this.fd, buf, off, len);
    } catch {
      // EIO while the interface is down, and the like: the frame is lost to the host, counted.
      this.counters.toHostErrors++;
      return true;
    }
    if (n < 0) return false;
    this.counters.toHostFrames++;
    this.counters.toHostBytes += len - ENGINE_HDR_LEN;
    return true;
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
  }
}
