// The library's switch (createSwitch) with real sockets and the TypeScript front-end: its events in
// the order things happened, with what they carry (ports up and down with the reason, MACs learned,
// moved and forgotten, rings broken, drops by reason and port), a port on a connected fd, a TAP
// uplink whose device goes away, live settings, and ports removed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createSwitch, type ElasticSwitch, type SwitchEventName, type SwitchEvents, vhostUserPort, tapPort } from '../../src/index';
import type { VirtualSwitch } from '../../src/api/switch';
import { encode, Req, VERSION } from '../../src/vhost-user/message';
import { FrontEnd, waitFor } from './frontend';
import { assertNoFdLeak, BROADCAST, ethFrame, fdCount, type Guest, LogCapture, MAC_A, MAC_B, netHdr, packet, receiveN, sendPacket } from './helpers';

const macText = (m: Uint8Array) => [...m].map((b) => b.toString(16).padStart(2, '0')).join(':');
const A = macText(MAC_A);
const B = macText(MAC_B);
const NAMES: SwitchEventName[] = ['portAdded', 'portRemoved', 'portUp', 'portDown', 'macLearned', 'macMoved', 'macForgotten', 'ringBroken', 'drops'];

type Seen = { [K in SwitchEventName]: [K, SwitchEvents[K]] }[SwitchEventName];

/** Every event of sw, in order. */
function recorder(sw: ElasticSwitch): Seen[] {
  const seen: Seen[] = [];
  for (const n of NAMES) sw.on(n, (e: SwitchEvents[typeof n]) => seen.push([n, e] as Seen));
  return seen;
}

const of = <K extends SwitchEventName>(seen: Seen[], name: K): SwitchEvents[K][] => seen.filter((s) => s[0] === name).map((s) => s[1] as SwitchEvents[K]);

/** A switch in a fresh directory, its log captured; body's guests and the switch closed after, no error logged, no fd left. */
async function withApiSwitch(opts: Parameters<typeof createSwitch>[0], body: (sw: ElasticSwitch, dir: string, log: LogCapture, seen: Seen[], guest: (name: string, rx?: number) => Promise<Guest>) => Promise<void>, allowErrors: RegExp | null = null): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-api-'));
  const before = fdCount();
  const log = new LogCapture();
  const sw = createSwitch({ log: log.fn, eventIntervalMs: 50, ...opts });
  const seen = recorder(sw);
  const fes: FrontEnd[] = [];
  const guest = async (name: string, rx = 64): Promise<Guest> => {
    const fe = FrontEnd.connect(path.join(dir, `${name}.sock`), `fe-${name}`);
    fes.push(fe);
    await waitFor(() => sw.port(name)?.up === true, 2000, `${name} to take its front-end`);
    const { rx: r, tx } = await fe.start({ rxBuffers: [rx, 2048] });
    return { port: (sw as VirtualSwitch).vhostUserPort(name)!, fe, rx: r, tx };
  };
  try {
    await body(sw, dir, log, seen, guest);
  } finally {
    for (const fe of fes) fe.close();
    await sw.close();
  }
  assert.equal(sw.closed, true);
  assert.throws(() => sw.addPort(vhostUserPort({ name: 'late', path: path.join(dir, 'late.sock') })), /the switch is closed/);
  assert.deepEqual(fs.readdirSync(dir), [], 'every socket file removed at close');
  fs.rmdirSync(dir);
  await assertNoFdLeak(before);
  assert.deepEqual(log.errors().filter((l) => allowErrors === null || !allowErrors.test(l)), []);
}

