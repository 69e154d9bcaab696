// The shared memory of the data-plane threads (--workers N), made once by the control thread and
// posted to each worker thread (SharedArrayBuffers are shared, not copied, by postMessage):
//
//   store       the local data store and its per-block arrays (ElasticFifo over FifoShare); thread t
//               takes free blocks only from its partition t
//   local[t]    thread t's queue counts and pool tallies (the control thread reads them for stats)
//   counters[t] thread t's engine counters (Counters rows), summed by the control thread
//   portRows[t] thread t's vhost-user port counters per connection (PORT_COUNTER_KEYS), per-queue frames
//   table       the MAC table (MacTable, seqlock)
//   owner       which thread serves queue pair p of connection i: owner[i * MAX_PAIRS + p]
//   lanes       per connection: the RX queues frames are spread over (PortSharedViews)
//   rings       frames[from][to]: SPSC rings of handed-over frames (queue, head block);
//               returns[from][to]: SPSC rings of frames freed by `from` whose blocks `to` owns
//   doorbells   one eventfd per thread, written after a batch handed it frames
import { Counters } from '../engine/counters';
import { ElasticFifo } from '../engine/elastic-fifo';
import { MacTable } from '../engine/classifier';
import { PORT_COUNTER_KEYS, type PortSharedViews } from '../ports/vhost-user/port';
import { SpscRing } from './spsc';

/** queue pairs per connection any thread can serve (the command line's most) */
export const MAX_PAIRS = 128;
/** int32 words per handed-over frame: [queue, head block] */
export const FRAME_MSG_WORDS = 2;
/** handed-over frames in flight from one thread to another */
export const FRAME_RING_CAPACITY = 4096;
/** per connection lane state: laneSet (MAX_PAIRS int32), laneCell (4 int32), laneHas (MAX_PAIRS bytes) */
const LANE_BYTES = MAX_PAIRS * 4 + 16 + MAX_PAIRS;
/** per connection and thread: PORT_COUNTER_KEYS, RX frames per queue pair, TX frames per queue pair (float64) */
export const PORT_ROW_WORDS = PORT_COUNTER_KEYS.length + 2 * MAX_PAIRS;

export interface ThreadsLayout {
  threads: number;
  maxPorts: number;
  lanes: number;
  blockSize: number;
  totalBlocks: number;
  partitions: { first: number; count: number }[];
  macTableSize: number;
  macAgeMs: number;
  store: SharedArrayBuffer;
  local: SharedArrayBuffer[];
  counters: SharedArrayBuffer[];
  portRows: SharedArrayBuffer[];
  table: SharedArrayBuffer;
  owner: SharedArrayBuffer;
  lanesSab: SharedArrayBuffer;
  frames: (SharedArrayBuffer | null)[][];
  returns: (SharedArrayBuffer | null)[][];
  returnCapacity: number;
  doorbells: number[];
}

function pow2AtLeast(n: number): number {
  let c = 2;
  while (c < n) c *= 2;
  return c;
}

/** The shared memory for `threads` data-plane threads (the control thread is thread 0). */
export function makeLayout(o: {
  threads: number;
  maxPorts: number;
  lanes: number;
  poolBytes: number;
  blockSize: number;
  macTableSize: number;
  macAgeMs: number;
  doorbells: number[];
}): ThreadsLayout {
  const n = o.threads;
  const totalBlocks = Math.floor(o.poolBytes / o.blockSize);
  if (totalBlocks < n) throw new RangeError(`a pool of ${totalBlocks} blocks cannot be split over ${n} threads`);
  const partitions: { first: number; count: number }[] = [];
  const per = Math.floor(totalBlocks / n);
  for (let t = 0; t < n; t++) partitions.push({ first: t * per, count: t === n - 1 ? totalBlocks - t * per : per });
  const queueCount = o.maxPorts * o.lanes + 1;
  const returnCapacity = pow2AtLeast(Math.max(...partitions.map((p) => p.count)) + 1);
  const frames: (SharedArrayBuffer | null)[][] = [];
  const returns: (SharedArrayBuffer | null)[][] = [];
  for (let a = 0; a < n; a++) {
    frames.push([]);
    returns.push([]);
    for (let b = 0; b < n; b++) {
      frames[a].push(a === b ? null : new SharedArrayBuffer(SpscRing.bytesFor(FRAME_RING_CAPACITY, FRAME_MSG_WORDS)));
      returns[a].push(a === b ? null : new SharedArrayBuffer(SpscRing.bytesFor(returnCapacity, 1)));
    }
  }
  const each = <T>(f: () => T): T[] => Array.from({ length: n }, f);
  // the table is made empty here, once, before any thread attaches to it
  const table = new SharedArrayBuffer(MacTable.sharedBytes(o.macTableSize));
  new MacTable(o.macTableSize, o.macAgeMs, new Float64Array(1), table, false);
  return {
    threads: n,
    maxPorts: o.maxPorts,
    lanes: o.lanes,
    blockSize: o.blockSize,
    totalBlocks,
    partitions,
    macTableSize: o.macTableSize,
    macAgeMs: o.macAgeMs,
    store: new SharedArrayBuffer(ElasticFifo.sharedStoreBytes(totalBlocks, o.blockSize)),
    local: each(() => new SharedArrayBuffer(ElasticFifo.sharedLocalBytes(queueCount, o.lanes))),
    counters: each(() => new SharedArrayBuffer(Counters.sharedBytes(o.maxPorts))),
    portRows: each(() => new SharedArrayBuffer(o.maxPorts * PORT_ROW_WORDS * 8)),
    table,
    owner: new SharedArrayBuffer(o.maxPorts * MAX_PAIRS),
    lanesSab: new SharedArrayBuffer(o.maxPorts * LANE_BYTES),
    frames,
    returns,
    returnCapacity,
    doorbells: o.doorbells,
  };
}

/** connection index's shared lane state */
export function laneViews(l: ThreadsLayout, index: number): PortSharedViews {
  const at = index * LANE_BYTES;
  return {
    laneSet: new Int32Array(l.lanesSab, at, MAX_PAIRS),
    laneCell: new Int32Array(l.lanesSab, at + MAX_PAIRS * 4, 4),
    laneHas: new Uint8Array(l.lanesSab, at + MAX_PAIRS * 4 + 16, MAX_PAIRS),
  };
}

/** thread t's counters row of connection index: port counters, RX and TX frames per queue pair */
export function portRow(l: ThreadsLayout, t: number, index: number): { port: Float64Array; rxq: Float64Array; txq: Float64Array } {
  const at = index * PORT_ROW_WORDS * 8;
  const k = PORT_COUNTER_KEYS.length;
  return {
    port: new Float64Array(l.portRows[t], at, k),
    rxq: new Float64Array(l.portRows[t], at + k * 8, MAX_PAIRS),
    txq: new Float64Array(l.portRows[t], at + (k + MAX_PAIRS) * 8, MAX_PAIRS),
  };
}

/** the thread that serves queue pair p of a connection: spread round-robin, starting at the
 * connection's number, so single-queue guests are spread over the threads too */
export function defaultOwner(index: number, pair: number, threads: number): number {
  return (index + pair) % threads;
}
