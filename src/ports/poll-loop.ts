// Adaptive polling (--poll-us N): after a batch, a ring that had work is polled on every turn of the
// event loop until it has had no new work for N µs; then its notifications are re-enabled, it is
// checked once more (a chain may have come in before the guest saw the flag), and it sleeps on its
// kick eventfd again. The spinner is the addon's uv_idle handle: while it runs, libuv does not block
// for I/O but still runs every socket, timer and kick callback each turn, so control messages wait
// for one batch at most. As the kernel's busy-poll and OVS-DPDK's PMD sleep do, the cost is CPU:
// a polled ring keeps one core busy for N µs after its last frame.
import { performance } from 'node:perf_hooks';
import { native } from '../native';

export interface Pollable {
  /** one batch; true when it found work */
  pollOnce(): boolean;
  /** work is waiting (a cheap look: the avail index) */
  hasWork(): boolean;
  /** polling ends: re-enable notifications and look again; true when work appeared (keep polling) */
  pollEnd(): boolean;
}

/**
 * How long one turn of the polling keeps taking batches (and, between them, looks for work) before
 * it gives the turn back: each turn costs an epoll_wait and a callback into JavaScript, which are
 * most of a turn when a batch is one or two frames. The event loop still runs at least this often
 * (plus one batch).
 */
export const SPIN_US = 20;

/** the loops polling now: one idle callback per thread serves them all */
const active: PollLoop[] = [];
let idleSet = false;

/** some polled ring of some loop has work waiting */
function anyWaiting(): boolean {
  for (let i = active.length - 1; i >= 0; i--) if (active[i].waiting()) return true;
  return false;
}

/**
 * One idle callback: batches on every polled ring, again and again, for up to SPIN_US — a lap of a
 * frame through the switch and back (a request and its answer) then costs no turn of the event
 * loop (epoll_wait, timers, a call into JavaScript: several µs each). Between batches with no work
 * it spins on the cheap check (the avail indices). After SPIN_US it gives the turn back, so
 * sockets, timers and kicks wait at most SPIN_US plus one batch.
 */
function turn(): void {
  const end = performance.now() + SPIN_US / 1000;
  for (;;) {
    for (let i = active.length - 1; i >= 0; i--) active[i].turn();
    if (active.length === 0) return;
    while (!anyWaiting()) {
      if (performance.now() >= end) return;
    }
    if (performance.now() >= end) return;
  }
}

export class PollLoop {
  private items: Pollable[] = [];
  private last = new Float64Array(16);
  private count = 0;
  private running = false;

  /** true when one of the polled rings has work waiting */
  waiting(): boolean {
    for (let i = 0; i < this.count; i++) if (this.items[i].hasWork()) return true;
    return false;
  }

  /** one turn of the event loop: one batch per polled ring (called by the idle spinner); true
   * when a ring had work */
  turn(): boolean {
    const now = performance.now();
    let work = false;
    const limit = this.pollUs / 1000;
    for (let i = 0; i < this.count; ) {
      const p = this.items[i];
      let keep: boolean;
      try {
        if (p.pollOnce()) {
          this.last[i] = now;
          keep = true;
          work = true;
        } else if (now - this.last[i] < limit) {
          keep = true;
        } else {
          keep = p.pollEnd();
          if (keep) this.last[i] = now;
        }
      } catch {
        keep = false; // the port reports its own errors; a throwing pollable is not polled again
      }
      if (keep) i++;
      else this.removeAt(i);
    }
    if (this.count === 0) this.stop();
    return work;
  }

  constructor(readonly pollUs: number) {
    if (!(pollUs > 0)) throw new RangeError('PollLoop needs pollUs > 0');
  }

  /** p had work just now: poll it until it has had none for pollUs. */
  keep(p: Pollable): void {
    const now = performance.now();
    for (let i = 0; i < this.count; i++) {
      if (this.items[i] === p) {
        this.last[i] = now;
        return;
      }
    }
    if (this.count === this.last.length) {
      const grown = new Float64Array(this.last.length * 2);
      grown.set(this.last);
      this.last = grown;
    }
    this.items[this.count] = p;
    this.last[this.count] = now;
    this.count++;
    if (!this.running) {
      this.running = true;
      active.push(this);
      if (!idleSet) {
        idleSet = true;
        native.setIdle(turn);
      }
      if (active.length === 1) native.idleStart();
    }
  }

  /** p goes away (ring stopped, port closed): no more calls for it. */
  drop(p: Pollable): void {
    for (let i = 0; i < this.count; i++) {
      if (this.items[i] === p) {
        this.removeAt(i);
        break;
      }
    }
    if (this.count === 0) this.stop();
  }

  /** swap-remove entry i (order does not matter: each gets one batch a turn) */
  private removeAt(i: number): void {
    this.count--;
    this.items[i] = this.items[this.count];
    this.last[i] = this.last[this.count];
    this.items.length = this.count;
  }

  get polling(): number {
    return this.count;
  }

  private stop(): void {
    if (!this.running) return;
    this.running = false;
    const k = active.indexOf(this);
    if (k >= 0) active.splice(k, 1);
    if (active.length === 0) native.idleStop();
  }
}
