// Every vhost-user request the back-end handles, driven by the TypeScript front-end over a socketpair.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/native';
import { encode, FLAG_NEED_REPLY, FLAG_REPLY, ProtocolFeature, Req, u64Payload, VERSION, vringStatePayload } from '../../src/vhost-user/message';
import { bit, VirtioFeature } from '../../src/vhost-user/features';
import { DEFAULT_FEATURES, DEFAULT_PROTOCOL_FEATURES } from '../../src/vhost-user/session';
import { closeFd, concat as concatBytes, GuestRam, sleep, STATUS_DRIVER_OK, Virtqueue, waitFor } from './frontend';
import {
  assertNoFdLeak,
  bindPair,
  BROADCAST,
  CapturePort,
  closeGuest,
  ethFrame,
  fdCount,
  LogCapture,
  MAC_A,
  makePort,
  netHdr,
  packet,
  receiveN,
  sendPacket,
  seqOf,
  startGuest,
  TestHub,
  startPair,
} from './helpers';

const frameOf = (seq: number, len = 100) => packet(netHdr(12), ethFrame(len, seq));

test('GET_FEATURES offers the back-end features; SET_FEATURES takes a subset of them', async () => {
  const before = fdCount();
  const log = new LogCapture();
  const port = makePort(new TestHub(), 'vm0', log);
  const fe = bindPair(port);
  const offered = await fe.getFeatures();
  assert.equal(offered, DEFAULT_FEATURES);
  const want = bit(VirtioFeature.F_VERSION_1) | bit(VirtioFeature.NET_F_MRG_RXBUF);
  await fe.setFeatures(want);
  await fe.sync();
  assert.equal(port.session!.features, want);
  assert.equal(port.session!.featuresSet, true);
  assert.ok(log.lines.some((l) => l.includes('features NET_F_MRG_RXBUF|F_VERSION_1')), log.lines.join('\n'));
  await closeGuest({ port, fe });
  await assertNoFdLeak(before);
});

test('SET_FEATURES with a bit that was not offered, no ack asked for: the connection closes with a logged error', async () => {
  const before = fdCount();
  const log = new LogCapture();
  const port = makePort(new TestHub(), 'vm0', log);
  const fe = bindPair(port);
  const offered = await fe.getFeatures();
  await fe.setFeatures(offered | bit(VirtioFeature.NET_F_CTRL_VQ)).catch(() => {});
  await fe.waitClosed();
  const line = await log.waitLine(/VHOST_USER_SET_FEATURES/);
  assert.match(line, /vm0: error: VHOST_USER_SET_FEATURES: .*not offered: NET_F_CTRL_VQ \(refused; no reply asked for\); closing connection/);
  await waitFor(() => !port.connected);
  fe.close();
  await assertNoFdLeak(before);
});

test('GET/SET_PROTOCOL_FEATURES and REPLY_ACK: need_reply gets a u64 ack only once REPLY_ACK is negotiated', async () => {
  const before = fdCount();
  const log = new LogCapture();
  const port = makePort(new TestHub(), 'vm0', log);
  const fe = bindPair(port);
  assert.equal(await fe.getProtocolFeatures(), DEFAULT_PROTOCOL_FEATURES);

  // Before REPLY_ACK: need_reply is ignored; the next message we see is GET_FEATURES' reply.
  fe.send(Req.SET_OWNER, VERSION | FLAG_NEED_REPLY);
  fe.send(Req.GET_FEATURES);
  let r = await fe.recv();
  assert.equal(r.request, Req.GET_FEATURES);

  // SET_PROTOCOL_FEATURES including REPLY_ACK is itself acked when it asks for it.
  await fe.setProtocolFeatures(bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.MQ));
  assert.equal(port.session!.protocolFeatures, bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.MQ));

  // Now: a request without a reply of its own, with need_reply → u64 0, reply flag set.
  fe.send(Req.SET_OWNER, VERSION | FLAG_NEED_REPLY);
  r = await fe.recv();
  assert.equal(r.request, Req.SET_OWNER);
  assert.equal(r.flags, VERSION | FLAG_REPLY);
  assert.deepEqual([...r.payload], [0, 0, 0, 0, 0, 0, 0, 0]);
  // Without need_reply: no ack.
  fe.send(Req.SET_OWNER, VERSION);
  fe.send(Req.GET_QUEUE_NUM);
  r = await fe.recv();
  assert.equal(r.request, Req.GET_QUEUE_NUM);
  // A request with a reply of its own gets only that reply, need_reply or not.
  fe.send(Req.GET_FEATURES, VERSION | FLAG_NEED_REPLY);
  r = await fe.recv();
  assert.equal(r.request, Req.GET_FEATURES);
  assert.equal(r.payload.length, 8);
  fe.send(Req.GET_QUEUE_NUM);
  assert.equal((await fe.recv()).request, Req.GET_QUEUE_NUM);

  // Protocol features not offered: connection closed.
  fe.send(Req.SET_PROTOCOL_FEATURES, VERSION, u64Payload(bit(ProtocolFeature.PAGEFAULT)));
  await fe.waitClosed();
  assert.match(await log.waitLine(/error/), /VHOST_USER_SET_PROTOCOL_FEATURES: protocol features include ones not offered: PAGEFAULT/);
  await waitFor(() => !port.connected);
  fe.close();
  await assertNoFdLeak(before);
});

