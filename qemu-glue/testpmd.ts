/**
 * Run DPDK's dpdk-testpmd as a child process (e2e tests, bench/loop-bench): as a virtio-user
 * front-end of elastic-vhost (`net_virtio_user` vdevs on its sockets) or as DPDK's own vhost-user
 * back-end (`net_vhost` vdevs), driven through its interactive prompt (`-i`).
 *
 *   const pmd = new TestPmd({ name: 'fe', vdevs: [virtioUserVdev(0, sock0, MAC0)], appArgs: ['--forward-mode=mac'] });
 *   await pmd.start();                          // resolves at the first "testpmd> " prompt
 *   await pmd.cmd('start tx_first');
 *   const st = await pmd.portStats();           // parsed "show port stats all"
 *   await pmd.quit();                           // "quit", SIGKILL as fallback
 *
 * EAL flags for DPDK 22.11 as used here:
 *  - testpmd needs a main lcore plus at least one forwarding lcore ("No cores defined for
 *    forwarding" otherwise), so "one core" is `--lcores 0@C,1@C`: both lcores on CPU C. The main
 *    lcore blocks in the prompt's read(); only the forwarding lcore spins.
 *  - `--no-huge` implies legacy memory, which EAL refuses with `--in-memory` ("Option --legacy-mem
 *    is not compatible with --in-memory"), so the no-hugepage set is
 *    `--no-huge -m MB --no-shconf --single-file-segments` (EAL backs --no-huge memory with one
 *    memfd, which virtio-user passes to the back-end; --no-shconf: no shared config files, no
 *    multi-process socket). The hugepage set is `--in-memory --single-file-segments` (memfd with
 *    MFD_HUGETLB, no hugetlbfs mount needed).
 *  - always a unique `--file-prefix`; the runtime directory EAL still creates
 *    (/var/run/dpdk/PREFIX, or $XDG_RUNTIME_DIR/dpdk/PREFIX when not root) is removed on exit.
 *  - testpmd sizes its mbuf pool for the largest possible rings (155456 mbufs, 338 MB), which does
 *    not fit 512 MB of --no-huge memory: `--total-num-mbufs` is always passed (default 32768).
 *  - stdout is a pipe, so testpmd is run under `stdbuf -o0` (its printf output would otherwise sit
 *    in a 4 KiB buffer, after the prompt).
 *
 * Every testpmd started here is SIGKILLed by pid on process exit / SIGINT / SIGTERM / SIGHUP, and
 * also started under `setpriv --pdeathsig SIGKILL` (when available) so it dies with the Node
 * process even on SIGKILL. setpriv, taskset and stdbuf all exec, so `pid` is testpmd's own.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cleanupOnExit } from './launcher';

// ------------------------------------------------------------------ process registry

const live = new Map<number, { proc: ChildProcess; runtimeDir: string }>();
let hooksInstalled = false;

/** SIGKILL every testpmd started by this module that is still running. Returns how many. */
export function killAllTestPmd(): number {
  let n = 0;
  for (const [pid, { runtimeDir }] of live) {
    try {
      process.kill(pid, 'SIGKILL');
      n++;
    } catch {
      /* already gone */
    }
    removeRuntimeDir(runtimeDir);
  }
  live.clear();
  return n;
}

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  cleanupOnExit(() => {
    killAllTestPmd();
  });
}

function removeRuntimeDir(dir: string): void {
  try {
    fs.rmSync(dir, { recursive: true, force: true });
  } catch {
    /* best effort */
  }
}

