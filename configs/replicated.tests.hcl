# Tests for replicated.hcl (egressd test runs them; see README.md, "Policy
# tests"), following the Replicated "Firewalls" document (seed
# 001_985f63056af2debe.txt), online installation.

# "Initial Installation of Replicated".
test "replicated: install script" {
  target      = "get.replicated.com:443"
  expect      = "allow"
  expect_rule = "replicated/install-script"
}
# "Application Installation and Upgrade", "Ongoing Access".
test "replicated: license sync and update checks" {
  target      = "api.replicated.com:443"
  expect      = "allow"
  expect_rule = "replicated/api"
}
test "replicated: registry" {
  target      = "registry.replicated.com:443"
  expect      = "allow"
  expect_rule = "replicated/registry"
}

# Row "quay.io": registry, blob CDN, S3 blob storage.
test "replicated: quay.io" {
  target      = "quay.io:443"
  expect      = "allow"
  expect_rule = "replicated/quay"
}
test "replicated: quay blob CDN" {
  target      = "cdn02.quay.io:443"
  expect      = "allow"
  expect_rule = "replicated/quay"
}
test "replicated: quay blob CDN cdn.quay.io" {
  target      = "cdn.quay.io:443"
  expect      = "allow"
  expect_rule = "replicated/quay"
}
test "replicated: quay blob CDN cdn01.quay.io" {
  target      = "cdn01.quay.io:443"
  expect      = "allow"
  expect_rule = "replicated/quay"
}
test "replicated: quay blob CDN cdn03.quay.io" {
  target      = "cdn03.quay.io:443"
  expect      = "allow"
  expect_rule = "replicated/quay"
}
test "replicated: quay S3 bucket" {
  target      = "quayio-production-s3.s3.amazonaws.com:443"
  expect      = "allow"
  expect_rule = "replicated/quay"
}

# Row "Docker Hub": registry, token service, blob CDN, legacy index.
test "replicated: docker hub registry" {
  target      = "registry-1.docker.io:443"
  expect      = "allow"
  expect_rule = "replicated/docker-hub"
}
test "replicated: docker hub auth" {
  target      = "auth.docker.io:443"
  expect      = "allow"
  expect_rule = "replicated/docker-hub"
}
test "replicated: docker hub blob CDN" {
  target      = "production.cloudflare.docker.com:443"
  expect      = "allow"
  expect_rule = "replicated/docker-hub"
}
test "replicated: docker hub index" {
  target      = "index.docker.io:443"
  expect      = "allow"
  expect_rule = "replicated/docker-hub"
}

# "Port Requirements" is inbound and internal: no egress rule.
test "replicated: management console port 8800" {
  target        = "get.replicated.com:8800"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "replicated: internal port range 9870-9880" {
  target        = "api.replicated.com:9875"
  expect        = "deny"
  expect_reason = "no_rule"
}

# Other hosts and ports.
test "replicated: apex" {
  target        = "replicated.com:443"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "replicated: another S3 bucket" {
  target        = "evil.s3.amazonaws.com:443"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "replicated: docker.io apex" {
  target        = "docker.io:443"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "replicated: api over plain http" {
  target        = "api.replicated.com:80"
  mode          = "http"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "replicated: api fronting another name" {
  target        = "api.replicated.com:443"
  sni           = "evil.example"
  expect        = "deny"
  expect_reason = "sni_mismatch"
}

# Near misses: look-alikes and names the rules do not list.
test "replicated: api.replicated.com as a label of another domain" {
  target        = "api.replicated.com.evil.example:443"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "replicated: another replicated.com host" {
  target        = "evil.replicated.com:443"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "replicated: another quay.io host (no wildcard)" {
  target        = "evil.quay.io:443"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "replicated: internal port range, upper bound" {
  target        = "registry.replicated.com:9880"
  expect        = "deny"
  expect_reason = "no_rule"
}

# The document's only port is 443 and it lists no UDP: each rule is TCP
# only, so QUIC (HTTP/3 on UDP 443, through the QUIC gateway) is refused.
test "replicated: install script over QUIC" {
  target        = "104.16.1.1:443"
  mode          = "quic"
  sni           = "get.replicated.com"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "replicated: api over QUIC" {
  target        = "104.16.1.1:443"
  mode          = "quic"
  sni           = "api.replicated.com"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "replicated: registry over QUIC" {
  target        = "104.16.1.1:443"
  mode          = "quic"
  sni           = "registry.replicated.com"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "replicated: quay.io over QUIC" {
  target        = "104.16.1.1:443"
  mode          = "quic"
  sni           = "quay.io"
  expect        = "deny"
  expect_reason = "no_rule"
}
test "replicated: docker hub over QUIC" {
  target        = "104.16.1.1:443"
  mode          = "quic"
  sni           = "registry-1.docker.io"
  expect        = "deny"
  expect_reason = "no_rule"
}
