/**
 * Start and drive test guests (QEMU processes) for elastic-vhost.
 *
 *   const vm = await GuestVM.start({ name: 'a', params: { ip: '10.0.0.1/24' }, nics: [...] });
 *   await vm.waitReady();                       // EV-READY on the console + agent handshake
 *   const r = await vm.exec('ping -c 3 10.0.0.2', { timeoutMs: 20_000 });
 *   await vm.shutdown();                        // QMP quit, SIGKILL as fallback
 *
 * Every QEMU started here is registered and SIGKILLed by pid from
 * `killAll()`, which also runs on process exit / SIGINT / SIGTERM / SIGHUP.
 * QEMU is additionally started under `setpriv --pdeathsig SIGKILL` (when
 * available) so it dies with the Node process even on SIGKILL.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  buildGuestArgs,
  guestCmdline,
  selectAccel,
  ACCEL_ENV,
  type Accel,
  type GuestParams,
  type MachineType,
  type NicSpec,
} from './args';

// ------------------------------------------------------------------ paths

/** Repository root: the closest ancestor of this file holding package.json. */
export function repoRoot(): string {
  let dir = __dirname;
  for (;;) {
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(path.join(dir, 'guests'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) return path.resolve(__dirname, '..', '..');
    dir = up;
  }
}

export interface GuestImages {
  kernel: string;
  initrd: string;
}

/** build/guest/{vmlinuz,initramfs.cpio.gz}, or $ELASTIC_VHOST_GUEST_DIR/... */
export function guestImages(): GuestImages {
  const dir = process.env.ELASTIC_VHOST_GUEST_DIR ?? path.join(repoRoot(), 'build', 'guest');
  return { kernel: path.join(dir, 'vmlinuz'), initrd: path.join(dir, 'initramfs.cpio.gz') };
}

/** Runs guests/build.sh if the images are missing (or always with force). */
export function ensureGuestImages(force = false): GuestImages {
  const img = guestImages();
  if (!force && fs.existsSync(img.kernel) && fs.existsSync(img.initrd)) return img;
  const script = path.join(repoRoot(), 'guests', 'build.sh');
  const r = spawnSync('bash', [script], { stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) throw new Error(`guests/build.sh failed (status ${r.status})`);
  return img;
}

// ------------------------------------------------------------------ process registry

const live = new Map<number, ChildProcess>();
let hooksInstalled = false;

/** SIGKILL every QEMU started by this module that is still running. Returns how many were signalled. */
export function killAll(): number {
  let n = 0;
  for (const [pid] of live) {
    try {
      process.kill(pid, 'SIGKILL');
      n++;
    } catch {
      /* already gone */
    }
  }
  live.clear();
  return n;
}

/**
 * Runs cleanup when this process exits, and on SIGINT/SIGTERM/SIGHUP before dying of the signal:
 * every launcher here (QEMU guests, dpdk-testpmd) kills what it started this way.
 */
export function cleanupOnExit(cleanup: () => void): void {
  process.on('exit', cleanup);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      cleanup();
      process.kill(process.pid, sig);
    });
  }
}

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  cleanupOnExit(() => {
    killAll();
  });
}

let setprivPath: string | null | undefined;
function setpriv(): string | null {
  if (setprivPath === undefined) {
    setprivPath = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => fs.existsSync(p)) ?? null;
  }
  return setprivPath;
}

// ------------------------------------------------------------------ small utils

const ANSI_RE = /\x1b(\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_]|c)/g;

class LineSplitter {
  private buf = '';
  constructor(private readonly onLine: (line: string) => void) {}
  push(chunk: Buffer | string): void {
    this.buf += chunk.toString('utf8');
    let i: number;
    while ((i = this.buf.indexOf('\n')) >= 0) {
      const raw = this.buf.slice(0, i);
      this.buf = this.buf.slice(i + 1);
      this.onLine(raw.replace(/\r/g, '').replace(ANSI_RE, ''));
    }
  }
  flush(): void {
    if (this.buf.length) {
      const raw = this.buf;
      this.buf = '';
      this.onLine(raw.replace(/\r/g, '').replace(ANSI_RE, ''));
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitForPath(p: string, timeoutMs: number, abort: () => string | null): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!fs.existsSync(p)) {
    const why = abort();
    if (why) throw new Error(why);
    if (Date.now() > end) throw new Error(`timeout waiting for ${p}`);
    await sleep(10);
  }
}

function connectUnix(p: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(p);
    const onErr = (e: Error): void => reject(e);
    s.once('error', onErr);
    s.once('connect', () => {
      s.off('error', onErr);
      resolve(s);
    });
  });
}

