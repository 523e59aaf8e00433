package milter

import (
	"fmt"
	"moat.dev/moat/internal/netaddr"
	"net/url"
	"time"
)

// Config is the `milter` section: the pass-mark verifying milter run next to
// a customer's backend MTA.
type Config struct {
	// Listen is the milter socket: host:port (TCP) or unix:/path.
	Listen string `yaml:"listen"`
	// ReportURL is Moat's bypass report endpoint (the admin server's
	// ReportHandler); empty disables reporting.
	ReportURL string `yaml:"report_url"`
	// Trusted are client networks whose mail is not checked (local
	// submission, webmail, Moat itself is NOT needed here: Moat's mail
	// carries the mark).
	Trusted []string `yaml:"trusted"`
	// TrustAuthenticated lets SMTP-authenticated clients ({auth_authen}
	// macro set) through unchecked.
	TrustAuthenticated bool `yaml:"trust_authenticated"`
	// StripMark removes the X-Moat-Pass field from verified messages before
	// delivery.
	StripMark bool `yaml:"strip_mark"`
	// ObserveOnly accepts unmarked messages (still reporting them): for
	// rolling out the milter before enforcing it.
	ObserveOnly bool `yaml:"observe_only"`
	// MaxAge is the oldest pass mark accepted (longer than Moat's queue
	// lifetime).
	MaxAge time.Duration `yaml:"max_age"`
	// MaxMessageSize is the largest message verified; bigger messages for
	// protected domains are refused (552 5.3.4).
	MaxMessageSize int64 `yaml:"max_message_size"`
	// ReportInterval is how long bypass events are batched before a report
	// is sent.
	ReportInterval time.Duration `yaml:"report_interval"`
	// ReportQueue bounds the bypass events held in memory while Moat is
	// unreachable; more are counted and dropped.
	ReportQueue int `yaml:"report_queue"`
}

// DefaultConfig returns production defaults: enforce, trust authenticated
// senders (not loopback: add it to Trusted for local submission), keep the
// mark.
func DefaultConfig() Config {
	return Config{
		Listen:             "127.0.0.1:8891",
		Trusted:            nil, // loopback is not trusted by default: add it for local submission
		TrustAuthenticated: true,
		MaxAge:             7 * 24 * time.Hour,
		MaxMessageSize:     64 << 20,
		ReportInterval:     10 * time.Second,
		ReportQueue:        10000,
	}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.Listen == "" {
		return fmt.Errorf("listen: must be host:port or unix:/path")
	}
	if c.ReportURL != "" {
		u, err := url.Parse(c.ReportURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("report_url: %q is not an http(s) URL", c.ReportURL)
		}
	}
	for _, s := range c.Trusted {
		if _, err := netaddr.ParsePrefix(s); err != nil {
			return fmt.Errorf("trusted: %q is not an IP address or CIDR (%v)", s, err)
		}
	}
	if c.MaxAge < time.Hour {
		return fmt.Errorf("max_age: must be >= 1h")
	}
	if c.MaxMessageSize < 1<<20 {
		return fmt.Errorf("max_message_size: must be >= 1048576")
	}
	if c.ReportInterval < 100*time.Millisecond {
		return fmt.Errorf("report_interval: must be >= 100ms")
	}
	if c.ReportQueue < 1 {
		return fmt.Errorf("report_queue: must be >= 1")
	}
	return nil
}
