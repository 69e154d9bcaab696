// What the operator's tools (metrics, control socket) see of a running switch, built on request
// from the counters the data path already keeps — never per frame. One set of plain objects, so
// `ctl ports --json` and the Prometheus names read the same numbers.
import type { Switch, PortStats, PoolStats } from '../engine/switch';
import type { TrafficCounts } from '../engine/counters';
import { VhostUserPort, type PortCounters } from '../ports/vhost-user/port';
import type { TapPort, TapCounters } from '../ports/tap-port';
import { VxlanPort, type VxlanCounters, type VxlanVtepStats } from '../ports/vxlan-port';
import type { FallbackCounters } from '../ports/offload-fallback';
import { virtioFeatureNames, protocolFeatureNames } from '../vhost-user/features';
import type { CaptureManager, CaptureSummary } from './capture';

/** A port as the process configured it. */
export interface PortRecord {
  name: string;
  /** 'server' (we listen), 'client' (we dial QEMU), 'fd' (an inherited socket), 'tap', 'vxlan' */
  mode: 'server' | 'client' | 'fd' | 'tap' | 'vxlan';
  /** socket path, the TAP device's name, or the local VTEP (ADDR:PORT) */
  path: string;
  port: VhostUserPort | TapPort | VxlanPort;
}

/** A vhost-user port to add at run time: the --socket/--client spec. */
export interface AddPortRequest {
  path: string;
  client?: boolean;
  mac?: string;
  share?: number;
  name?: string;
}

/** The running switch as the ops tools use it (src/cli/main.ts provides it). */
export interface OpsHost {
  readonly sw: Switch;
  ports(): PortRecord[];
  readonly captures: CaptureManager;
  /** adds a vhost-user port at run time; throws with the reason when it cannot */
  addPort(req: AddPortRequest): PortRecord;
  /** removes a port at run time (its front-end disconnected, its socket closed) */
  removePort(name: string): void;
}

export interface RingView {
  index: number;
  /** 'rx' or 'tx' as the guest sees it: the switch writes RX rings and reads TX rings */
  kind: 'rx' | 'tx';
  layout: 'split' | 'packed';
  size: number;
  started: boolean;
  enabled: boolean;
  broken: string | null;
  lastAvail: number;
  usedIdx: number;
  /** frames the switch wrote into this ring's queue pair (RX) or took from it (TX), kept across reconnects like the counters */
  frames: number;
}

export interface QueueView {
  frames: number;
  blocks: number;
  shareLimit: number;
  oldestMs: number | null;
  /** frames waiting per RX queue pair (index = pair), up to the last one holding any */
  perQueue: number[];
}

/** A remote VTEP of the VXLAN uplink: VxlanVtepStats, with its address and port as one name. */
export interface VtepView extends VxlanVtepStats {
  /** ADDR:PORT */
  vtep: string;
}

/** What only the VXLAN uplink has. */
export interface VxlanView {
  vni: number;
  /** the local VTEP, ADDR:PORT */
  local: string;
  underlayMtu: number;
  /** largest inner Ethernet frame the underlay MTU carries */
  maxInner: number;
  /** UDP source ports frames leave from (picked per inner flow), the listening one first */
  sourcePorts: number[];
  vteps: VtepView[];
  /** failed sends by dgram error code (EHOSTUNREACH, EMSGSIZE, …) */
  sendErrors: Record<string, number>;
  /** checksums completed and TSO frames segmented before encapsulation */
  offload: FallbackCounters;
}

export interface PortView {
  name: string;
  mode: PortRecord['mode'];
  path: string;
  /** connected: a front-end (or the TAP device, or the VXLAN socket) is attached to the engine */
  state: 'connected' | 'waiting';
  /** connection number in the engine while connected */
  connection: number | null;
  staticMac: string | null;
  features: string[];
  protocolFeatures: string[];
  mtu: number | null;
  rings: RingView[];
  /** the port's own counters (kept across reconnects) */
  counters: PortCounters | TapCounters | VxlanCounters;
  /** the engine's counters of the connection (since it attached), null while not connected */
  engine: TrafficCounts | null;
  queue: QueueView | null;
  capture: CaptureSummary | null;
  /** the VXLAN uplink's VTEPs and send errors (null for other ports) */
  vxlan: VxlanView | null;
}

/** A port's traffic as the switch sees it: "in" what it took from the port, "out" what it gave to it. */
export interface PortTraffic {
  inFrames: number;
  inBytes: number;
  outFrames: number;
  outBytes: number;
}

/** In and out of any port's counters (also of their JSON, as `ctl` gets them). */
export function portTraffic(c: PortView['counters']): PortTraffic {
  if ('txFrames' in c) return { inFrames: c.txFrames, inBytes: c.txBytes, outFrames: c.rxFrames, outBytes: c.rxBytes };
  if ('fromHostFrames' in c) return { inFrames: c.fromHostFrames, inBytes: c.fromHostBytes, outFrames: c.toHostFrames, outBytes: c.toHostBytes };
  return { inFrames: c.decapFrames, inBytes: c.decapBytes, outFrames: c.toRemoteFrames, outBytes: c.toRemoteBytes };
}

const endpointName = (address: string, port: number): string => `${address}:${port}`;

function vxlanView(p: VxlanPort): VxlanView {
  return {
    vni: p.vni,
    local: endpointName(p.local.address, p.local.port),
    underlayMtu: p.underlayMtu,
    maxInner: p.maxInner,
    sourcePorts: p.sourcePorts(),
    vteps: p.vteps().map((v) => ({ vtep: endpointName(v.address, v.port), ...v })),
    sendErrors: { ...p.sendErrorCodes },
    offload: { ...p.offloadCounters },
  };
}

