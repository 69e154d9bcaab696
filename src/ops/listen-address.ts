// Where the web view (--web) and the metrics (--metrics) listen: a TCP port ("[ADDR:]PORT", each
// option's own parser) or a Unix socket, "unix:PATH[,mode=OCTAL]" (mode 0600 unless given). A Unix
// socket is reached only by who may enter its directory and write the socket: a reverse proxy or a
// local scraper, not every local user as a loopback port is.
import * as path from 'node:path';

export interface TcpAddress {
  host: string;
  port: number;
}
export interface UnixAddress {
  path: string;
  mode: number;
}
export type ListenAddress = TcpAddress | UnixAddress;

export const isUnix = (a: ListenAddress): a is UnixAddress => 'path' in a;

export const UNIX_FORM = 'unix:PATH[,mode=OCTAL]';

/** "unix:PATH[,mode=OCTAL]" → its address (PATH made absolute); null when s is not of the unix: form; throws when it is and is wrong. */
export function parseUnixAddress(s: string, what: string): UnixAddress | null {
  if (!s.startsWith('unix:')) return null;
  const [p, ...opts] = s.slice('unix:'.length).split(',');
  const bad = (why: string): Error => new Error(`${what ? `${what} ` : ''}"${s}": ${why}; want ${UNIX_FORM}, e.g. unix:/run/elastic-vhost/web.sock,mode=0660`);
  if (p === '') throw bad('no PATH');
  let mode = 0o600;
  for (const o of opts) {
    const m = /^mode=(0?[0-7]{3})$/.exec(o);
    if (!m || opts.length > 1) throw bad(`"${o}" is not mode=OCTAL (and PATH may not hold a comma)`);
    mode = parseInt(m[1], 8);
  }
  return { path: path.resolve(p), mode };
}

/** for log lines and errors: "unix:/run/x.sock" or "127.0.0.1:9100" */
export function describeAddress(a: ListenAddress): string {
  return isUnix(a) ? `unix:${a.path}` : `${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
}
