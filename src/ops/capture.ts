// Packet capture to a pcap file (classic libpcap format, LINKTYPE_ETHERNET, microsecond stamps),
// written by hand: the format is 24 bytes of file header and 16 per record, and the records must
// be filled by the copy list on the data path, which no pcap package does.
//
//   port hook (per frame) ─► begin(n): 16-byte record header written into the active buffer,
//                            n bytes reserved ─► fromFrame / fromArea: copies recorded in the copy
//                            list, into the reserved bytes (they run with the batch)
//   flush (timer, or soon when the active buffer is half full) ─► copies settled, buffers swapped,
//                            the full one written with one positioned async write
//
// Two fixed buffers per capture: the data path never waits for the disk and never allocates. When
// the active buffer is full while the other is still being written, the record is not kept and is
// counted (dropped); the file stays a valid pcap (records are whole or absent).
//
// Where a capture writes: whoever may use the control socket (a group, with --ctl-mode 0660) names
// the file, and the switch writes it as root with bytes guests choose. So a capture file is always
// a new file, created inside the capture directory (--capture-dir) and nowhere else:
//   - the directory is opened anew for each capture, its last component not followed (O_NOFOLLOW),
//     and must belong to the switch's user with no write access for anyone else (made, 0700, when
//     missing);
//   - the name, relative to it (an absolute name must lie inside it), is walked one component at a
//     time with openat(O_NOFOLLOW): no symlink below the directory is followed, no ".." leaves it;
//   - the file is created with O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600: never an existing file, never
//     truncated, never through a symlink;
//   - every capture is capped at --capture-max-mb (CapturePolicy.maxBytes) unless it asks for less.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { copies } from '../datapath/copy-list';
import { native } from '../native';
import type { FrameCapture } from '../datapath/capture';
import type { Frame } from '../datapath/frame';
import type { Log } from '../log';

const PCAP_MAGIC_USEC = 0xa1b2c3d4;
const LINKTYPE_ETHERNET = 1;
/** tcpdump's own default snap length: every frame this switch carries (64 KiB GSO) fits whole */
export const PCAP_SNAPLEN = 262144;
export const PCAP_FILE_HEADER = 24;
export const PCAP_RECORD_HEADER = 16;
/** each of the two buffers of a capture */
export const DEFAULT_CAPTURE_BUFFER = 4 * 1024 * 1024;
/** the default capture directory's name, in the control socket's directory (see defaultCaptureDir) */
export const CAPTURE_DIR_NAME = 'captures';
/** period of the writer when the buffer is not filling fast */
const FLUSH_MS = 50;

export interface CaptureLimits {
  /** stop once the file would grow past this many bytes (headers included) */
  maxBytes?: number;
  /** stop after this many frames */
  maxFrames?: number;
}

/** What the switch allows captures: where (the capture directory) and how much. */
export interface CapturePolicy {
  /** the capture directory (--capture-dir), absolute; null: there is none, every capture is refused */
  dir: string | null;
  /** most bytes one capture may write, headers included (--capture-max-mb); also what a capture without max-bytes gets */
  maxBytes: number;
}

export interface CaptureSummary {
  port: string;
  file: string;
  frames: number;
  bytes: number;
  /** the capture ends once the file would pass this (its max-bytes, at most the switch's cap) */
  maxBytes: number;
  /** records not kept because the writer was behind */
  dropped: number;
  /** why it ended (null while running): 'stopped', 'max-bytes', 'max-frames', 'exit' or an error */
  ended: string | null;
}

export function pcapFileHeader(): Uint8Array {
  const h = new Uint8Array(PCAP_FILE_HEADER);
  const v = new DataView(h.buffer);
  v.setUint32(0, PCAP_MAGIC_USEC, true);
  v.setUint16(4, 2, true);
  v.setUint16(6, 4, true);
  v.setInt32(8, 0, true); // thiszone: UTC
  v.setUint32(12, 0, true); // sigfigs
  v.setUint32(16, PCAP_SNAPLEN, true);
  v.setUint32(20, LINKTYPE_ETHERNET, true);
  return h;
}

