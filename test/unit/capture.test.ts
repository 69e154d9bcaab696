// Packet capture on the real data path (bench/datapath-bench.ts's rig: two VhostUserPorts bound to
// in-process front-ends over real sockets, memfd guest RAM): guest A's frames carry sequence
// numbers; captures on both ports are read back with Debian's tcpdump and every frame must be
// there, in order, byte for byte — TX as A sent it, RX as written into B's ring, also when it went
// through the elastic FIFO. Caps (frames, bytes) are honoured, and a writer that falls behind drops
// whole records and counts them (the file stays readable).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Drive, Rig, run, settled } from '../../bench/datapath-bench';
import { CaptureManager, PCAP_FILE_HEADER, PCAP_RECORD_HEADER } from '../../src/ops/capture';
import { tcpdumpRead, TcpdumpRecord } from '../tcpdump';

const MAC_A = '52:54:00:00:00:01';
const MAC_B = '52:54:00:00:00:02';

function dir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'ev-capture-'));
}

/** the rig's frame: seq as a little-endian u32 right after the Ethernet header, then (i * 7) & 0xff */
function seqOf(r: TcpdumpRecord): number {
  return r.payload.readUInt32LE(0);
}

function checkFrames(recs: TcpdumpRecord[], frameBytes: number, first: number, what: string): void {
  for (const [k, r] of recs.entries()) {
    assert.equal(r.src, MAC_A, `${what} record ${k}: ${r.line}`);
    assert.equal(r.dst, MAC_B, `${what} record ${k}: ${r.line}`);
    assert.equal(r.etherType, 0x88b5, r.line);
    assert.equal(r.length, frameBytes, r.line);
    assert.equal(r.payload.length, frameBytes - 14, `${what} record ${k}: all bytes captured`);
    assert.equal(seqOf(r), first + k, `${what} record ${k}: in order`);
    for (let i = 18; i < frameBytes; i++) {
      if (r.payload[i - 14] !== ((i * 7) & 0xff)) assert.fail(`${what} record ${k}: byte ${i} is ${r.payload[i - 14]}`);
    }
  }
}

async function captureRun(frameBytes: number, pathName: 'fast' | 'store', frames: number, drive: Drive = 'direct'): Promise<void> {
  const d = dir();
  const logs: string[] = [];
  // buffers that hold the whole run: this test is about the bytes, not a writer that falls behind
  // (on a busy machine the disk may; that is the last test's)
  const caps = new CaptureManager((m) => logs.push(m), { dir: d, maxBytes: 2 ** 30 }, 2 * frames * (frameBytes + 16) + 65536);
  const rig = await Rig.create({ ring: 256, frameBytes });
  try {
    await run(rig, drive, pathName, () => rig.rx.packets >= 1000); // warm, not captured
    rig.stopSending = true;
    await run(rig, drive, pathName, () => settled(rig));
    rig.stopSending = false;
    const first = rig.tx.seq;
    caps.start(rig.portA, path.join(d, 'a.pcap'));
    caps.start(rig.portB, path.join(d, 'b.pcap'));
    await run(rig, drive, pathName, () => rig.rx.packets - first >= frames);
    rig.stopSending = true;
    await run(rig, drive, pathName, () => settled(rig));
    const sent = rig.tx.seq - first;
    const sa = await caps.stop(rig.portA.name);
    const sb = await caps.stop(rig.portB.name);
    assert.equal(sa.frames, sent);
    assert.equal(sb.frames, sent);
    assert.equal(sa.dropped + sb.dropped, 0);
    const a = tcpdumpRead(path.join(d, 'a.pcap'));
    const b = tcpdumpRead(path.join(d, 'b.pcap'));
    assert.equal(a.status, 0, a.stderr);
    assert.equal(b.status, 0, b.stderr);
    assert.equal(a.records.length, sent, `A's capture: ${a.records.length} of ${sent} frames (${a.stderr})`);
    assert.equal(b.records.length, sent, `B's capture: ${b.records.length} of ${sent} frames (${b.stderr})`);
    checkFrames(a.records, frameBytes, first, 'TX of A');
    checkFrames(b.records, frameBytes, first, 'RX of B');
    assert.equal(fs.statSync(path.join(d, 'a.pcap')).size, sa.bytes);
    if (pathName === 'store') assert.ok(rig.sw.stats().total.drainedFrames >= sent);
    assert.ok(logs.some((l) => /capture of vmB to .*b\.pcap ended \(stopped\)/.test(l)), logs.join('\n'));
  } finally {
    caps.stopAllSync();
    await rig.close();
    fs.rmSync(d, { recursive: true, force: true });
  }
}

