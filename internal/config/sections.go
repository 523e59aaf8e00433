package config

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"time"

	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/relay"
	"moat.dev/moat/internal/smtpd"
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
}

func defaultSections() Sections {
	s := Sections{SMTP: smtpd.DefaultConfig(), Queue: queue.DefaultConfig(), Relay: relay.DefaultConfig(), CheckTimeout: queue.Duration(20 * time.Second),
		DNS: defaultDNS(), Checks: defaultChecks()}
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
		return fmt.Errorf("smtp.%w", err)
	}
	if err := s.Relay.Validate(); err != nil {
		return fmt.Errorf("relay.%w", err)
	}
	if err := s.Queue.Validate(); err != nil {
		return fmt.Errorf("queue.%w", err)
	}
	if err := s.DNS.Validate(); err != nil {
		return fmt.Errorf("dns.%w", err)
	}
	if err := s.Checks.validate(); err != nil {
		return err
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
