// A bounded, seeded run of the fuzz targets (test/fuzz/targets.ts) as part of npm test; the long run
// is `npm run fuzz -- --minutes N`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { addRingStats, emptyRingStats, fuzzChainsStats, fuzzMessagesStats, fuzzPackedChainsStats, judgeHandlerError, RingStats } from '../fuzz/targets';
import { Refusal } from '../../src/vhost-user/refusal';
import { REQUESTS } from '../../src/vhost-user/requests';
import { Req } from '../../src/vhost-user/message';
import { fuzzOffload, offloadStats } from '../fuzz/offload';
import { flowHashStats, fuzzFlowHash } from '../fuzz/flowhash';

function reach(t: { diagnostic: (s: string) => void }, what: string, st: RingStats, min: Omit<RingStats, 'cases'>): void {
  t.diagnostic(`${st.cases} ${what} cases: ${st.chains} chains popped (${st.segments} segments, ${st.multi} of several descriptors, ${st.indirect} through an indirect table, ${st.spanning} buffers across two regions), ${st.refused} refused`);
  // every path was taken: a generator that lost its reach would pass vacuously
  for (const k of Object.keys(min) as (keyof typeof min)[]) assert.ok(st[k] >= min[k], `${what}: ${st[k]} ${k}, at least ${min[k]} expected`);
}

test('fuzz: 3000 random split rings over two mapped regions: every popped chain equals the descriptor table\'s (buffers, segments, bytes), every refused one is invalid', (t) => {
  let st = emptyRingStats();
  for (let seed = 1; seed <= 15; seed++) st = addRingStats(st, fuzzChainsStats(seed * 7919, 200));
  assert.equal(st.cases, 3000);
  reach(t, 'split ring', st, { chains: 12000, segments: 20000, multi: 4000, indirect: 1500, spanning: 500, refused: 700 });
});

test('fuzz: 3000 random packed rings over two mapped regions: every popped chain equals the descriptor table\'s (id, buffers, segments, bytes, position after it), unpop and re-take agree', (t) => {
  let st = emptyRingStats();
  for (let seed = 1; seed <= 15; seed++) st = addRingStats(st, fuzzPackedChainsStats(seed * 6151, 200));
  assert.equal(st.cases, 3000);
  reach(t, 'packed ring', st, { chains: 8000, segments: 12000, multi: 1800, indirect: 600, spanning: 250, refused: 800 });
});

test('fuzz: random vhost-user message sequences with fds: nothing escapes, no fd leaks, every close a logged check, never a TypeError or internal error', async (t) => {
  const total = { sent: 0, sequences: 0, closedByBackEnd: 0, refusedOpen: 0, ringsSetUp: 0 };
  for (let seed = 1; seed <= 10; seed++) {
    const s = await fuzzMessagesStats(seed * 104729, 60);
    for (const k of Object.keys(total) as (keyof typeof total)[]) total[k] += s[k];
  }
  t.diagnostic(`${total.sent} messages in ${total.sequences} sequences: ${total.closedByBackEnd} closed by the back-end, ${total.refusedOpen} refusals answered on an open connection, ${total.ringsSetUp} sessions with a ring set up`);
  assert.equal(total.sequences, 600);
  // every path was taken: a generator that lost its reach would pass vacuously
  assert.ok(total.sent > 1000, `${total.sent} messages`);
  assert.ok(total.closedByBackEnd > 100, `${total.closedByBackEnd} closes`);
  assert.ok(total.refusedOpen > 50, `${total.refusedOpen} refusals without a close`);
});

test('fuzz: the message target fails when a handler throws a TypeError (the judge, and the hook into the dispatcher)', async () => {
  assert.equal(judgeHandlerError(new Error('payload of 3 bytes')), null);
  assert.equal(judgeHandlerError(new Refusal('refused')), null);
  assert.equal(judgeHandlerError(new RangeError('64-bit value 0x200000ffffffff is beyond 2^53')), null);
  assert.match(judgeHandlerError(new TypeError("Cannot read properties of undefined (reading 'fd')")) ?? '', /^TypeError from a handler/);
  assert.match(judgeHandlerError(new RangeError('Offset is outside the bounds of the DataView')) ?? '', /^RangeError/);
  // a handler that breaks: the same sequences must now fail
  const e = REQUESTS.get(Req.SET_VRING_NUM)!;
  const run = e.run;
  (e as { run: typeof run }).run = () => {
    throw new TypeError("Cannot read properties of undefined (reading 'num')");
  };
  try {
    await assert.rejects(fuzzMessagesStats(104729, 60), /TypeError from a handler/);
  } finally {
    (e as { run: typeof run }).run = run;
  }
});

test('fuzz: 4000 offload cases (virtio-net headers over mutated Ethernet/VLAN/IPv4/IPv6/TCP/UDP frames in several segments) through the fallback into bounded buffers: no exception, every copy inside its buffer, drops counted, segments and checksums verify independently', (t) => {
  const before = { ...offloadStats };
  let n = 0;
  for (let seed = 1; seed <= 20; seed++) n += fuzzOffload(seed * 4099, 200);
  const d = (k: keyof typeof offloadStats) => offloadStats[k] - before[k];
  t.diagnostic(`${n} cases: ${d('segmented')} segmented (${d('segments')} segments), ${d('checksummed')} checksummed, ${d('dropped')} dropped, ${d('refused')} refused buffers, ${d('sinkFailed')} without buffers, ${d('plain')} plain, ${d('senderRefused')} refused by the sender's checks`);
  assert.equal(n, 4000);
  // every path was taken: a generator that lost its reach would pass vacuously
  assert.ok(d('segmented') > 100 && d('segments') > 1000, 'super-frames segmented');
  assert.ok(d('checksummed') > 300, 'checksums completed');
  assert.ok(d('dropped') > 100 && d('refused') > 10 && d('sinkFailed') > 50, 'drops, refused buffers, short rings');
});

test('fuzz: 6000 flow hashes: an unsigned 32-bit value, deterministic, nothing read outside the peek, the 5-tuple and only it', (t) => {
  const before = { ...flowHashStats };
  let n = 0;
  for (let seed = 1; seed <= 12; seed++) n += fuzzFlowHash(seed * 7057, 500);
  const checked = flowHashStats.tupleChecked - before.tupleChecked;
  t.diagnostic(`${n} cases, ${checked} with the tuple checked`);
  assert.equal(n, 6000);
  assert.ok(checked > 3000, `${checked} frames with the tuple checked`);
});
