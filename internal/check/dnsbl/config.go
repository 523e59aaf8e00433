package dnsbl

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Zone is one DNS block or allow list.
type Zone struct {
	// Zone is the list's DNS zone, e.g. zen.spamhaus.org.
	Zone string `yaml:"zone"`
	// Weight is the score of a listing when Codes is empty (any answer in
	// 127.0.0.0/8 that is not a refused code).
	Weight float64 `yaml:"weight"`
	// Codes maps a return code or an inclusive range "a-b" to a weight. Only
	// answers matching an entry count; each entry counts at most once.
	Codes map[string]float64 `yaml:"codes"`
	// Symbols optionally names the symbol of each Codes entry (same keys);
	// the default is DNSBL_<ZONE>_<CODE> (DNSWL_ for allow zones).
	Symbols map[string]string `yaml:"symbols"`
	// Symbol names the symbol when Codes is empty (default DNSBL_<ZONE>).
	Symbol string `yaml:"symbol"`
	// Allow marks an allowlist (DNSWL) zone: weights should be negative.
	Allow bool `yaml:"allow"`
	// RefusedCodes are answers meaning "query refused / rate limited / open
	// resolver" (Spamhaus: 127.255.255.252-127.255.255.255). They never
	// count as listed and they trigger the zone's self-test.
	RefusedCodes []string `yaml:"refused_codes"`
	// TestIP is the address the list always lists (default 127.0.0.2); the
	// self-test queries it.
	TestIP string `yaml:"test_ip"`
	// SkipIPv6 skips IPv6 clients (for lists that only cover IPv4).
	SkipIPv6 bool `yaml:"skip_ipv6"`
}

// Config is the dnsbl section.
type Config struct {
	// Zones are the lists queried for every client, concurrently.
	Zones []Zone `yaml:"zones"`
	// RejectThreshold: when the summed weight of the listings reaches it,
	// the layer gives a hard 554 5.7.1 naming the lists (postscreen
	// dnsbl_threshold). Below it, the listings are only scores.
	RejectThreshold float64 `yaml:"reject_threshold"`
	// Timeout bounds the queries for one client.
	Timeout time.Duration `yaml:"timeout"`
	// SelfTestInterval is how often each zone's test entry is queried.
	SelfTestInterval time.Duration `yaml:"self_test_interval"`
}

// DefaultConfig returns Spamhaus ZEN with the usual weights (SBL and CSS
// 4, XBL 3, PBL 2), reject at 3, a 5s timeout and a self-test every 5
// minutes.
func DefaultConfig() Config {
	return Config{
		Zones: []Zone{{
			Zone: "zen.spamhaus.org",
			Codes: map[string]float64{
				"127.0.0.2":             4,
				"127.0.0.3":             4,
				"127.0.0.4-127.0.0.7":   3,
				"127.0.0.10-127.0.0.11": 2,
			},
			Symbols: map[string]string{
				"127.0.0.2":             "DNSBL_SPAMHAUS_SBL",
				"127.0.0.3":             "DNSBL_SPAMHAUS_CSS",
				"127.0.0.4-127.0.0.7":   "DNSBL_SPAMHAUS_XBL",
				"127.0.0.10-127.0.0.11": "DNSBL_SPAMHAUS_PBL",
			},
			RefusedCodes: []string{"127.255.255.252-127.255.255.255"},
			TestIP:       "127.0.0.2",
		}},
		RejectThreshold:  3,
		Timeout:          5 * time.Second,
		SelfTestInterval: 5 * time.Minute,
	}
}

