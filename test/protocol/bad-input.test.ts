// A hostile or broken front-end, one kind of bad input per test. Each test checks:
//   - a clear error in the log naming the request (connection-level) or the ring (ring-level),
//   - the connection closed, or the ring marked broken (and the err eventfd signalled),
//   - a second, healthy pair of connections on the same hub unaffected: traffic still passes,
//   - no fd leaked once everything is closed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/native';
import { encode, FLAG_NEED_REPLY, MemRegion, Req, u64Payload, VERSION, vringStatePayload } from '../../src/vhost-user/message';
import { bit, VirtioFeature } from '../../src/vhost-user/features';
import { DEFAULT_FEATURES, mappedBytesTotal } from '../../src/vhost-user/session';
import { VhostUserPort } from '../../src/ports/vhost-user/port';
import { closeFd, FrontEnd, GuestRam, memTablePayload, singleRegionPayload, sleep, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, waitEventfd, waitFor } from './frontend';
import {
  assertNoFdLeak,
  bindPair,
  closeGuest,
  ethFrame,
  fdCount,
  Guest,
  LogCapture,
  makePort,
  netHdr,
  packet,
  receiveN,
  sendPacket,
  seqOf,
  startGuest,
  startPair,
  TestHub,
} from './helpers';

interface Scene {
  hub: TestHub;
  log: LogCapture;
  /** the healthy pair */
  c: Guest;
  d: Guest;
  /** the victim's port and front-end (started only when asked) */
  port: VhostUserPort;
  fe: FrontEnd;
  guest: Guest | null;
}

let seq = 1000;

/** Traffic between the healthy pair still works. */
async function healthyStillWorks(s: Scene): Promise<void> {
  const n = seq++;
  await sendPacket(s.c, packet(netHdr(12), ethFrame(120, n)));
  assert.deepEqual((await receiveN(s.d, 1)).map((p) => seqOf(p.frame)), [n]);
}

async function scene(startVictim: boolean): Promise<Scene> {
  const hub = new TestHub();
  const log = new LogCapture();
  const c = await startGuest(hub, 'good-c', log);
  const d = await startGuest(hub, 'good-d', log);
  const port = makePort(hub, 'bad', log);
  const fe = bindPair(port, 'hostile');
  let guest: Guest | null = null;
  if (startVictim) {
    const { rx, tx } = await fe.start();
    await waitFor(() => port.session!.rings[0].started);
    guest = { port, fe, rx, tx };
  }
  const s = { hub, log, c, d, port, fe, guest };
  await healthyStillWorks(s);
  if (guest) await receiveN(guest, 1); // the hub floods: the victim got that frame too
  return s;
}

async function finish(s: Scene, before: number): Promise<void> {
  await healthyStillWorks(s);
  s.fe.close();
  await waitFor(() => !s.port.connected);
  await closeGuest(s.c);
  await closeGuest(s.d);
  // Only the victim logged errors.
  assert.deepEqual(
    s.log.errors().filter((l) => !l.startsWith('bad')),
    [],
  );
  await assertNoFdLeak(before);
}

/** A connection-level fault: the back-end logs `re` and closes the victim's connection. */
async function expectClosed(s: Scene, re: RegExp, weClosed = false): Promise<void> {
  if (!weClosed) await s.fe.waitClosed();
  await waitFor(() => !s.port.connected, 2000, 'the victim port to drop its connection');
  const line = await s.log.waitLine(/^bad: error: /);
  assert.match(line, re);
  assert.match(line, /; closing connection$/);
  assert.equal(s.log.errors().length, 1, `exactly one error logged:\n${s.log.errors().join('\n')}`);
}

/** A ring-level fault: the ring is marked broken, the err eventfd signalled, the connection kept. */
async function expectRingBroken(s: Scene, ring: number, re: RegExp): Promise<void> {
  const r = s.port.session!.rings[ring];
  await waitFor(() => r.broken !== null, 2000, `ring ${ring} to be marked broken`);
  const line = await s.log.waitLine(/^bad (RX|TX) ring \d+: error: /);
  assert.match(line, re);
  assert.match(line, /; ring marked broken$/);
  assert.ok((await waitEventfd(s.fe.rings[ring].errFd)) > 0, 'err eventfd signalled');
  assert.equal(s.port.connected, true, 'the connection itself stays');
  assert.equal(s.fe.closed, false);
}

function hostileTest(name: string, startVictim: boolean, body: (s: Scene) => Promise<void>): void {
  test(name, async () => {
    const before = fdCount();
    const s = await scene(startVictim);
    await body(s);
    await finish(s, before);
  });
}

