// Sockets are made ready where no client can reach them and only then put at their path: a
// vhost-user socket (Listener, --socket-owner/--socket-group/--socket-mode) and the control socket
// (--ctl-mode) are, from the first moment their path exists, already of their final owner and mode.
// Before, chown and chmod ran on the path after the socket was put there, so a client controlling
// the directory could swap a symlink in between and have root chown or chmod a file of its choice.
// A second thread watches the path as a client would: the first thing it sees there must be final.
// And a client that swaps a symlink in for the socket at whatever moment the switch names the
// socket's path again (any chown/chmod by path, hooked) gets nothing done to the file it points at.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
// the module object itself (not the import wrapper), so that hooking its functions is seen everywhere
import fsModule = require('node:fs');
import { Listener } from '../../src/vhost-user/server';
import { ControlServer } from '../../src/ops/control';
import { native } from '../../src/native';
import type { OpsHost } from '../../src/ops/switch-view';

const ROUNDS = 200;
/** the owner given to vhost-user sockets: nobody, nogroup */
const OWNER = { uid: 65534, gid: 65534 };
const asRoot = process.getuid?.() === 0;

interface Seen {
  mode: number;
  uid: number;
  gid: number;
  socket: boolean;
}

/** A thread that, told a path, spins until something is there and reports what it first saw. */
function watcher(): { first: (sock: string, make: () => void) => Promise<Seen>; stop: () => Promise<number> } {
  const src = `
    const { parentPort } = require('node:worker_threads');
    const fs = require('node:fs');
    parentPort.on('message', (sock) => {
      parentPort.postMessage('spinning');
      let st;
      while ((st = fs.lstatSync(sock, { throwIfNoEntry: false })) === undefined) {}
      parentPort.postMessage({ mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, socket: st.isSocket() });
    });`;
  const w = new Worker(src, { eval: true });
  const next = (): Promise<unknown> => new Promise((r) => w.once('message', r));
  return {
    first: async (sock, make) => {
      const spinning = next();
      w.postMessage(sock);
      assert.equal(await spinning, 'spinning');
      // let it spin on a CPU before the socket is made
      await new Promise((r) => setTimeout(r, 5));
      const seen = next();
      make();
      return (await seen) as Seen;
    },
    stop: () => w.terminate(),
  };
}

test('a vhost-user socket with --socket-owner/--socket-group and --socket-mode 0660 is never seen at its path other than final', { skip: asRoot ? false : 'needs root (chown to another user)' }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-place-'));
  const sock = path.join(dir, 'vm0.sock');
  const owner = OWNER;
  const w = watcher();
  const wrong: string[] = [];
  try {
    for (let i = 0; i < ROUNDS; i++) {
      let l: Listener | null = null;
      const seen = await w.first(sock, () => {
        l = new Listener(sock, () => false, () => {}, 0o660, owner);
      });
      if (!seen.socket || seen.mode !== 0o660 || seen.uid !== owner.uid || seen.gid !== owner.gid) wrong.push(`round ${i}: ${JSON.stringify({ ...seen, mode: seen.mode.toString(8) })}`);
      (l as Listener | null)?.close();
    }
    assert.deepEqual(wrong.slice(0, 5), [], `${wrong.length} of ${ROUNDS} first sightings were not the final socket`);
    const st = fs.lstatSync(dir);
    assert.equal(st.isDirectory(), true);
    assert.deepEqual(fs.readdirSync(dir), [], 'nothing left behind (no private directory, no socket)');
  } finally {
    await w.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the control socket with --ctl-mode 0660 is never seen at its path other than final', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-place-'));
  const sock = path.join(dir, 'ctl.sock');
  const w = watcher();
  const wrong: string[] = [];
  const host = { captures: { list: () => [], has: () => false }, ports: () => [] } as unknown as OpsHost;
  try {
    for (let i = 0; i < ROUNDS; i++) {
      let listening: Promise<ControlServer> | null = null;
      const seen = await w.first(sock, () => {
        listening = ControlServer.listen(sock, host, () => {}, 0o660);
      });
      (await listening!).close();
      if (!seen.socket || seen.mode !== 0o660 || seen.uid !== process.geteuid!()) wrong.push(`round ${i}: ${JSON.stringify({ ...seen, mode: seen.mode.toString(8) })}`);
    }
    assert.deepEqual(wrong.slice(0, 5), [], `${wrong.length} of ${ROUNDS} first sightings were not the final socket`);
    assert.deepEqual(fs.readdirSync(dir), []);
  } finally {
    await w.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a socket path of the longest length sun_path takes is listened on, with its mode, nothing left beside it', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-place-'));
  try {
    const sock = path.join(dir, 'x'.repeat(107 - dir.length - 1));
    assert.equal(sock.length, 107);
    const fd = native.unixListen(sock, 4, 0o640);
    try {
      assert.equal(fs.statSync(sock).mode & 0o7777, 0o640);
      native.close(native.unixConnect(sock));
      assert.deepEqual(fs.readdirSync(dir), [path.basename(sock)]);
    } finally {
      native.close(fd);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

/**
 * Every fs call that names a path and changes an owner or a mode, hooked: when it names `sock`, a
 * client swaps the socket for a symlink to `victim` first, as one controlling the directory could
 * between the socket's appearance and that call.
 */
function swapOnPathCall(sock: string, victim: string): { swaps: string[]; restore: () => void } {
  const swaps: string[] = [];
  const f = fsModule as unknown as Record<string, (...a: unknown[]) => unknown>;
  const names = ['chownSync', 'chmodSync', 'lchownSync', 'chown', 'chmod', 'lchown'];
  const orig = new Map(names.map((n) => [n, f[n]]));
  for (const n of names) {
    f[n] = (...a: unknown[]) => {
      if (a[0] === sock && fs.lstatSync(sock, { throwIfNoEntry: false })?.isSocket()) {
        fs.renameSync(sock, `${sock}.moved`);
        fs.symlinkSync(victim, sock);
        swaps.push(n);
      }
      return orig.get(n)!(...a);
    };
  }
  return { swaps, restore: () => names.forEach((n) => (f[n] = orig.get(n)!)) };
}

test('a symlink swapped in for a vhost-user socket or the control socket: the file it points at keeps its owner and mode', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-place-'));
  const victim = path.join(dir, 'victim');
  fs.writeFileSync(victim, 'root\'s file');
  fs.chmodSync(victim, 0o644);
  const before = fs.statSync(victim);
  const sock = path.join(dir, 'vm0.sock');
  const ctlSock = path.join(dir, 'ctl.sock');
  const host = { captures: { list: () => [], has: () => false }, ports: () => [] } as unknown as OpsHost;
  try {
    for (const [what, make] of [
      ['vhost-user socket', async () => new Listener(sock, () => false, () => {}, 0o666, asRoot ? OWNER : null)],
      ['control socket', async () => ControlServer.listen(ctlSock, host, () => {}, 0o666)],
    ] as const) {
      const p = what === 'control socket' ? ctlSock : sock;
      const hook = swapOnPathCall(p, victim);
      let made: { close(): void } | null = null;
      try {
        made = await make();
      } catch {
        /* a switch that notices the swap and refuses is fine too */
      } finally {
        hook.restore();
      }
      made?.close();
      const after = fs.statSync(victim);
      assert.deepEqual([after.uid, after.gid, (after.mode & 0o7777).toString(8)], [before.uid, before.gid, '644'], `${what}: the symlinked file was changed (swapped before ${hook.swaps.join(', ')})`);
      for (const f of [p, `${p}.moved`]) fs.rmSync(f, { force: true });
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
