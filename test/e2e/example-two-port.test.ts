/**
 * examples/two-port-switch.ts as a program of its own (node dist/examples/two-port-switch.js DIR)
 * with two real QEMU guests on its two sockets: they ping each other both ways with no loss, what
 * the program prints tells of both ports up and of each guest's MAC learned on its port, and
 * SIGTERM closes it with exit code 0.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { macForIndex } from '../../qemu-glue/args';
import { ensureGuestImages, GuestVM, killAll, repoRoot } from '../../qemu-glue/launcher';
import { echo, failureTracker, ready, workDir, pingBothWays } from './harness';

/** The example running as a child process: its output lines, a wait for one, SIGTERM. */
class ExampleProcess {
  readonly lines: string[] = [];
  private readonly proc: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private partial = '';

  constructor(dir: string) {
    this.proc = spawn(process.execPath, [path.join(repoRoot(), 'dist', 'examples', 'two-port-switch.js'), dir], { stdio: ['ignore', 'pipe', 'pipe'] });
    // 'close', not 'exit': its output is all read by then
    this.exited = new Promise((resolve) => this.proc.on('close', (code, signal) => resolve({ code, signal })));
    const onData = (d: Buffer): void => {
      this.partial += d.toString();
      const lines = this.partial.split('\n');
      this.partial = lines.pop()!;
      for (const l of lines) {
        this.lines.push(l);
        if (echo) process.stderr.write(`[example] ${l}\n`);
      }
    };
    this.proc.stdout!.on('data', onData);
    this.proc.stderr!.on('data', onData);
  }

  async waitLine(match: (l: string) => boolean, what: string, timeoutMs = 15_000): Promise<string> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const l = this.lines.find(match);
      if (l !== undefined) return l;
      if (this.proc.exitCode !== null || Date.now() > end) throw new Error(`the example printed no line ${what} (exit ${this.proc.exitCode}); it printed:\n${this.lines.slice(-20).join('\n')}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async stop(timeoutMs = 10_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), timeoutMs);
    const e = await this.exited;
    clearTimeout(t);
    return e;
  }
}

describe('examples/two-port-switch with two QEMU guests', { timeout: 300_000 }, () => {
  const dir = workDir('example');
  let ex: ExampleProcess | undefined;
  let a: GuestVM | undefined;
  let b: GuestVM | undefined;
  const tracker = failureTracker();
  const guard = tracker.guard;
  const guest = (i: number, name: string): Promise<GuestVM> =>
    GuestVM.start({ name, params: { ip: `10.0.0.${i + 1}/24` }, nics: [{ kind: 'vhost-user', id: 'n0', socketPath: path.join(dir, `vm${i}.sock`), mac: macForIndex(i + 1) }] });

  before(async () => {
    ensureGuestImages();
    ex = new ExampleProcess(dir);
    await ex.waitLine((l) => l === `listening on ${path.join(dir, 'vm1.sock')}`, 'listening on vm1.sock');
    [a, b] = await Promise.all([guest(0, 'example-a'), guest(1, 'example-b')]);
    await ready(a, b);
  });

  after(async () => {
    for (const vm of [a, b]) {
      if (!vm) continue;
      if (tracker.failed) console.log(`# ${vm.name} console (${vm.consoleLog}):\n${vm.consoleTail(25)}`);
      await vm.shutdown();
      if (!tracker.failed) vm.removeWorkDir();
    }
    if (ex) {
      if (tracker.failed) console.log(`# the example's output (last 40 lines):\n${ex.lines.slice(-40).join('\n')}`);
      await ex.stop();
    }
    killAll();
    if (!tracker.failed) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('ping both ways with 0 % loss', () =>
    guard(async () => {
      await pingBothWays(a!, b!);
    }));

  it('the events it prints: both ports up, each guest\'s MAC learned on its own port', () =>
    guard(async () => {
      for (const [i, port] of [[1, 'vm0'], [2, 'vm1']] as const) {
        await ex!.waitLine((l) => new RegExp(`^event: ${port} up as connection \\d+$`).test(l), `of ${port} up`);
        // MAC events come from the switch's look at its table, once a second
        await ex!.waitLine((l) => l === `event: ${macForIndex(i)} learned on ${port}`, `of ${macForIndex(i)} learned on ${port}`, 5_000);
      }
    }));

  it('SIGTERM closes it with exit code 0 after printing its counters', () =>
    guard(async () => {
      const e = await ex!.stop();
      assert.deepEqual(e, { code: 0, signal: null }, ex!.lines.slice(-10).join('\n'));
      const line = await ex!.waitLine((l) => l.startsWith('closing: '), 'closing: …', 1000);
      const m = /^closing: (\d+) frames in, (\d+) dropped$/.exec(line);
      assert.ok(m, line);
      console.log(`# ${line}`);
      assert.ok(Number(m[1]) >= 40, `at least the 40 pings' frames went through it: ${line}`);
      assert.deepEqual(fs.readdirSync(dir).filter((f) => f.endsWith('.sock')), [], 'its sockets removed');
    }));
});
