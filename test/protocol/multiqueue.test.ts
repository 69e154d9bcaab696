// Multiqueue through the real engine with the TypeScript front-end: a receiver with four queue
// pairs gets a single-queue sender's flows spread over its four RX rings by flow hash (each flow on
// one ring, in order); a multiqueue sender's TX queue k lands on RX queue k; one full RX ring holds
// only its own flows (the others go on); disabling rings spreads what is held over those left.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RESPREAD_MIN_MS } from '../../src/ports/vhost-user/port';
import { sleep, waitFor, Virtqueue } from './frontend';
import { Switch } from '../../src/engine/switch';
import { Guest, LogCapture, netHdr, packet, sendPacket, startGuest, withSwitch } from './helpers';

const mac = (n: number) => new Uint8Array([0x52, 0x54, 0, 0, 0, n]);
const BCAST = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

/** an Ethernet/IPv4/UDP frame from mac(src) to mac(dst), UDP source port sport, payload = seq */
function udpFrame(src: number, dst: number, sport: number, seq: number): Uint8Array {
  const f = new Uint8Array(14 + 20 + 8 + 8);
  f.set(mac(dst), 0);
  f.set(mac(src), 6);
  f[12] = 0x08;
  f[14] = 0x45;
  f[14 + 8] = 64;
  f[14 + 9] = 17;
  f.set([10, 0, 0, src], 14 + 12);
  f.set([10, 0, 0, dst], 14 + 16);
  const v = new DataView(f.buffer);
  v.setUint16(14 + 2, 20 + 8 + 8);
  v.setUint16(34, sport);
  v.setUint16(36, 9000);
  v.setUint16(38, 16);
  v.setUint32(42, sport);
  v.setUint32(46, seq);
  return f;
}

const flowOf = (frame: Uint8Array): number => new DataView(frame.buffer, frame.byteOffset).getUint32(42);
const seqOfUdp = (frame: Uint8Array): number => new DataView(frame.buffer, frame.byteOffset).getUint32(46);

/** every frame received on each RX ring of g so far: [ring pair] → [flow, seq][] */
function drainRings(g: Guest, pairs: number, into: [number, number][][]): void {
  for (let k = 0; k < pairs; k++) {
    const ring = g.fe.rings[2 * k] as Virtqueue;
    for (const p of ring.receive(g.fe.hdrLen, g.fe.mergeable)) if (p.frame[12] === 0x08) into[k].push([flowOf(p.frame), seqOfUdp(p.frame)]);
  }
}

/** Guest B with four queue pairs (rxBuffers RX buffers posted on each RX ring), its rings
 * started, its RX queue set in effect and its MAC learned by the switch. */
async function fourQueueReceiver(start: typeof startGuest, sw: Switch, log: LogCapture, rxBuffers: number): Promise<Guest> {
  const b = await start(sw, 'vmB', log, { queuePairs: 4, rxBuffers: [rxBuffers, 2048] });
  await waitFor(() => [0, 2, 4, 6].every((i) => b.port.session!.rings[i].started), 2000, 'B RX rings');
  await sleep(10); // the port's RX queue set is applied outside the session's event
  await sendPacket(b, packet(netHdr(12), udpFrame(2, 0xff, 1, 0).fill(0xff, 0, 6))); // B learned
  return b;
}

test('a 4-queue receiver: a single-queue sender\'s flows spread over all four RX rings, each flow on one ring and in order', async () => {
  await withSwitch({ poolBytes: 4 << 20, queues: 8 }, async (sw, log, startGuest) => {
    const a = await startGuest(sw, 'vmA', log);
    const b = await fourQueueReceiver(startGuest, sw, log, 256);
    const got: [number, number][][] = [[], [], [], []];
    const FLOWS = 32;
    const PER = 6;
    for (let s = 0; s < PER; s++) for (let f = 0; f < FLOWS; f++) await sendPacket(a, packet(netHdr(12), udpFrame(1, 2, 40000 + f, s)));
    await waitFor(() => {
      drainRings(b, 4, got);
      return got.reduce((n, r) => n + r.length, 0) >= FLOWS * PER;
    }, 3000, 'all frames at B');
    const ringOf = new Map<number, number>();
    for (let k = 0; k < 4; k++) {
      assert.ok(got[k].length > 0, `RX ring ${2 * k} got nothing: ${got.map((r) => r.length).join(' ')}`);
      for (const [flow] of got[k]) {
        assert.equal(ringOf.get(flow) ?? k, k, `flow ${flow} on two rings`);
        ringOf.set(flow, k);
      }
    }
    for (let f = 0; f < FLOWS; f++) {
      const seqs = got[ringOf.get(40000 + f)!].filter(([fl]) => fl === 40000 + f).map(([, s]) => s);
      assert.deepEqual(seqs, Array.from({ length: PER }, (_, i) => i), `flow ${f} in order`);
    }
    assert.deepEqual(b.port.queueFrames().rx.slice(0, 4), got.map((r) => r.length));
    assert.equal(sw.stats().total.dropped, 0);
  });
});

