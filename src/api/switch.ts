// The switch as a library builds it: the engine (one loop, or --workers threads), its ports added
// and removed while it runs, its counters, its events. The command line (src/cli/running-switch.ts)
// is a user of this: it builds one from its settings, adds the configured ports, and puts the
// operator's tools (reload, stats file, metrics, control socket, web view) around it.
//
//   createSwitch(options) ──► Switch (src/engine) or WorkerPool.sw ◄── VhostUserPort ◄── Listener / Dialer / fd
//                                                                  ◄── TapPort
//                                                                  ◄── VxlanPort
//   addPort(config): the port made and attached (a vhost-user port when its front-end connects);
//   removePort(name): its socket closed, its session ended, the frames queued for it dropped and
//   counted (Switch.detach), other ports untouched; close(): the close hooks, then every port.
import { EventEmitter } from 'node:events';
import * as path from 'node:path';
import { Switch, type MacEntry, type SwitchSettings, type SwitchStats } from '../engine/switch';
import { WorkerPool } from '../workers/pool';
import { DEFAULTS, GiB, MiB } from '../defaults';
import { bit, VirtioFeature } from '../vhost-user/features';
import { ProtocolFeature } from '../vhost-user/message';
import { chainLimitHits } from '../virtio/split-ring';
import { ENGINE_HDR_LEN } from '../datapath/layout';
import { VhostUserPort, type PortCounters, type PortThreads } from '../ports/vhost-user/port';
import { TapPort, type TapCounters } from '../ports/tap-port';
import { VxlanPort, type VxlanCounters, type VxlanVtepStats } from '../ports/vxlan-port';
import type { FallbackCounters } from '../ports/offload-fallback';
import { PollLoop } from '../ports/poll-loop';
import { Dialer, type Endpoint, Listener } from '../vhost-user/server';
import { DEFAULT_FEATURES, DEFAULT_PROTOCOL_FEATURES, limitHits, OFFLOAD_FEATURES, type SessionOptions } from '../vhost-user/session';
import { type Log, withFields } from '../log';
import { native } from '../native';
import { portSchemaProblem } from '../cli/config';
import { MOST_QUEUE_PAIRS } from '../cli/options';
import { resolveSocketOwner, type SocketOwner } from '../cli/socket-owner';
import {
  checkLiveSetting,
  resolveSwitchOptions,
  type LiveSetting,
  type PortConfig,
  type ResolvedSwitchOptions,
  type SwitchOptions,
  type VhostUserFdPortSpec,
  type VhostUserPortSpec,
  tapPort,
  vxlanPort,
} from './options';
import { EventSampler, type PortKind, type QueuedEvent, type SwitchEventEmitter, type SwitchEventName, type SwitchEvents } from './events';

/** A port of a switch, as addPort() returns it and ports() lists it. */
export interface Port {
  readonly name: string;
  readonly kind: PortKind;
  /** attached to the switch now: a vhost-user front-end connected, an uplink open */
  readonly up: boolean;
  /** its connection number in the switch while up (the engine's counters and MAC table use it), else -1 */
  readonly connection: number;
}

/** A vhost-user port's counters. */
export interface VhostUserPortStats {
  name: string;
  connected: boolean;
  /** connection number, -1 while no front-end is connected */
  index: number;
  counters: PortCounters;
  /** frames taken from / given to the guest, per queue pair (trailing zeros left out) */
  queues: { rx: number[]; tx: number[] };
}

export interface TapPortStats {
  name: string;
  ifname: string;
  connected: boolean;
  counters: TapCounters;
}

export interface VxlanPortStats {
  name: string;
  connected: boolean;
  counters: VxlanCounters;
  offload: FallbackCounters;
  /** failed sends by error code (EMSGSIZE, EHOSTUNREACH…) */
  sendErrors: Record<string, number>;
  vteps: VxlanVtepStats[];
  macs: { mac: string; vtep: string; vtepPort: number; isStatic: boolean }[];
}

