package botnet

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"moat.dev/moat/internal/check/dnsbl"
	"moat.dev/moat/internal/check/helo"
	"moat.dev/moat/internal/check/rdns"
	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/p0f"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/testutil/dnstest"
	"moat.dev/moat/internal/testutil/dnsxtest"
	"moat.dev/moat/internal/verdict"
)

func TestDynamicPatterns(t *testing.T) {
	cases := []struct {
		ptr, ip string
		dyn     bool
	}{
		{"81-2-3-4.dsl.isp.example", "81.2.3.4", true},
		{"host-81-2-3-4.isp.example", "81.2.3.4", true},
		{"4.3.2.81.in.isp.example", "81.2.3.4", true},
		{"081002003004.isp.example", "81.2.3.4", true},
		{"c0a80101.cust.isp.example", "192.168.1.1", true},
		{"ppp-81.isp.example", "81.2.3.4", true},
		{"dynamic-pool7.isp.example", "81.2.3.4", true},
		{"cpe-1a2b.res.isp.co.uk", "81.2.3.4", true},
		{"dhcp123.isp.example", "81.2.3.4", true},
		{"adsl.isp.example", "81.2.3.4", true},
		{"user12.broadband.isp.example", "81.2.3.4", true},
		{"2001-db8-0-0-0-0-0-1.v6.isp.example", "2001:db8::1", true},
		{"0-0-0-1.v6.isp.example", "2001:db8::1", true},
		// Not dynamic.
		{"mail.example.com", "81.2.3.4", false},
		{"mx1-out.bigmail.example", "81.2.3.4", false},
		{"static-81-2-3-4.isp.example", "81.2.3.4", false},
		{"smtp-81-2-3-4.isp.example", "81.2.3.4", false},
		{"home.pl", "81.2.3.4", false},                   // the registered domain is not host naming
		{"srv1.dsl-provider.example", "81.2.3.4", false}, // "srv" marks a server
		{"a181-2-3-45.isp.example", "81.2.3.4", false},   // digits glued on: a different address
		{"web.example.com", "81.2.3.4", false},
	}
	for _, c := range cases {
		got, why := Dynamic(c.ptr, netip.MustParseAddr(c.ip))
		if got != c.dyn {
			t.Errorf("Dynamic(%s, %s) = %v (%s), want %v", c.ptr, c.ip, got, why, c.dyn)
		}
	}
}

func requireP0f(t testing.TB) {
	if _, err := os.Stat("/etc/p0f/p0f.fp"); err != nil {
		if os.Getenv("MOAT_REQUIRE_TOOLS") == "1" {
			t.Fatal("/etc/p0f/p0f.fp missing")
		}
		t.Skip("/etc/p0f/p0f.fp not installed")
	}
}

// windowsSYN is a Windows 7/8 SYN (8192,8:mss,nop,ws,nop,nop,sok:df,id+).
func windowsSYN() []byte {
	b := make([]byte, 52)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], 52)
	binary.BigEndian.PutUint16(b[4:], 999)
	b[6], b[8], b[9] = 0x40, 113, 6
	tcp := b[20:]
	binary.BigEndian.PutUint32(tcp[4:], 1)
	tcp[12], tcp[13] = 0x80, 0x02
	binary.BigEndian.PutUint16(tcp[14:], 8192)
	copy(tcp[20:], []byte{2, 4, 5, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2})
	return b
}

func resolver(t testing.TB, srv *dnstest.Server) *dnsx.Client {
	return dnsxtest.Client(t, srv.Addr, func(c *dnsx.Config) { c.Timeout = time.Second })
}

func TestBotnet(t *testing.T) {
	requireP0f(t)
	srv := dnstest.Start(t,
		"9.0.0.127.in-addr.arpa. 300 IN PTR 127-0-0-9.dyn.isp.example.",
		"10.0.0.127.in-addr.arpa. 300 IN PTR mail.good.example.",
	)
	r := resolver(t, srv)
	chk, err := New(DefaultConfig(), Deps{Resolver: r})
	if err != nil {
		t.Fatal(err)
	}
	pol := policy.Default()
	run := pipeline.NewRunner([]pipeline.Check{chk}, func(string) *policy.Policy { return pol }, 5*time.Second)
	cases := []struct {
		name     string
		ip       string
		pregreet bool
		syn      []byte
		score    float64
	}{
		{"clean server", "127.0.0.10", false, nil, 0},
		{"pregreet", "127.0.0.10", true, nil, 6},
		{"windows server", "127.0.0.10", false, windowsSYN(), 1.5},
		{"dynamic ptr", "127.0.0.9", false, nil, 2},
		{"windows on dynamic ptr", "127.0.0.9", false, windowsSYN(), 1.5 + 2 + 3},
		{"windows without ptr", "127.0.0.11", false, windowsSYN(), 1.5 + 3},
		{"garbage syn is unknown", "127.0.0.10", false, []byte{0x45, 1, 2}, 0},
	}
	for _, tc := range cases {
		c := &pipeline.Conn{IP: netip.MustParseAddr(tc.ip), Pregreet: tc.pregreet, SYN: tc.syn, Report: &verdict.Report{}}
		d := run.Conn(context.Background(), c)
		if d.Score != tc.score || d.Action != verdict.NoOpinion {
			t.Errorf("%s: score %v action %v (%v), want %v", tc.name, d.Score, d.Action, d.Counted, tc.score)
		}
	}
	// Pregreet enforcement.
	cfg := DefaultConfig()
	cfg.RejectPregreet = true
	strict, _ := New(cfg, Deps{Resolver: r})
	res := strict.CheckConn(context.Background(), &pipeline.Conn{IP: netip.MustParseAddr("127.0.0.10"), Pregreet: true, Report: &verdict.Report{}})
	if res.Hard == nil || res.Hard.Reply.Code != 554 {
		t.Fatalf("pregreet not rejected: %+v", res)
	}
}

