package netaddr

import (
	"net/netip"
	"testing"
)

// TestParsePrefix: IPv4-mapped input becomes IPv4 (how clients are
// seen); /0, zoned addresses and junk are refused.
func TestParsePrefix(t *testing.T) {
	for _, s := range []string{"0.0.0.0/0", "::/0", "10.1.2.3/0", "::ffff:0.0.0.0/96", "fe80::1%eth0", "fe80::1%eth0; drop", "nonsense", ""} {
		if p, err := ParsePrefix(s); err == nil {
			t.Errorf("ParsePrefix(%q) = %v, want an error", s, p)
		}
	}
	for s, want := range map[string]string{
		"::ffff:10.0.0.0/104": "10.0.0.0/8",
		"::ffff:192.0.2.7":    "192.0.2.7/32",
		"192.0.2.7":           "192.0.2.7/32",
		"2001:db8::/32":       "2001:db8::/32",
	} {
		p, err := ParsePrefix(s)
		if err != nil || p != netip.MustParsePrefix(want) {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", s, p, err, want)
		}
	}
}
