/**
 * Multiqueue guests: two QEMU guests with four queue pairs each (`-netdev vhost-user,queues=4`,
 * `virtio-net-pci,mq=on`), switched to four combined channels with `ethtool -L eth0 combined 4`.
 * The switch spreads each receiver's frames over its four RX queues by flow (a flow sent on TX
 * queue k goes to RX queue k, others by their hash): iperf3 with parallel streams each way uses
 * all four RX queues, as both the switch's per-queue counters and the guest's `ethtool -S` show
 * (32 streams: the Linux driver picks a TX queue per connection at random — sk_txhash — so 4
 * streams leave a queue unused most of the time, as measured: 1103/17/2001/2353 frames); a
 * UDP burst of 32 flows across a QMP stop/cont of the receiver is held on all four queues and
 * delivered completely, every flow in order.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { macForIndex } from '../../qemu-glue/args';
import { GuestVM, parseKeyValues } from '../../qemu-glue/launcher';
import { SwitchProcess } from '../../qemu-glue/switch-process';
import { ping, ready, startSwitch, teardown, waitPing, workDir, failureTracker } from './harness';

const QUEUES = 4;
/** iperf3 streams: enough that every TX queue of the sender carries some (1 − 4·(3/4)^32 ≈ 99.96 %) */
const STREAMS = 32;

/** rx_queue_K_packets / tx_queue_K_packets from `ethtool -S eth0` */
async function guestQueueStats(vm: GuestVM): Promise<{ rx: number[]; tx: number[] }> {
  const r = await vm.exec('ethtool -S eth0', { timeoutMs: 30_000 });
  assert.equal(r.rc, 0, r.output);
  const rx: number[] = [];
  const tx: number[] = [];
  for (const m of r.output.matchAll(/(rx|tx)_queue_(\d+)_packets:\s*(\d+)/g)) (m[1] === 'rx' ? rx : tx)[Number(m[2])] = Number(m[3]);
  return { rx, tx };
}

/** the switch's per-queue frame counts of port `name` */
async function switchQueues(sw: SwitchProcess, name: string): Promise<{ rx: number[]; tx: number[] }> {
  const st = await sw.freshStats();
  const p = st.vhostUser.find((x: { name: string }) => x.name === name);
  return p.queues;
}

const minus = (a: number[], b: number[]): number[] => Array.from({ length: QUEUES }, (_, k) => (a[k] ?? 0) - (b[k] ?? 0));