/** Requests refused for a limit (process-wide: every switch of the process counts here), and front-ends refused for maxPorts (this switch). */
export interface LimitStats {
  regions: number;
  mappedBytes: number;
  queuePairs: number;
  chainDescriptors: number;
  refusedConnections: number;
}

/** Everything the switch counts, at one moment. */
export interface SwitchStatsSnapshot {
  /** when, ISO 8601 */
  time: string;
  /** the engine's counters: totals, the elastic FIFO's pool, the MAC table, each attached connection */
  engine: SwitchStats;
  /** what the engine runs with */
  settings: SwitchSettings;
  vhostUser: VhostUserPortStats[];
  taps: TapPortStats[];
  vxlans: VxlanPortStats[];
  limits: LimitStats;
}

/** One MAC the switch knows. */
export interface MacTableEntry {
  mac: string;
  port: string;
  connection: number;
  /** configured (a port's mac), not learned: never ages */
  static: boolean;
  /** ms since a frame from it was last seen (null: static) */
  ageMs: number | null;
}

/**
 * A running switch: made by {@link createSwitch}, its ports added by {@link ElasticSwitch.addPort},
 * closed by {@link ElasticSwitch.close}. Its events are listed in {@link SwitchEvents}.
 */
export interface ElasticSwitch extends SwitchEventEmitter {
  /** what it runs with: the options given, every default filled in (the live ones as set now) */
  readonly options: Readonly<ResolvedSwitchOptions>;
  /** true once close() was called */
  readonly closed: boolean;
  /**
   * Adds a port. A server-mode vhost-user port listens when this returns (its front-end may
   * connect from then on), a client-mode one is dialling; a TAP or VXLAN uplink is attached.
   * Throws, with nothing created, on a name or socket path in use, maxPorts reached, or a socket,
   * device or UDP port that cannot be opened.
   */
  addPort(port: PortConfig): Port;
  /**
   * Removes a port: its socket closed (server mode: the file removed), its session ended, the
   * uplink closed; frames queued for it are dropped and counted as detached. Other ports' frames
   * stay. Throws when there is no such port.
   */
  removePort(name: string): void;
  /** The port of that name (undefined: none). */
  port(name: string): Port | undefined;
  /** The ports, in the order they were added. */
  ports(): Port[];
  /** Every counter, now. */
  stats(): SwitchStatsSnapshot;
  /** The MAC table, now. */
  macTable(): MacTableEntry[];
  /** Changes a live setting (shareLimit, holdMs, unknown) while the switch runs. */
  set<K extends LiveSetting>(key: K, value: SwitchOptions[K]): void;
  /** A port's own share limit (undefined: the switch's shareLimit), now and whenever it attaches again. */
  setPortShare(name: string, share: number | undefined): void;
  /**
   * Closes every port and the engine. Returns at once with everything closed on this thread; the
   * promise resolves when the worker threads (workers > 1) have ended too.
   */
  close(): Promise<void>;
}

interface RecordBase {
  readonly name: string;
  /** attached, as the events said last */
  up: boolean;
  /** removePort() or close() took it: its end is not an event of its own */
  removed: boolean;
  readonly handle: Port;
}
interface VhostRecord extends RecordBase {
  readonly kind: 'vhost-user';
  readonly port: VhostUserPort;
  /** the listener or dialer (null: a port on a connected fd) */
  readonly endpoint: Endpoint | null;
  /** the socket's resolved path (null: on an fd) */
  readonly path: string | null;
}
interface TapRecord extends RecordBase {
  readonly kind: 'tap';
  readonly port: TapPort;
  share: number | undefined;
}
interface VxlanRecord extends RecordBase {
  readonly kind: 'vxlan';
  readonly port: VxlanPort;
  share: number | undefined;
}
type PortRecord = VhostRecord | TapRecord | VxlanRecord;

/** The problem with spec as a vhost-user port next to the ports named `names` and the sockets at `paths` (null: none). */
export function portSpecProblem(spec: VhostUserPortSpec, names: Iterable<string>, paths: ReadonlySet<string>): string | null {
  const problem = portSchemaProblem(spec);
  if (problem !== null) return problem;
  for (const n of names) if (n === spec.name) return `name: a port named "${spec.name}" exists`;
  if (paths.has(path.resolve(spec.path))) return `path: ${spec.path} is another port's socket`;
  return null;
}

