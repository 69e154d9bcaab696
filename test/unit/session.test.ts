// Session on its own, request by request: a connection double feeds it messages with real fds
// (eventfds, memfds from the addon) and records what it sends back and whether it dropped the
// front-end; a device double records the events the session tells. No socket, no port, no switch:
// what is checked here is the request table and its one dispatcher (src/vhost-user/requests.ts,
// Session.dispatch) — decoding, fd counts, the ring rule, replies, acks and refusals — and the
// mapped-bytes account a session is handed. The wire itself is the protocol tests' (test/protocol).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { native } from '../../src/native';
import { Session, SessionConnection, SessionDevice, SessionOptions, mappedBytesTotal } from '../../src/vhost-user/session';
import { MappedMemory } from '../../src/vhost-user/mapped-memory';
import { REQUESTS } from '../../src/vhost-user/requests';
import {
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  HDR_SIZE,
  MemRegion,
  Message,
  payloadSize,
  ProtocolFeature,
  Req,
  u64Payload,
  VERSION,
  VRING_NOFD_MASK,
  vringStatePayload,
} from '../../src/vhost-user/message';
import { bit, VirtioFeature } from '../../src/vhost-user/features';
import type { NetConfig } from '../../src/virtio/net-config';
import type { Virtqueue } from '../../src/virtio/virtqueue';
import type { LogFields } from '../../src/log';
import { memTablePayload, singleRegionPayload, waitFor } from '../protocol/frontend';

interface Sent {
  request: number;
  flags: number;
  payload: Uint8Array;
}

/** The connection as the session sees it: messages fed in by the test, whole replies recorded. */
class FakeConnection implements SessionConnection {
  onMessage: (m: Message) => void = () => {};
  onClose: (reason: string | null) => void = () => {};
  readonly sent: Sent[] = [];
  /** the reason given to fail() (the connection's one path for a broken peer) */
  failure: string | null = null;
  closed = false;
  held = false;

  send(bytes: Uint8Array, fds: number[] = []): void {
    if (this.closed) return; // as Connection.send: nothing goes out on a closed connection
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    assert.equal(bytes.length, HDR_SIZE + v.getUint32(8, true), 'a whole message: header and its payload');
    assert.deepEqual(fds, [], 'this back-end sends no fds');
    this.sent.push({ request: v.getUint32(0, true), flags: v.getUint32(4, true), payload: bytes.slice(HDR_SIZE) });
  }

  fail(reason: string): void {
    if (this.closed) return;
    this.failure = reason;
    this.close(reason);
  }

  close(reason: string | null = null): void {
    if (this.closed) return;
    this.closed = true;
    this.onClose(reason);
  }

  hold(): void {
    this.held = true;
  }

  release(): void {
    this.held = false;
  }

  /** One message as Connection hands it over: the fds in their own array, which the session may take from. */
  feed(request: number, flags: number, payload: Uint8Array = new Uint8Array(0), fds: number[] = []): void {
    assert.ok(!this.closed && !this.held, 'a connection delivers messages only while open and not held');
    this.onMessage({ request, flags, size: payload.length, payload: new DataView(payload.buffer, payload.byteOffset, payload.length), fds: [...fds] });
  }

  /** what was sent since the last take() */
  take(): Sent[] {
    return this.sent.splice(0);
  }
}

