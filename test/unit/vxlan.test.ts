// The VXLAN uplink (src/ports/vxlan-port.ts): header encode/decode, the --vxlan spec, and the port
// on a real Switch with real UDP sockets on loopback addresses standing in for remote VTEPs —
// flood to every remote, inner MACs learned per VTEP, unicast to the learned VTEP only, a frame for
// a MAC not known yet held in the elastic FIFO until a remote announces it, static remote MACs,
// bad datagrams counted and dropped, TSO frames segmented to the underlay MTU with checksums;
// what went to and came from each VTEP counted there (send errors too), and a packet capture of the
// inner frames both ways.
import { after, before, describe, it, test } from 'node:test';
import assert from 'node:assert/strict';
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Switch } from '../../src/engine/switch';
import { parseVxlanSpec, readVxlanVni, VXLAN_BAD_FLAGS, VXLAN_BAD_LENGTH, VxlanPort, writeVxlanHeader, type VxlanVtepStats } from '../../src/ports/vxlan-port';
import { CaptureManager } from '../../src/ops/capture';
import { BCAST, frame, input, mac, macBytes, seqOf, TestPort } from './engine-helpers';
import { onesSum } from '../checksum';
import { tcpdumpRead } from '../tcpdump';

const HDR = 12;

test('VXLAN header: I flag, 24-bit VNI, reserved bytes zero; decode checks length and flag', () => {
  const b = new Uint8Array(8 + 14).fill(0xee);
  writeVxlanHeader(b, 0, 0xabcdef);
  assert.deepEqual([...b.subarray(0, 8)], [0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
  assert.equal(readVxlanVni(b, 0, b.length), 0xabcdef);
  assert.equal(readVxlanVni(b, 0, 8 + 13), VXLAN_BAD_LENGTH, 'no room for the inner Ethernet header');
  b[0] = 0x00;
  assert.equal(readVxlanVni(b, 0, b.length), VXLAN_BAD_FLAGS);
  b[0] = 0x08 | 0x80; // a reserved bit: ignored on receipt (RFC 7348 §5)
  assert.equal(readVxlanVni(b, 0, b.length), 0xabcdef);
  writeVxlanHeader(b, 0, 42);
  assert.deepEqual([...b.subarray(4, 8)], [0, 0, 42, 0]);
});

test('--vxlan spec: defaults, every part, and errors that say what is wrong', () => {
  assert.deepEqual(parseVxlanSpec('192.168.7.1,vni=42,remote=192.168.7.2'), {
    local: '192.168.7.1', port: 4789, vni: 42, remotes: [{ address: '192.168.7.2', port: 4789 }], macs: [], mtu: 1500, srcPorts: 8,
  });
  assert.equal(parseVxlanSpec('192.168.7.1,vni=42,remote=192.168.7.2,srcports=1').srcPorts, 1);
  const s = parseVxlanSpec('10.1.1.1:8472,vni=16777215,remote=10.1.1.2,remote=10.1.1.3:4789,mac=52:54:00:AA:00:01@10.1.1.4,mtu=9000');
  assert.equal(s.port, 8472);
  assert.equal(s.vni, 0xffffff);
  assert.deepEqual(s.remotes, [{ address: '10.1.1.2', port: 8472 }, { address: '10.1.1.3', port: 4789 }]);
  assert.deepEqual(s.macs, [{ mac: '52:54:00:aa:00:01', vtep: { address: '10.1.1.4', port: 8472 } }]);
  assert.equal(s.mtu, 9000);
  const bad: [string, RegExp][] = [
    ['10.0.0.1,remote=10.0.0.2', /vni=N is missing/],
    ['10.0.0.1,vni=16777216,remote=10.0.0.2', /vni=16777216: give a number from 0 to 16777215/],
    ['10.0.0.1,vni=1', /at least one remote/],
    ['host,vni=1,remote=10.0.0.2', /local address: "host" is not an IPv4/],
    ['10.0.0.1,vni=1,remote=10.0.0.256', /remote: "10.0.0.256" is not an IPv4/],
    ['10.0.0.1,vni=1,remote=10.0.0.2:0', /port 0 outside/],
    ['10.0.0.1,vni=1,remote=10.0.0.2,remote=10.0.0.2', /given twice/],
    ['10.0.0.1,vni=1,remote=10.0.0.2,mac=ff:ff:ff:ff:ff:ff@10.0.0.3', /group address/],
    ['10.0.0.1,vni=1,remote=10.0.0.2,mac=52:54:00:00:00:01', /MAC@IP/],
    ['10.0.0.1,vni=1,remote=10.0.0.2,mtu=100', /mtu=100/],
    ['10.0.0.1,vni=1,remote=10.0.0.2,ttl=3', /unknown part "ttl=3"/],
    ['10.0.0.1,vni=1,remote=10.0.0.2,srcports=0', /srcports=0: give the number of UDP source ports/],
    ['10.0.0.1,vni=1,remote=10.0.0.2,srcports=65', /srcports=65/],
  ];
  for (const [spec, re] of bad) assert.throws(() => parseVxlanSpec(spec), re, spec);
});

/** a remote VTEP: a UDP socket on its own loopback address, collecting what it receives */
class Remote {
  readonly sock = dgram.createSocket('udp4');
  readonly got: Buffer[] = [];
  port = 0;
  constructor(readonly address: string) {
    this.sock.on('message', (m) => this.got.push(Buffer.from(m)));
  }
  async bind(port = 0): Promise<void> {
    await new Promise<void>((res, rej) => {
      this.sock.once('error', rej);
      this.sock.bind(port, this.address, () => res());
    });
    this.port = this.sock.address().port;
  }
  send(to: number, vni: number, inner: Uint8Array, flags = 0x08): Promise<void> {
    const d = Buffer.alloc(8 + inner.length);
    writeVxlanHeader(d, 0, vni);
    d[0] = flags;
    d.set(inner, 8);
    return new Promise((res, rej) => this.sock.send(d, to, '127.0.0.1', (e) => (e ? rej(e) : res())));
  }
}

async function until(what: string, cond: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
const settle = (ms = 100) => new Promise((r) => setTimeout(r, ms));

/** the Ethernet bytes of an engine frame */
const eth = (f: Uint8Array): Buffer => Buffer.from(f.subarray(HDR));

async function freePort(): Promise<number> {
  const s = dgram.createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
  const p = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return p;
}

describe('VXLAN port on a switch, remote VTEPs on loopback', () => {
  const VNI = 4242;
  const VM = mac(1);
  const X = mac(0x100); // behind remote A
  const Y = mac(0x200); // behind remote B, not known at first
  const Z = mac(0x300); // configured: behind B from the start
  let sw: Switch;
  let vm: TestPort;
  let vmIndex: number;
  let a: Remote;
  let b: Remote;
  let stray: Remote;
  let port: VxlanPort;
  let local: number;
  const logs: string[] = [];

  before(async () => {
    sw = new Switch({ poolBytes: 1 << 20, holdTimeMs: 60_000, tickMs: 0 });
    vm = new TestPort('vm');
    vmIndex = sw.attach(vm);
    a = new Remote('127.0.0.2');
    b = new Remote('127.0.0.3');
    stray = new Remote('127.0.0.4');
    await Promise.all([a.bind(), b.bind(), stray.bind()]);
    local = await freePort();
    // mtu 1136: inner frames up to 1100 bytes
    const spec = parseVxlanSpec(`127.0.0.1:${local},vni=${VNI},remote=127.0.0.2:${a.port},remote=127.0.0.3:${b.port},mac=${Z}@127.0.0.3:${b.port},mtu=1136`);
    port = new VxlanPort(sw, spec, (m) => logs.push(m));
    await until('the socket listening', () => logs.some((l) => /uplink attached, VTEP 127\.0\.0\.1/.test(l)));
    assert.equal(port.maxInner, 1100);
  });

  after(() => {
    port.close();
    sw.close();
    for (const r of [a, b, stray]) r.sock.close();
  });

  it('a broadcast from the guest is replicated to every remote, header + the inner frame exact', async () => {
    const f = frame(BCAST, VM, 1, 200);
    input(sw, vmIndex, f);
    sw.flush();
    await until('both remotes', () => a.got.length === 1 && b.got.length === 1);
    for (const r of [a, b]) {
      assert.equal(readVxlanVni(r.got[0], 0, r.got[0].length), VNI);
      assert.deepEqual(r.got[0].subarray(8), eth(f));
    }
    await until('the sends called back', () => port.counters.encapDatagrams === 2);
    assert.equal(port.counters.toRemoteFrames, 1);
  });

  it('a frame from remote A reaches the guest; its source MAC is learned with A; the reply goes to A only', async () => {
    const f = frame(VM, X, 2, 300);
    await a.send(local, VNI, eth(f));
    await until('the guest receiving', () => vm.received.length === 1);
    assert.deepEqual(Buffer.from(vm.received[0]), Buffer.from(f), 'engine header zero, frame exact');
    assert.equal(port.counters.decapFrames, 1);
    assert.ok(port.macEntries().some((e) => e.mac === X && e.vtep === '127.0.0.2'));
    assert.ok(sw.macEntries().some((e) => e.mac === X && e.index === port.index), 'the engine learned X on the uplink');
    a.got.length = 0;
    b.got.length = 0;
    const reply = frame(X, VM, 3, 300);
    input(sw, vmIndex, reply);
    sw.flush();
    await until('A', () => a.got.length === 1);
    await settle();
    assert.equal(b.got.length, 0, 'B gets nothing');
    assert.deepEqual(a.got[0].subarray(8), eth(reply));
  });

  it('a frame for a MAC no VTEP announced yet waits in the elastic FIFO, then goes to the VTEP that announces it', async () => {
    a.got.length = 0;
    b.got.length = 0;
    const held = frame(Y, VM, 4, 120);
    input(sw, vmIndex, held);
    sw.flush();
    await settle();
    assert.equal(a.got.length + b.got.length, 0, 'nothing sent before the hold time');
    assert.equal(sw.stats().pool.unresolvedFrames, 1, 'held as an unknown destination');
    await b.send(local, VNI, eth(frame(VM, Y, 5, 80)));
    await until('B', () => b.got.length === 1);
    await settle();
    assert.equal(a.got.length, 0, 'A gets nothing');
    assert.deepEqual(b.got[0].subarray(8), eth(held));
    assert.equal(sw.stats().pool.unresolvedFrames, 0);
  });

  it('a configured remote MAC is known from the start: straight to its VTEP', async () => {
    a.got.length = 0;
    b.got.length = 0;
    const f = frame(Z, VM, 6, 100);
    input(sw, vmIndex, f);
    sw.flush();
    await until('B', () => b.got.length === 1);
    await settle();
    assert.equal(a.got.length, 0);
    assert.ok(sw.macEntries().some((e) => e.mac === Z && e.index === port.index && e.isStatic));
  });

  it('bad datagrams are counted and dropped: wrong VNI, no I flag, too short, unknown VTEP', async () => {
    const before = vm.received.length;
    const f = eth(frame(VM, mac(0x400), 7, 80));
    await a.send(local, VNI + 1, f);
    await a.send(local, VNI, f, 0x00);
    await a.send(local, VNI, f.subarray(0, 10));
    await stray.send(local, VNI, f);
    const c = port.counters;
    await until('all four counted', () => c.rxWrongVni + c.rxBadFlags + c.rxBadLength + c.rxUnknownVtep === 4);
    assert.deepEqual([c.rxWrongVni, c.rxBadFlags, c.rxBadLength, c.rxUnknownVtep], [1, 1, 1, 1]);
    assert.equal(vm.received.length, before, 'none reached the guest');
    assert.ok(!port.macEntries().some((e) => e.mac === mac(0x400)), 'nothing learned from them');
  });

  it('a frame too big for the underlay MTU is counted (txTooBig), not sent', async () => {
    a.got.length = 0;
    const f = frame(X, VM, 8, 1101);
    input(sw, vmIndex, f);
    sw.flush();
    await settle();
    assert.equal(port.counters.txTooBig, 1);
    assert.equal(a.got.length, 0);
    input(sw, vmIndex, frame(X, VM, 9, 1100));
    sw.flush();
    await until('the largest that fits', () => a.got.length === 1);
    assert.equal(a.got[0].length, 8 + 1100);
  });

  it('a burst larger than the send slots: the rest waits in the elastic FIFO and follows in order, nothing lost', async () => {
    a.got.length = 0;
    a.sock.setRecvBufferSize(4 << 20);
    const roomy = a.sock.getRecvBufferSize() >= 1 << 20;
    const n = 400; // > 256 send slots, all in one batch: no send can call back before the batch ends
    const sent0 = port.counters.encapDatagrams;
    const busy0 = port.counters.txSlotsBusy;
    for (let i = 0; i < n; i++) input(sw, vmIndex, frame(X, VM, 1000 + i, 60));
    sw.flush();
    assert.ok(sw.stats().ports.find((p) => p.index === port.index)!.queuedFrames > 0, 'frames queued for the uplink');
    assert.ok(port.counters.txSlotsBusy > busy0, 'slots ran out (counted)');
    await until('every datagram sent', () => port.counters.encapDatagrams - sent0 === n, 5000);
    assert.equal(sw.stats().ports.find((p) => p.index === port.index)!.queuedFrames, 0);
    await settle();
    const seqs = a.got.map((d) => d.readUInt32BE(8 + 14));
    for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], `order at ${i}`);
    if (roomy) assert.equal(seqs.length, n, 'every datagram arrived');
    else console.log(`# receive buffer capped at ${a.sock.getRecvBufferSize()} bytes (net.core.rmem_max): ${seqs.length}/${n} arrived, order checked`);
  });

  it('a TSO frame is segmented to the underlay MTU, each segment with correct IPv4 and TCP checksums', async () => {
    a.got.length = 0;
    const payload = 4000;
    const mss = 1000;
    const f = tsoFrame(macBytes(X), macBytes(VM), payload, mss);
    input(sw, vmIndex, f);
    sw.flush();
    await until('4 segments at A', () => a.got.length === 4);
    let data: number[] = [];
    for (const [i, d] of a.got.entries()) {
      const e = d.subarray(8);
      assert.equal(e.length, 14 + 20 + 20 + mss, `segment ${i} length`);
      const ip = e.subarray(14, 34);
      assert.equal(onesSum(ip), 0xffff, `segment ${i} IPv4 header checksum`);
      assert.equal((ip[2] << 8) | ip[3], 20 + 20 + mss, 'IPv4 total length');
      const tcp = e.subarray(34);
      const pseudo = [...ip.subarray(12, 20), 0, 6, tcp.length >> 8, tcp.length & 0xff];
      assert.equal(onesSum([...pseudo, ...tcp]), 0xffff, `segment ${i} TCP checksum`);
      assert.equal(((tcp[4] << 24) | (tcp[5] << 16) | (tcp[6] << 8) | tcp[7]) >>> 0, 1000 + i * mss, 'sequence number');
      data = data.concat([...tcp.subarray(20)]);
    }
    assert.deepEqual(data, [...f.subarray(HDR + 54)], 'payload in order');
    assert.equal(port.offloadCounters.rxSegmented, 1);
  });

  const byVtep = (): Map<string, VxlanVtepStats> => new Map(port.vteps().map((v) => [v.address, v]));
  const sum = (k: keyof VxlanVtepStats): number => port.vteps().reduce((n, v) => n + (v[k] as number), 0);

  it('per VTEP: each datagram counted at the VTEP it went to, each frame at the one it came from; they add up to the port\'s counters', async () => {
    const v0 = byVtep();
    const c0 = { ...port.counters };
    input(sw, vmIndex, frame(BCAST, VM, 20, 150)); // to A and B
    input(sw, vmIndex, frame(X, VM, 21, 170)); // to A only
    sw.flush();
    await b.send(local, VNI, eth(frame(VM, Y, 22, 90))); // from B
    await until('3 datagrams sent, 1 received', () => port.counters.encapDatagrams - c0.encapDatagrams === 3 && port.counters.decapFrames - c0.decapFrames === 1);
    const v1 = byVtep();
    const d = (addr: string, k: keyof VxlanVtepStats): number => (v1.get(addr)![k] as number) - (v0.get(addr)![k] as number);
    assert.deepEqual([d('127.0.0.2', 'sentDatagrams'), d('127.0.0.2', 'sentBytes'), d('127.0.0.2', 'receivedFrames')], [2, 150 + 170, 0]);
    assert.deepEqual([d('127.0.0.3', 'sentDatagrams'), d('127.0.0.3', 'sentBytes'), d('127.0.0.3', 'receivedFrames'), d('127.0.0.3', 'receivedBytes')], [1, 150, 1, 90]);
    assert.deepEqual([port.counters.toRemoteFrames - c0.toRemoteFrames, port.counters.toRemoteBytes - c0.toRemoteBytes], [2, 320], 'frames handed over, once each');
    // over everything this suite sent and received
    assert.equal(sum('sentDatagrams'), port.counters.encapDatagrams);
    assert.equal(sum('sentBytes'), port.counters.encapBytes);
    assert.equal(sum('receivedFrames'), port.counters.decapFrames);
    assert.equal(sum('receivedBytes'), port.counters.decapBytes);
    assert.equal(sum('sendErrors'), 0);
    assert.deepEqual([v1.get('127.0.0.2')!.flood, v1.get('127.0.0.3')!.flood], [true, true]);
    assert.deepEqual([v1.get('127.0.0.2')!.macs, v1.get('127.0.0.3')!.macs], [1, 2], 'A: X learned; B: Y learned, Z configured');
  });

  it('a failed send is counted by its error code and at its VTEP, the other replica still counted as sent; the slot is freed', async () => {
    // fault injection: the sockets' sends to B fail as a route to it gone would (EHOSTUNREACH)
    const socks = (port as unknown as { sendSocks: dgram.Socket[] }).sendSocks;
    const real = socks[0].send;
    type Cb = (e: Error | null) => void;
    const failing = function (this: dgram.Socket, ...args: unknown[]): void {
      if (args[4] === '127.0.0.3') {
        process.nextTick(args[5] as Cb, Object.assign(new Error('send EHOSTUNREACH 127.0.0.3'), { code: 'EHOSTUNREACH' }));
        return;
      }
      (real as (...a: unknown[]) => void).apply(this, args);
    };
    for (const sock of socks) sock.send = failing as typeof sock.send;
    const v0 = byVtep();
    const c0 = { ...port.counters };
    try {
      input(sw, vmIndex, frame(BCAST, VM, 30, 100));
      input(sw, vmIndex, frame(Z, VM, 31, 100)); // Z is behind B
      sw.flush();
      await until('the sends called back', () => port.counters.encapDatagrams - c0.encapDatagrams === 1 && port.counters.txSendErrors - c0.txSendErrors === 2);
    } finally {
      for (const sock of socks) sock.send = real;
    }
    const v1 = byVtep();
    assert.deepEqual(port.sendErrorCodes, { EHOSTUNREACH: 2 });
    assert.deepEqual([v1.get('127.0.0.3')!.sendErrors - v0.get('127.0.0.3')!.sendErrors, v1.get('127.0.0.3')!.sentDatagrams - v0.get('127.0.0.3')!.sentDatagrams], [2, 0]);
    assert.deepEqual([v1.get('127.0.0.2')!.sendErrors, v1.get('127.0.0.2')!.sentDatagrams - v0.get('127.0.0.2')!.sentDatagrams], [0, 1]);
    assert.equal(sum('sendErrors'), port.counters.txSendErrors);
    // every slot is free again: a burst of exactly SEND_SLOTS frames in one batch finds one each
    a.got.length = 0;
    const busy = port.counters.txSlotsBusy;
    const sent = port.counters.encapDatagrams;
    for (let i = 0; i < 256; i++) input(sw, vmIndex, frame(X, VM, 2000 + i, 60));
    sw.flush();
    assert.equal(port.counters.txSlotsBusy, busy, 'no frame waited for a slot');
    await until('the 256 sent', () => port.counters.encapDatagrams - sent === 256, 5000);
  });

  it('outer UDP source ports: flows spread over the send sockets (RFC 7348 §5), each flow always from one port', async () => {
    const seen = new Map<number, Set<number>>(); // inner UDP source port → outer source ports
    const onMsg = (m: Buffer, r: dgram.RemoteInfo): void => {
      const inner = m.subarray(8);
      if (inner.length < 42 || inner[12] !== 0x08 || inner[23] !== 17) return;
      const sport = inner.readUInt16BE(34);
      if (!seen.has(sport)) seen.set(sport, new Set());
      seen.get(sport)!.add(r.port);
    };
    a.sock.on('message', onMsg);
    try {
      const FLOWS = 32;
      for (let rep = 0; rep < 3; rep++) {
        for (let f = 0; f < FLOWS; f++) {
          const fr = new Uint8Array(HDR + 14 + 20 + 8 + 4);
          fr.set(macBytes(X), HDR);
          fr.set(macBytes(VM), HDR + 6);
          fr[HDR + 12] = 0x08;
          const ip = HDR + 14;
          fr[ip] = 0x45;
          fr[ip + 8] = 64;
          fr[ip + 9] = 17;
          fr.set([10, 9, 0, 1], ip + 12);
          fr.set([10, 9, 0, 2], ip + 16);
          new DataView(fr.buffer).setUint16(ip + 2, 20 + 8 + 4);
          new DataView(fr.buffer).setUint16(ip + 20, 30000 + f);
          new DataView(fr.buffer).setUint16(ip + 22, 5001);
          input(sw, vmIndex, fr);
        }
        sw.flush();
        await until('the datagrams at A', () => [...seen.values()].length === FLOWS);
        await settle(20);
      }
    } finally {
      a.sock.off('message', onMsg);
    }
    const ports = new Set(port.sourcePorts());
    assert.equal(ports.size, 8, `eight send sockets: ${[...ports].join(' ')}`);
    const used = new Set<number>();
    for (const [sport, outer] of seen) {
      assert.equal(outer.size, 1, `inner flow ${sport} left from ${[...outer].join(' ')}`);
      for (const o of outer) {
        assert.ok(ports.has(o), `outer port ${o} is one of ours`);
        used.add(o);
      }
    }
    assert.ok(used.size >= 4, `32 flows over ${used.size} source ports`);
  });

  it('capture: inner frames as received from remotes and as sent to them (a flood once, a TSO frame as its segments), in order', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-vxcap-'));
    const file = path.join(dir, 'vxlan.pcap');
    const caps = new CaptureManager(() => {}, { dir, maxBytes: 2 ** 30 });
    try {
      caps.start(port, file);
      const sent0 = port.counters.encapDatagrams;
      input(sw, vmIndex, frame(BCAST, VM, 40, 120)); // flooded to A and B: one record
      sw.flush();
      await until('the flood sent', () => port.counters.encapDatagrams - sent0 === 2);
      const back = frame(VM, X, 41, 130);
      await a.send(local, VNI, eth(back));
      await until('the guest receiving it', () => vm.received.some((r) => seqOf(r) === 41));
      input(sw, vmIndex, tsoFrame(macBytes(X), macBytes(VM), 2500, 1000)); // 3 segments
      sw.flush();
      await until('the segments sent', () => port.counters.encapDatagrams - sent0 === 2 + 3);
      const s = await caps.stop(port.name);
      assert.equal(s.frames, 5);
      const t = tcpdumpRead(file);
      assert.equal(t.status, 0, t.stderr);
      assert.deepEqual(t.records.map((r) => [r.src, r.dst, r.length]), [
        [VM, BCAST, 120],
        [X, VM, 130],
        [VM, X, 14 + 20 + 20 + 1000],
        [VM, X, 14 + 20 + 20 + 1000],
        [VM, X, 14 + 20 + 20 + 500],
      ]);
      assert.deepEqual([t.records[0].payload.readUInt32BE(0), t.records[1].payload.readUInt32BE(0)], [40, 41], 'the frames\' own bytes');
      assert.deepEqual(t.records[0].payload, eth(frame(BCAST, VM, 40, 120)).subarray(14));
      assert.deepEqual(t.records[1].payload, eth(back).subarray(14));
      // with the capture off the port records nothing more
      input(sw, vmIndex, frame(X, VM, 42, 80));
      sw.flush();
      await settle();
      assert.equal(tcpdumpRead(file).records.length, 5);
    } finally {
      caps.stopAllSync();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});


/** an IPv4/TCP GSO super-frame as a guest hands it over: NEEDS_CSUM, pseudo-header sum seeded */
function tsoFrame(dst: number[], src: number[], payload: number, mss: number): Uint8Array {
  const f = new Uint8Array(HDR + 54 + payload);
  f[0] = 1; // NEEDS_CSUM
  f[1] = 1; // GSO_TCPV4
  f[4] = mss & 0xff;
  f[5] = mss >> 8;
  f[6] = 34; // csum_start: the TCP header
  f[8] = 16; // csum_offset
  const e = HDR;
  f.set(dst, e);
  f.set(src, e + 6);
  f[e + 12] = 0x08;
  const ip = e + 14;
  f[ip] = 0x45;
  const tot = 40 + payload;
  f[ip + 2] = tot >> 8;
  f[ip + 3] = tot & 0xff;
  f[ip + 6] = 0x40;
  f[ip + 8] = 64;
  f[ip + 9] = 6;
  f.set([10, 77, 0, 1, 10, 77, 0, 9], ip + 12);
  const t = ip + 20;
  f[t] = 0x9c;
  f[t + 1] = 0x40;
  f[t + 2] = 0x14;
  f[t + 3] = 0x51;
  f[t + 6] = 0x03;
  f[t + 7] = 0xe8; // seq 1000
  f[t + 12] = 0x50;
  f[t + 13] = 0x18;
  f[t + 14] = 2;
  for (let i = 0; i < payload; i++) f[t + 20 + i] = (i * 31 + 7) & 0xff;
  const seed = onesSum([...f.subarray(ip + 12, ip + 20), 0, 6, 0, 0]);
  f[t + 16] = seed >> 8;
  f[t + 17] = seed & 0xff;
  return f;
}
