#!/usr/bin/env bash
# Tests egressd-gateway.sh for real, in a network namespace of its own (the
# host's rules are never touched; the test checks that too):
#   for each backend (nft, iptables):
#     install twice  -> the rules are present exactly once
#     (functional)   -> TCP to 192.0.2.1:443 lands on a stand-in listener on
#                       :15001; not with the socket mark, not as the exempt
#                       UID, not on port 80
#                    -> UDP to 192.0.2.1:7844 and :443, from the gateway
#                       itself and forwarded from a client namespace, is
#                       TPROXY'd to a stand-in QUIC listener on :15002
#                       (IP_TRANSPARENT, IP_RECVORIGDSTADDR) that sees the
#                       original destination and answers from it; not with
#                       the socket mark, not as the exempt UID, not to
#                       ports 53 and 8443; a socket bound to the
#                       outward device (SO_BINDTODEVICE) does not get out
#     install again with EGRESSD_FORWARD=0 -> the prerouting part is gone
#                       (UDP: TPROXY only for packets coming in on lo)
#     remove twice   -> nothing of egressd is left, ip rules and routes too
# The UDP checks are IPv4 only (the IPv6 rules and routes are checked for
# presence, not with traffic).
# Needs root, ip, nft, iptables, ip6tables (python3 and setpriv for the
# functional part). Without them it skips, unless CI=true, where it fails.
#
#   sudo deploy/gateway/test.sh
set -euo pipefail
cd "$(dirname "$0")"
script=$PWD/egressd-gateway.sh

skip() {
  if [ "${CI:-}" = true ]; then echo "FAIL (CI=true, cannot skip): $*" >&2; exit 1; fi
  echo "SKIP: $*"; exit 0
}
[ "$(id -u)" = 0 ] || skip "deploy/gateway/test.sh needs root (network namespaces, netfilter)"
for tool in ip nft iptables ip6tables iptables-restore; do
  command -v "$tool" >/dev/null 2>&1 || skip "$tool is not installed (apt-get install nftables iptables iproute2)"
done

ns=egressd-gw-test-$$
host_state() {
  { nft list ruleset; iptables -t nat -S; iptables -t mangle -S; ip6tables -t nat -S; ip6tables -t mangle -S
    ip rule; ip -6 rule; ip route show table all; ip -6 route show table all; } 2>/dev/null | sha256sum
}
host_before=$(host_state)
ip netns add "$ns"
listener=
udp_listener=
cleanup() {
  [ -z "$listener" ] || kill "$listener" 2>/dev/null || true
  [ -z "$udp_listener" ] || kill "$udp_listener" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  ip netns del "$ns-c" 2>/dev/null || true
}
trap cleanup EXIT
in_ns() { ip netns exec "$ns" "$@"; }
in_ns ip link set lo up

failures=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }

# count PATTERN TEXT: number of lines of TEXT matching the fixed string.
count() { grep -cF -- "$1" <<<"$2" || true; }
expect() { # description pattern text want
  local n; n=$(count "$2" "$3")
  if [ "$n" = "$4" ]; then pass "$1: '$2' x$n"; else fail "$1: '$2' x$n, want x$4"; fi
}

export EGRESSD_UID=65532 # exercise the owner exception too

# --- functional set-up ----------------------------------------------------------
# A second namespace, the "client", is wired to the test namespace, the
# "gateway", with a veth pair, and routes everything through it, like a host
# or container using egressd's host as its gateway:
#   client  v1 10.99.0.2/24, default via 10.99.0.1
#   gateway v0 10.99.0.1/24, default via 10.99.0.2 (so that its own
#           connections to 192.0.2.1 have a route; the client does not forward
#           them, so they time out: "direct")
# A stand-in for egressd answers every connection on :15001 with "egressd".
functional=1
cns=$ns-c
if ! command -v python3 >/dev/null 2>&1 || ! command -v setpriv >/dev/null 2>&1 || ! command -v timeout >/dev/null 2>&1 || ! command -v dd >/dev/null 2>&1; then
  functional=0; echo "note: python3, setpriv, timeout or dd missing, functional checks skipped"