// ---- framing ----

hostileTest('truncated header, then close', false, async (s) => {
  const msg = encode(Req.GET_FEATURES, VERSION);
  s.fe.sendBytes(msg.subarray(0, 6));
  await sleep(10);
  assert.equal(s.port.connected, true, 'half a header is just not complete yet');
  s.fe.close();
  await expectClosed(s, /^bad: error: peer closed the connection in the middle of a message \(6 bytes of header read\)/, true);
});

hostileTest('size field larger than the payload sent (with an fd in flight), then close', false, async (s) => {
  const memfd = native.memfdCreate('x', 4096);
  const full = encode(Req.SET_MEM_TABLE, VERSION, memTablePayload([{ guestPhysAddr: 0, memorySize: 4096, userspaceAddr: 0x1000, mmapOffset: 0 }]));
  s.fe.sendBytes(full.subarray(0, 12 + 20), [memfd]);
  closeFd(memfd);
  await sleep(10);
  s.fe.close();
  await expectClosed(s, /peer closed the connection in the middle of a message \(32 bytes of VHOST_USER_SET_MEM_TABLE payload read\)/, true);
});

hostileTest('size that does not match the request', false, async (s) => {
  s.fe.send(Req.SET_FEATURES, VERSION, new Uint8Array(4));
  await expectClosed(s, /VHOST_USER_SET_FEATURES: payload size 4 outside \[8, 8\]/);
});

hostileTest('size beyond any payload the back-end accepts', false, async (s) => {
  const b = encode(Req.GET_CONFIG, VERSION);
  new DataView(b.buffer).setUint32(8, 1 << 20, true);
  s.fe.sendBytes(b);
  await expectClosed(s, /VHOST_USER_GET_CONFIG: payload size 1048576 outside \[12, 268\]/);
});

hostileTest('unknown request number', false, async (s) => {
  s.fe.send(99, VERSION, u64Payload(0));
  await expectClosed(s, /unknown request 99: request not supported by this back-end/);
});

// ---- file descriptors ----

hostileTest('missing fd: SET_VRING_KICK without fd and without the no-fd bit', false, async (s) => {
  s.fe.send(Req.SET_VRING_KICK, VERSION, u64Payload(1));
  await expectClosed(s, /VHOST_USER_SET_VRING_KICK: bad TX ring 1: expected 1 file descriptor, got 0/);
});

hostileTest('missing fd: SET_MEM_TABLE with fewer fds than regions', false, async (s) => {
  const ram = new GuestRam([
    { gpa: 0, size: 1 << 20 },
    { gpa: 1 << 20, size: 1 << 20 },
  ]);
  s.fe.send(Req.SET_MEM_TABLE, VERSION, memTablePayload(ram.regions.map(GuestRam.describe)), [ram.regions[0].fd]);
  await expectClosed(s, /VHOST_USER_SET_MEM_TABLE: 2 regions but 1 file descriptors/);
  ram.close();
});

hostileTest('extra fd on a request that takes none (SET_OWNER)', false, async (s) => {
  const efd = native.eventfd(0);
  s.fe.send(Req.SET_OWNER, VERSION, undefined, [efd]);
  closeFd(efd);
  await expectClosed(s, /VHOST_USER_SET_OWNER: unexpected 1 file descriptor\(s\)/);
});

hostileTest('an fd together with the no-fd bit (SET_VRING_CALL)', false, async (s) => {
  const efd = native.eventfd(0);
  s.fe.send(Req.SET_VRING_CALL, VERSION, u64Payload(0x100), [efd]);
  closeFd(efd);
  await expectClosed(s, /VHOST_USER_SET_VRING_CALL: bad RX ring 0: "no fd" flag set but a file descriptor was sent/);
});

// ---- memory regions ----

hostileTest('SET_MEM_TABLE with a region overlapping another', false, async (s) => {
  const ram = new GuestRam([
    { gpa: 0, size: 2 << 20 },
    { gpa: 1 << 20, size: 2 << 20 },
  ]);
  s.fe.send(Req.SET_MEM_TABLE, VERSION, memTablePayload(ram.regions.map(GuestRam.describe)), ram.regions.map((r) => r.fd));
  await expectClosed(s, /VHOST_USER_SET_MEM_TABLE: memory region at guest address 0x100000 overlaps the region at 0x0 \(size 0x200000\)/);
  ram.close();
});

