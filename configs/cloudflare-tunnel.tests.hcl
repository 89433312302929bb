# Tests for cloudflare-tunnel.hcl (egressd test runs them; see README.md,
# "Policy tests"), following the Cloudflare "Tunnel with firewall" document
# (seed 002_6495a9f2f5b8f247.txt), section "Ports".

# "Required for tunnel operation", http2 over TCP: by name, by address,
# transparent, with the SNI names of the SNI-only rows.
test "cloudflare: region1 by name" {
  target      = "region1.v2.argotunnel.com:7844"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-http2"
}
test "cloudflare: region2 with SNI h2.cftunnel.com" {
  target      = "region2.v2.argotunnel.com:7844"
  sni         = "h2.cftunnel.com"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-http2"
}
test "cloudflare: edge address with SNI h2.cftunnel.com" {
  target      = "198.41.192.7:7844"
  sni         = "h2.cftunnel.com"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-http2"
}
test "cloudflare: transparent http2 to region2's IPv4 address" {
  target      = "198.41.200.53:7844"
  mode        = "transparent"
  sni         = "h2.cftunnel.com"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-http2"
}
test "cloudflare: transparent http2 over IPv6" {
  target      = "[2606:4700:a8::3]:7844"
  mode        = "transparent"
  sni         = "h2.cftunnel.com"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-http2"
}
test "cloudflare: legacy SNI cftunnel.com over TCP" {
  target      = "198.41.192.27:7844"
  mode        = "transparent"
  sni         = "cftunnel.com"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-http2"
}
test "cloudflare: SRV name as SNI" {
  target      = "region1.v2.argotunnel.com:7844"
  sni         = "_v2-origintunneld._tcp.argotunnel.com"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-http2"
}

