// A scatter list of guest-memory segments, preallocated once per ring so that walking a
// descriptor chain allocates nothing. For mergeable RX buffers several chains are gathered into one
// list; chainHead/chainEnd/chainCap record where each chain's segments stop.
export const MAX_SEGMENTS = 4096;
export const MAX_CHAINS = 1024;

export class Segments {
  readonly buf: Uint8Array[] = new Array<Uint8Array>(MAX_SEGMENTS);
  /** copy-list area id of buf[i] */
  readonly area = new Int32Array(MAX_SEGMENTS);
  readonly off = new Int32Array(MAX_SEGMENTS);
  readonly len = new Int32Array(MAX_SEGMENTS);
  count = 0;
  total = 0;
  readonly chainHead = new Uint16Array(MAX_CHAINS);
  /** index one past the chain's last segment */
  readonly chainEnd = new Int32Array(MAX_CHAINS);
  readonly chainCap = new Float64Array(MAX_CHAINS);
  chains = 0;

  constructor() {
    const empty = new Uint8Array(0);
    for (let i = 0; i < MAX_SEGMENTS; i++) this.buf[i] = empty;
  }

  reset(): void {
    this.count = 0;
    this.total = 0;
    this.chains = 0;
  }
}
