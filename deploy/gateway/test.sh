#!/usr/bin/env bash
# Tests egressd-gateway.sh for real, in network namespaces of its own (the
# host's rules, routes and ip_forward are never touched; the test checks that
# too). Three namespaces, wired with two veth pairs:
#
#   client $ns-c          gateway $ns                 internet $ns-i
#   v1 10.99.0.2/24 ----- v0 10.99.0.1/24
#   default via 10.99.0.1  w0 10.98.0.1/24 ---------- w1 10.98.0.2/24
#                          default via 10.98.0.2      lo 192.0.2.1/32
#                          ip_forward=1 (its own)     10.99.0.0/24 via 10.98.0.1
#
# The rules are installed in the gateway. Stand-ins for egressd listen there
# (TCP :15001 answers "egressd"; the QUIC one, UDP :15002, "egressd
# 192.0.2.1:PORT"); a stand-in for the internet listens on 192.0.2.1 (TCP
# 443, 7844, 80: "internet"; UDP 443, 7844, 53, 8443: "internet
# 192.0.2.1:PORT"). Each probe connects to (or sends a datagram to)
# 192.0.2.1:PORT from the gateway itself (the rules' output part) or from the
# client (forwarded: their prerouting part) and says what answered:
#   redirected  egressd's stand-in: the rules took the connection
#   out         the internet: the rules let it through, unchanged
#   none        nothing, within the probe's timeout (dropped or lost)
# so that "not redirected" means "got out", never "disappeared".
#   for each backend (nft, iptables):
#     install twice  -> the rules are present exactly once
#     (functional)   -> TCP to 192.0.2.1:443 and :7844 is redirected to
#                       :15001; with the socket mark, as the exempt UID, to
#                       port 80 it gets out
#                    -> UDP to 192.0.2.1:7844 and :443, from the gateway
#                       itself and forwarded from the client, is TPROXY'd
#                       to the QUIC stand-in on :15002 (IP_TRANSPARENT,
#                       IP_RECVORIGDSTADDR) that sees the original
#                       destination and answers from it; with the socket
#                       mark, as the exempt UID, to ports 53 and 8443 it gets
#                       out; a socket bound to the outward device w0
#                       (SO_BINDTODEVICE) does not get out
#                    -> forwarded TCP/UDP to other ports gets out
#     install again with EGRESSD_FORWARD=0 -> the prerouting part is gone:
#                       forwarded TCP 443 and UDP 7844 get out (UDP: TPROXY
#                       only for packets coming in on lo)
#     remove twice   -> nothing of egressd is left, ip rules and routes too;
#                       everything gets out again
# Before any install, the same probes check that the topology lets
# everything out. The UDP checks are IPv4 only (the IPv6 rules and routes
# are checked for presence, not with traffic).
# Needs root, ip, nft, iptables, ip6tables: without them it skips, unless
# CI=true, where it fails. The functional part also needs python3, setpriv,
# timeout and dd (without them it is left out, with a note) and veth pairs.
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
    ip rule; ip -6 rule; ip route show table all; ip -6 route show table all
    cat /proc/sys/net/ipv4/ip_forward; } 2>/dev/null | sha256sum
}
host_before=$(host_state)
ip netns add "$ns"
listener=
udp_listener=
internet=
cleanup() {
  [ -z "$listener" ] || kill "$listener" 2>/dev/null || true
  [ -z "$udp_listener" ] || kill "$udp_listener" 2>/dev/null || true
  [ -z "$internet" ] || kill "$internet" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  ip netns del "$ns-c" 2>/dev/null || true
  ip netns del "$ns-i" 2>/dev/null || true
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
# Two more namespaces (see the top): the "client", wired to the test
# namespace, the "gateway", with a veth pair (v1-v0), routes everything
# through it, like a host or container using egressd's host as its gateway;
# the "internet", wired to the gateway with another (w1-w0), holds 192.0.2.1
# and routes the client's subnet back via the gateway, which forwards (its
# own ip_forward: /proc/sys/net is per network namespace; sysctl(8) may not
# be installed). The gateway's default route goes to the internet, so that
# what the rules let through gets an answer from there.
functional=1
cns=$ns-c
ins=$ns-i
if ! command -v python3 >/dev/null 2>&1 || ! command -v setpriv >/dev/null 2>&1 || ! command -v timeout >/dev/null 2>&1 || ! command -v dd >/dev/null 2>&1; then
  functional=0; echo "note: python3, setpriv, timeout or dd missing, functional checks skipped"
elif ! {
  ip netns add "$cns" && ip netns add "$ins" &&
    in_ns ip link add v0 type veth peer name v1 netns "$cns" &&
    in_ns ip addr add 10.99.0.1/24 dev v0 && in_ns ip link set v0 up &&
    in_ns ip link add w0 type veth peer name w1 netns "$ins" &&
    in_ns ip addr add 10.98.0.1/24 dev w0 && in_ns ip link set w0 up &&
    in_ns ip route add default via 10.98.0.2 dev w0 &&
    in_ns sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward' &&
    ip netns exec "$cns" ip link set lo up &&
    ip netns exec "$cns" ip addr add 10.99.0.2/24 dev v1 &&
    ip netns exec "$cns" ip link set v1 up &&
    ip netns exec "$cns" ip route add default via 10.99.0.1 dev v1 &&
    ip netns exec "$ins" ip link set lo up &&
    ip netns exec "$ins" ip addr add 192.0.2.1/32 dev lo &&
    ip netns exec "$ins" ip addr add 10.98.0.2/24 dev w1 &&
    ip netns exec "$ins" ip link set w1 up &&
    ip netns exec "$ins" ip route add 10.99.0.0/24 via 10.98.0.1 dev w1
}; then
  functional=0; echo "note: cannot create the veth pairs, functional checks skipped"
fi
if [ "$functional" = 1 ]; then
  # The internet: on 192.0.2.1, TCP 443, 7844, 80 answer "internet", UDP
  # 443, 7844, 53, 8443 answer "internet 192.0.2.1:PORT" from 192.0.2.1:PORT.
  ip netns exec "$ins" python3 -c '
import selectors, socket
sel = selectors.DefaultSelector()
for port in (443, 7844, 80):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("192.0.2.1", port)); s.listen(16); sel.register(s, selectors.EVENT_READ, "tcp")
for port in (443, 7844, 53, 8443):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("192.0.2.1", port)); sel.register(s, selectors.EVENT_READ, "udp")
while True:
    for key, _ in sel.select():
        s = key.fileobj
        try:
            if key.data == "tcp":
                c, _ = s.accept(); c.sendall(b"internet\n"); c.close()
            else:
                _, src = s.recvfrom(2048)
                s.sendto(("internet 192.0.2.1:%d\n" % s.getsockname()[1]).encode(), src)
        except OSError:
            pass
