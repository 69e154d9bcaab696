// One switch process serves 64 vhost-user ports at once (the scale issue): 64 TypeScript front-ends
// connect to the 64 sockets of one running switch (the command's start(), real engine, real
// sockets) together, all negotiate and start their rings; every port sends frames to its neighbour
// and every port receives exactly what was sent to it, in order, with the port and engine counters
// agreeing; a broadcast from one port reaches the other 63 once each and not its sender.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { start } from '../../src/cli/main';
import { FrontEnd, sleep, waitFor } from './frontend';
import { BROADCAST, ethFrame, Guest, LogCapture, netHdr, packet, seqOf } from './helpers';
import type { Packet } from './frontend';

const PORTS = 64;
/** frames each port sends to its neighbour */
const PER_PORT = 4;
const MAC = (j: number) => Uint8Array.of(0x52, 0x54, 0, 0, 0x40, j);
const macStr = (j: number) => `52:54:00:00:40:${j.toString(16).padStart(2, '0')}`;
const next = (j: number) => (j + 1) % PORTS;
const prev = (j: number) => (j + PORTS - 1) % PORTS;
const hex = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');

/** Takes whatever g's RX used ring holds now. */
function drain(g: Guest, into: Packet[]): void {
  into.push(...g.rx.receive(g.fe.hdrLen, g.fe.mergeable));
}

/** Reads every guest's RX ring into got until done(got) holds; on a timeout says how many each port got. */
async function receiveAll(guests: Guest[], got: Packet[][], done: (got: Packet[][]) => boolean, what: string): Promise<void> {
  try {
    await waitFor(
      () => {
        guests.forEach((g, j) => drain(g, got[j]!));
        return done(got);
      },
      10_000,
      what,
    );
  } catch (e) {
    throw new Error(`${(e as Error).message}; frames per port: ${got.map((ps) => ps.length).join(' ')}`);
  }
}

