// What one sample of the web view holds: built from Switch.stats() and macEntries() (and the VXLAN
// uplink's VTEP table) on the web view's timer (never per frame), sent as JSON to every page. Short
// keys: a page gets several a second, each with every port.
import type { Switch } from '../engine/switch';
import type { VxlanVtepStats } from '../ports/vxlan-port';

/** A port as the CLI lists it: index is its connection number, -1 while nothing is attached. */
export interface ListedPort {
  readonly name: string;
  readonly index: number;
}

/** The VXLAN uplink as the sample reads it (VxlanPort). */
export interface ListedVxlan extends ListedPort {
  readonly vni: number;
  vteps(): VxlanVtepStats[];
  macEntries(): { mac: string; vtep: string; vtepPort: number }[];
  readonly counters: { encapDatagrams: number; decapFrames: number; txTooBig: number; txSendErrors: number };
}

export interface PortSample {
  name: string;
  kind: 'vhost-user' | 'tap' | 'vxlan';
  /** connection number, -1 while no front-end is attached */
  conn: number;
  up: boolean;
  /** frames and blocks waiting in this connection's queue of the elastic FIFO */
  held: number;
  heldBlocks: number;
  /** frames wait because the guest has no RX buffers (or its RX ring is stopped: a paused guest) */
  waiting: boolean;
  share: number;
  mac: string | null;
  /** engine counters: frames from this port; to it on the fast path; stored for it; drained to it; dropped */
  rx: number;
  fast: number;
  stored: number;
  drained: number;
  dropped: number;
}

/** A remote VTEP of the VXLAN uplink. */
export interface VtepSample {
  /** ADDR:PORT */
  vtep: string;
  /** in the flood set (remote=) */
  flood: boolean;
  macs: number;
  /** datagrams and inner bytes sent to it; datagrams that failed; frames and inner bytes from it */
  sent: number;
  sentBytes: number;
  errors: number;
  recv: number;
  recvBytes: number;
}

export interface VxlanSample {
  port: string;
  vni: number;
  encap: number;
  decap: number;
  tooBig: number;
  sendErrors: number;
  vteps: VtepSample[];
}

export interface WebSample {
  /** ms since the epoch */
  t: number;
  pool: { blocks: number; blockSize: number; inUse: number; highWater: number; unresolved: number };
  total: { rx: number; fast: number; stored: number; drained: number; dropped: number };
  ports: PortSample[];
  /** [MAC, connection, 1 if static] — and, behind the VXLAN uplink, its VTEP (ADDR:PORT); at most MAX_MACS */
  macs: ([string, number, number] | [string, number, number, string])[];
  macCount: number;
  /** the VXLAN uplink (null: none) */
  vxlan: VxlanSample | null;
}

/** MAC entries sent per sample: a page cannot show a full 6144-entry table usefully anyway */
export const MAX_MACS = 256;

export interface Uplinks {
  taps?: readonly ListedPort[];
  /** the first one's VTEPs make the sample's VXLAN section (the command has at most one) */
  vxlans?: readonly ListedVxlan[];
}

export function webSample(sw: Switch, vhostUser: readonly ListedPort[], uplinks: Uplinks = {}, now = Date.now()): WebSample {
  const s = sw.stats();
  const byConn = new Map(s.ports.map((p) => [p.index, p]));
  const ports: PortSample[] = [];
  const add = (p: ListedPort, kind: PortSample['kind']): void => {
    const e = p.index >= 0 ? byConn.get(p.index) : undefined;
    ports.push({
      name: p.name,
      kind,
      conn: e ? p.index : -1,
      up: e !== undefined,
      held: e?.queuedFrames ?? 0,
      heldBlocks: e?.queuedBlocks ?? 0,
      waiting: e?.wantsResources ?? false,
      share: e?.shareLimit ?? 0,
      mac: e?.staticMac ?? null,
      rx: e?.rxFrames ?? 0,
      fast: e?.fastFrames ?? 0,
      stored: e?.storedFrames ?? 0,
      drained: e?.drainedFrames ?? 0,
      dropped: e?.dropped ?? 0,
    });
  };
  for (const p of vhostUser) add(p, 'vhost-user');
  for (const p of uplinks.taps ?? []) add(p, 'tap');
  const vxlans = uplinks.vxlans ?? [];
  for (const p of vxlans) add(p, 'vxlan');
  const v = vxlans[0] ?? null;
  // a remote MAC's VTEP, by the connection of the uplink it is behind
  const vtepOf = new Map<number, Map<string, string>>();
  for (const x of vxlans) {
    if (!byConn.has(x.index)) continue;
    const m = new Map<string, string>();
    for (const e of x.macEntries()) m.set(e.mac, `${e.vtep}:${e.vtepPort}`);
    vtepOf.set(x.index, m);
  }
  const macs: WebSample['macs'] = [];
  const entries = sw.macEntries();
  entries.sort((a, b) => (a.mac < b.mac ? -1 : a.mac > b.mac ? 1 : 0));
  for (const m of entries) {
    if (macs.length === MAX_MACS) break;
    const vtep = vtepOf.get(m.index)?.get(m.mac);
    macs.push(vtep === undefined ? [m.mac, m.index, m.isStatic ? 1 : 0] : [m.mac, m.index, m.isStatic ? 1 : 0, vtep]);
  }
  const t = s.total;
  return {
    t: now,
    pool: { blocks: s.pool.blocks, blockSize: s.pool.blockSize, inUse: s.pool.blocksInUse, highWater: s.pool.highWater, unresolved: s.pool.unresolvedFrames },
    total: { rx: t.rxFrames, fast: t.fastFrames, stored: t.storedFrames, drained: t.drainedFrames, dropped: t.dropped },
    ports,
    macs,
    macCount: entries.length,
    vxlan: v ? vxlanSample(v) : null,
  };
}

function vxlanSample(v: ListedVxlan): VxlanSample {
  const c = v.counters;
  return {
    port: v.name,
    vni: v.vni,
    encap: c.encapDatagrams,
    decap: c.decapFrames,
    tooBig: c.txTooBig,
    sendErrors: c.txSendErrors,
    vteps: v.vteps().map((t) => ({
      vtep: `${t.address}:${t.port}`,
      flood: t.flood,
      macs: t.macs,
      sent: t.sentDatagrams,
      sentBytes: t.sentBytes,
      errors: t.sendErrors,
      recv: t.receivedFrames,
      recvBytes: t.receivedBytes,
    })),
  };
}
