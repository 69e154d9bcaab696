// The classifier — the patent's first test: can the destination connection be determined?
//
// A MAC address is handled as two integers, hi (first 2 bytes) and lo (last 4 bytes), and stored as
// one double key = hi * 2^32 + lo (48 bits, exact). The MAC table is open addressing with linear
// probing over typed arrays, so learning and lookup allocate nothing and never create a Map entry or
// a string per frame. Deletion shifts the following entries back (no tombstones), so a table that
// sees constant churn (VMs coming and going, aging) does not slow down.
//
// Allocation: V8 boxes a double (and an integer beyond 31 bits) passed to a function that is not
// inlined. So the data path passes a MAC as hi and lo where lo is the *signed* int32 of the last
// four bytes, and time is read from a shared Float64Array cell (`time[0]`, ms) instead of being
// passed as an argument.

import { ETH_DST, ETH_SRC } from '../datapath/layout';
import { DEFAULTS } from '../defaults';

/** Result of classify(): a connection index (>= 0) or one of these two. */
export type Destination = number;
/** broadcast or multicast: every other connection, each treated as its own destination */
export const DESTINATION_FLOOD = -1;
/** unicast to a MAC that is not (or no longer) in the table */
export const DESTINATION_UNKNOWN = -2;

/** learn() results */
export const LEARN_REFRESHED = 0;
/** new entry, or the MAC moved to another connection, or its old entry had aged out */
export const LEARN_NEW = 1;
/** the MAC is static on another connection, or the table is full */
export const LEARN_REFUSED = -1;

const EMPTY = -1;
const TWO_32 = 4294967296;
const FLAG_STATIC = 1;

export const DST_MAC_OFFSET = ETH_DST;
export const SRC_MAC_OFFSET = ETH_SRC;

export function macHi(buf: Uint8Array, off: number): number {
  return (buf[off] << 8) | buf[off + 1];
}
/** last four bytes as a signed int32 (see the note on allocation above) */
export function macLo(buf: Uint8Array, off: number): number {
  return (buf[off + 2] << 24) | (buf[off + 3] << 16) | (buf[off + 4] << 8) | buf[off + 5];
}
/** the 48-bit MAC as one exact double */
export function macKey(hi: number, lo: number): number {
  return hi * TWO_32 + (lo >>> 0);
}
export function keyHi(key: number): number {
  return Math.floor(key / TWO_32);
}
export function keyLo(key: number): number {
  return (key % TWO_32) | 0;
}
/** the group bit (I/G) of the first octet: broadcast and multicast */
export function isGroupHi(hi: number): boolean {
  return (hi & 0x100) !== 0;
}

/** "52:54:00:12:34:56" (or with '-') → key. Throws on anything else. Not for the data path. */
export function parseMac(text: string): number {
  const m = /^([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})$/i.exec(text);
  if (m === null) throw new Error(`not a MAC address: ${JSON.stringify(text)}`);
  let key = 0;
  for (let i = 1; i <= 6; i++) key = key * 256 + parseInt(m[i], 16);
  return key;
}
export function formatMac(key: number): string {
  const parts: string[] = [];
  for (let i = 5; i >= 0; i--) parts.push((Math.floor(key / 2 ** (8 * i)) % 256).toString(16).padStart(2, '0'));
  return parts.join(':');
}

function hashOf(hi: number, lo: number, shift: number): number {
  return Math.imul(lo ^ Math.imul(hi, 0x85ebca6b), 0x9e3779b1) >>> shift;
}

/** header words of a shared table: [lock, seq, entries, changes] */
const H_LOCK = 0;
const H_SEQ = 1;
const H_ENTRIES = 2;
const H_CHANGES = 3;
const HEADER_BYTES = 64;

function roundCapacity(capacity: number): number {
  let bits = 4;
  while (1 << bits < capacity) bits++;
  return 1 << bits;
}

/**
 * The MAC table. With `shared` (a SharedArrayBuffer of sharedBytes(capacity)) it lives in shared
 * memory and every data-plane thread uses the same one: changes (a new MAC, a move, removal,
 * ageing) take a spin lock and make a sequence count odd while they run; lookups take no lock and
 * read again when the count moved under them (a seqlock), so a reader never sees a half-moved
 * entry. Refreshing a known MAC's last-seen time is a plain store. In shared mode lookup() does
 * not remove aged entries itself (that is a change): expire() does, from one thread.
 */
export class MacTable {
  readonly capacity: number;
  private readonly mask: number;
  private readonly shift: number;
  private readonly maxEntries: number;
  private readonly keys: Float64Array;
  private readonly homes: Int32Array;
  private readonly ports: Int32Array;
  private readonly seen: Float64Array;
  private readonly flags: Uint8Array;
  /** [lock, seq, entries, changes] (in shared memory for a shared table) */
  private readonly hdr: Int32Array;
  /** the table is shared with other threads: lock and sequence count in force */
  readonly shared: boolean;
  readonly sab: SharedArrayBuffer | null;

