/**
 * The soak test's side sessions (a churning front-end, a hostile one) fail now and then for one
 * known reason: the port still had the previous session when the next one connected, so the
 * switch refused the newcomer ("refused a second front-end while one is connected", a warning in
 * its log) and closed it, and the next send or reply wait saw the connection closed. Every failure
 * is counted by kind; any other failure, or more of the known one than the switch's log shows
 * refusals for that socket, fails the soak. Pure, so that test/unit/soak-failures.test.ts checks it.
 */

/** how the front-end side sees a refused connection: the back-end closed it under us */
const REFUSED_SEEN_AS = /connection closed|closed by the back-end|EPIPE|ECONNRESET|broken pipe|connection reset/i;

export type SideSession = 'churn' | 'hostile';

export class SoakFailures {
  /** failures that look like a refused connection, per side session */
  readonly refused: Record<SideSession, number> = { churn: 0, hostile: 0 };
  /** anything else: kind → count, and the first message of each */
  readonly unknown = new Map<string, { count: number; first: string }>();

  note(side: SideSession, e: unknown): void {
    const msg = e instanceof Error ? e.message : String(e);
    if (REFUSED_SEEN_AS.test(msg)) {
      this.refused[side]++;
      return;
    }
    // messages differ in numbers (fds, sizes, ms): the kind is the message with digits blanked
    const kind = `${side}: ${msg.split('\n')[0].replace(/\d+/g, 'N')}`;
    const u = this.unknown.get(kind);
    if (u) u.count++;
    else this.unknown.set(kind, { count: 1, first: msg });
  }

  /**
   * null when every failure is a known one and the switch's log shows at least as many refusals
   * on each side session's socket as that session saw; otherwise what is wrong.
   */
  judge(refusalsLogged: Record<SideSession, number>): string | null {
    const problems: string[] = [];
    for (const [kind, u] of this.unknown) problems.push(`${u.count} × ${kind} (first: ${u.first})`);
    for (const side of ['churn', 'hostile'] as const) {
      if (this.refused[side] > refusalsLogged[side]) {
        problems.push(`the ${side} session saw its connection closed ${this.refused[side]} times, but the switch logged only ${refusalsLogged[side]} refusals of a second front-end on its socket`);
      }
    }
    return problems.length === 0 ? null : `unexpected side-session failures: ${problems.join('; ')}`;
  }

  summary(): string {
    const unknown = [...this.unknown.values()].reduce((n, u) => n + u.count, 0);
    return `${this.refused.churn} churn and ${this.refused.hostile} hostile connections refused while the last was still connected, ${unknown} other failures`;
  }
}

/** refusals the switch logged for the socket whose file name is `file` (e.g. vm2.sock) */
export function refusalsIn(log: readonly string[], file: string): number {
  return log.filter((l) => l.includes('refused a second front-end') && l.includes(`/${file}:`)).length;
}
