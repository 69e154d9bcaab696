// What the switch engine sees of a port (a vhost-user connection or the TAP uplink).
//
// A frame is a Frame (src/datapath/frame.ts): where its 12-byte virtio_net_hdr_v1 and its Ethernet
// bytes lie. A port copies it by recording copies in the copy list (src/datapath/copy-list.ts);
// the switch runs the list before it calls flush(), so flush() may publish what deliver() reserved.
import type { Frame } from '../datapath/frame';
import type { Burst } from '../datapath/burst';

export { ENGINE_HDR_LEN } from '../datapath/layout';

export interface EnginePort {
  /** short name for logs and counters, e.g. "vm0" or "tap0" */
  readonly name: string;
  /**
   * A port with several RX queues (a multiqueue guest): which one frame goes to, 0 … the switch's
   * queue count − 1 — the same one for every frame of a flow while the port's set of queues stays
   * as it is (the engine keeps order per RX queue, so per flow). When the set changes, the port
   * tells the switch (Switch.queuesChanged) and the frames held for it are spread again. Ports
   * without it have one queue, 0. Must not allocate.
   */
  laneFor?(frame: Frame): number;
  /**
   * The second test and the fast path in one step: reserve the destination's buffers for the frame
   * and record its copy (header, Ethernet bytes) into them. Returns false, with nothing reserved,
   * when the connection-specific resources are not available right now (ring not started or
   * disabled, too few free RX buffers). True also when the port dropped the frame for good (counted
   * by the port). Must not allocate, and must not keep `frame` past the call.
   */
  deliver(frame: Frame, lane: number): boolean;
  /**
   * The forward stage's run: entries [from, to) of burst, all for RX queue `lane` of this port,
   * with nothing waiting for that queue. Delivers them in order as deliver() would, and stops at the
   * first one it cannot take now. Returns how many it took (delivered, or dropped for good and
   * counted); the switch stores the rest. Optional: without it the switch calls deliver() per entry.
   * Same rules as deliver(): no allocation, nothing kept past the call.
   */
  deliverBurst?(burst: Burst, from: number, to: number, lane: number): number;
  /** After a batch, once its copies ran: make what deliver() wrote visible (used ring) and signal. */
  flush(): void;
  /**
   * The engine holds frames for RX queue `lane` of this port (want=true) or no longer does
   * (want=false). With want=true the port asks its guest for a kick when it posts RX buffers on that
   * queue (clears VRING_USED_F_NO_NOTIFY / sets avail_event) and reports it through
   * Switch.resourcesAvailable(portIndex, lane).
   */
  wantResources(want: boolean, lane: number): void;
}

/**
 * Worker threads (src/workers/): RX queues served by another data-plane thread. The engine asks
 * remote() before it delivers; for such a queue, send() takes free packet buffers of the shared
 * data store, records the copy into them and hands the frame to that thread after the batch's
 * copies ran (false: no room now; the frame waits in this thread's queue for that RX queue).
 */
export interface Handoff {
  remote(dest: number, lane: number): boolean;
  send(dest: number, lane: number, frame: Frame): boolean;
  /** a frame already in the shared store (queued here, head block `head`, off its queue after
   * this) handed over as it is: no copy, no new blocks (false: no room now) */
  sendHead(dest: number, lane: number, head: number): boolean;
}