function which(cmd: string): string | null {
  for (const d of (process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(':')) {
    if (!d) continue;
    const p = path.join(d, cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return null;
}

/** Path of dpdk-testpmd ($DPDK_TESTPMD, else on PATH), or null when DPDK's testpmd is not installed. */
export function testpmdPath(): string | null {
  const env = process.env.DPDK_TESTPMD;
  if (env) return fs.existsSync(env) ? env : null;
  return which('dpdk-testpmd');
}

/** Why testpmd cannot be used here (null: it can). */
export function testpmdMissing(): string | null {
  const bin = testpmdPath();
  if (!bin) return 'dpdk-testpmd is not installed (Debian packages dpdk-dev, for the program, and dpdk, whose recommends bring the virtio and vhost PMDs)';
  if (!which('stdbuf')) return 'stdbuf (coreutils) is missing';
  return null;
}

// ------------------------------------------------------------------ vdev specs

export interface VirtioUserOptions {
  queueSize?: number;
  /** VIRTIO_NET_F_MRG_RXBUF offered by the front-end (testpmd's default: 1) */
  mrgRxbuf?: boolean;
  /** extra key=value devargs */
  extra?: Record<string, string | number>;
}

/** `net_virtio_userN,path=SOCK,mac=MAC,queue_size=Q[,mrg_rxbuf=0|1]` (front-end: connects to a back-end listening on SOCK). */
export function virtioUserVdev(n: number, socket: string, mac: string, o: VirtioUserOptions = {}): string {
  const kv: string[] = [`path=${socket}`, `mac=${mac}`, `queue_size=${o.queueSize ?? 256}`];
  if (o.mrgRxbuf !== undefined) kv.push(`mrg_rxbuf=${o.mrgRxbuf ? 1 : 0}`);
  for (const [k, v] of Object.entries(o.extra ?? {})) kv.push(`${k}=${v}`);
  return `net_virtio_user${n},${kv.join(',')}`;
}

/** `net_vhostN,iface=SOCK,queues=1` (DPDK's vhost-user back-end, listening on SOCK). */
export function vhostVdev(n: number, socket: string, queues = 1): string {
  return `net_vhost${n},iface=${socket},queues=${queues}`;
}

// ------------------------------------------------------------------ stats

export interface PmdPortStats {
  port: number;
  rxPackets: number;
  rxMissed: number;
  rxBytes: number;
  rxErrors: number;
  rxNombuf: number;
  txPackets: number;
  txErrors: number;
  txBytes: number;
  /** testpmd's "Throughput (since last show)" */
  rxPps: number;
  txPps: number;
}

/** Parses the output of `show port stats all` (or `show port stats N`). */
export function parsePortStats(text: string): PmdPortStats[] {
  const out: PmdPortStats[] = [];
  const blocks = text.split(/#+ NIC statistics for port /).slice(1);
  for (const b of blocks) {
    const num = (re: RegExp): number => {
      const m = re.exec(b);
      if (!m) throw new Error(`testpmd port stats: no ${re} in:\n${b}`);
      return Number(m[1]);
    };
    out.push({
      port: num(/^(\d+)/),
      rxPackets: num(/RX-packets:\s*(\d+)/),
      rxMissed: num(/RX-missed:\s*(\d+)/),
      rxBytes: num(/RX-bytes:\s*(\d+)/),
      rxErrors: num(/RX-errors:\s*(\d+)/),
      rxNombuf: num(/RX-nombuf:\s*(\d+)/),
      txPackets: num(/TX-packets:\s*(\d+)/),
      txErrors: num(/TX-errors:\s*(\d+)/),
      txBytes: num(/TX-bytes:\s*(\d+)/),
      rxPps: num(/Rx-pps:\s*(\d+)/),
      txPps: num(/Tx-pps:\s*(\d+)/),
    });
  }
  return out;
}

// ------------------------------------------------------------------ the process

export type TestPmdMemory =
  /** `--no-huge -m MB --no-shconf --single-file-segments` (no hugepages needed) */
  | { kind: 'no-huge'; mb?: number }
  /** `--in-memory --single-file-segments` on hugepages (reserve them first) */
  | { kind: 'hugepages'; mb?: number };

export interface TestPmdOptions {
  /** short name, used in the file prefix and log prefix */
  name: string;
  /** `--vdev` values */
  vdevs: string[];
  /** testpmd application arguments (after `--`); `-i` and --total-num-mbufs are added */
  appArgs?: string[];
  /** CPU the process runs on (taskset -c, and both lcores mapped onto it); default 0 */
  cpu?: number;
  memory?: TestPmdMemory;
  /** default 32768 */
  totalMbufs?: number;
  /** extra EAL arguments */
  ealArgs?: string[];
  /** mirror testpmd's output to stderr */
  echo?: boolean;
}

let seq = 0;
const PROMPT = 'testpmd> ';

export class TestPmd {
  readonly filePrefix: string;
  readonly runtimeDir: string;
  /** everything testpmd printed (stdout and stderr, \r removed) */
  output = '';
  /** stdout alone: prompts are looked for here (stderr lines can land in the middle of one) */
  stdout = '';
  private proc: ChildProcess | null = null;
  private exitPromise: Promise<{ code: number | null; signal: NodeJS.Signals | null }> = Promise.resolve({ code: null, signal: null });
  private exited: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  private waiters: (() => void)[] = [];
  private queue: Promise<unknown> = Promise.resolve();

  constructor(readonly o: TestPmdOptions) {
    this.filePrefix = `ev${process.pid}-${o.name}-${seq++}`.replace(/[^A-Za-z0-9_-]/g, '_');
    const base = process.getuid?.() === 0 || !process.env.XDG_RUNTIME_DIR ? '/var/run/dpdk' : path.join(process.env.XDG_RUNTIME_DIR, 'dpdk');
    this.runtimeDir = path.join(base, this.filePrefix);
  }

  /** The full command line (argv[0] included). */
  argv(): string[] {
    const bin = testpmdPath();
    if (!bin) throw new Error('dpdk-testpmd is not installed');
    const cpu = this.o.cpu ?? 0;
    const mem = this.o.memory ?? { kind: 'no-huge' };
    const memArgs =
      mem.kind === 'no-huge'
        ? ['--no-huge', '-m', String(mem.mb ?? 512), '--no-shconf', '--single-file-segments']
        : ['--in-memory', '--single-file-segments', ...(mem.mb ? ['-m', String(mem.mb)] : [])];
    const eal = [
      `--lcores=0@${cpu},1@${cpu}`,
      '--main-lcore=0',
      ...memArgs,
      '--no-pci',
      '--no-telemetry',
      `--file-prefix=${this.filePrefix}`,
      ...this.o.vdevs.flatMap((v) => ['--vdev', v]),
      ...(this.o.ealArgs ?? []),
    ];
    const app = ['-i', `--total-num-mbufs=${this.o.totalMbufs ?? 32768}`, ...(this.o.appArgs ?? [])];
    const wrap: string[] = [];
    const sp = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => fs.existsSync(p));
    if (sp) wrap.push(sp, '--pdeathsig', 'SIGKILL');
    if (which('taskset')) wrap.push('taskset', '-c', String(cpu));
    wrap.push('stdbuf', '-o0', '-e0');
    return [...wrap, bin, ...eal, '--', ...app];
  }

  get pid(): number | undefined {
    return this.proc?.pid;
  }

  get running(): boolean {
    return this.proc !== null && this.exited === null;
  }

  /** Starts testpmd and resolves at its first prompt (ports configured and started). */
  async start(timeoutMs = 30_000): Promise<void> {
    installHooks();
    removeRuntimeDir(this.runtimeDir);
    const argv = this.argv();
    if (this.o.echo) process.stderr.write(`[${this.o.name}] $ ${argv.join(' ')}\n`);
    const p = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
    this.proc = p;
    this.exited = null;
    if (p.pid !== undefined) live.set(p.pid, { proc: p, runtimeDir: this.runtimeDir });
    this.exitPromise = new Promise((resolve) => {
      p.on('exit', (code, signal) => {
        if (p.pid !== undefined) live.delete(p.pid);
        removeRuntimeDir(this.runtimeDir);
        this.exited = { code, signal };
        this.wake();
        resolve({ code, signal });
      });
      p.on('error', (e) => {
        this.output += `\n[spawn error] ${e.message}\n`;
        this.exited = { code: null, signal: null };
        this.wake();
        resolve({ code: null, signal: null });
      });
    });
    p.stdin!.on('error', () => {
      /* testpmd gone; exit handler reports it */
    });
    const onData = (isStdout: boolean) => (d: Buffer): void => {
      const s = d.toString('utf8').replace(/\r/g, '');
      this.output += s;
      if (isStdout) this.stdout += s;
      if (this.o.echo) process.stderr.write(s.replace(/^/gm, `[${this.o.name}] `));
      this.wake();
    };
    p.stdout!.on('data', onData(true));
    p.stderr!.on('data', onData(false));
    await this.waitOutput((out) => out.includes(PROMPT), 0, timeoutMs, 'the first prompt');
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Resolves once check(stdout since offset `from`) holds. */
  waitOutput(check: (out: string) => boolean, from: number, timeoutMs: number, what: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        done = true;
        reject(new Error(`${this.o.name}: testpmd printed no ${what} within ${timeoutMs} ms; last output:\n${this.tail()}`));
      }, timeoutMs);
      let done = false;
      const test = (): void => {
        if (done) return;
        const out = this.stdout.slice(from);
        if (check(out)) {
          done = true;
          clearTimeout(t);
          resolve(out);
          return;
        }
        if (this.exited) {
          done = true;
          clearTimeout(t);
          reject(new Error(`${this.o.name}: testpmd exited (${JSON.stringify(this.exited)}) before ${what}; last output:\n${this.tail()}`));
          return;
        }
        this.waiters.push(test);
      };
      test();
    });
  }

  tail(lines = 30): string {
    return this.output.split('\n').slice(-lines).join('\n');
  }

  /**
   * Sends one command line at the prompt; resolves with what it printed on stdout (its echo, then
   * its output, up to the next prompt). Commands are serialised.
   */
  cmd(line: string, timeoutMs = 15_000): Promise<string> {
    const run = async (): Promise<string> => {
      if (!this.running) throw new Error(`${this.o.name}: testpmd is not running (command "${line}")`);
      const from = this.stdout.length;
      this.proc!.stdin!.write(`${line}\n`);
      const out = await this.waitOutput((o) => o.includes(PROMPT), from, timeoutMs, `prompt after "${line}"`);
      return out.slice(0, out.lastIndexOf(PROMPT));
    };
    const r = this.queue.then(run, run);
    this.queue = r.catch(() => undefined);
    return r;
  }

  /** `show port stats all`, parsed (also resets testpmd's "since last show" throughput). */
  async portStats(): Promise<PmdPortStats[]> {
    const out = await this.cmd('show port stats all');
    const st = parsePortStats(out);
    if (st.length === 0) throw new Error(`${this.o.name}: no port statistics in:\n${out}`);
    return st;
  }

  /** `quit` (stops forwarding, closes the ports, exits); SIGKILL after timeoutMs. */
  async quit(timeoutMs = 15_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (!this.running) return this.exitPromise;
    this.proc!.stdin!.write('quit\n');
    this.proc!.stdin!.end();
    const t = setTimeout(() => this.kill(), timeoutMs);
    const e = await this.exitPromise;
    clearTimeout(t);
    return e;
  }

  /** SIGKILL by pid (a crash, as far as the back-end can tell); resolves once it is gone. */
  kill(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.running && this.proc?.pid !== undefined) {
      try {
        process.kill(this.proc.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    return this.exitPromise;
  }

  exit(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.exitPromise;
  }
}

/** `dpdk-testpmd --help`-free probe: the DPDK version testpmd was built with (e.g. "DPDK 22.11.4"), or null. */
export function testpmdVersion(): string | null {
  const bin = testpmdPath();
  if (!bin) return null;
  const r = spawnSync('dpkg-query', ['-W', '-f', '${Version}', 'dpdk'], { encoding: 'utf8' });
  if (r.status === 0 && r.stdout.trim()) return `dpdk ${r.stdout.trim()} (Debian package)`;
  return bin;
}
