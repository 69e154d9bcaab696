// The engine with multiqueue ports: frames held and delivered per RX queue (no head-of-line
// blocking between a port's queues), order per flow, one share limit per connection, re-spreading
// when a port's set of RX queues changes. And the flow hash the vhost-user port spreads by.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Switch } from '../../src/engine/switch';
import type { EnginePort } from '../../src/engine/port';
import { ENGINE_HDR_LEN } from '../../src/engine/port';
import type { Frame } from '../../src/datapath/frame';
import { frameBytes } from '../../src/datapath/byte-frame';
import { ByteFrames } from '../../src/datapath/byte-frame';
import { flowHash } from '../../src/datapath/flow-hash';
import fc from 'fast-check';
import { checkProperty } from './property';
import { BCAST, FakeClock, TestPort, frame, input, mac, seqOf, SEQ_OFFSET } from './engine-helpers';

const A = mac(1);
const B = mac(2);
const FLOW_OFFSET = SEQ_OFFSET + 4;

/** a frame of flow `flow` (a byte the LanedPort spreads by) */
function flowFrame(dst: string, src: string, flow: number, seq: number): Uint8Array {
  const f = frame(dst, src, seq);
  f[FLOW_OFFSET] = flow;
  return f;
}

/** A port with RX queues: each with its own buffer count; frames spread over `set` by their flow byte. */
class LanedPort implements EnginePort {
  set: number[];
  buffers: number[];
  received: { lane: number; flow: number; seq: number }[] = [];
  wanting: boolean[];
  constructor(readonly name: string, lanes: number, buffers = 1 << 30) {
    this.set = Array.from({ length: lanes }, (_, i) => i);
    this.buffers = new Array<number>(lanes).fill(buffers);
    this.wanting = new Array<boolean>(lanes).fill(false);
  }
  laneFor(f: Frame): number {
    return this.set[f.eth[f.ethOff + FLOW_OFFSET - ENGINE_HDR_LEN] % this.set.length];
  }
  deliver(f: Frame, lane: number): boolean {
    if (!this.set.includes(lane) || this.buffers[lane] <= 0) return false;
    this.buffers[lane]--;
    const b = frameBytes(f);
    this.received.push({ lane, flow: b[FLOW_OFFSET], seq: seqOf(b) });
    return true;
  }
  flush(): void {}
  wantResources(want: boolean, lane: number): void {
    this.wanting[lane] = want;
  }
  /** seqs received per flow, in order */
  byFlow(): Map<number, number[]> {
    const m = new Map<number, number[]>();
    for (const r of this.received) m.set(r.flow, [...(m.get(r.flow) ?? []), r.seq]);
    return m;
  }
}

function make(queues = 8) {
  const clock = new FakeClock();
  const sw = new Switch({ tickMs: 0, clock: clock.now, queues });
  return { sw, clock };
}

function send(sw: Switch, src: number, f: Uint8Array): void {
  input(sw, src, f);
  sw.flush();
  sw.checkInvariants();
}

test('frames go to the RX queue laneFor() names, on the fast path, each flow in order', () => {
  const { sw } = make(4);
  const pa = new TestPort('a');
  const pb = new LanedPort('b', 4);
  const a = sw.attach(pa);
  const b = sw.attach(pb);
  send(sw, b, frame(BCAST, B, 0));
  for (let i = 0; i < 40; i++) input(sw, a, flowFrame(B, A, i % 4, i));
  sw.flush();
  sw.checkInvariants();
  assert.equal(pb.received.length, 40);
  for (const r of pb.received) assert.equal(r.lane, r.flow, 'flow k on RX queue k');
  for (const [flow, seqs] of pb.byFlow()) assert.deepEqual(seqs, Array.from({ length: 10 }, (_, j) => flow + 4 * j));
  assert.equal(sw.stats().ports[1].fastFrames, 40);
});

