// Live migration's dirty-page log (docs/interop/vhost-user.rst, "Migration"): VHOST_F_LOG_ALL and
// VHOST_USER_PROTOCOL_F_LOG_SHMFD offered, SET_LOG_BASE mapped and answered only when LOG_SHMFD
// is negotiated, and — the property migration needs — no byte written into guest memory while
// logging is on without its page's bit in the log.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/native';
import { bit, has, VirtioFeature } from '../../src/vhost-user/features';
import { encode, ProtocolFeature, Req, VERSION } from '../../src/vhost-user/message';
import { DEFAULT_FEATURES, DEFAULT_PROTOCOL_FEATURES } from '../../src/vhost-user/session';
import { closeFd, FrontEnd, sleep, waitFor } from './frontend';
import { assertNoFdLeak, ethFrame, fdCount, LogCapture, netHdr, packet, receiveN, sendPacket, seqOf, startGuest, startPackedPair, startPair, TestHub } from './helpers';

const PAGE = 4096;
/** guest RAM at 1 GiB: the log is indexed by guest-physical address, not by region offset */
const RAM_GPA = 0x40000000;
const RAM_SIZE = 4 << 20;
const RAM = [{ gpa: RAM_GPA, size: RAM_SIZE }];
const LOG_BYTES = Math.ceil((RAM_GPA + RAM_SIZE) / PAGE / 8 / PAGE) * PAGE;
/** as QEMU negotiates: everything but LOG_ALL, which it sets only while migrating */
const FEATURES = DEFAULT_FEATURES & ~bit(VirtioFeature.LOG_ALL);

/** a log memfd as QEMU makes one (vhost_log_alloc: memfd, sealed against shrinking) */
function makeLog(bytes = LOG_BYTES): { fd: number; bits: Uint8Array; close: () => void } {
  const fd = native.memfdCreate('vhost-log', bytes, true);
  const ab = native.mmap(fd, bytes, 0);
  return {
    fd,
    bits: new Uint8Array(ab),
    close: () => {
      native.munmap(ab);
      closeFd(fd);
    },
  };
}

function marked(bits: Uint8Array, gpa: number): boolean {
  const p = Math.floor(gpa / PAGE);
  return (bits[p >>> 3] & (1 << (p & 7))) !== 0;
}

function markedPages(bits: Uint8Array): number[] {
  const out: number[] = [];
  for (let i = 0; i < bits.length; i++) for (let b = 0; b < 8; b++) if (bits[i] & (1 << b)) out.push((i * 8 + b) * PAGE);
  return out;
}

/** guest pages whose bytes differ between two snapshots of the RAM region */
function changedPages(before: Uint8Array, after: Uint8Array): number[] {
  const out: number[] = [];
  for (let o = 0; o < before.length; o += PAGE) {
    for (let k = o; k < o + PAGE; k++) {
      if (before[k] !== after[k]) {
        out.push(RAM_GPA + o);
        break;
      }
    }
  }
  return out;
}

/** Migration starts, in QEMU's order: LOG_ALL, then each ring's addresses again with VHOST_VRING_F_LOG. */
async function startLogging(g: { fe: FrontEnd; rx: { index: number; descGpa: number; usedGpa: number; availGpa: number }; tx: { index: number; descGpa: number; usedGpa: number; availGpa: number } }): Promise<void> {
  await g.fe.setFeatures(g.fe.features | bit(VirtioFeature.LOG_ALL));
  for (const vq of [g.rx, g.tx]) {
    await g.fe.setVringAddr(vq.index, g.fe.ram!.uva(vq.descGpa), g.fe.ram!.uva(vq.usedGpa), g.fe.ram!.uva(vq.availGpa), 1, vq.usedGpa);
  }
}