test('GET_QUEUE_NUM (with VHOST_USER_PROTOCOL_F_MQ) and GET_MAX_MEM_SLOTS', async () => {
  const before = fdCount();
  const hub = new TestHub();
  const log = new LogCapture();
  const port = makePort(hub, 'vm0', log, { session: { maxQueuePairs: 4, maxMemSlots: 16 } });
  const fe = bindPair(port);
  await fe.setProtocolFeatures(bit(ProtocolFeature.MQ));
  assert.equal(await fe.getQueueNum(), 4);
  assert.equal(await fe.getMaxMemSlots(), 16);
  const fe2Port = makePort(hub, 'vm1', log);
  const fe2 = bindPair(fe2Port);
  await fe2.setProtocolFeatures(bit(ProtocolFeature.MQ));
  assert.equal(await fe2.getQueueNum(), 8);
  assert.equal(await fe2.getMaxMemSlots(), 32);
  await closeGuest({ port, fe });
  await closeGuest({ port: fe2Port, fe: fe2 });
  await assertNoFdLeak(before);
});

test('SET_MEM_TABLE with several regions, ADD_MEM_REG and REM_MEM_REG: traffic through each region', async () => {
  const before = fdCount();
  const hub = new TestHub();
  const log = new LogCapture();
  // A: two regions in the table, the second at a non-zero mmap offset in its memfd.
  const a = await startGuest(hub, 'vmA', log, {
    ram: [
      { gpa: 0, size: 2 << 20, uva: 0x7f1200000000 },
      { gpa: 0x40000000, size: 1 << 20, uva: 0x7f1300000000, mmapOffset: 0x3000 },
    ],
  });
  const b = await startGuest(hub, 'vmB', log);
  assert.equal(a.port.session!.mem.size, 2);
  assert.ok(log.lines.some((l) => l.includes('vmA: memory table: 0x0+0x200000, 0x40000000+0x100000')), log.lines.join('\n'));

  await sendPacket(a, frameOf(1), { region: 0 });
  await sendPacket(a, frameOf(2), { region: 1, split: [12] });
  // ADD_MEM_REG a third region, send through it.
  const added = a.fe.ram!.addRegion({ gpa: 0x100000000, size: 1 << 20, uva: 0x7f1400000000 });
  await a.fe.addMemReg(added);
  assert.equal(a.port.session!.mem.size, 3);
  await sendPacket(a, frameOf(3), { region: 2 });
  assert.deepEqual((await receiveN(b, 3)).map((p) => seqOf(p.frame)), [1, 2, 3]);

  // REM_MEM_REG: gone for the back-end; a buffer there now breaks the ring.
  await a.fe.remMemReg(added);
  assert.equal(a.port.session!.mem.size, 2);
  a.tx.postTx(frameOf(4), { region: 2 });
  a.tx.kick();
  await waitFor(() => a.port.session!.rings[1].broken !== null);
  assert.match(a.port.session!.rings[1].broken!, /buffer at 0x100000.* is outside guest memory/);
  assert.match(await log.waitLine(/vmA TX ring 1: error/), /vmA TX ring 1: error: descriptor chain from head \d+: buffer at 0x1000.*outside guest memory; ring marked broken/);
  a.fe.ram!.dropRegion(added);

  // Removing a region that is not there: refused (non-zero ack), nothing else changes.
  await assert.rejects(a.fe.request(Req.REM_MEM_REG, new Uint8Array(40)), /VHOST_USER_REM_MEM_REG failed \(ack 1\)/);
  assert.match(await log.waitLine(/REM_MEM_REG/), /vmA: error: VHOST_USER_REM_MEM_REG: no memory region at guest address 0x0 size 0x0; refused \(non-zero reply\)$/);
  assert.equal(a.port.session!.mem.size, 2);
  assert.equal(a.port.connected, true);
  a.fe.close();
  await waitFor(() => !a.port.connected);
  await closeGuest(b);
  await assertNoFdLeak(before);
});