elif ! {
  ip netns add "$cns" &&
    in_ns ip link add v0 type veth peer name v1 netns "$cns" &&
    in_ns ip addr add 10.99.0.1/24 dev v0 && in_ns ip link set v0 up &&
    in_ns ip route add default via 10.99.0.2 dev v0 &&
    ip netns exec "$cns" ip link set lo up &&
    ip netns exec "$cns" ip addr add 10.99.0.2/24 dev v1 &&
    ip netns exec "$cns" ip link set v1 up &&
    ip netns exec "$cns" ip route add default via 10.99.0.1 dev v1
}; then
  functional=0; echo "note: cannot create a veth pair, functional checks skipped"
fi
if [ "$functional" = 1 ]; then
  # Bound to 0.0.0.0: the OUTPUT redirect goes to 127.0.0.1, the PREROUTING
  # one to 10.99.0.1.
  ip netns exec "$ns" python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 15001)); s.listen(16)
while True:
    c, _ = s.accept(); c.sendall(b"egressd\n"); c.close()
' &
  listener=$!
  # The QUIC stand-in: like egressd's quic_listen, a transparent UDP socket
  # that reads each datagram's original destination from IP_ORIGDSTADDR and
  # answers from a transparent socket bound to that address, marked like
  # egressd's reply sockets (upstream_mark).
  ip netns exec "$ns" python3 -c '
import socket, struct
IP_TRANSPARENT, IP_RECVORIGDSTADDR, SO_MARK = 19, 20, 36
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
s.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
s.bind(("0.0.0.0", 15002))
while True:
    data, anc, _, src = s.recvmsg(2048, 256)
    dst = None
    for level, typ, d in anc:
        if level == socket.SOL_IP and typ == IP_RECVORIGDSTADDR:  # IP_ORIGDSTADDR
            dst = (socket.inet_ntoa(d[4:8]), struct.unpack("!H", d[2:4])[0])
    if dst is None:
        continue
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    r.setsockopt(socket.SOL_SOCKET, SO_MARK, 0x1e55)
    try:
        r.bind(dst); r.sendto(("egressd %s:%d\n" % dst).encode(), src)
    finally:
        r.close()
' &
  udp_listener=$!
  sleep 0.5
fi
# probe [--client] [--mark] [--uid U] PORT: "redirected" if the connection
# to 192.0.2.1:PORT reached the stand-in, else "direct" (nothing forwards
# it, so the connect times out). --client: from the client namespace,
# through the gateway (prerouting); else from the gateway itself (output).
probe() {
  local mark=0 uid=0 where=$ns
  while [ $# -gt 1 ]; do
    case $1 in
      --mark) mark=$((0x1e55)); shift ;;
      --uid) uid=$2; shift 2 ;;
      --client) where=$cns; shift ;;
      *) echo "${FUNCNAME[0]}: unknown option $1" >&2; return 2 ;;
    esac
  done
  if [ "$mark" != 0 ]; then # SO_MARK needs python (and root: CAP_NET_ADMIN)
    ip netns exec "$where" python3 -c '
import socket, sys
s = socket.socket(); s.settimeout(2)
s.setsockopt(socket.SOL_SOCKET, 36, int(sys.argv[1]))  # SO_MARK
try:
    s.connect(("192.0.2.1", int(sys.argv[2]))); print("redirected" if s.recv(16) == b"egressd\n" else "other")
except OSError:
    print("direct")
' "$mark" "$1" || echo error
  else # bash and /dev/tcp: runs as any UID
    ip netns exec "$where" setpriv --reuid "$uid" --regid "$uid" --clear-groups \
      timeout 2 bash -c 'exec 3<>"/dev/tcp/192.0.2.1/$1" && read -r l <&3 && [ "$l" = egressd ] && echo redirected' _ "$1" ||
      echo direct
  fi
}
# probe_udp [--client] [--mark] [--uid U] PORT: "redirected" if a datagram
# to 192.0.2.1:PORT reached the QUIC stand-in, which saw 192.0.2.1:PORT as
# its original destination, and its answer came back from 192.0.2.1:PORT;
# "direct" if nothing answered; else what did.
probe_udp() {
  local mark=0 uid=0 where=$ns
  while [ $# -gt 1 ]; do
    case $1 in
      --mark) mark=$((0x1e55)); shift ;;
      --uid) uid=$2; shift 2 ;;
      --client) where=$cns; shift ;;
      *) echo "${FUNCNAME[0]}: unknown option $1" >&2; return 2 ;;
    esac
  done
  if [ "$uid" = 0 ]; then # python, root: checks the source address itself
    ip netns exec "$where" python3 -c '
