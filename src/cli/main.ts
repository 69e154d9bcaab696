#!/usr/bin/env node
// elastic-vhost: a vhost-user virtual switch with an elastic FIFO for QEMU guests.
import { Command, InvalidArgumentError, Option } from 'commander';
import { DEFAULT_MAX_PORTS, MAX_FRAME_LEN, MIN_FRAME_LEN } from '../engine/switch';
import { DEFAULT_MAX_CHAIN_DESCRIPTORS } from '../virtio/split-ring';
import { MAX_SEGMENTS } from '../virtio/chain';
import { ENGINE_HDR_LEN } from '../datapath/layout';
import { DEFAULT_MAX_MAPPED, DEFAULT_MAX_MEM_SLOTS, DEFAULT_MAX_QUEUE_PAIRS, DEFAULT_MAX_TOTAL_MAPPED } from '../vhost-user/session';
import { MAX_TABLE_REGIONS } from '../vhost-user/message';
import { PortSpec, RunningSwitch, runSwitch, Settings } from './running-switch';
import { defaultCtlPath, withOps, type Ops, type OpsSettings } from '../ops/ops';
import { parseListenAddress } from '../ops/metrics';
import { parseCaptureSpec } from '../ops/capture';
import { runCtl } from './ctl';

const GiB = 1024 * 1024 * 1024;

/** --poll-us default: event mode (see README, "Polling", for the measurement behind it) */
export const DEFAULT_POLL_US = 0;

/** "PATH[,mac=aa:bb:cc:dd:ee:ff][,share=BLOCKS][,name=NAME][,queues=N][,offload=on|off]" */
export function parsePortSpec(s: string): PortSpec {
  const [p, ...opts] = s.split(',');
  if (!p) throw new InvalidArgumentError(`empty socket path in "${s}"`);
  const spec: PortSpec = { path: p };
  for (const o of opts) {
    const eq = o.indexOf('=');
    const k = eq < 0 ? o : o.slice(0, eq);
    const v = eq < 0 ? '' : o.slice(eq + 1);
    if (k === 'mac') {
      if (!/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/.test(v)) throw new InvalidArgumentError(`bad MAC "${v}" in "${s}"`);
      spec.mac = v.toLowerCase();
    } else if (k === 'share') {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`bad share "${v}" in "${s}"`);
      spec.share = n;
    } else if (k === 'name') {
      if (!v) throw new InvalidArgumentError(`empty name in "${s}"`);
      spec.name = v;
    } else if (k === 'queues') {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1 || n > MOST_QUEUE_PAIRS) throw new InvalidArgumentError(`bad queues "${v}" in "${s}" (1 to ${MOST_QUEUE_PAIRS})`);
      spec.queues = n;
    } else if (k === 'offload') {
      if (v !== 'on' && v !== 'off') throw new InvalidArgumentError(`bad offload "${v}" in "${s}" (on or off)`);
      spec.offload = v === 'on';
    } else {
      throw new InvalidArgumentError(`unknown port option "${k}" in "${s}" (mac=, share=, name=, queues=, offload=)`);
    }
  }
  return spec;
}

function collect<T>(parse: (s: string) => T) {
  return (v: string, prev: T[] = []): T[] => [...prev, parse(v)];
}

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`"${v}" is not a whole number`);
  return n;
}

/** a whole number of at least 1 (0 makes no sense for this option) */
function atLeastOne(v: string): number {
  const n = positiveInt(v);
  if (n === 0) throw new InvalidArgumentError('0 makes no sense here: give 1 or more');
  return n;
}

/** a whole number in [min, max] (0 refused when min is 1) */
function inRange(min: number, max: number) {
  return (v: string): number => {
    const n = min >= 1 ? atLeastOne(v) : positiveInt(v);
    if (n < min || n > max) throw new InvalidArgumentError(`give a number from ${min} to ${max}`);
    return n;
  };
}

/** vhost-user rings per connection: 2 per queue pair, ring indices are 8 bits in VRING messages */
const MOST_QUEUE_PAIRS = 128;
/** ADD_MEM_REG slots: what libvhost-user and QEMU allow (VHOST_USER_MAX_RAM_SLOTS) */
const MOST_MEM_SLOTS = 509;

function timestamp(): string {
  return new Date().toISOString();
}

