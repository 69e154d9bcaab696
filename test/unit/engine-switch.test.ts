import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Switch, type SwitchOptions } from '../../src/engine/switch';
import { BCAST, FakeClock, TestPort, frame, input, mac, patternOk, seqOf } from './engine-helpers';
import fc from 'fast-check';
import { checkProperty } from './property';

const A = mac(1);
const B = mac(2);
const C = mac(3);
const D = mac(4);

function make(opts: SwitchOptions = {}) {
  const clock = new FakeClock();
  const sw = new Switch({ tickMs: 0, clock: clock.now, ...opts });
  return { sw, clock };
}

/** input one frame and flush, then check the FIFO bookkeeping */
function send(sw: Switch, src: number, f: Uint8Array): void {
  input(sw, src, f);
  sw.flush();
  sw.checkInvariants();
}

function range(a: number, b: number): number[] {
  return Array.from({ length: b - a }, (_, i) => a + i);
}

test('fast path: unicast to a learned MAC, flush only on ports delivered to', () => {
  const { sw } = make();
  const pa = new TestPort('a'), pb = new TestPort('b'), pc = new TestPort('c');
  const a = sw.attach(pa), b = sw.attach(pb), c = sw.attach(pc);
  assert.deepEqual([a, b, c], [0, 1, 2]);
  send(sw, b, frame(BCAST, B, 0)); // b learned
  pa.received = [];
  pc.received = [];
  const fl = pc.flushes;
  for (let i = 1; i <= 10; i++) input(sw, a, frame(B, A, i));
  sw.flush();
  assert.deepEqual(pb.seqs(), range(1, 11));
  assert.equal(pc.received.length, 0);
  assert.equal(pc.flushes, fl, 'port c not flushed');
  const s = sw.stats();
  assert.equal(s.ports[b].fastFrames, 10);
  assert.equal(s.ports[b].fastBytes, 640);
  assert.equal(s.total.storedFrames, 0);
  assert.equal(s.pool.blocksInUse, 0);
  sw.close();
});

test('burst to a guest without RX buffers is stored, then delivered completely and in order', () => {
  const { sw } = make({ poolBytes: 512 * 2048, defaultShareLimit: 512 });
  const pa = new TestPort('a'), pb = new TestPort('b', { buffers: 0 });
  const a = sw.attach(pa), b = sw.attach(pb, { staticMac: B });
  const N = 500;
  for (let i = 0; i < N; i++) {
    input(sw, a, frame(B, A, i));
    if (i % 32 === 31) sw.flush();
    sw.checkInvariants();
  }
  sw.flush();
  assert.equal(pb.received.length, 0);
  assert.equal(pb.wanting, true, 'asked for a kick');
  assert.deepEqual(pb.wantCalls, [true], 'asked once');
  let s = sw.stats();
  assert.equal(s.ports[b].queuedFrames, N);
  assert.equal(s.pool.highWater, N);
  // the guest posts buffers in dribs: each kick delivers what fits, in order
  for (const n of [1, 7, 100, 392]) {
    pb.post(n);
    sw.resourcesAvailable(b);
    sw.checkInvariants();
  }
  assert.deepEqual(pb.seqs(), range(0, N));
  assert.equal(pb.wanting, false);
  s = sw.stats();
  assert.equal(s.ports[b].drainedFrames, N);
  assert.equal(s.total.dropped, 0);
  assert.equal(s.pool.blocksInUse, 0);
  assert.equal(s.pool.blocksTaken, s.pool.blocksReturned);
  sw.close();
});

test('beyond the pool the drops are counted exactly, and what was stored is delivered in order', () => {
  const { sw } = make({ poolBytes: 100 * 2048, defaultShareLimit: 1000 });
  const pa = new TestPort('a'), pb = new TestPort('b', { buffers: 0 });
  const a = sw.attach(pa), b = sw.attach(pb, { staticMac: B });
  for (let i = 0; i < 130; i++) send(sw, a, frame(B, A, i));
  let s = sw.stats();
  assert.equal(s.total.drops.poolExhausted, 30);
  assert.equal(s.ports[b].drops.poolExhausted, 30);
  assert.equal(s.ports[b].queuedFrames, 100);
  pb.post(1000);
  sw.resourcesAvailable(b);
  assert.deepEqual(pb.seqs(), range(0, 100));
  // the pool is free again: the next frames take the fast path
  send(sw, a, frame(B, A, 130));
  assert.deepEqual(pb.seqs().slice(-1), [130]);
  s = sw.stats();
  assert.equal(s.total.rxFrames, 131);
  assert.equal(s.total.fastFrames + s.total.drainedFrames + s.total.dropped, 131);
  sw.close();
});

