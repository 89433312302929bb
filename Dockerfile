# syntax=docker/dockerfile:1
#
# egressd container image.
#
#   docker build -t egressd:dev --build-arg VERSION=v0.1.0 .
#   docker run --rm -p 3128:3128 egressd:dev                       # embedded presets
#   docker run --rm -p 3128:3128 -v $PWD/my-policy:/etc/egressd/custom:ro \
#       egressd:dev serve --config /etc/egressd/custom --http-listen :3128
#
# Targets:
#   (default, last stage) egressd   the proxy on a distroless static base
#   gateway                         Debian slim with nftables/iptables/iproute2
#                                   and deploy/gateway/egressd-gateway.sh, for the
#                                   rules (init) container of the transparent
#                                   recipes: docker build --target gateway .

# --- build ------------------------------------------------------------------
FROM golang:1.26-bookworm AS build
ARG VERSION=dev
WORKDIR /src
# Dependencies first, so source edits do not invalidate the module cache layer.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static binary: no cgo, so it runs on a base image without a libc.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
        -o /out/egressd ./cmd/egressd \
 && /out/egressd version \
 && /out/egressd validate --config configs

# --- rules container for the transparent gateway ------------------------------
FROM debian:bookworm-slim AS gateway
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iptables iproute2 \
 && rm -rf /var/lib/apt/lists/*
COPY deploy/gateway/egressd-gateway.sh /usr/local/bin/egressd-gateway.sh
# Installing rules needs CAP_NET_ADMIN (granted by the pod/compose file) and
# root inside the container; it exits once the rules are in place.
ENTRYPOINT ["/usr/local/bin/egressd-gateway.sh"]
CMD ["install"]

# --- egressd -------------------------------------------------------------------
# distroless/static: CA certificates, /etc/passwd with the nonroot user, tzdata,
# and nothing else (no shell, no package manager).
FROM gcr.io/distroless/static-debian12:nonroot AS egressd
COPY --from=build /out/egressd /egressd
# The embedded presets, also as files: a starting point for --config, e.g. a
# ConfigMap mounted over /etc/egressd or a directory next to them.
COPY configs/*.hcl /etc/egressd/
# Numeric UID 65532 (distroless "nonroot"), not a name: Kubernetes'
# runAsNonRoot can only verify a numeric user without reading the image's
# /etc/passwd, and the transparent recipes exclude egressd's own upstream
# connections from redirection by this UID (iptables -m owner --uid-owner
# 65532 / nft meta skuid 65532). egressd needs no privilege: it listens on
# unprivileged ports and opens outbound TCP connections.
USER 65532:65532
# 3128: HTTP proxy (CONNECT) listener. 15001: transparent listener
# (server.transparent_listen / serve --transparent-listen). 15002/udp: QUIC
# gateway (server.quic_listen / serve --quic-listen; needs CAP_NET_ADMIN for
# IP_TRANSPARENT, so it is for containers run with that capability).
EXPOSE 3128 15001 15002/udp
ENTRYPOINT ["/egressd"]
# The built-in default listen address is 127.0.0.1:3128, which inside a
# container is reachable only from the container itself: bind every address
# so that a published port or a Service reaches the proxy. A --config whose
# server block sets http_listen needs "serve --config DIR" without this flag
# (the flag overrides the file).
CMD ["serve", "--http-listen", ":3128"]
