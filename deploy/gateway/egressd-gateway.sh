#!/usr/bin/env bash
# egressd-gateway.sh: redirect outbound TCP 443 and 7844 to egressd's
# transparent listener (server.transparent_listen / serve --transparent-listen)
# and TPROXY outbound UDP 443 and 7844 (QUIC) to its QUIC listener
# (server.quic_listen / serve --quic-listen), in the current network
# namespace: a host, a container's namespace, a pod's.
#
#   egressd-gateway.sh install [--nft|--iptables]   add the rules (idempotent)
#   egressd-gateway.sh remove  [--nft|--iptables]   delete exactly those rules
#   egressd-gateway.sh status  [--nft|--iptables]   print them
#
# Without a flag: nftables when `nft` is installed, else iptables. `remove`
# without a flag removes egressd's rules from both, where present.
#
# Environment:
#   EGRESSD_PORT     transparent (TCP) listener port                15001
#   EGRESSD_PORTS    TCP destination ports to redirect, comma-separated
#                                                                   443,7844
#   EGRESSD_QUIC_PORT  QUIC (UDP, TPROXY) listener port; "0" or "" leaves
#                    UDP alone (no UDP rules, no policy routing)     15002
#   EGRESSD_UDP_PORTS  UDP destination ports to TPROXY            443,7844
#   EGRESSD_MARK     packets with this mark are not redirected     0x1e55
#                    (egressd sets it on its upstream sockets, and on its
#                    QUIC reply sockets, with server { upstream_mark = 7765 },
#                    0x1e55 = 7765; needs CAP_NET_ADMIN for SO_MARK)
#   EGRESSD_UID      if set, packets of sockets owned by this UID are not
#                    redirected either (egressd's UID; 65532 in the image)
#   EGRESSD_TPROXY_MARK  fwmark routing TPROXY'd UDP to the local host
#                    (policy routing, below); must differ from EGRESSD_MARK
#                                                                   0x1e56
#   EGRESSD_ROUTE_TABLE  routing table for it: 1..2147483647, not 253-255
#                                                                   7766
#   EGRESSD_FORWARD  1: also redirect traffic forwarded through this host or
#                    namespace (other hosts/containers using it as their
#                    gateway): nat PREROUTING (TCP), mangle PREROUTING on
#                    every interface (UDP). 0: locally generated only.   1
#   EGRESSD_IPV6     iptables backend: 1 also programs ip6tables       1
#
# `remove` must see the same EGRESSD_TPROXY_MARK and EGRESSD_ROUTE_TABLE as
# `install` did (they name the policy routing rule and table it deletes).
#
# The loop exception (mark and/or UID) is what keeps egressd's own upstream
# connections, which go out through the same nat OUTPUT hook, from being
# redirected back to egressd. At least one of the two must identify egressd:
# the mark when egressd has upstream_mark set, the UID otherwise. For UDP the
# same exception covers egressd's upstream sockets and its reply sockets
# (bound to the client's original destination; their datagrams to the client
# must leave as they are, not be marked for TPROXY).
#
# What install adds:
#   nftables: one table, `inet egressd` (IPv4 and IPv6), with chains
#     output     (nat, hook output)      loopback, mark, uid: return; redirect
#     prerouting (nat, hook prerouting)  to local addresses: return; redirect
#                                        (only with EGRESSD_FORWARD=1)
#     udp_output (route, hook output, priority mangle)
#                                        loopback, mark, uid: return;
#                                        UDP to the ports: meta mark set
#                                        EGRESSD_TPROXY_MARK
#     udp_prerouting (filter, hook prerouting, priority mangle)
#                                        [FORWARD=0: not from lo: return];
#                                        to local addresses: return; UDP to
#                                        the ports: tproxy to :QUIC_PORT,
#                                        meta mark set EGRESSD_TPROXY_MARK,
#                                        accept (IPv4: tproxy ip, IPv6:
#                                        tproxy ip6); else, if no socket
#                                        took them, drop
#   The table is replaced atomically on every install; remove deletes it.
#   iptables (and ip6tables): chains EGRESSD (jumped to from nat OUTPUT) and
#     EGRESSD_PRE (from nat PREROUTING; a separate chain because the owner
#     match is not allowed on PREROUTING); for UDP, EGRESSD_UDP_OUT (from
#     mangle OUTPUT: loopback, mark, uid: RETURN; else MARK --set-mark
#     TPROXY_MARK) and EGRESSD_UDP (from mangle PREROUTING: [FORWARD=0:
#     ! -i lo RETURN]; LOCAL destinations RETURN; else TPROXY --on-port
#     QUIC_PORT --tproxy-mark TPROXY_MARK/0xffffffff). The chains are
#     (re)filled atomically with iptables-restore --noflush; the jumps are
#     added once.
#   Policy routing, for both backends (and IPv6 where the kernel has it):
#     ip rule add fwmark TPROXY_MARK lookup ROUTE_TABLE
#     ip route add local 0.0.0.0/0 dev lo table ROUTE_TABLE  (-6: local ::/0)
#   added once, before the rules that set the mark; removed after the last
#   backend's UDP rules are gone. The marks are whole-value (mask
#   0xffffffff) everywhere, as the ip rule matches them.
#
# Why UDP needs more than TCP: a UDP socket has no SO_ORIGINAL_DST, so UDP is
# not NATed but TPROXY'd: the datagram keeps its destination address and is
# delivered to egressd's IP_TRANSPARENT socket, which reads the original
# destination from IP_RECVORIGDSTADDR. TPROXY only exists in PREROUTING, and
# the TPROXY'd packet (destination not local) must then be routed to the
# local host: that is the mark plus the `local` route of ROUTE_TABLE.
#   * forwarded UDP (from other hosts/containers) enters PREROUTING on its
#     interface and is TPROXY'd there;
#   * locally generated UDP never passes PREROUTING on its own: udp_output /
#     EGRESSD_UDP_OUT marks it, the mark reroutes it (route hook / mangle
#     OUTPUT reroute) by the policy rule to `lo`, and it comes back in on lo
#     through PREROUTING, where the same TPROXY rule takes it. So the
#     PREROUTING rule is needed even with EGRESSD_FORWARD=0; it is then
#     restricted to packets arriving on lo (iifname "lo" / -i lo), so that
#     forwarded UDP is left alone, as forwarded TCP is.
#   * egressd's replies leave from sockets bound to the original destination
#     (IP_TRANSPARENT); they carry EGRESSD_MARK (or egressd's UID) and are not
#     marked; to a local client they go via lo and PREROUTING sees a local
#     destination: return.
#   * "to local addresses: return" leaves UDP servers on this host alone.
#   * without a socket to deliver to (egressd not running, or an IPv4-only
#     quic_listen for IPv6 datagrams) the datagram is dropped: fail closed
#     (iptables' TPROXY drops by itself; nft's tproxy falls through to the
#     drop rule).
#   * the kernel's TPROXY socket lookup first looks for an established
#     (connected) socket for the 4-tuple, so datagrams of a flow may go to
#     egressd's connected per-flow socket rather than to the listener.
#
# IPv6 connections to the redirected ports are redirected to [::1]:PORT
# (OUTPUT) or the receiving address (PREROUTING): with an IPv4-only
# transparent_listen they are refused, which fails closed. IPv6 UDP is
# TPROXY'd likewise and dropped unless quic_listen is an IPv6 ([::]) address.
set -euo pipefail

