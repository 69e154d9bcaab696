import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DESTINATION_FLOOD,
  DESTINATION_UNKNOWN,
  LEARN_NEW,
  LEARN_REFRESHED,
  LEARN_REFUSED,
  MacTable,
  classify,
  formatMac,
  macHi,
  macLo,
  parseMac,
  keyHi,
  keyLo,
  macKey,
} from '../../src/engine/classifier';
import { copyBytes } from '../../src/datapath/copy';
import { frame } from './engine-helpers';

const hiOf = keyHi;
const loOf = keyLo;
/** set the table's clock, then call */
function at<T>(t: MacTable, now: number, f: () => T): T {
  t.time[0] = now;
  return f();
}

test('MAC parse/format round trip, hi/lo from bytes', () => {
  const k = parseMac('52:54:00:ab:cd:ef');
  assert.equal(formatMac(k), '52:54:00:ab:cd:ef');
  assert.equal(parseMac('FF-FF-FF-FF-FF-FF'), 2 ** 48 - 1);
  assert.throws(() => parseMac('52:54:00:ab:cd'));
  const b = new Uint8Array([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
  assert.equal(macKey(macHi(b, 0), macLo(b, 0)), k);
  const top = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
  assert.equal(macLo(top, 0), -1, 'signed int32, so it is never boxed');
  assert.equal(macKey(macHi(top, 0), macLo(top, 0)), 2 ** 48 - 1);
  assert.equal(macKey(keyHi(2 ** 48 - 1), keyLo(2 ** 48 - 1)), 2 ** 48 - 1);
});

test('classify: known, flood (broadcast, multicast), unknown', () => {
  const t = new MacTable(64);
  const a = parseMac('52:54:00:00:00:01');
  assert.equal(at(t, 0, () => t.learn(hiOf(a), loOf(a), 3)), LEARN_NEW);
  assert.equal(classify(t, frame('52:54:00:00:00:01', '52:54:00:00:00:02', 0), 12), 3);
  assert.equal(classify(t, frame('ff:ff:ff:ff:ff:ff', '52:54:00:00:00:02', 0), 12), DESTINATION_FLOOD);
  assert.equal(classify(t, frame('01:00:5e:00:00:fb', '52:54:00:00:00:02', 0), 12), DESTINATION_FLOOD);
  assert.equal(classify(t, frame('33:33:00:00:00:01', '52:54:00:00:00:02', 0), 12), DESTINATION_FLOOD);
  assert.equal(classify(t, frame('52:54:00:00:00:09', '52:54:00:00:00:02', 0), 12), DESTINATION_UNKNOWN);
});

test('learn: refresh, move, static wins, aging', () => {
  const t = new MacTable(64, 1000);
  const k = parseMac('52:54:00:00:00:07');
  assert.equal(at(t, 0, () => t.learn(hiOf(k), loOf(k), 1)), LEARN_NEW);
  assert.equal(at(t, 10, () => t.learn(hiOf(k), loOf(k), 1)), LEARN_REFRESHED);
  assert.equal(at(t, 20, () => t.learn(hiOf(k), loOf(k), 2)), LEARN_NEW, 'moved');
  assert.equal(at(t, 500, () => t.lookup(hiOf(k), loOf(k))), 2);
  assert.equal(at(t, 1021, () => t.lookup(hiOf(k), loOf(k))), -1, 'aged out');
  assert.equal(t.size, 0);
  assert.equal(at(t, 2000, () => t.learn(hiOf(k), loOf(k), 2)), LEARN_NEW);
  assert.equal(at(t, 3001, () => t.learn(hiOf(k), loOf(k), 2)), LEARN_NEW, 'an aged entry relearned counts as new');
  const s = parseMac('52:54:00:00:00:08');
  assert.ok(t.setStatic(hiOf(s), loOf(s), 5));
  assert.equal(at(t, 0, () => t.learn(hiOf(s), loOf(s), 6)), LEARN_REFUSED);
  assert.equal(at(t, 1e12, () => t.lookup(hiOf(s), loOf(s))), 5, 'static never ages');
});

test('MAC table against a Map model: random learn/remove/removePort/expire', () => {
  const t = new MacTable(256, 1e9);
  const model = new Map<number, number>();
  let seed = 12345;
  const rnd = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % n);
  for (let step = 0; step < 20000; step++) {
    const key = parseMac('52:54:00:00:00:00') + rnd(300);
    const op = rnd(10);
    if (op < 6) {
      const port = rnd(8);
      const r = at(t, 0, () => t.learn(hiOf(key), loOf(key), port));
      if (r === LEARN_REFUSED) assert.ok(model.size >= 192 && !model.has(key));
      else model.set(key, port);
    } else if (op < 9) {
      assert.equal(t.remove(hiOf(key), loOf(key)), model.delete(key));
    } else if (rnd(20) === 0) {
      const port = rnd(8);
      let n = 0;
      for (const [k, p] of model) if (p === port) (model.delete(k), n++);
      assert.equal(t.removePort(port), n);
    }
    if (step % 97 === 0) {
      assert.equal(t.size, model.size);
      for (let i = 0; i < 300; i++) {
        const k = parseMac('52:54:00:00:00:00') + i;
        assert.equal(at(t, 0, () => t.lookup(hiOf(k), loOf(k))), model.get(k) ?? -1);
      }
    }
  }
});

test('copyBytes: every alignment and length, no overlap, within bounds', () => {
  const src = new Uint8Array(300);
  for (let i = 0; i < src.length; i++) src[i] = (i * 31 + 7) & 0xff;
  for (const srcOwner of [src, src.subarray(1), src.subarray(3)]) {
    for (let so = 0; so < 5; so++) {
      for (let dof = 0; dof < 5; dof++) {
        for (const len of [0, 1, 5, 47, 48, 49, 63, 64, 65, 100, 200, srcOwner.length - so]) {
          const dst = new Uint8Array(320).fill(0xee);
          copyBytes(dst, dof, srcOwner, so, len);
          for (let i = 0; i < dst.length; i++) {
            const want = i >= dof && i < dof + len ? srcOwner[so + i - dof] : 0xee;
            if (dst[i] !== want) assert.fail(`so=${so} dof=${dof} len=${len} byte ${i}: ${dst[i]} != ${want}`);
          }
        }
      }
    }
  }
});
