#!/usr/bin/env node
// elastic-vhost: a vhost-user virtual switch with an elastic FIFO for QEMU guests.
import { Command, InvalidArgumentError, Option } from 'commander';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DEFAULT_MAX_PORTS, MAX_FRAME_LEN, MIN_FRAME_LEN, Switch } from '../engine/switch';
import { DEFAULT_MAX_CHAIN_DESCRIPTORS, chainLimitHits } from '../virtio/split-ring';
import { MAX_SEGMENTS } from '../virtio/chain';
import { ENGINE_HDR_LEN } from '../datapath/layout';
import { VhostUserPort } from '../ports/vhost-user/port';
import { TapPort } from '../ports/tap-port';
import { Dialer, Endpoint, Listener } from '../vhost-user/server';
import { DEFAULT_FEATURES, DEFAULT_MAX_MAPPED, DEFAULT_MAX_MEM_SLOTS, DEFAULT_MAX_QUEUE_PAIRS, DEFAULT_MAX_TOTAL_MAPPED, limitHits, OFFLOAD_FEATURES } from '../vhost-user/session';
import { MAX_TABLE_REGIONS } from '../vhost-user/message';

const GiB = 1024 * 1024 * 1024;
import { PollLoop } from '../ports/poll-loop';
import { native } from '../native';
import { parseWebAddress, WebView } from '../ops/web';
import { webSample } from '../ops/web-sample';
import { resolveSocketOwner } from './socket-owner';

/** --poll-us default: event mode (see README, "Polling", for the measurement behind it) */
export const DEFAULT_POLL_US = 0;

export interface PortSpec {
  path: string;
  mac?: string;
  share?: number;
  name?: string;
}

/** "PATH[,mac=aa:bb:cc:dd:ee:ff][,share=BLOCKS][,name=NAME]" */
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
    } else {
      throw new InvalidArgumentError(`unknown port option "${k}" in "${s}" (mac=, share=, name=)`);
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
    .option('-s, --socket <spec>', 'vhost-user port in server mode: listen on PATH, QEMU connects (chardev reconnect=1). Repeatable. Spec: PATH[,mac=MAC][,share=BLOCKS][,name=NAME]', collect(parsePortSpec), [])
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
    .option('--socket-owner <user>', 'give the socket files created to this user (name or uid), e.g. the one libvirt runs QEMU as')
    .option('--socket-group <group>', 'give the socket files created to this group (name or gid), e.g. libvirt-qemu with --socket-mode 0660')
    .option('--web <[addr:]port>', 'serve the live web view (ports, MAC table, elastic FIFO occupancy over time) on ADDR:PORT; address 127.0.0.1 unless given', (v: string) => {
      try {
        return parseWebAddress(v);
      } catch (e) {
        throw new InvalidArgumentError((e as Error).message);
      }
    })
    .option('--socket-path <path>', 'one vhost-user port in server mode, as QEMU\'s own back-ends take it (vhost-user.rst, "Backend program conventions"); same as --socket PATH')
    .option('--fd <fdnum>', 'one vhost-user port on an already connected socket inherited as this fd (backend program conventions); the process ends when that session ends', positiveInt)
    .option('--print-capabilities', 'print the back-end capabilities as JSON ({"type": "net"}) and exit')
    .option('--stats-file <path>', 'write engine and port counters as JSON to PATH every --stats-interval ms (and on exit)')
    .option('--stats-interval <ms>', 'period of --stats-file writes and of the log line with counters (0: none)', positiveInt, 1000)
    .option('--max-guest-mem-gb <n>', 'most guest memory one vhost-user connection may map, in GiB (a larger memory table is refused)', atLeastOne, DEFAULT_MAX_MAPPED / GiB)
    .option('--max-total-mem-gb <n>', 'most guest memory all connections may map together, in GiB', atLeastOne, DEFAULT_MAX_TOTAL_MAPPED / GiB)
    .option('--poll-us <us>', `adaptive polling: after a batch keep polling the TX rings that had work for up to this many microseconds of no new work before sleeping on their kick eventfds again (0: pure event mode; costs CPU while polling)`, positiveInt, DEFAULT_POLL_US)
    .option('-q, --quiet', 'log only errors and connection events');
}

export interface RunningSwitch {
  sw: Switch;
  ports: VhostUserPort[];
  tap: TapPort | null;
  /** --web: its `listening` rejects when the address cannot be had */
  web: WebView | null;
  stats(): object;
  close(): void;
}

