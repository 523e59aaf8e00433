// Package helo checks the HELO/EHLO argument: a valid host name or
// address literal, fully qualified, not a bare IP, an address literal that
// matches the client, and not a claim to be Moat itself or one of the
// customer domains.
package helo

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"moat.dev/moat/internal/check/rdns"
	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/verdict"
)

// Symbols emitted by this check.
const (
	SymInvalid    = "HELO_INVALID"
	SymBareIP     = "HELO_BARE_IP"
	SymNotFQDN    = "HELO_NOT_FQDN"
	SymIPMismatch = "HELO_IP_MISMATCH"
	SymForgedOurs = "HELO_FORGED_OURS"
)

// Config is the helo section.
type Config struct {
	// Hostnames are Moat's own names (its banner hostname, MX names); a
	// client claiming one is forging.
	Hostnames []string `yaml:"hostnames"`
	// ListenAddrs are Moat's own addresses; an address literal naming one
	// (or a bare IP equal to one) is forging.
	ListenAddrs []string `yaml:"listen_addrs"`
	// RejectForged gives HELO_FORGED_OURS a hard 550 5.7.1.
	RejectForged bool `yaml:"reject_forged"`
	// CustomerDomains also counts a HELO equal to a customer domain as
	// forged, unless the client's forward-confirmed PTR is inside that
	// domain (the customer's own outbound server sending to another
	// customer).
	CustomerDomains bool `yaml:"customer_domains"`
	// Weights of the symbols.
	InvalidWeight    float64 `yaml:"invalid_weight"`
	BareIPWeight     float64 `yaml:"bare_ip_weight"`
	NotFQDNWeight    float64 `yaml:"not_fqdn_weight"`
	IPMismatchWeight float64 `yaml:"ip_mismatch_weight"`
	ForgedWeight     float64 `yaml:"forged_weight"`
}

// DefaultConfig: forged HELO is rejected; INVALID 2, BARE_IP 2,
// NOT_FQDN 1.5, IP_MISMATCH 1, FORGED_OURS 5.
func DefaultConfig() Config {
	return Config{RejectForged: true, CustomerDomains: true, InvalidWeight: 2, BareIPWeight: 2,
		NotFQDNWeight: 1.5, IPMismatchWeight: 1, ForgedWeight: 5}
}

// Validate checks the settings.
func (c *Config) Validate() error {
	for _, h := range c.Hostnames {
		if !validHostname(normName(h)) {
			return fmt.Errorf("hostnames: %q is not a host name", h)
		}
	}
	for _, a := range c.ListenAddrs {
		if _, err := netip.ParseAddr(a); err != nil {
			return fmt.Errorf("listen_addrs: %q is not an IP address", a)
		}
	}
	return nil
}

// Deps are the check's collaborators.
type Deps struct {
	// IsCustomerDomain reports whether name is a configured customer
	// domain (the store). Nil: customer domains are not checked.
	IsCustomerDomain func(ctx context.Context, name string) (bool, error)
	// Resolver is used for the shared rdns future (nil: a HELO equal to a
	// customer domain is never excused by the client's PTR).
	Resolver dnsx.Resolver
}

// Check is the helo check.
type Check struct {
	cfg   Config
	deps  Deps
	names map[string]bool
	addrs map[netip.Addr]bool
}

var _ pipeline.HeloChecker = (*Check)(nil)

// New builds the check.
func New(cfg Config, deps Deps) (*Check, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	k := &Check{cfg: cfg, deps: deps, names: map[string]bool{}, addrs: map[netip.Addr]bool{}}
	for _, h := range cfg.Hostnames {
		k.names[normName(h)] = true
	}
	for _, a := range cfg.ListenAddrs {
		k.addrs[netip.MustParseAddr(a).Unmap()] = true
	}
	return k, nil
}

// Name returns the layer name.
func (*Check) Name() string { return "helo" }

func normName(s string) string { return strings.ToLower(strings.TrimSuffix(s, ".")) }

// validHostname is RFC 1123 host name syntax (underscores tolerated, as
// real MTAs send them).
func validHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// ParseLiteral parses an RFC 5321 address literal "[1.2.3.4]" or
// "[IPv6:...]".
func ParseLiteral(s string) (netip.Addr, bool) {
	if len(s) < 3 || s[0] != '[' || s[len(s)-1] != ']' {
		return netip.Addr{}, false
	}
	in := s[1 : len(s)-1]
	v6 := false
	if len(in) > 5 && strings.EqualFold(in[:5], "ipv6:") {
		in, v6 = in[5:], true
	}
	a, err := netip.ParseAddr(in)
	if err != nil || a.Zone() != "" || (v6 && !a.Is6()) || (!v6 && !a.Is4()) {
		return netip.Addr{}, false
	}
	return a, true
}

var replyForged = verdict.Reply{Code: 550, Enhanced: [3]int{5, 7, 1}, Text: "Helo command rejected: you are not us"}

// CheckHelo checks c.Helo.
func (k *Check) CheckHelo(ctx context.Context, c *pipeline.Conn) verdict.Result {
	h := strings.TrimSpace(c.Helo)
	sym := func(name string, w float64, detail string) verdict.Result {
		return verdict.Result{Symbols: []verdict.Symbol{{Name: name, Score: w, Detail: detail}}}
	}
	forged := func(detail string) verdict.Result {
		r := sym(SymForgedOurs, k.cfg.ForgedWeight, detail)
		if k.cfg.RejectForged {
			r.Hard = &verdict.Verdict{Action: verdict.Reject, Reply: replyForged, Reason: detail}
		}
		return r
	}
	if a, ok := ParseLiteral(h); ok {
		a = a.Unmap()
		if k.addrs[a] && a != c.IP.Unmap() {
			return forged("address literal " + h + " is ours")
		}
		if a != c.IP.Unmap() {
			return sym(SymIPMismatch, k.cfg.IPMismatchWeight, fmt.Sprintf("literal %s, client %s", h, c.IP))
		}
		return verdict.Result{}
	}
	if a, err := netip.ParseAddr(h); err == nil {
		if k.addrs[a.Unmap()] && a.Unmap() != c.IP.Unmap() {
			return forged("bare address " + h + " is ours")
		}
		return sym(SymBareIP, k.cfg.BareIPWeight, "bare IP "+h)
	}
	n := normName(h)
	if !validHostname(n) {
		return sym(SymInvalid, k.cfg.InvalidWeight, fmt.Sprintf("invalid HELO %.64q", h))
	}
	if k.names[n] {
		return forged("HELO " + n + " is our hostname")
	}
	if !strings.Contains(n, ".") {
		return sym(SymNotFQDN, k.cfg.NotFQDNWeight, "HELO "+n+" is not fully qualified")
	}
	if k.cfg.CustomerDomains && k.deps.IsCustomerDomain != nil {
		ours, err := k.deps.IsCustomerDomain(ctx, n)
		if err != nil {
			return verdict.Result{Err: fmt.Errorf("helo: customer domain lookup: %w", err)}
		}
		if ours {
			if k.deps.Resolver != nil {
				name, confirmed, err := rdns.Name(ctx, c, k.deps.Resolver)
				if err != nil && !errors.Is(err, context.Canceled) {
					return verdict.Result{Err: fmt.Errorf("helo: rdns: %w", err)}
				}
				if confirmed && (name == n || strings.HasSuffix(name, "."+n)) {
					return verdict.Result{}
				}
			}
			return forged("HELO " + n + " is a customer domain")
		}
	}
	return verdict.Result{}
}
