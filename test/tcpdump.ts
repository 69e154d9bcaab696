// Reads a pcap file back with Debian's tcpdump (`tcpdump -r FILE -nn -e -x`), as a user would, and
// parses what it prints: one record per packet with its link-level addresses, ethertype, length
// and the bytes after the Ethernet header (what -x shows).
import { spawnSync } from 'node:child_process';

export interface TcpdumpRecord {
  /** the first line tcpdump printed for it */
  line: string;
  src: string;
  dst: string;
  /** e.g. 0x0800 */
  etherType: number;
  /** the frame's length as tcpdump reports it (Ethernet header included) */
  length: number;
  /** the bytes after the 14-byte Ethernet header */
  payload: Buffer;
}

export interface TcpdumpResult {
  records: TcpdumpRecord[];
  /** what tcpdump printed on stderr (e.g. "reading from file …", or a truncation complaint) */
  stderr: string;
  status: number | null;
}

const HEAD = /^\S+ ([0-9a-f:]{17}) > ([0-9a-f:]{17}), ethertype \S+ \((0x[0-9a-f]{4})\), length (\d+)/;
const HEX = /^\s+0x[0-9a-f]{4}:\s+((?:[0-9a-f]{2,4}\s?)+)/;

export function tcpdumpRead(file: string, extra: string[] = []): TcpdumpResult {
  const r = spawnSync('tcpdump', ['-r', file, '-nn', '-e', '-x', ...extra], { encoding: 'utf8', maxBuffer: 512 * 1024 * 1024 });
  if (r.error) throw new Error(`tcpdump could not run (Debian package tcpdump, listed in .ci/run): ${r.error.message}`);
  const records: TcpdumpRecord[] = [];
  let hex: string[] = [];
  let cur: Omit<TcpdumpRecord, 'payload'> | null = null;
  const done = (): void => {
    if (cur) records.push({ ...cur, payload: Buffer.from(hex.join(''), 'hex') });
    cur = null;
    hex = [];
  };
  for (const line of r.stdout.split('\n')) {
    const h = HEX.exec(line);
    if (h && cur) {
      hex.push(h[1].replace(/\s+/g, ''));
      continue;
    }
    const m = HEAD.exec(line);
    if (m) {
      done();
      cur = { line, src: m[1], dst: m[2], etherType: parseInt(m[3], 16), length: Number(m[4]) };
    }
  }
  done();
  return { records, stderr: r.stderr, status: r.status };
}
