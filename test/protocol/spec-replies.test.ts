// Spec-exact replies (QEMU docs/interop/vhost-user.rst): with REPLY_ACK a request that fails
// validation gets a non-zero ack and changes nothing, and the connection stays; SET_FEATURES under
// the virtio 5.1.3.1 requirements (unmet ones not used) and, while rings are started, changing VHOST_F_LOG_ALL only;
// GET_QUEUE_NUM with PROTOCOL_F_MQ only; PROTOCOL_F_STATUS (SET_STATUS / GET_STATUS) and its effects.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/native';
import { FLAG_NEED_REPLY, FLAG_REPLY, ProtocolFeature, Req, u64Payload, VERSION, vringStatePayload } from '../../src/vhost-user/message';
import { bit, VirtioFeature } from '../../src/vhost-user/features';
import { DEFAULT_FEATURES, DEFAULT_PROTOCOL_FEATURES } from '../../src/vhost-user/session';
import { RX_CSUM, RX_ECN, RX_TSO4, RX_TSO6 } from '../../src/virtio/offload';
import { closeFd, FrontEnd, GuestRam, memTablePayload, singleRegionPayload, sleep, STATUS_DRIVER_OK, waitFor } from './frontend';
import { assertNoFdLeak, bindPair, closeGuest, ethFrame, fdCount, LogCapture, makePort, netHdr, packet, receiveN, sendPacket, seqOf, startGuest, startPair, TestHub } from './helpers';

const frameOf = (seq: number, len = 100) => packet(netHdr(12), ethFrame(len, seq));

/** Sends a request with need_reply and returns the u64 of its ack. */
async function ack(fe: FrontEnd, req: number, payload?: Uint8Array, fds: number[] = []): Promise<bigint> {
  fe.send(req, VERSION | FLAG_NEED_REPLY, payload, fds);
  const r = await fe.recv();
  assert.equal(r.request, req);
  assert.equal(r.flags, VERSION | FLAG_REPLY);
  assert.equal(r.payload.length, 8);
  return new DataView(r.payload.buffer, r.payload.byteOffset).getBigUint64(0, true);
}

