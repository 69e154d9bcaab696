/**
 * DPDK as the front-end: dpdk-testpmd with two net_virtio_user ports on elastic-vhost's two
 * server sockets (static MACs), no hugepages (--no-huge), both testpmd lcores on CPU 0.
 *
 * testpmd runs `fwd mac` with each port's peer set to the other port's MAC and `start tx_first`,
 * so 2 x 32 frames circulate forever: port 0 → switch → port 1 → testpmd → port 0 → …, and the
 * same the other way round. After `stop`, the frames still in flight sit in the RX rings (the
 * switch delivered them, testpmd had not polled them yet), so a short `fwd rxonly` run drains
 * them before the counters are compared:
 *   testpmd port i TX-packets == the switch's frames from port i (vhostUser[i].counters.txFrames)
 *   testpmd port i RX-packets == the switch's frames to port i   (vhostUser[i].counters.rxFrames)
 *   sum of RX == sum of TX (every frame sent came back), and no drop counter in the switch moved.
 * With mergeable RX buffers (mrg_rxbuf=1) and without (mrg_rxbuf=0), with packed rings
 * (packed_vq=1, VIRTIO_F_RING_PACKED negotiated) without and with in_order=1 (VIRTIO_F_IN_ORDER is not
 * offered: it negotiates without it), with four queue pairs (queues=4,cq=1, testpmd --rxq=4 --txq=4:
 * every TX queue's frames reach the peer's RX queue of the same number), each across a restart of the front-end: testpmd is SIGKILLed mid-traffic, started again on the same sockets, and the same
 * checks hold for the new session (switch counters as differences over it).
 *
 *   npm run build && node --test dist/test/e2e/dpdk-virtio-user.test.js
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SwitchProcess } from '../../qemu-glue/switch-process';
import { TestPmd, testpmdMissing, virtioUserVdev, type PmdPortStats } from '../../qemu-glue/testpmd';
import { echo, workDir } from './harness';

const MAC = ['02:00:5e:d0:00:01', '02:00:5e:d0:00:02'];
const TRAFFIC_MS = 1500;
const DRAIN_MS = 300;

const skip = testpmdMissing();
if (skip) console.log(`# skipping the DPDK virtio-user test: ${skip}`);

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Stats = any;

interface PortCount {
  fromPort: number; // frames the switch took from the front-end's TX ring
  toPort: number; // frames the switch put in the front-end's RX ring
  drops: Record<string, number>;
}

function portCounts(st: Stats): PortCount[] {
  return [0, 1].map((i) => {
    const c = st.vhostUser[i].counters;
    return {
      fromPort: c.txFrames,
      toPort: c.rxFrames,
      drops: {
        txDropped: c.txDropped,
        rxTooBig: c.rxTooBig,
        rxOffloadDropped: c.rxOffloadDropped,
        brokenRings: c.brokenRings,
        txBadOffload: c.txBadOffload,
      },
    };
  });
}

/** Switch stats once nothing moves any more and the elastic FIFO is empty. */
async function settled(sw: SwitchProcess, timeoutMs = 5000): Promise<Stats> {
  const end = Date.now() + timeoutMs;
  let prev = '';
  for (;;) {
    const st = await sw.freshStats();
    const key = JSON.stringify([st.engine.total, portCounts(st)]);
    if (key === prev && st.engine.pool.blocksInUse === 0 && st.engine.pool.unresolvedFrames === 0) return st;
    if (Date.now() > end) throw new Error(`switch counters did not settle within ${timeoutMs} ms: ${JSON.stringify(st.engine)}`);
    prev = key;
  }
}

interface Variant {
  mrg: boolean;
  /** packed_vq=1 (and in_order=1) devargs of net_virtio_user */
  packed?: boolean;
  inOrder?: boolean;
  /** queue pairs per port (queues=N,cq=1 and testpmd --rxq=N --txq=N) */
  queues?: number;
}

const label = (v: Variant): string => `mrg_rxbuf=${v.mrg ? 1 : 0}${v.packed ? ' packed_vq=1' : ''}${v.inOrder ? ' in_order=1' : ''}${v.queues ? ` queues=${v.queues}` : ''}`;

function startPmd(name: string, sockets: string[], v: Variant): TestPmd {
  const extra: Record<string, number> = {};
  if (v.packed) extra.packed_vq = 1;
  if (v.inOrder) extra.in_order = 1;
  if (v.queues) {
    extra.queues = v.queues;
    extra.cq = 1;
  }
  return new TestPmd({
    name,
    cpu: 0,
    memory: { kind: 'no-huge', mb: 512 },
    vdevs: sockets.map((s, i) => virtioUserVdev(i, s, MAC[i]!, { queueSize: 256, mrgRxbuf: v.mrg, extra })),
    totalMbufs: 16384,
    appArgs: v.queues ? [`--rxq=${v.queues}`, `--txq=${v.queues}`] : [],
    echo,
  });
}