test('LOG_ALL and LOG_SHMFD are offered; SET_LOG_BASE is answered (empty reply) only when LOG_SHMFD is negotiated', async () => {
  assert.ok(has(DEFAULT_FEATURES, VirtioFeature.LOG_ALL));
  assert.ok(has(DEFAULT_PROTOCOL_FEATURES, ProtocolFeature.LOG_SHMFD));
  const before = fdCount();
  const log = new LogCapture();
  const hub = new TestHub();
  // with LOG_SHMFD: mapped, and a reply QEMU waits for (vhost_user_set_log_base reads it)
  const g = await startGuest(hub, 'vmA', log, { ram: RAM, features: FEATURES });
  const l = makeLog();
  const reply = await g.fe.setLogBase(LOG_BYTES, 0, l.fd);
  assert.equal(reply.length, 0);
  assert.equal(g.port.session!.logStats.logging, false, 'not before LOG_ALL');
  await g.fe.setFeatures(g.fe.features | bit(VirtioFeature.LOG_ALL));
  assert.equal(g.port.session!.logStats.logging, true);
  // without LOG_SHMFD: no reply at all (one would be taken as the answer to the next request)
  const h = await startGuest(hub, 'vmB', log, { features: FEATURES, protocolFeatures: DEFAULT_PROTOCOL_FEATURES & ~bit(ProtocolFeature.LOG_SHMFD) });
  const l2 = makeLog();
  const b = new Uint8Array(16);
  new DataView(b.buffer).setBigUint64(0, BigInt(LOG_BYTES), true);
  h.fe.send(Req.SET_LOG_BASE, VERSION, b, [l2.fd]);
  const offered = await h.fe.getFeatures(); // the next reply is GET_FEATURES's own
  assert.equal(offered, DEFAULT_FEATURES);
  assert.ok(!h.fe.closed, 'the connection stays up');
  assert.ok(log.lines.some((x) => /vmB: error: SET_LOG_BASE without VHOST_USER_PROTOCOL_F_LOG_SHMFD/.test(x)), log.lines.join('\n'));
  for (const x of [g, h]) {
    x.fe.close();
    await waitFor(() => !x.port.connected, 2000);
  }
  l.close();
  l2.close();
  await assertNoFdLeak(before);
});

test('while LOG_ALL is on, every byte written into guest memory has its page marked (RX payload, headers, used rings); none before or after', async () => {
  const { a, b, done } = await startPair({ features: FEATURES }, { ram: RAM, rxBuffers: [32, 2048], features: FEATURES });
  const l = makeLog();
  await b.fe.setLogBase(LOG_BYTES, 0, l.fd);
  // before LOG_ALL: writes, no marks
  await sendPacket(a, packet(netHdr(12), ethFrame(1000, 1)));
  await receiveN(b, 1);
  assert.deepEqual(markedPages(l.bits), []);

  await startLogging(b);
  l.bits.fill(0);
  const ram = b.fe.ram!.view(RAM_GPA, RAM_SIZE);
  const snap = ram.slice();
  // small frames (one buffer: the fast path writes the header itself), a 9000-byte one over five
  // buffers (the header written piecewise), B's own TX (its used ring)
  for (let i = 2; i <= 6; i++) await sendPacket(a, packet(netHdr(12), ethFrame(60 + i * 100, i)));
  await sendPacket(a, packet(netHdr(12), ethFrame(9000, 7)));
  await sendPacket(b, packet(netHdr(12), ethFrame(200, 8)));
  const got = await receiveN(b, 6);
  assert.deepEqual(got.map((p) => seqOf(p.frame)), [2, 3, 4, 5, 6, 7]);
  await receiveN(a, 1);
  const changed = changedPages(snap, ram);
  const marks = markedPages(l.bits);
  assert.ok(changed.length >= 3, `guest pages written: ${changed.map((x) => x.toString(16))}`);
  // what the front-end wrote itself (B's TX descriptors and avail ring, its reading of RX) is not the
  // back-end's; every other changed page must be marked
  const frontEndPages = new Set([b.tx.descGpa, b.tx.availGpa, b.rx.availGpa].map((g) => Math.floor(g / PAGE) * PAGE));
  const unlogged = changed.filter((p) => !marks.includes(p) && !frontEndPages.has(p));
  assert.deepEqual(unlogged.map((x) => x.toString(16)), [], 'pages written without their log bit');
  assert.ok(marked(l.bits, b.rx.usedGpa), 'RX used ring');
  assert.ok(marked(l.bits, b.tx.usedGpa), 'TX used ring');
  // every page marked lies inside guest RAM
  for (const m of marks) assert.ok(m >= RAM_GPA && m < RAM_GPA + RAM_SIZE, `mark outside guest RAM: 0x${m.toString(16)}`);
  assert.ok(b.port.session!.logStats.pagesMarked > 0);
  assert.equal(b.port.session!.logStats.missed, 0);

  // migration over (or cancelled): LOG_ALL off, nothing marked any more, the rings ran throughout
  await b.fe.setFeatures(b.fe.features & ~bit(VirtioFeature.LOG_ALL));
  l.bits.fill(0);
  await sendPacket(a, packet(netHdr(12), ethFrame(300, 9)));
  const [p9] = await receiveN(b, 1);
  assert.equal(seqOf(p9.frame), 9);
  assert.deepEqual(markedPages(l.bits), []);
  l.close();
  await done({ noErrors: true });
});

