// The live web view (--web [ADDR:]PORT, or unix:PATH[,mode=OCTAL]): one static page
// (web/index.html) and a stream of samples as server-sent events; behind a bearer token with
// --web-token-file (src/ops/auth.ts).
//
//   timer (intervalMs) ─► sample() once ─► one Buffer ─► write to every /events client
//                                                        (skipped for a client whose unsent bytes
//                                                         exceed SLOW_CLIENT_BYTES; dropped after
//                                                         stuckClientMs of that)
//
// The switch's event loop is shared with the data path, so nothing here may wait on a client:
// writes are never awaited, a client that does not read costs at most SLOW_CLIENT_BYTES plus one
// sample of memory, and the timer samples only while someone is watching. Read-only: GET and
// HEAD of three paths, nothing else; on loopback, only for a loopback Host.
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import type { LogFields } from '../log';
import { bearerGuard } from './auth';
import { isUnix, parseUnixAddress, UNIX_FORM, type ListenAddress, type UnixAddress } from './listen-address';
import { listenUnix } from './unix-listen';

export type WebAddress = ListenAddress;

/** "[ADDR:]PORT": loopback unless an address is given; "[::1]:PORT" for IPv6; port 0 picks a free one; or "unix:PATH[,mode=OCTAL]" */
export function parseWebAddress(s: string): WebAddress {
  const unix = parseUnixAddress(s, '');
  if (unix !== null) return unix;
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]:|([^\s:[\]]+):)?(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new Error(`"${s}" is not [ADDR:]PORT (e.g. 8080, 127.0.0.1:8080, [::1]:8080) or ${UNIX_FORM}`);
  return { host: m[1] ?? m[2] ?? '127.0.0.1', port };
}

export interface WebViewOptions {
  address: WebAddress;
  /** --web-token-file's token: every request needs `Authorization: Bearer <token>` (401 otherwise) */
  token?: string;
  /** one sample of the switch, sent as JSON; called on the timer only while clients are connected */
  sample: () => unknown;
  log: (msg: string, fields?: LogFields) => void;
  /** sample period (default 200 ms) */
  intervalMs?: number;
  /** most /events clients at once (default 8); one more gets 503 */
  maxClients?: number;
  /** a client whose unsent bytes stay above SLOW_CLIENT_BYTES this long is disconnected (default 10 s) */
  stuckClientMs?: number;
}

export const DEFAULT_WEB_INTERVAL_MS = 200;
export const DEFAULT_WEB_MAX_CLIENTS = 8;
/** unsent bytes above which a client misses samples (a few samples of a busy switch) */
export const SLOW_CLIENT_BYTES = 256 * 1024;

/** what the web server itself has seen (tests, and whoever wants to watch the watchers) */
export interface WebViewStats {
  clients: number;
  /** /events clients refused because maxClients were connected */
  refused: number;
  /** samples not written to a client that had too much unsent */
  skipped: number;
  /** clients disconnected for not reading */
  dropped: number;
  /** the most bytes ever left unsent to one client, measured before each write */
  maxUnsent: number;
  samples: number;
}

interface Client {
  res: http.ServerResponse;
  peer: string;
  /** when a sample last went out to it */
  lastWrite: number;
}

const LOOPBACK_HOST = /^(localhost|[^.:]+\.localhost|127\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[::1\]|::1)$/i;

/** Host header without its port */
function hostName(h: string | undefined): string {
  if (h === undefined) return '';
  const m = /^(\[[^\]]*\]|[^:]*)(?::\d+)?$/.exec(h);
  return m ? m[1] : h;
}

/** the page: next to this file in src/, or (compiled) dist/src/ops → src/ops/web */
function pagePath(): string {
  const candidates = [path.join(__dirname, 'web', 'index.html'), path.join(__dirname, '..', '..', '..', 'src', 'ops', 'web', 'index.html')];
  return candidates.find((p) => fs.existsSync(p)) ?? candidates[candidates.length - 1];
}

