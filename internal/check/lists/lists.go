// Package lists implements allow and block lists by client IP/CIDR, HELO
// name, sender address and sender domain: global ones from the config
// (matched at connect, HELO and MAIL), and per customer domain and per
// recipient ones from the store (matched at RCPT). A match on an allow list
// is a strong negative score (ALLOWLIST_*, -100 by default) so the policy
// delivers, while hard verdicts (unknown recipient, virus) still apply. A
// match on a block list is a hard 550 5.7.1. It is a cheap in-memory
// matcher, meant to run before the expensive layers.
package lists

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/verdict"
)

// Kinds of entries.
const (
	KindIP     = "ip"     // an address or CIDR
	KindHelo   = "helo"   // a HELO name, or ".suffix" for a domain and its subdomains
	KindSender = "sender" // user@domain, @domain / domain, or .domain (domain and subdomains)
)

// Config is the lists section (the global lists).
type Config struct {
	AllowIPs     []string `yaml:"allow_ips"`
	BlockIPs     []string `yaml:"block_ips"`
	AllowHelos   []string `yaml:"allow_helos"`
	BlockHelos   []string `yaml:"block_helos"`
	AllowSenders []string `yaml:"allow_senders"`
	BlockSenders []string `yaml:"block_senders"`
	// AllowWeight is the score of an ALLOWLIST_* symbol.
	AllowWeight float64 `yaml:"allow_weight"`
	// BlockWeight is the score of a BLOCKLIST_* symbol (it also carries a
	// hard reject; the score matters when the layer is in flag mode).
	BlockWeight float64 `yaml:"block_weight"`
}

// DefaultConfig: empty lists, allow -100, block 100.
func DefaultConfig() Config { return Config{AllowWeight: -100, BlockWeight: 100} }

// Validate checks the settings.
func (c *Config) Validate() error {
	for key, l := range map[string][]string{"allow_ips": c.AllowIPs, "block_ips": c.BlockIPs} {
		for _, v := range l {
			if _, err := parsePrefix(v); err != nil {
				return fmt.Errorf("%s: %q is not an IP address or CIDR", key, v)
			}
		}
	}
	for key, l := range map[string][]string{"allow_helos": c.AllowHelos, "block_helos": c.BlockHelos,
		"allow_senders": c.AllowSenders, "block_senders": c.BlockSenders} {
		for _, v := range l {
			if strings.TrimSpace(v) == "" || strings.ContainsAny(v, " \t") {
				return fmt.Errorf("%s: %q is not a valid entry", key, v)
			}
			if strings.Contains(unwild(strings.TrimSpace(v)), "*") {
				return fmt.Errorf("%s: %q: the only wildcard is a leading \"*.\" (or \".\") for a domain and its subdomains, or \"*@\" for a whole domain", key, v)
			}
		}
	}
	if c.AllowWeight > 0 {
		return fmt.Errorf("allow_weight: must be <= 0, have %v", c.AllowWeight)
	}
	return nil
}

// Entry is one per-domain or per-recipient list entry from the store.
type Entry struct {
	Kind  string // KindIP, KindHelo, KindSender
	Value string
	Allow bool // false: block
}

// Source gives the per-domain and per-recipient entries; the store
// implements it. rcpt is the full recipient address; return the domain's
// entries and the recipient's together.
type Source interface {
	ListEntries(ctx context.Context, domain, rcpt string) ([]Entry, error)
}

// Deps are the check's collaborators.
type Deps struct {
	Source Source // nil: global lists only
}

// Check is the lists check.
type Check struct {
	cfg          Config
	src          Source
	allow, block matcher
}

var (
	_ pipeline.ConnChecker = (*Check)(nil)
	_ pipeline.HeloChecker = (*Check)(nil)
	_ pipeline.MailChecker = (*Check)(nil)
	_ pipeline.RcptChecker = (*Check)(nil)
)

// New builds the check.
func New(cfg Config, deps Deps) (*Check, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	k := &Check{cfg: cfg, src: deps.Source}
	k.allow.add(KindIP, cfg.AllowIPs...)
	k.allow.add(KindHelo, cfg.AllowHelos...)
	k.allow.add(KindSender, cfg.AllowSenders...)
	k.block.add(KindIP, cfg.BlockIPs...)
	k.block.add(KindHelo, cfg.BlockHelos...)
	k.block.add(KindSender, cfg.BlockSenders...)
	return k, nil
}

// Name returns the layer name.
func (*Check) Name() string { return "lists" }

func parsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, err
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// matcher holds one list (allow or block) of every kind.
type matcher struct {
	nets     []netip.Prefix
	helos    map[string]bool
	heloSufs []string
	addrs    map[string]bool // user@domain
	domains  map[string]bool // exact sender domain
	domSufs  []string        // ".example.com"
}

// unwild rewrites the wildcard spellings people naturally write into the
// list syntax: "*.example.com" is ".example.com" (the domain and its
// subdomains), "*@example.com" and "@*.example.com" are "@example.com" and
// ".example.com". Without it such entries were accepted and never matched.
func unwild(v string) string {
	switch {
	case strings.HasPrefix(v, "@*."):
		return v[2:]
	case strings.HasPrefix(v, "*@"), strings.HasPrefix(v, "*."):
		return v[1:]
	}
	return v
}

