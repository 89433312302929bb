# Tests for chainguard.hcl (egressd test runs them; see README.md, "Policy
# tests"). Each group follows a table of the Chainguard "Network
# Requirements" document (seed 000_6776b888b26ce23a.txt).

# "Images Hosts": registry, registry authentication, Wolfi packages.
test "chainguard: cgr.dev" {
  target      = "cgr.dev:443"
  expect      = "allow"
  expect_rule = "chainguard-images/registry"
}
test "chainguard: enforce.dev (registry auth, any JA3)" {
  target      = "enforce.dev:443"
  ja3         = "e7d705a3286e19ea42f587b344ee6865"
  expect      = "allow"
  expect_rule = "chainguard-images/registry"
}
test "chainguard: packages.wolfi.dev" {
  target      = "packages.wolfi.dev:443"
  expect      = "allow"
  expect_rule = "chainguard-images/registry"
}

# "Images Third-party Hosts".
test "chainguard: ghcr.io" {
  target      = "ghcr.io:443"
  expect      = "allow"
  expect_rule = "chainguard-images/third-party"
}
test "chainguard: R2 blob storage (wildcard)" {
  target      = "abc123.r2.cloudflarestorage.com:443"
  expect      = "allow"
  expect_rule = "chainguard-images/third-party"
}
test "chainguard: R2 bucket host as documented" {
  target      = "9236a389bd48b98df91adc1bc924620.r2.cloudflarestorage.com:443"
  expect      = "allow"
  expect_rule = "chainguard-images/third-party"
}
test "chainguard: R2 wildcard below the account (depth 2)" {
  target      = "bucket.abc123.r2.cloudflarestorage.com:443"
  expect      = "allow"
  expect_rule = "chainguard-images/third-party"
}
test "chainguard: support (zendesk)" {
  target      = "chainguardhelp.zendesk.com:443"
  expect      = "allow"
  expect_rule = "chainguard-images/third-party"
}
test "chainguard: R2 apex is not needed" {
  target        = "r2.cloudflarestorage.com:443"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "chainguard: the rc. typo is not honoured" {
  target        = "x.rc.cloudflarestorage.com:443"
  expect        = "deny"
  expect_reason = "no_rule"
}

# "Enforce Chainguard Hosts" with "Enforce JA3 Fingerprints".
test "chainguard: Enforce API with the documented JA3" {
  target      = "api.enforce.dev:443"
  ja3         = "3fed133de60c35724739b913924b6c24"
  expect      = "allow"
  expect_rule = "chainguard-enforce/enforce-api"
}
test "chainguard: Enforce API with another JA3" {
  target        = "api.enforce.dev:443"
  ja3           = "e7d705a3286e19ea42f587b344ee6865"
  expect        = "deny"
  expect_rule   = "chainguard-enforce/enforce-api"
  expect_reason = "ja3_mismatch"
}
test "chainguard: Enforce API without a JA3" {
  target        = "api.enforce.dev:443"
  expect        = "deny"
  expect_rule   = "chainguard-enforce/enforce-api"
  expect_reason = "ja3_mismatch"
}
test "chainguard: Enforce API as plain HTTP" {
  target        = "api.enforce.dev:443"
  mode          = "http"
  expect        = "deny"
  expect_reason = "not_tls"
}

# "Enforce Third-party Hosts".
test "chainguard: Enforce auth0 tenant" {
  target      = "chainguard-cd-nvt30yluzzsmvk7t.edge.tenants.us.auth0.com:443"
  expect      = "allow"
  expect_rule = "chainguard-enforce/enforce-third-party"
}
test "chainguard: googlecode.l.googleusercontent.com" {
  target      = "googlecode.l.googleusercontent.com:443"
  expect      = "allow"
  expect_rule = "chainguard-enforce/enforce-third-party"
}
test "chainguard: raw.githubusercontent.com" {
  target      = "raw.githubusercontent.com:443"
  expect      = "allow"
  expect_rule = "chainguard-enforce/enforce-third-party"
}
test "chainguard: storage.googleapis.com" {
  target      = "storage.googleapis.com:443"
  expect      = "allow"
  expect_rule = "chainguard-enforce/enforce-third-party"
}

# Everything else: other hosts and ports, fronting, no TLS, addresses.
test "chainguard: cgr.dev on port 80" {
  target        = "cgr.dev:80"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "chainguard: a subdomain of cgr.dev" {
  target        = "www.cgr.dev:443"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "chainguard: cgr.dev fronting another name" {
  target        = "cgr.dev:443"
  sni           = "evil.example"
  expect        = "deny"
  expect_rule   = "chainguard-images/registry"
  expect_reason = "sni_mismatch"
}
test "chainguard: cgr.dev without TLS" {
  target        = "cgr.dev:443"
  tls           = false
  expect        = "deny"
  expect_reason = "not_tls"
}
test "chainguard: ghcr.io by address" {
  target        = "140.82.112.33:443"
  sni           = "ghcr.io"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "chainguard: transparent to a private address" {
  target        = "10.1.2.3:443"
  mode          = "transparent"
  sni           = "cgr.dev"
  expect        = "deny"
  expect_reason = "private_destination"
}

# Near misses: look-alike names (no label boundary, a listed name used as a
# label of another domain), parents of listed hosts, other tenants of the
# shared services, listed hosts on other ports.
test "chainguard: enforce.dev look-alike without a label boundary" {
  target        = "evilenforce.dev:443"
  ja3           = "3fed133de60c35724739b913924b6c24"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "chainguard: enforce.dev as a label of another domain" {
  target        = "api.enforce.dev.evil.example:443"
  ja3           = "3fed133de60c35724739b913924b6c24"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "chainguard: cgr.dev as a label of another domain" {
  target        = "cgr.dev.evil.example:443"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "chainguard: R2 suffix under another domain" {
  target        = "abc123.r2.cloudflarestorage.com.evil.example:443"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "chainguard: parent of packages.wolfi.dev" {
  target        = "wolfi.dev:443"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "chainguard: another zendesk tenant" {
  target        = "evil.zendesk.com:443"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "chainguard: another auth0 tenant" {
  target        = "evil.edge.tenants.us.auth0.com:443"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "chainguard: parent of storage.googleapis.com" {
  target        = "googleapis.com:443"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "chainguard: enforce.dev on port 80" {
  target        = "enforce.dev:80"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "chainguard: Enforce API on port 8443" {
  target        = "api.enforce.dev:8443"
  ja3           = "3fed133de60c35724739b913924b6c24"
  expect        = "deny"
  expect_reason = "no_rule"
}

# Every table says 443 "HTTPS" and none lists UDP: each rule is TCP only, so
# QUIC (HTTP/3 on UDP 443, through the QUIC gateway) is refused.
test "chainguard: cgr.dev over QUIC" {
  target        = "104.16.1.1:443"
  mode          = "quic"
  sni           = "cgr.dev"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "chainguard: R2 blob storage over QUIC" {
  target        = "104.16.1.1:443"
  mode          = "quic"
  sni           = "abc123.r2.cloudflarestorage.com"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "chainguard: Enforce API over QUIC" {
  target        = "104.16.1.1:443"
  mode          = "quic"
  sni           = "api.enforce.dev"
  ja3           = "3fed133de60c35724739b913924b6c24"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "chainguard: Enforce third-party host over QUIC" {
  target        = "104.16.1.1:443"
  mode          = "quic"
  sni           = "storage.googleapis.com"
  expect        = "deny"
  expect_reason = "no_rule"
}
