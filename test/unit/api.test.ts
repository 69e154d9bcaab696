// The library's pieces without sockets: its options (the config file's keys, defaults and words
// for mistakes), the port factories, and EventSampler (the MAC table and counters turned into
// events) driven with made-up states.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DEFAULTS } from '../../src/defaults';
import { SETTINGS } from '../../src/cli/options';
import { ConfigError } from '../../src/cli/config';
import { resolveSwitchOptions, SWITCH_KEYS, tapPort, vhostUserPort, vxlanPort, vxlanText } from '../../src/api/options';
import { EventSampler, type SampleInput } from '../../src/api/events';
import type { DropCounts } from '../../src/engine/counters';

const problemsOf = (f: () => unknown): string[] => {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof ConfigError, `a ConfigError, not ${String(e)}`);
    return e.problems;
  }
  assert.fail('no error thrown');
};

test('options: every key is a config-file setting with its default; nothing given is the defaults', () => {
  const keys = new Set(SETTINGS.map((d) => d.key));
  for (const k of SWITCH_KEYS) assert.ok(keys.has(k), `${k} is a setting`);
  const o = resolveSwitchOptions({}) as unknown as Record<string, unknown>;
  const D = DEFAULTS as unknown as Record<string, unknown>;
  for (const k of SWITCH_KEYS) assert.equal(o[k], D[k], k);
  assert.equal(o.eventIntervalMs, 1000);
  assert.equal(resolveSwitchOptions({ poolMb: 64, socketMode: 0o660 }).poolMb, 64);
});

test('options: the doc comment of each option states the default DEFAULTS has (the API reference is made from them)', () => {
  const src = fs.readFileSync(path.resolve(__dirname, '..', '..', '..', 'src', 'api', 'options.ts'), 'utf8');
  const D = DEFAULTS as unknown as Record<string, unknown>;
  let checked = 0;
  for (const k of SWITCH_KEYS) {
    const m = new RegExp(`/\\*\\*([^*]|\\*(?!/))*\\*/\\s*${k}\\?:`).exec(src);
    assert.ok(m, `${k} has a doc comment`);
    const d = /Default (\S+?)\.(\s|$)/.exec(m[0]);
    if (D[k] === undefined) {
      assert.equal(d, null, `${k} has no default, its comment names none`);
      continue;
    }
    assert.ok(d, `${k}'s comment names its default`);
    const want = k === 'socketMode' ? `0o${(D[k] as number).toString(8)}` : typeof D[k] === 'string' ? `'${D[k]}'` : String(D[k]);
    assert.equal(d[1], want, `${k}: the comment says ${d[1]}, DEFAULTS ${want}`);
    checked++;
  }
  assert.ok(checked >= 15, `${checked} defaults checked`);
});

test('options: mistakes are refused with the config file\'s words, every one at once', () => {
  assert.deepEqual(problemsOf(() => resolveSwitchOptions({ poolMb: 0, unknown: 'flush' as never, blockSize: 1001, bogus: 1 } as never)).sort(), [
    'blockSize: must be multiple of 8',
    'bogus: unknown key (known: poolMb, blockSize, shareLimit, holdMs, unknown, macAgeS, queues, maxPorts, maxRegions, maxFrameBytes, maxChainDescriptors, offload, socketMode, socketOwner, socketGroup, maxGuestMemGb, maxTotalMemGb, pollUs, workers, eventIntervalMs)',
    'poolMb: must be >= 1',
    'unknown: must be one of "flood", "drop"',
  ]);
  assert.deepEqual(problemsOf(() => resolveSwitchOptions({ socketMode: 0o1000, log: 'console' as never })), ['socketMode: must be <= 511', 'log: must be a function (msg, fields) => void']);
  assert.deepEqual(problemsOf(() => resolveSwitchOptions({ workers: 17, eventIntervalMs: -1 })), ['workers: must be <= 16', 'eventIntervalMs: must be >= 0']);
});