import socket, sys
mark, port = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
if mark:
    s.setsockopt(socket.SOL_SOCKET, 36, mark)  # SO_MARK
s.sendto(b"quic?", ("192.0.2.1", port))
try:
    data, src = s.recvfrom(2048)
except OSError:
    print("direct"); sys.exit()
want = "egressd 192.0.2.1:%d\n" % port
if src == ("192.0.2.1", port) and data.decode() == want:
    print("redirected")
else:
    print("wrong: %r from %s:%d" % (data, src[0], src[1]))
' "$mark" "$1" || echo error
  else # bash and /dev/udp, a connected socket: answers only from
    # 192.0.2.1:PORT. dd reads the datagram whole (bash's read would take
    # one byte of it and lose the rest).
    ip netns exec "$where" setpriv --reuid "$uid" --regid "$uid" --clear-groups \
      timeout 2 bash -c 'exec 3<>"/dev/udp/192.0.2.1/$1" && printf "quic?" >&3 &&
        l=$(dd bs=2048 count=1 status=none <&3) && [ "$l" = "egressd 192.0.2.1:$1" ] && echo redirected' _ "$1" ||
      echo direct
  fi
}
# probe_udp_bound PORT: a datagram to 192.0.2.1:PORT from a socket bound to
# the gateway's v0 (SO_BINDTODEVICE: any user may since Linux 5.7; root
# here, which the rules do not exempt either), which keeps its device when
# the mark reroutes it: "dropped" if the kernel refused it (the guard),
# "direct" if it went out unanswered, "redirected" if the stand-in
# answered.
probe_udp_bound() {
  ip netns exec "$ns" python3 -c '
import socket, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
try:
    s.setsockopt(socket.SOL_SOCKET, 25, b"v0")  # SO_BINDTODEVICE
except OSError as e:
    print("cannot bind to a device: %s" % e); sys.exit()
try:
    s.sendto(b"quic?", ("192.0.2.1", port))
    s.recvfrom(2048)
    print("redirected")
except PermissionError:
    print("dropped")
except OSError:
    print("direct")
' "$1" || echo error
}
check_probe() { # description want probe-args...
  local desc=$1 want=$2 got; shift 2
  got=$(probe "$@")
  if [ "$got" = "$want" ]; then pass "$desc: $got"; else fail "$desc: $got, want $want"; fi
}
check_probe_udp() { # description want probe_udp-args...
  local desc=$1 want=$2 got; shift 2
  got=$(probe_udp "$@")
  if [ "$got" = "$want" ]; then pass "$desc: $got"; else fail "$desc: $got, want $want"; fi
}
functional_checks() { # backend
  [ "$functional" = 1 ] || return 0
  check_probe "$1: tcp/443 is redirected" redirected 443
  check_probe "$1: tcp/7844 is redirected" redirected 7844
  check_probe "$1: tcp/80 is not" direct 80
  check_probe "$1: mark 0x1e55 is not (loop exception)" direct --mark 443
  check_probe "$1: uid 65532 is not (loop exception)" direct --uid 65532 443
  check_probe "$1: uid 65533 is" redirected --uid 65533 443
  check_probe_udp "$1: udp/7844 is TPROXY'd" redirected 7844
  check_probe_udp "$1: udp/443 is TPROXY'd" redirected 443
  check_probe_udp "$1: udp/53 is not" direct 53
  check_probe_udp "$1: udp/8443 is not" direct 8443
  check_probe_udp "$1: udp, mark 0x1e55 is not (loop exception)" direct --mark 7844
  check_probe_udp "$1: udp, uid 65532 is not (loop exception)" direct --uid 65532 7844
  check_probe_udp "$1: udp, uid 65533 is" redirected --uid 65533 7844
  local got
  got=$(probe_udp_bound 7844)
  if [ "$got" = dropped ] || [ "$got" = redirected ]; then
    pass "$1: udp/7844 from a socket bound to v0 does not go out: $got"
  else
    fail "$1: udp/7844 from a socket bound to v0: $got, want dropped (SO_BINDTODEVICE bypass)"
  fi
  if [ "${2:-}" != noforward ]; then
    check_probe "$1: forwarded tcp/443 from the client namespace is redirected" redirected --client 443
    check_probe "$1: forwarded tcp/80 is not" direct --client 80
    check_probe_udp "$1: forwarded udp/7844 is TPROXY'd" redirected --client 7844
    check_probe_udp "$1: forwarded udp/443 is TPROXY'd" redirected --client 443
    check_probe_udp "$1: forwarded udp/53 is not" direct --client 53
    check_probe_udp "$1: forwarded udp/8443 is not" direct --client 8443
  else
    check_probe "$1: FORWARD=0, forwarded tcp/443 is not redirected" direct --client 443
    check_probe_udp "$1: FORWARD=0, forwarded udp/7844 is not TPROXY'd" direct --client 7844
  fi
}
functional_none() { # backend: after remove
  [ "$functional" = 1 ] || return 0
  check_probe "$1: removed, tcp/443 goes direct" direct 443
  check_probe "$1: removed, forwarded tcp/443 too" direct --client 443
  check_probe_udp "$1: removed, udp/7844 goes direct" direct 7844
  check_probe_udp "$1: removed, forwarded udp/7844 too" direct --client 7844
}
# routing FAMILY: the policy routing rule and table, as `ip` lists them.
routing() { ip netns exec "$ns" ip -"$1" rule show; ip netns exec "$ns" ip -"$1" route show table 7766 2>/dev/null || true; }
expect_routing() { # description want
  local f rs
  for f in 4 6; do
    rs=$(routing $f)
    expect "$1 (ip -$f)" "fwmark 0x1e56 lookup 7766" "$rs" "$2"
    expect "$1 (ip -$f)" "local default dev lo" "$rs" "$2"
  done
}