PORT=${EGRESSD_PORT:-15001}
PORTS=${EGRESSD_PORTS:-443,7844}
MARK=${EGRESSD_MARK:-0x1e55}
UID_EXEMPT=${EGRESSD_UID:-}
FORWARD=${EGRESSD_FORWARD:-1}
IPV6=${EGRESSD_IPV6:-1}
QUIC_PORT=${EGRESSD_QUIC_PORT-15002}
UDP_PORTS=${EGRESSD_UDP_PORTS:-443,7844}
TPMARK=${EGRESSD_TPROXY_MARK:-0x1e56}
RT_TABLE=${EGRESSD_ROUTE_TABLE:-7766}

TABLE="inet egressd"
CHAIN=EGRESSD
CHAIN_PRE=EGRESSD_PRE
CHAIN_UDP=EGRESSD_UDP
CHAIN_UDP_OUT=EGRESSD_UDP_OUT
CHAIN_UDP_GUARD=EGRESSD_UDP_GUARD

die() { echo "egressd-gateway: $*" >&2; exit 2; }
usage() { die "usage: $0 install|remove|status [--nft|--iptables]"; }

# --- arguments, checked strictly: they are pasted into rule sets ------------
[ $# -ge 1 ] && [ $# -le 2 ] || usage
action=$1
backend=${2:-}
case $action in install|remove|status) ;; *) usage ;; esac
case $backend in --nft) backend=nft ;; --iptables) backend=iptables ;; "") ;; *) usage ;; esac