test('share limit: a stalled guest cannot take the whole pool; another guest still gets stored', () => {
  const { sw } = make({ poolBytes: 100 * 2048 });
  const pa = new TestPort('a'), pb = new TestPort('b', { buffers: 0 }), pc = new TestPort('c', { buffers: 0 });
  const a = sw.attach(pa);
  const b = sw.attach(pb, { staticMac: B, shareLimit: 60 });
  const c = sw.attach(pc, { staticMac: C, shareLimit: 60 });
  for (let i = 0; i < 80; i++) send(sw, a, frame(B, A, i));
  for (let i = 0; i < 30; i++) send(sw, a, frame(C, A, i));
  const s = sw.stats();
  assert.equal(s.ports[b].queuedFrames, 60);
  assert.equal(s.ports[b].drops.shareLimit, 20);
  assert.equal(s.ports[c].queuedFrames, 30, 'c borrowed from the shared pool');
  assert.equal(s.ports[c].dropped, 0);
  pc.post(100);
  sw.resourcesAvailable(c);
  assert.deepEqual(pc.seqs(), range(0, 30));
  sw.close();
});

test('ordering rule: with frames waiting, a new frame is stored even if deliver() would succeed', () => {
  const { sw } = make();
  const pa = new TestPort('a'), pb = new TestPort('b', { buffers: 0 });
  const a = sw.attach(pa), b = sw.attach(pb, { staticMac: B });
  for (let i = 0; i < 5; i++) send(sw, a, frame(B, A, i));
  pb.post(100); // buffers posted, but the kick has not been reported yet
  for (let i = 5; i < 8; i++) send(sw, a, frame(B, A, i));
  assert.equal(pb.received.length, 0, 'no overtaking');
  sw.resourcesAvailable(b);
  for (let i = 8; i < 10; i++) send(sw, a, frame(B, A, i));
  assert.deepEqual(pb.seqs(), range(0, 10));
  assert.equal(sw.stats().ports[b].fastFrames, 2);
  sw.close();
});

test('a stopped ring (GET_VRING_BASE) holds frames; restarting it delivers them', () => {
  const { sw } = make();
  const pa = new TestPort('a'), pb = new TestPort('b');
  const a = sw.attach(pa), b = sw.attach(pb, { staticMac: B });
  send(sw, a, frame(B, A, 0));
  pb.started = false;
  for (let i = 1; i < 20; i++) send(sw, a, frame(B, A, i));
  assert.deepEqual(pb.seqs(), [0]);
  pb.started = true;
  sw.resourcesAvailable(b);
  send(sw, a, frame(B, A, 20));
  assert.deepEqual(pb.seqs(), range(0, 21));
  sw.close();
});

test('frame to an unknown MAC is held, then delivered in arrival order once the MAC is learned', () => {
  const { sw } = make({ holdTimeMs: 1000 });
  const pa = new TestPort('a'), pb = new TestPort('b'), pc = new TestPort('c');
  const a = sw.attach(pa), b = sw.attach(pb), c = sw.attach(pc);
  for (let i = 0; i < 10; i++) {
    send(sw, a, frame(B, A, i));
    send(sw, a, frame(D, A, 100 + i)); // D never appears
  }
  assert.equal(pb.received.length + pc.received.length, 0);
  assert.equal(sw.stats().pool.unresolvedFrames, 20);
  const fl = pb.flushes;
  send(sw, b, frame(A, B, 0)); // b speaks: B learned
  assert.deepEqual(pb.seqs(), range(0, 10));
  assert.ok(pb.flushes > fl, 'signalled');
  assert.equal(pc.received.length, 0);
  const s = sw.stats();
  assert.equal(s.ports[b].resolvedFrames, 10);
  assert.equal(s.pool.unresolvedFrames, 10, 'frames for D still held');
  send(sw, a, frame(B, A, 10));
  assert.deepEqual(pb.seqs().slice(-1), [10]);
  assert.equal(pa.received.length, 1, 'b’s frame reached a (a was learned)');
  void c;
  sw.close();
});