hostileTest('ADD_MEM_REG with a region overlapping one in the table', true, async (s) => {
  const extra = s.fe.ram!.addRegion({ gpa: 0x200000, size: 4 << 20, uva: 0x7e0000000000 });
  s.fe.send(Req.ADD_MEM_REG, VERSION | FLAG_NEED_REPLY, singleRegionPayload(GuestRam.describe(extra)), [extra.fd]);
  await expectClosed(s, /VHOST_USER_ADD_MEM_REG: memory region at guest address 0x200000 overlaps the region at 0x0 \(size 0x400000\)/);
});

hostileTest('SET_MEM_TABLE with a region larger than its memfd', false, async (s) => {
  const fds = [native.memfdCreate('small', 1 << 20), native.memfdCreate('ok', 1 << 20), native.memfdCreate('ok2', 1 << 20)];
  const regions: MemRegion[] = [
    { guestPhysAddr: 0x10000000, memorySize: 1 << 20, userspaceAddr: 0x7f0010000000, mmapOffset: 0 },
    { guestPhysAddr: 0, memorySize: 2 << 20, userspaceAddr: 0x7f0000000000, mmapOffset: 0 }, // fd is 1 MiB
    { guestPhysAddr: 0x20000000, memorySize: 1 << 20, userspaceAddr: 0x7f0020000000, mmapOffset: 0 },
  ];
  s.fe.send(Req.SET_MEM_TABLE, VERSION, memTablePayload(regions), [fds[1], fds[0], fds[2]]);
  for (const fd of fds) closeFd(fd);
  await expectClosed(s, /VHOST_USER_SET_MEM_TABLE: memory region \[offset 0, \+2097152\) extends past the end of its fd \(size 1048576\)/);
});

hostileTest('ADD_MEM_REG with a region larger than its memfd', true, async (s) => {
  const fd = native.memfdCreate('small', 1 << 20);
  s.fe.send(Req.ADD_MEM_REG, VERSION, singleRegionPayload({ guestPhysAddr: 0x100000000, memorySize: 1 << 20, userspaceAddr: 0x7e0000000000, mmapOffset: 4096 }), [fd]);
  closeFd(fd);
  await expectClosed(s, /VHOST_USER_ADD_MEM_REG: memory region \[offset 4096, \+1048576\) extends past the end of its fd/);
});

hostileTest('SET_VRING_ADDR outside guest memory', true, async (s) => {
  const b = new Uint8Array(40);
  const v = new DataView(b.buffer);
  v.setUint32(0, 1, true);
  v.setBigUint64(8, 0x1000n, true); // a guest-physical address, not a front-end virtual one
  v.setBigUint64(16, 0x2000n, true);
  v.setBigUint64(24, 0x3000n, true);
  s.fe.send(Req.SET_VRING_ADDR, VERSION, b);
  await expectClosed(s, /VHOST_USER_SET_VRING_ADDR: bad TX ring 1: descriptor table at 0x1000 \(ring size 256\) is not inside guest memory/);
});

// ---- rings ----

/** Writes a hand-made chain in the victim's TX ring and kicks. */
function postRawTx(g: Guest, descs: [addr: number, len: number, flags: number, next: number][]): void {
  descs.forEach(([addr, len, flags, next], i) => g.tx.writeDesc(i, addr, len, flags, next));
  g.tx.makeAvailable(0);
  g.tx.kick();
}

/** After a TX ring broke: the victim's RX ring still receives, its TX ring takes nothing more. */
async function victimRxStillWorks(s: Scene): Promise<void> {
  const g = s.guest!;
  const n = seq++;
  await sendPacket(s.c, packet(netHdr(12), ethFrame(90, n)));
  await receiveN(s.d, 1);
  assert.deepEqual((await receiveN(g, 1)).map((p) => seqOf(p.frame)), [n]);
  const used = g.tx.usedIdx;
  g.tx.postTx(packet(netHdr(12), ethFrame(90, seq++)));
  g.tx.kick();
  await sleep(20);
  assert.equal(g.tx.usedIdx, used, 'a broken ring is left alone');
}

hostileTest('TX descriptor pointing outside every region', true, async (s) => {
  const g = s.guest!;
  const hdr = g.fe.ram!.alloc(12);
  postRawTx(g, [
    [hdr, 12, VRING_DESC_F_NEXT, 1],
    [0x7654321000, 100, 0, 0],
  ]);
  await expectRingBroken(s, 1, /^bad TX ring 1: error: descriptor chain from head 0: buffer at 0x7654321000 length 100 is outside guest memory/);
  await victimRxStillWorks(s);
});