test('port factories: the config file\'s port entry, a connected fd, a TAP name, a VXLAN spec object or --vxlan text', () => {
  assert.deepEqual(vhostUserPort({ name: 'vm0', path: '/run/vm0.sock', mac: '52:54:00:00:00:01' }), { kind: 'vhost-user', spec: { name: 'vm0', path: '/run/vm0.sock', mac: '52:54:00:00:00:01' } });
  assert.deepEqual(problemsOf(() => vhostUserPort({ name: 'vm0', path: '/x', mac: '52:54:00' })), ['mac: must be a MAC address aa:bb:cc:dd:ee:ff']);
  assert.deepEqual(problemsOf(() => vhostUserPort({ name: 'has space', path: '/x' })), ['name: must be a name without spaces (logs, counters, SIGHUP and ctl know the port by it)']);
  assert.deepEqual(vhostUserPort({ name: 'in', fd: 3 }).spec, { name: 'in', fd: 3 });
  assert.deepEqual(problemsOf(() => vhostUserPort({ name: 'in', fd: -1, queues: 0 })).sort(), ['fd: must be >= 0', 'queues: must be >= 1']);

  assert.deepEqual(tapPort('ev0'), { kind: 'tap', spec: { ifname: 'ev0' } });
  assert.deepEqual(problemsOf(() => tapPort('a-name-too-long-for-linux')), ['ifname: must NOT have more than 15 characters']);
  assert.deepEqual(problemsOf(() => tapPort({ ifname: 'ev/0', share: 0 })).sort(), ['ifname: must be an interface name of at most 15 characters, without "/", ":" or spaces', 'share: must be >= 1']);

  const spec = { local: '192.0.2.1', vni: 42, remotes: ['192.0.2.2', '192.0.2.3:4790'], macs: [{ mac: '52:54:00:00:00:09', vtep: '192.0.2.2' }], mtu: 9000, srcPorts: 2 };
  assert.equal(vxlanText(spec), '192.0.2.1,vni=42,remote=192.0.2.2,remote=192.0.2.3:4790,mac=52:54:00:00:00:09@192.0.2.2,mtu=9000,srcports=2');
  const v = vxlanPort(spec);
  assert.deepEqual(v.spec, vxlanPort(v.text).spec, 'the object and its text are one spec');
  assert.deepEqual([v.spec.local, v.spec.port, v.spec.vni, v.spec.remotes, v.spec.mtu, v.spec.srcPorts], ['192.0.2.1', 4789, 42, [{ address: '192.0.2.2', port: 4789 }, { address: '192.0.2.3', port: 4790 }], 9000, 2]);
  // a comma inside a part would smuggle in another part of the text
  assert.deepEqual(problemsOf(() => vxlanPort({ local: '192.0.2.1,vni=7', vni: 42, remotes: ['192.0.2.2'] })), ['local: must be an address without commas']);
  assert.deepEqual(problemsOf(() => vxlanPort({ local: '192.0.2.1', vni: 42 })), ['vxlan: give at least one remote=IP']);
  assert.deepEqual(problemsOf(() => vxlanPort('192.0.2.1,remote=192.0.2.2')), ['vxlan: vni=N is missing']);
});

// ---- EventSampler

const noDrops = (): DropCounts => ({ poolExhausted: 0, shareLimit: 0, malformed: 0, portSecurity: 0, holdExpired: 0, sameConnection: 0, detached: 0, tooBig: 0 });
const sum = (d: DropCounts): number => Object.values(d).reduce((a, b) => a + b, 0);

/** A switch state: connections [index, name, drops], MACs [mac, index, static], broken rings [port, total]. */
function state(now: number, conns: [number, string, Partial<DropCounts>?][], macs: [string, number, boolean?][], total: Partial<DropCounts> = {}, broken: [string, number][] = []): SampleInput {
  const t = { ...noDrops(), ...total };
  return {
    now,
    connections: conns.map(([index, name, d]) => {
      const drops = { ...noDrops(), ...d };
      return { index, name, drops, dropped: sum(drops) };
    }),
    total: { drops: t, dropped: sum(t) },
    macs: macs.map(([mac, index, isStatic]) => ({ mac, index, isStatic: isStatic ?? false })),
    brokenRings: broken.map(([port, n]) => ({ port, total: n })),
  };
}

