/**
 * The main job: elastic-vhost with two sockets, two embedded test guests booted against it, ping and
 * iperf3 through it, a burst held while one guest is paused, a short result table, everything stopped.
 *
 *   npm run demo            (builds what is missing first)
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { macForIndex } from './args';
import { GuestVM, ensureGuestImages, killAll, parseKeyValues } from './launcher';
import { SwitchProcess } from './switch-process';

/** utime + stime of a process in seconds (/proc/PID/stat; clock ticks of 100 Hz) */
function processCpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return 0;
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) / 100;
}

function say(s: string): void {
  process.stdout.write(`${s}\n`);
}

async function main(): Promise<number> {
  ensureGuestImages();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'elastic-vhost-demo-'));
  const sw = new SwitchProcess({ workDir: dir, sockets: ['vm0.sock', 'vm1.sock'], extraArgs: ['--pool-mb', '16'], echo: process.env.ELASTIC_VHOST_ECHO === '1' });
  const vms: GuestVM[] = [];
  const rows: [string, string][] = [];
  try {
    say(`starting elastic-vhost on ${sw.socketPaths.join(' and ')}`);
    await sw.start();
    for (let i = 0; i < 2; i++) {
      vms.push(
        await GuestVM.start({
          name: `demo-${i ? 'b' : 'a'}`,
          params: { ip: `10.0.0.${i + 1}/24` },
          nics: [{ kind: 'vhost-user', id: 'n0', socketPath: sw.socketPaths[i], mac: macForIndex(i + 1) }],
        }),
      );
    }
    const [a, b] = vms;
    say(`booting two guests (${a.accel}) ...`);
    const boot = await Promise.all(vms.map((v) => v.waitReady(120_000)));
    rows.push(['accelerator', a.accel]);
    rows.push(['boot to network ready', boot.map((r) => `${(r.bootMs / 1000).toFixed(1)} s`).join(', ')]);

    say('ping A -> B (20 packets) ...');
    for (let k = 0; k < 30; k++) if ((await a.exec('ping -c 1 -W 1 10.0.0.2')).rc === 0) break;
    const p = await a.exec('ping -c 20 -i 0.2 -W 2 10.0.0.2', { timeoutMs: 60_000 });
    const loss = /(\d+)% packet loss/.exec(p.output)?.[1] ?? '?';
    const rtt = /min\/avg\/max = ([\d.]+)\/([\d.]+)\/([\d.]+)/.exec(p.output);
    rows.push(['ping A->B loss', `${loss} %`]);
    rows.push(['ping A->B rtt min/avg/max', rtt ? `${rtt[1]} / ${rtt[2]} / ${rtt[3]} ms` : p.output]);

    say('iperf3 TCP A -> B, 10 s ...');
    const srv = b.spawn('iperf3 -s -1 -p 5201 --forceflush');
    await srv.waitForLine(/Server listening/, 10_000);
    const cpu0 = processCpuSeconds(sw.pid);
    const t = await a.exec('iperf3 -c 10.0.0.2 -p 5201 -t 10 -J', { timeoutMs: 60_000 });
    const cpu1 = processCpuSeconds(sw.pid);
    const tj = JSON.parse(t.output);
    rows.push(['iperf3 TCP A->B', `${(tj.end.sum_received.bits_per_second / 1e6).toFixed(1)} Mbit/s`]);
    const gb = tj.end.sum_received.bytes / 1e9;
    rows.push(['switch CPU during it', `${(cpu1 - cpu0).toFixed(2)} s for ${gb.toFixed(2)} GB: ${((cpu1 - cpu0) / gb).toFixed(2)} CPU s per GB`]);
    await srv.done;

    say('iperf3 UDP B -> A, 10 Mbit/s, 5 s ...');
    const usrv = a.spawn('iperf3 -s -1 -p 5202 --forceflush');
    await usrv.waitForLine(/Server listening/, 10_000);
    const u = await b.exec('iperf3 -c 10.0.0.1 -p 5202 -u -b 10M -l 1200 -t 5 -J', { timeoutMs: 60_000 });
    const us = JSON.parse(u.output).end.sum_received ?? JSON.parse(u.output).end.sum;
    rows.push(['iperf3 UDP B->A 10 Mbit/s', `${us.lost_packets}/${us.packets} lost, jitter ${Number(us.jitter_ms).toFixed(3)} ms`]);
    await usrv.done;

    const N = 4000;
    say(`burst: pausing B, sending it ${N} datagrams, resuming it ...`);
    const rcv = b.spawn(`udpburst recv 9000 ${N} 5000`);
    await rcv.waitForLine(/UDPBURST listening/, 10_000);
    await b.stop();
    await a.exec(`udpburst send 10.0.0.2 9000 ${N} 512`, { timeoutMs: 60_000 });
    let held = 0;
    for (let k = 0; k < 50 && held < N; k++) held = (await sw.freshStats()).engine.ports[1]?.queuedFrames ?? 0;
    await b.cont();
    const r = await rcv.done;
    const line = r.lines.find((l) => l.startsWith('UDPBURST received=')) ?? r.output;
    const kv = parseKeyValues(line);
    rows.push(['burst to paused B', `${held} held in the elastic FIFO, ${kv.received}/${N} received, in order: ${kv.inorder}`]);

    const st = (await sw.freshStats()).engine;
    rows.push(['frames fast path', String(st.total.fastFrames)]);
    rows.push(['frames stored / drained', `${st.total.storedFrames} / ${st.total.drainedFrames}`]);
    rows.push(['frames dropped', `${st.total.dropped} ${JSON.stringify(st.total.drops)}`]);
    rows.push(['pool high water', `${st.pool.highWater} of ${st.pool.blocks} blocks of ${st.pool.blockSize} bytes`]);
  } finally {
    for (const v of vms) {
      await v.shutdown();
      v.removeWorkDir();
    }
    const e = await sw.stop();
    rows.push(['switch exit on SIGTERM', `code ${e.code}`]);
    killAll();
  }
  const w = Math.max(...rows.map(([k]) => k.length));
  say('\nelastic-vhost demo results');
  say('-'.repeat(w + 40));
  for (const [k, v] of rows) say(`${k.padEnd(w)}  ${v}`);
  fs.rmSync(dir, { recursive: true, force: true });
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(`demo failed: ${(e as Error).stack ?? e}`);
    killAll();
    process.exit(1);
  },
);
