// Package recipient is layer 3: the recipient must exist. Each customer
// domain uses one mode: "table" (the domain's recipient table: accounts,
// aliases, lists; +tag sub-addressing; optional catch-all), "callout" (ask
// the customer's backend with an SMTP callout, results cached), or "any"
// (accept everything; the backend decides). An unknown recipient is a hard
// 550 5.1.1; a callout that cannot reach the backend, or gets a 4xx, is a
// hard 450 4.1.1, never a wrong 550.
package recipient

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/store"
	"moat.dev/moat/internal/verdict"
)

// Modes.
const (
	ModeTable   = "table"
	ModeCallout = "callout"
	ModeAny     = "any"
)

// Config is the recipient section.
type Config struct {
	// TagSeparators are the sub-address separators: with "+", user+tag is
	// checked as user. Empty disables sub-addressing.
	TagSeparators string `yaml:"tag_separators"`
	// DefaultMode is used for a domain without a mode: table, callout or any.
	DefaultMode string `yaml:"default_mode"`
	// TableCacheTTL caches domain modes and table answers briefly (0: ask
	// the store every time). Table changes are seen after at most this.
	TableCacheTTL time.Duration `yaml:"table_cache_ttl"`
	// CalloutPositiveTTL and CalloutNegativeTTL cache callout answers
	// (recipient exists / does not exist). Temporary failures are not cached.
	CalloutPositiveTTL time.Duration `yaml:"callout_positive_ttl"`
	CalloutNegativeTTL time.Duration `yaml:"callout_negative_ttl"`
	// CacheSize bounds each cache (entries).
	CacheSize int `yaml:"cache_size"`
}

// DefaultConfig: "+" sub-addressing, table mode by default, 10s table
// cache, callouts cached 7 days (exists) and 3 hours (unknown), 100000
// entries per cache.
func DefaultConfig() Config {
	return Config{TagSeparators: "+", DefaultMode: ModeTable, TableCacheTTL: 10 * time.Second,
		CalloutPositiveTTL: 7 * 24 * time.Hour, CalloutNegativeTTL: 3 * time.Hour, CacheSize: 100000}
}

// Validate checks the settings.
func (c *Config) Validate() error {
	switch c.DefaultMode {
	case ModeTable, ModeCallout, ModeAny:
	default:
		return fmt.Errorf("default_mode: %q is not one of table, callout, any", c.DefaultMode)
	}
	if strings.ContainsAny(c.TagSeparators, "@ \t\"") {
		return fmt.Errorf("tag_separators: %q may not contain @, quotes or spaces", c.TagSeparators)
	}
	if c.TableCacheTTL < 0 || c.CalloutPositiveTTL < 0 || c.CalloutNegativeTTL < 0 {
		return fmt.Errorf("table_cache_ttl, callout_positive_ttl, callout_negative_ttl: must be >= 0")
	}
	if c.CacheSize < 1 {
		return fmt.Errorf("cache_size: must be >= 1, have %d", c.CacheSize)
	}
	return nil
}

// Recipients is the recipient data the check needs; the store implements
// it (see StoreRecipients).
type Recipients interface {
	// Exists reports whether local (lower-case, without +tag) is an
	// account, alias or list of domain.
	Exists(ctx context.Context, domain, local string) (bool, error)
	// DomainMode returns the domain's mode (table, callout, any; "" for
	// the default) and whether it has a catch-all.
	DomainMode(ctx context.Context, domain string) (mode string, catchAll bool, err error)
}

// Callout asks the backend of domain whether rcpt exists (MAIL FROM:<>,
// RCPT TO:<rcpt>) and returns the backend's RCPT reply; err means the
// backend could not be asked.
type Callout func(ctx context.Context, domain, rcpt string) (verdict.Reply, error)

// Deps are the check's collaborators.
type Deps struct {
	Recipients Recipients
	Callout    Callout // required only if a domain uses callout mode
}