export class PcapCapture implements FrameCapture {
  private readonly bufs: Uint8Array[];
  private readonly views: DataView[];
  private readonly areas: Int32Array;
  private readonly bufSize: number;
  private active = 0;
  /** bytes filled in the active buffer */
  private used = 0;
  /** where the current record's next bytes go in the active buffer */
  private at = 0;
  /** a write of the other buffer is in flight */
  private writing = false;
  private writingLen = 0;
  private writingPos = 0;
  /** file position of the next buffer written */
  private filePos = PCAP_FILE_HEADER;
  private soon = false;
  private readonly timer: NodeJS.Timeout;
  /** [seconds, microseconds], filled by native.clockRead() */
  private readonly clock = native.clockWord();
  private readonly maxBytes: number;
  private readonly maxFrames: number;
  /** [frames kept, file bytes, records dropped] */
  private readonly tally = new Float64Array(3);
  private endedBy: string | null = null;
  private closed = false;
  private finishWaiters: (() => void)[] = [];
  private readonly flushSoon = (): void => {
    this.soon = false;
    this.flush();
  };

  /**
   * fd: the file, open for writing, its pcap file header already written (start() does both).
   * onEnd: called once when the capture ended by itself (a cap reached, a write error).
   */
  constructor(
    readonly port: string,
    readonly file: string,
    private readonly fd: number,
    limits: CaptureLimits,
    private readonly onEnd: (c: PcapCapture) => void,
    bufferBytes = DEFAULT_CAPTURE_BUFFER,
  ) {
    this.maxBytes = limits.maxBytes ?? Infinity;
    this.maxFrames = limits.maxFrames ?? Infinity;
    this.bufSize = bufferBytes;
    this.bufs = [new Uint8Array(bufferBytes), new Uint8Array(bufferBytes)];
    this.views = this.bufs.map((b) => new DataView(b.buffer, b.byteOffset, b.byteLength));
    this.areas = Int32Array.from(this.bufs.map((b) => copies.register(b)));
    this.tally[1] = PCAP_FILE_HEADER;
    this.timer = setInterval(() => this.flush(), FLUSH_MS).unref();
  }

