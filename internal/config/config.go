// Package config reads Moat's one configuration file (YAML). Decoding is
// strict: an unknown key is an error naming its line. Every setting has a
// safe default, so a minimal file only lists the customer domains.
// examples/moat.yaml documents every key with its default.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/store"
)

// Config is the whole configuration file.
type Config struct {
	// Hostname is Moat's name in greetings, Received fields and DSNs.
	// Default: the system host name.
	Hostname string `yaml:"hostname"`
	// DataDir holds the spool, the embedded database, keys and the
	// quarantine. Default ./data. Relative paths in the file are resolved
	// against the working directory.
	DataDir string `yaml:"data_dir"`
	// Log sets the log level (debug, info, warn, error) and format (text, json).
	Log LogConfig `yaml:"log"`
	// HTTP is the listener for /metrics, the health check, the admin API and
	// the quarantine web UI.
	HTTP HTTPConfig `yaml:"http"`
	// Store selects the database: embedded SQLite (default) or PostgreSQL.
	Store StoreConfig `yaml:"store"`
	// Pass configures the signed pass mark put on every relayed message.
	Pass PassConfig `yaml:"pass"`
	// Gateway lists Moat's own public names and addresses (for the leakage
	// audit and the generated lockdown rules).
	Gateway GatewayConfig `yaml:"gateway"`
	// Policy is the site policy; domains may override it.
	Policy policy.Policy `yaml:"policy"`
	// Domains are the customer domains, seeded into the store at start.
	Domains []DomainConfig `yaml:"domains"`

	Sections `yaml:",inline"`

	path string
}

// LogConfig is the log section.
type LogConfig struct {
	Level  string `yaml:"level"`  // default info
	Format string `yaml:"format"` // text (default) or json
}

// HTTPConfig is the HTTP listener.
type HTTPConfig struct {
	// Listen address; "" disables it. Default 127.0.0.1:8025.
	Listen string `yaml:"listen"`
	// Pprof serves Go's profiler at /debug/pprof/ (for benchmarking; keep
	// the listener on loopback). Default false.
	Pprof bool `yaml:"pprof"`
}

// StoreConfig selects the database.
type StoreConfig struct {
	Driver string `yaml:"driver"` // sqlite (default) or postgres
	// DSN is the SQLite file (default DATA_DIR/moat.db) or a PostgreSQL URL.
	DSN string `yaml:"dsn"`
}

// PassConfig is the pass-mark section.
type PassConfig struct {
	// SecretFile holds the site master key (32 random bytes, created on
	// first start if missing). Default DATA_DIR/pass.key. Each domain's
	// backend gets its own derived secret: `moat pass-secret DOMAIN`.
	SecretFile string `yaml:"secret_file"`
}

// GatewayConfig lists Moat's own hosts.
type GatewayConfig struct {
	Hostnames []string `yaml:"hostnames"`
	Addresses []string `yaml:"addresses"`
}

// DomainConfig is one customer domain in the file.
type DomainConfig struct {
	Name    string `yaml:"name"`
	Partner string `yaml:"partner"`
	// Backends are the customer's own servers, "host:port", in order of
	// preference (failover to the next).
	Backends []string `yaml:"backends"`
	// TLS to the backend: opportunistic (default), required, none.
	TLS      string `yaml:"tls"`
	MaxConns int    `yaml:"max_conns"` // per backend; default 10
	// Recipients: how RCPT is verified.
	Recipients RecipientsConfig `yaml:"recipients"`
	// Policy overrides parts of the site policy for this domain; keys not
	// given are inherited from the site policy.
	Policy yaml.Node `yaml:"policy"`

	effective *policy.Policy // site policy with the overrides applied
}

// RecipientsConfig is a domain's recipient verification.
type RecipientsConfig struct {
	// Mode: table (only listed addresses), callout (ask the backend,
	// cached), any (accept all; the backend may bounce: avoid). Default:
	// table if a list is given, else callout.
	Mode     string   `yaml:"mode"`
	CatchAll bool     `yaml:"catch_all"`
	List     []string `yaml:"list"` // local parts; "sales=alice" makes an alias
}

