// The VXLAN uplink (RFC 7348): Ethernet frames carried in UDP to other hosts' VTEPs (a Linux
// `vxlan` device, OVS, another elastic-vhost), through one UDP socket of Node's own dgram.
//
//   Switch ──deliver()──► destination VTEP(s): the inner destination MAC learned → its VTEP;
//                         broadcast/multicast/unknown → every remote (head-end replication)
//                     ──► plain frame: one copy into a send slot after its 8-byte VXLAN header;
//                         checksum/TSO frame: OffloadFallback completes / segments into slots
//                     ──► copies run, dgram.send() of each slot to each destination
// Outer UDP source ports (RFC 7348 §5: "a hash of fields from the inner packet", so that ECMP
// in the underlay spreads flows): srcports=N sockets send — the listening one and N−1 bound to
// ephemeral ports of the local address — and a frame leaves from the one its inner flow hash picks
// (flow-hash.ts), every segment and replica of it from that one, so a flow stays on one path and in
// order. Datagrams are taken from any source port of a configured VTEP, as the kernel's vxlan does.
//
//   dgram 'message' ──► VXLAN header checked (I flag, VNI, length), VTEP must be configured
//                   ──► copied into a receive slot after a zero engine header (the datagram's
//                       Buffer is Node's, not a registered area) ──► inner source MAC learned with
//                       its VTEP ──► Switch.input(); flush() once per run of datagrams
//
// Send slots: dgram.send() keeps the Buffer until its callback (the address lookup of a literal
// IP alone defers the send to the next tick), so a slot is reused only once every send of it has
// called back. All slots in flight is "no resources now": deliver() returns false, the frame waits
// in the elastic FIFO like for a full TAP socket, and a callback that frees enough slots tells the
// switch (resourcesAvailable). Node allocates per datagram on its own (the received Buffer and
// rinfo, the send request); this port adds nothing per frame beyond that.
//
// Per-VTEP counters (datagrams and bytes sent to, received from, send errors) are typed arrays
// indexed by VTEP, sized once: the VTEPs are the configured ones (a datagram from any other is
// dropped), so the table never grows. A send's callback must know its VTEP to count it there:
// a unicast slot goes to one VTEP (slotVtep), a flooded slot to each of the flood set, with one
// callback per (slot, flood member) made in the constructor — none is made per frame.
import * as dgram from 'node:dgram';
import * as net from 'node:net';
import type { EnginePort } from '../engine/port';
import type { EngineApi } from './engine-api';
import { ENGINE_HDR_LEN, ETH_HDR_LEN, MAX_ETH_LEN } from '../datapath/layout';
import { Frame } from '../datapath/frame';
import { copies } from '../datapath/copy-list';
import { formatMac, isGroupHi, keyHi, keyLo, macHi, macLo, MacTable, parseMac, DST_MAC_OFFSET, SRC_MAC_OFFSET } from '../engine/classifier';
import { offloadNeeds } from '../virtio/offload';
import { FALLBACK_DROPPED, OffloadFallback, type FallbackCounters, type PacketSink } from './offload-fallback';
import { PIECE_FRAME, Pieces, RES_BAD, RES_OK, RES_SHORT, RES_TOO_BIG } from './vhost-user/rx';
import type { Log } from '../log';
import type { FrameCapture } from '../datapath/capture';
import { DEFAULTS } from '../defaults';
import { flowHash } from '../datapath/flow-hash';

export const VXLAN_PORT = 4789;
export const VXLAN_HDR_LEN = 8;
/** the I flag: the VNI is valid (RFC 7348 §5); the other flag bits are reserved, ignored on receipt */
export const VXLAN_FLAG_I = 0x08;
/** outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8: an inner frame plus this must fit the underlay */
export const VXLAN_OVERHEAD = 50;
/** what of the overhead counts against the underlay's IP MTU (all but the outer Ethernet header) */
const IP_OVERHEAD = VXLAN_OVERHEAD - ETH_HDR_LEN;
export const DEFAULT_UNDERLAY_MTU = 1500;
const MIN_UNDERLAY_MTU = 576;
const MAX_UNDERLAY_MTU = 65535;
/** largest UDP payload over IPv4 */
const MAX_DATAGRAM = 65507;

/** sockets frames leave from by default (their outer UDP source ports spread flows over the underlay's paths) */
export const DEFAULT_SOURCE_PORTS = 8;
const MAX_SOURCE_PORTS = 64;

