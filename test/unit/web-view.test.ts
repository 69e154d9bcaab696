/**
 * The web view's server (src/ops/web.ts) over real HTTP sockets, and its sample of a real Switch
 * (src/ops/web-sample.ts): the paths it serves and refuses, the client limit, samples pushed only
 * while someone watches, and a client that stops reading is skipped and then dropped while the
 * others go on — with the bytes left unsent to it bounded; the VXLAN uplink's VTEPs and remote
 * MACs in the sample, from a real datagram of a remote VTEP on loopback.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as vm from 'node:vm';
import { parseWebAddress, SLOW_CLIENT_BYTES, WebView, type WebViewOptions } from '../../src/ops/web';
import { MAX_MACS, webSample } from '../../src/ops/web-sample';
import { Switch } from '../../src/engine/switch';
import { parseVxlanSpec, VxlanPort, writeVxlanHeader } from '../../src/ports/vxlan-port';
import { BCAST, FakeClock, TestPort, frame, input, mac } from './engine-helpers';

function get(port: number, p: string, method = 'GET', host?: string): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: p, method, ...(host ? { headers: { Host: host } } : {}) }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** An /events reader: the samples it got, parsed. */
function subscribe(port: number): Promise<{ samples: unknown[]; close(): void; status: number }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/events' }, (res) => {
      const samples: unknown[] = [];
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        buf += d;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const ev = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = ev.split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('\n');
          if (data) samples.push(JSON.parse(data));
        }
      });
      res.on('error', () => {});
      resolve({ samples, close: () => req.destroy(), status: res.statusCode ?? 0 });
    });
    req.on('error', reject);
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

async function startView(o: Partial<WebViewOptions> & Pick<WebViewOptions, 'sample'>): Promise<{ view: WebView; port: number; logs: string[] }> {
  const logs: string[] = [];
  const view = new WebView({ address: { host: '127.0.0.1', port: 0 }, log: (m) => logs.push(m), ...o });
  const a = (await view.listening) as AddressInfo;
  return { view, port: a.port, logs };
}

// ---- the page's plots: its own script, run in a context with just enough of a DOM

interface FakeEl {
  tag: string;
  attrs: Record<string, string>;
  children: FakeEl[];
  textContent: string;
  dataset: Record<string, string>;
  setAttribute(k: string, v: string): void;
  replaceChildren(...c: FakeEl[]): void;
  append(...c: FakeEl[]): void;
}

function fakeEl(tag: string): FakeEl {
  const e: FakeEl = {
    tag,
    attrs: {},
    children: [],
    textContent: '',
    dataset: {},
    setAttribute: (k, v) => (e.attrs[k] = String(v)),
    replaceChildren: (...c) => (e.children = c),
    append: (...c) => e.children.push(...c),
  };
  return e;
}

/** The page's script (src/ops/web/index.html) loaded into a context of its own: its functions callable. */
function pageScript(): vm.Context {
  const html = fs.readFileSync(path.join(__dirname, '..', '..', '..', 'src', 'ops', 'web', 'index.html'), 'utf8');
  const script = /<script>([\s\S]*)<\/script>/.exec(html)![1];
  const document = { getElementById: () => fakeEl('div'), createElementNS: (_ns: string, tag: string) => fakeEl(tag), createElement: (tag: string) => fakeEl(tag) };
  const ctx = vm.createContext({ document, EventSource: class { constructor(readonly url: string) {} }, console });
  vm.runInContext(script, ctx);
  return ctx;
}

/** The y-axis labels plot() draws for one line whose largest value is max, from the bottom up. */
function yLabels(ctx: vm.Context, max: number, kind: 'held' | 'rate'): string[] {
  const svg = fakeEl('svg');
  const now = 1_000_000;
  const line = { name: 'vm0', color: '#000', pts: [[now - 2000, 0], [now - 1000, max], [now, max / 2]] };
  vm.runInContext('plot', ctx)(svg, [line], now, kind === 'held' ? 'frames held' : 'frames/s', kind === 'held');
  // the y labels are the texts right-aligned against the axis; SVG y grows downwards
  return svg.children
    .filter((c) => c.tag === 'text' && c.attrs['text-anchor'] === 'end')
    .sort((a, b) => Number(b.attrs.y) - Number(a.attrs.y))
    .map((c) => c.textContent);
}

