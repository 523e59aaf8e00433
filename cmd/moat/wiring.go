package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"moat.dev/moat/internal/audit"
	"moat.dev/moat/internal/check/clamav"
	"moat.dev/moat/internal/config"
	"moat.dev/moat/internal/lockdown"
	"moat.dev/moat/internal/milter"
	"moat.dev/moat/internal/passmark"
	"moat.dev/moat/internal/store/sqlstore"
)

func init() {
	// The leakage commands read Moat's own configuration: the gateway's
	// hosts, each domain's backends from the store, and the pass secrets.
	loadLeakageConfig = func(path string) (*leakageConfig, error) {
		cfg, err := loadConfigErr(path)
		if err != nil {
			return nil, err
		}
		ctx := context.Background()
		st, err := sqlstore.Open(ctx, cfg.Store.Driver, cfg.Store.DSN)
		if err != nil {
			return nil, err
		}
		defer st.Close()
		ds, err := st.Domains(ctx)
		if err != nil {
			return nil, err
		}
		// Domains in the file count even before moat serve seeded them.
		have := map[string]bool{}
		for _, d := range ds {
			have[d.Name] = true
		}
		for _, dc := range cfg.Domains {
			if d, err := dc.Domain(); err == nil && !have[d.Name] {
				ds = append(ds, *d)
			}
		}
		lc := &leakageConfig{Audit: cfg.Audit.Config, Lockdown: lockdown.DefaultConfig(), Milter: milter.DefaultConfig()}
		lc.Audit.Routes = map[string]audit.Route{}
		for _, d := range ds {
			r := audit.Route{}
			for _, b := range d.Backends {
				r.Backends = append(r.Backends, audit.Backend{Host: b.Host, Port: b.Port})
			}
			lc.Audit.Routes[d.Name] = r
		}
		if lc.Audit.Resolver == "" && len(cfg.DNS.Resolvers) > 0 {
			lc.Audit.Resolver = cfg.DNS.Resolvers[0]
		}
		lc.Lockdown.Gateway = append([]string(nil), cfg.Gateway.Addresses...)
		// Lock port 25 and every port Moat relays to.
		seen := map[int]bool{}
		for _, p := range lc.Lockdown.Ports {
			seen[p] = true
		}
		for _, d := range ds {
			for _, b := range d.Backends {
				if !seen[b.Port] {
					seen[b.Port] = true
					lc.Lockdown.Ports = append(lc.Lockdown.Ports, b.Port)
				}
			}
		}
		if master, err := passmark.ReadKeyFile(cfg.Pass.SecretFile); err == nil {
			lc.Secret = func(domain string) []byte { return passmark.DomainSecret(master, domain) }
		}
		return lc, nil
	}
}

func loadConfigErr(path string) (*config.Config, error) { return config.Load(path) }

// scannerFromConfig builds a virus scanner for CLI releases.
func scannerFromConfig(cfg *config.Config) (*clamav.Check, error) {
	return clamav.New(cfg.Checks.ClamAV, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), nil)
}

var _ = fmt.Sprintf