/** send slots; a TSO frame becomes at most ~45 segments, so this holds several at once */
const SEND_SLOTS = 256;
/** a waiting frame is retried once this many slots are free again */
const WAKE_SLOTS = SEND_SLOTS / 2;
const VTEP_TABLE_SIZE = 4096;
/**
 * receive slots: libuv reads up to 32 datagrams per readiness and Node emits 'message' for each
 * in the same turn; the frames of that run are one batch for the switch (one flush, one guest
 * notification), ended on setImmediate or when the slots are used up
 */
const RX_SLOTS = 32;
const RX_SLOT = (ENGINE_HDR_LEN + MAX_DATAGRAM - VXLAN_HDR_LEN + 63) & ~63;
/** period of the VTEP table's clock and aging */
const TICK_MS = 1000;

export interface VxlanEndpoint {
  address: string;
  port: number;
}

export interface VxlanSpec {
  /** local VTEP address the socket binds to */
  local: string;
  /** local UDP port, and the remotes' unless they give theirs */
  port: number;
  vni: number;
  /** flood set: every broadcast/multicast/unknown frame goes to each */
  remotes: VxlanEndpoint[];
  /** remote MACs known from the start, with their VTEP */
  macs: { mac: string; vtep: VxlanEndpoint }[];
  /** underlay MTU: inner frame + 50 bytes must fit */
  mtu: number;
  /** sockets (outer UDP source ports) frames leave from, picked per inner flow; 1: the listening one only */
  srcPorts: number;
}

/** Writes the 8-byte VXLAN header (flags I, VNI) at buf[off]. */
export function writeVxlanHeader(buf: Uint8Array, off: number, vni: number): void {
  buf[off] = VXLAN_FLAG_I;
  buf[off + 1] = 0;
  buf[off + 2] = 0;
  buf[off + 3] = 0;
  buf[off + 4] = (vni >>> 16) & 0xff;
  buf[off + 5] = (vni >>> 8) & 0xff;
  buf[off + 6] = vni & 0xff;
  buf[off + 7] = 0;
}

export const VXLAN_BAD_LENGTH = -1;
export const VXLAN_BAD_FLAGS = -2;

/** The VNI of a datagram, or VXLAN_BAD_*: too short for header + inner Ethernet header, or no I flag. */
export function readVxlanVni(buf: Uint8Array, off: number, len: number): number {
  if (len < VXLAN_HDR_LEN + ETH_HDR_LEN) return VXLAN_BAD_LENGTH;
  if ((buf[off] & VXLAN_FLAG_I) === 0) return VXLAN_BAD_FLAGS;
  return (buf[off + 4] << 16) | (buf[off + 5] << 8) | buf[off + 6];
}

function endpoint(s: string, dfltPort: number, what: string): VxlanEndpoint {
  const m = /^([0-9.]+)(?::(\d+))?$/.exec(s);
  if (!m || net.isIPv4(m[1]) === false) throw new Error(`${what}: "${s}" is not an IPv4 address[:port]`);
  const port = m[2] === undefined ? dfltPort : Number(m[2]);
  if (!(port >= 1 && port <= 65535)) throw new Error(`${what}: port ${m[2]} outside 1…65535`);
  return { address: m[1], port };
}