describe('web view plots: y-axis ticks', () => {
  const ctx = pageScript();
  const value = (label: string): number => {
    const m = /^([\d.,]+)([KMB]?)$/.exec(label);
    assert.ok(m, `label "${label}"`);
    return Number(m[1].replace(/,/g, '')) * { '': 1, K: 1e3, M: 1e6, B: 1e9 }[m[2] as '' | 'K' | 'M' | 'B'];
  };

  it('an idle switch: distinct labels, 0 and 1 for frames, 0 0.5 1 for rates (it was 0 0 1 1 1)', () => {
    assert.deepEqual(yLabels(ctx, 0, 'held'), ['0', '1']);
    assert.deepEqual(yLabels(ctx, 0, 'rate'), ['0', '0.5', '1']);
  });

  it('steps of 1, 2 or 5 × 10^k from 0 to the first tick at or above the largest value, each label distinct', () => {
    const cases: [number, 'held' | 'rate', string[]][] = [
      [1, 'held', ['0', '1']],
      [3, 'held', ['0', '1', '2', '3']],
      [7, 'held', ['0', '2', '4', '6', '8']],
      [10, 'held', ['0', '5', '10']],
      [11, 'held', ['0', '5', '10', '15']],
      [3000, 'held', ['0', '1,000', '2,000', '3,000']],
      [3001, 'held', ['0', '1,000', '2,000', '3,000', '4,000']],
      [0.3, 'rate', ['0', '0.1', '0.2', '0.3']],
      [0.07, 'rate', ['0', '0.02', '0.04', '0.06', '0.08']],
      [2.5, 'rate', ['0', '1', '2', '3']],
      [12_345, 'rate', ['0', '5K', '10K', '15K']],
      [2_600_000, 'rate', ['0', '1M', '2M', '3M']],
      [1_400_000, 'rate', ['0', '0.5M', '1M', '1.5M']],
    ];
    for (const [max, kind, want] of cases) assert.deepEqual(yLabels(ctx, max, kind), want, `largest value ${max} (${kind})`);
    // and any value: 3 to 5 labels, distinct, evenly spaced from 0, the top at or above it
    for (let i = 0; i < 2000; i++) {
      const max = i < 1000 ? i : Math.exp(Math.random() * 40 - 10);
      for (const kind of ['held', 'rate'] as const) {
        if (kind === 'held' && !Number.isInteger(max)) continue;
        const labels = yLabels(ctx, max, kind);
        const v = labels.map(value);
        assert.ok(labels.length >= 2 && labels.length <= 5, `${max}: ${labels}`);
        assert.equal(new Set(labels).size, labels.length, `${max}: distinct ${labels}`);
        assert.equal(v[0], 0);
        assert.ok(v[v.length - 1] >= max * (1 - 1e-9), `${max}: top ${labels.at(-1)}`);
        const step = v[1] - v[0];
        assert.ok(v.every((x, k) => Math.abs(x - k * step) <= step * 1e-6), `${max}: evenly spaced ${labels}`);
        const mant = step / 10 ** Math.floor(Math.log10(step) + 1e-9);
        assert.ok([1, 2, 5].some((m) => Math.abs(mant - m) < 1e-6), `${max}: step ${step} is 1, 2 or 5 × 10^k`);
        if (kind === 'held') assert.ok(Number.isInteger(step), `${max}: whole frames`);
      }
    }
  });
});

describe('web view: [ADDR:]PORT', () => {
  it('is loopback unless an address is given; IPv6 in brackets; anything else refused', () => {
    assert.deepEqual(parseWebAddress('8080'), { host: '127.0.0.1', port: 8080 });
    assert.deepEqual(parseWebAddress('0.0.0.0:9000'), { host: '0.0.0.0', port: 9000 });
    assert.deepEqual(parseWebAddress('[::1]:8080'), { host: '::1', port: 8080 });
    assert.deepEqual(parseWebAddress('localhost:0'), { host: 'localhost', port: 0 });
    for (const bad of ['', ':8080', '70000', 'host:', '::1:8080', '1.2.3', 'a b:80', '8080x']) {
      assert.throws(() => parseWebAddress(bad), /is not \[ADDR:\]PORT/, bad);
    }
  });
});

