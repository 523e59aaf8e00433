package bench

import (
	"net"
	"strings"

	"github.com/miekg/dns"
)

// dnsServer answers the benchmark's zones on a loopback port, so profiles
// with DNS checks measure Moat, not the internet: the loopback client has a
// forward-confirmed PTR, DNSBL zones answer "not listed" (and list their
// test entry so the self-test passes), SPF is a plain pass.
type dnsServer struct {
	addr string
	srv  *dns.Server
}

func startDNS() (*dnsServer, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &dnsServer{addr: pc.LocalAddr().String()}
	s.srv = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(s.serve)}
	go s.srv.ActivateAndServe()
	return s, nil
}

func (s *dnsServer) close() { s.srv.Shutdown() }

func (s *dnsServer) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: 3600}
	switch {
	case q.Qtype == dns.TypePTR && name == "1.0.0.127.in-addr.arpa.":
		m.Answer = append(m.Answer, &dns.PTR{Hdr: hdr, Ptr: "client.bench.example."})
	case q.Qtype == dns.TypeA && name == "client.bench.example.":
		m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IPv4(127, 0, 0, 1)})
	case q.Qtype == dns.TypeA && strings.HasPrefix(name, "2.0.0.127."):
		m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IPv4(127, 0, 0, 2)}) // DNSBL test entry
	case q.Qtype == dns.TypeTXT && name == "sender.example.":
		m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: []string{"v=spf1 ip4:127.0.0.0/8 -all"}})
	case q.Qtype == dns.TypeMX && (name == "sender.example." || name == "bench.example."):
		m.Answer = append(m.Answer, &dns.MX{Hdr: hdr, Preference: 10, Mx: "mx." + name})
	default:
		if q.Qtype == dns.TypeA || q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeTXT {
			if strings.HasSuffix(name, ".bench.example.") || strings.HasSuffix(name, ".sender.example.") {
				break // NODATA
			}
		}
		m.Rcode = dns.RcodeNameError
	}
	w.WriteMsg(m)
}
