// The typed front door of the C++ addon (native/vhost_native.cc). Nothing else imports the addon.
// Everything here is what JavaScript cannot do by itself: mmap of fds, eventfd, SCM_RIGHTS,
// readiness polling on arbitrary fds (libuv uv_poll_t) and opening a TAP device.
// Errors are thrown as JavaScript Errors whose `code` is the errno name (e.g. 'EAGAIN', 'EBADF').
import * as path from 'node:path';

export interface RecvResult {
  /** bytes read into the buffer; 0 means the peer closed the connection */
  bytes: number;
  /** file descriptors received with SCM_RIGHTS (already close-on-exec) */
  fds: number[];
  /** true when the kernel truncated the control message (more fds than we accept) */
  ctrunc: boolean;
}

export interface Poller {
  /** start (or change) watching: events is a mask of POLL_READABLE | POLL_WRITABLE */
  start(events: number): void;
  stop(): void;
  /** stops and releases the libuv handle; the fd itself is not closed */
  close(): void;
}

export interface TapInfo {
  fd: number;
  name: string;
}

export interface NativeAddon {
  /** mmap(MAP_SHARED, PROT_READ|PROT_WRITE) of [offset, offset+length); length <= 4 GiB.
   *  Returns an external ArrayBuffer; its finalizer unmaps unless munmap() was called first. */
  mmap(fd: number, length: number, offset: number): ArrayBuffer;
  /** unmaps now and detaches the ArrayBuffer (byteLength becomes 0) */
  munmap(buf: ArrayBuffer): void;

  /** eventfd(initval, EFD_NONBLOCK | EFD_CLOEXEC); blocking: without EFD_NONBLOCK (tests) */
  eventfd(initval: number, blocking?: boolean): number;
  /** reads the counter; returns 0 when it was zero (EAGAIN), never allocates */
  eventfdRead(fd: number): number;
  /** adds value (default 1) to the counter */
  eventfdWrite(fd: number, value?: number): void;

  /** fcntl(F_SETFL, O_NONBLOCK) on the fd's open file */
  setNonBlocking(fd: number): void;

  /** memfd_create(name, MFD_CLOEXEC [| MFD_ALLOW_SEALING] [| MFD_HUGETLB]) + ftruncate(size): for the test
   *  front-end's guest memory (hugetlb: size a multiple of the huge page size) */
  memfdCreate(name: string, size: number, sealable?: boolean, hugetlb?: boolean): number;
  /** F_SEAL_SHRINK on a memfd: 1 when it is in place (added now or before), 0 when the file cannot be sealed */
  sealShrink(fd: number): number;
  /** a Uint32Array over the addon's count of contained SIGBUS faults in guest mappings ([0]; call once) */
  guestFaultWord(): Uint32Array;
  /** faults contained in this mmap() ArrayBuffer (its file shrank under it: zero pages now stand in) */
  mappingFaults(buf: ArrayBuffer): number;
  /** ftruncate (tests) */
  ftruncate(fd: number, size: number): void;

  /** socket(AF_UNIX, SOCK_STREAM|NONBLOCK|CLOEXEC) + bind + listen; mode applied to the socket file */
  /**
   * Listens on path with mode (and owner uid/gid, -1: unchanged): bound, chown-ed and chmod-ed in a
   * private directory, then renamed onto path (a stale socket there is replaced; a live one, or
   * anything not a socket, refused with EADDRINUSE).
   */
  unixListen(path: string, backlog: number, mode: number, uid?: number, gid?: number): number;
  /** openat(dirfd, name, flags | O_CLOEXEC, mode): name is one path component (no '/'); flags from fs.constants */
  openAt(dirfd: number, name: string, flags: number, mode: number): number;
  /** accept4(NONBLOCK|CLOEXEC); returns -1 when no connection is pending */
  unixAccept(fd: number): number;
  /** connect to a listening unix socket; the returned fd is non-blocking. Throws (ECONNREFUSED, ENOENT…;
   *  EAGAIN when the listener's backlog is full: connect never blocks) */
  unixConnect(path: string): number;
  /** socketpair(AF_UNIX, SOCK_STREAM, NONBLOCK|CLOEXEC) */
  socketpair(): [number, number];

