// Running a fast-check property inside node:test. A failing case is shrunk to a minimal one and
// reported with fast-check's own message: the counterexample, how often it was shrunk, and the
// seed and path that replay it. Replay with
//   FC_SEED=<seed> FC_PATH=<path> node --test dist/test/unit/<file>.test.js
// (FC_RUNS=N runs N cases instead of the test's bound, for a longer search.) Each run's seed goes to
// the test's diagnostics, so a pass is reproducible too.
import fc from 'fast-check';

export interface PropertyBounds {
  /** cases per npm test run (kept small enough for the suite's time) */
  numRuns: number;
}

/** fast-check parameters: the test's bound, or the replay / longer search asked for in the environment */
export function propertyParams(bounds: PropertyBounds): fc.Parameters<unknown> {
  const env = process.env;
  const p: fc.Parameters<unknown> = { numRuns: env.FC_RUNS ? Number(env.FC_RUNS) : bounds.numRuns };
  if (env.FC_SEED) p.seed = Number(env.FC_SEED);
  if (env.FC_PATH) {
    p.path = env.FC_PATH;
    p.endOnFailure = true;
  }
  return p;
}

/** fast-check's report, the minimal case's own error, and how to replay it */
function report(message: string | undefined, error: unknown): string {
  const m = /seed: (-?\d+), path: "([^"]*)"/.exec(message ?? '');
  const why = error instanceof Error ? error.message : String(error);
  return `${message ?? 'property failed'}\nThe minimal case failed with: ${why}${m ? `\nReplay: FC_SEED=${m[1]} FC_PATH=${m[2]} node --test <this test file>` : ''}`;
}

type Diag = { diagnostic: (msg: string) => void };

/** fc.check, the seed to the diagnostics, fast-check's report thrown on failure */
export function checkProperty<Ts>(t: Diag, property: fc.IProperty<Ts>, bounds: PropertyBounds): void {
  const details = fc.check(property, propertyParams(bounds) as fc.Parameters<Ts>);
  t.diagnostic(`fast-check: ${details.numRuns} cases from seed ${details.seed}${details.numShrinks > 0 ? `, shrunk ${details.numShrinks} times` : ''}`);
  if (details.failed) throw new Error(report(fc.defaultReportMessage(details), details.errorInstance));
}

/** the same for an async property */
export async function checkAsyncProperty<Ts>(t: Diag, property: fc.IAsyncProperty<Ts>, bounds: PropertyBounds): Promise<void> {
  const details = await fc.check(property, propertyParams(bounds) as fc.Parameters<Ts>);
  t.diagnostic(`fast-check: ${details.numRuns} cases from seed ${details.seed}${details.numShrinks > 0 ? `, shrunk ${details.numShrinks} times` : ''}`);
  if (details.failed) throw new Error(report(await fc.asyncDefaultReportMessage(details), details.errorInstance));
}
