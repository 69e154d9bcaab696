// Loop benchmark with a real DPDK front-end: dpdk-testpmd with two net_virtio_user ports
// (queue_size=1024) forwarding in `mac` mode, port 0's frames addressed to port 1's MAC and the
// other way round, so every frame crosses the back-end, comes back on the other port, is forwarded
// again, and so on. Two back-ends in the same run, alternating cell by cell:
//   elastic-vhost   taskset -c 1 node dist/src/cli/main.js --socket S0,mac=M0 --socket S1,mac=M1
//                   (event mode; also with --poll-us N when the CLI has that option)
//   DPDK vhost      dpdk-testpmd on CPU 1 with --vdev net_vhost0,iface=S0,queues=1
//                   --vdev net_vhost1,iface=S1,queues=1 --forward-mode=io (its own --file-prefix)
// The front-end runs on CPU 0, the back-end on CPU 1 (2-core machine: nothing else should run).
// testpmd will not run on one lcore ("No cores defined for forwarding": it needs a main lcore and a
// forwarding one), so "-l 0" is `taskset -c 0` + `--lcores=0@0,1@0` (both lcores on CPU 0; the main
// one sleeps in the prompt) and DPDK's back-end `taskset -c 1` + `--lcores=0@1,1@1`. Both testpmds:
// --no-pci --no-telemetry --file-prefix=<unique> --total-num-mbufs=65536, driven with -i (see
// qemu-glue/testpmd.ts). Front-end application flags: --forward-mode=mac --eth-peer=0,M1
// --eth-peer=1,M0 --txpkts=N --burst=32 (1 for the latency loop) --rxd=1024 --txd=1024.
//
//   npm run bench:loop                        every cell (64, 512, 1518 B and the latency loop)
//   node dist/bench/loop-bench.js 64          one frame size (several: 64 1518; "lat" = latency)
//   BENCH_SECONDS=5 BENCH_WARMUP=2            measured window and warm-up per cell (s)
//   BENCH_POLL_US="0,50,200"                  elastic-vhost variants: 0 = event mode, N = --poll-us N
//                                             (default: 0, plus 200 if --help lists --poll-us)
//   BENCH_ROUNDS=3                            rounds of the whole alternation (default 3; the order of
//                                             the back-ends is reversed every other round); figures
//                                             are medians, ratios the median of the per-round ratios
//   BENCH_TX_FIRST=8                          bursts of 32 sent by `start tx_first N` (frames in flight)
//   BENCH_NO_HUGE=1                           --no-huge even when hugepages could be reserved
//   BENCH_BACKENDS="dpdk,ev"                  which back-ends
//   BENCH_PACKED=1                            packed virtqueues (virtio-user packed_vq=1) instead of
//                                             split; "0,1": both, each back-end with each layout
//                                             (ratios compare with DPDK on the same layout)
//   BENCH_QUEUES=4                            queue pairs per port (virtio-user queues=4,cq=1, testpmd
//                                             --rxq=4 --txq=4 on both sides; DPDK's back-end queues=4):
//                                             the one forwarding core of each side serves them all
//   BENCH_BUSY_PCT=10 BENCH_BUSY_RETRIES=2    a cell during which other processes used more than
//                                             10 % of a CPU (from /proc/stat) is measured again
//   BENCH_WORKERS="1,2"                       elastic-vhost with --workers 1 and 2 (2: both cores)
//   BENCH_ECHO=1                              mirror testpmd's and elastic-vhost's output
//
// Throughput: after `start tx_first N` and the warm-up, `show port stats all` at the start and the
// end of the window; Mpps = (sum over both front-end ports of the RX-packets difference) / window
// (the wall time between the two answers). Every frame the front-end receives was moved once by the
// back-end, so that count is also "frames the back-end moved". "min 1 s" is the lowest one-second
// rate seen in the window (a stall shows there). Latency: --burst=1 and `start tx_first 1`, i.e. two
// frames in flight (one per direction); lap = 2 / (frames per second) is the mean time one frame
// takes for one front-end→back-end→front-end trip plus testpmd's forwarding (Little's law).
// Back-end CPU: utime+stime of the back-end process (all threads) from /proc/PID/stat over the
// window, divided by the frames it moved. Lost: after the window, `stop`, then `fwd rxonly` for
// 0.5 s to take in what was still in flight; lost = all frames the front-end sent − all it received.
//
// Memory: 2 MiB hugepages (nr_hugepages raised so that 1024 are free, restored afterwards, also on
// error or SIGINT) with --in-memory --single-file-segments; --no-huge -m 1024 when that fails.