# Ports and marks are written without leading zeros: nft and iptables read
# 0443 as octal (port 291), so "0443" is refused rather than mistaken.
isport() { [[ $1 =~ ^[1-9][0-9]{0,4}$ ]] && [ "$1" -le 65535 ]; }
isport "$PORT" || die "EGRESSD_PORT: not a port (1-65535, no leading zero): $PORT"
[[ $PORTS =~ ^[^,](.*[^,])?$ && $PORTS != *,,* ]] || die "EGRESSD_PORTS: a comma-separated list of ports: $PORTS"
IFS=, read -r -a port_list <<<"$PORTS"
[ ${#port_list[@]} -ge 1 ] || die "EGRESSD_PORTS is empty"
for p in "${port_list[@]}"; do isport "$p" || die "EGRESSD_PORTS: not a port (1-65535, no leading zero): $p"; done
ismark() { [[ $1 =~ ^(0x[0-9a-fA-F]{1,8}|[1-9][0-9]{0,9})$ ]] && [ "$(($1))" -ge 1 ] && [ "$(($1))" -le 4294967295 ]; }
ismark "$MARK" || die "EGRESSD_MARK: not a non-zero 32-bit number: $MARK"
MARK_HEX=$(printf '0x%x' "$((MARK))")
[ "$QUIC_PORT" != 0 ] || QUIC_PORT=
[ -z "$QUIC_PORT" ] || isport "$QUIC_PORT" || die "EGRESSD_QUIC_PORT: not a port (0 or empty: no UDP): $QUIC_PORT"
[[ $UDP_PORTS =~ ^[^,](.*[^,])?$ && $UDP_PORTS != *,,* ]] || die "EGRESSD_UDP_PORTS: a comma-separated list of ports: $UDP_PORTS"
IFS=, read -r -a udp_port_list <<<"$UDP_PORTS"
[ ${#udp_port_list[@]} -ge 1 ] || die "EGRESSD_UDP_PORTS is empty"
for p in "${udp_port_list[@]}"; do isport "$p" || die "EGRESSD_UDP_PORTS: not a port (1-65535, no leading zero): $p"; done
ismark "$TPMARK" || die "EGRESSD_TPROXY_MARK: not a non-zero 32-bit number: $TPMARK"
TPMARK_HEX=$(printf '0x%x' "$((TPMARK))")
[ "$TPMARK_HEX" != "$MARK_HEX" ] || die "EGRESSD_TPROXY_MARK must differ from EGRESSD_MARK ($MARK_HEX)"
istable() {
  [[ $1 =~ ^[0-9]{1,10}$ ]] || return 1
  local t=$((10#$1))
  [ "$t" -ge 1 ] && [ "$t" -le 2147483647 ] && { [ "$t" -lt 253 ] || [ "$t" -gt 255 ]; }
}
istable "$RT_TABLE" || die "EGRESSD_ROUTE_TABLE: not a routing table number (1..2147483647, not 253-255): $RT_TABLE"
RT_TABLE=$((10#$RT_TABLE))
[ -z "$UID_EXEMPT" ] || [[ $UID_EXEMPT =~ ^[0-9]{1,10}$ ]] || die "EGRESSD_UID: not a numeric UID: $UID_EXEMPT"
[[ $FORWARD =~ ^[01]$ ]] || die "EGRESSD_FORWARD: 0 or 1"
[[ $IPV6 =~ ^[01]$ ]] || die "EGRESSD_IPV6: 0 or 1"

have() { command -v "$1" >/dev/null 2>&1; }

if [ -z "$backend" ] && [ "$action" != remove ]; then
  if have nft; then backend=nft
  elif have iptables; then backend=iptables
  else die "neither nft nor iptables is installed"
  fi
fi

UDP_PORTS=$(IFS=,; echo "${udp_port_list[*]}")

# --- policy routing for TPROXY'd UDP (both backends) -----------------------------
# IPv6 only where the kernel has it and lo has not got it disabled (a
# container with IPv6 off has no IPv6 traffic to intercept either).
route_families() {
  echo 4
  if [ -e /proc/net/if_inet6 ] && [ "$(cat /proc/sys/net/ipv6/conf/lo/disable_ipv6 2>/dev/null || echo 0)" != 1 ] &&
    ip -6 rule show >/dev/null 2>&1; then
    echo 6
  fi
}
route_install() {
  local f dst out
  for f in $(route_families); do
    dst=0.0.0.0/0; [ "$f" = 6 ] && dst=::/0
    out=$(ip -"$f" rule show)
    grep -qE "[[:space:]]fwmark $TPMARK_HEX lookup $RT_TABLE([[:space:]]|\$)" <<<"$out" ||
      ip -"$f" rule add fwmark "$TPMARK_HEX" lookup "$RT_TABLE"
    out=$(ip -"$f" route show table "$RT_TABLE" 2>/dev/null || true)
    grep -qE "^local default dev lo( |\$)" <<<"$out" ||
      ip -"$f" route add local "$dst" dev lo table "$RT_TABLE"
  done
}
route_remove() {
  local f dst
  have ip || return 0
  for f in 4 6; do
    ip -"$f" rule show >/dev/null 2>&1 || continue
    dst=0.0.0.0/0; [ "$f" = 6 ] && dst=::/0
    while ip -"$f" rule del fwmark "$TPMARK_HEX" lookup "$RT_TABLE" 2>/dev/null; do :; done
    while ip -"$f" route del local "$dst" dev lo table "$RT_TABLE" 2>/dev/null; do :; done
  done
}
route_status() {
  local f
  have ip || { echo "# no ip (iproute2): policy routing not shown"; return 0; }
  for f in $(route_families); do
    echo "# ip -$f rule, route table $RT_TABLE"
    ip -"$f" rule show | grep -E "[[:space:]]fwmark $TPMARK_HEX lookup $RT_TABLE([[:space:]]|\$)" || echo "no fwmark $TPMARK_HEX rule"
    ip -"$f" route show table "$RT_TABLE" 2>/dev/null | grep . || echo "no routes in table $RT_TABLE"
  done
}
# udp_rules_present: does either backend still have egressd's UDP rules (which
# need the policy routing)?
udp_rules_present() {
  if have nft && nft list chain $TABLE udp_prerouting >/dev/null 2>&1; then return 0; fi
  local c
  for c in iptables ip6tables; do
    if have "$c" && "$c" -t mangle -S $CHAIN_UDP >/dev/null 2>&1; then return 0; fi
  done
  return 1
}
# route_cleanup: after UDP rules were removed, remove the routing unless the
# other backend still uses it.
route_cleanup() { udp_rules_present || route_remove; }

if [ "$action" = install ] && [ -n "$QUIC_PORT" ] && ! have ip; then
  die "the UDP part needs ip (iproute2) for its policy routing; install it (EGRESSD_QUIC_PORT=0 would leave UDP ${UDP_PORTS} unfiltered)"
fi

# --- nftables -----------------------------------------------------------------
nft_ruleset() {
  local ports udp_ports
  ports=$(IFS=,; echo "${port_list[*]}" | sed 's/,/, /g')
  udp_ports=$(IFS=,; echo "${udp_port_list[*]}" | sed 's/,/, /g')
  # Declaring the table, then deleting it, then defining it in one
  # transaction replaces any earlier version atomically (and works on the
  # first install, when there is nothing to delete).
  echo "table $TABLE {}"
  echo "delete table $TABLE"
  echo "table $TABLE {"
  echo "  chain output {"
  echo "    type nat hook output priority -100; policy accept;"
  echo "    oifname \"lo\" return"
  echo "    meta mark $MARK_HEX return"
  [ -z "$UID_EXEMPT" ] || echo "    meta skuid $UID_EXEMPT return"
  echo "    meta l4proto tcp th dport { $ports } redirect to :$PORT"
  echo "  }"
  if [ "$FORWARD" = 1 ]; then
    echo "  chain prerouting {"
    echo "    type nat hook prerouting priority -100; policy accept;"
    echo "    fib daddr type local return"
    echo "    meta l4proto tcp th dport { $ports } redirect to :$PORT"
    echo "  }"
  fi
  if [ -n "$QUIC_PORT" ]; then
    # Locally generated UDP: the mark reroutes it (route hook) to lo.
    echo "  chain udp_output {"
    echo "    type route hook output priority mangle; policy accept;"
    echo "    oifname \"lo\" return"
    echo "    meta mark $MARK_HEX return"
    [ -z "$UID_EXEMPT" ] || echo "    meta skuid $UID_EXEMPT return"
    echo "    udp dport { $udp_ports } meta mark set $TPMARK_HEX"
    echo "  }"
    # Forwarded UDP, and local UDP coming back in on lo: TPROXY. nft's tproxy
    # does not drop when no socket takes the packet (it ends the rule):
    # the last rule does, so that UDP to the ports never bypasses egressd.
    echo "  chain udp_prerouting {"
    echo "    type filter hook prerouting priority mangle; policy accept;"
    [ "$FORWARD" = 1 ] || echo "    iifname != \"lo\" return"
    echo "    fib daddr type local return"
    echo "    meta nfproto ipv4 udp dport { $udp_ports } tproxy ip to :$QUIC_PORT meta mark set $TPMARK_HEX accept"
    echo "    meta nfproto ipv6 udp dport { $udp_ports } tproxy ip6 to :$QUIC_PORT meta mark set $TPMARK_HEX accept"
    echo "    udp dport { $udp_ports } drop"
    echo "  }"
    # The mark reroutes local UDP to lo, unless its socket is bound to a
    # device (SO_BINDTODEVICE, unprivileged since Linux 5.7), or the
    # family has no route to lo (IPv6 off on lo): such datagrams would
    # leave directly. They are dropped instead.
    echo "  chain udp_guard {"
    echo "    type filter hook postrouting priority 0; policy accept;"
    echo "    meta l4proto udp meta mark $TPMARK_HEX oifname != \"lo\" drop"
    echo "  }"
  fi
  echo "}"
}

nft_install() {
  # Routing first: until the rules exist it routes nothing (no packet has
  # the mark); the other way round, marked local UDP would briefly go out.
  if [ -n "$QUIC_PORT" ]; then route_install; fi
  nft_ruleset | nft -f -
  if [ -z "$QUIC_PORT" ]; then route_cleanup; fi
}
nft_remove() {
  if nft list table $TABLE >/dev/null 2>&1; then nft delete table $TABLE; fi
}
nft_status() { nft list table $TABLE 2>/dev/null || echo "no table $TABLE"; }

# --- iptables -----------------------------------------------------------------
ipt_cmds() {
  echo iptables
  if [ "$IPV6" = 1 ] && have ip6tables; then echo ip6tables; fi
}

ipt_install_one() { # iptables|ip6tables
  local ipt=$1 lo=127.0.0.0/8
  [ "$ipt" = ip6tables ] && lo=::1/128
  # Declaring a chain in a --noflush restore creates it or empties it, and
  # the whole table update is one commit: the chains are never half-filled.
  {
    echo "*nat"
    echo ":$CHAIN - [0:0]"
    echo "-A $CHAIN -o lo -j RETURN"
    echo "-A $CHAIN -d $lo -j RETURN"
    echo "-A $CHAIN -m mark --mark $MARK_HEX -j RETURN"
    [ -z "$UID_EXEMPT" ] || echo "-A $CHAIN -m owner --uid-owner $UID_EXEMPT -j RETURN"
    echo "-A $CHAIN -p tcp -m multiport --dports $PORTS -j REDIRECT --to-ports $PORT"
    if [ "$FORWARD" = 1 ]; then
      echo ":$CHAIN_PRE - [0:0]"
      echo "-A $CHAIN_PRE -m addrtype --dst-type LOCAL -j RETURN"
      echo "-A $CHAIN_PRE -p tcp -m multiport --dports $PORTS -j REDIRECT --to-ports $PORT"
    fi
    echo "COMMIT"
  } | "$ipt-restore" --noflush
  if [ -n "$QUIC_PORT" ]; then
    {
      echo "*mangle"
      echo ":$CHAIN_UDP_OUT - [0:0]"
      echo "-A $CHAIN_UDP_OUT -o lo -j RETURN"
      echo "-A $CHAIN_UDP_OUT -d $lo -j RETURN"
      echo "-A $CHAIN_UDP_OUT -m mark --mark $MARK_HEX -j RETURN"
      [ -z "$UID_EXEMPT" ] || echo "-A $CHAIN_UDP_OUT -m owner --uid-owner $UID_EXEMPT -j RETURN"
      echo "-A $CHAIN_UDP_OUT -p udp -m multiport --dports $UDP_PORTS -j MARK --set-mark $TPMARK_HEX"
      echo ":$CHAIN_UDP - [0:0]"
      [ "$FORWARD" = 1 ] || echo "-A $CHAIN_UDP ! -i lo -j RETURN"
      echo "-A $CHAIN_UDP -m addrtype --dst-type LOCAL -j RETURN"
      echo "-A $CHAIN_UDP -p udp -m multiport --dports $UDP_PORTS -j TPROXY --on-port $QUIC_PORT --tproxy-mark $TPMARK_HEX/0xffffffff"
      # Marked UDP that does not leave through lo (a socket bound to a
      # device, or no IPv6 route to lo) would go out directly: see nft.
      echo ":$CHAIN_UDP_GUARD - [0:0]"
      echo "-A $CHAIN_UDP_GUARD -m mark --mark $TPMARK_HEX ! -o lo -j DROP"
      echo "COMMIT"
    } | "$ipt-restore" --noflush
    "$ipt" -t mangle -C PREROUTING -p udp -j $CHAIN_UDP 2>/dev/null || "$ipt" -t mangle -A PREROUTING -p udp -j $CHAIN_UDP
    "$ipt" -t mangle -C OUTPUT -p udp -j $CHAIN_UDP_OUT 2>/dev/null || "$ipt" -t mangle -A OUTPUT -p udp -j $CHAIN_UDP_OUT
    "$ipt" -t mangle -C POSTROUTING -p udp -j $CHAIN_UDP_GUARD 2>/dev/null || "$ipt" -t mangle -A POSTROUTING -p udp -j $CHAIN_UDP_GUARD
  else
    ipt_remove_udp "$ipt" # a reinstall with EGRESSD_QUIC_PORT=0 drops it
  fi
  "$ipt" -t nat -C OUTPUT -p tcp -j $CHAIN 2>/dev/null || "$ipt" -t nat -A OUTPUT -p tcp -j $CHAIN
  if [ "$FORWARD" = 1 ]; then
    "$ipt" -t nat -C PREROUTING -p tcp -j $CHAIN_PRE 2>/dev/null || "$ipt" -t nat -A PREROUTING -p tcp -j $CHAIN_PRE
  else
    ipt_remove_pre "$ipt" # a reinstall with EGRESSD_FORWARD=0 drops it
  fi
}

ipt_remove_pre() {
  local ipt=$1
  while "$ipt" -t nat -C PREROUTING -p tcp -j $CHAIN_PRE 2>/dev/null; do
    "$ipt" -t nat -D PREROUTING -p tcp -j $CHAIN_PRE
  done
  if "$ipt" -t nat -S $CHAIN_PRE >/dev/null 2>&1; then
    "$ipt" -t nat -F $CHAIN_PRE
    "$ipt" -t nat -X $CHAIN_PRE
  fi
}

# ipt_remove_chain IPT TABLE HOOK CHAIN: the jumps from HOOK, then CHAIN.
ipt_remove_chain() {
  local ipt=$1 t=$2 hook=$3 chain=$4
  while "$ipt" -t "$t" -C "$hook" -p udp -j "$chain" 2>/dev/null; do
    "$ipt" -t "$t" -D "$hook" -p udp -j "$chain"
  done
  if "$ipt" -t "$t" -S "$chain" >/dev/null 2>&1; then
    "$ipt" -t "$t" -F "$chain"
    "$ipt" -t "$t" -X "$chain"
  fi
}
ipt_remove_udp() {
  local ipt=$1
  ipt_remove_chain "$ipt" mangle OUTPUT $CHAIN_UDP_OUT
  ipt_remove_chain "$ipt" mangle PREROUTING $CHAIN_UDP
  ipt_remove_chain "$ipt" mangle POSTROUTING $CHAIN_UDP_GUARD
}

ipt_remove_one() {
  local ipt=$1
  ipt_remove_udp "$ipt"
  while "$ipt" -t nat -C OUTPUT -p tcp -j $CHAIN 2>/dev/null; do
    "$ipt" -t nat -D OUTPUT -p tcp -j $CHAIN
  done
  if "$ipt" -t nat -S $CHAIN >/dev/null 2>&1; then
    "$ipt" -t nat -F $CHAIN
    "$ipt" -t nat -X $CHAIN
  fi
  ipt_remove_pre "$ipt"
}

ipt_install() {
  if [ "$IPV6" = 1 ] && [ -e /proc/net/if_inet6 ] && ! have ip6tables; then
    die "ip6tables is missing: IPv6 connections would bypass egressd; install it, or set EGRESSD_IPV6=0 if this host has no IPv6 route out"
  fi
  if [ -n "$QUIC_PORT" ]; then route_install; fi # first: see nft_install
  for c in $(ipt_cmds); do ipt_install_one "$c"; done
  if [ -z "$QUIC_PORT" ]; then route_cleanup; fi
}
ipt_remove() { for c in $(ipt_cmds); do ipt_remove_one "$c"; done; }
ipt_status() {
  for c in $(ipt_cmds); do
    echo "# $c -t nat"
    "$c" -t nat -S | grep -E -- "(-N|-A|-j) ($CHAIN|$CHAIN_PRE)( |$)" || echo "no $CHAIN chains"
    echo "# $c -t mangle"
    "$c" -t mangle -S | grep -E -- "(-N|-A|-j) ($CHAIN_UDP|$CHAIN_UDP_OUT|$CHAIN_UDP_GUARD)( |$)" || echo "no $CHAIN_UDP chains"
  done
}

# --- main -----------------------------------------------------------------------
case $action in
  install)
    "${backend/iptables/ipt}_install"
    udp_msg=", UDP: none"
    [ -z "$QUIC_PORT" ] || udp_msg=", UDP ${UDP_PORTS} -> TPROXY :$QUIC_PORT (fwmark $TPMARK_HEX, table $RT_TABLE)"
    echo "egressd-gateway: installed ($backend): TCP ${PORTS} -> :$PORT$udp_msg, except mark $MARK_HEX${UID_EXEMPT:+ and uid $UID_EXEMPT}$([ "$FORWARD" = 1 ] && echo ", forwarded traffic too")"
    ;;
  remove)
    if [ -z "$backend" ]; then
      if have nft; then nft_remove; fi
      if have iptables; then ipt_remove; fi
    else
      "${backend/iptables/ipt}_remove"
    fi
    route_cleanup # after the rules that set the mark; unless still in use
    echo "egressd-gateway: removed"
    ;;
  status)
    "${backend/iptables/ipt}_status"
    route_status
    ;;
esac
