// `elastic-vhost ctl [--socket PATH] [--json] COMMAND`: the control socket's client.
//
// Output is text tables (as ovs-appctl prints text whether or not stdout is a terminal, so the
// same command reads the same in a pipe or under grep), and the reply's JSON with --json.
// Exit status: 0 done, 1 the switch refused the request (its error on stderr), 2 usage or no
// switch listening.
import { Command } from 'commander';
import * as net from 'node:net';
import * as path from 'node:path';
import { portTraffic, type FifoView, type MacView, type PortView, type VxlanView } from '../ops/switch-view';
import type { CaptureSummary } from '../ops/capture';
import { parseCaptureLimits } from '../ops/capture';
import { CTL_SOCKET_NAME } from '../ops/ops';

/** the control socket `--ctl` creates when given no path, for port sockets in /run/elastic-vhost/ */
export const DEFAULT_CTL_SOCKET = `/run/elastic-vhost/${CTL_SOCKET_NAME}`;

/** Sends one request, resolves with the reply object. */
export function request(socketPath: string, req: object, timeoutMs = 30_000): Promise<{ ok: boolean; result?: unknown; error?: string }> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(socketPath);
    let buf = '';
    const t = setTimeout(() => {
      s.destroy();
      reject(new Error(`no reply from ${socketPath} within ${timeoutMs} ms`));
    }, timeoutMs);
    s.setEncoding('utf8');
    s.on('connect', () => s.write(`${JSON.stringify(req)}\n`));
    s.on('data', (d: string) => {
      buf += d;
      const i = buf.indexOf('\n');
      if (i < 0) return;
      clearTimeout(t);
      s.end();
      try {
        resolve(JSON.parse(buf.slice(0, i)));
      } catch (e) {
        reject(new Error(`bad reply from ${socketPath}: ${(e as Error).message}`));
      }
    });
    s.on('error', (e) => {
      clearTimeout(t);
      reject(new Error(`cannot reach the switch at ${socketPath}: ${e.message} (is it running with --ctl?)`));
    });
    s.on('end', () => {
      if (buf.indexOf('\n') < 0) {
        clearTimeout(t);
        reject(new Error(`${socketPath} closed the connection without a reply`));
      }
    });
  });
}

// ---- text output

function table(head: string[], rows: (string | number)[][]): string {
  const cells = [head, ...rows.map((r) => r.map(String))];
  const w = head.map((_, c) => Math.max(...cells.map((r) => (r[c] ?? '').length)));
  return cells.map((r) => r.map((v, c) => (c === r.length - 1 ? v : v.padEnd(w[c]))).join('  ')).join('\n') + '\n';
}

const ms = (v: number | null): string => (v === null ? '-' : v < 1000 ? `${Math.round(v)} ms` : `${(v / 1000).toFixed(1)} s`);
const nonZero = (c: Record<string, number>): string => Object.entries(c).filter(([, v]) => v !== 0).map(([k, v]) => `${k}=${v}`).join(' ') || '(all 0)';

export function formatPorts(ports: PortView[]): string {
  const rows = ports.map((p) => {
    const t = portTraffic(p.counters);
    const e = p.engine;
    return [
      p.name,
      p.mode,
      p.state,
      p.connection ?? '-',
      t.inFrames,
      t.outFrames,
      e ? e.fastFrames : '-',
      e ? e.storedFrames : '-',
      e ? e.drainedFrames : '-',
      e ? e.dropped : '-',
      p.queue ? p.queue.frames : '-',
      p.capture ? 'on' : '-',
      p.path,
    ];
  });
  let out = table(['PORT', 'MODE', 'STATE', 'CONN', 'IN', 'OUT', 'FAST', 'STORED', 'DRAINED', 'DROPPED', 'QUEUED', 'CAPTURE', 'PATH'], rows);
  for (const p of ports) {
    if (p.vxlan) {
      out += formatVxlan(p.name, p.vxlan, p.counters as unknown as Record<string, number>);
      continue;
    }
    if (p.state !== 'connected' || p.mode === 'tap') continue;
    out += `\n${p.name}: mtu ${p.mtu ?? '-'}, features ${p.features.join(' ') || '-'}\n`;
    out += `${p.name}: protocol features ${p.protocolFeatures.join(' ') || '-'}\n`;
    for (const r of p.rings) {
      const state = r.broken !== null ? `broken (${r.broken})` : !r.started ? 'stopped' : r.enabled ? 'started' : 'started, disabled';
      out += `${p.name}: ring ${r.index} ${r.kind} ${r.layout} size ${r.size} ${state}, last avail ${r.lastAvail}, used ${r.usedIdx}, ${r.frames} frames\n`;
    }
    if (p.queue && p.queue.perQueue.length > 1) out += `${p.name}: waiting per RX queue ${p.queue.perQueue.join(' ')}\n`;
    out += `${p.name}: counters ${nonZero(p.counters as unknown as Record<string, number>)}\n`;
  }
  return out;
}

