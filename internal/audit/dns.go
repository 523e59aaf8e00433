package audit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// errNXDomain reports that a name does not exist.
var errNXDomain = errors.New("no such domain")

// errDNS wraps failures to get any answer (timeout, SERVFAIL, refused).
type errDNS struct {
	name, qtype string
	err         error
}

func (e *errDNS) Error() string {
	return fmt.Sprintf("dns lookup %s %s: %v", e.qtype, e.name, e.err)
}
func (e *errDNS) Unwrap() error { return e.err }

// resolver is a small caching stub resolver talking to one recursive (or, in
// tests, authoritative) server with miekg/dns.
type resolver struct {
	server string
	udp    *dns.Client
	tcp    *dns.Client

	mu    sync.Mutex
	cache map[string]*dnsResult
}

type dnsResult struct {
	done  chan struct{}
	rrs   []dns.RR
	rcode int
	err   error
}

func newResolver(server string, timeout time.Duration) (*resolver, error) {
	if server == "" {
		cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil || len(cc.Servers) == 0 {
			return nil, fmt.Errorf("resolver: not set and /etc/resolv.conf unusable: %v", err)
		}
		server = net.JoinHostPort(cc.Servers[0], cc.Port)
	}
	if _, _, err := net.SplitHostPort(server); err != nil {
		server = net.JoinHostPort(server, "53")
	}
	return &resolver{
		server: server,
		udp:    &dns.Client{Net: "udp", Timeout: timeout},
		tcp:    &dns.Client{Net: "tcp", Timeout: timeout},
		cache:  map[string]*dnsResult{},
	}, nil
}

// query returns the answer section of name/qtype. Concurrent identical
// queries share one exchange; results are cached for the resolver's life
// (one audit run).
func (r *resolver) query(ctx context.Context, name string, qtype uint16) ([]dns.RR, int, error) {
	name = dns.Fqdn(strings.ToLower(name))
	key := name + "/" + dns.TypeToString[qtype]
	r.mu.Lock()
	res, ok := r.cache[key]
	if !ok {
		res = &dnsResult{done: make(chan struct{})}
		r.cache[key] = res
	}
	r.mu.Unlock()
	if ok {
		select {
		case <-res.done:
			return res.rrs, res.rcode, res.err
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
	res.rrs, res.rcode, res.err = r.exchange(ctx, name, qtype)
	close(res.done)
	return res.rrs, res.rcode, res.err
}

func (r *resolver) exchange(ctx context.Context, name string, qtype uint16) ([]dns.RR, int, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	m.SetEdns0(4096, false)
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ {
		in, _, err := r.udp.ExchangeContext(ctx, m, r.server)
		if err == nil && in.Truncated {
			in, _, err = r.tcp.ExchangeContext(ctx, m, r.server)
		}
		if err != nil {
			lastErr = err
			if ctx.Err() != nil {
				break
			}
			continue
		}
		switch in.Rcode {
		case dns.RcodeSuccess:
			return in.Answer, in.Rcode, nil
		case dns.RcodeNameError:
			return nil, in.Rcode, errNXDomain
		default:
			return nil, in.Rcode, &errDNS{name, dns.TypeToString[qtype], fmt.Errorf("server answered %s", dns.RcodeToString[in.Rcode])}
		}
	}
	return nil, 0, &errDNS{name, dns.TypeToString[qtype], lastErr}
}

// addrs resolves name to its IPv4 and IPv6 addresses, following CNAME
// chains. A name without addresses gives (nil, nil); a name that does not
// exist gives errNXDomain.
func (r *resolver) addrs(ctx context.Context, name string) ([]netip.Addr, error) {
	a, _, err := r.resolve(ctx, name)
	return a, err
}

// resolve is addrs that also returns the CNAME chain followed (the names
// after name, in order; empty when name has its own addresses).
func (r *resolver) resolve(ctx context.Context, name string) ([]netip.Addr, []string, error) {
	if a, err := netip.ParseAddr(strings.Trim(name, "[]")); err == nil {
		return []netip.Addr{a.Unmap()}, nil, nil
	}
	var out []netip.Addr
	var chain []string
	nx := 0
	var firstErr error
	// A and AAAA are asked at once: against name servers that do not
	// answer, one timeout instead of two.
	type famResult struct {
		got []netip.Addr
		ch  []string
		err error
	}
	var fam [2]famResult
	var wg sync.WaitGroup
	for i, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fam[i].got, fam[i].ch, fam[i].err = r.follow(ctx, name, qt)
		}()
	}
	wg.Wait()
	for _, f := range fam {
		if len(f.ch) > len(chain) {
			chain = f.ch
		}
		switch {
		case errors.Is(f.err, errNXDomain):
			nx++
		case f.err != nil:
			if firstErr == nil {
				firstErr = f.err
			}
		}
		out = append(out, f.got...)
	}
	// A failed lookup of one family makes the answer incomplete: report
	// it, even when the other family answered (an unchecked AAAA may be
	// the leak).
	if firstErr != nil {
		return out, chain, firstErr
	}
	if len(out) > 0 {
		return out, chain, nil
	}
	if nx == 2 {
		return nil, chain, errNXDomain
	}
	return nil, chain, nil
}

