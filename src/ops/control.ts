// The control socket (--ctl PATH): a Unix socket, mode 0600 unless told otherwise, speaking
// line-delimited JSON. One request per line, one reply line per request, in order:
//
//   → {"id": 1, "cmd": "ports"}
//   ← {"id": 1, "ok": true, "result": [...]}
//   ← {"id": 1, "ok": false, "error": "no port vm9"}
//
// Commands: ports, macs, fifo, captures, capture {port, file, maxBytes?, maxFrames?},
// capture-stop {port}, add-port {path, client?, mac?, share?, name?}, remove-port {name}.
// `elastic-vhost ctl` (src/cli/ctl.ts) is the client.
//
// A client can neither block nor crash the switch: a line longer than MAX_LINE gets an error reply
// and the connection is closed; with more than MAX_PENDING requests waiting for their replies the
// socket is not read until they are answered (pipelining is fine, its backlog bounded); a client
// whose unread replies pass MAX_UNREAD bytes is disconnected (replies are never buffered without
// bound); at most MAX_CLIENTS at once; idle connections close after IDLE_MS.
//
// The event loop is the data path's too. One read of 64 KiB can hold some 4300 small requests: were
// they all answered as they are read (one promise chain, one microtask drain), the rings' kicks and
// the engine's timers would wait for all of them. So requests are queued per client and answered
// by a scheduler, at most REQUESTS_PER_TURN of them per turn of the event loop (setImmediate: the
// loop polls I/O between two turns), the clients taken round-robin:
//
//   socket 'data' ─► lines queued on the client ─► ready (clients with work, round-robin)
//   setImmediate turn ─► ≤ REQUESTS_PER_TURN answered (one at a time per client: replies in order;
//                        an asynchronous one, capture-stop, holds its client until it settles)
//   socket 'close' ─► the client's queue dropped: nothing is computed for a client that has gone
import * as fs from 'node:fs';
import * as net from 'node:net';
import { listenUnix } from './unix-listen';
import type { Log } from '../log';
import type { CaptureLimits } from './capture';
import { fifoView, macViews, portViews, type AddPortRequest, type OpsHost } from './switch-view';

export const MAX_LINE = 64 * 1024;
export const MAX_UNREAD = 4 * 1024 * 1024;
export const MAX_PENDING = 64;
export const MAX_CLIENTS = 16;
export const IDLE_MS = 60_000;
/** requests answered per turn of the event loop, over all clients */
export const REQUESTS_PER_TURN = 16;

type Request = Record<string, unknown> & { cmd?: unknown; id?: unknown };

class BadRequest extends Error {}

function str(req: Request, key: string, required = true): string | undefined {
  const v = req[key];
  if (v === undefined && !required) return undefined;
  if (typeof v !== 'string' || v === '') throw new BadRequest(`"${key}" must be a non-empty string`);
  return v;
}

