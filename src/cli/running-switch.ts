// The running switch: the engine, its vhost-user ports with their sockets, the TAP uplink, the
// stats file. Ports can be added and removed while it runs (SIGHUP reload, the control socket).
//
//   settings ──► Switch ◄── VhostUserPort ◄── Listener (server mode) / Dialer (client mode)
//                       ◄── TapPort
//   addPort(spec): a new port with its socket; removePort(name): its socket closed, its session
//   ended, the frames queued for it dropped and counted (Switch.detach), other ports untouched.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Switch } from '../engine/switch';
import type { UnknownPolicy } from '../engine/monitor';
import { chainLimitHits } from '../virtio/split-ring';
import { ENGINE_HDR_LEN } from '../datapath/layout';
import { VhostUserPort } from '../ports/vhost-user/port';
import { TapPort } from '../ports/tap-port';
import { PollLoop } from '../ports/poll-loop';
import { Dialer, Endpoint, Listener } from '../vhost-user/server';
import { DEFAULT_FEATURES, limitHits, OFFLOAD_FEATURES, SessionOptions } from '../vhost-user/session';
import type { Log } from '../vhost-user/connection';
import { native } from '../native';

const GiB = 1024 * 1024 * 1024;
const MiB = 1024 * 1024;

/** One vhost-user port (a --socket/--client spec, an entry of the config's `ports`, ctl add-port). */
export interface PortSpec {
  /** socket path */
  path: string;
  /** 'server' (default): listen on path, QEMU connects; 'client': connect to QEMU listening there, retrying */
  mode?: 'server' | 'client';
  /** name in logs, counters and removePort(); default vu<N>:<socket file name> */
  name?: string;
  /** static MAC (aa:bb:cc:dd:ee:ff): known from the start, the only source MAC allowed (port security) */
  mac?: string;
  /** most local-data-store blocks frames waiting for this port may hold (default: the switch's shareLimit) */
  share?: number;
  /** queue pairs offered to this port's front-end (default: the switch's queues) */
  queues?: number;
  /** offer checksum/TSO offloads to this port's front-end (default: the switch's offload) */
  offload?: boolean;
}

/** Everything the switch is started with, as the command line and the config file give it. */
export interface Settings {
  ports: PortSpec[];
  tap?: string;
  poolMb: number;
  blockSize: number;
  shareLimit?: number;
  holdMs: number;
  unknown: UnknownPolicy;
  macAgeS: number;
  queues: number;
  maxPorts: number;
  maxRegions: number;
  maxFrameBytes: number;
  maxChainDescriptors: number;
  offload: boolean;
  socketMode: number;
  statsFile?: string;
  statsInterval: number;
  maxGuestMemGb: number;
  maxTotalMemGb: number;
  pollUs: number;
  quiet: boolean;
  /** an inherited connected socket (backend program conventions): one session, then the process exits */
  fd?: number;
}

const MAC_RE = /^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/;

export interface RunningSwitch {
  sw: Switch;
  /** the vhost-user ports, in the order they were added */
  ports: VhostUserPort[];
  tap: TapPort | null;
  stats(): object;
  /**
   * Adds a vhost-user port while the switch runs: its socket listens (server mode) or is dialled
   * (client mode) when this returns. Throws, with nothing created, on a bad spec, a name or path
   * already in use, --max-ports reached, or a socket that cannot be made.
   */
  addPort(spec: PortSpec): VhostUserPort;
  /**
   * Removes the vhost-user port `name`: its listener (and socket file) or dialer closed, its session
   * ended; frames queued for it are dropped and counted (detached), other ports' frames stay.
   * Throws when there is no such port (or it is the --fd port, whose end is the process's).
   */
  removePort(name: string): void;
  close(): void;
}

/** The problem with spec as a port next to `ports` (null: none). */
export function portSpecProblem(spec: PortSpec, ports: readonly { name: string }[], paths: ReadonlySet<string>): string | null {
  if (typeof spec.path !== 'string' || spec.path === '') return 'path: must be a non-empty string';
  if (spec.mode !== undefined && spec.mode !== 'server' && spec.mode !== 'client') return 'mode: must be "server" or "client"';
  if (spec.name !== undefined && (typeof spec.name !== 'string' || spec.name === '')) return 'name: must be a non-empty string';
  if (spec.mac !== undefined && !MAC_RE.test(spec.mac)) return `mac: "${spec.mac}" is not a MAC address (aa:bb:cc:dd:ee:ff)`;
  if (spec.share !== undefined && !(Number.isInteger(spec.share) && spec.share >= 1)) return 'share: must be a whole number >= 1';
  if (spec.queues !== undefined && !(Number.isInteger(spec.queues) && spec.queues >= 1 && spec.queues <= 128)) return 'queues: must be a whole number from 1 to 128';
  if (spec.offload !== undefined && typeof spec.offload !== 'boolean') return 'offload: must be true or false';
  if (spec.name !== undefined && ports.some((p) => p.name === spec.name)) return `name: a port named "${spec.name}" exists`;
  if (paths.has(path.resolve(spec.path))) return `path: ${spec.path} is another port's socket`;
  return null;
}