import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { TestPmd, testpmdMissing, vhostVdev, virtioUserVdev, type PmdPortStats, type TestPmdMemory } from '../qemu-glue/testpmd';
import { cli, spawnSwitch, cpuSeconds, cpuSplit, envNum, fmt, installCleanup, killEverything, machine, machineCpu, median, reserveHugepages, restoreHugepages, root, sleep, tmpDirs } from './bench-host';

const MAC = ['02:00:5e:10:00:01', '02:00:5e:10:00:02'];
const FE_CPU = 0;
const BE_CPU = 1;

const SECONDS = envNum('BENCH_SECONDS', 5);
const WARMUP = envNum('BENCH_WARMUP', 2);
const ROUNDS = Math.max(1, Math.floor(envNum('BENCH_ROUNDS', 3)));
const TX_FIRST = Math.max(1, Math.floor(envNum('BENCH_TX_FIRST', 8)));
const QUEUES = Math.max(1, Math.floor(envNum('BENCH_QUEUES', 1)));
const echo = process.env.BENCH_ECHO === '1';
/** a cell during which other processes used more than this % of a CPU is measured again … */
const BUSY_PCT = envNum('BENCH_BUSY_PCT', 10);
/** … up to this many times */
const BUSY_RETRIES = Math.floor(envNum('BENCH_BUSY_RETRIES', 2));

installCleanup('loop-bench');

// ------------------------------------------------------------------ back-ends

interface Backend {
  label: string;
  pid: number;
  stop(): Promise<string | null>; // null: clean; else a remark
  remarks(): string[];
}

interface BackendSpec {
  key: string;
  label: string;
  kind: 'dpdk' | 'ev';
  pollUs?: number;
  /** packed virtqueues (the front-end's packed_vq=1) */
  packed?: boolean;
  /** --workers N (N > 1: the back-end may use both cores, shared with the front-end's) */
  workers?: number;
}

async function startElasticVhost(dir: string, socks: string[], pollUs: number, workers = 1): Promise<Backend> {
  const statsFile = path.join(dir, 'ev-stats.json');
  const args = [
    '-c',
    workers > 1 ? `${FE_CPU},${BE_CPU}` : String(BE_CPU),
    process.execPath,
    // BENCH_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof": profile the back-end
    ...(process.env.BENCH_NODE_ARGS ? process.env.BENCH_NODE_ARGS.split(/\s+/).filter(Boolean) : []),
    cli,
    ...socks.flatMap((s, i) => ['--socket', `${s},mac=${MAC[i]},name=p${i}`]),
    '--stats-file',
    statsFile,
    '--stats-interval',
    '1000',
    ...(pollUs > 0 ? ['--poll-us', String(pollUs)] : []),
    ...(QUEUES > 8 ? ['--queues', String(QUEUES)] : []),
    ...(workers > 1 ? ['--workers', String(workers)] : []),
  ];
  const log: string[] = [];
  const p = spawnSwitch(args, (r) => log.push(r.msg), echo);
  const end = Date.now() + 15_000;
  while (!socks.every((s) => log.some((l) => l.endsWith(`listening on ${s}`)))) {
    if (p.exited()) throw new Error(`elastic-vhost exited ${p.exited()}:\n${log.slice(-20).join('\n')}`);
    if (Date.now() > end) throw new Error(`elastic-vhost not listening after 15 s:\n${log.slice(-20).join('\n')}`);
    await sleep(20);
  }
  const readStats = (): any => {
    try {
      return JSON.parse(fs.readFileSync(statsFile, 'utf8'));
    } catch {
      return null;
    }
  };
  return {
    label: (pollUs > 0 ? `elastic-vhost --poll-us ${pollUs}` : 'elastic-vhost (event mode)') + (workers > 1 ? ` --workers ${workers}` : ''),
    pid: p.pid,
    stop: () => p.stop(() => log.slice(-10).join('\n')),
    remarks() {
      const st = readStats();
      if (!st) return ['no stats file'];
      const out: string[] = [];
      const t = st.engine.total;
      if (t.dropped) out.push(`switch drops ${JSON.stringify(t.drops)}`);
      if (t.storedFrames) out.push(`${t.storedFrames} frames through the elastic FIFO`);
      if (t.holdFlooded) out.push(`${t.holdFlooded} flooded`);
      for (const v of st.vhostUser) {
        if (QUEUES > 1 && v.queues) out.push(`${v.name} frames per RX queue ${v.queues.rx.join('/')}`);
        const c = v.counters;
        for (const k of ['txDropped', 'rxTooBig', 'rxOffloadDropped', 'brokenRings'])
          if (c[k]) out.push(`${v.name} ${k}=${c[k]}`);
      }
      const errs = log.filter((l) => /error|exception|broken/i.test(l));
      if (errs.length) out.push(`log: ${errs.slice(0, 3).join(' | ')}`);
      return out;
    },
  };
}