test('events: ports up and down (with the reason of a broken front-end), MACs learned, moved and forgotten, in the order they happened', async () => {
  await withApiSwitch({}, async (sw, dir, _log, seen, guest) => {
    const added = sw.addPort(vhostUserPort({ name: 'vm0', path: path.join(dir, 'vm0.sock') }));
    sw.addPort(vhostUserPort({ name: 'vm1', path: path.join(dir, 'vm1.sock') }));
    assert.deepEqual([added.name, added.kind, added.up, added.connection], ['vm0', 'vhost-user', false, -1]);
    assert.deepEqual(seen, [], 'nothing told inside addPort(): events come on the next tick');
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(seen, [['portAdded', { port: 'vm0', kind: 'vhost-user' }], ['portAdded', { port: 'vm1', kind: 'vhost-user' }]]);

    const a = await guest('vm0');
    const b = await guest('vm1');
    const c0 = sw.port('vm0')!.connection;
    const c1 = sw.port('vm1')!.connection;
    assert.ok(c0 >= 0 && c1 >= 0 && c0 !== c1);
    assert.deepEqual(of(seen, 'portUp'), [{ port: 'vm0', kind: 'vhost-user', connection: c0 }, { port: 'vm1', kind: 'vhost-user', connection: c1 }]);

    await sendPacket(a, packet(netHdr(12), ethFrame(80, 1, MAC_A, BROADCAST)));
    await receiveN(b, 1);
    await waitFor(() => of(seen, 'macLearned').length === 1, 2000, 'A learned');
    assert.deepEqual(of(seen, 'macLearned'), [{ mac: A, port: 'vm0', connection: c0, static: false }]);
    // the VM with MAC A now sends from vm1 (it moved there)
    await sendPacket(b, packet(netHdr(12), ethFrame(80, 2, MAC_A, BROADCAST)));
    await receiveN(a, 1);
    await waitFor(() => of(seen, 'macMoved').length === 1, 2000, 'A moved');
    assert.deepEqual(of(seen, 'macMoved'), [{ mac: A, from: 'vm0', to: 'vm1', connection: c1 }]);

    // vm1's front-end breaks off in the middle of a message: down with the reason, its MAC forgotten
    b.fe.sendBytes(encode(Req.GET_FEATURES, VERSION).subarray(0, 6));
    b.fe.close();
    await waitFor(() => of(seen, 'portDown').length === 1 && of(seen, 'macForgotten').length === 1, 2000, 'vm1 down and A forgotten');
    assert.deepEqual(of(seen, 'portDown'), [{ port: 'vm1', kind: 'vhost-user', reason: 'peer closed the connection in the middle of a message (6 bytes of header read)' }]);
    assert.deepEqual(of(seen, 'macForgotten'), [{ mac: A, port: 'vm1' }]);
    assert.deepEqual([sw.port('vm1')!.up, sw.port('vm1')!.connection], [false, -1]);
    // vm0's goes away cleanly: no reason
    a.fe.close();
    await waitFor(() => of(seen, 'portDown').length === 2, 2000, 'vm0 down');
    assert.deepEqual(of(seen, 'portDown')[1], { port: 'vm0', kind: 'vhost-user', reason: null });

    sw.removePort('vm0');
    assert.equal(sw.port('vm0'), undefined);
    assert.equal(fs.existsSync(path.join(dir, 'vm0.sock')), false);
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(seen.map((s) => s[0]), ['portAdded', 'portAdded', 'portUp', 'portUp', 'macLearned', 'macMoved', 'portDown', 'macForgotten', 'portDown', 'portRemoved']);
    assert.deepEqual(sw.ports().map((p) => p.name), ['vm1']);
  }, /^vm1: error: peer closed the connection in the middle of a message/);
});

test('events: drops by reason and port, once per look; a ring marked broken; the static MAC of a port as learned when it attaches', async () => {
  await withApiSwitch({}, async (sw, dir, log, seen, guest) => {
    sw.addPort(vhostUserPort({ name: 'vm0', path: path.join(dir, 'vm0.sock') }));
    // vm1 knows its MAC from the start and may hold 2 blocks of waiting frames
    sw.addPort(vhostUserPort({ name: 'vm1', path: path.join(dir, 'vm1.sock'), mac: B, share: 2 }));
    const a = await guest('vm0');
    await guest('vm1', 0); // no RX buffers: frames for it wait, 2 of them, the rest are dropped
    const c1 = sw.port('vm1')!.connection;
    await waitFor(() => of(seen, 'macLearned').length === 1, 2000, 'B (static) told');
    assert.deepEqual(of(seen, 'macLearned'), [{ mac: B, port: 'vm1', connection: c1, static: true }]);

    for (let i = 0; i < 7; i++) await sendPacket(a, packet(netHdr(12), ethFrame(1000, 10 + i, MAC_A, MAC_B)));
    await waitFor(() => of(seen, 'drops').length === 1, 2000, 'the drops event');
    await new Promise((r) => setTimeout(r, 150)); // two more looks: nothing new, nothing told
    const drops = of(seen, 'drops');
    assert.equal(drops.length, 1);
    const { intervalMs, ...d } = drops[0];
    assert.ok(intervalMs > 0 && intervalMs < 1000, `intervalMs ${intervalMs}`);
    assert.deepEqual(d, { dropped: 5, reasons: { shareLimit: 5 }, ports: [{ port: 'vm1', connection: c1, dropped: 5, reasons: { shareLimit: 5 } }] });
    assert.equal(sw.stats().engine.total.drops.shareLimit, 5);

    // vm0's TX ring gets a descriptor outside guest memory: marked broken, told once
    a.tx.writeDesc(0, 0x7fff0000, 64, 0, 0);
    a.tx.makeAvailable(0);
    a.tx.kick();
    await waitFor(() => of(seen, 'ringBroken').length === 1, 2000, 'the ring broken event');
    assert.deepEqual(of(seen, 'ringBroken'), [{ port: 'vm0', rings: 1, total: 1 }]);
    await log.waitLine(/ring marked broken$/);
  }, /ring marked broken$/);
});

