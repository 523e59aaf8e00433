// Package dnsx is Moat's DNS resolver: a context-aware stub resolver over
// miekg/dns that talks to the configured recursive servers, retries (UDP,
// then TCP when truncated), caches positive and negative answers honouring
// their TTLs (clamped, bounded in size), and merges concurrent identical
// queries into one. Errors distinguish "does not exist" (IsNotFound) from
// "could not find out" (timeouts, SERVFAIL, REFUSED): callers must never
// treat the latter as an answer.
package dnsx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// Kind classifies a lookup error.
type Kind int

const (
	KindNXDomain Kind = iota + 1 // the name does not exist
	KindNoData                   // the name exists but has no record of this type
	KindServFail                 // the server answered SERVFAIL
	KindRefused                  // the server refused the query
	KindTimeout                  // no answer in time
	KindOther                    // network error, malformed answer, other rcode
)

var kindNames = map[Kind]string{KindNXDomain: "nxdomain", KindNoData: "nodata", KindServFail: "servfail",
	KindRefused: "refused", KindTimeout: "timeout", KindOther: "error"}

func (k Kind) String() string { return kindNames[k] }

// Error is the error returned by every lookup.
type Error struct {
	Name string // queried name
	Type string // "A", "PTR", ...
	Kind Kind
	Err  error // underlying cause, if any
}

func (e *Error) Error() string {
	s := fmt.Sprintf("dns %s %s: %s", e.Type, e.Name, e.Kind)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// DNSLookupFailed reports whether the lookup failed (as opposed to
// answering that the name or record does not exist). The policy answers
// such failures with 451 4.4.3 without importing this package.
func (e *Error) DNSLookupFailed() bool { return !e.NotFound() }

// NotFound reports whether the name or the record type does not exist.
func (e *Error) NotFound() bool { return e.Kind == KindNXDomain || e.Kind == KindNoData }

// IsNotFound reports whether err says the record does not exist (NXDOMAIN
// or NODATA). Every other error means the lookup failed.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.NotFound()
}

// IsTimeout reports whether err is a lookup timeout.
func IsTimeout(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Kind == KindTimeout
}

// MX is one mail exchanger.
type MX struct {
	Host string // without trailing dot
	Pref uint16
}

// Resolver is what the checks need from DNS. *Client implements it.
type Resolver interface {
	LookupPTR(ctx context.Context, ip netip.Addr) ([]string, error)
	LookupA(ctx context.Context, name string) ([]netip.Addr, error)
	LookupAAAA(ctx context.Context, name string) ([]netip.Addr, error)
	LookupIP(ctx context.Context, name string) ([]netip.Addr, error)
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupMX(ctx context.Context, name string) ([]MX, error)
}

var _ Resolver = (*Client)(nil)

// Client is the caching resolver.
type Client struct {
	cfg     Config
	servers []string
	udp     *dns.Client
	tcp     *dns.Client
	log     *slog.Logger
	now     func() time.Time

	cache *cache

	sfMu sync.Mutex
	sf   map[string]*call

	queries  *prometheus.CounterVec
	hits     prometheus.Counter
	failures *prometheus.CounterVec
}

type call struct {
	done chan struct{}
	ans  *answer
	err  error
}

// answer is one cached response: the records of the asked type (CNAMEs
// followed), or a negative answer.
type answer struct {
	rrs     []dns.RR
	neg     Kind // 0, KindNXDomain or KindNoData
	expires time.Time
}

