// The config file: contrib/elastic-vhost.yaml is valid; errors name the key and the line, and the
// real command exits non-zero before it creates any socket or TAP device; options on the command
// line override the file (checked in the settings and in a running switch's counters).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ConfigError, loadConfig, parseConfig } from '../../src/cli/config';
import { settingsOf } from '../../src/cli/main';
import { waitFor } from '../protocol/frontend';

const root = path.resolve(__dirname, '..', '..', '..');
const cli = path.join(root, 'dist', 'src', 'cli', 'main.js');
const example = path.join(root, 'contrib', 'elastic-vhost.yaml');

function problems(text: string, file = 'config.yaml'): string[] {
  try {
    parseConfig(text, file);
  } catch (e) {
    assert.ok(e instanceof ConfigError, String(e));
    return e.problems;
  }
  assert.fail('no error');
}

test('contrib/elastic-vhost.yaml is valid and gives the ports and settings it says', () => {
  const c = loadConfig(example);
  const { settings } = settingsOf(['node', 'elastic-vhost', '--config', example]);
  assert.deepEqual(
    settings.ports.map((p) => [p.name, p.mode, p.mac, p.share, p.queues, p.offload]),
    [
      ['vm0', 'server', '52:54:00:00:00:01', 4096, undefined, undefined],
      ['vm1', undefined, undefined, undefined, 2, undefined],
      ['vm2', 'client', undefined, undefined, undefined, false],
    ],
  );
  assert.equal(settings.ports[0].path, '/run/elastic-vhost/vm0.sock');
  assert.equal(settings.socketMode, 0o600);
  assert.equal(settings.statsFile, '/run/elastic-vhost/stats.json');
  assert.equal(c.unknown, 'flood');
  assert.deepEqual(settingsOf(['node', 'elastic-vhost', '--config', example]).ops, {
    metrics: { host: '127.0.0.1', port: 9101 },
    ctl: '/run/elastic-vhost/elastic-vhost.ctl',
    ctlMode: 0o600,
    web: undefined,
    captures: [],
    // next to the control socket: a directory of the switch's own
    capturePolicy: { dir: '/run/elastic-vhost/captures', maxBytes: 256 * 1024 * 1024 },
    socketDirs: [],
  });
  // the same file as JSON is a valid config too
  const asJson = JSON.stringify(c, null, 2);
  assert.deepEqual(parseConfig(asJson, 'c.json'), c);
});

test('schema errors name the key and the line, every one of them, in line order', () => {
  const text = [
    'poolMb: 0', // 1
    'ports:', // 2
    '  - name: a', // 3
    '    path: /tmp/a.sock', // 4
    '  - name: b', // 5
    '    path: /tmp/b.sock', // 6
    '    share: 0', // 7
    '    sahre: 3', // 8
    '  - path: /tmp/c.sock', // 9
    '    mac: 52:54:00:00:01', // 10
    'unknown: sometimes', // 11
    'socketMode: 0660', // 12
    'queues: 129', // 13
    'blockSize: 1001', // 14
    'holdMs: -1', // 15
    'logLevel: loud', // 16
  ].join('\n');
  assert.deepEqual(problems(text), [
    'config.yaml:1: poolMb: must be >= 1',
    'config.yaml:7: ports[1].share: must be >= 1',
    'config.yaml:8: ports[1].sahre: unknown key (known: name, path, mode, mac, share, queues, offload)',
    'config.yaml:9: ports[2].name: is required',
    'config.yaml:10: ports[2].mac: must be a MAC address aa:bb:cc:dd:ee:ff',
    'config.yaml:11: unknown: must be one of "flood", "drop"',
    'config.yaml:12: socketMode: must be string',
    'config.yaml:13: queues: must be <= 128',
    'config.yaml:14: blockSize: must be multiple of 8',
    'config.yaml:15: holdMs: must be >= 0',
    'config.yaml:16: logLevel: must be one of "trace", "debug", "info", "warn", "error", "fatal", "silent"',
  ]);
  assert.deepEqual(problems('poolMb: 16\nholdMS: 5\n'), ['config.yaml:2: holdMS: unknown key (known: ports, ' + 'tap, vxlan, poolMb, blockSize, shareLimit, holdMs, unknown, macAgeS, queues, maxPorts, maxRegions, maxFrameBytes, maxChainDescriptors, offload, socketMode, socketOwner, socketGroup, socketDirs, statsFile, statsInterval, maxGuestMemGb, maxTotalMemGb, pollUs, workers, logLevel, logCounters, quiet, metrics, metricsTokenFile, ctl, ctlMode, web, webTokenFile, captures, captureDir, captureMaxMb)']);
  assert.deepEqual(problems('ports:\n  - {name: a, path: /x/a}\n  - name: a\n    path: /x/a\n'), [
    'config.yaml:3: ports[1].name: "a" is also ports[0].name',
    'config.yaml:4: ports[1].path: "/x/a" is also ports[0].path',
  ]);
  assert.deepEqual(problems('ports: [\n  {name: a, path: /x}\n'), ['config.yaml:3: Flow sequence in block collection must be sufficiently indented and end with a ]']);
  assert.deepEqual(problems('- a\n- b\n'), ['config.yaml:1: (top level): must be object']);
  assert.deepEqual(problems('{\n  "poolMb": 16,\n  "ports": [{"name": "a", "path": "/x", "share": "lots"}]\n}\n', 'c.json'), ['c.json:3: ports[0].share: must be integer']);
  assert.deepEqual(problems('{\n  "poolMb": 16,\n  "poolMb": 17\n}\n', 'c.json'), ['c.json:3: Map keys must be unique']);
  assert.deepEqual(parseConfig('', 'empty.yaml'), {});
});

