/**
 * The VXLAN uplink against the Linux fabric, not against itself. In namespaces made by this test:
 *
 *   root ns                                   ns FAB
 *   guest A ─ elastic-vhost A ── VTEP .1 ═veth═ .2 VTEP ── kernel vxlan0 (VNI 42) ─ br0 ─ veth ─ host 10.77.0.9
 *                                   ║
 *                                   ╚═veth═ .6 VTEP ── elastic-vhost B (ns SW2) ─ guest B
 *
 * Guest A pings the kernel fabric's host and runs iperf3 with it both ways; guest B, behind a second
 * elastic-vhost process in its own namespace, pings guest A over VXLAN. The underlay veths have MTU
 * 1550 so a guest's 1500-byte frames fit with the 50 bytes of VXLAN encapsulation.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { macForIndex } from '../../qemu-glue/args';
import { GuestVM } from '../../qemu-glue/launcher';
import { SwitchProcess } from '../../qemu-glue/switch-process';
import { echo, failureTracker, missingCommand, ping, ready, startSwitch, teardown, waitPing, workDir } from './harness';

const id = process.pid % 100000;
const FAB = `evvxf${process.pid}`;
const SW2 = `evvxs${process.pid}`;
const vethA = `evxa${id}`;
const vethB = `evxb${id}`;
const HOST = '10.77.0.9';
const UNDERLAY_MTU = 1550;

function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** a 192.168.N.0/29 no address or route of this host is in */
function freeNet(): string {
  const used = ip('-4', '-o', 'addr', 'show') + ip('-4', 'route', 'show', 'table', 'all');
  for (let n = 213; n < 250; n++) if (!used.includes(`192.168.${n}.`)) return `192.168.${n}`;
  throw new Error('no free 192.168.213-249.0/29 for the underlay');
}

function cleanup(): void {
  for (const ns of [FAB, SW2]) {
    try {
      ip('netns', 'del', ns);
    } catch {
      /* not made, or gone */
    }
  }
  for (const l of [vethA, vethB]) {
    try {
      ip('link', 'del', l);
    } catch {
      /* went with its namespace's end */
    }
  }
}

function missing(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces, veth, kernel vxlan)';
  const cmd = missingCommand([['ip', 'iproute2'], ['iperf3', 'iperf3'], ['busybox', 'busybox-static'], ['ethtool', 'ethtool']]);
  if (cmd !== null) return cmd;
  try {
    ip('netns', 'add', FAB);
  } catch (e) {
    return `cannot create a network namespace: ${(e as Error).message}`;
  }
  try {
    ip('-n', FAB, 'link', 'add', 'vxlan0', 'type', 'vxlan', 'id', '42', 'dstport', '4789');
  } catch (e) {
    cleanup();
    return `this kernel cannot make a vxlan device (ip link add … type vxlan): ${(e as Error).message.trim()}`;
  }
  return null;
}

const skip = missing();
if (skip) console.log(`# skipping the VXLAN uplink test: ${skip}`);

