// SIGHUP with the real command and the TypeScript front-end: the switch started from a config file
// carries traffic; after the file changes and SIGHUP, the port added listens and carries traffic,
// the port removed has no socket any more, the new share limit and hold time show in the counters,
// what needs a restart is logged and left as it was; a broken file changes nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SwitchProcess } from '../../qemu-glue/switch-process';
import { FrontEnd, waitFor } from './frontend';
import { ethFrame, Guest, netHdr, packet, receiveN, sendPacket, seqOf } from './helpers';
import { native } from '../../src/native';

const MAC = (n: number) => Uint8Array.of(0x52, 0x54, 0, 0, 0, n);

function config(dir: string, ports: string[], extra: string[]): string {
  return [...extra, `statsFile: ${dir}/stats.json`, 'statsInterval: 100', 'ports:', ...ports.map((p) => `  - ${p}`), ''].join('\n');
}

async function guest(sw: SwitchProcess, sock: string, name: string): Promise<Guest> {
  const fe = FrontEnd.connect(sock, `fe-${name}`);
  const from = sw.log.length;
  const { rx, tx } = await fe.start();
  await sw.waitLog(new RegExp(`^${name}: features `), 5000, from);
  return { port: { name } as never, fe, rx, tx };
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
const enginePort = (s: any, name: string) => s.engine.ports.find((p: { name: string }) => p.name === name);

test('a config-started switch carries traffic; SIGHUP adds and removes ports, changes share limits and the hold time, refuses what needs a restart', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-reload-'));
  const file = path.join(dir, 'ev.yaml');
  const sock = (n: string) => path.join(dir, `${n}.sock`);
  fs.writeFileSync(file, config(dir, [`{name: vm0, path: ${sock('vm0')}, share: 100}`, `{name: vm1, path: ${sock('vm1')}}`], ['holdMs: 250']));
  const sw = new SwitchProcess({ workDir: dir, sockets: [], extraArgs: ['--config', file], echo: process.env.ELASTIC_VHOST_ECHO === '1' });
  const guests: Guest[] = [];
  try {
    await sw.start();
    await sw.waitLog(new RegExp(`listening on ${sock('vm1')}$`));
    const a = await guest(sw, sock('vm0'), 'vm0');
    const b = await guest(sw, sock('vm1'), 'vm1');
    guests.push(a, b);
    await sendPacket(a, packet(netHdr(12), ethFrame(100, 1, MAC(1))));
    assert.deepEqual((await receiveN(b, 1)).map((p) => seqOf(p.frame)), [1], 'traffic through the config-started switch');
    let s = await sw.freshStats();
    assert.equal(enginePort(s, 'vm0').shareLimit, 100);
    assert.equal(s.settings.holdTimeMs, 250);

    // vm1 goes, vm2 comes, vm0's share and the hold time change, the pool size needs a restart
    fs.writeFileSync(file, config(dir, [`{name: vm0, path: ${sock('vm0')}, share: 40}`, `{name: vm2, path: ${sock('vm2')}}`], ['holdMs: 100', 'poolMb: 64']));
    let from = sw.log.length;
    sw.signal('SIGHUP');
    const line = await sw.waitLog(/^reload: /, 5000, from);
    assert.equal(line, 'reload: added vm2; removed vm1; changed holdMs 250 → 100, vm0.share 100 → 40; not applied, needs a restart: poolMb 32 → 64');
    await b.fe.waitClosed();
    assert.equal(fs.existsSync(sock('vm1')), false, 'the removed port\'s socket is gone');
    assert.throws(() => native.unixConnect(sock('vm1')));
    assert.ok(fs.statSync(sock('vm2')).isSocket());
    const c = await guest(sw, sock('vm2'), 'vm2');
    guests.push(c);
    await sendPacket(a, packet(netHdr(12), ethFrame(100, 2, MAC(1))));
    assert.deepEqual((await receiveN(c, 1)).map((p) => seqOf(p.frame)), [2], 'traffic to the added port');
    await sendPacket(c, packet(netHdr(12), ethFrame(100, 3, MAC(3))));
    assert.deepEqual((await receiveN(a, 1)).map((p) => seqOf(p.frame)), [3], 'traffic from the added port');
    s = await sw.freshStats();
    assert.equal(enginePort(s, 'vm0').shareLimit, 40, 'the new share limit');
    assert.equal(s.settings.holdTimeMs, 100, 'the new hold time');
    assert.equal(s.engine.pool.blocks, 16384, 'the pool as it was (needs a restart)');
    assert.deepEqual(s.vhostUser.map((v: { name: string }) => v.name), ['vm0', 'vm2']);

    // the default share: a port without its own follows shareLimit
    fs.writeFileSync(file, config(dir, [`{name: vm0, path: ${sock('vm0')}, share: 40}`, `{name: vm2, path: ${sock('vm2')}}`], ['holdMs: 100', 'shareLimit: 77']));
    from = sw.log.length;
    sw.signal('SIGHUP');
    assert.equal(await sw.waitLog(/^reload: /, 5000, from), 'reload: changed shareLimit (default) → 77');
    s = await sw.freshStats();
    assert.equal(enginePort(s, 'vm2').shareLimit, 77);
    assert.equal(enginePort(s, 'vm0').shareLimit, 40);

    // a broken file: logged, nothing changes, the switch goes on
    fs.writeFileSync(file, config(dir, [`{name: vm0, path: ${sock('vm0')}, share: 0}`], []));
    from = sw.log.length;
    sw.signal('SIGHUP');
    const err = await sw.waitLog(/^reload: error/, 5000, from);
    assert.equal(err, `reload: error: nothing changed, the config file has errors: ${file}:4: ports[0].share: must be >= 1`);
    assert.ok(fs.statSync(sock('vm2')).isSocket());
    await sendPacket(a, packet(netHdr(12), ethFrame(100, 4, MAC(1))));
    assert.deepEqual((await receiveN(c, 1)).map((p) => seqOf(p.frame)), [4]);
  } finally {
    for (const g of guests) g.fe.close();
    const e = await sw.stop();
    assert.equal(e.code, 0, JSON.stringify(e));
  }
  await waitFor(() => !fs.existsSync(sock('vm0')), 2000, 'sockets removed at exit');
  fs.rmSync(dir, { recursive: true, force: true });
});