/** Parses LOCAL_IP[:PORT],vni=N,remote=IP[:PORT][,remote=…][,mac=MAC@IP[:PORT]…][,mtu=N]. */
export function parseVxlanSpec(s: string, what = '--vxlan'): VxlanSpec {
  const parts = String(s).split(',').map((p) => p.trim());
  const local = endpoint(parts[0], VXLAN_PORT, `${what} local address`);
  let vni: number | undefined;
  let mtu = DEFAULT_UNDERLAY_MTU;
  let srcPorts = DEFAULT_SOURCE_PORTS;
  const remotes: VxlanEndpoint[] = [];
  const macs: { mac: string; vtep: VxlanEndpoint }[] = [];
  for (const p of parts.slice(1)) {
    const eq = p.indexOf('=');
    const k = eq < 0 ? p : p.slice(0, eq);
    const v = eq < 0 ? '' : p.slice(eq + 1);
    switch (k) {
      case 'vni':
        if (!/^\d+$/.test(v) || Number(v) > 0xffffff) throw new Error(`${what}: vni=${v}: give a number from 0 to 16777215`);
        vni = Number(v);
        break;
      case 'remote':
        remotes.push(endpoint(v, local.port, `${what} remote`));
        break;
      case 'mac': {
        const at = v.indexOf('@');
        if (at < 0) throw new Error(`${what}: mac=${v}: give MAC@IP[:PORT]`);
        const mac = v.slice(0, at).toLowerCase();
        let key: number;
        try {
          key = parseMac(mac);
        } catch {
          throw new Error(`${what}: mac=${v}: "${mac}" is not a MAC address`);
        }
        if (isGroupHi(keyHi(key))) throw new Error(`${what}: mac=${v}: ${mac} is a group address`);
        macs.push({ mac, vtep: endpoint(v.slice(at + 1), local.port, `${what} mac`) });
        break;
      }
      case 'srcports':
        if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > MAX_SOURCE_PORTS) {
          throw new Error(`${what}: srcports=${v}: give the number of UDP source ports frames leave from, 1 to ${MAX_SOURCE_PORTS}`);
        }
        srcPorts = Number(v);
        break;
      case 'mtu':
        if (!/^\d+$/.test(v) || Number(v) < MIN_UNDERLAY_MTU || Number(v) > MAX_UNDERLAY_MTU) {
          throw new Error(`${what}: mtu=${v}: give the underlay's MTU, ${MIN_UNDERLAY_MTU} to ${MAX_UNDERLAY_MTU}`);
        }
        mtu = Number(v);
        break;
      default:
        throw new Error(`${what}: unknown part "${p}" (known: vni=, remote=, mac=, mtu=, srcports=)`);
    }
  }
  if (vni === undefined) throw new Error(`${what}: vni=N is missing`);
  if (remotes.length === 0 && macs.length === 0) throw new Error(`${what}: give at least one remote=IP`);
  const seen = new Set<string>();
  for (const r of remotes) {
    if (seen.has(r.address)) throw new Error(`${what}: remote ${r.address} given twice`);
    seen.add(r.address);
  }
  return { local: local.address, port: local.port, vni, remotes, macs, mtu, srcPorts };
}

export interface VxlanCounters {
  /** frames the switch handed to this port (before segmentation and replication), and their bytes */
  toRemoteFrames: number;
  toRemoteBytes: number;
  /** datagrams sent (each replica and each TSO segment counts), and their inner bytes */
  encapDatagrams: number;
  encapBytes: number;
  /** frames the switch got from remotes, and their inner bytes */
  decapFrames: number;
  decapBytes: number;
  /** frames dropped on the way out, by reason */
  txTooBig: number;
  txNoRemote: number;
  txBad: number;
  /** datagrams dgram reported an error for (by code in sendErrorCodes) */
  txSendErrors: number;
  /** times a frame had to wait in the elastic FIFO because every send slot was in flight (not a drop) */
  txSlotsBusy: number;
  /** datagrams dropped on the way in, by reason */
  rxBadLength: number;
  rxBadFlags: number;
  rxWrongVni: number;
  rxUnknownVtep: number;
}

const newCounters = (): VxlanCounters => ({
  toRemoteFrames: 0,
  toRemoteBytes: 0,
  encapDatagrams: 0,
  encapBytes: 0,
  decapFrames: 0,
  decapBytes: 0,
  txTooBig: 0,
  txNoRemote: 0,
  txBad: 0,
  txSendErrors: 0,
  txSlotsBusy: 0,
  rxBadLength: 0,
  rxBadFlags: 0,
  rxWrongVni: 0,
  rxUnknownVtep: 0,
});

/** what the port needs of the switch: a port's API and configured remote MACs */
export type VxlanEngine = EngineApi & { setRemoteMac(index: number, mac: string): void };

export interface VxlanVtepStats {
  address: string;
  port: number;
  /** in the flood set (a remote=), not only a static MAC's VTEP */
  flood: boolean;
  /** inner MACs the port knows behind it now (learned and configured) */
  macs: number;
  /** datagrams sent to it (each TSO segment and each flood replica counts), and their inner bytes */
  sentDatagrams: number;
  sentBytes: number;
  /** datagrams to it that dgram reported an error for (the codes are in sendErrorCodes) */
  sendErrors: number;
  /** frames received from it (well-formed, our VNI), and their inner bytes */
  receivedFrames: number;
  receivedBytes: number;
}