  /**
   * Writes the pcap file header to fd (a new, empty file: createCaptureFile()) and returns the
   * capture; the fd is closed when writing the header fails.
   */
  static start(port: string, file: string, fd: number, limits: CaptureLimits, onEnd: (c: PcapCapture) => void, bufferBytes?: number): PcapCapture {
    if (limits.maxBytes !== undefined && limits.maxBytes < PCAP_FILE_HEADER) {
      fs.closeSync(fd);
      throw new Error(`max-bytes ${limits.maxBytes} is less than the ${PCAP_FILE_HEADER}-byte pcap file header`);
    }
    try {
      fs.writeSync(fd, pcapFileHeader(), 0, PCAP_FILE_HEADER, 0);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    return new PcapCapture(port, file, fd, limits, onEnd, bufferBytes);
  }

  get summary(): CaptureSummary {
    return { port: this.port, file: this.file, frames: this.tally[0], bytes: this.tally[1], maxBytes: this.maxBytes, dropped: this.tally[2], ended: this.endedBy };
  }

  get frames(): number {
    return this.tally[0];
  }
  get dropped(): number {
    return this.tally[2];
  }

  // ---- FrameCapture: the data path

  frame(frame: Frame): void {
    const n = frame.ethLen;
    if (this.begin(n)) this.fromFrame(frame, 0, n);
  }

  begin(n: number): boolean {
    if (this.endedBy !== null) return false;
    const need = PCAP_RECORD_HEADER + n;
    if (this.tally[1] + need > this.maxBytes) {
      this.end('max-bytes');
      return false;
    }
    const used = this.used;
    if (used + need > this.bufSize) {
      this.tally[2]++;
      this.wake();
      return false;
    }
    native.clockRead();
    const c = this.clock;
    const v = this.views[this.active];
    v.setUint32(used, c[0], true);
    v.setUint32(used + 4, c[1], true);
    v.setUint32(used + 8, n, true);
    v.setUint32(used + 12, n, true);
    this.at = used + PCAP_RECORD_HEADER;
    this.used = used + need;
    this.tally[1] += need;
    if (++this.tally[0] >= this.maxFrames) this.end('max-frames');
    if (this.used > this.bufSize >>> 1) this.wake();
    return true;
  }

  fromFrame(frame: Frame, from: number, n: number): void {
    frame.seek(from);
    frame.copyOut(n, this.areas[this.active], this.at);
    this.at += n;
  }

  fromArea(area: number, off: number, n: number): void {
    copies.record(area, off, this.areas[this.active], this.at, n);
    this.at += n;
  }

  // ---- the writer

  private wake(): void {
    if (this.soon || this.writing) return;
    this.soon = true;
    setImmediate(this.flushSoon);
  }

  private end(reason: string): void {
    if (this.endedBy !== null) return;
    this.endedBy = reason;
    this.wake();
  }

  /** Writes the active buffer if the other one is free; finishes once ended and all is written. */
  private flush(): void {
    if (this.writing || this.closed) return;
    if (this.used === 0) {
      if (this.endedBy !== null) this.finish();
      return;
    }
    copies.settle(); // the records' bytes are copies of the batch: they must have run
    const b = this.active;
    const len = this.used;
    this.active = b ^ 1;
    this.used = 0;
    this.writing = true;
    this.writingLen = len;
    this.writingPos = this.filePos;
    this.writeOut(b, 0, len, this.filePos);
  }

  private writeOut(b: number, off: number, len: number, pos: number): void {
    fs.write(this.fd, this.bufs[b], off, len, pos, (err, n) => {
      if (this.closed) return;
      if (err) {
        this.writing = false;
        this.endedBy = `error: ${err.message}`;
        this.finish();
        return;
      }
      if (n < len) {
        this.writeOut(b, off + n, len - n, pos + n);
        return;
      }
      this.writing = false;
      this.filePos = this.writingPos + this.writingLen;
      this.flush();
    });
  }

  /** The capture ended by itself or was stopped, everything is written: close, tell the owner. */
  private finish(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    fs.close(this.fd, () => {});
    this.release();
    for (const w of this.finishWaiters) w();
    this.finishWaiters = [];
    if (this.endedBy !== 'stopped') this.onEnd(this);
  }

  private release(): void {
    for (const a of this.areas) copies.unregister(a);
  }

  /** Stop (the port's hook must be off already): resolves once every record kept is in the file. */
  stop(): Promise<CaptureSummary> {
    if (this.endedBy === null) this.endedBy = 'stopped';
    return new Promise((resolve) => {
      if (this.closed) {
        resolve(this.summary);
        return;
      }
      this.finishWaiters.push(() => resolve(this.summary));
      this.flush();
    });
  }

  /** At process exit: write what is left now, synchronously. */
  stopSync(): CaptureSummary {
    if (this.closed) return this.summary;
    if (this.endedBy === null) this.endedBy = 'exit';
    this.closed = true;
    clearInterval(this.timer);
    copies.settle();
    let pos = this.filePos;
    if (this.writing) {
      // the write in flight may not finish before the process exits: the same bytes again, here
      fs.writeSync(this.fd, this.bufs[this.active ^ 1], 0, this.writingLen, this.writingPos);
      pos = this.writingPos + this.writingLen;
    }
    if (this.used > 0) fs.writeSync(this.fd, this.bufs[this.active], 0, this.used, pos);
    this.used = 0;
    // with a write in flight the fd stays open (the process is about to exit): closing it now
    // could let the next open reuse its number under that write
    if (!this.writing) fs.closeSync(this.fd);
    this.release();
    return this.summary;
  }
}

/** A port a capture can be attached to (VhostUserPort, TapPort, VxlanPort). */
export interface CapturablePort {
  readonly name: string;
  setCapture(capture: FrameCapture | null): void;
}

/** "PORT=FILE[,max-bytes=N][,max-frames=N]" (--capture) */
export function parseCaptureSpec(s: string): { port: string; file: string; limits: CaptureLimits } {
  const eq = s.indexOf('=');
  if (eq <= 0) throw new Error(`capture "${s}": want PORT=FILE[,max-bytes=N][,max-frames=N]`);
  const port = s.slice(0, eq);
  const [file, ...opts] = s.slice(eq + 1).split(',');
  if (!file) throw new Error(`capture "${s}": no file`);
  return { port, file, limits: parseCaptureLimits(opts, s) };
}

/** ["max-bytes=N", "max-frames=N"] → limits (ctl capture takes the same words) */
export function parseCaptureLimits(opts: string[], where: string): CaptureLimits {
  const limits: CaptureLimits = {};
  for (const o of opts) {
    const m = /^(max-bytes|max-frames)=(\d+)$/.exec(o);
    if (!m || Number(m[2]) < 1) throw new Error(`capture "${where}": "${o}" is not max-bytes=N or max-frames=N (N >= 1)`);
    if (m[1] === 'max-bytes') limits.maxBytes = Number(m[2]);
    else limits.maxFrames = Number(m[2]);
  }
  return limits;
}

const errCode = (e: unknown): string | undefined => (e as { code?: string }).code;

/**
 * Opens the capture directory for one capture: made (mode 0700) when missing; refused when its last
 * component is a symlink or not a directory, when it is not the switch's user's, or when others may
 * write it (they could swap what is in it). Returns its fd (the caller closes it).
 */
export function openCaptureDir(dir: string): number {
  const { O_RDONLY, O_DIRECTORY, O_NOFOLLOW } = fs.constants;
  const open = (): number => fs.openSync(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  let fd: number;
  try {
    fd = open();
  } catch (e) {
    const code = errCode(e);
    if (code === 'ELOOP' || code === 'ENOTDIR') throw new Error(`${dir}: the capture directory is a symlink or not a directory (give --capture-dir a directory itself)`);
    if (code !== 'ENOENT') throw new Error(`capture directory ${dir}: ${(e as Error).message}`);
    try {
      // not recursive: its parent is the operator's to make
      fs.mkdirSync(dir, { mode: 0o700 });
      fd = open();
    } catch (e2) {
      throw new Error(`the capture directory ${dir} cannot be made: ${(e2 as Error).message}`);
    }
  }
  const st = fs.fstatSync(fd);
  const me = process.geteuid?.() ?? st.uid;
  let problem: string | null = null;
  if (st.uid !== me) problem = `the capture directory belongs to uid ${st.uid}, not to the switch's (${me})`;
  else if ((st.mode & 0o022) !== 0) problem = `others may write it (mode 0${(st.mode & 0o777).toString(8)}): chmod go-w it, or give --capture-dir another`;
  if (problem !== null) {
    fs.closeSync(fd);
    throw new Error(`${dir}: ${problem}`);
  }
  return fd;
}

/**
 * Creates a capture file: file relative to dir, or absolute inside it; any directory on the way must
 * exist and is not followed if a symlink; the file must not exist (O_CREAT|O_EXCL|O_NOFOLLOW, 0600).
 * Returns the open fd and the file's absolute path; throws with the reason.
 */
export function createCaptureFile(dir: string, file: string): { fd: number; path: string } {
  const inside = (base: string): string | null => {
    const rel = path.relative(base, path.resolve(base, file));
    return rel === '..' || rel.startsWith(`..${path.sep}`) || path.isAbsolute(rel) ? null : rel;
  };
  // an absolute name may spell the directory through a symlink of the operator's (/var/run → /run)
  let rel = inside(dir);
  if (rel === null && path.isAbsolute(file)) {
    try {
      rel = inside(fs.realpathSync(dir));
    } catch {
      /* no such directory yet: the name is outside anyway */
    }
  }
  if (rel === null) throw new Error(`capture file ${file}: outside the capture directory ${dir} (give a name in it, e.g. ${path.basename(file)})`);
  if (rel === '') throw new Error(`capture file ${file}: that is the capture directory itself, not a file in it`);
  const parts = rel.split(path.sep);
  const { O_RDONLY, O_WRONLY, O_DIRECTORY, O_NOFOLLOW, O_CREAT, O_EXCL } = fs.constants;
  const fds = [openCaptureDir(dir)];
  try {
    for (let i = 0; i < parts.length - 1; i++) {
      const sub = parts.slice(0, i + 1).join('/');
      try {
        fds.push(native.openAt(fds[fds.length - 1], parts[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0));
      } catch (e) {
        const code = errCode(e);
        if (code === 'ELOOP' || code === 'ENOTDIR') throw new Error(`capture file ${file}: ${sub}: a symlink or not a directory, not followed`);
        if (code === 'ENOENT') throw new Error(`capture file ${file}: there is no directory ${sub} in the capture directory ${dir}`);
        throw new Error(`capture file ${file}: ${sub}: ${(e as Error).message}`);
      }
    }
    const full = path.join(dir, rel);
    try {
      return { fd: native.openAt(fds[fds.length - 1], parts[parts.length - 1], O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600), path: full };
    } catch (e) {
      if (errCode(e) === 'EEXIST') throw new Error(`${full} exists: a capture never overwrites a file (remove it or give another name)`);
      throw new Error(`capture file ${full}: ${(e as Error).message}`);
    }
  } finally {
    for (const fd of fds) fs.closeSync(fd);
  }
}

/** The captures running, one per port at most, by port name. */
export class CaptureManager {
  private readonly running = new Map<string, { capture: PcapCapture; port: CapturablePort }>();

  constructor(private readonly log: Log, private readonly policy: CapturePolicy, private readonly bufferBytes = DEFAULT_CAPTURE_BUFFER) {}

  /** Starts capturing port into a new file (see createCaptureFile); throws with the reason. */
  start(port: CapturablePort, file: string, limits: CaptureLimits = {}): CaptureSummary {
    if (this.running.has(port.name)) throw new Error(`port ${port.name} is already being captured (to ${this.running.get(port.name)!.capture.file})`);
    const dir = this.policy.dir;
    if (dir === null) throw new Error('no capture directory: give --capture-dir DIR (or --ctl, whose directory then holds captures/)');
    const cap = this.policy.maxBytes;
    if (limits.maxBytes !== undefined && limits.maxBytes > cap) throw new Error(`max-bytes ${limits.maxBytes} is more than the switch allows (--capture-max-mb: ${cap} bytes)`);
    if (limits.maxBytes !== undefined && limits.maxBytes < PCAP_FILE_HEADER) throw new Error(`max-bytes ${limits.maxBytes} is less than the ${PCAP_FILE_HEADER}-byte pcap file header`);
    const capped: CaptureLimits = { ...limits, maxBytes: limits.maxBytes ?? cap };
    const f = createCaptureFile(dir, file);
    const capture = PcapCapture.start(port.name, f.path, f.fd, capped, (c) => this.ended(c), this.bufferBytes);
    this.running.set(port.name, { capture, port });
    port.setCapture(capture);
    const caps = [`max-bytes=${capped.maxBytes}${limits.maxBytes === undefined ? ' (--capture-max-mb)' : ''}`, limits.maxFrames !== undefined ? `max-frames=${limits.maxFrames}` : ''].filter(Boolean).join(' ');
    this.log(`capture of ${port.name} to ${f.path} started (${caps})`, { port: port.name, path: f.path });
    return capture.summary;
  }

  /** Stops the capture of a port: resolves once its file is complete. */
  async stop(portName: string): Promise<CaptureSummary> {
    const r = this.running.get(portName);
    if (!r) throw new Error(`no capture running on port ${portName}`);
    this.running.delete(portName);
    r.port.setCapture(null);
    const s = await r.capture.stop();
    this.logEnd(s);
    return s;
  }

  list(): CaptureSummary[] {
    return [...this.running.values()].map((r) => r.capture.summary);
  }

  has(portName: string): boolean {
    return this.running.has(portName);
  }

  /** At exit: every file completed now, synchronously. */
  stopAllSync(): void {
    for (const [name, r] of this.running) {
      r.port.setCapture(null);
      this.logEnd(r.capture.stopSync());
      this.running.delete(name);
    }
  }

  private ended(c: PcapCapture): void {
    const r = this.running.get(c.port);
    if (r && r.capture === c) {
      this.running.delete(c.port);
      r.port.setCapture(null);
    }
    this.logEnd(c.summary);
  }

  private logEnd(s: CaptureSummary): void {
    const err = s.ended !== null && s.ended.startsWith('error') ? 'error: ' : '';
    this.log(`${err}capture of ${s.port} to ${s.file} ended (${s.ended}): ${s.frames} frames, ${s.bytes} bytes${s.dropped > 0 ? `, ${s.dropped} records dropped (the writer was behind)` : ''}`, {
      level: err ? 'error' : s.dropped > 0 ? 'warn' : 'info',
      port: s.port,
      path: s.file,
      frames: s.frames,
      bytes: s.bytes,
      dropped: s.dropped,
    });
  }
}
