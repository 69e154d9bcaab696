// What the library is given: the switch's options and its ports, under the config file's names
// (src/cli/options.ts, src/cli/config.ts) with the same defaults (src/defaults.ts) and the same
// checks, so that `createSwitch({ poolMb: 64 })` and `poolMb: 64` in a config file are one
// setting, refused with the same words when wrong. The command line builds its switch from these.
import { DEFAULTS } from '../defaults';
import { ConfigError, portSchemaProblem, PORT_SCHEMA, schemaChecker } from '../cli/config';
import { SETTINGS, schemaOf } from '../cli/options';
import { parseVxlanSpec, type VxlanSpec } from '../ports/vxlan-port';
import type { Log } from '../log';

/**
 * The switch's own settings, each the config file's key of the same name (the command line's
 * long option in camelCase: `poolMb` is `--pool-mb`), with its default. The command line's other
 * settings are the ports (see {@link vhostUserPort}, {@link tapPort}, {@link vxlanPort}) and the
 * operator's tools (stats file, metrics, control socket, web view, captures), which stay the
 * command's.
 */
export interface SwitchOptions {
  /** Size of the local data store (the elastic FIFO) in MiB. Default 32. */
  poolMb?: number;
  /** Local data store block size in bytes: a multiple of 8, at least 128. Default 2048. */
  blockSize?: number;
  /** Most blocks one port's waiting frames may hold (default: half the pool). Live: {@link ElasticSwitch.set}. */
  shareLimit?: number;
  /** How long frames to an unknown MAC are held before `unknown` applies, in ms. Default 250. Live. */
  holdMs?: number;
  /** What happens to held frames past the hold time: flooded or dropped. Default 'flood'. Live. */
  unknown?: 'flood' | 'drop';
  /** Learned MACs unused this long are forgotten, in seconds. Default 300. */
  macAgeS?: number;
  /** Queue pairs offered per vhost-user port (GET_QUEUE_NUM), 1 to 128. Default 8. */
  queues?: number;
  /** Most ports at once (vhost-user, TAP and VXLAN); a front-end beyond is refused, counted. Default 64. */
  maxPorts?: number;
  /** Most memory regions one vhost-user connection may have (GET_MAX_MEM_SLOTS), 1 to 509. Default 32. */
  maxRegions?: number;
  /** Largest Ethernet frame taken from a port; a longer one is dropped, counted as tooBig. Default 65554. */
  maxFrameBytes?: number;
  /** Most descriptors one descriptor chain may have; a longer one marks its ring broken. Default 4096. */
  maxChainDescriptors?: number;
  /** Offer checksum/TSO offloads to guests and the TAP uplinks. Default true. */
  offload?: boolean;
  /** Mode of the socket files of server-mode vhost-user ports, e.g. 0o660. Default 0o600. */
  socketMode?: number;
  /** Give those socket files to this user (name or uid). */
  socketOwner?: string;
  /** Give those socket files to this group (name or gid). */
  socketGroup?: string;
  /** Most guest memory one vhost-user connection may map, in GiB. Default 512. */
  maxGuestMemGb?: number;
  /** Most guest memory all connections of the process may map together, in GiB. Default 4096. */
  maxTotalMemGb?: number;
  /** Adaptive polling of busy TX rings for this many µs before sleeping on their kicks (0: event mode). Default 0. */
  pollUs?: number;
  /** Data-plane threads the queue pairs are spread over (1: the one event loop), 1 to 16. Default 1. */
  workers?: number;
  /**
   * Where the switch's log events go: a message for people and fields for programs (level, port,
   * connection, request…). Only control-path events are logged, never one per frame. Default: none.
   */
  log?: Log;
  /**
   * How often, in ms, the switch looks at its MAC table and counters for the sampled events
   * (`macLearned`, `macMoved`, `macForgotten`, `ringBroken`, `drops`, an uplink's `portDown`):
   * at most one of each per port and reason per period. 0: none of those. Default 1000.
   */
  eventIntervalMs?: number;
}

