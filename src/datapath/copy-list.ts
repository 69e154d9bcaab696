// The batched copy machinery: memory areas known to the addon by id, and one list of copies per
// thread that the addon runs in a single call.
//
//   register(view) ──► id          once, when a guest window is mapped or a store/scratch is made
//   record(srcArea, srcOff, dstArea, dstOff, len)   per copy, bounds-checked here first
//   run()                          one addon call for the whole list, in order; the addon checks
//                                  every range again against the registered area and refuses
//                                  (skips and counts) instead of faulting
//
// Order is the contract: a copy sees the bytes of every copy recorded before it, so a frame can be
// stored into a block and drained from it in the same batch. JavaScript must not read bytes that a
// pending copy writes (call run() first: `settle()`), and must not reuse a source buffer until the
// copies reading it have run. Guest buffers are safe by construction — a TX descriptor goes back to
// the guest (used ring) only after the batch ran, an RX one becomes visible only then.
//
// Staging: small bytes the data path makes itself (a completed checksum, the headers of a TSO
// segment) are written into the staging area and copied from there in list order; the staging
// area is reused from the start after every run().
import { native } from '../native';
import type { DirtyLog } from '../memory/dirty-log';

/** words per copy entry: source area, source offset, destination area, destination offset, length */
const ENTRY = 5;
/** copies one run() takes at most; a full list runs early (order is kept either way) */
export const COPY_LIST_ENTRIES = 16384;
/** staging bytes between two runs */
export const STAGING_BYTES = 256 * 1024;

export class CopyList {
  private readonly list = new Uint32Array(COPY_LIST_ENTRIES * ENTRY);
  private n = 0;
  /** length in bytes of each live area, by id (0: no such area) */
  private areaLen = new Float64Array(1024);
  /** live migration: the dirty log of each guest window being logged (by id), and the
   * guest-physical address of the window's first byte */
  private areaLog: (DirtyLog | null)[] = new Array<DirtyLog | null>(1024).fill(null);
  private areaGpa = new Float64Array(1024);
  /** areas with a log: when 0, run() does no logging work at all */
  private logged = 0;
  /** copies run / refused by the addon (refusals mean a TypeScript bounds check is missing) */
  readonly tally = new Float64Array(2);
  readonly staging = new Uint8Array(STAGING_BYTES);
  readonly stagingArea: number;
  private stagingUsed = 0;
  /** called once when the addon refuses copies (a bug: the TypeScript checks should have caught it) */
  onRefused: (count: number) => void = (count) => {
    process.emitWarning(`elastic-vhost: the native copy runner refused ${count} out-of-range copies`);
  };

  /** called after every run (the memory layer looks for contained guest-memory faults) */
  afterRun: () => void = () => {};

  constructor() {
    this.attach();
    this.stagingArea = this.register(this.staging);
  }

  /** Makes this the list the addon runs (the constructor does; tests that drive the addon directly
   * call it again afterwards). */
  attach(): void {
    native.setCopyList(this.list);
  }

  /** Registers the bytes of view (a Uint8Array over a mapping, the store, a scratch buffer). */
  register(view: Uint8Array): number {
    const id = native.registerArea(view);
    if (id >= this.areaLen.length) {
      let size = this.areaLen.length;
      while (size <= id) size *= 2;
      const grown = new Float64Array(size);
      grown.set(this.areaLen);
      this.areaLen = grown;
      const gpa = new Float64Array(size);
      gpa.set(this.areaGpa);
      this.areaGpa = gpa;
      while (this.areaLog.length < size) this.areaLog.push(null);
    }
    this.areaLen[id] = view.byteLength;
    return id;
  }

  /** Forgets an area: copies already recorded for it are refused; run() first to keep them. */
  unregister(id: number): void {
    if (id <= 0 || id >= this.areaLen.length) return;
    this.areaLen[id] = 0;
    this.setAreaLog(id, null, 0);
    native.unregisterArea(id);
  }