/** With several queue pairs: what the switch took from TX queue k of port i it wrote to RX queue k of the other port, every queue used. */
function checkQueues(label: string, queues: number, before: Stats, after: Stats): void {
  const q = (st: Stats, i: number, dir: 'rx' | 'tx', k: number): number => st.vhostUser[i].queues[dir][k] ?? 0;
  for (const i of [0, 1]) {
    const o = 1 - i;
    const tx = Array.from({ length: queues }, (_, k) => q(after, i, 'tx', k) - q(before, i, 'tx', k));
    const rx = Array.from({ length: queues }, (_, k) => q(after, o, 'rx', k) - q(before, o, 'rx', k));
    console.log(`# ${label}: port ${i} TX per queue ${tx.join(' ')} → port ${o} RX per queue ${rx.join(' ')}`);
    for (let k = 0; k < queues; k++) {
      assert.ok(tx[k] > 100, `${label}: port ${i} TX queue ${k} carried ${tx[k]} frames`);
      assert.equal(rx[k], tx[k], `${label}: TX queue ${k} of port ${i} → RX queue ${k} of port ${o}`);
    }
  }
}

/** mac forwarding across the switch for TRAFFIC_MS, stop, drain the RX rings; testpmd's totals. */
async function runTraffic(pmd: TestPmd): Promise<PmdPortStats[]> {
  await pmd.cmd('set fwd mac');
  await pmd.cmd(`set eth-peer 0 ${MAC[1]}`);
  await pmd.cmd(`set eth-peer 1 ${MAC[0]}`);
  await pmd.cmd('start tx_first');
  await sleep(TRAFFIC_MS);
  await pmd.cmd('stop');
  await drain(pmd);
  return pmd.portStats();
}

/** Polls the RX rings (forwarding nothing) so frames delivered after the stop are counted. */
async function drain(pmd: TestPmd): Promise<void> {
  await pmd.cmd('set fwd rxonly');
  await pmd.cmd('start');
  await sleep(DRAIN_MS);
  await pmd.cmd('stop');
}

function checkSession(label: string, pmd: PmdPortStats[], before: Stats, after: Stats): void {
  const b = portCounts(before);
  const a = portCounts(after);
  const rows = [0, 1].map((i) => ({
    port: i,
    pmdTx: pmd[i]!.txPackets,
    pmdRx: pmd[i]!.rxPackets,
    swFrom: a[i]!.fromPort - b[i]!.fromPort,
    swTo: a[i]!.toPort - b[i]!.toPort,
  }));
  console.log(`# ${label}: ${rows.map((r) => `port ${r.port}: testpmd tx ${r.pmdTx} rx ${r.pmdRx}, switch from ${r.swFrom} to ${r.swTo}`).join('; ')}`);
  const detail = JSON.stringify({ rows, pmd, engine: after.engine.total });
  for (const r of rows) {
    assert.ok(r.pmdRx > 1000, `${label}: port ${r.port} received only ${r.pmdRx} frames: ${detail}`);
    assert.equal(r.swFrom, r.pmdTx, `${label}: port ${r.port}: testpmd sent ${r.pmdTx}, the switch took ${r.swFrom}: ${detail}`);
    assert.equal(r.pmdRx, r.swTo, `${label}: port ${r.port}: the switch delivered ${r.swTo}, testpmd received ${r.pmdRx}: ${detail}`);
    assert.equal(pmd[r.port]!.rxErrors, 0, `${label}: RX errors: ${detail}`);
    assert.equal(pmd[r.port]!.txErrors, 0, `${label}: TX errors: ${detail}`);
  }
  const sent = rows[0]!.pmdTx + rows[1]!.pmdTx;
  const received = rows[0]!.pmdRx + rows[1]!.pmdRx;
  assert.equal(received, sent, `${label}: ${sent - received} frames sent by testpmd never came back: ${detail}`);
  // each frame crosses the switch from one port to the other: from port 0 == to port 1
  assert.equal(rows[0]!.swFrom, rows[1]!.swTo, detail);
  assert.equal(rows[1]!.swFrom, rows[0]!.swTo, detail);
  assert.equal(after.engine.total.dropped - before.engine.total.dropped, 0, `${label}: switch drops: ${JSON.stringify(after.engine.total.drops)}`);
  assert.equal(after.engine.total.holdFlooded - before.engine.total.holdFlooded, 0, `${label}: frames flooded: ${detail}`);
  for (const i of [0, 1]) {
    for (const [k, v] of Object.entries(a[i]!.drops)) assert.equal(v - b[i]!.drops[k]!, 0, `${label}: port ${i} ${k} = ${v}: ${detail}`);
  }
}

