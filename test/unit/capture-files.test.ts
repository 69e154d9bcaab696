// Where a capture may write (src/ops/capture.ts): a file is created, never truncated, never
// followed (O_CREAT|O_EXCL|O_NOFOLLOW), only inside the capture directory (--capture-dir), which
// the switch makes (0700) when it is missing and refuses when it is a symlink or others may write
// it; a relative name resolves in it, a name that escapes it (.., an absolute path elsewhere, a
// symlinked directory) is refused with the reason; a capture is capped at the switch's
// --capture-max-mb unless it asks for less, and one asking for more is refused.
// With the ctl group able to start captures (--ctl-mode 0660), a capture file was `open(file, 'w')`
// as root: any file on the host overwritten with guest-chosen bytes.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CaptureManager, PCAP_FILE_HEADER, pcapFileHeader } from '../../src/ops/capture';
import type { CapturablePort } from '../../src/ops/capture';

/** a port nothing is sent through: the capture's file is what is looked at */
const port = (name: string): CapturablePort => ({ name, setCapture: () => {} });

describe('capture files', () => {
  let top: string;
  let dir: string;
  let elsewhere: string;
  let caps: CaptureManager;
  const logs: string[] = [];
  const CAP = 1024 * 1024;

  before(() => {
    top = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-capfiles-'));
    dir = path.join(top, 'captures'); // made by the switch
    elsewhere = path.join(top, 'elsewhere');
    fs.mkdirSync(elsewhere);
    caps = new CaptureManager((m) => logs.push(m), { dir, maxBytes: CAP });
  });
  after(() => {
    caps.stopAllSync();
    fs.rmSync(top, { recursive: true, force: true });
  });

  /** starts a capture of a fresh port to file; the error's message, or null when it started */
  const attempt = (file: string, limits = {}): string | null => {
    try {
      caps.start(port(`p${Math.random()}`), file, limits);
      return null;
    } catch (e) {
      return (e as Error).message;
    }
  };

  it('a relative name is created in the capture directory (made, mode 0700), mode 0600, the pcap header in it', async () => {
    const p = port('vm0');
    const s = caps.start(p, 'vm0.pcap');
    const file = path.join(dir, 'vm0.pcap');
    assert.equal(s.file, file);
    assert.equal(fs.lstatSync(dir).mode & 0o7777, 0o700);
    assert.equal(fs.statSync(file).mode & 0o7777, 0o600);
    await caps.stop('vm0');
    assert.deepEqual([...fs.readFileSync(file)], [...pcapFileHeader()]);
    assert.equal(fs.existsSync(path.join(process.cwd(), 'vm0.pcap')), false, 'nothing in the current directory');
  });

  it('an absolute name inside the capture directory, and one in an existing subdirectory', async () => {
    assert.equal(attempt(path.join(dir, 'abs.pcap')), null);
    fs.mkdirSync(path.join(dir, 'sub'));
    assert.equal(attempt('sub/in-sub.pcap'), null);
    assert.ok(fs.statSync(path.join(dir, 'sub', 'in-sub.pcap')).isFile());
    caps.stopAllSync();
  });

  it('an existing file is never truncated nor overwritten', () => {
    const file = path.join(dir, 'kept.pcap');
    fs.writeFileSync(file, 'keep me');
    assert.match(attempt('kept.pcap') ?? '', /kept\.pcap exists: a capture never overwrites a file/);
    assert.equal(fs.readFileSync(file, 'utf8'), 'keep me');
  });

  it('a symlink at the name is not followed: the file it points at keeps its bytes', () => {
    const victim = path.join(elsewhere, 'passwd');
    fs.writeFileSync(victim, 'root:x:0:0');
    fs.symlinkSync(victim, path.join(dir, 'link.pcap'));
    assert.match(attempt('link.pcap') ?? '', /link\.pcap exists/);
    assert.equal(fs.readFileSync(victim, 'utf8'), 'root:x:0:0');
  });

  it('names that escape the capture directory are refused, and nothing is created', () => {
    for (const bad of ['../escape.pcap', 'sub/../../escape.pcap', path.join(elsewhere, 'abs.pcap'), path.join(top, 'escape.pcap'), '/etc/evil.pcap']) {
      assert.match(attempt(bad) ?? '', /outside the capture directory/, bad);
    }
    assert.equal(attempt(dir) === null, false, 'the directory itself is no file');
    assert.deepEqual(fs.readdirSync(elsewhere).filter((f) => f.endsWith('.pcap')), []);
    assert.equal(fs.existsSync(path.join(top, 'escape.pcap')), false);
    assert.equal(fs.existsSync('/etc/evil.pcap'), false);
  });

  it('a symlinked directory inside the capture directory is not followed', () => {
    fs.symlinkSync(elsewhere, path.join(dir, 'linked'));
    assert.match(attempt('linked/x.pcap') ?? '', /linked: a symlink or not a directory/);
    assert.equal(attempt(path.join(dir, 'linked', 'y.pcap')) === null, false);
    assert.deepEqual(fs.readdirSync(elsewhere).filter((f) => f.endsWith('.pcap')), []);
  });

  it(`a capture without max-bytes is capped at --capture-max-mb; one asking for more is refused`, async () => {
    const s = caps.start(port('capped'), 'capped.pcap');
    assert.equal(s.maxBytes, CAP);
    await caps.stop('capped');
    const less = caps.start(port('less'), 'less.pcap', { maxBytes: 4096 });
    assert.equal(less.maxBytes, 4096);
    await caps.stop('less');
    assert.match(attempt('more.pcap', { maxBytes: CAP + 1 }) ?? '', /max-bytes 1048577 is more than the switch allows \(--capture-max-mb: 1048576 bytes\)/);
    assert.equal(fs.existsSync(path.join(dir, 'more.pcap')), false);
    assert.ok(PCAP_FILE_HEADER < CAP);
  });
});

