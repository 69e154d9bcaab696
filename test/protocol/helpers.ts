// Shared pieces of the protocol tests: a tiny hub standing in for the switch engine, a capture port,
// log capture, fd counting, frame builders, and "a port with a started front-end" in one call.
import * as fs from 'node:fs';
import assert from 'node:assert/strict';
import { EngineApi, PortAttachOptions } from '../../src/ports/engine-api';
import type { LogFields } from '../../src/log';
import { EnginePort, ENGINE_HDR_LEN } from '../../src/engine/port';
import type { Frame } from '../../src/datapath/frame';
import { copies } from '../../src/datapath/copy-list';
import { frameBytes } from '../../src/datapath/byte-frame';
import { VhostUserPort, VhostUserPortOptions } from '../../src/ports/vhost-user/port';
import { FrontEnd, Packet, sleep, StartOptions, Virtqueue, waitFor } from './frontend';
import { Switch, type SwitchOptions } from '../../src/engine/switch';
import { PackedVirtqueue } from './packed-frontend';

/** Protocol tests are about the vhost-user layer: this "switch" floods every frame to every other port. */
export class TestHub implements EngineApi {
  readonly ports: (EnginePort | null)[] = [];
  /** deliver() calls that returned false: [destination port name, frame length] */
  readonly refused: { to: string; len: number }[] = [];
  readonly available: number[] = [];
  inputs = 0;

  attach(port: EnginePort, _opts?: PortAttachOptions): number {
    let i = this.ports.indexOf(null);
    if (i < 0) i = this.ports.push(null) - 1;
    this.ports[i] = port;
    return i;
  }

  detach(index: number): void {
    this.ports[index] = null;
  }

  input(src: number, frame: Frame): void {
    this.inputs++;
    this.ports.forEach((p, i) => {
      if (p === null || i === src) return;
      if (!p.deliver(frame, p.laneFor ? p.laneFor(frame) : 0)) this.refused.push({ to: p.name, len: frame.len });
    });
  }

  flush(): void {
    copies.run();
    for (const p of this.ports) p?.flush();
  }

  resourcesAvailable(index: number): void {
    this.available.push(index);
  }

  queuesChanged(): void {}
}

/** A port that keeps a copy of every frame it is given (engine format: 12-byte header + frame). */
export class CapturePort implements EnginePort {
  readonly frames: Uint8Array[] = [];
  constructor(readonly name: string) {}
  deliver(frame: Frame): boolean {
    this.frames.push(frameBytes(frame));
    return true;
  }
  flush(): void {}
  wantResources(): void {}
}

export class LogCapture {
  /** the messages logged at info level and above (what the command logs by default) */
  readonly lines: string[] = [];
  /** debug events (one per vhost-user request) */
  readonly debug: string[] = [];
  readonly fn = (msg: string, fields?: LogFields): void => {
    if (fields?.level === 'debug') {
      this.debug.push(msg);
      return;
    }
    this.lines.push(msg);
    if (process.env.VHOST_TEST_LOG) console.log(`[log] ${msg}`);
  };
  errors(): string[] {
    return this.lines.filter((l) => l.includes('error'));
  }
  /** Waits for a line matching re; returns it. */
  async waitLine(re: RegExp, timeoutMs = 2000): Promise<string> {
    await waitFor(() => this.lines.some((l) => re.test(l)), timeoutMs, `a log line matching ${re} (got:\n  ${this.lines.join('\n  ')})`);
    return this.lines.find((l) => re.test(l))!;
  }
}

export function fdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

export function listFds(): string[] {
  return fs.readdirSync('/proc/self/fd').map((f) => {
    try {
      return `${f} -> ${fs.readlinkSync(`/proc/self/fd/${f}`)}`;
    } catch {
      return f;
    }
  });
}

/** Asserts no fd is left over compared to `before` (after everything was closed). */
export async function assertNoFdLeak(before: number): Promise<void> {
  // Let disconnects propagate (the back-end sees EOF on its next loop turn).
  for (let i = 0; i < 50 && fdCount() > before; i++) await new Promise((r) => setTimeout(r, 5));
  const now = fdCount();
  assert.equal(now, before, `fd leak: ${now - before} more fds than before:\n${listFds().join('\n')}`);
}