test('a 4-queue sender to a 4-queue receiver: TX queue k arrives on RX queue k', async () => {
  await withSwitch({ poolBytes: 4 << 20, queues: 8 }, async (sw, log, startGuest) => {
    const a = await startGuest(sw, 'vmA', log, { queuePairs: 4 });
    const b = await fourQueueReceiver(startGuest, sw, log, 64);
    // A's TX rings started (as QEMU starts every ring at DRIVER_OK): A sends on four queues
    for (const i of [1, 3, 5, 7]) (a.fe.rings[i] as Virtqueue).kick();
    await waitFor(() => [1, 3, 5, 7].every((i) => a.port.session!.rings[i].started), 2000, 'A TX rings');
    await sleep(10);
    const got: [number, number][][] = [[], [], [], []];
    for (let k = 0; k < 4; k++) {
      const tx = a.fe.rings[2 * k + 1] as Virtqueue;
      for (let s = 0; s < 5; s++) tx.postTx(packet(netHdr(12), udpFrame(1, 2, 100 + k, s))); // one flow per TX queue
      tx.kick();
    }
    await waitFor(() => {
      drainRings(b, 4, got);
      return got.reduce((n, r) => n + r.length, 0) >= 20;
    }, 3000, 'all frames at B');
    for (let k = 0; k < 4; k++) assert.deepEqual(got[k], [0, 1, 2, 3, 4].map((s) => [100 + k, s]), `RX ring ${2 * k}: ${JSON.stringify(got)}`);
    assert.deepEqual(a.port.queueFrames().tx.slice(0, 4), [5, 5, 5, 5]);
  });
});

test('one RX ring without buffers holds only its flows; disabling rings spreads the held frames over the rest, in order', async () => {
  await withSwitch({ poolBytes: 4 << 20, queues: 8 }, async (sw, log, startGuest) => {
    const a = await startGuest(sw, 'vmA', log);
    const b = await fourQueueReceiver(startGuest, sw, log, 0);
    // buffers on rings 0, 2 and 4 only
    for (const i of [0, 2, 4]) {
      (b.fe.rings[i] as Virtqueue).postRx(256, 2048);
      (b.fe.rings[i] as Virtqueue).kick();
    }
    await sleep(10);
    const FLOWS = 32;
    for (let s = 0; s < 4; s++) for (let f = 0; f < FLOWS; f++) await sendPacket(a, packet(netHdr(12), udpFrame(1, 2, 40000 + f, s)));
    await sleep(20);
    const got: [number, number][][] = [[], [], [], []];
    drainRings(b, 4, got);
    const held = sw.stats().ports.find((p) => p.name === 'vmB')!;
    assert.equal(got[3].length, 0);
    assert.ok(held.queuedPerQueue.length === 4 && held.queuedPerQueue[3] > 0 && held.queuedPerQueue.slice(0, 3).every((n) => n === 0), JSON.stringify(held.queuedPerQueue));
    assert.equal(got[0].length + got[1].length + got[2].length + held.queuedFrames, FLOWS * 4, 'the other rings got theirs');
    // the guest goes down to two queue pairs: ring 6's held frames move to rings 0 and 2
    await b.fe.setVringEnable(4, false);
    await b.fe.setVringEnable(6, false);
    await b.fe.setVringEnable(5, false);
    await b.fe.setVringEnable(7, false);
    const after: [number, number][][] = [[], [], [], []];
    await waitFor(() => {
      drainRings(b, 2, after);
      return sw.stats().ports.find((p) => p.name === 'vmB')!.queuedFrames === 0;
    }, 3000, 'held frames delivered');
    drainRings(b, 2, after);
    assert.equal(after[0].length + after[1].length, held.queuedFrames);
    // every flow's frames, over before and after, complete and in order
    const all = new Map<number, number[]>();
    for (const r of [...got, ...after]) for (const [f, s] of r) all.set(f, [...(all.get(f) ?? []), s]);
    for (let f = 0; f < FLOWS; f++) assert.deepEqual(all.get(40000 + f), [0, 1, 2, 3], `flow ${f}`);
    assert.equal(sw.stats().total.dropped, 0);
    sw.checkInvariants();
  });
});

test('a guest toggling an RX queue on and off without pause: at most one re-spread per RESPREAD_MIN_MS, nothing lost, flows in order', async () => {
  await withSwitch({ poolBytes: 4 << 20, queues: 8 }, async (sw, log, startGuest) => {
    const a = await startGuest(sw, 'vmA', log);
    const b = await fourQueueReceiver(startGuest, sw, log, 0);
    const FLOWS = 32;
    for (let s = 0; s < 8; s++) for (let f = 0; f < FLOWS; f++) await sendPacket(a, packet(netHdr(12), udpFrame(1, 2, 40000 + f, s)));
    assert.equal(sw.stats().ports.find((p) => p.name === 'vmB')!.queuedFrames, FLOWS * 8);
    const changes0 = b.port.counters.rxQueueChanges;
    const t0 = performance.now();
    for (let k = 0; k < 400; k++) await b.fe.setVringEnable(6, k % 2 === 1);
    const ms = performance.now() - t0;
    await sleep(2 * RESPREAD_MIN_MS);
    const changes = b.port.counters.rxQueueChanges - changes0;
    console.log(`# 400 toggles in ${ms.toFixed(0)} ms: ${changes} re-spreads`);
    assert.ok(changes >= 1, 'the last state took effect');
    assert.ok(changes <= ms / RESPREAD_MIN_MS + 2, `${changes} re-spreads in ${ms.toFixed(0)} ms`);
    sw.checkInvariants();
    // buffers everywhere: every frame arrives, each flow in order
    for (const i of [0, 2, 4, 6]) {
      (b.fe.rings[i] as Virtqueue).postRx(200, 2048);
      (b.fe.rings[i] as Virtqueue).kick();
    }
    const got: [number, number][][] = [[], [], [], []];
    await waitFor(() => {
      drainRings(b, 4, got);
      return got.reduce((n, r) => n + r.length, 0) >= FLOWS * 8;
    }, 3000, 'all frames at B');
    const all = new Map<number, number[]>();
    for (const r of got) for (const [f, s] of r) all.set(f, [...(all.get(f) ?? []), s]);
    for (let f = 0; f < FLOWS; f++) assert.deepEqual(all.get(40000 + f), [0, 1, 2, 3, 4, 5, 6, 7], `flow ${f}`);
    assert.equal(sw.stats().total.dropped, 0);
  });
});
