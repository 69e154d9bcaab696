/**
 * libvirt as a new user would run it: Debian's libvirtd and virtlogd (started here with -d when
 * they are not running), two domains of type qemu defined from the README's own XML
 * (contrib/libvirt-domain.xml: memfd shared memory, <interface type='vhostuser'> in client mode,
 * the TCG vectors=0 workaround), each on a socket of elastic-vhost given to libvirt's QEMU group
 * with --socket-group. libvirt runs QEMU as libvirt-qemu, so without that option QEMU could not
 * connect. The guests ping each other through the switch: 0 % loss both ways.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { guestCmdline, macForIndex } from '../../qemu-glue/args';
import { ensureGuestImages } from '../../qemu-glue/launcher';
import { Libvirt, domainXml } from '../../qemu-glue/libvirt';
import { SwitchProcess } from '../../qemu-glue/switch-process';
import { lookupId } from '../../src/cli/socket-owner';
import { echo, workDir } from './harness';

/** libvirt's QEMU group on Debian (qemu.conf's default) */
const QEMU_GROUP = process.env.ELASTIC_VHOST_LIBVIRT_GROUP ?? 'libvirt-qemu';
const PINGS = 20;

/** the guest's script: wait for the peer, then PINGS pings; results as EV-OUT lines on its console */
function pingScript(peer: string): string {
  return [
    'i=0',
    `until ping -c 1 -W 1 ${peer} > /dev/null 2>&1; do i=$((i + 1)); [ $i -ge 90 ] && break; done`,
    `ping -c ${PINGS} -i 0.2 -W 2 ${peer}`,
  ].join('\n');
}

