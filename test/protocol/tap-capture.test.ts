// Packet capture on the TAP uplink, read back with tcpdump: frames the switch wrote to the host (a
// guest's broadcasts, with sequence numbers) and frames it read from the host (the kernel's ARP
// request when the host pings through the TAP device) are both in the file, in order.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Switch } from '../../src/engine/switch';
import { TapPort } from '../../src/ports/tap-port';
import { CaptureManager } from '../../src/ops/capture';
import { waitFor } from './frontend';
import { closeGuest, ethFrame, LogCapture, netHdr, packet, sendPacket, startGuest } from './helpers';
import { tcpdumpRead } from '../tcpdump';

function skipReason(): string | null {
  if (!fs.existsSync('/dev/net/tun')) return '/dev/net/tun is missing (no TUN/TAP in this kernel)';
  if (spawnSync('ip', ['-V']).error) return 'the ip command (iproute2) is missing';
  if (process.getuid?.() !== 0) return 'creating a TAP device needs root';
  return null;
}
const skip = skipReason();
if (skip) console.log(`# skipping the TAP capture test: ${skip}`);

test('capture on the TAP uplink: frames written to the host and read from it, in order', { skip: skip ?? false }, async () => {
  const log = new LogCapture();
  const sw = new Switch({ log: log.fn });
  const name = `evcap${process.pid % 10000}`;
  const tap = new TapPort(sw, name, log.fn);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-tapcap-'));
  const file = path.join(dir, 'tap.pcap');
  const caps = new CaptureManager(log.fn, { dir, maxBytes: 2 ** 30 });
  const a = await startGuest(sw, 'vmA', log);
  const macA = Uint8Array.of(0x52, 0x54, 0, 0, 0, 0x21);
  try {
    execFileSync('ip', ['addr', 'add', '10.211.0.254/24', 'dev', name]);
    execFileSync('ip', ['link', 'set', name, 'up']);
    const hostMac = fs.readFileSync(`/sys/class/net/${name}/address`, 'utf8').trim();
    caps.start(tap, file);
    for (let s = 1; s <= 5; s++) await sendPacket(a, packet(netHdr(12), ethFrame(90, s, macA, Uint8Array.of(255, 255, 255, 255, 255, 255))));
    await waitFor(() => tap.counters.toHostFrames >= 5, 2000, 'the host to take the five frames');
    // a datagram from the host to 10.211.0.9 (on the TAP's subnet): the kernel resolves it first,
    // an ARP request broadcast out of the TAP device
    const sock = dgram.createSocket('udp4');
    await new Promise<void>((resolve, reject) => sock.send('x', 9, '10.211.0.9', (e) => (e ? reject(e) : resolve())));
    sock.close();
    await waitFor(() => a.rx.receive(a.fe.hdrLen, a.fe.mergeable).some((p) => p.frame[12] === 0x08 && p.frame[13] === 0x06), 3000, 'the ARP request, flooded to the guest');
    const s = await caps.stop(tap.name);
    const t = tcpdumpRead(file);
    assert.equal(t.status, 0, t.stderr);
    assert.equal(t.records.length, s.frames);
    const out = t.records.filter((r) => r.etherType === 0x88b5);
    assert.deepEqual(out.map((r) => r.payload.readUInt32LE(0)), [1, 2, 3, 4, 5], 'the guest\'s frames as written to the host, in order');
    for (const r of out) assert.deepEqual([r.src, r.dst, r.length], ['52:54:00:00:00:21', 'ff:ff:ff:ff:ff:ff', 90]);
    const arp = t.records.filter((r) => r.etherType === 0x0806 && r.src === hostMac);
    assert.ok(arp.length >= 1, `the host's ARP request is in the capture:\n${t.records.map((r) => r.line).join('\n')}`);
    assert.ok(t.records.indexOf(arp[0]) > t.records.indexOf(out[4]), 'in the order the switch saw them');
  } finally {
    caps.stopAllSync();
    tap.close();
    await closeGuest(a);
    sw.close();
    spawnSync('ip', ['link', 'del', name]);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
