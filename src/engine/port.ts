// What the switch engine sees of a port (a vhost-user connection or the TAP uplink).
//
// Frame format everywhere inside the engine: a 12-byte virtio_net_hdr_v1 (flags, gso_type, hdr_len,
// gso_size, csum_start, csum_offset, num_buffers — num_buffers is ignored on input) followed by the
// Ethernet frame. So the destination MAC is at offset 12 and the source MAC at offset 18.
export const ENGINE_HDR_LEN = 12;

export interface EnginePort {
  /** short name for logs and counters, e.g. "vm0" or "tap0" */
  readonly name: string;
  /**
   * The second test and the fast path in one step: write the frame buf[off, off+len) into the
   * destination (allocating RX descriptors, writing the virtio-net header, filling the used ring).
   * Returns false, with no effect visible to the guest, when the connection-specific resources are
   * not available right now (ring not started or disabled, too few free RX buffers for len bytes).
   * Must not allocate.
   */
  deliver(buf: Uint8Array, off: number, len: number): boolean;
  /** Called once after a batch of deliver() calls: signal the guest (call eventfd) if it wants it. */
  flush(): void;
  /**
   * The engine holds frames for this port (want=true) or no longer does (want=false). With want=true
   * the port asks its guest for a kick when it posts RX buffers (clears VRING_USED_F_NO_NOTIFY / sets
   * avail_event) and reports it through Switch.resourcesAvailable(portIndex).
   */
  wantResources(want: boolean): void;
}
