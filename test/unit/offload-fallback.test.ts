// The offload fallback (src/ports/offload-fallback.ts) for a receiver that takes TSO but not ECN
// (GUEST_CSUM + GUEST_TSO4, no GUEST_ECN: port.ts hands it need = RX_ECN for a TCPV4|ECN frame).
// Found by the offload fuzz target (test/fuzz/offload.ts): such a frame took the checksum path
// and went out whole — a 64 KiB plain packet with a zero header — instead of being segmented.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { onesSum } from '../checksum';
import { ByteFrames } from '../../src/datapath/byte-frame';
import { copies } from '../../src/datapath/copy-list';
import type { Frame } from '../../src/datapath/frame';
import { FALLBACK_DROPPED, OffloadFallback, type PacketSink } from '../../src/ports/offload-fallback';
import { PIECE_FRAME, Pieces, RES_OK } from '../../src/ports/vhost-user/rx';
import { offloadNeeds, RX_CSUM, RX_ECN, RX_TSO4 } from '../../src/virtio/offload';

const MSS = 1000;
const u16 = (b: Uint8Array, o: number) => (b[o] << 8) | b[o + 1];

/** Collects each packet's virtio-net header and bytes (the copies run before they are read). */
class CollectSink implements PacketSink {
  readonly maxPackets = 256;
  private readonly out = new Uint8Array(1 << 20);
  private readonly area = copies.register(this.out);
  private at: number[] = [];
  private len: number[] = [];
  private used = 0;
  readonly headers: number[][] = [];

  begin(): number {
    this.at = [];
    this.len = [];
    this.used = 0;
    return RES_OK;
  }
  reserve(ethLen: number): number {
    this.at.push(this.used);
    this.len.push(ethLen);
    this.used += ethLen;
    return RES_OK;
  }
  write(p: number, hdr: Uint8Array, hdrOff: number, frame: Frame | null, pieces: Pieces): boolean {
    this.headers[p] = [...hdr.subarray(hdrOff, hdrOff + 10)];
    let at = this.at[p];
    for (let i = 0; i < pieces.count; i++) {
      const n = pieces.len[i];
      if (pieces.kind[i] === PIECE_FRAME) {
        (frame as Frame).seek(pieces.off[i]);
        if (!(frame as Frame).copyOut(n, this.area, at)) return false;
      } else if (!copies.record(pieces.area[i], pieces.off[i], this.area, at, n)) {
        return false;
      }
      at += n;
    }
    return at - this.at[p] === this.len[p];
  }
  packets(): Uint8Array[] {
    copies.settle();
    return this.at.map((a, i) => this.out.slice(a, a + this.len[i]));
  }
  close(): void {
    copies.settle();
    copies.unregister(this.area);
  }
}

/** An engine frame: TCPV4|ECN, NEEDS_CSUM, CWR set, payloadLen bytes of payload in MSS segments. */
function ecnSuperFrame(payloadLen: number, gsoType = 0x81): Uint8Array {
  const f = new Uint8Array(12 + 54 + payloadLen);
  f.set([1, gsoType, 54, 0, MSS & 0xff, MSS >> 8, 34, 0, 16, 0], 0);
  const e = 12;
  f.set([0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1, 0x08, 0x00], e);
  f.set([0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2], e + 14);
  f.set([0x9c, 0x40, 0x14, 0x51, 0, 0, 0x10, 0, 0, 0, 0, 1, 0x50, 0x80 | 0x18, 0x01, 0xf5], e + 34); // CWR|PSH|ACK
  for (let i = 0; i < payloadLen; i++) f[e + 54 + i] = (i * 7) & 0xff;
  return f;
}

test('a TCPV4|ECN super-frame for a receiver with GUEST_TSO4 but not GUEST_ECN is segmented, not sent whole', () => {
  const bytes = new ByteFrames();
  const sink = new CollectSink();
  const counters = { rxChecksummed: 0, rxSegmented: 0, rxOffloadDropped: 0 };
  const fallback = new OffloadFallback(counters);
  try {
    const frame = bytes.of(ecnSuperFrame(3500));
    const need = offloadNeeds(frame.hdr, frame.hdrOff) & ~(RX_CSUM | RX_TSO4);
    assert.equal(need, RX_ECN, 'what port.ts hands the fallback for this receiver');
    assert.equal(fallback.deliver(sink, frame, need), RES_OK);
    assert.deepEqual(counters, { rxChecksummed: 0, rxSegmented: 1, rxOffloadDropped: 0 });
    const pkts = sink.packets();
    assert.equal(pkts.length, 4, '3500 bytes in 1000-byte segments');
    pkts.forEach((p, i) => {
      assert.deepEqual(sink.headers[i], new Array(10).fill(0), `segment ${i}: a plain header (flags 0, GSO_NONE)`);
      assert.equal(p.length, 54 + (i < 3 ? MSS : 500), `segment ${i}: length`);
      assert.equal(u16(p, 16), p.length - 14, `segment ${i}: IPv4 total length`);
      assert.equal(onesSum(p.subarray(14, 34)), 0xffff, `segment ${i}: IPv4 header checksum`);
      assert.equal(p[47] & 0x80, i === 0 ? 0x80 : 0, `segment ${i}: CWR only on the first`);
      const tcp = p.subarray(34);
      assert.equal(onesSum([...p.subarray(26, 34), 0, 6, tcp.length >> 8, tcp.length & 0xff, ...tcp]), 0xffff, `segment ${i}: TCP checksum`);
    });
    // the ECN bit without a TCP type: nothing to segment, so it is dropped (counted), not sent as a plain frame
    const bare = bytes.of(ecnSuperFrame(3500, 0x80));
    assert.equal(fallback.deliver(sink, bare, offloadNeeds(bare.hdr, bare.hdrOff) & ~(RX_CSUM | RX_TSO4 | 4)), FALLBACK_DROPPED);
    assert.equal(counters.rxOffloadDropped, 1);
  } finally {
    sink.close();
    bytes.close();
  }
});
