// Package greylist implements greylisting (off by default): a recipient
// of a suspicious client (score so far above a threshold) is tempfailed
// until the same triplet (client network /24 or /64, sender, recipient)
// retries after delay and within window. Passed triplets are remembered
// for known_good_ttl. Large providers, which retry from other addresses,
// are matched network-wide and can skip greylisting by PTR suffix or CIDR.
package greylist

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"moat.dev/moat/internal/check/rdns"
	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/verdict"
)

// Config is the greylist section.
type Config struct {
	// Enabled turns greylisting on (off by default).
	Enabled bool `yaml:"enabled"`
	// MinScore: only clients whose score so far (connection, HELO, MAIL)
	// is above it are greylisted.
	MinScore float64 `yaml:"min_score"`
	// Delay is how long a new triplet must wait before a retry is accepted.
	Delay time.Duration `yaml:"delay"`
	// Window is how long after the first attempt a retry is still accepted.
	Window time.Duration `yaml:"window"`
	// KnownGoodTTL is how long a passed triplet skips greylisting
	// (refreshed on every use).
	KnownGoodTTL time.Duration `yaml:"known_good_ttl"`
	// SkipPTRSuffixes: clients whose forward-confirmed PTR ends with one of
	// these are never greylisted (large providers).
	SkipPTRSuffixes []string `yaml:"skip_ptr_suffixes"`
	// SkipNetworks: clients in these CIDRs are never greylisted.
	SkipNetworks []string `yaml:"skip_networks"`
	// IPv4Prefix and IPv6Prefix are the network sizes of the triplet.
	IPv4Prefix int `yaml:"ipv4_prefix"`
	IPv6Prefix int `yaml:"ipv6_prefix"`
}

// DefaultConfig: disabled; when enabled, greylist clients above score 3,
// delay 5m, window 24h, known-good 35 days, /24 and /64, common large
// providers skipped.
func DefaultConfig() Config {
	return Config{MinScore: 3, Delay: 5 * time.Minute, Window: 24 * time.Hour, KnownGoodTTL: 35 * 24 * time.Hour,
		IPv4Prefix: 24, IPv6Prefix: 64,
		SkipPTRSuffixes: []string{"google.com", "outlook.com", "yahoo.com", "amazonses.com", "icloud.com",
			"mimecast.com", "pphosted.com", "messagelabs.com", "sendgrid.net", "mailgun.net", "zoho.com", "yandex.net"}}
}

// Validate checks the settings.
func (c *Config) Validate() error {
	if c.Delay < 0 || c.Window <= c.Delay {
		return fmt.Errorf("window: must be > delay (%v), have %v", c.Delay, c.Window)
	}
	if c.KnownGoodTTL <= 0 {
		return fmt.Errorf("known_good_ttl: must be > 0, have %v", c.KnownGoodTTL)
	}
	if c.IPv4Prefix < 8 || c.IPv4Prefix > 32 {
		return fmt.Errorf("ipv4_prefix: must be between 8 and 32, have %d", c.IPv4Prefix)
	}
	if c.IPv6Prefix < 16 || c.IPv6Prefix > 128 {
		return fmt.Errorf("ipv6_prefix: must be between 16 and 128, have %d", c.IPv6Prefix)
	}
	for _, n := range c.SkipNetworks {
		if _, err := netip.ParsePrefix(n); err != nil {
			return fmt.Errorf("skip_networks: %q is not a CIDR", n)
		}
	}
	return nil
}

// Entry is the state of one triplet.
type Entry struct {
	First   time.Time // first attempt
	Passed  bool      // a retry was accepted
	Expires time.Time // forget the entry after this
}

// Store keeps greylisting state. MemoryStore is in-process; SQLStore
// keeps it in the store's database (schema in Schema).
type Store interface {
	Get(ctx context.Context, key string) (Entry, bool, error)
	Put(ctx context.Context, key string, e Entry) error
}

// Deps are the check's collaborators.
type Deps struct {
	Store    Store         // nil: a MemoryStore
	Resolver dnsx.Resolver // for the PTR allowlist (shared rdns future); nil: no PTR allowlist
}

// Check is the greylist check.
type Check struct {
	cfg  Config
	deps Deps
	nets []netip.Prefix
	now  func() time.Time
}

var _ pipeline.RcptChecker = (*Check)(nil)

