/**
 * The live web view in a real browser: elastic-vhost with --web and two real QEMU guests, the page
 * opened in Debian's headless Chromium (driven by playwright-core). The receiving guest is paused
 * (QMP stop) and a UDP burst sent at it: the page, fed only by the switch's server-sent events,
 * must show the frames held for it rise to the whole burst, then fall back to 0 once the guest
 * runs again. A screenshot taken while the frames are held is saved to build/web-view.png.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { GuestVM, parseKeyValues, repoRoot } from '../../qemu-glue/launcher';
import { SwitchProcess } from '../../qemu-glue/switch-process';
import { ready, startGuest, startSwitch, teardown, waitPing, workDir, failureTracker } from './harness';

// what the functions run inside the page see (the project compiles without the DOM library, so
// that nothing outside this test can use browser globals by mistake)
// eslint-disable-next-line @typescript-eslint/no-explicit-any
declare const document: any;
type HTMLElement = { dataset: Record<string, string | undefined>; cells: { textContent: string | null }[] };

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const N = 3000;
/** the page must show at least this many held for the paused guest */
const THRESHOLD = N * 0.9;

describe('live web view in headless Chromium', { timeout: 400_000 }, () => {
  const dir = workDir('web');
  let sw: SwitchProcess | undefined;
  let a: GuestVM | undefined;
  let b: GuestVM | undefined;
  let browser: Browser | undefined;
  let page: Page | undefined;
  let skip: string | null = fs.existsSync(CHROMIUM) ? null : `${CHROMIUM} not found (Debian package chromium)`;
  const tracker = failureTracker();
  const guard = tracker.guard;

  /** the page's row for a port, as the DOM says */
  const row = (name: string) =>
    page!.evaluate((n) => {
      const tr = document.querySelector(`#ports tr[data-port="${n}"]`) as HTMLElement | null;
      return tr ? { held: Number(tr.dataset.held), up: tr.dataset.up === '1', waiting: tr.dataset.waiting === '1', cells: [...tr.cells].map((c) => c.textContent) } : null;
    }, name);

  before(async () => {
    if (skip === null) {
      try {
        browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
      } catch (e) {
        skip = `Chromium does not start: ${(e as Error).message.split('\n')[0]}`;
      }
    }
    if (skip !== null) {
      console.log(`# skipped: ${skip}`);
      return;
    }
    sw = await startSwitch(dir, 2, ['--pool-mb', '32', '--web', '127.0.0.1:0']);
    const url = /web view on (http:\/\/\S+)$/.exec(await sw.waitLog(/web view on http:\/\//))![1];
    [a, b] = await Promise.all([startGuest(sw, 0, 'web-a'), startGuest(sw, 1, 'web-b')]);
    await ready(a, b);
    page = await browser!.newPage({ viewport: { width: 1280, height: 1200 } });
    page.on('pageerror', (e) => console.log(`# page error: ${e.message}`));
    await page.goto(url);
    console.log(`# page ${url} opened in ${browser!.version()}`);
  });

  after(async () => {
    await browser?.close();
    if (sw || a || b) await teardown([a, b], sw, tracker.failed, dir);
    else fs.rmSync(dir, { recursive: true, force: true });
  });

  it('shows both ports connected, live, and the guests\' MACs once they ping', (t) => {
    if (skip !== null) return t.skip(skip);
    return guard(async () => {
      await waitPing(a!, '10.0.0.2');
      await page!.waitForFunction(() => document.querySelectorAll('#macs tbody tr').length >= 2, undefined, { timeout: 10_000 });
      const stream = await page!.textContent('#stream');
      assert.equal(stream, 'live');
      for (const name of ['vm0', 'vm1']) {
        const r = await row(name);
        assert.ok(r && r.up, `${name}: ${JSON.stringify(r)}`);
        assert.equal(r.held, 0);
      }
      const macs = await page!.$$eval('#macs tbody tr', (trs) => trs.map((tr) => (tr as HTMLElement).dataset.mac));
      assert.ok(macs.includes('52:54:00:ee:00:01') && macs.includes('52:54:00:ee:00:02'), macs.join(' '));
    });
  });

  it('a burst at the paused guest: the held frames rise to the burst on the page, then fall back to 0 after cont', (t) => {
    if (skip !== null) return t.skip(skip);
    return guard(async () => {
      const samplesBefore = Number(await page!.getAttribute('body', 'data-samples'));
      const recv = b!.spawn(`udpburst recv 9000 ${N} 5000`);
      await recv.waitForLine(/UDPBURST listening/, 10_000);
      await b!.stop(); // QEMU stops B's rings: nothing can be delivered to it, every frame waits
      const s = await a!.exec(`udpburst send 10.0.0.2 9000 ${N} 256`, { timeoutMs: 60_000 });
      assert.equal(s.rc, 0, s.output);
      console.log(`# ${s.output.trim().split('\n').at(-1)}`);
      const t0 = Date.now();
      // the guest's own stack may lose a datagram or two of a burst; what reached the switch waits
      await page!.waitForFunction(
        (n) => Number((document.querySelector('#ports tr[data-port="vm1"]') as HTMLElement | null)?.dataset.held) >= n,
        THRESHOLD,
        { timeout: 30_000, polling: 100 },
      );
      // B is paused: the number held stays as it is, and the page must show what the switch counts
      await page!.waitForTimeout(1000);
      const held = await row('vm1');
      const queued = (await sw!.freshStats()).engine.ports.find((p: { name: string }) => p.name === 'vm1').queuedFrames;
      console.log(`# page shows ${held!.held} frames held for vm1, the switch's counters ${queued}: ${held!.cells.join(' | ')}`);
      assert.equal(held!.held, queued);
      if (held!.held < N) {
        // where the missing datagrams went: the sender's own drops, or not seen by the switch at all
        const fromA = await row('vm0');
        const link = await a!.exec('cat /sys/class/net/eth0/statistics/tx_packets /sys/class/net/eth0/statistics/tx_dropped; tc -s qdisc show dev eth0 2>/dev/null | grep -i drop', { timeoutMs: 10_000 });
        console.log(`# only ${held!.held} of ${N} held; vm0 row: ${fromA!.cells.join(' | ')}; A's eth0 tx_packets, tx_dropped, qdisc: ${link.output.replace(/\n/g, ' ')}`);
      }
      assert.ok(held!.waiting, 'vm1 not shown as unable to take frames');
      assert.match(held!.cells[2] ?? '', /frames held/);
      // let the plot show a plateau, then take the picture this project exists for
      await page!.waitForTimeout(1000);
      const plotMax = Number(await page!.getAttribute('#plot-held', 'data-max'));
      const lines = await page!.$$eval('#plot-held polyline[data-port="vm1"]', (ps) => ps.map((p) => p.getAttribute('points')!.split(' ').length));
      assert.equal(plotMax, held!.held, "the plot's maximum");
      assert.ok(lines.length === 1 && lines[0] >= 5, `vm1's line in the plot: ${JSON.stringify(lines)}`);
      const shot = path.join(repoRoot(), 'build', 'web-view.png');
      fs.mkdirSync(path.dirname(shot), { recursive: true });
      await page!.screenshot({ path: shot, fullPage: true });
      console.log(`# screenshot while ${held!.held} frames are held: ${shot}`);
      assert.ok(fs.statSync(shot).size > 10_000);

      await b!.cont();
      await page!.waitForFunction(
        (n) => {
          const tr = document.querySelector('#ports tr[data-port="vm1"]') as HTMLElement | null;
          return tr !== null && tr.dataset.held === '0' && Number(tr.cells[10].textContent!.replace(/,/g, '')) >= n;
        },
        held!.held,
        { timeout: 30_000, polling: 100 },
      );
      const after = await row('vm1');
      console.log(`# after cont the page shows: ${after!.cells.join(' | ')}`);
      await page!.waitForTimeout(1000);
      const shot2 = path.join(repoRoot(), 'build', 'web-view-drained.png');
      await page!.screenshot({ path: shot2, fullPage: true });
      console.log(`# screenshot after the drain: ${shot2}`);
      assert.equal(after!.held, 0);
      assert.equal(after!.waiting, false);
      assert.equal(await page!.getAttribute('#held-total', 'data-held'), '0');
      const r = await recv.done;
      const line = r.lines.find((l) => l.startsWith('UDPBURST received='));
      assert.ok(line, r.output);
      console.log(`# ${line}`);
      assert.ok(Number(parseKeyValues(line).received) >= held!.held, line);
      assert.equal(parseKeyValues(line).inorder, 'yes', line);
      // the page was fed continuously: several samples a second the whole time
      const samples = Number(await page!.getAttribute('body', 'data-samples')) - samplesBefore;
      const secs = (Date.now() - t0) / 1000;
      console.log(`# ${samples} samples in ${secs.toFixed(1)} s`);
      assert.ok(samples >= secs * 2, `${samples} samples in ${secs.toFixed(1)} s`);
    });
  });
});