/** The keys of {@link SwitchOptions} that are config-file settings, in the settings table's order. */
export const SWITCH_KEYS = [
  'poolMb',
  'blockSize',
  'shareLimit',
  'holdMs',
  'unknown',
  'macAgeS',
  'queues',
  'maxPorts',
  'maxRegions',
  'maxFrameBytes',
  'maxChainDescriptors',
  'offload',
  'socketMode',
  'socketOwner',
  'socketGroup',
  'maxGuestMemGb',
  'maxTotalMemGb',
  'pollUs',
  'workers',
] as const satisfies readonly (keyof SwitchOptions)[];

/** The settings {@link ElasticSwitch.set} changes while the switch runs (the config file's live ones). */
export type LiveSetting = 'shareLimit' | 'holdMs' | 'unknown';
export const LIVE_KEYS: readonly LiveSetting[] = ['shareLimit', 'holdMs', 'unknown'];

/** The options a switch runs with: every default filled in. */
export type ResolvedSwitchOptions = Required<Omit<SwitchOptions, 'shareLimit' | 'socketOwner' | 'socketGroup' | 'log'>> &
  Pick<SwitchOptions, 'shareLimit' | 'socketOwner' | 'socketGroup'>;

export const DEFAULT_EVENT_INTERVAL_MS = 1000;

const switchSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    ...Object.fromEntries(
      SWITCH_KEYS.map((key) => {
        const d = SETTINGS.find((x) => x.key === key);
        if (d === undefined) throw new Error(`src/api/options.ts: ${key} is not in the settings table`);
        // the config file writes a mode as an octal string ("0660", YAML reads 0660 as 660); a program has 0o660
        return [key, d.kind === 'octal' ? { type: 'integer', minimum: 0, maximum: 0o777, description: d.help } : schemaOf(d)];
      }),
    ),
    eventIntervalMs: { type: 'integer', minimum: 0, description: 'ms between sampled events (0: none)' },
  },
};
const checkSwitch = schemaChecker(switchSchema);

/** The options with their defaults; throws ConfigError naming every key that is wrong. */
export function resolveSwitchOptions(o: SwitchOptions = {}): ResolvedSwitchOptions {
  const { log, ...values } = o;
  const problems = checkSwitch(values);
  if (log !== undefined && typeof log !== 'function') problems.push('log: must be a function (msg, fields) => void');
  if (problems.length > 0) throw new ConfigError(problems);
  const out: Record<string, unknown> = { eventIntervalMs: o.eventIntervalMs ?? DEFAULT_EVENT_INTERVAL_MS };
  for (const key of SWITCH_KEYS) {
    const v = o[key] ?? (DEFAULTS as unknown as Record<string, unknown>)[key];
    if (v !== undefined) out[key] = v;
  }
  return out as ResolvedSwitchOptions;
}

/** Checks one live setting's value as createSwitch() would; throws ConfigError. */
export function checkLiveSetting(key: LiveSetting, value: unknown): void {
  if (!LIVE_KEYS.includes(key)) throw new ConfigError([`${String(key)}: cannot change while running (live: ${LIVE_KEYS.join(', ')})`]);
  // shareLimit may go back to the default (half the pool): undefined
  if (key === 'shareLimit' && value === undefined) return;
  const problems = checkSwitch({ [key]: value });
  if (problems.length > 0) throw new ConfigError(problems);
}

// ---- ports

/**
 * A vhost-user port on a socket: the config file's `ports` entry, the command line's
 * `--socket`/`--client` spec. Server mode (the default) listens on `path` and QEMU connects
 * (`-chardev socket,path=…,reconnect=1`); client mode connects to QEMU listening there
 * (`server=on`), again after it goes away.
 */
