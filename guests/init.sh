#!/bin/sh
# /init of the elastic-vhost test guest (busybox ash). Installed as /init in
# build/guest/initramfs.cpio.gz by guests/build.sh.
#
# Configuration comes from the kernel command line (ev.KEY=VALUE, values
# without spaces; see qemu-glue/README.md for the full list):
#   ev.ip=10.0.0.1/24  ev.role=agent|idle|ping|iperf-server|iperf-client|
#   udp-send|udp-recv|run  ev.peer=IP ev.time=S ev.count=N ev.size=B ev.port=P
#   ev.pps=N ev.timeout=MS ev.udp=1 ev.bw=RATE ev.mtu=N ev.gw=IP ev.name=HOST
#   ev.agent=1 (agent on ttyS1 in any role) ev.stay=1 (no poweroff after role)
#   ev.ipv6=1 (keep IPv6; default off so the NIC stays quiet) ev.linkwait=S
#   ev.run=BASE64 (shell script for role=run)
# Console protocol (ttyS0): "EV-READY ip=.. mac=.." once eth0 is up,
# "EV-RESULT role=.. key=value .." with the role's result, "EV-OUT .." for
# role output, "EV-ERROR ..." on failures, then poweroff -f.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
umask 022
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /run/ev
exec </dev/console >/dev/console 2>&1
cd /tmp
echo # SeaBIOS leaves the cursor mid-line: start EV-* lines on a fresh one

set -f # no globbing while splitting the command line
CMDLINE="$(cat /proc/cmdline)"
arg() { # arg KEY [DEFAULT]
  for w in $CMDLINE; do
    case "$w" in "ev.$1="*) echo "${w#ev.$1=}"; return 0 ;; esac
  done
  echo "${2:-}"
}
set +f

ROLE="$(arg role idle)"
IP="$(arg ip)"
IFACE="$(arg if eth0)"
PEER="$(arg peer)"
NAME="$(arg name ev-guest)"
hostname "$NAME"

err() { echo "EV-ERROR $*"; }

finish() { # power off unless asked to stay; never return (we are PID 1)
  if [ "$(arg stay 0)" = 1 ]; then
    while :; do sleep 3600; done
  fi
  sync
  poweroff -f
  while :; do sleep 3600; done
}

# --- kernel knobs: big socket buffers; keep the NIC quiet (no IPv6 chatter)
echo 16777216 > /proc/sys/net/core/rmem_max
echo 16777216 > /proc/sys/net/core/wmem_max
echo 4096 > /proc/sys/net/core/netdev_max_backlog 2>/dev/null
if [ "$(arg ipv6 0)" != 1 ] && [ -d /proc/sys/net/ipv6 ]; then
  echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
  echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6
fi

# --- modules (order computed at build time from .modinfo depends=)
while read -r m; do
  insmod "/lib/modules/$m" 2>/dev/null || err "insmod $m failed"
done < /lib/modules/load-order

# --- ACPI power button -> poweroff (QMP system_powerdown)
for d in /sys/class/input/input*; do
  [ -r "$d/name" ] || continue
  case "$(cat "$d/name")" in
    "Power Button")
      for e in "$d"/event*; do
        [ -e "$e" ] || continue
        ( head -c 1 "/dev/input/${e##*/}" >/dev/null 2>&1 && echo "EV-POWERDOWN" && poweroff -f ) &
      done ;;
  esac
done

# --- network
ip link set lo up
i=0
while [ ! -e "/sys/class/net/$IFACE" ]; do
  i=$((i + 1))
  if [ $i -gt "$(arg ifwait 50)" ]; then err "no $IFACE"; break; fi
  usleep 100000
done
MTU="$(arg mtu)"
[ -n "$MTU" ] && ip link set "$IFACE" mtu "$MTU"
ip link set "$IFACE" up
[ -n "$IP" ] && ip addr add "$IP" dev "$IFACE"
GW="$(arg gw)"
[ -n "$GW" ] && ip route add default via "$GW"
LINKWAIT="$(arg linkwait 10)"
[ -e "/sys/class/net/$IFACE" ] || LINKWAIT=0
i=0
while [ "$LINKWAIT" -gt 0 ] && [ "$(cat "/sys/class/net/$IFACE/carrier" 2>/dev/null)" != 1 ]; do
  i=$((i + 1))
  if [ $i -gt $((LINKWAIT * 10)) ]; then err "no carrier on $IFACE"; break; fi
  usleep 100000
done
MAC="$(cat "/sys/class/net/$IFACE/address" 2>/dev/null)"
CARRIER="$(cat "/sys/class/net/$IFACE/carrier" 2>/dev/null)"

