package relay

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// Config is the relay's section of the server configuration.
type Config struct {
	// Hostname is the name Moat gives in EHLO and in the "by" part of the
	// Received field it prepends. Default: the system host name.
	Hostname string `yaml:"hostname"`
	// ConnectTimeout bounds the TCP connect to a backend (RFC 5321 has
	// none; default 30s).
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// GreetingTimeout bounds the wait for the backend's 220 greeting
	// (RFC 5321 4.5.3.2.1: 5m).
	GreetingTimeout time.Duration `yaml:"greeting_timeout"`
	// CommandTimeout bounds each command's reply: EHLO, STARTTLS, MAIL,
	// RCPT, DATA's 354, RSET (RFC 5321: 5m).
	CommandTimeout time.Duration `yaml:"command_timeout"`
	// DataTimeout bounds sending the message and waiting for the reply to
	// the final dot (RFC 5321: 10m).
	DataTimeout time.Duration `yaml:"data_timeout"`
	// IdleTimeout is how long an idle connection to a backend is kept for
	// reuse (default 30s).
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxMessagesPerConn closes a connection after this many transactions
	// (default 100).
	MaxMessagesPerConn int `yaml:"max_messages_per_conn"`
	// TLSVerify makes routes with tls: required verify the backend's
	// certificate (chain and name). Default true. Opportunistic TLS never
	// verifies.
	TLSVerify bool `yaml:"tls_verify"`
	// TLSCAFile is a PEM bundle of CAs trusted for backends instead of the
	// system roots (backends often have a private CA or self-signed cert).
	TLSCAFile string `yaml:"tls_ca_file"`
	// ForwardClient passes the original client's address, name and HELO to
	// backends that offer XCLIENT (preferred) or XFORWARD. Default true.
	ForwardClient bool `yaml:"forward_client"`
}

// DefaultConfig returns the production defaults (RFC 5321 timeouts).
func DefaultConfig() Config {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return Config{
		Hostname:           host,
		ConnectTimeout:     30 * time.Second,
		GreetingTimeout:    5 * time.Minute,
		CommandTimeout:     5 * time.Minute,
		DataTimeout:        10 * time.Minute,
		IdleTimeout:        30 * time.Second,
		MaxMessagesPerConn: 100,
		TLSVerify:          true,
		ForwardClient:      true,
	}
}

// Validate checks the configuration; errors name the key.
func (c *Config) Validate() error {
	var errs []error
	if c.Hostname == "" || strings.ContainsAny(c.Hostname, " \t\r\n") || len(c.Hostname) > 255 {
		errs = append(errs, fmt.Errorf("hostname: must be a host name without spaces (got %q)", c.Hostname))
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"connect_timeout", c.ConnectTimeout}, {"greeting_timeout", c.GreetingTimeout},
		{"command_timeout", c.CommandTimeout}, {"data_timeout", c.DataTimeout}, {"idle_timeout", c.IdleTimeout},
	} {
		if d.v < time.Second {
			errs = append(errs, fmt.Errorf("%s: must be >= 1s (got %v)", d.key, d.v))
		}
	}
	if c.MaxMessagesPerConn < 1 {
		errs = append(errs, fmt.Errorf("max_messages_per_conn: must be >= 1 (got %d)", c.MaxMessagesPerConn))
	}
	if c.TLSCAFile != "" {
		if _, err := loadCAs(c.TLSCAFile); err != nil {
			errs = append(errs, fmt.Errorf("tls_ca_file: %v", err))
		}
	}
	return errors.Join(errs...)
}

func loadCAs(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificates", path)
	}
	return pool, nil
}