// New builds a resolver. reg may be nil (no metrics).
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{
		cfg: cfg,
		udp: &dns.Client{Net: "udp", Timeout: cfg.Timeout, UDPSize: 1232},
		tcp: &dns.Client{Net: "tcp", Timeout: cfg.Timeout},
		log: log,
		now: time.Now,
		sf:  map[string]*call{},
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moat_dns_queries_total", Help: "DNS lookups asked of the resolver, by record type (cache hits included).",
		}, []string{"type"}),
		hits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "moat_dns_cache_hits_total", Help: "DNS lookups answered from the cache.",
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moat_dns_failures_total", Help: "DNS lookups that failed (not NXDOMAIN/NODATA), by reason.",
		}, []string{"reason"}),
	}
	for _, s := range cfg.Resolvers {
		n, _ := normalizeServer(s)
		c.servers = append(c.servers, n)
	}
	if cfg.CacheSize > 0 {
		c.cache = newCache(cfg.CacheSize)
	}
	if reg != nil {
		for _, col := range []prometheus.Collector{c.queries, c.hits, c.failures} {
			if err := reg.Register(col); err != nil {
				return nil, fmt.Errorf("dnsx: register metrics: %w", err)
			}
		}
	}
	return c, nil
}

// Query returns the records of type qtype for name (CNAMEs followed), from
// the cache when fresh. A negative answer is an *Error with NotFound().
func (c *Client) Query(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	name = dns.Fqdn(strings.ToLower(name))
	tname := dns.TypeToString[qtype]
	c.queries.WithLabelValues(tname).Inc()
	key := tname + " " + name
	if a := c.cache.get(key, c.now()); a != nil {
		c.hits.Inc()
		return a.result(name, tname)
	}
	c.sfMu.Lock()
	cl, ok := c.sf[key]
	if !ok {
		cl = &call{done: make(chan struct{})}
		c.sf[key] = cl
		// The lookup outlives a cancelled first caller so that others
		// waiting for it still get an answer; it is bounded by the
		// configured attempts.
		go func() {
			lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.Timeout*time.Duration(c.cfg.Attempts+1))
			cl.ans, cl.err = c.resolve(lctx, name, qtype, 0)
			cancel()
			if cl.err == nil {
				c.cache.put(key, cl.ans)
			} else {
				var e *Error
				reason := "error"
				if errors.As(cl.err, &e) {
					reason = e.Kind.String()
				}
				c.failures.WithLabelValues(reason).Inc()
			}
			c.sfMu.Lock()
			delete(c.sf, key)
			c.sfMu.Unlock()
			close(cl.done)
		}()
	}
	c.sfMu.Unlock()
	select {
	case <-cl.done:
	case <-ctx.Done():
		return nil, &Error{Name: name, Type: tname, Kind: KindTimeout, Err: ctx.Err()}
	}
	if cl.err != nil {
		return nil, cl.err
	}
	return cl.ans.result(name, tname)
}

func (a *answer) result(name, tname string) ([]dns.RR, error) {
	if a.neg != 0 {
		return nil, &Error{Name: name, Type: tname, Kind: a.neg}
	}
	return a.rrs, nil
}

