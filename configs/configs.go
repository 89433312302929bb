// Package configs holds egressd's vendor policy presets and embeds them.
//
// FS is the embedded default configuration: every *.hcl file of this
// directory, that is every preset (Chainguard Images and Enforce,
// Replicated, Cloudflare Tunnel and its optional features), loaded together
// as one configuration with policy.LoadFS(configs.FS, "."). The presets hold
// only policy blocks, so the default configuration runs on the built-in
// server, resolver and log defaults (listening on 127.0.0.1:3128).
//
// Each preset's *.tests.hcl file holds test blocks for it, loaded with the
// presets: egressd test (policy.Config.RunTests) decides them, serve
// ignores them.
//
// The package contains nothing else; the policy language is described in
// README.md next to the presets.
package configs

import "embed"

// FS holds every preset of this directory (*.hcl).
//
//go:embed *.hcl
var FS embed.FS
