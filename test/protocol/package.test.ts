// The package as another project gets it: `npm pack` of this checkout, installed into a fresh
// directory, the addon built there by the package's install script, the 30-line example compiled
// there against the installed type declarations (strict, the declarations themselves checked)
// and run there, with a TypeScript front-end on each of its sockets passing frames both ways.
//
// Offline: npm's cache holds the dependencies' tarballs (npm ci fetched them) but not the
// registry's metadata a version range needs, so a plain `npm install ./elastic-vhost-*.tgz`
// cannot resolve offline. The fresh project gets a lockfile instead — this checkout's locked
// dependency versions and the tarball — and `npm ci --offline` installs from it: extraction,
// hoisting, bin links and the install script are npm's own, only the resolution is given.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FrontEnd, waitFor } from './frontend';
import { BROADCAST, ethFrame, type Guest, MAC_A, MAC_B, netHdr, packet, receiveN, sendPacket } from './helpers';
import type { VhostUserPort } from '../../src/ports/vhost-user/port';

const root = path.resolve(__dirname, '..', '..', '..');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));

function run(cmd: string, args: string[], cwd: string, timeoutMs = 180_000): SpawnSyncReturns<string> {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: timeoutMs, env: { ...process.env, npm_config_update_notifier: 'false' } });
  if (r.error) throw r.error;
  return r;
}

