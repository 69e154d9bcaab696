/**
 * Pure builders for QEMU command lines used by the elastic-vhost tests and demo.
 *
 * Every function returns a flat `string[]` (argv fragment) or a string, never
 * touches the file system (except `kvmDeviceAccessible`) and never spawns
 * anything, so they can be unit-tested by comparing arrays.
 *
 * QEMU 7.2 facts baked in here (see qemu-glue/README.md):
 *  - vhost-user needs the whole guest RAM in a shareable fd:
 *    memory-backend-memfd,share=on + -machine ...,memory-backend=mem.
 *  - Under TCG QEMU 7.2 segfaults in msix_set_vector_notifiers when a
 *    vhost-user virtio-net device starts with MSI-X: vhost-user NICs get
 *    `vectors=0` by default; all NICs get `romfile=` (no iPXE ROM).
 */
import * as fs from 'node:fs';

export type Accel = 'tcg' | 'kvm';
export type MachineType = 'q35' | 'pc';

/** Name of the environment variable that forces the accelerator. */
export const ACCEL_ENV = 'ELASTIC_VHOST_ACCEL';

// ------------------------------------------------------------------ helpers

/** Join QEMU "key=value" options, escaping commas in values (QEMU doubles them). */
export function qemuOpts(head: string, opts: Record<string, string | number | boolean | undefined | null>): string {
  const parts = [head];
  for (const [k, v] of Object.entries(opts)) {
    if (v === undefined || v === null) continue;
    let s: string;
    if (typeof v === 'boolean') s = v ? 'on' : 'off';
    else s = String(v);
    parts.push(`${k}=${s.replace(/,/g, ',,')}`);
  }
  return parts.join(',');
}

/** Locally administered MAC "52:54:00:ee:XX:YY" for a small index (0..65535). */
export function macForIndex(index: number): string {
  if (!Number.isInteger(index) || index < 0 || index > 0xffff) {
    throw new RangeError(`MAC index out of range: ${index}`);
  }
  const hi = ((index >> 8) & 0xff).toString(16).padStart(2, '0');
  const lo = (index & 0xff).toString(16).padStart(2, '0');
  return `52:54:00:ee:${hi}:${lo}`;
}

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
const ID_RE = /^[A-Za-z][A-Za-z0-9_.-]*$/;

function checkId(what: string, id: string): void {
  if (!ID_RE.test(id)) throw new Error(`invalid QEMU ${what} id: ${JSON.stringify(id)}`);
}

// ------------------------------------------------------------------ accel

export function accelArgs(accel: Accel): string[] {
  return accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg', '-cpu', 'max'];
}