test("the ops tools' keys are checked as their options are: a bad value names key and line", () => {
  const text = [
    'ports: [{name: vm0, path: /tmp/vm0.sock}]', // 1
    'metrics: "127.0.0.1:65536"', // 2
    'ctl: ""', // 3
    'ctlMode: 0600', // 4
    'web: "localhost:http"', // 5
    'captures:', // 6
    '  - vm0=/tmp/vm0.pcap,max-frames=1000', // 7
    '  - vm0', // 8
    '  - vm0=/tmp/b.pcap,max-frames=0', // 9
    '  - 42', // 10
    'metricsTokenFile: ""', // 11
    'socketDirs: [/srv/vhost, " "]', // 12
  ].join('\n');
  assert.deepEqual(problems(text), [
    'config.yaml:2: metrics: "127.0.0.1:65536": want [ADDR:]PORT, e.g. 9100 or 0.0.0.0:9100, or unix:PATH[,mode=OCTAL]',
    'config.yaml:3: ctl: must NOT have fewer than 1 characters',
    'config.yaml:4: ctlMode: must be string',
    'config.yaml:5: web: "localhost:http" is not [ADDR:]PORT (e.g. 8080, 127.0.0.1:8080, [::1]:8080) or unix:PATH[,mode=OCTAL]',
    'config.yaml:8: captures[1]: capture "vm0": want PORT=FILE[,max-bytes=N][,max-frames=N]',
    'config.yaml:9: captures[2]: capture "vm0=/tmp/b.pcap,max-frames=0": "max-frames=0" is not max-bytes=N or max-frames=N (N >= 1)',
    'config.yaml:10: captures[3]: must be string',
    'config.yaml:11: metricsTokenFile: must NOT have fewer than 1 characters',
    'config.yaml:12: socketDirs[1]: " ": give a directory',
  ]);
  // a port alone may be a number (YAML reads 9101 so), in range; ctl is a path or true/false
  assert.deepEqual(problems('metrics: 70000\nweb: -1\nctl: 3\ncaptures: vm0=/tmp/a.pcap\n'), [
    'config.yaml:1: metrics: must be <= 65535',
    'config.yaml:2: web: must be >= 0',
    'config.yaml:3: ctl: must be string,boolean',
    'config.yaml:4: captures: must be array',
  ]);
  // the same strings the command line takes, and no more (--metrics "x" is refused there too)
  const r = spawnSync(process.execPath, [cli, '--socket', '/tmp/ev-cfg-never.sock', '--metrics', '127.0.0.1:65536'], { encoding: 'utf8' });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /--metrics "127\.0\.0\.1:65536": want \[ADDR:\]PORT/);
});