  /** recvmsg with room for up to maxFds descriptors. Throws EAGAIN-free: returns bytes -1 on EAGAIN. */
  recvmsg(fd: number, buf: Uint8Array, offset: number, length: number, maxFds: number): RecvResult;
  /** sendmsg with fds as SCM_RIGHTS; returns bytes written (-1 on EAGAIN) */
  sendmsg(fd: number, buf: Uint8Array, offset: number, length: number, fds: number[]): number;

  /** non-blocking read/write on any fd (TAP, eventfd, pipes); -1 on EAGAIN; never allocates */
  read(fd: number, buf: Uint8Array, offset: number, length: number): number;
  write(fd: number, buf: Uint8Array, offset: number, length: number): number;
  close(fd: number): void;
  /** fcntl(F_DUPFD_CLOEXEC): a second fd for the same file (a worker thread's own copy) */
  dup(fd: number): number;
  /** memmove(dst+dstOff, src+srcOff, len), bounds-checked, allocating nothing: the data path's large copies */
  copy(dst: Uint8Array, dstOff: number, src: Uint8Array, srcOff: number, len: number): void;

  /** registers the bytes of an ArrayBuffer or typed array as a copy area; returns its id (>= 1).
   *  The buffer is kept alive until unregisterArea(); munmap() invalidates areas inside it. */
  registerArea(view: ArrayBuffer | ArrayBufferView): number;
  unregisterArea(id: number): void;
  /** bytes of a live area, 0 for an unknown id */
  areaLength(id: number): number;
  /** the Uint32Array runCopies() reads: 5 words per copy (src area, src off, dst area, dst off, len) */
  setCopyList(list: Uint32Array): void;
  /** runs the first count copies of the list in order; returns how many were refused (bad area or range) */
  runCopies(count: number): number;
  /** a Uint32Array(2) over this thread's clock cell, which clockRead() fills */
  clockWord(): Uint32Array;
  /** CLOCK_REALTIME into the clock cell as [seconds, microseconds]; returns nothing, so reading the
   *  time per frame allocates nothing (Date.now() and performance.now() return heap doubles) */
  clockRead(): void;

  /** the callback of this thread's idle spinner (adaptive polling): run every loop turn while started */
  setIdle(cb: () => void): void;
  /** while started, libuv never blocks waiting for I/O and calls the idle callback once per turn */
  idleStart(): void;
  idleStop(): void;

  /** watch fd readiness with uv_poll_t; cb(status, events) runs on the event loop.
   *  status is 0 or a negative libuv error code. */
  poll(fd: number, cb: (status: number, events: number) => void): Poller;

  /** open /dev/net/tun as IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (non-blocking), name may be '' */
  openTap(name: string): TapInfo;
  /** TUNSETVNETHDRSZ */
  tapSetVnetHdrSize(fd: number, size: number): void;
  /** TUNSETOFFLOAD with TUN_F_* flags */
  tapSetOffload(fd: number, flags: number): void;

  POLL_READABLE: number;
  POLL_WRITABLE: number;
  /** largest length one mmap() window may have (4 GiB on Node 20) */
  MAX_WINDOW: number;
}

function load(): NativeAddon {
  const root = path.resolve(__dirname, '..', '..');
  const candidates = [
    path.join(root, 'build', 'native', 'Release', 'vhost_native.node'),
    path.join(root, 'build', 'native', 'vhost_native.node'),
  ];
  let lastErr: unknown;
  for (const p of candidates) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      return require(p) as NativeAddon;
    } catch (e) {
      lastErr = e;
    }
  }
  throw new Error(`elastic-vhost native addon not built (run npm ci or npm run build:native): ${String(lastErr)}`);
}

export const native: NativeAddon = load();
