package quarantine

import (
	"errors"
	"fmt"
	"net/mail"
	"net/url"
	"strings"
	"time"
)

// Config is the quarantine section of the configuration file.
type Config struct {
	// Dir is the directory holding the held message files (one <id>.eml
	// per message). It is created if missing.
	Dir string `yaml:"quarantine_dir"`
	// Retention is how long held mail is kept before it expires and is
	// deleted (default 720h = 30 days). At least 1h.
	Retention time.Duration `yaml:"retention"`
	// DomainRetention overrides Retention for single customer domains,
	// e.g. {"example.com": "2160h"}.
	DomainRetention map[string]time.Duration `yaml:"domain_retention"`
	// ExpiryInterval is how often the expiry sweep runs (default 1h).
	ExpiryInterval time.Duration `yaml:"expiry_interval"`
	// DigestInterval is how often each recipient with newly held mail gets
	// a digest email (default 24h). 0 disables digests.
	DigestInterval time.Duration `yaml:"digest_interval"`
	// DigestFrom is the envelope and header sender of digest emails
	// (default "quarantine@localhost"; set a real address of yours).
	DigestFrom string `yaml:"digest_from"`
	// DigestMaxEntries caps the messages listed in one digest (default 100);
	// the rest are reachable through the web UI.
	DigestMaxEntries int `yaml:"digest_max_entries"`
	// LinkTTL is how long the one-click links in a digest stay valid
	// (default 168h = 7 days).
	LinkTTL time.Duration `yaml:"link_ttl"`
	// BaseURL is the public address of the web UI, used to build digest
	// links, e.g. "https://quarantine.example.net". Digests are not sent
	// while it is empty.
	BaseURL string `yaml:"base_url"`
}

// DefaultConfig returns production defaults.
func DefaultConfig() Config {
	return Config{
		Dir:              "/var/lib/moat/quarantine",
		Retention:        30 * 24 * time.Hour,
		ExpiryInterval:   time.Hour,
		DigestInterval:   24 * time.Hour,
		DigestFrom:       "quarantine@localhost",
		DigestMaxEntries: 100,
		LinkTTL:          7 * 24 * time.Hour,
	}
}

// Validate reports the first invalid key.
func (c *Config) Validate() error {
	if c.Dir == "" {
		return errors.New("quarantine_dir: must be set")
	}
	if c.Retention < time.Hour {
		return errors.New("retention: must be >= 1h")
	}
	for d, r := range c.DomainRetention {
		if r < time.Hour {
			return fmt.Errorf("domain_retention: %s: must be >= 1h", d)
		}
	}
	if c.ExpiryInterval < time.Second {
		return errors.New("expiry_interval: must be >= 1s")
	}
	if c.DigestInterval != 0 && c.DigestInterval < time.Minute {
		return errors.New("digest_interval: must be 0 (off) or >= 1m")
	}
	if _, err := mail.ParseAddress(c.DigestFrom); err != nil {
		return errors.New("digest_from: must be an email address")
	}
	if c.DigestMaxEntries < 1 {
		return errors.New("digest_max_entries: must be >= 1")
	}
	if c.LinkTTL < time.Minute {
		return errors.New("link_ttl: must be >= 1m")
	}
	if c.BaseURL != "" {
		u, err := url.Parse(c.BaseURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return errors.New("base_url: must be an absolute http(s) URL")
		}
	}
	return nil
}

func (c *Config) retention(domain string) time.Duration {
	if r, ok := c.DomainRetention[strings.ToLower(domain)]; ok {
		return r
	}
	return c.Retention
}