// Default returns the configuration with every default applied.
func Default() *Config {
	host, _ := os.Hostname()
	c := &Config{
		Hostname: host,
		DataDir:  "./data",
		Log:      LogConfig{Level: "info", Format: "text"},
		HTTP:     HTTPConfig{Listen: "127.0.0.1:8025"},
		Store:    StoreConfig{Driver: "sqlite"},
		Policy:   *policy.Default(),
		Sections: defaultSections(),
	}
	return c
}

// Parse decodes a configuration from data; name is used in messages.
func Parse(name string, data []byte) (*Config, error) {
	c := Default()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, errorsEOF) {
		paths := linePaths(data)
		var te *yaml.TypeError
		if errors.As(err, &te) {
			msgs := make([]string, 0, len(te.Errors))
			for _, e := range te.Errors {
				msgs = append(msgs, explain(e, paths))
			}
			return nil, fmt.Errorf("%s: %s", name, strings.Join(msgs, "; "))
		}
		return nil, fmt.Errorf("%s: %s", name, explainValue(err.Error(), data, paths))
	}
	// One document: a second one ("---" then more keys) would be ignored
	// silently, with whatever it was meant to set.
	for {
		var more yaml.Node
		err := dec.Decode(&more)
		if errors.Is(err, errorsEOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %v", name, err)
		}
		if len(more.Content) > 0 && !(more.Content[0].Kind == yaml.ScalarNode && more.Content[0].Tag == "!!null") {
			return nil, fmt.Errorf("%s: line %d: a second YAML document (after ---): put every key in one document", name, more.Content[0].Line)
		}
	}
	c.path = name
	c.fill()
	if err := c.domainPolicies(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return c, nil
}

var errorsEOF = ioEOF()

// Load reads and validates the file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data)
}

// fill derives defaults that depend on other settings.
func (c *Config) fill() {
	if c.Hostname == "" {
		c.Hostname, _ = os.Hostname()
	}
	if c.Store.Driver == "" {
		c.Store.Driver = "sqlite"
	}
	if c.Store.Driver == "sqlite" && c.Store.DSN == "" {
		c.Store.DSN = filepath.Join(c.DataDir, "moat.db")
	}
	if c.Pass.SecretFile == "" {
		c.Pass.SecretFile = filepath.Join(c.DataDir, "pass.key")
	}
	c.Sections.fill(c)
}

// domainPolicies applies each domain's policy overrides to a copy of the
// site policy, decoding strictly so that unknown keys are reported.
func (c *Config) domainPolicies() error {
	for i := range c.Domains {
		d := &c.Domains[i]
		if d.Policy.Kind == 0 {
			continue
		}
		p := c.Policy
		p.Layers = map[string]policy.Layer{}
		for k, v := range c.Policy.Layers {
			p.Layers[k] = v
		}
		raw, err := yaml.Marshal(&d.Policy)
		if err != nil {
			return err
		}
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		dec.KnownFields(true)
		if err := dec.Decode(&p); err != nil {
			return fmt.Errorf("domains[%d].policy (line %d): %v", i, d.Policy.Line, err)
		}
		d.effective = &p
	}
	return nil
}