# IP-literal CONNECTs are matched by cidrs alone: the first and the last
# address the seed lists for each region and family (configs_test.go tries
# every one).
test "cloudflare: region1 IPv4, first listed address" {
  target      = "198.41.192.167:7844"
  sni         = "h2.cftunnel.com"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-http2"
}
test "cloudflare: region1 IPv4, last listed address" {
  target      = "198.41.192.77:7844"
  sni         = "h2.cftunnel.com"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-http2"
}
test "cloudflare: region2 IPv4, first listed address" {
  target      = "198.41.200.13:7844"
  sni         = "h2.cftunnel.com"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-http2"
}
test "cloudflare: region2 IPv4, last listed address" {
  target      = "198.41.200.23:7844"
  sni         = "h2.cftunnel.com"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-http2"
}
test "cloudflare: region1 IPv6, first listed address" {
  target      = "[2606:4700:a0::1]:7844"
  sni         = "h2.cftunnel.com"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-http2"
}
test "cloudflare: region1 IPv6, last listed address" {
  target      = "[2606:4700:a0::10]:7844"
  sni         = "h2.cftunnel.com"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-http2"
}
test "cloudflare: region2 IPv6, first listed address" {
  target      = "[2606:4700:a8::1]:7844"
  sni         = "h2.cftunnel.com"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-http2"
}
test "cloudflare: region2 IPv6, last listed address" {
  target      = "[2606:4700:a8::10]:7844"
  sni         = "h2.cftunnel.com"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-http2"
}
# The seed lists ten addresses per family and region, not the /24 or /48
# around them: a neighbour is not allowed by address.
test "cloudflare: unlisted address next to region1's" {
  target        = "198.41.192.8:7844"
  sni           = "h2.cftunnel.com"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "cloudflare: unlisted address in region2's /24" {
  target        = "198.41.200.1:7844"
  sni           = "h2.cftunnel.com"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "cloudflare: unlisted IPv6 address after region1's" {
  target        = "[2606:4700:a0::11]:7844"
  sni           = "h2.cftunnel.com"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "cloudflare: unlisted IPv6 address in region2's /48" {
  target        = "[2606:4700:a8:1::1]:7844"
  sni           = "h2.cftunnel.com"
  expect        = "deny"
  expect_reason = "no_rule"
}
# A transparent connection with the tunnel SNI is a candidate through its
# SNI wherever it goes; the proxy then verifies an unlisted address against
# its DNS answers for region1/region2.v2.argotunnel.com (destination
# verification, not decided offline), so addresses Cloudflare adds to those
# names still work.
test "cloudflare: transparent to an unlisted address (then verified)" {
  target      = "198.41.192.8:7844"
  mode        = "transparent"
  sni         = "h2.cftunnel.com"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-http2"
}

# The quic transport (UDP 7844) through the QUIC gateway.
test "cloudflare: quic to region1's IPv4 address" {
  target      = "198.41.192.7:7844"
  mode        = "quic"
  sni         = "quic.cftunnel.com"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-quic"
}
test "cloudflare: quic over IPv6 with SNI cftunnel.com" {
  target      = "[2606:4700:a0::1]:7844"
  mode        = "quic"
  sni         = "cftunnel.com"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-quic"
}
test "cloudflare: quic to region2's IPv4 address" {
  target      = "198.41.200.233:7844"
  mode        = "quic"
  sni         = "quic.cftunnel.com"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-quic"
}
test "cloudflare: quic to region2's IPv6 address" {
  target      = "[2606:4700:a8::10]:7844"
  mode        = "quic"
  sni         = "quic.cftunnel.com"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel/tunnel-quic"
}
# A QUIC flow without SNI is a candidate of tunnel-quic only through its
# cidrs: sni_missing from that rule for the first and last listed address
# of each region and family, no_rule for an unlisted one.
test "cloudflare: quic without SNI, region1 IPv4, first listed address" {
  target        = "198.41.192.167:7844"
  mode          = "quic"
  sni           = ""
  expect        = "deny"
  expect_rule   = "cloudflare-tunnel/tunnel-quic"
  expect_reason = "sni_missing"
}
test "cloudflare: quic without SNI, region1 IPv4, last listed address" {
  target        = "198.41.192.77:7844"
  mode          = "quic"
  sni           = ""
  expect        = "deny"
  expect_rule   = "cloudflare-tunnel/tunnel-quic"
  expect_reason = "sni_missing"
}
test "cloudflare: quic without SNI, region2 IPv4, first listed address" {
  target        = "198.41.200.13:7844"
  mode          = "quic"
  sni           = ""
  expect        = "deny"
  expect_rule   = "cloudflare-tunnel/tunnel-quic"
  expect_reason = "sni_missing"
}
test "cloudflare: quic without SNI, region2 IPv4, last listed address" {
  target        = "198.41.200.23:7844"
  mode          = "quic"
  sni           = ""
  expect        = "deny"
  expect_rule   = "cloudflare-tunnel/tunnel-quic"
  expect_reason = "sni_missing"
}
test "cloudflare: quic without SNI, region1 IPv6, first listed address" {
  target        = "[2606:4700:a0::1]:7844"
  mode          = "quic"
  sni           = ""
  expect        = "deny"
  expect_rule   = "cloudflare-tunnel/tunnel-quic"
  expect_reason = "sni_missing"
}
test "cloudflare: quic without SNI, region1 IPv6, last listed address" {
  target        = "[2606:4700:a0::10]:7844"
  mode          = "quic"
  sni           = ""
  expect        = "deny"
  expect_rule   = "cloudflare-tunnel/tunnel-quic"
  expect_reason = "sni_missing"
}
test "cloudflare: quic without SNI, region2 IPv6, first listed address" {
  target        = "[2606:4700:a8::1]:7844"
  mode          = "quic"
  sni           = ""
  expect        = "deny"
  expect_rule   = "cloudflare-tunnel/tunnel-quic"
  expect_reason = "sni_missing"
}
test "cloudflare: quic without SNI, region2 IPv6, last listed address" {
  target        = "[2606:4700:a8::10]:7844"
  mode          = "quic"
  sni           = ""
  expect        = "deny"
  expect_rule   = "cloudflare-tunnel/tunnel-quic"
  expect_reason = "sni_missing"
}
test "cloudflare: quic without SNI to an unlisted address" {
  target        = "198.41.200.14:7844"
  mode          = "quic"
  sni           = ""
  expect        = "deny"
  expect_reason = "no_rule"
}
test "cloudflare: SRV name as SNI is TCP only" {
  target        = "198.41.192.7:7844"
  mode          = "quic"
  sni           = "_v2-origintunneld._tcp.argotunnel.com"
  expect        = "deny"
  expect_rule   = "cloudflare-tunnel/tunnel-quic"
  expect_reason = "sni_mismatch"
}
test "cloudflare: quic SNI is UDP only" {
  target        = "198.41.192.7:7844"
  mode          = "transparent"
  sni           = "quic.cftunnel.com"
  expect        = "deny"
  expect_reason = "sni_mismatch"
}
test "cloudflare: h2 SNI is TCP only" {
  target        = "198.41.192.7:7844"
  mode          = "quic"
  sni           = "h2.cftunnel.com"
  expect        = "deny"
  expect_rule   = "cloudflare-tunnel/tunnel-quic"
  expect_reason = "sni_mismatch"
}
test "cloudflare: UDP that is not QUIC" {
  target        = "198.41.192.7:7844"
  mode          = "quic"
  tls           = false
  expect        = "deny"
  expect_reason = "not_tls"
}
test "cloudflare: quic on 443" {
  target        = "198.41.192.7:443"
  mode          = "quic"
  sni           = "quic.cftunnel.com"
  expect        = "deny"
  expect_reason = "no_rule"
}

# Tunnel denials: other SNI, no SNI, other ports, other networks, private.
test "cloudflare: tunnel fronting another name" {
  target        = "198.41.192.7:7844"
  mode          = "transparent"
  sni           = "evil.example"
  expect        = "deny"
  expect_reason = "sni_mismatch"
}
test "cloudflare: tunnel without SNI" {
  target        = "region1.v2.argotunnel.com:7844"
  sni           = ""
  expect        = "deny"
  expect_reason = "sni_missing"
}
test "cloudflare: tunnel without TLS" {
  target        = "region1.v2.argotunnel.com:7844"
  tls           = false
  expect        = "deny"
  expect_reason = "not_tls"
}
test "cloudflare: tunnel on 443" {
  target        = "region1.v2.argotunnel.com:443"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "cloudflare: SNI name as destination" {
  target        = "h2.cftunnel.com:7844"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "cloudflare: outside the edge ranges" {
  target        = "198.41.193.7:7844"
  sni           = "h2.cftunnel.com"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "cloudflare: tunnel on the next port" {
  target        = "region1.v2.argotunnel.com:7845"
  sni           = "h2.cftunnel.com"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "cloudflare: a region the seed does not list" {
  target        = "region3.v2.argotunnel.com:7844"
  sni           = "h2.cftunnel.com"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "cloudflare: parent of the region hosts" {
  target        = "argotunnel.com:7844"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "cloudflare: region host as a label of another domain" {
  target        = "region1.v2.argotunnel.com.evil.example:7844"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "cloudflare: SNI look-alike of h2.cftunnel.com" {
  target        = "region1.v2.argotunnel.com:7844"
  sni           = "h2.cftunnel.com.evil.example"
  expect        = "deny"
  expect_rule   = "cloudflare-tunnel/tunnel-http2"
  expect_reason = "sni_mismatch"
}
test "cloudflare: SNI below cftunnel.com (no wildcard)" {
  target        = "198.41.192.7:7844"
  mode          = "transparent"
  sni           = "evil.cftunnel.com"
  expect        = "deny"
  expect_rule   = "cloudflare-tunnel/tunnel-http2"
  expect_reason = "sni_mismatch"
}
test "cloudflare: transparent to a private address with the tunnel SNI" {
  target        = "10.0.0.1:7844"
  mode          = "transparent"
  sni           = "h2.cftunnel.com"
  expect        = "deny"
  expect_reason = "private_destination"
}
test "cloudflare: cloud metadata address" {
  target        = "169.254.169.254:80"
  mode          = "http"
  expect        = "deny"
  expect_reason = "no_rule"
}

# "Optional" (port 443).
test "cloudflare: update check api.cloudflare.com" {
  target      = "api.cloudflare.com:443"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel-optional/update-check"
}
test "cloudflare: update check update.argotunnel.com" {
  target      = "update.argotunnel.com:443"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel-optional/update-check"
}
test "cloudflare: self-update from github.com" {
  target      = "github.com:443"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel-optional/self-update"
}
test "cloudflare: release download redirect" {
  target      = "release-assets.githubusercontent.com:443"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel-optional/self-update"
}
test "cloudflare: release download redirect (historical host)" {
  target      = "objects.githubusercontent.com:443"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel-optional/self-update"
}
test "cloudflare: Access JWT validation" {
  target      = "myteam.cloudflareaccess.com:443"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel-optional/access-jwt"
}
test "cloudflare: post-quantum error reports" {
  target      = "pqtunnels.cloudflareresearch.com:443"
  expect      = "allow"
  expect_rule = "cloudflare-tunnel-optional/pq-error-reports"
}
test "cloudflare: optional hosts not on 7844" {
  target        = "api.cloudflare.com:7844"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "cloudflare: other githubusercontent hosts" {
  target        = "evil.githubusercontent.com:443"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "cloudflare: cloudflareaccess.com apex" {
  target        = "cloudflareaccess.com:443"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "cloudflare: update host as a label of another domain" {
  target        = "update.argotunnel.com.evil.example:443"
  expect        = "deny"
  expect_reason = "no_rule"
}
# The Optional rows are "443 TCP (HTTPS)": not over QUIC.
test "cloudflare: update check over QUIC" {
  target        = "104.19.192.29:443"
  mode          = "quic"
  sni           = "api.cloudflare.com"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "cloudflare: self-update over QUIC" {
  target        = "140.82.112.3:443"
  mode          = "quic"
  sni           = "github.com"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "cloudflare: Access JWT validation over QUIC" {
  target        = "104.19.194.29:443"
  mode          = "quic"
  sni           = "myteam.cloudflareaccess.com"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "cloudflare: post-quantum error reports over QUIC" {
  target        = "104.18.4.64:443"
  mode          = "quic"
  sni           = "pqtunnels.cloudflareresearch.com"
  expect        = "deny"
  expect_reason = "no_rule"
}
