# Replicated (the classic Replicated platform: installer, management console,
# license sync and update checks).
#
# Source: Replicated "Firewalls" (lastmod 2017-03-22), seed
# 001_985f63056af2debe.txt. The policy covers the "Online Installation"
# column of every table: initial installation, application installation and
# upgrade, and ongoing access. Airgap installations need no outbound access
# at all and need no policy. The document gives a port only in the "Ongoing
# Access" table (443); every host here is HTTPS, so every rule uses 443,
# over TCP only (protocols = ["tcp"]): the document lists no UDP port, and
# the installer, registry clients and Replicated's API calls speak HTTPS over
# TCP. Without it the rules would also admit QUIC (HTTP/3 on UDP 443)
# through the QUIC gateway, which the document does not ask for.
#
# Out of scope, on purpose:
#
#   * "Port Requirements": TCP 8800 (management console) and 9870-9880
#     (Replicated's internal communication between hosts) are inbound or
#     host-to-host traffic on the installed subnet. They are not egress to
#     the Internet and egressd must not be in that path, so there is no rule
#     for them; open them in your host or network firewall.
#   * "Third Party Registries" (application installation and upgrade table):
#     whatever public registries your application's images come from. The
#     document cannot name them; add a policy of your own with their
#     registry, auth and blob hosts.
#   * The document points at replicatedhq/ips for IP-based firewalls. egressd
#     matches hostnames, so no CIDRs are copied here; the hosts are public,
#     so none is needed for the private-destination check either.
#
# Where the document is imprecise: it names "Docker Hub" and "quay.io" as if
# each were one host, but a registry pull talks to a registry API host, a
# token (auth) host and a blob download host, and a proxy that allows only
# the first one lets "docker pull" start and then fail. The rules below list
# the hosts a pull actually reaches; the comments on each rule say which is
# which.

policy "replicated" {
  description = "Replicated online installation, application install/upgrade and ongoing access (license sync, update checks)"

  # Replicated seed, "Initial Installation of Replicated" table: the easy
  # install script.
  allow "install-script" {
    description = "Replicated easy-install script"
    hosts       = ["get.replicated.com"]
    ports       = [443]
    protocols   = ["tcp"]
  }

  # Replicated seed, "Application Installation and Upgrade" table (license
  # sync check, app upgrade yaml) and "Ongoing Access" table ("Check for
  # updates" and "License sync", both api.replicated.com port 443: the only
  # host needed once the application runs).
  allow "api" {
    description = "License sync and update checks"
    hosts       = ["api.replicated.com"]
    ports       = [443]
    protocols   = ["tcp"]
  }

  # Replicated seed, "Initial Installation of Replicated" table (Retraced
  # auditing service images) and "Application Installation and Upgrade"
  # table (all private application images).
  allow "registry" {
    description = "Replicated registry: Retraced and private application images"
    hosts       = ["registry.replicated.com"]
    ports       = [443]
    protocols   = ["tcp"]
  }

  # Replicated seed, "Initial Installation of Replicated" and "Application
  # Installation and Upgrade" tables, row "quay.io" (Replicated's own images
  # are public images on Quay.io). The document names only quay.io:
  #   quay.io                       registry API and token endpoint
  #   cdn.quay.io, cdn01.quay.io,
  #   cdn02.quay.io, cdn03.quay.io  blob CDN that layer downloads redirect to
  #   quayio-production-s3.s3.amazonaws.com
  #                                 Quay's S3 blob storage; some blob
  #                                 redirects go straight to it instead of
  #                                 the CDN. Included so pulls do not fail
  #                                 half-way; it is a single named bucket
  #                                 host, not a wildcard over S3.
  allow "quay" {
    description = "Quay.io registry, blob CDN and blob storage"
    hosts = [
      "quay.io",
      "cdn.quay.io",
      "cdn01.quay.io",
      "cdn02.quay.io",
      "cdn03.quay.io",
      "quayio-production-s3.s3.amazonaws.com",
    ]
    ports     = [443]
    protocols = ["tcp"]
  }

  # Replicated seed, "Initial Installation of Replicated" and "Application
  # Installation and Upgrade" tables, row "Docker Hub" (some Replicated
  # dependencies are public Docker Hub images). "Docker Hub" is not a
  # hostname; a pull from it uses:
  #   registry-1.docker.io              registry API (what docker.io means)
  #   auth.docker.io                    token service for the registry
  #   production.cloudflare.docker.com  blob CDN that layer downloads
  #                                     redirect to
  #   index.docker.io                   legacy index/registry name, still
  #                                     used by some clients and configs
  allow "docker-hub" {
    description = "Docker Hub registry, token service and blob CDN"
    hosts = [
      "registry-1.docker.io",
      "auth.docker.io",
      "production.cloudflare.docker.com",
      "index.docker.io",
    ]
    ports     = [443]
    protocols = ["tcp"]
  }
}