export interface VhostUserPortSpec {
  /** a name without spaces: logs, counters, events, SIGHUP reloads and removePort() know the port by it (the command line's default: vu<N>:<socket file name>) */
  name: string;
  /** socket path */
  path: string;
  /** 'server' (default): listen on path, QEMU connects; 'client': connect to QEMU listening there, retrying */
  mode?: 'server' | 'client';
  /** static MAC (aa:bb:cc:dd:ee:ff): known from the start, the only source MAC allowed (port security) */
  mac?: string;
  /** most local-data-store blocks frames waiting for this port may hold (default: the switch's shareLimit) */
  share?: number;
  /** queue pairs offered to this port's front-end (default: the switch's queues) */
  queues?: number;
  /** offer checksum/TSO offloads to this port's front-end (default: the switch's offload) */
  offload?: boolean;
}

/**
 * A vhost-user port on a socket that is already connected, such as one a parent process passed
 * (vhost-user.rst, "Backend program conventions": `--fd`). One session: when it ends the port
 * stays down.
 */
export interface VhostUserFdPortSpec {
  /** a name without spaces (logs, counters, events and removePort() know the port by it) */
  name: string;
  /** the connected socket, owned by the port from now on (closed when the session ends) */
  fd: number;
  /** static MAC aa:bb:cc:dd:ee:ff: known from the start, the only source MAC allowed */
  mac?: string;
  /** most local-data-store blocks frames waiting for this port may hold (default: shareLimit) */
  share?: number;
  /** queue pairs offered to this port (default: the switch's queues) */
  queues?: number;
  /** offer checksum/TSO offloads to this port (default: the switch's offload) */
  offload?: boolean;
}

/** The host uplink: a TAP device (created if missing). Its address and link state are the host's to set. */
export interface TapPortSpec {
  /** the interface name, at most 15 characters (the port is named `tap:<ifname>`) */
  ifname: string;
  /** static MAC of the host side: the only source MAC taken from it */
  mac?: string;
  /** most local-data-store blocks frames waiting for the host may hold (default: shareLimit) */
  share?: number;
  /** hand the kernel checksum/TSO frames and take its (default: the switch's offload) */
  offload?: boolean;
}

/**
 * A VXLAN uplink (RFC 7348) to other hosts' VTEPs, as `--vxlan` takes it: the port is named
 * `vxlan:<vni>`. The string form is the command line's
 * `LOCAL_IP[:PORT],vni=N,remote=IP[:PORT][,remote=…][,mac=MAC@IP…][,mtu=N][,srcports=N]`.
 */
export interface VxlanPortSpec {
  /** the local VTEP, IPv4[:port] (port 4789 unless given) */
  local: string;
  /** the VXLAN network identifier, 0 to 16777215 */
  vni: number;
  /** remote VTEPs, IPv4[:port]: unknown and broadcast frames go to each of them */
  remotes?: string[];
  /** inner MACs known to be behind a VTEP from the start */
  macs?: { mac: string; vtep: string }[];
  /** the underlay's MTU (an inner frame plus 50 bytes must fit it). Default 1500. */
  mtu?: number;
  /** UDP source ports frames leave from, picked per inner flow, 1 to 64. Default 8. */
  srcPorts?: number;
}

/** A port to add to a switch, made by {@link vhostUserPort}, {@link tapPort} or {@link vxlanPort}. */
export type PortConfig = VhostUserPortConfig | TapPortConfig | VxlanPortConfig;

export interface VhostUserPortConfig {
  readonly kind: 'vhost-user';
  readonly spec: Readonly<VhostUserPortSpec | VhostUserFdPortSpec>;
}
export interface TapPortConfig {
  readonly kind: 'tap';
  readonly spec: Readonly<TapPortSpec>;
}
export interface VxlanPortConfig {
  readonly kind: 'vxlan';
  /** as --vxlan writes it */
  readonly text: string;
  readonly spec: Readonly<VxlanSpec>;
}

