// Benchmark of the switch engine alone (no guests, no sockets): in-memory ports that copy each
// frame into a preallocated RX area, like a vhost-user port writing guest memory.
//
//   npm run bench                                  all cells
//   node dist/bench/engine-bench.js fast:64        one cell (for --cpu-prof / --trace-gc)
//
// Paths:
//   fast            A → B, B always has RX buffers: classify + deliver (one copy)
//   store+drain     B has no buffers while a burst of K frames arrives (stored: one copy into the
//                   local data store), then posts buffers and kicks: the monitor drains (second copy)
//   unknown→learned K frames to a MAC nobody has announced (held in the unresolved queue), then its
//                   owner sends one broadcast: learned, frames moved and drained
// Throughput counts Ethernet bytes (the 12-byte virtio-net header excluded).

import { PerformanceObserver } from 'node:perf_hooks';
import { setImmediate as yieldLoop } from 'node:timers/promises';
import { Switch } from '../src/engine/switch';
import { bytesFrame, RingPort, writeFrame } from './ring-port';

const MAC_A = [0x52, 0x54, 0, 0, 0, 1];
const MAC_B = [0x52, 0x54, 0, 0, 0, 2];
const MAC_C = [0x52, 0x54, 0, 0, 0, 3];
const BCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
const SIZES = [64, 1518, 65000];
const BATCH = 32;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 1.5);

interface Cell {
  size: number;
  path: string;
  frames: number;
  seconds: number;
  gcs: number;
}

/** run round() (which moves framesPerRound frames) for about SECONDS after a warm-up; count GCs */
async function measure(round: () => void, framesPerRound: number): Promise<{ frames: number; seconds: number; gcs: number }> {
  const warmEnd = performance.now() + 300;
  while (performance.now() < warmEnd) for (let i = 0; i < 16; i++) round();
  await yieldLoop();
  let gcs = 0;
  const obs = new PerformanceObserver((list) => {
    gcs += list.getEntries().length;
  });
  obs.observe({ entryTypes: ['gc'] });
  const check = Math.max(1, Math.floor(20000 / framesPerRound));
  let rounds = 0;
  const t0 = performance.now();
  const end = t0 + SECONDS * 1000;
  let t = t0;
  while (t < end) {
    for (let i = 0; i < check; i++) round();
    rounds += check;
    t = performance.now();
  }
  await yieldLoop();
  await yieldLoop();
  obs.disconnect();
  return { frames: rounds * framesPerRound, seconds: (t - t0) / 1000, gcs };
}

function ports(slotsB: number) {
  const big = 1 << 30; // "infinite" buffers for the source and bystander
  return {
    pa: new RingPort('a', big, 2048, 4 * 1024 * 1024),
    pb: new RingPort('b', slotsB, 2048, 4 * 1024 * 1024),
  };
}

async function fast(size: number): Promise<Cell> {
  const sw = new Switch({ poolBytes: 64 * 1024 * 1024 });
  const { pa, pb } = ports(1 << 16);
  const a = sw.attach(pa, { staticMac: '52:54:00:00:00:01' });
  sw.attach(pb, { staticMac: '52:54:00:00:00:02' });
  const buf = new Uint8Array(12 + size + 64);
  const len = writeFrame(buf, MAC_B, MAC_A, size);
  const fr = bytesFrame(buf, len);
  const round = () => {
    for (let i = 0; i < BATCH; i++) sw.input(a, fr);
    sw.flush();
    pb.refill(); // the guest consumed the batch and reposted its buffers
  };
  const r = await measure(round, BATCH);
  if (sw.stats().total.storedFrames !== 0) throw new Error('fast path stored frames');
  sw.close();
  return { size, path: 'fast', ...r };
}

