// The VXLAN uplink in the operator's tools, end to end: the built CLI runs with --vxlan on 127.0.0.1,
// --metrics, --ctl and --web; a TypeScript vhost-user front-end is its guest; UDP sockets on
// 127.0.0.2 and 127.0.0.3 are the remote VTEPs and one on 127.0.0.4 a stray sender. After a flood,
// a real VXLAN datagram in, a unicast out, bad datagrams and a frame too big for the underlay MTU,
// the Prometheus scrape, `ctl ports`/`ctl macs` (text and --json) and the web view's sample must
// show the uplink with its VTEPs (what went to and came from each), the remote MAC with its VTEP and
// every drop by reason; `ctl capture` of the uplink records the inner frames both ways.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SwitchProcess } from '../../qemu-glue/switch-process';
import { FrontEnd, Packet, sleep, Virtqueue, waitFor } from './frontend';
import { ethFrame, netHdr, packet, seqOf } from './helpers';
import { writeVxlanHeader } from '../../src/ports/vxlan-port';
import type { MacView, PortView } from '../../src/ops/switch-view';
import type { WebSample } from '../../src/ops/web-sample';
import { tcpdumpRead } from '../tcpdump';

const VNI = 42;
const UPLINK = `vxlan:${VNI}`;
const GUEST = Uint8Array.of(0x52, 0x54, 0, 0, 0, 0x01);
const X = Uint8Array.of(0x52, 0x54, 0, 0, 0x0a, 0x01); // behind remote A
const BCAST = Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff);
const str = (m: Uint8Array) => Array.from(m, (b) => b.toString(16).padStart(2, '0')).join(':');

/** a remote VTEP: a UDP socket on its own loopback address */
class Remote {
  readonly sock = dgram.createSocket('udp4');
  readonly got: Buffer[] = [];
  port = 0;
  constructor(readonly address: string) {
    this.sock.on('message', (m) => this.got.push(Buffer.from(m)));
  }
  async bind(): Promise<void> {
    await new Promise<void>((res, rej) => {
      this.sock.once('error', rej);
      this.sock.bind(0, this.address, () => res());
    });
    this.port = this.sock.address().port;
  }
  get name(): string {
    return `${this.address}:${this.port}`;
  }
  /** one VXLAN datagram carrying the Ethernet frame inner, to the switch's VTEP */
  send(to: number, vni: number, inner: Uint8Array): Promise<void> {
    const d = Buffer.alloc(8 + inner.length);
    writeVxlanHeader(d, 0, vni);
    d.set(inner, 8);
    return new Promise((res, rej) => this.sock.send(d, to, '127.0.0.1', (e) => (e ? rej(e) : res())));
  }
}

async function freeUdpPort(): Promise<number> {
  const s = dgram.createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
  const p = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return p;
}

