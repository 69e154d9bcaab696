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
import fc from 'fast-check';
import { checkProperty } from './property';

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

type MacOp = { k: 'learn'; mac: number; port: number } | { k: 'remove'; mac: number } | { k: 'removePort'; port: number };
const macOp: fc.Arbitrary<MacOp> = fc.oneof(
  { weight: 120, arbitrary: fc.record({ k: fc.constant('learn' as const), mac: fc.nat(299), port: fc.nat(7) }) },
  { weight: 45, arbitrary: fc.record({ k: fc.constant('remove' as const), mac: fc.nat(299) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('removePort' as const), port: fc.nat(7) }) },
);

test('MAC table against a Map model (fast-check): random learn/remove/removePort; refused only when 3/4 full', (t) => {
  const base = parseMac('52:54:00:00:00:00');
  let refused = 0;
  checkProperty(
    t,
    fc.property(fc.array(macOp, { minLength: 1, maxLength: 2000, size: 'max' }), (ops) => {
      const tb = new MacTable(256, 1e9);
      const model = new Map<number, number>();
      const compare = (step: number): void => {
        assert.equal(tb.size, model.size, `step ${step}: size`);
        for (let i = 0; i < 300; i++) {
          const k = base + i;
          assert.equal(at(tb, 0, () => tb.lookup(hiOf(k), loOf(k))), model.get(k) ?? -1, `step ${step}: lookup of ${formatMac(k)}`);
        }
      };
      for (const [step, op] of ops.entries()) {
        if (op.k === 'learn') {
          const key = base + op.mac;
          const r = at(tb, 0, () => tb.learn(hiOf(key), loOf(key), op.port));
          if (r === LEARN_REFUSED) {
            assert.ok(model.size >= 192 && !model.has(key), `step ${step}: learning refused with ${model.size} entries`);
            refused++;
          } else model.set(key, op.port);
        } else if (op.k === 'remove') {
          const key = base + op.mac;
          assert.equal(tb.remove(hiOf(key), loOf(key)), model.delete(key), `step ${step}: remove`);
        } else {
          let n = 0;
          for (const [k, p] of model) if (p === op.port) (model.delete(k), n++);
          assert.equal(tb.removePort(op.port), n, `step ${step}: removePort(${op.port})`);
        }
        if (step % 97 === 0) compare(step);
      }
      compare(ops.length);
    }),
    { numRuns: 60 },
  );
  t.diagnostic(`${refused} learns refused (table 3/4 full)`);
  if (!process.env.FC_PATH) assert.ok(refused > 0, 'the table filled up');
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
