// Package netaddr reads the client addresses and networks that
// configurations list (who may reach a backend, whose mail a milter
// trusts), strictly: whatever is accepted means exactly what it says.
package netaddr

import (
	"errors"
	"fmt"
	"net/netip"
)

// ParsePrefix reads an address or a CIDR network. It refuses zoned IPv6
// addresses (netip accepts any text after '%', which would be silently
// dropped) and prefixes of length 0 (a whole address family: nothing
// would be restricted), and turns IPv4-mapped IPv6 addresses and
// prefixes into IPv4 ones, which is how the kernel, the MTAs and Moat see
// IPv4 clients (a mapped prefix would never match).
func ParsePrefix(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if pp, err := netip.ParsePrefix(s); err == nil {
		p = pp.Masked()
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		if a.Zone() != "" {
			return netip.Prefix{}, errors.New("zoned address")
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, fmt.Errorf("IPv4-mapped prefix shorter than /96")
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	if p.Bits() == 0 {
		return netip.Prefix{}, errors.New("/0 is every address")
	}
	return p, nil
}
