package dnsx

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"blitiri.com.ar/go/spf"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"moat.dev/moat/internal/testutil/dnstest"
)

func newClient(t testing.TB, addr string, mod func(*Config)) *Client {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Resolvers = []string{addr}
	cfg.Timeout = 300 * time.Millisecond
	cfg.Attempts = 2
	cfg.MinTTL = 0
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLookups(t *testing.T) {
	srv := dnstest.Start(t,
		"2.0.0.127.in-addr.arpa. 300 IN PTR Mail.Example.COM.",
		"mail.example.com. 300 IN A 127.0.0.2",
		"mail.example.com. 300 IN AAAA ::2",
		"alias.example.com. 300 IN CNAME mail.example.com.",
		"example.com. 300 IN MX 20 b.example.com.",
		"example.com. 300 IN MX 10 a.example.com.",
		`example.com. 300 IN TXT "v=spf1 " "-all"`,
	)
	rev, _ := dns.ReverseAddr("2001:db8::1")
	srv.Add(t, rev+" 300 IN PTR v6.example.com.")
	c := newClient(t, srv.Addr, nil)
	ctx := context.Background()

	ptr, err := c.LookupPTR(ctx, netip.MustParseAddr("127.0.0.2"))
	if err != nil || len(ptr) != 1 || ptr[0] != "mail.example.com" {
		t.Fatalf("PTR = %v, %v", ptr, err)
	}
	ptr, err = c.LookupPTR(ctx, netip.MustParseAddr("2001:db8::1"))
	if err != nil || len(ptr) != 1 || ptr[0] != "v6.example.com" {
		t.Fatalf("PTR v6 = %v, %v", ptr, err)
	}
	ips, err := c.LookupIP(ctx, "mail.example.com")
	if err != nil || len(ips) != 2 {
		t.Fatalf("IP = %v, %v", ips, err)
	}
	a, err := c.LookupA(ctx, "alias.example.com")
	if err != nil || len(a) != 1 || a[0] != netip.MustParseAddr("127.0.0.2") {
		t.Fatalf("A via CNAME = %v, %v", a, err)
	}
	mx, err := c.LookupMX(ctx, "example.com")
	if err != nil || len(mx) != 2 || mx[0].Host != "a.example.com" || mx[1].Pref != 20 {
		t.Fatalf("MX = %v, %v", mx, err)
	}
	txt, err := c.LookupTXT(ctx, "example.com")
	if err != nil || len(txt) != 1 || txt[0] != "v=spf1 -all" {
		t.Fatalf("TXT = %q, %v", txt, err)
	}
	// NXDOMAIN and NODATA are "not found".
	_, err = c.LookupA(ctx, "nope.example.com")
	if !IsNotFound(err) {
		t.Fatalf("NXDOMAIN: want IsNotFound, got %v", err)
	}
	_, err = c.LookupTXT(ctx, "mail.example.com")
	if !IsNotFound(err) {
		t.Fatalf("NODATA: want IsNotFound, got %v", err)
	}
	_, err = c.LookupIP(ctx, "nope.example.com")
	if !IsNotFound(err) {
		t.Fatalf("LookupIP NXDOMAIN: want IsNotFound, got %v", err)
	}
}

func TestFailuresAreNotNotFound(t *testing.T) {
	srv := dnstest.Start(t, "slow.example.com. 300 IN A 127.0.0.2", "bad.example.com. 300 IN A 127.0.0.2")
	srv.Delay("slow.example.com", 2*time.Second)
	srv.Fail("bad.example.com", dns.RcodeServerFailure)
	srv.Fail("refused.example.com", dns.RcodeRefused)
	c := newClient(t, srv.Addr, func(c *Config) { c.Timeout = 250 * time.Millisecond })
	ctx := context.Background()
	for name, kind := range map[string]Kind{"slow.example.com": KindTimeout, "bad.example.com": KindServFail, "refused.example.com": KindRefused} {
		_, err := c.LookupA(ctx, name)
		if err == nil || IsNotFound(err) {
			t.Fatalf("%s: want failure, got %v", name, err)
		}
		if e := err.(*Error); e.Kind != kind {
			t.Fatalf("%s: kind %v, want %v", name, e.Kind, kind)
		}
	}
	// Failures are not cached: once the server recovers the answer is seen.
	srv.Fail("bad.example.com", 0)
	if _, err := c.LookupA(ctx, "bad.example.com"); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	if got := counterValue(c.failures.WithLabelValues("servfail")); got != 1 {
		t.Fatalf("servfail metric = %v", got)
	}
}

func TestCacheHonoursTTL(t *testing.T) {
	srv := dnstest.Start(t, "ttl.example.com. 1 IN A 127.0.0.2", "long.example.com. 3600 IN A 127.0.0.9")
	c := newClient(t, srv.Addr, func(c *Config) { c.NegativeTTL = 30 * time.Second })
	now := time.Unix(1_700_000_000, 0)
	var mu sync.Mutex
	c.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	ctx := context.Background()
	get := func(name string) string {
		t.Helper()
		a, err := c.LookupA(ctx, name)
		if err != nil {
			if IsNotFound(err) {
				return "NX"
			}
			t.Fatal(err)
		}
		return a[0].String()
	}
	if got := get("ttl.example.com"); got != "127.0.0.2" {
		t.Fatal(got)
	}
	srv.Remove("ttl.example.com")
	srv.Add(t, "ttl.example.com. 1 IN A 127.0.0.3")
	q := srv.QueryCount()
	if got := get("ttl.example.com"); got != "127.0.0.2" {
		t.Fatalf("before expiry got %s, want cached 127.0.0.2", got)
	}
	if srv.QueryCount() != q {
		t.Fatal("cache hit still queried the server")
	}
	advance(1001 * time.Millisecond)
	if got := get("ttl.example.com"); got != "127.0.0.3" {
		t.Fatalf("after expiry got %s, want 127.0.0.3", got)
	}
	// Negative caching, capped by negative_ttl.
	if got := get("new.example.com"); got != "NX" {
		t.Fatal(got)
	}
	srv.Add(t, "new.example.com. 60 IN A 127.0.0.4")
	advance(29 * time.Second)
	if got := get("new.example.com"); got != "NX" {
		t.Fatalf("negative answer not cached: %s", got)
	}
	advance(2 * time.Second)
	if got := get("new.example.com"); got != "127.0.0.4" {
		t.Fatalf("negative answer cached too long: %s", got)
	}
	// max_ttl clamps.
	c.cfg.MaxTTL = time.Minute
	get("long.example.com")
	srv.Remove("long.example.com")
	advance(61 * time.Second)
	if got := get("long.example.com"); got != "NX" {
		t.Fatalf("max_ttl not applied: %s", got)
	}
	if counterValue(c.hits) < 2 {
		t.Fatalf("cache hits metric = %v", counterValue(c.hits))
	}
}

func TestCacheBounded(t *testing.T) {
	srv := dnstest.Start(t)
	c := newClient(t, srv.Addr, func(c *Config) { c.CacheSize = 3 })
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		c.LookupA(context.Background(), n+".example.com")
	}
	if n := c.cache.len(); n != 3 {
		t.Fatalf("cache holds %d entries, want 3", n)
	}
}

