/**
 * libvirt for the tests: start Debian's libvirtd and virtlogd without systemd (`-d`), domains
 * from the README's own XML (contrib/libvirt-domain.xml, placeholders filled in), and stop
 * whatever was started here — domains destroyed and undefined, daemons this module started
 * stopped (a daemon that was already running is left as it was).
 */
import { execFile, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cleanupOnExit, repoRoot } from './launcher';

export const LIBVIRT_URI = 'qemu:///system';
const DAEMONS = [
  { name: 'virtlogd', pidFile: '/run/virtlogd.pid' },
  { name: 'libvirtd', pidFile: '/run/libvirtd.pid' },
] as const;

export interface RunResult {
  rc: number;
  out: string;
}

/** Runs a command; never throws (rc -1 when it could not run or timed out). */
export function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, encoding: 'utf8' }, (err, stdout, stderr) => {
      const out = `${stdout}${stderr}`.trim();
      if (!err) resolve({ rc: 0, out });
      else resolve({ rc: typeof err.code === 'number' ? err.code : -1, out: `${out}${out ? '\n' : ''}${err.message}` });
    });
  });
}

export function virsh(args: string[], timeoutMs = 60_000): Promise<RunResult> {
  return run('virsh', ['-c', LIBVIRT_URI, ...args], timeoutMs);
}

function findBinary(name: string): string | null {
  for (const dir of ['/usr/sbin', '/usr/bin', '/sbin', '/bin']) {
    const p = path.join(dir, name);
    if (fs.existsSync(p)) return p;
  }
  return null;
}

/** A live process (a zombie is not: the daemons' parent here may reap late). */
function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

function pidFrom(file: string): number | null {
  try {
    const pid = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 && alive(pid) ? pid : null;
  } catch {
    return null;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class Libvirt {
  /** pids of the daemons started here, stopped by stop() */
  private readonly started: { name: string; pid: number }[] = [];
  private readonly domains = new Set<string>();
  private stopped = false;

  private constructor() {
    cleanupOnExit(() => this.stopSync());
  }

  /**
   * Connects to libvirtd, starting virtlogd and libvirtd first when they are not running.
   * Throws with the reason when libvirtd cannot be had (binaries missing, daemon does not start).
   */
  static async start(timeoutMs = 30_000): Promise<Libvirt> {
    for (const b of ['libvirtd', 'virtlogd', 'virsh']) {
      if (findBinary(b) === null) throw new Error(`${b} not installed (Debian packages libvirt-daemon-system, libvirt-clients)`);
    }
    const lv = new Libvirt();
    for (const d of DAEMONS) {
      if (pidFrom(d.pidFile) !== null) continue;
      const r = await run(findBinary(d.name)!, ['-d'], 20_000);
      if (r.rc !== 0) throw new Error(`${d.name} -d failed (rc ${r.rc}): ${r.out}`);
      const end = Date.now() + timeoutMs;
      let pid: number | null = null;
      while ((pid = pidFrom(d.pidFile)) === null && Date.now() < end) await sleep(100);
      if (pid === null) throw new Error(`${d.name} -d: no live process in ${d.pidFile} after ${timeoutMs} ms`);
      lv.started.push({ name: d.name, pid });
    }
    const end = Date.now() + timeoutMs;
    for (;;) {
      const r = await virsh(['version'], 10_000);
      if (r.rc === 0) break;
      if (Date.now() > end) {
        await lv.stop();
        throw new Error(`libvirtd does not answer on ${LIBVIRT_URI}: ${r.out}`);
      }
      await sleep(250);
    }
    return lv;
  }

  /** which daemons were started here (the rest were running already) */
  get startedDaemons(): string[] {
    return this.started.map((d) => `${d.name} (pid ${d.pid})`);
  }

  /** virsh define + start; fails with QEMU's log of the domain when it does not start */
  async defineAndStart(name: string, xmlFile: string): Promise<void> {
    const d = await virsh(['define', xmlFile]);
    if (d.rc !== 0) throw new Error(`virsh define ${xmlFile}: ${d.out}`);
    this.domains.add(name);
    const s = await virsh(['start', name], 90_000);
    if (s.rc !== 0) throw new Error(`virsh start ${name}: ${s.out}\n--- /var/log/libvirt/qemu/${name}.log ---\n${this.qemuLog(name)}`);
  }

  qemuLog(name: string, lines = 20): string {
    try {
      return fs.readFileSync(`/var/log/libvirt/qemu/${name}.log`, 'utf8').split('\n').slice(-lines).join('\n');
    } catch (e) {
      return `(${(e as Error).message})`;
    }
  }

  async domainState(name: string): Promise<string> {
    return (await virsh(['domstate', name], 10_000)).out;
  }

  /** destroys and undefines every domain defined here, then stops the daemons started here */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const name of this.domains) {
      await virsh(['destroy', name], 30_000);
      await virsh(['undefine', name], 30_000);
    }
    this.domains.clear();
    for (const d of [...this.started].reverse()) {
      try {
        process.kill(d.pid, 'SIGTERM');
      } catch {
        continue;
      }
      const end = Date.now() + 15_000;
      while (alive(d.pid) && Date.now() < end) await sleep(100);
      if (alive(d.pid)) process.kill(d.pid, 'SIGKILL');
    }
    this.started.length = 0;
  }

  /** at exit: the same, synchronously */
  private stopSync(): void {
    if (this.stopped) return;
    this.stopped = true;
    for (const name of this.domains) {
      for (const cmd of ['destroy', 'undefine']) {
        try {
          execFileSync('virsh', ['-c', LIBVIRT_URI, cmd, name], { stdio: 'ignore', timeout: 30_000 });
        } catch {
          /* gone already */
        }
      }
    }
    for (const d of [...this.started].reverse()) {
      try {
        process.kill(d.pid, 'SIGTERM');
      } catch {
        /* gone */
      }
    }
  }
}

/** The README's domain XML (contrib/libvirt-domain.xml) with its {{…}} placeholders filled in. */
export function domainXml(values: Record<string, string>): string {
  const template = fs.readFileSync(path.join(repoRoot(), 'contrib', 'libvirt-domain.xml'), 'utf8');
  const xml = template.replace(/\{\{([A-Z_]+)\}\}/g, (_, key: string) => {
    const v = values[key];
    if (v === undefined) throw new Error(`contrib/libvirt-domain.xml: no value for {{${key}}}`);
    return v.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
  });
  const unused = Object.keys(values).filter((k) => !template.includes(`{{${k}}}`));
  if (unused.length > 0) throw new Error(`contrib/libvirt-domain.xml has no {{${unused.join('}}, {{')}}}`);
  return xml;
}