/** the VXLAN uplink's lines under the ports table: its VTEP, counters, send errors and one line per remote VTEP */
function formatVxlan(name: string, v: VxlanView, c: Record<string, number>): string {
  let out = `\n${name}: VNI ${v.vni}, local VTEP ${v.local}, underlay MTU ${v.underlayMtu} (inner frames up to ${v.maxInner} bytes), source ports ${(v.sourcePorts ?? []).join(' ') || '-'}\n`;
  out += `${name}: counters ${nonZero({ ...c, ...(v.offload as unknown as Record<string, number>) })}\n`;
  out += `${name}: send errors ${nonZero(v.sendErrors)}\n`;
  for (const t of v.vteps) {
    out += `${name}: vtep ${t.vtep} ${t.flood ? 'flood' : 'mac-only'}, ${t.macs} MACs, sent ${t.sentDatagrams} datagrams ${t.sentBytes} bytes, ${t.sendErrors} send errors, received ${t.receivedFrames} frames ${t.receivedBytes} bytes\n`;
  }
  return out;
}

export function formatMacs(macs: MacView[]): string {
  return table(
    ['MAC', 'PORT', 'CONN', 'TYPE', 'AGE', 'VTEP'],
    macs.map((m) => [m.mac, m.port ?? '?', m.connection, m.static ? 'static' : 'learned', m.ageS === null ? '-' : `${m.ageS.toFixed(1)} s`, m.vtep ?? '-']),
  );
}

export function formatFifo(f: FifoView): string {
  const p = f.pool;
  let out = `pool: ${p.blocks} blocks of ${p.blockSize} bytes, ${p.blocksInUse} in use, ${p.blocksFree} free, high water ${p.highWater}\n\n`;
  out += table(
    ['QUEUE', 'CONN', 'FRAMES', 'BLOCKS', 'SHARE', 'OLDEST'],
    [...f.queues.map((q) => [q.port, q.connection, q.perQueue.length > 1 ? `${q.frames} (${q.perQueue.join('/')})` : q.frames, q.blocks, q.shareLimit, ms(q.oldestMs)]), ['(unresolved)', '-', f.unresolved.frames, f.unresolved.blocks, '-', ms(f.unresolved.oldestMs)]],
  );
  return out;
}

export function formatCaptures(c: CaptureSummary[]): string {
  if (c.length === 0) return 'no capture running\n';
  return table(['PORT', 'FRAMES', 'BYTES', 'DROPPED', 'FILE'], c.map((s) => [s.port, s.frames, s.bytes, s.dropped, s.file]));
}

// ---- the command

/** a command line that makes no sense (exit status 2) */
class UsageError extends Error {}

function socketPathOpt(): string {
  return process.env.ELASTIC_VHOST_CTL ?? DEFAULT_CTL_SOCKET;
}