/** Records the session's events, one line each. */
class FakeDevice implements SessionDevice {
  readonly events: string[] = [];
  /** when set, kick fds are "watched by another thread" (the worker-thread seam) */
  watching: ((q: Virtqueue, fd: number) => boolean) | undefined;
  cfg: NetConfig | null = null;
  featuresNegotiated(cfg: NetConfig): void {
    this.cfg = cfg;
    this.events.push(`features hdrLen=${cfg.hdrLen}`);
  }
  memoryChanged(): void {
    this.events.push('memory');
  }
  ringStarted(q: Virtqueue): void {
    this.events.push(`started ${q.index}${q.enabled ? '' : ' disabled'}`);
  }
  ringStopped(q: Virtqueue): void {
    this.events.push(`stopped ${q.index}`);
  }
  ringBroken(q: Virtqueue, reason: string): void {
    this.events.push(`broken ${q.index}: ${reason}`);
  }
  kick(q: Virtqueue): void {
    this.events.push(`kick ${q.index}`);
  }
  watchKick(q: Virtqueue, fd: number): boolean {
    return this.watching?.(q, fd) ?? false;
  }
  mtuChanged(mtu: number): void {
    this.events.push(`mtu ${mtu}`);
  }
  rarp(mac: Uint8Array): void {
    this.events.push(`rarp ${Buffer.from(mac).toString('hex')}`);
  }
  disconnected(reason: string | null): void {
    this.events.push(`disconnected ${reason}`);
  }
  take(): string[] {
    return this.events.splice(0);
  }
}

class Lines {
  readonly all: { msg: string; level: string }[] = [];
  readonly fn = (msg: string, fields?: LogFields): void => {
    this.all.push({ msg, level: fields?.level ?? 'info' });
  };
  errors(): string[] {
    return this.all.filter((l) => l.level === 'error').map((l) => l.msg);
  }
}

const fdCount = (): number => fs.readdirSync('/proc/self/fd').length;
const isOpen = (fd: number): boolean => {
  try {
    fs.fstatSync(fd);
    return true;
  } catch {
    return false;
  }
};
const u64Of = (p: Uint8Array): bigint => new DataView(p.buffer, p.byteOffset, p.length).getBigUint64(0, true);
const MiB = 1 << 20;
const GiB = 1024 * MiB;
const ACKED = VERSION | FLAG_NEED_REPLY;
/** a small offer for the tests that choose the features themselves */
const OFFER = bit(VirtioFeature.F_VERSION_1) | bit(VirtioFeature.NET_F_MRG_RXBUF) | bit(VirtioFeature.USER_F_PROTOCOL_FEATURES);
const REPLY = VERSION | FLAG_REPLY;

/**
 * A session over the doubles, with an account of its own. The test body runs; then the connection
 * closes and every fd the session was given must be closed, the account back at 0.
 */
async function withSession(
  opts: Partial<SessionOptions>,
  body: (h: { s: Session<FakeConnection>; conn: FakeConnection; device: FakeDevice; log: Lines; account: MappedMemory }) => Promise<void> | void,
): Promise<void> {
  const before = fdCount();
  const conn = new FakeConnection();
  const device = new FakeDevice();
  const log = new Lines();
  const account = opts.mappedMemory ?? new MappedMemory();
  const s = new Session(conn, device, { name: 'vm0', log: log.fn, ...opts, mappedMemory: account });
  try {
    await body({ s, conn, device, log, account });
  } finally {
    conn.close(null);
  }
  assert.equal(account.bytes, 0, 'the account is given back on close');
  assert.equal(fdCount(), before, 'every fd handed to the session is closed with it');
}

/** a memfd-backed region for SET_MEM_TABLE / ADD_MEM_REG (the session takes the fd over) */
function region(gpa: number, size: number): { d: MemRegion; fd: number } {
  return { d: { guestPhysAddr: gpa, memorySize: size, userspaceAddr: 0x7f0000000000 + gpa, mmapOffset: 0 }, fd: native.memfdCreate('session-test', size) };
}

/** SET_VRING_ADDR's payload: index, flags, desc, used, avail, log (user addresses) */
function vringAddrPayload(index: number, desc: number, used: number, avail: number): Uint8Array {
  const b = new Uint8Array(40);
  const v = new DataView(b.buffer);
  v.setUint32(0, index, true);
  v.setBigUint64(8, BigInt(desc), true);
  v.setBigUint64(16, BigInt(used), true);
  v.setBigUint64(24, BigInt(avail), true);
  return b;
}

