// Tests of the C++ addon (native/vhost_native.cc) through its typed front door src/native.ts.
import { PerformanceObserver } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../../src/native';

const PAGE = 4096;

function fdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'vhost-native-'));
}

/** true when fd has close-on-exec set (flags in /proc/self/fdinfo are octal; O_CLOEXEC = 02000000) */
function isCloexec(fd: number): boolean {
  const m = /flags:\s*([0-7]+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  assert.ok(m);
  return (parseInt(m[1], 8) & 0o2000000) !== 0;
}

function isNonblock(fd: number): boolean {
  const m = /flags:\s*([0-7]+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  assert.ok(m);
  return (parseInt(m[1], 8) & 0o4000) !== 0;
}

function tapAvailable(): string | null {
  if (!fs.existsSync('/dev/net/tun')) return '/dev/net/tun is missing';
  try {
    const t = native.openTap('');
    native.close(t.fd);
    return null;
  } catch (e) {
    return `cannot open a TAP device: ${(e as Error).message}`;
  }
}

test('constants', () => {
  assert.equal(native.MAX_WINDOW, 4 * 1024 * 1024 * 1024);
  assert.equal(native.POLL_READABLE, 1);
  assert.equal(native.POLL_WRITABLE, 2);
});

test('memfd + mmap round trip through two mappings of the same fd', () => {
  const fd = native.memfdCreate('roundtrip', 16 * PAGE);
  try {
    assert.equal(fs.fstatSync(fd).size, 16 * PAGE);
    assert.ok(isCloexec(fd));
    const whole = native.mmap(fd, 16 * PAGE, 0);
    const window = native.mmap(fd, 4 * PAGE, 2 * PAGE); // second mapping at an offset
    assert.equal(whole.byteLength, 16 * PAGE);
    assert.equal(window.byteLength, 4 * PAGE);
    const a = new Uint8Array(whole);
    const b = new Uint8Array(window);
    a[2 * PAGE + 10] = 0xab;
    a[6 * PAGE - 1] = 0x5a;
    assert.equal(b[10], 0xab);
    assert.equal(b[4 * PAGE - 1], 0x5a);
    b[100] = 0x42;
    assert.equal(a[2 * PAGE + 100], 0x42);
    // and through the fd itself
    const viaFd = Buffer.alloc(1);
    fs.readSync(fd, viaFd, 0, 1, 2 * PAGE + 10);
    assert.equal(viaFd[0], 0xab);
    native.munmap(whole);
    native.munmap(window);
  } finally {
    native.close(fd);
  }
});

test('munmap detaches; a second munmap is a no-op; foreign buffers are refused', () => {
  const fd = native.memfdCreate('detach', PAGE);
  const ab = native.mmap(fd, PAGE, 0);
  const view = new Uint8Array(ab);
  view[0] = 1;
  native.munmap(ab);
  assert.equal(ab.byteLength, 0);
  assert.equal(view.length, 0);
  native.munmap(ab); // double unmap: nothing happens
  assert.throws(() => native.munmap(new ArrayBuffer(8)), { name: 'TypeError' });
  assert.throws(() => native.munmap({} as ArrayBuffer), { name: 'TypeError' });
  native.close(fd);
});

test('mmap validates its arguments and reports errno', () => {
  const fd = native.memfdCreate('mmap-args', PAGE);
  try {
    assert.throws(() => native.mmap(fd, native.MAX_WINDOW + PAGE, 0), { name: 'RangeError' });
    assert.throws(() => native.mmap(fd, 0, 0), { name: 'RangeError' });
    assert.throws(() => native.mmap(fd, PAGE, -1), { name: 'RangeError' });
    assert.throws(() => native.mmap(fd, PAGE, 1), { code: 'EINVAL' }); // unaligned offset
    assert.throws(() => native.mmap('3' as unknown as number, PAGE, 0), { name: 'TypeError' });
  } finally {
    native.close(fd);
  }
  assert.throws(() => native.mmap(1_000_000, PAGE, 0), (e: NodeJS.ErrnoException) => {
    assert.equal(e.code, 'EBADF');
    assert.match(e.message, /mmap/);
    assert.match(e.message, /EBADF/);
    return true;
  });
});

test('mmap of a full 4 GiB window works (sparse memfd)', () => {
  const fd = native.memfdCreate('big', native.MAX_WINDOW);
  try {
    const ab = native.mmap(fd, native.MAX_WINDOW, 0);
    assert.equal(ab.byteLength, native.MAX_WINDOW);
    const u = new Uint8Array(ab);
    u[u.length - 1] = 9;
    assert.equal(u[u.length - 1], 9);
    native.munmap(ab);
  } finally {
    native.close(fd);
  }
});

test('eventfd counts and reads 0 when empty', () => {
  const fd = native.eventfd(0);
  try {
    assert.ok(isCloexec(fd));
    assert.ok(isNonblock(fd));
    assert.equal(native.eventfdRead(fd), 0);
    native.eventfdWrite(fd);
    native.eventfdWrite(fd, 3);
    assert.equal(native.eventfdRead(fd), 4);
    assert.equal(native.eventfdRead(fd), 0);
  } finally {
    native.close(fd);
  }
  const fd2 = native.eventfd(5);
  assert.equal(native.eventfdRead(fd2), 5);
  native.close(fd2);
  assert.throws(() => native.eventfdRead(-1), { name: 'RangeError' });
  assert.throws(() => native.eventfdWrite(1_000_000), { code: 'EBADF' });
});

test('socketpair + sendmsg/recvmsg pass two fds that refer to the same files', () => {
  const [a, b] = native.socketpair();
  const mem = native.memfdCreate('passed', PAGE);
  const ev = native.eventfd(0);
  try {
    assert.ok(isCloexec(a) && isNonblock(a) && isNonblock(b));
    const out = new Uint8Array([1, 2, 3, 4, 5, 6]);
    assert.equal(native.sendmsg(a, out, 1, 4, [mem, ev]), 4);
    const inBuf = new Uint8Array(16);
    const r = native.recvmsg(b, inBuf, 2, 10, 8);
    assert.equal(r.bytes, 4);
    assert.equal(r.ctrunc, false);
    assert.deepEqual([...inBuf.subarray(2, 6)], [2, 3, 4, 5]);
    assert.equal(r.fds.length, 2);
    const [mem2, ev2] = r.fds;
    assert.notEqual(mem2, mem);
    assert.equal(fs.fstatSync(mem2).ino, fs.fstatSync(mem).ino);
    assert.ok(isCloexec(mem2) && isCloexec(ev2));
    // the same eventfd: write through one, read through the other
    native.eventfdWrite(ev, 7);
    assert.equal(native.eventfdRead(ev2), 7);
    // the same memory: map the received memfd and see writes made through the original fd
    const m = native.mmap(mem, PAGE, 0);
    const m2 = native.mmap(mem2, PAGE, 0);
    new Uint8Array(m)[123] = 77;
    assert.equal(new Uint8Array(m2)[123], 77);
    native.munmap(m);
    native.munmap(m2);
    for (const fd of r.fds) native.close(fd);
  } finally {
    native.close(mem);
    native.close(ev);
    native.close(a);
    native.close(b);
  }
});

test('recvmsg reports ctrunc and returns the fds that did fit', () => {
  const [a, b] = native.socketpair();
  const fds = [native.eventfd(0), native.eventfd(0), native.eventfd(0)];
  try {
    assert.equal(native.sendmsg(a, new Uint8Array([9]), 0, 1, fds), 1);
    const r = native.recvmsg(b, new Uint8Array(4), 0, 4, 1);
    assert.equal(r.bytes, 1);
    assert.equal(r.ctrunc, true);
    assert.equal(r.fds.length, 1);
    for (const fd of r.fds) native.close(fd);
    // maxFds 0: descriptors are dropped by the kernel, ctrunc says so
    assert.equal(native.sendmsg(a, new Uint8Array([8]), 0, 1, fds.slice(0, 1)), 1);
    const r0 = native.recvmsg(b, new Uint8Array(4), 0, 4, 0);
    assert.equal(r0.bytes, 1);
    assert.equal(r0.ctrunc, true);
    assert.deepEqual(r0.fds, []);
  } finally {
    for (const fd of fds) native.close(fd);
    native.close(a);
    native.close(b);
  }
});

test('EAGAIN paths return -1 (or 0 for eventfdRead); peer close gives 0', () => {
  const [a, b] = native.socketpair();
  try {
    const buf = new Uint8Array(65536);
    assert.equal(native.read(b, buf, 0, buf.length), -1);
    const r = native.recvmsg(b, buf, 0, buf.length, 4);
    assert.deepEqual(r, { bytes: -1, fds: [], ctrunc: false });
    // fill the socket until the kernel refuses
    let n = 0;
    let total = 0;
    for (let i = 0; i < 10_000 && n !== -1; i++) {
      n = native.write(a, buf, 0, buf.length);
      if (n > 0) total += n;
    }
    assert.equal(n, -1);
    assert.ok(total > 0);
    assert.equal(native.sendmsg(a, buf, 0, 1024, []), -1);
    // drain, then see the peer's close
    let drained = 0;
    for (;;) {
      const k = native.read(b, buf, 0, buf.length);
      if (k === -1) break;
      drained += k;
    }
    assert.equal(drained, total);
    native.close(a);
    assert.equal(native.read(b, buf, 0, 16), 0);
    assert.equal(native.recvmsg(b, buf, 0, 16, 4).bytes, 0);
  } finally {
    native.close(b);
  }
});

test('read/write validate buffer, offset and length', () => {
  const [a, b] = native.socketpair();
  try {
    const u = new Uint8Array(8);
    assert.throws(() => native.write(a, u, 4, 5), { name: 'RangeError' });
    assert.throws(() => native.write(a, u, -1, 1), { name: 'RangeError' });
    assert.throws(() => native.write(a, u, 0.5, 1), { name: 'RangeError' });
    assert.throws(() => native.write(a, new Uint16Array(4) as unknown as Uint8Array, 0, 1), { name: 'TypeError' });
    assert.throws(() => native.write(a, 'abc' as unknown as Uint8Array, 0, 1), { name: 'TypeError' });
    assert.throws(() => native.sendmsg(a, u, 0, 1, [-1]), { name: 'RangeError' });
    assert.throws(() => native.recvmsg(a, u, 0, 1, 254), { name: 'RangeError' });
    // a subarray view: offsets are relative to the view
    const big = new Uint8Array(32);
    big.set([1, 2, 3, 4], 20);
    assert.equal(native.write(a, big.subarray(16), 4, 4), 4);
    const got = Buffer.alloc(8);
    assert.equal(native.read(b, got, 2, 6), 4);
    assert.deepEqual([...got.subarray(2, 6)], [1, 2, 3, 4]);
    assert.equal(native.write(a, u, 8, 0), 0);
  } finally {
    native.close(a);
    native.close(b);
  }
});

test('errors carry the errno name as code', () => {
  assert.throws(() => native.close(-1), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' });
  assert.throws(() => native.close(1_000_000), (e: NodeJS.ErrnoException) => {
    assert.ok(e instanceof Error);
    assert.equal(e.code, 'EBADF');
    assert.equal(e.errno, -9);
    assert.equal(e.syscall, 'close');
    assert.match(e.message, /^close failed: EBADF/);
    return true;
  });
  assert.throws(() => native.read(1_000_000, new Uint8Array(1), 0, 1), { code: 'EBADF' });
  assert.throws(() => native.unixConnect('/nonexistent-dir/x.sock'), { code: 'ENOENT' });
  assert.throws(() => native.close(undefined as unknown as number), { name: 'TypeError' });
});

function waitFor<T>(what: string, setup: (resolve: (v: T) => void) => void, ms = 2000): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    setup((v) => {
      clearTimeout(timer);
      resolve(v);
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('poll fires on eventfd readability; stop and close work', async () => {
  const fd = native.eventfd(0);
  const calls: Array<[number, number]> = [];
  let notify: ((v: [number, number]) => void) | null = null;
  const poller = native.poll(fd, (status, events) => {
    calls.push([status, events]);
    native.eventfdRead(fd); // consume, or level-triggered polling fires again
    if (notify) notify([status, events]);
  });
  try {
    poller.start(native.POLL_READABLE);
    const first = waitFor<[number, number]>('readable', (r) => (notify = r));
    native.eventfdWrite(fd);
    assert.deepEqual(await first, [0, native.POLL_READABLE]);
    assert.equal(calls.length, 1);

    poller.stop();
    notify = null;
    native.eventfdWrite(fd);
    await sleep(50);
    assert.equal(calls.length, 1, 'no callback while stopped');

    const again = waitFor<[number, number]>('readable after restart', (r) => (notify = r));
    poller.start(native.POLL_READABLE | native.POLL_WRITABLE);
    const [status, events] = await again;
    assert.equal(status, 0);
    assert.ok(events & native.POLL_READABLE);

    poller.close();
    poller.close(); // idempotent
    poller.stop(); // no-op once closed
    assert.throws(() => poller.start(native.POLL_READABLE), { code: 'ERR_POLLER_CLOSED' });
    const n = calls.length;
    native.eventfdWrite(fd);
    await sleep(50);
    assert.equal(calls.length, n, 'no callback after close');
  } finally {
    poller.close();
    native.close(fd);
  }
});

test('poll: close from inside the callback, a thrown error becomes uncaught, bad args', async () => {
  const fd = native.eventfd(1);
  let count = 0;
  const done = waitFor<void>('callback', (resolve) => {
    const p = native.poll(fd, () => {
      count++;
      p.close(); // closing while the callback runs
      resolve();
    });
    p.start(native.POLL_READABLE);
  });
  await done;
  await sleep(30);
  assert.equal(count, 1);

  // two started pollers on one fd are refused (libuv would malfunction); stopped ones may coexist
  const p1 = native.poll(fd, () => {});
  const p2 = native.poll(fd, () => {});
  p1.start(native.POLL_WRITABLE);
  assert.throws(() => p2.start(native.POLL_READABLE), { code: 'EEXIST' });
  p1.stop();
  p2.start(native.POLL_WRITABLE); // fine once the first is stopped
  p2.close();
  p1.close();

  // an exception thrown by the callback goes to process 'uncaughtException'
  const boom = new Error('boom from poll callback');
  const listeners = process.listeners('uncaughtException');
  process.removeAllListeners('uncaughtException');
  const caught = waitFor<unknown>('uncaughtException', (resolve) => process.once('uncaughtException', resolve));
  const p3 = native.poll(fd, () => {
    p3.close();
    throw boom;
  });
  p3.start(native.POLL_READABLE);
  try {
    assert.equal(await caught, boom);
  } finally {
    for (const l of listeners) process.on('uncaughtException', l);
    p3.close();
  }

  assert.throws(() => native.poll(fd, 'x' as unknown as () => void), { name: 'TypeError' });
  assert.throws(() => native.poll(1_000_000, () => {}), { code: 'EBADF' });
  const p4 = native.poll(fd, () => {});
  assert.throws(() => p4.start(0), { name: 'RangeError' });
  p4.close();
  native.close(fd);
});

test('unixListen / unixConnect / unixAccept round trip with the socket mode applied', () => {
  const dir = tmpDir();
  const sock = path.join(dir, 'vhost.sock');
  try {
    const lfd = native.unixListen(sock, 16, 0o660);
    assert.ok(isCloexec(lfd) && isNonblock(lfd));
    const st = fs.statSync(sock);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o7777, 0o660);
    assert.equal(native.unixAccept(lfd), -1, 'nothing pending yet');

    const c = native.unixConnect(sock);
    assert.ok(isNonblock(c) && isCloexec(c));
    const s = native.unixAccept(lfd);
    assert.ok(s >= 0);
    assert.ok(isNonblock(s) && isCloexec(s));
    assert.equal(native.write(c, new Uint8Array([1, 2, 3]), 0, 3), 3);
    const got = new Uint8Array(3);
    assert.equal(native.read(s, got, 0, 3), 3);
    assert.deepEqual([...got], [1, 2, 3]);

    // a live listener is not replaced
    assert.throws(() => native.unixListen(sock, 1, 0o600), { code: 'EADDRINUSE' });
    native.close(c);
    native.close(s);
    native.close(lfd);

    // the socket file is stale now: connect is refused, listen replaces it
    assert.ok(fs.existsSync(sock));
    assert.throws(() => native.unixConnect(sock), { code: 'ECONNREFUSED' });
    const lfd2 = native.unixListen(sock, 4, 0o600);
    assert.equal(fs.statSync(sock).mode & 0o7777, 0o600);
    native.close(lfd2);

    // a regular file in the way is never deleted
    const file = path.join(dir, 'not-a-socket');
    fs.writeFileSync(file, 'keep me');
    assert.throws(() => native.unixListen(file, 1, 0o600), { code: 'EADDRINUSE' });
    assert.equal(fs.readFileSync(file, 'utf8'), 'keep me');

    assert.throws(() => native.unixListen(path.join(dir, 'x'.repeat(120)), 1, 0o600), { name: 'RangeError' });
    assert.throws(() => native.unixListen(sock, 1, 0o10000), { name: 'RangeError' });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('unixListen: the socket path appears only once it accepts connections (no window between bind and listen)', async () => {
  const dir = tmpDir();
  const sock = path.join(dir, 'race.sock');
  // a second thread spins until the path exists and connects at once, as a reconnecting QEMU does
  const src = `
    const { parentPort, workerData } = require('node:worker_threads');
    const fs = require('node:fs');
    const { native } = require(workerData.native);
    parentPort.on('message', () => {
      parentPort.postMessage('spinning');
      while (!fs.existsSync(workerData.sock)) {}
      try {
        native.close(native.unixConnect(workerData.sock));
        parentPort.postMessage('ok');
      } catch (e) {
        parentPort.postMessage(e.code);
      }
    });
    parentPort.postMessage('ready');`;
  const w = new Worker(src, { eval: true, workerData: { sock, native: require.resolve('../../src/native') } });
  const next = (): Promise<string> => new Promise((r) => w.once('message', r));
  try {
    assert.equal(await next(), 'ready');
    const results: string[] = [];
    for (let i = 0; i < 300; i++) {
      const spinning = next();
      w.postMessage('go');
      assert.equal(await spinning, 'spinning');
      const got = next();
      const lfd = native.unixListen(sock, 4, 0o600);
      results.push(await got);
      native.close(lfd);
      fs.unlinkSync(sock);
    }
    assert.deepEqual(results.filter((r) => r !== 'ok'), [], 'every connect to a path that exists is accepted');
    assert.deepEqual(fs.readdirSync(dir), [], 'no temporary name left behind');
  } finally {
    await w.terminate();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('openTap opens a TAP device with a vnet header', (t) => {
  const why = tapAvailable();
  if (why) {
    t.skip(why);
    return;
  }
  const tap = native.openTap('');
  try {
    assert.ok(tap.fd >= 0);
    assert.ok(tap.name.length > 0 && tap.name.length < 16, `name ${tap.name}`);
    assert.ok(isCloexec(tap.fd) && isNonblock(tap.fd));
    native.tapSetVnetHdrSize(tap.fd, 12);
    native.tapSetOffload(tap.fd, 0);
    assert.throws(() => native.tapSetVnetHdrSize(tap.fd, 1), { code: 'EINVAL' }); // < sizeof(virtio_net_hdr)
  } finally {
    native.close(tap.fd);
  }
  assert.throws(() => native.openTap('x'.repeat(16)), { name: 'RangeError' });
  assert.throws(() => native.tapSetOffload(1_000_000, 0), { code: 'EBADF' });
});

test('copy: memmove between two Uint8Arrays (also overlapping), bounds-checked, allocating nothing', () => {
  const a = new Uint8Array(4096);
  const b = new Uint8Array(new ArrayBuffer(8192), 100, 4000); // an offset view
  for (let i = 0; i < a.length; i++) a[i] = (i * 7) & 0xff;
  native.copy(b, 3, a, 5, 3000);
  for (let i = 0; i < 3000; i++) assert.equal(b[3 + i], a[5 + i]);
  assert.equal(b[2], 0);
  assert.equal(b[3003], 0);
  // within one array, overlapping: memmove semantics
  native.copy(a, 10, a, 0, 100);
  for (let i = 0; i < 100; i++) assert.equal(a[10 + i], (i * 7) & 0xff);
  native.copy(a, 0, a, 0, 0);
  assert.throws(() => native.copy(b, 3990, a, 0, 20), RangeError);
  assert.throws(() => native.copy(b, 0, a, 4090, 20), RangeError);
  assert.throws(() => native.copy(b, -1, a, 0, 1), RangeError);
  assert.throws(() => native.copy(new Uint16Array(4) as unknown as Uint8Array, 0, a, 0, 1), TypeError);
});

test('copy allocates nothing: no garbage collection over 1e6 calls, where a view per call shows many', async () => {
  const a = new Uint8Array(4096);
  const b = new Uint8Array(4096);
  const count = async (fn: () => void): Promise<number> => {
    let n = 0;
    const obs = new PerformanceObserver((list) => (n += list.getEntries().length));
    obs.observe({ entryTypes: ['gc'] });
    fn();
    await sleep(50); // gc entries are delivered asynchronously
    obs.disconnect();
    return n;
  };
  native.copy(b, 0, a, 0, 1500); // warm up
  const gcs = await count(() => {
    for (let i = 0; i < 1_000_000; i++) native.copy(b, i & 1023, a, (i * 3) & 1023, 1500);
  });
  const control = await count(() => {
    for (let i = 0; i < 1_000_000; i++) b.set(a.subarray((i * 3) & 1023, ((i * 3) & 1023) + 1500), i & 1023);
  });
  assert.ok(control > 5, `the detector sees the control's allocations (${control} collections)`);
  assert.ok(gcs <= 2, `${gcs} collections during 1e6 native copies (control: ${control})`);
});

test('no fd leak over 200 create/close cycles of every fd-producing call', async () => {
  const dir = tmpDir();
  const sock = path.join(dir, 'leak.sock');
  const tap = tapAvailable() === null;
  const before = fdCount();
  try {
    const buf = new Uint8Array(8);
    for (let i = 0; i < 200; i++) {
      native.close(native.eventfd(i));
      const mem = native.memfdCreate(`leak${i}`, PAGE);
      native.munmap(native.mmap(mem, PAGE, 0));
      native.mmap(mem, PAGE, 0); // left to the finalizer
      const [a, b] = native.socketpair();
      native.sendmsg(a, buf, 0, 1, [mem, mem]);
      const r = native.recvmsg(b, buf, 0, 8, 4);
      assert.equal(r.fds.length, 2);
      for (const fd of r.fds) native.close(fd);
      native.sendmsg(a, buf, 0, 1, [mem, mem, mem]);
      for (const fd of native.recvmsg(b, buf, 0, 8, 1).fds) native.close(fd); // truncated
      native.close(mem);
      native.close(a);
      native.close(b);
      const lfd = native.unixListen(sock, 4, 0o600);
      const c = native.unixConnect(sock);
      const s = native.unixAccept(lfd);
      native.close(s);
      native.close(c);
      native.close(lfd);
      const ev = native.eventfd(1);
      const p = native.poll(ev, () => {});
      p.start(native.POLL_READABLE);
      p.close();
      native.close(ev);
      if (tap) native.close(native.openTap('').fd);
      // failing calls must not leak either
      assert.throws(() => native.unixConnect(path.join(dir, 'missing.sock')));
      assert.throws(() => native.openTap('x'.repeat(16)));
    }
    await sleep(10); // let the uv_close callbacks run
    assert.equal(fdCount(), before);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('clockRead fills the clock cell with CLOCK_REALTIME as [seconds, microseconds], returning nothing', () => {
  const w = native.clockWord();
  assert.equal(w.length, 2);
  const before = Date.now();
  assert.equal(native.clockRead(), undefined);
  const after = Date.now();
  const ms = w[0] * 1000 + w[1] / 1000;
  assert.ok(w[1] < 1_000_000, `microseconds ${w[1]}`);
  assert.ok(ms >= before - 1 && ms <= after + 1, `${ms} not within [${before}, ${after}]`);
  assert.equal(native.clockWord()[0], w[0], 'one cell per thread, shared by every view');
});
