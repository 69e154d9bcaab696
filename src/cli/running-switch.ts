// The switch the command runs: the library's (src/api/switch.ts), in three steps —
//
//   buildSwitch(settings)       the switch with the settings' switch options (the engine, worker threads)
//   attachPorts(switch, settings)  the configured vhost-user ports, the --fd one, the TAP and VXLAN uplinks
//   operate(switch, settings)   what the command adds: SIGHUP reload, live settings (the log level),
//                               the stats file and counters line, the end of the --fd session ending the process
//
// The operator's other tools (metrics, control socket, web view, captures: src/ops/ops.ts) are put
// around the result by main.ts and close through its onClose() hook, before the ports.
import * as fs from 'node:fs';
import type { Switch } from '../engine/switch';
import type { VhostUserPort } from '../ports/vhost-user/port';
import type { TapPort } from '../ports/tap-port';
import type { VxlanPort } from '../ports/vxlan-port';
import type { Log } from '../log';
import type { LogLevel } from '../defaults';
import { VirtualSwitch, type SwitchStatsSnapshot } from '../api/switch';
import { SWITCH_KEYS, tapPort, vxlanPort, type SwitchOptions } from '../api/options';
import { ConfigError } from './config';
import { applyReload, describeReload, planReload, ReloadResult } from './reload';
import type { PortSpec, Settings } from './settings';

export type { PortSpec, Settings } from './settings';

/** The stats file's content (--stats-file): the library's counters, with the one TAP and one VXLAN uplink the command has. */
export interface CliStats extends Omit<SwitchStatsSnapshot, 'taps' | 'vxlans'> {
  tap: SwitchStatsSnapshot['taps'][number] | null;
  vxlan: SwitchStatsSnapshot['vxlans'][number] | null;
}

export interface RunningSwitch {
  /** the library's switch */
  core: VirtualSwitch;
  /** its engine */
  sw: Switch;
  /** the vhost-user ports, in the order they were added */
  ports: VhostUserPort[];
  taps: readonly TapPort[];
  vxlans: readonly VxlanPort[];
  stats(): CliStats;
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
  /** hook runs when close() is called, before any port closes (the last added first) */
  onClose(hook: () => void): void;
  close(): void;
}

export interface RunOptions {
  /** the settings as the config file says now, with the command line over it (--config given) */
  reread?: () => Settings;
  /** the logger's level (logLevel reloaded) */
  setLogLevel?: (level: LogLevel) => void;
}

/** The library's options of the settings: the switch's own keys, the log; no sampled events (the command does not use them). */
export function switchOptionsOf(s: Settings, log: Log): SwitchOptions {
  const o: Record<string, unknown> = { log, eventIntervalMs: 0 };
  for (const k of SWITCH_KEYS) if (s[k] !== undefined) o[k] = s[k];
  return o as SwitchOptions;
}

/** Building the switch. */
export function buildSwitch(s: Settings, log: Log): VirtualSwitch {
  return new VirtualSwitch(switchOptionsOf(s, log));
}

/** Attaching the configured ports; returns the --fd port's name (null: none). Throws at the first that cannot be made. */
export function attachPorts(core: VirtualSwitch, s: Settings): string | null {
  for (const spec of s.ports) core.addVhostUserPort(spec);
  let fdPort: string | null = null;
  if (s.fd !== undefined) {
    // an inherited, connected socket: one session; when it ends, so does the process (operate())
    fdPort = `fd${s.fd}`;
    core.addVhostUserPort({ name: fdPort, fd: s.fd });
  }
  if (s.tap) core.addPort(tapPort(s.tap));
  if (s.vxlan) core.addPort(vxlanPort(s.vxlan));
  return fdPort;
}

/** The stats file's form of the counters. */
export function cliStats(st: SwitchStatsSnapshot): CliStats {
  return { time: st.time, engine: st.engine, settings: st.settings, vhostUser: st.vhostUser, tap: st.taps[0] ?? null, vxlan: st.vxlans[0] ?? null, limits: st.limits };
}

export function runSwitch(s: Settings, log: Log, opts: RunOptions = {}): RunningSwitch {
  const core = buildSwitch(s, log);
  let fdPort: string | null;
  try {
    fdPort = attachPorts(core, s);
  } catch (e) {
    void core.close();
    throw e;
  }
  return operate(core, s, fdPort, opts);
}

/** What the command adds around the switch: reload, live settings, the stats file, the --fd port's end. */
export function operate(core: VirtualSwitch, s: Settings, fdPort: string | null, opts: RunOptions = {}): RunningSwitch {
  const log = core.log;
  let closed = false;
  let statsTimer: NodeJS.Timeout | null = null;
  const stats = (): CliStats => cliStats(core.stats());
  const writeStats = () => {
    if (!s.statsFile) return;
    const tmp = `${s.statsFile}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(stats(), null, 2));
    fs.renameSync(tmp, s.statsFile);
  };

  /** the command knows its vhost-user ports by name; the uplinks are not removed or re-shared by it */
  const portNamed = (name: string): VhostUserPort => {
    const port = core.vhostUserPort(name);
    if (!port) throw new Error(`no vhost-user port named "${name}"`);
    return port;
  };

  const setLive = (key: string, value: unknown): void => {
    switch (key) {
      case 'shareLimit':
      case 'holdMs':
      case 'unknown':
        core.set(key, value as never);
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

  const close = () => {
    if (closed) return;
    closed = true;
    if (statsTimer) clearInterval(statsTimer);
    void core.close();
    // the last counters, with what closing the ports dropped
    writeStats();
  };

  const running: RunningSwitch = {
    core,
    sw: core.sw,
    ports: core.vhostUserPorts,
    taps: core.taps,
    vxlans: core.vxlans,
    stats,
    addPort: (spec) => core.addVhostUserPort(spec),
    removePort: (name) => {
      portNamed(name);
      if (name === fdPort) throw new Error(`${name} is the --fd port: the process ends with its session`);
      core.removePort(name);
    },
    settings: s,
    setPortShare: (name, share) => {
      portNamed(name);
      core.setPortShare(name, share);
    },
    setLive,
    reload,
    log,
    onClose: (hook) => core.onClose(hook),
    close,
  };
  if (fdPort !== null) {
    core.on('portDown', (e) => {
      if (e.port !== fdPort || closed) return;
      log(`fd ${s.fd}: session ended${e.reason ? ` (${e.reason})` : ''}: exiting`, { port: fdPort });
      close();
      process.exit(e.reason ? 1 : 0);
    });
  }
  if (s.statsInterval > 0) {
    let last = '';
    statsTimer = setInterval(() => {
      writeStats();
      if (running.settings.logCounters && !running.settings.quiet) {
        const t = core.sw.stats().total as unknown as Record<string, number>;
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