/**
 * The switch. createSwitch() hands it out as an {@link ElasticSwitch}; the command line and the
 * operator's tools (src/cli, src/ops) use the rest: the engine, the port objects, close hooks.
 */
export class VirtualSwitch extends EventEmitter implements ElasticSwitch {
  readonly options: ResolvedSwitchOptions;
  /** the engine: the one loop's Switch, or thread 0's of the worker pool */
  readonly sw: Switch;
  readonly log: Log;
  /** the vhost-user ports, in the order they were added (a live list: the ops tools read it) */
  readonly vhostUserPorts: VhostUserPort[] = [];
  readonly taps: TapPort[] = [];
  readonly vxlans: VxlanPort[] = [];
  private readonly pool: WorkerPool | null;
  private readonly pollLoop: PollLoop | null;
  private readonly socketOwner: SocketOwner | null;
  private readonly records = new Map<string, PortRecord>();
  private readonly closeHooks: (() => void)[] = [];
  private readonly sampler = new EventSampler();
  private readonly sampleTimer: NodeJS.Timeout | null;
  private pending: QueuedEvent[] = [];
  private flushScheduled = false;
  private closing: Promise<void> | null = null;

  constructor(options: SwitchOptions = {}) {
    super();
    const o = resolveSwitchOptions(options);
    this.options = o;
    const log = options.log ?? (() => {});
    this.log = log;
    // names resolved once, before anything is opened: an unknown one is an error naming its option
    this.socketOwner = resolveSocketOwner(o.socketOwner, o.socketGroup);
    const engineOptions = {
      poolBytes: o.poolMb * MiB,
      blockSize: o.blockSize,
      holdTimeMs: o.holdMs,
      unknownPolicy: o.unknown,
      defaultShareLimit: o.shareLimit,
      macAgeMs: o.macAgeS * 1000,
      maxPorts: o.maxPorts,
      // any port may be given up to this many queue pairs (per port, at run time too)
      queues: MOST_QUEUE_PAIRS,
      maxFrameLen: o.maxFrameBytes + ENGINE_HDR_LEN,
    };
    // workers > 1: that many data-plane threads, this one (thread 0) and workers - 1 worker threads
    this.pool =
      o.workers > 1
        ? new WorkerPool({
            threads: o.workers,
            switchOptions: engineOptions,
            // each thread gets a partition of poolMb, so a thread holds as much as the single loop does
            poolBytes: engineOptions.poolBytes * o.workers,
            blockSize: o.blockSize,
            maxPorts: o.maxPorts,
            lanes: MOST_QUEUE_PAIRS,
            macTableSize: DEFAULTS.macTableSize,
            macAgeMs: engineOptions.macAgeMs,
            pollUs: o.pollUs,
            log,
          })
        : null;
    this.sw = this.pool !== null ? this.pool.sw : new Switch({ ...engineOptions, log });
    if (this.pool !== null) log(`data plane: ${this.pool.count} threads (queue pairs spread over them)`, { workers: this.pool.count });
    this.pollLoop = o.pollUs > 0 ? new PollLoop(o.pollUs) : null;
    // the first look is at an empty switch: it only sets the baseline of the counters
    this.sampleEvents();
    this.sampleTimer = o.eventIntervalMs > 0 ? setInterval(() => this.sampleEvents(), o.eventIntervalMs).unref() : null;
  }

  get closed(): boolean {
    return this.closing !== null;
  }

  // ---- ports

  addPort(config: PortConfig): Port {
    return this.add(config).handle;
  }

  /** addPort() for the command line: the vhost-user port object itself (the ops tools take it). */
  addVhostUserPort(spec: VhostUserPortSpec | VhostUserFdPortSpec): VhostUserPort {
    const r = this.add({ kind: 'vhost-user', spec });
    return (r as VhostRecord).port;
  }

