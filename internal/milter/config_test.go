package milter

import "testing"

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
}
