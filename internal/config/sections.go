package config

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/smtpd"
)

// Sections are the settings owned by the individual packages, each
// documented where it is defined and in examples/moat.yaml.
type Sections struct {
	// SMTP is the inbound listener (package smtpd).
	SMTP smtpd.Config `yaml:"smtp"`
	// Queue is the durable spool and delivery scheduler (package queue).
	Queue queue.Config `yaml:"queue"`
	// CheckTimeout bounds each check in each SMTP phase. Default 20s.
	CheckTimeout queue.Duration `yaml:"check_timeout"`
}

func defaultSections() Sections {
	s := Sections{SMTP: smtpd.DefaultConfig(), Queue: queue.DefaultConfig(), CheckTimeout: queue.Duration(20 * time.Second)}
	// Filled from the top-level settings unless given explicitly.
	s.SMTP.Hostname, s.Queue.Hostname, s.Queue.SpoolDir, s.SMTP.TLSDir = "", "", "", ""
	s.SMTP.Listen = []string{"127.0.0.1:2525"}
	return s
}

func (s *Sections) fill(c *Config) {
	if s.SMTP.Hostname == "" {
		s.SMTP.Hostname = c.Hostname
	}
	if s.Queue.Hostname == "" {
		s.Queue.Hostname = c.Hostname
	}
	if s.Queue.SpoolDir == "" {
		s.Queue.SpoolDir = filepath.Join(c.DataDir, "spool")
	}
	if s.SMTP.TLSDir == "" && s.SMTP.TLSCert == "" {
		s.SMTP.TLSDir = filepath.Join(c.DataDir, "tls")
	}
}

func (s *Sections) validate() error {
	if err := s.SMTP.Validate(); err != nil {
		return fmt.Errorf("smtp.%w", err)
	}
	if err := s.Queue.Validate(); err != nil {
		return fmt.Errorf("queue.%w", err)
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