async function connectUnixRetry(p: string, timeoutMs: number, abort: () => string | null): Promise<net.Socket> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    await waitForPath(p, Math.max(1, end - Date.now()), abort);
    try {
      return await connectUnix(p);
    } catch (e) {
      const why = abort();
      if (why) throw new Error(why);
      if (Date.now() > end) throw e;
      await sleep(20);
    }
  }
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const a = srv.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** Is some socket LISTENing on TCP `port` (reads /proc/net/tcp{,6}; does not connect). */
export function isTcpListening(port: number): boolean {
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = fs.readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length > 3 && cols[1]!.endsWith(`:${hex}`) && cols[3] === '0A') return true;
    }
  }
  return false;
}

export async function waitTcpListening(port: number, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!isTcpListening(port)) {
    if (Date.now() > end) throw new Error(`nothing listens on TCP port ${port} after ${timeoutMs} ms`);
    await sleep(20);
  }
}

// ------------------------------------------------------------------ QMP

export interface QmpEvent {
  event: string;
  data?: unknown;
  timestamp?: { seconds: number; microseconds: number };
}

export class QmpError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    desc: string,
  ) {
    super(`QMP ${command}: ${errorClass}: ${desc}`);
  }
}

/** Minimal QMP client: greeting + qmp_capabilities, then id-matched commands. */
export class QmpClient extends EventEmitter {
  readonly events: QmpEvent[] = [];
  private nextId = 1;
  private readonly pending = new Map<string, { cmd: string; resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private closed = false;

  private constructor(private readonly sock: net.Socket) {
    super();
  }

  static async connect(socketPath: string, timeoutMs = 10_000, abort: () => string | null = () => null): Promise<QmpClient> {
    const sock = await connectUnixRetry(socketPath, timeoutMs, abort);
    const c = new QmpClient(sock);
    const greeting = new Promise<void>((resolve, reject) => {
      c.once('greeting', () => resolve());
      c.once('close', () => reject(new Error('QMP closed before greeting')));
    });
    const split = new LineSplitter((l) => c.onLine(l));
    sock.on('data', (d) => split.push(d));
    sock.on('error', () => {
      /* surfaced via close */
    });
    sock.on('close', () => {
      c.closed = true;
      for (const p of c.pending.values()) p.reject(new Error(`QMP connection closed (${p.cmd})`));
      c.pending.clear();
      c.emit('close');
    });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new Error(
              `no QMP greeting on ${socketPath} within ${timeoutMs} ms (QEMU blocked? a vhost-user netdev ` +
                'keeps QEMU from starting until its back-end socket is connected)',
            ),
          ),
        timeoutMs,
      );
    });
    try {
      await Promise.race([greeting.then(() => c.execute('qmp_capabilities')), timeout]);
    } catch (e) {
      sock.destroy();
      throw e;
    } finally {
      clearTimeout(timer);
    }
    return c;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private onLine(line: string): void {
    if (!line.trim()) return;
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    if ('QMP' in msg) {
      this.emit('greeting', msg);
      return;
    }
    if (typeof msg.event === 'string') {
      const ev = msg as unknown as QmpEvent;
      this.events.push(ev);
      this.emit('event', ev);
      return;
    }
    const id = msg.id === undefined ? undefined : String(msg.id);
    if (id === undefined) return;
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if ('error' in msg) {
      const e = msg.error as { class?: string; desc?: string };
      p.reject(new QmpError(p.cmd, e.class ?? 'Error', e.desc ?? ''));
    } else {
      p.resolve(msg.return);
    }
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) return Promise.reject(new Error(`QMP connection closed (${command})`));
    const id = String(this.nextId++);
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { cmd: command, resolve: resolve as (v: unknown) => void, reject });
      const msg: Record<string, unknown> = { execute: command, id };
      if (args) msg.arguments = args;
      this.sock.write(JSON.stringify(msg) + '\n');
    });
  }

  /** Resolve with the first event named `name` (already received ones count if sinceIndex given). */
  waitEvent(name: string, timeoutMs = 10_000, sinceIndex?: number): Promise<QmpEvent> {
    if (sinceIndex !== undefined) {
      const hit = this.events.slice(sinceIndex).find((e) => e.event === name);
      if (hit) return Promise.resolve(hit);
    }
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.off('event', on);
        reject(new Error(`timeout waiting for QMP event ${name}`));
      }, timeoutMs);
      const on = (e: QmpEvent): void => {
        if (e.event !== name) return;
        clearTimeout(t);
        this.off('event', on);
        resolve(e);
      };
      this.on('event', on);
    });
  }

  close(): void {
    this.sock.destroy();
  }
}

