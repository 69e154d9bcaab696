// Every default is defined once (src/defaults.ts): the engine, the vhost-user session, the command
// line (its values and its --help), the config schema and the READMEs' tables all say the same.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DEFAULTS, GiB, MiB } from '../../src/defaults';
import { Switch } from '../../src/engine/switch';
import { DEFAULT_MAX_MAPPED, DEFAULT_MAX_MEM_SLOTS, DEFAULT_MAX_QUEUE_PAIRS, DEFAULT_MAX_TOTAL_MAPPED } from '../../src/vhost-user/session';
import { DEFAULT_MAX_CHAIN_DESCRIPTORS } from '../../src/virtio/split-ring';
import { MacTable } from '../../src/engine/classifier';
import { CONFIG_SCHEMA } from '../../src/cli/config';
import { settingsOf } from '../../src/cli/main';
import { octalString, SETTINGS } from '../../src/cli/options';

const root = path.resolve(__dirname, '..', '..', '..');
const cli = path.join(root, 'dist', 'src', 'cli', 'main.js');
const D = DEFAULTS as unknown as Record<string, unknown>;

test('the engine and the session take their defaults from DEFAULTS', () => {
  const sw = new Switch({ tickMs: 0 });
  try {
    assert.deepEqual(sw.settings(), {
      poolBytes: DEFAULTS.poolMb * MiB,
      blockSize: DEFAULTS.blockSize,
      holdTimeMs: DEFAULTS.holdMs,
      unknownPolicy: DEFAULTS.unknown,
      defaultShareLimit: (DEFAULTS.poolMb * MiB) / DEFAULTS.blockSize / 2,
      macAgeMs: DEFAULTS.macAgeS * 1000,
      macTableSize: DEFAULTS.macTableSize,
      maxPorts: DEFAULTS.maxPorts,
      queues: DEFAULTS.queues,
      maxFrameLen: DEFAULTS.maxFrameBytes + 12,
    });
    assert.equal(sw.stats().pool.blocks, (DEFAULTS.poolMb * MiB) / DEFAULTS.blockSize);
  } finally {
    sw.close();
  }
  const t = new MacTable();
  assert.equal(t.capacity, DEFAULTS.macTableSize);
  assert.equal(t.ageMs, DEFAULTS.macAgeS * 1000);
  assert.equal(DEFAULT_MAX_QUEUE_PAIRS, DEFAULTS.queues);
  assert.equal(DEFAULT_MAX_MEM_SLOTS, DEFAULTS.maxRegions);
  assert.equal(DEFAULT_MAX_MAPPED, DEFAULTS.maxGuestMemGb * GiB);
  assert.equal(DEFAULT_MAX_TOTAL_MAPPED, DEFAULTS.maxTotalMemGb * GiB);
  assert.equal(DEFAULT_MAX_CHAIN_DESCRIPTORS, DEFAULTS.maxChainDescriptors);
});

test('the command line, its --help and the config schema have the same defaults', () => {
  const { settings } = settingsOf(['node', 'elastic-vhost', '--socket', '/tmp/defaults-test.sock']);
  // one entry per option: its wrapped lines joined
  const help = spawnSync(process.execPath, [cli, '--help'], { encoding: 'utf8' })
    .stdout.split(/\n(?=  -)/)
    .map((e) => e.replace(/\s+/g, ' '));
  const props = CONFIG_SCHEMA.properties as Record<string, { default?: unknown }>;
  let checked = 0;
  for (const d of SETTINGS) {
    const v = D[d.key];
    if (v === undefined) {
      assert.equal((settings as unknown as Record<string, unknown>)[d.key], undefined, d.key);
      assert.equal(props[d.key].default, undefined, d.key);
      continue;
    }
    assert.equal((settings as unknown as Record<string, unknown>)[d.key], v, `settings.${d.key}`);
    assert.equal(props[d.key].default, d.kind === 'octal' ? octalString(v as number) : v, `schema default of ${d.key}`);
    const long = d.flags.match(/--[a-z-]+/)![0];
    const line = help.find((l) => l.trimStart().startsWith(`${long} `) || l.includes(`, ${long} `))!;
    assert.ok(line, `${long} in --help`);
    if (d.kind === 'int') assert.match(line, new RegExp(`\\(default: ${v}\\)`), `--help of ${long}`);
    if (d.kind === 'octal') assert.match(line, new RegExp(`\\(default: ${octalString(v as number)}\\)`), `--help of ${long}`);
    if (d.kind === 'choice') assert.match(line, new RegExp(`default: "${v}"`), `--help of ${long}`);
    checked++;
  }
  assert.ok(checked >= 18, `${checked} settings checked`);
});

test("the READMEs' default tables say what DEFAULTS says", () => {
  const rows = (file: string) =>
    fs
      .readFileSync(path.join(root, file), 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('| `'))
      .map((l) => l.split('|').map((c) => c.trim()));
  // README.md, "Limits": | `--opt N`[, `--opt2 N`] | default[, default2] | …
  const flagKey = new Map(SETTINGS.map((d) => [d.flags.match(/--[a-z-]+/)![0], d.key]));
  let n = 0;
  for (const [, opts, dflt] of rows('README.md')) {
    const flags = [...opts.matchAll(/`(--[a-z-]+)/g)].map((m) => m[1]).filter((f) => flagKey.has(f));
    if (flags.length === 0) continue;
    const values = dflt.split(',').map((v) => v.trim().split(' ')[0]);
    flags.forEach((f, i) => {
      const key = flagKey.get(f)!;
      if (D[key] === undefined) assert.match(dflt, /half the pool/, f);
      else assert.equal(Number(values[i]), D[key], `README.md: ${f}`);
      n++;
    });
  }
  assert.ok(n >= 9, `${n} README.md rows checked`);
  // src/engine/README.md, "Options": | `key` | default | meaning |
  const engine: Record<string, string> = {
    poolBytes: `${DEFAULTS.poolMb} MiB`,
    blockSize: `${DEFAULTS.blockSize}`,
    holdTimeMs: `${DEFAULTS.holdMs}`,
    unknownPolicy: `'${DEFAULTS.unknown}'`,
    macAgeMs: (DEFAULTS.macAgeS * 1000).toLocaleString('en').replace(/,/g, ' '),
    macTableSize: `${DEFAULTS.macTableSize}`,
    maxPorts: `${DEFAULTS.maxPorts}`,
  };
  const seen = new Set<string>();
  for (const [, key, dflt] of rows('src/engine/README.md')) {
    const k = key.replace(/`/g, '');
    if (!(k in engine)) continue;
    assert.equal(dflt.replace(/`/g, ''), engine[k], `src/engine/README.md: ${k}`);
    seen.add(k);
  }
  assert.deepEqual([...seen].sort(), Object.keys(engine).sort());
});
