// --web-token-file / --metrics-token-file: the web view and the metrics behind a bearer token. Both
// show every tenant's MACs, ports and counters, which the control socket keeps to mode 0600; on a
// TCP port any local user could read them. With a token, a request without
// `Authorization: Bearer <token>` gets 401 (a browser reaches the view through a reverse proxy that
// adds the header; Prometheus with `authorization: {credentials_file: …}`).
import { createHash, timingSafeEqual } from 'node:crypto';
import * as fs from 'node:fs';
import type * as http from 'node:http';
import type { LogFields } from '../log';

/** shortest token taken: a guessable one would be no protection */
export const MIN_TOKEN_LENGTH = 16;
/** a refused request is logged at most this often (one line with the count since), not per request */
const REFUSAL_LOG_MS = 10_000;

/**
 * The token of a token file: its first line, without surrounding blanks. Refused (throws, naming
 * option and file) when the file cannot be read, holds no token, a token shorter than
 * MIN_TOKEN_LENGTH or with blanks in it, or when every user may read it.
 */
export function readTokenFile(file: string, option: string): string {
  let text: string;
  let mode: number;
  try {
    mode = fs.statSync(file).mode;
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(`${option} ${file}: cannot read it: ${(e as Error).message}`);
  }
  if ((mode & 0o004) !== 0) throw new Error(`${option} ${file}: every user may read it (mode 0${(mode & 0o777).toString(8)}): chmod o-r it`);
  const token = text.split('\n')[0].trim();
  if (token === '') throw new Error(`${option} ${file}: holds no token (its first line is the token)`);
  if (/\s/.test(token)) throw new Error(`${option} ${file}: a token is one word, without blanks`);
  if (token.length < MIN_TOKEN_LENGTH) throw new Error(`${option} ${file}: a token of ${token.length} characters: give at least ${MIN_TOKEN_LENGTH} (e.g. openssl rand -hex 32)`);
  return token;
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/** Whether an Authorization header carries the token ("Bearer <token>", the scheme in any case); compared in constant time. */
export function bearerCheck(token: string): (authorization: string | undefined) => boolean {
  const want = digest(token);
  return (authorization) => {
    const m = /^bearer +(\S+) *$/i.exec(authorization ?? '');
    return m !== null && timingSafeEqual(digest(m[1]), want);
  };
}

/**
 * The guard of an HTTP server (what: "web" or "metrics" in its log lines): null when the request
 * may go on; otherwise it has been answered 401. Refusals are logged, at most one line every 10 s.
 */
export function bearerGuard(token: string, what: string, log: (msg: string, fields?: LogFields) => void): (req: http.IncomingMessage, res: http.ServerResponse) => boolean {
  const ok = bearerCheck(token);
  let refused = 0;
  let lastLog = -Infinity;
  return (req, res) => {
    if (ok(req.headers.authorization)) return true;
    refused++;
    const now = Date.now();
    if (now - lastLog >= REFUSAL_LOG_MS) {
      const peer = req.socket.remoteAddress !== undefined ? `${req.socket.remoteAddress}:${req.socket.remotePort}` : 'its Unix socket';
      log(`${what}: refused ${refused} request${refused === 1 ? '' : 's'} without the bearer token (the last from ${peer}, ${req.method} ${req.url?.split('?')[0]})`, { level: 'warn' });
      refused = 0;
      lastLog = now;
    }
    res
      .writeHead(401, { 'WWW-Authenticate': 'Bearer realm="elastic-vhost"', 'Content-Type': 'text/plain', 'Cache-Control': 'no-store' })
      .end('this needs Authorization: Bearer <token> (--web-token-file, --metrics-token-file)\n');
    return false;
  };
}
