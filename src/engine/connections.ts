// The connection table: the ports the engine delivers to, indexed by connection number, with the
// per-connection options (share limit, static MAC) and the bookkeeping the data path needs without
// allocating: which ports were delivered to since the last flush (dirty list), and which ports were
// asked for a kick (wantResources(true)) because frames wait for them.

import type { EnginePort } from './port';
import type { Frame } from '../datapath/frame';

export class ConnectionTable {
  readonly ports: (EnginePort | null)[];
  /** attached connection numbers, compact, in attach order: the flood set is this minus the source */
  readonly attached: Int32Array;
  attachedCount = 0;
  /** per connection: most blocks its numbered queue may hold */
  readonly shareLimit: Int32Array;
  /** per connection: static MAC key, or -1 */
  readonly staticKey: Float64Array;
  /** per connection and RX queue (index * lanes + lane): wantResources(true) is in force */
  readonly wanting: Uint8Array;
  /** per connection: the port has laneFor() (several RX queues) */
  readonly laned: Uint8Array;
  private readonly dirty: Uint8Array;
  private readonly dirtyList: Int32Array;
  private dirtyCount = 0;

  /** lanes: RX queues per connection the engine keeps apart (the switch's queue count) */
  constructor(readonly maxPorts: number, readonly lanes = 1) {
    this.ports = new Array<EnginePort | null>(maxPorts).fill(null);
    this.attached = new Int32Array(maxPorts);
    this.shareLimit = new Int32Array(maxPorts);
    this.staticKey = new Float64Array(maxPorts).fill(-1);
    this.wanting = new Uint8Array(maxPorts * lanes);
    this.laned = new Uint8Array(maxPorts);
    this.dirty = new Uint8Array(maxPorts);
    this.dirtyList = new Int32Array(maxPorts);
  }

  /** lowest free connection number, or -1 */
  freeIndex(): number {
    for (let i = 0; i < this.maxPorts; i++) if (this.ports[i] === null) return i;
    return -1;
  }

  add(index: number, port: EnginePort, shareLimit: number): void {
    this.ports[index] = port;
    this.shareLimit[index] = shareLimit;
    this.staticKey[index] = -1;
    this.wanting.fill(0, index * this.lanes, (index + 1) * this.lanes);
    this.laned[index] = typeof port.laneFor === 'function' ? 1 : 0;
    this.attached[this.attachedCount++] = index;
  }

  remove(index: number): void {
    this.ports[index] = null;
    this.staticKey[index] = -1;
    this.wanting.fill(0, index * this.lanes, (index + 1) * this.lanes);
    this.laned[index] = 0;
    let w = 0;
    for (let r = 0; r < this.attachedCount; r++) if (this.attached[r] !== index) this.attached[w++] = this.attached[r];
    this.attachedCount = w;
    if (this.dirty[index] !== 0) {
      this.dirty[index] = 0;
      w = 0;
      for (let r = 0; r < this.dirtyCount; r++) if (this.dirtyList[r] !== index) this.dirtyList[w++] = this.dirtyList[r];
      this.dirtyCount = w;
    }
  }

  markDirty(index: number): void {
    if (this.dirty[index] === 0) {
      this.dirty[index] = 1;
      this.dirtyList[this.dirtyCount++] = index;
    }
  }

  /** port.flush() on every port delivered to since the last call */
  flushDirty(): void {
    const n = this.dirtyCount;
    this.dirtyCount = 0;
    for (let k = 0; k < n; k++) {
      const i = this.dirtyList[k];
      this.dirty[i] = 0;
      (this.ports[i] as EnginePort).flush();
    }
  }

  /** flush one port now if it is dirty (it stays out of the next flushDirty) */
  flushOne(index: number): void {
    if (this.dirty[index] === 0) return;
    this.dirty[index] = 0;
    let w = 0;
    for (let r = 0; r < this.dirtyCount; r++) if (this.dirtyList[r] !== index) this.dirtyList[w++] = this.dirtyList[r];
    this.dirtyCount = w;
    (this.ports[index] as EnginePort).flush();
  }

  /** ask the port for a kick on RX queue lane (or stop asking), calling it only on a change */
  want(index: number, lane: number, want: boolean): void {
    const w = want ? 1 : 0;
    const k = index * this.lanes + lane;
    if (this.wanting[k] === w) return;
    this.wanting[k] = w;
    (this.ports[index] as EnginePort).wantResources(want, lane);
  }

  /** RX queue of connection index that frame goes to (0 for single-queue ports; a bad answer is 0) */
  laneFor(index: number, frame: Frame): number {
    if (this.laned[index] === 0) return 0;
    const l = (this.ports[index] as Required<EnginePort>).laneFor(frame);
    return l >= 0 && l < this.lanes ? l | 0 : 0;
  }

  /** some RX queue of connection index is asked for a kick */
  wantingAny(index: number): boolean {
    for (let l = 0; l < this.lanes; l++) if (this.wanting[index * this.lanes + l] !== 0) return true;
    return false;
  }
}
