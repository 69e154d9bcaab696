// One data-plane thread of the randomized multi-worker test (workers-invariants.test.ts): a Shard
// with synthetic ports, driven by a script of steps (fast-check makes the scripts, and shrinks them
// when the test fails). Connection c's frames are sent by the thread that serves its queue pair 0
// (its TX side); each (connection, RX queue) is delivered to by the thread that serves it, whose
// sink takes frames only while it has credits (RX buffers) and records what it got.
import { parentPort, workerData } from 'node:worker_threads';
import { Shard } from '../../src/workers/shard';
import type { ThreadsLayout } from '../../src/workers/layout';
import { MAX_PAIRS } from '../../src/workers/layout';
import type { EnginePort } from '../../src/engine/port';
import { Frame } from '../../src/datapath/frame';
import { ByteFrames } from '../../src/datapath/byte-frame';
import { native } from '../../src/native';
import { copies } from '../../src/datapath/copy-list';
import { Counters } from '../../src/engine/counters';

/** one step of a thread's script */
export type Step =
  /** sender number src (modulo this thread's senders) sends frames: to connection dst (modulo the
   * others), or broadcast; flow picks the RX queue */
  | { k: 'send'; src: number; frames: { dst: number; bcast: boolean; flow: number }[] }
  /** RX buffers posted: credits[(connection * LANES + lane) % length] for each RX queue this
   * thread serves (0: none), then resourcesAvailable */
  | { k: 'give'; credits: number[] }
  | { k: 'pump' };

export interface Setup {
  layout: ThreadsLayout;
  me: number;
  conns: number;
  script: Step[];
}

const { layout, me, conns, script } = workerData as Setup;
const LANES = 2;
const HDR = 12;
const FRAME_LEN = HDR + 64;

const shard = new Shard(layout, me, { poolBytes: 0, holdTimeMs: 600_000, tickMs: 20, defaultShareLimit: 1 << 30 });
const sw = shard.sw;

/** per (source, destination connection, lane): last sequence number seen; and counts */
const last = new Int32Array(2 * conns * conns * LANES).fill(-1);
let received = 0;
let orderErrors = 0;
let wrongThread = 0;
const firstErrors: string[] = [];

class Sink implements EnginePort {
  credits = new Int32Array(LANES);
  constructor(readonly name: string, readonly index: number) {}
  laneFor(frame: Frame): number {
    return frame.eth[frame.ethOff + 14 + 9] % LANES;
  }
  deliver(frame: Frame, lane: number): boolean {
    if (layout.threads > 0 && new Uint8Array(layout.owner)[this.index * MAX_PAIRS + lane] !== me) {
      wrongThread++;
      return true;
    }
    if (this.credits[lane] <= 0) return false;
    this.credits[lane]--;
    copies.settle();
    const b = new Uint8Array(16);
    frame.read(14, 16, b, 0);
    const src = b[0];
    const seq = (b[1] << 24) | (b[2] << 16) | (b[3] << 8) | b[4];
    // broadcasts and unicasts are checked apart: a unicast held as unknown is not ordered against a
    // later broadcast from the same source (the engine's documented exception, as in one thread)
    const kind = frame.eth[frame.ethOff] === 0xff ? 1 : 0;
    const k = ((kind * conns + src) * conns + this.index) * LANES + lane;
    if (seq <= last[k]) {
      orderErrors++;
      if (firstErrors.length < 5) firstErrors.push(`conn ${this.index} lane ${lane}: from ${src} seq ${seq} after ${last[k]}`);
    }
    last[k] = seq;
    received++;
    return true;
  }
  flush(): void {}
  wantResources(): void {}
}

const sinks: Sink[] = [];
for (let c = 0; c < conns; c++) {
  const s = new Sink(`c${c}`, c);
  sinks.push(s);
  sw.attach(s, {}, c);
}

const mine = (c: number, lane: number): boolean => new Uint8Array(layout.owner)[c * MAX_PAIRS + lane] === me;
const senders = sinks.filter((s) => mine(s.index, 0)).map((s) => s.index);
const seqOf = new Int32Array(conns);
/** what each sender sent: unicast per destination, broadcasts */
const sentTo = new Float64Array(conns);
let broadcasts = 0;
const bytes = new ByteFrames();
const buf = new Uint8Array(FRAME_LEN);