test('held frames resolved into a guest without buffers wait in its queue, in order', () => {
  const { sw } = make({ holdTimeMs: 1000 });
  const pa = new TestPort('a'), pb = new TestPort('b', { buffers: 2 });
  const a = sw.attach(pa), b = sw.attach(pb);
  for (let i = 0; i < 6; i++) send(sw, a, frame(B, A, i));
  send(sw, b, frame(BCAST, B, 0));
  assert.deepEqual(pb.seqs(), [0, 1]);
  assert.equal(pb.wanting, true);
  send(sw, a, frame(B, A, 6)); // behind the resolved ones
  pb.post(10);
  sw.resourcesAvailable(b);
  assert.deepEqual(pb.seqs(), range(0, 7));
  sw.close();
});

test('a configured MAC resolves held frames (setStaticMac)', () => {
  const { sw } = make({ holdTimeMs: 1000 });
  const pa = new TestPort('a'), pb = new TestPort('b');
  const a = sw.attach(pa), b = sw.attach(pb);
  for (let i = 0; i < 4; i++) send(sw, a, frame(B, A, i));
  sw.setStaticMac(b, B);
  assert.deepEqual(pb.seqs(), range(0, 4));
  assert.ok(pb.flushes > 0);
  sw.close();
});

test('hold time, policy flood: held frames go to every port but the source, counted', () => {
  const { sw, clock } = make({ holdTimeMs: 100, unknownPolicy: 'flood' });
  const pa = new TestPort('a'), pb = new TestPort('b'), pc = new TestPort('c', { buffers: 0 });
  const a = sw.attach(pa), b = sw.attach(pb), c = sw.attach(pc);
  send(sw, a, frame(D, A, 1));
  clock.advance(50);
  send(sw, a, frame(D, A, 2));
  clock.advance(49);
  sw.tick();
  assert.equal(pb.received.length, 0, 'not yet');
  clock.advance(1);
  sw.tick();
  assert.deepEqual(pb.seqs(), [1]);
  assert.equal(sw.stats().ports[c].queuedFrames, 1, 'c has no buffers: its copy waits');
  clock.advance(50);
  send(sw, b, frame(BCAST, B, 9)); // flush() also expires
  assert.deepEqual(pb.seqs(), [1, 2]);
  assert.equal(pa.seqs().includes(1), false, 'never back to the source');
  pc.post(10);
  sw.resourcesAvailable(c);
  assert.deepEqual(pc.seqs(A), [1, 2], 'in order per source');
  assert.deepEqual(pc.seqs(B), [9]);
  const s = sw.stats();
  assert.equal(s.total.holdFlooded, 2);
  assert.equal(s.ports[a].holdFlooded, 2);
  assert.equal(s.pool.unresolvedFrames, 0);
  assert.equal(s.pool.blocksInUse, 0);
  sw.close();
});

test('hold time, policy drop: held frames are dropped and counted', () => {
  const { sw, clock } = make({ holdTimeMs: 100, unknownPolicy: 'drop' });
  const pa = new TestPort('a'), pb = new TestPort('b');
  const a = sw.attach(pa), b = sw.attach(pb);
  for (let i = 0; i < 3; i++) send(sw, a, frame(D, A, i));
  clock.advance(100);
  sw.tick();
  const s = sw.stats();
  assert.equal(s.total.drops.holdExpired, 3);
  assert.equal(s.ports[a].drops.holdExpired, 3);
  assert.equal(pb.received.length, 0);
  assert.equal(s.pool.blocksInUse, 0);
  void b;
  sw.close();
});