/** the underlay and the kernel fabric; returns the switch VTEP addresses */
function makeNet(net: string): { a: string; fab: string; b: string } {
  const a = `${net}.1`;
  const fab = `${net}.2`;
  const bRoot = `${net}.5`;
  const b = `${net}.6`;
  // root ↔ FAB: switch A's VTEP and the kernel's
  ip('link', 'add', vethA, 'mtu', String(UNDERLAY_MTU), 'type', 'veth', 'peer', 'name', 'u0', 'mtu', String(UNDERLAY_MTU), 'netns', FAB);
  ip('addr', 'add', `${a}/30`, 'dev', vethA);
  ip('link', 'set', vethA, 'up');
  ip('-n', FAB, 'addr', 'add', `${fab}/30`, 'dev', 'u0');
  for (const l of ['lo', 'u0']) ip('-n', FAB, 'link', 'set', l, 'up');
  // the fabric: vxlan0 made by missing() gets its addresses now; on a bridge with the host behind a veth
  ip('-n', FAB, 'link', 'del', 'vxlan0');
  ip('-n', FAB, 'link', 'add', 'vxlan0', 'mtu', '1500', 'type', 'vxlan', 'id', '42', 'local', fab, 'remote', a, 'dstport', '4789', 'dev', 'u0');
  ip('-n', FAB, 'link', 'add', 'br0', 'type', 'bridge');
  ip('-n', FAB, 'link', 'set', 'vxlan0', 'master', 'br0');
  ip('-n', FAB, 'link', 'add', 'hv0', 'type', 'veth', 'peer', 'name', 'host0');
  ip('-n', FAB, 'link', 'set', 'hv0', 'master', 'br0');
  ip('-n', FAB, 'addr', 'add', `${HOST}/24`, 'dev', 'host0');
  for (const l of ['br0', 'vxlan0', 'hv0', 'host0']) ip('-n', FAB, 'link', 'set', l, 'up');
  // Over veths nothing ever completes a partial checksum: the host's TCP segments would leave the
  // namespace, VXLAN-encapsulated, with the inner checksum still a placeholder (a NIC would fill it
  // in). So the host's stack sums them itself, as it would for a NIC without checksum offload.
  execFileSync('ip', ['netns', 'exec', FAB, 'ethtool', '-K', 'host0', 'tx', 'off'], { stdio: 'ignore' });
  // root ↔ SW2: switch B's VTEP in a namespace of its own
  ip('netns', 'add', SW2);
  ip('link', 'add', vethB, 'mtu', String(UNDERLAY_MTU), 'type', 'veth', 'peer', 'name', 'u1', 'mtu', String(UNDERLAY_MTU), 'netns', SW2);
  ip('addr', 'add', `${bRoot}/30`, 'dev', vethB);
  ip('link', 'set', vethB, 'up');
  ip('-n', SW2, 'addr', 'add', `${b}/30`, 'dev', 'u1');
  for (const l of ['lo', 'u1']) ip('-n', SW2, 'link', 'set', l, 'up');
  ip('-n', SW2, 'route', 'add', `${net}.0/30`, 'via', bRoot);
  return { a, fab, b };
}

function startGuestAt(sw: SwitchProcess, n: number, name: string): Promise<GuestVM> {
  return GuestVM.start({
    name,
    params: { ip: `10.77.0.${n}/24` },
    nics: [{ kind: 'vhost-user', id: 'n0', socketPath: sw.socketPaths[0], mac: macForIndex(n) }],
  });
}

