// examples/two-port-switch.ts run in this process as a program that installed the package runs
// it (it imports 'elastic-vhost', which resolves to the package's own exports), with a TypeScript
// front-end on each of its two sockets: frames pass both ways, what it prints tells of both ports
// coming up and both MACs learned, and closing it leaves no socket file, no fd and no error.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { twoPortSwitch } from '../../examples/two-port-switch';
import type { VirtualSwitch } from '../../src/api/switch';
import { FrontEnd, waitFor } from './frontend';
import { assertNoFdLeak, BROADCAST, ethFrame, fdCount, type Guest, MAC_A, MAC_B, netHdr, packet, receiveN, sendPacket, seqOf } from './helpers';

const macText = (m: Uint8Array) => [...m].map((b) => b.toString(16).padStart(2, '0')).join(':');

test('examples/two-port-switch: two front-ends on its sockets exchange frames both ways; its events tell of the ports and the MACs; close leaves nothing behind', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-example-'));
  const before = fdCount();
  const lines: string[] = [];
  const sw = twoPortSwitch(dir, (l) => lines.push(l));
  // the front-end helpers name the port in their messages: the switch's own port objects
  const core = sw as VirtualSwitch;
  const fes: FrontEnd[] = [];
  try {
    assert.deepEqual(fs.readdirSync(dir).sort(), ['vm0.sock', 'vm1.sock']);
    const guestOn = async (name: string): Promise<Guest> => {
      const fe = FrontEnd.connect(path.join(dir, `${name}.sock`), `fe-${name}`);
      fes.push(fe);
      await waitFor(() => sw.port(name)?.up === true, 2000, `${name} to take its front-end`);
      const { rx, tx } = await fe.start({ rxBuffers: [64, 2048] });
      return { port: core.vhostUserPort(name)!, fe, rx, tx };
    };
    const a = await guestOn('vm0');
    const b = await guestOn('vm1');

    // B announces itself (a broadcast): A gets it, and the switch knows where B is
    await sendPacket(b, packet(netHdr(12), ethFrame(100, 1, MAC_B, BROADCAST)));
    assert.deepEqual((await receiveN(a, 1)).map((p) => seqOf(p.frame)), [1]);
    // unicast both ways, each frame whole and in order
    const ab = Array.from({ length: 10 }, (_, i) => ethFrame(200 + i, 10 + i, MAC_A, MAC_B));
    for (const f of ab) await sendPacket(a, packet(netHdr(12), f));
    const atB = await receiveN(b, 10);
    assert.deepEqual(atB.map((p) => p.frame), ab);
    const ba = Array.from({ length: 10 }, (_, i) => ethFrame(300 + i, 30 + i, MAC_B, MAC_A));
    for (const f of ba) await sendPacket(b, packet(netHdr(12), f));
    assert.deepEqual((await receiveN(a, 10)).map((p) => p.frame), ba);

    const st = sw.stats();
    const vu = new Map(st.vhostUser.map((p) => [p.name, p.counters]));
    assert.deepEqual([vu.get('vm0')!.txFrames, vu.get('vm0')!.rxFrames, vu.get('vm1')!.txFrames, vu.get('vm1')!.rxFrames], [10, 11, 11, 10]);
    assert.equal(st.engine.total.rxFrames, 21);
    assert.equal(st.engine.total.dropped, 0);
    assert.deepEqual(
      sw.macTable().map((m) => [m.mac, m.port]).sort(),
      [[macText(MAC_A), 'vm0'], [macText(MAC_B), 'vm1']],
    );

    // the ports' events at once, the MACs' at the switch's next look (eventIntervalMs: 1 s)
    const c0 = sw.port('vm0')!.connection;
    const c1 = sw.port('vm1')!.connection;
    assert.ok(lines.includes(`event: vm0 up as connection ${c0}`), lines.join('\n'));
    assert.ok(lines.includes(`event: vm1 up as connection ${c1}`), lines.join('\n'));
    await waitFor(() => lines.includes(`event: ${macText(MAC_A)} learned on vm0`) && lines.includes(`event: ${macText(MAC_B)} learned on vm1`), 3000, `the MACs' events in:\n${lines.join('\n')}`);
    assert.equal(lines.filter((l) => l.startsWith('event: ') && l.includes('dropped')).length, 0, 'no drops event');
  } finally {
    for (const fe of fes) fe.close();
    await sw.close();
  }
  // the ports' ends are told on the next turn of the event loop
  await new Promise((r) => setImmediate(r));
  assert.ok(lines.includes('event: vm0 down') && lines.includes('event: vm1 down'), lines.join('\n'));
  assert.deepEqual(fs.readdirSync(dir), [], 'both socket files removed at close');
  fs.rmdirSync(dir);
  await assertNoFdLeak(before);
  assert.deepEqual(lines.filter((l) => /error/i.test(l)), []);
});
