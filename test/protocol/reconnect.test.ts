// Reconnection: a front-end goes away and a new one (QEMU restarted, or its chardev reconnecting)
// comes to the same port; traffic must work again. Server mode (we listen: Listener) and client mode
// (QEMU listens, we dial: Dialer).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../../src/native';
import { Dialer, Listener } from '../../src/vhost-user/server';
import { VhostUserPort } from '../../src/ports/vhost-user/port';
import { closeFd, FrontEnd, waitFor } from './frontend';
import {
  assertNoFdLeak,
  closeGuest,
  ethFrame,
  fdCount,
  Guest,
  LogCapture,
  makePort,
  netHdr,
  packet,
  receiveN,
  sendPacket,
  seqOf,
  startGuest,
  TestHub,
} from './helpers';

function tmpSocket(): { dir: string; sock: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhost-proto-'));
  return { dir, sock: path.join(dir, 'vm.sock') };
}

const acceptorFor = (port: VhostUserPort) => (fd: number): boolean => {
  if (port.connected) return false;
  port.bind(fd);
  return true;
};

/** Starts fe as the front-end of port and checks frames pass both ways with peer. */
async function startAndExchange(port: VhostUserPort, fe: FrontEnd, peer: Guest, seq: number): Promise<void> {
  const { rx, tx } = await fe.start();
  await waitFor(() => port.session?.rings[0].started === true, 2000, `${port.name} RX started`);
  const g: Guest = { port, fe, rx, tx };
  await sendPacket(g, packet(netHdr(12), ethFrame(200, seq)));
  assert.deepEqual((await receiveN(peer, 1)).map((p) => seqOf(p.frame)), [seq]);
  await sendPacket(peer, packet(netHdr(12), ethFrame(300, seq + 1)));
  assert.deepEqual((await receiveN(g, 1)).map((p) => seqOf(p.frame)), [seq + 1]);
}

test('server mode (Listener): a front-end disconnects, a new one connects to the same socket, traffic works again', async () => {
  const before = fdCount();
  const { dir, sock } = tmpSocket();
  const hub = new TestHub();
  const log = new LogCapture();
  const peer = await startGuest(hub, 'peer', log);
  const port = makePort(hub, 'vmA', log);
  const listener = new Listener(sock, acceptorFor(port), log.fn);
  try {
    const fe1 = FrontEnd.connect(sock, 'qemu-1');
    await waitFor(() => port.connected);
    await startAndExchange(port, fe1, peer, 10);

    // A second front-end while the first is connected is turned away.
    const intruder = FrontEnd.connect(sock, 'intruder');
    await intruder.waitClosed();
    intruder.close();
    await log.waitLine(/refused a second front-end/);

    // QEMU goes away (killed: the socket just closes) …
    fe1.close();
    await waitFor(() => !port.connected);
    assert.ok(log.lines.includes('vmA: disconnected'));
    // … and comes back.
    const fe2 = FrontEnd.connect(sock, 'qemu-2');
    await waitFor(() => port.connected);
    await startAndExchange(port, fe2, peer, 20);

    // The back-end side drops the connection (port closed); QEMU's reconnect=1 comes back.
    port.close();
    await fe2.waitClosed();
    fe2.close();
    const fe3 = FrontEnd.connect(sock, 'qemu-3');
    await waitFor(() => port.connected);
    await startAndExchange(port, fe3, peer, 30);
    await closeGuest({ port, fe: fe3 });
  } finally {
    listener.close();
  }
  assert.equal(fs.existsSync(sock), false, 'the socket file is removed');
  fs.rmdirSync(dir);
  await closeGuest(peer);
  assert.deepEqual(log.errors(), []);
  await assertNoFdLeak(before);
});

test('server mode: a stale socket file is replaced, a live one is not', async () => {
  const { dir, sock } = tmpSocket();
  const log = new LogCapture();
  const stale = native.unixListen(sock, 1, 0o600);
  closeFd(stale); // the file stays, nobody listens
  const port = makePort(new TestHub(), 'vmA', log);
  const l1 = new Listener(sock, acceptorFor(port), log.fn);
  assert.throws(() => new Listener(sock, acceptorFor(port), log.fn), /another process is listening/);
  l1.close();
  fs.rmdirSync(dir);
});

test('client mode (Dialer): the back-end dials the front-end, retries until it listens, and redials after a disconnect', async () => {
  const before = fdCount();
  const { dir, sock } = tmpSocket();
  const hub = new TestHub();
  const log = new LogCapture();
  const peer = await startGuest(hub, 'peer', log);
  const port = makePort(hub, 'vmA', log);
  // Dialing before QEMU listens: logged once, retried.
  const dialer = new Dialer(sock, acceptorFor(port), log.fn, 20);
  port.onSessionEnd = () => dialer.reconnect();
  let listenFd = -1;
  try {
    await log.waitLine(/cannot connect yet/);
    listenFd = native.unixListen(sock, 4, 0o600); // QEMU: -chardev socket,server=on
    const fe1 = await FrontEnd.accept(listenFd, 'qemu-1');
    await waitFor(() => port.connected);
    await startAndExchange(port, fe1, peer, 10);

    // QEMU drops the connection (device reset / restart): the Dialer comes back.
    fe1.close();
    await waitFor(() => !port.connected);
    const fe2 = await FrontEnd.accept(listenFd, 'qemu-2');
    await waitFor(() => port.connected);
    await startAndExchange(port, fe2, peer, 20);

    // The back-end closes (port closed) while QEMU keeps listening: dialed again too.
    port.close();
    await fe2.waitClosed();
    fe2.close();
    const fe3 = await FrontEnd.accept(listenFd, 'qemu-3');
    await waitFor(() => port.connected);
    await startAndExchange(port, fe3, peer, 30);
    dialer.close(); // no redial after this one
    await closeGuest({ port, fe: fe3 });
  } finally {
    dialer.close();
    closeFd(listenFd);
  }
  fs.unlinkSync(sock);
  fs.rmdirSync(dir);
  await closeGuest(peer);
  assert.deepEqual(log.errors(), []);
  await assertNoFdLeak(before);
});