/** True if /dev/kvm exists and can be opened read-write (cheap, no boot). */
export function kvmDeviceAccessible(): boolean {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Accelerator choice without booting anything: ELASTIC_VHOST_ACCEL=kvm|tcg
 * wins; otherwise TCG. (/dev/kvm exists on the reference machine but cannot
 * boot Debian kernels, so KVM is never picked implicitly. Use
 * `probeKvmBoot()` from launcher.ts for a real boot probe.)
 */
export function selectAccel(env: NodeJS.ProcessEnv = process.env): Accel {
  const v = (env[ACCEL_ENV] ?? '').trim().toLowerCase();
  if (v === 'kvm' || v === 'tcg') return v;
  if (v !== '' && v !== 'auto') throw new Error(`${ACCEL_ENV} must be kvm, tcg or auto, got ${JSON.stringify(v)}`);
  return 'tcg';
}

// ------------------------------------------------------------------ memory / machine

export interface MemoryOptions {
  /** Guest RAM in MiB (default 256). */
  sizeMiB?: number;
  /**
   * Guest RAM in KiB instead (a multiple of 8: QEMU rounds -m up to 8 KiB, and the backend's size
   * must match it exactly). For a size that is not a multiple of 256 KiB — see MIGRATION_SAFE_TCG_RAM_KIB.
   */
  sizeKiB?: number;
  /** memfd backend with share=on (required for vhost-user; default true). */
  shared?: boolean;
  machine?: MachineType;
  /** Memory backend object id (default "mem"). */
  backendId?: string;
}

/**
 * Guest RAM for a TCG guest that is live-migrated: 256 MiB + 8 KiB. QEMU before 9.0 loses guest
 * stores during migration under TCG when a RAM block's length is a multiple of 64 pages (256 KiB):
 * cpu_physical_memory_sync_dirty_bitmap()'s 64-bit fast path clears dirty bits without resetting
 * the TCG TLB, so later stores through it are never marked and the destination gets stale pages
 * (QEMU commit "physmem: Fix migration dirty bitmap coherency with TCG memory access", N. Piggin,
 * 2024, for 9.0; Debian 12's 7.2 lacks it). A length off that multiple takes the per-page path, which
 * resets the TLB. Measured here with the source's and the destination's RAM compared byte for byte
 * after each migration under an iperf3 stream: 256 MiB, 1 in about 5 migrations left 7–93 pages
 * differing (the destination then panicked or hung); 256 MiB + 8 KiB, 34 of 34 identical. KVM
 * guests are not affected.
 */
export const MIGRATION_SAFE_TCG_RAM_KIB = 256 * 1024 + 8;

/** `-m`, `-object memory-backend-memfd,...,share=on`, `-machine TYPE,memory-backend=mem`. */
export function memoryArgs(o: MemoryOptions = {}): string[] {
  let sz: string;
  if (o.sizeKiB !== undefined) {
    const k = o.sizeKiB;
    if (!Number.isInteger(k) || k < 32 * 1024 || k % 8 !== 0) throw new RangeError(`bad memory size ${k} KiB (a multiple of 8, at least 32 MiB)`);
    sz = `${k}K`;
  } else {
    const size = o.sizeMiB ?? 256;
    if (!Number.isInteger(size) || size < 32) throw new RangeError(`bad memory size ${size} MiB`);
    sz = `${size}M`;
  }
  const machine = o.machine ?? 'q35';
  const shared = o.shared ?? true;
  const id = o.backendId ?? 'mem';
  checkId('memory backend', id);
  if (!shared) return ['-m', sz, '-machine', machine];
  return [
    '-m', sz,
    '-object', `memory-backend-memfd,id=${id},size=${sz},share=on`,
    '-machine', `${machine},memory-backend=${id}`,
  ];
}

// ------------------------------------------------------------------ chardevs

export interface SocketChardevOptions {
  id: string;
  path: string;
  /**
   * Who listens on the unix socket. 'backend' (default): the vhost-user
   * back-end is the server, QEMU connects and reconnects (reconnect=1).
   * 'qemu': QEMU is the server (server=on,wait=off) and the back-end connects.
   */
  server?: 'backend' | 'qemu';
  /** With server 'qemu': block QEMU start-up until a client connected. */
  wait?: boolean;
  /** reconnect delay in seconds when QEMU is the client (default 1). */
  reconnect?: number;
}

export function socketChardevArgs(o: SocketChardevOptions): string[] {
  checkId('chardev', o.id);
  if ((o.server ?? 'backend') === 'backend') {
    return ['-chardev', qemuOpts('socket', { id: o.id, path: o.path, reconnect: o.reconnect ?? 1 })];
  }
  return ['-chardev', qemuOpts('socket', { id: o.id, path: o.path, server: true, wait: o.wait ?? false })];
}

// ------------------------------------------------------------------ NICs

/** Optional virtio-net-pci feature toggles (on/off properties of the device). */
export interface VirtioNetToggles {
  mrg_rxbuf?: boolean;
  event_idx?: boolean;
  indirect_desc?: boolean;
  csum?: boolean;
  guest_csum?: boolean;
  gso?: boolean;
  guest_tso4?: boolean;
  guest_tso6?: boolean;
  guest_ecn?: boolean;
  guest_ufo?: boolean;
  host_tso4?: boolean;
  host_tso6?: boolean;
  host_ecn?: boolean;
  host_ufo?: boolean;
  status?: boolean;
  ctrl_vq?: boolean;
  ctrl_rx?: boolean;
  mq?: boolean;
  packed?: boolean;
}

export interface VirtioNetDeviceOptions {
  netdev: string;
  mac: string;
  /** Device id (optional). */
  id?: string;
  /** MSI-X vectors; `null` leaves QEMU's default. vhost-user NICs default to 0. */
  vectors?: number | null;
  /** Option ROM file; '' (default) = no ROM. */
  romfile?: string;
  toggles?: VirtioNetToggles;
  rxQueueSize?: number;
  txQueueSize?: number;
  /** Anything else, appended verbatim as key=value. */
  extra?: Record<string, string | number | boolean>;
}

export function virtioNetDeviceArgs(o: VirtioNetDeviceOptions): string[] {
  checkId('netdev', o.netdev);
  if (o.id !== undefined) checkId('device', o.id);
  if (!MAC_RE.test(o.mac)) throw new Error(`invalid MAC ${JSON.stringify(o.mac)}`);
  const opts: Record<string, string | number | boolean | undefined | null> = {
    id: o.id,
    netdev: o.netdev,
    mac: o.mac.toLowerCase(),
    vectors: o.vectors,
    romfile: o.romfile ?? '',
    rx_queue_size: o.rxQueueSize,
    tx_queue_size: o.txQueueSize,
  };
  for (const [k, v] of Object.entries(o.toggles ?? {})) opts[k] = v as boolean | undefined;
  for (const [k, v] of Object.entries(o.extra ?? {})) opts[k] = v;
  return ['-device', qemuOpts('virtio-net-pci', opts)];
}

export interface VhostUserNicOptions {
  /** netdev id (also used to derive the chardev id "<id>-chr"). */
  id: string;
  socketPath: string;
  mac: string;
  /** Default 'backend' (the switch listens, QEMU reconnects). */
  server?: 'backend' | 'qemu';
  queues?: number;
  vectors?: number | null;
  toggles?: VirtioNetToggles;
  rxQueueSize?: number;
  txQueueSize?: number;
  /** other virtio-net-pci properties, appended as key=value (e.g. disable-modern) */
  extra?: Record<string, string | number | boolean>;
}

/** chardev + `-netdev vhost-user` + `-device virtio-net-pci,...,vectors=0,romfile=`. */
export function vhostUserNicArgs(o: VhostUserNicOptions): string[] {
  checkId('netdev', o.id);
  const chr = `${o.id}-chr`;
  return [
    ...socketChardevArgs({ id: chr, path: o.socketPath, server: o.server ?? 'backend' }),
    '-netdev', qemuOpts('vhost-user', { id: o.id, chardev: chr, queues: o.queues }),
    ...virtioNetDeviceArgs({
      netdev: o.id,
      mac: o.mac,
      vectors: o.vectors === undefined ? 0 : o.vectors,
      toggles: o.toggles,
      rxQueueSize: o.rxQueueSize,
      txQueueSize: o.txQueueSize,
      extra: { ...(o.queues && o.queues > 1 && o.toggles?.mq === undefined ? { mq: true } : {}), ...o.extra },
    }),
  ];
}

/** Switch-less guest-to-guest links (QEMU `-netdev socket`), for self tests. */
export type SocketLink =
  | { mode: 'listen'; port: number; host?: string }
  | { mode: 'connect'; port: number; host?: string }
  | { mode: 'mcast'; group: string; port: number; localaddr?: string }
  | { mode: 'udp'; localPort: number; remotePort: number; host?: string };

export interface SocketNicOptions {
  id: string;
  mac: string;
  link: SocketLink;
  /** MSI-X vectors (default: QEMU default; MSI-X works with -netdev socket). */
  vectors?: number | null;
  toggles?: VirtioNetToggles;
}

export function socketNetdevArg(id: string, link: SocketLink): string {
  checkId('netdev', id);
  switch (link.mode) {
    case 'listen':
      return qemuOpts('socket', { id, listen: `${link.host ?? '127.0.0.1'}:${link.port}` });
    case 'connect':
      return qemuOpts('socket', { id, connect: `${link.host ?? '127.0.0.1'}:${link.port}` });
    case 'mcast':
      return qemuOpts('socket', { id, mcast: `${link.group}:${link.port}`, localaddr: link.localaddr });
    case 'udp': {
      const h = link.host ?? '127.0.0.1';
      return qemuOpts('socket', { id, udp: `${h}:${link.remotePort}`, localaddr: `${h}:${link.localPort}` });
    }
  }
}

export function socketNicArgs(o: SocketNicOptions): string[] {
  return [
    '-netdev', socketNetdevArg(o.id, o.link),
    ...virtioNetDeviceArgs({ netdev: o.id, mac: o.mac, vectors: o.vectors ?? null, toggles: o.toggles }),
  ];
}

export type NicSpec =
  | ({ kind: 'vhost-user' } & VhostUserNicOptions)
  | ({ kind: 'socket' } & SocketNicOptions);

export function nicArgs(nic: NicSpec): string[] {
  return nic.kind === 'vhost-user' ? vhostUserNicArgs(nic) : socketNicArgs(nic);
}

// ------------------------------------------------------------------ kernel / cmdline

/** ev.* parameters understood by guests/init.sh (values must not contain spaces). */
export interface GuestParams {
  role?: 'agent' | 'idle' | 'ping' | 'iperf-server' | 'iperf-client' | 'udp-send' | 'udp-recv' | 'run';
  /** Address with prefix, e.g. "10.0.0.1/24". */
  ip?: string;
  peer?: string;
  time?: number;
  count?: number;
  size?: number;
  port?: number;
  pps?: number;
  timeout?: number;
  udp?: boolean;
  bw?: string;
  mtu?: number;
  gw?: string;
  name?: string;
  /** Start the ttyS1 agent in any role. */
  agent?: boolean;
  /** Do not power off after the role finished. */
  stay?: boolean;
  ipv6?: boolean;
  linkwait?: number;
  /** Shell script for role=run (base64-encoded by `guestCmdline`). */
  run?: string;
  /** Further ev.KEY=VALUE pairs. */
  extra?: Record<string, string | number | boolean>;
}

/** Base kernel arguments: serial console on ttyS0, quiet. */
export const BASE_CMDLINE = ['console=ttyS0', 'quiet', 'loglevel=3', 'panic=-1'];

export function guestCmdline(p: GuestParams, extraKernelArgs: string[] = []): string {
  const out = [...BASE_CMDLINE, ...extraKernelArgs];
  const put = (k: string, v: string | number | boolean | undefined): void => {
    if (v === undefined) return;
    const s = typeof v === 'boolean' ? (v ? '1' : '0') : String(v);
    if (!/^[A-Za-z0-9_.:/+=,@%-]*$/.test(s)) {
      throw new Error(`ev.${k} value must not contain spaces/quotes: ${JSON.stringify(s)}`);
    }
    out.push(`ev.${k}=${s}`);
  };
  put('role', p.role);
  put('ip', p.ip);
  put('peer', p.peer);
  put('time', p.time);
  put('count', p.count);
  put('size', p.size);
  put('port', p.port);
  put('pps', p.pps);
  put('timeout', p.timeout);
  put('udp', p.udp);
  put('bw', p.bw);
  put('mtu', p.mtu);
  put('gw', p.gw);
  put('name', p.name);
  put('agent', p.agent);
  put('stay', p.stay);
  put('ipv6', p.ipv6);
  put('linkwait', p.linkwait);
  if (p.run !== undefined) put('run', Buffer.from(p.run, 'utf8').toString('base64'));
  for (const [k, v] of Object.entries(p.extra ?? {})) {
    if (!/^[a-z][a-z0-9_]*$/.test(k)) throw new Error(`bad ev.* key ${k}`);
    put(k, v);
  }
  return out.join(' ');
}

export function kernelArgs(kernel: string, initrd: string, append: string): string[] {
  return ['-kernel', kernel, '-initrd', initrd, '-append', append];
}

// ------------------------------------------------------------------ serial / QMP

export type ConsoleSpec =
  | { kind: 'file'; path: string }
  /** QEMU listens on a unix socket; wait=true blocks start-up until a client connects. */
  | { kind: 'socket'; path: string; wait?: boolean }
  | { kind: 'stdio' }
  | { kind: 'none' };

/** ttyS0: the guest console. */
export function consoleArgs(c: ConsoleSpec): string[] {
  switch (c.kind) {
    case 'file':
      return ['-chardev', qemuOpts('file', { id: 'con', path: c.path }), '-device', 'isa-serial,chardev=con,index=0'];
    case 'socket':
      return [
        '-chardev', qemuOpts('socket', { id: 'con', path: c.path, server: true, wait: c.wait ?? true }),
        '-device', 'isa-serial,chardev=con,index=0',
      ];
    case 'stdio':
      return ['-chardev', 'stdio,id=con,signal=off', '-device', 'isa-serial,chardev=con,index=0'];
    case 'none':
      return [];
  }
}

/** ttyS1: the agent command channel (QEMU listens, wait=off). */
export function agentArgs(path: string): string[] {
  return [
    '-chardev', qemuOpts('socket', { id: 'agent', path, server: true, wait: false }),
    '-device', 'isa-serial,chardev=agent,index=1',
  ];
}

export function qmpArgs(path: string): string[] {
  return ['-qmp', `unix:${path.replace(/,/g, ',,')},server=on,wait=off`];
}

// ------------------------------------------------------------------ whole VM

export interface GuestArgsConfig {
  name?: string;
  kernel: string;
  initrd: string;
  /** Full kernel command line (see `guestCmdline`). */
  append: string;
  memMiB?: number;
  /** instead of memMiB (MemoryOptions.sizeKiB) */
  memKiB?: number;
  smp?: number;
  machine?: MachineType;
  accel?: Accel;
  /** Shared memfd guest RAM (default true: needed for vhost-user). */
  sharedMemory?: boolean;
  console?: ConsoleSpec;
  agentSocket?: string;
  qmpSocket?: string;
  nics?: NicSpec[];
  extraArgs?: string[];
}

export function buildGuestArgs(c: GuestArgsConfig): string[] {
  const args = ['-nodefaults', '-no-user-config', '-nographic', '-no-reboot'];
  if (c.name) args.push('-name', c.name);
  args.push(...accelArgs(c.accel ?? 'tcg'));
  args.push(...memoryArgs({ sizeMiB: c.memMiB, sizeKiB: c.memKiB, shared: c.sharedMemory, machine: c.machine }));
  args.push('-smp', String(c.smp ?? 1));
  args.push(...kernelArgs(c.kernel, c.initrd, c.append));
  args.push(...consoleArgs(c.console ?? { kind: 'none' }));
  if (c.agentSocket) args.push(...agentArgs(c.agentSocket));
  if (c.qmpSocket) args.push(...qmpArgs(c.qmpSocket));
  for (const nic of c.nics ?? []) args.push(...nicArgs(nic));
  args.push(...(c.extraArgs ?? []));
  return args;
}
