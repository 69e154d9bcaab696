/**
 * Checksum and TSO offloads between real guests:
 *  - A and A2: default virtio-net (CSUM, GUEST_CSUM, HOST/GUEST_TSO4/6 negotiated): TSO frames
 *    pass between them as they are
 *  - B: every offload off (csum, guest_csum, guest_tso4/6, host_tso4/6): the switch completes
 *    checksums and segments A's TSO frames for it
 * Ping and iperf3 TCP both ways between A and B, and A <-> A2 for comparison.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { macForIndex } from '../../qemu-glue/args';
import { AgentTimeoutError, GuestVM, ensureGuestImages } from '../../qemu-glue/launcher';
import { SwitchProcess } from '../../qemu-glue/switch-process';
import { echo, ping, ready, teardown, waitPing, workDir, failureTracker } from './harness';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

const IPERF_SECONDS = 4;

describe('offloads: capable and incapable guests on one switch', { timeout: 400_000 }, () => {
  const dir = workDir('offload');
  let sw: SwitchProcess | undefined;
  const vms: GuestVM[] = [];
  const tracker = failureTracker();
  const guard = tracker.guard;
  const nic = (i: number, toggles = {}) => ({ kind: 'vhost-user' as const, id: 'n0', socketPath: sw!.socketPaths[i], mac: macForIndex(i + 1), toggles });
  const portCounters = async (name: string) => {
    const st = await sw!.freshStats();
    return st.vhostUser.find((p: { name: string }) => p.name === name).counters;
  };

  /**
   * One agent command's worth of work, tried again only when the guests' agent channel (a serial
   * line) lost it: under TCG a busy guest sometimes loses part of a line, so a command never
   * starts or its end is never reported (AgentTimeoutError, or no "Server listening" from a
   * server that did not end). That is the test rig, not the switch. Anything else — iperf3
   * failing, no throughput, a checksum error — is the switch's and fails at once.
   */
  const onAgentTimeout = async <T>(what: string, vmsInvolved: GuestVM[], fn: (attempt: number) => Promise<T>): Promise<T> => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn(attempt);
      } catch (e) {
        if (!(e instanceof AgentTimeoutError) || attempt >= 2) throw e;
        console.log(`# ${what}, attempt ${attempt}: agent timeout (${e.message.split('\n')[0]}); agent: ${vmsInvolved.flatMap((v) => v.agentMisc.slice(-2)).join(' | ')}`);
        await sleep(1000);
      }
    }
  };

  /** a guest's /proc/net/snmp line for one protocol, as name → value */
  const snmp = (vm: GuestVM, proto: 'Tcp' | 'Ip'): Promise<Record<string, number>> =>
    onAgentTimeout(`${vm.name}: read /proc/net/snmp`, [vm], async () => {
      const r = await vm.exec(`grep '^${proto}:' /proc/net/snmp`, { timeoutMs: 30_000 });
      assert.equal(r.rc, 0, r.output);
      const lines = r.output.trim().split('\n').filter((l) => l.startsWith(`${proto}:`));
      assert.equal(lines.length, 2, r.output);
      const names = lines[0].split(/\s+/).slice(1);
      const values = lines[1].split(/\s+/).slice(1).map(Number);
      assert.equal(names.length, values.length, r.output);
      return Object.fromEntries(names.map((n, i) => [n, values[i]]));
    });

  /**
   * iperf3 TCP from → to (server at ip); returns Mbit/s received. Retried only on an agent
   * timeout. Fails when iperf3 fails or moves nothing, and when either guest's TCP counted a
   * checksum error meanwhile (InCsumErrors: a segment the switch segmented or checksummed wrong
   * is dropped by the receiving kernel and retransmitted, which iperf3 alone would not show).
   */
  const iperf = async (from: GuestVM, to: GuestVM, ip: string): Promise<number> => {
    const [toBefore, fromBefore] = [await snmp(to, 'Tcp'), await snmp(from, 'Tcp')];
    const mbps = await onAgentTimeout(`iperf3 ${from.name} -> ${to.name}`, [from, to], async (attempt) => {
      // a new port for a second attempt: the first one's server may still hold its port
      const port = 5200 + attempt;
      const server = to.spawn(`iperf3 -s -1 -p ${port} --forceflush`);
      try {
        try {
          await server.waitForLine(/Server listening/, 15_000);
        } catch (e) {
          // the server ended without listening: that is iperf3's failure, not the agent's
          const ended = await Promise.race([server.done, sleep(0).then(() => null)]);
          if (ended !== null) throw e;
          throw new AgentTimeoutError(`iperf3 -s -p ${port} (no "Server listening")`, server.lines);
        }
        const r = await from.exec(`iperf3 -c ${ip} -p ${port} -t ${IPERF_SECONDS} -J`, { timeoutMs: 60_000 });
        assert.equal(r.rc, 0, `iperf3 client failed: ${r.output}`);
        const j = JSON.parse(r.output);
        assert.equal(j.error, undefined, `iperf3: ${j.error}`);
        const v = j.end.sum_received.bits_per_second / 1e6;
        console.log(`# iperf3 TCP ${from.name} -> ${to.name}: ${v.toFixed(1)} Mbit/s, ${j.end.sum_sent.retransmits ?? 0} retransmits`);
        assert.ok(v > 0, `iperf3 ${from.name} -> ${to.name}: no throughput`);
        const end = await Promise.race([server.done, sleep(15_000).then(() => null)]);
        if (end === null) console.log(`# ${to.name}: the iperf3 server's end was not reported (agent line lost)`);
        else assert.equal(end.rc, 0, `iperf3 server on ${to.name}: ${end.output}`);
        return v;
      } catch (e) {
        server.cancel('KILL'); // not awaited: a garbled line may have lost the id, so no EV-DONE comes
        throw e;
      }
    });
    const [toAfter, fromAfter] = [await snmp(to, 'Tcp'), await snmp(from, 'Tcp')];
    assert.ok('InCsumErrors' in toAfter, `${to.name}'s /proc/net/snmp has no Tcp InCsumErrors: ${JSON.stringify(toAfter)}`);
    assert.equal(toAfter.InCsumErrors - toBefore.InCsumErrors, 0, `TCP checksum errors at the receiver ${to.name}`);
    assert.equal(fromAfter.InCsumErrors - fromBefore.InCsumErrors, 0, `TCP checksum errors at the sender ${from.name} (its ACKs)`);
    return mbps;
  };

  before(async () => {
    ensureGuestImages();
    sw = new SwitchProcess({ workDir: dir, sockets: ['a.sock', 'b.sock', 'a2.sock'], echo });
    await sw.start();
    const off = { csum: false, guest_csum: false, guest_tso4: false, guest_tso6: false, host_tso4: false, host_tso6: false };
    vms.push(await GuestVM.start({ name: 'offload-a', params: { ip: '10.0.0.1/24' }, nics: [nic(0)] }));
    vms.push(await GuestVM.start({ name: 'offload-b', params: { ip: '10.0.0.2/24' }, nics: [nic(1, off)] }));
    vms.push(await GuestVM.start({ name: 'offload-a2', params: { ip: '10.0.0.3/24' }, nics: [nic(2)] }));
    await ready(...vms);
  });

  after(() => teardown(vms, sw, tracker.failed, dir));

  it('A and A2 negotiated the offloads, B none of them', () =>
    guard(async () => {
      const feat = (port: string) => sw!.log.filter((l) => l.includes(`${port}: features `)).at(-1) ?? '';
      await sw!.waitLog(/vm2: features /, 30_000);
      for (const p of ['vm0', 'vm2']) {
        for (const f of ['NET_F_CSUM', 'NET_F_GUEST_CSUM', 'NET_F_HOST_TSO4', 'NET_F_GUEST_TSO4', 'NET_F_HOST_TSO6', 'NET_F_GUEST_TSO6']) {
          assert.match(feat(p), new RegExp(`\\b${f}\\b`), `${p} lacks ${f}: ${feat(p)}`);
        }
      }
      assert.doesNotMatch(feat('vm1'), /NET_F_CSUM|NET_F_GUEST_CSUM|TSO/, feat('vm1'));
    }));

  it('ping A <-> B both ways with 0 % loss', () =>
    guard(async () => {
      const [a, b] = vms;
      await waitPing(a, '10.0.0.2');
      for (const [vm, ip] of [[a, '10.0.0.2'], [b, '10.0.0.1']] as const) {
        const r = await ping(vm, ip, 5);
        assert.equal(r.received, r.transmitted, `${vm.name} -> ${ip}: ${r.output}`);
      }
    }));

  it('iperf3 TCP A -> B and B -> A: A\'s TSO frames are segmented for B by the switch', () =>
    guard(async () => {
      const [a, b] = vms;
      await iperf(a, b, '10.0.0.2');
      await iperf(b, a, '10.0.0.1');
      const cb = await portCounters('vm1');
      const ca = await portCounters('vm0');
      console.log(`# B's port: ${cb.rxSegmented} super-frames segmented, ${cb.rxChecksummed} checksums completed; dropped: rxOffload ${cb.rxOffloadDropped}, txBadOffload A ${ca.txBadOffload} B ${cb.txBadOffload}`);
      assert.ok(cb.rxSegmented > 0, 'A sent TSO frames that were segmented for B');
      assert.equal(cb.rxOffloadDropped, 0);
      assert.equal(ca.txBadOffload + cb.txBadOffload, 0);
      assert.equal(ca.rxSegmented, 0, 'A takes TSO frames as they are');
    }));

  it('iperf3 TCP A <-> A2 (both offload-capable) for comparison', () =>
    guard(async () => {
      const [a, , a2] = vms;
      await waitPing(a, '10.0.0.3');
      await iperf(a, a2, '10.0.0.3');
      await iperf(a2, a, '10.0.0.1');
      const c2 = await portCounters('vm2');
      assert.equal(c2.rxSegmented + c2.rxChecksummed, 0, 'nothing done in software for A2');
      assert.equal(c2.txBadOffload, 0);
    }));
});