export function runSwitch(s: Settings, log: Log): RunningSwitch {
  const sw = new Switch({
    poolBytes: s.poolMb * MiB,
    blockSize: s.blockSize,
    holdTimeMs: s.holdMs,
    unknownPolicy: s.unknown,
    defaultShareLimit: s.shareLimit,
    macAgeMs: s.macAgeS * 1000,
    maxPorts: s.maxPorts,
    maxFrameLen: s.maxFrameBytes + ENGINE_HDR_LEN,
    log,
  });
  const pollLoop = s.pollUs > 0 ? new PollLoop(s.pollUs) : null;
  const sessionOptions = (spec: PortSpec): Partial<SessionOptions> => ({
    maxQueuePairs: spec.queues ?? s.queues,
    maxMemSlots: s.maxRegions,
    maxChainDescriptors: s.maxChainDescriptors,
    maxMappedBytes: s.maxGuestMemGb * GiB,
    maxTotalMappedBytes: s.maxTotalMemGb * GiB,
    ...((spec.offload ?? s.offload) ? {} : { features: DEFAULT_FEATURES & ~OFFLOAD_FEATURES }),
  });
  const ports: VhostUserPort[] = [];
  /** each port's socket (none for the --fd port), and its resolved path */
  const endpoints = new Map<VhostUserPort, { endpoint: Endpoint; path: string }>();
  let fdPort: VhostUserPort | null = null;
  let tap: TapPort | null = null;
  let added = 0;
  let closed = false;
  let statsTimer: NodeJS.Timeout | null = null;

  const stats = () => ({
    time: new Date().toISOString(),
    engine: sw.stats(),
    vhostUser: ports.map((p) => ({ name: p.name, connected: p.connected, index: p.index, counters: p.counters })),
    tap: tap ? { name: tap.name, counters: tap.counters } : null,
    limits: { ...limitHits, chainDescriptors: chainLimitHits[0], refusedConnections: sw.stats().refusedConnections },
  });
  const writeStats = () => {
    if (!s.statsFile) return;
    const tmp = `${s.statsFile}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(stats(), null, 2));
    fs.renameSync(tmp, s.statsFile);
  };

  const addPort = (spec: PortSpec): VhostUserPort => {
    if (closed) throw new Error('the switch is closed');
    const paths = new Set([...endpoints.values()].map((e) => e.path));
    const problem = portSpecProblem(spec, [...ports, ...(tap ? [tap] : [])], paths);
    if (problem !== null) throw new Error(problem);
    const count = ports.length + (tap ? 1 : 0);
    if (count >= s.maxPorts) throw new Error(`${count} ports already, --max-ports is ${s.maxPorts}`);
    const name = spec.name ?? `vu${added}:${path.basename(spec.path)}`;
    if (spec.name === undefined && ports.some((p) => p.name === name)) throw new Error(`name: a port named "${name}" exists; give the port a name`);
    const port = new VhostUserPort(sw, {
      name,
      log,
      staticMac: spec.mac?.toLowerCase(),
      shareLimit: spec.share,
      pollLoop,
      session: sessionOptions(spec),
    });
    const acceptor = (fd: number): boolean => {
      if (port.connected) return false;
      port.bind(fd);
      return true;
    };
    let endpoint: Endpoint;
    if (spec.mode === 'client') {
      const d = new Dialer(spec.path, acceptor, log);
      port.onSessionEnd = () => d.reconnect();
      endpoint = d;
    } else {
      endpoint = new Listener(spec.path, acceptor, log, s.socketMode); // throws before anything is kept
    }
    added++;
    ports.push(port);
    endpoints.set(port, { endpoint, path: path.resolve(spec.path) });
    return port;
  };

  const removePort = (name: string): void => {
    const port = ports.find((p) => p.name === name);
    if (!port) throw new Error(`no vhost-user port named "${name}"`);
    if (port === fdPort) throw new Error(`${name} is the --fd port: the process ends with its session`);
    const e = endpoints.get(port);
    // no new front-end first, then the session ends (its queued frames dropped by Switch.detach)
    e?.endpoint.close();
    endpoints.delete(port);
    port.onSessionEnd = () => {};
    port.close();
    ports.splice(ports.indexOf(port), 1);
    log(`${name}: port removed`);
  };

  const close = () => {
    if (closed) return;
    closed = true;
    if (statsTimer) clearInterval(statsTimer);
    for (const e of endpoints.values()) e.endpoint.close();
    for (const p of ports) p.close();
    tap?.close();
    writeStats();
    sw.close();
  };

  try {
    for (const spec of s.ports) addPort(spec);
    if (s.fd !== undefined) {
      // an inherited, connected socket: one session; when it ends, so does the process
      const fd = s.fd;
      const port = new VhostUserPort(sw, { name: `fd${fd}`, log, pollLoop, session: sessionOptions({ path: '' }) });
      ports.push(port);
      fdPort = port;
      native.setNonBlocking(fd);
      port.onSessionEnd = (reason) => {
        log(`fd ${fd}: session ended${reason ? ` (${reason})` : ''}: exiting`);
        close();
        process.exit(reason ? 1 : 0);
      };
      port.bind(fd);
    }
    if (s.tap) tap = new TapPort(sw, s.tap, log, {}, s.offload);
  } catch (e) {
    close();
    throw e;
  }
  if (s.statsInterval > 0 && (s.statsFile || !s.quiet)) {
    let last = '';
    statsTimer = setInterval(() => {
      writeStats();
      if (!s.quiet) {
        const t = sw.stats().total as unknown as Record<string, number>;
        const line = Object.entries(t)
          .filter(([, v]) => typeof v === 'number' && v !== 0)
          .map(([k, v]) => `${k}=${v}`)
          .join(' ');
        if (line && line !== last) log(`counters: ${line}`);
        last = line;
      }
    }, s.statsInterval);
    statsTimer.unref();
  }
  return { sw, ports, tap, stats, addPort, removePort, close };
}