test('capture both ports, fast path, 64-byte frames: tcpdump reads every frame, in order, byte for byte', () => captureRun(64, 'fast', 3000));
test('capture both ports, 9000-byte frames through the elastic FIFO (mergeable RX buffers): every frame whole, in order', () => captureRun(9000, 'store', 600, 'kick'));

test('max-frames and max-bytes caps: the capture ends by itself, the file is complete and within the cap', async () => {
  const d = dir();
  const logs: string[] = [];
  const caps = new CaptureManager((m) => logs.push(m), { dir: d, maxBytes: 2 ** 30 });
  const rig = await Rig.create({ ring: 256, frameBytes: 200 });
  try {
    const first = rig.tx.seq;
    caps.start(rig.portA, path.join(d, 'frames.pcap'), { maxFrames: 100 });
    const maxBytes = PCAP_FILE_HEADER + 37 * (PCAP_RECORD_HEADER + 200) + 50;
    caps.start(rig.portB, path.join(d, 'bytes.pcap'), { maxBytes });
    await run(rig, 'direct', 'fast', () => rig.rx.packets >= 2000);
    rig.stopSending = true;
    await run(rig, 'direct', 'fast', () => settled(rig));
    const t0 = Date.now();
    while ((caps.has(rig.portA.name) || caps.has(rig.portB.name)) && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(caps.list(), [], 'both captures ended by themselves');
    const f = tcpdumpRead(path.join(d, 'frames.pcap'));
    assert.equal(f.status, 0, f.stderr);
    assert.equal(f.records.length, 100);
    assert.deepEqual(f.records.map(seqOf), Array.from({ length: 100 }, (_, k) => first + k));
    const b = tcpdumpRead(path.join(d, 'bytes.pcap'));
    assert.equal(b.status, 0, b.stderr);
    assert.equal(b.records.length, 37, 'as many whole records as fit');
    assert.deepEqual(b.records.map(seqOf), Array.from({ length: 37 }, (_, k) => first + k));
    const size = fs.statSync(path.join(d, 'bytes.pcap')).size;
    assert.ok(size <= maxBytes, `${size} bytes > max-bytes ${maxBytes}`);
    assert.ok(logs.some((l) => /ended \(max-frames\): 100 frames/.test(l)), logs.join('\n'));
    assert.ok(logs.some((l) => /ended \(max-bytes\): 37 frames/.test(l)), logs.join('\n'));
  } finally {
    caps.stopAllSync();
    await rig.close();
    fs.rmSync(d, { recursive: true, force: true });
  }
});

test('a writer that falls behind drops whole records and counts them; the file stays readable', async () => {
  const d = dir();
  // buffers of 64 KiB: a burst of 9000-byte frames within one event-loop turn overflows them
  const caps = new CaptureManager(() => {}, { dir: d, maxBytes: 2 ** 30 }, 64 * 1024);
  const rig = await Rig.create({ ring: 256, frameBytes: 9000 });
  try {
    caps.start(rig.portB, path.join(d, 'b.pcap'));
    await run(rig, 'direct', 'store', () => rig.rx.packets >= 1024);
    rig.stopSending = true;
    await run(rig, 'direct', 'store', () => settled(rig));
    const s = await caps.stop(rig.portB.name);
    assert.ok(s.dropped > 0, `nothing dropped: ${JSON.stringify(s)}`);
    assert.equal(s.frames + s.dropped, rig.rx.packets, 'every frame either captured or counted as dropped');
    const r = tcpdumpRead(path.join(d, 'b.pcap'));
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.records.length, s.frames);
    const seqs = r.records.map(seqOf);
    for (let k = 1; k < seqs.length; k++) assert.ok(seqs[k] > seqs[k - 1], 'in order, gaps only');
    assert.doesNotMatch(r.stderr, /truncated|bogus/i);
  } finally {
    caps.stopAllSync();
    await rig.close();
    fs.rmSync(d, { recursive: true, force: true });
  }
});