test('vring setup: SET_VRING_NUM/ADDR/BASE/KICK/CALL/ERR land in the ring; the kick fd can be the no-fd bit', async () => {
  const before = fdCount();
  const hub = new TestHub();
  const log = new LogCapture();
  const a = await startGuest(hub, 'vmA', log, { num: 128 });
  const s = a.port.session!;
  for (const i of [0, 1]) {
    const r = s.rings[i];
    const vq = a.fe.rings[i];
    assert.equal(r.num, 128);
    assert.equal(r.descAddr, a.fe.ram!.uva(vq.descGpa));
    assert.equal(r.availAddr, a.fe.ram!.uva(vq.availGpa));
    assert.equal(r.usedAddr, a.fe.ram!.uva(vq.usedGpa));
    assert.ok(r.kickFd >= 0 && r.callFd >= 0 && r.errFd >= 0);
    assert.equal(r.enabled, true);
    assert.equal(r.ready, true);
  }
  // Ring 2 (second queue pair RX), polling mode: no kick fd, started at once; no call fd.
  const vq2 = new Virtqueue(a.fe.ram!, 2, 64);
  await a.fe.setVringNum(2, 64);
  await a.fe.setVringBase(2, 0);
  await a.fe.setVringAddr(2, a.fe.ram!.uva(vq2.descGpa), a.fe.ram!.uva(vq2.usedGpa), a.fe.ram!.uva(vq2.availGpa));
  await a.fe.setVringKick(2, null);
  await a.fe.setVringCall(2, null);
  assert.equal(s.rings[2].kickFd, -1);
  assert.equal(s.rings[2].callFd, -1);
  assert.equal(s.rings[2].started, true);
  // Bad ring size: connection closed.
  a.fe.send(Req.SET_VRING_NUM, VERSION, Uint8Array.of(3, 0, 0, 0, 100, 0, 0, 0));
  await a.fe.waitClosed();
  assert.match(await log.waitLine(/SET_VRING_NUM/), /vmA: error: VHOST_USER_SET_VRING_NUM: vmA TX ring 3: ring size 100 is not a power of 2/);
  vq2.close();
  a.fe.close();
  await waitFor(() => !a.port.connected);
  await assertNoFdLeak(before);
});

test('rings start on the first kick: nothing taken from TX nor given to RX before it', async () => {
  const before = fdCount();
  const hub = new TestHub();
  const log = new LogCapture();
  const a = await startGuest(hub, 'vmA', log);
  const b = await startGuest(hub, 'vmB', log, { kickRx: false });
  assert.equal(b.port.session!.rings[0].started, false);
  assert.equal(a.port.session!.rings[1].started, false);

  // A's TX ring has a chain but was never kicked: untouched.
  a.tx.postTx(frameOf(1));
  await sleep(30);
  assert.equal(a.tx.usedIdx, 0);
  assert.equal(hub.inputs, 0);
  a.tx.kick();
  await a.tx.waitUsed(1);
  assert.equal(a.port.session!.rings[1].started, true);
  // B's RX ring has buffers but was never kicked: the frame is refused, not written.
  assert.deepEqual(hub.refused, [{ to: 'vmB', len: 12 + 100 }]);
  assert.equal(b.rx.usedIdx, 0);
  b.rx.kick();
  await waitFor(() => b.port.session!.rings[0].started);
  await sendPacket(a, frameOf(2));
  assert.deepEqual((await receiveN(b, 1)).map((p) => seqOf(p.frame)), [2]);
  await closeGuest(a);
  await closeGuest(b);
  await assertNoFdLeak(before);
});