const SECURITY_HEADERS = {
  'X-Content-Type-Options': 'nosniff',
  'Cache-Control': 'no-store',
  // the page's own inline script and style, its own event stream, nothing else
  'Content-Security-Policy': "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
};

export class WebView {
  /** the TCP address it listens on (port 0 given: the port chosen), or its Unix socket */
  readonly listening: Promise<AddressInfo | UnixAddress>;
  private readonly server: http.Server;
  private readonly page: Buffer;
  private readonly clients = new Set<Client>();
  private readonly timer: NodeJS.Timeout;
  private readonly intervalMs: number;
  private readonly maxClients: number;
  private readonly stuckClientMs: number;
  private readonly counts = { refused: 0, skipped: 0, dropped: 0, maxUnsent: 0, samples: 0 };
  /** the last sample sent, so a new client has something to show at once */
  private last: Buffer | null = null;
  private sampleFailed = false;
  private closed = false;
  /** its Unix socket was put at its path (removed at close) */
  private unixBound = false;
  /** bound to loopback: only requests naming a loopback host are served (a web page elsewhere
   * could otherwise read the switch's state through DNS rebinding) */
  private readonly loopbackOnly: boolean;
  /** with a token: answers 401 and returns false for a request without it */
  private readonly authorized: ((req: http.IncomingMessage, res: http.ServerResponse) => boolean) | null;

  constructor(private readonly o: WebViewOptions) {
    this.intervalMs = o.intervalMs ?? DEFAULT_WEB_INTERVAL_MS;
    this.maxClients = o.maxClients ?? DEFAULT_WEB_MAX_CLIENTS;
    this.stuckClientMs = o.stuckClientMs ?? 10_000;
    this.page = fs.readFileSync(pagePath());
    const a = o.address;
    // a Unix socket is no browser's to reach: no DNS rebinding through it (a proxy in front sends its own Host)
    this.loopbackOnly = !isUnix(a) && LOOPBACK_HOST.test(a.host.includes(':') ? `[${a.host}]` : a.host);
    this.authorized = o.token === undefined ? null : bearerGuard(o.token, 'web', o.log);
    const server = http.createServer((req, res) => this.onRequest(req, res));
    this.server = server;
    // a browser keeps a few connections per page; beyond that, sockets are refused by the kernel queue
    server.maxConnections = this.maxClients * 4;
    server.headersTimeout = 10_000;
    server.requestTimeout = 10_000;
    this.listening = isUnix(a)
      ? (async () => {
          await listenUnix(server, a.path, a.mode);
          this.unixBound = true;
          if (this.closed) {
            // closed while it was being made
            server.close();
            fs.rmSync(a.path, { force: true });
          }
          server.on('error', (e) => o.log(`web: error: ${e.message}`));
          o.log(`web view on unix:${a.path}`);
          return a;
        })()
      : new Promise((resolve, reject) => {
          server.once('error', reject);
          server.listen(a.port, a.host, () => {
            server.off('error', reject);
            server.on('error', (e) => o.log(`web: error: ${e.message}`));
            const got = server.address() as AddressInfo;
            o.log(`web view on http://${got.family === 'IPv6' ? `[${got.address}]` : got.address}:${got.port}/`);
            resolve(got);
          });
        });
    // a failed listen is reported through `listening`; this keeps it from being an unhandled rejection too
    this.listening.catch(() => {});
    server.on('clientError', (e, socket) => {
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
      else socket.destroy();
    });
    this.timer = setInterval(() => this.tick(), this.intervalMs).unref();
  }