  private add(config: PortConfig): PortRecord {
    if (this.closed) throw new Error('the switch is closed');
    switch (config.kind) {
      case 'vhost-user':
        return 'fd' in config.spec ? this.addFdPort(config.spec) : this.addSocketPort(config.spec);
      case 'tap': {
        // checked again: a config object made by hand, not by tapPort(), is held to the same rules
        const s = tapPort(config.spec).spec;
        this.refuseName(`tap:${s.ifname}`);
        const port = new TapPort(this.sw, s.ifname, this.log, { staticMac: s.mac?.toLowerCase(), shareLimit: s.share }, s.offload ?? this.options.offload);
        // the kernel may name the device otherwise (a name with %d)
        if (this.records.has(port.name)) {
          port.close();
          throw new Error(`name: a port named "${port.name}" exists`);
        }
        const r: TapRecord = { kind: 'tap', name: port.name, port, share: s.share, up: true, removed: false, handle: this.handleOf(() => r) };
        this.taps.push(port);
        return this.added(r);
      }
      case 'vxlan': {
        const spec = vxlanPort(config.text).spec;
        this.refuseName(`vxlan:${spec.vni}`);
        const port = new VxlanPort(this.sw, spec, this.log, this.options.macAgeS * 1000);
        const r: VxlanRecord = { kind: 'vxlan', name: port.name, port, share: undefined, up: true, removed: false, handle: this.handleOf(() => r) };
        this.vxlans.push(port);
        return this.added(r);
      }
    }
  }

  /** the name is free and there is room for one more port (checked after the spec, before anything is made) */
  private refuseName(name: string): void {
    if (this.records.has(name)) throw new Error(`name: a port named "${name}" exists`);
    this.refuseCount();
  }

  private refuseCount(): void {
    const count = this.records.size;
    if (count >= this.options.maxPorts) throw new Error(`${count} ports already, --max-ports is ${this.options.maxPorts}`);
  }

  /** the port is in: told as added, and (an uplink) as up */
  private added(r: PortRecord): PortRecord {
    this.records.set(r.name, r);
    this.emitLater(['portAdded', { port: r.name, kind: r.kind }]);
    if (r.kind !== 'vhost-user') this.emitLater(['portUp', { port: r.name, kind: r.kind, connection: r.port.index }]);
    return r;
  }

  private sessionOptions(spec: { queues?: number; offload?: boolean }): Partial<SessionOptions> {
    const o = this.options;
    // features not offered: the offloads when off for this port; dirty logging with worker
    // threads (the threads serving rings do not write the log)
    const withheld = ((spec.offload ?? o.offload) ? 0n : OFFLOAD_FEATURES) | (this.pool !== null ? bit(VirtioFeature.LOG_ALL) : 0n);
    return {
      maxQueuePairs: spec.queues ?? o.queues,
      maxMemSlots: o.maxRegions,
      maxChainDescriptors: o.maxChainDescriptors,
      maxMappedBytes: o.maxGuestMemGb * GiB,
      maxTotalMappedBytes: o.maxTotalMemGb * GiB,
      ...(withheld === 0n ? {} : { features: DEFAULT_FEATURES & ~withheld }),
      ...(this.pool !== null ? { protocolFeatures: DEFAULT_PROTOCOL_FEATURES & ~bit(ProtocolFeature.LOG_SHMFD) } : {}),
    };
  }

  /** A vhost-user port as the spec configures it (threads: the data-plane threads, or null: this thread only). */
  private newVhostUserPort(spec: VhostUserPortSpec | VhostUserFdPortSpec, threads: PortThreads | null): VhostUserPort {
    return new VhostUserPort(this.sw, {
      name: spec.name,
      log: this.log,
      staticMac: spec.mac?.toLowerCase(),
      shareLimit: spec.share,
      pollLoop: this.pollLoop,
      threads,
      session: this.sessionOptions(spec),
    });
  }