function ok(r: SpawnSyncReturns<string>, what: string): string {
  assert.equal(r.status, 0, `${what} failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

test('npm pack: a package another project installs offline (the addon built by its install script), compiles against with the types checked, and runs the two-port example of', { timeout: 600_000 }, async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-pack-'));
  try {
    // ---- what is packed: the library and the command, their declarations, what the addon is built from
    const packed = JSON.parse(ok(run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', tmp], root), 'npm pack'))[0];
    assert.equal(packed.name, 'elastic-vhost');
    assert.equal(packed.version, pkg.version);
    const files: string[] = packed.files.map((f: { path: string }) => f.path);
    for (const f of [
      'package.json', 'README.md', 'CHANGELOG.md', 'CMakeLists.txt', 'native/build.js', 'native/vhost_native.cc',
      'dist/src/index.js', 'dist/src/index.d.ts', 'dist/src/api/switch.d.ts', 'dist/src/cli/main.js', 'dist/src/workers/ring-thread.js', 'src/ops/web/index.html',
    ]) {
      assert.ok(files.includes(f), `${f} is packed`);
    }
    const stray = files.filter((f) => !(f.startsWith('dist/src/') || ['package.json', 'README.md', 'CHANGELOG.md', 'CMakeLists.txt', 'src/ops/web/index.html'].includes(f) || f.startsWith('native/')));
    assert.deepEqual(stray, [], 'no tests, benchmarks, QEMU glue, build output or sources beyond these');
    assert.deepEqual(files.filter((f) => f.endsWith('.map')), [], 'no source maps (their sources are not packed)');
    const tgz = path.join(tmp, packed.filename);

    // ---- a fresh project installs it
    const app = path.join(tmp, 'app');
    fs.mkdirSync(app);
    const spec = `file:../${packed.filename}`;
    const lock = JSON.parse(fs.readFileSync(path.join(root, 'package-lock.json'), 'utf8'));
    const packages: Record<string, unknown> = {
      '': { name: 'app', dependencies: { 'elastic-vhost': spec } },
      'node_modules/elastic-vhost': { version: pkg.version, resolved: spec, integrity: packed.integrity, hasInstallScript: true, license: pkg.license, dependencies: pkg.dependencies, bin: pkg.bin, engines: pkg.engines },
    };
    // the package's dependencies, where npm hoists them in the project (the same paths as here)
    for (const [k, v] of Object.entries(lock.packages as Record<string, { dev?: boolean }>)) if (k !== '' && !v.dev) packages[k] = v;
    fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, dependencies: { 'elastic-vhost': spec } }, null, 2));
    fs.writeFileSync(path.join(app, 'package-lock.json'), JSON.stringify({ name: 'app', lockfileVersion: 3, requires: true, packages }, null, 2));
    ok(run('npm', ['ci', '--offline', '--no-audit', '--no-fund', '--foreground-scripts'], app, 300_000), 'npm ci of the packed tarball');
    assert.ok(fs.existsSync(tgz));
    const installed = path.join(app, 'node_modules', 'elastic-vhost');
    assert.ok(fs.existsSync(path.join(installed, 'build', 'native', 'Release', 'vhost_native.node')), 'the install script built the addon in the installed package');
    assert.equal(ok(run(path.join(app, 'node_modules', '.bin', 'elastic-vhost'), ['--print-capabilities'], app), 'the elastic-vhost command').trim(), '{"type":"net"}');

    // only the entry point is exported: the inside is not an API
    const deep = run(process.execPath, ['-e', "require('elastic-vhost/dist/src/engine/switch')"], app);
    assert.notEqual(deep.status, 0);
    assert.match(deep.stderr, /ERR_PACKAGE_PATH_NOT_EXPORTED/);

    // ---- the example compiled against the installed declarations, strictly, the declarations checked too
    fs.copyFileSync(path.join(root, 'examples', 'two-port-switch.ts'), path.join(app, 'two-port-switch.ts'));
    fs.writeFileSync(
      path.join(app, 'bad.ts'),
      [
        "import { createSwitch, vhostUserPort } from 'elastic-vhost';",
        "createSwitch({ poolMb: '64' });",
        "vhostUserPort({ name: 'vm0' });",
        'createSwitch().on(\'portUp\', (e) => e.mac);',
        '',
      ].join('\n'),
    );
    const tsc = require.resolve('typescript/bin/tsc', { paths: [root] });
    const compilerOptions = {
      target: 'ES2022',
      strict: true,
      types: ['node'],
      typeRoots: [path.join(root, 'node_modules', '@types')],
      skipLibCheck: false,
      outDir: 'out',
    };
    // Node's resolution with "exports" (node16), and the older one that reads "types" (node10)
    for (const [module, moduleResolution] of [['node16', 'node16'], ['commonjs', 'node10']]) {
      fs.writeFileSync(path.join(app, 'tsconfig.json'), JSON.stringify({ compilerOptions: { ...compilerOptions, module, moduleResolution }, files: ['two-port-switch.ts'] }, null, 2));
      ok(run(process.execPath, [tsc, '-p', 'tsconfig.json'], app), `tsc (${moduleResolution}) of the example`);
      const wrong = run(process.execPath, [tsc, '--noEmit', '--strict', '--module', module, '--moduleResolution', moduleResolution, '--types', 'node', '--typeRoots', compilerOptions.typeRoots[0], 'bad.ts'], app);
      assert.notEqual(wrong.status, 0, `tsc (${moduleResolution}) took bad.ts`);
      const errs = wrong.stdout.split('\n').filter((l) => l.startsWith('bad.ts('));
      assert.deepEqual(errs.map((l) => l.slice(0, l.indexOf(','))), ['bad.ts(2', 'bad.ts(3', 'bad.ts(4'], wrong.stdout);
      assert.match(errs[0], /Type 'string' is not assignable to type 'number'/);
      assert.match(errs[2], /Property 'mac' does not exist on type 'PortUpEvent'/);
    }

    // ---- the compiled example runs there; two front-ends exchange frames through it
    const sockets = path.join(tmp, 'sockets');
    fs.mkdirSync(sockets);
    const child = spawn(process.execPath, [path.join(app, 'out', 'two-port-switch.js'), sockets], { cwd: app, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: string[] = [];
    let partial = '';
    child.stdout.on('data', (d: Buffer) => {
      partial += d.toString();
      const lines = partial.split('\n');
      partial = lines.pop()!;
      out.push(...lines);
    });
    let errText = '';
    child.stderr.on('data', (d: Buffer) => (errText += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const fes: FrontEnd[] = [];
    try {
      await waitFor(() => out.includes(`listening on ${path.join(sockets, 'vm1.sock')}`), 10_000, `the example to listen (output:\n${out.join('\n')}${errText})`);
      const guest = async (name: string): Promise<Guest> => {
        const fe = FrontEnd.connect(path.join(sockets, `${name}.sock`), `fe-${name}`);
        fes.push(fe);
        const { rx, tx } = await fe.start({ rxBuffers: [64, 2048] });
        // the switch runs in the other process: the helpers need a port only to name it
        return { port: { name } as VhostUserPort, fe, rx, tx };
      };
      const a = await guest('vm0');
      const b = await guest('vm1');
      await sendPacket(b, packet(netHdr(12), ethFrame(100, 1, MAC_B, BROADCAST)));
      assert.deepEqual((await receiveN(a, 1, 5000)).map((p) => p.frame), [ethFrame(100, 1, MAC_B, BROADCAST)]);
      const ab = Array.from({ length: 10 }, (_, i) => ethFrame(200 + i, 10 + i, MAC_A, MAC_B));
      for (const f of ab) await sendPacket(a, packet(netHdr(12), f));
      assert.deepEqual((await receiveN(b, 10, 5000)).map((p) => p.frame), ab);
      const ba = Array.from({ length: 10 }, (_, i) => ethFrame(300 + i, 30 + i, MAC_B, MAC_A));
      for (const f of ba) await sendPacket(b, packet(netHdr(12), f));
      assert.deepEqual((await receiveN(a, 10, 5000)).map((p) => p.frame), ba);
      await waitFor(() => out.some((l) => /^event: vm0 up as connection \d+$/.test(l)) && out.some((l) => /^event: vm1 up as connection \d+$/.test(l)), 5000, `the ports' events in:\n${out.join('\n')}`);
    } finally {
      for (const fe of fes) fe.close();
      child.kill('SIGTERM');
    }
    assert.equal(await exited, 0, `exit status (output:\n${out.join('\n')}\n${errText})`);
    assert.ok(out.includes('closing: 21 frames in, 0 dropped'), out.join('\n'));
    assert.equal(errText, '');
    assert.deepEqual(fs.readdirSync(sockets), [], 'its sockets removed when it closed');
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