test('REPLY_ACK: each request that fails validation gets a non-zero ack, changes nothing, and the connection stays', async () => {
  const { a, b, log, done } = await startPair();
  const fe = a.fe;
  const s = a.port.session!;
  const refusals: [string, number, Uint8Array?, number[]?][] = [];
  const efd = native.eventfd(0);
  const pipe = native.socketpair();
  refusals.push(['ring size not a power of 2', Req.SET_VRING_NUM, vringStatePayload(1, 100)]);
  refusals.push(['ring index beyond the rings', Req.SET_VRING_NUM, vringStatePayload(200, 256)]);
  refusals.push(['base beyond a split ring index', Req.SET_VRING_BASE, vringStatePayload(1, 0x10000)]);
  refusals.push(['enable value 2', Req.SET_VRING_ENABLE, vringStatePayload(1, 2)]);
  refusals.push(['kick for a ring that does not exist (with its fd)', Req.SET_VRING_KICK, u64Payload(0xf0), [efd]]);
  refusals.push(['call fd that is not an eventfd', Req.SET_VRING_CALL, u64Payload(0), [pipe[0]]]);
  refusals.push(['big-endian ring', Req.SET_VRING_ENDIAN, vringStatePayload(0, 1)]);
  refusals.push(['feature not offered', Req.SET_FEATURES, u64Payload(s.features | bit(VirtioFeature.NET_F_CTRL_VQ))]);
  refusals.push(['protocol feature not offered', Req.SET_PROTOCOL_FEATURES, u64Payload(s.protocolFeatures | bit(ProtocolFeature.PAGEFAULT))]);
  refusals.push(['MTU below 68', Req.NET_SET_MTU, u64Payload(20)]);
  refusals.push(['SET_CONFIG without PROTOCOL_F_CONFIG', Req.SET_CONFIG, new Uint8Array(12 + 4)]);
  refusals.push(['status beyond a byte', Req.SET_STATUS, u64Payload(0x100)]);
  const ram = new GuestRam([{ gpa: 0x10000000, size: 1 << 20 }]);
  refusals.push(['REM_MEM_REG of a region not in the table', Req.REM_MEM_REG, singleRegionPayload(GuestRam.describe(ram.regions[0]))]);
  const state = () => JSON.stringify({ f: s.features.toString(), p: s.protocolFeatures.toString(), st: s.status, mtu: s.mtu, rings: s.rings.map((r) => [r.num, r.lastAvail, r.enabled, r.started, r.callFd >= 0, r.kickFd >= 0]), mem: s.mem.size });
  const was = state();
  for (const [what, req, payload, fds] of refusals) {
    assert.notEqual(await ack(fe, req, payload, fds ?? []), 0n, `${what}: non-zero ack`);
    assert.equal(a.port.connected, true, `${what}: connection kept`);
    assert.equal(state(), was, `${what}: nothing changed`);
  }
  closeFd(efd);
  closeFd(pipe[0]);
  closeFd(pipe[1]);
  ram.close();
  const lines = log.errors();
  assert.equal(lines.length, refusals.length, lines.join('\n'));
  for (const l of lines) assert.match(l, /^vmA: error: VHOST_USER_[A-Z_]+: .+; refused \(non-zero reply\)$/);
  // a request with a reply of its own cannot be acked: a bad one gets the zero-length reply
  const r = await fe.call(Req.GET_VRING_BASE, vringStatePayload(99, 0));
  assert.equal(r.length, 0);
  assert.match(log.errors()[lines.length], /^vmA: error: VHOST_USER_GET_VRING_BASE: ring index 99 beyond the 16 rings offered \(8 queue pairs: --queues\); refused \(zero-length reply\)$/);
  // and everything still runs
  await sendPacket(a, frameOf(1));
  assert.deepEqual((await receiveN(b, 1)).map((p) => seqOf(p.frame)), [1]);
  await done();
});

test('without an ack asked for: a refusal closes the connection (the front-end cannot be told) unless ignoring it is harmless (REM_MEM_REG of an absent region)', async () => {
  const before = fdCount();
  const hub = new TestHub();
  const log = new LogCapture();
  const a = await startGuest(hub, 'vmA', log);
  const ram = new GuestRam([{ gpa: 0x10000000, size: 1 << 20 }]);
  a.fe.send(Req.REM_MEM_REG, VERSION, singleRegionPayload(GuestRam.describe(ram.regions[0])));
  await a.fe.sync();
  assert.match(log.errors()[0], /^vmA: error: VHOST_USER_REM_MEM_REG: no memory region at guest address 0x10000000 size 0x100000; ignored \(no reply asked for\)$/);
  assert.equal(a.port.connected, true);
  a.fe.send(Req.SET_VRING_NUM, VERSION, vringStatePayload(1, 100));
  await a.fe.waitClosed();
  assert.match(log.errors()[1], /^vmA: error: VHOST_USER_SET_VRING_NUM: vmA TX ring 1: ring size 100 is not a power of 2 in \[1, 32768\] \(refused; no reply asked for\); closing connection$/);
  ram.close();
  await closeGuest(a);
  await assertNoFdLeak(before);
});

test('a memory table over the cap is refused with a non-zero ack; nothing is mapped and a table within it works', async () => {
  const before = fdCount();
  const MiB = 1 << 20;
  const log = new LogCapture();
  const port = makePort(new TestHub(), 'vm0', log, { session: { maxMappedBytes: 8 * MiB } });
  const fe = bindPair(port);
  await fe.setProtocolFeatures(bit(ProtocolFeature.REPLY_ACK));
  const big = new GuestRam([{ gpa: 0, size: 16 * MiB }]);
  assert.notEqual(await ack(fe, Req.SET_MEM_TABLE, memTablePayload(big.regions.map(GuestRam.describe)), big.regions.map((r) => r.fd)), 0n);
  assert.equal(port.session!.mem.size, 0);
  assert.match(log.errors()[0], /VHOST_USER_SET_MEM_TABLE: memory table of 16 MiB is beyond the 8 MiB one connection may map \(--max-guest-mem-gb\); refused \(non-zero reply\)$/);
  big.close();
  const small = new GuestRam([{ gpa: 0, size: 4 * MiB }]);
  assert.equal(await ack(fe, Req.SET_MEM_TABLE, memTablePayload(small.regions.map(GuestRam.describe)), small.regions.map((r) => r.fd)), 0n);
  assert.equal(port.session!.mem.size, 1);
  small.close();
  await closeGuest({ port, fe });
  await assertNoFdLeak(before);
});

