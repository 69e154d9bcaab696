// The settings the command line and the config file both carry, one entry each: the command-line
// option (commander), the config file's key and its JSON-schema type are all made from it, with the
// default from src/defaults.ts. Ports (--socket/--client, the config's `ports`) are in config.ts.
import { InvalidArgumentError, Option } from 'commander';
import { CAPTURE_DIR_NAME, parseCaptureSpec } from '../ops/capture';
import { parseListenAddress } from '../ops/metrics';
import { parseWebAddress } from '../ops/web';
import { parseVxlanSpec } from '../ports/vxlan-port';
import { DEFAULTS, LOG_LEVELS } from '../defaults';
import { MIN_FRAME, MAX_FRAME, ENGINE_HDR_LEN } from '../datapath/layout';
import { MAX_SEGMENTS } from '../virtio/chain';
import { MAX_TABLE_REGIONS } from '../vhost-user/message';

/** vhost-user rings per connection: 2 per queue pair, ring indices are 8 bits in VRING messages */
export const MOST_QUEUE_PAIRS = 128;
/** ADD_MEM_REG slots: what libvhost-user and QEMU allow (VHOST_USER_MAX_RAM_SLOTS) */
export const MOST_MEM_SLOTS = 509;

interface Base {
  /** the config file's key, the commander attribute name, the key in DEFAULTS */
  key: string;
  /** e.g. '--pool-mb <n>' */
  flags: string;
  help: string;
  /** SIGHUP applies a change of it while running (others need a restart) */
  live?: true;
}
export interface IntSetting extends Base {
  kind: 'int';
  min: number;
  max?: number;
  multipleOf?: number;
}
export interface ChoiceSetting extends Base {
  kind: 'choice';
  choices: readonly string[];
}
export interface BoolSetting extends Base {
  kind: 'bool';
}
export interface StringSetting extends Base {
  kind: 'string';
}
/** a file mode, octal ("0660"): a string in the config file (YAML reads 0660 as the integer 660) */
export interface OctalSetting extends Base {
  kind: 'octal';
}
/** a path, or true for the default place (the option given without a value: `--ctl`) */
export interface PathSetting extends Base {
  kind: 'path';
}
/**
 * A value in the command line's own syntax ("[ADDR:]PORT", "PORT=FILE,max-frames=N"), checked by
 * that option's parser in the config file too (the schema keyword CLI_CHECK), so both accept the
 * same. Kept as written; the ops tools parse it again when they start.
 */
export interface SpecSetting extends Base {
  kind: 'spec';
  /** throws an Error saying what is wrong; what: the option's name, '' in the config file */
  check: (s: string, what: string) => void;
  /** repeatable on the command line, a list in the config file */
  list?: true;
  /** "[ADDR:]PORT": a port alone may be a number in the config file (YAML reads 9100 so) */
  port?: true;
}
export type SettingDef = IntSetting | ChoiceSetting | BoolSetting | StringSetting | OctalSetting | PathSetting | SpecSetting;

const poolBlocks = (DEFAULTS.poolMb * 1024 * 1024) / DEFAULTS.blockSize;

