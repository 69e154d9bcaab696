// --socket-owner / --socket-group with the real command: names resolved (getent) or refused naming
// the option before anything is opened; the socket files created belong to that user and group,
// with --socket-mode, and a process of that group (not root's) can connect — as libvirt's QEMU must.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { lookupId, resolveSocketOwner } from '../../src/cli/socket-owner';

const root = path.resolve(__dirname, '..', '..', '..');
const cli = path.join(root, 'dist', 'src', 'cli', 'main.js');
/** a group and user every Debian system has, other than root */
const GROUP = 'nogroup';
const USER = 'nobody';

test('names and ids resolve; unknown names are refused naming the option', () => {
  assert.equal(lookupId('passwd', 'root'), 0);
  assert.equal(lookupId('group', 'root'), 0);
  assert.equal(lookupId('group', '4242'), 4242);
  assert.equal(lookupId('group', 'no-such-group-here'), null);
  assert.equal(lookupId('passwd', 'bad:name'), null);
  assert.equal(resolveSocketOwner(undefined, undefined), null);
  assert.deepEqual(resolveSocketOwner(undefined, 'root'), { uid: -1, gid: 0 });
  assert.deepEqual(resolveSocketOwner('root', undefined), { uid: 0, gid: -1 });
  assert.throws(() => resolveSocketOwner('no-such-user-here', 'root'), /^Error: --socket-owner no-such-user-here: no such user$/);
  assert.throws(() => resolveSocketOwner(undefined, 'no-such-group-here'), /^Error: --socket-group no-such-group-here: no such group$/);
});

test('the command refuses an unknown group or user before it opens a socket', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-own-'));
  try {
    for (const [opt, what] of [['--socket-group', 'group'], ['--socket-owner', 'user']]) {
      const r = spawnSync(process.execPath, [cli, '--socket', path.join(dir, 'a.sock'), opt, 'no-such-name-here'], { encoding: 'utf8', timeout: 20_000 });
      assert.notEqual(r.status, 0);
      assert.match(r.stderr, new RegExp(`${opt} no-such-name-here: no such ${what}`));
      assert.deepEqual(fs.readdirSync(dir), []);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('socket files belong to --socket-owner and --socket-group with --socket-mode; that group can connect', { skip: process.getuid?.() !== 0 ? 'needs root (chown to another user)' : false }, async () => {
  const gid = lookupId('group', GROUP);
  const uid = lookupId('passwd', USER);
  assert.ok(gid !== null && uid !== null, `${USER}/${GROUP} missing`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-own-'));
  fs.chmodSync(dir, 0o755);
  const socks = [path.join(dir, 'a.sock'), path.join(dir, 'b.sock')];
  const p = spawn(process.execPath, [cli, '--socket', socks[0], '--socket-path', socks[1], '--socket-group', GROUP, '--socket-owner', USER, '--socket-mode', '0660', '--quiet'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout!.on('data', (d) => (out += d));
  p.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((r) => p.on('exit', (code) => r(code)));
  try {
    const end = Date.now() + 15_000;
    while (!socks.every((s) => out.includes(`listening on ${s}`))) {
      if (Date.now() > end || p.exitCode !== null) throw new Error(`not listening:\n${out}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    for (const s of socks) {
      const st = fs.statSync(s);
      assert.ok(st.isSocket());
      assert.equal(st.uid, uid, `${s} uid`);
      assert.equal(st.gid, gid, `${s} gid`);
      assert.equal(st.mode & 0o777, 0o660, `${s} mode`);
    }
    // a process that is neither root nor the owner, only in the group, connects; one outside it cannot
    const probe = (g: number) =>
      spawnSync(process.execPath, ['-e', `const s=require('net').connect(${JSON.stringify(socks[0])});s.on('connect',()=>{console.log('connected');s.destroy()});s.on('error',e=>{console.log(e.code);})`], {
        encoding: 'utf8',
        uid: 4242,
        gid: g,
        timeout: 10_000,
      }).stdout.trim();
    assert.equal(probe(gid), 'connected');
    assert.equal(probe(4242), 'EACCES');
  } finally {
    p.kill('SIGTERM');
    assert.equal(await exited, 0, out);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
