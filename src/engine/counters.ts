// Counters: one Float64Array row per connection plus one engine-wide row, indexed by the constants
// below, so counting on the data path is a typed-array increment. Objects are built only by
// snapshot(), on the control path (CLI, metrics, tests).
//
// Bytes are Ethernet bytes: the 12-byte virtio-net header the engine carries is not counted.
// A drop is counted once engine-wide and once on one connection: the destination connection when it
// was determined, otherwise the source connection (port security, malformed, unresolved frames).

export const RX_FRAMES = 0; // frames input() from this connection
export const RX_BYTES = 1;
export const FAST_FRAMES = 2; // delivered on the fast path (to this connection)
export const FAST_BYTES = 3;
export const STORED_FRAMES = 4; // copied into the elastic FIFO (for this connection, or unresolved from it)
export const STORED_BYTES = 5;
export const DRAINED_FRAMES = 6; // delivered from the elastic FIFO by the monitor
export const DRAINED_BYTES = 7;
export const RESOLVED_FRAMES = 8; // moved from the unresolved queue to this connection's queue
export const HOLD_FLOODED = 9; // unresolved frames past the hold time, flooded (counted on the source)
export const DROP_POOL_EXHAUSTED = 10;
export const DROP_SHARE_LIMIT = 11;
export const DROP_MALFORMED = 12; // shorter than header + Ethernet header, or longer than the largest frame
export const DROP_PORT_SECURITY = 13;
export const DROP_HOLD_EXPIRED = 14; // unresolved past the hold time, policy 'drop'
export const DROP_SAME_CONNECTION = 15; // destination is the source connection
export const DROP_DETACHED = 16; // queued for a connection that detached
export const DROP_TOO_BIG = 17; // longer than the largest frame allowed (--max-frame-bytes)
export const FOLLOWED_FRAMES = 18; // held for the connection a MAC moved away from, moved to its new one (live migration)
export const HANDED_FRAMES = 19; // worker threads: handed to the thread that serves the destination RX queue (counted there again as fast or stored)
export const HANDED_BYTES = 20;
export const COUNTER_COUNT = 21;

export interface DropCounts {
  poolExhausted: number;
  shareLimit: number;
  malformed: number;
  portSecurity: number;
  holdExpired: number;
  sameConnection: number;
  detached: number;
  tooBig: number;
}

export interface TrafficCounts {
  rxFrames: number;
  rxBytes: number;
  fastFrames: number;
  fastBytes: number;
  storedFrames: number;
  storedBytes: number;
  drainedFrames: number;
  drainedBytes: number;
  resolvedFrames: number;
  /** held for the connection a MAC moved away from, then moved here with the MAC (live migration) */
  followedFrames: number;
  /** worker threads: frames handed to the thread serving the destination's RX queue (that thread counts them again, as fast or stored) */
  handedFrames: number;
  handedBytes: number;
  holdFlooded: number;
  drops: DropCounts;
  /** sum of drops */
  dropped: number;
}

export class Counters {
  readonly perPort: Float64Array;
  readonly total: Float64Array;

  /** bytes of the shared memory a thread's counters live in (worker threads: the control thread sums them) */
  static sharedBytes(maxPorts: number): number {
    return (maxPorts + 1) * COUNTER_COUNT * 8;
  }

  constructor(readonly maxPorts: number, shared: SharedArrayBuffer | null = null) {
    const buf = shared ?? new ArrayBuffer(Counters.sharedBytes(maxPorts));
    this.total = new Float64Array(buf, 0, COUNTER_COUNT);
    this.perPort = new Float64Array(buf, COUNTER_COUNT * 8, maxPorts * COUNTER_COUNT);
  }

  add(port: number, counter: number, n: number): void {
    if (port >= 0) this.perPort[port * COUNTER_COUNT + counter] += n;
    this.total[counter] += n;
  }

  /** a frame of len bytes (header included) counted as frames + Ethernet bytes */
  frame(port: number, framesCounter: number, len: number): void {
    if (port >= 0) {
      const base = port * COUNTER_COUNT + framesCounter;
      this.perPort[base] += 1;
      this.perPort[base + 1] += len - 12;
    }
    this.total[framesCounter] += 1;
    this.total[framesCounter + 1] += len - 12;
  }

  /** n frames of `bytes` bytes in all (headers included) counted at once */
  frames(port: number, framesCounter: number, n: number, bytes: number): void {
    const eth = bytes - 12 * n;
    if (port >= 0) {
      const base = port * COUNTER_COUNT + framesCounter;
      this.perPort[base] += n;
      this.perPort[base + 1] += eth;
    }
    this.total[framesCounter] += n;
    this.total[framesCounter + 1] += eth;
  }

  resetPort(port: number): void {
    this.perPort.fill(0, port * COUNTER_COUNT, (port + 1) * COUNTER_COUNT);
  }

  snapshot(port: number, others: readonly Counters[] = []): TrafficCounts {
    let row = port < 0 ? this.total : this.perPort.subarray(port * COUNTER_COUNT, (port + 1) * COUNTER_COUNT);
    if (others.length > 0) {
      // the sum over this thread's counters and those of the other data-plane threads
      const sum = new Float64Array(row);
      for (const o of others) {
        const r = port < 0 ? o.total : o.perPort.subarray(port * COUNTER_COUNT, (port + 1) * COUNTER_COUNT);
        for (let c = 0; c < COUNTER_COUNT; c++) sum[c] += r[c];
      }
      row = sum;
    }
    const drops: DropCounts = {
      poolExhausted: row[DROP_POOL_EXHAUSTED],
      shareLimit: row[DROP_SHARE_LIMIT],
      malformed: row[DROP_MALFORMED],
      portSecurity: row[DROP_PORT_SECURITY],
      holdExpired: row[DROP_HOLD_EXPIRED],
      sameConnection: row[DROP_SAME_CONNECTION],
      detached: row[DROP_DETACHED],
      tooBig: row[DROP_TOO_BIG],
    };
    let dropped = 0;
    for (let c = DROP_POOL_EXHAUSTED; c <= DROP_TOO_BIG; c++) dropped += row[c];
    return {
      rxFrames: row[RX_FRAMES],
      rxBytes: row[RX_BYTES],
      fastFrames: row[FAST_FRAMES],
      fastBytes: row[FAST_BYTES],
      storedFrames: row[STORED_FRAMES],
      storedBytes: row[STORED_BYTES],
      drainedFrames: row[DRAINED_FRAMES],
      drainedBytes: row[DRAINED_BYTES],
      resolvedFrames: row[RESOLVED_FRAMES],
      followedFrames: row[FOLLOWED_FRAMES],
      handedFrames: row[HANDED_FRAMES],
      handedBytes: row[HANDED_BYTES],
      holdFlooded: row[HOLD_FLOODED],
      drops,
      dropped,
    };
  }
}
