// --web-token-file / --metrics-token-file (src/ops/auth.ts): the token is the file's first line; a
// file that is missing, empty, too short a token or readable by every user is refused naming the
// option; the check compares in constant time and takes only "Bearer <token>".
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { bearerCheck, MIN_TOKEN_LENGTH, readTokenFile } from '../../src/ops/auth';

test('a token file: its first line, trimmed; refused when missing, short, or readable by everyone', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ev-token-'));
  try {
    const file = path.join(dir, 'token');
    const token = 'a'.repeat(MIN_TOKEN_LENGTH);
    fs.writeFileSync(file, `${token}\n`, { mode: 0o640 });
    assert.equal(readTokenFile(file, '--web-token-file'), token);
    assert.throws(() => readTokenFile(path.join(dir, 'nope'), '--web-token-file'), /^Error: --web-token-file .*nope: cannot read it: ENOENT/);
    fs.writeFileSync(file, '\n', { mode: 0o600 });
    assert.throws(() => readTokenFile(file, '--metrics-token-file'), /--metrics-token-file .*token: holds no token/);
    fs.writeFileSync(file, 'short\n');
    assert.throws(() => readTokenFile(file, '--web-token-file'), new RegExp(`a token of 5 characters: give at least ${MIN_TOKEN_LENGTH}`));
    fs.writeFileSync(file, `${token} with spaces\n`);
    assert.throws(() => readTokenFile(file, '--web-token-file'), /a token is one word/);
    fs.writeFileSync(file, `${token}\n`);
    fs.chmodSync(file, 0o644);
    assert.throws(() => readTokenFile(file, '--web-token-file'), /every user may read it \(mode 0644\): chmod o-r/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('bearerCheck: "Bearer <token>" only, the scheme in any case', () => {
  const t = 'z'.repeat(40);
  const ok = bearerCheck(t);
  assert.equal(ok(`Bearer ${t}`), true);
  assert.equal(ok(`bearer ${t}`), true);
  assert.equal(ok(`Bearer  ${t} `), true);
  for (const bad of [undefined, '', t, `Bearer ${t}z`, `Bearer ${t.slice(1)}`, `Basic ${t}`, 'Bearer ', `Bearer ${t} ${t}`]) assert.equal(ok(bad), false, String(bad));
});