export function start(argv: string[], log: (msg: string) => void = (m) => console.log(`${timestamp()} ${m}`)): RunningSwitch {
  const program = buildProgram();
  program.parse(argv);
  const o = program.opts();
  const specs: { spec: PortSpec; client: boolean }[] = [
    ...(o.socket as PortSpec[]).map((spec) => ({ spec, client: false })),
    ...(o.client as PortSpec[]).map((spec) => ({ spec, client: true })),
  ];
  if (o.socketPath !== undefined) {
    if (o.fd !== undefined) program.error('--socket-path and --fd exclude each other');
    specs.push({ spec: { path: o.socketPath, name: 'vhost-user' }, client: false });
  }
  if (specs.length === 0 && !o.tap && o.fd === undefined) {
    program.error('give at least one --socket, --client, --socket-path, --fd or --tap');
  }
  let socketOwner: ReturnType<typeof resolveSocketOwner> = null;
  try {
    socketOwner = resolveSocketOwner(o.socketOwner, o.socketGroup);
  } catch (e) {
    program.error((e as Error).message);
  }
  const wanted = specs.length + (o.tap ? 1 : 0) + (o.fd !== undefined ? 1 : 0);
  if (wanted > o.maxPorts) program.error(`${wanted} ports given, more than --max-ports ${o.maxPorts}`);
  const sw = new Switch({
    poolBytes: o.poolMb * 1024 * 1024,
    blockSize: o.blockSize,
    holdTimeMs: o.holdMs,
    unknownPolicy: o.unknown,
    defaultShareLimit: o.shareLimit,
    macAgeMs: o.macAgeS * 1000,
    maxPorts: o.maxPorts,
    maxFrameLen: o.maxFrameBytes + ENGINE_HDR_LEN,
    log,
  });
  const pollLoop = o.pollUs > 0 ? new PollLoop(o.pollUs) : null;
  const sessionOptions = {
    maxQueuePairs: o.queues,
    maxMemSlots: o.maxRegions,
    maxChainDescriptors: o.maxChainDescriptors,
    maxMappedBytes: o.maxGuestMemGb * GiB,
    maxTotalMappedBytes: o.maxTotalMemGb * GiB,
    ...(o.offload ? {} : { features: DEFAULT_FEATURES & ~OFFLOAD_FEATURES }),
  };
  const ports: VhostUserPort[] = [];
  const endpoints: Endpoint[] = [];
  let tap: TapPort | null = null;
  let web: WebView | null = null;
  const stats = () => ({
    time: new Date().toISOString(),
    engine: sw.stats(),
    vhostUser: ports.map((p) => ({ name: p.name, connected: p.connected, index: p.index, counters: p.counters })),
    tap: tap ? { name: tap.name, counters: tap.counters } : null,
    limits: { ...limitHits, chainDescriptors: chainLimitHits[0], refusedConnections: sw.stats().refusedConnections },
  });
  let closed = false;
  let statsTimer: NodeJS.Timeout | null = null;
  const writeStats = () => {
    if (!o.statsFile) return;
    const tmp = `${o.statsFile}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(stats(), null, 2));
    fs.renameSync(tmp, o.statsFile);
  };
  const close = () => {
    if (closed) return;
    closed = true;
    if (statsTimer) clearInterval(statsTimer);
    web?.close();
    for (const e of endpoints) e.close();
    for (const p of ports) p.close();
    tap?.close();
    writeStats();
    sw.close();
  };
  try {
    for (const [i, { spec, client }] of specs.entries()) {
      const name = spec.name ?? `vu${i}:${path.basename(spec.path)}`;
      const port = new VhostUserPort(sw, {
        name,
        log,
        staticMac: spec.mac,
        shareLimit: spec.share,
        pollLoop,
        session: sessionOptions,
      });
      ports.push(port);
      const acceptor = (fd: number): boolean => {
        if (port.connected) return false;
        port.bind(fd);
        return true;
      };
      if (client) {
        const d = new Dialer(spec.path, acceptor, log);
        port.onSessionEnd = () => d.reconnect();
        endpoints.push(d);
      } else {
        endpoints.push(new Listener(spec.path, acceptor, log, o.socketMode, socketOwner));
      }
    }
    if (o.fd !== undefined) {
      // an inherited, connected socket: one session; when it ends, so does the process
      const port = new VhostUserPort(sw, {
        name: `fd${o.fd}`,
        log,
        pollLoop,
        session: sessionOptions,
      });
      ports.push(port);
      native.setNonBlocking(o.fd);
      port.onSessionEnd = (reason) => {
        log(`fd ${o.fd}: session ended${reason ? ` (${reason})` : ''}: exiting`);
        close();
        process.exit(reason ? 1 : 0);
      };
      port.bind(o.fd);
    }
    if (o.tap) tap = new TapPort(sw, o.tap, log, {}, o.offload as boolean);
    if (o.web) web = new WebView({ address: o.web, sample: () => webSample(sw, ports, tap), log });
  } catch (e) {
    close();
    throw e;
  }
  if (o.statsInterval > 0 && (o.statsFile || !o.quiet)) {
    let last = '';
    statsTimer = setInterval(() => {
      writeStats();
      if (!o.quiet) {
        const t = sw.stats().total as unknown as Record<string, number>;
        const line = Object.entries(t)
          .filter(([, v]) => typeof v === 'number' && v !== 0)
          .map(([k, v]) => `${k}=${v}`)
          .join(' ');
        if (line && line !== last) log(`counters: ${line}`);
        last = line;
      }
    }, o.statsInterval);
    statsTimer.unref();
  }
  return { sw, ports, tap, web, stats, close };
}

/** --print-capabilities (vhost-user.rst, "Backend program conventions"): before any other validation */
export const CAPABILITIES = { type: 'net' };

function main(): void {
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
  running.web?.listening.catch((e: Error) => {
    console.error(`elastic-vhost: --web: ${e.message}`);
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
