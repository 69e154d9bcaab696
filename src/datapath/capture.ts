// The capture hook a port calls per frame while a packet capture is on (src/ops/capture.ts writes
// the records to a pcap file). It lives below the ports so they need not know about files.
//
// A port keeps `capture: FrameCapture | null` and tests it once per frame: one predictable branch
// when no capture is on. A record is its length first (begin), then its bytes in order, as copies
// recorded in the copy list (they run with the batch, like the frame's own copies), so the bytes
// captured are exactly the bytes the guest gets or gave, read where they lie.
import type { Frame } from './frame';

export interface FrameCapture {
  /** A whole frame (its Ethernet bytes), e.g. as taken from a guest's TX ring. */
  frame(frame: Frame): void;
  /** Starts a record of n Ethernet bytes; false when it is not kept (cap reached, buffer full). */
  begin(n: number): boolean;
  /** The record's next n bytes: the frame's Ethernet bytes [from, from + n). */
  fromFrame(frame: Frame, from: number, n: number): void;
  /** The record's next n bytes: [off, off + n) of copy-list area `area` (staged bytes). */
  fromArea(area: number, off: number, n: number): void;
}
