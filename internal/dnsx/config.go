package dnsx

import (
	"fmt"
	"net"
	"time"
)

// Config is the resolver section of the configuration.
type Config struct {
	// Resolvers are the upstream recursive DNS servers, host:port (port 53
	// assumed when missing). They are tried in order, one per attempt.
	Resolvers []string `yaml:"resolvers"`
	// Timeout bounds one attempt (one UDP query, plus its TCP retry when
	// the answer was truncated).
	Timeout time.Duration `yaml:"timeout"`
	// Attempts is how many queries are sent before giving up (over all
	// resolvers, round-robin).
	Attempts int `yaml:"attempts"`
	// CacheSize is the maximum number of cached answers (positive and
	// negative); 0 disables the cache.
	CacheSize int `yaml:"cache_size"`
	// MinTTL and MaxTTL clamp the TTL of cached answers.
	MinTTL time.Duration `yaml:"min_ttl"`
	MaxTTL time.Duration `yaml:"max_ttl"`
	// NegativeTTL is the TTL of a cached NXDOMAIN or NODATA answer when the
	// server sent no SOA; it also caps the SOA-derived negative TTL.
	NegativeTTL time.Duration `yaml:"negative_ttl"`
	// LocalZones answers the special-use names locally, as RFC 6761 6.3
	// and RFC 6303 ask of resolvers: "localhost" and names under it are
	// 127.0.0.1 / ::1, and loopback addresses have the PTR "localhost".
	// Loopback clients gain no trust from this; they merely resolve.
	LocalZones bool `yaml:"local_zones"`
}

// DefaultConfig returns production defaults: a local resolver on
// 127.0.0.1:53, 2s per attempt, 3 attempts, 50000 cached answers, TTLs
// clamped to [10s, 1d], negative answers cached up to 5 minutes.
func DefaultConfig() Config {
	return Config{
		Resolvers:   []string{"127.0.0.1:53"},
		Timeout:     2 * time.Second,
		Attempts:    3,
		CacheSize:   50000,
		MinTTL:      10 * time.Second,
		MaxTTL:      24 * time.Hour,
		NegativeTTL: 5 * time.Minute,
	}
}

// Validate checks the settings; errors name the key.
func (c *Config) Validate() error {
	if len(c.Resolvers) == 0 {
		return fmt.Errorf("resolvers: at least one resolver is required")
	}
	for _, r := range c.Resolvers {
		if _, err := normalizeServer(r); err != nil {
			return fmt.Errorf("resolvers: %q: %v", r, err)
		}
	}
	if c.Timeout <= 0 || c.Timeout > time.Minute {
		return fmt.Errorf("timeout: must be > 0 and <= 1m, have %v", c.Timeout)
	}
	if c.Attempts < 1 || c.Attempts > 10 {
		return fmt.Errorf("attempts: must be between 1 and 10, have %d", c.Attempts)
	}
	if c.CacheSize < 0 {
		return fmt.Errorf("cache_size: must be >= 0, have %d", c.CacheSize)
	}
	if c.MinTTL < 0 {
		return fmt.Errorf("min_ttl: must be >= 0, have %v", c.MinTTL)
	}
	if c.MaxTTL < c.MinTTL {
		return fmt.Errorf("max_ttl: must be >= min_ttl, have %v < %v", c.MaxTTL, c.MinTTL)
	}
	if c.NegativeTTL < 0 {
		return fmt.Errorf("negative_ttl: must be >= 0, have %v", c.NegativeTTL)
	}
	return nil
}

func normalizeServer(s string) (string, error) {
	if _, _, err := net.SplitHostPort(s); err == nil {
		return s, nil
	}
	if ip := net.ParseIP(s); ip != nil {
		return net.JoinHostPort(s, "53"), nil
	}
	return "", fmt.Errorf("not an address or address:port")
}