/** iperf3 -s -1 in the fabric namespace, resolved once it listens; done: its exit */
async function hostServer(): Promise<{ done: Promise<{ rc: number | null; out: string }>; kill: () => void }> {
  const p = spawn('ip', ['netns', 'exec', FAB, 'iperf3', '-s', '-1', '-p', '5201', '--forceflush'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const done = new Promise<{ rc: number | null; out: string }>((res) => p.on('exit', (rc) => res({ rc, out })));
  await new Promise<void>((res, rej) => {
    const t = setTimeout(() => rej(new Error(`iperf3 -s did not start: ${out}`)), 10_000);
    const on = (d: Buffer) => {
      out += d.toString();
      if (/Server listening/.test(out)) {
        clearTimeout(t);
        res();
      }
    };
    p.stdout.on('data', on);
    p.stderr.on('data', on);
  });
  return { done, kill: () => void (p.exitCode === null && p.kill()) };
}

interface IperfJson {
  error?: string;
  end: { sum_sent: { bits_per_second: number; retransmits?: number }; sum_received: { bits_per_second: number; bytes: number } };
}

describe('VXLAN uplink to a Linux kernel vxlan fabric, and to a second elastic-vhost', { timeout: 400_000, skip: skip ?? false }, () => {
  const dirA = workDir('vxlan-a');
  const dirB = workDir('vxlan-b');
  const t = failureTracker();
  let swA: SwitchProcess | undefined;
  let swB: SwitchProcess | undefined;
  let a: GuestVM | undefined;
  let b: GuestVM | undefined;
  let fabVtep = '';

  before(async () => {
    try {
      const vtep = makeNet(freeNet());
      fabVtep = vtep.fab;
      console.log(`# underlay: switch A ${vtep.a}, kernel vxlan ${vtep.fab}, switch B ${vtep.b} (ns ${SW2}); MTU ${UNDERLAY_MTU}`);
      swA = await startSwitch(dirA, 1, ['--vxlan', `${vtep.a},vni=42,remote=${vtep.fab},remote=${vtep.b},mtu=${UNDERLAY_MTU}`]);
      await swA.waitLog(/vxlan:42: uplink attached, VTEP/);
      swB = new SwitchProcess({ workDir: dirB, sockets: ['vm0.sock'], extraArgs: ['--vxlan', `${vtep.b},vni=42,remote=${vtep.a},mtu=${UNDERLAY_MTU}`], echo, netns: SW2 });
      await swB.start();
      await swB.waitLog(/vxlan:42: uplink attached, VTEP/);
      a = await startGuestAt(swA, 1, 'vxlan-a');
      b = await startGuestAt(swB, 2, 'vxlan-b');
      await ready(a, b);
    } catch (e) {
      t.failed = true;
      throw e;
    }
  });

  after(async () => {
    try {
      await teardown([a], swA, t.failed, dirA);
      await teardown([b], swB, t.failed, dirB);
    } finally {
      cleanup();
    }
  });

  it('guest A pings the host behind the kernel vxlan device: 0 % loss, full-size frames too', () =>
    t.guard(async () => {
      await waitPing(a!, HOST);
      const r = await ping(a!, HOST, 10);
      console.log(`# guest A → ${HOST}: ${r.received}/${r.transmitted}, avg ${r.avgMs} ms`);
      assert.equal(r.received, r.transmitted, r.output);
      // 1472 bytes of ICMP payload: a 1514-byte frame, the largest a 1550 underlay carries
      const big = await a!.exec(`ping -c 5 -i 0.2 -W 3 -s 1472 ${HOST}`, { timeoutMs: 30_000 });
      assert.match(big.output, /5 packets transmitted, 5 packets received, 0% packet loss/, big.output);
      const back = execFileSync('ip', ['netns', 'exec', FAB, 'busybox', 'ping', '-c', '5', '-W', '3', '10.77.0.1'], { encoding: 'utf8' });
      assert.match(back, /5 packets transmitted, 5 packets received, 0% packet loss/, back);
    }));

  for (const reverse of [false, true]) {
    it(`iperf3 TCP ${reverse ? 'host → guest A (-R)' : 'guest A → host'}, 5 s, finishes without error`, () =>
      t.guard(async () => {
        const srv = await hostServer();
        let r;
        try {
          r = await a!.exec(`iperf3 -c ${HOST} -p 5201 -t 5 -J${reverse ? ' -R' : ''}`, { timeoutMs: 60_000 });
        } finally {
          if (r === undefined) srv.kill(); // the next run needs the port
        }
        assert.equal(r.rc, 0, r.output);
        const j = JSON.parse(r.output) as IperfJson;
        assert.equal(j.error, undefined, j.error);
        const recv = j.end.sum_received.bits_per_second / 1e6;
        console.log(`# iperf3 ${reverse ? 'host → guest' : 'guest → host'} over VXLAN: ${recv.toFixed(1)} Mbit/s received, ${j.end.sum_sent.retransmits ?? 0} retransmits`);
        assert.ok(recv > 1, `${recv} Mbit/s`);
        const s = await srv.done;
        assert.equal(s.rc, 0, s.out);
      }));
  }

  it('the counters show frames encapsulated and decapsulated, none dropped, the TSO frames segmented', () =>
    t.guard(async () => {
      const st = await swA!.freshStats();
      const v = st.vxlan;
      console.log(`# switch A vxlan: ${JSON.stringify(v.counters)} offload ${JSON.stringify(v.offload)} vteps ${JSON.stringify(v.vteps)}`);
      const c = v.counters;
      assert.ok(c.encapDatagrams > 1000 && c.decapFrames > 1000, JSON.stringify(c));
      for (const k of ['txTooBig', 'txNoRemote', 'txBad', 'txSendErrors', 'rxBadLength', 'rxBadFlags', 'rxWrongVni', 'rxUnknownVtep']) assert.equal(c[k], 0, k);
      assert.equal(v.offload.rxOffloadDropped, 0);
      assert.ok(v.offload.rxSegmented > 0, 'the guest\'s TSO frames were segmented before encapsulation');
      assert.ok(v.macs.some((m: { mac: string; vtep: string }) => m.vtep === fabVtep), `the host's MAC learned with the kernel's VTEP: ${JSON.stringify(v.macs)}`);
    }));

  it('guest B, behind a second elastic-vhost in another namespace, pings guest A over VXLAN', () =>
    t.guard(async () => {
      await waitPing(b!, '10.77.0.1');
      const r = await ping(b!, '10.77.0.1', 10);
      console.log(`# guest B → guest A: ${r.received}/${r.transmitted}, avg ${r.avgMs} ms`);
      assert.equal(r.received, r.transmitted, r.output);
      const st = await swB!.freshStats();
      assert.ok(st.vxlan.counters.encapDatagrams >= 10 && st.vxlan.counters.decapFrames >= 10, JSON.stringify(st.vxlan.counters));
    }));
});
