// The limits one tenant cannot go beyond, each with its option (0 refused naming it) and a count
// when it is hit: connections (--max-ports) and frame size (--max-frame-bytes) here; memory regions,
// mapped bytes, queue pairs and chain length in test/protocol/limits.test.ts; share and hold time in
// engine-switch.test.ts and faults.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { Switch, MAX_FRAME_LEN } from '../../src/engine/switch';
import { frame, input, mac, TestPort } from './engine-helpers';

const cli = path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');

test('limit options: 0 and values out of range are refused naming the option; more ports than --max-ports refused', () => {
  for (const opt of ['--max-ports', '--max-regions', '--max-frame-bytes', '--max-chain-descriptors', '--queues']) {
    const r = spawnSync(process.execPath, [cli, '--socket', '/tmp/x.sock', opt, '0'], { encoding: 'utf8' });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, new RegExp(`${opt}.*0 makes no sense`), opt);
  }
  for (const [opt, v] of [['--max-regions', '510'], ['--max-frame-bytes', '13'], ['--max-frame-bytes', '70000'], ['--max-chain-descriptors', '4097'], ['--queues', '129']]) {
    const r = spawnSync(process.execPath, [cli, '--socket', '/tmp/x.sock', opt, v], { encoding: 'utf8' });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, new RegExp(`${opt}.*give a number from`), `${opt} ${v}`);
  }
  const r = spawnSync(process.execPath, [cli, '--socket', '/tmp/x.sock', '--socket', '/tmp/y.sock', '--max-ports', '1'], { encoding: 'utf8' });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /2 ports given, more than --max-ports 1/);
});

test('--max-ports: a connection beyond the limit is refused and counted; a freed slot takes the next one', () => {
  const sw = new Switch({ maxPorts: 2, tickMs: 0 });
  try {
    const a = sw.attach(new TestPort('a'));
    sw.attach(new TestPort('b'));
    assert.throws(() => sw.attach(new TestPort('c')), /switch full: 2 connections \(--max-ports\)/);
    assert.equal(sw.stats().refusedConnections, 1);
    sw.detach(a);
    sw.attach(new TestPort('c'));
    assert.equal(sw.stats().refusedConnections, 1);
  } finally {
    sw.close();
  }
});

test('--max-frame-bytes: a longer frame is dropped and counted as tooBig, one at the limit passes', () => {
  const limit = 1514;
  const sw = new Switch({ maxFrameLen: 12 + limit, tickMs: 0 });
  try {
    const a = new TestPort('a');
    const b = new TestPort('b');
    const ia = sw.attach(a);
    const ib = sw.attach(b);
    input(sw, ib, frame('ff:ff:ff:ff:ff:ff', mac(2), 0, 60));
    input(sw, ia, frame(mac(2), mac(1), 1, limit));
    input(sw, ia, frame(mac(2), mac(1), 2, limit + 1));
    input(sw, ia, frame(mac(2), mac(1), 3, 9000));
    sw.flush();
    assert.equal(b.received.length, 1);
    const st = sw.stats();
    const pa = st.ports.find((p) => p.name === 'a')!;
    assert.equal(pa.drops.tooBig, 2);
    assert.equal(st.total.drops.tooBig, 2);
    assert.equal(st.total.drops.malformed, 0);
    assert.throws(() => new Switch({ maxFrameLen: MAX_FRAME_LEN + 1 }), /largest frame/);
  } finally {
    sw.close();
  }
});