/** REPLY_ACK negotiated (the front-end can then be told of refusals) */
function negotiateReplyAck(conn: FakeConnection): void {
  conn.feed(Req.SET_PROTOCOL_FEATURES, VERSION, u64Payload(bit(ProtocolFeature.REPLY_ACK)));
  assert.deepEqual(conn.take(), [], 'no ack asked for: none sent');
}

test('the table serves exactly the requests the connection frames (payloadSize): none framed and then unhandled, none handled and never framed', () => {
  assert.deepEqual([...REQUESTS.keys()].sort((a, b) => a - b), [...payloadSize.keys()].sort((a, b) => a - b));
});

test('GET_FEATURES: a reply of its own with the features offered, even with need_reply (no ack besides)', () =>
  withSession({ features: bit(VirtioFeature.F_VERSION_1) | bit(VirtioFeature.NET_F_MRG_RXBUF) }, ({ conn }) => {
    conn.feed(Req.GET_FEATURES, VERSION);
    conn.feed(Req.GET_FEATURES, ACKED);
    const sent = conn.take();
    assert.equal(sent.length, 2);
    for (const r of sent) {
      assert.equal(r.request, Req.GET_FEATURES);
      assert.equal(r.flags, REPLY);
      assert.equal(u64Of(r.payload), bit(VirtioFeature.F_VERSION_1) | bit(VirtioFeature.NET_F_MRG_RXBUF));
    }
  }));

test('SET_FEATURES: negotiated, the device told the net configuration; rings enabled without PROTOCOL_FEATURES; a bit not offered refused', () =>
  withSession({}, ({ s, conn, device, log }) => {
    const f = bit(VirtioFeature.F_VERSION_1) | bit(VirtioFeature.NET_F_MRG_RXBUF);
    conn.feed(Req.SET_FEATURES, VERSION, u64Payload(f));
    assert.equal(s.features, f);
    assert.equal(s.featuresSet, true);
    assert.deepEqual(device.take(), ['features hdrLen=12', 'mtu 0']);
    assert.ok(s.rings.every((r) => r.enabled), 'without VHOST_USER_F_PROTOCOL_FEATURES rings start enabled');
    assert.deepEqual(conn.take(), []);
    // NET_F_CTRL_VQ is not offered: no ack asked for, so the front-end cannot be told: closed
    conn.feed(Req.SET_FEATURES, VERSION, u64Payload(f | bit(VirtioFeature.NET_F_CTRL_VQ)));
    assert.match(conn.failure!, /^VHOST_USER_SET_FEATURES: features 0x[0-9a-f]+ include ones not offered: NET_F_CTRL_VQ \(refused; no reply asked for\)$/);
    assert.equal(s.features, f, 'unchanged');
    assert.deepEqual(log.errors(), [], 'the connection logs the close (fail), not the session');
  }));

