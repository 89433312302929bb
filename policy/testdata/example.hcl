server {
  http_listen                = "127.0.0.1:3128"
  allow_private_destinations = false
  hello_timeout              = "10s"
  idle_timeout               = "5m"
  dial_timeout               = "10s"
}

resolver {
  servers = ["127.0.0.1:5353"]
}

log {
  format = "json"
  output = "stdout"
}

policy "chainguard-images" {
  description = "Pull images from cgr.dev"
  allow "registry" {
    hosts = ["cgr.dev", "*.r2.cloudflarestorage.com"]
    ports = [443]
  }
}

policy "cloudflare-tunnel" {
  allow "tunnel-http2" {
    hosts = ["region1.v2.argotunnel.com", "region2.v2.argotunnel.com"]
    cidrs = ["198.41.192.0/24", "2606:4700:a0::/48"]
    sni   = ["h2.cftunnel.com", "cftunnel.com", "_v2-origintunneld._tcp.argotunnel.com"]
    ports = [7844]
  }
}

policy "chainguard-enforce" {
  allow "enforce-api" {
    hosts = ["*.enforce.dev"]
    ports = [443]
    ja3   = ["3fed133de60c35724739b913924b6c24"]
  }
  deny "no-legacy" { hosts = ["legacy.enforce.dev"] }
}
