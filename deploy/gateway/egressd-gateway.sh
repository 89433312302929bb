#!/usr/bin/env bash
# egressd-gateway.sh: redirect outbound TCP 443 and 7844 to egressd's
# transparent listener (server.transparent_listen / serve --transparent-listen),
# in the current network namespace: a host, a container's namespace, a pod's.
#
#   egressd-gateway.sh install [--nft|--iptables]   add the rules (idempotent)
#   egressd-gateway.sh remove  [--nft|--iptables]   delete exactly those rules
#   egressd-gateway.sh status  [--nft|--iptables]   print them
#
# Without a flag: nftables when `nft` is installed, else iptables. `remove`
# without a flag removes egressd's rules from both, where present.
#
# Environment:
#   EGRESSD_PORT     transparent listener port                     15001
#   EGRESSD_PORTS    destination ports to redirect, comma-separated 443,7844
#   EGRESSD_MARK     packets with this mark are not redirected     0x1e55
#                    (egressd sets it on its upstream sockets with
#                    server { upstream_mark = 7765 }, 0x1e55 = 7765; needs
#                    CAP_NET_ADMIN for SO_MARK)
#   EGRESSD_UID      if set, packets of sockets owned by this UID are not
#                    redirected either (egressd's UID; 65532 in the image)
#   EGRESSD_FORWARD  1: also redirect traffic forwarded through this host or
#                    namespace (other hosts/containers using it as their
#                    gateway): nat PREROUTING. 0: locally generated only.   1
#   EGRESSD_IPV6     iptables backend: 1 also programs ip6tables       1
#
# The loop exception (mark and/or UID) is what keeps egressd's own upstream
# connections, which go out through the same nat OUTPUT hook, from being
# redirected back to egressd. At least one of the two must identify egressd:
# the mark when egressd has upstream_mark set, the UID otherwise.
#
# What install adds:
#   nftables: one table, `inet egressd` (IPv4 and IPv6), with chains
#     output     (nat, hook output)      loopback, mark, uid: return; redirect
#     prerouting (nat, hook prerouting)  to local addresses: return; redirect
#   The table is replaced atomically on every install; remove deletes it.
#   iptables (and ip6tables): chains EGRESSD (jumped to from nat OUTPUT) and
#     EGRESSD_PRE (from nat PREROUTING; a separate chain because the owner
#     match is not allowed on PREROUTING). The chains are (re)filled
#     atomically with iptables-restore --noflush; the jumps are added once.
#
# IPv6 connections to the redirected ports are redirected to [::1]:PORT
# (OUTPUT) or the receiving address (PREROUTING): with an IPv4-only
# transparent_listen they are refused, which fails closed.
set -euo pipefail

PORT=${EGRESSD_PORT:-15001}
PORTS=${EGRESSD_PORTS:-443,7844}
MARK=${EGRESSD_MARK:-0x1e55}
UID_EXEMPT=${EGRESSD_UID:-}
FORWARD=${EGRESSD_FORWARD:-1}
IPV6=${EGRESSD_IPV6:-1}

TABLE="inet egressd"
CHAIN=EGRESSD
CHAIN_PRE=EGRESSD_PRE

die() { echo "egressd-gateway: $*" >&2; exit 2; }
usage() { die "usage: $0 install|remove|status [--nft|--iptables]"; }

# --- arguments, checked strictly: they are pasted into rule sets ------------
[ $# -ge 1 ] && [ $# -le 2 ] || usage
action=$1
backend=${2:-}
case $action in install|remove|status) ;; *) usage ;; esac
case $backend in --nft) backend=nft ;; --iptables) backend=iptables ;; "") ;; *) usage ;; esac

isport() { [[ $1 =~ ^[0-9]{1,5}$ ]] && [ "$((10#$1))" -ge 1 ] && [ "$((10#$1))" -le 65535 ]; }
isport "$PORT" || die "EGRESSD_PORT: not a port: $PORT"
IFS=, read -r -a port_list <<<"$PORTS"
[ ${#port_list[@]} -ge 1 ] || die "EGRESSD_PORTS is empty"
for p in "${port_list[@]}"; do isport "$p" || die "EGRESSD_PORTS: not a port: $p"; done
[[ $MARK =~ ^(0x[0-9a-fA-F]{1,8}|[0-9]{1,10})$ ]] && [ "$((MARK))" -ge 1 ] && [ "$((MARK))" -le 4294967295 ] ||
  die "EGRESSD_MARK: not a non-zero 32-bit number: $MARK"
[ -z "$UID_EXEMPT" ] || [[ $UID_EXEMPT =~ ^[0-9]{1,10}$ ]] || die "EGRESSD_UID: not a numeric UID: $UID_EXEMPT"
[[ $FORWARD =~ ^[01]$ ]] || die "EGRESSD_FORWARD: 0 or 1"
[[ $IPV6 =~ ^[01]$ ]] || die "EGRESSD_IPV6: 0 or 1"
MARK_HEX=$(printf '0x%x' "$((MARK))")

have() { command -v "$1" >/dev/null 2>&1; }

if [ -z "$backend" ] && [ "$action" != remove ]; then
  if have nft; then backend=nft
  elif have iptables; then backend=iptables
  else die "neither nft nor iptables is installed"
  fi
fi

# --- nftables -----------------------------------------------------------------
nft_ruleset() {
  local ports
  ports=$(IFS=,; echo "${port_list[*]}" | sed 's/,/, /g')
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
  echo "}"
}

nft_install() { nft_ruleset | nft -f -; }
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

ipt_remove_one() {
  local ipt=$1
  while "$ipt" -t nat -C OUTPUT -p tcp -j $CHAIN 2>/dev/null; do
    "$ipt" -t nat -D OUTPUT -p tcp -j $CHAIN
  done
  if "$ipt" -t nat -S $CHAIN >/dev/null 2>&1; then
    "$ipt" -t nat -F $CHAIN
    "$ipt" -t nat -X $CHAIN
  fi
  ipt_remove_pre "$ipt"
}

ipt_install() { for c in $(ipt_cmds); do ipt_install_one "$c"; done; }
ipt_remove() { for c in $(ipt_cmds); do ipt_remove_one "$c"; done; }
ipt_status() {
  for c in $(ipt_cmds); do
    echo "# $c -t nat"
    "$c" -t nat -S | grep -E -- "(-N|-A|-j) ($CHAIN|$CHAIN_PRE)( |$)" || echo "no $CHAIN chains"
  done
}

# --- main -----------------------------------------------------------------------
case $action in
  install)
    "${backend/iptables/ipt}_install"
    echo "egressd-gateway: installed ($backend): TCP ${PORTS} -> :$PORT, except mark $MARK_HEX${UID_EXEMPT:+ and uid $UID_EXEMPT}$([ "$FORWARD" = 1 ] && echo ", forwarded traffic too")"
    ;;
  remove)
    if [ -z "$backend" ]; then
      if have nft; then nft_remove; fi
      if have iptables; then ipt_remove; fi
    else
      "${backend/iptables/ipt}_remove"
    fi
    echo "egressd-gateway: removed"
    ;;
  status)
    "${backend/iptables/ipt}_status"
    ;;
esac