test('unresolved share limit caps unknown-destination traffic', () => {
  const { sw } = make({ poolBytes: 100 * 2048, unresolvedShareLimit: 10, holdTimeMs: 1e9 });
  const pa = new TestPort('a');
  const a = sw.attach(pa);
  sw.attach(new TestPort('b'));
  for (let i = 0; i < 15; i++) send(sw, a, frame(D, A, i));
  const s = sw.stats();
  assert.equal(s.pool.unresolvedFrames, 10);
  assert.equal(s.ports[a].drops.shareLimit, 5);
  sw.close();
});

test('broadcast reaches every other port; a full port does not delay the others', () => {
  const { sw } = make();
  const ports = [new TestPort('p0'), new TestPort('p1'), new TestPort('p2', { buffers: 0 }), new TestPort('p3')];
  const idx = ports.map((p) => sw.attach(p));
  for (let i = 0; i < 5; i++) send(sw, idx[0], frame(BCAST, A, i));
  assert.equal(ports[0].received.length, 0, 'not back to the source');
  assert.deepEqual(ports[1].seqs(), range(0, 5));
  assert.deepEqual(ports[3].seqs(), range(0, 5));
  assert.equal(ports[2].received.length, 0);
  assert.equal(sw.stats().ports[2].queuedFrames, 5);
  ports[2].post(5);
  sw.resourcesAvailable(idx[2]);
  assert.deepEqual(ports[2].seqs(), range(0, 5));
  sw.close();
});

test('port security: a static-MAC port sending another source MAC is dropped and counted', () => {
  const { sw } = make();
  const pa = new TestPort('a'), pb = new TestPort('b');
  const a = sw.attach(pa, { staticMac: A }), b = sw.attach(pb, { staticMac: B });
  send(sw, a, frame(B, A, 1)); // known from the start: fast path, no learning needed
  send(sw, a, frame(B, C, 2)); // spoofed
  assert.deepEqual(pb.seqs(), [1]);
  send(sw, b, frame(A, B, 3)); // b's own MAC reaches a
  assert.deepEqual(pa.seqs(), [3]);
  const s = sw.stats();
  assert.equal(s.ports[a].drops.portSecurity, 1);
  assert.equal(s.ports[a].staticMac, A);
  assert.equal(sw.macEntries().find((e) => e.mac === C), undefined, 'spoofed MAC not learned');
  // a learning port cannot steal a static MAC
  const pc = new TestPort('c');
  const c = sw.attach(pc);
  send(sw, c, frame(C, B, 4));
  send(sw, a, frame(B, A, 5));
  assert.deepEqual(pb.seqs(), [1, 5]);
  void c;
  sw.close();
});

test('same-connection and malformed frames are dropped and counted', () => {
  const { sw } = make();
  const pa = new TestPort('a');
  const a = sw.attach(pa);
  sw.attach(new TestPort('b'));
  send(sw, a, frame(BCAST, A, 0));
  send(sw, a, frame(A, A, 1));
  const short = new Uint8Array(20);
  input(sw, a, short);
  sw.flush();
  const s = sw.stats();
  assert.equal(s.ports[a].drops.sameConnection, 1);
  assert.equal(s.ports[a].drops.malformed, 1);
  assert.equal(pa.received.length, 0);
  sw.close();
});

test('detach frees its queued blocks at once and forgets its MACs; other queues untouched', () => {
  const { sw } = make({ holdTimeMs: 1e9 });
  const pa = new TestPort('a'), pb = new TestPort('b', { buffers: 0 }), pc = new TestPort('c', { buffers: 0 });
  const a = sw.attach(pa), b = sw.attach(pb), c = sw.attach(pc, { staticMac: C });
  send(sw, b, frame(BCAST, B, 0)); // learn B (c's copy waits; a's delivered)
  for (let i = 1; i <= 10; i++) send(sw, a, frame(B, A, i));
  for (let i = 1; i <= 4; i++) send(sw, a, frame(C, A, i));
  assert.equal(sw.stats().pool.blocksInUse, 15);
  sw.detach(b);
  sw.checkInvariants();
  let s = sw.stats();
  assert.equal(s.pool.blocksInUse, 5, 'b’s 10 blocks back at once');
  assert.equal(s.total.drops.detached, 10);
  assert.equal(s.ports.length, 2);
  send(sw, a, frame(B, A, 11)); // B forgotten: unknown, held
  assert.equal(sw.stats().pool.unresolvedFrames, 1);
  pc.post(10);
  sw.resourcesAvailable(c);
  assert.deepEqual(pc.seqs(), [0, 1, 2, 3, 4]);
  // the index is reused, and a new port starts clean
  const pd = new TestPort('d');
  assert.equal(sw.attach(pd), b);
  s = sw.stats();
  assert.equal(s.ports.find((p) => p.index === b)?.rxFrames, 0);
  sw.close();
});