  stats(): WebViewStats {
    return { clients: this.clients.size, ...this.counts };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    for (const c of this.clients) c.res.destroy();
    this.clients.clear();
    this.server.close();
    this.server.closeAllConnections();
    const a = this.o.address;
    // a socket listened on through its fd is not unlinked by Node (and one not ours is left alone)
    if (isUnix(a) && this.unixBound) fs.rmSync(a.path, { force: true });
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    if (this.authorized !== null && !this.authorized(req, res)) return;
    const head = req.method === 'HEAD';
    if (req.method !== 'GET' && !head) {
      res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain', ...SECURITY_HEADERS }).end('only GET and HEAD\n');
      return;
    }
    if (this.loopbackOnly && !LOOPBACK_HOST.test(hostName(req.headers.host))) {
      res.writeHead(403, { 'Content-Type': 'text/plain', ...SECURITY_HEADERS }).end('this view answers requests for a loopback host only\n');
      return;
    }
    const p = (req.url ?? '/').split('?')[0];
    if (p === '/' || p === '/index.html') {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Content-Length': this.page.length, ...SECURITY_HEADERS });
      res.end(head ? undefined : this.page);
    } else if (p === '/events') {
      this.openStream(req, res, head);
    } else if (p === '/state.json') {
      const body = this.sampleJson();
      if (body === null) {
        res.writeHead(500, { 'Content-Type': 'text/plain', ...SECURITY_HEADERS }).end('sample failed (see the switch log)\n');
        return;
      }
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body), ...SECURITY_HEADERS });
      res.end(head ? undefined : body);
    } else {
      res.writeHead(404, { 'Content-Type': 'text/plain', ...SECURITY_HEADERS }).end('not found: the page is /, its data /events and /state.json\n');
    }
  }

  private openStream(req: http.IncomingMessage, res: http.ServerResponse, head: boolean): void {
    const peer = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
    if (this.clients.size >= this.maxClients) {
      this.counts.refused++;
      this.o.log(`web: refused ${peer}: ${this.maxClients} clients already watching`);
      res.writeHead(503, { 'Retry-After': '10', 'Content-Type': 'text/plain', ...SECURITY_HEADERS }).end(`at most ${this.maxClients} clients\n`);
      return;
    }
    res.writeHead(200, { 'Content-Type': 'text/event-stream', Connection: 'keep-alive', ...SECURITY_HEADERS });
    if (head) {
      res.end();
      return;
    }
    req.socket.setNoDelay(true);
    const c: Client = { res, peer, lastWrite: Date.now() };
    this.clients.add(c);
    const gone = (): void => {
      this.clients.delete(c);
    };
    res.on('close', gone);
    res.on('error', gone);
    // the page reconnects by itself (EventSource) if the switch restarts
    res.write(`retry: 2000\n\n`);
    if (this.last) res.write(this.last);
    else this.tick();
  }

  private sampleJson(): string | null {
    try {
      const s = JSON.stringify(this.o.sample());
      this.sampleFailed = false;
      return s;
    } catch (e) {
      if (!this.sampleFailed) this.o.log(`web: error: sample failed: ${(e as Error).message}`);
      this.sampleFailed = true;
      return null;
    }
  }

  private tick(): void {
    if (this.clients.size === 0) {
      this.last = null;
      return;
    }
    const json = this.sampleJson();
    if (json === null) return;
    const chunk = Buffer.from(`data: ${json}\n\n`);
    this.last = chunk;
    this.counts.samples++;
    const now = Date.now();
    for (const c of this.clients) {
      const unsent = c.res.writableLength;
      if (unsent > this.counts.maxUnsent) this.counts.maxUnsent = unsent;
      if (unsent <= SLOW_CLIENT_BYTES) {
        c.res.write(chunk);
        c.lastWrite = now;
      } else if (now - c.lastWrite < this.stuckClientMs) {
        this.counts.skipped++;
      } else {
        this.counts.dropped++;
        this.o.log(`web: dropped ${c.peer}: it read nothing for ${((now - c.lastWrite) / 1000).toFixed(1)} s (${unsent} bytes unsent)`);
        this.clients.delete(c);
        c.res.destroy();
      }
    }
  }
}
