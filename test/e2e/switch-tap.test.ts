/**
 * The host uplink: elastic-vhost's TAP port, its host side placed in a network namespace made for
 * this test (so no address of this host's own stack is involved); the namespace pings a guest.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { GuestVM } from '../../qemu-glue/launcher';
import { SwitchProcess } from '../../qemu-glue/switch-process';
import { missingCommand, ready, startGuest, startSwitch, teardown, waitPing, workDir } from './harness';

const ns = `evtest${process.pid}`;
const tap = `evtap${process.pid % 100000}`;

function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8' });
}

function missing(): string | null {
  if (!fs.existsSync('/dev/net/tun')) return '/dev/net/tun is missing (no TUN/TAP in this kernel)';
  const cmd = missingCommand([['ip', 'iproute2'], ['busybox', 'busybox-static']]);
  if (cmd !== null) return cmd;
  try {
    ip('netns', 'add', ns);
  } catch (e) {
    return `cannot create a network namespace: ${(e as Error).message}`;
  }
  return null;
}

const skip = missing();
if (skip) console.log(`# skipping the TAP uplink test: ${skip}`);

describe('host TAP uplink', { timeout: 200_000, skip: skip ?? false }, () => {
  const dir = workDir('tap');
  let sw: SwitchProcess | undefined;
  let a: GuestVM | undefined;
  let failed = false;

  before(async () => {
    sw = await startSwitch(dir, 1, ['--tap', tap]);
    await sw.waitLog(new RegExp(`tap:${tap}: uplink attached`));
    ip('link', 'set', tap, 'netns', ns);
    ip('-n', ns, 'addr', 'add', '10.0.0.254/24', 'dev', tap);
    ip('-n', ns, 'link', 'set', tap, 'up');
    a = await startGuest(sw, 0, 'tap-a');
    await ready(a);
  });

  after(async () => {
    await teardown([a], sw, failed, dir);
    try {
      ip('netns', 'del', ns);
    } catch {
      /* already gone */
    }
  });

  it('the host side pings the guest through the TAP device, and the guest pings back', async () => {
    try {
      await waitPing(a!, '10.0.0.254');
      const out = execFileSync('ip', ['netns', 'exec', ns, 'busybox', 'ping', '-c', '5', '-W', '3', '10.0.0.1'], { encoding: 'utf8' });
      console.log(`# ${out.trim().split('\n').slice(-2).join(' / ')}`);
      assert.match(out, /5 packets transmitted, 5 packets received, 0% packet loss/);
      const st = await sw!.freshStats();
      assert.ok(st.tap.counters.fromHostFrames >= 5 && st.tap.counters.toHostFrames >= 5, JSON.stringify(st.tap));
    } catch (e) {
      failed = true;
      throw e;
    }
  });
});