// Validate checks the settings.
func (c *Config) Validate() error {
	if c.Timeout <= 0 {
		return fmt.Errorf("timeout: must be > 0, have %v", c.Timeout)
	}
	if c.SelfTestInterval < time.Second {
		return fmt.Errorf("self_test_interval: must be >= 1s, have %v", c.SelfTestInterval)
	}
	if c.RejectThreshold <= 0 {
		return fmt.Errorf("reject_threshold: must be > 0, have %v", c.RejectThreshold)
	}
	seen := map[string]bool{}
	for i, z := range c.Zones {
		if _, err := compileZone(z); err != nil {
			return fmt.Errorf("zones[%d]: %v", i, err)
		}
		if seen[normZone(z.Zone)] {
			return fmt.Errorf("zones[%d].zone: %q listed twice", i, z.Zone)
		}
		seen[normZone(z.Zone)] = true
	}
	return nil
}

func normZone(z string) string { return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(z), ".")) }

type codeRange struct {
	lo, hi netip.Addr
	key    string
	weight float64
	symbol string
}

func (r codeRange) contains(a netip.Addr) bool {
	return r.lo.Compare(a) <= 0 && a.Compare(r.hi) <= 0
}

func parseRange(s string) (lo, hi netip.Addr, err error) {
	a, b, isRange := strings.Cut(strings.TrimSpace(s), "-")
	lo, err = netip.ParseAddr(strings.TrimSpace(a))
	if err != nil || !lo.Is4() {
		return lo, hi, fmt.Errorf("%q is not an IPv4 address or range", s)
	}
	hi = lo
	if isRange {
		hi, err = netip.ParseAddr(strings.TrimSpace(b))
		if err != nil || !hi.Is4() || hi.Less(lo) {
			return lo, hi, fmt.Errorf("%q is not an IPv4 range lo-hi", s)
		}
	}
	return lo, hi, nil
}

// zone is a compiled Zone.
type zone struct {
	name    string
	weight  float64
	symbol  string
	allow   bool
	codes   []codeRange
	refused []codeRange
	testIP  netip.Addr
	skip6   bool
}

func symbolPart(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, s)
}

func compileZone(z Zone) (*zone, error) {
	name := normZone(z.Zone)
	if name == "" || strings.ContainsAny(name, " \t/") || !strings.Contains(name, ".") {
		return nil, fmt.Errorf("zone: %q is not a DNS zone", z.Zone)
	}
	prefix := "DNSBL_"
	if z.Allow {
		prefix = "DNSWL_"
	}
	cz := &zone{name: name, weight: z.Weight, allow: z.Allow, skip6: z.SkipIPv6, symbol: z.Symbol}
	if cz.symbol == "" {
		cz.symbol = prefix + symbolPart(name)
	}
	for k, w := range z.Codes {
		lo, hi, err := parseRange(k)
		if err != nil {
			return nil, fmt.Errorf("codes: %v", err)
		}
		sym := z.Symbols[k]
		if sym == "" {
			sym = prefix + symbolPart(name) + "_" + symbolPart(k)
		}
		cz.codes = append(cz.codes, codeRange{lo: lo, hi: hi, key: k, weight: w, symbol: sym})
	}
	for k := range z.Symbols {
		if _, ok := z.Codes[k]; !ok {
			return nil, fmt.Errorf("symbols: %q has no entry in codes", k)
		}
	}
	for _, k := range z.RefusedCodes {
		lo, hi, err := parseRange(k)
		if err != nil {
			return nil, fmt.Errorf("refused_codes: %v", err)
		}
		cz.refused = append(cz.refused, codeRange{lo: lo, hi: hi, key: k})
	}
	tip := z.TestIP
	if tip == "" {
		tip = "127.0.0.2"
	}
	ip, err := netip.ParseAddr(tip)
	if err != nil {
		return nil, fmt.Errorf("test_ip: %q is not an IP address", z.TestIP)
	}
	cz.testIP = ip
	// Stable order for symbols and logs.
	sortRanges(cz.codes)
	return cz, nil
}

func sortRanges(r []codeRange) {
	for i := 1; i < len(r); i++ {
		for j := i; j > 0 && r[j].lo.Less(r[j-1].lo); j-- {
			r[j], r[j-1] = r[j-1], r[j]
		}
	}
}