test('SET_FEATURES while a ring is started: only VHOST_F_LOG_ALL may change (the ring rule); once it stopped, anything offered', () =>
  withSession({ features: OFFER | bit(VirtioFeature.LOG_ALL) }, ({ s, conn, log }) => {
    negotiateReplyAck(conn);
    const f = bit(VirtioFeature.F_VERSION_1) | bit(VirtioFeature.NET_F_MRG_RXBUF);
    conn.feed(Req.SET_FEATURES, ACKED, u64Payload(f));
    assert.equal(u64Of(conn.take()[0].payload), 0n);
    // polling mode (the "no fd" bit) starts ring 1 at once
    conn.feed(Req.SET_VRING_KICK, VERSION, u64Payload(1 | VRING_NOFD_MASK));
    assert.equal(s.rings[1].started, true);
    conn.feed(Req.SET_FEATURES, ACKED, u64Payload(f & ~bit(VirtioFeature.NET_F_MRG_RXBUF)));
    assert.equal(u64Of(conn.take()[0].payload), 1n, 'refused with a non-zero ack');
    assert.equal(s.features, f);
    assert.match(log.errors()[0], /^vm0: error: VHOST_USER_SET_FEATURES: NET_F_MRG_RXBUF changed while vm0 TX ring 1 is started \(only VHOST_F_LOG_ALL may change then\); refused \(non-zero reply\)$/);
    conn.feed(Req.SET_FEATURES, ACKED, u64Payload(f | bit(VirtioFeature.LOG_ALL)));
    assert.equal(u64Of(conn.take()[0].payload), 0n, 'LOG_ALL on: fine on a running ring');
    assert.equal(s.features, f | bit(VirtioFeature.LOG_ALL));
    conn.feed(Req.GET_VRING_BASE, VERSION, vringStatePayload(1, 0));
    conn.take();
    conn.feed(Req.SET_FEATURES, ACKED, u64Payload(f & ~bit(VirtioFeature.NET_F_MRG_RXBUF)));
    assert.equal(u64Of(conn.take()[0].payload), 0n, 'every ring stopped: the features may change');
    assert.equal(s.features, f & ~bit(VirtioFeature.NET_F_MRG_RXBUF));
  }));

test('SET_OWNER: taken, no reply unless an ack is asked for and REPLY_ACK negotiated; with an fd: the fd closed, the connection dropped, nothing changed', async () => {
  await withSession({}, ({ s, conn }) => {
    conn.feed(Req.SET_OWNER, ACKED);
    assert.equal(s.owner, true);
    assert.deepEqual(conn.take(), [], 'need_reply without REPLY_ACK negotiated: no ack');
  });
  await withSession({}, ({ s, conn }) => {
    const efd = native.eventfd(0);
    conn.feed(Req.SET_OWNER, VERSION, undefined, [efd]);
    assert.equal(isOpen(efd), false, 'the unexpected fd is closed');
    assert.equal(conn.failure, 'VHOST_USER_SET_OWNER: unexpected 1 file descriptor(s)');
    assert.equal(s.owner, false, 'the fd count is checked before the request runs');
  });
});

test('GET_PROTOCOL_FEATURES / SET_PROTOCOL_FEATURES: the offer as a reply; the set negotiated (its own ack already under it); one not offered refused', () =>
  withSession({ protocolFeatures: bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.MQ) }, ({ s, conn }) => {
    conn.feed(Req.GET_PROTOCOL_FEATURES, VERSION);
    const [r] = conn.take();
    assert.equal(r.flags, REPLY);
    assert.equal(u64Of(r.payload), bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.MQ));
    // the ack policy reads the features after the request ran: negotiating REPLY_ACK acks itself
    conn.feed(Req.SET_PROTOCOL_FEATURES, ACKED, u64Payload(bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.MQ)));
    const [ack] = conn.take();
    assert.deepEqual([ack.request, ack.flags, u64Of(ack.payload)], [Req.SET_PROTOCOL_FEATURES, REPLY, 0n]);
    assert.equal(s.hasProtocol(ProtocolFeature.MQ), true);
    conn.feed(Req.GET_QUEUE_NUM, VERSION);
    assert.equal(u64Of(conn.take()[0].payload), 8n, 'GET_QUEUE_NUM with MQ negotiated');
    conn.feed(Req.SET_PROTOCOL_FEATURES, ACKED, u64Payload(bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.STATUS)));
    assert.equal(u64Of(conn.take()[0].payload), 1n, 'STATUS is not offered here');
    assert.equal(s.hasProtocol(ProtocolFeature.STATUS), false);
    assert.equal(conn.closed, false);
  }));