test('large GSO frames (65000 bytes) with merged RX buffers: stored as block chains, intact', () => {
  const { sw } = make({ poolBytes: 4 * 1024 * 1024 });
  const pa = new TestPort('a'), pb = new TestPort('b', { buffers: 0, bufSize: 4096, mergeable: true });
  const a = sw.attach(pa), b = sw.attach(pb, { staticMac: B });
  for (let i = 0; i < 20; i++) send(sw, a, frame(B, A, i, i % 2 ? 65000 : 1500));
  // release a middle frame's worth of blocks in a fragmented way: small frames to c interleaved
  pb.post(17); // one 65012-byte frame needs 16 buffers: only the first fits
  sw.resourcesAvailable(b);
  assert.deepEqual(pb.seqs(), [0, 1]);
  pb.post(1e6);
  sw.resourcesAvailable(b);
  assert.deepEqual(pb.seqs(), range(0, 20));
  for (const f of pb.received) assert.ok(patternOk(f), `frame ${seqOf(f)} intact`);
  assert.equal(pb.received[1].length, 65012);
  const s = sw.stats();
  assert.equal(s.pool.blocksInUse, 0);
  assert.equal(s.pool.highWater, 10 * 32 + 10);
  sw.close();
});

test('chained frames whose blocks are not adjacent are delivered through the scratch copy', () => {
  const { sw } = make({ poolBytes: 64 * 2048, defaultShareLimit: 64 });
  const pa = new TestPort('a'), pb = new TestPort('b', { buffers: 0 }), pc = new TestPort('c', { buffers: 0 });
  const a = sw.attach(pa), b = sw.attach(pb, { staticMac: B }), c = sw.attach(pc, { staticMac: C });
  // fragment the pool: alternate small frames to b and c, then free b's
  for (let i = 0; i < 20; i++) {
    send(sw, a, frame(B, A, i, 200));
    send(sw, a, frame(C, A, i, 200));
  }
  pb.post(100);
  sw.resourcesAvailable(b);
  for (let i = 0; i < 3; i++) send(sw, a, frame(C, A, 100 + i, 9000));
  pc.post(100);
  sw.resourcesAvailable(c);
  assert.deepEqual(pc.seqs(), [...range(0, 20), 100, 101, 102]);
  for (const f of pc.received) assert.ok(patternOk(f));
  sw.close();
});

test('no wantResources churn: kicks with nothing waiting just clear the request', () => {
  const { sw } = make();
  const pb = new TestPort('b');
  const b = sw.attach(pb);
  sw.resourcesAvailable(b);
  assert.deepEqual(pb.wantCalls, []);
  sw.close();
});

test('MAC aging: a silent MAC is forgotten, frames to it are held again', () => {
  const { sw, clock } = make({ macAgeMs: 1000, holdTimeMs: 1e9 });
  const pa = new TestPort('a'), pb = new TestPort('b');
  const a = sw.attach(pa), b = sw.attach(pb);
  send(sw, b, frame(BCAST, B, 0));
  send(sw, a, frame(B, A, 1));
  clock.advance(1001);
  send(sw, a, frame(B, A, 2));
  assert.deepEqual(pb.seqs(), [1]);
  assert.equal(sw.stats().pool.unresolvedFrames, 1);
  send(sw, b, frame(A, B, 3)); // relearned → resolved
  assert.deepEqual(pb.seqs(), [1, 2]);
  void a;
  sw.close();
});

