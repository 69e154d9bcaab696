// The control socket's scheduling (src/ops/control.ts), in process over a real Unix socket: a
// client that pipelines thousands of requests in one write gets them answered a bounded number per
// turn of the event loop (the data path shares that loop: its kicks and timers run between the
// turns), still every one and in order; a client that goes away with requests still waiting has
// them dropped, not computed for nobody.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { ControlServer } from '../../src/ops/control';
import type { OpsHost } from '../../src/ops/switch-view';

/** what README.md, "Control socket", promises: at most this many requests answered per turn */
const PER_TURN = 16;
const N = 3000;

/** A host whose `captures` command counts its calls, stamped with the event-loop turn they ran in. */
function countingHost(turn: () => number): { host: OpsHost; calls: number[] } {
  const calls: number[] = [];
  const captures = {
    list: () => {
      calls.push(turn());
      return [];
    },
    has: () => false,
  };
  // only the captures command is sent: nothing else of a switch is needed
  return { host: { captures, ports: () => [] } as unknown as OpsHost, calls };
}

/** Counts turns of the event loop: one setImmediate per turn, until stopped. */
function turnCounter(): { now: () => number; stop: () => void } {
  let n = 0;
  let on = true;
  const tick = (): void => {
    n++;
    if (on) setImmediate(tick);
  };
  setImmediate(tick);
  return { now: () => n, stop: () => (on = false) };
}

async function withServer(body: (sock: string, calls: number[], logs: string[]) => Promise<void>): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-ctlsched-'));
  const turns = turnCounter();
  const { host, calls } = countingHost(turns.now);
  const logs: string[] = [];
  const ctl = await ControlServer.listen(path.join(dir, 'ctl.sock'), host, (m) => logs.push(m));
  try {
    await body(ctl.path, calls, logs);
  } finally {
    ctl.close();
    turns.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test(`${N} requests in one write: every one answered, in order, at most ${PER_TURN} per turn of the event loop`, async () => {
  await withServer(async (sock, calls) => {
    const replies = await new Promise<{ id: number; ok: boolean }[]>((resolve, reject) => {
      const s = net.createConnection(sock);
      const got: { id: number; ok: boolean }[] = [];
      let buf = '';
      s.setEncoding('utf8');
      s.on('error', reject);
      s.on('connect', () => {
        // one write of ~80 KiB: the server reads it in one or two reads of up to 64 KiB
        s.write(Array.from({ length: N }, (_, i) => `{"id":${i},"cmd":"captures"}\n`).join(''));
      });
      s.on('data', (d: string) => {
        buf += d;
        for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
          got.push(JSON.parse(buf.slice(0, i)));
          buf = buf.slice(i + 1);
        }
        if (got.length === N) {
          s.destroy();
          resolve(got);
        }
      });
    });
    assert.deepEqual(replies.map((r) => r.id), Array.from({ length: N }, (_, i) => i), 'every reply, in order');
    assert.ok(replies.every((r) => r.ok));
    assert.equal(calls.length, N);
    const perTurn = new Map<number, number>();
    for (const t of calls) perTurn.set(t, (perTurn.get(t) ?? 0) + 1);
    const most = Math.max(...perTurn.values());
    assert.ok(most <= PER_TURN, `${most} requests answered in one turn of the event loop (at most ${PER_TURN})`);
  });
});

test('a client that goes away: the requests it left waiting are dropped, not computed', async () => {
  await withServer(async (sock, calls) => {
    await new Promise<void>((resolve, reject) => {
      const s = net.createConnection(sock);
      s.on('error', reject);
      s.on('connect', () => {
        s.write(`${'{"cmd":"captures"}\n'.repeat(N)}`, () => {
          s.destroy();
          resolve();
        });
      });
    });
    // long enough for the old behaviour (everything computed) to show
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(calls.length < N / 10, `${calls.length} of the ${N} requests computed after the client went away`);
  });
});
