// One vhost-user socket: framing of messages with their fds, replies, and a single failure path.
// Like libvhost-user we read the 12-byte header first (the fds arrive with it), then the payload,
// so the fds of one message are never mixed with the next one's.
import { native, Poller } from '../native';
import { HDR_SIZE, MAX_PAYLOAD, Message, payloadSize, requestName } from './message';

/** More fds than any request carries (SET_MEM_TABLE: 8); a peer sending more is broken. */
const MAX_FDS = 16;

export type { Log } from '../log';
import type { Log } from '../log';

export class Connection {
  private readonly buf = new Uint8Array(HDR_SIZE + MAX_PAYLOAD);
  private readonly view = new DataView(this.buf.buffer);
  private have = 0;
  private pendingFds: number[] = [];
  private poller: Poller | null = null;
  private outQueue: { bytes: Uint8Array; fds: number[] }[] = [];
  private closed = false;
  /** reading paused because replies wait for the peer to read them (logged once per connection) */
  private pausedLogged = false;
  /** reading paused by hold(): the session is still busy with the last message */
  private held = false;
  /** dispatch of one message; throwing from it fails the connection with that error */
  onMessage: (msg: Message) => void = () => {};
  onClose: (reason: string | null) => void = () => {};

  constructor(readonly fd: number, readonly name: string, private readonly log: Log) {}

  start(): void {
    this.poller = native.poll(this.fd, (status, events) => this.onReady(status, events));
    this.poller.start(native.POLL_READABLE);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private onReady(status: number, events: number): void {
    if (this.closed) return;
    if (status < 0) return this.fail(`socket error (libuv status ${status})`);
    if (events & native.POLL_WRITABLE) this.flushOut();
    if (events & native.POLL_READABLE) this.readAll();
  }

  /** replies waiting for the peer to read (diagnostics, tests) */
  get queuedReplies(): number {
    return this.outQueue.length;
  }

  private readAll(): void {
    // Read until EAGAIN: several messages may be waiting. While replies wait for the peer to read
    // them, nothing more is read: a front-end that never reads cannot make us queue without bound
    // (its own socket buffer fills and it has to wait, as with any back-end).
    while (!this.closed && !this.held) {
      if (this.outQueue.length > 0) {
        if (!this.pausedLogged) {
          this.pausedLogged = true;
          this.log(`${this.name}: the front-end is not reading its replies: reading from it paused until it does`, { level: 'warn' });
        }
        return;
      }
      const want = this.have < HDR_SIZE ? HDR_SIZE - this.have : HDR_SIZE + this.view.getUint32(8, true) - this.have;
      let r;
      try {
        r = native.recvmsg(this.fd, this.buf, this.have, want, MAX_FDS);
      } catch (e) {
        return this.fail(`recvmsg: ${(e as Error).message}`);
      }
      if (r.bytes < 0) return; // EAGAIN
      for (const fd of r.fds) this.pendingFds.push(fd);
      if (r.ctrunc) return this.fail('peer sent more file descriptors than any request carries (control message truncated)');
      if (r.bytes === 0) {
        if (this.have === 0) return this.close(null);
        const what = this.have < HDR_SIZE ? 'header' : `${requestName(this.view.getUint32(0, true))} payload`;
        return this.fail(`peer closed the connection in the middle of a message (${this.have} bytes of ${what} read)`);
      }
      this.have += r.bytes;
      if (this.have === HDR_SIZE) {
        const req = this.view.getUint32(0, true);
        const size = this.view.getUint32(8, true);
        const rule = payloadSize.get(req);
        if (!rule) return this.fail(`${requestName(req)}: request not supported by this back-end`, requestName(req));
        if (size > MAX_PAYLOAD || size < rule[0] || size > rule[1]) {
          return this.fail(`${requestName(req)}: payload size ${size} outside [${rule[0]}, ${rule[1]}]`, requestName(req));
        }
      }
      if (this.have >= HDR_SIZE && this.have === HDR_SIZE + this.view.getUint32(8, true)) this.dispatch();
    }
  }

  private dispatch(): void {
    const request = this.view.getUint32(0, true);
    const flags = this.view.getUint32(4, true);
    const size = this.view.getUint32(8, true);
    const fds = this.pendingFds;
    this.pendingFds = [];
    this.have = 0;
    const msg: Message = { request, flags, size, payload: new DataView(this.buf.buffer, HDR_SIZE, size), fds };
    try {
      this.onMessage(msg);
    } catch (e) {
      // The handler owns fds it kept; any it did not take over are closed by it or here via msg.fds.
      for (const fd of msg.fds) safeClose(fd);
      this.fail(`${requestName(request)}: ${(e as Error).message}`, requestName(request));
    }
  }

  send(bytes: Uint8Array, fds: number[] = []): void {
    if (this.closed) return;
    if (this.outQueue.length === 0) {
      this.trySend(bytes, fds); // what it could not send it queued itself
      return;
    }
    this.outQueue.push({ bytes, fds });
  }

  /** true when fully sent; a partial send leaves the rest in the queue head and waits for writable
   * (only: see readAll) */
  private trySend(bytes: Uint8Array, fds: number[]): boolean {
    let n: number;
    try {
      n = native.sendmsg(this.fd, bytes, 0, bytes.length, fds);
    } catch (e) {
      this.fail(`sendmsg: ${(e as Error).message}`);
      return true;
    }
    if (n === bytes.length) return true;
    if (n > 0) this.outQueue.unshift({ bytes: bytes.subarray(n), fds: [] });
    else this.outQueue.unshift({ bytes, fds });
    this.poller?.start(native.POLL_WRITABLE);
    return false;
  }

  private flushOut(): void {
    while (this.outQueue.length && !this.closed) {
      const m = this.outQueue.shift()!;
      if (!this.trySend(m.bytes, m.fds)) return;
    }
    if (this.closed) return;
    this.poller?.start(native.POLL_READABLE);
    this.readAll(); // what arrived while reading was paused
  }

  /** Reads no more messages until release(): the last one is still being handled (across turns). */
  hold(): void {
    if (this.held || this.closed) return;
    this.held = true;
    this.poller?.stop();
  }

  release(): void {
    if (!this.held || this.closed) return;
    this.held = false;
    this.poller?.start(this.outQueue.length > 0 ? native.POLL_WRITABLE : native.POLL_READABLE);
    if (this.outQueue.length === 0) this.readAll(); // what arrived meanwhile
  }

  /** The one path for a broken peer: log, close this connection only. */
  fail(reason: string, request?: string): void {
    if (this.closed) return;
    this.log(`${this.name}: error: ${reason}; closing connection`, { level: 'error', request });
    this.close(reason);
  }

  close(reason: string | null = null): void {
    if (this.closed) return;
    this.closed = true;
    this.poller?.close();
    this.poller = null;
    for (const fd of this.pendingFds) safeClose(fd);
    this.pendingFds = [];
    safeClose(this.fd);
    this.onClose(reason);
  }
}

export function safeClose(fd: number): void {
  if (fd < 0) return;
  try {
    native.close(fd);
  } catch {
    /* already closed */
  }
}
