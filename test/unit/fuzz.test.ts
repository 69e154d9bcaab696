// A bounded, seeded run of the fuzz targets (test/fuzz/targets.ts) as part of npm test; the long run
// is `npm run fuzz -- --minutes N`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fuzzChains, fuzzMessages, fuzzPackedChains } from '../fuzz/targets';
import { fuzzOffload, offloadStats } from '../fuzz/offload';
import { flowHashStats, fuzzFlowHash } from '../fuzz/flowhash';

test('fuzz: 3000 random rings over mapped memory: no exception, every segment inside the guest window', (t) => {
  let n = 0;
  for (let seed = 1; seed <= 15; seed++) n += fuzzChains(seed * 7919, 200);
  t.diagnostic(`${n} ring cases`);
  assert.equal(n, 3000);
});

test('fuzz: 3000 random packed rings over mapped memory: no exception, every segment inside the guest window, unpop and re-take agree', (t) => {
  let n = 0;
  for (let seed = 1; seed <= 15; seed++) n += fuzzPackedChains(seed * 6151, 200);
  t.diagnostic(`${n} packed ring cases`);
  assert.equal(n, 3000);
});

test('fuzz: random vhost-user message sequences with fds: nothing escapes, no fd leaks', async (t) => {
  let n = 0;
  for (let seed = 1; seed <= 10; seed++) n += await fuzzMessages(seed * 104729, 60);
  t.diagnostic(`${n} messages in 600 sequences`);
  assert.ok(n > 1000, `${n} messages`);
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
