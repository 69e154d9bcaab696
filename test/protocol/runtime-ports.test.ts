// Ports added and removed while the switch runs (RunningSwitch.addPort / removePort), with the real
// engine, real sockets and the TypeScript front-end: an added port's socket is there and carries
// traffic; a removed port's socket is gone, its session ended, the frames queued for it dropped and
// counted as detached, and another port's queued frames stay and are delivered in order.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../../src/native';
import { start, RunningSwitch } from '../../src/cli/main';
import type { VhostUserPort } from '../../src/ports/vhost-user/port';
import { closeFd, FrontEnd, waitFor } from './frontend';
import { ethFrame, Guest, LogCapture, netHdr, packet, receiveN, sendPacket, seqOf } from './helpers';

const MAC = (n: number) => Uint8Array.of(0x52, 0x54, 0, 0, 0, n);
const macStr = (n: number) => `52:54:00:00:00:${n.toString(16).padStart(2, '0')}`;

/** A front-end on the socket of `port`, started with rxCount RX buffers posted. */
async function guestOn(sock: string, port: () => VhostUserPort | undefined, rxCount: number): Promise<Guest> {
  const fe = FrontEnd.connect(sock, `fe-${path.basename(sock)}`);
  await waitFor(() => port()?.connected === true, 2000, `${sock} to take the front-end`);
  const { rx, tx } = await fe.start({ rxBuffers: [rxCount, 2048] });
  const p = port()!;
  await waitFor(() => p.session?.rings[0].started === true, 2000, `${p.name} RX ring to start`);
  return { port: p, fe, rx, tx };
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
const enginePort = (r: RunningSwitch, name: string): any => (r.stats() as any).engine.ports.find((p: { name: string }) => p.name === name);

test('addPort: a server-mode port added at run time listens and carries traffic; removePort: its socket is gone, its queued frames dropped (detached), another port keeps its queued frames', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-rt-'));
  const sock = (n: string) => path.join(dir, `${n}.sock`);
  const log = new LogCapture();
  const r = start(['node', 'elastic-vhost', '--socket', `${sock('vm0')},name=vm0,mac=${macStr(1)}`, '--socket', `${sock('vm1')},name=vm1,mac=${macStr(2)}`], log.fn);
  const byName = (n: string) => () => r.ports.find((p) => p.name === n);
  const guests: Guest[] = [];
  try {
    const a = await guestOn(sock('vm0'), byName('vm0'), 64);
    const b = await guestOn(sock('vm1'), byName('vm1'), 0); // no RX buffers: frames for it wait
    guests.push(a, b);

    const added = r.addPort({ name: 'vm2', path: sock('vm2'), mac: macStr(3) });
    assert.equal(added.name, 'vm2');
    const st = fs.statSync(sock('vm2'));
    assert.ok(st.isSocket(), 'vm2.sock is a socket');
    assert.equal(st.mode & 0o777, 0o600);
    const c = await guestOn(sock('vm2'), byName('vm2'), 8);
    guests.push(c);
    // the added port carries traffic both ways
    await sendPacket(a, packet(netHdr(12), ethFrame(120, 1, MAC(1), MAC(3))));
    assert.deepEqual((await receiveN(c, 1)).map((p) => seqOf(p.frame)), [1]);
    await sendPacket(c, packet(netHdr(12), ethFrame(120, 2, MAC(3), MAC(1))));
    assert.deepEqual((await receiveN(a, 1)).map((p) => seqOf(p.frame)), [2]);

    // frames wait for vm1 (no buffers) and for vm2 (7 buffers left: 7 frames delivered, 3 wait)
    for (let i = 0; i < 5; i++) await sendPacket(a, packet(netHdr(12), ethFrame(200, 100 + i, MAC(1), MAC(2))));
    for (let i = 0; i < 7 + 3; i++) await sendPacket(a, packet(netHdr(12), ethFrame(200, 200 + i, MAC(1), MAC(3))));
    assert.equal(enginePort(r, 'vm1').queuedFrames, 5);
    assert.equal(enginePort(r, 'vm2').queuedFrames, 3);
    const detachedBefore = (r.stats() as any).engine.total.drops.detached; // eslint-disable-line @typescript-eslint/no-explicit-any

    r.removePort('vm2');
    assert.equal(fs.existsSync(sock('vm2')), false, 'the removed port\'s socket file is gone');
    await c.fe.waitClosed();
    assert.equal(r.ports.some((p) => p.name === 'vm2'), false);
    assert.equal(enginePort(r, 'vm2'), undefined);
    const s = r.stats() as any; // eslint-disable-line @typescript-eslint/no-explicit-any
    assert.equal(s.engine.total.drops.detached - detachedBefore, 3, 'the 3 frames queued for vm2 are counted as detached');
    assert.equal(enginePort(r, 'vm1').queuedFrames, 5, 'vm1\'s queued frames are untouched');
    assert.throws(() => native.unixConnect(sock('vm2')), /ENOENT|No such file/);
    await log.waitLine(/vm2: port removed/);

    // vm1 posts buffers: its 5 waiting frames arrive, in order
    b.rx.postRx(16, 2048);
    b.rx.kick();
    assert.deepEqual((await receiveN(b, 5)).map((p) => seqOf(p.frame)), [100, 101, 102, 103, 104]);
    assert.equal(enginePort(r, 'vm1').queuedFrames, 0);
    assert.equal(enginePort(r, 'vm1').drops.detached, 0);

    // the same name can be used again, a new socket at the same path
    r.addPort({ name: 'vm2', path: sock('vm2') });
    assert.ok(fs.statSync(sock('vm2')).isSocket());
    r.removePort('vm2');
    assert.equal(fs.existsSync(sock('vm2')), false);
  } finally {
    for (const g of guests) g.fe.close();
    r.close();
  }
  assert.deepEqual(fs.readdirSync(dir), [], 'every socket file removed at close');
  fs.rmdirSync(dir);
  assert.deepEqual(log.errors(), []);
});