test('a full RX queue holds only its own frames: the other queues of the port go on (no head-of-line blocking)', () => {
  const { sw } = make(4);
  const pa = new TestPort('a');
  const pb = new LanedPort('b', 4);
  const a = sw.attach(pa);
  const b = sw.attach(pb);
  send(sw, b, frame(BCAST, B, 0));
  pb.buffers[2] = 0;
  for (let i = 0; i < 40; i++) input(sw, a, flowFrame(B, A, i % 4, i));
  sw.flush();
  sw.checkInvariants();
  assert.equal(pb.received.length, 30, 'queues 0, 1 and 3 got theirs');
  assert.ok(pb.received.every((r) => r.lane !== 2));
  const st = sw.stats().ports[1];
  assert.equal(st.queuedFrames, 10);
  assert.deepEqual(st.queuedPerQueue, [0, 0, 10]);
  assert.deepEqual(pb.wanting, [false, false, true, false], 'a kick asked for on queue 2 only');
  // more for queue 0 still passes while queue 2 waits
  send(sw, a, flowFrame(B, A, 0, 100));
  assert.equal(pb.received.at(-1)!.seq, 100);
  // buffers on queue 2: its frames in order
  pb.buffers[2] = 4;
  sw.resourcesAvailable(b, 2);
  sw.checkInvariants();
  assert.deepEqual(pb.byFlow().get(2), [2, 6, 10, 14]);
  assert.deepEqual(sw.stats().ports[1].queuedPerQueue, [0, 0, 6]);
  // a kick on another queue does not drain queue 2
  pb.buffers[2] = 100;
  sw.resourcesAvailable(b, 1);
  assert.equal(sw.stats().ports[1].queuedFrames, 6);
  sw.resourcesAvailable(b, 2);
  assert.deepEqual(pb.byFlow().get(2), Array.from({ length: 10 }, (_, j) => 2 + 4 * j));
  assert.equal(sw.stats().ports[1].queuedFrames, 0);
  assert.deepEqual(pb.wanting, [false, false, false, false]);
  assert.equal(sw.stats().total.dropped, 0);
});

test("the share limit is the connection's, over all its RX queues", () => {
  const { sw } = make(4);
  const pa = new TestPort('a');
  const pb = new LanedPort('b', 4, 0);
  const a = sw.attach(pa);
  const b = sw.attach(pb, { shareLimit: 6 });
  send(sw, b, frame(BCAST, B, 0));
  for (let i = 0; i < 8; i++) input(sw, a, flowFrame(B, A, i % 4, i));
  sw.flush();
  sw.checkInvariants();
  const st = sw.stats().ports[1];
  assert.equal(st.queuedFrames, 6);
  assert.equal(st.queuedBlocks, 6);
  assert.deepEqual(st.queuedPerQueue, [2, 2, 1, 1]);
  assert.equal(st.drops.shareLimit, 2);
});

test('queuesChanged: held frames move to the queue each goes to now, each flow in order', () => {
  const { sw } = make(4);
  const pa = new TestPort('a');
  const pb = new LanedPort('b', 4, 0);
  const a = sw.attach(pa);
  const b = sw.attach(pb);
  send(sw, b, frame(BCAST, B, 0));
  for (let i = 0; i < 64; i++) input(sw, a, flowFrame(B, A, i % 8, i));
  sw.flush();
  assert.deepEqual(sw.stats().ports[1].queuedPerQueue, [16, 16, 16, 16]);
  // the guest went down to queues 0 and 1 (ethtool -L combined 2)
  pb.set = [0, 1];
  sw.queuesChanged(b);
  sw.checkInvariants();
  assert.deepEqual(sw.stats().ports[1].queuedPerQueue, [32, 32]);
  assert.deepEqual(pb.wanting, [true, true, false, false]);
  // frames after the change land behind the moved ones
  for (let i = 64; i < 72; i++) input(sw, a, flowFrame(B, A, i % 8, i));
  sw.flush();
  pb.buffers = [1000, 1000, 0, 0];
  sw.resourcesAvailable(b, 0);
  sw.resourcesAvailable(b, 1);
  sw.checkInvariants();
  assert.equal(pb.received.length, 72);
  for (const r of pb.received) assert.equal(r.lane, r.flow % 2);
  for (const [flow, seqs] of pb.byFlow()) assert.deepEqual(seqs, Array.from({ length: 9 }, (_, j) => flow + 8 * j), `flow ${flow} in order`);
  assert.equal(sw.stats().total.dropped, 0);
});