function count(req: Request, key: string): number | undefined {
  const v = req[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw new BadRequest(`"${key}" must be a whole number >= 1`);
  return v;
}

/**
 * One request → its result (throws with the reason). A promise only for what has to wait
 * (capture-stop: the file completed), so that the scheduler answers the rest within its turn.
 */
export function handleRequest(host: OpsHost, req: Request): unknown {
  switch (req.cmd) {
    case 'ports':
      return portViews(host);
    case 'macs':
      return macViews(host);
    case 'fifo':
      return fifoView(host);
    case 'captures':
      return host.captures.list();
    case 'capture': {
      const name = str(req, 'port') as string;
      const file = str(req, 'file') as string;
      const limits: CaptureLimits = {};
      const maxBytes = count(req, 'maxBytes');
      const maxFrames = count(req, 'maxFrames');
      if (maxBytes !== undefined) limits.maxBytes = maxBytes;
      if (maxFrames !== undefined) limits.maxFrames = maxFrames;
      const r = host.ports().find((p) => p.name === name);
      if (!r) throw new BadRequest(`no port ${name} (ports: ${host.ports().map((p) => p.name).join(', ') || 'none'})`);
      return host.captures.start(r.port, file, limits);
    }
    case 'capture-stop':
      return host.captures.stop(str(req, 'port') as string);
    case 'add-port': {
      const a: AddPortRequest = { path: str(req, 'path') as string };
      if (req.client !== undefined) {
        if (typeof req.client !== 'boolean') throw new BadRequest('"client" must be true or false');
        a.client = req.client;
      }
      const mac = str(req, 'mac', false);
      if (mac !== undefined) a.mac = mac;
      const share = count(req, 'share');
      if (share !== undefined) a.share = share;
      const name = str(req, 'name', false);
      if (name !== undefined) a.name = name;
      const r = host.addPort(a);
      return { name: r.name, mode: r.mode, path: r.path };
    }
    case 'remove-port': {
      const name = str(req, 'name') as string;
      const remove = (): { name: string } => {
        host.removePort(name);
        return { name };
      };
      return host.captures.has(name) ? host.captures.stop(name).then(remove) : remove();
    }
    default:
      throw new BadRequest(`unknown command ${JSON.stringify(req.cmd)} (ports, macs, fifo, captures, capture, capture-stop, add-port, remove-port)`);
  }
}

/** One connection: the lines it sent that wait for an answer, oldest first. */
interface Client {
  readonly s: net.Socket;
  readonly queue: string[];
  /** an asynchronous answer of it is pending: its next request waits (replies stay in order) */
  busy: boolean;
  /** in the scheduler's ready list */
  ready: boolean;
  gone: boolean;
}

export class ControlServer {
  private readonly server: net.Server;
  private readonly clients = new Set<Client>();
  /** clients with requests to answer, round-robin */
  private readonly ready: Client[] = [];
  private turnScheduled = false;
  private closed = false;

  private constructor(readonly path: string, private readonly host: OpsHost, private readonly log: Log) {
    this.server = net.createServer((s) => this.accept(s));
    this.server.maxConnections = MAX_CLIENTS;
  }

  /** Listens on path (a stale socket file is replaced, a live one refused), its mode set before
   * it is put at path (src/ops/unix-listen.ts): nobody can connect before the mode applies, and no
   * chmod runs on a path a client could have swapped. */
  static async listen(path: string, host: OpsHost, log: Log, mode = 0o600): Promise<ControlServer> {
    const c = new ControlServer(path, host, log);
    await listenUnix(c.server, path, mode);
    c.server.on('error', (e) => log(`ctl: error: ${e.message}`, { level: 'error', path }));
    c.server.unref();
    log(`ctl: listening on ${path}`, { path });
    return c;
  }

  private accept(s: net.Socket): void {
    if (this.closed) {
      s.destroy();
      return;
    }
    const c: Client = { s, queue: [], busy: false, ready: false, gone: false };
    this.clients.add(c);
    s.unref();
    s.setTimeout(IDLE_MS, () => s.destroy());
    s.on('close', () => {
      // what it asked and was not answered yet is nobody's business any more
      c.gone = true;
      c.queue.length = 0;
      this.clients.delete(c);
    });
    s.on('error', () => {
      /* the client went away: nothing to tell anyone */
    });
    let partial = '';
    const refuse = (why: string): void => {
      this.log(`ctl: error: ${why}: client disconnected`, { level: 'error' });
      if (!s.destroyed) s.end(`${JSON.stringify({ ok: false, error: why })}\n`);
      s.destroy();
    };
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      partial += d;
      for (let i = partial.indexOf('\n'); i >= 0; i = partial.indexOf('\n')) {
        const line = partial.slice(0, i);
        partial = partial.slice(i + 1);
        if (line.length > MAX_LINE) return refuse(`request of ${line.length} bytes, longer than ${MAX_LINE}`);
        if (line.trim() === '') continue;
        c.queue.push(line);
      }
      if (partial.length > MAX_LINE) return refuse(`request longer than ${MAX_LINE} bytes`);
      // pipelining is fine, an unbounded backlog is not: read on once this much is answered
      if (c.queue.length > MAX_PENDING) s.pause();
      this.makeReady(c);
    });
  }

  private makeReady(c: Client): void {
    if (c.ready || c.busy || c.gone || c.s.destroyed || c.queue.length === 0) return;
    c.ready = true;
    this.ready.push(c);
    if (!this.turnScheduled) {
      this.turnScheduled = true;
      setImmediate(this.turn);
    }
  }

  /** One turn: at most REQUESTS_PER_TURN answered, one per client per round; the rest next turn. */
  private readonly turn = (): void => {
    this.turnScheduled = false;
    let budget = REQUESTS_PER_TURN;
    while (budget > 0 && this.ready.length > 0) {
      const c = this.ready.shift()!;
      c.ready = false;
      const line = c.queue.shift();
      if (c.gone || line === undefined) continue;
      budget--;
      const a = this.answer(line);
      if (a instanceof Promise) {
        c.busy = true;
        void a.then((msg) => {
          c.busy = false;
          this.reply(c, msg);
          this.makeReady(c);
        });
      } else {
        this.reply(c, a);
      }
      this.makeReady(c);
    }
    if (this.ready.length > 0 && !this.turnScheduled) {
      this.turnScheduled = true;
      setImmediate(this.turn);
    }
  };

  private reply(c: Client, msg: object): void {
    const s = c.s;
    if (c.gone || s.destroyed) return;
    s.write(`${JSON.stringify(msg)}\n`);
    if (s.writableLength > MAX_UNREAD) {
      this.log(`ctl: error: a client does not read its replies (${s.writableLength} bytes unread): disconnected`, { level: 'error' });
      s.destroy();
      return;
    }
    if (s.isPaused() && c.queue.length === 0 && !c.busy) s.resume();
  }

  /** The reply to one request line: at once, or a promise of it (the request has to wait). */
  private answer(line: string): object | Promise<object> {
    let req: Request;
    try {
      const v: unknown = JSON.parse(line);
      if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new BadRequest('a request is a JSON object');
      req = v as Request;
    } catch (e) {
      const why = e instanceof BadRequest ? e.message : `not JSON: ${(e as Error).message}`;
      this.log(`ctl: error: bad request: ${why}`, { level: 'error' });
      return { ok: false, error: `bad request: ${why}` };
    }
    const id = req.id;
    const ok = (result: unknown): object => (id === undefined ? { ok: true, result } : { id, ok: true, result });
    const failed = (e: unknown): object => {
      const msg = (e as Error).message;
      this.log(`ctl: error: ${String(req.cmd)}: ${msg}`, { level: 'error', command: String(req.cmd) });
      return id === undefined ? { ok: false, error: msg } : { id, ok: false, error: msg };
    };
    try {
      const result = handleRequest(this.host, req);
      return result instanceof Promise ? result.then(ok, failed) : ok(result);
    } catch (e) {
      return failed(e);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const c of this.clients) c.s.destroy();
    this.ready.length = 0;
    this.server.close();
    try {
      fs.unlinkSync(this.path);
    } catch {
      /* gone already */
    }
  }
}