test('a request needing a protocol feature not negotiated: its own reply zero-length (GET_QUEUE_NUM), or a non-zero ack (SET_STATUS)', () =>
  withSession({}, ({ conn, log }) => {
    negotiateReplyAck(conn);
    conn.feed(Req.GET_QUEUE_NUM, VERSION);
    const [r] = conn.take();
    assert.deepEqual([r.request, r.flags, r.payload.length], [Req.GET_QUEUE_NUM, REPLY, 0]);
    conn.feed(Req.SET_STATUS, ACKED, u64Payload(0x0f));
    assert.equal(u64Of(conn.take()[0].payload), 1n);
    assert.deepEqual(log.errors(), [
      'vm0: error: VHOST_USER_GET_QUEUE_NUM: VHOST_USER_PROTOCOL_F_MQ was not negotiated; refused (zero-length reply)',
      'vm0: error: VHOST_USER_SET_STATUS: VHOST_USER_PROTOCOL_F_STATUS was not negotiated; refused (non-zero reply)',
    ]);
  }));

test('SET_MEM_TABLE with a memfd: mapped, the device told, the bytes in the account handed in (not the process\'s), acked', () =>
  withSession({}, ({ s, conn, device, account }) => {
    negotiateReplyAck(conn);
    const processBefore = mappedBytesTotal();
    const { d, fd } = region(0, 2 * MiB);
    conn.feed(Req.SET_MEM_TABLE, ACKED, memTablePayload([d]), [fd]);
    const [ack] = conn.take();
    assert.deepEqual([ack.request, u64Of(ack.payload)], [Req.SET_MEM_TABLE, 0n]);
    assert.equal(s.mem.size, 1);
    assert.deepEqual(device.take(), ['memory']);
    assert.equal(account.bytes, 2 * MiB);
    assert.equal(mappedBytesTotal(), processBefore, 'the process-wide account is not this session\'s');
    // a new table replaces the old one: the account follows
    const next = region(0, 4 * MiB);
    conn.feed(Req.SET_MEM_TABLE, ACKED, memTablePayload([next.d]), [next.fd]);
    assert.equal(u64Of(conn.take()[0].payload), 0n);
    assert.equal(account.bytes, 4 * MiB);
    assert.equal(isOpen(fd), false, 'the old region is unmapped and its fd closed');
  }));

test('SET_MEM_TABLE beyond the total the account allows: refused before anything is mapped, the fd closed; within it, fine', () => {
  const shared = new MappedMemory();
  shared.add(6 * MiB); // other connections of the same account
  return withSession({ mappedMemory: shared, maxTotalMappedBytes: 8 * MiB }, ({ s, conn, log }) => {
    negotiateReplyAck(conn);
    const big = region(0, 4 * MiB);
    conn.feed(Req.SET_MEM_TABLE, ACKED, memTablePayload([big.d]), [big.fd]);
    assert.equal(u64Of(conn.take()[0].payload), 1n);
    assert.equal(isOpen(big.fd), false);
    assert.equal(s.mem.size, 0);
    assert.equal(shared.bytes, 6 * MiB);
    assert.match(log.errors()[0], /memory table would take the guest memory mapped by all connections to 10 MiB, beyond 8 MiB \(--max-total-mem-gb\); refused \(non-zero reply\)$/);
    const small = region(0, 2 * MiB);
    conn.feed(Req.SET_MEM_TABLE, ACKED, memTablePayload([small.d]), [small.fd]);
    assert.equal(u64Of(conn.take()[0].payload), 0n);
    assert.equal(shared.bytes, 8 * MiB);
    shared.add(-6 * MiB); // the others leave; withSession checks this session gives its part back
  });
});

