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
import * as fs from 'node:fs';
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
/** period of the writer when the buffer is not filling fast */
const FLUSH_MS = 50;

export interface CaptureLimits {
  /** stop once the file would grow past this many bytes (headers included) */
  maxBytes?: number;
  /** stop after this many frames */
  maxFrames?: number;
}

export interface CaptureSummary {
  port: string;
  file: string;
  frames: number;
  bytes: number;
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

  /** Opens (truncates) file, writes the pcap file header and returns the capture. */
  static start(port: string, file: string, limits: CaptureLimits, onEnd: (c: PcapCapture) => void, bufferBytes?: number): PcapCapture {
    if (limits.maxBytes !== undefined && limits.maxBytes < PCAP_FILE_HEADER) {
      throw new Error(`max-bytes ${limits.maxBytes} is less than the ${PCAP_FILE_HEADER}-byte pcap file header`);
    }
    const fd = fs.openSync(file, 'w', 0o600);
    try {
      fs.writeSync(fd, pcapFileHeader(), 0, PCAP_FILE_HEADER, 0);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    return new PcapCapture(port, file, fd, limits, onEnd, bufferBytes);
  }

  get summary(): CaptureSummary {
    return { port: this.port, file: this.file, frames: this.tally[0], bytes: this.tally[1], dropped: this.tally[2], ended: this.endedBy };
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

/** The captures running, one per port at most, by port name. */
export class CaptureManager {
  private readonly running = new Map<string, { capture: PcapCapture; port: CapturablePort }>();

  constructor(private readonly log: Log, private readonly bufferBytes = DEFAULT_CAPTURE_BUFFER) {}

  start(port: CapturablePort, file: string, limits: CaptureLimits = {}): CaptureSummary {
    if (this.running.has(port.name)) throw new Error(`port ${port.name} is already being captured (to ${this.running.get(port.name)!.capture.file})`);
    const capture = PcapCapture.start(port.name, file, limits, (c) => this.ended(c), this.bufferBytes);
    this.running.set(port.name, { capture, port });
    port.setCapture(capture);
    const caps = [limits.maxBytes !== undefined ? `max-bytes=${limits.maxBytes}` : '', limits.maxFrames !== undefined ? `max-frames=${limits.maxFrames}` : ''].filter(Boolean).join(' ');
    this.log(`capture of ${port.name} to ${file} started${caps ? ` (${caps})` : ''}`, { port: port.name, path: file });
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
