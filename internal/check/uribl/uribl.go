// Package uribl checks the links in a message against URI blocklists
// (SURBL, URIBL, Spamhaus DBL style: the registered domain, or the IP for
// IP-literal links, is looked up under the zone), and flags phishing-style
// links whose visible text names one domain while the href goes to another
// (PHISH_LINK_MISMATCH).
//
// Every zone is self-tested like an IP blocklist: its test entry must be
// listed, and an answer in a refused range (127.255.255.0/24 by default:
// "query refused / over quota") disables the zone until the next self-test,
// so a zone that blocks our resolver cannot list everything or nothing.
package uribl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/message/shared"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/verdict"
)

// Resolver is the DNS the check needs; *dnsx.Client implements it.
// dnsx.IsNotFound(err) must be true for NXDOMAIN/NODATA.
type Resolver interface {
	LookupIP(ctx context.Context, host string) ([]netip.Addr, error)
}

// Zone is one URI blocklist.
type Zone struct {
	// Name is the DNS zone, e.g. "dbl.spamhaus.org" or "multi.uribl.com".
	Name string `yaml:"name"`
	// Kind is "domain" (registered domains) or "ip" (IP-literal links,
	// queried with reversed octets).
	Kind string `yaml:"kind"`
	// Symbol is emitted on a hit, e.g. "URIBL_DBL".
	Symbol string `yaml:"symbol"`
	// Score of a hit.
	Score float64 `yaml:"score"`
	// TestEntry must be listed (e.g. "dbltest.com", "test.uribl.com",
	// "127.0.0.2" for ip zones); otherwise the zone is disabled.
	TestEntry string `yaml:"test_entry"`
	// RefusedCodes are answers meaning "refused/over quota", not "listed".
	RefusedCodes []string `yaml:"refused_codes"`
}

// Config is the URIBL check's configuration.
type Config struct {
	Zones []Zone `yaml:"zones"`
	// MaxLookups bounds the distinct domains/IPs looked up per message.
	MaxLookups int `yaml:"max_lookups"`
	// SelfTestInterval: how often zones are re-tested.
	SelfTestInterval time.Duration `yaml:"self_test_interval"`
	// PhishScore is the score of PHISH_LINK_MISMATCH (0 disables it).
	PhishScore float64 `yaml:"phish_score"`
	// Ignore lists registered domains never looked up (your own, big senders).
	Ignore []string `yaml:"ignore"`
}

// DefaultConfig returns the defaults: no zones (they need an agreement
// with the list operator), phishing heuristic on.
func DefaultConfig() Config {
	return Config{MaxLookups: 20, SelfTestInterval: 10 * time.Minute, PhishScore: 3}
}

// Validate checks the configuration; errors name the key.
func (c *Config) Validate() error {
	if c.MaxLookups < 1 || c.MaxLookups > 200 {
		return errors.New("max_lookups: must be between 1 and 200")
	}
	if c.SelfTestInterval < time.Second {
		return errors.New("self_test_interval: must be >= 1s")
	}
	for i, z := range c.Zones {
		if z.Name == "" || strings.ContainsAny(z.Name, " /") {
			return fmt.Errorf("zones[%d].name: %q is not a DNS zone", i, z.Name)
		}
		if z.Kind != "domain" && z.Kind != "ip" {
			return fmt.Errorf("zones[%d].kind: %q is not one of domain, ip", i, z.Kind)
		}
		if z.Symbol == "" {
			return fmt.Errorf("zones[%d].symbol: required", i)
		}
		if z.TestEntry == "" {
			return fmt.Errorf("zones[%d].test_entry: required (the self-test needs a listed entry)", i)
		}
		for _, p := range z.RefusedCodes {
			if _, err := netip.ParsePrefix(p); err != nil {
				return fmt.Errorf("zones[%d].refused_codes: %q is not a prefix", i, p)
			}
		}
	}
	return nil
}