async function startDpdkVhost(socks: string[], memory: TestPmdMemory): Promise<Backend> {
  const be = new TestPmd({
    name: 'be',
    cpu: BE_CPU,
    memory,
    vdevs: socks.map((s, i) => vhostVdev(i, s, QUEUES)),
    appArgs: ['--forward-mode=io', '--burst=32', `--rxq=${QUEUES}`, `--txq=${QUEUES}`],
    totalMbufs: 65536,
    echo,
  });
  await be.start();
  await be.cmd('start');
  return {
    label: 'DPDK vhost PMD (testpmd io)',
    pid: be.pid!,
    async stop() {
      if (!be.running) return `exited early; last output:\n${be.tail(10)}`;
      const e = await be.quit();
      return e.code === 0 ? null : `exit ${JSON.stringify(e)}; last output:\n${be.tail(10)}`;
    },
    remarks() {
      const m = /Forward statistics for port 0[\s\S]*?TX-dropped: (\d+)[\s\S]*?Forward statistics for port 1[\s\S]*?TX-dropped: (\d+)/.exec(be.output);
      return m && (Number(m[1]) || Number(m[2])) ? [`DPDK back-end TX-dropped ${m[1]}/${m[2]}`] : [];
    },
  };
}

// ------------------------------------------------------------------ one cell

interface Cell {
  test: string; // "64" | "512" | "1518" | "lat"
  backend: string;
  mpps: number;
  minMpps: number;
  testpmdPps: number; // testpmd's own Rx-pps at the end of the window (cross-check)
  cpuPct: number;
  /** the kernel's part of cpuPct (stime) */
  sysPct: number;
  nsPerFrame: number;
  /** front-end testpmd's CPU (both lcores share one CPU: ~100 %) */
  feCpuPct: number;
  /** CPU used by everything else on the machine during the window, % of one CPU (and stolen by the hypervisor) */
  otherPct: number;
  stealPct: number;
  lost: number;
  remarks: string[];
}

const sum = (st: PmdPortStats[], k: 'rxPackets' | 'txPackets' | 'rxPps'): number => st.reduce((a, p) => a + p[k], 0);

