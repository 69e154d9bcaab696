// Limits a front-end hits, each refused with a clear error naming its option and counted:
// memory regions (--max-regions), mapped bytes (--max-guest-mem-gb), queue pairs (--queues), chain
// length (--max-chain-descriptors) and connections (--max-ports, through a real port).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Switch } from '../../src/engine/switch';
import { limitHits } from '../../src/vhost-user/session';
import { chainLimitHits } from '../../src/virtio/split-ring';
import { Req, VERSION } from '../../src/vhost-user/message';
import { GuestRam, memTablePayload, waitFor } from './frontend';
import { assertNoFdLeak, bindPair, closeGuest, ethFrame, fdCount, LogCapture, makePort, netHdr, packet, receiveN, sendPacket, TestHub } from './helpers';

test('--max-regions: a memory table with more regions than allowed is refused, counted, every fd closed', async () => {
  const before = fdCount();
  const log = new LogCapture();
  const port = makePort(new TestHub(), 'regions', log, { session: { maxMemSlots: 2 } });
  const fe = bindPair(port, 'hostile');
  const ram = new GuestRam([{ gpa: 0, size: 1 << 20 }, { gpa: 1 << 20, size: 1 << 20 }, { gpa: 2 << 20, size: 1 << 20 }]);
  const hits = limitHits.regions;
  fe.send(Req.SET_MEM_TABLE, VERSION, memTablePayload(ram.regions.map(GuestRam.describe)), ram.regions.map((r) => r.fd));
  await fe.waitClosed();
  assert.match(await log.waitLine(/^regions: error: VHOST_USER_SET_MEM_TABLE: /), /3 regions, more than the 2 allowed \(--max-regions\)/);
  assert.equal(limitHits.regions, hits + 1);
  ram.close();
  fe.close();
  await waitFor(() => !port.connected);
  await assertNoFdLeak(before);
});

test('--max-regions: ADD_MEM_REG beyond the slots is refused and counted', async () => {
  const before = fdCount();
  const log = new LogCapture();
  const port = makePort(new TestHub(), 'slots', log, { session: { maxMemSlots: 1 } });
  const fe = bindPair(port, 'hostile');
  await fe.start();
  const hits = limitHits.regions;
  const extra = fe.ram!.addRegion({ gpa: 64 << 20, size: 1 << 20 });
  await assert.rejects(fe.addMemReg(extra));
  assert.match(await log.waitLine(/^slots: error: VHOST_USER_ADD_MEM_REG/), /more than 1 memory slots \(--max-regions\)/);
  assert.equal(limitHits.regions, hits + 1);
  fe.close();
  await waitFor(() => !port.connected);
  await assertNoFdLeak(before);
});

test('--max-guest-mem-gb: the refusal is counted', async () => {
  const log = new LogCapture();
  const port = makePort(new TestHub(), 'bytes', log, { session: { maxMappedBytes: 1 << 20 } });
  const fe = bindPair(port, 'hostile');
  const hits = limitHits.mappedBytes;
  await assert.rejects(fe.start({ ram: [{ gpa: 0, size: 2 << 20 }] }));
  await log.waitLine(/beyond the 1 MiB one connection may map \(--max-guest-mem-gb\)/);
  assert.equal(limitHits.mappedBytes, hits + 1);
  fe.close();
  await waitFor(() => !port.connected);
});

test('--queues: a ring of a queue pair beyond those offered is refused and counted', async () => {
  const log = new LogCapture();
  const port = makePort(new TestHub(), 'qp', log, { session: { maxQueuePairs: 1 } });
  const fe = bindPair(port, 'hostile');
  await fe.start();
  const hits = limitHits.queuePairs;
  await assert.rejects(fe.setVringNum(2, 256));
  assert.match(await log.waitLine(/^qp: error: VHOST_USER_SET_VRING_NUM/), /ring index 2 beyond the 2 rings offered \(1 queue pairs: --queues\)/);
  assert.equal(limitHits.queuePairs, hits + 1);
  fe.close();
  await waitFor(() => !port.connected);
});

test('--max-chain-descriptors: a TX chain longer than allowed marks the ring broken, counted; one at the limit passes', async () => {
  const before = fdCount();
  const hub = new TestHub();
  const log = new LogCapture();
  const portA = makePort(hub, 'vmA', log, { session: { maxChainDescriptors: 4 } });
  const fe = bindPair(portA);
  const { rx, tx } = await fe.start();
  const b = makePort(hub, 'vmB', log);
  const feB = bindPair(b);
  const gb = await feB.start();
  await waitFor(() => b.session!.rings[0].started);
  const g = { port: portA, fe, rx, tx };
  const gB = { port: b, fe: feB, rx: gb.rx, tx: gb.tx };
  const hits = chainLimitHits[0];
  // 4 descriptors: header, 3 pieces of the frame
  await sendPacket(g, packet(netHdr(12), ethFrame(200, 1)), { split: [12, 50, 50] });
  assert.equal((await receiveN(gB, 1)).length, 1);
  // 5 descriptors: one too many
  tx.postTx(packet(netHdr(12), ethFrame(200, 2)), { split: [12, 50, 50, 50] });
  tx.kick();
  await waitFor(() => portA.session!.rings[1].broken !== null);
  assert.match(portA.session!.rings[1].broken!, /descriptor chain from head \d+ has more than 4 descriptors \(--max-chain-descriptors\)/);
  assert.equal(chainLimitHits[0], hits + 1);
  assert.equal(portA.counters.brokenRings, 1);
  await closeGuest(g);
  await closeGuest(gB);
  await assertNoFdLeak(before);
});

test('--max-ports: a front-end connecting when the switch is full is refused (its socket closed), counted', async () => {
  const before = fdCount();
  const log = new LogCapture();
  const sw = new Switch({ maxPorts: 1, log: () => {} });
  try {
    const p1 = makePort(sw, 'p1', log);
    const fe1 = bindPair(p1);
    await fe1.start();
    const p2 = makePort(sw, 'p2', log);
    const fe2 = bindPair(p2, 'refused');
    await fe2.waitClosed();
    assert.equal(p2.connected, false);
    assert.match(await log.waitLine(/^p2: error: front-end refused/), /switch full: 1 connections \(--max-ports\)/);
    assert.equal(sw.stats().refusedConnections, 1);
    await closeGuest({ port: p1, fe: fe1 });
    fe2.close();
  } finally {
    sw.close();
  }
  await assertNoFdLeak(before);
});