// follow resolves name/qt, following CNAMEs both inside one answer (a
// recursive server's) and across queries (an authoritative server's).
func (r *resolver) follow(ctx context.Context, name string, qt uint16) ([]netip.Addr, []string, error) {
	cur := dns.Fqdn(strings.ToLower(name))
	var chain []string
	for hop := 0; hop < 8; hop++ {
		rrs, _, err := r.query(ctx, cur, qt)
		if err != nil {
			return nil, chain, err
		}
		cn := map[string]string{}
		for _, rr := range rrs {
			if v, ok := rr.(*dns.CNAME); ok {
				cn[strings.ToLower(v.Hdr.Name)] = strings.ToLower(dns.Fqdn(v.Target))
			}
		}
		moved := false
		for i := 0; i < 8; i++ {
			t, ok := cn[cur]
			if !ok || t == cur {
				break
			}
			chain = append(chain, strings.TrimSuffix(t, "."))
			cur, moved = t, true
		}
		var out []netip.Addr
		for _, rr := range rrs {
			if !strings.EqualFold(rr.Header().Name, cur) {
				continue
			}
			switch v := rr.(type) {
			case *dns.A:
				if a, ok := netip.AddrFromSlice(v.A.To4()); ok {
					out = append(out, a)
				}
			case *dns.AAAA:
				if a, ok := netip.AddrFromSlice(v.AAAA); ok {
					out = append(out, a.Unmap())
				}
			}
		}
		if len(out) > 0 || !moved {
			return out, chain, nil
		}
		// The answer ended at a CNAME target without its addresses: ask
		// for the target.
	}
	return nil, chain, &errDNS{name, dns.TypeToString[qt], errors.New("CNAME chain too long")}
}

// mx is one MX record.
type mx struct {
	Pref uint16
	Host string // lower case, no trailing dot; "" for a null MX
}

// isTimeout reports whether err is a lookup that got no answer at all
// (the server did not reply in time), as opposed to an answered error.
func isTimeout(err error) bool {
	var ne net.Error
	return err != nil && !errors.Is(err, errNXDomain) && (errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded))
}

func (r *resolver) mxs(ctx context.Context, domain string) ([]mx, error) {
	rrs, _, err := r.query(ctx, domain, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	var out []mx
	for _, rr := range rrs {
		if v, ok := rr.(*dns.MX); ok {
			out = append(out, mx{v.Preference, strings.TrimSuffix(strings.ToLower(v.Mx), ".")})
		}
	}
	return out, nil
}

func (r *resolver) txts(ctx context.Context, name string) ([]string, error) {
	rrs, _, err := r.query(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range rrs {
		if v, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(v.Txt, ""))
		}
	}
	return out, nil
}
