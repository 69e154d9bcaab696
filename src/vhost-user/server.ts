// Where vhost-user connections come from.
//  - server mode: we listen on a socket path, QEMU connects (chardev ...,reconnect=1) and comes
//    back after either side restarts. One front-end per socket at a time.
//  - client mode: QEMU listens (chardev ...,server=on), we connect, and retry until it is there
//    and again after it goes away.
import * as fs from 'node:fs';
import { native, Poller } from '../native';
import { Log, safeClose } from './connection';

export interface Endpoint {
  close(): void;
}

/** Something that takes a connected socket fd; returns false when it cannot (busy). */
export type Acceptor = (fd: number) => boolean;

export function removeStaleSocket(path: string): void {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket; not replacing it`);
  // Something still listening there? Then it is not ours to replace.
  let fd = -1;
  try {
    fd = native.unixConnect(path);
  } catch {
    fs.unlinkSync(path);
    return;
  } finally {
    if (fd >= 0) safeClose(fd);
  }
  throw new Error(`${path}: another process is listening on this socket`);
}

export class Listener implements Endpoint {
  private readonly fd: number;
  private readonly poller: Poller;
  private closed = false;

  /** owner: uid and gid for the socket file (-1 keeps that one), as --socket-owner/--socket-group say */
  constructor(readonly path: string, accept: Acceptor, private readonly log: Log, mode = 0o600, owner: { uid: number; gid: number } | null = null) {
    removeStaleSocket(path);
    // owner and mode are set by the addon while the socket is still in a private directory of its
    // own, then it is renamed into place: nothing is done by path once a client could swap it
    try {
      this.fd = native.unixListen(path, 16, mode, owner?.uid ?? -1, owner?.gid ?? -1);
    } catch (e) {
      if ((e as { syscall?: string }).syscall === 'fchownat' && owner !== null) {
        throw new Error(`${path}: cannot give the socket to uid ${owner.uid} gid ${owner.gid}: ${(e as Error).message}`);
      }
      throw e;
    }
    this.poller = native.poll(this.fd, (status) => {
      if (this.closed || status < 0) return;
      for (;;) {
        let c: number;
        try {
          c = native.unixAccept(this.fd);
        } catch (e) {
          this.log(`${path}: accept: ${(e as Error).message}`, { level: 'error', path });
          return;
        }
        if (c < 0) return;
        if (!accept(c)) {
          this.log(`${path}: refused a second front-end while one is connected`, { level: 'warn', path });
          safeClose(c);
        }
      }
    });
    this.poller.start(native.POLL_READABLE);
    this.log(`listening on ${path}`, { path });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.poller.close();
    safeClose(this.fd);
    try {
      fs.unlinkSync(this.path);
    } catch {
      /* gone already */
    }
  }
}

export class Dialer implements Endpoint {
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private warned = false;

  constructor(readonly path: string, private readonly accept: Acceptor, private readonly log: Log, private readonly retryMs = 1000) {
    this.attempt();
  }

  /** Call when the connection ended: dial again. */
  reconnect(): void {
    if (this.closed || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.attempt();
    }, this.retryMs);
  }

  private attempt(): void {
    if (this.closed) return;
    let fd: number;
    try {
      fd = native.unixConnect(this.path);
    } catch (e) {
      if (!this.warned) this.log(`${this.path}: cannot connect yet (${(e as Error).message}); retrying every ${this.retryMs} ms`, { level: 'warn', path: this.path });
      this.warned = true;
      this.reconnect();
      return;
    }
    this.warned = false;
    this.log(`${this.path}: connected to front-end`, { path: this.path });
    if (!this.accept(fd)) safeClose(fd);
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