# --- nftables -----------------------------------------------------------------
echo "== nft"
in_ns "$script" install --nft >/dev/null
in_ns "$script" install --nft >/dev/null
rs=$(in_ns nft list ruleset)
expect "nft install x2" "table inet egressd {" "$rs" 1
expect "nft install x2" "chain output {" "$rs" 1
expect "nft install x2" "chain prerouting {" "$rs" 1
expect "nft install x2" "redirect to :15001" "$rs" 2
expect "nft install x2" "meta mark 0x00001e55 return" "$rs" 2 # output, udp_output
expect "nft install x2" "meta skuid 65532 return" "$rs" 2
expect "nft install x2" 'oifname "lo" return' "$rs" 2 # output, udp_output
expect "nft install x2" "chain udp_output {" "$rs" 1
expect "nft install x2" "chain udp_prerouting {" "$rs" 1
expect "nft install x2" "chain udp_guard {" "$rs" 1
expect "nft install x2" 'meta l4proto udp meta mark 0x00001e56 oifname != "lo" drop' "$rs" 1
expect "nft install x2" "type route hook output priority mangle;" "$rs" 1
expect "nft install x2" "type filter hook prerouting priority mangle;" "$rs" 1
expect "nft install x2" "udp dport { 443, 7844 } meta mark set 0x00001e56" "$rs" 1
expect "nft install x2" "meta nfproto ipv4 udp dport { 443, 7844 } tproxy ip to :15002 meta mark set 0x00001e56 accept" "$rs" 1
expect "nft install x2" "meta nfproto ipv6 udp dport { 443, 7844 } tproxy ip6 to :15002 meta mark set 0x00001e56 accept" "$rs" 1
expect "nft install x2" 'iifname != "lo" return' "$rs" 0
expect_routing "nft install x2" 1
functional_checks nft
EGRESSD_FORWARD=0 in_ns "$script" install --nft >/dev/null
rs=$(in_ns nft list ruleset)
expect "nft FORWARD=0" "chain prerouting {" "$rs" 0
expect "nft FORWARD=0" "redirect to :15001" "$rs" 1
expect "nft FORWARD=0" 'iifname != "lo" return' "$rs" 1
expect "nft FORWARD=0" "tproxy ip to :15002" "$rs" 1
expect_routing "nft FORWARD=0" 1
functional_checks "nft FORWARD=0" noforward
EGRESSD_QUIC_PORT=0 in_ns "$script" install --nft >/dev/null
rs=$(in_ns nft list ruleset)
expect "nft QUIC_PORT=0" "udp" "$rs" 0
expect "nft QUIC_PORT=0" "redirect to :15001" "$rs" 2
expect_routing "nft QUIC_PORT=0" 0
in_ns "$script" install --nft >/dev/null
in_ns "$script" remove --nft >/dev/null
in_ns "$script" remove --nft >/dev/null
rs=$(in_ns nft list ruleset)
expect "nft remove x2" "egressd" "$rs" 0
expect "nft remove x2" "15001" "$rs" 0
expect "nft remove x2" "15002" "$rs" 0
expect_routing "nft remove x2" 0
functional_none nft

