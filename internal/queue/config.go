package queue

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// Duration is a time.Duration written as a Go duration string ("5m", "4h")
// in YAML and JSON.
type Duration time.Duration

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(strings.TrimSpace(string(b)))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText formats the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Config is the queue section of the configuration file.
type Config struct {
	// SpoolDir is the spool directory (created if missing, mode 0750).
	SpoolDir string `yaml:"spool_dir"`
	// Workers is the global limit of concurrent delivery attempts.
	Workers int `yaml:"workers"`
	// PerDomain is the limit of concurrent delivery attempts per
	// destination domain (one attempt carries all of a message's
	// recipients in that domain).
	PerDomain int `yaml:"per_domain"`
	// MinBackoff is the wait after the first temporary failure; each
	// further failure doubles it up to MaxBackoff.
	MinBackoff Duration `yaml:"min_backoff"`
	// MaxBackoff caps the wait between attempts.
	MaxBackoff Duration `yaml:"max_backoff"`
	// Jitter randomises each wait by ± this fraction (0 to 1) so that
	// messages deferred together do not retry in lockstep.
	Jitter float64 `yaml:"jitter"`
	// MaxLifetime is how long after reception a temporarily failing
	// recipient is retried before it fails with a DSN (status 4.4.7).
	MaxLifetime Duration `yaml:"max_lifetime"`
	// DelayWarning is the age after which the sender gets one "delayed"
	// DSN for recipients still pending. 0 disables delay warnings.
	DelayWarning Duration `yaml:"delay_warning"`
	// ShutdownGrace is how long Run waits for in-flight deliveries after
	// its context is cancelled before cancelling them.
	ShutdownGrace Duration `yaml:"shutdown_grace"`
	// Hostname names this MTA in DSNs (Reporting-MTA, From, Message-ID).
	Hostname string `yaml:"hostname"`
}

// DefaultConfig returns production defaults.
func DefaultConfig() Config {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return Config{
		SpoolDir:      "./data/spool",
		Workers:       64,
		PerDomain:     16,
		MinBackoff:    Duration(time.Minute),
		MaxBackoff:    Duration(time.Hour),
		Jitter:        0.1,
		MaxLifetime:   Duration(5 * 24 * time.Hour),
		DelayWarning:  Duration(4 * time.Hour),
		ShutdownGrace: Duration(30 * time.Second),
		Hostname:      host,
	}
}

// Validate checks the configuration; each error names its key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, msg string) { errs = append(errs, fmt.Errorf("%s: %s", key, msg)) }
	if c.SpoolDir == "" {
		bad("spool_dir", "must be set")
	}
	if c.Workers < 1 {
		bad("workers", "must be >= 1")
	}
	if c.PerDomain < 1 {
		bad("per_domain", "must be >= 1")
	}
	if c.MinBackoff <= 0 {
		bad("min_backoff", "must be > 0")
	}
	if c.MaxBackoff < c.MinBackoff {
		bad("max_backoff", "must be >= min_backoff")
	}
	if c.Jitter < 0 || c.Jitter > 1 {
		bad("jitter", "must be between 0 and 1")
	}
	if c.MaxLifetime <= 0 {
		bad("max_lifetime", "must be > 0")
	}
	if c.DelayWarning < 0 {
		bad("delay_warning", "must be >= 0 (0 disables)")
	}
	if c.ShutdownGrace < 0 {
		bad("shutdown_grace", "must be >= 0")
	}
	if c.Hostname == "" || strings.ContainsAny(c.Hostname, " \t\r\n<>;") {
		bad("hostname", "must be a host name")
	}
	return errors.Join(errs...)
}
