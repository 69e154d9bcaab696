// Guest memory mapped by a set of vhost-user connections together. One front-end must not exhaust
// the mappings (vm.max_map_count, address space) of all the others, so each session checks a
// memory table against the total before mapping it (--max-total-mem-gb). The account is an object
// handed to each session: a process's connections share one (processMappedMemory, the default),
// and a test can give a session an account of its own.

export class MappedMemory {
  private total = 0;

  /** bytes mapped, or held for a memory table still being mapped, by all connections of this account */
  get bytes(): number {
    return this.total;
  }

  /** `delta` bytes more mapped (or held while a table is mapped in slices); negative: unmapped */
  add(delta: number): void {
    this.total += delta;
  }
}

/** the account of this process's connections (every session's default) */
export const processMappedMemory = new MappedMemory();