// ------------------------------------------------------------------ agent framing

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (zlib / IEEE 802.3), as guests/tools/evagent.c computes it. */
export function crc32(data: Buffer | string): number {
  const b = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  let c = 0xffffffff;
  for (let i = 0; i < b.length; i++) c = CRC_TABLE[(c ^ b[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/**
 * One host -> guest agent frame (without the newline):
 * `<kind> <id> <payload bytes> <base64 payload> <crc32 of what precedes, 8 hex>`.
 * kind X = run payload with /bin/sh -c; K = payload "TARGET SIG" signals a command.
 */
export function agentFrame(kind: 'X' | 'K', id: string, payload: string | Buffer): string {
  const b = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
  const body = `${kind} ${id} ${b.length} ${b.toString('base64')}`;
  return `${body} ${crc32(body).toString(16).padStart(8, '0')}`;
}

/** A frame not acknowledged (EV-ACK) within this time is sent again. */
const AGENT_RESEND_MS = 2000;

// ------------------------------------------------------------------ GuestVM

export interface ExecResult {
  rc: number;
  /** Output lines (stdout+stderr interleaved), without the EV-OUT tag. */
  lines: string[];
  /** lines.join('\n') */
  output: string;
}

export class AgentTimeoutError extends Error {
  constructor(
    readonly cmd: string,
    readonly partial: string[],
  ) {
    super(`agent command timed out: ${cmd}\n--- partial output ---\n${partial.join('\n')}`);
  }
}

export interface AgentCommand {
  readonly id: string;
  readonly cmd: string;
  readonly lines: string[];
  /** Settles when EV-DONE arrived (or rejects on VM exit). */
  readonly done: Promise<ExecResult>;
  /** Wait for an output line of this command matching re. */
  waitForLine(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** Send SIGTERM (or sig) to the command's process group in the guest. */
  cancel(sig?: string): void;
}

interface PendingCmd {
  id: string;
  cmd: string;
  lines: string[];
  emitter: EventEmitter;
  resolve: (r: ExecResult) => void;
  reject: (e: Error) => void;
}

/** See GuestVM.injectAgentFaults. */
export type AgentFault = 'head' | 'flip' | 'lose' | 'dup' | 'merge';

export interface GuestVMOptions {
  /** Used for -name, the work dir name and (default) ev.name. */
  name: string;
  /** ev.* kernel parameters; role defaults to 'agent'. */
  params?: GuestParams;
  nics?: NicSpec[];
  memMiB?: number;
  /** instead of memMiB, in KiB (a multiple of 8) */
  memKiB?: number;
  smp?: number;
  machine?: MachineType;
  /** Default: selectAccel() (ELASTIC_VHOST_ACCEL or tcg). */
  accel?: Accel;
  /** Shared memfd RAM (default true; needed by vhost-user). */
  sharedMemory?: boolean;
  kernel?: string;
  initrd?: string;
  extraKernelArgs?: string[];
  extraArgs?: string[];
  /** Directory for sockets and logs (default: fresh mkdtemp under os.tmpdir()). */
  workDir?: string;
  /** QEMU binary (default $QEMU or qemu-system-x86_64). */
  qemu?: string;
  /** Attach the ttyS1 agent channel (default: role is agent or params.agent). */
  agent?: boolean;
  /** Mirror console lines to stderr (default: $ELASTIC_VHOST_ECHO=1). */
  echoConsole?: boolean;
  /** Time allowed for QEMU to come up and accept the console connection (default 15 s). */
  startTimeoutMs?: number;
}

export interface ReadyInfo {
  ip: string;
  mac: string;
  /** Guest uptime (s) when EV-READY was printed. */
  uptime: number;
  /** Wall-clock ms from spawn to EV-READY. */
  bootMs: number;
  line: string;
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class GuestVM extends EventEmitter {
  readonly name: string;
  readonly workDir: string;
  readonly consoleLog: string;
  readonly consoleSocket: string;
  readonly agentSocket: string | null;
  readonly qmpSocket: string;
  readonly args: string[];
  readonly accel: Accel;
  /** Console lines so far (ANSI escapes and CRs removed). */
  readonly consoleLines: string[] = [];
  /** Agent-channel lines that were not EV-OUT/EV-DONE of a command. */
  readonly agentMisc: string[] = [];
  private proc!: ChildProcess;
  private readonly startedAt = Date.now();
  private exitInfo: ExitInfo | null = null;
  private readonly exitPromise: Promise<ExitInfo>;
  private resolveExit!: (e: ExitInfo) => void;
  private stderrTail = '';
  private consoleSock: net.Socket | null = null;
  private agentSock: net.Socket | null = null;
  private qmpClient: QmpClient | null = null;
  private logStream: fs.WriteStream;
  private readonly pending = new Map<string, PendingCmd>();
  /** Frames sent but not acknowledged yet (re-sent after AGENT_RESEND_MS; the guest drops duplicate ids). */
  private readonly unacked = new Map<string, { line: string; sentAt: number }>();
  private resendTimer: NodeJS.Timeout | null = null;
  /** Agent channel integrity counters: frames re-sent, EV-BADLINE answers received. */
  readonly agentStats = { sent: 0, resent: 0, badLines: 0 };
  private cmdSeq = 0;
  private readonly echo: boolean;

  private constructor(o: GuestVMOptions) {
    super();
    this.setMaxListeners(100);
    this.name = o.name;
    this.workDir = o.workDir ?? fs.mkdtempSync(path.join(os.tmpdir(), `ev-${o.name.replace(/[^A-Za-z0-9_-]/g, '_')}-`));
    fs.mkdirSync(this.workDir, { recursive: true });
    this.consoleLog = path.join(this.workDir, 'console.log');
    this.consoleSocket = path.join(this.workDir, 'console.sock');
    this.qmpSocket = path.join(this.workDir, 'qmp.sock');
    const params: GuestParams = { role: 'agent', name: o.name.replace(/[^A-Za-z0-9_.-]/g, '-'), ...o.params };
    const wantAgent = o.agent ?? (params.role === 'agent' || params.agent === true);
    if (wantAgent && params.role !== 'agent') params.agent = true;
    this.agentSocket = wantAgent ? path.join(this.workDir, 'agent.sock') : null;
    for (const p of [this.consoleSocket, this.qmpSocket, this.agentSocket]) if (p) fs.rmSync(p, { force: true });
    const img = o.kernel && o.initrd ? { kernel: o.kernel, initrd: o.initrd } : guestImages();
    this.accel = o.accel ?? selectAccel();
    this.args = buildGuestArgs({
      name: o.name,
      kernel: o.kernel ?? img.kernel,
      initrd: o.initrd ?? img.initrd,
      append: guestCmdline(params, o.extraKernelArgs ?? []),
      memMiB: o.memMiB,
      memKiB: o.memKiB,
      smp: o.smp,
      machine: o.machine,
      accel: this.accel,
      sharedMemory: o.sharedMemory,
      console: { kind: 'socket', path: this.consoleSocket, wait: true },
      agentSocket: this.agentSocket ?? undefined,
      qmpSocket: this.qmpSocket,
      nics: o.nics,
      extraArgs: o.extraArgs,
    });
    this.logStream = fs.createWriteStream(this.consoleLog, { flags: 'a' });
    this.echo = o.echoConsole ?? process.env.ELASTIC_VHOST_ECHO === '1';
    this.exitPromise = new Promise((r) => (this.resolveExit = r));
  }

  /** Spawn QEMU and connect console, QMP and (if enabled) the agent channel. */
  static async start(o: GuestVMOptions): Promise<GuestVM> {
    installHooks();
    const vm = new GuestVM(o);
    const img = { kernel: o.kernel ?? guestImages().kernel, initrd: o.initrd ?? guestImages().initrd };
    for (const f of [img.kernel, img.initrd]) {
      if (!fs.existsSync(f)) throw new Error(`${f} missing: run "npm run guests" (guests/build.sh)`);
    }
    const qemu = o.qemu ?? process.env.QEMU ?? 'qemu-system-x86_64';
    fs.writeFileSync(path.join(vm.workDir, 'cmdline.txt'), [qemu, ...vm.args].map((a) => JSON.stringify(a)).join(' ') + '\n');
    const sp = setpriv();
    const [cmd, argv] = sp ? [sp, ['--pdeathsig', 'SIGKILL', qemu, ...vm.args]] : [qemu, vm.args];
    vm.proc = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    const stderrLog = fs.createWriteStream(path.join(vm.workDir, 'qemu.stderr'));
    const onErr = (d: Buffer): void => {
      stderrLog.write(d);
      vm.stderrTail = (vm.stderrTail + d.toString('utf8')).slice(-4000);
    };
    vm.proc.stdout!.on('data', onErr);
    vm.proc.stderr!.on('data', onErr);
    vm.proc.on('error', (e) => {
      vm.stderrTail += `\nspawn error: ${e.message}`;
      vm.markExit({ code: null, signal: null });
    });
    vm.proc.on('exit', (code, signal) => {
      stderrLog.end();
      vm.markExit({ code, signal });
    });
    if (vm.proc.pid !== undefined) live.set(vm.proc.pid, vm.proc);

    const deadline = Date.now() + (o.startTimeoutMs ?? 15_000);
    const left = (): number => Math.max(100, deadline - Date.now());
    const abort = (): string | null => (vm.exitInfo ? `QEMU ${vm.name} exited during start-up: ${vm.describeExit()}` : null);
    try {
      vm.consoleSock = await connectUnixRetry(vm.consoleSocket, left(), abort);
      const split = new LineSplitter((l) => vm.onConsoleLine(l));
      vm.consoleSock.on('data', (d) => {
        vm.logStream.write(d);
        split.push(d);
      });
      vm.consoleSock.on('error', () => {});
      vm.consoleSock.on('close', () => split.flush());
      vm.qmpClient = await QmpClient.connect(vm.qmpSocket, left(), abort);
      vm.qmpClient.on('event', (e: QmpEvent) => vm.emit('qmp-event', e));
      if (vm.agentSocket) {
        vm.agentSock = await connectUnixRetry(vm.agentSocket, left(), abort);
        const asplit = new LineSplitter((l) => vm.onAgentLine(l));
        vm.agentSock.on('data', (d) => asplit.push(d));
        vm.agentSock.on('error', () => {});
        vm.resendTimer = setInterval(() => vm.resendStale(), 250);
        vm.resendTimer.unref();
      }
    } catch (e) {
      vm.kill();
      throw e;
    }
    return vm;
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }

  get exited(): ExitInfo | null {
    return this.exitInfo;
  }

  get qmp(): QmpClient {
    if (!this.qmpClient) throw new Error('QMP not connected');
    return this.qmpClient;
  }

  private describeExit(): string {
    const e = this.exitInfo;
    const how = e ? (e.signal ? `signal ${e.signal}` : `code ${e.code}`) : 'running';
    return `${how}\n--- qemu stderr ---\n${this.stderrTail.trim()}\n--- console tail ---\n${this.consoleTail(15)}`;
  }

  private markExit(e: ExitInfo): void {
    if (this.exitInfo) return;
    this.exitInfo = e;
    if (this.resendTimer) clearInterval(this.resendTimer);
    this.resendTimer = null;
    this.unacked.clear();
    if (this.proc?.pid !== undefined) live.delete(this.proc.pid);
    this.logStream.end();
    const err = new Error(`VM ${this.name} exited (${e.signal ?? e.code}) before command finished`);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.resolveExit(e);
    this.emit('exit', e);
  }

  private onConsoleLine(line: string): void {
    if (this.consoleLines.length > 50_000) this.consoleLines.splice(0, 10_000);
    this.consoleLines.push(line);
    if (this.echo) process.stderr.write(`[${this.name}] ${line}\n`);
    this.emit('console', line);
  }

  /** Write a frame to the agent and keep it until the guest acknowledges it. */
  private sendFrame(id: string, line: string): void {
    this.unacked.set(id, { line, sentAt: Date.now() });
    this.agentStats.sent++;
    const fault = this.faults.shift();
    let wire = line + '\n';
    if (fault === 'head') wire = wire.slice(Math.min(12, line.length - 1)); // the head of the line lost
    else if (fault === 'flip') wire = wire.slice(0, line.length >> 1) + (line[line.length >> 1] === 'A' ? 'B' : 'A') + wire.slice((line.length >> 1) + 1);
    else if (fault === 'lose') wire = '';
    else if (fault === 'dup') wire += wire;
    else if (fault === 'merge') wire = wire.slice(0, -1); // newline lost: merges with the next line
    if (wire) this.agentSock!.write(wire);
  }

  private readonly faults: AgentFault[] = [];
  /**
   * Fault injection for tests of the agent channel: the next frames sent
   * (spawn/exec/cancel) are damaged in these ways, one fault per frame.
   * They must still run exactly once (checksum, EV-ACK, re-send, dedup).
   */
  injectAgentFaults(...faults: AgentFault[]): void {
    this.faults.push(...faults);
  }

  private resend(id: string): void {
    const u = this.unacked.get(id);
    if (!u || !this.agentSock || this.exitInfo) return;
    u.sentAt = Date.now();
    this.agentStats.resent++;
    this.agentSock.write(u.line + '\n');
  }

  private resendStale(): void {
    const now = Date.now();
    for (const [id, u] of this.unacked) if (now - u.sentAt >= AGENT_RESEND_MS) this.resend(id);
  }

  /** Stop tracking a command (given up on): no more re-sends, late output goes to agentMisc. */
  private forget(id: string): void {
    this.pending.delete(id);
    this.unacked.delete(id);
  }

  private onAgentLine(line: string): void {
    let m = /^EV-ACK (\S+)$/.exec(line);
    if (m) {
      this.unacked.delete(m[1]!);
      return;
    }
    m = /^EV-BADLINE (\S+)/.exec(line);
    if (m) {
      this.agentStats.badLines++;
      // Re-send at once when the id is recognisable (duplicates are harmless), else the timer does.
      const u = this.unacked.get(m[1]!);
      if (u && Date.now() - u.sentAt > 100) this.resend(m[1]!);
    }
    m = /^EV-(?:OUT|DONE) (\S+)/.exec(line);
    if (m) this.unacked.delete(m[1]!);
    m = /^EV-OUT (\S+)(?: (.*))?$/.exec(line);
    if (m) {
      const p = this.pending.get(m[1]!);
      if (p) {
        const text = m[2] ?? '';
        p.lines.push(text);
        p.emitter.emit('line', text);
        if (this.echo) process.stderr.write(`[${this.name}:${p.id}] ${text}\n`);
        return;
      }
    }
    m = /^EV-DONE (\S+) rc=(\d+)/.exec(line);
    if (m) {
      const p = this.pending.get(m[1]!);
      if (p) {
        this.pending.delete(p.id);
        p.resolve({ rc: Number(m[2]), lines: p.lines, output: p.lines.join('\n') });
        return;
      }
    }
    if (this.agentMisc.length > 1000) this.agentMisc.shift();
    this.agentMisc.push(line);
    this.emit('agent-misc', line);
  }

  /** Last n console lines joined. */
  consoleTail(n = 30): string {
    return this.consoleLines.slice(-n).join('\n');
  }

  /**
   * Wait for a console line matching re. By default lines seen before the
   * call count too (fromLine 0); pass fromLine: vm.consoleLines.length to only
   * look at future lines. Rejects on timeout or QEMU exit.
   */
  waitForConsole(re: RegExp, opts: { timeoutMs?: number; fromLine?: number } = {}): Promise<RegExpMatchArray> {
    const timeoutMs = opts.timeoutMs ?? 30_000;
    for (let i = opts.fromLine ?? 0; i < this.consoleLines.length; i++) {
      const m = this.consoleLines[i]!.match(re);
      if (m) return Promise.resolve(m);
    }
    return new Promise((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(t);
        this.off('console', onLine);
        this.off('exit', onExit);
      };
      const t = setTimeout(() => {
        cleanup();
        reject(new Error(`VM ${this.name}: timeout (${timeoutMs} ms) waiting for console ${re}\n--- console tail ---\n${this.consoleTail(15)}`));
      }, timeoutMs);
      const onLine = (l: string): void => {
        const m = l.match(re);
        if (m) {
          cleanup();
          resolve(m);
        }
      };
      const onExit = (): void => {
        cleanup();
        reject(new Error(`VM ${this.name} exited while waiting for console ${re}: ${this.describeExit()}`));
      };
      if (this.exitInfo) {
        onExit();
        return;
      }
      this.on('console', onLine);
      this.on('exit', onExit);
    });
  }

  /** Wait for EV-READY, then (if the agent is attached) for an agent round trip. */
  async waitReady(timeoutMs = 60_000): Promise<ReadyInfo> {
    const end = Date.now() + timeoutMs;
    const m = await this.waitForConsole(/EV-READY .*/, { timeoutMs });
    const line = m[0];
    const bootMs = Date.now() - this.startedAt;
    const kv = parseKeyValues(line);
    if (this.agentSocket) await this.waitAgent(Math.max(1000, end - Date.now()));
    return { ip: kv.ip ?? '', mac: kv.mac ?? '', uptime: Number(kv.uptime ?? NaN), bootMs, line };
  }

  /** Agent handshake: "echo" until one round trip succeeds (retried every second). */
  async waitAgent(timeoutMs = 30_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const c = this.spawn('echo EV-PONG');
      const r = await Promise.race([c.done, sleep(1000).then(() => null)]);
      if (r && r.rc === 0 && r.lines.includes('EV-PONG')) return;
      if (!r) this.forget(c.id);
      if (this.exitInfo) throw new Error(`VM ${this.name} exited: ${this.describeExit()}`);
      if (Date.now() > end) throw new Error(`VM ${this.name}: agent did not answer within ${timeoutMs} ms`);
    }
  }

  /**
   * Start a shell command in the guest (runs in the background there; several
   * may run at once). Sent as a checksummed frame (base64 payload, so any
   * command, multi-line too); re-sent until the guest acknowledges it.
   */
  spawn(cmd: string): AgentCommand {
    if (!this.agentSock) throw new Error(`VM ${this.name} has no agent channel (use role 'agent' or params.agent)`);
    if (this.exitInfo) throw new Error(`VM ${this.name} is not running`);
    const id = `c${++this.cmdSeq}`;
    const emitter = new EventEmitter();
    emitter.setMaxListeners(100);
    const lines: string[] = [];
    let resolve!: (r: ExecResult) => void;
    let reject!: (e: Error) => void;
    const done = new Promise<ExecResult>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    done.catch(() => {}); // avoid unhandled rejections for fire-and-forget commands
    this.pending.set(id, { id, cmd, lines, emitter, resolve, reject });
    this.sendFrame(id, agentFrame('X', id, cmd));
    const vm = this;
    return {
      id,
      cmd,
      lines,
      done,
      waitForLine(re: RegExp, timeoutMs = 30_000): Promise<RegExpMatchArray> {
        for (const l of lines) {
          const m = l.match(re);
          if (m) return Promise.resolve(m);
        }
        return new Promise((res, rej) => {
          const t = setTimeout(() => {
            emitter.off('line', on);
            rej(new Error(`VM ${vm.name}: timeout waiting for ${re} from "${cmd}"\n${lines.join('\n')}`));
          }, timeoutMs);
          const on = (l: string): void => {
            const m = l.match(re);
            if (m) {
              clearTimeout(t);
              emitter.off('line', on);
              res(m);
            }
          };
          emitter.on('line', on);
          done.then(
            (r) => {
              // finished without the line
              clearTimeout(t);
              emitter.off('line', on);
              const m = lines.map((l) => l.match(re)).find((x) => x);
              if (m) res(m);
              else rej(new Error(`VM ${vm.name}: "${cmd}" ended (rc=${r.rc}) without ${re}\n${r.output}`));
            },
            (e: Error) => {
              clearTimeout(t);
              rej(e);
            },
          );
        });
      },
      cancel(sig = 'TERM'): void {
        vm.cancel(id, sig);
      },
    };
  }

  /** Kill a running agent command's process group (fire and forget). */
  cancel(id: string, sig = 'TERM'): void {
    if (!this.agentSock || this.exitInfo) return;
    const kid = `k${++this.cmdSeq}`;
    this.sendFrame(kid, agentFrame('K', kid, `${id} ${sig.replace(/^SIG/, '')}`));
  }

  /** Run a command and wait for its exit status. Rejects with AgentTimeoutError (and cancels) on timeout. */
  async exec(cmd: string, opts: { timeoutMs?: number } = {}): Promise<ExecResult> {
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const c = this.spawn(cmd);
    let t: NodeJS.Timeout | undefined;
    const timer = new Promise<null>((r) => (t = setTimeout(() => r(null), timeoutMs)));
    try {
      const r = await Promise.race([c.done, timer]);
      if (r === null) {
        this.cancel(c.id, 'KILL');
        this.forget(c.id);
        throw new AgentTimeoutError(cmd, c.lines);
      }
      return r;
    } finally {
      clearTimeout(t);
    }
  }

  /** exec() that throws unless rc === 0. */
  async run(cmd: string, opts: { timeoutMs?: number } = {}): Promise<string> {
    const r = await this.exec(cmd, opts);
    if (r.rc !== 0) throw new Error(`VM ${this.name}: "${cmd}" failed rc=${r.rc}\n${r.output}`);
    return r.output;
  }

  // --- QMP shortcuts
  /** Pause the vCPUs (the guest stops consuming its rings). */
  stop(): Promise<unknown> {
    return this.qmp.execute('stop');
  }
  cont(): Promise<unknown> {
    return this.qmp.execute('cont');
  }
  /** ACPI power button; /init powers off when it sees it. */
  powerdown(): Promise<unknown> {
    return this.qmp.execute('system_powerdown');
  }
  async status(): Promise<{ running: boolean; status: string }> {
    return this.qmp.execute<{ running: boolean; status: string }>('query-status');
  }
  /** QMP quit; resolves once the process exited. */
  async quit(timeoutMs = 10_000): Promise<ExitInfo> {
    if (this.exitInfo) return this.exitInfo;
    await this.qmp.execute('quit').catch(() => {
      /* the connection may close before the reply */
    });
    return this.waitExit(timeoutMs);
  }

  /** Send a signal to QEMU (default SIGKILL). */
  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    if (this.exitInfo || this.proc?.pid === undefined) return;
    try {
      process.kill(this.proc.pid, signal);
    } catch {
      /* gone */
    }
  }

  /** Resolves when QEMU exited; rejects after timeoutMs (the process is left alone). */
  waitExit(timeoutMs = 30_000): Promise<ExitInfo> {
    if (this.exitInfo) return Promise.resolve(this.exitInfo);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`VM ${this.name} did not exit within ${timeoutMs} ms`)), timeoutMs);
      void this.exitPromise.then((e) => {
        clearTimeout(t);
        resolve(e);
      });
    });
  }

  /** Best-effort stop: QMP quit, SIGKILL if it does not exit in time. Never throws. */
  async shutdown(timeoutMs = 5_000): Promise<ExitInfo> {
    if (!this.exitInfo) {
      try {
        await this.quit(timeoutMs);
      } catch {
        this.kill('SIGKILL');
      }
    }
    const e = await this.exitPromise;
    if (this.resendTimer) clearInterval(this.resendTimer);
    this.qmpClient?.close();
    this.agentSock?.destroy();
    this.consoleSock?.destroy();
    return e;
  }

  /** Remove the work directory (sockets, logs). */
  removeWorkDir(): void {
    fs.rmSync(this.workDir, { recursive: true, force: true });
  }
}