test('packed rings: while LOG_ALL is on, every page the back-end writes is marked (used descriptors in the descriptor ring, device area, RX payload and headers)', async () => {
  const { a, b, done } = await startPackedPair({ features: FEATURES }, { ram: RAM, rxBuffers: [32, 2048], features: FEATURES });
  const l = makeLog();
  await b.fe.setLogBase(LOG_BYTES, 0, l.fd);
  await startLogging(b);
  l.bits.fill(0);
  const ram = b.fe.ram!.view(RAM_GPA, RAM_SIZE);
  const snap = ram.slice();
  for (let i = 1; i <= 5; i++) await sendPacket(a, packet(netHdr(12), ethFrame(60 + i * 100, i)));
  await sendPacket(a, packet(netHdr(12), ethFrame(9000, 6)));
  const got = await receiveN(b, 6);
  assert.deepEqual(got.map((p) => seqOf(p.frame)), [1, 2, 3, 4, 5, 6]);
  const changed = changedPages(snap, ram);
  const marks = markedPages(l.bits);
  // the driver wrote nothing in B's memory after the snapshot but its reading of RX: the
  // descriptor ring is written by both sides in a packed ring, and the device's writes must be marked
  const unlogged = changed.filter((p) => !marks.includes(p));
  assert.deepEqual(unlogged.map((x) => x.toString(16)), [], 'pages written without their log bit');
  assert.ok(marked(l.bits, b.rx.descGpa), 'RX descriptor ring (used descriptors)');
  assert.ok(changed.length >= 2);
  l.close();
  await done({ noErrors: true });
});

test('a log too small for the guest memory written: the writes are counted and reported, not lost silently, and nothing beyond the log is touched', async () => {
  const { a, b, log, done } = await startPair({ features: FEATURES }, { ram: RAM, features: FEATURES });
  // one page of log covers 128 MiB: RAM at 1 GiB lies beyond it
  const l = makeLog(PAGE);
  await b.fe.setLogBase(PAGE, 0, l.fd);
  await b.fe.setFeatures(b.fe.features | bit(VirtioFeature.LOG_ALL));
  await sendPacket(a, packet(netHdr(12), ethFrame(500, 1)));
  await receiveN(b, 1);
  assert.ok(b.port.session!.logStats.missed > 0);
  assert.deepEqual(markedPages(l.bits), []);
  await waitFor(() => log.lines.some((x) => /dirty-page log of 32768 pages is too small/.test(x)), 2000, 'the error to be logged');
  l.close();
  await done();
});

test('hostile SET_LOG_BASE: no fd, size 0, beyond its file, offset overflow: refused with a clear error, no fd leaked, others unaffected', async () => {
  const before = fdCount();
  const log = new LogCapture();
  const hub = new TestHub();
  const cases: { name: string; size: bigint; offset: bigint; fileBytes: number; fd: boolean; why: RegExp }[] = [
    { name: 'nofd', size: 4096n, offset: 0n, fileBytes: 4096, fd: false, why: /expected 1 file descriptor/ },
    { name: 'zero', size: 0n, offset: 0n, fileBytes: 4096, fd: true, why: /log of 0 bytes/ },
    { name: 'past', size: 8192n, offset: 0n, fileBytes: 4096, fd: true, why: /not inside its file/ },
    { name: 'huge', size: 1n << 40n, offset: 0n, fileBytes: 4096, fd: true, why: /allowed/ },
    { name: 'wrap', size: 4096n, offset: (1n << 64n) - 4096n, fileBytes: 4096, fd: true, why: /beyond 2\^53/ },
  ];
  const bystander = await startGuest(hub, 'bystander', log);
  for (const c of cases) {
    const g = await startGuest(hub, c.name, log);
    const fd = native.memfdCreate('log', c.fileBytes, true);
    const p = new Uint8Array(16);
    const v = new DataView(p.buffer);
    v.setBigUint64(0, c.size, true);
    v.setBigUint64(8, c.offset, true);
    g.fe.sendBytes(encode(Req.SET_LOG_BASE, VERSION, p), c.fd ? [fd] : []);
    closeFd(fd);
    await waitFor(() => log.lines.some((x) => x.startsWith(`${c.name}:`) && c.why.test(x)), 2000, `${c.name}: the error`);
    g.fe.close();
    await waitFor(() => !g.port.connected, 2000);
  }
  assert.ok(bystander.port.connected);
  bystander.fe.close();
  await waitFor(() => !bystander.port.connected, 2000);
  await sleep(10);
  await assertNoFdLeak(before);
});
