// The dirty-page log of live migration (docs/interop/vhost-user.rst, "Migration"): one bit per
// 4 KiB page of guest-physical memory, in memory the front-end shares with SET_LOG_BASE (an fd,
// a size and an offset). While VHOST_F_LOG_ALL is negotiated, every byte the back-end writes into
// guest memory has its page's bit set, after the write, with an atomic OR (QEMU reads and clears
// the bits concurrently):
//
//   page = gpa / 4096;  log[page / 8] |= 1 << (page % 8)
//
// Writers: the copy list marks the destination of every copy into a guest window after it ran
// (RX payload), the RX path marks the virtio-net header bytes it writes itself, the rings mark
// their used ring (elements, index, flags, avail_event) when they write it.
import { native } from '../native';

export const LOG_PAGE = 4096;

export class DirtyLog {
  /** the log bytes: bit p of byte p >> 3 is page p */
  private readonly bits: Uint8Array;
  private readonly mapping: ArrayBuffer;
  private unmapped = false;
  /** pages marked, and writes that fell beyond the log's end (the front-end sized it too small) */
  readonly tally = new Float64Array(2);

  /**
   * Maps [0, offset + size) of fd (as DPDK does: the offset need not be page aligned) and keeps
   * [offset, offset + size) as the log. Takes ownership of fd: it is closed here, mapped or not.
   */
  constructor(fd: number, readonly size: number, readonly offset: number) {
    try {
      this.mapping = native.mmap(fd, offset + size, 0);
    } finally {
      native.close(fd);
    }
    this.bits = new Uint8Array(this.mapping, offset, size);
  }

  /** pages the log covers */
  get pages(): number {
    return this.bits.length * 8;
  }

  get pagesMarked(): number {
    return this.tally[0];
  }

  /** writes the log could not record: beyond its end */
  get missed(): number {
    return this.tally[1];
  }

  /** Marks the pages of [gpa, gpa + len) dirty. */
  mark(gpa: number, len: number): void {
    if (len <= 0 || this.unmapped) return;
    const bits = this.bits;
    let p = Math.floor(gpa / LOG_PAGE);
    const last = Math.floor((gpa + len - 1) / LOG_PAGE);
    const end = bits.length * 8;
    for (; p <= last; p++) {
      if (p >= end) {
        this.tally[1] += last - p + 1;
        return;
      }
      // Always the locked OR, never "read first, skip if set": a plain read could be served before
      // the guest-memory stores just made leave this CPU's store buffer, see a bit QEMU is about to
      // clear, and leave a page QEMU then reads stale unmarked. The locked instruction orders every
      // earlier store before the mark (as DPDK's __atomic_fetch_or does on x86).
      Atomics.or(bits, p >>> 3, 1 << (p & 7));
      this.tally[0]++;
    }
  }

  unmap(): void {
    if (this.unmapped) return;
    this.unmapped = true;
    try {
      native.munmap(this.mapping);
    } catch {
      /* already gone */
    }
  }
}
