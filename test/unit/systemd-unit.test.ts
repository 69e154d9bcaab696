/**
 * contrib/elastic-vhost.service: what the README promises of it (Type=simple, a RuntimeDirectory
 * libvirt's QEMU group may enter, the socket group option, restart on failure, the installed
 * wrapper), and `systemd-analyze verify` finds nothing wrong with it. verify wants the ExecStart
 * binary to exist, so a copy with ExecStart pointing at the checkout's wrapper is verified.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { repoRoot } from '../../qemu-glue/launcher';
import { lookupId } from '../../src/cli/socket-owner';

const UNIT = path.join(repoRoot(), 'contrib', 'elastic-vhost.service');
const WRAPPER = path.join(repoRoot(), 'contrib', 'elastic-vhost');
const INSTALLED = '/usr/local/libexec/elastic-vhost';
const analyze = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((p) => fs.existsSync(p)) ?? null;

/** Key=Value settings of a section, continuation lines joined */
function settings(text: string, section: string): Map<string, string> {
  const out = new Map<string, string>();
  let inSection = false;
  const lines = text.replace(/\\\n\s*/g, ' ').split('\n');
  for (const l of lines) {
    if (/^\s*[#;]/.test(l) || l.trim() === '') continue;
    const s = /^\[(.+)\]$/.exec(l.trim());
    if (s) {
      inSection = s[1] === section;
      continue;
    }
    const eq = l.indexOf('=');
    if (inSection && eq > 0) out.set(l.slice(0, eq).trim(), l.slice(eq + 1).trim());
  }
  return out;
}

function verify(text: string): { rc: number | null; out: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-unit-'));
  try {
    const file = path.join(dir, 'elastic-vhost.service');
    fs.writeFileSync(file, text);
    const r = spawnSync(analyze!, ['verify', '--man=no', file], { encoding: 'utf8', timeout: 60_000 });
    return { rc: r.status, out: `${r.stdout}${r.stderr}`.trim() };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('systemd unit contrib/elastic-vhost.service', () => {
  const text = fs.readFileSync(UNIT, 'utf8');
  const svc = settings(text, 'Service');

  it('Type=simple, RuntimeDirectory for the sockets with the group libvirt needs, restart on failure, the installed wrapper', () => {
    assert.equal(svc.get('Type'), 'simple');
    assert.equal(svc.get('RuntimeDirectory'), 'elastic-vhost');
    assert.equal(svc.get('RuntimeDirectoryMode'), '0750');
    assert.equal(svc.get('Restart'), 'on-failure');
    const group = svc.get('Group');
    assert.equal(group, 'libvirt-qemu');
    const exec = svc.get('ExecStart') ?? '';
    assert.ok(exec.startsWith(`${INSTALLED} `), exec);
    assert.match(exec, new RegExp(`--socket-group ${group} --socket-mode 0660`));
    for (const m of exec.matchAll(/--socket (\S+)/g)) assert.ok(m[1].startsWith('/run/elastic-vhost/'), m[1]);
    assert.match(settings(text, 'Install').get('WantedBy') ?? '', /multi-user\.target/);
    if (lookupId('group', group!) === null) console.log(`# note: no group ${group} on this machine (libvirt-daemon-system creates it)`);
  });

  it('systemd-analyze verify finds nothing wrong (ExecStart at the checkout\'s wrapper)', (t) => {
    if (analyze === null) return t.skip('systemd-analyze not installed (Debian package systemd)');
    assert.ok(text.includes(`ExecStart=${INSTALLED} `));
    const r = verify(text.replace(`ExecStart=${INSTALLED} `, `ExecStart=${WRAPPER} `));
    assert.equal(r.rc, 0, r.out);
    assert.equal(r.out, '', `systemd-analyze verify:\n${r.out}`);
  });

  it('and it would say so: a mistyped setting and a missing ExecStart binary are reported', (t) => {
    if (analyze === null) return t.skip('systemd-analyze not installed (Debian package systemd)');
    const bad = verify(text.replace(`ExecStart=${INSTALLED} `, `ExecStart=${WRAPPER} `).replace('Restart=on-failure', 'Restart=on-failures'));
    assert.match(bad.out, /Failed to parse service restart specifier/);
    const missing = verify(text.replace(`ExecStart=${INSTALLED} `, `ExecStart=/nonexistent/elastic-vhost `));
    assert.notEqual(missing.rc, 0);
    assert.match(missing.out, /is not executable/);
  });
});
