// Package rdns is layer 1: the client must have a reverse DNS name (PTR)
// that forward-confirms (FCrDNS: one of its PTR names resolves back to the
// client address). The lookup runs as the connection's "rdns" future, so
// the botnet and HELO checks read the same answer, and a confirmed name is
// recorded on the connection (pipeline.Conn.ClientName) for the Received
// field and XCLIENT NAME.
package rdns

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/verdict"
)

// Symbols emitted by this check.
const (
	SymNone        = "RDNS_NONE"       // no PTR record
	SymNotFCrDNS   = "RDNS_NOT_FCRDNS" // PTR exists but no name resolves back to the client
	FutureName     = "rdns"            // name of the Conn future holding an Info
	maxPTRNames    = 5                 // PTR names checked for forward confirmation
	defaultTimeout = 10 * time.Second  // bound of the background lookup
)

// Config is the rdns section.
type Config struct {
	// NoneWeight is the score of RDNS_NONE.
	NoneWeight float64 `yaml:"none_weight"`
	// NotFCrDNSWeight is the score of RDNS_NOT_FCRDNS.
	NotFCrDNSWeight float64 `yaml:"not_fcrdns_weight"`
	// RejectNone makes a missing PTR a hard 550 5.7.25 (Postfix
	// reject_unknown_reverse_client_hostname). The layer's policy mode
	// still applies (flag turns it into a score).
	RejectNone bool `yaml:"reject_none"`
	// Timeout bounds the background PTR + forward lookups.
	Timeout time.Duration `yaml:"timeout"`
}

// DefaultConfig: RDNS_NONE scores 3, RDNS_NOT_FCRDNS 1.5, no hard reject.
func DefaultConfig() Config {
	return Config{NoneWeight: 3, NotFCrDNSWeight: 1.5, Timeout: defaultTimeout}
}

// Validate checks the settings.
func (c *Config) Validate() error {
	if c.Timeout <= 0 {
		return fmt.Errorf("timeout: must be > 0, have %v", c.Timeout)
	}
	return nil
}

// Deps are the check's collaborators.
type Deps struct {
	Resolver dnsx.Resolver
}

// Check is the rdns check.
type Check struct {
	cfg Config
	r   dnsx.Resolver
}

var _ pipeline.ConnChecker = (*Check)(nil)

// New builds the check.
func New(cfg Config, deps Deps) (*Check, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Resolver == nil {
		return nil, errors.New("rdns: Deps.Resolver is required")
	}
	return &Check{cfg: cfg, r: deps.Resolver}, nil
}

// Name returns the layer name.
func (*Check) Name() string { return "rdns" }

// Info is the value of the rdns future.
type Info struct {
	Names     []string // PTR names, lower-case, no trailing dot; empty when none
	Name      string   // the confirmed name, else the first PTR name, else ""
	Confirmed bool     // Name resolves back to the client address
}

// Start starts (or returns the already started) rdns future of c. The
// session may call it at accept time so the lookup overlaps the greeting.
func Start(c *pipeline.Conn, r dnsx.Resolver) *pipeline.Future {
	return startWithTimeout(c, r, defaultTimeout)
}

func startWithTimeout(c *pipeline.Conn, r dnsx.Resolver, d time.Duration) *pipeline.Future {
	return c.Future(FutureName, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		return lookup(ctx, r, c)
	})
}

func lookup(ctx context.Context, r dnsx.Resolver, c *pipeline.Conn) (Info, error) {
	if r == nil {
		return Info{}, errors.New("rdns: no resolver")
	}
	names, err := r.LookupPTR(ctx, c.IP)
	if dnsx.IsNotFound(err) {
		return Info{}, nil
	}
	if err != nil {
		return Info{}, err
	}
	info := Info{Names: names}
	if len(names) > 0 {
		info.Name = names[0]
	}
	var ferr error
	for i, n := range names {
		if i == maxPTRNames {
			break
		}
		ips, err := r.LookupIP(ctx, n)
		if err != nil {
			if !dnsx.IsNotFound(err) {
				ferr = err
			}
			continue
		}
		for _, ip := range ips {
			if ip.Unmap() == c.IP.Unmap() {
				info.Name, info.Confirmed = n, true
				if hostnameSyntax(n) {
					c.SetClientName(n)
				}
				return info, nil
			}
		}
	}
	if ferr != nil {
		// Could not confirm and could not rule it out.
		return info, ferr
	}
	return info, nil
}

// Name returns the client's reverse name and whether it is forward
// confirmed, sharing the connection's rdns future (started here if
// needed). name is "" when the client has no PTR. err is a lookup
// failure (never "no PTR").
func Name(ctx context.Context, c *pipeline.Conn, r dnsx.Resolver) (name string, confirmed bool, err error) {
	info, err := Get(ctx, c, r)
	return info.Name, info.Confirmed, err
}

// Get returns the full Info of the rdns future.
func Get(ctx context.Context, c *pipeline.Conn, r dnsx.Resolver) (Info, error) {
	v, err := Start(c, r).Get(ctx)
	info, _ := v.(Info)
	return info, err
}

// CheckConn scores a missing or unconfirmed PTR.
func (k *Check) CheckConn(ctx context.Context, c *pipeline.Conn) verdict.Result {
	v, err := startWithTimeout(c, k.r, k.cfg.Timeout).Get(ctx)
	info, _ := v.(Info)
	// Authentication-Results iprev (RFC 8601 2.7.3): pass only when the
	// PTR name resolves back to the client.
	iprev := func(result string) []string {
		ip := c.IP.String()
		if strings.Contains(ip, ":") {
			ip = `"` + ip + `"` // a colon is not a token character (RFC 8601 2.2)
		}
		s := "iprev=" + result + " policy.iprev=" + ip
		if result == "pass" && hostnameSyntax(info.Name) {
			s += " (" + info.Name + ")"
		}
		return []string{s}
	}
	if err != nil {
		return verdict.Result{Err: fmt.Errorf("rdns lookup for %s: %w", c.IP, err), Auth: iprev("temperror")}
	}
	res := verdict.Result{Auth: iprev("pass")}
	if !info.Confirmed {
		res.Auth = iprev("fail")
	}
	switch {
	case len(info.Names) == 0:
		res.Symbols = []verdict.Symbol{{Name: SymNone, Score: k.cfg.NoneWeight, Detail: "no PTR for " + c.IP.String()}}
		if k.cfg.RejectNone {
			res.Hard = &verdict.Verdict{Action: verdict.Reject,
				Reply:  verdict.Reply{Code: 550, Enhanced: [3]int{5, 7, 25}, Text: fmt.Sprintf("Client host rejected: cannot find your reverse hostname, [%s]", c.IP)},
				Reason: "no PTR"}
		}
	case !info.Confirmed:
		res.Symbols = []verdict.Symbol{{Name: SymNotFCrDNS, Score: k.cfg.NotFCrDNSWeight, Detail: info.Name + " does not resolve to " + c.IP.String()}}
	}
	return res
}

// hostnameSyntax reports whether n is a plain host name (LDH labels, '_'
// tolerated) fit to appear in a Received field or XCLIENT NAME; a PTR
// record can hold any bytes.
func hostnameSyntax(n string) bool {
	if n == "" || len(n) > 253 {
		return false
	}
	label := 0
	for i := 0; i < len(n); i++ {
		switch c := n[i]; {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
			continue
		case c == '-' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		default:
			return false
		}
		label++
		if label > 63 {
			return false
		}
	}
	return label > 0
}
