// Prometheus metrics (prom-client), served over HTTP at /metrics (--metrics [ADDR:]PORT).
//
// Every value is read at scrape time from the counters the data path keeps anyway (the engine's
// Float64Array rows, each port's counter object, the elastic FIFO's queue arrays): each metric's
// collect() reads one snapshot taken once per scrape. Nothing is counted per frame for metrics.
//
// Directions are the switch's: "in" is what the switch took from a port (a guest's TX ring, a read
// from the TAP device, a datagram from a remote VTEP), "out" what it gave to a port (a guest's RX
// ring, a write to the TAP, a frame for the VXLAN uplink to encapsulate). The VXLAN uplink's own
// families (elastic_vhost_vxlan_…) add its datagrams, per remote VTEP (`vtep` label, ADDR:PORT).
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { bearerGuard } from './auth';
import { isUnix, parseUnixAddress, UNIX_FORM, type ListenAddress } from './listen-address';
import { listenUnix } from './unix-listen';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { SwitchStats } from '../engine/switch';
import type { DropCounts, TrafficCounts } from '../engine/counters';
import type { PortCounters } from '../ports/vhost-user/port';
import type { TapCounters } from '../ports/tap-port';
import type { VxlanCounters } from '../ports/vxlan-port';
import { limitHits } from '../vhost-user/session';
import { chainLimitHits } from '../virtio/split-ring';
import { portTraffic, portViews, type OpsHost, type PortView, type VtepView, type VxlanView } from './switch-view';
import type { Log } from '../log';

type Labels = Record<string, string>;
type Sample = [Labels, number];

interface Snapshot {
  stats: SwitchStats;
  ports: PortView[];
}

/** engine drop reasons (counters.ts) as label values */
const ENGINE_DROPS: [keyof DropCounts, string][] = [
  ['poolExhausted', 'pool_exhausted'],
  ['shareLimit', 'share_limit'],
  ['malformed', 'malformed'],
  ['portSecurity', 'port_security'],
  ['holdExpired', 'hold_expired'],
  ['sameConnection', 'same_connection'],
  ['detached', 'detached'],
  ['tooBig', 'too_big'],
];

function isVhost(c: PortCounters | TapCounters | VxlanCounters): c is PortCounters {
  return 'txFrames' in c;
}

function isTap(c: PortCounters | TapCounters | VxlanCounters): c is TapCounters {
  return 'fromHostFrames' in c;
}

/** frames a port dropped itself, by reason (not the engine's) */
function portDrops(p: PortView): [string, number][] {
  const c = p.counters;
  if (isTap(c)) return [['tap_write_error', c.toHostErrors]];
  if (!isVhost(c)) {
    // the VXLAN uplink: frames not encapsulated, datagrams not decapsulated (send errors are
    // datagrams, per VTEP: elastic_vhost_vxlan_send_errors_total)
    return [
      ['vxlan_too_big', c.txTooBig],
      ['vxlan_no_remote', c.txNoRemote],
      ['vxlan_invalid', c.txBad],
      ['vxlan_offload_unsupported', p.vxlan?.offload.rxOffloadDropped ?? 0],
      ['vxlan_bad_length', c.rxBadLength],
      ['vxlan_bad_flags', c.rxBadFlags],
      ['vxlan_wrong_vni', c.rxWrongVni],
      ['vxlan_unknown_vtep', c.rxUnknownVtep],
    ];
  }
  return [
    ['tx_invalid', c.txDropped - c.txBadOffload],
    ['tx_bad_offload', c.txBadOffload],
    ['tx_ring_disabled', c.txDisabledDropped],
    ['rx_too_big', c.rxTooBig],
    ['rx_over_mtu', c.rxOverMtu],
    ['rx_offload_unsupported', c.rxOffloadDropped],
    ['rx_bad_range', c.rxBadRange],
  ];
}

