package clamav

import (
	"fmt"

	"moat.dev/moat/internal/clamd"
)

// Oversize policies: what happens to a message larger than
// stream_max_length, which clamd cannot scan.
const (
	OversizeAccept   = "accept_unscanned" // deliver with "X-Moat-Virus: unscanned (too large)" (default)
	OversizeTempfail = "tempfail"         // 451 4.3.4
	OversizeReject   = "reject"           // 552 5.3.4
)

// Config is the ClamAV check's configuration. The clamd client keys (addrs,
// connect_timeout, scan_timeout, stream_max_length, health_interval,
// max_idle_conns, idle_timeout) sit at the same level as fail_open and
// oversize.
type Config struct {
	clamd.Config `yaml:",inline"`
	// FailOpen delivers mail unscanned, with "X-Moat-Virus: unscanned",
	// when no clamd instance can scan it. The default (false) answers
	// "451 4.7.1 Virus scanner unavailable" so that the sender retries.
	FailOpen bool `yaml:"fail_open"`
	// Oversize is what happens to a message larger than stream_max_length:
	// accept_unscanned (default), tempfail or reject. See docs/checks/clamav.md
	// for why accepting is the default.
	Oversize string `yaml:"oversize"`
}

// DefaultConfig returns the clamd client defaults, fail_open false and
// oversize accept_unscanned.
func DefaultConfig() Config {
	return Config{Config: clamd.DefaultConfig(), Oversize: OversizeAccept}
}

// Validate checks the configuration; errors name the key.
func (c *Config) Validate() error {
	if err := c.Config.Validate(); err != nil {
		return err
	}
	switch c.Oversize {
	case OversizeAccept, OversizeTempfail, OversizeReject:
	default:
		return fmt.Errorf("oversize: %q is not one of %s, %s, %s", c.Oversize, OversizeAccept, OversizeTempfail, OversizeReject)
	}
	return nil
}
