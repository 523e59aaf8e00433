package milter

import (
	"net/netip"
	"testing"
)

// TestTrustedPrefixes: a trusted network written as IPv4-mapped IPv6 must
// match the (unmapped) IPv4 client; /0 and zoned addresses are refused
// rather than silently trusting everyone or a truncated address.
func TestTrustedPrefixes(t *testing.T) {
	for _, s := range []string{"0.0.0.0/0", "::/0", "10.1.2.3/0", "::ffff:0.0.0.0/96", "fe80::1%eth0", "nonsense"} {
		c := DefaultConfig()
		c.Trusted = []string{s}
		if err := c.Validate(); err == nil {
			t.Errorf("trusted %q accepted", s)
		}
	}
	for s, want := range map[string]string{
		"::ffff:10.0.0.0/104": "10.0.0.0/8",
		"::ffff:192.0.2.7":    "192.0.2.7/32",
		"192.0.2.7":           "192.0.2.7/32",
		"2001:db8::/32":       "2001:db8::/32",
	} {
		p, err := parsePrefix(s)
		if err != nil || p != netip.MustParsePrefix(want) {
			t.Errorf("parsePrefix(%q) = %v, %v; want %s", s, p, err, want)
		}
	}
}