hostileTest('TX descriptor straddling the end of guest memory', true, async (s) => {
  const g = s.guest!;
  postRawTx(g, [[(4 << 20) - 50, 100, 0, 0]]);
  await expectRingBroken(s, 1, /^bad TX ring 1: error: descriptor chain from head 0: buffer at 0x400000 length 50 is outside guest memory/);
  await victimRxStillWorks(s);
});

hostileTest('RX descriptor pointing outside every region', true, async (s) => {
  const g = s.guest!;
  // Take the posted RX buffers back out of consideration: a fresh RX ring whose only chain is bad.
  await g.fe.getVringBase(0);
  g.rx.writeDesc(0, 0x7654321000, 2048, VRING_DESC_F_WRITE, 0);
  g.rx.setAvailIdx(0);
  g.rx.makeAvailable(0);
  await g.fe.setupRing(g.rx, 0);
  g.rx.kick();
  await waitFor(() => s.port.session!.rings[0].started);
  await sendPacket(s.c, packet(netHdr(12), ethFrame(100, seq++))); // the hub floods it to the victim too
  await expectRingBroken(s, 0, /^bad RX ring 0: error: descriptor chain from head 0: buffer at 0x7654321000 length 2048 is outside guest memory/);
  await receiveN(s.d, 1);
  assert.ok(s.hub.refused.some((r) => r.to === 'bad'));
});

hostileTest('TX chain that loops', true, async (s) => {
  const g = s.guest!;
  const buf = g.fe.ram!.alloc(64);
  postRawTx(g, [
    [buf, 32, VRING_DESC_F_NEXT, 1],
    [buf + 32, 32, VRING_DESC_F_NEXT, 2],
    [buf, 32, VRING_DESC_F_NEXT, 0],
  ]);
  await expectRingBroken(s, 1, /^bad TX ring 1: error: descriptor chain from head 0 loops \(more than 256 descriptors\)/);
  await victimRxStillWorks(s);
});

hostileTest('indirect table inside an indirect table', true, async (s) => {
  const g = s.guest!;
  const ram = g.fe.ram!;
  const inner = ram.alloc(16, 16);
  const data = ram.alloc(200);
  ram.dataView(inner, 16).setBigUint64(0, BigInt(data), true);
  ram.dataView(inner, 16).setUint32(8, 200, true);
  const outer = ram.alloc(32, 16);
  const ov = ram.dataView(outer, 32);
  ov.setBigUint64(0, BigInt(data), true);
  ov.setUint32(8, 12, true);
  ov.setUint16(12, VRING_DESC_F_NEXT, true);
  ov.setUint16(14, 1, true);
  ov.setBigUint64(16, BigInt(inner), true);
  ov.setUint32(24, 16, true);
  ov.setUint16(28, VRING_DESC_F_INDIRECT, true);
  postRawTx(g, [[outer, 32, VRING_DESC_F_INDIRECT, 0]]);
  await expectRingBroken(s, 1, /^bad TX ring 1: error: descriptor chain from head 0: indirect descriptor inside an indirect table/);
  await victimRxStillWorks(s);
});

hostileTest('avail index that jumps by more than the ring size', true, async (s) => {
  const g = s.guest!;
  g.tx.setAvailIdx(256 + 5);
  g.tx.kick();
  await expectRingBroken(s, 1, /^bad TX ring 1: error: avail index jumped by 261, more than the ring size 256/);
  await victimRxStillWorks(s);
});

hostileTest('avail ring entry naming a descriptor beyond the ring', true, async (s) => {
  const g = s.guest!;
  g.tx.makeAvailable(300);
  g.tx.kick();
  await expectRingBroken(s, 1, /^bad TX ring 1: error: avail ring entry 0 names descriptor 300, beyond the ring size 256/);
  await victimRxStillWorks(s);
});

test('a broken ring is set up again by the front-end (SET_VRING_ADDR) and works', async () => {
  const before = fdCount();
  const s = await scene(true);
  const g = s.guest!;
  g.tx.setAvailIdx(1000);
  g.tx.kick();
  await expectRingBroken(s, 1, /avail index jumped/);
  // QEMU's answer to a broken ring is a device reset; stop, resume at a sane index, re-set up.
  const base = await g.fe.getVringBase(1);
  assert.equal(base, 0);
  g.tx.setAvailIdx(0);
  await g.fe.setupRing(g.tx, 0);
  assert.equal(s.port.session!.rings[1].broken, null);
  await sendPacket(g, packet(netHdr(12), ethFrame(100, 77)));
  assert.deepEqual((await receiveN(s.c, 1)).map((p) => seqOf(p.frame)), [77]);
  await receiveN(s.d, 1);
  await finish(s, before);
});