test('one switch process serves 64 vhost-user ports: 64 front-ends negotiate, every port reaches its neighbour with nothing lost, a broadcast reaches the other 63', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-p64-'));
  const sock = (j: number) => path.join(dir, `p${j}.sock`);
  const log = new LogCapture();
  const argv = ['node', 'elastic-vhost', '--max-ports', String(PORTS)];
  for (let j = 0; j < PORTS; j++) argv.push('--socket', `${sock(j)},name=p${j},mac=${macStr(j)}`);
  const r = start(argv, log.fn);
  const fes: FrontEnd[] = [];
  try {
    assert.equal(r.ports.length, PORTS);
    // ---- 64 front-ends connect and negotiate at the same time
    for (let j = 0; j < PORTS; j++) fes.push(FrontEnd.connect(sock(j), `fe${j}`));
    await waitFor(() => r.ports.every((p) => p.connected), 5000, 'every port to take its front-end');
    const rings = await Promise.all(fes.map((fe) => fe.start({ ram: [{ gpa: 0, size: 1 << 20 }], rxBuffers: [PER_PORT + 4, 2048] })));
    // the RX ring starts with the front-end's kick, the TX ring (set up and enabled now) with its first frame
    await waitFor(() => r.ports.every((p) => p.session!.rings[0].started && p.session!.rings[1].enabled), 5000, 'every port\'s RX ring to start, its TX ring to be enabled');
    const guests: Guest[] = r.ports.map((port, j) => ({ port, fe: fes[j]!, rx: rings[j]!.rx, tx: rings[j]!.tx }));
    const indices = new Set(r.ports.map((p) => p.index));
    assert.equal(indices.size, PORTS, 'each port has a connection of its own');
    for (const [j, g] of guests.entries()) {
      assert.equal(g.port.name, `p${j}`);
      assert.ok(g.port.session!.featuresSet, `p${j} negotiated its features`);
      assert.equal(g.fe.features & g.port.session!.features, g.fe.features, `p${j}: the back-end uses what the front-end set`);
    }
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const engine = () => (r.stats() as any).engine;
    assert.equal(engine().ports.length, PORTS);

    // ---- every port sends PER_PORT frames to its neighbour j+1, all posted before anything is read
    for (let k = 0; k < PER_PORT; k++) {
      for (const [j, g] of guests.entries()) g.tx.postTx(packet(netHdr(g.fe.hdrLen), ethFrame(100 + j, j * 1000 + k, MAC(j), MAC(next(j)))));
    }
    for (const g of guests) g.tx.kick();
    const got: Packet[][] = guests.map(() => []);
    await receiveAll(guests, got, (ps) => ps.every((p) => p.length >= PER_PORT), `every port to receive ${PER_PORT} frames`);
    await sleep(50); // anything extra would be here by now
    guests.forEach((g, j) => drain(g, got[j]!));
    for (const [j, ps] of got.entries()) {
      const from = prev(j);
      assert.deepEqual(ps.map((p) => seqOf(p.frame)), Array.from({ length: PER_PORT }, (_, k) => from * 1000 + k), `p${j} gets p${from}'s frames, in order, nothing else`);
      for (const p of ps) {
        assert.equal(p.frame.length, 100 + from);
        assert.equal(hex(p.frame.subarray(0, 6)), macStr(j));
        assert.equal(hex(p.frame.subarray(6, 12)), macStr(from));
      }
    }
    for (const g of guests) assert.equal(g.tx.takeUsed().length, PER_PORT, `${g.port.name}: its ${PER_PORT} TX chains are used`);
    assert.ok(r.ports.every((p) => p.session!.rings[1].started), 'every TX ring started');
    // counters agree: each port took PER_PORT from its guest and gave PER_PORT to it; the engine moved them all, dropped none
    for (const g of guests) {
      assert.equal(g.port.counters.txFrames, PER_PORT, `${g.port.name} txFrames`);
      assert.equal(g.port.counters.rxFrames, PER_PORT, `${g.port.name} rxFrames`);
      assert.equal(g.port.counters.txDropped, 0);
    }
    let e = engine();
    assert.equal(e.total.rxFrames, PORTS * PER_PORT);
    assert.equal(e.total.fastFrames + e.total.drainedFrames, PORTS * PER_PORT);
    assert.equal(e.total.dropped, 0, JSON.stringify(e.total.drops));
    for (const p of e.ports) {
      assert.equal(p.rxFrames, PER_PORT, `engine: ${p.name} input`);
      assert.equal(p.fastFrames + p.drainedFrames, PER_PORT, `engine: ${p.name} delivered`);
      assert.equal(p.queuedFrames, 0);
    }

    // ---- a broadcast from p0 reaches p1 … p63 once each, not p0
    const bc = guests[0]!;
    bc.tx.postTx(packet(netHdr(bc.fe.hdrLen), ethFrame(200, 777_777, MAC(0), BROADCAST)));
    bc.tx.kick();
    const bgot: Packet[][] = guests.map(() => []);
    await receiveAll(guests, bgot, (ps) => ps.slice(1).every((p) => p.length >= 1), `p1 … p${PORTS - 1} to receive the broadcast`);
    await sleep(50);
    guests.forEach((g, j) => drain(g, bgot[j]!));
    assert.equal(bgot[0]!.length, 0, 'the sender does not get its own broadcast');
    for (let j = 1; j < PORTS; j++) {
      assert.deepEqual(bgot[j]!.map((p) => seqOf(p.frame)), [777_777], `p${j} gets the broadcast once`);
      assert.equal(hex(bgot[j]![0]!.frame.subarray(0, 6)), 'ff:ff:ff:ff:ff:ff');
      assert.equal(guests[j]!.port.counters.rxFrames, PER_PORT + 1);
    }
    assert.equal(bc.port.counters.txFrames, PER_PORT + 1);
    e = engine();
    assert.equal(e.total.rxFrames, PORTS * PER_PORT + 1);
    assert.equal(e.total.dropped, 0, JSON.stringify(e.total.drops));
  } finally {
    for (const fe of fes) fe.close();
    r.close();
  }
  assert.deepEqual(fs.readdirSync(dir), [], 'every socket file removed at close');
  fs.rmdirSync(dir);
  assert.deepEqual(log.errors(), []);
});