# --- iptables -------------------------------------------------------------------
for ipt in iptables ip6tables; do
  echo "== $ipt"
  in_ns "$script" install --iptables >/dev/null
  in_ns "$script" install --iptables >/dev/null
  rs=$(in_ns "$ipt" -t nat -S)
  expect "$ipt install x2" "-N EGRESSD" "$rs" 2 # -N EGRESSD and -N EGRESSD_PRE
  expect "$ipt install x2" "-A OUTPUT -p tcp -j EGRESSD" "$rs" 1
  expect "$ipt install x2" "-A PREROUTING -p tcp -j EGRESSD_PRE" "$rs" 1
  expect "$ipt install x2" "-j REDIRECT --to-ports 15001" "$rs" 2
  expect "$ipt install x2" "-m mark --mark 0x1e55 -j RETURN" "$rs" 1
  expect "$ipt install x2" "-m owner --uid-owner 65532 -j RETURN" "$rs" 1
  rs=$(in_ns "$ipt" -t mangle -S)
  expect "$ipt mangle install x2" "-N EGRESSD_UDP" "$rs" 3 # EGRESSD_UDP, EGRESSD_UDP_OUT, EGRESSD_UDP_GUARD
  expect "$ipt mangle install x2" "-A POSTROUTING -p udp -j EGRESSD_UDP_GUARD" "$rs" 1
  expect "$ipt mangle install x2" "-A EGRESSD_UDP_GUARD ! -o lo -m mark --mark 0x1e56 -j DROP" "$rs" 1
  expect "$ipt mangle install x2" "-A PREROUTING -p udp -j EGRESSD_UDP" "$rs" 1
  expect "$ipt mangle install x2" "-A OUTPUT -p udp -j EGRESSD_UDP_OUT" "$rs" 1
  expect "$ipt mangle install x2" "-m addrtype --dst-type LOCAL -j RETURN" "$rs" 1
  expect "$ipt mangle install x2" "-p udp -m multiport --dports 443,7844 -j TPROXY --on-port 15002" "$rs" 1
  expect "$ipt mangle install x2" "--tproxy-mark 0x1e56/0xffffffff" "$rs" 1
  expect "$ipt mangle install x2" "-p udp -m multiport --dports 443,7844 -j MARK --set-xmark 0x1e56/0xffffffff" "$rs" 1
  expect "$ipt mangle install x2" "-A EGRESSD_UDP_OUT -m mark --mark 0x1e55 -j RETURN" "$rs" 1
  expect "$ipt mangle install x2" "-A EGRESSD_UDP_OUT -m owner --uid-owner 65532 -j RETURN" "$rs" 1
  expect "$ipt mangle install x2" "! -i lo -j RETURN" "$rs" 0
  expect_routing "$ipt install x2" 1
  [ "$ipt" = ip6tables ] || functional_checks iptables
  EGRESSD_FORWARD=0 in_ns "$script" install --iptables >/dev/null
  rs=$(in_ns "$ipt" -t nat -S)
  expect "$ipt FORWARD=0" "EGRESSD_PRE" "$rs" 0
  expect "$ipt FORWARD=0" "-A OUTPUT -p tcp -j EGRESSD" "$rs" 1
  rs=$(in_ns "$ipt" -t mangle -S)
  expect "$ipt FORWARD=0" "-A EGRESSD_UDP ! -i lo -j RETURN" "$rs" 1
  expect "$ipt FORWARD=0" "-j TPROXY --on-port 15002" "$rs" 1
  [ "$ipt" = ip6tables ] || functional_checks "iptables FORWARD=0" noforward
  EGRESSD_QUIC_PORT= in_ns "$script" install --iptables >/dev/null
  rs=$(in_ns "$ipt" -t mangle -S)
  expect "$ipt QUIC_PORT=''" "EGRESSD" "$rs" 0
  expect_routing "$ipt QUIC_PORT=''" 0
  in_ns "$script" install --iptables >/dev/null
  in_ns "$script" remove --iptables >/dev/null
  in_ns "$script" remove --iptables >/dev/null
  rs=$(in_ns "$ipt" -t nat -S)
  expect "$ipt remove x2" "EGRESSD" "$rs" 0
  rs=$(in_ns "$ipt" -t mangle -S)
  expect "$ipt mangle remove x2" "EGRESSD" "$rs" 0
  expect_routing "$ipt remove x2" 0
  [ "$ipt" = ip6tables ] || functional_none iptables
