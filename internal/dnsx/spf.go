package dnsx

import (
	"context"
	"errors"
	"net"
	"strings"
)

// SPFResolver adapts a Resolver to the interface blitiri.com.ar/go/spf
// expects (compatible with *net.Resolver). Errors are *net.DNSError with
// IsNotFound set for NXDOMAIN/NODATA and IsTemporary for failures, because
// the library inspects them by type assertion.
type SPFResolver struct{ R Resolver }

func netErr(name string, err error) error {
	if err == nil {
		return nil
	}
	de := &net.DNSError{Err: err.Error(), Name: name}
	var e *Error
	if errors.As(err, &e) {
		de.Err = e.Kind.String()
		de.IsNotFound = e.NotFound()
		de.IsTimeout = e.Kind == KindTimeout
		de.IsTemporary = !e.NotFound()
	} else {
		de.IsTemporary = true
	}
	return de
}

// LookupTXT implements spf.DNSResolver.
func (s SPFResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	txt, err := s.R.LookupTXT(ctx, name)
	return txt, netErr(name, err)
}

// LookupMX implements spf.DNSResolver.
func (s SPFResolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	mxs, err := s.R.LookupMX(ctx, name)
	if err != nil {
		return nil, netErr(name, err)
	}
	out := make([]*net.MX, len(mxs))
	for i, m := range mxs {
		out[i] = &net.MX{Host: m.Host + ".", Pref: m.Pref}
	}
	return out, nil
}

// LookupIPAddr implements spf.DNSResolver.
func (s SPFResolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	ips, err := s.R.LookupIP(ctx, host)
	if err != nil {
		return nil, netErr(host, err)
	}
	out := make([]net.IPAddr, len(ips))
	for i, ip := range ips {
		out[i] = net.IPAddr{IP: net.IP(ip.AsSlice())}
	}
	return out, nil
}

// LookupAddr implements spf.DNSResolver (PTR names with trailing dot).
func (s SPFResolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	ip, err := parseAddr(addr)
	if err != nil {
		return nil, &net.DNSError{Err: err.Error(), Name: addr}
	}
	names, err := s.R.LookupPTR(ctx, ip)
	if err != nil {
		return nil, netErr(addr, err)
	}
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = strings.TrimSuffix(n, ".") + "."
	}
	return out, nil
}