function mac(out: Uint8Array, at: number, c: number): void {
  out[at] = 0x02;
  out[at + 1] = 0;
  out[at + 2] = 0;
  out[at + 3] = 0;
  out[at + 4] = 0;
  out[at + 5] = c + 1;
}

function send(src: number, f: { dst: number; bcast: boolean; flow: number }): void {
  const seq = seqOf[src]++;
  buf.fill(0);
  const e = HDR;
  const bcast = f.bcast;
  let dst = f.dst % (conns - 1);
  if (dst >= src) dst++;
  if (bcast) buf.fill(0xff, e, e + 6);
  else mac(buf, e, dst);
  mac(buf, e + 6, src);
  buf[e + 12] = 0x88;
  buf[e + 13] = 0xb5;
  buf[e + 14] = src;
  buf[e + 15] = (seq >>> 24) & 0xff;
  buf[e + 16] = (seq >>> 16) & 0xff;
  buf[e + 17] = (seq >>> 8) & 0xff;
  buf[e + 18] = seq & 0xff;
  buf[e + 14 + 9] = f.flow & 7; // the flow, which picks the RX queue
  if (bcast) broadcasts++;
  else sentTo[dst]++;
  sw.input(src, bytes.of(buf));
  sw.flush();
}

const doorbell = native.poll(layout.doorbells[me], () => {
  try {
    native.eventfdRead(layout.doorbells[me]);
  } catch {
    /* read already */
  }
  shard.pump();
});
doorbell.start(native.POLL_READABLE);

/** every RX queue this thread serves gets credits (all: plenty) */
function give(credits: number[] | null): void {
  for (const s of sinks) {
    for (let l = 0; l < LANES; l++) {
      if (!mine(s.index, l)) continue;
      const c = credits === null ? 1 << 20 : credits.length === 0 ? 0 : credits[(s.index * LANES + l) % credits.length];
      if (c <= 0) continue;
      s.credits[l] += c;
      sw.resourcesAvailable(s.index, l);
    }
  }
}

let step = 0;
function run(): void {
  for (let k = 0; k < 50 && step < script.length; k++, step++) {
    const st = script[step];
    if (st.k === 'send') {
      if (senders.length === 0) continue;
      const src = senders[st.src % senders.length];
      for (const f of st.frames) send(src, f);
    } else if (st.k === 'give') {
      give(st.credits);
    } else {
      shard.pump();
    }
  }
  if (step < script.length) setImmediate(run);
  else parentPort!.postMessage({ t: 'sent' });
}

parentPort!.on('message', (m: { t: string }) => {
  if (m.t === 'start') {
    // each connection says hello first (a broadcast, as a guest's ARP would): every MAC gets
    // learned, so no unicast waits out the hold time for a destination nobody ever announced
    for (const src of senders) send(src, { dst: 0, bcast: true, flow: 0 });
    setImmediate(run);
  }
  else if (m.t === 'drain') {
    give(null);
    shard.pump();
    sw.tick();
    const fifo = sw.fifo;
    let queued = 0;
    for (let q = 0; q < fifo.queueCount; q++) queued += fifo.qFrames[q];
    parentPort!.postMessage({ t: 'drained', queued, inbound: shard.inbound() });
  } else if (m.t === 'report') {
    const fifo = sw.fifo;
    const problem = fifo.checkInvariants(-1);
    const own = new Counters(layout.maxPorts, layout.counters[me]).snapshot(-1);
    parentPort!.postMessage({
      t: 'report',
      received,
      orderErrors,
      wrongThread,
      firstErrors,
      sentTo: Array.from(sentTo),
      broadcasts,
      problem,
      outstanding: fifo.outstanding,
      queuedOwn: fifo.queuedBlocks().own,
      queuedAll: fifo.queuedBlocks().all,
      // this thread's own counters (the control thread's stats() adds the others')
      dropped: own.dropped,
      drops: own.drops,
      handed: own.handedFrames,
      summed: sw.stats().total.dropped,
      tally: Array.from(shard.tally),
      macs: sw.table.size,
    });
  } else if (m.t === 'close') {
    doorbell.close();
    sw.close();
    parentPort!.close();
  }
});
