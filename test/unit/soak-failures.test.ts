// The soak test's judgement of its side sessions' failures (test/e2e/soak-failures.ts): only the
// known one (refused while the last session was still connected, and logged so by the switch).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SoakFailures, refusalsIn } from '../e2e/soak-failures';

const log = [
  'listening on /tmp/ev-soak-x/vm2.sock',
  '/tmp/ev-soak-x/vm2.sock: refused a second front-end while one is connected',
  '/tmp/ev-soak-x/vm2.sock: refused a second front-end while one is connected',
  '/tmp/ev-soak-x/vm3.sock: refused a second front-end while one is connected',
  'vm3: invalid message header: session closed',
];

test('soak failures: refusals the switch logged are accepted, as many as it logged', () => {
  assert.equal(refusalsIn(log, 'vm2.sock'), 2);
  assert.equal(refusalsIn(log, 'vm3.sock'), 1);
  assert.equal(refusalsIn(log, 'vm1.sock'), 0);
  const f = new SoakFailures();
  f.note('churn', new Error('churn: connection closed by the back-end'));
  f.note('churn', new Error('sendmsg failed: EPIPE (Broken pipe)'));
  f.note('hostile', new Error('sendmsg failed: ECONNRESET (Connection reset by peer)'));
  assert.equal(f.judge({ churn: 2, hostile: 1 }), null);
  // one refusal more than the switch logged: something else closed the connection
  f.note('churn', new Error('churn: connection closed'));
  assert.match(f.judge({ churn: 2, hostile: 1 }) ?? '', /closed 3 times, but the switch logged only 2/);
});

test('soak failures: any other failure fails the soak, counted by kind', () => {
  const f = new SoakFailures();
  f.note('churn', new Error('churn: no reply within 2000 ms'));
  f.note('churn', new Error('churn: no reply within 2001 ms'));
  f.note('hostile', new TypeError("Cannot read properties of undefined (reading 'x')"));
  const why = f.judge({ churn: 10, hostile: 10 }) ?? '';
  assert.match(why, /2 × churn: churn: no reply within N ms/);
  assert.match(why, /1 × hostile: Cannot read properties/);
  assert.match(f.summary(), /3 other failures/);
});
