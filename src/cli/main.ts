#!/usr/bin/env node
// elastic-vhost: a vhost-user virtual switch with an elastic FIFO for QEMU guests.
import * as path from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { MiB } from '../defaults';
import { CONFIG_SCHEMA, ConfigError, loadConfig } from './config';
import { attributeOf, commanderOption, intParser, MOST_QUEUE_PAIRS, SETTINGS } from './options';
import { RunningSwitch, runSwitch } from './running-switch';
import { CliPortSpec, CommandLine, mergeSettings, Settings } from './settings';
import { createLogger } from './logger';
import type { Log } from '../log';
import { defaultCaptureDir, defaultCtlPath, withOps, type Ops, type OpsSettings } from '../ops/ops';
import { parseListenAddress } from '../ops/metrics';
import { parseCaptureSpec } from '../ops/capture';
import { runCtl } from './ctl';
import { parseWebAddress } from '../ops/web';

/** "PATH[,mac=aa:bb:cc:dd:ee:ff][,share=BLOCKS][,name=NAME][,queues=N][,offload=on|off]" */
export function parsePortSpec(s: string): CliPortSpec {
  const [p, ...opts] = s.split(',');
  if (!p) throw new InvalidArgumentError(`empty socket path in "${s}"`);
  const spec: CliPortSpec = { path: p };
  for (const o of opts) {
    const eq = o.indexOf('=');
    const k = eq < 0 ? o : o.slice(0, eq);
    const v = eq < 0 ? '' : o.slice(eq + 1);
    if (k === 'mac') {
      if (!/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/.test(v)) throw new InvalidArgumentError(`bad MAC "${v}" in "${s}"`);
      spec.mac = v.toLowerCase();
    } else if (k === 'share') {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`bad share "${v}" in "${s}"`);
      spec.share = n;
    } else if (k === 'name') {
      if (!v) throw new InvalidArgumentError(`empty name in "${s}"`);
      spec.name = v;
    } else if (k === 'queues') {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1 || n > MOST_QUEUE_PAIRS) throw new InvalidArgumentError(`bad queues "${v}" in "${s}" (1 to ${MOST_QUEUE_PAIRS})`);
      spec.queues = n;
    } else if (k === 'offload') {
      if (v !== 'on' && v !== 'off') throw new InvalidArgumentError(`bad offload "${v}" in "${s}" (on or off)`);
      spec.offload = v === 'on';
    } else {
      throw new InvalidArgumentError(`unknown port option "${k}" in "${s}" (mac=, share=, name=, queues=, offload=)`);
    }
  }
  return spec;
}

function collect<T>(parse: (s: string) => T) {
  return (v: string, prev: T[] = []): T[] => [...prev, parse(v)];
}

export function buildProgram(): Command {
  const program = new Command()
    .name('elastic-vhost')
    .description('vhost-user virtual switch for QEMU guests: frames with no known destination or no free RX buffers wait in an elastic FIFO instead of being dropped')
    .option('--config <file>', 'settings and ports from this YAML or JSON file (options given here override it; SIGHUP reads it again)')
    .option('-s, --socket <spec>', 'vhost-user port in server mode: listen on PATH, QEMU connects (chardev reconnect=1). Repeatable. Spec: PATH[,mac=MAC][,share=BLOCKS][,name=NAME][,queues=N][,offload=on|off]', collect(parsePortSpec), [])
    .option('-c, --client <spec>', 'vhost-user port in client mode: connect to QEMU listening on PATH (chardev server=on), retrying. Repeatable; same spec as --socket', collect(parsePortSpec), []);
  for (const d of SETTINGS) program.addOption(commanderOption(d));
  return program
    .option('--socket-path <path>', 'one vhost-user port in server mode, as QEMU\'s own back-ends take it (vhost-user.rst, "Backend program conventions"); same as --socket PATH')
    .option('--fd <fdnum>', 'one vhost-user port on an already connected socket inherited as this fd (backend program conventions); the process ends when that session ends', intParser({ key: 'fd', kind: 'int', flags: '', help: '', min: 0 }))
    .option('--print-capabilities', 'print the back-end capabilities as JSON ({"type": "net"}) and exit')
    .option('--print-config-schema', 'print the JSON schema of the --config file and exit');
}

export type { PortSpec, RunningSwitch, Settings } from './running-switch';

/** The command line as the settings merge takes it. */
function commandLine(program: Command): CommandLine {
  const o = program.opts();
  const ports: CliPortSpec[] = [
    ...(o.socket as CliPortSpec[]).map((spec) => ({ ...spec, mode: 'server' as const })),
    ...(o.client as CliPortSpec[]).map((spec) => ({ ...spec, mode: 'client' as const })),
  ];
  if (o.socketPath !== undefined) {
    if (o.fd !== undefined) program.error('--socket-path and --fd exclude each other');
    ports.push({ path: o.socketPath, name: 'vhost-user' });
  }
  // settings by their config keys: --capture's attribute is "capture", its key "captures"
  const attr = new Map(SETTINGS.map((d) => [d.key, attributeOf(d)]));
  const values: Record<string, unknown> = { ...o };
  for (const [key, a] of attr) values[key] = o[a];
  return { values, given: (k) => program.getOptionValueSource(attr.get(k) ?? k) === 'cli', ports };
}

