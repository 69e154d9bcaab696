// Adaptive polling (--poll-us): after a batch the TX ring is polled on every event-loop turn, so a
// guest's frames are taken without kicks; control messages are answered meanwhile; when the ring
// has had no work for pollUs, kicks are asked for again and polling stops.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PollLoop } from '../../src/ports/poll-loop';
import { bit, VirtioFeature } from '../../src/vhost-user/features';
import { DEFAULT_FEATURES } from '../../src/vhost-user/session';
import { sleep, waitFor } from './frontend';
import { assertNoFdLeak, bindPair, closeGuest, ethFrame, fdCount, Guest, LogCapture, makePort, netHdr, packet, receiveN, seqOf, TestHub } from './helpers';

async function guest(hub: TestHub, name: string, log: LogCapture, pollLoop: PollLoop, features: bigint): Promise<Guest> {
  const port = makePort(hub, name, log, { pollLoop });
  const fe = bindPair(port);
  const { rx, tx } = await fe.start({ features });
  await waitFor(() => port.session!.rings[0].started, 2000, `${name} RX ring to start`);
  return { port, fe, rx, tx };
}

for (const [what, features] of [
  ['EVENT_IDX', DEFAULT_FEATURES],
  ['NO_NOTIFY', DEFAULT_FEATURES & ~bit(VirtioFeature.RING_F_EVENT_IDX)],
] as const) {
  test(`--poll-us (${what}): frames are taken without kicks while polled, control messages answered meanwhile, kicks asked for again after the idle time`, async () => {
    const before = fdCount();
    const hub = new TestHub();
    const log = new LogCapture();
    const loop = new PollLoop(300_000); // 300 ms of no work before it sleeps again
    const a = await guest(hub, 'vmA', log, loop, features);
    const b = await guest(hub, 'vmB', log, loop, features);
    try {
      // the first frame comes with a kick; then A's TX ring is polled
      a.tx.postTx(packet(netHdr(12), ethFrame(60, 0)));
      a.tx.kick();
      await receiveN(b, 1);
      assert.equal(loop.polling, 1, "A's TX ring is being polled");
      assert.equal(a.tx.needsKick(), false, 'no kicks wanted while polled');
      // frames posted with no kick at all are taken by the poll loop, in order
      for (let i = 1; i <= 20; i++) a.tx.postTx(packet(netHdr(12), ethFrame(60, i)));
      const got = await receiveN(b, 20);
      assert.deepEqual(got.map((p) => seqOf(p.frame)), Array.from({ length: 20 }, (_, i) => i + 1));
      // the event loop still runs: a request is answered while the ring is polled
      const t0 = Date.now();
      const f = await a.fe.getFeatures();
      assert.equal(f, DEFAULT_FEATURES);
      assert.ok(Date.now() - t0 < 200, `GET_FEATURES answered in ${Date.now() - t0} ms while polling`);
      assert.equal(loop.polling, 1);
      // no work for the poll time: polling ends, kicks are asked for again
      a.tx.takeUsed();
      await waitFor(() => loop.polling === 0, 3000, 'polling to stop');
      // kicks are wanted again: the next frame needs one (and gets through with it)
      a.tx.postTx(packet(netHdr(12), ethFrame(60, 99)));
      assert.equal(a.tx.needsKick(), true, 'kicks wanted again');
      await sleep(50);
      assert.equal(b.rx.peekUsed().length, 0, 'not taken without its kick once polling stopped');
      a.tx.kick();
      const [p] = await receiveN(b, 1);
      assert.equal(seqOf(p.frame), 99);
    } finally {
      await closeGuest(a);
      await closeGuest(b);
    }
    await sleep(10);
    assert.equal(loop.polling, 0, 'nothing left polled after the ports closed');
    assert.deepEqual(log.errors(), []);
    await assertNoFdLeak(before);
  });
}
