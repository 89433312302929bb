# Chainguard Images and Chainguard Enforce.
#
# Source: Chainguard "Network Requirements" (date 2023-09-08), seed
# 000_6776b888b26ce23a.txt. Every port in that document is 443/HTTPS, which
# is the default for allow rules; it is written out anyway so the rules read
# like the tables they come from. Every rule is TCP only (protocols =
# ["tcp"]): the document lists no UDP port, and the clients it is about
# (registry clients, apk, the Enforce agent) speak HTTPS over TCP. Without
# it the rules would also admit QUIC (HTTP/3 on UDP 443) through the QUIC
# gateway, which the document does not ask for.
#
# Where the document is imprecise:
#
#   * Its prose says the wildcard "*.rc.cloudflarestorage.com" can replace the
#     single blob-storage host. That is a typo: the table row and the single
#     host both live under r2.cloudflarestorage.com (Cloudflare R2), so the
#     rule uses "*.r2.cloudflarestorage.com".
#   * The Enforce hostnames ("Enforce Chainguard Hosts") and the CIDR ranges
#     (under "Images Hosts" and "Enforce CIDR Ranges") are Hugo shortcodes,
#     {{< blurb/enforce-domains >}} and {{< blurb/enforce-ips >}}, whose
#     content is not in the document. Neither list can be transcribed:
#       - the Enforce hosts are covered by "*.enforce.dev", the domain family
#         the document's "Enforce JA3 Fingerprints" section talks about;
#       - no CIDRs are listed, because the ranges are not in the
#         document. It asks for access "to and from" them in two places:
#         under "Images Hosts", to authenticate with enforce.dev (egress,
#         which the rules allow by name: enforce.dev, *.enforce.dev), and
#         under "Enforce CIDR Ranges", for workload discovery, where they
#         connect *in* to your clusters ("allow incoming connections from
#         those networks"), which is ingress and not egressd's business.
#         A CONNECT carries the name, so the name rules suffice; an
#         IP-literal connection into those ranges is not covered.
#         Chainguard's hosts are public, so no CIDR is needed for the
#         private-destination check either.
#   * "Enforce Agent Access", "Enforce SaaS Access" and "Enforce Image
#     Registry Access" name no hosts: the agent needs whatever registries
#     your clusters use. Add those in a policy of your own.

policy "chainguard-images" {
  description = "Chainguard Images: pull from cgr.dev, authenticate with enforce.dev, fetch Wolfi packages"

  # Chainguard seed, "Chainguard Images" / "Images Hosts" table.
  # enforce.dev (the apex) is the registry-authentication host; docker and
  # other registry clients talk to it, so it carries no JA3 restriction. The
  # "*.enforce.dev" rule in chainguard-enforce never matches the apex.
  allow "registry" {
    description = "Main image registry, registry authentication, Wolfi package repository"
    hosts       = ["cgr.dev", "enforce.dev", "packages.wolfi.dev"]
    ports       = [443]
    protocols   = ["tcp"]
  }

  # Chainguard seed, "Chainguard Images" / "Images Third-party Hosts" table.
  # The wildcard is the table's "*.r2.cloudflarestorage.com" (the prose
  # variant "*.rc." is a typo, see above). It matches any depth below
  # r2.cloudflarestorage.com but not r2.cloudflarestorage.com itself. The
  # single bucket host is kept as the document spells it (31 hex digits,
  # where R2 account IDs usually have 32; the wildcard covers it either way).
  # The document warns it may change, so do not narrow the rule to it alone.
  allow "third-party" {
    description = "Wolfi development (ghcr.io), cgr.dev blob storage on Cloudflare R2, customer support"
    hosts = [
      "ghcr.io",
      "*.r2.cloudflarestorage.com",
      "9236a389bd48b98df91adc1bc924620.r2.cloudflarestorage.com",
      "chainguardhelp.zendesk.com",
    ]
    ports     = [443]
    protocols = ["tcp"]
  }
}

policy "chainguard-enforce" {
  description = "Chainguard Enforce: agent and client traffic to *.enforce.dev, and Enforce's third-party hosts"

  # Chainguard seed, "Chainguard Enforce" / "Enforce Chainguard Hosts" (a
  # shortcode whose table is missing from the document, see above) and
  # "Enforce JA3 Fingerprints" (the fingerprint below; its full string is
  # 771,49195-49199-49196-49200-52393-52392-49161-49171-49162-49172-156-157-47-53-49170-10-4865-4866-4867,0-5-10-11-13-65281-16-18-43-51,29-23-24-25,0).
  # The document says Enforce client traffic "can be identified" by this
  # fingerprint; the preset turns that into a requirement, so a TLS client
  # with a different fingerprint (a browser, or a client built with another
  # TLS stack or Go release) gets ja3_mismatch for *.enforce.dev. If you need
  # such clients, add an allow rule for the hosts they use in a file of your
  # own: when this rule's JA3 check fails, a later allow rule that passes
  # still admits the connection.
  allow "enforce-api" {
    description = "Enforce agent and client traffic, pinned to the documented JA3"
    hosts       = ["*.enforce.dev"]
    ports       = [443]
    protocols   = ["tcp"]
    ja3         = ["3fed133de60c35724739b913924b6c24"]
  }

  # Chainguard seed, "Chainguard Enforce" / "Enforce Third-party Hosts" table.
  # No fingerprint is documented for these, so none is required.
  allow "enforce-third-party" {
    description = "Auth0 tenant, Google and GitHub content hosts used by Enforce"
    hosts = [
      "chainguard-cd-nvt30yluzzsmvk7t.edge.tenants.us.auth0.com",
      "googlecode.l.googleusercontent.com",
      "raw.githubusercontent.com",
      "storage.googleapis.com",
    ]
    ports     = [443]
    protocols = ["tcp"]
  }
}
