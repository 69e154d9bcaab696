/**
 * Run the elastic-vhost command as a child process (tests, demo): start it with N server-mode
 * sockets in a work directory, wait until it listens, read its counters (--stats-file), stop it
 * with SIGTERM (it must exit 0) or kill it. Every process started here is SIGKILLed on exit.
 * Its stdout is JSON lines (pino): `log` keeps each event's message (`msg`), `records` the whole
 * event, so tests match the text people read and, where they need it, the fields.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { repoRoot } from './launcher';

const live = new Set<ChildProcess>();
let hooked = false;
function hook(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const p of live) p.kill('SIGKILL');
  });
}

export interface SwitchProcessOptions {
  workDir: string;
  /** socket file names (server mode) created in workDir, one port each: ports vm0, vm1, … */
  sockets: string[];
  /** socket file names in workDir where QEMU listens (client mode): ports after the server ones */
  clientSockets?: string[];
  extraArgs?: string[];
  /** mirror the switch's log to stderr */
  echo?: boolean;
  /** run it in this network namespace (`ip netns exec`, which execs it: same pid) */
  netns?: string;
}

/** One event as the switch logged it: level, time, msg and its fields (port, connection, request…). */
export type LogRecord = Record<string, unknown> & { msg: string; level: string };

/** A line of its output as an event: its JSON, or (not JSON: a crash on stderr) the line as msg. */
export function parseLogLine(line: string): LogRecord {
  if (line.startsWith('{')) {
    try {
      const r = JSON.parse(line) as LogRecord;
      if (typeof r.msg === 'string') return r;
    } catch {
      /* not an event */
    }
  }
  return { msg: line, level: 'raw' };
}

export class SwitchProcess {
  /** each output line's message (msg of a JSON event, else the line) */
  readonly log: string[] = [];
  /** each output line as an event, at the same index as in log */
  readonly records: LogRecord[] = [];
  /** the output lines as written */
  readonly lines: string[] = [];
  readonly statsFile: string;
  readonly socketPaths: string[];
  readonly clientSocketPaths: string[];
  private proc: ChildProcess | null = null;
  private exitPromise: Promise<{ code: number | null; signal: NodeJS.Signals | null }> = Promise.resolve({ code: null, signal: null });
  private waiters: { match: (r: LogRecord) => boolean; from: number; resolve: (i: number) => void }[] = [];

  constructor(private readonly o: SwitchProcessOptions) {
    this.statsFile = path.join(o.workDir, 'switch-stats.json');
    this.socketPaths = o.sockets.map((s) => path.join(o.workDir, s));
    this.clientSocketPaths = (o.clientSockets ?? []).map((s) => path.join(o.workDir, s));
  }

  static cliPath(): string {
    return path.join(repoRoot(), 'dist', 'src', 'cli', 'main.js');
  }

  /** Runs `elastic-vhost ctl --socket SOCK ARGS…` (the built CLI) and resolves with its exit code and output. */
  static ctl(sock: string, ...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      const p = spawn(process.execPath, [SwitchProcess.cliPath(), 'ctl', '--socket', sock, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      p.stdout!.on('data', (d) => (stdout += d));
      p.stderr!.on('data', (d) => (stderr += d));
      p.on('exit', (code) => resolve({ code, stdout, stderr }));
    });
  }

  /** Starts the process and resolves once every socket is listening. */
  async start(timeoutMs = 15_000): Promise<void> {
    hook();
    const args = [
      SwitchProcess.cliPath(),
      ...this.socketPaths.flatMap((p, i) => ['--socket', `${p},name=vm${i}`]),
      ...this.clientSocketPaths.flatMap((p, i) => ['--client', `${p},name=vm${this.socketPaths.length + i}`]),
      '--stats-file', this.statsFile,
      '--stats-interval', '200',
      ...(this.o.extraArgs ?? []),
    ];
    const from = this.log.length;
    const p = this.o.netns
      ? spawn('ip', ['netns', 'exec', this.o.netns, process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = p;
    live.add(p);
    this.exitPromise = new Promise((resolve) => p.on('exit', (code, signal) => {
      live.delete(p);
      resolve({ code, signal });
    }));
    let partial = '';
    const onData = (d: Buffer) => {
      partial += d.toString();
      let i;
      while ((i = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, i);
        partial = partial.slice(i + 1);
        const record = parseLogLine(line);
        this.lines.push(line);
        this.records.push(record);
        this.log.push(record.msg);
        if (this.o.echo) process.stderr.write(`[switch] ${line}\n`);
        const at = this.log.length - 1;
        this.waiters = this.waiters.filter((w) => {
          if (at >= w.from && w.match(record)) {
            w.resolve(at);
            return false;
          }
          return true;
        });
      }
    };
    p.stdout!.on('data', onData);
    p.stderr!.on('data', onData);
    for (const s of this.socketPaths) await this.waitLog(new RegExp(`listening on ${escapeRe(s)}$`), timeoutMs, from);
  }

  /** Resolves with the message of the first event (since line `from`) whose message matches re. */
  async waitLog(re: RegExp, timeoutMs = 15_000, from = 0): Promise<string> {
    return (await this.waitRecord((r) => re.test(r.msg), timeoutMs, from, String(re))).msg;
  }

  /** Resolves with the first event (since line `from`) that match accepts (its fields, its msg). */
  waitRecord(match: (r: LogRecord) => boolean, timeoutMs = 15_000, from = 0, what = 'the event asked for'): Promise<LogRecord> {
    for (let i = from; i < this.records.length; i++) if (match(this.records[i])) return Promise.resolve(this.records[i]);
    const re = what;
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`switch log: no line matching ${re} within ${timeoutMs} ms; last lines:\n${this.log.slice(-15).join('\n')}`));
      }, timeoutMs);
      const waiter = {
        match,
        from,
        resolve: (i: number) => {
          clearTimeout(t);
          resolve(this.records[i]);
        },
      };
      this.waiters.push(waiter);
      void this.exitPromise.then((e) => {
        if (this.waiters.includes(waiter)) {
          clearTimeout(t);
          this.waiters = this.waiters.filter((w) => w !== waiter);
          reject(new Error(`switch exited (${JSON.stringify(e)}) before a line matching ${re}; last lines:\n${this.log.slice(-15).join('\n')}`));
        }
      });
    });
  }

  /** Sends sig (SIGHUP: reload the config file; SIGUSR1: log the counters). */
  signal(sig: NodeJS.Signals): void {
    this.proc?.kill(sig);
  }

  get pid(): number | undefined {
    return this.proc?.pid;
  }

  /** The counters the switch last wrote (it rewrites the file every 200 ms). */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  stats(): any {
    return JSON.parse(fs.readFileSync(this.statsFile, 'utf8'));
  }

  /** Waits for a stats file written after now (so it reflects everything up to this moment). */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  async freshStats(): Promise<any> {
    const t0 = Date.now();
    for (;;) {
      try {
        const s = this.stats();
        if (Date.parse(s.time) > t0) return s;
      } catch {
        /* being renamed */
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** SIGTERM; resolves with the exit status. */
  async stop(timeoutMs = 10_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return this.exitPromise;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc?.kill('SIGKILL'), timeoutMs);
    const e = await this.exitPromise;
    clearTimeout(t);
    return e;
  }

  kill(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    this.proc?.kill('SIGKILL');
    return this.exitPromise;
  }
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