# --- agent on ttyS1: /usr/bin/evagent (guests/tools/evagent.c). Frames
#     "X <id> <len> <base64 command> <crc32>" in; "EV-ACK <id>", "EV-OUT <id>
#     <line>" and "EV-DONE <id> rc=<n>" lines out (qemu-glue/README.md).
#     Commands run concurrently. (It replaced a busybox-ash `read` loop: ash's
#     read builtin restarts from scratch when SIGCHLD interrupts it and drops
#     the part of the line it had already consumed.)
AGENT_TTY=/dev/ttyS1
AGENT=0
if [ "$ROLE" = agent ] || [ "$(arg agent 0)" = 1 ]; then
  # Supervisor: restart the agent should it ever die (it should not).
  (
    while :; do
      evagent "$AGENT_TTY" /run/ev/agent.ready < /dev/null
      rc=$?
      [ -e /run/ev/agent.ready ] || break # never came up: init reports it
      echo "EV-ERROR evagent exited rc=$rc, restarting"
      sleep 1
    done
  ) &
  # EV-READY only once the agent holds the port open (input is buffered from then on).
  i=0
  while [ ! -e /run/ev/agent.ready ] && [ $i -lt 100 ]; do
    i=$((i + 1))
    usleep 20000
  done
  if [ -e /run/ev/agent.ready ]; then AGENT=1; else err "agent tty $AGENT_TTY not usable"; fi
fi

echo "EV-READY ip=${IP:-none} mac=${MAC:-none} if=$IFACE carrier=${CARRIER:-0} role=$ROLE agent=$AGENT uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"

# --- roles
out() { # prefix every line of stdin with EV-OUT
  while IFS= read -r l || [ -n "$l" ]; do echo "EV-OUT $l"; done
}

case "$ROLE" in
  agent)
    while :; do sleep 3600; done
    ;;
  idle)
    while :; do sleep 3600; done
    ;;
  ping)
    COUNT="$(arg count 3)"
    ping -c "$COUNT" -W 2 "$PEER" > /tmp/ping.txt 2>&1
    rc=$?
    out < /tmp/ping.txt
    tx="$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' /tmp/ping.txt)"
    rx="$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping.txt)"
    loss="$(sed -n 's/.* \([0-9.]*\)% packet loss.*/\1/p' /tmp/ping.txt)"
    rtt="$(sed -n 's#.*min/avg/max = \([0-9.]*\)/\([0-9.]*\)/\([0-9.]*\).*#min=\1 avg=\2 max=\3#p' /tmp/ping.txt)"
    echo "EV-RESULT role=ping rc=$rc peer=$PEER tx=${tx:-0} rx=${rx:-0} loss=${loss:-100} $rtt"
    finish
    ;;
  iperf-server)
    PORT="$(arg port 5201)"
    iperf3 -s -1 -p "$PORT" -f m > /tmp/iperf.txt 2>&1
    rc=$?
    out < /tmp/iperf.txt
    mbps="$(awk '/receiver/{for(i=1;i<=NF;i++) if($i=="Mbits/sec") v=$(i-1)} END{print v}' /tmp/iperf.txt)"
    echo "EV-RESULT role=iperf-server rc=$rc mbps=${mbps:-0}"
    finish
    ;;
  iperf-client)
    PORT="$(arg port 5201)"
    TIME="$(arg time 3)"
    set -- -c "$PEER" -p "$PORT" -t "$TIME" -f m
    [ "$(arg udp 0)" = 1 ] && set -- "$@" -u -b "$(arg bw 100M)"
    tries=0
    while :; do
      iperf3 "$@" > /tmp/iperf.txt 2>&1
      rc=$?
      [ $rc = 0 ] && break
      tries=$((tries + 1))
      grep -q 'Connection refused\|No route' /tmp/iperf.txt || break
      [ $tries -ge 30 ] && break
      sleep 1
    done
    out < /tmp/iperf.txt
    snd="$(awk '/sender/{for(i=1;i<=NF;i++) if($i=="Mbits/sec") v=$(i-1)} END{print v}' /tmp/iperf.txt)"
    rcv="$(awk '/receiver/{for(i=1;i<=NF;i++) if($i=="Mbits/sec") v=$(i-1)} END{print v}' /tmp/iperf.txt)"
    echo "EV-RESULT role=iperf-client rc=$rc peer=$PEER sender_mbps=${snd:-0} receiver_mbps=${rcv:-0}"
    finish
    ;;
  udp-send)
    set -- -r "$(arg pps 0)" "$PEER" "$(arg port 9000)" "$(arg count 1000)" "$(arg size 64)"
    udpburst send "$@" > /tmp/udp.txt 2>&1
    rc=$?
    out < /tmp/udp.txt
    echo "EV-RESULT role=udp-send rc=$rc $(sed -n 's/^UDPBURST //p' /tmp/udp.txt | tail -1)"
    finish
    ;;
  udp-recv)
    udpburst recv "$(arg port 9000)" "$(arg count 1000)" "$(arg timeout 2000)" > /tmp/udp.txt 2>&1
    rc=$?
    out < /tmp/udp.txt
    echo "EV-RESULT role=udp-recv rc=$rc $(sed -n 's/^UDPBURST \(received=\)/\1/p' /tmp/udp.txt | tail -1)"
    finish
    ;;
  run)
    arg run | base64 -d > /tmp/run.sh 2>/dev/null || err "ev.run is not base64"
    sh /tmp/run.sh < /dev/null > /tmp/run.txt 2>&1
    rc=$?
    out < /tmp/run.txt
    echo "EV-RESULT role=run rc=$rc"
    finish
    ;;
  *)
    err "unknown role $ROLE"
    finish
    ;;
esac
finish