func TestMissingSignaturesDegrade(t *testing.T) {
	cfg := DefaultConfig()
	cfg.P0fFP = t.TempDir() + "/missing.fp"
	chk, err := New(cfg, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if m := chk.OS(windowsSYN()); m != nil {
		t.Fatalf("guessed %s without signatures", m.Label)
	}
	bad := t.TempDir() + "/bad.fp"
	os.WriteFile(bad, []byte("[tcp:request]\nsig = nonsense\n"), 0o644)
	cfg.P0fFP = bad
	if _, err := New(cfg, Deps{}); err == nil {
		t.Fatal("malformed signature file accepted")
	}
}

// A real SYN from a loopback connection is Linux: no Windows score.
func TestRealSYNIsLinux(t *testing.T) {
	requireP0f(t)
	lc := net.ListenConfig{Control: p0f.SaveSYNControl}
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := net.Dial("tcp4", ln.Addr().String()); err == nil {
			c.Close()
		}
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	syn, err := p0f.SavedSYN(c.(*net.TCPConn))
	if err != nil {
		t.Fatal(err)
	}
	chk, _ := New(DefaultConfig(), Deps{})
	m := chk.OS(syn)
	if m == nil || m.Label.Name != "Linux" {
		t.Fatalf("loopback SYN: %+v", m)
	}
	res := chk.CheckConn(context.Background(), &pipeline.Conn{IP: netip.MustParseAddr("127.0.0.1"), SYN: syn, Report: &verdict.Report{}})
	if len(res.Symbols) != 0 {
		t.Fatalf("Linux client scored: %v", res.Symbols)
	}
}

// BenchmarkConnStage measures the connection-stage cost of rdns + dnsbl +
// helo + botnet with a warm DNS cache, through the Runner.
func BenchmarkConnStage(b *testing.B) {
	requireP0f(b)
	srv := dnstest.Start(b,
		"10.0.0.127.in-addr.arpa. 3600 IN PTR mail.good.example.",
		"mail.good.example. 3600 IN A 127.0.0.10",
		"2.0.0.127.zen.example. 3600 IN A 127.0.0.2",
	)
	srv.Add(b, "10.0.0.127.zen.example. 3600 IN TXT \"unused\"") // NODATA for A: not listed, cached
	r := resolver(b, srv)
	rd, _ := rdns.New(rdns.DefaultConfig(), rdns.Deps{Resolver: r})
	dcfg := dnsbl.DefaultConfig()
	dcfg.Zones = []dnsbl.Zone{{Zone: "zen.example", Weight: 4}}
	bl, _ := dnsbl.New(dcfg, dnsbl.Deps{Resolver: r})
	he, _ := helo.New(helo.DefaultConfig(), helo.Deps{Resolver: r})
	bo, _ := New(DefaultConfig(), Deps{Resolver: r})
	pol := policy.Default()
	run := pipeline.NewRunner([]pipeline.Check{rd, bl, he, bo}, func(string) *policy.Policy { return pol }, 5*time.Second)
	ip := netip.MustParseAddr("127.0.0.10")
	syn := windowsSYN()
	ctx := context.Background()
	one := func() policy.Decision {
		c := &pipeline.Conn{IP: ip, Helo: "mail.good.example", SYN: syn, Report: &verdict.Report{}}
		run.Conn(ctx, c)
		return run.Helo(ctx, c)
	}
	if d := one(); d.Score != 1.5 {
		b.Fatalf("warm-up decision %+v", d)
	}
	q := srv.QueryCount()
	b.ReportAllocs()
	for b.Loop() {
		one()
	}
	if srv.QueryCount() != q {
		b.Fatalf("cache not warm: %d more queries", srv.QueryCount()-q)
	}
}