export function buildProgram(): Command {
  return new Command()
    .name('elastic-vhost')
    .description('vhost-user virtual switch for QEMU guests: frames with no known destination or no free RX buffers wait in an elastic FIFO instead of being dropped')
    .option('-s, --socket <spec>', 'vhost-user port in server mode: listen on PATH, QEMU connects (chardev reconnect=1). Repeatable. Spec: PATH[,mac=MAC][,share=BLOCKS][,name=NAME][,queues=N][,offload=on|off]', collect(parsePortSpec), [])
    .option('-c, --client <spec>', 'vhost-user port in client mode: connect to QEMU listening on PATH (chardev server=on), retrying. Repeatable; same spec as --socket', collect(parsePortSpec), [])
    .option('-t, --tap <name>', 'host uplink: attach (create if needed) TAP device NAME; address and bring it up on the host yourself')
    .option('--pool-mb <n>', 'size of the local data store (elastic FIFO) in MiB (32 MiB = 16384 blocks of 2 KiB)', atLeastOne, 32)
    .option('--block-size <bytes>', 'local data store block size (multiple of 8, >= 128)', atLeastOne, 2048)
    .option('--share-limit <blocks>', 'default most blocks one port may hold queued (default: half the pool)', atLeastOne)
    .option('--hold-ms <ms>', 'how long frames to an unknown MAC are held before the unknown policy applies', positiveInt, 250)
    .addOption(new Option('--unknown <policy>', 'what happens to held frames past the hold time').choices(['flood', 'drop']).default('flood'))
    .option('--mac-age-s <s>', 'forget learned MACs unused for this long', atLeastOne, 300)
    .option('--queues <n>', 'queue pairs offered per vhost-user port (GET_QUEUE_NUM): a ring beyond is refused', inRange(1, MOST_QUEUE_PAIRS), DEFAULT_MAX_QUEUE_PAIRS)
    .option('--max-ports <n>', 'most connections (vhost-user ports and the TAP uplink) attached at once; a front-end beyond is refused, counted', atLeastOne, DEFAULT_MAX_PORTS)
    .option('--max-regions <n>', `most memory regions one connection may have (GET_MAX_MEM_SLOTS; SET_MEM_TABLE carries at most ${MAX_TABLE_REGIONS})`, inRange(1, MOST_MEM_SLOTS), DEFAULT_MAX_MEM_SLOTS)
    .option('--max-frame-bytes <n>', `largest Ethernet frame taken from a port (a longer one is dropped, counted as tooBig)`, inRange(MIN_FRAME_LEN - ENGINE_HDR_LEN, MAX_FRAME_LEN - ENGINE_HDR_LEN), MAX_FRAME_LEN - ENGINE_HDR_LEN)
    .option('--max-chain-descriptors <n>', 'most descriptors one descriptor chain may have (a longer one marks its ring broken, counted)', inRange(1, MAX_SEGMENTS), DEFAULT_MAX_CHAIN_DESCRIPTORS)
    .option('--no-offload', 'offer no checksum/TSO offloads to guests and the TAP uplink (guests then send MTU-sized, checksummed frames)')
    .addOption(
      new Option('--socket-mode <octal>', 'mode of the socket files created (octal)')
        .argParser((v) => {
          if (!/^0?[0-7]{3}$/.test(v)) throw new InvalidArgumentError(`"${v}" is not an octal mode`);
          return parseInt(v, 8);
        })
        .default(0o600, '0600'),
    )
    .option('--socket-path <path>', 'one vhost-user port in server mode, as QEMU\'s own back-ends take it (vhost-user.rst, "Backend program conventions"); same as --socket PATH')
    .option('--fd <fdnum>', 'one vhost-user port on an already connected socket inherited as this fd (backend program conventions); the process ends when that session ends', positiveInt)
    .option('--print-capabilities', 'print the back-end capabilities as JSON ({"type": "net"}) and exit')
    .option('--stats-file <path>', 'write engine and port counters as JSON to PATH every --stats-interval ms (and on exit)')
    .option('--stats-interval <ms>', 'period of --stats-file writes and of the log line with counters (0: none)', positiveInt, 1000)
    .option('--max-guest-mem-gb <n>', 'most guest memory one vhost-user connection may map, in GiB (a larger memory table is refused)', atLeastOne, DEFAULT_MAX_MAPPED / GiB)
    .option('--max-total-mem-gb <n>', 'most guest memory all connections may map together, in GiB', atLeastOne, DEFAULT_MAX_TOTAL_MAPPED / GiB)
    .option('--poll-us <us>', `adaptive polling: after a batch keep polling the TX rings that had work for up to this many microseconds of no new work before sleeping on their kick eventfds again (0: pure event mode; costs CPU while polling)`, positiveInt, DEFAULT_POLL_US)
    .option('-q, --quiet', 'log only errors and connection events')
    .option('--metrics <[addr:]port>', 'serve Prometheus metrics at http://ADDR:PORT/metrics (ADDR default 127.0.0.1)', argOf(parseListenAddress, '--metrics'))
    .option('--ctl [path]', 'control socket for `elastic-vhost ctl` (no PATH: elastic-vhost.ctl next to the first --socket/--client socket)')
    .addOption(new Option('--ctl-mode <octal>', 'mode of the control socket (octal)').argParser(octalMode).default(0o600, '0600'))
    .option('--capture <spec>', 'capture a port, both directions, to a pcap file from the start: PORT=FILE[,max-bytes=N][,max-frames=N]. Repeatable', collect(argOf(parseCaptureSpec, '--capture')), []);
}