interface Family {
  name: string;
  help: string;
  type: 'counter' | 'gauge';
  labels?: string[];
  read(s: Snapshot): Sample[];
}

const perPort = (read: (p: PortView) => number | null): ((s: Snapshot) => Sample[]) => (s) => {
  const out: Sample[] = [];
  for (const p of s.ports) {
    const v = read(p);
    if (v !== null) out.push([{ port: p.name }, v]);
  }
  return out;
};
const engine = (read: (e: TrafficCounts) => number) => perPort((p) => (p.engine ? read(p.engine) : null));
const queue = (read: (q: NonNullable<PortView['queue']>) => number) => perPort((p) => (p.queue ? read(p.queue) : null));
const one = (read: (s: Snapshot) => number) => (s: Snapshot): Sample[] => [[{}, read(s)]];
const vxlanPort = (read: (v: VxlanView, c: VxlanCounters) => number) => perPort((p) => (p.vxlan ? read(p.vxlan, p.counters as VxlanCounters) : null));
const perVtep = (read: (v: VtepView) => number) => (s: Snapshot): Sample[] =>
  s.ports.flatMap((p) => (p.vxlan ? p.vxlan.vteps.map((v): Sample => [{ port: p.name, vtep: v.vtep }, read(v)]) : []));

const FAMILIES: Family[] = [
  // ---- ports
  { name: 'elastic_vhost_port_up', help: 'Port attached to the engine: a front-end connected (vhost-user), the TAP device open or the VXLAN socket bound (1), else 0.', type: 'gauge', labels: ['port'], read: perPort((p) => (p.state === 'connected' ? 1 : 0)) },
  {
    name: 'elastic_vhost_port_info',
    help: 'Port description; mode: server, client, fd, tap or vxlan; path: the socket, TAP device or local VTEP (ADDR:PORT); features: the virtio features negotiated by name.',
    type: 'gauge',
    labels: ['port', 'mode', 'path', 'features', 'protocol_features'],
    read: (s) => s.ports.map((p) => [{ port: p.name, mode: p.mode, path: p.path, features: p.features.join(','), protocol_features: p.protocolFeatures.join(',') }, 1]),
  },
  { name: 'elastic_vhost_port_in_frames_total', help: 'Frames the switch took from the port (guest TX ring, TAP read, datagram decapsulated).', type: 'counter', labels: ['port'], read: perPort((p) => portTraffic(p.counters).inFrames) },
  { name: 'elastic_vhost_port_in_bytes_total', help: 'Ethernet bytes the switch took from the port.', type: 'counter', labels: ['port'], read: perPort((p) => portTraffic(p.counters).inBytes) },
  { name: 'elastic_vhost_port_out_frames_total', help: 'Frames the switch gave to the port (guest RX ring, TAP write, frame for the VXLAN uplink); a GSO frame segmented for a guest counts each segment, for the VXLAN uplink once (its datagrams: elastic_vhost_vxlan_encap_datagrams_total).', type: 'counter', labels: ['port'], read: perPort((p) => portTraffic(p.counters).outFrames) },
  { name: 'elastic_vhost_port_out_bytes_total', help: 'Ethernet bytes the switch gave to the port.', type: 'counter', labels: ['port'], read: perPort((p) => portTraffic(p.counters).outBytes) },
  { name: 'elastic_vhost_port_fast_path_frames_total', help: 'Frames delivered to the port on the fast path (sender to receiver, one copy), since it connected.', type: 'counter', labels: ['port'], read: engine((e) => e.fastFrames) },
  { name: 'elastic_vhost_port_fast_path_bytes_total', help: 'Ethernet bytes delivered to the port on the fast path, since it connected.', type: 'counter', labels: ['port'], read: engine((e) => e.fastBytes) },
  { name: 'elastic_vhost_port_stored_frames_total', help: 'Frames for the port stored in the elastic FIFO (and unresolved frames it sent), since it connected.', type: 'counter', labels: ['port'], read: engine((e) => e.storedFrames) },
  { name: 'elastic_vhost_port_stored_bytes_total', help: 'Ethernet bytes stored in the elastic FIFO for the port, since it connected.', type: 'counter', labels: ['port'], read: engine((e) => e.storedBytes) },
  { name: 'elastic_vhost_port_drained_frames_total', help: 'Frames delivered to the port from the elastic FIFO by the monitor, since it connected.', type: 'counter', labels: ['port'], read: engine((e) => e.drainedFrames) },
  { name: 'elastic_vhost_port_drained_bytes_total', help: 'Ethernet bytes delivered to the port from the elastic FIFO, since it connected.', type: 'counter', labels: ['port'], read: engine((e) => e.drainedBytes) },
  { name: 'elastic_vhost_port_resolved_frames_total', help: 'Frames held as unresolved, moved to the port once its MAC became known.', type: 'counter', labels: ['port'], read: engine((e) => e.resolvedFrames) },
  { name: 'elastic_vhost_port_handed_frames_total', help: 'Worker threads (--workers N > 1): frames for this port handed from the thread that took them to the thread serving its RX queue.', type: 'counter', labels: ['port'], read: engine((e) => e.handedFrames) },
  { name: 'elastic_vhost_port_followed_frames_total', help: 'Frames held for another port that followed a MAC moving to this one (live migration).', type: 'counter', labels: ['port'], read: engine((e) => e.followedFrames) },
  { name: 'elastic_vhost_port_hold_flooded_frames_total', help: 'Unresolved frames the port sent that passed the hold time and were flooded.', type: 'counter', labels: ['port'], read: engine((e) => e.holdFlooded) },
  {
    name: 'elastic_vhost_port_dropped_frames_total',
    help: 'Frames dropped, by reason: the engine\'s (pool_exhausted, share_limit, …; since the port connected) and the port\'s own (tx_*, rx_*, tap_*, vxlan_*: vxlan_too_big for the underlay MTU, vxlan_wrong_vni, vxlan_unknown_vtep, …).',
    type: 'counter',
    labels: ['port', 'reason'],
    read: (s) => {
      const out: Sample[] = [];
      for (const p of s.ports) {
        if (p.engine) for (const [k, reason] of ENGINE_DROPS) out.push([{ port: p.name, reason }, p.engine.drops[k]]);
        for (const [reason, v] of portDrops(p)) out.push([{ port: p.name, reason }, v]);
      }
      return out;
    },
  },
  { name: 'elastic_vhost_port_rx_no_buffers_total', help: 'Deliveries that found too few free RX buffers in the guest (the frame then waits in the elastic FIFO).', type: 'counter', labels: ['port'], read: perPort((p) => (isVhost(p.counters) ? p.counters.rxNoBuffers : null)) },
  {
    name: 'elastic_vhost_port_queue_frames_total',
    help: 'Frames per virtqueue pair of a vhost-user port: direction="out" written to its RX queue, "in" taken from its TX queue (multiqueue guests: how the switch spreads and the guest sends).',
    type: 'counter',
    labels: ['port', 'queue', 'direction'],
    read: (s) =>
      s.ports.flatMap((p): Sample[] =>
        p.rings.map((r): Sample => [{ port: p.name, queue: String(r.index >> 1), direction: r.kind === 'rx' ? 'out' : 'in' }, r.frames]),
      ),
  },
  {
    name: 'elastic_vhost_port_desc_budget_hits_total',
    help: 'Turns of the event loop in which a port\'s RX queue (direction="out") or TX batch (direction="in") used up its descriptor budget; the rest waited for the next turn.',
    type: 'counter',
    labels: ['port', 'direction'],
    read: (s) => s.ports.flatMap((p): Sample[] => (isVhost(p.counters) ? [[{ port: p.name, direction: 'out' }, p.counters.rxDescBudgetHits], [{ port: p.name, direction: 'in' }, p.counters.txDescBudgetHits]] : [])),
  },
  { name: 'elastic_vhost_port_rings_broken_total', help: 'Virtqueues marked broken (a front-end error on that ring).', type: 'counter', labels: ['port'], read: perPort((p) => (isVhost(p.counters) ? p.counters.brokenRings : null)) },
  {
    name: 'elastic_vhost_port_offload_fallback_frames_total',
    help: 'Frames the port completed in software for a guest that did not negotiate the offload, or before VXLAN encapsulation: checksum completed, or GSO frame segmented.',
    type: 'counter',
    labels: ['port', 'kind'],
    read: (s) =>
      s.ports.flatMap((p): Sample[] => {
        const o = isVhost(p.counters) ? p.counters : p.vxlan?.offload;
        return o ? [[{ port: p.name, kind: 'checksum' }, o.rxChecksummed], [{ port: p.name, kind: 'segmentation' }, o.rxSegmented]] : [];
      }),
  },
  // ---- the VXLAN uplink
  {
    name: 'elastic_vhost_vxlan_info',
    help: 'The VXLAN uplink: its VNI, local VTEP (ADDR:PORT) and underlay MTU.',
    type: 'gauge',
    labels: ['port', 'vni', 'local', 'underlay_mtu'],
    read: (s) => s.ports.flatMap((p): Sample[] => (p.vxlan ? [[{ port: p.name, vni: String(p.vxlan.vni), local: p.vxlan.local, underlay_mtu: String(p.vxlan.underlayMtu) }, 1]] : [])),
  },
  { name: 'elastic_vhost_vxlan_max_inner_frame_bytes', help: 'Largest inner Ethernet frame the underlay MTU carries (MTU - 36); a larger one is dropped, reason vxlan_too_big.', type: 'gauge', labels: ['port'], read: vxlanPort((v) => v.maxInner) },
  { name: 'elastic_vhost_vxlan_encap_datagrams_total', help: 'Datagrams sent to remote VTEPs (each flood replica and each TSO segment counts).', type: 'counter', labels: ['port'], read: vxlanPort((_, c) => c.encapDatagrams) },
  { name: 'elastic_vhost_vxlan_encap_bytes_total', help: 'Inner Ethernet bytes of the datagrams sent.', type: 'counter', labels: ['port'], read: vxlanPort((_, c) => c.encapBytes) },
  { name: 'elastic_vhost_vxlan_decap_frames_total', help: 'Frames decapsulated from remote VTEPs\' datagrams and given to the switch.', type: 'counter', labels: ['port'], read: vxlanPort((_, c) => c.decapFrames) },
  { name: 'elastic_vhost_vxlan_decap_bytes_total', help: 'Inner Ethernet bytes of the frames decapsulated.', type: 'counter', labels: ['port'], read: vxlanPort((_, c) => c.decapBytes) },
  {
    name: 'elastic_vhost_vxlan_send_errors_total',
    help: 'Datagrams the UDP socket reported an error for, by error code (EHOSTUNREACH, EMSGSIZE, …).',
    type: 'counter',
    labels: ['port', 'code'],
    read: (s) => s.ports.flatMap((p) => (p.vxlan ? Object.entries(p.vxlan.sendErrors).map(([code, v]): Sample => [{ port: p.name, code }, v]) : [])),
  },
  { name: 'elastic_vhost_vxlan_send_slots_busy_total', help: 'Times a frame waited in the elastic FIFO because every send slot was in flight (not a drop).', type: 'counter', labels: ['port'], read: vxlanPort((_, c) => c.txSlotsBusy) },
  { name: 'elastic_vhost_vxlan_vtep_flood', help: 'Remote VTEP in the flood set (a remote=; broadcast and unknown frames go to it): 1, or known only for configured MACs: 0.', type: 'gauge', labels: ['port', 'vtep'], read: perVtep((v) => (v.flood ? 1 : 0)) },
  { name: 'elastic_vhost_vxlan_vtep_macs', help: 'Inner MACs behind the remote VTEP now (learned and configured).', type: 'gauge', labels: ['port', 'vtep'], read: perVtep((v) => v.macs) },
  { name: 'elastic_vhost_vxlan_vtep_sent_datagrams_total', help: 'Datagrams sent to the remote VTEP.', type: 'counter', labels: ['port', 'vtep'], read: perVtep((v) => v.sentDatagrams) },
  { name: 'elastic_vhost_vxlan_vtep_sent_bytes_total', help: 'Inner Ethernet bytes sent to the remote VTEP.', type: 'counter', labels: ['port', 'vtep'], read: perVtep((v) => v.sentBytes) },
  { name: 'elastic_vhost_vxlan_vtep_send_errors_total', help: 'Datagrams to the remote VTEP the UDP socket reported an error for.', type: 'counter', labels: ['port', 'vtep'], read: perVtep((v) => v.sendErrors) },
  { name: 'elastic_vhost_vxlan_vtep_received_frames_total', help: 'Frames received from the remote VTEP (our VNI, well formed).', type: 'counter', labels: ['port', 'vtep'], read: perVtep((v) => v.receivedFrames) },
  { name: 'elastic_vhost_vxlan_vtep_received_bytes_total', help: 'Inner Ethernet bytes received from the remote VTEP.', type: 'counter', labels: ['port', 'vtep'], read: perVtep((v) => v.receivedBytes) },
  { name: 'elastic_vhost_capture_frames_total', help: 'Frames written to the running packet capture of the port.', type: 'counter', labels: ['port'], read: perPort((p) => (p.capture ? p.capture.frames : null)) },
  { name: 'elastic_vhost_capture_dropped_total', help: 'Capture records not kept because the capture writer was behind.', type: 'counter', labels: ['port'], read: perPort((p) => (p.capture ? p.capture.dropped : null)) },
  // ---- the elastic FIFO
  { name: 'elastic_vhost_fifo_queue_frames', help: 'Frames waiting in the elastic FIFO for the port.', type: 'gauge', labels: ['port'], read: queue((q) => q.frames) },
  {
    name: 'elastic_vhost_fifo_rx_queue_frames',
    help: 'Frames waiting in the elastic FIFO per RX queue pair of a multiqueue port (order is kept per RX queue).',
    type: 'gauge',
    labels: ['port', 'queue'],
    read: (s) => s.ports.flatMap((p): Sample[] => (p.queue && p.queue.perQueue.length > 1 ? p.queue.perQueue.map((n, k): Sample => [{ port: p.name, queue: String(k) }, n]) : [])),
  },
  { name: 'elastic_vhost_fifo_queue_blocks', help: 'Local-data-store blocks the frames waiting for the port hold.', type: 'gauge', labels: ['port'], read: queue((q) => q.blocks) },
  { name: 'elastic_vhost_fifo_queue_share_limit_blocks', help: 'Most blocks the port\'s queue may take (share=, --share-limit).', type: 'gauge', labels: ['port'], read: queue((q) => q.shareLimit) },
  { name: 'elastic_vhost_fifo_queue_oldest_frame_age_seconds', help: 'How long the oldest frame waiting for the port has waited (0 when none waits; stamped with the engine clock, within one tick).', type: 'gauge', labels: ['port'], read: queue((q) => (q.oldestMs ?? 0) / 1000) },
  { name: 'elastic_vhost_fifo_blocks', help: 'Blocks of the local data store.', type: 'gauge', read: one((s) => s.stats.pool.blocks) },
  { name: 'elastic_vhost_fifo_block_size_bytes', help: 'Size of one local-data-store block.', type: 'gauge', read: one((s) => s.stats.pool.blockSize) },
  { name: 'elastic_vhost_fifo_blocks_in_use', help: 'Local-data-store blocks holding waiting frames.', type: 'gauge', read: one((s) => s.stats.pool.blocksInUse) },
  { name: 'elastic_vhost_fifo_blocks_high_water', help: 'Most blocks in use at once since the start.', type: 'gauge', read: one((s) => s.stats.pool.highWater) },
  { name: 'elastic_vhost_fifo_unresolved_frames', help: 'Frames waiting for their destination MAC to become known.', type: 'gauge', read: one((s) => s.stats.pool.unresolvedFrames) },
  { name: 'elastic_vhost_fifo_unresolved_blocks', help: 'Blocks the unresolved frames hold.', type: 'gauge', read: one((s) => s.stats.pool.unresolvedBlocks) },
  { name: 'elastic_vhost_fifo_unresolved_oldest_frame_age_seconds', help: 'How long the oldest unresolved frame has waited (0 when none waits).', type: 'gauge', read: one((s) => (s.stats.pool.unresolvedOldestMs ?? 0) / 1000) },
  // ---- switch-wide totals (kept across reconnects)
  { name: 'elastic_vhost_fast_path_frames_total', help: 'Frames delivered on the fast path, all ports, since the start.', type: 'counter', read: one((s) => s.stats.total.fastFrames) },
  { name: 'elastic_vhost_stored_frames_total', help: 'Frames stored in the elastic FIFO, all ports, since the start.', type: 'counter', read: one((s) => s.stats.total.storedFrames) },
  { name: 'elastic_vhost_drained_frames_total', help: 'Frames delivered from the elastic FIFO, all ports, since the start.', type: 'counter', read: one((s) => s.stats.total.drainedFrames) },
  { name: 'elastic_vhost_dropped_frames_total', help: 'Frames the engine dropped, by reason, all ports, since the start.', type: 'counter', labels: ['reason'], read: (s) => ENGINE_DROPS.map(([k, reason]) => [{ reason }, s.stats.total.drops[k]]) },
  { name: 'elastic_vhost_mac_table_entries', help: 'MAC addresses in the table (learned and static).', type: 'gauge', read: one((s) => s.stats.macTable.entries) },
  { name: 'elastic_vhost_mac_table_capacity', help: 'MAC table slots.', type: 'gauge', read: one((s) => s.stats.macTable.capacity) },
  { name: 'elastic_vhost_refused_connections_total', help: 'Front-ends refused because --max-ports were attached.', type: 'counter', read: one((s) => s.stats.refusedConnections) },
  {
    name: 'elastic_vhost_limit_refusals_total',
    help: 'Requests refused by a limit (--max-regions, --max-guest-mem-gb/--max-total-mem-gb, --queues, --max-chain-descriptors).',
    type: 'counter',
    labels: ['limit'],
    read: () => [...Object.entries(limitHits).map(([limit, v]): Sample => [{ limit }, v as number]), [{ limit: 'chainDescriptors' }, chainLimitHits[0]]],
  },
];

