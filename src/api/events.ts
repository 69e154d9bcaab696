// The switch's events: what they carry, the typed emitter interface, and the sampler that turns
// the MAC table and the counters into events.
//
// Every event comes from the control path. Port added/removed and a vhost-user front-end's
// connect/disconnect are told where they happen (addPort, removePort, the socket's acceptor, the
// session's end). What happens per frame — a MAC learned, a frame dropped, a ring marked broken —
// is not: the data path only writes the MAC table and typed-array counters, and EventSampler
// compares their state every eventIntervalMs with the state it saw last, so the data path pays
// nothing for events and a flood of drops is one event per period, not one per frame.
import type { DropCounts, TrafficCounts } from '../engine/counters';

/** What kind of port: a vhost-user connection (a guest), the TAP uplink, a VXLAN uplink. */
export type PortKind = 'vhost-user' | 'tap' | 'vxlan';

/** A port added to or removed from the switch. */
export interface PortEvent {
  port: string;
  kind: PortKind;
}

/** A port attached to the switch: a vhost-user front-end connected, an uplink opened. */
export interface PortUpEvent extends PortEvent {
  /** its connection number in the switch (the engine's counters and MAC table use it) */
  connection: number;
}

/** A port detached from the switch: frames queued for it were dropped (the `drops` event counts them as detached). */
export interface PortDownEvent extends PortEvent {
  /**
   * Why, when it was not an orderly end: the session's error, "uplink detached" (a TAP device
   * deleted, a VXLAN socket error: the log says which). null: the front-end closed the
   * connection, or the port was removed or the switch closed.
   */
  reason: string | null;
}

/** A MAC the switch did not know is now known: learned from a frame's source, or configured (static). */
export interface MacLearnedEvent {
  mac: string;
  port: string;
  connection: number;
  static: boolean;
}

/** A known MAC now sends from another port (a VM migrated or moved); frames held for it follow it. */
export interface MacMovedEvent {
  mac: string;
  from: string;
  to: string;
  connection: number;
}

/** A MAC the switch no longer knows: aged out, or its port detached. */
export interface MacForgottenEvent {
  mac: string;
  port: string;
}

/**
 * Rings of a vhost-user port marked broken since the last event (the front-end handed over
 * something the switch refuses to walk: a descriptor out of range, a chain too long…). The
 * session's log has the ring and the reason; the ring stays broken until the front-end sets it up
 * again.
 */
export interface RingBrokenEvent {
  port: string;
  /** rings broken since the last event about this port */
  rings: number;
  /** rings broken on this port since it was added */
  total: number;
}

/** Drops with a reason, each reason's count (reasons that did not move are left out). */
export type DropReasons = Partial<DropCounts>;

/** Frames the engine dropped since the last `drops` event, by reason and by port. */
export interface DropsEvent {
  /** frames dropped over the whole switch */
  dropped: number;
  reasons: DropReasons;
  /**
   * The ports they were counted on (the destination when it was known, else the source), still
   * attached when the switch looked: drops of a port that detached in the meantime are in
   * `dropped` only.
   */
  ports: { port: string; connection: number; dropped: number; reasons: DropReasons }[];
  /** ms since the last look (events are at most one per eventIntervalMs) */
  intervalMs: number;
}

/** Each event's name and what a listener is given. */
export interface SwitchEvents {
  portAdded: PortEvent;
  portRemoved: PortEvent;
  portUp: PortUpEvent;
  portDown: PortDownEvent;
  macLearned: MacLearnedEvent;
  macMoved: MacMovedEvent;
  macForgotten: MacForgottenEvent;
  ringBroken: RingBrokenEvent;
  drops: DropsEvent;
}

export type SwitchEventName = keyof SwitchEvents;

/**
 * The switch's events, typed. Listeners are called on the event loop after the change they tell
 * of, never inside the switch's own work: an exception a listener throws is the program's (an
 * uncaught exception, as in any Node callback), and it leaves the switch as it was.
 */
export interface SwitchEventEmitter {
  on<K extends SwitchEventName>(event: K, listener: (e: SwitchEvents[K]) => void): this;
  once<K extends SwitchEventName>(event: K, listener: (e: SwitchEvents[K]) => void): this;
  off<K extends SwitchEventName>(event: K, listener: (e: SwitchEvents[K]) => void): this;
}

/** One event to emit: its name and payload, typed together. */
export type QueuedEvent = { [K in SwitchEventName]: [K, SwitchEvents[K]] }[SwitchEventName];

// ---- the sampler

