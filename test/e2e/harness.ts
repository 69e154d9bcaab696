/**
 * Shared set-up for the end-to-end tests: a real elastic-vhost process and real QEMU guests
 * (Linux virtio-net driver) attached to it through vhost-user sockets.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import assert from 'node:assert/strict';
import { macForIndex } from '../../qemu-glue/args';
import { GuestVM, ensureGuestImages, killAll } from '../../qemu-glue/launcher';
import { SwitchProcess } from '../../qemu-glue/switch-process';

export const echo = process.env.ELASTIC_VHOST_ECHO === '1';

/** The first of the commands (with the Debian package that has it) not on PATH, said as a skip reason; null when all are. */
export function missingCommand(commands: readonly (readonly [cmd: string, pkg: string])[]): string | null {
  for (const [cmd, pkg] of commands) {
    try {
      execFileSync('which', [cmd], { stdio: 'ignore' });
    } catch {
      return `the ${cmd} command (${pkg}) is missing`;
    }
  }
  return null;
}

export function workDir(name: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `ev-${name}-`));
}

export async function startSwitch(dir: string, n: number, extraArgs: string[] = []): Promise<SwitchProcess> {
  ensureGuestImages();
  const sw = new SwitchProcess({ workDir: dir, sockets: Array.from({ length: n }, (_, i) => `vm${i}.sock`), extraArgs, echo });
  await sw.start();
  return sw;
}

/**
 * Boots guest i (address 10.0.0.(i+1)/24, MAC from macForIndex(i+1)) on the switch's socket i.
 * packed: `virtio-net-pci,packed=on` (the driver negotiates VIRTIO_F_RING_PACKED).
 */
export async function startGuest(sw: SwitchProcess, i: number, name: string, socketIndex = i, opts: { packed?: boolean } = {}): Promise<GuestVM> {
  const vm = await GuestVM.start({
    name,
    params: { ip: `10.0.0.${i + 1}/24` },
    nics: [{ kind: 'vhost-user', id: 'n0', socketPath: sw.socketPaths[socketIndex], mac: macForIndex(i + 1), ...(opts.packed ? { toggles: { packed: true } } : {}) }],
  });
  return vm;
}

export async function ready(...vms: GuestVM[]): Promise<void> {
  const rs = await Promise.all(vms.map((v) => v.waitReady(90_000)));
  for (const [k, r] of rs.entries()) console.log(`# ${vms[k].name}: EV-READY after ${r.bootMs} ms (${vms[k].accel})`);
}

export interface PingResult {
  transmitted: number;
  received: number;
  avgMs: number;
  output: string;
}

export async function ping(vm: GuestVM, ip: string, count = 5, timeoutMs = 30_000): Promise<PingResult> {
  const r = await vm.exec(`ping -c ${count} -i 0.2 -W 3 ${ip}`, { timeoutMs });
  const m = /(\d+) packets transmitted, (\d+) packets received/.exec(r.output);
  const rtt = /min\/avg\/max = [\d.]+\/([\d.]+)\//.exec(r.output);
  assert.ok(m, `ping output: ${r.output}`);
  return { transmitted: Number(m[1]), received: Number(m[2]), avgMs: rtt ? Number(rtt[1]) : NaN, output: r.output };
}

/** Ping until one reply comes back (links come up, ARP resolves), then stop. */
export async function waitPing(vm: GuestVM, ip: string, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const r = await vm.exec(`ping -c 1 -W 1 ${ip}`, { timeoutMs: 10_000 });
    if (r.rc === 0) return;
    if (Date.now() > end) throw new Error(`${vm.name}: no ping reply from ${ip} within ${timeoutMs} ms:\n${r.output}`);
  }
}

/**
 * A (10.0.0.1) and B (10.0.0.2) reach each other, then 10 pings each way: every one answered.
 * label: printed before the round-trip averages.
 */
export async function pingBothWays(a: GuestVM, b: GuestVM, label = ''): Promise<void> {
  await waitPing(a, '10.0.0.2');
  const ab = await ping(a, '10.0.0.2', 10);
  const ba = await ping(b, '10.0.0.1', 10);
  console.log(`# ${label}ping A->B avg ${ab.avgMs} ms, B->A avg ${ba.avgMs} ms`);
  assert.equal(ab.received, ab.transmitted, ab.output);
  assert.equal(ba.received, ba.transmitted, ba.output);
}

/** Remembers whether a test failed, so teardown prints consoles and logs and keeps the work dir. */
export function failureTracker(): { failed: boolean; guard: (fn: () => Promise<void>) => Promise<void> } {
  const t = {
    failed: false,
    guard: async (fn: () => Promise<void>): Promise<void> => {
      try {
        await fn();
      } catch (e) {
        t.failed = true;
        throw e;
      }
    },
  };
  return t;
}

export async function teardown(vms: (GuestVM | undefined)[], sw: SwitchProcess | undefined, failed: boolean, dir: string): Promise<void> {
  for (const vm of vms) {
    if (!vm) continue;
    if (failed) console.log(`# ${vm.name} console (${vm.consoleLog}):\n${vm.consoleTail(25)}`);
    await vm.shutdown();
    if (!failed) vm.removeWorkDir();
  }
  if (sw) {
    if (failed) {
      fs.writeFileSync(path.join(dir, 'switch.log'), sw.lines.join('\n') + '\n');
      console.log(`# switch log (last 40 lines; all of it in ${path.join(dir, 'switch.log')}):\n${sw.log.slice(-40).join('\n')}`);
    }
    await sw.stop();
  }
  killAll();
  if (!failed) fs.rmSync(dir, { recursive: true, force: true });
}