export class VxlanPort implements EnginePort, PacketSink {
  readonly name: string;
  readonly index: number;
  readonly vni: number;
  /** the local VTEP: the address and UDP port the socket binds to */
  readonly local: VxlanEndpoint;
  readonly underlayMtu: number;
  readonly counters = newCounters();
  readonly offloadCounters: FallbackCounters = { rxChecksummed: 0, rxSegmented: 0, rxOffloadDropped: 0 };
  /** dgram error codes of failed sends (EMSGSIZE, EHOSTUNREACH, …): written on errors only */
  readonly sendErrorCodes: Record<string, number> = {};
  readonly maxPackets = SEND_SLOTS;
  /** largest inner Ethernet frame the underlay MTU carries */
  readonly maxInner: number;
  /** inner MAC → VTEP index (learned from received frames, and the configured ones) */
  readonly table: MacTable;
  private readonly vtepAddr: string[] = [];
  private readonly vtepPort: number[] = [];
  private readonly vtepOf = new Map<string, number>();
  /** flood set: VTEP indices of the remote= entries */
  private readonly floodSet: Int32Array;
  // per VTEP, by VTEP index (sized once the VTEPs are known)
  private readonly vtepSent: Float64Array;
  private readonly vtepSentBytes: Float64Array;
  private readonly vtepSendErrors: Float64Array;
  private readonly vtepReceived: Float64Array;
  private readonly vtepReceivedBytes: Float64Array;
  private readonly sock: dgram.Socket;
  /** the sockets frames leave from: sock first, then srcports − 1 on ephemeral ports */
  private readonly sendSocks: dgram.Socket[] = [];
  private readonly time = new Float64Array(1);
  private readonly timer: NodeJS.Timeout;
  // send slots: one registered area, a Buffer view of each slot made once
  private readonly slotSize: number;
  private readonly out: Uint8Array;
  private readonly outArea: number;
  private readonly slotBuf: Buffer[] = [];
  /** send callbacks: slot k sent to slotVtep[k] alone; slot k flooded to floodSet[j] */
  private readonly slotDone: ((err: Error | null) => void)[] = [];
  private readonly floodDone: ((err: Error | null) => void)[] = [];
  private readonly slotVtep = new Int32Array(SEND_SLOTS);
  private readonly slotLen = new Int32Array(SEND_SLOTS);
  private readonly slotPending = new Int32Array(SEND_SLOTS);
  private readonly free = new Int32Array(SEND_SLOTS);
  private freeCount = SEND_SLOTS;
  // the packets of the frame being delivered
  private readonly pktSlot = new Int32Array(SEND_SLOTS);
  private packets = 0;
  private readonly fallback: OffloadFallback;
  // receive slots: engine header (zero: no offload) + inner frame, contiguous; a slot is reused
  // only after the batch it was in was flushed (its copies ran)
  private readonly inBuf = new Uint8Array(RX_SLOTS * RX_SLOT);
  private readonly inArea: number;
  private readonly inFrame = new Frame();
  private inUsed = 0;
  private flushScheduled = false;
  private readonly flushRx = (): void => this.endRxBatch();
  private want = false;
  private closed = false;
  /** packet capture: inner frames as received from remotes and as sent to them (null: none) */
  private capture: FrameCapture | null = null;