describe('two libvirt domains through elastic-vhost', { timeout: 400_000 }, () => {
  const dir = workDir('libvirt');
  let lv: Libvirt | undefined;
  let sw: SwitchProcess | undefined;
  let skip: string | null = null;
  let failed = false;
  const names = [0, 1].map((i) => `ev-test-${process.pid}-${i}`);
  const consoles = [0, 1].map((i) => path.join(dir, `console${i}.log`));

  before(async () => {
    try {
      lv = await Libvirt.start();
    } catch (e) {
      skip = `libvirtd cannot start here: ${(e as Error).message}`;
      console.log(`# skipped: ${skip}`);
      return;
    }
    console.log(`# libvirt: ${lv.startedDaemons.length ? `started ${lv.startedDaemons.join(', ')}` : 'libvirtd and virtlogd were running already'}`);
    const gid = lookupId('group', QEMU_GROUP);
    assert.ok(gid !== null, `no group ${QEMU_GROUP} (set ELASTIC_VHOST_LIBVIRT_GROUP to libvirt's QEMU group)`);
    // as contrib/elastic-vhost.service makes its RuntimeDirectory: the group may enter, no one else
    fs.chownSync(dir, 0, gid);
    fs.chmodSync(dir, 0o750);
    // a copy of the guest images: libvirt relabels (chowns) the kernel and initrd it boots
    const img = ensureGuestImages();
    for (const f of [img.kernel, img.initrd]) fs.copyFileSync(f, path.join(dir, path.basename(f)));
    sw = new SwitchProcess({
      workDir: dir,
      sockets: ['vm0.sock', 'vm1.sock'],
      extraArgs: ['--pool-mb', '32', '--socket-group', QEMU_GROUP, '--socket-mode', '0660'],
      echo,
    });
    await sw.start();
    for (const [i, name] of names.entries()) {
      const xml = domainXml({
        NAME: name,
        MAC: macForIndex(i + 1),
        SOCKET: sw.socketPaths[i],
        KERNEL: path.join(dir, path.basename(img.kernel)),
        INITRD: path.join(dir, path.basename(img.initrd)),
        CMDLINE: guestCmdline({ role: 'run', ip: `10.0.0.${i + 1}/24`, name: `lv${i}`, stay: true, run: pingScript(`10.0.0.${2 - i}`) }),
        CONSOLE_LOG: consoles[i],
      });
      fs.writeFileSync(path.join(dir, `${name}.xml`), xml);
    }
  });

  after(async () => {
    if (failed) {
      for (const [i, name] of names.entries()) {
        console.log(`# ${name} console:\n${fs.existsSync(consoles[i]) ? fs.readFileSync(consoles[i], 'utf8').split('\n').slice(-20).join('\n') : '(none)'}`);
        console.log(`# ${name} QEMU log:\n${lv?.qemuLog(name) ?? ''}`);
      }
      if (sw) console.log(`# switch log:\n${sw.log.slice(-30).join('\n')}`);
    }
    await lv?.stop();
    await sw?.stop();
    if (!failed) fs.rmSync(dir, { recursive: true, force: true });
  });

  const guard = async (fn: () => Promise<void>) => {
    try {
      await fn();
    } catch (e) {
      failed = true;
      throw e;
    }
  };

  it('the sockets belong to libvirt\'s QEMU group, mode 0660', (t) => {
    if (skip !== null) return t.skip(skip);
    return guard(async () => {
      const gid = lookupId('group', QEMU_GROUP);
      for (const p of sw!.socketPaths) {
        const st = fs.statSync(p);
        assert.ok(st.isSocket(), p);
        assert.equal(st.gid, gid, `${p} gid`);
        assert.equal(st.mode & 0o777, 0o660, `${p} mode ${(st.mode & 0o777).toString(8)}`);
      }
    });
  });

  it('virsh define + start of both domains from the README\'s XML: QEMU (as libvirt-qemu) connects to the switch', (t) => {
    if (skip !== null) return t.skip(skip);
    return guard(async () => {
      const from = sw!.log.length;
      for (const name of names) await lv!.defineAndStart(name, path.join(dir, `${name}.xml`));
      for (const port of ['vm0', 'vm1']) await sw!.waitLog(new RegExp(`${port}: front-end connected`), 30_000, from);
      const qemuUid = lookupId('passwd', process.env.ELASTIC_VHOST_LIBVIRT_USER ?? 'libvirt-qemu');
      for (const name of names) {
        assert.equal(await lv!.domainState(name), 'running');
        // the case the option is for: QEMU is not root, the socket is not its own
        const pid = fs.readFileSync(`/run/libvirt/qemu/${name}.pid`, 'utf8').trim();
        const uid = Number(/^Uid:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
        console.log(`# ${name}: QEMU pid ${pid} runs as uid ${uid}`);
        assert.equal(uid, qemuUid);
      }
    });
  });

  it(`the domains ping each other through elastic-vhost: ${PINGS} pings each way, 0 % loss`, (t) => {
    if (skip !== null) return t.skip(skip);
    return guard(async () => {
      const results: string[] = [];
      for (const [i, file] of consoles.entries()) {
        const end = Date.now() + 180_000;
        let text = '';
        while (!/EV-RESULT role=run/.test(text)) {
          if (Date.now() > end) throw new Error(`${names[i]}: no result on its console within 180 s:\n${text.slice(-2000)}`);
          await new Promise((r) => setTimeout(r, 500));
          text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
        }
        const summary = /EV-OUT (\d+) packets transmitted, (\d+) packets received, ([\d.]+)% packet loss/.exec(text);
        const rtt = /EV-OUT round-trip min\/avg\/max = (\S+)/.exec(text);
        assert.ok(summary, `${names[i]}: no ping summary:\n${text.slice(-2000)}`);
        results.push(`${names[i]} -> 10.0.0.${2 - i}: ${summary[1]} sent, ${summary[2]} received, ${summary[3]} % loss, rtt ${rtt?.[1] ?? '?'} ms`);
        assert.equal(Number(summary[1]), PINGS, summary[0]);
        assert.equal(Number(summary[2]), PINGS, summary[0]);
        assert.match(text, /EV-RESULT role=run rc=0/);
      }
      for (const r of results) console.log(`# ${r}`);
      const st = (await sw!.freshStats()).engine;
      const names_ = st.ports.map((p: { name: string; rxFrames: number }) => `${p.name}: ${p.rxFrames} frames in`).join(', ');
      console.log(`# switch: ${names_}; dropped ${st.total.dropped}`);
      assert.equal(st.total.dropped, 0);
    });
  });
});