function names(s: string): string[] {
  return s === '(none)' ? [] : s.split('|');
}

export function portViews(host: OpsHost, stats = host.sw.stats()): PortView[] {
  const byIndex = new Map<number, PortStats>(stats.ports.map((p) => [p.index, p]));
  const captures = new Map(host.captures.list().map((c) => [c.port, c]));
  return host.ports().map((r) => {
    const p = r.port;
    const index = p.index;
    // by number and name: a closed TAP port keeps its old number, which a new connection may reuse
    const found = index >= 0 ? byIndex.get(index) : undefined;
    const e = found && found.name === p.name ? found : undefined;
    const view: PortView = {
      name: r.name,
      mode: r.mode,
      path: r.path,
      state: e ? 'connected' : 'waiting',
      connection: e ? index : null,
      staticMac: e ? e.staticMac : null,
      features: [],
      protocolFeatures: [],
      mtu: null,
      rings: [],
      counters: p instanceof VhostUserPort ? p.allCounters() : { ...p.counters },
      engine: e ? trafficOf(e) : null,
      queue: e ? { frames: e.queuedFrames, blocks: e.queuedBlocks, shareLimit: e.shareLimit, oldestMs: e.queuedOldestMs, perQueue: e.queuedPerQueue } : null,
      capture: captures.get(r.name) ?? null,
      vxlan: p instanceof VxlanPort ? vxlanView(p) : null,
    };
    if (p instanceof VhostUserPort && p.session) {
      const s = p.session;
      const qf = p.queueFrames();
      view.features = s.featuresSet ? names(virtioFeatureNames(s.features)) : [];
      view.protocolFeatures = names(protocolFeatureNames(s.protocolFeatures));
      view.mtu = s.mtu > 0 ? s.mtu : null;
      view.rings = s.rings
        .filter((q) => q.addrSet || q.started)
        .map((q) => ({
          index: q.index,
          kind: q.index % 2 === 0 ? 'rx' : 'tx',
          layout: q.packed ? 'packed' : 'split',
          size: q.num,
          started: q.started,
          enabled: q.enabled,
          broken: q.broken,
          lastAvail: q.lastAvail,
          usedIdx: q.usedIdx,
          frames: (q.index % 2 === 0 ? qf.rx : qf.tx)[q.index >> 1] ?? 0,
        }));
    }
    return view;
  });
}

function trafficOf(e: PortStats): TrafficCounts {
  return {
    rxFrames: e.rxFrames,
    rxBytes: e.rxBytes,
    fastFrames: e.fastFrames,
    fastBytes: e.fastBytes,
    storedFrames: e.storedFrames,
    storedBytes: e.storedBytes,
    handedFrames: e.handedFrames,
    handedBytes: e.handedBytes,
    drainedFrames: e.drainedFrames,
    drainedBytes: e.drainedBytes,
    resolvedFrames: e.resolvedFrames,
    followedFrames: e.followedFrames,
    holdFlooded: e.holdFlooded,
    drops: { ...e.drops },
    dropped: e.dropped,
  };
}

export interface MacView {
  mac: string;
  port: string | null;
  connection: number;
  static: boolean;
  /** seconds since last seen as a source (null: static, never ages) */
  ageS: number | null;
  /** behind the VXLAN uplink: the remote VTEP (ADDR:PORT) it was learned from or configured at */
  vtep: string | null;
}

export function macViews(host: OpsHost): MacView[] {
  const nameOf = connectionNames(host);
  // the VXLAN uplink's own table says which VTEP each of its MACs is behind
  const vtepOf = new Map<string, string>();
  let vxlanConn = -1;
  for (const r of host.ports()) {
    if (!(r.port instanceof VxlanPort) || r.port.index < 0) continue;
    vxlanConn = r.port.index;
    for (const m of r.port.macEntries()) vtepOf.set(m.mac, endpointName(m.vtep, m.vtepPort));
  }
  return host.sw
    .macEntries()
    .map((e) => ({
      mac: e.mac,
      port: nameOf.get(e.index) ?? null,
      connection: e.index,
      static: e.isStatic,
      ageS: e.ageMs === null ? null : e.ageMs / 1000,
      vtep: e.index === vxlanConn ? (vtepOf.get(e.mac) ?? null) : null,
    }))
    .sort((a, b) => (a.connection - b.connection) || a.mac.localeCompare(b.mac));
}

export interface FifoView {
  pool: PoolStats;
  queues: ({ port: string; connection: number } & QueueView)[];
  unresolved: { frames: number; blocks: number; oldestMs: number | null };
}

export function fifoView(host: OpsHost, stats = host.sw.stats()): FifoView {
  const nameOf = connectionNames(host);
  return {
    pool: stats.pool,
    queues: stats.ports.map((p) => ({
      port: nameOf.get(p.index) ?? p.name,
      connection: p.index,
      frames: p.queuedFrames,
      blocks: p.queuedBlocks,
      shareLimit: p.shareLimit,
      oldestMs: p.queuedOldestMs,
      perQueue: p.queuedPerQueue,
    })),
    unresolved: { frames: stats.pool.unresolvedFrames, blocks: stats.pool.unresolvedBlocks, oldestMs: stats.pool.unresolvedOldestMs },
  };
}

function connectionNames(host: OpsHost): Map<number, string> {
  const m = new Map<number, string>();
  for (const r of host.ports()) if (r.port.index >= 0) m.set(r.port.index, r.name);
  return m;
}
