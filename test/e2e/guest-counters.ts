/**
 * A guest kernel's own drop counters, read through the agent and compared before and after a
 * test, so that a datagram missing at iperf3 can be accounted for: either a guest counter says
 * where it went, or the switch lost it. Pure functions (parsing and judging) apart from
 * readGuestCounters(), so that the unit tests (test/unit/guest-counters.test.ts) can check the
 * judgement on recorded inputs without QEMU.
 */

/** What the agent runs: /proc/net/snmp, every interface's statistics but lo's, softnet_stat. */
export const GUEST_COUNTERS_CMD =
  'cat /proc/net/snmp; echo "== sysfs"; ' +
  'for f in /sys/class/net/*/statistics/*; do case "$f" in /sys/class/net/lo/*) ;; *) echo "$f $(cat "$f")";; esac; done; ' +
  'echo "== softnet"; cat /proc/net/softnet_stat';

export interface GuestCounters {
  /** /proc/net/snmp: protocol (Ip, Udp, Tcp, …) → counter → value */
  snmp: Record<string, Record<string, number>>;
  /** /sys/class/net/IF/statistics: interface → counter → value (lo left out) */
  iface: Record<string, Record<string, number>>;
  /** /proc/net/softnet_stat: frames dropped at the backlog, summed over the CPUs */
  softnetDropped: number;
}

/** Parses GUEST_COUNTERS_CMD's output. Throws when a part is missing or malformed. */
export function parseGuestCounters(text: string): GuestCounters {
  const lines = text.split('\n').map((l) => l.trim());
  const sysAt = lines.indexOf('== sysfs');
  const softAt = lines.indexOf('== softnet');
  if (sysAt < 0 || softAt < sysAt) throw new Error(`guest counters: the output lacks its parts:\n${text}`);
  const snmp: Record<string, Record<string, number>> = {};
  const snmpLines = lines.slice(0, sysAt).filter((l) => l.length > 0);
  for (let i = 0; i + 1 < snmpLines.length; i += 2) {
    const [proto, ...names] = snmpLines[i].split(/\s+/);
    const [proto2, ...values] = snmpLines[i + 1].split(/\s+/);
    if (proto !== proto2 || !proto.endsWith(':') || names.length !== values.length) throw new Error(`guest counters: /proc/net/snmp lines do not pair up: "${snmpLines[i]}" / "${snmpLines[i + 1]}"`);
    const p = proto.slice(0, -1);
    snmp[p] = {};
    names.forEach((n, k) => (snmp[p][n] = Number(values[k])));
  }
  for (const p of ['Ip', 'Udp']) if (!snmp[p]) throw new Error(`guest counters: no ${p} line in /proc/net/snmp:\n${text}`);
  const iface: Record<string, Record<string, number>> = {};
  for (const l of lines.slice(sysAt + 1, softAt)) {
    const m = /^\/sys\/class\/net\/([^/]+)\/statistics\/(\w+) (\d+)$/.exec(l);
    if (!m) {
      if (l.length > 0) throw new Error(`guest counters: unreadable statistics line "${l}"`);
      continue;
    }
    (iface[m[1]] ??= {})[m[2]] = Number(m[3]);
  }
  if (Object.keys(iface).length === 0) throw new Error(`guest counters: no interface statistics:\n${text}`);
  let softnetDropped = 0;
  for (const l of lines.slice(softAt + 1)) {
    if (l.length === 0) continue;
    const cols = l.split(/\s+/);
    if (cols.length < 2 || !/^[0-9a-f]+$/i.test(cols[1])) throw new Error(`guest counters: unreadable softnet_stat line "${l}"`);
    softnetDropped += parseInt(cols[1], 16);
  }
  return { snmp, iface, softnetDropped };
}

/** after - before for one counter (a counter missing on either side counts 0) */
function delta(b: Record<string, number> | undefined, a: Record<string, number> | undefined, k: string): number {
  return (a?.[k] ?? 0) - (b?.[k] ?? 0);
}

