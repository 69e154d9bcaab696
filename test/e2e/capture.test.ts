/**
 * Packet capture with two real QEMU guests, read back with Debian's tcpdump: A's port captured from
 * the command line (--capture), B's started and stopped at run time (ctl capture). Pings with a
 * payload pattern and a UDP burst with sequence numbers — the burst sent while B is paused, so it
 * waits in the elastic FIFO — must be in both files, both directions, in order, B's copy of the
 * burst at the point B saw it (after it ran again). Caps (max-frames, max-bytes) are honoured and
 * the files are complete at every stop and at the switch's exit.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { macForIndex } from '../../qemu-glue/args';
import { GuestVM, parseKeyValues } from '../../qemu-glue/launcher';
import { SwitchProcess } from '../../qemu-glue/switch-process';
import { ping, ready, startGuest, startSwitch, teardown, waitPing, workDir, failureTracker } from './harness';
import { tcpdumpRead, TcpdumpRecord } from '../tcpdump';

const MAC_A = macForIndex(1);
const MAC_B = macForIndex(2);
const PATTERN = 0xa5;
const PINGS = 10;
const BURST = 500;
const UDP_PORT = 9000;

const ctl = SwitchProcess.ctl;

/** IPv4 without options: the protocol, and the bytes after the IP header */
function ipv4(r: TcpdumpRecord): { proto: number; src: string; dst: string; l4: Buffer } | null {
  if (r.etherType !== 0x0800 || r.payload.length < 20) return null;
  const p = r.payload;
  const ihl = (p[0] & 0x0f) * 4;
  return { proto: p[9], src: [...p.subarray(12, 16)].join('.'), dst: [...p.subarray(16, 20)].join('.'), l4: p.subarray(ihl) };
}

/** ICMP echo with the test's pattern: 'request' | 'reply' and its sequence number */
function echo(r: TcpdumpRecord): { kind: 'request' | 'reply'; seq: number; src: string } | null {
  const ip = ipv4(r);
  if (!ip || ip.proto !== 1) return null;
  const type = ip.l4[0];
  if (type !== 8 && type !== 0) return null;
  const data = ip.l4.subarray(8);
  // busybox ping puts a 4-byte timestamp first, then the pattern
  if (data.length < 20 || !data.subarray(4).every((b) => b === PATTERN)) return null;
  return { kind: type === 8 ? 'request' : 'reply', seq: ip.l4.readUInt16BE(6), src: ip.src };
}

/** the burst's datagrams: their sequence numbers (udpburst: 32-bit big-endian first) */
function burstSeq(r: TcpdumpRecord): number | null {
  const ip = ipv4(r);
  if (!ip || ip.proto !== 17 || ip.l4.readUInt16BE(2) !== UDP_PORT || ip.l4.length < 12) return null;
  return ip.l4.readUInt32BE(8);
}

function pingPairs(recs: TcpdumpRecord[]): string[] {
  return recs.map(echo).filter((e) => e !== null).map((e) => `${e!.kind} ${e!.seq} from ${e!.src}`);
}

const expectedPings = (first: number): string[] =>
  Array.from({ length: PINGS }, (_, k) => [`request ${first + k} from 10.0.0.1`, `reply ${first + k} from 10.0.0.2`]).flat();