test('detach drops what every RX queue held, counted; a MAC that moves takes its held frames to the new port\'s queues', () => {
  const { sw } = make(4);
  const pa = new TestPort('a');
  const pb = new LanedPort('b', 4, 0);
  const pc = new LanedPort('c', 2);
  const a = sw.attach(pa);
  const b = sw.attach(pb);
  const c = sw.attach(pc);
  send(sw, b, frame(BCAST, B, 0));
  pc.received = [];
  for (let i = 0; i < 12; i++) input(sw, a, flowFrame(B, A, i % 4, i));
  sw.flush();
  assert.equal(sw.stats().ports[1].queuedFrames, 12);
  // B shows up on c (a migrated guest announcing itself): its frames follow, spread over c's queues
  send(sw, c, frame(BCAST, B, 1));
  sw.checkInvariants();
  assert.equal(sw.stats().ports[1].queuedFrames, 1, "only the announce's own flood waits for b");
  assert.equal(pc.received.length, 12);
  assert.equal(sw.stats().ports[2].followedFrames, 12);
  for (const r of pc.received) assert.equal(r.lane, r.flow % 2);
  for (const [flow, seqs] of pc.byFlow()) assert.deepEqual(seqs, [flow, flow + 4, flow + 8]);
  // held again on b (another MAC), then b detaches
  const X = mac(9);
  send(sw, b, frame(BCAST, X, 0));
  for (let i = 0; i < 8; i++) input(sw, a, flowFrame(X, A, i % 4, i));
  sw.flush();
  assert.equal(sw.stats().ports[1].queuedFrames, 9);
  assert.ok(sw.stats().ports[1].queuedPerQueue.filter((n) => n > 0).length >= 4, 'held on all four queues');
  sw.detach(b);
  sw.checkInvariants();
  assert.equal(sw.stats().pool.blocksInUse, 0);
  assert.equal(sw.stats().total.drops.detached, 9);
});

// randomized, with fast-check: a failing sequence of operations shrinks to a minimal one and
// replays from the printed seed and path (property.ts)
type MqOp =
  | { k: 'send'; from: number; flow: number; flush: boolean }
  | { k: 'post'; lane: number; n: number }
  | { k: 'queues'; set: number[] };

const mqOp: fc.Arbitrary<MqOp> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ k: fc.constant('send' as const), from: fc.nat(1), flow: fc.nat(15), flush: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('post' as const), lane: fc.nat(7), n: fc.nat(5) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('queues' as const), set: fc.uniqueArray(fc.nat(7), { minLength: 1, maxLength: 8 }) }) },
);

test('randomized (fast-check): RX queues filling and emptying, the queue set changing, two senders — nothing lost, each flow in order', (t) => {
  let stored = 0;
  let changes = 0;
  checkProperty(
    t,
    fc.property(fc.array(mqOp, { minLength: 1, maxLength: 600, size: 'max' }), (ops) => {
      const { sw } = make(8);
      const p1 = new TestPort('s1');
      const p2 = new TestPort('s2');
      const pd = new LanedPort('d', 8, 0);
      const s1 = sw.attach(p1);
      const s2 = sw.attach(p2);
      const d = sw.attach(pd);
      const D = mac(7);
      const S1 = mac(5);
      const S2 = mac(6);
      send(sw, d, frame(BCAST, D, 0));
      pd.received = [];
      const sent = new Map<string, number[]>();
      let seq = 0;
      for (const op of ops) {
        if (op.k === 'send') {
          const s = ++seq;
          input(sw, op.from === 0 ? s1 : s2, flowFrame(D, op.from === 0 ? S1 : S2, op.flow, s));
          const k = `${op.from}/${op.flow}`;
          sent.set(k, [...(sent.get(k) ?? []), s]);
          if (op.flush) sw.flush();
        } else if (op.k === 'post') {
          sw.flush();
          pd.buffers[op.lane] += op.n;
          sw.resourcesAvailable(d, op.lane);
        } else {
          sw.flush();
          pd.set = [...op.set].sort((x, y) => x - y);
          sw.queuesChanged(d);
        }
        sw.checkInvariants();
      }
      sw.flush();
      stored += sw.stats().total.storedFrames;
      changes += ops.filter((o) => o.k === 'queues').length;
      pd.set = [0, 1, 2, 3, 4, 5, 6, 7];
      sw.queuesChanged(d);
      pd.buffers.fill(1 << 20);
      for (let l = 0; l < 8; l++) sw.resourcesAvailable(d, l);
      sw.checkInvariants();
      assert.equal(sw.stats().total.dropped, 0);
      assert.equal(sw.stats().ports[2].queuedFrames, 0);
      const got = new Map<string, number[]>();
      for (const r of pd.received) {
        // the sender is told by the sequence number's owner
        const from = sent.get(`0/${r.flow}`)?.includes(r.seq) ? 0 : 1;
        const k = `${from}/${r.flow}`;
        got.set(k, [...(got.get(k) ?? []), r.seq]);
      }
      assert.equal(pd.received.length, seq, 'every frame delivered once');
      for (const [k, seqs] of sent) assert.deepEqual(got.get(k), seqs, `flow ${k} complete and in order`);
      sw.close();
    }),
    { numRuns: 100 },
  );
  // the generator's reach: frames were held and queue sets changed under them
  t.diagnostic(`${stored} frames held, ${changes} queue-set changes`);
  if (!process.env.FC_PATH) assert.ok(stored > 4000 && changes > 1500, `${stored} frames held, ${changes} queue-set changes`);
});