done

# --- both, and remove without a flag --------------------------------------------
echo "== remove without a flag"
in_ns "$script" install --nft >/dev/null
in_ns "$script" install --iptables >/dev/null
in_ns "$script" remove >/dev/null
rs=$(in_ns nft list ruleset)
expect "remove (all)" "egressd" "$rs" 0
expect "remove (all)" "EGRESSD" "$rs" 0
expect_routing "remove (all)" 0
# The policy routing is shared: removing one backend keeps it while the
# other still has UDP rules.
echo "== shared policy routing"
in_ns "$script" install --nft >/dev/null
in_ns "$script" install --iptables >/dev/null
in_ns "$script" remove --nft >/dev/null
expect_routing "remove --nft, iptables still installed" 1
in_ns "$script" remove --iptables >/dev/null
expect_routing "remove --iptables too" 0

# --- bad input is refused before anything is changed ----------------------------
echo "== bad input"
for bad in "EGRESSD_PORT=0" "EGRESSD_PORT=15001;flush" "EGRESSD_PORTS=443,x" "EGRESSD_MARK=0" "EGRESSD_UID=root" \
  "EGRESSD_QUIC_PORT=70000" "EGRESSD_QUIC_PORT=x" "EGRESSD_UDP_PORTS=443,x" "EGRESSD_UDP_PORTS=," \
  "EGRESSD_TPROXY_MARK=0" "EGRESSD_TPROXY_MARK=0x1e55" "EGRESSD_TPROXY_MARK=7765" "EGRESSD_TPROXY_MARK=a[0]" \
  "EGRESSD_ROUTE_TABLE=0" "EGRESSD_ROUTE_TABLE=254" "EGRESSD_ROUTE_TABLE=253" "EGRESSD_ROUTE_TABLE=255" \
  "EGRESSD_ROUTE_TABLE=2147483648" "EGRESSD_ROUTE_TABLE=main" "EGRESSD_PORTS=0443,7844" "EGRESSD_PORTS=443," \
  "EGRESSD_UDP_PORTS=0443" "EGRESSD_PORT=015001" "EGRESSD_MARK=07765"; do
  if in_ns env "$bad" "$script" install --nft >/dev/null 2>&1; then fail "accepted $bad"; else pass "refused $bad"; fi
done
rs=$(in_ns nft list ruleset)
expect "bad input" "egressd" "$rs" 0
expect_routing "bad input" 0

host_after=$(host_state)
if [ "$host_before" = "$host_after" ]; then pass "host ruleset unchanged"; else fail "host ruleset changed"; fi

if [ "$failures" -gt 0 ]; then echo "deploy/gateway/test.sh: $failures failure(s)"; exit 1; fi
echo "deploy/gateway/test.sh: all passed"
