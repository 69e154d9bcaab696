/**
 * Packed virtqueues with real guests: two QEMU guests with `virtio-net-pci,packed=on` (the Linux
 * driver negotiates VIRTIO_F_RING_PACKED) on two elastic-vhost sockets: ping, iperf3 TCP, and a UDP
 * burst across a QMP stop/cont of the receiver (QEMU stops its rings with GET_VRING_BASE and
 * restarts them with SET_VRING_BASE, wrap counters included) with nothing lost.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { GuestVM, parseKeyValues } from '../../qemu-glue/launcher';
import { SwitchProcess } from '../../qemu-glue/switch-process';
import { ping, ready, startGuest, startSwitch, teardown, workDir, failureTracker, pingBothWays } from './harness';

describe('two guests with packed virtqueues through elastic-vhost', { timeout: 400_000 }, () => {
  const dir = workDir('packed');
  let sw: SwitchProcess | undefined;
  let a: GuestVM | undefined;
  let b: GuestVM | undefined;
  const tracker = failureTracker();
  const guard = tracker.guard;

  before(async () => {
    sw = await startSwitch(dir, 2, ['--pool-mb', '32']);
    [a, b] = await Promise.all([startGuest(sw, 0, 'packed-a', 0, { packed: true }), startGuest(sw, 1, 'packed-b', 1, { packed: true })]);
    await ready(a, b);
  });

  after(() => teardown([a, b], sw, tracker.failed, dir));

  it('both guest drivers negotiated VIRTIO_F_RING_PACKED (bit 34) with the switch', () =>
    guard(async () => {
      await sw!.waitLog(/vm1: features /, 30_000);
      for (const port of ['vm0', 'vm1']) {
        const line = sw!.log.filter((l) => l.includes(`${port}: features `)).at(-1) ?? '';
        assert.match(line, /F_RING_PACKED/, `${port}: ${line}`);
        assert.match(line, /F_VERSION_1/, `${port}: ${line}`);
      }
    }));

  it('ping both ways with 0 % loss', () =>
    guard(async () => {
      await pingBothWays(a!, b!, 'packed: ');
    }));

  it('iperf3 TCP A -> B for 5 s completes', () =>
    guard(async () => {
      const server = b!.spawn('iperf3 -s -1 -p 5201 --forceflush');
      await server.waitForLine(/Server listening/, 10_000);
      const r = await a!.exec('iperf3 -c 10.0.0.2 -p 5201 -t 5 -J', { timeoutMs: 60_000 });
      assert.equal(r.rc, 0, r.output);
      const j = JSON.parse(r.output);
      const recv = j.end.sum_received.bits_per_second / 1e6;
      console.log(`# packed: iperf3 TCP A->B 5 s: ${recv.toFixed(1)} Mbit/s received, ${j.end.sum_sent.retransmits ?? 0} retransmits`);
      assert.ok(recv > 0, 'no throughput');
      assert.equal((await server.done).rc, 0);
    }));

  it('a UDP burst to the receiver across a QMP stop/cont is held and delivered completely, in order', () =>
    guard(async () => {
      const N = 3000;
      const before = (await sw!.freshStats()).engine.total;
      const recv = b!.spawn(`udpburst recv 9000 ${N} 5000`);
      await recv.waitForLine(/UDPBURST listening/, 10_000);
      await b!.stop(); // GET_VRING_BASE on B's packed rings
      const s = await a!.exec(`udpburst send 10.0.0.2 9000 ${N} 256`, { timeoutMs: 60_000 });
      assert.equal(s.rc, 0, s.output);
      let held = 0;
      for (let k = 0; k < 100; k++) {
        const st = await sw!.freshStats();
        held = st.engine.total.storedFrames - before.storedFrames;
        if (held >= N) break;
      }
      console.log(`# packed: frames stored while B was paused: ${held}`);
      assert.ok(held >= N, `only ${held} of ${N} frames stored`);
      await b!.cont(); // SET_VRING_BASE with the avail and used wrap counters
      const r = await recv.done;
      const line = r.lines.find((l) => l.startsWith('UDPBURST received='));
      assert.ok(line, r.output);
      const kv = parseKeyValues(line);
      console.log(`# packed: ${line}`);
      assert.equal(kv.received, String(N), line);
      assert.equal(kv.inorder, 'yes', line);
      assert.equal(kv.dups, '0', line);
      const after = (await sw!.freshStats()).engine;
      assert.ok(after.total.drainedFrames - before.drainedFrames >= N);
      assert.equal(after.total.dropped - before.dropped, 0);
      assert.equal(after.pool.blocksInUse, 0);
      const st = await sw!.freshStats();
      for (const p of st.vhostUser) assert.equal(p.counters.brokenRings, 0, JSON.stringify(p.counters));
    }));

  it('ping still works after the burst, then SIGTERM closes the switch with exit code 0', () =>
    guard(async () => {
      const ab = await ping(a!, '10.0.0.2', 3);
      assert.equal(ab.received, 3, ab.output);
      const e = await sw!.stop();
      assert.equal(e.code, 0, `exit ${JSON.stringify(e)}\n${sw!.log.slice(-10).join('\n')}`);
    }));
});