// Deps are the check's collaborators.
type Deps struct {
	Resolver   Resolver              // required when zones are configured
	Log        *slog.Logger          // required
	Registerer prometheus.Registerer // optional
	Limits     message.Limits        // zero = message.DefaultLimits()
}

type zoneState struct {
	Zone
	refused []netip.Prefix

	mu       sync.Mutex
	enabled  bool
	tested   time.Time
	disabled string // why
}

// Check is the URIBL DataChecker.
type Check struct {
	cfg    Config
	res    Resolver
	log    *slog.Logger
	lim    message.Limits
	zones  []*zoneState
	ignore map[string]bool
	hits   *prometheus.CounterVec
}

var _ pipeline.DataChecker = (*Check)(nil)

// New builds the check.
func New(cfg Config, deps Deps) (*Check, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Log == nil || (len(cfg.Zones) > 0 && deps.Resolver == nil) {
		return nil, errors.New("uribl: Log (and Resolver, with zones) are required")
	}
	c := &Check{cfg: cfg, res: deps.Resolver, log: deps.Log, lim: deps.Limits, ignore: map[string]bool{}}
	if c.lim.MaxParts == 0 {
		c.lim = message.DefaultLimits()
	}
	for _, d := range cfg.Ignore {
		c.ignore[strings.ToLower(d)] = true
	}
	for _, z := range cfg.Zones {
		zs := &zoneState{Zone: z}
		codes := z.RefusedCodes
		if len(codes) == 0 {
			codes = []string{"127.255.255.0/24"}
		}
		for _, p := range codes {
			zs.refused = append(zs.refused, netip.MustParsePrefix(p))
		}
		c.zones = append(c.zones, zs)
	}
	c.hits = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_uribl_hits_total", Help: "URI blocklist and phishing-link hits by symbol."}, []string{"symbol"})
	if deps.Registerer != nil {
		if err := deps.Registerer.Register(c.hits); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Name implements pipeline.Check.
func (c *Check) Name() string { return "uribl" }

func (z *zoneState) query(item string) string {
	if z.Kind == "ip" {
		a, err := netip.ParseAddr(item)
		if err != nil || !a.Is4() {
			return ""
		}
		b := a.As4()
		return fmt.Sprintf("%d.%d.%d.%d.%s", b[3], b[2], b[1], b[0], z.Name)
	}
	return item + "." + z.Name
}

type answer int

const (
	notListed answer = iota
	listed
	refused
	failed
)

func (c *Check) ask(ctx context.Context, z *zoneState, item string) (answer, netip.Addr) {
	q := z.query(item)
	if q == "" {
		return notListed, netip.Addr{}
	}
	addrs, err := c.res.LookupIP(ctx, q)
	if err != nil {
		if dnsx.IsNotFound(err) {
			return notListed, netip.Addr{}
		}
		return failed, netip.Addr{}
	}
	for _, a := range addrs {
		a = a.Unmap()
		for _, p := range z.refused {
			if p.Contains(a) {
				return refused, a
			}
		}
	}
	for _, a := range addrs {
		if a = a.Unmap(); a.Is4() && a.As4()[0] == 127 {
			return listed, a
		}
	}
	return notListed, netip.Addr{}
}

// usable runs the self-test when due and reports whether the zone is on.
func (c *Check) usable(ctx context.Context, z *zoneState) bool {
	z.mu.Lock()
	defer z.mu.Unlock()
	if !z.tested.IsZero() && time.Since(z.tested) < c.cfg.SelfTestInterval {
		return z.enabled
	}
	ans, a := c.ask(ctx, z, z.TestEntry)
	z.tested = time.Now()
	was := z.enabled
	switch ans {
	case listed:
		z.enabled, z.disabled = true, ""
	case refused:
		z.enabled, z.disabled = false, "test entry answered refused code "+a.String()
	case failed:
		// Keep the previous state; retry soon.
		z.tested = time.Now().Add(-c.cfg.SelfTestInterval + 30*time.Second)
		return z.enabled
	default:
		z.enabled, z.disabled = false, "test entry "+z.TestEntry+" is not listed"
	}
	if was != z.enabled || !z.enabled {
		c.log.Warn("uribl: zone self-test", "zone", z.Name, "enabled", z.enabled, "reason", z.disabled)
	}
	return z.enabled
}

func (c *Check) disable(z *zoneState, why string) {
	z.mu.Lock()
	z.enabled, z.disabled, z.tested = false, why, time.Now()
	z.mu.Unlock()
	c.log.Warn("uribl: zone disabled", "zone", z.Name, "reason", why)
}

// Enabled reports whether the named zone is currently in use.
func (c *Check) Enabled(ctx context.Context, zone string) bool {
	for _, z := range c.zones {
		if z.Name == zone {
			return c.usable(ctx, z)
		}
	}
	return false
}

// CheckData implements pipeline.DataChecker.
func (c *Check) CheckData(ctx context.Context, tx *pipeline.Txn, pm *pipeline.Message) verdict.Result {
	m, err := shared.Parse(pm, c.lim)
	if err != nil {
		return verdict.Result{Err: fmt.Errorf("uribl: read message: %w", err)}
	}
	return c.Evaluate(ctx, m)
}

// Evaluate checks the URLs of a decoded message.
func (c *Check) Evaluate(ctx context.Context, m *message.Message) verdict.Result {
	var res verdict.Result
	if c.cfg.PhishScore != 0 {
		if d := PhishMismatch(m.URLs); d != "" {
			res.Symbols = append(res.Symbols, verdict.Symbol{Name: "PHISH_LINK_MISMATCH", Score: c.cfg.PhishScore, Detail: d})
			c.hits.WithLabelValues("PHISH_LINK_MISMATCH").Inc()
		}
	}
	if len(c.zones) == 0 {
		return res
	}
	domains, ips := c.items(m)
	type job struct {
		z    *zoneState
		item string
	}
	var jobs []job
	for _, z := range c.zones {
		list := domains
		if z.Kind == "ip" {
			list = ips
		}
		if len(list) == 0 || !c.usable(ctx, z) {
			continue
		}
		for _, it := range list {
			jobs = append(jobs, job{z, it})
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	hit := map[string][]string{} // symbol → items
	score := map[string]float64{}
	sem := make(chan struct{}, 8)
	for _, j := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func(j job) {
			defer wg.Done()
			defer func() { <-sem }()
			ans, a := c.ask(ctx, j.z, j.item)
			switch ans {
			case listed:
				mu.Lock()
				hit[j.z.Symbol] = append(hit[j.z.Symbol], j.item+" ("+a.String()+")")
				score[j.z.Symbol] = j.z.Score
				mu.Unlock()
			case refused:
				c.disable(j.z, "answered refused code "+a.String())
			}
		}(j)
	}
	wg.Wait()
	syms := make([]string, 0, len(hit))
	for s := range hit {
		syms = append(syms, s)
	}
	sort.Strings(syms)
	for _, s := range syms {
		sort.Strings(hit[s])
		res.Symbols = append(res.Symbols, verdict.Symbol{Name: s, Score: score[s], Detail: strings.Join(hit[s], ", ")})
		c.hits.WithLabelValues(s).Inc()
	}
	return res
}

// items returns the distinct registered domains and IPv4 literals of the
// message's links, at most MaxLookups in total.
func (c *Check) items(m *message.Message) (domains, ips []string) {
	seen := map[string]bool{}
	for _, u := range m.URLs {
		if len(domains)+len(ips) >= c.cfg.MaxLookups {
			break
		}
		host := NormalizeHost(u.Host)
		if a, ok := hostIP(host); ok {
			s := a.String()
			if !seen[s] && a.Is4() {
				seen[s] = true
				ips = append(ips, s)
			}
			continue
		}
		d := message.RegisteredDomain(host)
		if d == "" || seen[d] || c.ignore[d] {
			continue
		}
		seen[d] = true
		domains = append(domains, d)
	}
	return domains, ips
}

// PhishMismatch returns a description of the first HTML link whose visible
// text is itself a URL or host name with a different registered domain
// than the link target, or "".
func PhishMismatch(urls []message.URL) string {
	for _, u := range urls {
		if !u.InHTML || u.Text == "" {
			continue
		}
		shown := shownHost(u.Text)
		if shown == "" {
			continue
		}
		host := NormalizeHost(u.Host)
		if a, ok := hostIP(host); ok {
			host = a.String()
		}
		sd, hd := message.RegisteredDomain(shown), message.RegisteredDomain(host)
		if sd != "" && hd != "" && sd != hd {
			return fmt.Sprintf("link text shows %s, goes to %s", shown, host)
		}
	}
	return ""
}

// shownHost extracts a host name from link text that looks like a URL or a
// bare domain ("www.bank.com", "https://bank.com/login").
func shownHost(text string) string {
	t := strings.ToLower(strings.TrimSpace(text))
	if strings.ContainsAny(t, " \t\n") {
		return ""
	}
	if i := strings.Index(t, "://"); i >= 0 {
		t = t[i+3:]
	}
	if i := strings.IndexAny(t, "/?#"); i >= 0 {
		t = t[:i]
	}
	if i := strings.LastIndexByte(t, '@'); i >= 0 {
		t = t[i+1:]
	}
	if i := strings.IndexByte(t, ':'); i >= 0 {
		t = t[:i]
	}
	t = strings.TrimSuffix(t, ".")
	if strings.Count(t, ".") < 1 || len(t) < 4 {
		return ""
	}
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-') {
			return ""
		}
	}
	// Must end in a plausible TLD (letters).
	tld := t[strings.LastIndexByte(t, '.')+1:]
	for _, r := range tld {
		if r < 'a' || r > 'z' {
			return ""
		}
	}
	return t
}

// NormalizeHost returns the host a browser goes to for a link host as
// extracted from the message: percent-encoded octets decoded
// ("%65vil.example" is evil.example, WHATWG URL host parsing), lower case,
// without a trailing dot. A host that does not decode is returned as is.
func NormalizeHost(h string) string {
	if strings.Contains(h, "%") {
		if d, err := url.PathUnescape(h); err == nil {
			h = d
		}
	}
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// hostIP returns the IPv4 or IPv6 address of a link host that is an
// address literal in any form browsers accept: dotted decimal, IPv6 in
// brackets, and the WHATWG IPv4 forms with one to four parts each in
// decimal, hexadecimal (0x) or octal (leading 0): 3221226050,
// 0xC0000242, 0300.0000.0002.0102, 192.0x0.2.66 and 192.0.578 all name
// 192.0.2.66.
func hostIP(host string) (netip.Addr, bool) {
	if a, ok := message.HostIP(host); ok {
		return a, true
	}
	parts := strings.Split(strings.TrimSuffix(host, "."), ".")
	if len(parts) > 4 || host == "" {
		return netip.Addr{}, false
	}
	nums := make([]uint64, len(parts))
	for i, p := range parts {
		base := 10
		switch {
		case p == "":
			return netip.Addr{}, false
		case len(p) >= 2 && (p[:2] == "0x" || p[:2] == "0X"):
			base, p = 16, p[2:]
			if p == "" {
				p = "0"
			}
		case len(p) > 1 && p[0] == '0':
			base, p = 8, p[1:]
		}
		n, err := strconv.ParseUint(p, base, 64)
		if err != nil {
			return netip.Addr{}, false
		}
		nums[i] = n
	}
	var v uint64
	for i, n := range nums[:len(nums)-1] {
		if n > 255 {
			return netip.Addr{}, false
		}
		v |= n << (8 * (3 - i))
	}
	last := nums[len(nums)-1]
	if last >= 1<<(8*(5-len(nums))) {
		return netip.Addr{}, false
	}
	v |= last
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}