  /** bytes of a shared table of this many slots */
  static sharedBytes(capacity: number): number {
    const cap = roundCapacity(capacity);
    return HEADER_BYTES + cap * (8 + 4 + 4 + 8 + 1) + 8;
  }
  /** after learn() returned LEARN_NEW: the connection the MAC moved from (a migrated or moved
   * VM), or -1 when it was new or aged out */
  movedFrom = -1;

  /**
   * capacity: slots, rounded up to a power of two; at most 3/4 of them are filled.
   * time: the cell holding "now" in ms (shared with the switch); the table only reads it.
   */
  constructor(
    capacity = DEFAULTS.macTableSize,
    readonly ageMs = DEFAULTS.macAgeS * 1000,
    readonly time: Float64Array = new Float64Array(1),
    /** shared memory to live in (made by another thread already when `attach`) */
    shared: SharedArrayBuffer | null = null,
    attach = false,
  ) {
    this.capacity = roundCapacity(capacity);
    const bits = 31 - Math.clz32(this.capacity);
    this.mask = this.capacity - 1;
    this.shift = 32 - bits;
    this.maxEntries = (this.capacity * 3) >>> 2;
    const cap = this.capacity;
    this.shared = shared !== null;
    this.sab = shared;
    if (shared === null) {
      this.hdr = new Int32Array(4);
      this.keys = new Float64Array(cap);
      this.homes = new Int32Array(cap);
      this.ports = new Int32Array(cap);
      this.seen = new Float64Array(cap);
      this.flags = new Uint8Array(cap);
    } else {
      if (shared.byteLength < MacTable.sharedBytes(cap)) throw new RangeError('shared MAC table buffer too small');
      let o = 0;
      this.hdr = new Int32Array(shared, o, 4);
      o += HEADER_BYTES;
      this.keys = new Float64Array(shared, o, cap);
      o += 8 * cap;
      this.seen = new Float64Array(shared, o, cap);
      o += 8 * cap;
      this.homes = new Int32Array(shared, o, cap);
      o += 4 * cap;
      this.ports = new Int32Array(shared, o, cap);
      o += 4 * cap;
      this.flags = new Uint8Array(shared, o, cap);
    }
    if (!attach) this.keys.fill(EMPTY);
  }

  get size(): number {
    return this.hdr[H_ENTRIES];
  }

  /** how many times a MAC was added or moved (another thread holding frames for an unknown
   * destination looks again when this changed) */
  get changes(): number {
    return Atomics.load(this.hdr, H_CHANGES);
  }

  private lock(): void {
    if (!this.shared) return;
    const h = this.hdr;
    while (Atomics.compareExchange(h, H_LOCK, 0, 1) !== 0) {
      /* a change of another thread: a few hundred nanoseconds */
    }
    Atomics.add(h, H_SEQ, 1);
  }

  private unlock(): void {
    if (!this.shared) return;
    const h = this.hdr;
    Atomics.add(h, H_SEQ, 1);
    Atomics.store(h, H_LOCK, 0);
  }

  private find(hi: number, lo: number): number {
    const key = hi * TWO_32 + (lo >>> 0);
    let i = hashOf(hi, lo, this.shift);
    for (;;) {
      const k = this.keys[i];
      if (k === key) return i;
      if (k === EMPTY) return -1;
      i = (i + 1) & this.mask;
    }
  }

  private aged(slot: number): boolean {
    return this.flags[slot] === 0 && this.time[0] - this.seen[slot] > this.ageMs;
  }

  /** the connection of this unicast MAC, or -1 (unknown or aged out — an aged entry is removed) */
  lookup(hi: number, lo: number): number {
    if (this.shared) return this.lookupShared(hi, lo);
    const slot = this.find(hi, lo);
    if (slot < 0) return -1;
    if (this.aged(slot)) {
      this.removeSlot(slot);
      return -1;
    }
    return this.ports[slot];
  }

  private lookupShared(hi: number, lo: number): number {
    const h = this.hdr;
    for (;;) {
      const s1 = Atomics.load(h, H_SEQ);
      if ((s1 & 1) === 0) {
        const slot = this.find(hi, lo);
        const port = slot < 0 || this.aged(slot) ? -1 : this.ports[slot];
        if (Atomics.load(h, H_SEQ) === s1) return port;
      }
    }
  }

  learn(hi: number, lo: number, port: number): number {
    if (!this.shared) return this.learnHere(hi, lo, port);
    // known on this connection and fresh: refresh without the lock (the common case, per frame)
    const h = this.hdr;
    const s1 = Atomics.load(h, H_SEQ);
    if ((s1 & 1) === 0) {
      const slot = this.find(hi, lo);
      if (slot >= 0 && this.ports[slot] === port && (this.flags[slot] !== 0 || !this.aged(slot))) {
        if (this.flags[slot] === 0) this.seen[slot] = this.time[0];
        if (Atomics.load(h, H_SEQ) === s1) {
          this.movedFrom = -1;
          return LEARN_REFRESHED;
        }
      }
    }
    this.lock();
    const r = this.learnHere(hi, lo, port);
    // counted before the unlock: a reader that finds the new entry sees the count moved too
    if (r === LEARN_NEW) Atomics.add(h, H_CHANGES, 1);
    this.unlock();
    return r;
  }