/** Parse "k=v k2=v2" tokens of a line into an object. */
export function parseKeyValues(line: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const tok of line.trim().split(/\s+/)) {
    const i = tok.indexOf('=');
    if (i > 0) out[tok.slice(0, i)] = tok.slice(i + 1);
  }
  return out;
}

/**
 * Real KVM probe: boot the test guest (role idle) under KVM and wait for
 * EV-READY. Costs up to timeoutMs; returns false if /dev/kvm is missing.
 */
export async function probeKvmBoot(timeoutMs = 15_000): Promise<boolean> {
  if (!fs.existsSync('/dev/kvm')) return false;
  let vm: GuestVM | null = null;
  try {
    vm = await GuestVM.start({ name: 'kvm-probe', accel: 'kvm', params: { role: 'idle' }, agent: false, memMiB: 128 });
    await vm.waitForConsole(/EV-READY/, { timeoutMs });
    return true;
  } catch {
    return false;
  } finally {
    if (vm) {
      vm.kill();
      await vm.waitExit(5000).catch(() => undefined);
      vm.removeWorkDir();
    }
  }
}

/**
 * Accelerator with optional boot probe: ELASTIC_VHOST_ACCEL=kvm|tcg is taken
 * as is; =auto runs probeKvmBoot(); unset means tcg.
 */
export async function resolveAccel(env: NodeJS.ProcessEnv = process.env): Promise<Accel> {
  const v = (env[ACCEL_ENV] ?? '').trim().toLowerCase();
  if (v === 'auto') return (await probeKvmBoot()) ? 'kvm' : 'tcg';
  return selectAccel(env);
}
