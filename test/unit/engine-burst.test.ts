// The burst pipeline (Switch.inputBurst: classify over the whole burst with last-source and
// last-destination caches, then runs of one RX queue through EnginePort.deliverBurst, the rest
// stored) must take the same decisions as the per-frame path (Switch.input per frame). A
// differential fast-check property: two switches with identical ports get the same traffic, one
// frame by frame, one burst by burst; every port must receive the same frames in the same order,
// and every counter (fast, stored, drained, flooded, dropped by reason) must match. The traffic
// mixes destinations (known, broadcast, unknown, the sender itself), source MACs that are new,
// repeated, moving between ports or a port's static MAC, frames too short to be frames, and
// receivers whose buffers run out mid-run and come back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Switch } from '../../src/engine/switch';
import { Burst, BURST, SHAPE_PLAIN } from '../../src/datapath/burst';
import { copies } from '../../src/datapath/copy-list';
import { Segments } from '../../src/virtio/chain';
import { ENGINE_HDR_LEN } from '../../src/datapath/layout';
import type { Frame } from '../../src/datapath/frame';
import { BCAST, FakeClock, TestPort, frame, mac } from './engine-helpers';
import { checkProperty } from './property';

/** A TestPort that also takes runs (deliverBurst: deliver() per entry, stopping at the first no). */
class BurstPort extends TestPort {
  runs = 0;
  deliverBurst(b: Burst, from: number, to: number, _lane: number): number {
    this.runs++;
    for (let i = from; i < to; i++) if (!this.deliver(b.point(i) as Frame)) return i - from;
    return to - from;
  }
}

const SENDERS = 3;
const MACS = [mac(1), mac(2), mac(3), mac(4), mac(5)];
const UNKNOWN = mac(0x77);

interface Step {
  kind: 'burst' | 'post';
  /** burst: the sender; post: the port given buffers */
  port: number;
  frames: { dst: number; src: number; len: number }[];
  buffers: number;
}

/** where the frames live: one registered area, each frame at a fixed slot */
const SLOT = 256;
const area = new Uint8Array(BURST * SLOT);
const areaId = copies.register(area);

function world(clock: FakeClock) {
  const sw = new Switch({ tickMs: 0, clock: clock.now, poolBytes: 64 * 2048, blockSize: 2048, defaultShareLimit: 40, holdTimeMs: 100 });
  const ports = Array.from({ length: SENDERS }, (_, i) => new BurstPort(`p${i}`, { buffers: 4 }));
  for (let i = 0; i < SENDERS; i++) sw.attach(ports[i], i === 2 ? { staticMac: MACS[2] } : {});
  return { sw, ports };
}

const frameArb = fc.record({
  // 0..4: a MAC of MACS, 5: broadcast, 6: unknown
  dst: fc.integer({ min: 0, max: 6 }),
  src: fc.integer({ min: 0, max: 4 }),
  // under 14: not a frame (the engine drops it, counted); else 22 bytes or more (the test ports read a sequence number)
  len: fc.oneof(fc.constant(64), fc.integer({ min: 22, max: 200 }), fc.integer({ min: 1, max: 13 })),
});
const stepArb: fc.Arbitrary<Step> = fc.oneof(
  fc.record({ kind: fc.constant('burst' as const), port: fc.integer({ min: 0, max: SENDERS - 1 }), frames: fc.array(frameArb, { minLength: 1, maxLength: 40 }), buffers: fc.constant(0) }),
  fc.record({ kind: fc.constant('post' as const), port: fc.integer({ min: 0, max: SENDERS - 1 }), frames: fc.constant([] as Step['frames']), buffers: fc.integer({ min: 0, max: 30 }) }),
);

test('inputBurst takes the decisions input() takes, frame for frame (differential property)', (t) => {
  let runs = 0;
  let fast = 0;
  let stored = 0;
  checkProperty(
    t,
    fc.property(fc.array(stepArb, { minLength: 1, maxLength: 30 }), (steps) => {
      const clockA = new FakeClock();
      const clockB = new FakeClock();
      const a = world(clockA);
      const b = world(clockB);
      const segs = new Segments(BURST);
      const burst = new Burst(segs);
      let seq = 0;
      try {
        for (const s of steps) {
          if (s.kind === 'post') {
            a.ports[s.port].post(s.buffers);
            b.ports[s.port].post(s.buffers);
            a.sw.resourcesAvailable(s.port);
            b.sw.resourcesAvailable(s.port);
          } else {
            // the burst's frames laid out in the area, described in the burst table
            segs.reset();
            burst.n = s.frames.length;
            s.frames.forEach((f, i) => {
              const dst = f.dst < 5 ? MACS[f.dst] : f.dst === 5 ? BCAST : UNKNOWN;
              const src = s.port === 2 && f.src !== 3 ? MACS[2] : MACS[f.src];
              const bytes = frame(dst, src, seq++, Math.max(22, f.len));
              const ethLen = f.len < 14 ? f.len : bytes.length - ENGINE_HDR_LEN;
              const off = i * SLOT;
              area.fill(0, off, off + SLOT);
              area.set(bytes.subarray(0, ENGINE_HDR_LEN + Math.min(ethLen, bytes.length - ENGINE_HDR_LEN)), off);
              segs.buf[i] = area;
              segs.area[i] = areaId;
              segs.off[i] = off + ENGINE_HDR_LEN;
              segs.len[i] = ethLen;
              segs.count = i + 1;
              burst.hdr.fill(0, i * ENGINE_HDR_LEN, (i + 1) * ENGINE_HDR_LEN);
              burst.len[i] = ENGINE_HDR_LEN + ethLen;
              burst.shape[i] = SHAPE_PLAIN;
              burst.segFirst[i] = i;
              burst.segEnd[i] = i + 1;
              burst.segSkip[i] = 0;
              burst.eth[i] = area;
              burst.ethOff[i] = off + ENGINE_HDR_LEN;
              burst.ethPeek[i] = ethLen;
            });
            burst.txQueue = -1;
            for (let i = 0; i < burst.n; i++) a.sw.input(s.port, burst.point(i));
            a.sw.flush();
            b.sw.inputBurst(s.port, burst);
            b.sw.flush();
          }
          clockA.advance(30);
          clockB.advance(30);
          a.sw.tick();
          b.sw.tick();
          a.sw.checkInvariants();
          b.sw.checkInvariants();
          for (let p = 0; p < SENDERS; p++) {
            assert.deepEqual(b.ports[p].seqs(), a.ports[p].seqs(), `port p${p} received the same frames in the same order`);
          }
          const ta = a.sw.stats().total;
          const tb = b.sw.stats().total;
          assert.deepEqual(tb, ta, 'the same counters');
        }
        for (const p of b.ports) runs += p.runs;
        const tot = b.sw.stats().total;
        fast += tot.fastFrames;
        stored += tot.storedFrames;
      } finally {
        a.sw.close();
        b.sw.close();
      }
    }),
    { numRuns: 150 },
  );
  // what the property reached, over all its cases: runs through deliverBurst, fast and stored frames
  t.diagnostic(`deliverBurst runs ${runs}, fast ${fast}, stored ${stored}`);
  assert.ok(runs > 100 && fast > 500 && stored > 100, `reach: ${runs} runs, ${fast} fast, ${stored} stored`);
});
