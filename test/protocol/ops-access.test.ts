// Who may reach the operator's tools, with the built CLI (no guest needed): the config file puts
// the metrics on a Unix socket (mode 0660) behind a bearer token and the web view on a TCP port
// behind another, and names one more socket directory; requests without the token get 401, with it
// the data; `ctl add-port` works in the configured port's directory and in the socketDirs one, not
// next to them; a token file every user may read, or with too short a token, stops the start with
// the reason, before anything listens; at exit the Unix sockets are gone.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { SwitchProcess } from '../../qemu-glue/switch-process';
import type { PortView } from '../../src/ops/switch-view';

const METRICS_TOKEN = 'metrics-token-0123456789abcdef';
const WEB_TOKEN = 'web-token-fedcba9876543210';

function get(where: { socketPath: string } | { url: string }, p: string, token?: string): Promise<{ status: number; body: string; auth?: string }> {
  return new Promise((resolve, reject) => {
    const headers = token === undefined ? {} : { Authorization: `Bearer ${token}` };
    const opts = 'socketPath' in where ? { socketPath: where.socketPath, path: p, headers } : { host: new URL(where.url).hostname, port: new URL(where.url).port, path: p, headers };
    const req = http.get(opts, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, auth: res.headers['www-authenticate'] }));
    });
    req.on('error', reject);
  });
}

describe('metrics and web behind tokens, on a Unix socket; add-port within the socket directories', { timeout: 60_000 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-access-'));
  const more = path.join(dir, 'more');
  const metricsSock = path.join(dir, 'metrics.sock');
  const ctlSock = path.join(dir, 'elastic-vhost.ctl');
  const config = path.join(dir, 'ev.yaml');
  fs.mkdirSync(more);
  fs.writeFileSync(path.join(dir, 'mtoken'), `${METRICS_TOKEN}\n`, { mode: 0o600 });
  fs.writeFileSync(path.join(dir, 'wtoken'), `${WEB_TOKEN}\n`, { mode: 0o640 });
  fs.writeFileSync(
    config,
    [
      `metrics: "unix:${metricsSock},mode=0660"`,
      `metricsTokenFile: ${dir}/mtoken`,
      'web: "127.0.0.1:0"',
      `webTokenFile: ${dir}/wtoken`,
      'ctl: true',
      `socketDirs: [${more}]`,
      '',
    ].join('\n'),
  );
  const sw = new SwitchProcess({ workDir: dir, sockets: ['vm0.sock'], extraArgs: ['--config', config], echo: process.env.ELASTIC_VHOST_ECHO === '1' });
  let webUrl = '';

  before(async () => {
    await sw.start();
    await sw.waitLog(/ctl: listening on/);
    await sw.waitLog(/metrics: serving unix:/);
    webUrl = /web view on (http:\/\/\S+)$/.exec(await sw.waitLog(/web view on http:\/\//))![1];
  });

  after(async () => {
    const e = await sw.stop();
    assert.equal(e.code, 0, sw.log.slice(-20).join('\n'));
    assert.equal(fs.existsSync(metricsSock), false, 'the metrics socket is removed at exit');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('metrics on the Unix socket (mode 0660): 401 without the token or with the web one, the metrics with it', async () => {
    assert.ok(fs.statSync(metricsSock).isSocket());
    assert.equal(fs.statSync(metricsSock).mode & 0o777, 0o660);
    for (const t of [undefined, WEB_TOKEN]) {
      const r = await get({ socketPath: metricsSock }, '/metrics', t);
      assert.equal(r.status, 401);
      assert.equal(r.auth, 'Bearer realm="elastic-vhost"');
      assert.doesNotMatch(r.body, /elastic_vhost/);
    }
    const ok = await get({ socketPath: metricsSock }, '/metrics', METRICS_TOKEN);
    assert.equal(ok.status, 200);
    assert.match(ok.body, /^elastic_vhost_port_up\{port="vm0"\} 0$/m);
    await sw.waitLog(/metrics: refused 1 request without the bearer token/);
  });

  it('the web view: 401 without its token, the page and the state with it', async () => {
    for (const p of ['/', '/state.json', '/events']) {
      const r = await get({ url: webUrl }, p);
      assert.equal(r.status, 401, p);
      assert.equal((await get({ url: webUrl }, p, METRICS_TOKEN)).status, 401, `${p} with the metrics token`);
    }
    const page = await get({ url: webUrl }, '/', WEB_TOKEN);
    assert.equal(page.status, 200);
    assert.match(page.body, /elastic-vhost/);
    const state = JSON.parse((await get({ url: webUrl }, '/state.json', WEB_TOKEN)).body) as { ports: { name: string }[] };
    assert.deepEqual(state.ports.map((p) => p.name), ['vm0']);
    await sw.waitLog(/web: refused \d+ requests? without the bearer token/);
  });

  it('add-port: in the port\'s directory and in socketDirs, not beside them', async () => {
    const inMore = path.join(more, 'vm1.sock');
    const a = await SwitchProcess.ctl(ctlSock, 'add-port', `${inMore},name=vm1`);
    assert.equal(a.code, 0, a.stderr);
    assert.ok(fs.statSync(inMore).isSocket());
    const b = await SwitchProcess.ctl(ctlSock, 'add-port', `${path.join(dir, 'vm2.sock')},name=vm2`);
    assert.equal(b.code, 0, b.stderr);
    fs.mkdirSync(path.join(dir, 'other'));
    const c = await SwitchProcess.ctl(ctlSock, 'add-port', `${path.join(dir, 'other', 'vm3.sock')},name=vm3`);
    assert.equal(c.code, 1);
    assert.match(c.stderr, new RegExp(`not in a socket directory of the configuration \\(${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}, ${more.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\)`));
    const ports = JSON.parse((await SwitchProcess.ctl(ctlSock, '--json', 'ports')).stdout) as PortView[];
    assert.deepEqual(ports.map((p) => p.name), ['vm0', 'vm1', 'vm2']);
  });
});

describe('bad token files stop the start, naming the option', () => {
  it('a token file every user may read; a token too short', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-access-bad-'));
    try {
      const token = path.join(dir, 'token');
      const sock = path.join(dir, 'web.sock');
      for (const [mode, text, opt, why] of [
        [0o644, `${WEB_TOKEN}\n`, '--web-token-file', /--web-token-file .*token: every user may read it \(mode 0644\): chmod o-r it/],
        [0o600, 'short\n', '--metrics-token-file', /--metrics-token-file .*token: a token of 5 characters: give at least 16/],
      ] as const) {
        fs.writeFileSync(token, text);
        fs.chmodSync(token, mode);
        const r = spawnSync(process.execPath, [SwitchProcess.cliPath(), '--socket', path.join(dir, 'vm0.sock'), '--web', `unix:${sock}`, '--metrics', `unix:${dir}/m.sock`, opt, token], { encoding: 'utf8', timeout: 20_000 });
        assert.equal(r.status, 1, r.stderr);
        assert.match(r.stderr, why);
        assert.deepEqual(fs.readdirSync(dir).sort(), ['token'], 'nothing left listening or behind');
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