function ifaceSum(b: GuestCounters, a: GuestCounters, keys: readonly string[]): number {
  let n = 0;
  for (const i of Object.keys(a.iface)) for (const k of keys) n += delta(b.iface[i], a.iface[i], k);
  return n;
}

/**
 * Where UDP datagrams between a sender and a receiver guest can vanish inside the guests, each
 * counted once (a counter that only repeats another is left out: Udp RcvbufErrors, MemErrors and
 * InCsumErrors are counted in Udp InErrors too; a qdisc drop shows as Udp SndbufErrors — ENOBUFS —
 * and again as Ip OutDiscards, so only the first is taken):
 *   receiver: Udp InErrors (socket buffer full, no memory, bad checksum), Ip InDiscards,
 *             InHdrErrors, InAddrErrors, ReasmFails, the interfaces' rx drops and errors, softnet
 *             backlog drops
 *   sender:   Udp SndbufErrors, the interfaces' tx drops and errors
 */
export function udpLossAccounted(sender: [GuestCounters, GuestCounters], receiver: [GuestCounters, GuestCounters]): { total: number; parts: Record<string, number> } {
  const [s0, s1] = sender;
  const [r0, r1] = receiver;
  const parts: Record<string, number> = {
    'receiver Udp InErrors': delta(r0.snmp.Udp, r1.snmp.Udp, 'InErrors'),
    'receiver Ip InDiscards': delta(r0.snmp.Ip, r1.snmp.Ip, 'InDiscards'),
    'receiver Ip InHdrErrors': delta(r0.snmp.Ip, r1.snmp.Ip, 'InHdrErrors'),
    'receiver Ip InAddrErrors': delta(r0.snmp.Ip, r1.snmp.Ip, 'InAddrErrors'),
    'receiver Ip ReasmFails': delta(r0.snmp.Ip, r1.snmp.Ip, 'ReasmFails'),
    'receiver rx drops/errors': ifaceSum(r0, r1, ['rx_dropped', 'rx_errors', 'rx_length_errors', 'rx_frame_errors', 'rx_over_errors', 'rx_missed_errors', 'rx_fifo_errors', 'rx_crc_errors']),
    'receiver softnet drops': r1.softnetDropped - r0.softnetDropped,
    'sender Udp SndbufErrors': delta(s0.snmp.Udp, s1.snmp.Udp, 'SndbufErrors'),
    'sender tx drops/errors': ifaceSum(s0, s1, ['tx_dropped', 'tx_errors', 'tx_aborted_errors', 'tx_fifo_errors', 'tx_carrier_errors']),
  };
  for (const [k, v] of Object.entries(parts)) if (!(v >= 0)) throw new Error(`guest counters: ${k} went from a larger value to a smaller one (${v}): was a guest restarted?`);
  let total = 0;
  for (const v of Object.values(parts)) total += v;
  return { total, parts };
}

/**
 * The judgement: every datagram iperf3 found missing (lost) is in a guest counter or among the
 * switch's counted drops. Returns null when it is, else why not.
 */
export function unaccountedUdpLoss(lost: number, switchDrops: number, accounted: { total: number; parts: Record<string, number> }): string | null {
  if (!Number.isInteger(lost) || lost < 0) return `iperf3 reported ${lost} datagrams lost: not a count`;
  if (lost <= accounted.total + switchDrops) return null;
  const nonzero = Object.entries(accounted.parts).filter(([, v]) => v !== 0);
  return (
    `${lost} datagrams missing at iperf3, but the guests' counters account for ${accounted.total} ` +
    `(${nonzero.length > 0 ? nonzero.map(([k, v]) => `${k} ${v}`).join(', ') : 'none moved'}) and the switch dropped ${switchDrops}: ` +
    `${lost - accounted.total - switchDrops} vanished without a trace`
  );
}