// Check is the recipient check.
type Check struct {
	cfg     Config
	deps    Deps
	modes   *ttlCache[modeEntry]
	table   *ttlCache[bool]
	callout *ttlCache[bool]
	now     func() time.Time
}

type modeEntry struct {
	mode     string
	catchAll bool
}

var _ pipeline.RcptChecker = (*Check)(nil)

// New builds the check.
func New(cfg Config, deps Deps) (*Check, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Recipients == nil {
		return nil, errors.New("recipient: Deps.Recipients is required")
	}
	return &Check{cfg: cfg, deps: deps, now: time.Now,
		modes: newTTLCache[modeEntry](cfg.CacheSize), table: newTTLCache[bool](cfg.CacheSize),
		callout: newTTLCache[bool](cfg.CacheSize)}, nil
}

// Name returns the layer name.
func (*Check) Name() string { return "recipient" }

// BaseLocal strips a sub-address tag: "user+tag" → "user" (with "+" in
// seps), lower-cased.
func BaseLocal(local, seps string) string {
	local = strings.ToLower(local)
	if seps == "" {
		return local
	}
	if i := strings.IndexAny(local, seps); i > 0 {
		return local[:i]
	}
	return local
}

func unknown(addr string) *verdict.Verdict {
	return &verdict.Verdict{Action: verdict.Reject,
		Reply:  verdict.Reply{Code: 550, Enhanced: [3]int{5, 1, 1}, Text: "<" + addr + ">: Recipient address rejected: User unknown"},
		Reason: "unknown recipient " + addr}
}

func unverified(addr, why string) *verdict.Verdict {
	return &verdict.Verdict{Action: verdict.TempFail,
		Reply:  verdict.Reply{Code: 450, Enhanced: [3]int{4, 1, 1}, Text: "<" + addr + ">: Recipient address rejected: unverified address, please try again later"},
		Reason: why}
}

// CheckRcpt verifies r.
func (k *Check) CheckRcpt(ctx context.Context, tx *pipeline.Txn, r *pipeline.Rcpt) verdict.Result {
	domain := strings.ToLower(r.Domain)
	if domain == "" {
		domain = strings.ToLower(r.Addr.Domain)
	}
	addr := r.Addr.String()
	me, err := k.mode(ctx, domain)
	if err != nil {
		return verdict.Result{Err: fmt.Errorf("recipient: mode of %s: %w", domain, err)}
	}
	mode := me.mode
	if mode == "" {
		mode = k.cfg.DefaultMode
	}
	if me.catchAll || mode == ModeAny {
		return verdict.Result{}
	}
	switch mode {
	case ModeTable:
		ok, err := k.inTable(ctx, domain, r.Addr.Local)
		if err != nil {
			return verdict.Result{Err: fmt.Errorf("recipient: table lookup %s: %w", addr, err)}
		}
		if !ok {
			return verdict.Result{Hard: unknown(addr)}
		}
		return verdict.Result{}
	case ModeCallout:
		return k.doCallout(ctx, domain, addr)
	}
	return verdict.Result{Err: fmt.Errorf("recipient: domain %s has unknown mode %q", domain, mode)}
}

func (k *Check) mode(ctx context.Context, domain string) (modeEntry, error) {
	if e, ok := k.modes.get(domain, k.now()); ok {
		return e, nil
	}
	m, ca, err := k.deps.Recipients.DomainMode(ctx, domain)
	if err != nil {
		return modeEntry{}, err
	}
	e := modeEntry{mode: strings.ToLower(m), catchAll: ca}
	if k.cfg.TableCacheTTL > 0 {
		k.modes.put(domain, e, k.now().Add(k.cfg.TableCacheTTL))
	}
	return e, nil
}

