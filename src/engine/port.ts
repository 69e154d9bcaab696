// What the switch engine sees of a port (a vhost-user connection or the TAP uplink).
//
// A frame is a Frame (src/datapath/frame.ts): where its 12-byte virtio_net_hdr_v1 and its Ethernet
// bytes lie. A port copies it by recording copies in the copy list (src/datapath/copy-list.ts);
// the switch runs the list before it calls flush(), so flush() may publish what deliver() reserved.
import type { Frame } from '../datapath/frame';

export { ENGINE_HDR_LEN } from '../datapath/layout';

export interface EnginePort {
  /** short name for logs and counters, e.g. "vm0" or "tap0" */
  readonly name: string;
  /**
   * The second test and the fast path in one step: reserve the destination's buffers for the frame
   * and record its copy (header, Ethernet bytes) into them. Returns false, with nothing reserved,
   * when the connection-specific resources are not available right now (ring not started or
   * disabled, too few free RX buffers). True also when the port dropped the frame for good (counted
   * by the port). Must not allocate, and must not keep `frame` past the call.
   */
  deliver(frame: Frame): boolean;
  /** After a batch, once its copies ran: make what deliver() wrote visible (used ring) and signal. */
  flush(): void;
  /**
   * The engine holds frames for this port (want=true) or no longer does (want=false). With want=true
   * the port asks its guest for a kick when it posts RX buffers (clears VRING_USED_F_NO_NOTIFY / sets
   * avail_event) and reports it through Switch.resourcesAvailable(portIndex).
   */
  wantResources(want: boolean): void;
}