test("the ops tools from the file, the command line's over them: metrics, ctl true, web as a number, captures", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-cfg-'));
  const file = path.join(dir, 'ev.yaml');
  fs.writeFileSync(
    file,
    [
      `ports: [{name: vm0, path: ${dir}/vm0.sock}, {name: vm1, path: ${dir}/vm1.sock}]`,
      'metrics: 9101',
      'ctl: true',
      'ctlMode: "0660"',
      'web: 8080',
      `captures: ["vm0=${dir}/vm0.pcap,max-frames=1000", "vm1=${dir}/vm1.pcap"]`,
      `captureDir: ${dir}`,
      'captureMaxMb: 64',
      `socketDirs: [${dir}/more]`,
      '',
    ].join('\n'),
  );
  const fromFile = settingsOf(['node', 'elastic-vhost', '--config', file]);
  assert.deepEqual(fromFile.ops, {
    metrics: { host: '127.0.0.1', port: 9101 },
    ctl: path.join(dir, 'elastic-vhost.ctl'),
    ctlMode: 0o660,
    web: { host: '127.0.0.1', port: 8080 },
    captures: [
      { port: 'vm0', file: `${dir}/vm0.pcap`, limits: { maxFrames: 1000 } },
      { port: 'vm1', file: `${dir}/vm1.pcap`, limits: {} },
    ],
    capturePolicy: { dir, maxBytes: 64 * 1024 * 1024 },
    socketDirs: [`${dir}/more`],
  });
  assert.equal(fromFile.settings.web, '8080', 'kept as the command line writes it');
  const over = settingsOf(['node', 'elastic-vhost', '--config', file, '--metrics', '0.0.0.0:9200', '--ctl', `${dir}/c.sock`, '--capture', `vm1=x.pcap,max-bytes=5000`, '--capture-dir', `${dir}/pcap`, '--capture-max-mb', '1', '--socket-dir', '/srv/a', '--socket-dir', '/srv/b/']);
  assert.deepEqual(over.ops, {
    metrics: { host: '0.0.0.0', port: 9200 },
    ctl: `${dir}/c.sock`,
    ctlMode: 0o660,
    web: { host: '127.0.0.1', port: 8080 },
    captures: [{ port: 'vm1', file: 'x.pcap', limits: { maxBytes: 5000 } }],
    capturePolicy: { dir: `${dir}/pcap`, maxBytes: 1024 * 1024 },
    socketDirs: ['/srv/a', '/srv/b'],
  }, "the command line's --capture list replaces the file's");
  // without --capture-dir in either: captures/ next to the control socket
  fs.writeFileSync(file, `ports: [{name: vm0, path: ${dir}/vm0.sock}]\n`);
  assert.deepEqual(settingsOf(['node', 'elastic-vhost', '--config', file, '--ctl', `${dir}/sub/c.sock`]).ops.capturePolicy, { dir: `${dir}/sub/captures`, maxBytes: 256 * 1024 * 1024 });
  assert.deepEqual(settingsOf(['node', 'elastic-vhost', '--config', file]).ops.capturePolicy.dir, `${dir}/captures`, 'no --ctl: next to the first port');
  fs.rmSync(dir, { recursive: true, force: true });
});