test('EventSampler: MACs learned, moved between live connections, forgotten; a connection number taken by another port is not a move', () => {
  const s = new EventSampler();
  assert.deepEqual(s.sample(state(0, [[0, 'vm0'], [1, 'vm1']], [])), []);
  assert.deepEqual(s.sample(state(1000, [[0, 'vm0'], [1, 'vm1']], [['aa', 0], ['bb', 1, true]])), [
    ['macLearned', { mac: 'aa', port: 'vm0', connection: 0, static: false }],
    ['macLearned', { mac: 'bb', port: 'vm1', connection: 1, static: true }],
  ]);
  assert.deepEqual(s.sample(state(2000, [[0, 'vm0'], [1, 'vm1']], [['aa', 0], ['bb', 1, true]])), [], 'nothing changed, nothing told');
  assert.deepEqual(s.sample(state(3000, [[0, 'vm0'], [1, 'vm1']], [['aa', 1], ['bb', 1, true]])), [['macMoved', { mac: 'aa', from: 'vm0', to: 'vm1', connection: 1 }]]);
  // vm1 detached (its MACs with it), vm2 attached as connection 1 and sends from bb
  assert.deepEqual(s.sample(state(4000, [[0, 'vm0'], [1, 'vm2']], [['bb', 1]])), [
    ['macForgotten', { mac: 'bb', port: 'vm1' }],
    ['macLearned', { mac: 'bb', port: 'vm2', connection: 1, static: false }],
    ['macForgotten', { mac: 'aa', port: 'vm1' }],
  ]);
  // bb moves from vm2 (gone now) to vm0: forgotten with vm2, learned on vm0
  assert.deepEqual(s.sample(state(5000, [[0, 'vm0']], [['bb', 0]])), [
    ['macForgotten', { mac: 'bb', port: 'vm2' }],
    ['macLearned', { mac: 'bb', port: 'vm0', connection: 0, static: false }],
  ]);
});

test('EventSampler: drops are the counters\' growth since the last look, by reason and by connection (a connection\'s counters start at 0 when it attaches)', () => {
  const s = new EventSampler();
  assert.deepEqual(s.sample(state(0, [[0, 'vm0'], [1, 'vm1']], [])), []);
  assert.deepEqual(s.sample(state(250, [[0, 'vm0', { shareLimit: 3 }], [1, 'vm1', { malformed: 1 }]], [], { shareLimit: 3, malformed: 1, poolExhausted: 2 })), [
    ['drops', { dropped: 6, reasons: { shareLimit: 3, malformed: 1, poolExhausted: 2 }, ports: [{ port: 'vm0', connection: 0, dropped: 3, reasons: { shareLimit: 3 } }, { port: 'vm1', connection: 1, dropped: 1, reasons: { malformed: 1 } }], intervalMs: 250 }],
  ]);
  assert.deepEqual(s.sample(state(500, [[0, 'vm0', { shareLimit: 3 }], [1, 'vm1', { malformed: 1 }]], [], { shareLimit: 3, malformed: 1, poolExhausted: 2 })), [], 'no growth, no event');
  // vm1 detached (4 frames dropped as detached), vm3 attached as connection 1 and dropped 2 already
  assert.deepEqual(s.sample(state(1500, [[0, 'vm0', { shareLimit: 3 }], [1, 'vm3', { tooBig: 2 }]], [], { shareLimit: 3, malformed: 1, poolExhausted: 2, detached: 4, tooBig: 2 })), [
    ['drops', { dropped: 6, reasons: { detached: 4, tooBig: 2 }, ports: [{ port: 'vm3', connection: 1, dropped: 2, reasons: { tooBig: 2 } }], intervalMs: 1000 }],
  ]);
});

test('EventSampler: rings broken since the last look, per port; a removed port starts again from 0', () => {
  const s = new EventSampler();
  assert.deepEqual(s.sample(state(0, [], [], {}, [['vm0', 0]])), []);
  assert.deepEqual(s.sample(state(1, [], [], {}, [['vm0', 2], ['vm1', 0]])), [['ringBroken', { port: 'vm0', rings: 2, total: 2 }]]);
  assert.deepEqual(s.sample(state(2, [], [], {}, [['vm0', 2]])), []);
  assert.deepEqual(s.sample(state(3, [], [], {}, [['vm0', 3]])), [['ringBroken', { port: 'vm0', rings: 1, total: 3 }]]);
  s.forgetPort('vm0');
  assert.deepEqual(s.sample(state(4, [], [], {}, [['vm0', 1]])), [['ringBroken', { port: 'vm0', rings: 1, total: 1 }]]);
});

test('README: the library section shows examples/two-port-switch.ts as it is (the file the tests run)', () => {
  const root = path.resolve(__dirname, '..', '..', '..');
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('\n## Using it as a library\n'));
  const block = /```ts\n([\s\S]*?)```/.exec(section);
  assert.ok(block, 'a ts block in the section');
  const example = fs.readFileSync(path.join(root, 'examples', 'two-port-switch.ts'), 'utf8');
  // the file from its first import to the end of the function the README shows
  const from = example.indexOf('import ');
  const to = example.indexOf('\n}\n', from) + 3;
  assert.equal(block[1], example.slice(from, to));
});
