// The back-end program conventions of QEMU's docs/interop/vhost-user.rst, with the real command:
// --print-capabilities, --fd=FDNUM, --socket-path=PATH; numbers that make no sense refused; and the
// vhost-user JSON description shipped in contrib/ checked against docs/interop/vhost-user.json.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../../src/native';
import { FrontEnd, waitFor } from '../protocol/frontend';
import { DEFAULT_FEATURES } from '../../src/vhost-user/session';

const root = path.resolve(__dirname, '..', '..', '..');
const cli = path.join(root, 'dist', 'src', 'cli', 'main.js');

test('--print-capabilities prints {"type": "net"} and exits 0 before any other validation', () => {
  const r = spawnSync(process.execPath, [cli, '--print-capabilities', '--pool-mb', 'nonsense', '--bogus'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { type: 'net' });
});

test('numbers that make no sense are refused naming the option; --socket-mode is shown and taken as octal', () => {
  for (const opt of ['--pool-mb', '--queues', '--block-size', '--max-guest-mem-gb']) {
    const r = spawnSync(process.execPath, [cli, '--socket', '/tmp/x.sock', opt, '0'], { encoding: 'utf8' });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, new RegExp(`${opt}.*0 makes no sense`));
  }
  const h = spawnSync(process.execPath, [cli, '--help'], { encoding: 'utf8' });
  assert.match(h.stdout.replace(/\s+/g, ' '), /--socket-mode <octal> mode of the socket files created \(octal\) \(default: 0600\)/);
  const both = spawnSync(process.execPath, [cli, '--socket-path', '/tmp/y.sock', '--fd', '3'], { encoding: 'utf8' });
  assert.notEqual(both.status, 0);
  assert.match(both.stderr, /--socket-path and --fd exclude each other/);
});

test('--fd=FDNUM: serves the inherited connected socket, and exits 0 when that session ends', async () => {
  const [ours, theirs] = native.socketpair();
  const p = spawn(process.execPath, [cli, '--fd=3', '--quiet'], { stdio: ['ignore', 'pipe', 'pipe', theirs] });
  native.close(theirs);
  let out = '';
  p.stdout!.on('data', (d) => (out += d));
  p.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((r) => p.on('exit', (code) => r(code)));
  const fe = new FrontEnd(ours, 'fd-test');
  try {
    assert.equal(await fe.getFeatures(), DEFAULT_FEATURES);
    await fe.setOwner();
  } finally {
    fe.close();
  }
  assert.equal(await exited, 0, out);
  assert.match(out, /fd 3: session ended: exiting/);
});

test('--socket-path=PATH: one server socket a front-end connects to', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-sp-'));
  const sock = path.join(dir, 'vu.sock');
  const p = spawn(process.execPath, [cli, `--socket-path=${sock}`, '--quiet'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((r) => p.on('exit', (code) => r(code)));
  try {
    await waitFor(() => fs.existsSync(sock), 10_000, 'the socket');
    const fe = new FrontEnd(native.unixConnect(sock), 'sp-test');
    assert.equal(await fe.getFeatures(), DEFAULT_FEATURES);
    fe.close();
  } finally {
    p.kill('SIGTERM');
  }
  assert.equal(await exited, 0);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('contrib/50-elastic-vhost.json is a valid VhostUserBackend (docs/interop/vhost-user.json)', () => {
  const j = JSON.parse(fs.readFileSync(path.join(root, 'contrib', '50-elastic-vhost.json'), 'utf8')) as Record<string, unknown>;
  // struct VhostUserBackend: description str, type VHostUserBackendType, binary str, *tags [str]
  const allowed = new Set(['description', 'type', 'binary', 'tags']);
  for (const k of Object.keys(j)) assert.ok(allowed.has(k), `unknown member ${k}`);
  assert.equal(typeof j.description, 'string');
  const types = ['9p', 'balloon', 'block', 'caif', 'console', 'crypto', 'gpu', 'input', 'net', 'rng', 'rpmsg', 'rproc-serial', 'scsi', 'vsock', 'fs'];
  assert.ok(types.includes(j.type as string), `type ${String(j.type)}`);
  assert.equal(j.type, 'net');
  assert.equal(typeof j.binary, 'string');
  assert.ok(path.isAbsolute(j.binary as string), 'binary is an absolute path');
  if (j.tags !== undefined) assert.ok(Array.isArray(j.tags) && (j.tags as unknown[]).every((t) => typeof t === 'string'));
  // the wrapper it names is shipped, executable, and takes --print-capabilities
  const wrapper = path.join(root, 'contrib', path.basename(j.binary as string));
  assert.ok((fs.statSync(wrapper).mode & 0o111) !== 0, 'wrapper executable');
  const r = spawnSync(wrapper, ['--print-capabilities'], { encoding: 'utf8', env: { ...process.env, ELASTIC_VHOST_HOME: root } });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { type: 'net' });
});
