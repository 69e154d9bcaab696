// The virtqueue as the session and the data path see it: its state behind methods, the ring format
// (split today; packed would implement the same) behind them too. The session configures a queue
// (size, addresses, base, enable, start/stop, fds, reset); the port uses it (availCount, popChain,
// pushUsed, publish, signal, notification control). Neither writes its fields.
import type { GuestMemory } from '../memory/guest-memory';
import type { Segments } from './chain';
import type { DirtyLog } from '../memory/dirty-log';

export interface Virtqueue {
  readonly index: number;
  readonly name: string;
  readonly num: number;
  readonly started: boolean;
  readonly enabled: boolean;
  /** set up (size, addresses translated) and not broken */
  readonly ready: boolean;
  /** started, enabled and ready */
  readonly usable: boolean;
  readonly broken: string | null;
  readonly lastAvail: number;
  readonly usedIdx: number;
  readonly callFd: number;
  readonly errFd: number;

  // ---- configuration (the session)
  setNum(num: number): void;
  setAddresses(desc: number, used: number, avail: number): void;
  setBase(base: number): void;
  setFeatures(eventIdx: boolean, indirect: boolean): void;
  enable(on: boolean): void;
  start(): void;
  stop(): void;
  /** translates the ring addresses against the memory table; throws when they are not inside it */
  setup(mem: GuestMemory): void;
  detachViews(): void;
  setKickFd(fd: number): number;
  setCallFd(fd: number): number;
  setErrFd(fd: number): number;
  markBroken(reason: string): void;
  /** SET_VRING_ADDR with VHOST_VRING_F_LOG: the guest-physical address the used ring is logged at
   * (-1: flag not set; the used ring's own address is logged then) */
  setLogAddress(gpa: number): void;
  /** live migration: every write of the ring into guest memory is marked in log (null: off) */
  setLog(log: DirtyLog | null): void;
  reset(): void;

  // ---- data path (the port)
  /** chains available and not taken yet; -1 when that count shows the ring broken */
  availCount(): number;
  /** the next available chain appended to segs: its head, or BROKEN */
  popChain(mem: GuestMemory, segs: Segments, writable: boolean): number;
  unpop(n: number): void;
  pushUsed(head: number, len: number): void;
  publish(): void;
  signal(write: (fd: number) => void): void;
  enableNotify(): void;
  enableNotifyBeyond(): boolean;
  disableNotify(): void;
}