export const SETTINGS: readonly SettingDef[] = [
  { key: 'tap', kind: 'string', flags: '-t, --tap <name>', help: 'host uplink: attach (create if needed) TAP device NAME; address and bring it up on the host yourself' },
  { key: 'vxlan', kind: 'spec', flags: '--vxlan <spec>', check: (s, what) => parseVxlanSpec(s, what || 'vxlan'), help: 'VXLAN uplink (RFC 7348) to other hosts: LOCAL_IP[:PORT],vni=N,remote=IP[:PORT][,remote=…][,mac=MAC@IP…][,mtu=UNDERLAY_MTU][,srcports=N] (port 4789, mtu 1500, 8 source ports picked per flow unless given); unknown and broadcast frames go to every remote' },
  { key: 'poolMb', kind: 'int', flags: '--pool-mb <n>', min: 1, help: `size of the local data store (elastic FIFO) in MiB (${DEFAULTS.poolMb} MiB = ${poolBlocks} blocks of ${DEFAULTS.blockSize / 1024} KiB)` },
  { key: 'blockSize', kind: 'int', flags: '--block-size <bytes>', min: 128, multipleOf: 8, help: 'local data store block size (multiple of 8, >= 128)' },
  { key: 'shareLimit', kind: 'int', flags: '--share-limit <blocks>', min: 1, live: true, help: 'default most blocks one port may hold queued (default: half the pool)' },
  { key: 'holdMs', kind: 'int', flags: '--hold-ms <ms>', min: 0, live: true, help: 'how long frames to an unknown MAC are held before the unknown policy applies' },
  { key: 'unknown', kind: 'choice', flags: '--unknown <policy>', choices: ['flood', 'drop'], live: true, help: 'what happens to held frames past the hold time' },
  { key: 'macAgeS', kind: 'int', flags: '--mac-age-s <s>', min: 1, help: 'forget learned MACs unused for this long' },
  { key: 'queues', kind: 'int', flags: '--queues <n>', min: 1, max: MOST_QUEUE_PAIRS, help: 'queue pairs offered per vhost-user port (GET_QUEUE_NUM): a ring beyond is refused' },
  { key: 'maxPorts', kind: 'int', flags: '--max-ports <n>', min: 1, help: 'most connections (vhost-user ports and the TAP and VXLAN uplinks) attached at once; a front-end beyond is refused, counted' },
  { key: 'maxRegions', kind: 'int', flags: '--max-regions <n>', min: 1, max: MOST_MEM_SLOTS, help: `most memory regions one connection may have (GET_MAX_MEM_SLOTS; SET_MEM_TABLE carries at most ${MAX_TABLE_REGIONS})` },
  { key: 'maxFrameBytes', kind: 'int', flags: '--max-frame-bytes <n>', min: MIN_FRAME - ENGINE_HDR_LEN, max: MAX_FRAME - ENGINE_HDR_LEN, help: 'largest Ethernet frame taken from a port (a longer one is dropped, counted as tooBig)' },
  { key: 'maxChainDescriptors', kind: 'int', flags: '--max-chain-descriptors <n>', min: 1, max: MAX_SEGMENTS, help: 'most descriptors one descriptor chain may have (a longer one marks its ring broken, counted)' },
  { key: 'offload', kind: 'bool', flags: '--no-offload', help: 'offer no checksum/TSO offloads to guests and the TAP uplink (guests then send MTU-sized, checksummed frames)' },
  { key: 'socketMode', kind: 'octal', flags: '--socket-mode <octal>', help: 'mode of the socket files created (octal)' },
  { key: 'socketOwner', kind: 'string', flags: '--socket-owner <user>', help: 'give the socket files created to this user (name or uid), e.g. the one libvirt runs QEMU as' },
  { key: 'socketGroup', kind: 'string', flags: '--socket-group <group>', help: 'give the socket files created to this group (name or gid), e.g. libvirt-qemu with --socket-mode 0660' },
  { key: 'socketDirs', kind: 'spec', flags: '--socket-dir <dir>', list: true, check: (s, what) => checkSocketDir(s, what), help: 'a directory `ctl add-port` may also put sockets in (it takes only paths directly in the directory of a configured --socket/--client port, or in one of these). Repeatable (the config file\'s socketDirs: a list)' },
  { key: 'statsFile', kind: 'string', flags: '--stats-file <path>', help: 'write engine and port counters as JSON to PATH every --stats-interval ms (and on exit)' },
  { key: 'statsInterval', kind: 'int', flags: '--stats-interval <ms>', min: 0, help: 'period of --stats-file writes and of the --log-counters line (0: none)' },
  { key: 'maxGuestMemGb', kind: 'int', flags: '--max-guest-mem-gb <n>', min: 1, help: 'most guest memory one vhost-user connection may map, in GiB (a larger memory table is refused)' },
  { key: 'maxTotalMemGb', kind: 'int', flags: '--max-total-mem-gb <n>', min: 1, help: 'most guest memory all connections may map together, in GiB' },
  { key: 'pollUs', kind: 'int', flags: '--poll-us <us>', min: 0, help: 'adaptive polling: after a batch keep polling the TX rings that had work for up to this many microseconds of no new work before sleeping on their kick eventfds again (0: pure event mode; costs CPU while polling)' },
  { key: 'workers', kind: 'int', flags: '--workers <n>', min: 1, max: 16, help: 'data-plane threads: queue pairs are spread over N threads (the main thread is one of them and keeps sockets, sessions and the operator\'s tools); 1 is the single loop. Each thread takes free packet buffers from a partition of its own of --pool-mb (the store is N × --pool-mb). No live migration (dirty logging) and no packet capture of rings other threads serve with N > 1' },
  { key: 'logLevel', kind: 'choice', flags: '--log-level <level>', choices: LOG_LEVELS, live: true, help: 'least level logged (JSON lines on a pipe or file, pretty on a terminal)' },
  { key: 'logCounters', kind: 'bool', flags: '--log-counters', live: true, help: 'log the engine counters that changed, every --stats-interval ms' },
  { key: 'quiet', kind: 'bool', flags: '-q, --quiet', help: 'no counters line even with --log-counters (kept for old command lines; --log-level filters the rest)' },
  // the operator's tools (src/ops/)
  { key: 'metrics', kind: 'spec', flags: '--metrics <[addr:]port|unix:path>', port: true, check: (s, what) => parseListenAddress(s, what), help: 'serve Prometheus metrics at http://ADDR:PORT/metrics (ADDR default 127.0.0.1), or on a Unix socket: unix:PATH[,mode=OCTAL] (mode 0600 unless given)' },
  { key: 'metricsTokenFile', kind: 'string', flags: '--metrics-token-file <file>', help: 'serve the metrics only to requests with "Authorization: Bearer TOKEN", TOKEN the first line of FILE (at least 16 characters; FILE not readable by every user); others get 401' },
  { key: 'ctl', kind: 'path', flags: '--ctl [path]', help: 'control socket for `elastic-vhost ctl` (no PATH, or true in the config file: elastic-vhost.ctl next to the first port\'s socket)' },
  { key: 'ctlMode', kind: 'octal', flags: '--ctl-mode <octal>', help: 'mode of the control socket (octal)' },
  { key: 'web', kind: 'spec', flags: '--web <[addr:]port|unix:path>', port: true, check: (s) => parseWebAddress(s), help: 'serve the live web view (ports, MAC table, elastic FIFO occupancy over time) on ADDR:PORT (address 127.0.0.1 unless given), or on a Unix socket: unix:PATH[,mode=OCTAL] (mode 0600 unless given)' },
  { key: 'webTokenFile', kind: 'string', flags: '--web-token-file <file>', help: 'serve the web view only to requests with "Authorization: Bearer TOKEN", TOKEN the first line of FILE (at least 16 characters; FILE not readable by every user); others get 401. A browser gets there through a reverse proxy that adds the header' },
  { key: 'captures', kind: 'spec', flags: '--capture <spec>', list: true, check: (s) => parseCaptureSpec(s), help: 'capture a port, both directions, to a new pcap file in the capture directory from the start: PORT=FILE[,max-bytes=N][,max-frames=N]. Repeatable (the config file\'s captures: a list of these)' },
  { key: 'captureDir', kind: 'string', flags: '--capture-dir <dir>', help: `the only directory captures (--capture, ctl capture) write to: a relative FILE is in it, a name outside it is refused, an existing file is never overwritten. The switch's user's, writable by nobody else; made (0700) when missing. Default: ${CAPTURE_DIR_NAME}/ in the control socket's directory (without --ctl: the first port's socket's)` },
  { key: 'captureMaxMb', kind: 'int', flags: '--capture-max-mb <n>', min: 1, help: 'a capture ends once its file reaches this many MiB; max-bytes= may ask for less, not more' },
];

