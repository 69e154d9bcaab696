// The last line of defence: an exception thrown out of the data path (a bug, whatever a guest did to
// trigger it) closes that one connection with a logged error; the process and the other ports go on.
import type { Frame } from '../../src/datapath/frame';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { waitFor } from './frontend';
import { assertNoFdLeak, closeGuest, ethFrame, fdCount, LogCapture, netHdr, packet, receiveN, sendPacket, seqOf, startGuest, TestHub } from './helpers';

class ThrowingHub extends TestHub {
  /** frames from this connection number make input() throw */
  poison = -1;
  override input(src: number, frame: Frame): void {
    if (src === this.poison) throw new Error('engine bug triggered by this frame');
    super.input(src, frame);
  }
}

test('an exception during TX processing closes only that connection, logged with the ring; others keep working', async () => {
  const before = fdCount();
  const hub = new ThrowingHub();
  const log = new LogCapture();
  const a = await startGuest(hub, 'vmA', log);
  const b = await startGuest(hub, 'vmB', log);
  const c = await startGuest(hub, 'vmC', log);
  hub.poison = a.port.index;
  a.tx.postTx(packet(netHdr(12), ethFrame(100, 1)));
  a.tx.kick();
  await waitFor(() => !a.port.connected, 2000, 'vmA to be disconnected');
  assert.ok(
    log.lines.some((l) => /vmA: internal error during kick on vmA TX ring 1: Error: engine bug triggered by this frame/.test(l)),
    log.lines.join('\n'),
  );
  // B and C are unaffected
  await sendPacket(b, packet(netHdr(12), ethFrame(100, 7)));
  const got = await receiveN(c, 1);
  assert.equal(seqOf(got[0].frame), 7);
  await closeGuest(a);
  await closeGuest(b);
  await closeGuest(c);
  await assertNoFdLeak(before);
});