test('GET_VRING_BASE stops the ring and returns its index; SET_VRING_BASE resumes there, nothing twice', async () => {
  const { a, b, done } = await startPair();
  for (const seq of [1, 2, 3]) await sendPacket(a, frameOf(seq));
  assert.deepEqual((await receiveN(b, 3)).map((p) => seqOf(p.frame)), [1, 2, 3]);

  assert.equal(await a.fe.getVringBase(1), 3);
  assert.equal(await b.fe.getVringBase(0), 3); // three RX buffers taken
  assert.equal(a.port.session!.rings[1].started, false);
  assert.equal(a.port.session!.rings[1].kickFd, -1);

  // While stopped, a posted and kicked chain is not processed.
  a.tx.postTx(frameOf(4));
  a.tx.kick();
  await sleep(30);
  assert.equal(a.tx.usedIdx, 3);
  // Stopped B RX ring: refuses.
  assert.equal(b.port.session!.rings[0].started, false);

  // Resume both (QEMU's vhost_virtqueue_start: NUM, BASE, ADDR, KICK, CALL).
  await b.fe.setupRing(b.rx, 3);
  b.rx.kick();
  await waitFor(() => b.port.session!.rings[0].started);
  await a.fe.setupRing(a.tx, 3);
  a.tx.postTx(frameOf(5));
  a.tx.kick();
  await a.tx.waitUsed(5);
  const got = await receiveN(b, 2);
  assert.deepEqual(got.map((p) => seqOf(p.frame)), [4, 5]);
  await sleep(20);
  assert.equal(b.rx.receive(12, true).length, 0, 'no frame delivered twice');
  assert.equal(a.tx.usedIdx, 5);
  await done();
});

test('SET_VRING_ENABLE 0: a disabled RX ring receives nothing; enabled again it does', async () => {
  const before = fdCount();
  const hub = new TestHub();
  const log = new LogCapture();
  const a = await startGuest(hub, 'vmA', log);
  const b = await startGuest(hub, 'vmB', log);
  await sendPacket(a, frameOf(1));
  await receiveN(b, 1);
  await b.fe.setVringEnable(0, false);
  assert.equal(b.port.session!.rings[0].enabled, false);
  await sendPacket(a, frameOf(2));
  await sleep(20);
  assert.equal(b.rx.receive(12, true).length, 0);
  assert.ok(hub.refused.some((r) => r.to === 'vmB'));
  await b.fe.setVringEnable(0, true);
  await sendPacket(a, frameOf(3));
  assert.deepEqual((await receiveN(b, 1)).map((p) => seqOf(p.frame)), [3]);
  // A started but disabled TX ring is processed and its frames discarded (spec-states.test.ts).
  await a.fe.setVringEnable(1, false);
  a.tx.postTx(frameOf(4));
  a.tx.kick();
  await a.tx.waitUsed(4);
  a.tx.takeUsed();
  await sleep(20);
  assert.equal(b.rx.receive(12, true).length, 0);
  assert.equal(a.port.counters.txDisabledDropped, 1);
  await a.fe.setVringEnable(1, true);
  await sendPacket(a, frameOf(5));
  assert.deepEqual((await receiveN(b, 1)).map((p) => seqOf(p.frame)), [5]);
  await closeGuest(a);
  await closeGuest(b);
  await assertNoFdLeak(before);
});

