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
  /** polling ends: re-enable notifications and look again; true when work appeared (keep polling) */
  pollEnd(): boolean;
}

/** the loops polling now: one idle callback per thread serves them all */
const active: PollLoop[] = [];
let idleSet = false;
function turn(): void {
  for (let i = active.length - 1; i >= 0; i--) active[i].turn();
}

export class PollLoop {
  private items: Pollable[] = [];
  private last = new Float64Array(16);
  private count = 0;
  private running = false;

  /** one turn of the event loop: one batch per polled ring (called by the idle spinner) */
  turn(): void {
    const now = performance.now();
    const limit = this.pollUs / 1000;
    for (let i = 0; i < this.count; ) {
      const p = this.items[i];
      let keep: boolean;
      try {
        if (p.pollOnce()) {
          this.last[i] = now;
          keep = true;
        } else if (now - this.last[i] < limit) {
          keep = true;
        } else {
          keep = p.pollEnd();
          if (keep) this.last[i] = now;
        }
      } catch {
        keep = false; // the port reports its own errors; a throwing pollable is not polled again
      }
      if (keep) {
        i++;
      } else {
        this.count--;
        this.items[i] = this.items[this.count];
        this.last[i] = this.last[this.count];
        this.items.length = this.count;
      }
    }
    if (this.count === 0) this.stop();
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
        this.count--;
        this.items[i] = this.items[this.count];
        this.last[i] = this.last[this.count];
        this.items.length = this.count;
        break;
      }
    }
    if (this.count === 0) this.stop();
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