' &
  internet=$!
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
    except OSError:
        pass  # that probe gets no answer; the next ones still do
    finally:
        r.close()
' &
  udp_listener=$!
  # Until the stand-ins' ports are bound (/proc/net is the namespace's own),
  # 5 s at most each; a stand-in that never comes up fails the checks.
  wait_bound() { # NS tcp|udp PORT...
    local where=$1 proto=$2 port i; shift 2
    for port; do
      for i in $(seq 50); do
        ip netns exec "$where" grep -q "^ *[0-9]*: [0-9A-F]*:$(printf %04X "$port") " "/proc/net/$proto" && break
        sleep 0.1
      done
    done
  }
  wait_bound "$ins" tcp 443 7844 80
  wait_bound "$ins" udp 443 7844 53 8443
  wait_bound "$ns" tcp 15001
  wait_bound "$ns" udp 15002
fi
# The probes say what answered a connection or datagram to 192.0.2.1:PORT:
# "redirected" (egressd's stand-in), "out" (the internet: let through
# unredirected), "none" (nothing, within the timeout; the python probes add
# why in parentheses: "none (timed out)", "none (Connection refused)"), else
# "other: ..." / "wrong: ..." with what did. The checks compare the first
# word. Every probe is bounded: socket timeouts, and timeout(1) around it.
#
# probe [--client] [--mark] [--uid U] PORT: TCP. --client: from the client
# namespace, through the gateway (prerouting); else from the gateway itself
# (output).
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
    ip netns exec "$where" timeout 5 python3 -c '
