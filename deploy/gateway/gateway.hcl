# Mounted into the egressd container as /etc/egressd/gateway.hcl, next to the
# image's copies of the presets: `serve --config /etc/egressd` loads them all.
server {
  # Connections redirected by egressd-gateway.sh land here. Every address
  # (no host), so that the PREROUTING redirect (traffic of other hosts using
  # this one as their gateway) reaches it as well as the OUTPUT one (which
  # goes to 127.0.0.1 or ::1), over IPv4 and IPv6, both of which the script
  # redirects (on a kernel without IPv6, IPv4 only). "0.0.0.0:15001" would
  # be IPv4 only.
  transparent_listen = ":15001"
  # UDP 443/7844 (QUIC) TPROXY'd by egressd-gateway.sh (EGRESSD_QUIC_PORT)
  # lands here: a transparent UDP socket (IP_TRANSPARENT, original destination
  # from IP_RECVORIGDSTADDR). Needs CAP_NET_ADMIN in egressd (IP_TRANSPARENT);
  # without it, leave this out: the steered UDP then finds no socket and is
  # dropped (fails closed), and QUIC clients fall back to TCP.
  quic_listen        = ":15002"
  http_listen        = ":3128"
  # The loop exception: egressd marks its upstream sockets (and its QUIC
  # reply sockets) with 7765 = 0x1e55, which egressd-gateway.sh exempts
  # (EGRESSD_MARK=0x1e55). Needs CAP_NET_ADMIN (docker-compose.yml).
  upstream_mark      = 7765
}