func TestSingleflight(t *testing.T) {
	srv := dnstest.Start(t, "sf.example.com. 300 IN A 127.0.0.2")
	srv.Delay("sf.example.com", 150*time.Millisecond)
	c := newClient(t, srv.Addr, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.LookupA(context.Background(), "sf.example.com")
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if q := srv.QueryCount(); q != 1 {
		t.Fatalf("server saw %d queries, want 1", q)
	}
}

// A caller whose context ends gets a timeout error, not an answer.
func TestContextCancel(t *testing.T) {
	srv := dnstest.Start(t, "slow.example.com. 300 IN A 127.0.0.2")
	srv.Delay("slow.example.com", 500*time.Millisecond)
	c := newClient(t, srv.Addr, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := c.LookupA(ctx, "slow.example.com")
	if !IsTimeout(err) {
		t.Fatalf("want timeout, got %v", err)
	}
}

// A truncated UDP answer is retried over TCP.
func TestTruncationFallsBackToTCP(t *testing.T) {
	pc, ln := dnstest.ListenPair(t)
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if _, udp := w.LocalAddr().(*net.UDPAddr); udp {
			m.Truncated = true
		} else {
			rr, _ := dns.NewRR("big.example.com. 60 IN TXT \"over tcp\"")
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})
	u := &dns.Server{PacketConn: pc, Handler: h}
	tc := &dns.Server{Listener: ln, Handler: h}
	go u.ActivateAndServe()
	go tc.ActivateAndServe()
	t.Cleanup(func() { u.Shutdown(); tc.Shutdown() })
	c := newClient(t, pc.LocalAddr().String(), nil)
	txt, err := c.LookupTXT(context.Background(), "big.example.com")
	if err != nil || len(txt) != 1 || txt[0] != "over tcp" {
		t.Fatalf("TXT = %v, %v", txt, err)
	}
}

func TestReverseName(t *testing.T) {
	if got := ReverseName(netip.MustParseAddr("1.2.3.4"), "zen.spamhaus.org"); got != "4.3.2.1.zen.spamhaus.org." {
		t.Fatal(got)
	}
	got := ReverseName(netip.MustParseAddr("2001:db8::1"), "zone.example.")
	want := "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zone.example."
	if got != want {
		t.Fatalf("got %s want %s", got, want)
	}
	if got := ReverseName(netip.MustParseAddr("::ffff:1.2.3.4"), "z"); got != "4.3.2.1.z." {
		t.Fatal(got)
	}
}

// The SPF adapter works with the spf library (not found vs temporary).
func TestSPFResolver(t *testing.T) {
	srv := dnstest.Start(t,
		`pass.example. 300 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"`,
		`inc.example. 300 IN TXT "v=spf1 include:pass.example -all"`,
		`broken.example. 300 IN TXT "v=spf1 include:down.example -all"`,
	)
	srv.Fail("down.example", dns.RcodeServerFailure)
	c := newClient(t, srv.Addr, func(c *Config) { c.Timeout = 100 * time.Millisecond })
	r := SPFResolver{R: c}
	ip := net.ParseIP("127.0.0.5")
	for dom, want := range map[string]spf.Result{"pass.example": spf.Pass, "inc.example": spf.Pass, "broken.example": spf.TempError, "none.example": spf.None} {
		got, err := spf.CheckHostWithSender(ip, "helo.example", "a@"+dom, spf.WithResolver(r), spf.WithContext(context.Background()))
		if got != want {
			t.Fatalf("%s: %v (%v), want %v", dom, got, err, want)
		}
	}
}

func TestValidate(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.Resolvers = []string{"not an address"}
	if err := cfg.Validate(); err == nil {
		t.Fatal("bad resolver accepted")
	}
	cfg = DefaultConfig()
	cfg.Attempts = 0
	if err := cfg.Validate(); err == nil {
		t.Fatal("attempts 0 accepted")
	}
}

func BenchmarkCachedLookup(b *testing.B) {
	srv := dnstest.Start(b, "b.example.com. 3600 IN A 127.0.0.2")
	c := newClient(b, srv.Addr, nil)
	ctx := context.Background()
	c.LookupA(ctx, "b.example.com")
	b.ReportAllocs()
	for b.Loop() {
		c.LookupA(ctx, "b.example.com")
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