// ---- the flow hash

const frames = new ByteFrames();
function ipv4(proto: number, sport: number, dport: number, opts: { frag?: number; vlan?: boolean; src?: number } = {}): Frame {
  const vl = opts.vlan ? 4 : 0;
  const f = new Uint8Array(ENGINE_HDR_LEN + 14 + vl + 20 + 8 + 10);
  let o = ENGINE_HDR_LEN + 12;
  if (opts.vlan) {
    f[o] = 0x81;
    f[o + 2] = 0x00;
    f[o + 3] = 5;
    o += 4;
  }
  f[o] = 0x08;
  o += 2;
  f[o] = 0x45;
  f[o + 6] = (opts.frag ?? 0) >> 8;
  f[o + 7] = (opts.frag ?? 0) & 0xff;
  f[o + 9] = proto;
  f.set([10, 0, 0, opts.src ?? 1], o + 12);
  f.set([10, 0, 0, 2], o + 16);
  new DataView(f.buffer).setUint16(o + 20, sport);
  new DataView(f.buffer).setUint16(o + 22, dport);
  return frames.of(f);
}

test('flow hash: the 5-tuple for TCP/UDP over IPv4 and IPv6, addresses for fragments and other IP, MACs otherwise', () => {
  const h = (f: Frame): number => flowHash(f);
  // same flow, same hash; another port, another hash (over many, nearly all differ)
  assert.equal(h(ipv4(6, 1000, 5201)), h(ipv4(6, 1000, 5201)));
  const tcp = new Set<number>();
  for (let p = 0; p < 256; p++) tcp.add(h(ipv4(6, 40000 + p, 5201)) % 4);
  assert.equal(tcp.size, 4, 'source ports spread over 4 queues');
  assert.notEqual(h(ipv4(6, 1000, 5201)), h(ipv4(17, 1000, 5201)), 'protocol counts');
  // fragments of one datagram (MF set / an offset) all hash alike, whatever their bytes there say
  assert.equal(h(ipv4(17, 1000, 5201, { frag: 0x2000 })), h(ipv4(17, 7, 9, { frag: 0x00b9 })));
  assert.notEqual(h(ipv4(17, 1000, 5201, { frag: 0x2000 })), h(ipv4(17, 1000, 5201)));
  // ICMP: the address pair only
  assert.equal(h(ipv4(1, 1, 2)), h(ipv4(1, 3, 4)));
  assert.notEqual(h(ipv4(1, 1, 2)), h(ipv4(1, 1, 2, { src: 3 })));
  // a VLAN tag is looked through
  assert.equal(h(ipv4(6, 1000, 5201, { vlan: true })), h(ipv4(6, 1000, 5201)));
  // IPv6 TCP
  const v6 = (sport: number): Frame => {
    const f = new Uint8Array(ENGINE_HDR_LEN + 14 + 40 + 20);
    const o = ENGINE_HDR_LEN + 14;
    f[ENGINE_HDR_LEN + 12] = 0x86;
    f[ENGINE_HDR_LEN + 13] = 0xdd;
    f[o] = 0x60;
    f[o + 6] = 6;
    f[o + 23] = 1;
    f[o + 39] = 2;
    new DataView(f.buffer).setUint16(o + 40, sport);
    return frames.of(f);
  };
  assert.equal(h(v6(1)), h(v6(1)));
  assert.notEqual(h(v6(1)), h(v6(2)));
  // non-IP: by the MAC pair
  const eth = (dst: string, src: string): Frame => frames.of(frame(dst, src, 1));
  assert.equal(h(eth(A, B)), h(frames.of(frame(A, B, 99))));
  assert.notEqual(h(eth(A, B)), h(eth(A, mac(3))));
  for (const f of [ipv4(6, 1, 2), v6(3), eth(A, B)]) assert.ok(Number.isInteger(h(f)) && h(f) >= 0 && h(f) < 2 ** 32);
});
