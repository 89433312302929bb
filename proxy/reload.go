package proxy

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/egressd/egressd/policy"
)

// Hot reload: a new configuration's policies replace the old ones at once.
// Connections already decided keep running (their decision was made); the
// next decision uses the new policy.

const msgReload = "reload"

const (
	fieldOutcome  = "outcome"
	fieldRules    = "rules"
	fieldRestart  = "restart_needed"
	fieldWarnings = "warnings"
)

// policy returns the policy in force.
func (s *Server) policy() *policy.Policy { return s.pol.Load() }

// Reload swaps in cfg's policies, after checking that its listener
// addresses are those egressd is serving on: those take effect only on a
// restart, so a configuration that changes them is refused as a whole.
// Settings other than the policies and listeners (timeouts, limits,
// resolver, log) are kept; the reload line names the ones that differ.
// Every call logs one "reload" line with its outcome, and with warnings,
// the configuration's warning diagnostics, when there are any (at startup
// they go to stderr).
func (s *Server) Reload(cfg *policy.Config, warnings hcl.Diagnostics) error {
	if cfg == nil || cfg.Policy == nil {
		err := errors.New("the configuration has errors")
		s.ReloadFailed(err.Error())
		return err
	}
	old, neu := s.cfg, cfg.Server
	var moved []string
	for _, l := range []struct{ name, old, neu string }{
		{"http_listen", old.HTTPListen, neu.HTTPListen},
		{"transparent_listen", old.TransparentListen, neu.TransparentListen},
		{"transparent_mode", old.TransparentMode, neu.TransparentMode},
		{"quic_listen", old.QUICListen, neu.QUICListen},
		{"dns_listen", old.DNSListen, neu.DNSListen},
		{"admin_listen", old.AdminListen, neu.AdminListen},
	} {
		if l.old != l.neu {
			moved = append(moved, fmt.Sprintf("%s %q -> %q", l.name, l.old, l.neu))
		}
	}
	if len(moved) > 0 {
		err := fmt.Errorf("listener settings change only on a restart: %s; restart egressd, or keep the old values", strings.Join(moved, ", "))
		s.ReloadFailed(err.Error())
		return err
	}
	var restart []string
	for _, f := range []struct {
		name string
		same bool
	}{
		{"hello_timeout", old.HelloTimeout == neu.HelloTimeout},
		{"idle_timeout", old.IdleTimeout == neu.IdleTimeout},
		{"dial_timeout", old.DialTimeout == neu.DialTimeout},
		{"upstream_mark", old.UpstreamMark == neu.UpstreamMark},
		{"max_connections", old.MaxConnections == neu.MaxConnections},
		{"max_connections_per_client", old.MaxConnectionsPerClient == neu.MaxConnectionsPerClient},
		{"shutdown_grace", old.ShutdownGrace == neu.ShutdownGrace},
		{"dns_refuse", old.DNSRefuse == neu.DNSRefuse},
		{"resolver", slices.Equal(s.resolverCfg.Servers, cfg.Resolver.Servers)},
		{"log", s.logCfg == cfg.Log},
		// users_file is not among them: the new file's users are in the
		// new policy, and WatchConfig moves its watch to the new file.
	} {
		if !f.same {
			restart = append(restart, f.name)
		}
	}
	s.authTiming.calibrate(cfg.Policy)
	s.pol.Store(cfg.Policy)
	s.mu.Lock()
	quic := s.quic
	s.mu.Unlock()
	for _, g := range quic {
		g.forgetHeld()
	}
	s.metrics.prune(cfg.Policy)
	s.recordReload(true)
	e := s.log.Info().Str(fieldOutcome, "ok").Int(fieldRules, cfg.Policy.Rules())
	if len(restart) > 0 {
		e = e.Strs(fieldRestart, restart)
	}
	if len(warnings) > 0 {
		e = e.Str(fieldWarnings, strings.TrimSuffix(policy.FormatDiagnostics(warnings), "\n"))
	}
	e.Msg(msgReload)
	return nil
}

// ReloadFailed logs a reload that was refused (invalid configuration:
// detail holds its diagnostics) and counts it; the old policy stays.
func (s *Server) ReloadFailed(detail string) {
	s.recordReload(false)
	s.log.Error().Str(fieldOutcome, "error").Str(fieldDetail, strings.TrimSuffix(detail, "\n")).Msg(msgReload)
}
