// The operator's tools around a running switch: Prometheus metrics (--metrics), the control socket
// (--ctl), packet captures (--capture, ctl capture) and the web view (--web), each over every port:
// the vhost-user ones, the TAP and the VXLAN uplinks. Started after the switch, closed before it.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { RunningSwitch, PortSpec } from '../cli/running-switch';
import type { Log } from '../log';
import { CAPTURE_DIR_NAME, CaptureManager, type CaptureLimits, type CapturePolicy } from './capture';
import { ControlServer } from './control';
import { startMetricsServer, type MetricsServer } from './metrics';
import type { OpsHost, PortRecord } from './switch-view';
import { WebView, type WebAddress } from './web';
import { readTokenFile } from './auth';
import { describeAddress, type ListenAddress } from './listen-address';
import { webSample } from './web-sample';

export interface OpsSettings {
  /** --metrics: where to serve /metrics */
  metrics?: ListenAddress;
  /** --metrics-token-file, --web-token-file: the files of the bearer tokens (read when the tools start) */
  metricsTokenFile?: string;
  webTokenFile?: string;
  /** --ctl: the control socket's path, and its mode */
  ctl?: string;
  ctlMode: number;
  /** --web: where to serve the live web view */
  web?: WebAddress;
  /** --capture: captures started with the switch */
  captures: { port: string; file: string; limits: CaptureLimits }[];
  /** --capture-dir, --capture-max-mb: where captures may write and how much */
  capturePolicy: CapturePolicy;
  /** --socket-dir, absolute: where `ctl add-port` may put sockets besides the configured ports' directories */
  socketDirs: string[];
}

export interface Ops {
  readonly host: OpsHost;
  /** resolves once the metrics server and control socket listen; rejects when one cannot */
  readonly ready: Promise<void>;
  /** captures completed, servers closed (synchronous: it runs at exit) */
  close(): void;
}

/** The control socket `--ctl` makes when given no path: this name next to the first port's socket. */
export const CTL_SOCKET_NAME = 'elastic-vhost.ctl';

export function defaultCtlPath(ports: readonly PortSpec[]): string {
  if (ports.length === 0) throw new Error('--ctl: give a PATH (there is no --socket or --client to put the control socket next to)');
  return path.join(path.dirname(path.resolve(ports[0].path)), CTL_SOCKET_NAME);
}

/**
 * The capture directory without --capture-dir: captures/ in the control socket's directory (a
 * directory of the switch's own: /run/elastic-vhost/captures for the packaged service), else in
 * the first port's socket's directory; null when there is neither (captures then need --capture-dir).
 */
export function defaultCaptureDir(ctl: string | undefined, ports: readonly PortSpec[]): string | null {
  const near = ctl ?? ports[0]?.path;
  return near === undefined ? null : path.join(path.dirname(path.resolve(near)), CAPTURE_DIR_NAME);
}

/** realpath, or null when there is nothing there */
function realDir(d: string): string | null {
  try {
    return fs.realpathSync(d);
  } catch {
    return null;
  }
}

/**
 * Where `ctl add-port` may put a socket (or, in client mode, dial one): directly in a directory the
 * configuration names, the directory of a configured port's socket or a --socket-dir. Anyone with
 * the control socket could otherwise have the switch create sockets anywhere, or connect as root to
 * any Unix socket on the host (a client-mode port speaks vhost-user to whatever listens there). The
 * socket's directory is compared by its real path: a symlinked directory in a socket directory
 * leads elsewhere and is refused. Returns the problem, or null.
 */
export function socketDirProblem(socketPath: string, dirs: readonly string[]): string | null {
  const want = realDir(path.dirname(path.resolve(socketPath)));
  const allowed = [...new Set(dirs.map((d) => path.resolve(d)))];
  if (want !== null && allowed.some((d) => realDir(d) === want)) return null;
  const list = allowed.length > 0 ? allowed.join(', ') : 'none: no --socket or --client port';
  return `${socketPath}: not in a socket directory of the configuration (${list}); --socket-dir DIR allows another`;
}

/**
 * Wraps a running switch with its ops tools. initial: the port specs it was started with (their
 * mode and path are shown by `ctl ports` and the info metric; so are those of ports added later,
 * by ctl or by a reload). The tools close through the switch's onClose() hook: its close() completes
 * the captures and closes the servers before any port closes.
 */
