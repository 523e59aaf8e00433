package milter

import (
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ClientCount is a client address and its number of bypass messages.
type ClientCount struct {
	IP    string `json:"ip"`
	Count uint64 `json:"count"`
}

// DomainStats are the bypass statistics of one domain.
type DomainStats struct {
	Domain     string        `json:"domain"`
	Count      uint64        `json:"count"`
	LastSeen   time.Time     `json:"last_seen"`
	TopClients []ClientCount `json:"top_clients"`
}

// BypassStats keeps per-domain bypass statistics ("continuous bypass
// monitoring"). Stats is the in-memory implementation; a persistent one can
// replace it.
type BypassStats interface {
	Record(r Report)
	Domain(domain string) (DomainStats, bool)
	Domains() []DomainStats
}

// maxClients bounds the client addresses tracked per domain; beyond it the
// least frequent one is replaced (approximate top-k, "space saving").
const maxClients = 1000

// Stats is the in-memory BypassStats, exported as
// moat_bypass_messages_total{domain}.
type Stats struct {
	mu      sync.Mutex
	domains map[string]*domStats
	total   *prometheus.CounterVec
}

type domStats struct {
	count    uint64
	lastSeen time.Time
	clients  map[string]uint64
}

var _ BypassStats = (*Stats)(nil)

// NewStats registers moat_bypass_messages_total on reg.
func NewStats(reg prometheus.Registerer) (*Stats, error) {
	s := &Stats{domains: map[string]*domStats{}, total: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moat_bypass_messages_total",
		Help: "Messages that reached a customer's backend without passing Moat, as reported by moat milter.",
	}, []string{"domain"})}
	if err := reg.Register(s.total); err != nil {
		return nil, err
	}
	return s, nil
}

// Record adds a report's events.
func (s *Stats) Record(r Report) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.domains[r.Domain]
	if d == nil {
		d = &domStats{clients: map[string]uint64{}}
		s.domains[r.Domain] = d
	}
	for _, e := range r.Events {
		d.count++
		if e.Time.After(d.lastSeen) {
			d.lastSeen = e.Time
		}
		if _, ok := d.clients[e.ClientIP]; !ok && len(d.clients) >= maxClients {
			minIP, minN := "", ^uint64(0)
			for ip, n := range d.clients {
				if n < minN || (n == minN && ip < minIP) {
					minIP, minN = ip, n
				}
			}
			delete(d.clients, minIP)
			d.clients[e.ClientIP] = minN
		}
		d.clients[e.ClientIP]++
	}
	s.total.WithLabelValues(r.Domain).Add(float64(len(r.Events)))
}

func (d *domStats) snapshot(name string) DomainStats {
	out := DomainStats{Domain: name, Count: d.count, LastSeen: d.lastSeen}
	for ip, n := range d.clients {
		out.TopClients = append(out.TopClients, ClientCount{ip, n})
	}
	sort.Slice(out.TopClients, func(i, j int) bool {
		a, b := out.TopClients[i], out.TopClients[j]
		return a.Count > b.Count || (a.Count == b.Count && a.IP < b.IP)
	})
	if len(out.TopClients) > 10 {
		out.TopClients = out.TopClients[:10]
	}
	return out
}

// Domain returns one domain's statistics (top 10 clients).
func (s *Stats) Domain(domain string) (DomainStats, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.domains[domain]
	if !ok {
		return DomainStats{}, false
	}
	return d.snapshot(domain), true
}

// Domains returns all domains' statistics, most bypassed first.
func (s *Stats) Domains() []DomainStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]DomainStats, 0, len(s.domains))
	for n, d := range s.domains {
		out = append(out, d.snapshot(n))
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Count > out[j].Count || (out[i].Count == out[j].Count && out[i].Domain < out[j].Domain)
	})
	return out
}
