/**
 * Stress test of the ttyS1 agent channel (GuestVM.spawn/exec <-> guest
 * evagent): many short commands that finish at random times while new ones
 * are being sent, on a loaded machine (two more guests boot and run iperf3
 * against each other meanwhile). Every command must run exactly as sent
 * (its output is checked) and every EV-DONE must arrive.
 *
 * Knobs: EV_STRESS_N (commands, default 1000), EV_STRESS_INFLIGHT (commands
 * in flight, default 24), EV_STRESS_LOAD=0 (no load guests),
 * EV_STRESS_CMD_TIMEOUT_MS (per command, default 20000).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { macForIndex } from '../../qemu-glue/args';
import { GuestVM, ensureGuestImages, freePort, killAll, waitTcpListening, type ExecResult } from '../../qemu-glue/launcher';

const N = Number(process.env.EV_STRESS_N ?? 1000);
const INFLIGHT = Number(process.env.EV_STRESS_INFLIGHT ?? 24);
const LOAD = process.env.EV_STRESS_LOAD !== '0';
const CMD_TIMEOUT_MS = Number(process.env.EV_STRESS_CMD_TIMEOUT_MS ?? 20_000);

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

describe('agent channel under stress', { timeout: 240_000 }, () => {
  let vm: GuestVM | undefined;
  const load: GuestVM[] = [];
  let failed = false;

  before(async () => {
    ensureGuestImages();
    const [p1, p2] = [await freePort(), await freePort()];
    vm = await GuestVM.start({
      name: 'stress',
      params: { ip: '10.9.0.1/24', linkwait: 0 },
      nics: [{ kind: 'socket', id: 'n0', mac: macForIndex(1), link: { mode: 'udp', localPort: p1, remotePort: p2 } }],
    });
    const r = await vm.waitReady(60_000);
    console.log(`# stress guest ready after ${r.bootMs} ms (${vm.accel})`);
  });

  after(async () => {
    for (const g of [vm, ...load]) {
      if (!g) continue;
      if (failed) console.log(`# ${g.name} console (${g.consoleLog}):\n${g.consoleTail(20)}`);
      await g.shutdown(2000);
      if (!failed) g.removeWorkDir();
    }
    killAll();
  });

  async function startLoad(): Promise<void> {
    // Two guests that boot while the stress runs, then push iperf3 TCP at each other.
    const port = await freePort();
    const srv = await GuestVM.start({
      name: 'stress-load-a',
      agent: false,
      params: { role: 'iperf-server', ip: '10.0.0.1/24', stay: true },
      nics: [{ kind: 'socket', id: 'n0', mac: macForIndex(2), link: { mode: 'listen', port } }],
    });
    load.push(srv);
    await waitTcpListening(port);
    const cli = await GuestVM.start({
      name: 'stress-load-b',
      agent: false,
      params: { role: 'iperf-client', ip: '10.0.0.2/24', peer: '10.0.0.1', time: 40, stay: true },
      nics: [{ kind: 'socket', id: 'n0', mac: macForIndex(3), link: { mode: 'connect', port } }],
    });
    load.push(cli);
  }

  it(`${N} concurrent short commands: each runs exactly as sent, each EV-DONE arrives`, async () => {
    const g = vm!;
    const t0 = Date.now();
    const loadStarted = LOAD ? startLoad().catch((e: Error) => console.log(`# load guests: ${e.message}`)) : Promise.resolve();
    const pad = 'abcdefghijklmnopqrstuvwxyz0123456789'.repeat(2);
    let next = 0;
    let ok = 0;
    const wrong: string[] = [];
    const missing: string[] = [];
    const worker = async (w: number): Promise<void> => {
      for (;;) {
        const i = next++;
        if (i >= N) return;
        const token = `ok-${i}-${w}-${pad}`;
        const c = g.spawn(`sleep 0.0$RANDOM; echo ${token}`);
        let t: NodeJS.Timeout | undefined;
        const r = await Promise.race([
          c.done.catch((e: Error) => e),
          new Promise<null>((res) => (t = setTimeout(() => res(null), CMD_TIMEOUT_MS))),
        ]);
        clearTimeout(t);
        if (r === null) missing.push(`${c.id} #${i}: no EV-DONE after ${CMD_TIMEOUT_MS} ms (output ${JSON.stringify(c.lines)})`);
        else if (r instanceof Error) missing.push(`${c.id} #${i}: ${r.message}`);
        else if ((r as ExecResult).rc !== 0 || (r as ExecResult).output !== token)
          wrong.push(`${c.id} #${i}: rc=${(r as ExecResult).rc} output ${JSON.stringify((r as ExecResult).output)}`);
        else ok++;
        // Some workers send their next command the moment EV-DONE arrived (the old ash agent lost
        // lines most often then: the finished job's SIGCHLD hit its `read`), the others after a pause.
        if (w % 3 !== 0) await sleep(Math.floor(Math.random() * 8));
      }
    };
    await Promise.all(Array.from({ length: INFLIGHT }, (_, w) => worker(w)));
    const secs = (Date.now() - t0) / 1000;
    await loadStarted;
    const misc = g.agentMisc.filter((l) => !/^EV-(AGENT|ACK|READY)\b/.test(l));
    console.log(
      `# ${N} commands (${INFLIGHT} in flight, load ${LOAD ? 'on' : 'off'}) in ${secs.toFixed(1)} s: ` +
        `ok ${ok}, wrong ${wrong.length}, missing ${missing.length}, ` +
        `loss rate ${(((wrong.length + missing.length) / N) * 100).toFixed(2)} %, other agent lines ${misc.length}` +
        ` (frames sent ${g.agentStats?.sent}, re-sent ${g.agentStats?.resent}, bad lines ${g.agentStats?.badLines})`,
    );
    for (const l of [...wrong, ...missing].slice(0, 20)) console.log(`#   ${l}`);
    for (const l of misc.slice(0, 20)) console.log(`#   agent: ${l}`);
    for (const l of load) console.log(`# ${l.name}: ${l.consoleLines.filter((x) => /EV-(READY|RESULT)/.test(x)).join(' | ')}`);
    try {
      assert.equal(wrong.length + missing.length, 0, [...wrong, ...missing].slice(0, 20).join('\n'));
      assert.equal(ok, N);
      // The channel still works afterwards, and cancel() reaches a running command.
      const c = g.spawn('echo started; sleep 30; echo not-cancelled');
      await c.waitForLine(/^started$/, 10_000);
      c.cancel();
      const r = await c.done;
      assert.notEqual(r.rc, 0);
      assert.deepEqual(r.lines, ['started']);
      assert.equal(await g.run('echo after'), 'after');
    } catch (e) {
      failed = true;
      throw e;
    }
  });

  it('damaged, lost and duplicated frames are detected and recovered: each command runs exactly once', async () => {
    const g = vm!;
    try {
      const faults = ['head', 'flip', 'lose', 'dup', 'merge', 'head'] as const;
      const before = { ...g.agentStats };
      g.injectAgentFaults(...faults);
      const runs = faults.map((f, i) => g.exec(`echo ${f}-${i} >> /tmp/once; echo ran-${i}`, { timeoutMs: 20_000 }));
      const rs = await Promise.all(runs);
      rs.forEach((r, i) => assert.deepEqual([r.rc, r.output], [0, `ran-${i}`]));
      // A cancel whose frame is damaged still arrives.
      const c = g.spawn('echo started; sleep 30; echo not-cancelled');
      await c.waitForLine(/^started$/, 10_000);
      g.injectAgentFaults('head');
      c.cancel('KILL');
      assert.equal((await c.done).rc, 128 + 9);
      await sleep(2500); // a late re-send of any of them must not run it again
      const lines = (await g.run('sort /tmp/once')).split('\n');
      assert.deepEqual(lines, faults.map((f, i) => `${f}-${i}`).sort());
      console.log(
        `# faults ${faults.join(',')} + cancel: re-sent ${g.agentStats.resent - before.resent}, ` +
          `EV-BADLINE ${g.agentStats.badLines - before.badLines}`,
      );
      assert.ok(g.agentStats.badLines - before.badLines >= 3);
    } catch (e) {
      failed = true;
      throw e;
    }
  });
});
