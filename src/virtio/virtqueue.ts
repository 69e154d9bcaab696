// The virtqueue as the session and the data path see it: its state behind methods, the ring format
// (split-ring.ts, packed-ring.ts) behind them too. The session configures a queue
// (size, addresses, base, enable, start/stop, fds, reset); the port uses it (availCount, popChain,
// pushUsed, publish, signal, notification control). Neither writes its fields.
import type { GuestMemory } from '../memory/guest-memory';
import type { Segments } from './chain';
import type { DirtyLog } from '../memory/dirty-log';

export interface Virtqueue {
  readonly index: number;
  readonly name: string;
  /** the packed layout (VIRTIO_F_RING_PACKED), else split */
  readonly packed: boolean;
  readonly num: number;
  /** SET_VRING_ADDR seen (translated or not), and its addresses (packed: avail = driver area, used = device area) */
  readonly addrSet: boolean;
  readonly descAddr: number;
  readonly availAddr: number;
  readonly usedAddr: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  /** the most descriptors one chain may have (--max-chain-descriptors) */
  readonly maxChain: number;
  readonly started: boolean;
  readonly enabled: boolean;
  /** set up (size, addresses translated) and not broken */
  readonly ready: boolean;
  /** started, enabled and ready */
  readonly usable: boolean;
  readonly broken: string | null;
  /** the next avail entry to take (packed: index | wrap counter << 15) */
  readonly lastAvail: number;
  /** the next used entry to write (packed: index | wrap counter << 15) */
  readonly usedIdx: number;
  readonly kickFd: number;
  readonly callFd: number;
  readonly errFd: number;

  // ---- configuration (the session)
  setNum(num: number): void;
  setAddresses(desc: number, used: number, avail: number): void;
  /** SET_VRING_BASE's value (checked: throws when it does not fit the ring format) */
  setBase(base: number): void;
  /** GET_VRING_BASE's value */
  getBase(): number;
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
  /**
   * Reads the next k available entries and the first descriptor of each, changing nothing, in a
   * loop that does nothing else: their cache misses (the guest's CPU wrote them) then overlap
   * instead of coming one per popChain(). Returns a sum of what it read (to keep the reads).
   */
  touch(k: number): number;
  pushUsed(head: number, len: number): void;
  publish(): void;
  signal(write: (fd: number) => void): void;
  enableNotify(): void;
  enableNotifyBeyond(): boolean;
  disableNotify(): void;
}