describe('the capture directory', () => {
  const made: string[] = [];
  after(() => {
    for (const d of made) fs.rmSync(d, { recursive: true, force: true });
  });
  const top = (): string => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-capdir-'));
    made.push(d);
    return d;
  };
  const startIn = (dir: string): string | null => {
    const caps = new CaptureManager(() => {}, { dir, maxBytes: 1 << 20 });
    try {
      caps.start(port('p'), 'x.pcap');
      caps.stopAllSync();
      return null;
    } catch (e) {
      return (e as Error).message;
    }
  };

  it('a symlink as the capture directory is refused; nothing is written where it points', () => {
    const t = top();
    fs.mkdirSync(path.join(t, 'real'), { mode: 0o700 });
    fs.symlinkSync(path.join(t, 'real'), path.join(t, 'captures'));
    assert.match(startIn(path.join(t, 'captures')) ?? '', /captures: the capture directory is a symlink or not a directory/);
    assert.deepEqual(fs.readdirSync(path.join(t, 'real')), []);
  });

  it('a capture directory others may write is refused', () => {
    const t = top();
    const d = path.join(t, 'captures');
    fs.mkdirSync(d);
    fs.chmodSync(d, 0o777);
    assert.match(startIn(d) ?? '', /others may write it/);
    assert.deepEqual(fs.readdirSync(d), []);
  });

  it('a capture directory of another user is refused', { skip: process.getuid?.() !== 0 ? 'needs root (chown)' : false }, () => {
    const t = top();
    const d = path.join(t, 'captures');
    fs.mkdirSync(d, { mode: 0o700 });
    fs.chownSync(d, 65534, 65534);
    assert.match(startIn(d) ?? '', /belongs to uid 65534, not to the switch's/);
  });

  it('no capture directory at all: every capture refused, saying which option gives one', () => {
    const caps = new CaptureManager(() => {}, { dir: null, maxBytes: 1 << 20 });
    assert.throws(() => caps.start(port('p'), 'x.pcap'), /no capture directory: give --capture-dir DIR/);
  });
});