  private addSocketPort(spec: VhostUserPortSpec): VhostRecord {
    const paths = new Set<string>();
    for (const r of this.records.values()) if (r.kind === 'vhost-user' && r.path !== null) paths.add(r.path);
    const problem = portSpecProblem(spec, this.records.keys(), paths);
    if (problem !== null) throw new Error(problem);
    this.refuseCount();
    const port = this.newVhostUserPort(spec, this.pool?.threads ?? null);
    let r: VhostRecord | null = null;
    const acceptor = (fd: number): boolean => {
      if (port.connected) return false;
      port.bind(fd);
      // bind() refuses a front-end the switch has no room for (maxPorts): closed, logged, counted
      if (r !== null && port.connected) this.wentUp(r);
      return true;
    };
    const portLog = withFields(this.log, () => ({ port: spec.name }));
    let endpoint: Endpoint;
    if (spec.mode === 'client') {
      const d = new Dialer(spec.path, acceptor, portLog);
      endpoint = d;
      port.onSessionEnd = (reason) => {
        if (r !== null) this.wentDown(r, reason);
        // QEMU went away: dial again until it is back (not once the port is removed or closed)
        if (r === null || !r.removed) d.reconnect();
      };
    } else {
      endpoint = new Listener(spec.path, acceptor, portLog, this.options.socketMode, this.socketOwner); // throws before anything is kept
      port.onSessionEnd = (reason) => {
        if (r !== null) this.wentDown(r, reason);
      };
    }
    const rec: VhostRecord = { kind: 'vhost-user', name: spec.name, port, endpoint, path: path.resolve(spec.path), up: false, removed: false, handle: this.handleOf(() => rec) };
    r = rec;
    this.vhostUserPorts.push(port);
    this.added(rec);
    // a Dialer connects in its constructor when QEMU already listens: that front-end came before the record
    if (port.connected) this.wentUp(rec);
    return rec;
  }

  private addFdPort(spec: VhostUserFdPortSpec): VhostRecord {
    this.refuseName(spec.name);
    // as the command line has always run its --fd port: on this thread, whatever --workers says
    const port = this.newVhostUserPort(spec, null);
    const rec: VhostRecord = { kind: 'vhost-user', name: spec.name, port, endpoint: null, path: null, up: false, removed: false, handle: this.handleOf(() => rec) };
    port.onSessionEnd = (reason) => this.wentDown(rec, reason);
    native.setNonBlocking(spec.fd);
    this.vhostUserPorts.push(port);
    this.added(rec);
    port.bind(spec.fd);
    if (port.connected) this.wentUp(rec);
    return rec;
  }

  private wentUp(r: PortRecord): void {
    if (r.up) return;
    r.up = true;
    this.emitLater(['portUp', { port: r.name, kind: r.kind, connection: r.port.index }]);
  }

  private wentDown(r: PortRecord, reason: string | null): void {
    if (!r.up) return;
    r.up = false;
    this.emitLater(['portDown', { port: r.name, kind: r.kind, reason: r.removed ? null : reason }]);
  }

  private handleOf(rec: () => PortRecord): Port {
    const sw = this;
    return {
      get name() {
        return rec().name;
      },
      get kind() {
        return rec().kind;
      },
      get up() {
        return sw.isAttached(rec());
      },
      get connection() {
        const r = rec();
        return sw.isAttached(r) ? r.port.index : -1;
      },
    };
  }

  /** the engine's attached connections, as "index:name" */
  private attachedSet(): Set<string> {
    return new Set(this.sw.stats().ports.map((p) => `${p.index}:${p.name}`));
  }

  /** attached to the engine now (an uplink detaches by itself when its device or socket fails) */
  private isAttached(r: PortRecord, attached?: Set<string>): boolean {
    if (r.removed) return false;
    if (r.kind === 'vhost-user') return r.port.index >= 0;
    return (attached ?? this.attachedSet()).has(`${r.port.index}:${r.name}`);
  }

  removePort(name: string): void {
    const r = this.records.get(name);
    if (r === undefined) throw new Error(`no port named "${name}"`);
    r.removed = true;
    if (r.kind === 'vhost-user') {
      // no new front-end first, then the session ends (its queued frames dropped by Switch.detach)
      r.endpoint?.close();
      r.port.close();
      this.vhostUserPorts.splice(this.vhostUserPorts.indexOf(r.port), 1);
    } else {
      r.port.close();
      if (r.kind === 'tap') this.taps.splice(this.taps.indexOf(r.port), 1);
      else this.vxlans.splice(this.vxlans.indexOf(r.port), 1);
    }
    this.wentDown(r, null);
    this.records.delete(name);
    this.sampler.forgetPort(name);
    this.emitLater(['portRemoved', { port: name, kind: r.kind }]);
    this.log(`${name}: port removed`, { port: name });
  }

