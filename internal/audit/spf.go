package audit

import (
	"context"
	"errors"
	"net/netip"
	"strings"
)

type spfHint struct {
	addr   netip.Addr
	source string // e.g. "ip4:192.0.2.1" or "a:mail.example.com"
}

// maxSPFLookups bounds the DNS lookups for SPF hints (as RFC 7208 does).
const maxSPFLookups = 10

// spf returns the single hosts a domain's SPF record names as senders: the
// domain's own outbound servers are often its inbound backend as well.
// Includes are followed one level; networks wider than one host are ignored
// (nothing to probe).
func (a *auditor) spf(ctx context.Context, domain string) ([]spfHint, error) {
	lookups := 0
	var out []spfHint
	var incErr error // the first include that could not be read
	var walk func(name string, depth int) error
	walk = func(name string, depth int) error {
		txts, err := a.r.txts(ctx, name)
		if errors.Is(err, errNXDomain) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, t := range txts {
			terms := strings.Fields(t)
			if len(terms) == 0 || !strings.EqualFold(terms[0], "v=spf1") {
				continue
			}
			for _, term := range terms[1:] {
				hints, next, n := parseSPFTerm(term, name)
				out = append(out, hints...)
				for _, h := range n {
					if lookups >= maxSPFLookups {
						break
					}
					lookups++
					out = append(out, a.spfResolve(ctx, h.kind, h.host)...)
				}
				if next != "" && depth == 0 && lookups < maxSPFLookups {
					lookups++
					if err := walk(next, depth+1); err != nil && incErr == nil {
						incErr = &spfIncludeError{name: next, err: err}
					}
				}
			}
			break // only the first SPF record counts
		}
		return nil
	}
	err := walk(domain, 0)
	if err == nil {
		err = incErr
	}
	return out, err
}

// spfIncludeError is a failed lookup of a record the domain's SPF
// record includes or redirects to.
type spfIncludeError struct {
	name string
	err  error
}

func (e *spfIncludeError) Error() string { return "SPF include " + e.name + ": " + e.err.Error() }
func (e *spfIncludeError) Unwrap() error { return e.err }

type spfLookup struct {
	kind string // "a" or "mx"
	host string
}

// parseSPFTerm interprets one SPF term of the record of domain: literal
// hosts, hosts to resolve, and a domain to include/redirect to.
func parseSPFTerm(term, domain string) (hints []spfHint, include string, lookups []spfLookup) {
	if strings.Contains(term, "%") {
		return nil, "", nil // macros: not expanded
	}
	q := term[0]
	if q == '+' || q == '-' || q == '~' || q == '?' {
		if q == '-' {
			return nil, "", nil // explicitly not a sender
		}
		term = term[1:]
	}
	lower := strings.ToLower(term)
	if v, ok := strings.CutPrefix(lower, "redirect="); ok {
		return nil, v, nil
	}
	name, arg, _ := strings.Cut(lower, ":")
	if i := strings.IndexByte(name, '/'); i >= 0 { // "a/24", "mx/24"
		name = name[:i]
	}
	switch name {
	case "ip4", "ip6":
		p, err := parsePrefix(arg)
		if err == nil && p.IsSingleIP() {
			hints = append(hints, spfHint{p.Addr(), name + ":" + arg})
		}
	case "a", "mx":
		host := domain
		if arg != "" {
			host = arg
		}
		if i := strings.IndexByte(host, '/'); i >= 0 {
			host = host[:i]
		}
		if host != "" {
			lookups = append(lookups, spfLookup{name, host})
		}
	case "include":
		include = arg
	}
	return hints, include, lookups
}

func (a *auditor) spfResolve(ctx context.Context, kind, host string) []spfHint {
	var out []spfHint
	hosts := []string{host}
	if kind == "mx" {
		hosts = nil
		mxs, _ := a.r.mxs(ctx, host)
		for i, m := range mxs {
			if i < 10 && m.Host != "" {
				hosts = append(hosts, m.Host)
			}
		}
	}
	for _, h := range hosts {
		addrs, _ := a.r.addrs(ctx, h)
		for _, ad := range addrs {
			out = append(out, spfHint{ad, kind + ":" + h})
		}
	}
	return out
}