// randomized, with fast-check: a failing sequence of operations shrinks to a minimal one and
// replays from the printed seed and path (property.ts)
const P = 6;
type SwOp =
  | { k: 'send'; s: number; d: number; len: number; flush: boolean }
  | { k: 'post'; p: number; n: number }
  | { k: 'toggle'; p: number }
  | { k: 'tick'; ms: number };
const swOp: fc.Arbitrary<SwOp> = fc.oneof(
  // d = P: broadcast
  { weight: 80, arbitrary: fc.record({ k: fc.constant('send' as const), s: fc.nat(P - 1), d: fc.nat(P), len: fc.integer({ min: 30, max: 3029 }), flush: fc.boolean() }) },
  { weight: 15, arbitrary: fc.record({ k: fc.constant('post' as const), p: fc.nat(P - 1), n: fc.nat(19) }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('toggle' as const), p: fc.nat(P - 1) }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('tick' as const), ms: fc.nat(199) }) },
);

test('random model (fast-check): many ports, bursts, stalls, learning — no duplicate, no reorder, no leak, every copy delivered or counted', (t) => {
  const reach = { stored: 0, resolved: 0, dropped: 0 };
  checkProperty(
    t,
    fc.property(fc.array(swOp, { minLength: 1, maxLength: 1500, size: 'max' }), (ops) => {
      const { sw, clock } = make({ poolBytes: 300 * 2048, defaultShareLimit: 120, holdTimeMs: 5000, unknownPolicy: 'drop' });
      const ports: TestPort[] = [];
      const idx: number[] = [];
      for (let i = 0; i < P; i++) {
        ports.push(new TestPort(`p${i}`, { buffers: 5, bufSize: 2048, mergeable: true }));
        idx.push(sw.attach(ports[i]));
      }
      const nextSeq = new Map<string, number>(); // per (src,dst)
      let sent = 0;
      let bcast = 0;
      for (const op of ops) {
        if (op.k === 'send') {
          let d = op.d;
          if (d === op.s) d = (d + 1) % P;
          const dst = d === P ? BCAST : mac(d + 1);
          const k = `${op.s}>${d}`;
          const seq = nextSeq.get(k) ?? 0;
          nextSeq.set(k, seq + 1);
          input(sw, idx[op.s], frame(dst, mac(op.s + 1), (d << 24) | seq, op.len));
          sent++;
          if (d === P) bcast++;
          if (op.flush) sw.flush();
        } else if (op.k === 'post') {
          ports[op.p].post(op.n);
          sw.resourcesAvailable(idx[op.p]);
        } else if (op.k === 'toggle') {
          ports[op.p].started = !ports[op.p].started;
          if (ports[op.p].started) sw.resourcesAvailable(idx[op.p]);
        } else {
          clock.advance(op.ms);
          sw.tick();
        }
        sw.checkInvariants();
      }
      sw.flush();
      for (const p of ports) {
        p.started = true;
        p.post(1e6);
      }
      clock.advance(1e6); // expire what is still unresolved
      sw.tick();
      sw.checkInvariants();
      // per (source, destination): strictly increasing sequence numbers, no duplicates
      let received = 0;
      for (let d = 0; d < P; d++) {
        const last = new Map<string, number>();
        for (const f of ports[d].received) {
          received++;
          const src = Array.from(f.subarray(18, 24), (x) => x.toString(16).padStart(2, '0')).join(':');
          const v = seqOf(f);
          const key = `${src}/${v >>> 24}`;
          const seq = v & 0xffffff;
          const prev = last.get(key) ?? -1;
          assert.ok(seq > prev, `port ${d}: from ${key} seq ${seq} after ${prev}`);
          last.set(key, seq);
          assert.ok(patternOk(f));
        }
      }
      const s = sw.stats();
      assert.equal(s.pool.blocksInUse, 0, 'nothing left queued');
      assert.equal(s.pool.blocksTaken, s.pool.blocksReturned);
      // every frame copy is accounted for: delivered or dropped (broadcast = P-1 copies)
      assert.equal(s.total.fastFrames + s.total.drainedFrames + s.total.dropped, sent - bcast + bcast * (P - 1), 'every copy delivered or counted as dropped');
      assert.equal(received, s.total.fastFrames + s.total.drainedFrames);
      reach.stored += s.total.storedFrames;
      reach.resolved += s.total.resolvedFrames;
      reach.dropped += s.total.dropped;
      sw.close();
    }),
    { numRuns: 60 },
  );
  // the generator's reach: the store path, resolution and drops were all exercised
  t.diagnostic(`${reach.stored} frames stored, ${reach.resolved} resolved, ${reach.dropped} dropped`);
  if (!process.env.FC_PATH) {
    assert.ok(reach.stored > 1000, 'the store path was exercised');
    assert.ok(reach.resolved > 0, 'resolution was exercised');
    assert.ok(reach.dropped > 0, 'drops were exercised');
  }
});

