/**
 * Soak, bounded (ELASTIC_VHOST_SOAK_S, default 40 s): an iperf3 TCP stream between two real guests
 * while a third front-end connects, sets up its rings and memory and disconnects in a loop, and a
 * hostile front-end sends garbage on a fourth socket. At the end, in the switch process: no fd,
 * mapping or block of the local data store leaked, resident memory flat, the FIFO's counts
 * consistent (taken = returned + in use), and the stream never stalled (every iperf3 interval moved
 * data). A side session that fails is counted, and only the known failure is accepted: the switch
 * refused it (and logged so) because the previous one was still connected (soak-failures.ts).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { GuestVM } from '../../qemu-glue/launcher';
import { SwitchProcess } from '../../qemu-glue/switch-process';
import { native } from '../../src/native';
import { FrontEnd, sleep } from '../protocol/frontend';
import { ready, startGuest, startSwitch, teardown, waitPing, workDir, failureTracker } from './harness';
import { SoakFailures, refusalsIn } from './soak-failures';

const SECONDS = Number(process.env.ELASTIC_VHOST_SOAK_S ?? 40);

function procFacts(pid: number): { fds: number; maps: number; rssKb: number } {
  const fds = fs.readdirSync(`/proc/${pid}/fd`).length;
  // mappings of guest memory (memfds: QEMU's memory-backend-memfd, the churning front-end's RAM);
  // the rest of the map (V8's heap) grows and shrinks on its own
  const maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => l.includes('memfd:')).length;
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return { fds, maps, rssKb: m ? Number(m[1]) : 0 };
}

describe('soak: a stream between two guests while a third churns and a fourth is hostile', { timeout: 300_000 }, () => {
  const dir = workDir('soak');
  let sw: SwitchProcess | undefined;
  let a: GuestVM | undefined;
  let b: GuestVM | undefined;
  const tracker = failureTracker();

  before(async () => {
    sw = await startSwitch(dir, 4);
    [a, b] = await Promise.all([startGuest(sw, 0, 'soak-a'), startGuest(sw, 1, 'soak-b')]);
    await ready(a, b);
    await waitPing(a, '10.0.0.2');
  });

  after(() => teardown([a, b], sw, tracker.failed, dir));

  it(`${SECONDS} s: nothing leaks, memory flat, the stream never stalls`, () =>
    tracker.guard(async () => {
      const pid = sw!.pid!;
      const server = b!.spawn('iperf3 -s -1 -p 5201 --forceflush');
      await server.waitForLine(/Server listening/, 10_000);
      const client = a!.spawn(`iperf3 -c 10.0.0.2 -p 5201 -t ${SECONDS} -i 1 -J`);
      // warm-up, then the baseline (JIT, pool and guest rings all set up by now)
      await sleep(3000);
      const base = procFacts(pid);
      let churns = 0;
      let garbage = 0;
      const failures = new SoakFailures();
      const until = Date.now() + (SECONDS - 6) * 1000;
      let seed = 12345;
      const rnd = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 4294967296);
      while (Date.now() < until) {
        // the churning front-end: full set-up (features, memory table with a memfd, rings), then gone
        let fe: FrontEnd | null = null;
        try {
          fe = new FrontEnd(native.unixConnect(sw!.socketPaths[2]), 'churn');
          await fe.start();
          await sleep(20 + rnd() * 80);
          churns++;
        } catch (e) {
          // known: its port was still seeing the last one go and refused this one (judged below)
          failures.note('churn', e);
        } finally {
          fe?.close();
        }
        // the hostile one: garbage bytes, sometimes with an fd, then gone
        let fd = -1;
        let efd = -1;
        try {
          fd = native.unixConnect(sw!.socketPaths[3]);
          const junk = new Uint8Array(12 + Math.floor(rnd() * 200));
          for (let i = 0; i < junk.length; i++) junk[i] = Math.floor(rnd() * 256);
          efd = native.eventfd(0);
          const n = native.sendmsg(fd, junk, 0, junk.length, rnd() < 0.5 ? [efd] : []);
          if (n !== junk.length) throw new Error(`hostile: sendmsg wrote ${n} of ${junk.length} bytes into an idle socket`);
          await sleep(10);
          garbage++;
        } catch (e) {
          // known: the port was still closing the previous one and refused this one (judged below)
          failures.note('hostile', e);
        } finally {
          if (efd >= 0) native.close(efd);
          if (fd >= 0) native.close(fd);
        }
        await sleep(50);
      }
      const r = await client.done;
      await server.done;
      const j = JSON.parse(r.output);
      assert.equal(j.error, undefined, `iperf3: ${j.error}`);
      const intervals: number[] = j.intervals.map((iv: { sum: { bytes: number } }) => iv.sum.bytes);
      const mbit = j.end.sum_received.bits_per_second / 1e6;
      console.log(`# soak ${SECONDS} s: ${churns} churned sessions, ${garbage} garbage sessions (${failures.summary()}), iperf3 ${mbit.toFixed(0)} Mbit/s, slowest 1 s interval ${Math.min(...intervals)} bytes`);
      // every failed side session failed for the known reason, and the switch says it refused them
      const refusals = { churn: refusalsIn(sw!.log, path.basename(sw!.socketPaths[2])), hostile: refusalsIn(sw!.log, path.basename(sw!.socketPaths[3])) };
      assert.equal(failures.judge(refusals), null, `switch refusals logged: ${JSON.stringify(refusals)}`);
      assert.ok(intervals.length >= SECONDS - 1, `${intervals.length} intervals`);
      assert.ok(intervals.every((x) => x > 0), `the stream stalled: ${intervals.join(' ')}`);
      assert.ok(churns >= 20 && garbage >= 20, `${churns} churns, ${garbage} garbage sessions`);
      // everything settles: the churn and hostile ports are disconnected
      await sleep(500);
      const end = procFacts(pid);
      console.log(`# switch: fds ${base.fds} → ${end.fds}, guest-memory mappings ${base.maps} → ${end.maps}, RSS ${base.rssKb} → ${end.rssKb} kB`);
      assert.equal(end.fds, base.fds, 'fds leaked');
      assert.equal(end.maps, base.maps, `guest-memory mappings leaked: ${base.maps} → ${end.maps}`);
      assert.ok(end.rssKb < base.rssKb + 40 * 1024, `resident memory grew: ${base.rssKb} → ${end.rssKb} kB`);
      const st = await sw!.freshStats();
      const pool = st.engine.pool;
      assert.equal(pool.blocksTaken - pool.blocksReturned, pool.blocksInUse, 'taken = returned + in use');
      assert.equal(pool.blocksInUse, 0, 'blocks of the local data store still held');
      // the good guests never saw an error
      assert.deepEqual(sw!.log.filter((l) => /vm[01]: error/.test(l)), []);
    }));
});