hostileTest('device-writable descriptor in a TX chain', true, async (s) => {
  const g = s.guest!;
  const buf = g.fe.ram!.alloc(200);
  postRawTx(g, [
    [buf, 12, VRING_DESC_F_NEXT, 1],
    [buf + 12, 100, VRING_DESC_F_WRITE, 0],
  ]);
  await expectRingBroken(s, 1, /^bad TX ring 1: error: descriptor chain from head 0: device-writable descriptor in a TX chain/);
  await victimRxStillWorks(s);
});

test('indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC negotiated', async () => {
  const before = fdCount();
  const hub = new TestHub();
  const log = new LogCapture();
  const c = await startGuest(hub, 'good-c', log);
  const d = await startGuest(hub, 'good-d', log);
  const port = makePort(hub, 'bad', log);
  const fe = bindPair(port, 'hostile');
  const { rx, tx } = await fe.start({ features: DEFAULT_FEATURES & ~bit(VirtioFeature.RING_F_INDIRECT_DESC) });
  const s: Scene = { hub, log, c, d, port, fe, guest: { port, fe, rx, tx } };
  tx.postTx(packet(netHdr(12), ethFrame(100, 1)), { indirect: true });
  tx.kick();
  await expectRingBroken(s, 1, /^bad TX ring 1: error: descriptor chain from head 0: indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC/);
  await finish(s, before);
});

hostileTest('ring index beyond the rings offered', false, async (s) => {
  s.fe.send(Req.SET_VRING_NUM, VERSION, vringStatePayload(200, 256));
  await expectClosed(s, /VHOST_USER_SET_VRING_NUM: ring index 200 beyond the 16 rings offered/);
});

hostileTest('SET_VRING_BASE beyond a split ring index', true, async (s) => {
  s.fe.send(Req.SET_VRING_BASE, VERSION, vringStatePayload(1, 0x10000));
  await expectClosed(s, /VHOST_USER_SET_VRING_BASE: bad TX ring 1: base 65536 does not fit a split ring index/);
});

hostileTest('SET_MEM_TABLE that no longer covers running rings: the rings are marked broken', true, async (s) => {
  const other = new GuestRam([{ gpa: 0x10000000, size: 1 << 20, uva: 0x7e0000000000 }]);
  await s.fe.setMemTable(other);
  other.close();
  await waitFor(() => s.port.session!.rings[0].broken !== null && s.port.session!.rings[1].broken !== null);
  assert.match(await s.log.waitLine(/^bad RX ring 0: error/), /^bad RX ring 0: error: .*descriptor table at 0x7f.* is not inside guest memory; ring marked broken$/);
  assert.match(await s.log.waitLine(/^bad TX ring 1: error/), /not inside guest memory; ring marked broken$/);
  assert.equal(s.port.connected, true);
  // The hub's frames to the victim are refused, not written anywhere.
  await sendPacket(s.c, packet(netHdr(12), ethFrame(100, seq++)));
  await receiveN(s.d, 1);
  assert.ok(s.hub.refused.some((r) => r.to === 'bad'));
});

hostileTest('more file descriptors than any request carries', false, async (s) => {
  const fds = Array.from({ length: 20 }, () => native.eventfd(0));
  s.fe.send(Req.SET_OWNER, VERSION, undefined, fds);
  for (const fd of fds) closeFd(fd);
  await expectClosed(s, /peer sent more file descriptors than any request carries \(control message truncated\)/);
});

// ---- tenant isolation (each failed before its fix) ----

/** A region payload whose field at byte `field` of region 0 is 2^53 + 1 (not a safe integer). */
function hugeField(payload: Uint8Array, regionStart: number, field: number): Uint8Array {
  const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  v.setUint32(regionStart + field, 1, true);
  v.setUint32(regionStart + field + 4, 0x200000, true);
  return payload;
}

for (const [field, name] of [
  [0, 'guest address'],
  [8, 'size'],
  [24, 'mmap offset'],
] as const) {
  hostileTest(`SET_MEM_TABLE with a region ${name} beyond 2^53: refused, and every fd it carried is closed`, false, async (s) => {
    const ram = new GuestRam([
      { gpa: 0, size: 1 << 20 },
      { gpa: 1 << 20, size: 1 << 20 },
    ]);
    const payload = hugeField(memTablePayload(ram.regions.map(GuestRam.describe)), 8 + 32, field);
    s.fe.send(Req.SET_MEM_TABLE, VERSION, payload, ram.regions.map((r) => r.fd));
    await expectClosed(s, /VHOST_USER_SET_MEM_TABLE: 64-bit value 0x200000.* is beyond 2\^53/);
    ram.close(); // finish() checks no fd of ours stays open in the back-end
  });
}

