// What the benchmarks that run real processes share (loop-bench, ports64-bench): the machine's
// facts for the report, environment numbers, 2 MiB hugepages reserved for the run and given back,
// CPU time from /proc, and one clean-up that SIGKILLs by pid every child and testpmd started and
// removes the work directories — on normal exit, on error and on SIGINT/SIGTERM/SIGHUP.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { killAllTestPmd, testpmdPath, type TestPmdMemory } from '../qemu-glue/testpmd';
import { parseLogLine, type LogRecord } from '../qemu-glue/switch-process';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
export const root = path.resolve(__dirname, '..', '..');
/** the built command, as users run it */
export const cli = path.join(root, 'dist', 'src', 'cli', 'main.js');

export function envNum(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name}="${v}" is not a number`);
  return n;
}

export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

export function fmt(x: number, digits = 2): string {
  return Number.isFinite(x) ? x.toFixed(digits) : '–';
}

// ------------------------------------------------------------------ clean-up

/** children to SIGKILL (by pid) at the end; a child that exits takes itself out */
export const children = new Set<ChildProcess>();
/** work directories removed at the end */
export const tmpDirs = new Set<string>();
const HUGEPAGES_FILE = '/proc/sys/vm/nr_hugepages';
let hugepagesRestore: number | null = null;
let benchName = 'bench';

export function restoreHugepages(): void {
  if (hugepagesRestore === null) return;
  const old = hugepagesRestore;
  hugepagesRestore = null;
  try {
    fs.writeFileSync(HUGEPAGES_FILE, `${old}\n`);
  } catch (e) {
    console.error(`${benchName}: could not restore ${HUGEPAGES_FILE} to ${old}: ${(e as Error).message}`);
  }
}

export function killEverything(): void {
  for (const c of children) {
    if (c.pid !== undefined && c.exitCode === null && c.signalCode === null) {
      try {
        process.kill(c.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
  children.clear();
  killAllTestPmd();
  for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
  tmpDirs.clear();
}

/** Everything started is stopped and the hugepages given back on exit and on SIGINT/SIGTERM/SIGHUP. */
export function installCleanup(name: string): void {
  benchName = name;
  process.on('exit', () => {
    killEverything();
    restoreHugepages();
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      console.error(`${name}: ${sig}: stopping everything`);
      killEverything();
      restoreHugepages();
      process.exit(130);
    });
  }
}

// ------------------------------------------------------------------ machine

export function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : '';
}

/** The report's machine lines: date, CPU, OS, Node, DPDK, commit. */
export function machine(): string[] {
  const lscpu = sh('lscpu', []);
  const field = (k: string): string => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(lscpu)?.[1]?.trim() ?? '?';
  const osRelease = (() => {
    try {
      return /^PRETTY_NAME="?([^"\n]*)"?/m.exec(fs.readFileSync('/etc/os-release', 'utf8'))?.[1] ?? '?';
    } catch {
      return '?';
    }
  })();
  const commit = sh('git', ['-C', root, 'rev-parse', '--short', 'HEAD']);
  const dirty = sh('git', ['-C', root, 'status', '--porcelain', '--', 'src', 'native']) ? ' (src/ or native/ modified)' : '';
  const dpdk = sh('dpkg-query', ['-W', '-f', '${Version}', 'dpdk']);
  return [
    `- date: ${new Date().toISOString()}`,
    `- CPU: ${field('Model name')} (family ${field('CPU family')} model ${field('Model')}), nproc ${sh('nproc', []) || os.cpus().length}, ${field('Hypervisor vendor') !== '?' ? `${field('Hypervisor vendor')} guest` : 'bare metal?'}`,
    `- OS: ${osRelease}, kernel ${os.release()}, ${Math.round(os.totalmem() / 2 ** 30)} GiB RAM`,
    `- Node ${process.version}; DPDK ${dpdk || '?'} (${testpmdPath()}); elastic-vhost ${commit || '?'}${dirty}`,
  ];
}

// ------------------------------------------------------------------ hugepages

export function meminfo(key: string): number {
  const m = new RegExp(`^${key}:\\s*(\\d+)`, 'm').exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) : 0;
}

/**
 * Raises nr_hugepages so that `want` 2 MiB pages are free (restored by restoreHugepages(), which
 * the clean-up runs); the testpmds then use `--in-memory --single-file-segments`. Falls back to
 * `--no-huge -m noHugeMb` (BENCH_NO_HUGE=1, no 2 MiB default size, or not enough pages), saying why.
 */
export function reserveHugepages(want = 1024, noHugeMb = 1024): { memory: TestPmdMemory; note: string } {
  const noHuge: TestPmdMemory = { kind: 'no-huge', mb: noHugeMb };
  const nh = `--no-huge -m ${noHugeMb}`;
  if (process.env.BENCH_NO_HUGE === '1') return { memory: noHuge, note: `${nh} (BENCH_NO_HUGE=1)` };
  if (meminfo('Hugepagesize') !== 2048) return { memory: noHuge, note: `${nh} (default hugepage size is ${meminfo('Hugepagesize')} kB, not 2 MiB)` };
  let old: number;
  try {
    old = Number(fs.readFileSync(HUGEPAGES_FILE, 'utf8').trim());
  } catch (e) {
    return { memory: noHuge, note: `${nh} (cannot read ${HUGEPAGES_FILE}: ${(e as Error).message})` };
  }
  const free = meminfo('HugePages_Free');
  if (free < want) {
    try {
      hugepagesRestore = old;
      fs.writeFileSync(HUGEPAGES_FILE, `${old + (want - free)}\n`);
    } catch (e) {
      restoreHugepages();
      return { memory: noHuge, note: `${nh} (cannot reserve hugepages: ${(e as Error).message})` };
    }
  }
  const got = meminfo('HugePages_Free');
  if (got < want / 2) {
    restoreHugepages();
    return { memory: noHuge, note: `${nh} (only ${got} free 2 MiB hugepages after asking for ${want})` };
  }
  return {
    memory: { kind: 'hugepages' },
    note: `--in-memory --single-file-segments on 2 MiB hugepages (${got} free; nr_hugepages ${old} → ${meminfo('HugePages_Total')}, restored to ${old} at the end)`,
  };
}

// ------------------------------------------------------------------ CPU time

/** clock ticks per second of /proc's times */
export const CLK_TCK = Number(sh('getconf', ['CLK_TCK'])) || 100;

/** CPU seconds the whole machine spent busy (user+nice+system+irq+softirq) and stolen, from /proc/stat. */
export function machineCpu(): { busy: number; steal: number } {
  const f = /^cpu\s+(.*)$/m.exec(fs.readFileSync('/proc/stat', 'utf8'))![1]!.split(/\s+/).map(Number);
  // user nice system idle iowait irq softirq steal
  return { busy: (f[0]! + f[1]! + f[2]! + f[5]! + f[6]!) / CLK_TCK, steal: (f[7] ?? 0) / CLK_TCK };
}

/** [utime, stime] of pid in seconds (all threads) */
export function cpuSplit(pid: number): [number, number] {
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  // after "pid (comm) ": state is field 3, utime field 14, stime field 15 (1-based in proc(5))
  return [Number(f[14 - 3]) / CLK_TCK, Number(f[15 - 3]) / CLK_TCK];
}

/** CPU seconds (utime+stime, all threads) of pid. */
export function cpuSeconds(pid: number): number {
  return cpuSplit(pid).reduce((a, b) => a + b, 0);
}

/** An elastic-vhost the benchmark started: its pid, whether it exited, and a clean stop. */
export interface SwitchChild {
  readonly pid: number;
  /** how it exited ({code, signal} as JSON), null while it runs */
  exited(): string | null;
  /** SIGTERM, SIGKILL after 10 s; null when it exited with code 0, else why not (tail: the last log lines) */
  stop(tail: () => string): Promise<string | null>;
}

/**
 * Spawns `taskset args…` (the switch under test), tracked for the clean-up, and hands each line of
 * its output, parsed as a log record, to onRecord (echoed to stderr with echo).
 */
export function spawnSwitch(args: string[], onRecord: (r: LogRecord, line: string) => void, echo = false): SwitchChild {
  const p = spawn('taskset', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(p);
  let exited: string | null = null;
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    p.on('exit', (code, signal) => {
      children.delete(p);
      exited = JSON.stringify({ code, signal });
      resolve({ code, signal });
    }),
  );
  let partial = '';
  const onData = (d: Buffer): void => {
    partial += d.toString();
    let i;
    while ((i = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, i);
      partial = partial.slice(i + 1);
      onRecord(parseLogLine(line), line);
      if (echo) process.stderr.write(`[ev] ${line}\n`);
    }
  };
  p.stdout!.on('data', onData);
  p.stderr!.on('data', onData);
  return {
    pid: p.pid!,
    exited: () => exited,
    async stop(tail) {
      if (exited) return `exited early ${exited}; last log:\n${tail()}`;
      p.kill('SIGTERM');
      const t = setTimeout(() => p.kill('SIGKILL'), 10_000);
      const e = await exit;
      clearTimeout(t);
      return e.code === 0 ? null : `exit ${JSON.stringify(e)} on SIGTERM; last log:\n${tail()}`;
    },
  };
}