async function storeAndDrain(size: number): Promise<Cell> {
  const blocksPer = Math.ceil((size + 12) / 2048);
  const burst = Math.min(256, Math.floor(16384 / blocksPer));
  const sw = new Switch({ poolBytes: 64 * 1024 * 1024, defaultShareLimit: 32768 });
  const { pa, pb } = ports(0);
  const a = sw.attach(pa, { staticMac: '52:54:00:00:00:01' });
  const b = sw.attach(pb, { staticMac: '52:54:00:00:00:02' });
  const buf = new Uint8Array(12 + size + 64);
  const len = writeFrame(buf, MAC_B, MAC_A, size);
  const fr = bytesFrame(buf, len);
  const round = () => {
    pb.free = 0; // no RX buffers: the whole burst goes to the elastic FIFO
    for (let i = 0; i < burst; i += BATCH) {
      for (let k = 0; k < BATCH; k++) sw.input(a, fr);
      sw.flush();
    }
    pb.free = burst * blocksPer; // the guest posts buffers and kicks
    sw.resourcesAvailable(b);
  };
  const r = await measure(round, Math.ceil(burst / BATCH) * BATCH);
  const s = sw.stats();
  if (s.total.fastFrames !== 0 || s.total.dropped !== 0 || s.pool.blocksInUse !== 0) throw new Error('store+drain did not store/drain everything');
  sw.close();
  return { size, path: 'store+drain', ...r };
}

async function unknownLearned(size: number): Promise<Cell> {
  const blocksPer = Math.ceil((size + 12) / 2048);
  const burst = Math.min(256, Math.floor(8192 / blocksPer));
  let now = 0;
  // MAC ageing forgets C between rounds; a fake clock (kept a small integer) makes that exact
  const sw = new Switch({ poolBytes: 64 * 1024 * 1024, unresolvedShareLimit: 32768, defaultShareLimit: 32768, macAgeMs: 1, holdTimeMs: 1e9, tickMs: 0, clock: () => now });
  const { pa, pb: pc } = ports(1 << 30);
  const a = sw.attach(pa, { staticMac: '52:54:00:00:00:01' });
  const c = sw.attach(pc);
  const buf = new Uint8Array(12 + size + 64);
  const len = writeFrame(buf, MAC_C, MAC_A, size);
  const fr = bytesFrame(buf, len);
  const hello = new Uint8Array(128);
  const helloLen = writeFrame(hello, BCAST, MAC_C, 64);
  const helloFr = bytesFrame(hello, helloLen);
  const round = () => {
    now += 2;
    for (let i = 0; i < burst; i += BATCH) {
      for (let k = 0; k < BATCH; k++) sw.input(a, fr);
      sw.flush();
    }
    sw.input(c, helloFr); // C announces itself: learned, held frames drained to it
    sw.flush();
  };
  const r = await measure(round, Math.ceil(burst / BATCH) * BATCH);
  const s = sw.stats();
  if (s.total.dropped !== 0 || s.pool.blocksInUse !== 0 || s.total.resolvedFrames === 0) throw new Error('unknown→learned did not resolve everything');
  sw.close();
  return { size, path: 'unknown→learned', ...r };
}

const PATHS: Record<string, (size: number) => Promise<Cell>> = {
  fast,
  'store+drain': storeAndDrain,
  store: storeAndDrain,
  'unknown→learned': unknownLearned,
  unknown: unknownLearned,
};

async function main(): Promise<void> {
  const only = process.argv[2];
  const cells: Cell[] = [];
  if (only) {
    const [path, size] = only.split(':');
    cells.push(await PATHS[path](Number(size)));
  } else {
    for (const path of ['fast', 'store+drain', 'unknown→learned']) for (const size of SIZES) cells.push(await PATHS[path](size));
  }
  const rows = cells.map((c) => {
    const fps = c.frames / c.seconds;
    return [
      String(c.size),
      c.path,
      (fps / 1e6).toFixed(2),
      ((fps * c.size * 8) / 1e9).toFixed(1),
      (1e9 / fps).toFixed(0),
      String(c.gcs),
    ];
  });
  const head = ['frame bytes', 'path', 'Mfps', 'Gbit/s', 'ns/frame', 'GCs'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => `| ${r.map((x, i) => (i < 2 ? x.padEnd(widths[i]) : x.padStart(widths[i]))).join(' | ')} |`;
  console.log(line(head));
  console.log(`|${widths.map((w, i) => (i < 2 ? ':' : '-') + '-'.repeat(w) + (i < 2 ? '-' : ':')).join('|')}|`);
  for (const r of rows) console.log(line(r));
  console.log(`\nnode ${process.version}, ${SECONDS}s per cell after 0.3s warm-up; GCs = collections during the measured interval`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