/** --socket-dir: a directory's path, not empty (it need not exist yet: add-port checks then) */
function checkSocketDir(s: string, what: string): void {
  if (s.trim() === '' || s.includes('\0')) throw new Error(`${what ? `${what} ` : ''}"${s}": give a directory`);
}

/** The setting of a long option ("--metrics"), for the schema keyword CLI_CHECK. */
export function settingOfFlag(flag: string): SettingDef | undefined {
  return SETTINGS.find((d) => longFlag(d) === flag);
}

export const longFlag = (d: SettingDef): string => d.flags.match(/--[a-z-]+/)![0];

/** commander's attribute of a setting's option ("--capture" → "capture": not the config key "captures") */
export const attributeOf = (d: SettingDef): string => new Option(d.flags).attributeName();

/** JSON-schema keyword of a spec setting's value: checked as the command-line option it names is */
export const CLI_CHECK = 'x-cli-option';

export function defaultOf(key: string): unknown {
  return (DEFAULTS as unknown as Record<string, unknown>)[key];
}

function wholeNumber(v: string): number {
  const n = Number(v);
  if (!/^\s*\d+\s*$/.test(v) || !Number.isSafeInteger(n)) throw new InvalidArgumentError(`"${v}" is not a whole number`);
  return n;
}

/** The command line's check of a number, with the limits the schema has. */
export function intParser(d: IntSetting): (v: string) => number {
  return (v: string): number => {
    const n = wholeNumber(v);
    if (n === 0 && d.min >= 1) throw new InvalidArgumentError('0 makes no sense here: give 1 or more');
    if (n < d.min || (d.max !== undefined && n > d.max)) {
      throw new InvalidArgumentError(d.max !== undefined ? `give a number from ${d.min} to ${d.max}` : `give ${d.min} or more`);
    }
    if (d.multipleOf !== undefined && n % d.multipleOf !== 0) throw new InvalidArgumentError(`give a multiple of ${d.multipleOf}`);
    return n;
  };
}

