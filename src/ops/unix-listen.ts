// A Node server (net or http) listening on a Unix socket made by the addon's unixListen(): bound,
// chmod-ed in a private directory and renamed into place (src/vhost-user/server.ts's sockets are
// made the same way), so that no chmod by path runs once a client could swap the path for a
// symlink. Node's own listen(path) binds at the path and leaves the mode to a chmod after it.
import * as fs from 'node:fs';
import type * as net from 'node:net';
import { native } from '../native';
import { removeStaleSocket } from '../vhost-user/server';
import { safeClose } from '../vhost-user/connection';

/** Listens on path with mode (a stale socket there replaced, a live one refused); resolves once it accepts. */
export function listenUnix(server: net.Server, path: string, mode: number): Promise<void> {
  removeStaleSocket(path);
  const fd = native.unixListen(path, 64, mode);
  return new Promise((resolve, reject) => {
    const failed = (e: Error): void => {
      safeClose(fd);
      fs.rmSync(path, { force: true });
      reject(e);
    };
    server.once('error', failed);
    // Node takes the listening fd over (and closes it with the server)
    server.listen({ fd }, () => {
      server.off('error', failed);
      resolve();
    });
  });
}