/** What the sampler looks at: the engine's attached connections with their counters, its MAC table, the vhost-user ports' broken-ring counts. */
export interface SampleInput {
  /** ms, for intervalMs */
  now: number;
  /** the engine's attached connections (Switch.stats().ports): index, name and counters */
  connections: readonly (Pick<TrafficCounts, 'drops' | 'dropped'> & { index: number; name: string })[];
  /** the engine-wide counters (Switch.stats().total) */
  total: Pick<TrafficCounts, 'drops' | 'dropped'>;
  /** the MAC table (Switch.macEntries()) */
  macs: readonly { mac: string; index: number; isStatic: boolean }[];
  /** each vhost-user port's broken-ring count (PortCounters.brokenRings) */
  brokenRings: readonly { port: string; total: number }[];
}

const DROP_KEYS: readonly (keyof DropCounts)[] = ['poolExhausted', 'shareLimit', 'malformed', 'portSecurity', 'holdExpired', 'sameConnection', 'detached', 'tooBig'];

function dropDelta(now: DropCounts, before: DropCounts | undefined): DropReasons {
  const out: DropReasons = {};
  for (const k of DROP_KEYS) {
    const d = now[k] - (before?.[k] ?? 0);
    if (d > 0) out[k] = d;
  }
  return out;
}

/**
 * Compares what the switch holds now with what it held at the last sample and says what changed,
 * as events. The first sample is against an empty switch: every MAC known then is learned.
 */
export class EventSampler {
  /** MAC → the connection it was on, by "index:name" (an index reused by another port is another connection) */
  private macs = new Map<string, { conn: string; index: number; port: string }>();
  private totalDrops: DropCounts | null = null;
  private connDrops = new Map<string, DropCounts>();
  private broken = new Map<string, number>();
  private last: number | null = null;

  /** A port was removed: a port added later under its name starts from 0 broken rings. */
  forgetPort(name: string): void {
    this.broken.delete(name);
  }

  sample(s: SampleInput): QueuedEvent[] {
    const out: QueuedEvent[] = [];
    const nameOf = new Map(s.connections.map((c) => [c.index, c.name]));
    const connKey = (index: number): string => `${index}:${nameOf.get(index) ?? ''}`;

    // MACs: new ones, moved ones, gone ones
    const next = new Map<string, { conn: string; index: number; port: string }>();
    for (const m of s.macs) {
      const now = { conn: connKey(m.index), index: m.index, port: nameOf.get(m.index) ?? `#${m.index}` };
      next.set(m.mac, now);
      const was = this.macs.get(m.mac);
      if (was === undefined) out.push(['macLearned', { mac: m.mac, port: now.port, connection: m.index, static: m.isStatic }]);
      else if (was.conn !== now.conn) {
        // on a connection that is gone, it was forgotten with it, then learned anew
        if (nameOf.get(was.index) === was.port) out.push(['macMoved', { mac: m.mac, from: was.port, to: now.port, connection: m.index }]);
        else {
          out.push(['macForgotten', { mac: m.mac, port: was.port }]);
          out.push(['macLearned', { mac: m.mac, port: now.port, connection: m.index, static: m.isStatic }]);
        }
      }
    }
    for (const [mac, was] of this.macs) if (!next.has(mac)) out.push(['macForgotten', { mac, port: was.port }]);
    this.macs = next;

    // rings marked broken
    for (const b of s.brokenRings) {
      const before = this.broken.get(b.port) ?? 0;
      if (b.total > before) out.push(['ringBroken', { port: b.port, rings: b.total - before, total: b.total }]);
      this.broken.set(b.port, b.total);
    }

    // drops: the engine-wide counters only grow; a connection's start from 0 when it attaches
    const dropped = s.total.dropped - (this.totalDrops === null ? 0 : DROP_KEYS.reduce((n, k) => n + this.totalDrops![k], 0));
    const connNext = new Map<string, DropCounts>();
    const ports: DropsEvent['ports'] = [];
    for (const c of s.connections) {
      const key = `${c.index}:${c.name}`;
      connNext.set(key, { ...c.drops });
      const before = this.connDrops.get(key);
      const d = c.dropped - (before === undefined ? 0 : DROP_KEYS.reduce((n, k) => n + before[k], 0));
      if (d > 0) ports.push({ port: c.name, connection: c.index, dropped: d, reasons: dropDelta(c.drops, before) });
    }
    if (dropped > 0) out.push(['drops', { dropped, reasons: dropDelta(s.total.drops, this.totalDrops ?? undefined), ports, intervalMs: this.last === null ? 0 : s.now - this.last }]);
    this.totalDrops = { ...s.total.drops };
    this.connDrops = connNext;
    this.last = s.now;
    return out;
  }
}
