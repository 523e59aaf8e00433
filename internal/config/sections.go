package config

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"time"

	"moat.dev/moat/internal/api"
	"moat.dev/moat/internal/audit"
	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/quarantine"
	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/relay"
	"moat.dev/moat/internal/smtpd"
	"moat.dev/moat/internal/tracking"
	"moat.dev/moat/internal/web"
)

// Sections are the settings owned by the individual packages, each
// documented where it is defined and in examples/moat.yaml.
type Sections struct {
	// SMTP is the inbound listener (package smtpd).
	SMTP smtpd.Config `yaml:"smtp"`
	// Queue is the durable spool and delivery scheduler (package queue).
	Queue queue.Config `yaml:"queue"`
	// Relay is delivery to the customers' backends (package relay).
	Relay relay.Config `yaml:"relay"`
	// CheckTimeout bounds each check in each SMTP phase. Default 20s.
	CheckTimeout queue.Duration `yaml:"check_timeout"`
	// DNS is the caching resolver every check uses. Default resolvers: the
	// nameservers of /etc/resolv.conf (a local validating resolver such as
	// unbound on 127.0.0.1 is recommended: public resolvers are refused by
	// most blocklists).
	DNS dnsx.Config `yaml:"dns"`
	// Checks holds each check's settings.
	Checks Checks `yaml:"checks"`
	// Quarantine holds suspicious mail for people to release (package quarantine).
	Quarantine quarantine.Config `yaml:"quarantine"`
	// Web is the quarantine web UI for end users and admins (package web).
	Web web.Config `yaml:"web"`
	// API is the admin JSON API under /api/v1/ on the http listener.
	API api.Config `yaml:"api"`
	// Tracking indexes every log line about a message for message tracking.
	Tracking tracking.Config `yaml:"tracking"`
	// Audit is the leakage audit (moat audit, and scheduled in moat serve).
	Audit AuditConfig `yaml:"audit"`
}

// AuditConfig is the audit section: the audit's settings plus how often
// moat serve audits every customer domain.
type AuditConfig struct {
	audit.Config `yaml:",inline"`
	// Every is the interval of the scheduled audit in moat serve; 0 turns
	// it off. Default 24h. Scheduled audits never probe unless probe: true.
	Every queue.Duration `yaml:"every"`
}

func defaultSections() Sections {
	s := Sections{SMTP: smtpd.DefaultConfig(), Queue: queue.DefaultConfig(), Relay: relay.DefaultConfig(), CheckTimeout: queue.Duration(20 * time.Second),
		DNS: defaultDNS(), Checks: defaultChecks(),
		Quarantine: quarantine.DefaultConfig(), Web: web.DefaultConfig(), API: api.DefaultConfig(), Tracking: tracking.DefaultConfig(),
		Audit: AuditConfig{Config: audit.DefaultConfig(), Every: queue.Duration(24 * time.Hour)}}
	s.Quarantine.Dir = ""
	// Filled from the top-level settings unless given explicitly.
	s.Relay.Hostname = ""
	s.SMTP.Hostname, s.Queue.Hostname, s.Queue.SpoolDir, s.SMTP.TLSDir = "", "", "", ""
	s.SMTP.Listen = []string{"127.0.0.1:2525"}
	return s
}

func (s *Sections) fill(c *Config) {
	if s.SMTP.Hostname == "" {
		s.SMTP.Hostname = c.Hostname
	}
	if s.Relay.Hostname == "" {
		s.Relay.Hostname = c.Hostname
	}
	if s.Queue.Hostname == "" {
		s.Queue.Hostname = c.Hostname
	}
	if s.Queue.SpoolDir == "" {
		s.Queue.SpoolDir = filepath.Join(c.DataDir, "spool")
	}
	if s.Quarantine.Dir == "" {
		s.Quarantine.Dir = filepath.Join(c.DataDir, "quarantine")
	}
	if s.Audit.Gateway.Hostnames == nil && s.Audit.Gateway.Addresses == nil {
		s.Audit.Gateway.Hostnames = c.Gateway.Hostnames
		s.Audit.Gateway.Addresses = c.Gateway.Addresses
	}
	if len(s.DNS.Resolvers) == 0 {
		s.DNS.Resolvers = systemResolvers()
		if len(s.DNS.Resolvers) == 0 {
			s.DNS.Resolvers = []string{"127.0.0.1:53"}
		}
	}
	if len(s.Checks.HELO.Hostnames) == 0 {
		s.Checks.HELO.Hostnames = []string{c.Hostname}
	}
	if len(s.Checks.HELO.ListenAddrs) == 0 {
		for _, l := range s.SMTP.Listen {
			if h, _, err := net.SplitHostPort(l); err == nil && net.ParseIP(h) != nil && !net.ParseIP(h).IsUnspecified() {
				s.Checks.HELO.ListenAddrs = append(s.Checks.HELO.ListenAddrs, h)
			}
		}
	}
	if s.SMTP.TLSDir == "" && s.SMTP.TLSCert == "" {
		s.SMTP.TLSDir = filepath.Join(c.DataDir, "tls")
	}
}

func (s *Sections) validate() error {
	if err := s.SMTP.Validate(); err != nil {
		return prefixAll("smtp.", err)
	}
	if err := s.Relay.Validate(); err != nil {
		return prefixAll("relay.", err)
	}
	if err := s.Queue.Validate(); err != nil {
		return prefixAll("queue.", err)
	}
	if err := s.DNS.Validate(); err != nil {
		return prefixAll("dns.", err)
	}
	if err := s.Checks.validate(); err != nil {
		return err
	}
	if err := s.Quarantine.Validate(); err != nil {
		return prefixAll("quarantine.", err)
	}
	if err := s.Web.Validate(); err != nil {
		return prefixAll("web.", err)
	}
	if err := s.API.Validate(); err != nil {
		return prefixAll("api.", err)
	}
	if err := s.Tracking.Validate(); err != nil {
		return prefixAll("tracking.", err)
	}
	if len(s.Audit.Gateway.Hostnames) > 0 || len(s.Audit.Gateway.Addresses) > 0 {
		if err := s.Audit.Config.Validate(); err != nil {
			return prefixAll("audit.", err)
		}
	}
	if s.Audit.Every < 0 {
		return fmt.Errorf("audit.every: must be >= 0 (0 turns the scheduled audit off)")
	}
	if s.CheckTimeout.D() <= 0 {
		return fmt.Errorf("check_timeout: must be > 0")
	}
	return nil
}

func jsonPolicy(p *policy.Policy) (string, error) {
	b, err := json.Marshal(p)
	return string(b), err
}

func ioEOF() error { return io.EOF }