test('NET_SET_MTU is recorded; an impossible MTU is refused (non-zero ack) or, with no ack asked for, ignored: the connection stays', async () => {
  const before = fdCount();
  const log = new LogCapture();
  const port = makePort(new TestHub(), 'vm0', log);
  const fe = bindPair(port);
  await fe.start({ mtu: 9000 });
  assert.equal(port.session!.mtu, 9000);
  assert.ok(log.lines.includes('vm0: MTU 9000'));
  await fe.netSetMtu(1500);
  assert.equal(port.session!.mtu, 1500);
  await assert.rejects(fe.netSetMtu(20), /VHOST_USER_NET_SET_MTU failed \(ack 1\)/);
  assert.match(await log.waitLine(/error/), /^vm0: error: VHOST_USER_NET_SET_MTU: MTU 20 outside \[68, 65535\]; refused \(non-zero reply\)$/);
  assert.equal(port.session!.mtu, 1500, 'the MTU before stays');
  fe.useReplyAck = false;
  await fe.netSetMtu(70000);
  await fe.sync();
  assert.match(log.errors()[1], /^vm0: error: VHOST_USER_NET_SET_MTU: MTU 70000 outside \[68, 65535\]; ignored \(no reply asked for\)$/);
  assert.equal(port.session!.mtu, 1500);
  assert.equal(port.connected, true);
  await closeGuest({ port, fe });
  await assertNoFdLeak(before);
});

test('SEND_RARP: a RARP broadcast from the guest MAC appears on another port', async () => {
  const before = fdCount();
  const hub = new TestHub();
  const cap = new CapturePort('capture');
  hub.attach(cap);
  const log = new LogCapture();
  const a = await startGuest(hub, 'vmA', log);
  await a.fe.sendRarp(MAC_A);
  assert.equal(cap.frames.length, 1);
  const f = cap.frames[0].subarray(12);
  assert.equal(f.length, 60);
  assert.deepEqual(f.subarray(0, 6), BROADCAST);
  assert.deepEqual(f.subarray(6, 12), MAC_A);
  assert.deepEqual([...f.subarray(12, 14)], [0x80, 0x35]);
  assert.deepEqual([...f.subarray(14, 22)], [0, 1, 8, 0, 6, 4, 0, 3]); // Ethernet/IPv4, reverse request
  assert.deepEqual(f.subarray(22, 28), MAC_A); // sender hardware address
  assert.deepEqual(f.subarray(32, 38), MAC_A); // target hardware address
  await closeGuest(a);
  await assertNoFdLeak(before);
});

test('SET_LOG_BASE is answered with an empty reply and its fd released; SET_LOG_FD fd released', async () => {
  const before = fdCount();
  const log = new LogCapture();
  const port = makePort(new TestHub(), 'vm0', log);
  const fe = bindPair(port);
  await fe.start();
  const logFd = native.memfdCreate('dirty-log', 4096);
  const reply = await fe.setLogBase(4096, 0, logFd);
  assert.equal(reply.length, 0);
  const logFd2 = native.eventfd(0);
  await fe.setLogFd(logFd2);
  closeFd(logFd);
  closeFd(logFd2);
  await fe.sync();
  await closeGuest({ port, fe });
  await assertNoFdLeak(before);
});

test('GET_CONFIG is answered with a zero-length payload, the spec\'s failure reply (no config space offered)', async () => {
  const log = new LogCapture();
  const port = makePort(new TestHub(), 'vm0', log);
  const fe = bindPair(port);
  assert.equal(await fe.getConfig(0, 10), null);
  await closeGuest({ port, fe });
});

test('RESET_OWNER (deprecated) disables every ring and keeps the connection state; the front-end can start over on the same connection', async () => {
  const { a, b, done } = await startPair();
  await sendPacket(a, frameOf(1));
  await receiveN(b, 1);
  const s = a.port.session!;
  const features = s.features;
  await a.fe.resetOwner(); // acked: REPLY_ACK is the connection's
  // vhost-user.rst: back-ends should "either ignore this message, or use it to disable all rings"
  assert.deepEqual(s.rings.map((r) => r.enabled), s.rings.map(() => false));
  assert.equal(s.features, features, 'features kept');
  assert.equal(s.rings[1].addrSet, true, 'ring set-up kept');
  assert.ok(s.rings[0].callFd >= 0, 'fds kept');
  assert.ok(s.mem.size > 0, 'memory table kept');
  // B's frames are not supplied to A's disabled RX ring; A's disabled TX ring is processed, discarded
  await sendPacket(b, frameOf(7));
  a.tx.postTx(frameOf(8));
  a.tx.kick();
  await a.tx.waitUsed(a.tx.availIdx);
  await sleep(20);
  assert.equal(a.rx.receive(12, true).length, 0);
  assert.equal(b.rx.receive(12, true).length, 0);
  assert.equal(a.port.counters.txDisabledDropped, 1);
  // QEMU's vhost_dev_start again, on the same socket.
  const { tx } = await a.fe.start();
  await waitFor(() => s.rings[0].started);
  tx.postTx(frameOf(2));
  tx.kick();
  assert.deepEqual((await receiveN(b, 1)).map((p) => seqOf(p.frame)), [2]);
  await done();
});