export async function runCtl(argv: string[]): Promise<number> {
  let code = 0;
  const program = new Command()
    .name('elastic-vhost ctl')
    .description('talk to a running elastic-vhost through its control socket (--ctl)')
    .option('-s, --socket <path>', 'the switch\'s control socket (default: $ELASTIC_VHOST_CTL, else ' + DEFAULT_CTL_SOCKET + ')')
    .option('--json', 'print the reply as JSON (for scripts) instead of text tables')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  const send = async (req: object, text: (r: unknown) => string): Promise<void> => {
    const o = program.opts();
    const r = await request(o.socket ?? socketPathOpt(), req);
    if (!r.ok) {
      process.stderr.write(`elastic-vhost ctl: ${r.error}\n`);
      code = 1;
      return;
    }
    process.stdout.write(o.json ? `${JSON.stringify(r.result, null, 2)}\n` : text(r.result));
  };
  program.command('ports').description('ports: state, negotiated features, rings, counters; the VXLAN uplink\'s remote VTEPs').action(() => send({ cmd: 'ports' }, (r) => formatPorts(r as PortView[])));
  program.command('macs').description('the MAC table: learned and static entries, with ages and, behind the VXLAN uplink, their VTEP').action(() => send({ cmd: 'macs' }, (r) => formatMacs(r as MacView[])));
  program.command('fifo').description('elastic FIFO occupancy per connection, with the age of the oldest frame').action(() => send({ cmd: 'fifo' }, (r) => formatFifo(r as FifoView)));
  program
    .command('add-port')
    .description('add a vhost-user port: SPEC is PATH[,mac=MAC][,share=BLOCKS][,name=NAME] as for --socket')
    .argument('<spec>')
    .option('--client', 'client mode: connect to QEMU listening on PATH (as --client)')
    .action((spec: string, opts: { client?: boolean }) => {
      const [p, ...rest] = spec.split(',');
      const req: Record<string, unknown> = { cmd: 'add-port', path: path.resolve(p), client: opts.client === true };
      for (const kv of rest) {
        const [k, v] = kv.split('=', 2);
        if (k === 'mac' || k === 'name') req[k] = v;
        else if (k === 'share') req.share = Number(v);
        else throw new UsageError(`unknown port option "${k}" (mac=, share=, name=)`);
      }
      return send(req, (r) => `added port ${(r as { name: string }).name}\n`);
    });
  program
    .command('remove-port')
    .description('remove a port: its front-end is disconnected and its socket closed')
    .argument('<name>')
    .action((name: string) => send({ cmd: 'remove-port', name }, () => `removed port ${name}\n`));
  program
    .command('capture')
    .description('capture a port, both directions, to a new pcap file in the switch\'s capture directory (--capture-dir; a relative FILE is in it): capture PORT FILE [max-bytes=N] [max-frames=N]; capture --stop PORT; capture (list)')
    .argument('[port]')
    .argument('[file]')
    .argument('[limits...]')
    .option('--stop', 'stop the capture of PORT (the file is complete when this returns)')
    .action((port: string | undefined, file: string | undefined, limits: string[], opts: { stop?: boolean }) => {
      if (opts.stop) {
        if (!port || file) throw new UsageError('capture --stop PORT');
        return send({ cmd: 'capture-stop', port }, (r) => {
          const s = r as CaptureSummary;
          return `capture of ${s.port} stopped: ${s.frames} frames, ${s.bytes} bytes in ${s.file}${s.dropped ? `, ${s.dropped} dropped` : ''}\n`;
        });
      }
      if (!port) return send({ cmd: 'captures' }, (r) => formatCaptures(r as CaptureSummary[]));
      if (!file) throw new UsageError('capture PORT FILE [max-bytes=N] [max-frames=N]');
      const l = parseCaptureLimits(limits, limits.join(','));
      // as given: a relative name is in the switch's capture directory (--capture-dir), not here
      return send({ cmd: 'capture', port, file, ...l }, (r) => `capturing ${(r as CaptureSummary).port} to ${(r as CaptureSummary).file}\n`);
    });
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (e) {
    const ce = e as { code?: string; exitCode?: number; message: string };
    if (ce.code === 'commander.helpDisplayed' || ce.code === 'commander.help' || ce.code === 'commander.version') return 0;
    // commander printed its own parse errors; ours (usage, no switch listening) are printed here
    if (!ce.code?.startsWith('commander.')) process.stderr.write(`elastic-vhost ctl: ${ce.message}\n`);
    return 2;
  }
  return code;
}