export function withOps<R extends RunningSwitch>(running: R, initial: readonly PortSpec[], s: OpsSettings, log: Log): R & { ops: Ops } {
  const added = new Map<string, PortSpec>();
  const specOf = (name: string): PortSpec | undefined => added.get(name) ?? running.settings.ports.find((p) => p.name === name) ?? initial.find((p) => p.name === name);
  const captures = new CaptureManager(log, s.capturePolicy);
  const host: OpsHost = {
    sw: running.sw,
    captures,
    ports: () => {
      const out: PortRecord[] = running.ports.map((p) => {
        const spec = specOf(p.name);
        return spec ? { name: p.name, mode: spec.mode === 'client' ? 'client' : 'server', path: path.resolve(spec.path), port: p } : { name: p.name, mode: 'fd', path: '', port: p };
      });
      for (const t of running.taps) out.push({ name: t.name, mode: 'tap', path: t.ifname, port: t });
      for (const v of running.vxlans) out.push({ name: v.name, mode: 'vxlan', path: `${v.local.address}:${v.local.port}`, port: v });
      return out;
    },
    addPort: (req) => {
      // the configuration's socket directories as they are now (a SIGHUP reload may add ports)
      const dirs = [...running.settings.ports, ...initial].filter((p) => p.path !== '').map((p) => path.dirname(path.resolve(p.path)));
      const problem = socketDirProblem(req.path, [...dirs, ...s.socketDirs]);
      if (problem !== null) throw new Error(problem);
      // the command line's default name for a port given without one
      const name = req.name ?? `vu${running.ports.length}:${path.basename(req.path)}`;
      const spec: PortSpec = { name, path: req.path, mode: req.client ? 'client' : 'server' };
      if (req.mac !== undefined) spec.mac = req.mac;
      if (req.share !== undefined) spec.share = req.share;
      const p = running.addPort(spec);
      added.set(p.name, spec);
      const mode = spec.mode as PortRecord['mode'];
      log(`${p.name}: port added (${mode}, ${path.resolve(spec.path)})`, { port: p.name, path: path.resolve(spec.path) });
      return { name: p.name, mode, path: path.resolve(spec.path), port: p };
    },
    removePort: (name) => {
      running.removePort(name);
      added.delete(name);
    },
  };

  // the tokens read now: a missing or bad file is an error of the start, before anything listens
  const metricsToken = s.metricsTokenFile === undefined ? undefined : readTokenFile(s.metricsTokenFile, '--metrics-token-file');
  const webToken = s.webTokenFile === undefined ? undefined : readTokenFile(s.webTokenFile, '--web-token-file');
  const all = host.ports();
  try {
    for (const c of s.captures) {
      const r = all.find((p) => p.name === c.port);
      if (!r) throw new Error(`--capture ${c.port}=…: no port named ${c.port} (ports: ${all.map((p) => p.name).join(', ')})`);
      try {
        captures.start(r.port, c.file, c.limits);
      } catch (e) {
        throw new Error(`--capture ${c.port}=${c.file}: ${(e as Error).message}`);
      }
    }
  } catch (e) {
    captures.stopAllSync();
    throw e;
  }

  let metrics: MetricsServer | null = null;
  let ctl: ControlServer | null = null;
  let web: WebView | null = null;
  let closed = false;
  const ready = (async () => {
    const m = s.metrics;
    if (m) metrics = await startMetricsServer(host, m, log, metricsToken).catch((e: Error) => Promise.reject(new Error(`--metrics ${describeAddress(m)}: ${e.message}`)));
    const c = s.ctl;
    if (c) ctl = await ControlServer.listen(c, host, log, s.ctlMode).catch((e: Error) => Promise.reject(new Error(`--ctl ${c}: ${e.message}`)));
    const w = s.web;
    if (w && !closed) {
      const view = new WebView({ address: w, token: webToken, sample: () => webSample(running.sw, running.ports, { taps: running.taps, vxlans: running.vxlans }), log });
      web = view;
      await view.listening.catch((e: Error) => Promise.reject(new Error(`--web: ${e.message}`)));
    }
    if (closed) {
      metrics?.close();
      ctl?.close();
      web?.close();
    }
  })();
  ready.catch(() => {}); // the caller decides; an unobserved rejection must not end the process
  const ops: Ops = {
    host,
    ready,
    close: () => {
      if (closed) return;
      closed = true;
      captures.stopAllSync();
      ctl?.close();
      metrics?.close();
      web?.close();
    },
  };
  // every way out (SIGTERM, the --fd session's end, an error) leaves complete capture files
  process.once('exit', ops.close);
  // closing the switch ends the tools first: captures complete while their ports still exist
  running.onClose(() => {
    ops.close();
    process.off('exit', ops.close);
  });
  return Object.assign(running, { ops });
}