describe('packet capture read back with tcpdump', { timeout: 400_000 }, () => {
  const dir = workDir('capture');
  const fileA = path.join(dir, 'vm0.pcap');
  const fileB = path.join(dir, 'vm1.pcap');
  const ctlSock = path.join(dir, 'ctl.sock');
  let sw: SwitchProcess | undefined;
  let a: GuestVM | undefined;
  let b: GuestVM | undefined;
  const tracker = failureTracker();
  const guard = tracker.guard;

  before(async () => {
    // the work directory is the capture directory: the files are named by their absolute paths in it
    sw = await startSwitch(dir, 2, ['--pool-mb', '32', '--capture-dir', dir, '--capture', `vm0=${fileA}`, '--ctl', ctlSock]);
    await sw.waitLog(/capture of vm0 to .*vm0\.pcap started/);
    [a, b] = await Promise.all([startGuest(sw, 0, 'capture-a'), startGuest(sw, 1, 'capture-b')]);
    await ready(a, b);
    await waitPing(a, '10.0.0.2');
  });

  after(() => teardown([a, b], sw, tracker.failed, dir));

  it('pings and a burst held while B was paused: in B\'s capture (ctl) in order, both directions, the burst as B got it', () =>
    guard(async () => {
      const start = await ctl(ctlSock, 'capture', 'vm1', fileB);
      assert.equal(start.code, 0, start.stderr);
      const list = await ctl(ctlSock, 'capture');
      assert.match(list.stdout, /^vm0\s+\d+\s+\d+\s+0\s+.*vm0\.pcap$/m);
      assert.match(list.stdout, /^vm1\s+\d+\s+\d+\s+0\s+.*vm1\.pcap$/m);
      const p = await a!.exec(`ping -c ${PINGS} -i 0.2 -W 3 -p ${PATTERN.toString(16)} -s 100 10.0.0.2`, { timeoutMs: 30_000 });
      assert.match(p.output, new RegExp(`${PINGS} packets received`), p.output);

      const recv = b!.spawn(`udpburst recv ${UDP_PORT} ${BURST} 5000`);
      await recv.waitForLine(/UDPBURST listening/, 10_000);
      await b!.stop();
      const s = await a!.exec(`udpburst send 10.0.0.2 ${UDP_PORT} ${BURST} 200`, { timeoutMs: 60_000 });
      assert.equal(s.rc, 0, s.output);
      for (let k = 0; k < 100 && (await sw!.freshStats()).engine.pool.blocksInUse < BURST; k++);
      const pausedAt = Date.now();
      await new Promise((r) => setTimeout(r, 500));
      await b!.cont();
      const r = await recv.done;
      const line = r.lines.find((l) => l.startsWith('UDPBURST received='));
      assert.ok(line, r.output);
      assert.equal(parseKeyValues(line).received, String(BURST), line);

      const stop = await ctl(ctlSock, 'capture', '--stop', 'vm1');
      assert.equal(stop.code, 0, stop.stderr);
      assert.match(stop.stdout, /capture of vm1 stopped: \d+ frames/);
      const t = tcpdumpRead(fileB);
      assert.equal(t.status, 0, t.stderr);
      assert.match(t.stderr, /link-type EN10MB \(Ethernet\)/);
      const pings = pingPairs(t.records);
      const first = Number(/request (\d+)/.exec(pings[0] ?? '')?.[1] ?? NaN);
      assert.deepEqual(pings, expectedPings(first), 'every request B got and every reply it sent, in order');
      for (const rec of t.records.filter((x) => echo(x)?.kind === 'request')) assert.deepEqual([rec.src, rec.dst], [MAC_A, MAC_B]);
      const seqs = t.records.map(burstSeq).filter((x) => x !== null);
      assert.deepEqual(seqs, Array.from({ length: BURST }, (_, k) => k), 'the burst, complete and in order');
      // stamped when written into B's ring: after B ran again, not when A sent them
      const stamps = tcpdumpRead(fileB, ['-tt']).records.filter((x) => burstSeq(x) !== null).map((x) => Number(x.line.split(' ')[0]) * 1000);
      assert.equal(stamps.length, BURST);
      assert.ok(stamps[0] >= pausedAt, `first burst frame captured at ${new Date(stamps[0]).toISOString()}, B was paused until after ${new Date(pausedAt).toISOString()}`);
      const st = (await sw!.freshStats()).engine.ports.find((x: { name: string }) => x.name === 'vm1');
      console.log(`# vm1 capture: ${t.records.length} frames; ${pings.length} ping frames, ${seqs.length} burst frames; drained ${st.drainedFrames}`);
      assert.ok(st.drainedFrames >= BURST, 'the burst went through the elastic FIFO');
    }));

  it('a capture with max-frames stops itself at the cap; one with max-bytes stays within it', () =>
    guard(async () => {
      const capped = path.join(dir, 'frames.pcap');
      const c = await ctl(ctlSock, 'capture', 'vm1', capped, 'max-frames=7');
      assert.equal(c.code, 0, c.stderr);
      await ping(a!, '10.0.0.2', 10);
      await sw!.waitLog(/capture of vm1 to .*frames\.pcap ended \(max-frames\): 7 frames/);
      const f = tcpdumpRead(capped);
      assert.equal(f.status, 0, f.stderr);
      assert.equal(f.records.length, 7);

      const bytes = path.join(dir, 'bytes.pcap');
      const MAX = 1000;
      const d = await ctl(ctlSock, 'capture', 'vm1', bytes, `max-bytes=${MAX}`);
      assert.equal(d.code, 0, d.stderr);
      await ping(a!, '10.0.0.2', 10);
      await sw!.waitLog(/capture of vm1 to .*bytes\.pcap ended \(max-bytes\)/);
      const size = fs.statSync(bytes).size;
      assert.ok(size <= MAX, `${size} bytes, more than max-bytes=${MAX}`);
      const g = tcpdumpRead(bytes);
      assert.equal(g.status, 0, g.stderr);
      assert.ok(g.records.length >= 5, `${g.records.length} frames of 98 bytes fit in ${MAX} bytes`);
      assert.equal(size, 24 + g.records.reduce((n, r) => n + 16 + r.length, 0), 'whole records only');
      const bad = await ctl(ctlSock, 'capture', 'vm9', path.join(dir, 'x.pcap'));
      assert.equal(bad.code, 1);
      assert.match(bad.stderr, /no port vm9/);
    }));

  it('the command-line capture of A, completed at the switch\'s exit: both directions, pings and burst in order', () =>
    guard(async () => {
      const e = await sw!.stop();
      assert.equal(e.code, 0, sw!.log.slice(-10).join('\n'));
      assert.ok(sw!.log.some((l) => /capture of vm0 to .*vm0\.pcap ended \(exit\): \d+ frames/.test(l)), sw!.log.slice(-10).join('\n'));
      const t = tcpdumpRead(fileA);
      assert.equal(t.status, 0, t.stderr);
      assert.doesNotMatch(t.stderr, /truncated/i);
      const pings = pingPairs(t.records);
      const first = Number(/request (\d+)/.exec(pings[0] ?? '')?.[1] ?? NaN);
      assert.deepEqual(pings, expectedPings(first), 'requests A sent and replies it got, in order');
      assert.deepEqual(t.records.map(burstSeq).filter((x) => x !== null), Array.from({ length: BURST }, (_, k) => k));
      const fromA = t.records.filter((r) => r.src === MAC_A).length;
      const toA = t.records.filter((r) => r.dst === MAC_A).length;
      console.log(`# vm0 capture: ${t.records.length} frames, ${fromA} from A, ${toA} to A`);
      assert.ok(fromA >= PINGS + BURST && toA >= 3 * PINGS, 'both directions');
    }));
});