const MAC_PATTERN = PORT_SCHEMA.properties.mac;
const SHARE = PORT_SCHEMA.properties.share;
const checkFdPort = schemaChecker({
  type: 'object',
  additionalProperties: false,
  required: ['name', 'fd'],
  properties: {
    name: PORT_SCHEMA.properties.name,
    fd: { type: 'integer', minimum: 0, description: 'a connected socket' },
    mac: MAC_PATTERN,
    share: SHARE,
    queues: PORT_SCHEMA.properties.queues,
    offload: PORT_SCHEMA.properties.offload,
  },
});
const checkTap = schemaChecker({
  type: 'object',
  additionalProperties: false,
  required: ['ifname'],
  properties: {
    // IFNAMSIZ is 16 with the NUL; '/' and spaces are not allowed in interface names
    ifname: { type: 'string', minLength: 1, maxLength: 15, pattern: '^[^/\\s:]+$', description: 'an interface name of at most 15 characters, without "/", ":" or spaces' },
    mac: MAC_PATTERN,
    share: SHARE,
    offload: PORT_SCHEMA.properties.offload,
  },
});
// every part ends up in one comma-separated --vxlan spec, which parseVxlanSpec() checks: a comma
// inside a part would smuggle in another part
const part = { type: 'string', minLength: 1, pattern: '^[^,]+$', description: 'an address without commas' };
const checkVxlan = schemaChecker({
  type: 'object',
  additionalProperties: false,
  required: ['local', 'vni'],
  properties: {
    local: part,
    vni: { type: 'integer', minimum: 0, maximum: 0xffffff },
    remotes: { type: 'array', items: part },
    macs: { type: 'array', items: { type: 'object', additionalProperties: false, required: ['mac', 'vtep'], properties: { mac: MAC_PATTERN, vtep: part } } },
    mtu: { type: 'integer' },
    srcPorts: { type: 'integer' },
  },
});

function refuse(problems: string[]): void {
  if (problems.length > 0) throw new ConfigError(problems);
}

/**
 * A vhost-user port: on a socket (`{ name, path, mode? … }`, as a config file's `ports` entry) or
 * on a connected socket fd (`{ name, fd … }`). Throws ConfigError when the spec is wrong.
 */
export function vhostUserPort(spec: VhostUserPortSpec | VhostUserFdPortSpec): VhostUserPortConfig {
  if (typeof spec === 'object' && spec !== null && 'fd' in spec) refuse(checkFdPort(spec));
  else {
    const problem = portSchemaProblem(spec);
    refuse(problem === null ? [] : [problem]);
  }
  return { kind: 'vhost-user', spec: { ...spec } };
}

/** The host uplink on TAP device `ifname` (a name, or the spec). Throws ConfigError when the spec is wrong. */
export function tapPort(spec: string | TapPortSpec): TapPortConfig {
  const s = typeof spec === 'string' ? { ifname: spec } : spec;
  refuse(checkTap(s));
  return { kind: 'tap', spec: { ...s } };
}

/** The command line's --vxlan text of a spec object (checked to have no commas inside its parts). */
export function vxlanText(s: VxlanPortSpec): string {
  const parts = [s.local, `vni=${s.vni}`];
  for (const r of s.remotes ?? []) parts.push(`remote=${r}`);
  for (const m of s.macs ?? []) parts.push(`mac=${m.mac}@${m.vtep}`);
  if (s.mtu !== undefined) parts.push(`mtu=${s.mtu}`);
  if (s.srcPorts !== undefined) parts.push(`srcports=${s.srcPorts}`);
  return parts.join(',');
}

/**
 * A VXLAN uplink: the spec object, or the command line's --vxlan text. Throws ConfigError when
 * it is wrong (the words of --vxlan's errors).
 */
export function vxlanPort(spec: string | VxlanPortSpec): VxlanPortConfig {
  let text: string;
  if (typeof spec === 'string') text = spec;
  else {
    refuse(checkVxlan(spec));
    text = vxlanText(spec);
  }
  try {
    return { kind: 'vxlan', text, spec: parseVxlanSpec(text, 'vxlan') };
  } catch (e) {
    throw new ConfigError([(e as Error).message]);
  }
}