test('framing: a message split over several writes is reassembled; several messages in one write are all handled', async () => {
  const before = fdCount();
  const log = new LogCapture();
  const port = makePort(new TestHub(), 'vm0', log);
  const fe = bindPair(port);
  const msg = encode(Req.SET_FEATURES, VERSION, u64Payload(bit(VirtioFeature.F_VERSION_1)));
  fe.sendBytes(msg.subarray(0, 5));
  await sleep(5);
  fe.sendBytes(msg.subarray(5, 15));
  await sleep(5);
  fe.sendBytes(msg.subarray(15));
  await fe.sync();
  assert.equal(port.session!.features, bit(VirtioFeature.F_VERSION_1));
  // Three requests in one write; an fd travelling with the middle one.
  const efd = native.eventfd(0);
  const three = [
    encode(Req.SET_VRING_NUM, VERSION, vringStatePayload(0, 64)),
    encode(Req.SET_VRING_CALL, VERSION, u64Payload(0)),
    encode(Req.GET_MAX_MEM_SLOTS, VERSION),
  ];
  fe.sendBytes(three[0]);
  fe.sendBytes(concatBytes([three[1], three[2]]), [efd]);
  closeFd(efd);
  const r = await fe.recv();
  assert.equal(r.request, Req.GET_MAX_MEM_SLOTS);
  assert.equal(port.session!.rings[0].num, 64);
  assert.ok(port.session!.rings[0].callFd >= 0);
  assert.deepEqual(log.errors(), []);
  await closeGuest({ port, fe });
  await assertNoFdLeak(before);
});

test('SET_MEM_TABLE again while traffic runs (memory hotplug): rings move to the new mappings', async () => {
  const { a, b, log, done } = await startPair();
  await sendPacket(a, frameOf(1));
  await receiveN(b, 1);
  const oldRegion = a.port.session!.mem.list()[0];
  // QEMU sends the whole table again, with a new region and the same fds for the old ones.
  const extra = a.fe.ram!.addRegion({ gpa: 0x80000000, size: 1 << 20 });
  await a.fe.setMemTable();
  assert.equal(a.port.session!.mem.size, 2);
  assert.notEqual(a.port.session!.mem.list()[0], oldRegion, 'remapped');
  await sendPacket(a, frameOf(2));
  await sendPacket(a, frameOf(3), { region: a.fe.ram!.regions.indexOf(extra) });
  assert.deepEqual((await receiveN(b, 2)).map((p) => seqOf(p.frame)), [2, 3]);
  assert.deepEqual(log.errors(), []);
  await done();
});

test('ADD_MEM_REG of the same region twice needs two REM_MEM_REG (one per vhost device of a multiqueue NIC)', async () => {
  const hub = new TestHub();
  const log = new LogCapture();
  const a = await startGuest(hub, 'vmA', log);
  const b = await startGuest(hub, 'vmB', log);
  const extra = a.fe.ram!.addRegion({ gpa: 0x100000000, size: 1 << 20 });
  await a.fe.addMemReg(extra);
  await a.fe.addMemReg(extra);
  assert.equal(a.port.session!.mem.size, 2);
  await a.fe.remMemReg(extra);
  await sendPacket(a, frameOf(1), { region: 1 });
  assert.deepEqual((await receiveN(b, 1)).map((p) => seqOf(p.frame)), [1]);
  await a.fe.remMemReg(extra);
  assert.equal(a.port.session!.mem.size, 1);
  await closeGuest(a);
  await closeGuest(b);
});