// ---- frames ----

export const MAC_A = Uint8Array.of(0x52, 0x54, 0, 0, 0, 0x0a);
export const MAC_B = Uint8Array.of(0x52, 0x54, 0, 0, 0, 0x0b);
export const BROADCAST = Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff);

/** An Ethernet frame of len bytes (>= 18): dst, src, ethertype 0x88b5 (local experimental), seq, pattern. */
export function ethFrame(len: number, seq: number, src = MAC_A, dst = BROADCAST): Uint8Array {
  const f = new Uint8Array(len);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  new DataView(f.buffer).setUint32(14, seq, true);
  for (let i = 18; i < len; i++) f[i] = (i * 7 + seq) & 0xff;
  return f;
}

export function seqOf(frame: Uint8Array): number {
  return new DataView(frame.buffer, frame.byteOffset).getUint32(14, true);
}

export interface NetHdrFields {
  flags?: number;
  gsoType?: number;
  hdrLen?: number;
  gsoSize?: number;
  csumStart?: number;
  csumOffset?: number;
  numBuffers?: number;
}

/** struct virtio_net_hdr (10 bytes) or virtio_net_hdr_v1 (12 bytes) */
export function netHdr(len: 10 | 12 | number, f: NetHdrFields = {}): Uint8Array {
  const h = new Uint8Array(len);
  const v = new DataView(h.buffer);
  v.setUint8(0, f.flags ?? 0);
  v.setUint8(1, f.gsoType ?? 0);
  v.setUint16(2, f.hdrLen ?? 0, true);
  v.setUint16(4, f.gsoSize ?? 0, true);
  v.setUint16(6, f.csumStart ?? 0, true);
  v.setUint16(8, f.csumOffset ?? 0, true);
  if (len >= 12) v.setUint16(10, f.numBuffers ?? 0, true);
  return h;
}

export function packet(hdr: Uint8Array, frame: Uint8Array): Uint8Array {
  const p = new Uint8Array(hdr.length + frame.length);
  p.set(hdr);
  p.set(frame, hdr.length);
  return p;
}

// ---- ports with front-ends ----

/** a guest's rings: split (Virtqueue) or packed (PackedVirtqueue) */
export type DriverRing = Virtqueue | PackedVirtqueue;

export interface Guest<R extends DriverRing = Virtqueue> {
  port: VhostUserPort;
  fe: FrontEnd;
  rx: R;
  tx: R;
}

export function makePort(hub: EngineApi, name: string, log: LogCapture, extra: Partial<VhostUserPortOptions> = {}): VhostUserPort {
  return new VhostUserPort(hub, { name, log: log.fn, ...extra });
}

/** A port bound to a socketpair with a front-end on the other end (not started). */
export function bindPair(port: VhostUserPort, name = `fe-${port.name}`): FrontEnd {
  const { fe, backendFd } = FrontEnd.pair(name);
  port.bind(backendFd);
  return fe;
}

/** A port with a started front-end: features negotiated, memory, rings set up and enabled, RX kicked. */
export async function startGuest(hub: EngineApi, name: string, log: LogCapture, opts: StartOptions = {}): Promise<Guest> {
  const port = makePort(hub, name, log);
  const fe = bindPair(port);
  const { rx, tx } = await fe.start(opts);
  if (opts.kickRx ?? true) await waitFor(() => port.session!.rings[0].started, 2000, `${name} RX ring to start`);
  return { port, fe, rx, tx };
}

/** startGuest() with packed rings (VIRTIO_F_RING_PACKED negotiated). */
export async function startPackedGuest(hub: EngineApi, name: string, log: LogCapture, opts: StartOptions = {}): Promise<Guest<PackedVirtqueue>> {
  const port = makePort(hub, name, log);
  const fe = bindPair(port);
  const { rx, tx } = await fe.startPacked(opts);
  if (opts.kickRx ?? true) await waitFor(() => port.session!.rings[0].started, 2000, `${name} RX ring to start`);
  return { port, fe, rx, tx };
}

