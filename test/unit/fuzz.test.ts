// A bounded, seeded run of the fuzz targets (test/fuzz/targets.ts) as part of npm test; the long run
// is `npm run fuzz -- --minutes N`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fuzzChains, fuzzMessages, fuzzPackedChains } from '../fuzz/targets';

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