test('without PROTOCOL_FEATURES: rings are enabled from the start, no SET_VRING_ENABLE needed', async () => {
  const { a, b, done } = await startPair({ features: DEFAULT_FEATURES & ~bit(VirtioFeature.USER_F_PROTOCOL_FEATURES) });
  assert.equal(a.port.session!.protocolFeatures, 0n);
  assert.equal(a.port.session!.rings[0].enabled, true);
  await sendPacket(a, frameOf(1));
  assert.deepEqual((await receiveN(b, 1)).map((p) => seqOf(p.frame)), [1]);
  await sendPacket(b, frameOf(2));
  assert.deepEqual((await receiveN(a, 1)).map((p) => seqOf(p.frame)), [2]);
  await done();
});

test('SET_VRING_CALL replaced while running: the new eventfd is signalled, the old one no more', async () => {
  const { a, b, done } = await startPair();
  const oldFd = b.rx.callFd;
  const newFd = native.eventfd(0);
  await b.fe.setVringCall(0, newFd);
  b.rx.callFd = newFd;
  b.rx.setUsedEvent(b.rx.usedIdx); // interrupt me on the next buffer
  await sendPacket(a, frameOf(1));
  assert.ok((await b.rx.waitCall()) > 0);
  assert.equal(native.eventfdRead(oldFd), 0);
  closeFd(oldFd);
  await done();
});

test('ring addresses set before the memory table are translated once the table arrives', async () => {
  const before = fdCount();
  const hub = new TestHub();
  const log = new LogCapture();
  const b = await startGuest(hub, 'vmB', log);
  const port = makePort(hub, 'vmA', log);
  const fe = bindPair(port);
  const offered = await fe.getFeatures();
  await fe.setProtocolFeatures(await fe.getProtocolFeatures());
  await fe.setFeatures(offered & ~bit(VirtioFeature.F_RING_PACKED)); // split rings below
  const ram = (fe.ram = new GuestRam());
  const rx = (fe.rings[0] = new Virtqueue(ram, 0, 64, { eventIdx: true }));
  const tx = (fe.rings[1] = new Virtqueue(ram, 1, 64, { eventIdx: true }));
  rx.postRx(8, 2048);
  for (const vq of [rx, tx]) await fe.setupRing(vq); // no memory yet: nothing to translate against
  assert.equal(port.session!.rings[1].ready, false);
  await fe.setMemTable();
  assert.equal(port.session!.rings[1].ready, true);
  for (const vq of [rx, tx]) await fe.setVringEnable(vq.index, true);
  await fe.addStatus(STATUS_DRIVER_OK); // VHOST_USER_PROTOCOL_F_STATUS was negotiated
  rx.kick();
  await sendPacket({ port, fe, rx, tx }, frameOf(1));
  assert.deepEqual((await receiveN(b, 1)).map((p) => seqOf(p.frame)), [1]);
  await closeGuest({ port, fe });
  await closeGuest(b);
  await assertNoFdLeak(before);
});

test('SET_VRING_NUM after SET_VRING_ADDR (a larger ring): the ring is used at its new size', async () => {
  const { a, b, log, done } = await startPair({ num: 128 }, { num: 256, rxBuffers: [250, 2048] });
  await a.fe.getVringBase(1);
  a.tx.close();
  const tx = (a.fe.rings[1] = new Virtqueue(a.fe.ram!, 1, 256, { eventIdx: true }));
  const ram = a.fe.ram!;
  // Addresses first, then the size (QEMU sends NUM first; the spec does not order them).
  await a.fe.setVringBase(1, 0);
  await a.fe.setVringAddr(1, ram.uva(tx.descGpa), ram.uva(tx.usedGpa), ram.uva(tx.availGpa));
  await a.fe.setVringNum(1, 256);
  await a.fe.setVringKick(1, tx.kickFd);
  await a.fe.setVringCall(1, tx.callFd);
  await a.fe.setVringErr(1, tx.errFd);
  for (let i = 0; i < 200; i++) tx.postTx(frameOf(i, 60));
  tx.kick();
  await tx.waitUsed(200);
  assert.deepEqual(
    tx.takeUsed().map((u) => u.id),
    [...Array(200).keys()],
    'every used element in place',
  );
  assert.deepEqual(
    (await receiveN(b, 200)).map((p) => seqOf(p.frame)),
    [...Array(200).keys()],
  );
  assert.deepEqual(log.errors(), []);
  await done();
});