test('SET_MEM_TABLE of many windows: mapped across turns with the connection held and the bytes held in the account; acked once in place, then released', () =>
  withSession({}, async ({ s, conn, account }) => {
    negotiateReplyAck(conn);
    // 6 GiB (sparse): 5 overlapping 2 GiB windows, more than are mapped at once
    const { d, fd } = region(0, 6 * GiB);
    conn.feed(Req.SET_MEM_TABLE, ACKED, memTablePayload([d]), [fd]);
    assert.equal(conn.held, true, 'no message is read while the table is mapped');
    assert.deepEqual(conn.take(), [], 'not acked before it is in place');
    assert.equal(account.bytes, 6 * GiB, 'held for the table meanwhile: another table cannot take it');
    assert.equal(s.mem.size, 0);
    await waitFor(() => conn.sent.length > 0, 20000, 'the ack');
    assert.equal(u64Of(conn.take()[0].payload), 0n);
    await waitFor(() => !conn.held, 1000, 'release');
    assert.equal(s.mem.size, 1);
    assert.equal(account.bytes, 6 * GiB);
  }));

test('SET_MEM_TABLE with a wrong fd count: every fd closed, the connection dropped with the counts named', () =>
  withSession({}, ({ s, conn }) => {
    const a = region(0, MiB);
    const b = region(MiB, MiB);
    conn.feed(Req.SET_MEM_TABLE, VERSION, memTablePayload([a.d, b.d]), [a.fd]);
    assert.equal(conn.failure, 'VHOST_USER_SET_MEM_TABLE: 2 regions but 1 file descriptors');
    assert.equal(isOpen(a.fd), false);
    assert.equal(s.mem.size, 0);
    native.close(b.fd);
  }));

test('ADD_MEM_REG / REM_MEM_REG: a region added (its fd taken) and removed; a stray fd with REM_MEM_REG closed; an absent one ignored without an ack asked for', () =>
  withSession({}, ({ s, conn, log, account }) => {
    const r = region(0, MiB);
    conn.feed(Req.ADD_MEM_REG, VERSION, singleRegionPayload(r.d), [r.fd]);
    assert.equal(s.mem.size, 1);
    assert.equal(account.bytes, MiB);
    const stray = native.eventfd(0);
    conn.feed(Req.REM_MEM_REG, VERSION, singleRegionPayload(r.d), [stray]);
    assert.equal(isOpen(stray), false, "REM_MEM_REG's fd is not used");
    assert.equal(s.mem.size, 0);
    assert.equal(account.bytes, 0);
    conn.feed(Req.REM_MEM_REG, VERSION, singleRegionPayload(r.d));
    assert.equal(conn.closed, false);
    assert.match(log.errors()[0], /^vm0: error: VHOST_USER_REM_MEM_REG: no memory region at guest address 0x0 size 0x100000; ignored \(no reply asked for\)$/);
  }));