test('a port on a connected fd (backend program conventions): up at once, down when its session ends; removePort of it', async () => {
  await withApiSwitch({}, async (sw, _dir, _log, seen) => {
    const { fe, backendFd } = FrontEnd.pair('fe-fd');
    try {
      const p = sw.addPort(vhostUserPort({ name: 'inherited', fd: backendFd }));
      assert.equal(p.up, true);
      await fe.start({ rxBuffers: [8, 2048] });
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(seen.slice(0, 2), [['portAdded', { port: 'inherited', kind: 'vhost-user' }], ['portUp', { port: 'inherited', kind: 'vhost-user', connection: p.connection }]]);
      fe.close();
      await waitFor(() => of(seen, 'portDown').length === 1, 2000, 'down');
      assert.equal(p.up, false);
      sw.removePort('inherited');
      assert.throws(() => sw.removePort('inherited'), /no port named "inherited"/);
    } finally {
      fe.close();
    }
  });
});

test('live settings: set() and setPortShare() change the engine, checked as the config file is; options say what runs', async () => {
  await withApiSwitch({ holdMs: 100, unknown: 'drop' }, async (sw, dir) => {
    assert.deepEqual([sw.options.holdMs, sw.options.unknown, sw.options.poolMb], [100, 'drop', 32]);
    sw.set('holdMs', 40);
    sw.set('unknown', 'flood');
    sw.set('shareLimit', 300);
    const s = sw.stats().settings;
    assert.deepEqual([s.holdTimeMs, s.unknownPolicy, s.defaultShareLimit], [40, 'flood', 300]);
    assert.deepEqual([sw.options.holdMs, sw.options.unknown, sw.options.shareLimit], [40, 'flood', 300]);
    assert.throws(() => sw.set('holdMs', -1), /^Error: holdMs: must be >= 0$/);
    assert.throws(() => sw.set('poolMb' as never, 64 as never), /poolMb: cannot change while running/);

    sw.addPort(vhostUserPort({ name: 'vm0', path: path.join(dir, 'vm0.sock'), share: 10 }));
    const fe = FrontEnd.connect(path.join(dir, 'vm0.sock'), 'fe-vm0');
    try {
      await waitFor(() => sw.port('vm0')!.up, 2000, 'vm0 up');
      const engineShare = () => sw.stats().engine.ports.find((p) => p.name === 'vm0')!.shareLimit;
      assert.equal(engineShare(), 10);
      sw.setPortShare('vm0', 20);
      assert.equal(engineShare(), 20);
      sw.setPortShare('vm0', undefined);
      assert.equal(engineShare(), 300, 'back to the switch\'s shareLimit');
      assert.throws(() => sw.setPortShare('vm0', 0), /shareLimit: must be >= 1/);
      assert.throws(() => sw.setPortShare('nope', 1), /no port named "nope"/);
    } finally {
      fe.close();
    }
  });
});

function tapSkip(): string | null {
  if (!fs.existsSync('/dev/net/tun')) return '/dev/net/tun is missing (no TUN/TAP in this kernel)';
  try {
    execFileSync('which', ['ip'], { stdio: 'ignore' });
  } catch {
    return 'the ip command (iproute2) is missing';
  }
  if (process.getuid?.() !== 0) return 'creating a TAP device needs root';
  return null;
}
const noTap = tapSkip();
if (noTap) console.log(`# skipping the TAP uplink events test: ${noTap}`);

test('a TAP uplink: up when added, down with "uplink detached" when its device is deleted, listed in stats', { skip: noTap ?? false }, async () => {
  const ifname = `evapi${process.pid % 10000}`;
  try {
    await withApiSwitch({}, async (sw, _dir, log, seen) => {
      const p = sw.addPort(tapPort(ifname));
      assert.deepEqual([p.name, p.kind, p.up], [`tap:${ifname}`, 'tap', true]);
      assert.throws(() => sw.addPort(tapPort(ifname)), new RegExp(`name: a port named "tap:${ifname}" exists`));
      assert.deepEqual(sw.stats().taps.map((t) => [t.name, t.ifname, t.connected]), [[`tap:${ifname}`, ifname, true]]);
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(seen, [['portAdded', { port: p.name, kind: 'tap' }], ['portUp', { port: p.name, kind: 'tap', connection: p.connection }]]);
      execFileSync('ip', ['link', 'del', ifname]);
      await waitFor(() => of(seen, 'portDown').length === 1, 3000, 'the uplink down');
      assert.deepEqual(of(seen, 'portDown'), [{ port: p.name, kind: 'tap', reason: 'uplink detached' }]);
      assert.deepEqual([p.up, p.connection], [false, -1]);
      assert.equal(sw.stats().taps[0].connected, false);
      await log.waitLine(/the TAP device is gone/);
    }, /the TAP device is gone/);
  } finally {
    try {
      execFileSync('ip', ['link', 'del', ifname], { stdio: 'ignore' });
    } catch {
      /* gone */
    }
  }
});