import socket, sys
s = socket.socket(); s.settimeout(2)
s.setsockopt(socket.SOL_SOCKET, 36, int(sys.argv[1]))  # SO_MARK
try:
    s.connect(("192.0.2.1", int(sys.argv[2]))); l = s.recv(64)
except socket.timeout:
    print("none (timed out)"); sys.exit()
except OSError as e:
    print("none (%s)" % (e.strerror or e)); sys.exit()
print({b"egressd\n": "redirected", b"internet\n": "out"}.get(l, "other: %r" % l))
' "$mark" "$1" || echo error
  else # bash and /dev/tcp: runs as any UID
    ip netns exec "$where" setpriv --reuid "$uid" --regid "$uid" --clear-groups \
      timeout 2 bash -c 'exec 3<>"/dev/tcp/192.0.2.1/$1" && read -r l <&3 || exit
        case $l in egressd) echo redirected ;; internet) echo out ;; *) echo "other: $l" ;; esac' _ "$1" ||
      echo none
  fi
}
# probe_udp [--client] [--mark] [--uid U] PORT: a datagram to
# 192.0.2.1:PORT. "redirected" if it reached the QUIC stand-in, which saw
# 192.0.2.1:PORT as its original destination, and its answer came back from
# 192.0.2.1:PORT; "out" if the internet's answer came back from there.
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
    ip netns exec "$where" timeout 5 python3 -c '
import socket, sys
mark, port = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
if mark:
    s.setsockopt(socket.SOL_SOCKET, 36, mark)  # SO_MARK
try:
    s.sendto(b"quic?", ("192.0.2.1", port))
    data, src = s.recvfrom(2048)
except socket.timeout:
    print("none (timed out)"); sys.exit()
except OSError as e:
    print("none (%s)" % (e.strerror or e)); sys.exit()
got = {"egressd 192.0.2.1:%d\n" % port: "redirected", "internet 192.0.2.1:%d\n" % port: "out"}.get(data.decode(errors="replace"))
if src == ("192.0.2.1", port) and got:
    print(got)
else:
    print("wrong: %r from %s:%d" % (data, src[0], src[1]))