func (m *matcher) add(kind string, vals ...string) {
	for _, v := range vals {
		v = unwild(strings.ToLower(strings.TrimSpace(v)))
		switch kind {
		case KindIP:
			if p, err := parsePrefix(v); err == nil {
				m.nets = append(m.nets, p)
			}
		case KindHelo:
			v = strings.TrimSuffix(v, ".")
			if strings.HasPrefix(v, ".") {
				m.heloSufs = append(m.heloSufs, v)
			} else {
				if m.helos == nil {
					m.helos = map[string]bool{}
				}
				m.helos[v] = true
			}
		case KindSender:
			switch {
			case strings.HasPrefix(v, "."):
				m.domSufs = append(m.domSufs, v)
			case strings.HasPrefix(v, "@"):
				m.addDomain(v[1:])
			case strings.Contains(v, "@"):
				if m.addrs == nil {
					m.addrs = map[string]bool{}
				}
				m.addrs[v] = true
			default:
				m.addDomain(v)
			}
		}
	}
}

func (m *matcher) addDomain(d string) {
	if m.domains == nil {
		m.domains = map[string]bool{}
	}
	m.domains[d] = true
}

func suffixMatch(name string, sufs []string) bool {
	for _, s := range sufs {
		if strings.HasSuffix(name, s) || name == s[1:] {
			return true
		}
	}
	return false
}

func (m *matcher) ip(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range m.nets {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (m *matcher) helo(h string) bool {
	h = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(h), "."))
	return h != "" && (m.helos[h] || suffixMatch(h, m.heloSufs))
}

func (m *matcher) sender(a pipeline.Address) bool { return m.senderLevel(a) > 0 }

// senderLevel says how specifically the list matches the sender: 2 the
// exact address, 1 its domain (exact or by suffix), 0 no match.
func (m *matcher) senderLevel(a pipeline.Address) int {
	if a.Domain == "" {
		return 0
	}
	d := strings.ToLower(a.Domain)
	switch {
	case m.addrs[strings.ToLower(a.Local)+"@"+d]:
		return 2
	case m.domains[d] || suffixMatch(d, m.domSufs):
		return 1
	}
	return 0
}

func (k *Check) allowSym(kind, detail string) verdict.Result {
	return verdict.Result{Symbols: []verdict.Symbol{{Name: "ALLOWLIST_" + strings.ToUpper(kind), Score: k.cfg.AllowWeight, Detail: detail}}}
}

func (k *Check) blockRes(kind, detail string) verdict.Result {
	return verdict.Result{
		Symbols: []verdict.Symbol{{Name: "BLOCKLIST_" + strings.ToUpper(kind), Score: k.cfg.BlockWeight, Detail: detail}},
		Hard: &verdict.Verdict{Action: verdict.Reject,
			Reply:  verdict.Reply{Code: 550, Enhanced: [3]int{5, 7, 1}, Text: "Access denied by policy"},
			Reason: "blocklist " + detail},
	}
}

// CheckConn matches the global IP lists. Block wins over allow.
func (k *Check) CheckConn(_ context.Context, c *pipeline.Conn) verdict.Result {
	if k.block.ip(c.IP) {
		return k.blockRes(KindIP, "client "+c.IP.String())
	}
	if k.allow.ip(c.IP) {
		return k.allowSym(KindIP, "client "+c.IP.String())
	}
	return verdict.Result{}
}

// CheckHelo matches the global HELO lists.
func (k *Check) CheckHelo(_ context.Context, c *pipeline.Conn) verdict.Result {
	if k.block.helo(c.Helo) {
		return k.blockRes(KindHelo, "helo "+c.Helo)
	}
	if k.allow.helo(c.Helo) {
		return k.allowSym(KindHelo, "helo "+c.Helo)
	}
	return verdict.Result{}
}

// CheckMail matches the global sender lists.
func (k *Check) CheckMail(_ context.Context, tx *pipeline.Txn) verdict.Result {
	if k.block.sender(tx.From) {
		return k.blockRes(KindSender, "sender "+tx.From.String())
	}
	if k.allow.sender(tx.From) {
		return k.allowSym(KindSender, "sender "+tx.From.String())
	}
	return verdict.Result{}
}

// CheckRcpt matches the recipient's domain and personal lists (every
// kind). Block wins over allow, except that an allowed sender address
// wins over a blocked sender domain (as quarantine.Prefs.Lookup decides:
// "block @example.com, but always allow boss@example.com").
func (k *Check) CheckRcpt(ctx context.Context, tx *pipeline.Txn, r *pipeline.Rcpt) verdict.Result {
	if k.src == nil {
		return verdict.Result{}
	}
	domain := r.Domain
	if domain == "" {
		domain = r.Addr.Domain
	}
	entries, err := k.src.ListEntries(ctx, strings.ToLower(domain), strings.ToLower(r.Addr.String()))
	if err != nil {
		return verdict.Result{Err: fmt.Errorf("lists: %w", err)}
	}
	if len(entries) == 0 {
		return verdict.Result{}
	}
	var allow, block matcher
	for _, e := range entries {
		if e.Allow {
			allow.add(e.Kind, e.Value)
		} else {
			block.add(e.Kind, e.Value)
		}
	}
	c := tx.Conn
	probes := []struct {
		kind, detail string
		hit          func(*matcher) bool
	}{
		{KindIP, "client " + c.IP.String(), func(m *matcher) bool { return m.ip(c.IP) }},
		{KindHelo, "helo " + c.Helo, func(m *matcher) bool { return m.helo(c.Helo) }},
		{KindSender, "sender " + tx.From.String(), func(m *matcher) bool { return m.sender(tx.From) }},
	}
	allowSender := allow.senderLevel(tx.From)
	for _, p := range probes {
		if p.kind == KindSender && block.senderLevel(tx.From) < allowSender {
			continue // a more specific allow
		}
		if p.hit(&block) {
			return k.blockRes(p.kind, p.detail+" for "+r.Addr.String())
		}
	}
	for _, p := range probes {
		if p.hit(&allow) {
			return k.allowSym(p.kind, p.detail+" for "+r.Addr.String())
		}
	}
	return verdict.Result{}
}
