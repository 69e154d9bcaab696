// A hostile guest or front-end on PACKED rings, one kind of bad input per test (as bad-input.test.ts
// for split rings). Each checks: a clear error naming the ring (or the request), the ring marked
// broken with its err eventfd signalled (or the connection closed), a healthy pair on the same hub
// unaffected, no fd leaked.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bit, VirtioFeature } from '../../src/vhost-user/features';
import { DEFAULT_FEATURES } from '../../src/vhost-user/session';
import { Req, VERSION, vringStatePayload } from '../../src/vhost-user/message';
import { sleep, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, waitEventfd, waitFor } from './frontend';
import { PackedVirtqueue } from './packed-frontend';
import { assertNoFdLeak, closeGuest, ethFrame, fdCount, Guest, LogCapture, netHdr, packet, receiveN, sendPacket, seqOf, startGuest, startPackedGuest, TestHub } from './helpers';

interface Scene {
  hub: TestHub;
  log: LogCapture;
  c: Guest;
  d: Guest;
  v: Guest<PackedVirtqueue>;
}

let seq = 5000;

async function healthyStillWorks(s: Scene): Promise<void> {
  const n = seq++;
  await sendPacket(s.c, packet(netHdr(12), ethFrame(120, n)));
  assert.deepEqual((await receiveN(s.d, 1)).map((p) => seqOf(p.frame)), [n]);
}

async function scene(features?: bigint): Promise<Scene> {
  const hub = new TestHub();
  const log = new LogCapture();
  const c = await startGuest(hub, 'good-c', log);
  const d = await startGuest(hub, 'good-d', log);
  const v = await startPackedGuest(hub, 'bad', log, features === undefined ? {} : { features });
  const s = { hub, log, c, d, v };
  await healthyStillWorks(s);
  await receiveN(v, 1); // flooded to the victim too
  return s;
}

async function finish(s: Scene, before: number): Promise<void> {
  await healthyStillWorks(s);
  await closeGuest(s.v);
  await closeGuest(s.c);
  await closeGuest(s.d);
  assert.deepEqual(s.log.errors().filter((l) => !l.startsWith('bad')), []);
  await assertNoFdLeak(before);
}

async function expectRingBroken(s: Scene, ring: number, re: RegExp): Promise<void> {
  const r = s.v.port.session!.rings[ring];
  await waitFor(() => r.broken !== null, 2000, `ring ${ring} to be marked broken`);
  const line = await s.log.waitLine(/^bad (RX|TX) ring \d+: error: /);
  assert.match(line, re);
  assert.match(line, /; ring marked broken$/);
  assert.ok((await waitEventfd(s.v.fe.packedRings[ring].errFd)) > 0, 'err eventfd signalled');
  assert.equal(s.v.port.connected, true, 'the connection itself stays');
}

/** After the TX ring broke: RX still works, TX takes nothing more. */
async function victimRxStillWorks(s: Scene): Promise<void> {
  const n = seq++;
  await sendPacket(s.c, packet(netHdr(12), ethFrame(90, n)));
  await receiveN(s.d, 1);
  assert.deepEqual((await receiveN(s.v, 1)).map((p) => seqOf(p.frame)), [n]);
  const used = s.v.tx.usedIdx;
  s.v.tx.postTx(packet(netHdr(12), ethFrame(90, seq++)));
  s.v.tx.kick();
  await sleep(20);
  assert.equal(s.v.tx.usedIdx, used, 'a broken ring is left alone');
}

function hostileTxTest(name: string, descs: (s: Scene) => { addr: number; len: number; flags: number }[], re: RegExp, features?: bigint): void {
  test(`packed: ${name}`, async () => {
    const before = fdCount();
    const s = await scene(features);
    s.v.tx.postRaw(descs(s));
    s.v.tx.kick();
    await expectRingBroken(s, 1, re);
    await victimRxStillWorks(s);
    await finish(s, before);
  });
}

const hdr = (s: Scene): number => s.v.fe.ram!.alloc(12);

hostileTxTest('TX descriptor pointing outside every region', (s) => [
  { addr: hdr(s), len: 12, flags: VRING_DESC_F_NEXT },
  { addr: 0x7654321000, len: 100, flags: 0 },
], /^bad TX ring 1: error: descriptor chain at 0: buffer at 0x7654321000 length 100 is outside guest memory/);

hostileTxTest('TX descriptor straddling the end of guest memory', () => [{ addr: (4 << 20) - 50, len: 100, flags: 0 }], /descriptor chain at 0: buffer at 0x400000 length 50 is outside guest memory/);

hostileTxTest('zero-length descriptor', (s) => [{ addr: hdr(s), len: 0, flags: 0 }], /descriptor chain at 0: zero-length buffer/);

hostileTxTest('descriptor over 1 GiB', (s) => [{ addr: hdr(s), len: 2 ** 31, flags: 0 }], /descriptor chain at 0: buffer length 2147483648 beyond 1073741824/);

hostileTxTest('device-writable descriptor in a TX chain', (s) => [{ addr: hdr(s), len: 64, flags: VRING_DESC_F_WRITE }], /device-writable descriptor in a TX chain/);

hostileTxTest('a chain that never ends (NEXT on every descriptor of the ring)', (s) => {
  const b = hdr(s);
  return Array.from({ length: 256 }, () => ({ addr: b, len: 12, flags: VRING_DESC_F_NEXT }));
}, /descriptor chain at 0 goes on beyond the 256 descriptors the ring has free/);