export class Metrics {
  readonly registry = new Registry();
  private snap: Snapshot | null = null;

  constructor(private readonly host: OpsHost) {
    collectDefaultMetrics({ register: this.registry });
    for (const f of FAMILIES) this.define(f);
  }

  private define(f: Family): void {
    const current = (): Snapshot => this.current();
    const labelNames = f.labels ?? [];
    if (f.type === 'counter') {
      new Counter({
        name: f.name,
        help: f.help,
        labelNames,
        registers: [this.registry],
        collect() {
          this.reset();
          for (const [l, v] of f.read(current())) this.inc(l, v);
        },
      });
    } else {
      new Gauge({
        name: f.name,
        help: f.help,
        labelNames,
        registers: [this.registry],
        collect() {
          this.reset();
          for (const [l, v] of f.read(current())) this.set(l, v);
        },
      });
    }
  }

  private current(): Snapshot {
    if (this.snap === null) {
      const stats = this.host.sw.stats();
      this.snap = { stats, ports: portViews(this.host, stats) };
    }
    return this.snap;
  }

  /** The exposition text: one snapshot of the switch for every metric of this scrape. */
  async scrape(): Promise<string> {
    this.snap = null;
    try {
      return await this.registry.metrics();
    } finally {
      this.snap = null;
    }
  }
}

