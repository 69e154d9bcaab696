/**
 * Prometheus metrics of a running switch (--metrics) with two real QEMU guests: scraped over HTTP
 * before and after ping and iperf3, the counters must have moved by at least the traffic sent; a
 * burst to a paused guest must show as frames, blocks and an oldest-frame age in the elastic FIFO,
 * and as drained frames once the guest runs again.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { GuestVM, parseKeyValues } from '../../qemu-glue/launcher';
import { SwitchProcess } from '../../qemu-glue/switch-process';
import { ping, ready, startGuest, startSwitch, teardown, waitPing, workDir, failureTracker } from './harness';

/** name{labels} → value, from the Prometheus text format */
type Scrape = Map<string, number>;

function parseScrape(text: string): Scrape {
  const m = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return m;
}

function val(s: Scrape, key: string): number {
  const v = s.get(key);
  assert.ok(v !== undefined, `no sample ${key}`);
  return v;
}

describe('Prometheus metrics with two guests', { timeout: 400_000 }, () => {
  const dir = workDir('metrics');
  let sw: SwitchProcess | undefined;
  let a: GuestVM | undefined;
  let b: GuestVM | undefined;
  let url = '';
  const tracker = failureTracker();
  const guard = tracker.guard;

  async function scrape(): Promise<Scrape> {
    const r = await fetch(url);
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    return parseScrape(await r.text());
  }

  before(async () => {
    sw = await startSwitch(dir, 2, ['--pool-mb', '32', '--metrics', '127.0.0.1:0']);
    const line = await sw.waitLog(/metrics: serving http:\/\/\S+\/metrics/);
    url = /(http:\/\/\S+\/metrics)/.exec(line)![1];
    [a, b] = await Promise.all([startGuest(sw, 0, 'metrics-a'), startGuest(sw, 1, 'metrics-b')]);
    await ready(a, b);
  });

  after(() => teardown([a, b], sw, tracker.failed, dir));

  it('is served on loopback at /metrics only; ports up, negotiated features as an info metric', () =>
    guard(async () => {
      assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
      assert.equal((await fetch(url.replace('/metrics', '/nothing'))).status, 404);
      assert.equal((await fetch(url, { method: 'POST' })).status, 405);
      await waitPing(a!, '10.0.0.2');
      const s = await scrape();
      for (const p of ['vm0', 'vm1']) {
        assert.equal(val(s, `elastic_vhost_port_up{port="${p}"}`), 1);
        const info = [...s.keys()].find((k) => k.startsWith(`elastic_vhost_port_info{port="${p}"`));
        assert.ok(info, `no info metric for ${p}`);
        for (const f of ['F_VERSION_1', 'NET_F_MRG_RXBUF', 'RING_F_EVENT_IDX']) assert.match(info, new RegExp(`features="[^"]*\\b${f}\\b`), info);
        assert.match(info, /mode="server"/);
      }
      assert.ok(val(s, 'elastic_vhost_mac_table_entries') >= 2);
      assert.equal(val(s, 'elastic_vhost_fifo_blocks'), 16384);
      assert.equal(val(s, 'elastic_vhost_fifo_block_size_bytes'), 2048);
      assert.ok(s.has('process_cpu_seconds_total'), 'the process metrics are there too');
    }));

  it('ping and iperf3: frames and bytes in and out of both ports moved by at least what was sent', () =>
    guard(async () => {
      const N = 20;
      const s0 = await scrape();
      const r = await ping(a!, '10.0.0.2', N);
      assert.equal(r.received, N, r.output);
      const s1 = await scrape();
      const d = (k: string): number => val(s1, k) - val(s0, k);
      console.log(`# ${N} pings: vm0 in ${d('elastic_vhost_port_in_frames_total{port="vm0"}')} out ${d('elastic_vhost_port_out_frames_total{port="vm0"}')}, vm1 in ${d('elastic_vhost_port_in_frames_total{port="vm1"}')} out ${d('elastic_vhost_port_out_frames_total{port="vm1"}')} frames`);
      // each request is taken from A and given to B, each reply taken from B and given to A
      for (const p of ['vm0', 'vm1']) {
        assert.ok(d(`elastic_vhost_port_in_frames_total{port="${p}"}`) >= N, `${p} in`);
        assert.ok(d(`elastic_vhost_port_out_frames_total{port="${p}"}`) >= N, `${p} out`);
        // 98-byte frames: 14 Ethernet + 20 IP + 8 ICMP + 56 data
        assert.ok(d(`elastic_vhost_port_in_bytes_total{port="${p}"}`) >= N * 98, `${p} in bytes`);
        assert.ok(d(`elastic_vhost_port_out_bytes_total{port="${p}"}`) >= N * 98, `${p} out bytes`);
        assert.ok(d(`elastic_vhost_port_fast_path_frames_total{port="${p}"}`) + d(`elastic_vhost_port_drained_frames_total{port="${p}"}`) >= N, `${p} delivered`);
      }

      const server = b!.spawn('iperf3 -s -1 -p 5201 --forceflush');
      await server.waitForLine(/Server listening/, 10_000);
      const i = await a!.exec('iperf3 -c 10.0.0.2 -p 5201 -t 3 -J', { timeoutMs: 60_000 });
      assert.equal(i.rc, 0, i.output);
      await server.done;
      // what B's iperf3 received went through the switch (sum_sent may count bytes still in A's
      // socket buffer when the test ended)
      const sent = JSON.parse(i.output).end.sum_received.bytes as number;
      const s2 = await scrape();
      const e = (k: string): number => val(s2, k) - val(s1, k);
      console.log(`# iperf3: ${sent} bytes received; vm0 in ${e('elastic_vhost_port_in_bytes_total{port="vm0"}')} bytes, vm1 out ${e('elastic_vhost_port_out_bytes_total{port="vm1"}')} bytes`);
      assert.ok(e('elastic_vhost_port_in_bytes_total{port="vm0"}') >= sent, 'A\'s port took at least the TCP payload B received');
      assert.ok(e('elastic_vhost_port_out_bytes_total{port="vm1"}') >= sent, 'B\'s port was given at least the TCP payload B received');
      assert.ok(e('elastic_vhost_port_fast_path_bytes_total{port="vm1"}') + e('elastic_vhost_port_drained_bytes_total{port="vm1"}') >= sent);
      assert.equal(val(s2, 'elastic_vhost_dropped_frames_total{reason="pool_exhausted"}'), 0);
    }));

  it('a burst to a paused guest: queue depth, blocks in use and the oldest frame\'s age rise; drained once it runs', () =>
    guard(async () => {
      const N = 2000;
      const s0 = await scrape();
      const recv = b!.spawn(`udpburst recv 9000 ${N} 5000`);
      await recv.waitForLine(/UDPBURST listening/, 10_000);
      await b!.stop();
      const snd = await a!.exec(`udpburst send 10.0.0.2 9000 ${N} 256`, { timeoutMs: 60_000 });
      assert.equal(snd.rc, 0, snd.output);
      let held: Scrape = s0;
      for (let k = 0; k < 100; k++) {
        held = await scrape();
        if (val(held, 'elastic_vhost_fifo_queue_frames{port="vm1"}') >= N) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      await new Promise((r) => setTimeout(r, 1000));
      held = await scrape();
      const q = val(held, 'elastic_vhost_fifo_queue_frames{port="vm1"}');
      const age = val(held, 'elastic_vhost_fifo_queue_oldest_frame_age_seconds{port="vm1"}');
      console.log(`# paused B: ${q} frames queued, ${val(held, 'elastic_vhost_fifo_queue_blocks{port="vm1"}')} blocks, oldest ${age} s, ${val(held, 'elastic_vhost_fifo_blocks_in_use')} blocks in use`);
      assert.ok(q >= N, `${q} frames queued for vm1`);
      assert.ok(val(held, 'elastic_vhost_fifo_queue_blocks{port="vm1"}') >= N);
      assert.ok(val(held, 'elastic_vhost_fifo_blocks_in_use') >= N);
      assert.ok(age >= 0.9, `oldest frame ${age} s old after a second`);
      assert.ok(val(held, 'elastic_vhost_port_stored_frames_total{port="vm1"}') - val(s0, 'elastic_vhost_port_stored_frames_total{port="vm1"}') >= N);
      assert.equal(val(held, 'elastic_vhost_fifo_queue_frames{port="vm0"}'), 0);

      await b!.cont();
      const r = await recv.done;
      const line = r.lines.find((l) => l.startsWith('UDPBURST received='));
      assert.ok(line, r.output);
      assert.equal(parseKeyValues(line).received, String(N), line);
      const s1 = await scrape();
      const drained = val(s1, 'elastic_vhost_port_drained_frames_total{port="vm1"}') - val(s0, 'elastic_vhost_port_drained_frames_total{port="vm1"}');
      console.log(`# after cont: ${drained} drained, ${val(s1, 'elastic_vhost_fifo_queue_frames{port="vm1"}')} queued, high water ${val(s1, 'elastic_vhost_fifo_blocks_high_water')}`);
      assert.ok(drained >= N, `${drained} drained`);
      assert.equal(val(s1, 'elastic_vhost_fifo_queue_frames{port="vm1"}'), 0);
      assert.equal(val(s1, 'elastic_vhost_fifo_queue_oldest_frame_age_seconds{port="vm1"}'), 0);
      assert.equal(val(s1, 'elastic_vhost_fifo_blocks_in_use'), 0);
      assert.ok(val(s1, 'elastic_vhost_fifo_blocks_high_water') >= N);
      assert.ok(val(s1, 'elastic_vhost_drained_frames_total') - val(s0, 'elastic_vhost_drained_frames_total') >= N);
      for (const reason of ['pool_exhausted', 'share_limit']) assert.equal(val(s1, `elastic_vhost_dropped_frames_total{reason="${reason}"}`), 0);
    }));
});
