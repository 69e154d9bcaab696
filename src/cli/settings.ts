// What the switch runs with: the defaults (src/defaults.ts), over them the config file, over that
// what the command line gave. Ports: the config's, then the command line's; a command-line port
// with the name of a config port takes its place.
import * as path from 'node:path';
import type { Defaults } from '../defaults';
import type { ConfigValues } from './config';
import type { VhostUserPortSpec } from '../api/options';
import { defaultOf, SETTINGS } from './options';

/** One vhost-user port (a --socket/--client spec, an entry of the config's `ports`, ctl add-port): the library's spec. */
export type PortSpec = VhostUserPortSpec;

/** A port as the command line gives it: the name may be left to the default. */
export type CliPortSpec = Omit<PortSpec, 'name'> & { name?: string };

/**
 * Everything the switch is started with. Keys are the config file's (see options.ts): every
 * setting with a default (src/defaults.ts; macTableSize is the engine's alone), and these without.
 */
export interface Settings extends Omit<Defaults, 'macTableSize'> {
  ports: PortSpec[];
  tap?: string;
  /** the VXLAN uplink, as --vxlan writes it (parsed when the port is made) */
  vxlan?: string;
  shareLimit?: number;
  socketOwner?: string;
  socketGroup?: string;
  statsFile?: string;
  /** the operator's tools, each as the command line writes it (main.ts's opsOf() parses them) */
  metrics?: string;
  /** --metrics-token-file, --web-token-file */
  metricsTokenFile?: string;
  webTokenFile?: string;
  /** a path; true: next to the first port's socket; false: none */
  ctl?: string | boolean;
  web?: string;
  captures?: string[];
  /** --socket-dir: directories `ctl add-port` may use besides those of the configured ports */
  socketDirs?: string[];
  /** --capture-dir (undefined: the default, next to the control socket) */
  captureDir?: string;
  /** an inherited connected socket (backend program conventions): one session, then the process exits */
  fd?: number;
}

/** What the command line said: its values, and which of them were given (not defaults). */
export interface CommandLine {
  /** by the settings' keys (the config file's) */
  values: Record<string, unknown>;
  given(key: string): boolean;
  ports: CliPortSpec[];
}

export class SettingsError extends Error {}

export function mergeSettings(cli: CommandLine, config: ConfigValues | null): Settings {
  const out: Record<string, unknown> = {};
  for (const d of SETTINGS) {
    let v = defaultOf(d.key);
    const c = config?.[d.key];
    if (c !== undefined) v = d.kind === 'octal' ? parseInt(c as string, 8) : d.kind === 'spec' && typeof c === 'number' ? String(c) : c;
    if (cli.given(d.key)) v = cli.values[d.key];
    if (v !== undefined) out[d.key] = v;
  }
  const ports: CliPortSpec[] = (config?.ports ?? []).map((p) => ({ ...p }));
  for (const p of cli.ports) {
    const same = p.name === undefined ? -1 : ports.findIndex((q) => q.name === p.name);
    if (same >= 0) ports[same] = p;
    else ports.push(p);
  }
  const named: PortSpec[] = ports.map((p, i) => ({ ...p, name: p.name ?? `vu${i}:${path.basename(p.path)}` }));
  for (const k of ['name', 'path'] as const) {
    const seen = new Set<string>();
    for (const p of named) {
      const v = k === 'path' ? path.resolve(p.path) : p.name;
      if (seen.has(v)) throw new SettingsError(`two ports with the ${k} ${k === 'path' ? p.path : v}`);
      seen.add(v);
    }
  }
  out.ports = named;
  if (cli.values.fd !== undefined) out.fd = cli.values.fd;
  return out as unknown as Settings;
}