/** "[ADDR:]PORT" (--metrics): loopback unless an address is given; "[::1]:9100" for IPv6; or "unix:PATH[,mode=OCTAL]". */
export function parseListenAddress(s: string, what: string): ListenAddress {
  const unix = parseUnixAddress(s, what);
  if (unix !== null) return unix;
  const m = /^(?:(\[[0-9a-fA-F:.]+\]|[^:[\]]+):)?(\d+)$/.exec(s);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) throw new Error(`${what} "${s}": want [ADDR:]PORT, e.g. 9100 or 0.0.0.0:9100, or ${UNIX_FORM}`);
  const host = m[1] === undefined ? '127.0.0.1' : m[1].replace(/^\[|\]$/g, '');
  return { host, port };
}

export interface MetricsServer {
  /** where it listens (port 0 given: the port chosen): http://ADDR:PORT/metrics, or unix:PATH */
  readonly url: string;
  close(): void;
}

/** Serves /metrics on listen (TCP or a Unix socket); with token (--metrics-token-file) only to requests that carry it. */
export async function startMetricsServer(host: OpsHost, listen: ListenAddress, log: Log, token?: string): Promise<MetricsServer> {
  const metrics = new Metrics(host);
  const authorized = token === undefined ? null : bearerGuard(token, 'metrics', log);
  const server = http.createServer((req, res) => {
    if (authorized !== null && !authorized(req, res)) return;
    const url = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain' }).end('GET /metrics\n');
      return;
    }
    if (url !== '/metrics') {
      res.writeHead(url === '/' ? 200 : 404, { 'Content-Type': 'text/plain' }).end(url === '/' ? 'elastic-vhost: Prometheus metrics at /metrics\n' : 'not found: GET /metrics\n');
      return;
    }
    metrics.scrape().then(
      (text) => res.writeHead(200, { 'Content-Type': metrics.registry.contentType }).end(req.method === 'HEAD' ? undefined : text),
      (e) => {
        log(`metrics: error: scrape failed: ${(e as Error)?.stack ?? String(e)}`, { level: 'error' });
        res.writeHead(500, { 'Content-Type': 'text/plain' }).end('scrape failed\n');
      },
    );
  });
  // a scraper that never reads does not hold the process: idle connections are closed
  server.headersTimeout = 10_000;
  server.requestTimeout = 10_000;
  server.keepAliveTimeout = 5_000;
  server.maxHeadersCount = 50;
  if (isUnix(listen)) {
    await listenUnix(server, listen.path, listen.mode);
    server.on('error', (e) => log(`metrics: error: ${e.message}`, { level: 'error' }));
    server.unref();
    const url = `unix:${listen.path}`;
    log(`metrics: serving ${url} (GET /metrics)`, { url });
    return {
      url,
      close: () => {
        server.close();
        server.closeAllConnections();
        // listened on through its fd: Node does not unlink it
        fs.rmSync(listen.path, { force: true });
      },
    };
  }
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => {
      server.off('error', reject);
      server.on('error', (e) => log(`metrics: error: ${e.message}`, { level: 'error' }));
      server.unref();
      const a = server.address() as AddressInfo;
      const h = a.family === 'IPv6' ? `[${a.address}]` : a.address;
      const url = `http://${h}:${a.port}/metrics`;
      log(`metrics: serving ${url}`, { url });
      resolve({
        url,
        close: () => {
          server.close();
          server.closeAllConnections();
        },
      });
    });
  });
}
