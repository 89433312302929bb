# Mounted into the egressd container as /etc/egressd/gateway.hcl, next to the
# image's copies of the presets: `serve --config /etc/egressd` loads them all.
server {
  # Connections redirected by egressd-gateway.sh land here. 0.0.0.0 so that
  # the PREROUTING redirect (traffic of other hosts using this one as their
  # gateway) reaches it as well as the OUTPUT one (which goes to 127.0.0.1).
  transparent_listen = "0.0.0.0:15001"
  http_listen        = "0.0.0.0:3128"
  # With network_mode: host and cap_add NET_ADMIN on egressd, mark its
  # upstream sockets instead of relying on its UID (EGRESSD_MARK=0x1e55):
  # upstream_mark = 7765
}
