/**
 * Faults with real guests: a guest killed with SIGKILL in the middle of an iperf3 run (the other
 * ports keep working, the guest comes back on the same socket), and the switch itself restarted
 * under running guests (QEMU's reconnect=1 brings every guest back).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { GuestVM } from '../../qemu-glue/launcher';
import { SwitchProcess } from '../../qemu-glue/switch-process';
import { ping, ready, startGuest, startSwitch, teardown, waitPing, workDir, failureTracker } from './harness';

describe('faults: a guest killed mid-traffic, the switch restarted', { timeout: 400_000 }, () => {
  const dir = workDir('faults');
  let sw: SwitchProcess | undefined;
  let a: GuestVM | undefined;
  let b: GuestVM | undefined;
  let c: GuestVM | undefined;
  const extra: GuestVM[] = [];
  const tracker = failureTracker();
  const guard = tracker.guard;

  before(async () => {
    sw = await startSwitch(dir, 3);
    [a, b, c] = await Promise.all([startGuest(sw, 0, 'faults-a'), startGuest(sw, 1, 'faults-b'), startGuest(sw, 2, 'faults-c')]);
    await ready(a, b, c);
    await waitPing(a, '10.0.0.2');
    await waitPing(a, '10.0.0.3');
  });

  after(() => teardown([a, b, c, ...extra], sw, tracker.failed, dir));

  it('kill -9 of a guest mid-iperf3 leaves the other ports working; the guest reconnects and works', () =>
    guard(async () => {
      const server = b!.spawn('iperf3 -s -1 -p 5201 --forceflush');
      await server.waitForLine(/Server listening/, 10_000);
      const client = a!.spawn('iperf3 -c 10.0.0.2 -p 5201 -t 30 --forceflush');
      await client.waitForLine(/bits\/sec/, 20_000); // traffic is flowing
      b!.kill('SIGKILL');
      await b!.waitExit(10_000);
      await sw!.waitLog(/vm1: disconnected/, 10_000);
      a!.cancel(client.id, 'KILL');
      const ac = await ping(a!, '10.0.0.3', 10);
      console.log(`# A->C while B is gone: ${ac.received}/${ac.transmitted}, avg ${ac.avgMs} ms`);
      assert.equal(ac.received, ac.transmitted, ac.output);

      // B comes back on the same socket
      const b2 = await startGuest(sw!, 1, 'faults-b2');
      extra.push(b2);
      await ready(b2);
      await waitPing(a!, '10.0.0.2');
      const ab = await ping(a!, '10.0.0.2', 5);
      assert.equal(ab.received, ab.transmitted, ab.output);
      const st = await sw!.freshStats();
      assert.equal(st.engine.pool.blocksInUse, 0, 'blocks still held after the guest went away');
    }));

  it('restarting the switch under running guests: QEMU reconnects and ping works again', () =>
    guard(async () => {
      const e = await sw!.kill();
      assert.equal(e.signal, 'SIGKILL');
      sw = await startSwitch(dir, 3);
      await Promise.all([sw.waitLog(/vm0: front-end connected/, 30_000), sw.waitLog(/vm2: front-end connected/, 30_000)]);
      await waitPing(a!, '10.0.0.3', 60_000);
      const ac = await ping(a!, '10.0.0.3', 5);
      const ca = await ping(c!, '10.0.0.1', 5);
      console.log(`# after switch restart: A->C ${ac.received}/${ac.transmitted}, C->A ${ca.received}/${ca.transmitted}`);
      assert.equal(ac.received, ac.transmitted, ac.output);
      assert.equal(ca.received, ca.transmitted, ca.output);
    }));
});