  constructor(private readonly sw: VxlanEngine, spec: VxlanSpec, private readonly log: Log, macAgeMs = DEFAULTS.macAgeS * 1000) {
    this.name = `vxlan:${spec.vni}`;
    this.vni = spec.vni;
    this.local = { address: spec.local, port: spec.port };
    this.underlayMtu = spec.mtu;
    this.maxInner = Math.min(spec.mtu - IP_OVERHEAD, MAX_DATAGRAM - VXLAN_HDR_LEN);
    this.table = new MacTable(VTEP_TABLE_SIZE, macAgeMs, this.time);
    this.time[0] = Date.now();
    for (const r of spec.remotes) this.vtep(r);
    this.floodSet = Int32Array.from(spec.remotes, (r) => this.vtepOf.get(r.address)!);
    for (const m of spec.macs) {
      const key = parseMac(m.mac);
      this.table.setStatic(keyHi(key), keyLo(key), this.vtep(m.vtep));
    }
    const nVteps = this.vtepAddr.length;
    this.vtepSent = new Float64Array(nVteps);
    this.vtepSentBytes = new Float64Array(nVteps);
    this.vtepSendErrors = new Float64Array(nVteps);
    this.vtepReceived = new Float64Array(nVteps);
    this.vtepReceivedBytes = new Float64Array(nVteps);
    this.slotSize = (VXLAN_HDR_LEN + this.maxInner + 63) & ~63;
    this.out = new Uint8Array(SEND_SLOTS * this.slotSize);
    for (let k = 0; k < SEND_SLOTS; k++) {
      const at = k * this.slotSize;
      writeVxlanHeader(this.out, at, this.vni); // the same for every datagram: written once
      this.slotBuf.push(Buffer.from(this.out.buffer, this.out.byteOffset + at, this.slotSize));
      this.slotDone.push((err) => this.sent(k, this.slotVtep[k], err));
      for (const v of this.floodSet) this.floodDone.push((err) => this.sent(k, v, err));
      this.free[k] = SEND_SLOTS - 1 - k;
    }
    this.fallback = new OffloadFallback(this.offloadCounters);
    this.outArea = copies.register(this.out);
    this.inArea = copies.register(this.inBuf);
    this.sock = dgram.createSocket({ type: 'udp4' });
    this.sock.on('message', (msg, rinfo) => this.onMessage(msg, rinfo));
    this.sock.on('error', (e) => {
      this.log(`${this.name}: error: UDP socket on ${spec.local}:${spec.port}: ${e.message}; uplink detached`, { level: 'error', port: this.name, connection: this.index });
      this.close();
    });
    this.sock.on('listening', () => {
      try {
        // room for a burst of TSO segments and their replicas
        this.sock.setSendBufferSize(4 << 20);
        this.sock.setRecvBufferSize(4 << 20);
      } catch {
        /* capped by net.core.[rw]mem_max: the kernel's default stays */
      }
      this.log(`${this.name}: uplink attached, VTEP ${spec.local}:${spec.port}, VNI ${this.vni}, remotes ${spec.remotes.map((r) => `${r.address}:${r.port}`).join(' ') || '(none)'}, inner frames up to ${this.maxInner} bytes (underlay MTU ${spec.mtu})`, {
        port: this.name,
        connection: this.index,
      });
    });
    this.index = sw.attach(this);
    try {
      for (const m of spec.macs) sw.setRemoteMac(this.index, m.mac);
    } catch (e) {
      this.close();
      throw e;
    }
    this.timer = setInterval(() => {
      this.time[0] = Date.now();
      this.table.expire();
    }, TICK_MS).unref();
    this.sock.bind({ address: spec.local, port: spec.port, exclusive: true });
    this.sendSocks.push(this.sock);
    for (let i = 1; i < (spec.srcPorts ?? 1); i++) {
      const s = dgram.createSocket({ type: 'udp4' });
      s.on('error', (e) => {
        this.log(`${this.name}: error: UDP send socket ${i} on ${spec.local}: ${e.message}; uplink detached`, { level: 'error', port: this.name, connection: this.index });
        this.close();
      });
      s.on('listening', () => {
        try {
          s.setSendBufferSize(4 << 20);
        } catch {
          /* capped by net.core.wmem_max */
        }
      });
      // what reaches a send socket is not VXLAN traffic of ours (remotes send to the listening port)
      s.on('message', () => {});
      s.bind({ address: spec.local, port: 0, exclusive: true });
      this.sendSocks.push(s);
    }
  }

  /** the UDP source ports frames leave from (once bound), the listening one first */
  sourcePorts(): number[] {
    const out: number[] = [];
    for (const s of this.sendSocks) {
      try {
        out.push(s.address().port);
      } catch {
        /* not bound yet */
      }
    }
    return out;
  }

  private vtep(e: VxlanEndpoint): number {
    const known = this.vtepOf.get(e.address);
    if (known !== undefined) return known;
    const i = this.vtepAddr.length;
    this.vtepAddr.push(e.address);
    this.vtepPort.push(e.port);
    this.vtepOf.set(e.address, i);
    return i;
  }

  // ---- receive

