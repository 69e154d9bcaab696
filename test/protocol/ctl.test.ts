// `elastic-vhost ctl` end to end: the built CLI runs as a child process with --ctl; TypeScript
// vhost-user front-ends (real sockets, memfd guest RAM, eventfds) are its guests; `ctl` runs as a
// child process too. ports/macs/fifo --json must say what the traffic made true (frames waiting for
// a guest with no RX buffers, MACs learned, features negotiated), add-port makes a socket a
// front-end connects to and passes traffic through, remove-port takes it away while the others go
// on, and bad, huge or unread requests on the control socket never stop the switch.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { SwitchProcess } from '../../qemu-glue/switch-process';
import { FrontEnd, Packet, Virtqueue, waitFor } from './frontend';
import { ethFrame, netHdr, packet, seqOf } from './helpers';
import type { FifoView, MacView, PortView } from '../../src/ops/switch-view';
import { MAX_LINE } from '../../src/ops/control';

const MAC = (n: number) => Uint8Array.of(0x52, 0x54, 0, 0, 0, n);
const macStr = (n: number) => `52:54:00:00:00:${n.toString(16).padStart(2, '0')}`;
const BCAST = Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff);

interface Remote {
  fe: FrontEnd;
  rx: Virtqueue;
  tx: Virtqueue;
}

async function connect(sock: string, rxBuffers: number): Promise<Remote> {
  const fe = FrontEnd.connect(sock, `fe-${path.basename(sock)}`);
  const { rx, tx } = await fe.start({ rxBuffers: [rxBuffers, 2048] });
  return { fe, rx, tx };
}

async function send(g: Remote, frame: Uint8Array): Promise<void> {
  g.tx.postTx(packet(netHdr(12), frame));
  const want = g.tx.availIdx;
  g.tx.kick();
  await g.tx.waitUsed(want);
  g.tx.takeUsed();
}

async function receive(g: Remote, n: number, timeoutMs = 3000): Promise<Packet[]> {
  const got: Packet[] = [];
  await waitFor(() => {
    got.push(...g.rx.receive(g.fe.hdrLen, g.fe.mergeable));
    return got.length >= n;
  }, timeoutMs, `${g.fe.name} to receive ${n} packets (got ${got.length})`);
  return got;
}

const ctl = SwitchProcess.ctl;