hostileTest('ADD_MEM_REG with a region size beyond 2^53: refused, its fd closed', true, async (s) => {
  const fd = native.memfdCreate('huge', 1 << 20);
  const payload = hugeField(singleRegionPayload({ guestPhysAddr: 0x100000000, memorySize: 1 << 20, userspaceAddr: 0x7e0000000000, mmapOffset: 0 }), 8, 8);
  s.fe.send(Req.ADD_MEM_REG, VERSION, payload, [fd]);
  closeFd(fd);
  await expectClosed(s, /VHOST_USER_ADD_MEM_REG: 64-bit value 0x200000.* is beyond 2\^53/);
});

for (const req of [Req.SET_VRING_CALL, Req.SET_VRING_ERR, Req.SET_VRING_KICK] as const) {
  hostileTest(`${req === Req.SET_VRING_CALL ? 'SET_VRING_CALL' : req === Req.SET_VRING_ERR ? 'SET_VRING_ERR' : 'SET_VRING_KICK'} with a socket instead of an eventfd is refused (a full socket would block every port)`, false, async (s) => {
    const [a, b] = native.socketpair();
    s.fe.send(req, VERSION, u64Payload(0), [a]);
    closeFd(a);
    await expectClosed(s, /: bad RX ring 0: VHOST_USER_SET_VRING_(CALL|ERR|KICK) fd is not an eventfd \(socket:\[\d+\]\)/);
    closeFd(b);
  });
}

hostileTest('SET_LOG_FD with a socket instead of an eventfd is refused (the log notification must never block)', false, async (s) => {
  const [a, b] = native.socketpair();
  s.fe.send(Req.SET_LOG_FD, VERSION, undefined, [a]);
  closeFd(a);
  await expectClosed(s, /VHOST_USER_SET_LOG_FD: SET_LOG_FD fd is not an eventfd \(socket:\[\d+\]\)/);
  closeFd(b);
});

test('a call eventfd whose counter the front-end filled to the maximum does not block the back-end', async () => {
  const { a, b, done } = await startPair();
  try {
    // B's call fd: a blocking eventfd at 0xfffffffffffffffe, where a blocking write of 1 waits for ever
    const fd = native.eventfd(0, true);
    const max = new Uint8Array(8);
    new DataView(max.buffer).setBigUint64(0, 0xfffffffffffffffen, true);
    assert.equal(native.write(fd, max, 0, 8), 8);
    await b.fe.setVringCall(0, fd);
    native.close(fd);
    b.rx.setUsedEvent(b.rx.usedIdx); // B asks for a call on the next packet
    const t0 = Date.now();
    await sendPacket(a, packet(netHdr(12), ethFrame(80, 7)));
    const [p] = await receiveN(b, 1);
    assert.equal(seqOf(p.frame), 7);
    assert.ok(Date.now() - t0 < 1000, 'delivered without blocking');
    await sendPacket(b, packet(netHdr(12), ethFrame(80, 8)));
    assert.equal(seqOf((await receiveN(a, 1))[0].frame), 8, 'and the process goes on');
  } finally {
    await done();
  }
});

hostileTest('RX chain of zero-length descriptors: refused (zero sized buffers are not allowed), ring broken', true, async (s) => {
  const g = s.guest!;
  await g.fe.getVringBase(0);
  const buf = g.fe.ram!.alloc(64);
  for (let i = 0; i < 8; i++) g.rx.writeDesc(i, buf, 0, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, i + 1);
  g.rx.writeDesc(8, buf, 2048, VRING_DESC_F_WRITE, 0);
  g.rx.setAvailIdx(0);
  g.rx.makeAvailable(0);
  await g.fe.setupRing(g.rx, 0);
  g.rx.kick();
  await waitFor(() => s.port.session!.rings[0].started);
  await sendPacket(s.c, packet(netHdr(12), ethFrame(100, seq++))); // flooded to the victim too
  await expectRingBroken(s, 0, /^bad RX ring 0: error: descriptor chain from head 0: zero-length buffer \(zero sized buffers are not allowed\)/);
  await receiveN(s.d, 1);
});

