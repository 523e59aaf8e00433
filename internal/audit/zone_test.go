package audit

import (
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"

	"moat.dev/moat/internal/testutil/dnstest"
)

// zoneServer is a small authoritative DNS server for the scenario tests.
// Unlike dnstest it synthesises wildcard records (*.example.test) and
// follows in-zone CNAME chains inside one answer, as real servers do; it
// can answer SERVFAIL for a name or never answer (a timeout).
type zoneServer struct {
	Addr    string
	mu      sync.Mutex
	rrs     map[string][]dns.RR // lower fqdn/type
	names   map[string]bool
	fail    map[string]int
	drop    map[string]bool
	queries map[string]int // lower fqdn/type -> count
}

func startZone(t *testing.T, records ...string) *zoneServer {
	t.Helper()
	z := &zoneServer{rrs: map[string][]dns.RR{}, names: map[string]bool{}, fail: map[string]int{}, drop: map[string]bool{}, queries: map[string]int{}}
	for _, r := range records {
		z.add(t, r)
	}
	pc, ln := dnstest.ListenPair(t)
	z.Addr = pc.LocalAddr().String()
	h := dns.HandlerFunc(z.serve)
	u, tc := &dns.Server{PacketConn: pc, Handler: h}, &dns.Server{Listener: ln, Handler: h}
	go u.ActivateAndServe()
	go tc.ActivateAndServe()
	t.Cleanup(func() { u.Shutdown(); tc.Shutdown() })
	return z
}

func (z *zoneServer) add(t *testing.T, record string) {
	t.Helper()
	rr, err := dns.NewRR(record)
	if err != nil || rr == nil {
		t.Fatalf("bad record %q: %v", record, err)
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	name := strings.ToLower(rr.Header().Name)
	k := name + "/" + dns.TypeToString[rr.Header().Rrtype]
	z.rrs[k] = append(z.rrs[k], rr)
	z.names[name] = true
}

func (z *zoneServer) setFail(name string, rcode int) {
	z.mu.Lock()
	z.fail[strings.ToLower(dns.Fqdn(name))] = rcode
	z.mu.Unlock()
}

// setFailType answers queries of one type for name with rcode.
func (z *zoneServer) setFailType(name string, qtype uint16, rcode int) {
	z.mu.Lock()
	z.fail[strings.ToLower(dns.Fqdn(name))+"/"+dns.TypeToString[qtype]] = rcode
	z.mu.Unlock()
}

func (z *zoneServer) setDrop(name string) {
	z.mu.Lock()
	z.drop[strings.ToLower(dns.Fqdn(name))] = true
	z.mu.Unlock()
}

func (z *zoneServer) count(name string, qtype uint16) int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.queries[strings.ToLower(dns.Fqdn(name))+"/"+dns.TypeToString[qtype]]
}

// lookup returns the records of name/type, synthesising from a wildcard
// of the closest existing ancestor (RFC 4592, simplified).
func (z *zoneServer) lookup(name string, qt uint16) (rrs []dns.RR, exists bool) {
	get := func(owner string) []dns.RR {
		rs := z.rrs[owner+"/"+dns.TypeToString[qt]]
		if len(rs) == 0 && qt != dns.TypeCNAME {
			rs = z.rrs[owner+"/CNAME"]
		}
		return rs
	}
	if z.names[name] {
		return get(name), true
	}
	labels := dns.SplitDomainName(name)
	for i := 1; i < len(labels); i++ {
		parent := dns.Fqdn(strings.Join(labels[i:], "."))
		wild := "*." + parent
		if z.names[wild] {
			var out []dns.RR
			for _, r := range get(wild) {
				c := dns.Copy(r)
				c.Header().Name = name
				out = append(out, c)
			}
			return out, true
		}
		if z.names[parent] {
			break // the closest encloser exists without a wildcard
		}
	}
	return nil, false
}

func (z *zoneServer) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	z.mu.Lock()
	z.queries[name+"/"+dns.TypeToString[q.Qtype]]++
	if z.drop[name] {
		z.mu.Unlock()
		return // no answer at all: the client times out
	}
	rc, ok := z.fail[name]
	if !ok {
		rc, ok = z.fail[name+"/"+dns.TypeToString[q.Qtype]]
	}
	if ok {
		z.mu.Unlock()
		m.Rcode = rc
		w.WriteMsg(m)
		return
	}
	rrs, exists := z.lookup(name, q.Qtype)
	m.Answer = append(m.Answer, rrs...)
	// Follow in-zone CNAMEs like a real server (a few hops).
	cur := name
	for hop := 0; hop < 4 && len(rrs) == 1; hop++ {
		c, ok := rrs[0].(*dns.CNAME)
		if !ok || q.Qtype == dns.TypeCNAME {
			break
		}
		cur = strings.ToLower(c.Target)
		if z.fail[cur] != 0 || z.drop[cur] {
			break
		}
		rrs, _ = z.lookup(cur, q.Qtype)
		m.Answer = append(m.Answer, rrs...)
	}
	z.mu.Unlock()
	if len(m.Answer) == 0 && !exists {
		m.Rcode = dns.RcodeNameError
	}
	w.WriteMsg(m)
}