test('addPort refuses a bad spec, a name or socket in use, and --max-ports, creating nothing; removePort refuses an unknown name', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-rt-'));
  const sock = (n: string) => path.join(dir, `${n}.sock`);
  const log = new LogCapture();
  const r = start(['node', 'elastic-vhost', '--socket', `${sock('vm0')},name=vm0`, '--max-ports', '2'], log.fn);
  try {
    assert.throws(() => r.addPort({ name: 'vm0', path: sock('x') }), /name: a port named "vm0" exists/);
    assert.throws(() => r.addPort({ name: 'other', path: sock('vm0') }), /path: .*vm0.sock is another port's socket/);
    assert.throws(() => r.addPort({ name: 'm', path: sock('m'), mac: '52:54:00:00:01' }), /^Error: mac: must be a MAC address aa:bb:cc:dd:ee:ff$/);
    assert.throws(() => r.addPort({ name: 's', path: sock('s'), share: 0 }), /^Error: share: must be >= 1$/);
    assert.throws(() => r.addPort({ name: 'q', path: sock('q'), queues: 129 }), /^Error: queues: must be <= 128$/);
    assert.throws(() => r.addPort({ path: sock('n') } as never), /^Error: name: is required$/);
    assert.throws(() => r.addPort({ name: 'u', path: sock('u'), sahre: 3 } as never), /^Error: sahre: unknown key \(known: name, path, mode, mac, share, queues, offload\)$/);
    assert.throws(() => r.addPort({ name: 'd', path: path.join(dir, 'no-such-dir', 'd.sock') }), /ENOENT|No such file/);
    assert.deepEqual(fs.readdirSync(dir), ['vm0.sock'], 'no socket created by a refused add');
    assert.equal(r.ports.length, 1);
    r.addPort({ name: 'vm1', path: sock('vm1') });
    assert.throws(() => r.addPort({ name: 'vm2', path: sock('vm2') }), /2 ports already, --max-ports is 2/);
    assert.equal(fs.existsSync(sock('vm2')), false);
    assert.throws(() => r.removePort('nope'), /no vhost-user port named "nope"/);
  } finally {
    r.close();
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

test('addPort in client mode dials the front-end; removePort ends the session and dials no more', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-rt-'));
  const qemuSock = path.join(dir, 'qemu.sock');
  const log = new LogCapture();
  const r = start(['node', 'elastic-vhost', '--socket', `${path.join(dir, 'vm0.sock')},name=vm0`], log.fn);
  const listenFd = native.unixListen(qemuSock, 4, 0o600); // QEMU: -chardev socket,server=on
  try {
    r.addPort({ name: 'vmc', path: qemuSock, mode: 'client', queues: 2, offload: false });
    const fe = await FrontEnd.accept(listenFd, 'qemu');
    const port = r.ports.find((p) => p.name === 'vmc')!;
    await waitFor(() => port.connected);
    // per-port session options: 2 queue pairs, no offloads offered
    assert.equal(port.session!.maxQueuePairs, 2);
    assert.equal(port.session!.offeredFeatures & (1n << 0n), 0n, 'VIRTIO_NET_F_CSUM not offered');
    await fe.start();
    r.removePort('vmc');
    await fe.waitClosed();
    fe.close();
    assert.equal(fs.existsSync(qemuSock), true, 'a client-mode socket is the front-end\'s: left alone');
    await new Promise((res) => setTimeout(res, 1500)); // past the Dialer's retry period
    assert.equal(native.unixAccept(listenFd), -1, 'no new dial after removal');
  } finally {
    closeFd(listenFd);
    r.close();
  }
  fs.rmSync(dir, { recursive: true, force: true });
});