func (k *Check) inTable(ctx context.Context, domain, local string) (bool, error) {
	cands := []string{BaseLocal(local, k.cfg.TagSeparators)}
	if full := strings.ToLower(local); full != cands[0] {
		cands = append(cands, full) // an address that really contains the separator
	}
	for _, l := range cands {
		key := l + "@" + domain
		ok, hit := k.table.get(key, k.now())
		if !hit {
			var err error
			ok, err = k.deps.Recipients.Exists(ctx, domain, l)
			if err != nil {
				return false, err
			}
			if k.cfg.TableCacheTTL > 0 {
				k.table.put(key, ok, k.now().Add(k.cfg.TableCacheTTL))
			}
		}
		if ok {
			return true, nil
		}
	}
	return false, nil
}

func (k *Check) doCallout(ctx context.Context, domain, addr string) verdict.Result {
	key := strings.ToLower(addr)
	if ok, hit := k.callout.get(key, k.now()); hit {
		if ok {
			return verdict.Result{}
		}
		return verdict.Result{Hard: unknown(addr)}
	}
	if k.deps.Callout == nil {
		return verdict.Result{Hard: unverified(addr, "callout mode but no callout configured")}
	}
	rep, err := k.deps.Callout(ctx, domain, addr)
	switch {
	case err != nil:
		return verdict.Result{Hard: unverified(addr, "callout to backend of "+domain+" failed: "+err.Error())}
	case rep.Code/100 == 2:
		k.callout.put(key, true, k.now().Add(k.cfg.CalloutPositiveTTL))
		return verdict.Result{}
	case rep.Code/100 == 5:
		k.callout.put(key, false, k.now().Add(k.cfg.CalloutNegativeTTL))
		return verdict.Result{Hard: unknown(addr)}
	default:
		return verdict.Result{Hard: unverified(addr, "callout to backend of "+domain+" answered "+rep.String())}
	}
}

// Forget drops cached answers for addr (e.g. after an admin adds it).
func (k *Check) Forget(addr string) {
	k.callout.del(strings.ToLower(addr))
}

// StoreRecipients adapts the store to Recipients.
type StoreRecipients struct {
	S interface {
		Domain(ctx context.Context, name string) (*store.Domain, error)
		RecipientExists(ctx context.Context, domain, local string) (bool, error)
	}
}

// Exists implements Recipients.
func (s StoreRecipients) Exists(ctx context.Context, domain, local string) (bool, error) {
	return s.S.RecipientExists(ctx, domain, local)
}

// DomainMode implements Recipients.
func (s StoreRecipients) DomainMode(ctx context.Context, domain string) (string, bool, error) {
	d, err := s.S.Domain(ctx, domain)
	if err != nil {
		return "", false, err
	}
	return d.RecipientMode, d.CatchAll, nil
}

// ttlCache is a small size-bounded map with per-entry expiry. When full,
// expired entries are swept, then an arbitrary tenth is evicted.
type ttlCache[V any] struct {
	mu  sync.Mutex
	max int
	m   map[string]ttlEntry[V]
}

type ttlEntry[V any] struct {
	v   V
	exp time.Time
}

func newTTLCache[V any](max int) *ttlCache[V] {
	return &ttlCache[V]{max: max, m: map[string]ttlEntry[V]{}}
}

func (c *ttlCache[V]) get(k string, now time.Time) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok || !now.Before(e.exp) {
		var zero V
		return zero, false
	}
	return e.v, true
}

func (c *ttlCache[V]) put(k string, v V, exp time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		now := time.Now()
		for key, e := range c.m {
			if !now.Before(e.exp) {
				delete(c.m, key)
			}
		}
		for key := range c.m {
			if len(c.m) < c.max-c.max/10 {
				break
			}
			delete(c.m, key)
		}
	}
	c.m[k] = ttlEntry[V]{v: v, exp: exp}
}

func (c *ttlCache[V]) del(k string) {
	c.mu.Lock()
	delete(c.m, k)
	c.mu.Unlock()
}

func (c *ttlCache[V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
