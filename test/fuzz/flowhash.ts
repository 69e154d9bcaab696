// Fuzz target for flowHash (src/datapath/flow-hash.ts), over the packets of packets.ts laid over
// several segments (offload-sink.ts's Placer: eth/ethPeek as a TX ring's frame has them).
// Properties: an unsigned 32-bit value, the same on every call, reading nothing outside
// eth[ethOff, +ethPeek); for an unmutated frame whose tuple lies in the peek, the same as for the
// frame contiguous, unmoved by a byte outside its tuple (MACs of IP frames, VLAN TCIs, TTL, ids,
// lengths, checksums, DF, the flow label, options, ports of a fragment, the payload), moved by one
// inside it (each mixing step is a bijection, so one changed word always shows).
import { Frame } from '../../src/datapath/frame';
import { flowHash } from '../../src/datapath/flow-hash';
import { MAX_ETH_LEN } from '../../src/datapath/layout';
import { Placer } from './offload-sink';
import { HDR, K_IP4, K_OTHER, K_TCP4, K_UDP4, PacketGen, SCTP, TCP, UDP, UDPLITE } from './packets';
import { Rng } from './targets';

export const flowHashStats = { cases: 0, tupleChecked: 0, tupleBeyondPeek: 0 };

type Fail = (why: string) => never;

/** Byte offsets flowHash's tuple reads and some it must not depend on, for an unmutated frame. */
function tupleOf(gen: PacketGen, rng: Rng): { end: number; care: number[]; free: [number, number][] } {
  const l3 = gen.l3;
  const care: number[] = [];
  const free: [number, number][] = [];
  const any = () => 1 + rng.below(255);
  for (let v = 0; v < gen.vlans; v++) free.push([14 + 4 * v, any()], [15 + 4 * v, any()]);
  const ports = gen.proto === TCP || gen.proto === UDP || gen.proto === SCTP || gen.proto === UDPLITE;
  let end: number;
  if (gen.kind === K_OTHER) {
    for (let i = 0; i < 12; i++) care.push(i);
    end = l3;
  } else if (gen.kind === K_TCP4 || gen.kind === K_UDP4 || gen.kind === K_IP4) {
    for (let i = 0; i < 12; i++) free.push([i, any()]);
    for (let i = 12; i < 20; i++) care.push(l3 + i);
    for (const i of [1, 2, 3, 4, 5, 8, 10, 11]) free.push([l3 + i, any()]);
    free.push([l3 + 6, rng.pick([0x40, 0x80, 0xc0])]); // DF and the reserved bit
    for (let i = l3 + 20; i < gen.l4; i++) free.push([i, any()]);
    if (ports && !gen.fragment) {
      for (let i = 0; i < 4; i++) care.push(gen.l4 + i);
      end = gen.l4 + 4;
    } else {
      end = l3 + 20;
    }
  } else {
    for (let i = 0; i < 12; i++) free.push([i, any()]);
    for (let i = 8; i < 40; i++) care.push(l3 + i);
    free.push([l3, 1 + rng.below(15)]); // traffic class, high nibble
    for (const i of [1, 2, 3, 4, 5, 7]) free.push([l3 + i, any()]);
    if (ports) {
      for (let i = 0; i < 4; i++) care.push(l3 + 40 + i);
      end = l3 + 44;
    } else {
      end = l3 + 40;
    }
  }
  for (let k = 0; k < 4; k++) free.push([end + rng.below(128), any()]);
  return { end, care, free };
}

/** flowHash cases; throws on the first violation. Returns the number of cases. */
export function fuzzFlowHash(seed: number, cases: number): number {
  const rng = new Rng(seed);
  const gen = new PacketGen(rng);
  const placer = new Placer(rng);
  const alt = new Uint8Array(HDR + MAX_ETH_LEN + 512);
  const view = new Frame(0);
  const st = flowHashStats;
  try {
    for (let c = 0; c < cases; c++) {
      const fail: Fail = (why) => {
        throw new Error(`flowhash: seed ${seed} case ${c}: ${why}`);
      };
      st.cases++;
      gen.next();
      const f = placer.place(gen.buf, gen.len);
      const h = flowHash(f);
      if (!Number.isInteger(h) || h < 0 || h > 0xffffffff) fail(`flowHash returned ${h}`);
      if (flowHash(f) !== h) fail('a second call gave another hash');
      // the same peek bytes elsewhere, with other bytes around them
      const peek = f.ethPeek;
      const a = 1 + rng.below(32);
      for (let i = 0; i < a; i++) alt[i] = rng.below(256);
      alt.set(f.eth.subarray(f.ethOff, f.ethOff + peek), a);
      for (let i = 0; i < 64; i++) alt[a + peek + i] = rng.below(256);
      view.eth = alt;
      view.ethOff = a;
      view.ethPeek = peek;
      view.len = f.len;
      if (flowHash(view) !== h) fail(`the hash depends on bytes outside eth[ethOff, +${peek})`);
      if (gen.mutated) continue;
      const t = tupleOf(gen, rng);
      if (t.end > peek) {
        st.tupleBeyondPeek++;
        continue;
      }
      st.tupleChecked++;
      view.eth = gen.buf;
      view.ethOff = HDR;
      view.ethPeek = gen.ethLen;
      if (flowHash(view) !== h) fail(`the frame contiguous hashes differently (tuple end ${t.end}, peek ${peek})`);
      view.eth = alt;
      view.ethOff = a;
      view.ethPeek = peek;
      const free = t.free.filter(([o]) => o < peek);
      if (free.length > 0) {
        const [o, x] = rng.pick(free);
        alt[a + o] ^= x;
        if (flowHash(view) !== h) fail(`byte ${o} (^0x${x.toString(16)}), not part of the flow (kind ${gen.kind}, vlans ${gen.vlans}), changed the hash`);
        alt[a + o] ^= x;
      }
      const k = rng.pick(t.care);
      alt[a + k] ^= 1 + rng.below(255);
      if (flowHash(view) === h) fail(`byte ${k} of the flow's tuple (kind ${gen.kind}, vlans ${gen.vlans}) did not change the hash`);
    }
  } finally {
    placer.close();
  }
  return cases;
}