/** Sends one packet (header + frame) on g's TX ring and waits until the back-end has used it. */
export async function sendPacket(g: Guest<DriverRing>, pkt: Uint8Array, opts: { split?: number[]; indirect?: boolean; region?: number } = {}): Promise<void> {
  g.tx.postTx(pkt, opts);
  const want = g.tx.availIdx;
  g.tx.kick();
  await g.tx.waitUsed(want);
  g.tx.takeUsed(); // reclaim the descriptors, as the driver's TX completion does
}

/** Waits until g has n packets in its RX used ring (counting used elements as mergeable packets), returns them. */
export async function receiveN(g: Guest<DriverRing>, n: number, timeoutMs = 2000): Promise<Packet[]> {
  const got: Packet[] = [];
  await waitFor(
    () => {
      got.push(...g.rx.receive(g.fe.hdrLen, g.fe.mergeable));
      return got.length >= n;
    },
    timeoutMs,
    `${g.port.name} to receive ${n} packet(s)`,
  );
  return got;
}

export async function closeGuest(g: { port: VhostUserPort; fe: FrontEnd }): Promise<void> {
  g.fe.close();
  await waitFor(() => !g.port.connected, 2000, `${g.port.name} to see the disconnect`);
}

/** The engine-format frame (12-byte header + Ethernet) a capture port got, split. */
export function engineFrame(b: Uint8Array): { header: Uint8Array; frame: Uint8Array } {
  return { header: b.slice(0, ENGINE_HDR_LEN), frame: b.slice(ENGINE_HDR_LEN) };
}

/**
 * Two started guests (vmA, vmB) on one hub. done() closes both and checks no fd leaked; with
 * noErrors it also checks nothing was logged as an error.
 */
export async function startPair(
  aOpts: StartOptions = {},
  bOpts: StartOptions = {},
  hub: TestHub = new TestHub(),
): Promise<{ hub: TestHub; log: LogCapture; a: Guest; b: Guest; done: (check?: { noErrors?: boolean }) => Promise<void> }> {
  const log = new LogCapture();
  return pairOf(hub, log, fdCount(), await startGuest(hub, 'vmA', log, aOpts), await startGuest(hub, 'vmB', log, bOpts));
}

/** startPair() with packed rings on both sides. */
export async function startPackedPair(
  aOpts: StartOptions = {},
  bOpts: StartOptions = {},
  hub: TestHub = new TestHub(),
): Promise<{ hub: TestHub; log: LogCapture; a: Guest<PackedVirtqueue>; b: Guest<PackedVirtqueue>; done: (check?: { noErrors?: boolean }) => Promise<void> }> {
  const log = new LogCapture();
  return pairOf(hub, log, fdCount(), await startPackedGuest(hub, 'vmA', log, aOpts), await startPackedGuest(hub, 'vmB', log, bOpts));
}

function pairOf<A extends DriverRing, B extends DriverRing>(hub: TestHub, log: LogCapture, before: number, a: Guest<A>, b: Guest<B>) {
  return {
    hub,
    log,
    a,
    b,
    done: async (check: { noErrors?: boolean } = {}) => {
      await closeGuest(a);
      await closeGuest(b);
      if (check.noErrors) assert.deepEqual(log.errors(), []);
      await assertNoFdLeak(before);
    },
  };
}

/**
 * Runs body with a real Switch (opts: its options; logging off); every guest body started through
 * the `start` it is given is closed afterwards, failed or not. Then: nothing logged as an error,
 * no fd leaked.
 */
export async function withSwitch(opts: SwitchOptions, body: (sw: Switch, log: LogCapture, start: typeof startGuest) => Promise<void>): Promise<void> {
  const before = fdCount();
  const log = new LogCapture();
  const sw = new Switch({ log: () => {}, ...opts });
  const guests: Guest[] = [];
  const start: typeof startGuest = async (...args) => {
    const g = await startGuest(...args);
    guests.push(g);
    return g;
  };
  try {
    await body(sw, log, start);
  } finally {
    for (const g of guests) if (g.port.connected) await closeGuest(g);
    sw.close();
  }
  await sleep(10);
  assert.deepEqual(log.errors(), []);
  await assertNoFdLeak(before);
}
