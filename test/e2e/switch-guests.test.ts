/**
 * Two real QEMU guests on two elastic-vhost sockets: ping, iperf3 TCP and UDP, and a burst held in
 * the elastic FIFO while the receiving VM is paused, then delivered completely and in order.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { GuestVM, parseKeyValues } from '../../qemu-glue/launcher';
import { SwitchProcess } from '../../qemu-glue/switch-process';
import { ping, ready, startGuest, startSwitch, teardown, workDir, failureTracker, pingBothWays } from './harness';
import { GUEST_COUNTERS_CMD, GuestCounters, parseGuestCounters, udpLossAccounted, unaccountedUdpLoss } from './guest-counters';

describe('two guests through elastic-vhost', { timeout: 400_000 }, () => {
  const dir = workDir('pair');
  let sw: SwitchProcess | undefined;
  let a: GuestVM | undefined;
  let b: GuestVM | undefined;
  const tracker = failureTracker();
  const guard = tracker.guard;

  before(async () => {
    sw = await startSwitch(dir, 2, ['--pool-mb', '32']);
    [a, b] = await Promise.all([startGuest(sw, 0, 'pair-a'), startGuest(sw, 1, 'pair-b')]);
    await ready(a, b);
  });

  after(() => teardown([a, b], sw, tracker.failed, dir));

  it('ping both ways with 0 % loss', () =>
    guard(async () => {
      await pingBothWays(a!, b!);
    }));

  it('iperf3 TCP A -> B for 10 s completes', () =>
    guard(async () => {
      const server = b!.spawn('iperf3 -s -1 -p 5201 --forceflush');
      await server.waitForLine(/Server listening/, 10_000);
      const r = await a!.exec('iperf3 -c 10.0.0.2 -p 5201 -t 10 -J', { timeoutMs: 60_000 });
      assert.equal(r.rc, 0, r.output);
      const j = JSON.parse(r.output);
      const recv = j.end.sum_received.bits_per_second / 1e6;
      console.log(`# iperf3 TCP A->B 10 s: ${recv.toFixed(1)} Mbit/s received, ${j.end.sum_sent.retransmits ?? 0} retransmits`);
      assert.ok(recv > 0, 'no throughput');
      assert.equal((await server.done).rc, 0);
    }));

  /** a guest's own drop counters (/proc/net/snmp, /sys/class/net/IF/statistics, softnet_stat) */
  async function guestCounters(vm: GuestVM): Promise<GuestCounters> {
    const r = await vm.exec(GUEST_COUNTERS_CMD, { timeoutMs: 30_000 });
    assert.equal(r.rc, 0, r.output);
    return parseGuestCounters(r.output);
  }

  it('iperf3 UDP at a rate the path carries: the switch delivers every datagram; every one missing at iperf3 is in a guest\'s own drop counters', () =>
    guard(async () => {
      const server = b!.spawn('iperf3 -s -1 -p 5202 --forceflush');
      await server.waitForLine(/Server listening/, 10_000);
      const st0 = await sw!.freshStats();
      const [a0, b0] = await Promise.all([guestCounters(a!), guestCounters(b!)]);
      const r = await a!.exec('iperf3 -c 10.0.0.2 -p 5202 -u -b 5M -l 1200 -t 5 -J', { timeoutMs: 60_000 });
      assert.equal(r.rc, 0, r.output);
      await server.done;
      const j = JSON.parse(r.output);
      assert.equal(j.error, undefined, `iperf3: ${j.error}`);
      const sum = j.end.sum_received ?? j.end.sum;
      assert.ok(Number.isInteger(sum.packets) && sum.packets > 0, `iperf3 counted no datagrams: ${JSON.stringify(j.end)}`);
      const st1 = await sw!.freshStats();
      const [a1, b1] = await Promise.all([guestCounters(a!), guestCounters(b!)]);
      // what the guests' kernels dropped themselves, each datagram counted once (guest-counters.ts)
      const guestLost = udpLossAccounted([a0, a1], [b0, b1]);
      const inB = (b1.snmp.Udp.InDatagrams ?? 0) - (b0.snmp.Udp.InDatagrams ?? 0);
      const switchDrops = st1.engine.total.dropped - st0.engine.total.dropped;
      console.log(`# iperf3 UDP 5 Mbit/s: ${sum.lost_packets}/${sum.packets} lost (${sum.lost_percent}%), jitter ${sum.jitter_ms} ms; B's kernel took ${inB} UDP datagrams, the guests dropped ${guestLost.total} themselves (${JSON.stringify(guestLost.parts)}); switch drops ${switchDrops}`);
      assert.equal(switchDrops, 0, `switch drops: ${JSON.stringify(st1.engine.total.drops)}`);
      for (const k of ['rxTooBig', 'rxBadRange', 'rxOffloadDropped', 'rxOverMtu', 'txDropped', 'brokenRings']) {
        for (const i of [0, 1]) assert.equal(st1.vhostUser[i].counters[k] - st0.vhostUser[i].counters[k], 0, `${st1.vhostUser[i].name} ${k}`);
      }
      // every frame the switch took from A was written into B's RX ring (or still waits for it):
      // the two ports are each other's only peer
      const fromA = st1.vhostUser[0].counters.txFrames - st0.vhostUser[0].counters.txFrames;
      const toB = st1.vhostUser[1].counters.rxFrames - st0.vhostUser[1].counters.rxFrames;
      const heldB = st1.engine.ports.find((p: { name: string }) => p.name === 'vm1')?.queuedFrames ?? 0;
      assert.equal(toB + heldB, fromA, `the switch took ${fromA} frames from A and gave B ${toB} (${heldB} held)`);
      assert.ok(fromA >= sum.packets - sum.lost_packets, `${fromA} frames from A for ${sum.packets - sum.lost_packets} datagrams received`);
      // and none arrived damaged
      assert.equal((b1.snmp.Udp.InCsumErrors ?? 0) - (b0.snmp.Udp.InCsumErrors ?? 0), 0, 'UDP checksum errors at B');
      // every datagram missing at B's iperf3 is in a guest counter: a loss nothing counted is the
      // switch's (a frame taken from A's ring and never written, or written and not given back)
      const why = unaccountedUdpLoss(sum.lost_packets, switchDrops, guestLost);
      assert.equal(why, null, `${why} (switch: ${fromA} frames taken from A, ${toB} given to B, ${heldB} held)`);
    }));

  it('a burst to a paused guest is held in the elastic FIFO and delivered completely, in order', () =>
    guard(async () => {
      const N = 3000;
      const before = (await sw!.freshStats()).engine.total;
      const recv = b!.spawn(`udpburst recv 9000 ${N} 5000`);
      await recv.waitForLine(/UDPBURST listening/, 10_000);
      await b!.stop(); // QEMU stops B's rings (GET_VRING_BASE): nothing can be delivered to it
      const s = await a!.exec(`udpburst send 10.0.0.2 9000 ${N} 256`, { timeoutMs: 60_000 });
      assert.equal(s.rc, 0, s.output);
      // every datagram must now be waiting in the switch
      let held = 0;
      for (let k = 0; k < 100; k++) {
        const st = await sw!.freshStats();
        held = st.engine.total.storedFrames - before.storedFrames;
        if (held >= N) break;
      }
      console.log(`# frames stored while B was paused: ${held}`);
      assert.ok(held >= N, `only ${held} of ${N} frames stored`);
      await b!.cont();
      const r = await recv.done;
      const line = r.lines.find((l) => l.startsWith('UDPBURST received='));
      assert.ok(line, r.output);
      const kv = parseKeyValues(line);
      console.log(`# ${line}`);
      assert.equal(kv.received, String(N), line);
      assert.equal(kv.inorder, 'yes', line);
      assert.equal(kv.dups, '0', line);
      const after = (await sw!.freshStats()).engine;
      const drained = after.total.drainedFrames - before.drainedFrames;
      console.log(`# drained from the elastic FIFO: ${drained}; pool high water ${after.pool.highWater} blocks; dropped ${after.total.dropped}`);
      assert.ok(drained >= N, `only ${drained} drained`);
      assert.equal(after.total.dropped - before.dropped, 0);
      assert.equal(after.pool.blocksInUse, 0);
    }));

  it('ping still works after the burst, then SIGTERM closes the switch with exit code 0', () =>
    guard(async () => {
      const ab = await ping(a!, '10.0.0.2', 3);
      assert.equal(ab.received, 3, ab.output);
      const e = await sw!.stop();
      assert.equal(e.code, 0, `exit ${JSON.stringify(e)}\n${sw!.log.slice(-10).join('\n')}`);
    }));
});
