// The operator's tools from the config file alone: the built CLI started with nothing but
// --config FILE, the file setting metrics (port 0), ctl (true: next to the port's socket) and web
// (port 0, as a number). /metrics is scraped over HTTP, `elastic-vhost ctl ports --json` answers on
// the control socket, GET / of the web view is 200; a SIGHUP with the metrics address changed is
// logged as needing a restart and the old address keeps serving.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseLogLine, SwitchProcess } from '../../qemu-glue/switch-process';
import { waitFor } from './frontend';
import type { PortView } from '../../src/ops/switch-view';

test('metrics, ctl and web from the config file alone; a change of them on SIGHUP needs a restart', { timeout: 60_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-cfgops-'));
  const file = path.join(dir, 'ev.yaml');
  const sock = path.join(dir, 'vm0.sock');
  const ctlSock = path.join(dir, 'elastic-vhost.ctl');
  const yaml = (metrics: string) => [`ports: [{name: vm0, path: ${sock}}]`, `metrics: "${metrics}"`, 'ctl: true', 'ctlMode: "0640"', 'web: 0', ''].join('\n');
  fs.writeFileSync(file, yaml('127.0.0.1:0'));
  const p = spawn(process.execPath, [SwitchProcess.cliPath(), '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  const msgs: string[] = [];
  let partial = '';
  const onData = (d: Buffer) => {
    partial += d.toString();
    let i;
    while ((i = partial.indexOf('\n')) >= 0) {
      msgs.push(parseLogLine(partial.slice(0, i)).msg);
      partial = partial.slice(i + 1);
    }
  };
  p.stdout.on('data', onData);
  p.stderr.on('data', onData);
  const exited = new Promise<number | null>((res) => p.on('exit', (code) => res(code)));
  const line = async (re: RegExp, from = 0): Promise<RegExpExecArray> => {
    let m: RegExpExecArray | null = null;
    await waitFor(() => msgs.slice(from).some((l) => (m = re.exec(l)) !== null), 10_000, `a log line matching ${re}; got:\n${msgs.join('\n')}`);
    return m!;
  };
  try {
    const metricsUrl = (await line(/^metrics: serving (http:\/\/127\.0\.0\.1:\d+\/metrics)$/))[1];
    const webUrl = (await line(/^web view on (http:\/\/127\.0\.0\.1:\d+\/)$/))[1];
    await line(new RegExp(`^ctl: listening on ${ctlSock.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`));
    assert.notEqual(new URL(metricsUrl).port, '0', 'port 0: a free port chosen');

    const m = await fetch(metricsUrl);
    assert.equal(m.status, 200);
    const text = await m.text();
    assert.match(text, /^elastic_vhost_port_up\{port="vm0"\} 0$/m, 'vm0 known, no front-end connected');
    assert.match(text, /^elastic_vhost_fifo_blocks_in_use \d+$/m);

    assert.equal(fs.statSync(ctlSock).mode & 0o777, 0o640, 'ctlMode from the file');
    const c = spawnSync(process.execPath, [SwitchProcess.cliPath(), 'ctl', '--socket', ctlSock, 'ports', '--json'], { encoding: 'utf8', timeout: 10_000 });
    assert.equal(c.status, 0, c.stderr);
    const ports = JSON.parse(c.stdout) as PortView[];
    assert.deepEqual(ports.map((v) => [v.name, v.mode, v.path]), [['vm0', 'server', sock]]);

    const w = await fetch(webUrl);
    assert.equal(w.status, 200);
    assert.match(w.headers.get('content-type') ?? '', /^text\/html/);
    assert.match(await w.text(), /elastic-vhost/);

    // the metrics address changed in the file: reported, not applied; the old one still serves
    const from = msgs.length;
    fs.writeFileSync(file, yaml('127.0.0.1:1'));
    p.kill('SIGHUP');
    const r = await line(/^reload: .*/, from);
    assert.equal(r[0], 'reload: not applied, needs a restart: metrics "127.0.0.1:0" → "127.0.0.1:1"');
    assert.equal((await fetch(metricsUrl)).status, 200);
  } finally {
    p.kill('SIGTERM');
  }
  assert.equal(await exited, 0, msgs.join('\n'));
  assert.equal(fs.existsSync(ctlSock), false, 'the control socket is removed at exit');
  fs.rmSync(dir, { recursive: true, force: true });
});