describe('multiqueue guests (4 queue pairs) through elastic-vhost', { timeout: 600_000 }, () => {
  const dir = workDir('multiqueue');
  let sw: SwitchProcess | undefined;
  let a: GuestVM | undefined;
  let b: GuestVM | undefined;
  const tracker = failureTracker();
  const guard = tracker.guard;

  before(async () => {
    sw = await startSwitch(dir, 2, ['--pool-mb', '32']);
    const start = (i: number, name: string) =>
      GuestVM.start({
        name,
        params: { ip: `10.0.0.${i + 1}/24` },
        nics: [{ kind: 'vhost-user', id: 'n0', socketPath: sw!.socketPaths[i], mac: macForIndex(i + 1), queues: QUEUES }],
      });
    [a, b] = await Promise.all([start(0, 'mq-a'), start(1, 'mq-b')]);
    await ready(a, b);
  });

  after(() => teardown([a, b], sw, tracker.failed, dir));

  it('ethtool -L eth0 combined 4 in both guests; the switch sees four queue pairs enabled', () =>
    guard(async () => {
      for (const vm of [a!, b!]) {
        const r = await vm.exec(`ethtool -L eth0 combined ${QUEUES} && ethtool -l eth0`, { timeoutMs: 30_000 });
        assert.equal(r.rc, 0, r.output);
        const current = r.output.split(/Current hardware settings:/)[1] ?? '';
        assert.match(current, new RegExp(`Combined:\\s*${QUEUES}`), r.output);
      }
      await sw!.waitLog(/vm1: frames spread over 4 RX queues/, 30_000);
      await waitPing(a!, '10.0.0.2');
      const ab = await ping(a!, '10.0.0.2', 5);
      assert.equal(ab.received, ab.transmitted, ab.output);
    }));

  for (const [from, to, label] of [
    [() => a!, () => b!, 'A -> B'],
    [() => b!, () => a!, 'B -> A'],
  ] as const) {
    it(`iperf3 -P ${STREAMS} ${label}: all four RX queues of the receiver carry frames (switch counters and ethtool -S)`, () =>
      guard(async () => {
        const rcv = to();
        const snd = from();
        const rname = rcv === a ? 'vm0' : 'vm1';
        const ip = rcv === a ? '10.0.0.1' : '10.0.0.2';
        const g0 = await guestQueueStats(rcv);
        const s0 = await switchQueues(sw!, rname);
        const server = rcv.spawn('iperf3 -s -1 -p 5201 --forceflush');
        await server.waitForLine(/Server listening/, 10_000);
        const r = await snd.exec(`iperf3 -c ${ip} -p 5201 -t 5 -P ${STREAMS} -J`, { timeoutMs: 90_000 });
        assert.equal(r.rc, 0, r.output);
        const j = JSON.parse(r.output);
        const mbit = j.end.sum_received.bits_per_second / 1e6;
        assert.equal((await server.done).rc, 0);
        const g = minus((await guestQueueStats(rcv)).rx, g0.rx);
        const s = minus((await switchQueues(sw!, rname)).rx, s0.rx);
        const sentTx = minus((await guestQueueStats(snd)).tx, [0, 0, 0, 0]);
        console.log(`# multiqueue ${label}: iperf3 -P ${STREAMS} ${mbit.toFixed(1)} Mbit/s; receiver RX per queue: switch ${s.join(' ')}, guest ${g.join(' ')}; sender TX per queue (since boot) ${sentTx.join(' ')}`);
        assert.ok(mbit > 0, 'no throughput');
        for (let k = 0; k < QUEUES; k++) {
          assert.ok(s[k] >= 50, `switch wrote ${s[k]} frames to RX queue ${k}: ${s.join(' ')}`);
          assert.ok(g[k] >= 50, `guest counted ${g[k]} packets on rx_queue_${k}: ${g.join(' ')}`);
        }
        // what the guest counts per queue is what the switch wrote there (plus little else: ARP, pings)
        for (let k = 0; k < QUEUES; k++) assert.ok(g[k] >= s[k] * 0.9, `queue ${k}: guest ${g[k]} vs switch ${s[k]}`);
      }));
  }

  it('a UDP burst of 32 flows across a QMP stop/cont of the receiver: held on all four queues, all delivered, every flow in order', () =>
    guard(async () => {
      const N = 4000;
      const FLOWS = 32;
      const before = (await sw!.freshStats()).engine.total;
      const recv = b!.spawn(`udpburst recv -f 9000 ${N} 8000`);
      await recv.waitForLine(/UDPBURST listening/, 10_000);
      await b!.stop(); // GET_VRING_BASE on all of B's rings
      const s = await a!.exec(`udpburst send -f ${FLOWS} 10.0.0.2 9000 ${N} 256`, { timeoutMs: 90_000 });
      assert.equal(s.rc, 0, s.output);
      let st = await sw!.freshStats();
      for (let k = 0; k < 100 && st.engine.total.storedFrames - before.storedFrames < N; k++) st = await sw!.freshStats();
      const held = st.engine.total.storedFrames - before.storedFrames;
      const port = st.engine.ports.find((p: { name: string }) => p.name === 'vm1');
      console.log(`# multiqueue: frames held for B while paused: ${held}, per RX queue ${port.queuedPerQueue.join(' ')}`);
      assert.ok(held >= N, `only ${held} of ${N} frames stored`);
      assert.equal(port.queuedPerQueue.length, QUEUES, JSON.stringify(port.queuedPerQueue));
      for (let k = 0; k < QUEUES; k++) assert.ok(port.queuedPerQueue[k] > 0, `nothing held on RX queue ${k}: ${port.queuedPerQueue.join(' ')}`);
      await b!.cont();
      const r = await recv.done;
      const line = r.lines.find((l) => l.startsWith('UDPBURST received='));
      assert.ok(line, r.output);
      console.log(`# multiqueue: ${line}`);
      const kv = parseKeyValues(line);
      assert.equal(kv.received, String(N), line);
      assert.equal(kv.inorder, 'yes', line);
      assert.equal(kv.dups, '0', line);
      assert.equal(kv.flows, String(FLOWS), line);
      const after = (await sw!.freshStats()).engine;
      assert.ok(after.total.drainedFrames - before.drainedFrames >= N);
      assert.equal(after.total.dropped - before.dropped, 0);
      assert.equal(after.pool.blocksInUse, 0);
      for (const p of (await sw!.freshStats()).vhostUser) assert.equal(p.counters.brokenRings, 0, JSON.stringify(p.counters));
    }));

  it('back to one queue pair (ethtool -L combined 1): traffic goes on, on RX queue 0', () =>
    guard(async () => {
      const r = await b!.exec('ethtool -L eth0 combined 1', { timeoutMs: 30_000 });
      assert.equal(r.rc, 0, r.output);
      await sw!.waitLog(/vm1: frames spread over 1 RX queue\b/, 30_000);
      const s0 = await switchQueues(sw!, 'vm1');
      const ab = await ping(a!, '10.0.0.2', 5);
      assert.equal(ab.received, ab.transmitted, ab.output);
      const s = minus((await switchQueues(sw!, 'vm1')).rx, s0.rx);
      assert.ok(s[0] >= 5 && s[1] === 0 && s[2] === 0 && s[3] === 0, s.join(' '));
    }));
});
