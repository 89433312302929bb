# Cloudflare Tunnel (cloudflared).
#
# Source: Cloudflare "Tunnel with firewall" (date 2025-02-27), seed
# 002_6495a9f2f5b8f247.txt, section "Ports": "Required for tunnel
# operation" (policy cloudflare-tunnel) and "Optional" (policy
# cloudflare-tunnel-optional).
#
# How cloudflared reaches the edge, which is what the rules are shaped by:
#
#   * It looks up the SRV record _v2-origintunneld._tcp.argotunnel.com, which
#     points at region1/region2.v2.argotunnel.com port 7844, and dials the
#     resolved IP addresses directly.
#   * With the http2 transport it speaks TLS over TCP with the SNI
#     h2.cftunnel.com; the legacy h2mux transport used cftunnel.com. The SNI
#     is therefore never the destination's name, which is why the rule needs
#     an sni list. That is the seed's footnote "1 This rule is only required
#     for firewalls that enforce SNI": egressd is such a firewall.
#   * cloudflared does not send its edge connections through HTTPS_PROXY
#     (cloudflare/cloudflared issues #170, #350, #1076), so these connections
#     reach egressd through the transparent gateway, or from a client that
#     CONNECTs to the IP address. The cidrs make both work: an IP-literal or
#     transparent destination matches by address, a CONNECT by name matches
#     by hosts.
#
# QUIC: the seed lists UDP 7844 for the quic transport (cloudflared's
# default, which falls back to http2 when UDP is blocked), with the SNI
# quic.cftunnel.com (UDP only) and cftunnel.com (TCP and UDP); h2.cftunnel.com
# and the SRV name are TCP only. The two transports are therefore two rules
# with the same destinations, told apart by protocols: tunnel-http2 over TCP
# and tunnel-quic over QUIC, which egressd sees through its QUIC gateway
# (server.quic_listen, UDP steered by TPROXY; see deploy/gateway).

policy "cloudflare-tunnel" {
  description = "Cloudflare Tunnel edge connections on 7844: http2 over TCP, quic over UDP"

  # Cloudflare seed, "Ports" / "Required for tunnel operation" table, rows
  # region1.v2.argotunnel.com and region2.v2.argotunnel.com (TCP, http2),
  # plus the SNI-only rows (footnote 1) _v2-origintunneld._tcp.argotunnel.com,
  # cftunnel.com and h2.cftunnel.com.
  #
  # cidrs: exactly the addresses the table lists, ten per family and region
  # (198.41.192.{7,27,37,47,57,67,77,107,167,227},
  # 198.41.200.{13,23,33,43,53,63,73,113,193,233},
  # 2606:4700:a0::1-10, 2606:4700:a8::1-10), not the /24 or /48 around
  # them: the seed names no range, and a /48 is 2^80 addresses where it
  # lists ten. Nothing depends on a wider prefix: a CONNECT by name is
  # matched by hosts, and a transparent or QUIC connection carrying one of
  # the sni names is a candidate through its SNI; egressd then verifies an
  # address outside this list against its own DNS answers for
  # region1/region2.v2.argotunnel.com (destination verification), so
  # addresses Cloudflare adds to those names keep working. Only an
  # IP-literal CONNECT is limited to the list.
  #
  # sni: h2.cftunnel.com is what the http2 transport sends; cftunnel.com is
  # the legacy h2mux name, listed in the seed for http2 and QUIC;
  # _v2-origintunneld._tcp.argotunnel.com is the SRV record name, which the
  # seed lists for SNI-enforcing firewalls even though cloudflared does not
  # send it as SNI. All three are kept as the seed lists them: the
  # destination is still restricted to the tunnel hosts and addresses on 7844,
  # so an extra permitted SNI name cannot reach anything else.
  # An SNI equal to the destination name is accepted without being listed.
  allow "tunnel-http2" {
    description = "cloudflared http2 transport to the Cloudflare edge"
    hosts       = ["region1.v2.argotunnel.com", "region2.v2.argotunnel.com"]
    cidrs = [
      # region1.v2.argotunnel.com
      "198.41.192.167", "198.41.192.67", "198.41.192.57", "198.41.192.107", "198.41.192.27",
      "198.41.192.7", "198.41.192.227", "198.41.192.47", "198.41.192.37", "198.41.192.77",
      "2606:4700:a0::1", "2606:4700:a0::2", "2606:4700:a0::3", "2606:4700:a0::4", "2606:4700:a0::5",
      "2606:4700:a0::6", "2606:4700:a0::7", "2606:4700:a0::8", "2606:4700:a0::9", "2606:4700:a0::10",
      # region2.v2.argotunnel.com
      "198.41.200.13", "198.41.200.193", "198.41.200.33", "198.41.200.233", "198.41.200.53",
      "198.41.200.63", "198.41.200.113", "198.41.200.73", "198.41.200.43", "198.41.200.23",
      "2606:4700:a8::1", "2606:4700:a8::2", "2606:4700:a8::3", "2606:4700:a8::4", "2606:4700:a8::5",
      "2606:4700:a8::6", "2606:4700:a8::7", "2606:4700:a8::8", "2606:4700:a8::9", "2606:4700:a8::10",
    ]
    sni = [
      "h2.cftunnel.com",
      "cftunnel.com",
      "_v2-origintunneld._tcp.argotunnel.com",
    ]
    ports     = [7844]
    protocols = ["tcp"]
  }

  # Cloudflare seed, "Ports" / "Required for tunnel operation" table, the
  # same region rows (TCP/UDP, "http2 / quic"), plus the SNI-only rows
  # quic.cftunnel.com ("UDP ( quic )") and cftunnel.com ("TCP/UDP ( http2 /
  # quic )"). Same destinations as tunnel-http2; only the transport and the
  # names cloudflared sends over it differ.
  allow "tunnel-quic" {
    description = "cloudflared quic transport (the default) to the Cloudflare edge"
    hosts       = ["region1.v2.argotunnel.com", "region2.v2.argotunnel.com"]
    cidrs = [
      # region1.v2.argotunnel.com
      "198.41.192.167", "198.41.192.67", "198.41.192.57", "198.41.192.107", "198.41.192.27",
      "198.41.192.7", "198.41.192.227", "198.41.192.47", "198.41.192.37", "198.41.192.77",
      "2606:4700:a0::1", "2606:4700:a0::2", "2606:4700:a0::3", "2606:4700:a0::4", "2606:4700:a0::5",
      "2606:4700:a0::6", "2606:4700:a0::7", "2606:4700:a0::8", "2606:4700:a0::9", "2606:4700:a0::10",
      # region2.v2.argotunnel.com
      "198.41.200.13", "198.41.200.193", "198.41.200.33", "198.41.200.233", "198.41.200.53",
      "198.41.200.63", "198.41.200.113", "198.41.200.73", "198.41.200.43", "198.41.200.23",
      "2606:4700:a8::1", "2606:4700:a8::2", "2606:4700:a8::3", "2606:4700:a8::4", "2606:4700:a8::5",
      "2606:4700:a8::6", "2606:4700:a8::7", "2606:4700:a8::8", "2606:4700:a8::9", "2606:4700:a8::10",
    ]
    sni       = ["quic.cftunnel.com", "cftunnel.com"]
    ports     = [7844]
    protocols = ["quic"]
  }
}

