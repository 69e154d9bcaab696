// npm run fuzz -- --minutes N [--seed S]: the fuzz targets in turn until the time is up; prints
// cases run per target. A failure prints its seed (re-run with --seed to reproduce) and exits 1.
import { fuzzChains, fuzzMessages, fuzzPackedChains } from './targets';

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
  console.log(`fuzz: ${minutes} min from seed ${seed}`);
  while (Date.now() < until) {
    try {
      chains += fuzzChains(seed, 200);
      chains += fuzzPackedChains(seed, 200);
      messages += await fuzzMessages(seed, 10);
    } catch (e) {
      console.error(`fuzz: FAILED at seed ${seed}: ${(e as Error).message}`);
      process.exit(1);
    }
    seed++;
  }
  console.log(`fuzz: ${chains} ring cases, ${messages} messages, no failure (last seed ${seed - 1})`);
}

void main();