  private learnHere(hi: number, lo: number, port: number): number {
    const now = this.time[0];
    const slot = this.find(hi, lo);
    this.movedFrom = -1;
    if (slot >= 0) {
      if (this.flags[slot] !== 0) return this.ports[slot] === port ? LEARN_REFRESHED : LEARN_REFUSED;
      const wasAged = now - this.seen[slot] > this.ageMs;
      this.seen[slot] = now;
      if (this.ports[slot] === port && !wasAged) return LEARN_REFRESHED;
      if (this.ports[slot] !== port) this.movedFrom = this.ports[slot];
      this.ports[slot] = port;
      return LEARN_NEW;
    }
    return this.insert(hi, lo, port, 0) ? LEARN_NEW : LEARN_REFUSED;
  }

  /** a configured MAC: never ages, not learnable on another connection */
  setStatic(hi: number, lo: number, port: number): boolean {
    this.lock();
    const slot = this.find(hi, lo);
    let ok = true;
    if (slot >= 0) {
      this.ports[slot] = port;
      this.flags[slot] = FLAG_STATIC;
    } else {
      ok = this.insert(hi, lo, port, FLAG_STATIC);
    }
    if (ok) Atomics.add(this.hdr, H_CHANGES, 1);
    this.unlock();
    return ok;
  }

  remove(hi: number, lo: number): boolean {
    this.lock();
    const slot = this.find(hi, lo);
    if (slot >= 0) this.removeSlot(slot);
    this.unlock();
    return slot >= 0;
  }

  /** forget every MAC (learned or static) of one connection; returns how many */
  removePort(port: number): number {
    return this.sweep((slot) => this.ports[slot] === port);
  }

  /** remove aged entries; returns how many */
  expire(): number {
    return this.sweep((slot) => this.aged(slot));
  }

  /** for tests and stats (control path); seen: when the MAC was last learned or refreshed, ms */
  *entriesOf(): IterableIterator<{ key: number; port: number; isStatic: boolean; seen: number }> {
    for (let i = 0; i < this.capacity; i++) {
      if (this.keys[i] !== EMPTY) yield { key: this.keys[i], port: this.ports[i], isStatic: this.flags[i] !== 0, seen: this.seen[i] };
    }
  }

  private insert(hi: number, lo: number, port: number, flags: number): boolean {
    if (this.hdr[H_ENTRIES] >= this.maxEntries) return false;
    const home = hashOf(hi, lo, this.shift);
    let i = home;
    while (this.keys[i] !== EMPTY) i = (i + 1) & this.mask;
    this.keys[i] = hi * TWO_32 + (lo >>> 0);
    this.homes[i] = home;
    this.ports[i] = port;
    this.seen[i] = this.time[0];
    this.flags[i] = flags;
    this.hdr[H_ENTRIES]++;
    return true;
  }

  // Backward-shift deletion: move later members of the probe run into the hole when their home
  // slot is not cyclically inside (hole, position].
  private removeSlot(hole: number): void {
    let j = hole;
    for (;;) {
      j = (j + 1) & this.mask;
      if (this.keys[j] === EMPTY) break;
      const home = this.homes[j];
      const inside = hole <= j ? hole < home && home <= j : hole < home || home <= j;
      if (inside) continue;
      this.keys[hole] = this.keys[j];
      this.homes[hole] = home;
      this.ports[hole] = this.ports[j];
      this.seen[hole] = this.seen[j];
      this.flags[hole] = this.flags[j];
      hole = j;
    }
    this.keys[hole] = EMPTY;
    this.hdr[H_ENTRIES]--;
  }

  // Control path only (a closure per call). After a removal the slot is examined again, since
  // removeSlot may have shifted a later entry into it.
  private sweep(match: (slot: number) => boolean): number {
    let removed = 0;
    this.lock();
    for (let i = 0; i < this.capacity; ) {
      if (this.keys[i] !== EMPTY && match(i)) {
        this.removeSlot(i);
        removed++;
      } else {
        i++;
      }
    }
    this.unlock();
    return removed;
  }
}

/** The first test, for the Ethernet frame at eth[off): destination connection, flood set, or unknown. */
export function classify(table: MacTable, buf: Uint8Array, off: number): Destination {
  const hi = macHi(buf, off + DST_MAC_OFFSET);
  if (isGroupHi(hi)) return DESTINATION_FLOOD;
  const port = table.lookup(hi, macLo(buf, off + DST_MAC_OFFSET));
  return port >= 0 ? port : DESTINATION_UNKNOWN;
}
