// The running switch: the engine, its vhost-user ports with their sockets, the TAP uplink, the
// stats file. Ports can be added and removed while it runs (SIGHUP reload, the control socket).
//
//   settings ──► Switch ◄── VhostUserPort ◄── Listener (server mode) / Dialer (client mode)
//                       ◄── TapPort
//                       ◄── VxlanPort
//   addPort(spec): a new port with its socket; removePort(name): its socket closed, its session
//   ended, the frames queued for it dropped and counted (Switch.detach), other ports untouched.
import { resolveSocketOwner } from './socket-owner';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Switch } from '../engine/switch';
import { WorkerPool } from '../workers/pool';
import { DEFAULTS } from '../defaults';
import { bit, VirtioFeature } from '../vhost-user/features';
import { ProtocolFeature } from '../vhost-user/message';
import { chainLimitHits } from '../virtio/split-ring';
import { ENGINE_HDR_LEN } from '../datapath/layout';
import { VhostUserPort } from '../ports/vhost-user/port';
import { TapPort } from '../ports/tap-port';
import { parseVxlanSpec, VxlanPort } from '../ports/vxlan-port';
import { PollLoop } from '../ports/poll-loop';
import { Dialer, Endpoint, Listener } from '../vhost-user/server';
import { DEFAULT_FEATURES, DEFAULT_PROTOCOL_FEATURES, limitHits, OFFLOAD_FEATURES, SessionOptions } from '../vhost-user/session';
import { Log, withFields } from '../log';
import { native } from '../native';
import { GiB, MiB } from '../defaults';
import { ConfigError, portSchemaProblem } from './config';
import { MOST_QUEUE_PAIRS } from './options';
import { applyReload, describeReload, planReload, ReloadResult } from './reload';
import type { UnknownPolicy } from '../engine/monitor';
import type { LogLevel } from '../defaults';
import type { PortSpec, Settings } from './settings';


export type { PortSpec, Settings } from './settings';

export interface RunningSwitch {
  sw: Switch;
  /** the vhost-user ports, in the order they were added */
  ports: VhostUserPort[];
  tap: TapPort | null;
  vxlan: VxlanPort | null;
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
  /** What it runs with now: the start's settings with what reloads applied. */
  settings: Settings;
  /** A port's own share limit (undefined: the default shareLimit), now and from its next attach on. */
  setPortShare(name: string, share: number | undefined): void;
  /** Changes a setting that can change while running (options.ts: live). */
  setLive(key: string, value: unknown): void;
  /** SIGHUP: reads the config file again and applies what can change while running (null: no --config, or errors; logged). */
  reload(): ReloadResult | null;
  /** its log (the ports', the engine's and the command's events) */
  log: Log;
  close(): void;
}

export interface RunOptions {
  /** the settings as the config file says now, with the command line over it (--config given) */
  reread?: () => Settings;
  /** the logger's level (logLevel reloaded) */
  setLogLevel?: (level: LogLevel) => void;
}

/** The problem with spec as a port next to `ports` (null: none). */
export function portSpecProblem(spec: PortSpec, ports: readonly { name: string }[], paths: ReadonlySet<string>): string | null {
  const problem = portSchemaProblem(spec);
  if (problem !== null) return problem;
  if (ports.some((p) => p.name === spec.name)) return `name: a port named "${spec.name}" exists`;
  if (paths.has(path.resolve(spec.path))) return `path: ${spec.path} is another port's socket`;
  return null;
}