test('SET_FEATURES: a feature whose virtio 5.1.3.1 requirement is missing is logged and not used (QEMU\'s csum=off leaves HOST_TSO4 and ECN on)', async () => {
  const before = fdCount();
  const log = new LogCapture();
  const port = makePort(new TestHub(), 'vm0', log);
  const fe = bindPair(port);
  await fe.setProtocolFeatures(bit(ProtocolFeature.REPLY_ACK));
  const base = bit(VirtioFeature.F_VERSION_1) | bit(VirtioFeature.USER_F_PROTOCOL_FEATURES);
  const cases: [bigint, RegExp, number, number][] = [
    [bit(VirtioFeature.NET_F_GUEST_TSO4), /NET_F_GUEST_TSO4 requires NET_F_GUEST_CSUM/, 0, 0],
    [bit(VirtioFeature.NET_F_GUEST_TSO6), /NET_F_GUEST_TSO6 requires NET_F_GUEST_CSUM/, 0, 0],
    [bit(VirtioFeature.NET_F_GUEST_CSUM) | bit(VirtioFeature.NET_F_GUEST_ECN), /NET_F_GUEST_ECN requires NET_F_GUEST_TSO4 or NET_F_GUEST_TSO6/, RX_CSUM, 0],
    [bit(VirtioFeature.NET_F_HOST_TSO4), /NET_F_HOST_TSO4 requires NET_F_CSUM/, 0, 0],
    [bit(VirtioFeature.NET_F_HOST_TSO6), /NET_F_HOST_TSO6 requires NET_F_CSUM/, 0, 0],
    [bit(VirtioFeature.NET_F_CSUM) | bit(VirtioFeature.NET_F_HOST_ECN), /NET_F_HOST_ECN requires NET_F_HOST_TSO4 or NET_F_HOST_TSO6/, 0, RX_CSUM],
    // what needed a feature left out goes too: ECN needs TSO4, TSO4 needs GUEST_CSUM
    [bit(VirtioFeature.NET_F_GUEST_TSO4) | bit(VirtioFeature.NET_F_GUEST_ECN), /NET_F_GUEST_TSO4 requires NET_F_GUEST_CSUM; NET_F_GUEST_ECN requires/, 0, 0],
  ];
  for (const [f, re, rx, tx] of cases) {
    assert.equal(await ack(fe, Req.SET_FEATURES, u64Payload(base | f)), 0n);
    assert.match(log.lines.at(-1)!, /^vm0: not used, their requirement missing \(virtio 5\.1\.3\.1\): /);
    assert.match(log.lines.at(-1)!, re);
    assert.equal(port.session!.features, base | f, 'negotiated as sent');
    assert.equal(port.session!.netConfig!.rxOffload, rx, 'what the device uses towards the guest');
    assert.equal(port.session!.netConfig!.txOffload, tx, 'what it accepts from the guest');
  }
  // with what they require: all used (and MQ without CTRL_VQ: the control queue is the front-end's)
  const n = log.lines.length;
  const ok = base | bit(VirtioFeature.NET_F_CSUM) | bit(VirtioFeature.NET_F_HOST_TSO4) | bit(VirtioFeature.NET_F_HOST_ECN) |
    bit(VirtioFeature.NET_F_GUEST_CSUM) | bit(VirtioFeature.NET_F_GUEST_TSO6) | bit(VirtioFeature.NET_F_GUEST_ECN) | bit(VirtioFeature.NET_F_MQ);
  assert.equal(await ack(fe, Req.SET_FEATURES, u64Payload(ok)), 0n);
  assert.equal(port.session!.netConfig!.rxOffload, RX_CSUM | RX_TSO6 | RX_ECN);
  assert.equal(port.session!.netConfig!.txOffload, RX_CSUM | RX_TSO4 | RX_ECN);
  assert.ok(!log.lines.slice(n).some((l) => /not used/.test(l)));
  assert.deepEqual(log.errors(), []);
  await closeGuest({ port, fe });
  await assertNoFdLeak(before);
});

