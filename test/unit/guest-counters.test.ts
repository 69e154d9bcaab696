// The e2e UDP test's judgement (test/e2e/guest-counters.ts) on recorded guest output: a datagram
// missing at iperf3 must be in a guest counter or the switch's drops, each counted once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestCounters, parseGuestCounters, udpLossAccounted, unaccountedUdpLoss } from '../e2e/guest-counters';

/** GUEST_COUNTERS_CMD's output as a Linux 6.1 guest prints it, with counters to vary */
function sample(v: { rcvbuf?: number; inErrors?: number; inDiscards?: number; outDiscards?: number; sndbuf?: number; rxDropped?: number; txDropped?: number; softnet?: [number, number]; inDgrams?: number } = {}): string {
  const inErrors = v.inErrors ?? v.rcvbuf ?? 0;
  return [
    'Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates',
    `Ip: 2 64 5000 0 0 0 0 ${v.inDiscards ?? 0} 5000 4000 ${v.outDiscards ?? 0} 0 0 0 0 0 0 0 0`,
    'Icmp: InMsgs InErrors InCsumErrors InDestUnreachs',
    'Icmp: 1 0 0 1',
    'IcmpMsg: InType3',
    'IcmpMsg: 1',
    'Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors',
    'Tcp: 1 200 120000 -1 3 2 0 0 1 400 300 0 0 0 0',
    'Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors',
    `Udp: ${v.inDgrams ?? 100} 0 ${inErrors} 100 ${v.rcvbuf ?? 0} ${v.sndbuf ?? 0} 0 0 0`,
    'UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors',
    'UdpLite: 0 0 0 0 0 0 0 0 0',
    '== sysfs',
    '/sys/class/net/eth0/statistics/rx_packets 5000',
    `/sys/class/net/eth0/statistics/rx_dropped ${v.rxDropped ?? 0}`,
    '/sys/class/net/eth0/statistics/rx_errors 0',
    `/sys/class/net/eth0/statistics/tx_dropped ${v.txDropped ?? 0}`,
    '/sys/class/net/eth0/statistics/tx_errors 0',
    '== softnet',
    `0003b5f9 ${(v.softnet?.[0] ?? 0).toString(16).padStart(8, '0')} 00000000 00000000`,
    `00041f3a ${(v.softnet?.[1] ?? 0).toString(16).padStart(8, '0')} 00000000 00000000`,
    '',
  ].join('\n');
}

const p = (v: Parameters<typeof sample>[0] = {}): GuestCounters => parseGuestCounters(sample(v));

test('guest counters: /proc/net/snmp, interface statistics and softnet_stat are parsed', () => {
  const c = p({ rcvbuf: 3, rxDropped: 2, softnet: [1, 16] });
  assert.equal(c.snmp.Udp.RcvbufErrors, 3);
  assert.equal(c.snmp.Udp.InErrors, 3);
  assert.equal(c.snmp.Tcp.InCsumErrors, 0);
  assert.equal(c.snmp.Ip.InDiscards, 0);
  assert.equal(c.iface.eth0.rx_dropped, 2);
  assert.equal(c.softnetDropped, 17);
  assert.throws(() => parseGuestCounters('Udp: InErrors\nUdp: 1\n'), /lacks its parts/);
  assert.throws(() => parseGuestCounters(sample().replace('Udp: 100 0 0', 'Udp: 100 0')), /do not pair up/);
});

test('guest counters: every datagram missing at iperf3 must be in a guest counter or a switch drop', () => {
  const quiet: [GuestCounters, GuestCounters] = [p(), p()];
  // nothing lost, nothing counted: fine
  assert.equal(unaccountedUdpLoss(0, 0, udpLossAccounted(quiet, quiet)), null);
  // 5 lost, B's socket buffer overflowed 5 times (RcvbufErrors, also in InErrors: counted once)
  const rcvbuf = udpLossAccounted(quiet, [p(), p({ rcvbuf: 5 })]);
  assert.equal(rcvbuf.total, 5, 'RcvbufErrors is part of InErrors, not added to it');
  assert.equal(unaccountedUdpLoss(5, 0, rcvbuf), null);
  // 6 lost with 5 counted: one vanished — the test fails
  assert.match(unaccountedUdpLoss(6, 0, rcvbuf) ?? '', /1 vanished without a trace/);
  // lost with no counter moving at all: the switch's (the case the e2e test used to only print)
  assert.match(unaccountedUdpLoss(3, 0, udpLossAccounted(quiet, quiet)) ?? '', /none moved.*3 vanished/);
  // a qdisc drop at A shows as SndbufErrors and OutDiscards: counted once
  const qdisc = udpLossAccounted([p(), p({ sndbuf: 2, outDiscards: 2 })], quiet);
  assert.equal(qdisc.total, 2);
  assert.match(unaccountedUdpLoss(3, 0, qdisc) ?? '', /1 vanished/);
  // interface and backlog drops, IP discards at B, tx drops at A, and counted switch drops add up
  const mixed = udpLossAccounted([p(), p({ txDropped: 1 })], [p({ softnet: [1, 0] }), p({ rxDropped: 2, inDiscards: 1, softnet: [2, 1] })]);
  assert.equal(mixed.total, 1 + 2 + 1 + 2);
  assert.equal(unaccountedUdpLoss(8, 2, mixed), null);
  assert.notEqual(unaccountedUdpLoss(9, 2, mixed), null);
  // counters that went down (a guest restarted) are not taken as accounting
  assert.throws(() => udpLossAccounted(quiet, [p({ rcvbuf: 5 }), p()]), /smaller/);
  assert.notEqual(unaccountedUdpLoss(Number.NaN, 0, rcvbuf), null, 'no lost_packets in the report is not "nothing lost"');
});
