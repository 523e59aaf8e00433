package clamd

import (
	"fmt"
	"strings"
	"time"
)

// Config is the clamd client configuration.
type Config struct {
	// Addrs lists the clamd instances, each "unix:/path/to/clamd.ctl" or
	// "tcp:host:port". Scans are spread round-robin over the instances that
	// are up and fail over to the next one on a connection error.
	Addrs []string `yaml:"addrs"`
	// ConnectTimeout bounds connecting to one instance.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// ScanTimeout bounds one scan: sending the message and reading the
	// verdict. Keep it below the pipeline's per-check timeout so that a slow
	// scanner is reported as "scanner unavailable" and not as a generic
	// timeout.
	ScanTimeout time.Duration `yaml:"scan_timeout"`
	// StreamMaxLength must equal clamd's StreamMaxLength (clamd.conf; clamd's
	// default is 25M). Larger messages are not sent: the caller gets
	// ErrTooLarge and its oversize policy decides.
	StreamMaxLength int64 `yaml:"stream_max_length"`
	// HealthInterval is how often every instance is probed (zVERSION) to mark
	// it up or down.
	HealthInterval time.Duration `yaml:"health_interval"`
	// MaxIdleConns is the number of idle IDSESSION connections kept per
	// instance for reuse. 0 disables reuse (one connection per scan).
	MaxIdleConns int `yaml:"max_idle_conns"`
	// IdleTimeout is how long an idle session connection is kept. It must be
	// below clamd's own IdleTimeout (default 30s), after which clamd closes
	// the session.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
}

// DefaultConfig returns the production defaults: the Debian clamd socket,
// 2s connect, 15s scan, 25 MiB stream limit (clamd's default), health
// probe every 5s, up to 4 idle sessions per instance kept 10s.
func DefaultConfig() Config {
	return Config{
		Addrs:           []string{"unix:/run/clamav/clamd.ctl"},
		ConnectTimeout:  2 * time.Second,
		ScanTimeout:     15 * time.Second,
		StreamMaxLength: 25 << 20,
		HealthInterval:  5 * time.Second,
		MaxIdleConns:    16,
		IdleTimeout:     10 * time.Second,
	}
}

// Validate checks the configuration; errors name the key.
func (c *Config) Validate() error {
	if len(c.Addrs) == 0 {
		return fmt.Errorf("addrs: at least one clamd address is required")
	}
	seen := map[string]bool{}
	for _, a := range c.Addrs {
		if _, _, err := splitAddr(a); err != nil {
			return fmt.Errorf("addrs: %v", err)
		}
		if seen[a] {
			return fmt.Errorf("addrs: %q is listed twice", a)
		}
		seen[a] = true
	}
	if c.ConnectTimeout <= 0 {
		return fmt.Errorf("connect_timeout: must be > 0")
	}
	if c.ScanTimeout <= 0 {
		return fmt.Errorf("scan_timeout: must be > 0")
	}
	if c.StreamMaxLength < 1024 {
		return fmt.Errorf("stream_max_length: must be >= 1024 bytes")
	}
	if c.StreamMaxLength > 4<<30-1 {
		return fmt.Errorf("stream_max_length: must be < 4G (clamd's maximum)")
	}
	if c.HealthInterval < 100*time.Millisecond {
		return fmt.Errorf("health_interval: must be >= 100ms")
	}
	if c.MaxIdleConns < 0 {
		return fmt.Errorf("max_idle_conns: must be >= 0")
	}
	if c.MaxIdleConns > 0 && c.IdleTimeout <= 0 {
		return fmt.Errorf("idle_timeout: must be > 0 when max_idle_conns > 0")
	}
	return nil
}

// splitAddr turns "unix:/p" or "tcp:h:p" into a network and an address.
func splitAddr(a string) (network, address string, err error) {
	network, address, ok := strings.Cut(a, ":")
	if !ok || address == "" {
		return "", "", fmt.Errorf("%q: want unix:/path or tcp:host:port", a)
	}
	switch network {
	case "unix":
		if !strings.HasPrefix(address, "/") && !strings.HasPrefix(address, "@") {
			return "", "", fmt.Errorf("%q: unix socket path must be absolute", a)
		}
	case "tcp", "tcp4", "tcp6":
		if !strings.Contains(address, ":") {
			return "", "", fmt.Errorf("%q: want tcp:host:port", a)
		}
	default:
		return "", "", fmt.Errorf("%q: unknown network %q (want unix or tcp)", a, network)
	}
	return network, address, nil
}