test('rings: SET_VRING_NUM/ADDR/BASE/CALL/KICK, the first kick starts the ring, GET_VRING_BASE stops it and replies its base', () =>
  withSession({}, async ({ s, conn, device }) => {
    negotiateReplyAck(conn);
    const { d, fd } = region(0, MiB);
    conn.feed(Req.SET_MEM_TABLE, VERSION, memTablePayload([d]), [fd]);
    conn.feed(Req.SET_FEATURES, VERSION, u64Payload(bit(VirtioFeature.F_VERSION_1)));
    device.take();
    const q = 1;
    conn.feed(Req.SET_VRING_NUM, ACKED, vringStatePayload(q, 256));
    const uva = d.userspaceAddr;
    conn.feed(Req.SET_VRING_ADDR, ACKED, vringAddrPayload(q, uva + 0x1000, uva + 0x4000, uva + 0x3000));
    conn.feed(Req.SET_VRING_BASE, ACKED, vringStatePayload(q, 5));
    assert.deepEqual(conn.take().map((r) => [r.request, u64Of(r.payload)]), [
      [Req.SET_VRING_NUM, 0n],
      [Req.SET_VRING_ADDR, 0n],
      [Req.SET_VRING_BASE, 0n],
    ]);
    const r = s.rings[q];
    assert.deepEqual([r.num, r.addrSet, r.ready, r.started], [256, true, true, false]);
    assert.deepEqual(device.take(), [], 'set up but not started: nothing to tell');
    const call1 = native.eventfd(0);
    const call2 = native.eventfd(0);
    conn.feed(Req.SET_VRING_CALL, VERSION, u64Payload(q), [call1]);
    assert.equal(r.callFd, call1);
    conn.feed(Req.SET_VRING_CALL, VERSION, u64Payload(q), [call2]);
    assert.equal(r.callFd, call2);
    assert.equal(isOpen(call1), false, 'the call fd it replaced is closed');
    const kick = native.eventfd(0);
    conn.feed(Req.SET_VRING_KICK, ACKED, u64Payload(q), [kick]);
    assert.equal(u64Of(conn.take()[0].payload), 0n);
    assert.equal(r.kickFd, kick);
    native.eventfdWrite(kick, 1);
    await waitFor(() => device.events.includes(`kick ${q}`), 2000, 'the kick');
    assert.deepEqual(device.take(), [`started ${q}`, `kick ${q}`]);
    assert.equal(r.started, true);
    conn.feed(Req.GET_VRING_BASE, ACKED, vringStatePayload(q, 0));
    const [base] = conn.take();
    assert.equal(base.flags, REPLY, 'its reply, not an ack');
    const v = new DataView(base.payload.buffer, base.payload.byteOffset);
    assert.deepEqual([v.getUint32(0, true), v.getUint32(4, true)], [q, 5]);
    assert.deepEqual(device.take(), [`stopped ${q}`]);
    assert.equal(r.started, false);
    assert.equal(r.kickFd, -1);
    assert.equal(isOpen(kick), false, 'the kick fd goes with the stop');
  }));

test('SET_VRING_KICK watched by another thread (the worker seam): the session does not poll it; kickedElsewhere() starts the ring', () =>
  withSession({}, ({ s, conn, device }) => {
    const watched: [number, number][] = [];
    device.watching = (q, fd) => {
      watched.push([q.index, fd]);
      return true;
    };
    const kick = native.eventfd(0);
    conn.feed(Req.SET_VRING_KICK, VERSION, u64Payload(3), [kick]);
    assert.deepEqual(watched, [[3, kick]]);
    s.kickedElsewhere(3);
    assert.equal(s.rings[3].started, true);
    conn.feed(Req.GET_VRING_BASE, VERSION, vringStatePayload(3, 0));
    assert.deepEqual(watched, [[3, kick], [3, -1]], 'told to stop watching when the ring stops');
  }));

test('SET_VRING_KICK/CALL fd rules: the "no fd" bit with an fd, no fd without the bit, a call fd that is not an eventfd', async () => {
  await withSession({}, ({ conn }) => {
    const efd = native.eventfd(0);
    conn.feed(Req.SET_VRING_CALL, VERSION, u64Payload(0 | VRING_NOFD_MASK), [efd]);
    assert.equal(conn.failure, 'VHOST_USER_SET_VRING_CALL: vm0 RX ring 0: "no fd" flag set but a file descriptor was sent');
    assert.equal(isOpen(efd), false);
  });
  await withSession({}, ({ conn }) => {
    conn.feed(Req.SET_VRING_KICK, VERSION, u64Payload(1));
    assert.equal(conn.failure, 'VHOST_USER_SET_VRING_KICK: vm0 TX ring 1: expected 1 file descriptor, got 0');
  });
  await withSession({}, ({ s, conn, log }) => {
    negotiateReplyAck(conn);
    const [a, b] = native.socketpair();
    conn.feed(Req.SET_VRING_CALL, ACKED, u64Payload(0), [a]);
    assert.equal(u64Of(conn.take()[0].payload), 1n);
    assert.equal(isOpen(a), false, 'the refused fd is closed');
    assert.equal(s.rings[0].callFd, -1);
    assert.match(log.errors()[0], /^vm0: error: VHOST_USER_SET_VRING_CALL: vm0 RX ring 0: VHOST_USER_SET_VRING_CALL fd is not an eventfd \(socket:\[\d+\]\); refused \(non-zero reply\)$/);
    native.close(b);
  });
});

