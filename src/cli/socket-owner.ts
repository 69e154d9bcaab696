// --socket-owner / --socket-group: who owns the socket files the switch creates. libvirt runs
// QEMU as its own user (libvirt-qemu on Debian), which cannot connect to a root-owned 0600 socket;
// the options let the switch hand the files to that user or group.
//
// Node has no getpwnam/getgrnam. Names are resolved once at start-up with getent(1), so users and
// groups from NSS (LDAP, sssd) resolve as they do for every other program; numeric ids pass as
// they are. Never called per connection: execFileSync blocks.
import { execFileSync } from 'node:child_process';

export interface SocketOwner {
  /** -1: leave unchanged (as chown(2)) */
  uid: number;
  gid: number;
}

/** The numeric id of a user ('passwd') or group ('group') NAME, or null when there is none. */
export function lookupId(database: 'passwd' | 'group', name: string): number | null {
  if (/^\d+$/.test(name)) return Number(name);
  // getent takes anything as a key; a name with ':' or a newline cannot be an entry
  if (!/^[A-Za-z0-9_.][A-Za-z0-9_.@-]*\$?$/.test(name)) return null;
  let out: string;
  try {
    out = execFileSync('getent', [database, name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000 });
  } catch (e) {
    // exit code 2: key not found; anything else (getent missing) is a real problem
    if ((e as { status?: number }).status === 2) return null;
    throw new Error(`cannot look up ${database === 'passwd' ? 'user' : 'group'} "${name}": ${(e as Error).message}`);
  }
  // name:password:id:…
  const id = Number(out.split('\n')[0].split(':')[2]);
  return Number.isInteger(id) && id >= 0 ? id : null;
}

/** From the option values; throws naming the option whose name does not resolve. */
export function resolveSocketOwner(owner: string | undefined, group: string | undefined): SocketOwner | null {
  if (owner === undefined && group === undefined) return null;
  const uid = owner === undefined ? -1 : lookupId('passwd', owner);
  if (uid === null) throw new Error(`--socket-owner ${owner}: no such user`);
  const gid = group === undefined ? -1 : lookupId('group', group);
  if (gid === null) throw new Error(`--socket-group ${group}: no such group`);
  return { uid, gid };
}
