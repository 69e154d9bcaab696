// npm run fuzz -- --minutes N [--seed S]: the fuzz targets in turn until the time is up; prints
// cases run per target. A failure prints its seed (re-run with --seed to reproduce) and exits 1.
import { fuzzChainsStats, fuzzMessages, fuzzPackedChainsStats } from './targets';
import { fuzzOffload, offloadStats } from './offload';
import { flowHashStats, fuzzFlowHash } from './flowhash';

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const at = (k: string, d: number) => {
    const i = args.indexOf(k);
    return i >= 0 ? Number(args[i + 1]) : d;
  };
  const minutes = at('--minutes', 1);
  let seed = at('--seed', Date.now() % 1_000_000);
  const until = Date.now() + minutes * 60_000;
  let chains = 0;
  let messages = 0;
  let offload = 0;
  let hashes = 0;
  console.log(`fuzz: ${minutes} min from seed ${seed}`);
  while (Date.now() < until) {
    try {
      chains += fuzzChainsStats(seed, 200).cases;
      chains += fuzzPackedChainsStats(seed, 200).cases;
            messages += await fuzzMessages(seed, 10);
      offload += fuzzOffload(seed, 200);
      hashes += fuzzFlowHash(seed, 500);
    } catch (e) {
      console.error(`fuzz: FAILED at seed ${seed}: ${(e as Error).message}`);
      process.exit(1);
    }
    seed++;
  }
  const o = offloadStats;
  console.log(`fuzz: ${chains} ring cases, ${messages} messages, ${offload} offload cases, ${hashes} flow-hash cases, no failure (last seed ${seed - 1})`);
  console.log(
    `fuzz: offload: ${o.segmented} frames segmented (${o.segments} segments), ${o.checksummed} checksums completed, ${o.dropped} dropped (counted), ` +
      `${o.refused} with a refused buffer, ${o.sinkFailed} without buffers, ${o.plain} taken as they are, ${o.senderRefused} refused by the sender's checks; ` +
      `slowest case ${o.maxCaseMs.toFixed(1)} ms`,
  );
  console.log(`fuzz: flow hash: ${flowHashStats.tupleChecked} with the tuple checked, ${flowHashStats.tupleBeyondPeek} with it beyond the peek`);
}

void main();