  port(name: string): Port | undefined {
    return this.records.get(name)?.handle;
  }

  ports(): Port[] {
    return [...this.records.values()].map((r) => r.handle);
  }

  /** The vhost-user port named so (undefined: none, or not a vhost-user port). */
  vhostUserPort(name: string): VhostUserPort | undefined {
    const r = this.records.get(name);
    return r?.kind === 'vhost-user' ? r.port : undefined;
  }

  /** The socket path of a vhost-user port (null: on a connected fd; undefined: no such port). */
  socketPathOf(name: string): string | null | undefined {
    const r = this.records.get(name);
    return r?.kind === 'vhost-user' ? r.path : undefined;
  }

  // ---- settings

  set<K extends LiveSetting>(key: K, value: SwitchOptions[K]): void {
    checkLiveSetting(key, value);
    const sw = this.sw;
    switch (key) {
      case 'shareLimit':
        sw.setDefaultShareLimit(value as number | undefined);
        // ports without a share of their own follow the default
        const attached = this.attachedSet();
        for (const r of this.records.values()) {
          const own = r.kind === 'vhost-user' ? r.port.shareLimit : r.share;
          if (own === undefined && this.isAttached(r, attached)) sw.setShareLimit(r.port.index, undefined);
        }
        break;
      case 'holdMs':
        sw.setHoldTime(value as number);
        break;
      case 'unknown':
        sw.setUnknownPolicy(value as 'flood' | 'drop');
        break;
    }
    (this.options as unknown as Record<string, unknown>)[key] = value;
  }

  setPortShare(name: string, share: number | undefined): void {
    const r = this.records.get(name);
    if (r === undefined) throw new Error(`no port named "${name}"`);
    checkLiveSetting('shareLimit', share);
    if (r.kind === 'vhost-user') r.port.shareLimit = share;
    else r.share = share;
    if (this.isAttached(r)) this.sw.setShareLimit(r.port.index, share);
  }

  // ---- counters

  stats(): SwitchStatsSnapshot {
    const sw = this.sw;
    const engine = sw.stats();
    const attached = new Set(engine.ports.map((p) => `${p.index}:${p.name}`));
    const up = (p: { index: number; name: string }): boolean => attached.has(`${p.index}:${p.name}`);
    return {
      time: new Date().toISOString(),
      engine,
      settings: sw.settings(),
      vhostUser: this.vhostUserPorts.map((p) => ({ name: p.name, connected: p.connected, index: p.index, counters: p.allCounters(), queues: p.queueFrames() })),
      taps: this.taps.map((t) => ({ name: t.name, ifname: t.ifname, connected: up(t), counters: { ...t.counters } })),
      vxlans: this.vxlans.map((v) => ({
        name: v.name,
        connected: up(v),
        counters: { ...v.counters },
        offload: { ...v.offloadCounters },
        sendErrors: { ...v.sendErrorCodes },
        vteps: v.vteps(),
        macs: v.macEntries(),
      })),
      limits: { ...limitHits, chainDescriptors: chainLimitHits[0], refusedConnections: engine.refusedConnections },
    };
  }

  macTable(): MacTableEntry[] {
    const names = new Map(this.sw.stats().ports.map((p) => [p.index, p.name]));
    return this.sw.macEntries().map((e: MacEntry) => ({ mac: e.mac, port: names.get(e.index) ?? `#${e.index}`, connection: e.index, static: e.isStatic, ageMs: e.ageMs }));
  }

  // ---- events