test('the command with a bad config exits 1 naming key and line, before it opens any socket or TAP device', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-cfg-'));
  const tap = `evcfg${process.pid % 10000}`;
  const file = path.join(dir, 'bad.yaml');
  fs.writeFileSync(
    file,
    [`tap: ${tap}`, 'ports:', `  - name: vm0`, `    path: ${dir}/vm0.sock`, `  - name: vm1`, `    path: ${dir}/vm1.sock`, `    share: 0`, ''].join('\n'),
  );
  const r = spawnSync(process.execPath, [cli, '--config', file, '--socket', `${dir}/cli.sock`], { encoding: 'utf8' });
  assert.equal(r.status, 1, r.stdout + r.stderr);
  assert.equal(r.stderr, `${file}:7: ports[1].share: must be >= 1\n`);
  // a bad ops value too: no socket, no metrics port, no control socket
  fs.writeFileSync(file, [`ports: [{name: vm0, path: ${dir}/vm0.sock}]`, `ctl: ${dir}/ctl.sock`, 'metrics: "127.0.0.1:9101"', `captures: ["vm0:${dir}/vm0.pcap"]`, ''].join('\n'));
  const ops = spawnSync(process.execPath, [cli, '--config', file], { encoding: 'utf8' });
  assert.equal(ops.status, 1, ops.stdout + ops.stderr);
  assert.equal(ops.stderr, `${file}:4: captures[0]: capture "vm0:${dir}/vm0.pcap": want PORT=FILE[,max-bytes=N][,max-frames=N]\n`);
  assert.deepEqual(fs.readdirSync(dir), ['bad.yaml'], 'no socket file created');
  assert.equal(fs.existsSync(`/sys/class/net/${tap}`), false, 'no TAP device created');
  const missing = spawnSync(process.execPath, [cli, '--config', path.join(dir, 'nope.yaml')], { encoding: 'utf8' });
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /nope\.yaml: ENOENT/);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('command-line options override the config file: scalars, and a port of the same name', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-cfg-'));
  const file = path.join(dir, 'ev.yaml');
  const stats = path.join(dir, 'stats.json');
  fs.writeFileSync(
    file,
    [
      'poolMb: 16',
      'holdMs: 100',
      'unknown: drop',
      'macAgeS: 60',
      'ports:',
      `  - {name: vm0, path: ${dir}/vm0.sock, share: 10}`,
      `  - {name: vm1, path: ${dir}/vm1-config.sock, share: 20}`,
      `statsFile: ${dir}/unused.json`,
      'statsInterval: 100',
      '',
    ].join('\n'),
  );
  const argv = [file, '--hold-ms', '300', '--socket', `${dir}/vm1.sock,name=vm1,share=7`, '--socket', `${dir}/extra.sock`, '--stats-file', stats];
  const { settings } = settingsOf(['node', 'elastic-vhost', '--config', ...argv]);
  assert.equal(settings.poolMb, 16, 'from the file');
  assert.equal(settings.unknown, 'drop', 'from the file');
  assert.equal(settings.holdMs, 300, 'the command line wins');
  assert.equal(settings.statsFile, stats, 'the command line wins');
  assert.equal(settings.blockSize, 2048, 'the default');
  assert.deepEqual(
    settings.ports.map((p) => [p.name, p.path, p.share]),
    [
      ['vm0', `${dir}/vm0.sock`, 10],
      ['vm1', `${dir}/vm1.sock`, 7],
      ['vu2:extra.sock', `${dir}/extra.sock`, undefined],
    ],
  );

  // the real command, started that way, runs with those settings
  const p = spawn(process.execPath, [cli, '--config', ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout!.on('data', (d) => (out += d));
  p.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((res) => p.on('exit', (code) => res(code)));
  try {
    await waitFor(() => fs.existsSync(stats), 10_000, `the stats file (output: ${out})`);
    const s = JSON.parse(fs.readFileSync(stats, 'utf8'));
    assert.equal(s.engine.pool.blocks, (16 * 1024 * 1024) / 2048);
    assert.equal(s.settings.holdTimeMs, 300);
    assert.equal(s.settings.unknownPolicy, 'drop');
    assert.equal(s.settings.macAgeMs, 60_000);
    assert.deepEqual(s.vhostUser.map((v: { name: string }) => v.name), ['vm0', 'vm1', 'vu2:extra.sock']);
    assert.deepEqual(fs.readdirSync(dir).filter((f) => f.endsWith('.sock')).sort(), ['extra.sock', 'vm0.sock', 'vm1.sock']);
  } finally {
    p.kill('SIGTERM');
  }
  assert.equal(await exited, 0, out);
  fs.rmSync(dir, { recursive: true, force: true });
});
