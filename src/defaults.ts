// Every setting's default, once. The engine (Switch), the vhost-user session, the virtqueues, the
// command line (src/cli/options.ts), the config file's schema and the README tables all take
// their defaults from here; test/unit/defaults.test.ts checks that each of them says the same.
// Keys are the config file's (the command line's long options in camelCase), in their units.
import { ENGINE_HDR_LEN, MAX_FRAME } from './datapath/layout';
import { MAX_SEGMENTS } from './virtio/chain';

export interface Defaults {
  poolMb: number;
  blockSize: number;
  holdMs: number;
  unknown: 'flood' | 'drop';
  macAgeS: number;
  macTableSize: number;
  queues: number;
  maxPorts: number;
  maxRegions: number;
  maxFrameBytes: number;
  maxChainDescriptors: number;
  offload: boolean;
  socketMode: number;
  ctlMode: number;
  captureMaxMb: number;
  statsInterval: number;
  maxGuestMemGb: number;
  maxTotalMemGb: number;
  pollUs: number;
  workers: number;
  logLevel: LogLevel;
  logCounters: boolean;
  quiet: boolean;
}

export const DEFAULTS: Readonly<Defaults> = Object.freeze({
  /** local data store (elastic FIFO) in MiB: 16384 blocks of 2 KiB */
  poolMb: 32,
  /** one block holds a 1518-byte frame with its header */
  blockSize: 2048,
  /** frames to an unknown MAC are held this long before the unknown policy applies */
  holdMs: 250,
  unknown: 'flood',
  /** learned MACs unused this long are forgotten */
  macAgeS: 300,
  /** MAC table slots (at most 3/4 used); the engine's only, no option */
  macTableSize: 8192,
  /** queue pairs offered per vhost-user connection (GET_QUEUE_NUM) */
  queues: 8,
  /** connections at once: vhost-user ports and the TAP uplink */
  maxPorts: 64,
  /** memory regions per connection (GET_MAX_MEM_SLOTS) */
  maxRegions: 32,
  /** largest Ethernet frame: a 64 KiB GSO payload with headers and one VLAN tag */
  maxFrameBytes: MAX_FRAME - ENGINE_HDR_LEN,
  /** descriptors per chain: what one preallocated scatter list holds */
  maxChainDescriptors: MAX_SEGMENTS,
  offload: true,
  socketMode: 0o600,
  /** the control socket (--ctl): the switch's operator only */
  ctlMode: 0o600,
  /** most MiB one packet capture writes (what a capture without max-bytes gets, and the most one may ask for) */
  captureMaxMb: 256,
  /** ms between stats-file writes (and counters log lines) */
  statsInterval: 1000,
  maxGuestMemGb: 512,
  maxTotalMemGb: 4096,
  /** event mode (see README, "Polling", for the measurement behind it) */
  pollUs: 0,
  /** data-plane threads (1: the one loop; see BENCHMARKS.md, "Worker threads") */
  workers: 1,
  logLevel: 'info',
  logCounters: false,
  quiet: false,
});

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';
export const LOG_LEVELS: readonly LogLevel[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;