/** Prometheus text → "name{k="v",…}" with the labels sorted → value */
function parseScrape(text: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const r = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(r, `not an exposition line: ${line}`);
    const labels = [...(r[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((l) => `${l[1]}="${l[2]}"`).sort();
    m.set(labels.length ? `${r[1]}{${labels.join(',')}}` : r[1], Number(r[3]));
  }
  return m;
}
const key = (name: string, labels: Record<string, string>) => `${name}{${Object.entries(labels).map(([k, v]) => `${k}="${v}"`).sort().join(',')}}`;

describe('the VXLAN uplink in metrics, ctl and the web view', { timeout: 120_000 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-vxops-'));
  const ctlSock = path.join(dir, 'ctl.sock');
  const a = new Remote('127.0.0.2');
  const b = new Remote('127.0.0.3');
  const stray = new Remote('127.0.0.4');
  let local = 0;
  let sw: SwitchProcess;
  let fe: FrontEnd;
  let rx: Virtqueue;
  let tx: Virtqueue;
  let metricsUrl = '';
  let webUrl = '';
  /** connection numbers: the uplink attaches at the start, the guest when its front-end connects */
  let vxConn = -1;
  let vmConn = -1;

  const ctlJson = async <T>(...args: string[]): Promise<T> => {
    const r = await SwitchProcess.ctl(ctlSock, '--json', ...args);
    assert.equal(r.code, 0, `ctl ${args.join(' ')}: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  };
  const scrape = async (): Promise<Map<string, number>> => {
    const r = await fetch(metricsUrl);
    assert.equal(r.status, 200);
    return parseScrape(await r.text());
  };
  const send = async (frame: Uint8Array): Promise<void> => {
    tx.postTx(packet(netHdr(12), frame));
    const want = tx.availIdx;
    tx.kick();
    await tx.waitUsed(want);
    tx.takeUsed();
  };
  const received: Packet[] = [];
  const receive = async (seq: number): Promise<void> => {
    await waitFor(() => {
      received.push(...rx.receive(fe.hdrLen, fe.mergeable));
      return received.some((p) => seqOf(p.frame) === seq);
    }, 3000, `the guest to receive frame ${seq}`);
  };

  before(async () => {
    await Promise.all([a.bind(), b.bind(), stray.bind()]);
    local = await freeUdpPort();
    sw = new SwitchProcess({
      workDir: dir,
      sockets: ['vm0.sock'],
      extraArgs: ['--ctl', ctlSock, '--metrics', '127.0.0.1:0', '--web', '127.0.0.1:0', '--vxlan', `127.0.0.1:${local},vni=${VNI},remote=${a.name},remote=${b.name}`],
      echo: process.env.ELASTIC_VHOST_ECHO === '1',
    });
    await sw.start();
    metricsUrl = /(http:\/\/\S+\/metrics)/.exec(await sw.waitLog(/^metrics: serving http:/))![1];
    webUrl = /(http:\/\/\S+\/)$/.exec(await sw.waitLog(/^web view on http:/))![1];
    await sw.waitLog(/ctl: listening on/);
    await sw.waitLog(/vxlan:42: uplink attached, VTEP 127\.0\.0\.1/);
    fe = FrontEnd.connect(sw.socketPaths[0], 'fe-vm0');
    ({ rx, tx } = await fe.start({ rxBuffers: [64, 2048] }));

    // a flood to both remotes (the guest's MAC learned), a frame from A (X learned behind A), the
    // guest's reply to X (to A only), a datagram of another VNI, one from a stray sender, and a
    // frame too big for the underlay's 1500 bytes (1464 inner at most)
    await send(ethFrame(100, 1, GUEST, BCAST));
    await waitFor(() => a.got.length === 1 && b.got.length === 1, 3000, 'the flood at both remotes');
    await a.send(local, VNI, ethFrame(200, 2, X, GUEST));
    await receive(2);
    await send(ethFrame(300, 3, GUEST, X));
    await waitFor(() => a.got.length === 2, 3000, 'the unicast at A');
    await a.send(local, VNI + 1, ethFrame(80, 90, X, GUEST));
    await stray.send(local, VNI, ethFrame(80, 91, X, GUEST));
    await send(ethFrame(1465, 4, GUEST, X));
    for (let end = Date.now() + 5000; ; await sleep(20)) {
      const ports = await ctlJson<PortView[]>('ports');
      const p = ports.find((v) => v.name === UPLINK)!;
      const c = p.counters as unknown as Record<string, number>;
      if (c.encapDatagrams === 3 && c.txTooBig === 1 && c.rxWrongVni === 1 && c.rxUnknownVtep === 1) {
        vxConn = p.connection!;
        vmConn = ports.find((v) => v.name === 'vm0')!.connection!;
        break;
      }
      assert.ok(Date.now() < end, `every datagram sent and every drop counted: ${JSON.stringify(c)}`);
    }
    assert.equal(b.got.length, 1, 'B got the flood only');
  });

  after(async () => {
    fe?.close();
    const e = await sw.stop();
    for (const r of [a, b, stray]) r.sock.close();
    assert.equal(e.code, 0, sw.log.slice(-20).join('\n'));
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('metrics: the uplink as a port (up, info, in/out, drops by vxlan_* reason), its datagrams, and per VTEP what went to and came from it', async () => {
    const s = await scrape();
    const port = { port: UPLINK };
    const want: [string, Record<string, string>, number][] = [
      ['elastic_vhost_port_up', port, 1],
      ['elastic_vhost_port_info', { ...port, mode: 'vxlan', path: `127.0.0.1:${local}`, features: '', protocol_features: '' }, 1],
      ['elastic_vhost_port_in_frames_total', port, 1],
      ['elastic_vhost_port_in_bytes_total', port, 200],
      ['elastic_vhost_port_out_frames_total', port, 2],
      ['elastic_vhost_port_out_bytes_total', port, 400],
      ['elastic_vhost_port_dropped_frames_total', { ...port, reason: 'vxlan_too_big' }, 1],
      ['elastic_vhost_port_dropped_frames_total', { ...port, reason: 'vxlan_wrong_vni' }, 1],
      ['elastic_vhost_port_dropped_frames_total', { ...port, reason: 'vxlan_unknown_vtep' }, 1],
      ['elastic_vhost_port_dropped_frames_total', { ...port, reason: 'vxlan_bad_flags' }, 0],
      ['elastic_vhost_port_dropped_frames_total', { ...port, reason: 'vxlan_no_remote' }, 0],
      ['elastic_vhost_vxlan_info', { ...port, vni: '42', local: `127.0.0.1:${local}`, underlay_mtu: '1500' }, 1],
      ['elastic_vhost_vxlan_max_inner_frame_bytes', port, 1464],
      ['elastic_vhost_vxlan_encap_datagrams_total', port, 3],
      ['elastic_vhost_vxlan_encap_bytes_total', port, 100 + 100 + 300],
      ['elastic_vhost_vxlan_decap_frames_total', port, 1],
      ['elastic_vhost_vxlan_decap_bytes_total', port, 200],
      ['elastic_vhost_vxlan_send_slots_busy_total', port, 0],
      ['elastic_vhost_vxlan_vtep_flood', { ...port, vtep: a.name }, 1],
      ['elastic_vhost_vxlan_vtep_flood', { ...port, vtep: b.name }, 1],
      ['elastic_vhost_vxlan_vtep_macs', { ...port, vtep: a.name }, 1],
      ['elastic_vhost_vxlan_vtep_macs', { ...port, vtep: b.name }, 0],
      ['elastic_vhost_vxlan_vtep_sent_datagrams_total', { ...port, vtep: a.name }, 2],
      ['elastic_vhost_vxlan_vtep_sent_datagrams_total', { ...port, vtep: b.name }, 1],
      ['elastic_vhost_vxlan_vtep_sent_bytes_total', { ...port, vtep: a.name }, 400],
      ['elastic_vhost_vxlan_vtep_sent_bytes_total', { ...port, vtep: b.name }, 100],
      ['elastic_vhost_vxlan_vtep_send_errors_total', { ...port, vtep: a.name }, 0],
      ['elastic_vhost_vxlan_vtep_received_frames_total', { ...port, vtep: a.name }, 1],
      ['elastic_vhost_vxlan_vtep_received_frames_total', { ...port, vtep: b.name }, 0],
      ['elastic_vhost_vxlan_vtep_received_bytes_total', { ...port, vtep: a.name }, 200],
      ['elastic_vhost_port_offload_fallback_frames_total', { ...port, kind: 'segmentation' }, 0],
      ['elastic_vhost_port_up', { port: 'vm0' }, 1],
    ];
    for (const [name, labels, v] of want) assert.equal(s.get(key(name, labels)), v, `${key(name, labels)} (have: ${[...s.keys()].filter((k) => k.startsWith(name)).join(' ')})`);
    assert.ok(![...s.keys()].some((k) => k.startsWith('elastic_vhost_vxlan_send_errors_total')), 'no send error, no series');
    assert.ok(![...s.keys()].some((k) => k.startsWith('elastic_vhost_vxlan_') && k.includes('port="vm0"')), 'VXLAN families only for the uplink');
    assert.ok(![...s.keys()].some((k) => k.includes('reason="vxlan_') && k.includes('port="vm0"')), 'vxlan_* reasons only for the uplink');
  });

  it('ctl ports: the uplink in the table, its VTEP, counters and remote VTEPs under it; --json has the same', async () => {
    const r = await SwitchProcess.ctl(ctlSock, 'ports');
    assert.equal(r.code, 0, r.stderr);
    const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    // PORT MODE STATE CONN IN OUT FAST STORED DRAINED DROPPED QUEUED CAPTURE PATH
    assert.match(r.stdout, new RegExp(`^vxlan:42\\s+vxlan\\s+connected\\s+${vxConn}\\s+1\\s+2\\s+\\d+\\s+\\d+\\s+\\d+\\s+\\d+\\s+0\\s+-\\s+127\\.0\\.0\\.1:${local}$`, 'm'), r.stdout);
    assert.match(r.stdout, new RegExp(`^vxlan:42: VNI 42, local VTEP 127\\.0\\.0\\.1:${local}, underlay MTU 1500 \\(inner frames up to 1464 bytes\\), source ports ${local}( \\d+){7}$`, 'm'), r.stdout);
    assert.match(r.stdout, /^vxlan:42: counters .*\btoRemoteFrames=2\b.*\bencapDatagrams=3\b.*\bdecapFrames=1\b.*\btxTooBig=1\b.*\brxWrongVni=1\b.*\brxUnknownVtep=1\b/m, r.stdout);
    assert.match(r.stdout, /^vxlan:42: send errors \(all 0\)$/m);
    assert.match(r.stdout, new RegExp(`^vxlan:42: vtep ${esc(a.name)} flood, 1 MACs, sent 2 datagrams 400 bytes, 0 send errors, received 1 frames 200 bytes$`, 'm'), r.stdout);
    assert.match(r.stdout, new RegExp(`^vxlan:42: vtep ${esc(b.name)} flood, 0 MACs, sent 1 datagrams 100 bytes, 0 send errors, received 0 frames 0 bytes$`, 'm'), r.stdout);

    const ports = await ctlJson<PortView[]>('ports');
    assert.deepEqual(ports.map((p) => [p.name, p.mode, p.state]), [['vm0', 'server', 'connected'], [UPLINK, 'vxlan', 'connected']]);
    const p = ports[1];
    assert.equal(p.path, `127.0.0.1:${local}`);
    assert.equal(ports[0].vxlan, null);
    const v = p.vxlan!;
    assert.deepEqual([v.vni, v.local, v.underlayMtu, v.maxInner, v.sendErrors], [42, `127.0.0.1:${local}`, 1500, 1464, {}]);
    assert.deepEqual(
      v.vteps.map((t) => [t.vtep, t.flood, t.macs, t.sentDatagrams, t.sentBytes, t.sendErrors, t.receivedFrames, t.receivedBytes]),
      [[a.name, true, 1, 2, 400, 0, 1, 200], [b.name, true, 0, 1, 100, 0, 0, 0]],
    );
    const c = p.counters as unknown as Record<string, number>;
    assert.deepEqual([c.toRemoteFrames, c.toRemoteBytes, c.encapDatagrams, c.decapFrames, c.decapBytes, c.txTooBig], [2, 400, 3, 1, 200, 1]);
    assert.equal(p.engine!.rxFrames, 1, 'the engine took one frame from the uplink');
  });

  it('ctl macs: the remote MAC behind the uplink with the VTEP it was learned from; --json has the same', async () => {
    const r = await SwitchProcess.ctl(ctlSock, 'macs');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^MAC\s+PORT\s+CONN\s+TYPE\s+AGE\s+VTEP$/m);
    assert.match(r.stdout, new RegExp(`^${str(X)}\\s+vxlan:42\\s+${vxConn}\\s+learned\\s+\\d+\\.\\d s\\s+127\\.0\\.0\\.2:${a.port}$`, 'm'), r.stdout);
    assert.match(r.stdout, new RegExp(`^${str(GUEST)}\\s+vm0\\s+${vmConn}\\s+learned\\s+\\d+\\.\\d s\\s+-$`, 'm'), r.stdout);
    const macs = await ctlJson<MacView[]>('macs');
    assert.deepEqual(new Set(macs.map((m) => JSON.stringify([m.mac, m.port, m.connection, m.static, m.vtep]))), new Set([
      JSON.stringify([str(GUEST), 'vm0', vmConn, false, null]),
      JSON.stringify([str(X), UPLINK, vxConn, false, a.name]),
    ]));
  });

  it('web view: the uplink as a port of kind vxlan, its VTEPs with their counters, the remote MAC with its VTEP', async () => {
    const r = await fetch(`${webUrl}state.json`);
    assert.equal(r.status, 200);
    const s = (await r.json()) as WebSample;
    assert.deepEqual(s.ports.map((p) => [p.name, p.kind, p.up]), [['vm0', 'vhost-user', true], [UPLINK, 'vxlan', true]]);
    assert.deepEqual(s.vxlan, {
      port: UPLINK,
      vni: 42,
      encap: 3,
      decap: 1,
      tooBig: 1,
      sendErrors: 0,
      vteps: [
        { vtep: a.name, flood: true, macs: 1, sent: 2, sentBytes: 400, errors: 0, recv: 1, recvBytes: 200 },
        { vtep: b.name, flood: true, macs: 0, sent: 1, sentBytes: 100, errors: 0, recv: 0, recvBytes: 0 },
      ],
    });
    assert.deepEqual(s.macs, [[str(GUEST), vmConn, 0], [str(X), vxConn, 0, a.name]]);
    const page = await (await fetch(webUrl)).text();
    assert.match(page, /<table id="vteps">/);
  });

  it('ctl capture of the uplink: the inner frames as sent to a remote and as received from one, in order', async () => {
    // a relative name: in the capture directory, captures/ next to the control socket
    const file = path.join(dir, 'captures', 'vxlan.pcap');
    const start = await SwitchProcess.ctl(ctlSock, 'capture', UPLINK, 'vxlan.pcap');
    assert.equal(start.code, 0, start.stderr);
    assert.equal(start.stdout, `capturing vxlan:42 to ${file}\n`);
    await send(ethFrame(150, 5, GUEST, X));
    await waitFor(() => a.got.length === 3, 3000, 'frame 5 at A');
    await a.send(local, VNI, ethFrame(160, 6, X, GUEST));
    await receive(6);
    const stop = await SwitchProcess.ctl(ctlSock, 'capture', '--stop', UPLINK);
    assert.equal(stop.code, 0, stop.stderr);
    assert.match(stop.stdout, /capture of vxlan:42 stopped: 2 frames/);
    const t = tcpdumpRead(file);
    assert.equal(t.status, 0, t.stderr);
    assert.deepEqual(t.records.map((x) => [x.src, x.dst, x.length, x.payload.readUInt32LE(0)]), [
      [str(GUEST), str(X), 150, 5],
      [str(X), str(GUEST), 160, 6],
    ]);
    assert.deepEqual(t.records[0].payload, Buffer.from(ethFrame(150, 5, GUEST, X).subarray(14)), 'the bytes A got');
  });
});
