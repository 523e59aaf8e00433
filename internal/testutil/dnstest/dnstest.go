// Package dnstest runs a real authoritative DNS server (miekg/dns) on a
// loopback port for tests. Records are given in zone-file syntax and may be
// changed while the server runs.
package dnstest

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Server is a running test DNS server answering over UDP and TCP.
type Server struct {
	Addr string // host:port, for the resolver config

	mu      sync.Mutex
	records map[string][]dns.RR // key: lower(fqdn)/type
	names   map[string]bool     // names that exist (for NODATA vs NXDOMAIN)
	delay   map[string]time.Duration
	fail    map[string]int // rcode to answer for a name
	udp     *dns.Server
	tcp     *dns.Server
	Queries int // number of queries answered
}

// Start starts a server with the given records (zone-file lines, fully
// qualified names, e.g. "mail.example.com. 300 IN A 127.0.0.2").
func Start(t testing.TB, records ...string) *Server {
	t.Helper()
	s := &Server{records: map[string][]dns.RR{}, names: map[string]bool{}, delay: map[string]time.Duration{}, fail: map[string]int{}}
	for _, r := range records {
		s.Add(t, r)
	}
	pc, ln := ListenPair(t)
	s.Addr = pc.LocalAddr().String()
	h := dns.HandlerFunc(s.serve)
	s.udp = &dns.Server{PacketConn: pc, Handler: h}
	s.tcp = &dns.Server{Listener: ln, Handler: h}
	go s.udp.ActivateAndServe()
	go s.tcp.ActivateAndServe()
	t.Cleanup(func() { s.udp.Shutdown(); s.tcp.Shutdown() })
	return s
}

// Add adds one record in zone-file syntax.
func (s *Server) Add(t testing.TB, record string) {
	t.Helper()
	rr, err := dns.NewRR(record)
	if err != nil {
		t.Fatalf("dnstest: bad record %q: %v", record, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	name := strings.ToLower(rr.Header().Name)
	key := name + "/" + dns.TypeToString[rr.Header().Rrtype]
	s.records[key] = append(s.records[key], rr)
	s.names[name] = true
}

// Remove deletes every record of name (any type).
func (s *Server) Remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name = strings.ToLower(dns.Fqdn(name))
	for k := range s.records {
		if strings.HasPrefix(k, name+"/") {
			delete(s.records, k)
		}
	}
	delete(s.names, name)
}

// Delay makes answers for name wait d (to provoke client timeouts).
func (s *Server) Delay(name string, d time.Duration) {
	s.mu.Lock()
	s.delay[strings.ToLower(dns.Fqdn(name))] = d
	s.mu.Unlock()
}

// Fail makes the server answer rcode (e.g. dns.RcodeServerFailure) for name;
// rcode 0 clears it.
func (s *Server) Fail(name string, rcode int) {
	s.mu.Lock()
	if rcode == 0 {
		delete(s.fail, strings.ToLower(dns.Fqdn(name)))
	} else {
		s.fail[strings.ToLower(dns.Fqdn(name))] = rcode
	}
	s.mu.Unlock()
}

// QueryCount returns how many queries were answered.
func (s *Server) QueryCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Queries
}

func (s *Server) serve(w dns.ResponseWriter, req *dns.Msg) {
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
	s.mu.Lock()
	s.Queries++
	d := s.delay[name]
	rcode, failing := s.fail[name]
	answers := append([]dns.RR(nil), s.records[name+"/"+dns.TypeToString[q.Qtype]]...)
	if len(answers) == 0 && q.Qtype != dns.TypeCNAME {
		answers = append(answers, s.records[name+"/CNAME"]...)
	}
	exists := s.names[name]
	s.mu.Unlock()
	if d > 0 {
		time.Sleep(d)
	}
	switch {
	case failing:
		m.Rcode = rcode
	case len(answers) > 0:
		m.Answer = answers
	case !exists:
		m.Rcode = dns.RcodeNameError
	}
	w.WriteMsg(m)
}

// ListenPair listens on UDP and TCP at the same loopback port, as a DNS
// server does. The kernel picks a free UDP port, whose TCP twin may be
// taken by another test's connection: then it tries another.
func ListenPair(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	for attempt := 0; ; attempt++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		pc.Close()
		if attempt == 20 {
			t.Fatal(err)
		}
	}
}