' "$mark" "$1" || echo error
  else # bash and /dev/udp, a connected socket: answers only from
    # 192.0.2.1:PORT. dd reads the datagram whole (bash's read would take
    # one byte of it and lose the rest).
    ip netns exec "$where" setpriv --reuid "$uid" --regid "$uid" --clear-groups \
      timeout 2 bash -c 'exec 3<>"/dev/udp/192.0.2.1/$1" && printf "quic?" >&3 &&
        l=$(dd bs=2048 count=1 status=none <&3) || exit
        case $l in "egressd 192.0.2.1:$1") echo redirected ;; "internet 192.0.2.1:$1") echo out ;; *) echo "other: $l" ;; esac' _ "$1" ||
      echo none
  fi
}
# probe_udp_bound PORT: a datagram to 192.0.2.1:PORT from a socket bound to
# the gateway's w0, the device toward the internet (SO_BINDTODEVICE: any
# user may since Linux 5.7; root here, which the rules do not exempt
# either), which keeps its device when the mark reroutes it: "dropped" if
# the kernel refused it (the guard), "redirected" if the stand-in answered,
# "out" if it went out and the internet answered, "none" if nothing did.
probe_udp_bound() {
  ip netns exec "$ns" timeout 5 python3 -c '
import socket, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
try:
    s.setsockopt(socket.SOL_SOCKET, 25, b"w0")  # SO_BINDTODEVICE
except OSError as e:
    print("cannot bind to a device: %s" % e); sys.exit()
try:
    s.sendto(b"quic?", ("192.0.2.1", port))
    data, src = s.recvfrom(2048)
except PermissionError:
    print("dropped"); sys.exit()
except socket.timeout:
    print("none (timed out)"); sys.exit()
except OSError as e:
    print("none (%s)" % (e.strerror or e)); sys.exit()
print({b"egressd 192.0.2.1:%d\n" % port: "redirected", b"internet 192.0.2.1:%d\n" % port: "out"}.get(data, "other: %r" % data))
' "$1" || echo error
}
check_probe() { # description want probe-args...
  local desc=$1 want=$2 got; shift 2
  got=$(probe "$@")
  if [ "${got%% *}" = "$want" ]; then pass "$desc: $got"; else fail "$desc: $got, want $want"; fi
}
check_probe_udp() { # description want probe_udp-args...
  local desc=$1 want=$2 got; shift 2
  got=$(probe_udp "$@")
  if [ "${got%% *}" = "$want" ]; then pass "$desc: $got"; else fail "$desc: $got, want $want"; fi
}
functional_checks() { # backend
  [ "$functional" = 1 ] || return 0
  check_probe "$1: tcp/443 is redirected" redirected 443
  check_probe "$1: tcp/7844 is redirected" redirected 7844
  check_probe "$1: tcp/80 is not, gets out" out 80
  check_probe "$1: mark 0x1e55 is not (loop exception), gets out" out --mark 443
  check_probe "$1: uid 65532 is not (loop exception), gets out" out --uid 65532 443
  check_probe "$1: uid 65533 is" redirected --uid 65533 443
  check_probe_udp "$1: udp/7844 is TPROXY'd" redirected 7844
  check_probe_udp "$1: udp/443 is TPROXY'd" redirected 443
  check_probe_udp "$1: udp/53 is not, gets out" out 53
  check_probe_udp "$1: udp/8443 is not, gets out" out 8443
  check_probe_udp "$1: udp, mark 0x1e55 is not (loop exception), gets out" out --mark 7844
  check_probe_udp "$1: udp, uid 65532 is not (loop exception), gets out" out --uid 65532 7844
  check_probe_udp "$1: udp, uid 65533 is" redirected --uid 65533 7844
  local got
  got=$(probe_udp_bound 7844)
  if [ "$got" = dropped ] || [ "$got" = redirected ]; then
    pass "$1: udp/7844 from a socket bound to w0 does not go out: $got"
  else
    fail "$1: udp/7844 from a socket bound to w0: $got, want dropped or redirected (SO_BINDTODEVICE bypass)"
  fi
  if [ "${2:-}" != noforward ]; then
    check_probe "$1: forwarded tcp/443 from the client namespace is redirected" redirected --client 443
    check_probe "$1: forwarded tcp/80 is not, gets out" out --client 80
    check_probe_udp "$1: forwarded udp/7844 is TPROXY'd" redirected --client 7844
    check_probe_udp "$1: forwarded udp/443 is TPROXY'd" redirected --client 443
    check_probe_udp "$1: forwarded udp/53 is not, gets out" out --client 53
    check_probe_udp "$1: forwarded udp/8443 is not, gets out" out --client 8443
  else
    check_probe "$1: FORWARD=0, forwarded tcp/443 is not redirected, gets out" out --client 443
    check_probe_udp "$1: FORWARD=0, forwarded udp/7844 is not TPROXY'd, gets out" out --client 7844
  fi
}
functional_none() { # label: no rules (before install, after remove)
  [ "$functional" = 1 ] || return 0
  check_probe "$1: tcp/443 gets out" out 443
  check_probe "$1: forwarded tcp/443 too" out --client 443
  check_probe "$1: mark 0x1e55, tcp/443 too" out --mark 443
  check_probe_udp "$1: udp/7844 gets out" out 7844
  check_probe_udp "$1: forwarded udp/7844 too" out --client 7844
  check_probe_udp "$1: uid 65532, udp/7844 too" out --uid 65532 7844
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

# --- no rules yet: the topology lets everything out ------------------------------
echo "== no rules"
functional_none "no rules"

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
functional_none "nft removed"

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
  [ "$ipt" = ip6tables ] || functional_none "iptables removed"
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
