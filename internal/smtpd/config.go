package smtpd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

// Config is the inbound SMTP listener's configuration.
type Config struct {
	// Listen is the list of addresses to accept SMTP on (host:port).
	// Production is ":25".
	Listen []string `yaml:"listen"`
	// Hostname is the name in the greeting and in Authentication-Results.
	// Default: os.Hostname().
	Hostname string `yaml:"hostname"`
	// MaxMessageSize is the largest message accepted, in octets, as
	// advertised with SIZE. Default 50 MiB.
	MaxMessageSize int64 `yaml:"max_message_size"`
	// MaxRecipients is the most recipients per transaction (RFC 5321
	// requires at least 100); more get "452 4.5.3". Default 100.
	MaxRecipients int `yaml:"max_recipients"`
	// MaxHops is the most Received fields a message may carry (RFC 5321
	// 6.3: a loop is detected by counting them). More: "554 5.4.6". It
	// stops a mail loop, e.g. a domain whose backend is Moat itself.
	// Default 50 (Postfix's hopcount_limit).
	MaxHops int `yaml:"max_hops"`
	// MaxLineLength is the longest text line accepted in DATA, in octets
	// including CRLF (RFC 5321 4.5.3.1.6: 1000). A message with a longer
	// line is refused with "554 5.6.0" after it was read. Default 1000.
	MaxLineLength int `yaml:"max_line_length"`
	// MaxCommandLineLength is the longest command line, in octets including
	// CRLF (RFC 5321 4.5.3.1.4: 512). Longer lines get "500 5.5.2 Line too
	// long" and count as an error. Default 512.
	MaxCommandLineLength int `yaml:"max_command_line_length"`
	// CommandTimeout is the deadline for one whole command line (a client
	// sending a byte now and then is cut when it expires). Default 5m.
	CommandTimeout time.Duration `yaml:"command_timeout"`
	// DataTimeout is the deadline for the whole DATA phase. Default 10m.
	DataTimeout time.Duration `yaml:"data_timeout"`
	// SessionTimeout caps the whole connection. Default 30m.
	SessionTimeout time.Duration `yaml:"session_timeout"`
	// MaxConnections is the most concurrent connections. Default 1000.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerIP is the most concurrent connections from one IPv4
	// address or one IPv6 /64. Default 20.
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
	// ConnRatePerIP is the most new connections per minute from one IPv4
	// address or IPv6 /64 (token bucket, burst of the same size); 0 turns
	// the limit off. Default 120.
	ConnRatePerIP int `yaml:"conn_rate_per_ip"`
	// MaxErrors is how many junk, unknown, out-of-sequence or refused
	// commands a client may send before "421 4.7.0 Too many errors" and a
	// disconnect. Default 10.
	MaxErrors int `yaml:"max_errors"`
	// MaxJunkCommands is how many commands that move no mail forward
	// (NOOP, RSET, VRFY, HELP, HELO/EHLO) a client may send since its last
	// accepted message before "421 4.7.0" and a disconnect (Postfix
	// smtpd_junk_command_limit). Default 100.
	MaxJunkCommands int `yaml:"max_junk_commands"`
	// TLSCert and TLSKey are PEM files for STARTTLS. When both are empty a
	// self-signed ECDSA certificate is generated on first start in TLSDir
	// and kept there.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// TLSDir is where the generated certificate is kept. When empty (and no
	// tls_cert/tls_key) the generated certificate lives in memory only and
	// changes on every start.
	TLSDir string `yaml:"tls_dir"`
	// DisableTLS turns STARTTLS off (not advertised, refused).
	DisableTLS bool `yaml:"disable_tls"`
	// GreetPause, when > 0, sends "220-" first and waits this long for the
	// client to talk out of turn (pregreet, a botnet sign recorded on
	// pipeline.Conn.Pregreet for the checks). Default 0 (off).
	GreetPause time.Duration `yaml:"greet_pause"`
	// SoftBounce turns every 5xx refusal Moat would give into the matching
	// 4xx (protocol syntax errors excepted), so nothing is lost while a
	// configuration is being tried out. Default false.
	SoftBounce bool `yaml:"soft_bounce"`
}

