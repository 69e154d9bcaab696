import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  accelArgs,
  agentArgs,
  buildGuestArgs,
  consoleArgs,
  guestCmdline,
  macForIndex,
  memoryArgs,
  MIGRATION_SAFE_TCG_RAM_KIB,
  qemuOpts,
  qmpArgs,
  selectAccel,
  socketChardevArgs,
  socketNetdevArg,
  socketNicArgs,
  vhostUserNicArgs,
  virtioNetDeviceArgs,
} from '../../qemu-glue/args';

/** Value following `flag` at its n-th occurrence. */
function valuesOf(args: string[], flag: string): string[] {
  const out: string[] = [];
  args.forEach((a, i) => {
    if (a === flag) out.push(args[i + 1]!);
  });
  return out;
}

describe('qemu-glue/args', () => {
  it('qemuOpts: on/off booleans, skips undefined, doubles commas', () => {
    assert.equal(qemuOpts('x', { a: true, b: false, c: undefined, d: 'p,q', e: 3 }), 'x,a=on,b=off,d=p,,q,e=3');
  });

  it('accelerator arguments', () => {
    assert.deepEqual(accelArgs('tcg'), ['-accel', 'tcg', '-cpu', 'max']);
    assert.deepEqual(accelArgs('kvm'), ['-accel', 'kvm', '-cpu', 'host']);
  });

  it('selectAccel: env override, tcg default, rejects junk', () => {
    assert.equal(selectAccel({}), 'tcg');
    assert.equal(selectAccel({ ELASTIC_VHOST_ACCEL: 'kvm' }), 'kvm');
    assert.equal(selectAccel({ ELASTIC_VHOST_ACCEL: 'TCG' }), 'tcg');
    assert.equal(selectAccel({ ELASTIC_VHOST_ACCEL: 'auto' }), 'tcg');
    assert.throws(() => selectAccel({ ELASTIC_VHOST_ACCEL: 'hvf' }));
  });

  it('shared memfd memory + machine memory-backend', () => {
    assert.deepEqual(memoryArgs({ sizeMiB: 512 }), [
      '-m', '512M',
      '-object', 'memory-backend-memfd,id=mem,size=512M,share=on',
      '-machine', 'q35,memory-backend=mem',
    ]);
    assert.deepEqual(memoryArgs({ sizeMiB: 128, machine: 'pc', shared: false }), ['-m', '128M', '-machine', 'pc']);
    assert.throws(() => memoryArgs({ sizeMiB: 1 }));
  });

  it('memory in KiB: the same size for -m and the backend, a multiple of 8 KiB (QEMU rounds -m up to it)', () => {
    assert.deepEqual(memoryArgs({ sizeKiB: MIGRATION_SAFE_TCG_RAM_KIB }), [
      '-m', '262152K',
      '-object', 'memory-backend-memfd,id=mem,size=262152K,share=on',
      '-machine', 'q35,memory-backend=mem',
    ]);
    // not a multiple of 64 pages: QEMU 7.2's TCG dirty tracking takes its per-page path
    assert.notEqual(MIGRATION_SAFE_TCG_RAM_KIB % 256, 0);
    assert.throws(() => memoryArgs({ sizeKiB: 262148 }), /multiple of 8/);
    assert.throws(() => memoryArgs({ sizeKiB: 1024 }));
  });

  it('socket chardev: back-end server (reconnect) vs QEMU server', () => {
    assert.deepEqual(socketChardevArgs({ id: 'c0', path: '/tmp/s.sock' }), ['-chardev', 'socket,id=c0,path=/tmp/s.sock,reconnect=1']);
    assert.deepEqual(socketChardevArgs({ id: 'c0', path: '/tmp/s.sock', server: 'qemu' }), [
      '-chardev', 'socket,id=c0,path=/tmp/s.sock,server=on,wait=off',
    ]);
    assert.deepEqual(socketChardevArgs({ id: 'c0', path: '/t', reconnect: 5 }), ['-chardev', 'socket,id=c0,path=/t,reconnect=5']);
  });

  it('vhost-user NIC: chardev, netdev, device with vectors=0 and empty romfile', () => {
    const a = vhostUserNicArgs({ id: 'net0', socketPath: '/run/ev/p1.sock', mac: '52:54:00:EE:00:01' });
    assert.deepEqual(a, [
      '-chardev', 'socket,id=net0-chr,path=/run/ev/p1.sock,reconnect=1',
      '-netdev', 'vhost-user,id=net0,chardev=net0-chr',
      '-device', 'virtio-net-pci,netdev=net0,mac=52:54:00:ee:00:01,vectors=0,romfile=',
    ]);
  });

  it('vhost-user NIC: toggles, queue sizes, QEMU as server, multiqueue', () => {
    const a = vhostUserNicArgs({
      id: 'n1',
      socketPath: '/s',
      mac: macForIndex(7),
      server: 'qemu',
      queues: 2,
      toggles: { mrg_rxbuf: false, event_idx: true, indirect_desc: false },
      rxQueueSize: 1024,
    });
    assert.equal(valuesOf(a, '-chardev')[0], 'socket,id=n1-chr,path=/s,server=on,wait=off');
    assert.equal(valuesOf(a, '-netdev')[0], 'vhost-user,id=n1,chardev=n1-chr,queues=2');
    assert.equal(
      valuesOf(a, '-device')[0],
      'virtio-net-pci,netdev=n1,mac=52:54:00:ee:00:07,vectors=0,romfile=,rx_queue_size=1024,mrg_rxbuf=off,event_idx=on,indirect_desc=off,mq=on',
    );
  });

  it('vhost-user NIC with packed virtqueues: packed=on (and vectors=0 for TCG)', () => {
    const a = vhostUserNicArgs({ id: 'n0', socketPath: '/s', mac: macForIndex(2), toggles: { packed: true } });
    assert.equal(valuesOf(a, '-device')[0], 'virtio-net-pci,netdev=n0,mac=52:54:00:ee:00:02,vectors=0,romfile=,packed=on');
  });

  it('virtio-net device: vectors null keeps QEMU default, rejects bad MAC', () => {
    assert.deepEqual(virtioNetDeviceArgs({ netdev: 'n0', mac: macForIndex(1), vectors: null }), [
      '-device', 'virtio-net-pci,netdev=n0,mac=52:54:00:ee:00:01,romfile=',
    ]);
    assert.throws(() => virtioNetDeviceArgs({ netdev: 'n0', mac: '52:54:00:zz:00:01' }));
    assert.throws(() => virtioNetDeviceArgs({ netdev: 'bad id', mac: macForIndex(1) }));
  });

  it('macForIndex', () => {
    assert.equal(macForIndex(0), '52:54:00:ee:00:00');
    assert.equal(macForIndex(0x1ab), '52:54:00:ee:01:ab');
    assert.throws(() => macForIndex(70000));
  });

  it('-netdev socket links for switch-less self tests', () => {
    assert.equal(socketNetdevArg('n0', { mode: 'listen', port: 4000 }), 'socket,id=n0,listen=127.0.0.1:4000');
    assert.equal(socketNetdevArg('n0', { mode: 'connect', port: 4000 }), 'socket,id=n0,connect=127.0.0.1:4000');
    assert.equal(
      socketNetdevArg('n0', { mode: 'mcast', group: '230.0.0.1', port: 1234, localaddr: '127.0.0.1' }),
      'socket,id=n0,mcast=230.0.0.1:1234,localaddr=127.0.0.1',
    );
    assert.equal(
      socketNetdevArg('n0', { mode: 'udp', localPort: 5000, remotePort: 5001 }),
      'socket,id=n0,udp=127.0.0.1:5001,localaddr=127.0.0.1:5000',
    );
    assert.deepEqual(socketNicArgs({ id: 'n0', mac: macForIndex(2), link: { mode: 'listen', port: 1 } }), [
      '-netdev', 'socket,id=n0,listen=127.0.0.1:1',
      '-device', 'virtio-net-pci,netdev=n0,mac=52:54:00:ee:00:02,romfile=',
    ]);
  });

  it('console, agent and QMP sockets', () => {
    assert.deepEqual(consoleArgs({ kind: 'file', path: '/tmp/c.log' }), [
      '-chardev', 'file,id=con,path=/tmp/c.log', '-device', 'isa-serial,chardev=con,index=0',
    ]);
    assert.deepEqual(consoleArgs({ kind: 'socket', path: '/tmp/c.sock' }), [
      '-chardev', 'socket,id=con,path=/tmp/c.sock,server=on,wait=on', '-device', 'isa-serial,chardev=con,index=0',
    ]);
    assert.deepEqual(consoleArgs({ kind: 'none' }), []);
    assert.deepEqual(agentArgs('/tmp/a.sock'), [
      '-chardev', 'socket,id=agent,path=/tmp/a.sock,server=on,wait=off', '-device', 'isa-serial,chardev=agent,index=1',
    ]);
    assert.deepEqual(qmpArgs('/tmp/q.sock'), ['-qmp', 'unix:/tmp/q.sock,server=on,wait=off']);
  });

  it('guest kernel command line: ev.* params, base64 run script, rejects spaces', () => {
    const c = guestCmdline({ role: 'iperf-client', ip: '10.0.0.1/24', peer: '10.0.0.2', time: 3, udp: true, bw: '10M' });
    assert.equal(
      c,
      'console=ttyS0 quiet loglevel=3 panic=-1 ev.role=iperf-client ev.ip=10.0.0.1/24 ev.peer=10.0.0.2 ev.time=3 ev.udp=1 ev.bw=10M',
    );
    const r = guestCmdline({ role: 'run', run: 'echo hi there' }, ['mitigations=off']);
    assert.match(r, /^console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off ev\.role=run ev\.run=/);
    const b64 = r.split('ev.run=')[1]!;
    assert.equal(Buffer.from(b64, 'base64').toString(), 'echo hi there');
    assert.throws(() => guestCmdline({ peer: '10.0.0.2 x' }));
    assert.equal(guestCmdline({ extra: { foo: 'bar' } }), 'console=ttyS0 quiet loglevel=3 panic=-1 ev.foo=bar');
    assert.throws(() => guestCmdline({ extra: { 'Bad-Key': 1 } }));
  });

  it('whole VM: order and the essential flags', () => {
    const a = buildGuestArgs({
      name: 'vm1',
      kernel: '/k',
      initrd: '/i',
      append: 'console=ttyS0',
      memMiB: 256,
      accel: 'tcg',
      console: { kind: 'socket', path: '/w/con.sock' },
      agentSocket: '/w/agent.sock',
      qmpSocket: '/w/qmp.sock',
      nics: [{ kind: 'vhost-user', id: 'net0', socketPath: '/w/p0.sock', mac: macForIndex(1) }],
    });
    assert.deepEqual(a.slice(0, 4), ['-nodefaults', '-no-user-config', '-nographic', '-no-reboot']);
    assert.deepEqual(valuesOf(a, '-name'), ['vm1']);
    assert.deepEqual(valuesOf(a, '-accel'), ['tcg']);
    assert.deepEqual(valuesOf(a, '-cpu'), ['max']);
    assert.deepEqual(valuesOf(a, '-object'), ['memory-backend-memfd,id=mem,size=256M,share=on']);
    assert.deepEqual(valuesOf(a, '-machine'), ['q35,memory-backend=mem']);
    assert.deepEqual(valuesOf(a, '-kernel'), ['/k']);
    assert.deepEqual(valuesOf(a, '-initrd'), ['/i']);
    assert.deepEqual(valuesOf(a, '-append'), ['console=ttyS0']);
    assert.deepEqual(valuesOf(a, '-smp'), ['1']);
    assert.deepEqual(valuesOf(a, '-qmp'), ['unix:/w/qmp.sock,server=on,wait=off']);
    assert.deepEqual(valuesOf(a, '-chardev'), [
      'socket,id=con,path=/w/con.sock,server=on,wait=on',
      'socket,id=agent,path=/w/agent.sock,server=on,wait=off',
      'socket,id=net0-chr,path=/w/p0.sock,reconnect=1',
    ]);
    assert.deepEqual(valuesOf(a, '-device'), [
      'isa-serial,chardev=con,index=0',
      'isa-serial,chardev=agent,index=1',
      'virtio-net-pci,netdev=net0,mac=52:54:00:ee:00:01,vectors=0,romfile=',
    ]);
    // every flag that takes a value has one
    for (const f of ['-m', '-object', '-machine', '-chardev', '-netdev', '-device']) {
      for (const v of valuesOf(a, f)) assert.ok(v && !v.startsWith('-'), `${f} ${v}`);
    }
  });
});