// New builds the check.
func New(cfg Config, deps Deps) (*Check, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Store == nil {
		deps.Store = NewMemoryStore(1_000_000)
	}
	k := &Check{cfg: cfg, deps: deps, now: time.Now}
	for _, n := range cfg.SkipNetworks {
		k.nets = append(k.nets, netip.MustParsePrefix(n).Masked())
	}
	return k, nil
}

// Name returns the layer name.
func (*Check) Name() string { return "greylist" }

var replyGrey = verdict.Reply{Code: 451, Enhanced: [3]int{4, 7, 1}, Text: "Greylisted, please try again later"}

// Key is the triplet key: client network, sender and recipient.
func (k *Check) Key(ip netip.Addr, from, rcpt string) string {
	ip = ip.Unmap()
	bits := k.cfg.IPv4Prefix
	if ip.Is6() {
		bits = k.cfg.IPv6Prefix
	}
	p, _ := ip.Prefix(bits)
	return p.String() + " " + strings.ToLower(from) + " " + strings.ToLower(rcpt)
}

func (k *Check) skip(ctx context.Context, c *pipeline.Conn) bool {
	ip := c.IP.Unmap()
	for _, n := range k.nets {
		if n.Contains(ip) {
			return true
		}
	}
	if k.deps.Resolver != nil && len(k.cfg.SkipPTRSuffixes) > 0 {
		name, confirmed, err := rdns.Name(ctx, c, k.deps.Resolver)
		if err == nil && confirmed {
			for _, s := range k.cfg.SkipPTRSuffixes {
				s = strings.ToLower(strings.TrimPrefix(s, "."))
				if name == s || strings.HasSuffix(name, "."+s) {
					return true
				}
			}
		}
	}
	return false
}

// CheckRcpt greylists the triplet when the client looks suspicious.
func (k *Check) CheckRcpt(ctx context.Context, tx *pipeline.Txn, r *pipeline.Rcpt) verdict.Result {
	if !k.cfg.Enabled {
		return verdict.Result{}
	}
	c := tx.Conn
	score := 0.0
	if c.Report != nil {
		score += c.Report.Score()
	}
	if tx.Report != nil {
		score += tx.Report.Score()
	}
	if score <= k.cfg.MinScore || c.AuthUser != "" || k.skip(ctx, c) {
		return verdict.Result{}
	}
	key := k.Key(c.IP, tx.From.String(), r.Addr.String())
	now := k.now()
	e, ok, err := k.deps.Store.Get(ctx, key)
	if err != nil {
		return verdict.Result{Err: fmt.Errorf("greylist: %w", err)}
	}
	grey := func(why string) verdict.Result {
		return verdict.Result{Hard: &verdict.Verdict{Action: verdict.TempFail, Reply: replyGrey, Reason: why}}
	}
	switch {
	case !ok || !now.Before(e.Expires):
		e = Entry{First: now, Expires: now.Add(k.cfg.Window)}
		if err := k.deps.Store.Put(ctx, key, e); err != nil {
			return verdict.Result{Err: fmt.Errorf("greylist: %w", err)}
		}
		return grey("new triplet " + key)
	case e.Passed:
	case now.Before(e.First.Add(k.cfg.Delay)):
		return grey("retry too early " + key)
	}
	e.Passed = true
	e.Expires = now.Add(k.cfg.KnownGoodTTL)
	if err := k.deps.Store.Put(ctx, key, e); err != nil {
		return verdict.Result{Err: fmt.Errorf("greylist: %w", err)}
	}
	return verdict.Result{}
}

// MemoryStore is an in-process Store bounded in entries.
type MemoryStore struct {
	mu  sync.Mutex
	max int
	m   map[string]Entry
}

// NewMemoryStore returns a store holding at most max entries.
func NewMemoryStore(max int) *MemoryStore {
	return &MemoryStore{max: max, m: map[string]Entry{}}
}

// Get implements Store.
func (s *MemoryStore) Get(_ context.Context, key string) (Entry, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[key]
	return e, ok, nil
}

// Put implements Store. When full, expired entries are dropped first;
// if still full, unpassed ones.
func (s *MemoryStore) Put(_ context.Context, key string, e Entry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[key]; !ok && len(s.m) >= s.max {
		now := time.Now()
		for k, v := range s.m {
			if !now.Before(v.Expires) {
				delete(s.m, k)
			}
		}
		for k, v := range s.m {
			if len(s.m) < s.max {
				break
			}
			if !v.Passed {
				delete(s.m, k)
			}
		}
		if len(s.m) >= s.max {
			return errors.New("greylist memory store full")
		}
	}
	s.m[key] = e
	return nil
}