test('a ring index beyond the rings offered: refused as the request is answered (zero-length reply for GET_VRING_BASE, non-zero ack), with its fd closed', () =>
  withSession({ maxQueuePairs: 2 }, ({ conn, log }) => {
    negotiateReplyAck(conn);
    conn.feed(Req.GET_VRING_BASE, VERSION, vringStatePayload(4, 0));
    assert.equal(conn.take()[0].payload.length, 0);
    const efd = native.eventfd(0);
    conn.feed(Req.SET_VRING_KICK, ACKED, u64Payload(4), [efd]);
    assert.equal(u64Of(conn.take()[0].payload), 1n);
    assert.equal(isOpen(efd), false);
    assert.equal(conn.closed, false);
    assert.match(log.errors()[0], /VHOST_USER_GET_VRING_BASE: ring index 4 beyond the 4 rings offered \(2 queue pairs: --queues\); refused \(zero-length reply\)$/);
  }));

test('REPLY_ACK: an ack only when asked for and negotiated; a refusal without one closes, unless ignoring it is harmless', async () => {
  await withSession({}, ({ s, conn }) => {
    conn.feed(Req.SET_VRING_NUM, ACKED, vringStatePayload(0, 256));
    assert.deepEqual(conn.take(), [], 'asked for, not negotiated: no ack');
    negotiateReplyAck(conn);
    conn.feed(Req.SET_VRING_NUM, VERSION, vringStatePayload(0, 128));
    assert.deepEqual(conn.take(), [], 'negotiated, not asked for: no ack');
    conn.feed(Req.SET_VRING_NUM, ACKED, vringStatePayload(0, 64));
    const [ack] = conn.take();
    assert.deepEqual([ack.request, ack.flags, ack.payload.length, u64Of(ack.payload)], [Req.SET_VRING_NUM, REPLY, 8, 0n]);
    conn.feed(Req.SET_VRING_NUM, ACKED, vringStatePayload(0, 100));
    assert.equal(u64Of(conn.take()[0].payload), 1n, 'refused: non-zero');
    assert.equal(s.rings[0].num, 64, 'a refusal changes nothing');
    // the MTU is given to the guest anyway: a bad one is ignored without an ack, not a reason to close
    conn.feed(Req.NET_SET_MTU, VERSION, u64Payload(20));
    assert.equal(conn.closed, false);
    assert.equal(s.mtu, 0);
    conn.feed(Req.SET_VRING_NUM, VERSION, vringStatePayload(0, 100));
    assert.equal(conn.failure, 'VHOST_USER_SET_VRING_NUM: vm0 RX ring 0: ring size 100 is not a power of 2 in [1, 32768] (refused; no reply asked for)');
  });
});

test('an unknown request: the connection dropped, its fds closed', () =>
  withSession({}, ({ conn }) => {
    const efd = native.eventfd(0);
    conn.feed(99, ACKED, new Uint8Array(8), [efd]);
    assert.equal(conn.failure, 'unknown request 99: request not supported by this back-end');
    assert.equal(isOpen(efd), false);
    assert.deepEqual(conn.take(), []);
  }));

test('close while a memory table is mapped across turns: the mapping cancelled, the bytes held given back, never acked', () =>
  withSession({}, async ({ conn, device, account }) => {
    negotiateReplyAck(conn);
    const { d, fd } = region(0, 6 * GiB);
    conn.feed(Req.SET_MEM_TABLE, ACKED, memTablePayload([d]), [fd]);
    assert.equal(account.bytes, 6 * GiB);
    conn.close('front-end gone');
    assert.equal(account.bytes, 0);
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(conn.take(), []);
    assert.deepEqual(device.take(), ['disconnected front-end gone']);
  }));