test('SET_FEATURES while rings are started: only VHOST_F_LOG_ALL may change; once every ring is stopped, features may change again', async () => {
  const before = fdCount();
  const hub = new TestHub();
  const log = new LogCapture();
  const b = await startGuest(hub, 'vmB', log);
  // a back-end that offers LOG_ALL (as it will with dirty logging): the rule lets it through
  const port = makePort(hub, 'vmA', log, { session: { features: DEFAULT_FEATURES | bit(VirtioFeature.LOG_ALL) } });
  const fe = bindPair(port);
  const { tx } = await fe.start({ features: DEFAULT_FEATURES });
  await waitFor(() => port.session!.rings[0].started);
  await sendPacket({ port, fe, rx: fe.rings[0], tx }, frameOf(1));
  const f = port.session!.features;
  assert.notEqual(await ack(fe, Req.SET_FEATURES, u64Payload(f & ~bit(VirtioFeature.NET_F_MRG_RXBUF))), 0n);
  assert.match(log.errors()[0], /^vmA: error: VHOST_USER_SET_FEATURES: NET_F_MRG_RXBUF changed while vmA RX ring 0 is started \(only VHOST_F_LOG_ALL may change then\); refused \(non-zero reply\)$/);
  assert.equal(port.session!.features, f);
  assert.equal(await ack(fe, Req.SET_FEATURES, u64Payload(f)), 0n, 'the same features again: fine');
  assert.equal(await ack(fe, Req.SET_FEATURES, u64Payload(f | bit(VirtioFeature.LOG_ALL))), 0n, 'LOG_ALL on');
  assert.equal(await ack(fe, Req.SET_FEATURES, u64Payload(f)), 0n, 'LOG_ALL off');
  // the data path still uses the features in force: mergeable RX, 12-byte header
  await sendPacket(b, frameOf(2));
  const got = await receiveN({ port, fe, rx: fe.rings[0], tx }, 1);
  assert.deepEqual(got.map((p) => seqOf(p.frame)), [2]);
  assert.equal(got[0].numBuffers, 1, 'the mergeable header (num_buffers) still written');
  // QEMU's vhost_dev_stop: every ring stopped; then a new start may negotiate anything offered
  await fe.getVringBase(0);
  await fe.getVringBase(1);
  assert.equal(await ack(fe, Req.SET_FEATURES, u64Payload(f & ~bit(VirtioFeature.NET_F_MRG_RXBUF))), 0n);
  assert.equal(port.session!.features, f & ~bit(VirtioFeature.NET_F_MRG_RXBUF));
  await closeGuest({ port, fe });
  await closeGuest(b);
  await assertNoFdLeak(before);
});

test('GET_QUEUE_NUM only with VHOST_USER_PROTOCOL_F_MQ negotiated: without it a zero-length reply and a logged error, the connection kept', async () => {
  const before = fdCount();
  const log = new LogCapture();
  const port = makePort(new TestHub(), 'vm0', log);
  const fe = bindPair(port);
  await fe.setProtocolFeatures(bit(ProtocolFeature.REPLY_ACK));
  assert.equal((await fe.call(Req.GET_QUEUE_NUM)).length, 0);
  assert.match(log.errors()[0], /^vm0: error: VHOST_USER_GET_QUEUE_NUM: VHOST_USER_PROTOCOL_F_MQ was not negotiated; refused \(zero-length reply\)$/);
  await fe.setProtocolFeatures(bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.MQ));
  assert.equal(await fe.getQueueNum(), 8);
  assert.equal(port.connected, true);
  await closeGuest({ port, fe });
  await assertNoFdLeak(before);
});

