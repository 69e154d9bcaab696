// SIGHUP: the config file read again, and what can change while running applied — ports added
// and removed, share limits, the hold time, the unknown policy, the log level and the counters
// line. Anything else that changed is reported as needing a restart and left as it is.
import { isDeepStrictEqual } from 'node:util';
import { octalString, SETTINGS } from './options';
import type { PortSpec, Settings } from './settings';

/** a port's keys that only a restart (or the port removed and added under a new name) changes */
const PORT_RESTART_KEYS = ['path', 'mode', 'mac', 'queues', 'offload'] as const;

export interface ReloadPlan {
  remove: string[];
  add: PortSpec[];
  /** ports whose own share limit changed: name → the new one (undefined: the default) */
  share: Map<string, number | undefined>;
  /** live settings that changed: key → new value */
  live: Map<string, unknown>;
  /** what changed but needs a restart, e.g. "poolMb 32 → 64", "vm0.mac" */
  refused: string[];
}

export interface ReloadResult {
  added: string[];
  removed: string[];
  /** what changed, e.g. "holdMs 250 → 100", "vm0.share 10 → 20" */
  changed: string[];
  refused: string[];
  /** ports that could not be added or removed, with why */
  failed: string[];
}

const show = (v: unknown): string => (v === undefined ? '(default)' : JSON.stringify(v));

export function planReload(from: Settings, to: Settings): ReloadPlan {
  const plan: ReloadPlan = { remove: [], add: [], share: new Map(), live: new Map(), refused: [] };
  const f = from as unknown as Record<string, unknown>;
  const t = to as unknown as Record<string, unknown>;
  for (const d of SETTINGS) {
    if (isDeepStrictEqual(f[d.key], t[d.key])) continue; // captures is a list
    if (d.live) plan.live.set(d.key, t[d.key]);
    else if (d.kind === 'octal') plan.refused.push(`${d.key} ${octalString(f[d.key] as number)} → ${octalString(t[d.key] as number)}`);
    else plan.refused.push(`${d.key} ${show(f[d.key])} → ${show(t[d.key])}`);
  }
  const old = new Map(from.ports.map((p) => [p.name, p]));
  const next = new Map(to.ports.map((p) => [p.name, p]));
  for (const name of old.keys()) if (!next.has(name)) plan.remove.push(name);
  for (const [name, p] of next) {
    const o = old.get(name);
    if (!o) {
      plan.add.push(p);
      continue;
    }
    const keys = PORT_RESTART_KEYS.filter((k) => (k === 'mode' ? (o.mode ?? 'server') !== (p.mode ?? 'server') : o[k] !== p[k]));
    for (const k of keys) plan.refused.push(`${name}.${k} ${show(o[k])} → ${show(p[k])}`);
    if (o.share !== p.share) plan.share.set(name, p.share);
  }
  return plan;
}

/** What a reload needs of the running switch. */
export interface Reloadable {
  settings: Settings;
  addPort(spec: PortSpec): unknown;
  removePort(name: string): void;
  /** a port's own share limit (undefined: the default), now and from its next attach on */
  setPortShare(name: string, share: number | undefined): void;
  /** a live setting (SETTINGS entries with live: true) */
  setLive(key: string, value: unknown): void;
}

/** Applies plan to r; r.settings becomes what runs now (refused changes left out). */
export function applyReload(r: Reloadable, plan: ReloadPlan): ReloadResult {
  const res: ReloadResult = { added: [], removed: [], changed: [], refused: plan.refused, failed: [] };
  const now = { ...r.settings, ports: [...r.settings.ports] } as Settings;
  const cur = now as unknown as Record<string, unknown>;
  for (const name of plan.remove) {
    try {
      r.removePort(name);
      now.ports = now.ports.filter((p) => p.name !== name);
      res.removed.push(name);
    } catch (e) {
      res.failed.push(`${name} not removed: ${(e as Error).message}`);
    }
  }
  // the default share first: ports without their own follow it
  for (const [key, v] of plan.live) {
    r.setLive(key, v);
    res.changed.push(`${key} ${show(cur[key])} → ${show(v)}`);
    cur[key] = v;
  }
  for (const [name, share] of plan.share) {
    const i = now.ports.findIndex((p) => p.name === name);
    r.setPortShare(name, share);
    res.changed.push(`${name}.share ${show(now.ports[i].share)} → ${show(share)}`);
    now.ports[i] = { ...now.ports[i], share };
  }
  for (const spec of plan.add) {
    try {
      r.addPort(spec);
      now.ports.push(spec);
      res.added.push(spec.name);
    } catch (e) {
      res.failed.push(`${spec.name} not added: ${(e as Error).message}`);
    }
  }
  r.settings = now;
  return res;
}

/** One line for the log: what the reload did. */
export function describeReload(res: ReloadResult): string {
  const parts: string[] = [];
  if (res.added.length) parts.push(`added ${res.added.join(', ')}`);
  if (res.removed.length) parts.push(`removed ${res.removed.join(', ')}`);
  if (res.changed.length) parts.push(`changed ${res.changed.join(', ')}`);
  if (res.failed.length) parts.push(`failed: ${res.failed.join('; ')}`);
  if (res.refused.length) parts.push(`not applied, needs a restart: ${res.refused.join(', ')}`);
  return parts.length ? `reload: ${parts.join('; ')}` : 'reload: no changes';
}