/** an option parser from a function that throws Error */
function argOf<T>(parse: (s: string, what: string) => T, what: string) {
  return (v: string): T => {
    try {
      return parse(v, what);
    } catch (e) {
      throw new InvalidArgumentError((e as Error).message);
    }
  };
}

function octalMode(v: string): number {
  if (!/^0?[0-7]{3}$/.test(v)) throw new InvalidArgumentError(`"${v}" is not an octal mode`);
  return parseInt(v, 8);
}

export type { PortSpec, RunningSwitch } from './running-switch';

export function start(argv: string[], log: (msg: string) => void = (m) => console.log(`${timestamp()} ${m}`)): RunningSwitch & { ops: Ops } {
  const program = buildProgram();
  program.parse(argv);
  const o = program.opts();
  const ports: PortSpec[] = [
    ...(o.socket as PortSpec[]).map((spec) => ({ ...spec, mode: 'server' as const })),
    ...(o.client as PortSpec[]).map((spec) => ({ ...spec, mode: 'client' as const })),
  ];
  if (o.socketPath !== undefined) {
    if (o.fd !== undefined) program.error('--socket-path and --fd exclude each other');
    ports.push({ path: o.socketPath, name: 'vhost-user' });
  }
  if (ports.length === 0 && !o.tap && o.fd === undefined) {
    program.error('give at least one --socket, --client, --socket-path, --fd or --tap');
  }
  const wanted = ports.length + (o.tap ? 1 : 0) + (o.fd !== undefined ? 1 : 0);
  if (wanted > o.maxPorts) program.error(`${wanted} ports given, more than --max-ports ${o.maxPorts}`);
  const settings: Settings = {
    ports,
    tap: o.tap,
    poolMb: o.poolMb,
    blockSize: o.blockSize,
    shareLimit: o.shareLimit,
    holdMs: o.holdMs,
    unknown: o.unknown,
    macAgeS: o.macAgeS,
    queues: o.queues,
    maxPorts: o.maxPorts,
    maxRegions: o.maxRegions,
    maxFrameBytes: o.maxFrameBytes,
    maxChainDescriptors: o.maxChainDescriptors,
    offload: o.offload,
    socketMode: o.socketMode,
    statsFile: o.statsFile,
    statsInterval: o.statsInterval,
    maxGuestMemGb: o.maxGuestMemGb,
    maxTotalMemGb: o.maxTotalMemGb,
    pollUs: o.pollUs,
    quiet: o.quiet === true,
    fd: o.fd,
  };
  const ops: OpsSettings = {
    metrics: o.metrics,
    ctl: o.ctl === true ? defaultCtlPath(ports) : o.ctl,
    ctlMode: o.ctlMode,
    captures: o.capture,
  };
  const running = runSwitch(settings, log);
  try {
    return withOps(running, ports, ops, log);
  } catch (e) {
    running.close();
    throw e;
  }
}

/** --print-capabilities (vhost-user.rst, "Backend program conventions"): before any other validation */
export const CAPABILITIES = { type: 'net' };

function main(): void {
  if (process.argv[2] === 'ctl') {
    void runCtl(process.argv.slice(3)).then((code) => process.exit(code));
    return;
  }
  if (process.argv.includes('--print-capabilities')) {
    process.stdout.write(`${JSON.stringify(CAPABILITIES)}\n`);
    process.exit(0);
  }
  let running: RunningSwitch;
  try {
    running = start(process.argv);
  } catch (e) {
    console.error(`elastic-vhost: ${(e as Error).message}`);
    process.exit(1);
  }
  (running as RunningSwitch & { ops: Ops }).ops.ready.catch((e) => {
    console.error(`elastic-vhost: ${(e as Error).message}`);
    running.close();
    process.exit(1);
  });
  const stop = (sig: string) => {
    console.log(`${timestamp()} ${sig}: closing every port`);
    running.close();
    process.exit(0);
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGUSR1', () => console.log(JSON.stringify(running.stats())));
}

if (require.main === module) main();