describe('DPDK virtio-user front-end (dpdk-testpmd) on elastic-vhost', { timeout: 300_000 }, () => {
  const variants: Variant[] = [{ mrg: true }, { mrg: false }, { mrg: true, packed: true }, { mrg: false, packed: true, inOrder: true }, { mrg: true, queues: 4 }];
  for (const v of variants) {
    const mrg = v.mrg;
    const tag = `${mrg ? 'mrg1' : 'mrg0'}${v.packed ? '-packed' : ''}${v.inOrder ? '-inorder' : ''}${v.queues ? `-q${v.queues}` : ''}`;
    it(`${label(v)}: frames cross both ways, nothing lost, and again after testpmd is killed and restarted`, async (t) => {
      if (skip) {
        t.skip(skip);
        return;
      }
      const dir = workDir(`dpdk-${tag}`);
      const socks = [path.join(dir, 'dpdk0.sock'), path.join(dir, 'dpdk1.sock')];
      const sw = new SwitchProcess({
        workDir: dir,
        sockets: [],
        extraArgs: socks.flatMap((s, i) => ['--socket', `${s},mac=${MAC[i]},name=dpdk${i}`]),
        echo,
      });
      const pmds: TestPmd[] = [];
      let failed = true;
      try {
        await sw.start();
        for (const s of socks) await sw.waitLog(new RegExp(`listening on ${s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`));

        // ---- session 1
        const from1 = sw.log.length;
        const pmd1 = startPmd(`fe-${tag}-a`, socks, v);
        pmds.push(pmd1);
        await pmd1.start();
        for (const i of [0, 1]) {
          const line = await sw.waitLog(new RegExp(`dpdk${i}: features `), 10_000, from1);
          assert.equal(/NET_F_MRG_RXBUF/.test(line), mrg, `negotiated: ${line}`);
          assert.equal(/F_RING_PACKED/.test(line), v.packed === true, `packed ring negotiated: ${line}`);
        }
        const before1 = await settled(sw);
        const st1 = await runTraffic(pmd1);
        const after1 = await settled(sw);
        checkSession(`${label(v)} session 1`, st1, before1, after1);
        if (v.queues) checkQueues(`${label(v)} session 1`, v.queues, before1, after1);

        // ---- testpmd SIGKILLed while frames circulate
        await pmd1.cmd('set fwd mac');
        await pmd1.cmd('start tx_first');
        await sleep(300);
        const fromKill = sw.log.length;
        const e = await pmd1.kill();
        assert.equal(e.signal, 'SIGKILL');
        for (const i of [0, 1]) await sw.waitLog(new RegExp(`detach dpdk${i} `), 10_000, fromKill);
        const before2 = await settled(sw);
        for (const i of [0, 1]) assert.equal(before2.vhostUser[i].connected, false, JSON.stringify(before2.vhostUser[i]));

        // ---- session 2 on the same sockets
        const from2 = sw.log.length;
        const pmd2 = startPmd(`fe-${tag}-b`, socks, v);
        pmds.push(pmd2);
        await pmd2.start();
        for (const i of [0, 1]) {
          const line = await sw.waitLog(new RegExp(`dpdk${i}: features `), 10_000, from2);
          assert.equal(/F_RING_PACKED/.test(line), v.packed === true, `packed ring negotiated: ${line}`);
        }
        const st2 = await runTraffic(pmd2);
        const after2 = await settled(sw);
        checkSession(`${label(v)} session 2 (after kill -9)`, st2, before2, after2);
        if (v.queues) checkQueues(`${label(v)} session 2`, v.queues, before2, after2);

        const q = await pmd2.quit();
        assert.equal(q.code, 0, `testpmd quit: ${JSON.stringify(q)}\n${pmd2.tail()}`);
        const s = await sw.stop();
        assert.equal(s.code, 0, `switch exit on SIGTERM: ${JSON.stringify(s)}`);
        failed = false;
      } finally {
        for (const p of pmds) {
          if (failed) console.log(`# testpmd ${p.o.name} (last output):\n${p.tail(40)}`);
          await p.kill();
        }
        if (failed) console.log(`# switch log (last 40 lines):\n${sw.log.slice(-40).join('\n')}`);
        await sw.kill();
        if (!failed) fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});