# Optional features. The seed: "Opening port 443 enables some optional
# features. Failure to allow these connections may prompt a log error, but
# cloudflared will still run correctly." A separate policy so that it can be
# left out (or replaced) without touching the tunnel itself. The IPv4/IPv6
# addresses the seed prints for these rows are DNS answers for anycast
# names; the rules match the names, which is what a CONNECT carries. They
# are not copied as cidrs: they are shared anycast addresses, so allowing
# them by address would allow much more than these hosts.
policy "cloudflare-tunnel-optional" {
  description = "Cloudflare Tunnel optional features on 443: update checks, self-update downloads, Access JWT validation, post-quantum error reports"

  # Cloudflare seed, "Ports" / "Optional" table, rows api.cloudflare.com and
  # update.argotunnel.com: "Allows cloudflared to query if software updates
  # are available."
  allow "update-check" {
    description = "Software update checks"
    hosts       = ["api.cloudflare.com", "update.argotunnel.com"]
    ports       = [443]
    protocols   = ["tcp"] # the seed: "443 TCP (HTTPS)"
  }

  # Cloudflare seed, "Ports" / "Optional" table, row github.com: "Allows
  # cloudflared to download the latest release and perform a software
  # update." The seed names only github.com, but a release download on
  # github.com answers with a redirect to GitHub's download hosts:
  # objects.githubusercontent.com (historically) and
  # release-assets.githubusercontent.com (current). Both are listed, by name:
  # githubusercontent.com is a public suffix, so no wildcard over it.
  allow "self-update" {
    description = "Release downloads from GitHub"
    hosts = [
      "github.com",
      "objects.githubusercontent.com",
      "release-assets.githubusercontent.com",
    ]
    ports     = [443]
    protocols = ["tcp"] # the seed: "443 TCP (HTTPS)"
  }

  # Cloudflare seed, "Ports" / "Optional" table, row
  # "<your-team-name>.cloudflareaccess.com": "Allows cloudflared to validate
  # the Access JWT. Only required if the access setting is enabled." The team
  # name is yours, so the preset uses the wildcard; replace it with your
  # team's host in your own copy to narrow it.
  allow "access-jwt" {
    description = "Cloudflare Access JWT validation (<team>.cloudflareaccess.com)"
    hosts       = ["*.cloudflareaccess.com"]
    ports       = [443]
    protocols   = ["tcp"] # the seed: "443 TCP (HTTPS)"
  }

  # Cloudflare seed, "Ports" / "Optional" table, row
  # pqtunnels.cloudflareresearch.com: "Allows cloudflared to report
  # post-quantum key exchange errors to Cloudflare."
  allow "pq-error-reports" {
    description = "Post-quantum key exchange error reports"
    hosts       = ["pqtunnels.cloudflareresearch.com"]
    ports       = [443]
    protocols   = ["tcp"] # the seed: "443 TCP (HTTPS)"
  }
}