test('live migration: a MAC that moves to another connection takes its held frames along, in order', () => {
  const { sw } = make({ holdTimeMs: 1e9 });
  const pa = new TestPort('a'), pOld = new TestPort('old', { buffers: 0 }), pNew = new TestPort('new', { buffers: 0 });
  const a = sw.attach(pa), old = sw.attach(pOld), nu = sw.attach(pNew);
  send(sw, a, frame(BCAST, A, 0)); // learn A (held for the two stalled ports)
  send(sw, old, frame(BCAST, B, 0)); // B lives on old
  for (let i = 1; i <= 5; i++) send(sw, a, frame(B, A, i)); // B's ring is stopped: held for old
  let s = sw.stats();
  assert.equal(s.ports[old].queuedFrames, 1 + 5, 'A’s broadcast and five frames for B wait on old');
  // the migrated guest announces itself on its new port (SEND_RARP / gratuitous ARP)
  send(sw, nu, frame(BCAST, B, 100));
  s = sw.stats();
  assert.equal(s.ports[old].queuedFrames, 2, 'only the broadcasts (A’s, and the announcement itself) stay with the old connection');
  assert.equal(s.ports[nu].followedFrames, 5);
  assert.equal(s.ports[nu].queuedFrames, 2 + 5, 'the two earlier broadcasts, then the five that followed');
  for (let i = 6; i <= 7; i++) send(sw, a, frame(B, A, i)); // new frames: behind them, same queue
  assert.equal(sw.stats().ports[nu].queuedFrames, 9);
  pNew.post(100);
  sw.resourcesAvailable(nu);
  sw.checkInvariants();
  assert.deepEqual(pNew.seqs(), [0, 0, ...range(1, 8)], 'everything for B arrives on the new port in order');
  assert.equal(pOld.received.length, 0);
  assert.equal(sw.stats().total.dropped, 0);
  // the old connection goes away (the source QEMU quits): only its two broadcasts are dropped
  sw.detach(old);
  assert.equal(sw.stats().total.drops.detached, 2);
  sw.checkInvariants();
  sw.close();
});

test('live migration back and forth: held frames follow the MAC each time; the new port’s own frames are not sent back', () => {
  const { sw } = make({ holdTimeMs: 1e9 });
  const pa = new TestPort('a'), p1 = new TestPort('p1', { buffers: 0 }), p2 = new TestPort('p2', { buffers: 0 });
  const a = sw.attach(pa), q1 = sw.attach(p1), q2 = sw.attach(p2);
  send(sw, q1, frame(BCAST, B, 0));
  for (let i = 1; i <= 3; i++) send(sw, a, frame(B, A, i));
  send(sw, q2, frame(BCAST, B, 10)); // to p2
  for (let i = 4; i <= 6; i++) send(sw, a, frame(B, A, i));
  send(sw, q1, frame(BCAST, B, 20)); // and back to p1 before p2 ever had buffers
  let s = sw.stats();
  assert.equal(s.ports[q1].followedFrames, 6);
  p1.post(100);
  sw.resourcesAvailable(q1);
  const seqs = p1.seqs().filter((x) => x >= 1 && x <= 6);
  assert.deepEqual(seqs, range(1, 7));
  s = sw.stats();
  assert.equal(s.ports[q2].queuedFrames, 2, 'p2 keeps only p1’s two broadcasts (seq 0, 20)');
  assert.equal(s.total.dropped, 0);
  sw.checkInvariants();
  sw.close();
});