// Validate checks every setting; errors name the key.
func (c *Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("data_dir: must not be empty")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log.level: %q is not one of debug, info, warn, error", c.Log.Level)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		return fmt.Errorf("log.format: %q is not one of text, json", c.Log.Format)
	}
	if c.HTTP.Listen != "" {
		if _, p, err := net.SplitHostPort(c.HTTP.Listen); err != nil {
			return fmt.Errorf("http.listen: %v", err)
		} else if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 65535 {
			return fmt.Errorf("http.listen: %q: the port must be 0-65535", c.HTTP.Listen)
		}
	}
	switch c.Store.Driver {
	case "sqlite", "postgres":
	default:
		return fmt.Errorf("store.driver: %q is not one of sqlite, postgres", c.Store.Driver)
	}
	if c.Store.Driver == "postgres" && c.Store.DSN == "" {
		return errors.New("store.dsn: required for the postgres driver")
	}
	for i, a := range c.Gateway.Addresses {
		if net.ParseIP(a) == nil {
			if _, _, err := net.ParseCIDR(a); err != nil {
				return fmt.Errorf("gateway.addresses[%d]: %q is not an IP address or CIDR", i, a)
			}
		}
	}
	if err := c.Policy.Validate(); err != nil {
		return fmt.Errorf("policy.%w", err)
	}
	seen := map[string]bool{}
	for i, d := range c.Domains {
		key := fmt.Sprintf("domains[%d]", i)
		if _, err := d.Domain(); err != nil {
			return fmt.Errorf("%s.%w", key, err)
		}
		if _, err := d.RecipientList(); err != nil { // what moat serve seeds
			return fmt.Errorf("%s.%w", key, err)
		}
		n := strings.ToLower(strings.TrimSuffix(d.Name, "."))
		if seen[n] {
			return fmt.Errorf("%s.name: %q is listed twice", key, d.Name)
		}
		seen[n] = true
		if d.effective != nil {
			if err := d.effective.Validate(); err != nil {
				return fmt.Errorf("%s.policy.%w", key, err)
			}
		}
	}
	return c.Sections.validate()
}

var domainRE = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Domain converts the file form into the store form.
func (d DomainConfig) Domain() (*store.Domain, error) {
	name := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d.Name), "."))
	if !domainRE.MatchString(name) {
		return nil, fmt.Errorf("name: %q is not a valid domain name", d.Name)
	}
	out := &store.Domain{Name: name, Partner: d.Partner, TLS: d.TLS, MaxConns: d.MaxConns, CatchAll: d.Recipients.CatchAll}
	if len(d.Backends) == 0 {
		return nil, errors.New("backends: at least one backend host:port is required")
	}
	for j, b := range d.Backends {
		be, err := store.ParseBackend(b)
		if err != nil {
			return nil, fmt.Errorf("backends[%d]: %v", j, err)
		}
		out.Backends = append(out.Backends, be)
	}
	switch d.TLS {
	case "":
		out.TLS = "opportunistic"
	case "opportunistic", "required", "none":
	default:
		return nil, fmt.Errorf("tls: %q is not one of opportunistic, required, none", d.TLS)
	}
	if d.MaxConns < 0 {
		return nil, errors.New("max_conns: must not be negative")
	}
	switch d.Recipients.Mode {
	case "":
		if len(d.Recipients.List) > 0 {
			out.RecipientMode = store.RecipientsTable
		} else {
			out.RecipientMode = store.RecipientsCallout
		}
	case store.RecipientsTable, store.RecipientsCallout, store.RecipientsAny:
		out.RecipientMode = d.Recipients.Mode
	default:
		return nil, fmt.Errorf("recipients.mode: %q is not one of table, callout, any", d.Recipients.Mode)
	}
	if out.RecipientMode == store.RecipientsTable && len(d.Recipients.List) == 0 && !d.Recipients.CatchAll {
		return nil, errors.New("recipients.list: mode table needs a list (or catch_all: true)")
	}
	if d.effective != nil {
		b, err := jsonPolicy(d.effective)
		if err != nil {
			return nil, err
		}
		out.Policy = b
	}
	return out, nil
}

// RecipientList converts the list entries into store recipients.
func (d DomainConfig) RecipientList() ([]store.Recipient, error) {
	dom, err := d.Domain()
	if err != nil {
		return nil, err
	}
	var out []store.Recipient
	for i, e := range d.Recipients.List {
		local, target, alias := strings.Cut(e, "=")
		local = strings.ToLower(strings.TrimSpace(local))
		if local == "" || strings.ContainsAny(local, "@ \t") {
			return nil, fmt.Errorf("recipients.list[%d]: %q is not a local part (write alice, not alice@%s)", i, e, dom.Name)
		}
		r := store.Recipient{Domain: dom.Name, Local: local, Kind: "account"}
		if alias {
			r.Kind, r.Target = "alias", strings.TrimSpace(target)
		}
		out = append(out, r)
	}
	return out, nil
}

// Path is the file the configuration came from.
func (c *Config) Path() string { return c.path }