  /** Looks at the MAC table and the counters and queues what changed (the sampled events). */
  sampleEvents(): void {
    if (this.closed) return;
    const engine = this.sw.stats();
    const attached = new Set(engine.ports.map((p) => `${p.index}:${p.name}`));
    // an uplink detaches by itself when its device or socket fails (the port logged why)
    for (const r of this.records.values()) {
      if (r.kind !== 'vhost-user' && r.up && !attached.has(`${r.port.index}:${r.name}`)) this.wentDown(r, 'uplink detached');
    }
    const events = this.sampler.sample({
      now: Date.now(),
      connections: engine.ports,
      total: engine.total,
      macs: this.sw.macEntries(),
      brokenRings: this.vhostUserPorts.map((p) => ({ port: p.name, total: p.allCounters().brokenRings })),
    });
    for (const e of events) this.emitLater(e);
  }

  /**
   * Queues an event for the next turn of the event loop: listeners never run inside the switch's
   * own work (a session ending, a port being added), so what they do — even throw, or remove a
   * port — cannot meet the switch half-way through a change.
   */
  private emitLater(e: QueuedEvent): void {
    this.pending.push(e);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    process.nextTick(this.flushEvents);
  }

  private readonly flushEvents = (): void => {
    this.flushScheduled = false;
    const list = this.pending;
    this.pending = [];
    let i = 0;
    try {
      for (; i < list.length; i++) this.emit(list[i][0], list[i][1]);
    } finally {
      // a listener threw: the events after it are still told, on the next tick
      if (i < list.length - 1) {
        this.pending = [...list.slice(i + 1), ...this.pending];
        if (!this.flushScheduled) {
          this.flushScheduled = true;
          process.nextTick(this.flushEvents);
        }
      }
    }
  };

  // the typed signatures of SwitchEventEmitter over EventEmitter's
  override on<K extends SwitchEventName>(event: K, listener: (e: SwitchEvents[K]) => void): this {
    return super.on(event, listener);
  }
  override once<K extends SwitchEventName>(event: K, listener: (e: SwitchEvents[K]) => void): this {
    return super.once(event, listener);
  }
  override off<K extends SwitchEventName>(event: K, listener: (e: SwitchEvents[K]) => void): this {
    return super.off(event, listener);
  }

  // ---- close

  /**
   * hook runs when close() is called, before any port closes (the operator's tools end their
   * captures and servers there); the last added runs first.
   */
  onClose(hook: () => void): void {
    this.closeHooks.push(hook);
  }

  close(): Promise<void> {
    if (this.closing !== null) return this.closing;
    this.closing = Promise.resolve();
    for (const hook of [...this.closeHooks].reverse()) {
      try {
        hook();
      } catch (e) {
        // the switch closes all the same: a hook's failure must not leave the ports open
        this.log(`error: a close hook failed: ${(e as Error)?.stack ?? String(e)}`, { level: 'error' });
      }
    }
    if (this.sampleTimer !== null) clearInterval(this.sampleTimer);
    for (const r of this.records.values()) r.removed = true;
    for (const r of this.records.values()) if (r.kind === 'vhost-user') r.endpoint?.close();
    for (const r of this.records.values()) {
      r.port.close();
      this.wentDown(r, null);
    }
    const threads = this.pool?.close();
    this.sw.close();
    this.closing = threads ?? Promise.resolve();
    return this.closing;
  }
}

/**
 * Makes a switch with these options (the config file's names and defaults: {@link SwitchOptions}).
 * Add its ports with addPort(); close it with close(). Throws ConfigError naming each wrong option.
 *
 * @example
 * ```ts
 * import { createSwitch, vhostUserPort } from 'elastic-vhost';
 *
 * const sw = createSwitch({ poolMb: 64, log: (msg) => console.log(msg) });
 * sw.on('portUp', (e) => console.log(`${e.port} is up as connection ${e.connection}`));
 * sw.addPort(vhostUserPort({ name: 'vm0', path: '/run/ev/vm0.sock' }));
 * sw.addPort(vhostUserPort({ name: 'vm1', path: '/run/ev/vm1.sock' }));
 * ```
 */
export function createSwitch(options: SwitchOptions = {}): ElasticSwitch {
  return new VirtualSwitch(options);
}