// resolve asks the servers, following CNAMEs that the answer leaves open.
func (c *Client) resolve(ctx context.Context, name string, qtype uint16, depth int) (*answer, error) {
	tname := dns.TypeToString[qtype]
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	m.SetEdns0(1232, false)
	var resp *dns.Msg
	var lastErr error
	for i := 0; i < c.cfg.Attempts; i++ {
		if ctx.Err() != nil {
			break
		}
		srv := c.servers[i%len(c.servers)]
		r, err := c.exchange(ctx, m, srv)
		if err != nil {
			lastErr = err
			continue
		}
		switch r.Rcode {
		case dns.RcodeSuccess, dns.RcodeNameError:
			resp = r
		case dns.RcodeServerFailure:
			lastErr = &Error{Name: name, Type: tname, Kind: KindServFail}
			continue
		case dns.RcodeRefused:
			lastErr = &Error{Name: name, Type: tname, Kind: KindRefused}
			continue
		default:
			lastErr = &Error{Name: name, Type: tname, Kind: KindOther, Err: fmt.Errorf("rcode %s", dns.RcodeToString[r.Rcode])}
			continue
		}
		break
	}
	if resp == nil {
		if lastErr == nil {
			lastErr = ctx.Err()
		}
		var e *Error
		if errors.As(lastErr, &e) {
			return nil, e
		}
		kind := KindOther
		var ne net.Error
		if errors.Is(lastErr, context.DeadlineExceeded) || (errors.As(lastErr, &ne) && ne.Timeout()) {
			kind = KindTimeout
		}
		return nil, &Error{Name: name, Type: tname, Kind: kind, Err: lastErr}
	}
	now := c.now()
	if resp.Rcode == dns.RcodeNameError {
		return &answer{neg: KindNXDomain, expires: now.Add(c.negTTL(resp))}, nil
	}
	// Collect the records of the asked type, following the CNAME chain
	// inside the answer section.
	target := name
	var rrs []dns.RR
	minTTL := uint32(1<<32 - 1)
	for hop := 0; hop < 10; hop++ {
		next := ""
		for _, rr := range resp.Answer {
			h := rr.Header()
			if !strings.EqualFold(h.Name, target) {
				continue
			}
			if h.Rrtype == qtype {
				rrs = append(rrs, rr)
				minTTL = min(minTTL, h.Ttl)
			} else if cn, ok := rr.(*dns.CNAME); ok && qtype != dns.TypeCNAME {
				next = strings.ToLower(cn.Target)
				minTTL = min(minTTL, h.Ttl)
			}
		}
		if len(rrs) > 0 || next == "" {
			break
		}
		target = next
	}
	if len(rrs) == 0 && target != name && depth < 8 {
		// The chain leaves the answer: ask for the target.
		a, err := c.resolve(ctx, target, qtype, depth+1)
		if err != nil {
			return nil, err
		}
		return a, nil
	}
	if len(rrs) == 0 {
		return &answer{neg: KindNoData, expires: now.Add(c.negTTL(resp))}, nil
	}
	return &answer{rrs: rrs, expires: now.Add(c.clamp(time.Duration(minTTL) * time.Second))}, nil
}

func (c *Client) exchange(ctx context.Context, m *dns.Msg, srv string) (*dns.Msg, error) {
	actx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	r, _, err := c.udp.ExchangeContext(actx, m, srv)
	if err == nil && r.Truncated {
		r, _, err = c.tcp.ExchangeContext(actx, m, srv)
	}
	if err == nil && r.Id != m.Id {
		err = errors.New("answer id mismatch")
	}
	return r, err
}

func (c *Client) clamp(d time.Duration) time.Duration {
	return max(c.cfg.MinTTL, min(c.cfg.MaxTTL, d))
}

// negTTL is the SOA minimum (RFC 2308: min of SOA TTL and MINIMUM) capped
// by negative_ttl, or negative_ttl when there is no SOA.
func (c *Client) negTTL(resp *dns.Msg) time.Duration {
	d := c.cfg.NegativeTTL
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			d = min(d, time.Duration(min(soa.Hdr.Ttl, soa.Minttl))*time.Second)
		}
	}
	return max(min(c.cfg.MinTTL, c.cfg.NegativeTTL), d)
}

// LookupPTR returns the PTR names of ip, lower-case without trailing dot.
func (c *Client) LookupPTR(ctx context.Context, ip netip.Addr) ([]string, error) {
	if c.cfg.LocalZones && ip.Unmap().IsLoopback() {
		return []string{"localhost"}, nil
	}
	rev, err := dns.ReverseAddr(ip.Unmap().String())
	if err != nil {
		return nil, &Error{Name: ip.String(), Type: "PTR", Kind: KindOther, Err: err}
	}
	rrs, err := c.Query(ctx, rev, dns.TypePTR)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		out = append(out, strings.TrimSuffix(strings.ToLower(rr.(*dns.PTR).Ptr), "."))
	}
	return out, nil
}