async function runCell(test: string, spec: BackendSpec, memory: TestPmdMemory): Promise<Cell> {
  const lat = test === 'lat';
  const size = lat ? 64 : Number(test);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-loop-'));
  tmpDirs.add(dir);
  const socks = [path.join(dir, 's0.sock'), path.join(dir, 's1.sock')];
  let be: Backend | null = null;
  let fe: TestPmd | null = null;
  const remarks: string[] = [];
  try {
    be = spec.kind === 'dpdk' ? await startDpdkVhost(socks, memory) : await startElasticVhost(dir, socks, spec.pollUs ?? 0, spec.workers ?? 1);
    fe = new TestPmd({
      name: 'fe',
      cpu: FE_CPU,
      memory,
      vdevs: socks.map((s, i) => virtioUserVdev(i, s, MAC[i]!, { queueSize: 1024, extra: { ...(spec.packed ? { packed_vq: 1 } : {}), ...(QUEUES > 1 ? { queues: QUEUES, cq: 1 } : {}) } })),
      appArgs: [
        '--forward-mode=mac',
        `--eth-peer=0,${MAC[1]}`,
        `--eth-peer=1,${MAC[0]}`,
        `--txpkts=${size}`,
        `--burst=${lat ? 1 : 32}`,
        '--rxd=1024',
        '--txd=1024',
        ...(QUEUES > 1 ? [`--rxq=${QUEUES}`, `--txq=${QUEUES}`] : []),
      ],
      totalMbufs: 65536,
      echo,
    });
    await fe.start();
    await fe.cmd(`start tx_first ${lat ? 1 : TX_FIRST}`);
    await sleep(WARMUP * 1000);
    let prev = await fe.portStats();
    let tPrev = performance.now();
    const first = prev;
    const t0 = tPrev;
    const [u0, s0] = cpuSplit(be.pid);
    const cpu0 = u0 + s0;
    const fe0 = cpuSeconds(fe.pid!);
    const m0 = machineCpu();
    let minRate = Infinity;
    let last = prev;
    const end = t0 + SECONDS * 1000;
    while (performance.now() < end - 1) {
      await sleep(Math.min(1000, end - performance.now()));
      const st = await fe.portStats();
      const t = performance.now();
      const [uNow, sNow] = cpuSplit(be.pid);
      const cpuNow = uNow + sNow;
      const feNow = cpuSeconds(fe.pid!);
      const mNow = machineCpu();
      if (t - tPrev > 500) minRate = Math.min(minRate, (sum(st, 'rxPackets') - sum(prev, 'rxPackets')) / ((t - tPrev) / 1000));
      prev = st;
      tPrev = t;
      last = st;
      if (t >= end - 1) {
        const frames = sum(last, 'rxPackets') - sum(first, 'rxPackets');
        const secs = (t - t0) / 1000;
        const cpu = cpuNow - cpu0;
        const feCpu = feNow - fe0;
        const other = mNow.busy - m0.busy - cpu - feCpu;
        // the frames still in flight: stop forwarding, take in what the back-end still delivers
        await fe.cmd('stop');
        await fe.cmd('set fwd rxonly');
        await fe.cmd('start');
        await sleep(500);
        await fe.cmd('stop');
        const fin = await fe.portStats();
        const lost = sum(fin, 'txPackets') - sum(fin, 'rxPackets');
        for (const p of fin) if (p.rxErrors || p.txErrors || p.rxMissed) remarks.push(`front-end port ${p.port}: rx-errors ${p.rxErrors} tx-errors ${p.txErrors} rx-missed ${p.rxMissed}`);
        return {
          test,
          backend: be.label + (spec.packed ? ', packed ring' : ''),
          mpps: frames / secs / 1e6,
          minMpps: (minRate === Infinity ? frames / secs : minRate) / 1e6,
          testpmdPps: sum(last, 'rxPps'),
          cpuPct: (cpu / secs) * 100,
          sysPct: ((sNow - s0) / secs) * 100,
          nsPerFrame: frames > 0 ? (cpu / frames) * 1e9 : Infinity,
          feCpuPct: (feCpu / secs) * 100,
          otherPct: Math.max(0, (other / secs) * 100),
          stealPct: ((mNow.steal - m0.steal) / secs) * 100,
          lost,
          remarks,
        };
      }
    }
    throw new Error('measurement window ended without a sample');
  } finally {
    if (fe) {
      const e = await fe.quit();
      if (e.code !== 0) remarks.push(`front-end testpmd exit ${JSON.stringify(e)}`);
    }
    if (be) {
      const r = await be.stop();
      if (r) remarks.push(`back-end: ${r}`);
      remarks.push(...be.remarks());
    }
    fs.rmSync(dir, { recursive: true, force: true });
    tmpDirs.delete(dir);
  }
}

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  const missing = testpmdMissing();
  if (missing) {
    console.error(`loop-bench: ${missing}`);
    process.exit(1);
  }
  if (!fs.existsSync(cli)) throw new Error(`${cli} is missing: npm run build`);
  const help = spawnSync(process.execPath, [cli, '--help'], { encoding: 'utf8' });
  const hasPollUs = /--poll-us\b/.test(help.stdout ?? '');

  const args = process.argv.slice(2);
  const tests = args.length ? args.map((a) => (/^lat/.test(a) ? 'lat' : String(Number(a)))) : ['64', '512', '1518', 'lat'];
  for (const t of tests) if (t !== 'lat' && !(Number(t) >= 60 && Number(t) <= 1518)) throw new Error(`frame size "${t}": give 60..1518 or "lat"`);

  let polls: number[];
  if (process.env.BENCH_POLL_US) {
    polls = process.env.BENCH_POLL_US.split(',').map((s) => Number(s.trim()));
    if (polls.some((n) => !Number.isInteger(n) || n < 0)) throw new Error(`BENCH_POLL_US="${process.env.BENCH_POLL_US}": whole numbers, comma separated`);
  } else {
    polls = hasPollUs ? [0, 200] : [0];
  }
  const notes: string[] = [];
  if (!hasPollUs && polls.some((n) => n > 0)) {
    notes.push(`--poll-us is not in \`${path.relative(root, cli)} --help\`: only event mode measured (asked for BENCH_POLL_US=${process.env.BENCH_POLL_US})`);
    polls = polls.filter((n) => n === 0);
    if (polls.length === 0) polls = [0];
  } else if (!hasPollUs) {
    notes.push('--poll-us is not in the CLI yet: elastic-vhost measured in event mode only');
  }
  const which = (process.env.BENCH_BACKENDS ?? 'dpdk,ev').split(',').map((s) => s.trim());
  // BENCH_WORKERS="1,2": elastic-vhost with --workers 1 and 2 (N > 1 runs on both cores: the
  // front-end's core is shared with the back-end's second thread)
  const workerCounts = (process.env.BENCH_WORKERS ?? '1').split(',').map((s) => Number(s.trim()));
  if (workerCounts.some((n) => !Number.isInteger(n) || n < 1)) throw new Error(`BENCH_WORKERS="${process.env.BENCH_WORKERS}": whole numbers >= 1, comma separated`);
  const layouts = (process.env.BENCH_PACKED ?? '0').split(',').map((s) => s.trim());
  if (layouts.some((l) => l !== '0' && l !== '1')) throw new Error(`BENCH_PACKED="${process.env.BENCH_PACKED}": 0 (split), 1 (packed) or 0,1`);
  const specs: BackendSpec[] = layouts.flatMap((l) => {
    const packed = l === '1';
    const k = packed ? '-packed' : '';
    const lb = packed ? ' packed' : '';
    return [
      ...(which.includes('dpdk') ? [{ key: `dpdk${k}`, label: `DPDK vhost${lb}`, kind: 'dpdk' as const, packed }] : []),
      ...(which.includes('ev')
        ? polls.flatMap((n) =>
            workerCounts.map((w) => ({ key: `ev${n}${k}${w > 1 ? `-w${w}` : ''}`, label: (n ? `elastic-vhost poll ${n}` : 'elastic-vhost') + lb + (w > 1 ? ` workers ${w}` : ''), kind: 'ev' as const, pollUs: n, packed, workers: w })),
          )
        : []),
    ];
  });
  if (specs.length === 0) throw new Error('BENCH_BACKENDS selects no back-end (dpdk, ev)');

  console.log('## Loop benchmark: dpdk-testpmd virtio-user front-end ⇄ back-end ⇄ front-end\n');
  for (const l of machine()) console.log(l);
  const { memory, note } = reserveHugepages();
  console.log(`- memory: ${note}`);
  console.log(`- window ${SECONDS} s after ${WARMUP} s warm-up per cell, ${ROUNDS} round(s), throughput cells start with tx_first ${TX_FIRST} (${TX_FIRST * 32} frames in flight per direction)`);
  if (QUEUES > 1) console.log(`- ${QUEUES} queue pairs per port on both sides (BENCH_QUEUES=${QUEUES}), one forwarding core each`);
  for (const n of notes) console.log(`- note: ${n}`);
  console.log('');

  const results = new Map<string, Cell[]>(); // test|backend key → cells
  try {
    for (let round = 0; round < ROUNDS; round++) {
      for (const test of tests) {
        // alternate the back-ends; reverse the order every other round
        const order = round % 2 ? [...specs].reverse() : specs;
        for (const spec of order) {
          process.stderr.write(`loop-bench: round ${round + 1}/${ROUNDS} ${test === 'lat' ? 'latency' : `${test} B`} ${spec.label} … `);
          let c = await runCell(test, spec, memory);
          for (let retry = 1; c.otherPct + c.stealPct > BUSY_PCT && retry <= BUSY_RETRIES; retry++) {
            process.stderr.write(`other processes used ${fmt(c.otherPct, 0)}% CPU (+${fmt(c.stealPct, 0)}% stolen) during the window: again in 10 s … `);
            await sleep(10_000);
            c = await runCell(test, spec, memory);
          }
          if (c.otherPct + c.stealPct > BUSY_PCT) c.remarks.push(`measured while other processes used ${fmt(c.otherPct, 0)}% of a CPU (+${fmt(c.stealPct, 0)}% stolen)`);
          process.stderr.write(
            `${fmt(c.mpps, 3)} Mpps, back-end ${fmt(c.cpuPct, 0)}% CPU (sys ${fmt(c.sysPct, 0)}%), ${fmt(c.nsPerFrame, 0)} ns/frame, front-end ${fmt(c.feCpuPct, 0)}%, other ${fmt(c.otherPct, 0)}%, lost ${c.lost}${c.remarks.length ? ` (${c.remarks.join('; ')})` : ''}\n`,
          );
          const k = `${test}|${spec.key}`;
          results.set(k, [...(results.get(k) ?? []), c]);
        }
      }
    }
  } finally {
    killEverything();
    restoreHugepages();
  }

  const agg = (test: string, key: string) => {
    const cs = results.get(`${test}|${key}`) ?? [];
    if (cs.length === 0) return null;
    return {
      label: cs[0]!.backend,
      mpps: median(cs.map((c) => c.mpps)),
      minMpps: Math.min(...cs.map((c) => c.minMpps)),
      cpuPct: median(cs.map((c) => c.cpuPct)),
      sysPct: median(cs.map((c) => c.sysPct)),
      ns: median(cs.map((c) => c.nsPerFrame)),
      lost: cs.reduce((a, c) => a + c.lost, 0),
      other: Math.max(...cs.map((c) => c.otherPct + c.stealPct)),
      remarks: [...new Set(cs.flatMap((c) => c.remarks))],
      all: cs.map((c) => c.mpps),
      cells: cs,
    };
  };
  /** median over the rounds of (this back-end / DPDK on the same ring layout) in the same round, cells measured next to each other */
  const ratio = (test: string, key: string, f: (c: Cell) => number): string => {
    const packed = specs.find((s) => s.key === key)?.packed === true;
    const dpdkKey = specs.find((s) => s.kind === 'dpdk' && (s.packed === true) === packed)?.key;
    if (!dpdkKey) return '–';
    if (key === dpdkKey) return '1';
    const a = results.get(`${test}|${key}`) ?? [];
    const b = results.get(`${test}|${dpdkKey}`) ?? [];
    const rs = a.map((c, i) => (b[i] ? f(c) / f(b[i]!) : NaN)).filter((x) => Number.isFinite(x));
    return rs.length ? fmt(median(rs), 3) : '–';
  };
  const remarks: string[] = [];

  const thr = tests.filter((t) => t !== 'lat');
  if (thr.length) {
    console.log('### Throughput (frames forwarded in a loop through the back-end)\n');
    console.log('| frame B | back-end | Mpps | min 1 s Mpps | Gbit/s | back-end CPU | back-end ns/frame | lost | Mpps vs DPDK | ns/frame vs DPDK | other CPU |');
    console.log('|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const t of thr) {
      for (const s of specs) {
        const a = agg(t, s.key);
        if (!a) continue;
        console.log(
          `| ${t} | ${a.label} | ${fmt(a.mpps, 3)} | ${fmt(a.minMpps, 3)} | ${fmt((a.mpps * Number(t) * 8) / 1000, 2)} | ${fmt(a.cpuPct, 0)}% (sys ${fmt(a.sysPct, 0)}%) | ${fmt(a.ns, 0)} | ${a.lost} | ${ratio(t, s.key, (c) => c.mpps)} | ${ratio(t, s.key, (c) => c.nsPerFrame)} | ${fmt(a.other, 0)}% |`,
        );
        if (ROUNDS > 1) remarks.push(`${t} B ${a.label}: rounds ${a.all.map((x) => fmt(x, 3)).join(', ')} Mpps`);
        for (const r of a.remarks) remarks.push(`${t} B ${a.label}: ${r}`);
      }
    }
    console.log('');
  }
  if (tests.includes('lat')) {
    console.log('### Latency loop (64 B, --burst=1, start tx_first 1: two frames in flight, one per direction)\n');
    console.log('| back-end | loop Mpps | lap µs (2 / rate) | back-end CPU | back-end ns/frame | lost | lap vs DPDK | other CPU |');
    console.log('|:---|---:|---:|---:|---:|---:|---:|---:|');
    for (const s of specs) {
      const a = agg('lat', s.key);
      if (!a) continue;
      const lap = 2 / a.mpps; // µs
      console.log(
        `| ${a.label} | ${fmt(a.mpps, 3)} | ${fmt(lap, 2)} | ${fmt(a.cpuPct, 0)}% (sys ${fmt(a.sysPct, 0)}%) | ${fmt(a.ns, 0)} | ${a.lost} | ${ratio('lat', s.key, (c) => 1 / c.mpps)} | ${fmt(a.other, 0)}% |`,
      );
      if (ROUNDS > 1) remarks.push(`latency ${a.label}: rounds ${a.all.map((x) => fmt(x, 3)).join(', ')} Mpps`);
      for (const r of a.remarks) remarks.push(`latency ${a.label}: ${r}`);
    }
    console.log('');
  }
  console.log(
    (ROUNDS > 1 ? `Figures: median of ${ROUNDS} rounds (min 1 s: lowest of all); ratios: median over the rounds of elastic-vhost / DPDK measured in the same round. ` : '') +
      'Mpps = frames received by the two front-end ports per second (RX-packets difference of `show port stats all` over the window) = frames the back-end moved. ' +
      'Back-end CPU = utime+stime of the back-end process over the window; ns/frame = that CPU time / frames moved. ' +
      'lost = frames the front-end sent and never got back (after a 0.5 s rxonly drain). Gbit/s counts the frame bytes given to testpmd --txpkts (no FCS). ' +
      'other CPU = CPU time of everything but the two measured processes during the window (/proc/stat), in % of one CPU, stolen time included (worst round): anything above a few % means the figures are disturbed.',
  );
  if (remarks.length) {
    console.log('\nRemarks:');
    for (const r of remarks) console.log(`- ${r}`);
  }
}

main().catch((e) => {
  console.error(`loop-bench: ${(e as Error).stack ?? e}`);
  killEverything();
  restoreHugepages();
  process.exit(1);
});