  private onMessage(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    if (this.closed) return;
    const c = this.counters;
    const len = msg.length;
    const vni = readVxlanVni(msg, 0, len);
    if (vni < 0) {
      if (vni === VXLAN_BAD_LENGTH) c.rxBadLength++;
      else c.rxBadFlags++;
      return;
    }
    if (vni !== this.vni) {
      c.rxWrongVni++;
      return;
    }
    // only configured VTEPs are heard: a stray sender on the port cannot inject frames or MACs
    const vtep = this.vtepOf.get(rinfo.address);
    if (vtep === undefined) {
      c.rxUnknownVtep++;
      return;
    }
    const ethLen = len - VXLAN_HDR_LEN;
    const buf = this.inBuf;
    const at = this.inUsed * RX_SLOT;
    msg.copy(buf, at + ENGINE_HDR_LEN, VXLAN_HDR_LEN, len);
    const o = at + ENGINE_HDR_LEN + SRC_MAC_OFFSET;
    const hi = macHi(buf, o);
    if (!isGroupHi(hi)) this.table.learn(hi, macLo(buf, o), vtep);
    c.decapFrames++;
    c.decapBytes += ethLen;
    this.vtepReceived[vtep]++;
    this.vtepReceivedBytes[vtep] += ethLen;
    try {
      this.inFrame.setBytes(this.inArea, buf, at, ENGINE_HDR_LEN + ethLen);
      if (this.capture !== null) this.capture.frame(this.inFrame);
      this.sw.input(this.index, this.inFrame);
    } catch (e) {
      this.log(`${this.name}: internal error: ${(e as Error)?.stack ?? String(e)}`, { level: 'error', port: this.name, connection: this.index });
    }
    if (++this.inUsed === RX_SLOTS) this.endRxBatch();
    else if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushRx);
    }
  }

  /** the batch's copies run (its slots are free again) and the ports delivered to are signalled */
  private endRxBatch(): void {
    this.flushScheduled = false;
    if (this.inUsed === 0 || this.closed) return;
    this.inUsed = 0;
    try {
      this.sw.flush();
    } catch (e) {
      this.log(`${this.name}: internal error: ${(e as Error)?.stack ?? String(e)}`, { level: 'error', port: this.name, connection: this.index });
    }
  }

  // ---- send

  deliver(frame: Frame): boolean {
    if (this.closed) return true;
    const c = this.counters;
    const d = frame.ethOff + DST_MAC_OFFSET;
    const hi = macHi(frame.eth, d);
    const vtep = isGroupHi(hi) ? -1 : this.table.lookup(hi, macLo(frame.eth, d));
    if (vtep < 0 && this.floodSet.length === 0) {
      c.txNoRemote++;
      return true;
    }
    const need = offloadNeeds(frame.hdr, frame.hdrOff);
    let r: number;
    if (need === 0) {
      r = this.begin();
      if (r === RES_OK) r = this.reserve(frame.ethLen);
      if (r === RES_OK) {
        frame.seek(0);
        if (!frame.copyOut(frame.ethLen, this.outArea, this.pktSlot[0] * this.slotSize + VXLAN_HDR_LEN)) r = RES_BAD;
      }
    } else {
      r = this.fallback.deliver(this, frame, need);
    }
    if (r !== RES_OK) {
      this.release();
      if (r === RES_SHORT) {
        c.txSlotsBusy++;
        return false;
      }
      if (r === RES_TOO_BIG) c.txTooBig++;
      else if (r !== FALLBACK_DROPPED) c.txBad++; // FALLBACK_DROPPED: counted by the fallback
      return true;
    }
    c.toRemoteFrames++;
    c.toRemoteBytes += frame.ethLen;
    const socks = this.sendSocks;
    const sock = socks.length > 1 ? socks[flowHash(frame) % socks.length] : this.sock;
    copies.run(); // the bytes must be in the slots before dgram reads them
    const n = this.packets;
    this.packets = 0;
    const fs = this.floodSet;
    const cap = this.capture;
    for (let i = 0; i < n; i++) {
      const k = this.pktSlot[i];
      const len = VXLAN_HDR_LEN + this.slotLen[k];
      // each datagram's inner frame once, as sent (a segment each, not each replica); the slot
      // is reused only after its sends called back, and a later copy into it is recorded after
      // this one, so the record reads these bytes
      if (cap !== null && cap.begin(this.slotLen[k])) cap.fromArea(this.outArea, k * this.slotSize + VXLAN_HDR_LEN, this.slotLen[k]);
      if (vtep >= 0) {
        this.slotPending[k] = 1;
        this.slotVtep[k] = vtep;
        sock.send(this.slotBuf[k], 0, len, this.vtepPort[vtep], this.vtepAddr[vtep], this.slotDone[k]);
      } else {
        // head-end replication: one slot, a send per remote; free when every send called back
        this.slotPending[k] = fs.length;
        const done = k * fs.length;
        for (let j = 0; j < fs.length; j++) sock.send(this.slotBuf[k], 0, len, this.vtepPort[fs[j]], this.vtepAddr[fs[j]], this.floodDone[done + j]);
      }
    }
    return true;
  }

  /** a send of slot k to VTEP v called back */
  private sent(k: number, v: number, err: Error | null): void {
    if (err) {
      this.counters.txSendErrors++;
      this.vtepSendErrors[v]++;
      const code = (err as NodeJS.ErrnoException).code ?? 'unknown';
      this.sendErrorCodes[code] = (this.sendErrorCodes[code] ?? 0) + 1;
    } else {
      this.counters.encapDatagrams++;
      this.counters.encapBytes += this.slotLen[k];
      this.vtepSent[v]++;
      this.vtepSentBytes[v] += this.slotLen[k];
    }
    if (--this.slotPending[k] > 0) return;
    this.free[this.freeCount++] = k;
    if (this.want && !this.closed && this.freeCount >= WAKE_SLOTS) {
      try {
        this.sw.resourcesAvailable(this.index);
      } catch (e) {
        this.log(`${this.name}: internal error: ${(e as Error)?.stack ?? String(e)}`, { level: 'error', port: this.name, connection: this.index });
      }
    }
  }

  // PacketSink (the offload fallback writes segments / checksummed frames into send slots)

  begin(): number {
    this.packets = 0;
    return RES_OK;
  }

  reserve(ethLen: number): number {
    if (ethLen > this.maxInner) return RES_TOO_BIG;
    if (this.freeCount === 0) return RES_SHORT;
    const k = this.free[--this.freeCount];
    this.slotLen[k] = ethLen;
    this.pktSlot[this.packets++] = k;
    return RES_OK;
  }

  write(p: number, _hdr: Uint8Array, _hdrOff: number, frame: Frame | null, pieces: Pieces): boolean {
    const k = this.pktSlot[p];
    if (pieces.total !== this.slotLen[k]) return false;
    let at = k * this.slotSize + VXLAN_HDR_LEN;
    for (let i = 0; i < pieces.count; i++) {
      const n = pieces.len[i];
      if (pieces.kind[i] === PIECE_FRAME) {
        if (frame === null) return false;
        frame.seek(pieces.off[i]);
        if (!frame.copyOut(n, this.outArea, at)) return false;
      } else if (!copies.record(pieces.area[i], pieces.off[i], this.outArea, at, n)) {
        return false;
      }
      at += n;
    }
    return true;
  }

  /** gives back the slots of a frame that is not sent */
  private release(): void {
    for (let i = this.packets - 1; i >= 0; i--) this.free[this.freeCount++] = this.pktSlot[i];
    this.packets = 0;
  }

  flush(): void {
    /* dgram sends as it is asked */
  }

  wantResources(want: boolean): void {
    this.want = want;
  }

  /** Packet capture on (inner frames from remotes as received, to them as sent) or off. */
  setCapture(capture: FrameCapture | null): void {
    this.capture = capture;
  }

  /** Control path: the VTEPs, how many inner MACs each has now, and what went to and came from each. */
  vteps(): VxlanVtepStats[] {
    const macs = this.vtepAddr.map(() => 0);
    for (const e of this.table.entriesOf()) macs[e.port]++;
    const flood = new Set(this.floodSet);
    return this.vtepAddr.map((address, i) => ({
      address,
      port: this.vtepPort[i],
      flood: flood.has(i),
      macs: macs[i],
      sentDatagrams: this.vtepSent[i],
      sentBytes: this.vtepSentBytes[i],
      sendErrors: this.vtepSendErrors[i],
      receivedFrames: this.vtepReceived[i],
      receivedBytes: this.vtepReceivedBytes[i],
    }));
  }

  /** Control path: inner MAC → VTEP (address and UDP port). */
  macEntries(): { mac: string; vtep: string; vtepPort: number; isStatic: boolean }[] {
    return [...this.table.entriesOf()].map((e) => ({ mac: formatMac(e.key), vtep: this.vtepAddr[e.port], vtepPort: this.vtepPort[e.port], isStatic: e.isStatic }));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    for (const s of this.sendSocks.length > 0 ? this.sendSocks : [this.sock]) {
      try {
        s.close();
      } catch {
        /* not bound yet, or already closed */
      }
    }
    this.sw.detach(this.index);
    copies.settle();
    copies.unregister(this.inArea);
    copies.unregister(this.outArea);
  }
}