async function ctlJson<T>(sock: string, ...args: string[]): Promise<T> {
  const r = await ctl(sock, '--json', ...args);
  assert.equal(r.code, 0, `ctl ${args.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

describe('elastic-vhost ctl against the running CLI', { timeout: 120_000 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-ctl-'));
  const ctlSock = path.join(dir, 'ctl.sock');
  const sw = new SwitchProcess({ workDir: dir, sockets: ['vm0.sock', 'vm1.sock'], extraArgs: ['--ctl', ctlSock], echo: process.env.ELASTIC_VHOST_ECHO === '1' });
  const remotes: Remote[] = [];
  let a: Remote;
  let b: Remote;

  before(async () => {
    await sw.start();
    await sw.waitLog(/ctl: listening on/);
    a = await connect(sw.socketPaths[0], 64);
    b = await connect(sw.socketPaths[1], 0); // no RX buffers: what is sent to it waits
    remotes.push(a, b);
  });

  after(async () => {
    for (const r of remotes) r.fe.close();
    const e = await sw.stop();
    assert.equal(e.code, 0, sw.log.slice(-20).join('\n'));
    assert.ok(!fs.existsSync(ctlSock), 'the control socket is removed at exit');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the control socket is mode 0600; ctl prints text tables when not asked for JSON', async () => {
    assert.equal(fs.statSync(ctlSock).mode & 0o777, 0o600);
    const r = await ctl(ctlSock, 'ports');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^PORT\s+MODE\s+STATE\s+CONN\s+IN\s+OUT\s+FAST\s+STORED\s+DRAINED\s+DROPPED\s+QUEUED\s+CAPTURE\s+PATH$/m);
    assert.match(r.stdout, /^vm0\s+server\s+connected\s+\d/m);
    assert.match(r.stdout, /^vm1: ring 0 rx split size 256 started/m);
  });

  it('ports --json: both connected, features by name, rings started, counters', async () => {
    const ports = await ctlJson<PortView[]>(ctlSock, 'ports');
    assert.deepEqual(ports.map((p) => [p.name, p.mode, p.state, p.path]), [
      ['vm0', 'server', 'connected', sw.socketPaths[0]],
      ['vm1', 'server', 'connected', sw.socketPaths[1]],
    ]);
    for (const p of ports) {
      for (const f of ['F_VERSION_1', 'NET_F_MRG_RXBUF', 'RING_F_EVENT_IDX']) assert.ok(p.features.includes(f), `${p.name}: ${f} in ${p.features}`);
      assert.ok(p.protocolFeatures.includes('REPLY_ACK'), `${p.protocolFeatures}`);
      // a TX ring starts at its first kick: none was sent yet
      assert.deepEqual(p.rings.map((r) => [r.index, r.kind, r.layout, r.size, r.started, r.enabled, r.broken]), [
        [0, 'rx', 'split', 256, true, true, null],
        [1, 'tx', 'split', 256, false, true, null],
      ]);
    }
  });

  it('macs and fifo --json: a MAC learned per port, frames held for the guest with no RX buffers, with their age; delivered in order once it posts buffers', async () => {
    await send(a, ethFrame(100, 1, MAC(1), BCAST)); // A's MAC learned; the flood waits for B
    await send(b, ethFrame(100, 2, MAC(2), MAC(1))); // B's MAC learned, A gets it
    assert.deepEqual((await receive(a, 1)).map((p) => seqOf(p.frame)), [2]);
    for (let s = 10; s < 15; s++) await send(a, ethFrame(300, s, MAC(1), MAC(2)));
    const macs = await ctlJson<MacView[]>(ctlSock, 'macs');
    assert.deepEqual(macs.map((m) => [m.mac, m.port, m.static]), [
      [macStr(1), 'vm0', false],
      [macStr(2), 'vm1', false],
    ]);
    for (const m of macs) assert.ok(m.ageS !== null && m.ageS >= 0 && m.ageS < 30, `${m.mac} age ${m.ageS}`);
    await new Promise((r) => setTimeout(r, 300));
    const fifo = await ctlJson<FifoView>(ctlSock, 'fifo');
    const qb = fifo.queues.find((q) => q.port === 'vm1')!;
    const qa = fifo.queues.find((q) => q.port === 'vm0')!;
    assert.equal(qb.frames, 6, JSON.stringify(fifo));
    assert.equal(qb.blocks, 6);
    assert.ok(qb.oldestMs !== null && qb.oldestMs >= 200, `oldest frame waited ${qb.oldestMs} ms`);
    assert.equal(qa.frames, 0);
    assert.equal(qa.oldestMs, null);
    assert.equal(fifo.pool.blocksInUse, 6);
    const ports = await ctlJson<PortView[]>(ctlSock, 'ports');
    const pa = ports.find((p) => p.name === 'vm0')!;
    const pb = ports.find((p) => p.name === 'vm1')!;
    assert.equal((pa.counters as { txFrames: number }).txFrames, 6);
    assert.equal(pb.engine!.storedFrames, 6);
    assert.equal(pb.queue!.frames, 6);
    assert.ok(pb.engine!.fastFrames === 0 && pa.engine!.fastFrames === 1, `fast: vm0 ${pa.engine!.fastFrames}, vm1 ${pb.engine!.fastFrames}`);
    // B posts buffers: the monitor delivers the six, in order
    b.rx.postRx(16, 2048);
    b.rx.kick();
    assert.deepEqual((await receive(b, 6)).map((p) => seqOf(p.frame)), [1, 10, 11, 12, 13, 14]);
    const after = await ctlJson<FifoView>(ctlSock, 'fifo');
    assert.equal(after.queues.find((q) => q.port === 'vm1')!.frames, 0);
    assert.equal(after.pool.blocksInUse, 0);
    assert.ok(after.pool.highWater >= 6);
    const pb2 = (await ctlJson<PortView[]>(ctlSock, 'ports')).find((p) => p.name === 'vm1')!;
    assert.equal(pb2.engine!.drainedFrames, 6);
    assert.equal((pb2.counters as { rxFrames: number }).rxFrames, 6);
  });

  it('add-port: a new socket (mode 0600) a front-end connects to and passes traffic through; remove-port: the socket is gone, the others go on', async () => {
    const sock2 = path.join(dir, 'vm2.sock');
    const r = await ctl(ctlSock, 'add-port', `${sock2},name=vm2,mac=${macStr(3)}`);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /added port vm2/);
    assert.ok(fs.statSync(sock2).isSocket());
    assert.equal(fs.statSync(sock2).mode & 0o777, 0o600);
    const c = await connect(sock2, 16);
    remotes.push(c);
    let ports = await ctlJson<PortView[]>(ctlSock, 'ports');
    const p2 = ports.find((p) => p.name === 'vm2')!;
    assert.deepEqual([p2.mode, p2.state, p2.path, p2.staticMac], ['server', 'connected', sock2, macStr(3)]);
    await send(a, ethFrame(120, 20, MAC(1), MAC(3)));
    assert.deepEqual((await receive(c, 1)).map((p) => seqOf(p.frame)), [20]);
    await send(c, ethFrame(120, 21, MAC(3), MAC(2)));
    assert.deepEqual((await receive(b, 1)).map((p) => seqOf(p.frame)), [21]);

    const dup = await ctl(ctlSock, 'add-port', `${sock2},name=vm3`);
    assert.equal(dup.code, 1, 'a second port on the same socket path is refused');
    assert.match(dup.stderr, /another port's socket/);

    const rm = await ctl(ctlSock, 'remove-port', 'vm2');
    assert.equal(rm.code, 0, rm.stderr);
    assert.ok(!fs.existsSync(sock2), 'vm2.sock is gone');
    await waitFor(() => c.fe.closed, 3000, 'vm2 front-end to be disconnected');
    ports = await ctlJson<PortView[]>(ctlSock, 'ports');
    assert.deepEqual(ports.map((p) => p.name), ['vm0', 'vm1']);
    assert.ok(!(await ctlJson<MacView[]>(ctlSock, 'macs')).some((m) => m.mac === macStr(3)), 'its static MAC is forgotten');
    await send(a, ethFrame(120, 22, MAC(1), MAC(2)));
    assert.deepEqual((await receive(b, 1)).map((p) => seqOf(p.frame)), [22]);
    await send(b, ethFrame(120, 23, MAC(2), MAC(1)));
    assert.deepEqual((await receive(a, 1)).map((p) => seqOf(p.frame)), [23]);
    const gone = await ctl(ctlSock, 'remove-port', 'vm2');
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /vm2/);
  });

  it('bad requests get an error reply; a huge line or a client that never reads is cut off; the switch keeps answering and switching', async () => {
    const raw = (data: string, opts: { read?: boolean } = {}): Promise<{ replies: string[]; closed: boolean }> =>
      new Promise((resolve) => {
        const s = net.createConnection(ctlSock);
        let buf = '';
        let closed = false;
        if (opts.read === false) s.pause();
        s.setEncoding('utf8');
        s.on('data', (d: string) => (buf += d));
        s.on('error', () => {});
        s.on('close', () => {
          closed = true;
          resolve({ replies: buf.split('\n').filter(Boolean), closed });
        });
        s.on('connect', () => {
          s.write(data);
          setTimeout(() => {
            if (!closed) {
              s.destroy();
              resolve({ replies: buf.split('\n').filter(Boolean), closed: false });
            }
          }, opts.read === false ? 2000 : 500);
        });
      });
    const bad = await raw('{"cmd": \n[1,2]\n{"cmd":"nope","id":7}\n{"cmd":"capture","port":"vm0"}\n{"cmd":"ports","id":8}\n');
    assert.equal(bad.closed, false, 'bad requests do not close the connection');
    const rs = bad.replies.map((l) => JSON.parse(l));
    assert.equal(rs.length, 5);
    assert.match(rs[0].error, /bad request: not JSON/);
    assert.match(rs[1].error, /bad request: a request is a JSON object/);
    assert.deepEqual([rs[2].id, rs[2].ok], [7, false]);
    assert.match(rs[2].error, /unknown command "nope"/);
    assert.match(rs[3].error, /"file" must be a non-empty string/);
    assert.deepEqual([rs[4].id, rs[4].ok, rs[4].result.length], [8, true, 2]);

    const huge = await raw(`{"cmd":"ports","pad":"${'x'.repeat(MAX_LINE + 10)}"}\n`);
    assert.equal(huge.closed, true, 'a line over the limit closes the connection');
    assert.match(JSON.parse(huge.replies[0]).error, /longer than 65536/);
    const endless = await raw('x'.repeat(3 * MAX_LINE));
    assert.equal(endless.closed, true, 'a line that never ends is cut off at the limit');

    // requests pipelined by the thousand: answered, in order, the socket read only as replies go out
    const many = await raw('{"cmd":"fifo"}\n'.repeat(3000));
    assert.equal(many.replies.length, 3000);
    assert.ok(many.replies.every((l) => JSON.parse(l).ok === true));
    // a client that keeps asking and never reads its replies: cut off once they pile up
    for (const batch of [50_000, 20]) {
      const cut = await new Promise<boolean>((resolve) => {
        const s = net.createConnection(ctlSock);
        s.pause();
        s.on('error', () => {});
        const t = setInterval(() => s.write('{"cmd":"ports"}\n'.repeat(batch)), 5);
        const stop = setTimeout(() => {
          clearInterval(t);
          s.destroy();
          resolve(false);
        }, 20_000);
        s.on('close', () => {
          clearInterval(t);
          clearTimeout(stop);
          resolve(true);
        });
      });
      assert.equal(cut, true, `the non-reading client (${batch} requests per write) was disconnected`);
    }
    const cutOff = () => sw.log.filter((l) => /ctl: error: a client does not read its replies \(\d+ bytes unread\): disconnected/.test(l)).length;
    await waitFor(() => cutOff() === 2, 5000, `two "does not read its replies" log lines (got ${cutOff()})`);
    await sw.waitLog(/ctl: error: bad request: not JSON/);
    const ports = await ctlJson<PortView[]>(ctlSock, 'ports');
    assert.deepEqual(ports.map((p) => p.state), ['connected', 'connected']);
    await send(a, ethFrame(120, 30, MAC(1), MAC(2)));
    assert.deepEqual((await receive(b, 1)).map((p) => seqOf(p.frame)), [30]);
  });

  it('add-port only in a socket directory of the configuration: elsewhere, through a symlinked directory or in client mode elsewhere, refused with the reason and nothing made', async () => {
    const elsewhere = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-ctl-elsewhere-'));
    try {
      fs.mkdirSync(path.join(dir, 'sub'));
      fs.symlinkSync(elsewhere, path.join(dir, 'linked'));
      for (const [spec, client] of [
        [path.join(elsewhere, 'vm5.sock'), false],
        [path.join(elsewhere, 'vm6.sock'), true],
        [path.join(dir, 'linked', 'vm7.sock'), false],
        [path.join(dir, 'sub', 'vm8.sock'), false],
        ['/var/run/docker.sock', true],
      ] as const) {
        const r = await ctl(ctlSock, 'add-port', `${spec},name=x${path.basename(spec)}`, ...(client ? ['--client'] : []));
        assert.equal(r.code, 1, `${spec}: ${r.stdout}`);
        assert.match(r.stderr, new RegExp(`${spec.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: not in a socket directory of the configuration \\(${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\); --socket-dir DIR allows another`), spec);
      }
      assert.deepEqual(fs.readdirSync(elsewhere), [], 'no socket made there');
      assert.deepEqual(fs.readdirSync(path.join(dir, 'sub')), []);
      const ports = await ctlJson<PortView[]>(ctlSock, 'ports');
      assert.deepEqual(ports.map((p) => p.name), ['vm0', 'vm1'], 'no port added');
      await sw.waitLog(/ctl: error: add-port: .*vm5\.sock: not in a socket directory of the configuration/);
    } finally {
      fs.rmSync(path.join(dir, 'linked'), { force: true });
      fs.rmSync(path.join(dir, 'sub'), { recursive: true, force: true });
      fs.rmSync(elsewhere, { recursive: true, force: true });
    }
  });

  it('ctl capture: a relative name is a new file in captures/ next to the control socket; a name outside it, or an existing file, is refused with the reason', async () => {
    const capDir = path.join(dir, 'captures');
    const ok = await ctl(ctlSock, 'capture', 'vm0', 'run1.pcap', 'max-frames=10');
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(ok.stdout, `capturing vm0 to ${path.join(capDir, 'run1.pcap')}\n`);
    assert.equal(fs.statSync(capDir).mode & 0o777, 0o700);
    const list = await ctlJson<{ file: string; maxBytes: number }[]>(ctlSock, 'capture');
    assert.deepEqual(list.map((c) => [c.file, c.maxBytes]), [[path.join(capDir, 'run1.pcap'), 256 * 1024 * 1024]], 'capped at --capture-max-mb by default');
    assert.equal((await ctl(ctlSock, 'capture', '--stop', 'vm0')).code, 0);
    for (const [file, why] of [
      ['/etc/elastic-vhost-test.pcap', /outside the capture directory/],
      [path.join(dir, 'beside.pcap'), /outside the capture directory/],
      ['../beside.pcap', /outside the capture directory/],
      ['run1.pcap', /run1\.pcap exists: a capture never overwrites a file/],
    ] as const) {
      const r = await ctl(ctlSock, 'capture', 'vm0', file);
      assert.equal(r.code, 1, `${file}: ${r.stdout}`);
      assert.match(r.stderr, why, file);
    }
    const over = await ctl(ctlSock, 'capture', 'vm0', 'big.pcap', `max-bytes=${256 * 1024 * 1024 + 1}`);
    assert.equal(over.code, 1);
    assert.match(over.stderr, /is more than the switch allows \(--capture-max-mb/);
    assert.equal(fs.existsSync('/etc/elastic-vhost-test.pcap'), false);
    assert.equal(fs.existsSync(path.join(dir, 'beside.pcap')), false);
    assert.deepEqual(fs.readdirSync(capDir), ['run1.pcap']);
    await sw.waitLog(/ctl: error: capture: capture file \/etc\/elastic-vhost-test\.pcap: outside the capture directory/);
  });

  it('ctl without a switch listening: exit status 2 and the reason', async () => {
    const r = await ctl(path.join(dir, 'nobody.sock'), 'ports');
    assert.equal(r.code, 2);
    assert.match(r.stderr, /cannot reach the switch at .*nobody\.sock/);
  });
});