/** One request over TCP or a Unix socket, with headers. */
function request(o: { port?: number; socketPath?: string; path: string; headers?: Record<string, string> }): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const where = o.socketPath !== undefined ? { socketPath: o.socketPath } : { host: '127.0.0.1', port: o.port };
    const req = http.request({ ...where, path: o.path, headers: o.headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      // an event stream stays open: its status and headers are what is looked at
      if (String(res.headers['content-type']).startsWith('text/event-stream')) {
        req.destroy();
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
        return;
      }
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('web view: unix:PATH[,mode=OCTAL]', () => {
  it('a Unix socket, mode 0600 unless given; bad forms refused', () => {
    assert.deepEqual(parseWebAddress('unix:/run/elastic-vhost/web.sock'), { path: '/run/elastic-vhost/web.sock', mode: 0o600 });
    assert.deepEqual(parseWebAddress('unix:/run/ev/web.sock,mode=0660'), { path: '/run/ev/web.sock', mode: 0o660 });
    assert.deepEqual(parseWebAddress('unix:web.sock'), { path: path.resolve('web.sock'), mode: 0o600 });
    for (const bad of ['unix:', 'unix:,mode=0600', 'unix:/x.sock,mode=999', 'unix:/x.sock,mode=0660,x=1', 'unix:/x.sock,owner=root']) {
      assert.throws(() => parseWebAddress(bad), /unix:PATH\[,mode=OCTAL\]/, bad);
    }
  });
});

describe('web view behind a Unix socket and a bearer token', () => {
  const TOKEN = 'k3y-of-the-operator-0123456789';
  const dirs: string[] = [];
  const views: WebView[] = [];
  after(() => {
    for (const v of views) v.close();
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });

  it('on a Unix socket: its mode, every path served whatever the Host (no DNS rebinding through a Unix socket), the file removed at close', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-webunix-'));
    dirs.push(dir);
    const sock = path.join(dir, 'web.sock');
    const logs: string[] = [];
    const view = new WebView({ address: { path: sock, mode: 0o660 }, sample: () => ({ n: 1 }), log: (m) => logs.push(m) });
    views.push(view);
    await view.listening;
    assert.equal(fs.statSync(sock).mode & 0o7777, 0o660);
    assert.ok(logs.includes(`web view on unix:${sock}`), logs.join('\n'));
    const page = await request({ socketPath: sock, path: '/', headers: { Host: 'proxy.example' } });
    assert.equal(page.status, 200);
    assert.match(page.body, /new EventSource\('events'\)/);
    assert.equal(JSON.parse((await request({ socketPath: sock, path: '/state.json' })).body).n, 1);
    view.close();
    assert.equal(fs.existsSync(sock), false, 'the socket file is removed');
  });

  it('with a token: 401 and WWW-Authenticate without it or with another; every path served with it', async () => {
    const logs: string[] = [];
    const view = new WebView({ address: { host: '127.0.0.1', port: 0 }, token: TOKEN, sample: () => ({ n: 2 }), log: (m) => logs.push(m) });
    views.push(view);
    const { port } = (await view.listening) as AddressInfo;
    for (const p of ['/', '/index.html', '/state.json', '/events', '/nope']) {
      for (const headers of <Record<string, string>[]>[{}, { Authorization: `Bearer ${TOKEN}x` }, { Authorization: `Basic ${Buffer.from(`u:${TOKEN}`).toString('base64')}` }, { Authorization: TOKEN }]) {
        const r = await request({ port, path: p, headers });
        assert.equal(r.status, 401, `${p} ${JSON.stringify(headers)}`);
        assert.equal(r.headers['www-authenticate'], 'Bearer realm="elastic-vhost"');
        assert.doesNotMatch(r.body, /"n"/);
      }
    }
    const auth = { Authorization: `Bearer ${TOKEN}` };
    assert.equal((await request({ port, path: '/', headers: auth })).status, 200);
    assert.equal(JSON.parse((await request({ port, path: '/state.json', headers: { Authorization: `bearer  ${TOKEN}` } })).body).n, 2);
    const ev = await request({ port, path: '/events', headers: auth });
    assert.equal(ev.status, 200);
    assert.equal((await request({ port, path: '/nope', headers: auth })).status, 404);
    assert.ok(logs.some((l) => /^web: refused \d+ requests? without the bearer token/.test(l)), logs.join('\n'));
  });
});

describe('web view server', () => {
  const views: WebView[] = [];
  after(() => {
    for (const v of views) v.close();
  });

  it('serves the page, one sample as JSON and the event stream; refuses other methods and paths', async () => {
    let n = 0;
    const { view, port } = await startView({ sample: () => ({ n: ++n }), intervalMs: 50 });
    views.push(view);
    const page = await get(port, '/');
    assert.equal(page.status, 200);
    assert.match(String(page.headers['content-type']), /^text\/html/);
    assert.match(page.body, /new EventSource\('events'\)/);
    assert.match(String(page.headers['content-security-policy']), /default-src 'none'/);
    const head = await get(port, '/index.html', 'HEAD');
    assert.equal(head.status, 200);
    assert.equal(head.body, '');
    const state = await get(port, '/state.json?x=1');
    assert.equal(state.status, 200);
    assert.ok(typeof JSON.parse(state.body).n === 'number');
    for (const m of ['POST', 'PUT', 'DELETE']) {
      const r = await get(port, '/', m);
      assert.equal(r.status, 405, m);
      assert.equal(r.headers.allow, 'GET, HEAD');
    }
    for (const p of ['/nope', '/events/x', '/../etc/passwd', '/index.htm']) assert.equal((await get(port, p)).status, 404, p);
    // bound to loopback: a request for another host name (DNS rebinding) is refused
    for (const h of [`localhost:${port}`, `127.0.0.1:${port}`, `[::1]:${port}`, 'localhost']) assert.equal((await get(port, '/state.json', 'GET', h)).status, 200, h);
    for (const h of [`evil.example:${port}`, 'evil.example', `127.0.0.1.evil.example:${port}`]) assert.equal((await get(port, '/state.json', 'GET', h)).status, 403, h);
    const sub = await subscribe(port);
    assert.equal(sub.status, 200);
    await until('3 samples', () => sub.samples.length >= 3);
    sub.close();
  });

  it('samples only while a client watches, at the interval, the same sample to every client', async () => {
    let calls = 0;
    const { view, port } = await startView({ sample: () => ({ call: ++calls }), intervalMs: 50 });
    views.push(view);
    await sleep(300);
    assert.equal(calls, 0, 'sampled with nobody watching');
    const a = await subscribe(port);
    const b = await subscribe(port);
    await until('10 samples', () => a.samples.length >= 10 && b.samples.length >= 10);
    const t0 = Date.now();
    const c0 = calls;
    await sleep(500);
    const rate = (calls - c0) / ((Date.now() - t0) / 1000);
    assert.ok(rate > 10 && rate < 30, `${rate.toFixed(1)} samples/s at a 50 ms interval`);
    // every sample went to both: b's are a's (b may have started one sample later)
    const last = (a.samples.at(-1) as { call: number }).call;
    assert.ok(b.samples.some((s) => (s as { call: number }).call === last - 1));
    a.close();
    b.close();
    await until('clients gone', () => view.stats().clients === 0);
    const c1 = calls;
    await sleep(300);
    assert.equal(calls, c1, 'still sampling after every client left');
  });

  it('at most maxClients streams; one more gets 503 and is counted', async () => {
    const { view, port, logs } = await startView({ sample: () => ({}), intervalMs: 100, maxClients: 2 });
    views.push(view);
    const a = await subscribe(port);
    const b = await subscribe(port);
    await until('2 clients', () => view.stats().clients === 2);
    const c = await get(port, '/events');
    assert.equal(c.status, 503);
    assert.equal(view.stats().refused, 1);
    assert.ok(logs.some((l) => /web: refused .*2 clients already watching/.test(l)), logs.join('\n'));
    a.close();
    await until('a slot free', () => view.stats().clients === 1);
    const d = await subscribe(port);
    assert.equal(d.status, 200);
    b.close();
    d.close();
  });

  it('a client that stops reading is skipped, then dropped; the others go on; unsent bytes stay bounded', async () => {
    const pad = 'x'.repeat(64 * 1024);
    let n = 0;
    const { view, port, logs } = await startView({ sample: () => ({ n: ++n, pad }), intervalMs: 10, stuckClientMs: 1000 });
    views.push(view);
    const reader = await subscribe(port);
    // a raw client that sends its request and then never reads: its socket buffers fill
    const stuck = net.connect(port, '127.0.0.1');
    await new Promise((r) => stuck.once('connect', r));
    stuck.pause();
    stuck.write('GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    stuck.on('error', () => {}); // the reset of a dropped connection
    const closed = new Promise<void>((r) => stuck.once('close', () => r()));
    await until('the stuck client dropped', () => view.stats().dropped === 1, 30_000);
    // reading again, it finds its connection closed by the server
    stuck.resume();
    await closed;
    const s = view.stats();
    console.log(`# stuck client: ${s.skipped} samples skipped before the drop, at most ${s.maxUnsent} bytes unsent to one client (limit ${SLOW_CLIENT_BYTES})`);
    assert.ok(s.skipped > 0, 'never skipped');
    // the check runs before each write: what is left unsent never exceeds the limit by more than one sample
    assert.ok(s.maxUnsent <= SLOW_CLIENT_BYTES + pad.length + 100, `${s.maxUnsent} bytes unsent`);
    assert.ok(logs.some((l) => /web: dropped .*read nothing for/.test(l)), logs.join('\n'));
    const got = reader.samples.length;
    await until('the reader still served', () => reader.samples.length > got + 5);
    assert.equal(view.stats().clients, 1);
    reader.close();
  });

  it('a listen error is reported through `listening`', async () => {
    const { view, port } = await startView({ sample: () => ({}) });
    views.push(view);
    const second = new WebView({ address: { host: '127.0.0.1', port }, sample: () => ({}), log: () => {} });
    await assert.rejects(second.listening, /EADDRINUSE/);
    second.close();
  });
});

describe('web view sample of a switch', () => {
  it('ports with their connection, held frames and counters; the MAC table', () => {
    const clock = new FakeClock();
    const sw = new Switch({ poolBytes: 256 * 2048, blockSize: 2048, tickMs: 0, clock: clock.now });
    const pa = new TestPort('a');
    const pb = new TestPort('b', { buffers: 0 });
    const ia = sw.attach(pa);
    const ib = sw.attach(pb, { staticMac: mac(2) });
    // b has no RX buffers: what a sends it is held for it
    input(sw, ia, frame(BCAST, mac(1), 0));
    for (let i = 1; i <= 5; i++) input(sw, ia, frame(mac(2), mac(1), i));
    sw.flush();
    const listed = [
      { name: 'a', index: ia },
      { name: 'b', index: ib },
      { name: 'c', index: -1 },
    ];
    const s = webSample(sw, listed, {}, 1234);
    assert.equal(s.t, 1234);
    assert.equal(s.ports.length, 3);
    const [a, b, c] = s.ports;
    assert.deepEqual([a.name, a.conn, a.up, a.held, a.rx], ['a', ia, true, 0, 6]);
    assert.deepEqual([b.name, b.conn, b.up, b.held, b.waiting, b.mac, b.stored], ['b', ib, true, 6, true, mac(2), 6]);
    assert.deepEqual([c.conn, c.up, c.held], [-1, false, 0]);
    assert.equal(s.pool.inUse, 6);
    assert.deepEqual(s.macs, [[mac(1), ia, 0], [mac(2), ib, 1]]);
    assert.equal(s.macCount, 2);
    pb.post(100);
    sw.resourcesAvailable(ib);
    const s2 = webSample(sw, listed);
    assert.deepEqual([s2.ports[1].held, s2.ports[1].drained, s2.pool.inUse], [0, 6, 0]);
    // a large table is cut at MAX_MACS entries, the count says how many there are
    for (let i = 0; i < MAX_MACS + 10; i++) input(sw, ia, frame(mac(2), mac(1000 + i), 100 + i));
    sw.flush();
    const s3 = webSample(sw, listed);
    assert.equal(s3.macs.length, MAX_MACS);
    assert.equal(s3.macCount, MAX_MACS + 12);
    sw.close();
  });
});

describe('web view sample of a switch with the VXLAN uplink', () => {
  it('the uplink as a port of kind vxlan; its VTEPs with what went to and came from each; remote MACs with their VTEP', async () => {
    const sw = new Switch({ poolBytes: 256 * 2048, blockSize: 2048, tickMs: 0 });
    const pa = new TestPort('a');
    const ia = sw.attach(pa);
    const remote = dgram.createSocket('udp4');
    await new Promise<void>((r) => remote.bind(0, '127.0.0.2', () => r()));
    const rport = remote.address().port;
    const probe = dgram.createSocket('udp4');
    await new Promise<void>((r) => probe.bind(0, '127.0.0.1', () => r()));
    const local = probe.address().port;
    await new Promise<void>((r) => probe.close(() => r()));
    const logs: string[] = [];
    const vx = new VxlanPort(sw, parseVxlanSpec(`127.0.0.1:${local},vni=77,remote=127.0.0.2:${rport},mac=${mac(9)}@127.0.0.3:4789`), (m) => logs.push(m));
    const got: Buffer[] = [];
    remote.on('message', (m) => got.push(m));
    try {
      await until('the uplink listening', () => logs.some((l) => /uplink attached/.test(l)));
      input(sw, ia, frame(BCAST, mac(1), 1, 80)); // flooded to the remote VTEP
      sw.flush();
      await until('the flood at the remote, its send called back', () => got.length === 1 && vx.counters.encapDatagrams === 1);
      // a frame from the remote VTEP: its source MAC is learned behind it, the guest gets it
      const inner = frame(mac(1), mac(5), 2, 100).subarray(12);
      const d = Buffer.alloc(8 + inner.length);
      writeVxlanHeader(d, 0, 77);
      d.set(inner, 8);
      await new Promise<void>((res, rej) => remote.send(d, local, '127.0.0.1', (e) => (e ? rej(e) : res())));
      await until('the guest receiving it', () => pa.received.length === 1);
      const s = webSample(sw, [{ name: 'a', index: ia }], { vxlans: [vx] }, 1);
      assert.deepEqual(s.ports.map((p) => [p.name, p.kind, p.up, p.conn]), [['a', 'vhost-user', true, ia], ['vxlan:77', 'vxlan', true, vx.index]]);
      assert.equal(s.ports[1].rx, 1, 'the engine took one frame from the uplink');
      assert.deepEqual(s.vxlan, {
        port: 'vxlan:77',
        vni: 77,
        encap: 1,
        decap: 1,
        tooBig: 0,
        sendErrors: 0,
        vteps: [
          { vtep: `127.0.0.2:${rport}`, flood: true, macs: 1, sent: 1, sentBytes: 80, errors: 0, recv: 1, recvBytes: 100 },
          { vtep: '127.0.0.3:4789', flood: false, macs: 1, sent: 0, sentBytes: 0, errors: 0, recv: 0, recvBytes: 0 },
        ],
      });
      assert.deepEqual(s.macs, [
        [mac(1), ia, 0],
        [mac(5), vx.index, 0, `127.0.0.2:${rport}`],
        [mac(9), vx.index, 1, '127.0.0.3:4789'],
      ]);
      assert.equal(webSample(sw, [{ name: 'a', index: ia }]).vxlan, null, 'no uplink: no VXLAN section');
    } finally {
      vx.close();
      remote.close();
      sw.close();
    }
  });
});