export function runSwitch(s: Settings, log: Log, opts: RunOptions = {}): RunningSwitch {
  // names resolved once, before anything is opened: an unknown one is an error naming its option
  const socketOwner = resolveSocketOwner(s.socketOwner, s.socketGroup);
  const engineOptions = {
    poolBytes: s.poolMb * MiB,
    blockSize: s.blockSize,
    holdTimeMs: s.holdMs,
    unknownPolicy: s.unknown,
    defaultShareLimit: s.shareLimit,
    macAgeMs: s.macAgeS * 1000,
    maxPorts: s.maxPorts,
    // any port may be given up to this many queue pairs (per port, at run time too)
    queues: MOST_QUEUE_PAIRS,
    maxFrameLen: s.maxFrameBytes + ENGINE_HDR_LEN,
  };
  // --workers N > 1: N data-plane threads, this one (thread 0) and N - 1 worker threads
  const pool =
    (s.workers ?? 1) > 1
      ? new WorkerPool({
          threads: s.workers,
          switchOptions: { ...engineOptions, defaultShareLimit: s.shareLimit },
          // each thread gets a partition of --pool-mb, so a thread holds as much as the single loop does
          poolBytes: engineOptions.poolBytes * s.workers,
          blockSize: s.blockSize,
          maxPorts: s.maxPorts,
          lanes: MOST_QUEUE_PAIRS,
          macTableSize: DEFAULTS.macTableSize,
          macAgeMs: engineOptions.macAgeMs,
          pollUs: s.pollUs,
          log,
        })
      : null;
  const sw = pool !== null ? pool.sw : new Switch({ ...engineOptions, log });
  if (pool !== null) log(`data plane: ${pool.count} threads (queue pairs spread over them)`, { workers: pool.count });
  const pollLoop = s.pollUs > 0 ? new PollLoop(s.pollUs) : null;
  const sessionOptions = (spec: PortSpec): Partial<SessionOptions> => ({
    maxQueuePairs: spec.queues ?? s.queues,
    maxMemSlots: s.maxRegions,
    maxChainDescriptors: s.maxChainDescriptors,
    maxMappedBytes: s.maxGuestMemGb * GiB,
    maxTotalMappedBytes: s.maxTotalMemGb * GiB,
    // worker threads: no dirty logging (the threads serving rings do not write the log)
    ...(((spec.offload ?? s.offload) ? 0n : OFFLOAD_FEATURES) | (pool !== null ? bit(VirtioFeature.LOG_ALL) : 0n)) === 0n
      ? {}
      : { features: DEFAULT_FEATURES & ~(((spec.offload ?? s.offload) ? 0n : OFFLOAD_FEATURES) | (pool !== null ? bit(VirtioFeature.LOG_ALL) : 0n)) },
    ...(pool !== null ? { protocolFeatures: DEFAULT_PROTOCOL_FEATURES & ~bit(ProtocolFeature.LOG_SHMFD) } : {}),
  });
  const ports: VhostUserPort[] = [];
  /** each port's socket (none for the --fd port), and its resolved path */
  const endpoints = new Map<VhostUserPort, { endpoint: Endpoint; path: string }>();
  let fdPort: VhostUserPort | null = null;
  let tap: TapPort | null = null;
  let vxlan: VxlanPort | null = null;
  let closed = false;
  let statsTimer: NodeJS.Timeout | null = null;

  const stats = () => ({
    time: new Date().toISOString(),
    engine: sw.stats(),
    settings: sw.settings(),
    vhostUser: ports.map((p) => ({ name: p.name, connected: p.connected, index: p.index, counters: p.allCounters(), queues: p.queueFrames() })),
    tap: tap ? { name: tap.name, counters: tap.counters } : null,
    vxlan: vxlan ? { name: vxlan.name, counters: vxlan.counters, offload: vxlan.offloadCounters, sendErrors: vxlan.sendErrorCodes, vteps: vxlan.vteps(), macs: vxlan.macEntries() } : null,
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
    const problem = portSpecProblem(spec, [...ports, ...(tap ? [tap] : []), ...(vxlan ? [vxlan] : [])], paths);
    if (problem !== null) throw new Error(problem);
    const count = ports.length + (tap ? 1 : 0) + (vxlan ? 1 : 0);
    if (count >= s.maxPorts) throw new Error(`${count} ports already, --max-ports is ${s.maxPorts}`);
    const name = spec.name;
    const port = new VhostUserPort(sw, {
      name,
      log,
      staticMac: spec.mac?.toLowerCase(),
      shareLimit: spec.share,
      pollLoop,
      threads: pool?.threads ?? null,
      session: sessionOptions(spec),
    });
    const acceptor = (fd: number): boolean => {
      if (port.connected) return false;
      port.bind(fd);
      return true;
    };
    const portLog = withFields(log, () => ({ port: name }));
    let endpoint: Endpoint;
    if (spec.mode === 'client') {
      const d = new Dialer(spec.path, acceptor, portLog);
      port.onSessionEnd = () => d.reconnect();
      endpoint = d;
    } else {
      endpoint = new Listener(spec.path, acceptor, portLog, s.socketMode, socketOwner); // throws before anything is kept
    }
    ports.push(port);
    endpoints.set(port, { endpoint, path: path.resolve(spec.path) });
    return port;
  };

  const portNamed = (name: string): VhostUserPort => {
    const port = ports.find((p) => p.name === name);
    if (!port) throw new Error(`no vhost-user port named "${name}"`);
    return port;
  };

  const setPortShare = (name: string, share: number | undefined): void => {
    const port = portNamed(name);
    port.shareLimit = share;
    if (port.index >= 0) sw.setShareLimit(port.index, share);
  };

  const setLive = (key: string, value: unknown): void => {
    switch (key) {
      case 'shareLimit':
        sw.setDefaultShareLimit(value as number | undefined);
        // connections without a share of their own follow the default
        for (const p of ports) if (p.shareLimit === undefined && p.index >= 0) sw.setShareLimit(p.index, undefined);
        break;
      case 'holdMs':
        sw.setHoldTime(value as number);
        break;
      case 'unknown':
        sw.setUnknownPolicy(value as UnknownPolicy);
        break;
      case 'logLevel':
        opts.setLogLevel?.(value as LogLevel);
        break;
      case 'logCounters':
        break; // read at each tick from the settings
      default:
        throw new Error(`${key} cannot change while running`);
    }
  };

  const reload = (): ReloadResult | null => {
    if (!opts.reread) {
      log('reload: started without --config, nothing to read again', { level: 'warn' });
      return null;
    }
    let next: Settings;
    try {
      next = opts.reread();
    } catch (e) {
      const problems = e instanceof ConfigError ? e.problems : [(e as Error).message];
      log(`reload: error: nothing changed, the config file has errors: ${problems.join('; ')}`, { level: 'error', problems });
      return null;
    }
    const res = applyReload(running, planReload(running.settings, next));
    log(describeReload(res), { level: res.refused.length + res.failed.length > 0 ? 'warn' : 'info', reload: res });
    return res;
  };

  const removePort = (name: string): void => {
    const port = portNamed(name);
    if (port === fdPort) throw new Error(`${name} is the --fd port: the process ends with its session`);
    const e = endpoints.get(port);
    // no new front-end first, then the session ends (its queued frames dropped by Switch.detach)
    e?.endpoint.close();
    endpoints.delete(port);
    port.onSessionEnd = () => {};
    port.close();
    ports.splice(ports.indexOf(port), 1);
    log(`${name}: port removed`, { port: name });
  };

  const close = () => {
    if (closed) return;
    closed = true;
    if (statsTimer) clearInterval(statsTimer);
    for (const e of endpoints.values()) e.endpoint.close();
    for (const p of ports) p.close();
    tap?.close();
    vxlan?.close();
    void pool?.close();
    writeStats();
    sw.close();
  };

  const running: RunningSwitch = { sw, ports, tap, vxlan, stats, addPort, removePort, settings: s, setPortShare, setLive, reload, log, close };
  try {
    for (const spec of s.ports) addPort(spec);
    if (s.fd !== undefined) {
      // an inherited, connected socket: one session; when it ends, so does the process
      const fd = s.fd;
      const port = new VhostUserPort(sw, { name: `fd${fd}`, log, pollLoop, session: sessionOptions({ name: `fd${fd}`, path: '' }) });
      ports.push(port);
      fdPort = port;
      native.setNonBlocking(fd);
      port.onSessionEnd = (reason) => {
        log(`fd ${fd}: session ended${reason ? ` (${reason})` : ''}: exiting`, { port: port.name });
        close();
        process.exit(reason ? 1 : 0);
      };
      port.bind(fd);
    }
    if (s.tap) running.tap = tap = new TapPort(sw, s.tap, log, {}, s.offload);
    if (s.vxlan) running.vxlan = vxlan = new VxlanPort(sw, parseVxlanSpec(s.vxlan), log, s.macAgeS * 1000);
  } catch (e) {
    close();
    throw e;
  }
  if (s.statsInterval > 0) {
    let last = '';
    statsTimer = setInterval(() => {
      writeStats();
      if (running.settings.logCounters && !running.settings.quiet) {
        const t = sw.stats().total as unknown as Record<string, number>;
        const nonZero = Object.entries(t).filter(([, v]) => typeof v === 'number' && v !== 0);
        const line = nonZero.map(([k, v]) => `${k}=${v}`).join(' ');
        if (line && line !== last) log(`counters: ${line}`, { counters: Object.fromEntries(nonZero) });
        last = line;
      }
    }, s.statsInterval);
    statsTimer.unref();
  }
  return running;
}