// LookupA returns the IPv4 addresses of name.
func (c *Client) LookupA(ctx context.Context, name string) ([]netip.Addr, error) {
	if c.cfg.LocalZones && isLocalhost(name) {
		return []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1})}, nil
	}
	rrs, err := c.Query(ctx, name, dns.TypeA)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(rrs))
	for _, rr := range rrs {
		if a, ok := netip.AddrFromSlice(rr.(*dns.A).A.To4()); ok {
			out = append(out, a)
		}
	}
	return out, nil
}

// LookupAAAA returns the IPv6 addresses of name.
func (c *Client) LookupAAAA(ctx context.Context, name string) ([]netip.Addr, error) {
	if c.cfg.LocalZones && isLocalhost(name) {
		return []netip.Addr{netip.IPv6Loopback()}, nil
	}
	rrs, err := c.Query(ctx, name, dns.TypeAAAA)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(rrs))
	for _, rr := range rrs {
		if a, ok := netip.AddrFromSlice(rr.(*dns.AAAA).AAAA.To16()); ok {
			out = append(out, a)
		}
	}
	return out, nil
}

// LookupIP returns the IPv4 and IPv6 addresses of name (queried in
// parallel). It fails only when neither query produced an address and at
// least one of them failed; it is NotFound when both are.
func (c *Client) LookupIP(ctx context.Context, name string) ([]netip.Addr, error) {
	var v6 []netip.Addr
	var err6 error
	done := make(chan struct{})
	go func() {
		v6, err6 = c.LookupAAAA(ctx, name)
		close(done)
	}()
	v4, err4 := c.LookupA(ctx, name)
	<-done
	out := append(v4, v6...)
	if len(out) > 0 {
		return out, nil
	}
	if err4 != nil && !IsNotFound(err4) {
		return nil, err4
	}
	if err6 != nil && !IsNotFound(err6) {
		return nil, err6
	}
	if err4 != nil {
		return nil, err4
	}
	return nil, &Error{Name: dns.Fqdn(strings.ToLower(name)), Type: "A", Kind: KindNoData}
}

// LookupTXT returns the TXT records of name, the strings of each record
// concatenated (as net.Resolver does).
func (c *Client) LookupTXT(ctx context.Context, name string) ([]string, error) {
	rrs, err := c.Query(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		out = append(out, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	return out, nil
}

// LookupMX returns the MX records of name sorted by preference.
func (c *Client) LookupMX(ctx context.Context, name string) ([]MX, error) {
	rrs, err := c.Query(ctx, name, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	out := make([]MX, 0, len(rrs))
	for _, rr := range rrs {
		mx := rr.(*dns.MX)
		out = append(out, MX{Host: strings.TrimSuffix(strings.ToLower(mx.Mx), "."), Pref: mx.Preference})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Pref < out[j].Pref })
	return out, nil
}

// ReverseName returns the DNSBL query name of ip under zone: reversed
// octets for IPv4 (2.0.0.127.zone), reversed nibbles for IPv6.
func ReverseName(ip netip.Addr, zone string) string {
	ip = ip.Unmap()
	zone = strings.TrimSuffix(zone, ".")
	var b strings.Builder
	if ip.Is4() {
		a := ip.As4()
		fmt.Fprintf(&b, "%d.%d.%d.%d.", a[3], a[2], a[1], a[0])
	} else {
		a := ip.As16()
		const hex = "0123456789abcdef"
		for i := 15; i >= 0; i-- {
			b.WriteByte(hex[a[i]&0xf])
			b.WriteByte('.')
			b.WriteByte(hex[a[i]>>4])
			b.WriteByte('.')
		}
	}
	b.WriteString(zone)
	b.WriteByte('.')
	return b.String()
}

// isLocalhost reports whether name is "localhost" or a name under it
// (RFC 6761 6.3).
func isLocalhost(name string) bool {
	n := strings.TrimSuffix(strings.ToLower(name), ".")
	return n == "localhost" || strings.HasSuffix(n, ".localhost")
}