/** What the ops tools start with: the settings' values parsed as their options' parsers read them. */
export function opsOf(s: Settings): OpsSettings {
  const ctl = s.ctl === true ? defaultCtlPath(s.ports) : s.ctl === false ? undefined : s.ctl;
  return {
    metrics: s.metrics === undefined ? undefined : parseListenAddress(s.metrics, '--metrics'),
    ctl,
    ctlMode: s.ctlMode,
    web: s.web === undefined ? undefined : parseWebAddress(s.web),
    captures: (s.captures ?? []).map((c) => parseCaptureSpec(c)),
    capturePolicy: {
      dir: s.captureDir !== undefined ? path.resolve(s.captureDir) : defaultCaptureDir(ctl, s.ports),
      maxBytes: s.captureMaxMb * MiB,
    },
    socketDirs: (s.socketDirs ?? []).map((d) => path.resolve(d)),
    ...(s.metricsTokenFile !== undefined ? { metricsTokenFile: s.metricsTokenFile } : {}),
    ...(s.webTokenFile !== undefined ? { webTokenFile: s.webTokenFile } : {}),
  };
}

/** The settings of argv (and its --config file); throws ConfigError or SettingsError, or exits on a bad command line. */
export function settingsOf(argv: string[]): { settings: Settings; reread: (() => Settings) | null; ops: OpsSettings } {
  const program = buildProgram();
  program.parse(argv);
  const cli = commandLine(program);
  const file = program.opts().config as string | undefined;
  const settings = mergeSettings(cli, file === undefined ? null : loadConfig(file));
  if (settings.ports.length === 0 && !settings.tap && !settings.vxlan && settings.fd === undefined) {
    program.error('give at least one --socket, --client, --socket-path, --fd, --tap or --vxlan (or ports in the --config file)');
  }
  const wanted = settings.ports.length + (settings.tap ? 1 : 0) + (settings.vxlan ? 1 : 0) + (settings.fd !== undefined ? 1 : 0);
  if (wanted > settings.maxPorts) program.error(`${wanted} ports given, more than --max-ports ${settings.maxPorts}`);
  return { settings, reread: file === undefined ? null : () => mergeSettings(cli, loadConfig(file)), ops: opsOf(settings) };
}

/**
 * Starts the switch as argv says. Its events go to log when one is given (tests), else to a pino
 * logger on stdout (JSON lines; pretty on a terminal) at the settings' logLevel.
 */
export function start(argv: string[], log?: Log): RunningSwitch & { ops: Ops } {
  const { settings, reread, ops } = settingsOf(argv);
  const logger = log === undefined ? createLogger(settings.logLevel) : null;
  const running = runSwitch(settings, log ?? logger!.log, { reread: reread ?? undefined, setLogLevel: logger?.setLevel });
  try {
    return withOps(running, settings.ports, ops, running.log);
  } catch (e) {
    running.close();
    throw e;
  }
}

/** --print-capabilities (vhost-user.rst, "Backend program conventions"): before any other validation */
export const CAPABILITIES = { type: 'net' };

function main(): void {
  if (process.argv[2] === 'ctl') {
    void runCtl(process.argv.slice(3)).then((code) => process.exit(code));
    return;
  }
  if (process.argv.includes('--print-capabilities')) {
    process.stdout.write(`${JSON.stringify(CAPABILITIES)}\n`);
    process.exit(0);
  }
  if (process.argv.includes('--print-config-schema')) {
    process.stdout.write(`${JSON.stringify(CONFIG_SCHEMA, null, 2)}\n`);
    process.exit(0);
  }
  let running: RunningSwitch & { ops: Ops };
  try {
    running = start(process.argv);
  } catch (e) {
    // a config error: one line per problem, "file:line: key: what"
    if (e instanceof ConfigError) for (const p of e.problems) console.error(p);
    else console.error(`elastic-vhost: ${(e as Error).message}`);
    process.exit(1);
  }
  running.ops.ready.catch((e) => {
    console.error(`elastic-vhost: ${(e as Error).message}`);
    running.close();
    process.exit(1);
  });
  const stop = (sig: string) => {
    running.log(`${sig}: closing every port`);
    running.close();
    process.exit(0);
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => running.reload());
  process.on('SIGUSR1', () => running.log('SIGUSR1: counters', { stats: running.stats() }));
}

if (require.main === module) main();
