#!/usr/bin/env bash
# Tests egressd-gateway.sh for real, in a network namespace of its own (the
# host's rules are never touched; the test checks that too):
#   for each backend (nft, iptables):
#     install twice  -> the rules are present exactly once
#     (functional)   -> TCP to 192.0.2.1:443 lands on a stand-in listener on
#                       :15001; not with the socket mark, not as the exempt
#                       UID, not on port 80
#     install again with EGRESSD_FORWARD=0 -> the prerouting part is gone
#     remove twice   -> nothing of egressd is left
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
host_before=$( { nft list ruleset; iptables -t nat -S; } 2>/dev/null | sha256sum)
ip netns add "$ns"
listener=
cleanup() {
  [ -z "$listener" ] || kill "$listener" 2>/dev/null || true
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
if ! command -v python3 >/dev/null 2>&1 || ! command -v setpriv >/dev/null 2>&1 || ! command -v timeout >/dev/null 2>&1; then
  functional=0; echo "note: python3, setpriv or timeout missing, functional checks skipped"
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
check_probe() { # description want probe-args...
  local desc=$1 want=$2 got; shift 2
  got=$(probe "$@")
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
  if [ "${2:-}" != noforward ]; then
    check_probe "$1: forwarded tcp/443 from the client namespace is redirected" redirected --client 443
    check_probe "$1: forwarded tcp/80 is not" direct --client 80
  else
    check_probe "$1: FORWARD=0, forwarded tcp/443 is not redirected" direct --client 443
  fi
}
functional_none() { # backend: after remove
  [ "$functional" = 1 ] || return 0
  check_probe "$1: removed, tcp/443 goes direct" direct 443
  check_probe "$1: removed, forwarded tcp/443 too" direct --client 443
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
expect "nft install x2" "meta mark 0x00001e55 return" "$rs" 1
expect "nft install x2" "meta skuid 65532 return" "$rs" 1
expect "nft install x2" 'oifname "lo" return' "$rs" 1
functional_checks nft
EGRESSD_FORWARD=0 in_ns "$script" install --nft >/dev/null
rs=$(in_ns nft list ruleset)
expect "nft FORWARD=0" "chain prerouting {" "$rs" 0
expect "nft FORWARD=0" "redirect to :15001" "$rs" 1
functional_checks "nft FORWARD=0" noforward
in_ns "$script" remove --nft >/dev/null
in_ns "$script" remove --nft >/dev/null
rs=$(in_ns nft list ruleset)
expect "nft remove x2" "egressd" "$rs" 0
expect "nft remove x2" "15001" "$rs" 0
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
  [ "$ipt" = ip6tables ] || functional_checks iptables
  EGRESSD_FORWARD=0 in_ns "$script" install --iptables >/dev/null
  rs=$(in_ns "$ipt" -t nat -S)
  expect "$ipt FORWARD=0" "EGRESSD_PRE" "$rs" 0
  expect "$ipt FORWARD=0" "-A OUTPUT -p tcp -j EGRESSD" "$rs" 1
  [ "$ipt" = ip6tables ] || functional_checks "iptables FORWARD=0" noforward
  in_ns "$script" remove --iptables >/dev/null
  in_ns "$script" remove --iptables >/dev/null
  rs=$(in_ns "$ipt" -t nat -S)
  expect "$ipt remove x2" "EGRESSD" "$rs" 0
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

# --- bad input is refused before anything is changed ----------------------------
echo "== bad input"
for bad in "EGRESSD_PORT=0" "EGRESSD_PORT=15001;flush" "EGRESSD_PORTS=443,x" "EGRESSD_MARK=0" "EGRESSD_UID=root"; do
  if in_ns env "$bad" "$script" install --nft >/dev/null 2>&1; then fail "accepted $bad"; else pass "refused $bad"; fi
done
rs=$(in_ns nft list ruleset)
expect "bad input" "egressd" "$rs" 0

host_after=$( { nft list ruleset; iptables -t nat -S; } 2>/dev/null | sha256sum)
if [ "$host_before" = "$host_after" ]; then pass "host ruleset unchanged"; else fail "host ruleset changed"; fi

if [ "$failures" -gt 0 ]; then echo "deploy/gateway/test.sh: $failures failure(s)"; exit 1; fi
echo "deploy/gateway/test.sh: all passed"
