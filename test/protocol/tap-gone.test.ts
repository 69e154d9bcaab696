// The TAP device deleted under the switch (`ip link del`): the uplink is detached with a clear
// error, the process and the vhost-user ports go on.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { Switch } from '../../src/engine/switch';
import { TapPort } from '../../src/ports/tap-port';
import { waitFor } from './frontend';
import { closeGuest, ethFrame, LogCapture, netHdr, packet, receiveN, sendPacket, seqOf, startGuest } from './helpers';

function skipReason(): string | null {
  if (!fs.existsSync('/dev/net/tun')) return '/dev/net/tun is missing (no TUN/TAP in this kernel)';
  try {
    execFileSync('which', ['ip'], { stdio: 'ignore' });
  } catch {
    return 'the ip command (iproute2) is missing';
  }
  if (process.getuid?.() !== 0) return 'creating a TAP device needs root';
  return null;
}
const skip = skipReason();
if (skip) console.log(`# skipping the TAP-gone test: ${skip}`);

test('the TAP device deleted under the switch: uplink detached with a clear error, guests go on', { skip: skip ?? false }, async () => {
  const log = new LogCapture();
  const sw = new Switch({ log: log.fn });
  const name = `evgone${process.pid % 10000}`;
  const tap = new TapPort(sw, name, log.fn);
  const mac = (n: number) => new Uint8Array([0x52, 0x54, 0, 0, 0, n]);
  const a = await startGuest(sw, 'vmA', log);
  const b = await startGuest(sw, 'vmB', log);
  try {
    execFileSync('ip', ['link', 'set', name, 'up']);
    assert.equal(sw.stats().ports.length, 3);
    execFileSync('ip', ['link', 'del', name]);
    await log.waitLine(new RegExp(`^tap:${name}: error: the TAP device is gone`), 3000);
    await waitFor(() => sw.stats().ports.length === 2, 2000, 'the uplink to be detached');
    // the guests still talk, broadcast and unicast
    await sendPacket(a, packet(netHdr(12), ethFrame(80, 1, mac(1), mac(0xff).fill(0xff))));
    await receiveN(b, 1);
    await sendPacket(b, packet(netHdr(12), ethFrame(80, 2, mac(2), mac(1))));
    assert.equal(seqOf((await receiveN(a, 1))[0].frame), 2);
  } finally {
    tap.close();
    await closeGuest(a);
    await closeGuest(b);
    sw.close();
    try {
      execFileSync('ip', ['link', 'del', name], { stdio: 'ignore' });
    } catch {
      /* gone */
    }
  }
});