test('a front-end that never reads its replies: reading from it pauses, its queue stays bounded, the others go on, every reply arrives once it reads', async () => {
  const before = fdCount();
  const hub = new TestHub();
  const log = new LogCapture();
  const c = await startGuest(hub, 'good-c', log);
  const d = await startGuest(hub, 'good-d', log);
  const port = makePort(hub, 'lazy', log);
  const [feFd, beFd] = native.socketpair();
  port.bind(beFd);
  const msg = encode(Req.GET_FEATURES, VERSION);
  let sent = 0;
  let full = 0;
  for (let round = 0; round < 400 && full < 20; round++) {
    for (let k = 0; k < 500; k++) {
      const n = native.sendmsg(feFd, msg, 0, msg.length, []);
      if (n !== msg.length) {
        assert.ok(n <= 0, 'whole 12-byte messages or nothing');
        full++;
        break;
      }
      sent++;
    }
    await sleep(1);
  }
  assert.ok(full >= 20, 'the front-end had to wait: the back-end stopped reading it');
  const conn = port.session!.conn;
  assert.ok(conn.queuedReplies <= 1, `${conn.queuedReplies} replies queued in the back-end`);
  await log.waitLine(/^lazy: the front-end is not reading its replies: reading from it paused until it does$/);
  // the others are not affected
  const n = seq++;
  await sendPacket(c, packet(netHdr(12), ethFrame(100, n)));
  assert.deepEqual((await receiveN(d, 1)).map((p) => seqOf(p.frame)), [n]);
  // it reads now: every request is answered, in order, exactly once
  const buf = new Uint8Array(1 << 16);
  let got = 0;
  let carry = 0;
  for (let waited = 0; got < sent && waited < 5000; ) {
    const r = native.recvmsg(feFd, buf, carry, buf.length - carry, 4);
    if (r.bytes <= 0) {
      await sleep(1);
      waited++;
      continue;
    }
    const have = carry + r.bytes;
    const whole = have - (have % 20); // a GET_FEATURES reply is 12 + 8 bytes
    for (let at = 0; at < whole; at += 20) {
      assert.equal(new DataView(buf.buffer, at).getUint32(0, true), Req.GET_FEATURES);
      got++;
    }
    carry = have - whole;
    buf.copyWithin(0, whole, have);
  }
  assert.equal(got, sent);
  closeFd(feFd);
  await waitFor(() => !port.connected);
  await closeGuest(c);
  await closeGuest(d);
  assert.deepEqual(log.errors(), []);
  await assertNoFdLeak(before);
});

hostileTest('TX descriptor of 2 GiB: refused by its length, ring broken', true, async (s) => {
  const g = s.guest!;
  postRawTx(g, [[0, 0x80000000, 0, 0]]);
  await expectRingBroken(s, 1, /^bad TX ring 1: error: descriptor chain from head 0: buffer length 2147483648 beyond 1073741824/);
  await victimRxStillWorks(s);
});

test('guest memory in a sealable memfd is sealed against shrinking: a front-end cannot truncate it under the back-end (SIGBUS)', async () => {
  const before = fdCount();
  const hub = new TestHub();
  const log = new LogCapture();
  const port = makePort(hub, 'sealed', log);
  const fe = bindPair(port);
  await fe.start({ ram: [{ gpa: 0, size: 4 << 20, sealable: true }] });
  await waitFor(() => port.session!.rings[0].started);
  const fd = fe.ram!.regions[0].fd;
  let shrunk = false;
  try {
    native.ftruncate(fd, 1 << 20);
    shrunk = true;
    native.ftruncate(fd, 4 << 20); // put it back before anything touches the missing pages
  } catch (e) {
    assert.equal((e as { code?: string }).code, 'EPERM');
  }
  assert.equal(shrunk, false, 'the front-end could shrink the memory the back-end maps');
  assert.ok(!log.lines.some((l) => /cannot be sealed/.test(l)));
  fe.close();
  await waitFor(() => !port.connected);
  await assertNoFdLeak(before);
});