export function parseOctal(v: string): number {
  if (!/^0?[0-7]{3}$/.test(v)) throw new InvalidArgumentError(`"${v}" is not an octal mode`);
  return parseInt(v, 8);
}

export const octalString = (n: number): string => `0${n.toString(8).padStart(3, '0')}`;

/** The commander option of a setting, its default shown in --help. */
export function commanderOption(d: SettingDef): Option {
  const o = new Option(d.flags, d.help);
  const dflt = defaultOf(d.key);
  switch (d.kind) {
    case 'int':
      o.argParser(intParser(d));
      if (dflt !== undefined) o.default(dflt);
      break;
    case 'choice':
      o.choices(d.choices);
      if (dflt !== undefined) o.default(dflt);
      break;
    case 'octal':
      o.argParser(parseOctal);
      o.default(dflt, octalString(dflt as number));
      break;
    case 'spec': {
      const check = (v: string): string => {
        try {
          d.check(v, longFlag(d));
        } catch (e) {
          throw new InvalidArgumentError((e as Error).message);
        }
        return v;
      };
      if (d.list) o.argParser((v: string, prev?: string[]) => [...(prev ?? []), check(v)]);
      else o.argParser(check);
      break;
    }
    case 'bool':
    case 'string':
    case 'path':
      break; // --no-X defaults to true by itself; --X to undefined (false); --X [v] to true without v
  }
  return o;
}

/** The JSON-schema type of a setting in the config file. */
export function schemaOf(d: SettingDef): Record<string, unknown> {
  const dflt = defaultOf(d.key);
  const withDefault = (s: Record<string, unknown>, v: unknown = dflt) => (v === undefined ? s : { ...s, default: v });
  switch (d.kind) {
    case 'int': {
      const s: Record<string, unknown> = { type: 'integer', minimum: d.min, description: d.help };
      if (d.max !== undefined) s.maximum = d.max;
      if (d.multipleOf !== undefined) s.multipleOf = d.multipleOf;
      return withDefault(s);
    }
    case 'choice':
      return withDefault({ enum: [...d.choices], description: d.help });
    case 'bool':
      return withDefault({ type: 'boolean', description: d.help });
    case 'string':
      return { type: 'string', minLength: 1, description: d.help };
    case 'octal':
      return { type: 'string', pattern: '^0?[0-7]{3}$', description: 'an octal file mode in quotes, e.g. "0660"', default: octalString(dflt as number) };
    case 'path':
      return { type: ['string', 'boolean'], minLength: 1, description: d.help };
    case 'spec': {
      // minimum/maximum apply to a number only, CLI_CHECK to a string only
      const one = d.port ? { type: ['string', 'integer'], minimum: 0, maximum: 65535, [CLI_CHECK]: longFlag(d) } : { type: 'string', [CLI_CHECK]: longFlag(d) };
      return d.list ? { type: 'array', items: one, description: d.help } : { ...one, description: d.help };
    }
  }
}
