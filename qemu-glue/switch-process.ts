/**
 * Run the elastic-vhost command as a child process (tests, demo): start it with N server-mode
 * sockets in a work directory, wait until it listens, read its counters (--stats-file), stop it
 * with SIGTERM (it must exit 0) or kill it. Every process started here is SIGKILLed on exit.
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
}

export class SwitchProcess {
  readonly log: string[] = [];
  readonly statsFile: string;
  readonly socketPaths: string[];
  readonly clientSocketPaths: string[];
  private proc: ChildProcess | null = null;
  private exitPromise: Promise<{ code: number | null; signal: NodeJS.Signals | null }> = Promise.resolve({ code: null, signal: null });
  private waiters: { re: RegExp; from: number; resolve: (l: string) => void }[] = [];

  constructor(private readonly o: SwitchProcessOptions) {
    this.statsFile = path.join(o.workDir, 'switch-stats.json');
    this.socketPaths = o.sockets.map((s) => path.join(o.workDir, s));
    this.clientSocketPaths = (o.clientSockets ?? []).map((s) => path.join(o.workDir, s));
  }

  static cliPath(): string {
    return path.join(repoRoot(), 'dist', 'src', 'cli', 'main.js');
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
    const p = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
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
        this.log.push(line);
        if (this.o.echo) process.stderr.write(`[switch] ${line}\n`);
        this.waiters = this.waiters.filter((w) => {
          if (this.log.length - 1 >= w.from && w.re.test(line)) {
            w.resolve(line);
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

  /** Resolves with the first log line (since line `from`) matching re. */
  waitLog(re: RegExp, timeoutMs = 15_000, from = 0): Promise<string> {
    for (let i = from; i < this.log.length; i++) if (re.test(this.log[i])) return Promise.resolve(this.log[i]);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`switch log: no line matching ${re} within ${timeoutMs} ms; last lines:\n${this.log.slice(-15).join('\n')}`));
      }, timeoutMs);
      const waiter = {
        re,
        from,
        resolve: (l: string) => {
          clearTimeout(t);
          resolve(l);
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