test('memory-table caps: a table beyond what one connection may map, or beyond the process total, is refused before anything is mapped', async () => {
  const before = fdCount();
  const hub = new TestHub();
  const log = new LogCapture();
  const c = await startGuest(hub, 'good-c', log);
  const MiB = 1 << 20;
  try {
    // per connection: 8 MiB allowed, 16 MiB asked (a sparse memfd: nothing is allocated)
    const big = makePort(hub, 'bad', log, { session: { maxMappedBytes: 8 * MiB } });
    const fe1 = bindPair(big, 'hostile');
    const ram = new GuestRam([{ gpa: 0, size: 16 * MiB }]);
    fe1.send(Req.SET_MEM_TABLE, VERSION, memTablePayload(ram.regions.map(GuestRam.describe)), ram.regions.map((r) => r.fd));
    await fe1.waitClosed();
    assert.match(await log.waitLine(/^bad: error: VHOST_USER_SET_MEM_TABLE: memory table of 16 MiB/), /is beyond the 8 MiB one connection may map \(--max-guest-mem-gb\) \(refused; no reply asked for\); closing connection$/);
    ram.close();
    fe1.close();
    // process total: what is mapped now + 6 MiB allowed; 4 MiB fits, then 4 MiB more does not
    const total = mappedBytesTotal() + 6 * MiB;
    const p2 = makePort(hub, 'ok2', log, { session: { maxTotalMappedBytes: total } });
    const fe2 = bindPair(p2);
    await fe2.start();
    const p3 = makePort(hub, 'bad3', log, { session: { maxTotalMappedBytes: total } });
    const fe3 = bindPair(p3, 'hostile3');
    const ram3 = new GuestRam([{ gpa: 0, size: 4 * MiB }]);
    fe3.send(Req.SET_MEM_TABLE, VERSION, memTablePayload(ram3.regions.map(GuestRam.describe)), ram3.regions.map((r) => r.fd));
    await fe3.waitClosed();
    assert.match(await log.waitLine(/^bad3: error: /), /beyond .* \(--max-total-mem-gb\) \(refused; no reply asked for\); closing connection$/);
    ram3.close();
    fe3.close();
    // and once ok2 goes, its memory is given back
    const held = mappedBytesTotal();
    fe2.close();
    await waitFor(() => !p2.connected);
    assert.equal(mappedBytesTotal(), held - 4 * MiB);
    // the healthy guest never noticed
    await sendPacket(c, packet(netHdr(12), ethFrame(80, 1)));
  } finally {
    await closeGuest(c);
  }
  await assertNoFdLeak(before);
});

// ---- guard pages: every mapping (the back-end's windows, the test front-end's RAM) sits between
// PROT_NONE pages, so a byte read or written just outside a region would kill this test process ----

test('buffers and frames that end exactly at the end of guest memory: used to the last byte, nothing outside touched', async () => {
  const before = fdCount();
  const hub = new TestHub();
  const log = new LogCapture();
  const a = await startGuest(hub, 'vmA', log);
  const b = await startGuest(hub, 'vmB', log, { kickRx: false });
  try {
    const end = 4 << 20; // each guest's one region is [0, 4 MiB)
    // B: its RX ring gets one buffer, the last 1514 + 12 bytes of its memory
    await b.fe.getVringBase(0);
    b.rx.writeDesc(0, end - 1526, 1526, VRING_DESC_F_WRITE, 0);
    b.rx.setAvailIdx(0);
    b.rx.makeAvailable(0);
    await b.fe.setupRing(b.rx, 0);
    b.rx.kick();
    await waitFor(() => b.port.session!.rings[0].started);
    // A: one full-size frame whose bytes are the last 1514 bytes of its memory, header just before
    const frame = ethFrame(1514, 77);
    const ram = a.fe.ram!.regions[0].bytes;
    ram.set(netHdr(12), end - 1526);
    ram.set(frame, end - 1514);
    a.tx.writeDesc(0, end - 1526, 12, VRING_DESC_F_NEXT, 1);
    a.tx.writeDesc(1, end - 1514, 1514, 0, 0);
    a.tx.makeAvailable(0);
    a.tx.kick();
    await waitFor(() => b.rx.usedIdx === 1, 2000, 'B to get the frame');
    assert.deepEqual(b.rx.peekUsed(), [{ id: 0, len: 1526 }]);
    const got = b.fe.ram!.regions[0].bytes.slice(end - 1526, end);
    assert.equal(got[10] | (got[11] << 8), 1, 'num_buffers');
    assert.deepEqual(got.subarray(12), frame, 'byte-identical to the last byte');
    // one byte more would cross the end: refused, the ring broken, nothing touched
    const hdr = a.fe.ram!.alloc(12);
    a.tx.writeDesc(2, hdr, 12, VRING_DESC_F_NEXT, 3);
    a.tx.writeDesc(3, end - 1513, 1514, 0, 0);
    a.tx.makeAvailable(2);
    a.tx.kick();
    await waitFor(() => a.port.session!.rings[1].broken !== null);
    assert.match(a.port.session!.rings[1].broken!, /buffer at 0x3ffa17 length 1 is outside guest memory|outside guest memory/);
  } finally {
    await closeGuest(a);
    await closeGuest(b);
  }
  await assertNoFdLeak(before);
});