test('PROTOCOL_F_STATUS: offered; the status byte is stored and returned; rings are processed from DRIVER_OK on; status 0 stops every ring, its index kept for GET_VRING_BASE', async () => {
  const { a, b, done } = await startPair({}, { driverOk: false });
  assert.ok((DEFAULT_PROTOCOL_FEATURES & bit(ProtocolFeature.STATUS)) !== 0n);
  assert.equal(await a.fe.getStatus(), 0x0f, 'ACKNOWLEDGE | DRIVER | DRIVER_OK | FEATURES_OK, as QEMU 7.2 sets them');
  assert.equal(await b.fe.getStatus(), 0x08, 'B: FEATURES_OK only so far');
  // B's rings are started (kicked) but not processed before DRIVER_OK: its TX is not read, its RX not written
  assert.equal(b.port.session!.rings[0].started, true);
  b.tx.postTx(frameOf(10));
  b.tx.kick();
  await sendPacket(a, frameOf(1));
  await sleep(30);
  assert.equal(b.tx.usedIdx, 0);
  assert.equal(b.rx.usedIdx, 0);
  assert.equal(a.rx.usedIdx, 0);
  await b.fe.addStatus(STATUS_DRIVER_OK);
  assert.equal(await b.fe.getStatus(), 0x0c);
  await b.tx.waitUsed(1);
  assert.deepEqual((await receiveN(a, 1)).map((p) => seqOf(p.frame)), [10]);
  await sendPacket(a, frameOf(2));
  assert.deepEqual((await receiveN(b, 1)).map((p) => seqOf(p.frame)), [2]);
  // QEMU 7.2's vhost_dev_stop: SET_STATUS 0 first, then GET_VRING_BASE of each ring
  await b.fe.setStatus(0);
  const sb = b.port.session!;
  assert.equal(sb.status, 0);
  assert.deepEqual(sb.rings.map((r) => r.started), sb.rings.map(() => false));
  assert.equal(sb.rings[1].kickFd, -1);
  await sendPacket(a, frameOf(3));
  b.tx.postTx(frameOf(11));
  b.tx.kick();
  await sleep(30);
  assert.equal(b.rx.usedIdx, 1, 'a reset device writes nothing');
  assert.equal(b.tx.usedIdx, 1);
  assert.equal(await b.fe.getVringBase(0), 1);
  assert.equal(await b.fe.getVringBase(1), 1);
  // and it comes back: FEATURES_OK, rings, DRIVER_OK
  await b.fe.addStatus(0x08);
  await b.fe.setupRing(b.rx, 1);
  await b.fe.setupRing(b.tx, 1);
  b.rx.kick();
  await b.fe.addStatus(0x07);
  await b.tx.waitUsed(2);
  assert.deepEqual((await receiveN(a, 1)).map((p) => seqOf(p.frame)), [11]);
  await sendPacket(a, frameOf(4));
  assert.deepEqual((await receiveN(b, 1)).map((p) => seqOf(p.frame)), [4]);
  await done({ noErrors: true });
});

test('SET_STATUS and GET_STATUS without PROTOCOL_F_STATUS negotiated are refused', async () => {
  const before = fdCount();
  const log = new LogCapture();
  const port = makePort(new TestHub(), 'vm0', log);
  const fe = bindPair(port);
  await fe.setProtocolFeatures(bit(ProtocolFeature.REPLY_ACK));
  assert.notEqual(await ack(fe, Req.SET_STATUS, u64Payload(0x0f)), 0n);
  assert.equal(port.session!.status, 0);
  assert.equal((await fe.call(Req.GET_STATUS)).length, 0);
  assert.equal(log.errors().length, 2);
  assert.equal(port.connected, true);
  await closeGuest({ port, fe });
  await assertNoFdLeak(before);
});
