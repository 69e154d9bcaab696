/**
 * Self test of the test guests and the QEMU glue, WITHOUT the switch: two
 * agent guests are wired back to back with QEMU's `-netdev socket`
 * (A listens, B connects on 127.0.0.1) and exchange ping, iperf3 TCP and a
 * udpburst. Model for the switch e2e tests (replace the socket NICs by
 * `{ kind: 'vhost-user', ... }`).
 *
 * Needs build/guest (runs guests/build.sh when missing). TCG by default;
 * ELASTIC_VHOST_ACCEL=kvm to try KVM. ELASTIC_VHOST_ECHO=1 mirrors consoles.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { macForIndex } from '../../qemu-glue/args';
import { GuestVM, ensureGuestImages, freePort, killAll, parseKeyValues, waitTcpListening } from '../../qemu-glue/launcher';

describe('test guests over -netdev socket (no switch)', { timeout: 150_000 }, () => {
  let a: GuestVM | undefined;
  let b: GuestVM | undefined;
  let failed = false;

  before(async () => {
    ensureGuestImages();
    const port = await freePort();
    a = await GuestVM.start({
      name: 'selftest-a',
      params: { ip: '10.0.0.1/24' },
      nics: [{ kind: 'socket', id: 'n0', mac: macForIndex(1), link: { mode: 'listen', port } }],
    });
    // B's connect= fails at once if A's listen socket is not there yet.
    await waitTcpListening(port);
    b = await GuestVM.start({
      name: 'selftest-b',
      params: { ip: '10.0.0.2/24' },
      nics: [{ kind: 'socket', id: 'n0', mac: macForIndex(2), link: { mode: 'connect', port } }],
    });
    const [ra, rb] = await Promise.all([a.waitReady(60_000), b.waitReady(60_000)]);
    assert.equal(ra.mac, macForIndex(1));
    assert.equal(rb.mac, macForIndex(2));
    console.log(`# boot to EV-READY: A ${ra.bootMs} ms (guest uptime ${ra.uptime} s), B ${rb.bootMs} ms (${rb.uptime} s), accel ${a.accel}`);
  });

  after(async () => {
    for (const vm of [a, b]) {
      if (!vm) continue;
      if (failed) console.log(`# ${vm.name} console (${vm.consoleLog}):\n${vm.consoleTail(20)}`);
      await vm.shutdown();
      if (!failed) vm.removeWorkDir();
    }
    killAll();
  });

  it('ping A -> B', async () => {
    try {
      const r = await a!.exec('ping -c 3 -W 2 10.0.0.2', { timeoutMs: 20_000 });
      assert.equal(r.rc, 0, r.output);
      assert.match(r.output, /3 packets transmitted, 3 packets received, 0% packet loss/);
      const rtt = /min\/avg\/max = ([\d.]+)\/([\d.]+)\/([\d.]+)/.exec(r.output);
      console.log(`# ping rtt min/avg/max ${rtt?.[1]}/${rtt?.[2]}/${rtt?.[3]} ms`);
    } catch (e) {
      failed = true;
      throw e;
    }
  });

  it('iperf3 TCP A -> B, 3 s', async () => {
    try {
      const server = b!.spawn('iperf3 -s -1 -p 5201 --forceflush');
      await server.waitForLine(/Server listening/, 10_000);
      const r = await a!.exec('iperf3 -c 10.0.0.2 -p 5201 -t 3 -J', { timeoutMs: 30_000 });
      assert.equal(r.rc, 0, r.output);
      const j = JSON.parse(r.output) as { end: { sum_sent: { bits_per_second: number }; sum_received: { bits_per_second: number } } };
      const sent = j.end.sum_sent.bits_per_second / 1e6;
      const recv = j.end.sum_received.bits_per_second / 1e6;
      console.log(`# iperf3 TCP: sender ${sent.toFixed(1)} Mbit/s, receiver ${recv.toFixed(1)} Mbit/s`);
      assert.ok(recv > 1, `receiver throughput ${recv} Mbit/s`);
      const s = await server.done;
      assert.equal(s.rc, 0, s.output);
    } catch (e) {
      failed = true;
      throw e;
    }
  });

  it('udpburst 1000 datagrams A -> B, all in order', async () => {
    try {
      const recv = b!.spawn('udpburst recv 9000 1000 3000');
      await recv.waitForLine(/UDPBURST listening/, 10_000);
      const s = await a!.exec('udpburst send 10.0.0.2 9000 1000 256', { timeoutMs: 30_000 });
      assert.equal(s.rc, 0, s.output);
      const r = await recv.done;
      const line = r.lines.find((l) => l.startsWith('UDPBURST received='));
      assert.ok(line, r.output);
      const kv = parseKeyValues(line);
      console.log(`# ${s.lines.at(-1)} / ${line}`);
      assert.equal(kv.received, '1000', line);
      assert.equal(kv.inorder, 'yes', line);
      assert.equal(kv.dups, '0', line);
      assert.equal(r.rc, 0, r.output);
    } catch (e) {
      failed = true;
      throw e;
    }
  });

  it('QMP stop/cont and quit', async () => {
    try {
      await a!.stop();
      assert.equal((await a!.status()).running, false);
      await a!.cont();
      assert.equal((await a!.status()).running, true);
      assert.equal((await a!.exec('echo alive')).output, 'alive');
      const [ea, eb] = await Promise.all([a!.quit(10_000), b!.quit(10_000)]);
      assert.equal(ea.code, 0);
      assert.equal(eb.code, 0);
    } catch (e) {
      failed = true;
      throw e;
    }
  });
});
