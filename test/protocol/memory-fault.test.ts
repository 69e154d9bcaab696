// A front-end that truncates a memory file the back-end could not seal (a memfd made without
// MFD_ALLOW_SEALING, like hugetlbfs or plain files) while frames flow: the next access to the
// missing pages faults (SIGBUS). The addon contains it (zero pages over the page, counted); that
// connection is reset with a clear error, the process and every other port go on, and frames
// queued for another port are not lost.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/native';
import { Switch } from '../../src/engine/switch';
import { sleep, waitFor } from './frontend';
import { assertNoFdLeak, closeGuest, ethFrame, fdCount, Guest, LogCapture, netHdr, packet, receiveN, sendPacket, seqOf, startGuest } from './helpers';

const mac = (n: number) => new Uint8Array([0x52, 0x54, 0, 0, 0, n]);
const BCAST = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
const faultWord = native.guestFaultWord();

test('a front-end truncates its unsealed memfd under the mapping while frames flow: only its port is reset, the others lose nothing', async () => {
  const before = fdCount();
  const log = new LogCapture();
  const sw = new Switch({ poolBytes: 4 << 20, log: () => {} });
  const faultsBefore = faultWord[0];
  let c: Guest | null = null;
  try {
    const a = await startGuest(sw, 'vmA', log);
    // B posts 8 RX buffers and does not post more for now: what A sends beyond waits in the FIFO
    const b = await startGuest(sw, 'vmB', log, { rxBuffers: [8, 2048] });
    c = await startGuest(sw, 'vmC', log); // default test RAM: a memfd without MFD_ALLOW_SEALING
    await log.waitLine(/^vmC: memory region at 0x0 cannot be sealed/);
    const hello = (g: Guest, n: number) => sendPacket(g, packet(netHdr(12), ethFrame(60, 0, mac(n), BCAST)));
    await hello(a, 1);
    await hello(b, 2);
    await hello(c, 3);
    await receiveN(a, 2);
    await receiveN(c, 2);
    // b took one of its 8 buffers (c's hello; a's hello went to b too: 2)
    const gotB: number[] = [];
    for (const p of b.rx.receive(b.fe.hdrLen, b.fe.mergeable)) gotB.push(seqOf(p.frame));
    assert.equal(gotB.length, 2);
    gotB.length = 0;
    // 40 frames a → b: 6 fit b's buffers, 34 wait in the elastic FIFO
    for (let i = 1; i <= 40; i++) await sendPacket(a, packet(netHdr(12), ethFrame(200, i, mac(1), mac(2))));
    const queued = () => sw.stats().ports.find((p) => p.name === 'vmB')!.queuedFrames;
    assert.equal(queued(), 34);
    // C's front-end cuts its memory file just after its RX ring: C's RX buffers are gone
    const rxRingEnd = c.rx.usedGpa + 6 + 8 * c.rx.num;
    native.ftruncate(c.fe.ram!.regions[0].fd, Math.ceil(rxRingEnd / 4096) * 4096);
    // frames keep flowing: a → c (written into c's missing buffers by the copy runner) and a → b
    for (let i = 41; i <= 60; i++) {
      await sendPacket(a, packet(netHdr(12), ethFrame(1500, i, mac(1), i % 2 ? mac(3) : mac(2))));
    }
    const line = await log.waitLine(/^vmC: error: guest memory file shrunk under the mapping/);
    assert.match(line, /region at guest address 0x0 \(\d+ page fault\(s\) contained, zero pages stand in\)/);
    assert.ok(faultWord[0] > faultsBefore, 'the faults were contained, not avoided');
    await waitFor(() => !c!.port.connected, 2000, 'vmC to be reset');
    // the others: b gets every frame meant for it, queued or not, in order
    b.rx.postRx(64, 2048);
    b.rx.kick();
    const want = [...Array.from({ length: 40 }, (_, i) => i + 1), ...Array.from({ length: 10 }, (_, i) => 42 + 2 * i)];
    await waitFor(() => {
      for (const p of b.rx.receive(b.fe.hdrLen, b.fe.mergeable)) gotB.push(seqOf(p.frame));
      if (gotB.length < want.length) {
        b.rx.postRx(8, 2048);
        b.rx.kick();
      }
      return gotB.length >= want.length;
    }, 3000, 'b to get all its frames');
    assert.deepEqual(gotB, want);
    assert.equal(sw.stats().ports.find((p) => p.name === 'vmB')!.dropped, 0);
    // and traffic between the healthy pair goes on
    await sendPacket(b, packet(netHdr(12), ethFrame(300, 99, mac(2), mac(1))));
    const back = await receiveN(a, 1);
    assert.equal(seqOf(back[back.length - 1].frame), 99);
    // only vmC logged an error
    assert.deepEqual(log.errors().filter((l) => !l.startsWith('vmC:')), []);
    await closeGuest(a);
    await closeGuest(b);
    c.fe.close();
  } finally {
    sw.close();
  }
  await sleep(10);
  await assertNoFdLeak(before);
});

test('a contained fault in JavaScript (a ring read over the missing pages) resets the connection too', async () => {
  const before = fdCount();
  const log = new LogCapture();
  const sw = new Switch({ poolBytes: 4 << 20, log: () => {} });
  try {
    const a = await startGuest(sw, 'vmA', log);
    const c = await startGuest(sw, 'vmC', log);
    // the whole file goes: the rings too, which the back-end reads from JavaScript
    native.ftruncate(c.fe.ram!.regions[0].fd, 0);
    await sendPacket(a, packet(netHdr(12), ethFrame(60, 1, mac(1), BCAST)));
    await log.waitLine(/^vmC: error: guest memory file shrunk under the mapping/);
    await waitFor(() => !c.port.connected, 2000, 'vmC to be reset');
    await closeGuest(a);
    c.fe.close();
  } finally {
    sw.close();
  }
  await sleep(10);
  await assertNoFdLeak(before);
});