hostileTxTest('indirect descriptor in a chain (with NEXT)', (s) => [
  { addr: s.v.fe.ram!.alloc(32, 16), len: 32, flags: VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT },
  { addr: hdr(s), len: 12, flags: 0 },
], /descriptor chain at 0: indirect descriptor in a chain \(only alone\)/);

hostileTxTest('indirect table inside an indirect table', (s) => {
  const ram = s.v.fe.ram!;
  const inner = ram.alloc(16, 16);
  const outer = ram.alloc(32, 16);
  const ov = ram.dataView(outer, 32);
  ov.setBigUint64(0, BigInt(hdr(s)), true);
  ov.setUint32(8, 12, true);
  ov.setBigUint64(16, BigInt(inner), true);
  ov.setUint32(24, 16, true);
  ov.setUint16(30, VRING_DESC_F_INDIRECT, true);
  return [{ addr: outer, len: 32, flags: VRING_DESC_F_INDIRECT }];
}, /descriptor chain at 0: indirect descriptor inside an indirect table/);

hostileTxTest('indirect table of a length that is not a multiple of 16', (s) => [{ addr: s.v.fe.ram!.alloc(32, 16), len: 24, flags: VRING_DESC_F_INDIRECT }], /bad indirect table length 24/);

hostileTxTest('indirect table outside guest memory', () => [{ addr: 0x7654321000, len: 32, flags: VRING_DESC_F_INDIRECT }], /indirect table at 0x7654321000 length 32 is not inside guest memory/);

hostileTxTest(
  'indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC',
  (s) => [{ addr: s.v.fe.ram!.alloc(32, 16), len: 32, flags: VRING_DESC_F_INDIRECT }],
  /indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC/,
  DEFAULT_FEATURES & ~bit(VirtioFeature.RING_F_INDIRECT_DESC),
);

test('packed: RX descriptor pointing outside every region breaks the RX ring only', async () => {
  const before = fdCount();
  const s = await scene();
  const g = s.v;
  // a fresh RX ring whose only chain is bad
  await g.fe.getVringBase(0);
  g.rx.close();
  const rx = (g.fe.packedRings[0] = new PackedVirtqueue(g.fe.ram!, 0, 256, { eventIdx: true }));
  g.rx = rx;
  rx.postRaw([{ addr: 0x7654321000, len: 2048, flags: VRING_DESC_F_WRITE }]);
  await g.fe.setupRing(rx, 0x80008000);
  rx.kick();
  await waitFor(() => g.port.session!.rings[0].started);
  await sendPacket(s.c, packet(netHdr(12), ethFrame(100, seq++)));
  await expectRingBroken(s, 0, /^bad RX ring 0: error: descriptor chain at 0: buffer at 0x7654321000 length 2048 is outside guest memory/);
  await receiveN(s.d, 1);
  assert.ok(s.hub.refused.some((r) => r.to === 'bad'));
  // the victim still sends
  await sendPacket(g, packet(netHdr(12), ethFrame(100, 77)));
  assert.deepEqual((await receiveN(s.d, 1)).map((p) => seqOf(p.frame)), [77]);
  await finish(s, before);
});

for (const [name, base, re] of [
  ['used index differing from the avail index', 0x80058003, /base 0x80058003: used index 0x8005 differs from avail index 0x8003/],
  ['an index beyond the ring size', 0x812c812c, /base 0x812c812c: index 300 beyond the ring size 256/],
] as const) {
  test(`packed: SET_VRING_BASE with ${name} closes the connection with a logged error`, async () => {
    const before = fdCount();
    const s = await scene();
    s.v.fe.send(Req.SET_VRING_BASE, VERSION, vringStatePayload(1, base));
    await s.v.fe.waitClosed();
    await waitFor(() => !s.v.port.connected);
    const line = await s.log.waitLine(/^bad: error: /);
    assert.match(line, /VHOST_USER_SET_VRING_BASE: bad TX ring 1: /);
    assert.match(line, re);
    await finish(s, before);
  });
}

test('packed: a broken TX ring set up again by the front-end (GET_VRING_BASE, then BASE/ADDR/KICK as QEMU does) works', async () => {
  const before = fdCount();
  const s = await scene();
  const g = s.v;
  // two good chains, then one that goes on beyond the ring: the good ones are counted, the ring breaks
  g.tx.postTx(packet(netHdr(12), ethFrame(80, 1)));
  g.tx.postTx(packet(netHdr(12), ethFrame(80, 2)));
  const b = g.fe.ram!.alloc(12);
  g.tx.postRaw(Array.from({ length: 254 }, () => ({ addr: b, len: 12, flags: VRING_DESC_F_NEXT })));
  g.tx.kick();
  await expectRingBroken(s, 1, /descriptor chain at 2 goes on beyond the 254 descriptors the ring has free/);
  // a fresh TX ring at a new place, from the start
  const base = await g.fe.getVringBase(1);
  assert.equal(base, 0x80008000, 'nothing was taken from the broken ring');
  g.tx.close();
  const tx = (g.fe.packedRings[1] = new PackedVirtqueue(g.fe.ram!, 1, 256, { eventIdx: true }));
  g.tx = tx;
  await g.fe.setupRing(tx, 0x80008000);
  await sendPacket(g, packet(netHdr(12), ethFrame(80, 3)));
  assert.deepEqual((await receiveN(s.d, 1)).map((p) => seqOf(p.frame)), [3]);
  assert.equal(g.port.session!.rings[1].broken, null);
  await finish(s, before);
});