  /**
   * Live migration: copies into area id are marked in log (at gpa + destination offset) after
   * they ran, until this is called again with null. gpa: guest-physical address of byte 0.
   */
  setAreaLog(id: number, log: DirtyLog | null, gpa: number): void {
    if (id <= 0 || id >= this.areaLen.length) return;
    if ((this.areaLog[id] !== null) !== (log !== null)) this.logged += log !== null ? 1 : -1;
    this.areaLog[id] = log;
    this.areaGpa[id] = gpa;
  }

  /** Bytes JavaScript wrote itself into area id at [off, off + len): marked if the area is logged. */
  dirty(area: number, off: number, len: number): void {
    if (this.logged === 0) return;
    const lg = this.areaLog[area];
    if (lg !== null && lg !== undefined) lg.mark(this.areaGpa[area] + off, len);
  }

  /** some guest window is being logged (live migration in progress) */
  get logging(): boolean {
    return this.logged > 0;
  }

  areaLength(id: number): number {
    return id > 0 && id < this.areaLen.length ? this.areaLen[id] : 0;
  }

  get pending(): number {
    return this.n;
  }

  /**
   * Records one copy. Returns false (recording nothing) when a range is outside its area: the
   * caller counts the frame as dropped. Zero-length copies are not recorded.
   */
  record(srcArea: number, srcOff: number, dstArea: number, dstOff: number, len: number): boolean {
    const al = this.areaLen;
    if (
      len < 0 || srcOff < 0 || dstOff < 0 ||
      srcArea <= 0 || srcArea >= al.length || dstArea <= 0 || dstArea >= al.length ||
      srcOff + len > al[srcArea] || dstOff + len > al[dstArea]
    ) {
      return false;
    }
    if (len === 0) return true;
    // A full list runs early. Staging is not reset then: bytes staged for a copy not recorded yet
    // must stay where they are.
    if (this.n === COPY_LIST_ENTRIES) this.runList();
    const e = this.n * ENTRY;
    const l = this.list;
    l[e] = srcArea;
    l[e + 1] = srcOff;
    l[e + 2] = dstArea;
    l[e + 3] = dstOff;
    l[e + 4] = len;
    this.n++;
    return true;
  }

  /** Room for len staged bytes: their offset in `staging` (the list runs first if it is full).
   * Write them, then record the copies that read them, before anything else can run the list. */
  stage(len: number): number {
    if (this.stagingUsed + len > STAGING_BYTES) this.run();
    const at = this.stagingUsed;
    this.stagingUsed = (at + len + 7) & ~7;
    return at;
  }

  /** Runs every recorded copy, in order; staging starts over. */
  run(): void {
    this.stagingUsed = 0;
    this.runList();
  }

  private runList(): void {
    const n = this.n;
    if (n === 0) return;
    this.n = 0;
    const refused = native.runCopies(n);
    if (this.logged > 0) this.logCopies(n);
    this.tally[0] += n - refused;
    if (refused !== 0) {
      this.tally[1] += refused;
      this.onRefused(refused);
    }
    this.afterRun();
  }

  /** After the copies ran: their destinations in logged guest windows are marked dirty. */
  private logCopies(n: number): void {
    const l = this.list;
    const logs = this.areaLog;
    for (let e = 0; e < n * ENTRY; e += ENTRY) {
      const dst = l[e + 2];
      const lg = logs[dst];
      if (lg !== null && lg !== undefined) lg.mark(this.areaGpa[dst] + l[e + 3], l[e + 4]);
    }
  }

  /** Same as run(): named for the callers that need memory to be up to date before they read it. */
  settle(): void {
    if (this.n !== 0 || this.stagingUsed !== 0) this.run();
  }

  get copiesRun(): number {
    return this.tally[0];
  }

  get copiesRefused(): number {
    return this.tally[1];
  }
}

/** The one copy list of this thread: every port and the engine record into it. */
export const copies = new CopyList();
