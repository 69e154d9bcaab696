// What a SIGHUP reload applies and what it refuses, on settings alone (the real signal, sockets and
// counters: test/protocol/reload.test.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { applyReload, describeReload, planReload, Reloadable } from '../../src/cli/reload';
import { settingsOf } from '../../src/cli/main';
import type { PortSpec, Settings } from '../../src/cli/settings';

const base = (): Settings => settingsOf(['node', 'elastic-vhost', '--socket', '/tmp/rp-a.sock,name=a,share=10', '--socket', '/tmp/rp-b.sock,name=b']).settings;

test('planReload: live settings and shares applied, port changes other than share and other settings refused', () => {
  const from = base();
  const to: Settings = {
    ...from,
    holdMs: 100,
    poolMb: 64,
    logLevel: 'debug',
    ports: [{ ...from.ports[0], share: 20, mac: '52:54:00:00:00:01' }, { ...from.ports[1], mode: 'server' }, { name: 'c', path: '/tmp/rp-c.sock' }],
  };
  const plan = planReload(from, to);
  assert.deepEqual([...plan.live], [['holdMs', 100], ['logLevel', 'debug']]);
  assert.deepEqual([...plan.share], [['a', 20]]);
  assert.deepEqual(plan.add.map((p) => p.name), ['c']);
  assert.deepEqual(plan.remove, []);
  assert.deepEqual(plan.refused, ['poolMb 32 → 64', 'a.mac (default) → "52:54:00:00:00:01"'], 'mode server is the default mode: no change');

  const calls: string[] = [];
  const r: Reloadable = {
    settings: from,
    addPort: (s: PortSpec) => {
      calls.push(`add ${s.name}`);
      if (s.name === 'c') throw new Error('path: busy');
    },
    removePort: (n) => calls.push(`remove ${n}`),
    setPortShare: (n, s) => calls.push(`share ${n} ${s}`),
    setLive: (k, v) => calls.push(`${k} ${String(v)}`),
  };
  const res = applyReload(r, { ...plan, remove: ['b'] });
  assert.deepEqual(calls, ['remove b', 'holdMs 100', 'logLevel debug', 'share a 20', 'add c']);
  assert.deepEqual(r.settings.ports.map((p) => [p.name, p.share, p.mac]), [['a', 20, undefined]], 'what runs now: the refused MAC left out, c not added');
  assert.equal(r.settings.holdMs, 100);
  assert.equal(r.settings.poolMb, 32);
  assert.equal(
    describeReload(res),
    'reload: removed b; changed holdMs 250 → 100, logLevel "info" → "debug", a.share 10 → 20; failed: c not added: path: busy; not applied, needs a restart: poolMb 32 → 64, a.mac (default) → "52:54:00:00:00:01"',
  );
  assert.equal(describeReload(applyReload(r, planReload(r.settings, r.settings))), 'reload: no changes');
});

test("planReload: the ops tools' settings (metrics, ctl, web, captures) need a restart", () => {
  const from = settingsOf(['node', 'elastic-vhost', '--socket', '/tmp/rp-a.sock,name=a', '--metrics', '9101', '--capture', 'a=/tmp/rp-a.pcap']).settings;
  const same = settingsOf(['node', 'elastic-vhost', '--socket', '/tmp/rp-a.sock,name=a', '--metrics', '9101', '--capture', 'a=/tmp/rp-a.pcap']).settings;
  assert.deepEqual(planReload(from, same).refused, [], 'an equal capture list is no change');
  const to: Settings = { ...from, metrics: '9102', ctl: true, ctlMode: 0o660, web: '8080', captures: [], socketDirs: ['/srv/x'], webTokenFile: '/etc/ev.token', captureDir: '/srv/pcap', captureMaxMb: 16 };
  const plan = planReload(from, to);
  assert.deepEqual([...plan.live], []);
  assert.deepEqual(plan.refused, [
    'socketDirs (default) → ["/srv/x"]',
    'metrics "9101" → "9102"',
    'ctl (default) → true',
    'ctlMode 0600 → 0660',
    'web (default) → "8080"',
    'webTokenFile (default) → "/etc/ev.token"',
    'captures ["a=/tmp/rp-a.pcap"] → []',
    'captureDir (default) → "/srv/pcap"',
    'captureMaxMb 256 → 16',
  ]);
});
