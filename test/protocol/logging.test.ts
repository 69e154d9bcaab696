// The command's log: on a pipe every line is one JSON event (level, time, msg) with the fields of
// what it is about — port, connection, the vhost-user request, negotiated features by name; on a
// terminal the same events pretty-printed; --log-level filters; the counters line only with
// --log-counters.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LogRecord, SwitchProcess } from '../../qemu-glue/switch-process';
import { FrontEnd, waitFor } from './frontend';
import { ethFrame, netHdr, packet, receiveN, sendPacket } from './helpers';
import { Req } from '../../src/vhost-user/message';
import { ProtocolFeature } from '../../src/vhost-user/message';
import { bit } from '../../src/vhost-user/features';

const echo = process.env.ELASTIC_VHOST_ECHO === '1';
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'ev-log-'));

test('piped: every line is a JSON event; a front-end\'s events name port, connection, request and features', async () => {
  const dir = tmp();
  const sw = new SwitchProcess({ workDir: dir, sockets: ['vm0.sock'], echo });
  try {
    await sw.start();
    const fe = FrontEnd.connect(sw.socketPaths[0], 'fe');
    // no MQ: GET_QUEUE_NUM is refused and logged as an error naming it
    const offered = await fe.getProtocolFeatures();
    await fe.start({ protocolFeatures: offered & ~bit(ProtocolFeature.MQ) });
    assert.equal((await fe.call(Req.GET_QUEUE_NUM)).length, 0);
    const refusal = await sw.waitRecord((r) => r.level === 'error', 5000, 0, 'an error event');
    fe.close();
    await sw.waitLog(/^detach vm0 /);
    await sw.stop();

    assert.ok(sw.lines.length >= 6, sw.lines.join('\n'));
    for (const l of sw.lines) {
      const r = JSON.parse(l) as LogRecord; // throws on a line that is not JSON
      assert.equal(typeof r.msg, 'string', l);
      assert.ok(['info', 'warn', 'error'].includes(r.level), `level of ${l}`);
      assert.ok(!Number.isNaN(Date.parse(r.time as string)), `time of ${l}`);
      assert.equal(r.pid, sw.pid, l);
    }
    const byMsg = (re: RegExp) => sw.records.find((r) => re.test(r.msg))!;
    const listening = byMsg(/^listening on /);
    assert.equal(listening.port, 'vm0');
    assert.equal(listening.path, sw.socketPaths[0]);
    const attach = byMsg(/^attach vm0 as connection /);
    assert.equal(attach.port, 'vm0');
    assert.equal(typeof attach.connection, 'number');
    const features = byMsg(/^vm0: features /);
    assert.equal(features.port, 'vm0');
    assert.equal(features.connection, attach.connection);
    assert.equal(features.request, 'VHOST_USER_SET_FEATURES');
    assert.ok(Array.isArray(features.features));
    for (const f of ['NET_F_MRG_RXBUF', 'F_VERSION_1', 'USER_F_PROTOCOL_FEATURES']) assert.ok((features.features as string[]).includes(f), `${f} in ${JSON.stringify(features.features)}`);
    assert.equal(features.msg, `vm0: features ${(features.features as string[]).join('|')}`);
    const proto = byMsg(/^vm0: protocol features /);
    assert.equal(proto.request, 'VHOST_USER_SET_PROTOCOL_FEATURES');
    assert.ok((proto.protocolFeatures as string[]).includes('REPLY_ACK'), JSON.stringify(proto.protocolFeatures));
    assert.ok(!(proto.protocolFeatures as string[]).includes('MQ'));
    assert.equal(refusal.request, 'VHOST_USER_GET_QUEUE_NUM');
    assert.equal(refusal.port, 'vm0');
    assert.match(refusal.msg, /^vm0: error: VHOST_USER_GET_QUEUE_NUM: VHOST_USER_PROTOCOL_F_MQ was not negotiated; refused/);
    assert.equal(byMsg(/^detach vm0 /).dropped, 0);
    assert.equal(sw.records.filter((r) => r.level === 'debug').length, 0, 'no debug events at the default level');
  } finally {
    await sw.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('--log-level: debug adds an event per vhost-user request; warn leaves only warnings and errors', async () => {
  const run = async (level: string): Promise<LogRecord[]> => {
    const dir = tmp();
    const sock = path.join(dir, 'vm0.sock');
    const sw = new SwitchProcess({ workDir: dir, sockets: [], extraArgs: ['--socket', `${sock},name=vm0`, '--log-level', level], echo });
    try {
      await sw.start();
      await waitFor(() => fs.existsSync(sock), 10_000, 'the socket');
      const fe = FrontEnd.connect(sock, 'fe');
      const offered = await fe.getProtocolFeatures();
      await fe.start({ protocolFeatures: offered & ~bit(ProtocolFeature.MQ) });
      assert.equal((await fe.call(Req.GET_QUEUE_NUM)).length, 0);
      await sw.waitRecord((r) => r.level === 'error', 5000);
      fe.close();
      await sw.stop();
      return sw.records;
    } finally {
      await sw.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  };
  const debug = await run('debug');
  const requests = debug.filter((r) => r.level === 'debug').map((r) => r.request);
  for (const q of ['VHOST_USER_GET_FEATURES', 'VHOST_USER_SET_OWNER', 'VHOST_USER_SET_MEM_TABLE', 'VHOST_USER_SET_VRING_KICK', 'VHOST_USER_GET_QUEUE_NUM']) assert.ok(requests.includes(q), `${q} in ${requests.join(' ')}`);
  assert.ok(debug.every((r) => r.level !== 'debug' || (r.port === 'vm0' && r.msg === `vm0: ${r.request}`)));
  const warn = await run('warn');
  assert.ok(warn.every((r) => r.level === 'warn' || r.level === 'error'), JSON.stringify(warn));
  assert.equal(warn.filter((r) => r.level === 'error').map((r) => r.request).join(), 'VHOST_USER_GET_QUEUE_NUM');
  assert.ok(debug.some((r) => /^listening on /.test(r.msg)) && !warn.some((r) => /^listening on /.test(r.msg)), 'info events filtered out at warn');
});

test('the counters line comes only with --log-counters, with the counters as fields', async () => {
  const run = async (extra: string[]): Promise<LogRecord[]> => {
    const dir = tmp();
    const sw = new SwitchProcess({ workDir: dir, sockets: ['a.sock', 'b.sock'], extraArgs: ['--stats-interval', '50', ...extra], echo });
    try {
      await sw.start();
      const a = FrontEnd.connect(sw.socketPaths[0], 'a');
      const b = FrontEnd.connect(sw.socketPaths[1], 'b');
      const ga = { port: { name: 'a' } as never, fe: a, ...(await a.start()) };
      const gb = { port: { name: 'b' } as never, fe: b, ...(await b.start()) };
      await sendPacket(ga, packet(netHdr(12), ethFrame(100, 1)));
      await receiveN(gb, 1);
      await sw.freshStats();
      await sw.freshStats(); // two intervals after the frame
      a.close();
      b.close();
      await sw.stop();
      return sw.records;
    } finally {
      await sw.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  };
  assert.deepEqual((await run([])).filter((r) => r.msg.startsWith('counters:')), []);
  const on = (await run(['--log-counters'])).filter((r) => r.msg.startsWith('counters:'));
  assert.ok(on.length >= 1, 'a counters line');
  const c = on[0].counters as Record<string, number>;
  assert.ok(c.rxFrames >= 1 && c.fastFrames >= 1, JSON.stringify(c));
  assert.match(on[0].msg, /^counters: rxFrames=\d+ rxBytes=\d+ fastFrames=\d+/);
});

test('on a terminal (script -qc) the events are pretty-printed, not JSON', async () => {
  const dir = tmp();
  const sock = path.join(dir, 'vm0.sock');
  const cli = SwitchProcess.cliPath();
  // the switch stops itself (timeout sends SIGTERM) so nothing outlives the pty
  const p = spawn('script', ['-qc', `timeout 3 ${process.execPath} ${cli} --socket ${sock},name=vm0`, '/dev/null'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout!.on('data', (d) => (out += d));
  p.stderr!.on('data', (d) => (out += d));
  const code = await new Promise<number | null>((r) => p.on('exit', (c) => r(c)));
  fs.rmSync(dir, { recursive: true, force: true });
  assert.equal(code, 0, out);
  // eslint-disable-next-line no-control-regex
  const lines = out.replace(/\x1b\[[0-9;]*m/g, '').split(/\r?\n/).filter((l) => l.trim() !== '');
  assert.ok(lines.length >= 2, out);
  for (const l of lines) assert.ok(!l.startsWith('{'), `not JSON: ${l}`);
  assert.match(lines[0], /^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] INFO: listening on .*vm0\.sock \{"port":"vm0","path":".*vm0\.sock"\}$/);
  assert.match(lines.at(-1)!, /INFO: SIGTERM: closing every port$/);
  assert.match(out, /\x1b\[32mINFO/, 'coloured level'); // eslint-disable-line no-control-regex
});
