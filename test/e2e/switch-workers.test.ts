/**
 * --workers 2 with QEMU guests: two guests with two queue pairs each (`queues=2`, `ethtool -L eth0
 * combined 2`). The owner table spreads queue pairs over the two data-plane threads (vm0's pair 0
 * and vm1's pair 1 on the control thread, the others on the worker thread), so every direction of
 * traffic crosses between the threads somewhere. Ping and iperf3 each way; a UDP burst of 8 flows
 * across a QMP stop/cont of the receiver (GET_VRING_BASE answered by both threads, frames held in
 * the elastic FIFO of the thread serving each RX queue) is delivered completely and in order.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { macForIndex } from '../../qemu-glue/args';
import { GuestVM, parseKeyValues } from '../../qemu-glue/launcher';
import { SwitchProcess } from '../../qemu-glue/switch-process';
import { ping, ready, startSwitch, teardown, waitPing, workDir, failureTracker } from './harness';

const QUEUES = 2;

describe('--workers 2: multiqueue guests served by two data-plane threads', { timeout: 600_000 }, () => {
  const dir = workDir('workers');
  let sw: SwitchProcess | undefined;
  let a: GuestVM | undefined;
  let b: GuestVM | undefined;
  const tracker = failureTracker();
  const guard = tracker.guard;

  before(async () => {
    sw = await startSwitch(dir, 2, ['--pool-mb', '32', '--workers', '2']);
    await sw.waitLog(/data plane: 2 threads/, 10_000);
    const start = (i: number, name: string) =>
      GuestVM.start({
        name,
        params: { ip: `10.0.0.${i + 1}/24` },
        nics: [{ kind: 'vhost-user', id: 'n0', socketPath: sw!.socketPaths[i], mac: macForIndex(i + 1), queues: QUEUES }],
      });
    [a, b] = await Promise.all([start(0, 'wk-a'), start(1, 'wk-b')]);
    await ready(a, b);
  });

  after(() => teardown([a, b], sw, tracker.failed, dir));

  it('both guests use two queue pairs; ping both ways', () =>
    guard(async () => {
      for (const vm of [a!, b!]) {
        const r = await vm.exec(`ethtool -L eth0 combined ${QUEUES}`, { timeoutMs: 30_000 });
        assert.equal(r.rc, 0, r.output);
      }
      await sw!.waitLog(/vm1: frames spread over 2 RX queues/, 30_000);
      await waitPing(a!, '10.0.0.2');
      const ab = await ping(a!, '10.0.0.2', 5);
      assert.equal(ab.received, ab.transmitted, ab.output);
      const ba = await ping(b!, '10.0.0.1', 5);
      assert.equal(ba.received, ba.transmitted, ba.output);
    }));

  for (const [from, to, label] of [
    [() => a!, () => b!, 'A -> B'],
    [() => b!, () => a!, 'B -> A'],
  ] as const) {
    it(`iperf3 TCP -P 8 ${label}: throughput, frames handed between the threads, nothing dropped`, () =>
      guard(async () => {
        const rcv = to();
        const ip = rcv === a ? '10.0.0.1' : '10.0.0.2';
        const st0 = (await sw!.freshStats()).engine.total;
        const server = rcv.spawn('iperf3 -s -1 -p 5201 --forceflush');
        await server.waitForLine(/Server listening/, 10_000);
        const r = await from().exec(`iperf3 -c ${ip} -p 5201 -t 5 -P 8 -J`, { timeoutMs: 90_000 });
        assert.equal(r.rc, 0, r.output);
        const mbit = JSON.parse(r.output).end.sum_received.bits_per_second / 1e6;
        assert.equal((await server.done).rc, 0);
        const st = (await sw!.freshStats()).engine.total;
        const handed = st.handedFrames - st0.handedFrames;
        console.log(`# workers ${label}: iperf3 -P 8 ${mbit.toFixed(1)} Mbit/s, frames handed between threads ${handed}, dropped ${st.dropped - st0.dropped}`);
        assert.ok(mbit > 0, 'no throughput');
        assert.ok(handed > 100, `only ${handed} frames crossed between the threads`);
        assert.equal(st.dropped - st0.dropped, 0, JSON.stringify(st.drops));
      }));
  }

  it('a UDP burst of 8 flows across a QMP stop/cont of the receiver: held, all delivered, every flow in order', () =>
    guard(async () => {
      const N = 2000;
      const FLOWS = 8;
      const before = (await sw!.freshStats()).engine.total;
      const recv = b!.spawn(`udpburst recv -f 9000 ${N} 8000`);
      await recv.waitForLine(/UDPBURST listening/, 10_000);
      await b!.stop(); // GET_VRING_BASE on all of B's rings, some served by each thread
      const s = await a!.exec(`udpburst send -f ${FLOWS} 10.0.0.2 9000 ${N} 256`, { timeoutMs: 90_000 });
      assert.equal(s.rc, 0, s.output);
      let st = await sw!.freshStats();
      for (let k = 0; k < 100 && st.engine.total.storedFrames - before.storedFrames < N; k++) st = await sw!.freshStats();
      const held = st.engine.total.storedFrames - before.storedFrames;
      console.log(`# workers: frames held for B while paused: ${held}`);
      assert.ok(held >= N, `only ${held} of ${N} frames stored`);
      await b!.cont();
      const r = await recv.done;
      const line = r.lines.find((l) => l.startsWith('UDPBURST received='));
      assert.ok(line, r.output);
      console.log(`# workers: ${line}`);
      const kv = parseKeyValues(line);
      assert.equal(kv.received, String(N), line);
      assert.equal(kv.inorder, 'yes', line);
      assert.equal(kv.dups, '0', line);
      const after = (await sw!.freshStats());
      assert.equal(after.engine.total.dropped - before.dropped, 0);
      for (const p of after.vhostUser) assert.equal(p.counters.brokenRings, 0, JSON.stringify(p.counters));
      const ab = await ping(a!, '10.0.0.2', 3);
      assert.equal(ab.received, ab.transmitted, ab.output);
    }));
});