// DefaultConfig returns safe production defaults.
func DefaultConfig() Config {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return Config{
		Listen:               []string{"127.0.0.1:2525"},
		Hostname:             host,
		MaxMessageSize:       50 << 20,
		MaxRecipients:        100,
		MaxHops:              50,
		MaxLineLength:        1000,
		MaxCommandLineLength: 512,
		CommandTimeout:       5 * time.Minute,
		DataTimeout:          10 * time.Minute,
		SessionTimeout:       30 * time.Minute,
		MaxConnections:       1000,
		MaxConnectionsPerIP:  20,
		ConnRatePerIP:        120,
		MaxErrors:            10,
		MaxJunkCommands:      100,
	}
}

// Validate checks the configuration; errors name the key.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Listen) == 0 {
		errs = append(errs, errors.New("listen: at least one address is required"))
	}
	for _, a := range c.Listen {
		if _, p, err := net.SplitHostPort(a); err != nil || !validPort(p) {
			errs = append(errs, fmt.Errorf("listen: %q is not host:port (port 0-65535)", a))
		}
	}
	if c.Hostname == "" {
		errs = append(errs, errors.New("hostname: must not be empty"))
	}
	for _, r := range c.Hostname {
		if r <= ' ' || r == 0x7f {
			errs = append(errs, errors.New("hostname: must not contain spaces or control characters"))
			break
		}
	}
	if c.MaxMessageSize < 1024 {
		errs = append(errs, errors.New("max_message_size: must be >= 1024"))
	}
	if c.MaxMessageSize > 1<<32-1 {
		errs = append(errs, errors.New("max_message_size: must be < 4 GiB"))
	}
	if c.MaxRecipients < 100 {
		errs = append(errs, errors.New("max_recipients: must be >= 100 (RFC 5321 4.5.3.1.8)"))
	}
	if c.MaxHops < 10 || c.MaxHops > 1000 {
		errs = append(errs, errors.New("max_hops: must be between 10 and 1000"))
	}
	if c.MaxLineLength < 1000 {
		errs = append(errs, errors.New("max_line_length: must be >= 1000 (RFC 5321 4.5.3.1.6)"))
	}
	if c.MaxCommandLineLength < 512 || c.MaxCommandLineLength > 8192 {
		errs = append(errs, errors.New("max_command_line_length: must be between 512 and 8192"))
	}
	if c.CommandTimeout < time.Second {
		errs = append(errs, errors.New("command_timeout: must be >= 1s"))
	}
	if c.DataTimeout < time.Second {
		errs = append(errs, errors.New("data_timeout: must be >= 1s"))
	}
	if c.SessionTimeout < c.CommandTimeout {
		errs = append(errs, errors.New("session_timeout: must be >= command_timeout"))
	}
	if c.MaxConnections < 1 {
		errs = append(errs, errors.New("max_connections: must be >= 1"))
	}
	if c.MaxConnectionsPerIP < 1 {
		errs = append(errs, errors.New("max_connections_per_ip: must be >= 1"))
	}
	if c.ConnRatePerIP < 0 {
		errs = append(errs, errors.New("conn_rate_per_ip: must be >= 0"))
	}
	if c.MaxErrors < 1 {
		errs = append(errs, errors.New("max_errors: must be >= 1"))
	}
	if c.MaxJunkCommands < 10 {
		errs = append(errs, errors.New("max_junk_commands: must be >= 10"))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("tls_cert: tls_cert and tls_key must be set together"))
	}
	if c.GreetPause < 0 || c.GreetPause > time.Minute {
		errs = append(errs, errors.New("greet_pause: must be between 0s and 1m"))
	}
	return errors.Join(errs...)
}

// validPort reports whether p is a port number (0-65535).
func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 0 && n <= 65535
}
