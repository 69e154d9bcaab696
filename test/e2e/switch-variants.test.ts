/**
 * Other guest and QEMU set-ups on one switch, all at once:
 *  - A: virtio 1.0, mergeable RX buffers, EVENT_IDX, two queue pairs (mq), q35
 *  - B: no mergeable RX buffers, no EVENT_IDX, no indirect descriptors
 *  - C: legacy virtio (disable-modern) without mergeable buffers: the 10-byte header; QEMU is the
 *       socket server and elastic-vhost the client (--client), on the pc machine
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { macForIndex } from '../../qemu-glue/args';
import { GuestVM, ensureGuestImages } from '../../qemu-glue/launcher';
import { SwitchProcess } from '../../qemu-glue/switch-process';
import { echo, ping, ready, teardown, waitPing, workDir, failureTracker } from './harness';

describe('guest and QEMU variants on one switch', { timeout: 400_000 }, () => {
  const dir = workDir('variants');
  let sw: SwitchProcess | undefined;
  const vms: GuestVM[] = [];
  const tracker = failureTracker();
  const guard = tracker.guard;

  before(async () => {
    ensureGuestImages();
    sw = new SwitchProcess({ workDir: dir, sockets: ['a.sock', 'b.sock'], clientSockets: ['c.sock'], echo });
    // the switch dials C's socket and retries until QEMU listens there (QEMU itself does not finish
    // starting until its vhost-user back-end has connected)
    await sw.start();
    vms.push(
      await GuestVM.start({
        name: 'variant-c',
        machine: 'pc',
        params: { ip: '10.0.0.3/24' },
        nics: [
          {
            kind: 'vhost-user',
            id: 'n0',
            socketPath: `${dir}/c.sock`,
            server: 'qemu',
            mac: macForIndex(3),
            toggles: { mrg_rxbuf: false },
            extra: { 'disable-modern': true, 'disable-legacy': false },
          },
        ],
      }),
    );
    vms.push(
      await GuestVM.start({
        name: 'variant-a',
        smp: 2,
        params: { ip: '10.0.0.1/24' },
        nics: [{ kind: 'vhost-user', id: 'n0', socketPath: sw.socketPaths[0], mac: macForIndex(1), queues: 2 }],
      }),
    );
    vms.push(
      await GuestVM.start({
        name: 'variant-b',
        params: { ip: '10.0.0.2/24' },
        nics: [
          {
            kind: 'vhost-user',
            id: 'n0',
            socketPath: sw.socketPaths[1],
            mac: macForIndex(2),
            toggles: { mrg_rxbuf: false, event_idx: false, indirect_desc: false },
          },
        ],
      }),
    );
    await ready(...vms);
  });

  after(() => teardown(vms, sw, tracker.failed, dir));

  it('the switch negotiated what each guest asked for', () =>
    guard(async () => {
      const feat = (port: string) => sw!.log.filter((l) => l.includes(`${port}: features `)).at(-1) ?? '';
      await sw!.waitLog(/vm2: features /, 30_000);
      assert.match(feat('vm0'), /F_VERSION_1/);
      assert.match(feat('vm0'), /NET_F_MRG_RXBUF/);
      assert.doesNotMatch(feat('vm1'), /NET_F_MRG_RXBUF|RING_F_EVENT_IDX|RING_F_INDIRECT_DESC/);
      assert.doesNotMatch(feat('vm2'), /F_VERSION_1|NET_F_MRG_RXBUF/);
    }));

  it('every pair pings with 0 % loss', () =>
    guard(async () => {
      const [c, a, b] = vms;
      await waitPing(a, '10.0.0.2');
      await waitPing(a, '10.0.0.3');
      for (const [vm, ip] of [[a, '10.0.0.2'], [a, '10.0.0.3'], [b, '10.0.0.3'], [c, '10.0.0.1'], [b, '10.0.0.1'], [c, '10.0.0.2']] as const) {
        const r = await ping(vm, ip, 5);
        assert.equal(r.received, r.transmitted, `${vm.name} -> ${ip}: ${r.output}`);
      }
    }));

  it('iperf3 TCP from the legacy guest to the multiqueue guest and from it to the non-mergeable one', () =>
    guard(async () => {
      const [c, a, b] = vms;
      for (const [from, to, ip] of [[c, a, '10.0.0.1'], [a, b, '10.0.0.2']] as const) {
        const server = to.spawn('iperf3 -s -1 -p 5201 --forceflush');
        await server.waitForLine(/Server listening/, 10_000);
        const r = await from.exec(`iperf3 -c ${ip} -p 5201 -t 3 -J`, { timeoutMs: 60_000 });
        assert.equal(r.rc, 0, r.output);
        const bps = JSON.parse(r.output).end.sum_received.bits_per_second / 1e6;
        console.log(`# iperf3 ${from.name} -> ${to.name}: ${bps.toFixed(1)} Mbit/s`);
        assert.ok(bps > 0);
        await server.done;
      }
    }));
});
