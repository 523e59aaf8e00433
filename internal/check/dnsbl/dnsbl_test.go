package dnsbl

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/testutil/dnstest"
	"moat.dev/moat/internal/testutil/dnsxtest"
	"moat.dev/moat/internal/verdict"
)

// Zone data: 127.0.0.2 is every list's test entry.
//
//	bl.example   (codes as Spamhaus): 127.0.0.20 SBL (4), 127.0.0.21 PBL (2)
//	bl2.example  (flat weight 1.5):   127.0.0.21
//	wl.example   (allow, -5):         127.0.0.22
func setup(t *testing.T) (*dnstest.Server, *dnsx.Client) {
	srv := dnstest.Start(t,
		"2.0.0.127.bl.example. 60 IN A 127.0.0.2",
		"20.0.0.127.bl.example. 60 IN A 127.0.0.2",
		"21.0.0.127.bl.example. 60 IN A 127.0.0.10",
		"2.0.0.127.bl2.example. 60 IN A 127.0.0.2",
		"21.0.0.127.bl2.example. 60 IN A 127.0.0.2",
		"2.0.0.127.wl.example. 60 IN A 127.0.0.2",
		"22.0.0.127.wl.example. 60 IN A 127.0.0.2",
	)
	// No cache: these tests change zone data on the fly.
	return srv, dnsxtest.Client(t, srv.Addr, func(c *dnsx.Config) { c.Timeout, c.Attempts, c.CacheSize = 400*time.Millisecond, 2, 0 })
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Timeout = 1500 * time.Millisecond
	cfg.Zones = []Zone{
		{Zone: "bl.example", Codes: map[string]float64{"127.0.0.2": 4, "127.0.0.10-127.0.0.11": 2},
			Symbols:      map[string]string{"127.0.0.2": "DNSBL_TEST_SBL", "127.0.0.10-127.0.0.11": "DNSBL_TEST_PBL"},
			RefusedCodes: []string{"127.255.255.252-127.255.255.255"}},
		{Zone: "bl2.example", Weight: 1.5},
		{Zone: "wl.example", Weight: -5, Allow: true},
	}
	return cfg
}

func conn(ip string) *pipeline.Conn {
	return &pipeline.Conn{IP: netip.MustParseAddr(ip), Report: &verdict.Report{}}
}

func TestDNSBLPolicy(t *testing.T) {
	_, r := setup(t)
	cases := []struct {
		name   string
		ip     string
		layer  policy.Layer
		action verdict.Action
		score  float64
		syms   string
	}{
		{"clean", "127.0.0.30", policy.Layer{}, verdict.NoOpinion, 0, ""},
		{"sbl rejects", "127.0.0.20", policy.Layer{}, verdict.Reject, 4, "DNSBL_TEST_SBL"},
		{"sbl flag mode scores", "127.0.0.20", policy.Layer{Mode: policy.ModeFlag}, verdict.NoOpinion, 4, "DNSBL_TEST_SBL"},
		{"sbl observe changes nothing", "127.0.0.20", policy.Layer{Observe: true}, verdict.NoOpinion, 0, ""},
		{"sbl tempfail mode", "127.0.0.20", policy.Layer{Mode: policy.ModeTempfail}, verdict.TempFail, 4, "DNSBL_TEST_SBL"},
		// PBL 2 + bl2 1.5 = 3.5 >= 3: the sum rejects.
		{"sum rejects", "127.0.0.21", policy.Layer{}, verdict.Reject, 3.5, "DNSBL_TEST_PBL DNSBL_BL2_EXAMPLE"},
		{"allowlisted", "127.0.0.22", policy.Layer{}, verdict.NoOpinion, -5, "DNSWL_WL_EXAMPLE"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			chk, err := New(testConfig(), Deps{Resolver: r})
			if err != nil {
				t.Fatal(err)
			}
			pol := policy.Default()
			pol.Layers["dnsbl"] = tc.layer
			run := pipeline.NewRunner([]pipeline.Check{chk}, func(string) *policy.Policy { return pol }, 5*time.Second)
			d := run.Conn(context.Background(), conn(tc.ip))
			if d.Action != tc.action || d.Score != tc.score {
				t.Fatalf("action %v score %v (%s), want %v %v", d.Action, d.Score, d.Reason, tc.action, tc.score)
			}
			var names []string
			for _, s := range d.Counted {
				names = append(names, s.Name)
			}
			if strings.Join(names, " ") != tc.syms {
				t.Fatalf("symbols %v, want %s", names, tc.syms)
			}
			if tc.action == verdict.Reject {
				if d.Reply.Code != 554 || d.Reply.Enhanced != [3]int{5, 7, 1} || !strings.Contains(d.Reply.Text, "client ["+tc.ip+"] blocked using bl") {
					t.Fatalf("reply %v", d.Reply)
				}
				if strings.Contains(d.Reply.Text, "wl.example") {
					t.Fatalf("allow list named in reply %v", d.Reply)
				}
			}
		})
	}
}

// A timing-out or failing zone is an error (tempfail by default), never a
// listing.
func TestDNSFailureIsNotListed(t *testing.T) {
	srv, r := setup(t)
	srv.Delay("40.0.0.127.bl.example", 3*time.Second)
	srv.Fail("41.0.0.127.bl2.example", dns.RcodeServerFailure)
	for _, ip := range []string{"127.0.0.40", "127.0.0.41"} {
		chk, _ := New(testConfig(), Deps{Resolver: r})
		pol := policy.Default()
		run := pipeline.NewRunner([]pipeline.Check{chk}, func(string) *policy.Policy { return pol }, 5*time.Second)
		d := run.Conn(context.Background(), conn(ip))
		if d.Action != verdict.TempFail || d.Reply.Code != 451 || d.Score != 0 {
			t.Fatalf("%s: %v %v score %v (%s), want tempfail, no score", ip, d.Action, d.Reply, d.Score, d.Reason)
		}
		pol.Layers["dnsbl"] = policy.Layer{OnError: "ignore"}
		c := conn(ip)
		if d := run.Conn(context.Background(), c); d.Action != verdict.NoOpinion || d.Score != 0 {
			t.Fatalf("%s on_error=ignore: %v score %v", ip, d.Action, d.Score)
		}
	}
	// A listing in another zone still decides despite the failing one.
	srv.Delay("20.0.0.127.bl2.example", 3*time.Second)
	chk, _ := New(testConfig(), Deps{Resolver: r})
	res := chk.CheckConn(context.Background(), conn("127.0.0.20"))
	if res.Hard == nil || res.Hard.Action != verdict.Reject {
		t.Fatalf("listed client with one zone timing out: %+v", res)
	}
}

func gauge(t *testing.T, g *prometheus.GaugeVec, zone string) float64 {
	var m dto.Metric
	if err := g.WithLabelValues(zone).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

func TestSelfTest(t *testing.T) {
	srv, r := setup(t)
	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	chk, err := New(testConfig(), Deps{Resolver: r, Metrics: reg, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if down := chk.SelfTest(ctx); len(down) != 0 {
		t.Fatalf("healthy zones down: %v", down)
	}
	// bl.example starts answering "open resolver / refused".
	srv.Remove("2.0.0.127.bl.example")
	srv.Add(t, "2.0.0.127.bl.example. 60 IN A 127.255.255.254")
	if down := chk.SelfTest(ctx); len(down) != 1 || down[0] != "bl.example" {
		t.Fatalf("down = %v, want [bl.example]", down)
	}
	if chk.ZoneUp("bl.example") || gauge(t, chk.up, "bl.example") != 0 || gauge(t, chk.up, "bl2.example") != 1 {
		t.Fatal("zone state / gauge not updated")
	}
	if !strings.Contains(logs.String(), "ALERT dnsbl zone disabled") {
		t.Fatalf("no alert logged: %s", logs.String())
	}
	// Disabled: the SBL-listed client is not rejected (fail open for that zone).
	res := chk.CheckConn(ctx, conn("127.0.0.20"))
	if res.Hard != nil || len(res.Symbols) != 0 || res.Err != nil {
		t.Fatalf("disabled zone still used: %+v", res)
	}
	// NXDOMAIN for the test entry also disables; a timeout too.
	srv.Remove("2.0.0.127.bl2.example")
	srv.Delay("2.0.0.127.wl.example", 3*time.Second)
	if down := chk.SelfTest(ctx); len(down) != 3 {
		t.Fatalf("down = %v, want all three", down)
	}
	// Recovery re-enables.
	srv.Remove("2.0.0.127.bl.example")
	srv.Add(t, "2.0.0.127.bl.example. 60 IN A 127.0.0.2")
	srv.Add(t, "2.0.0.127.bl2.example. 60 IN A 127.0.0.2")
	srv.Delay("2.0.0.127.wl.example", 0)
	if down := chk.SelfTest(ctx); len(down) != 0 {
		t.Fatalf("down after recovery = %v", down)
	}
	if gauge(t, chk.up, "bl.example") != 1 || !strings.Contains(logs.String(), "re-enabled") {
		t.Fatal("not re-enabled")
	}
	c := conn("127.0.0.20")
	if res := chk.CheckConn(ctx, c); res.Hard == nil {
		t.Fatalf("re-enabled zone not used: %+v", res)
	}
}

// A refused code in a real lookup never counts and triggers a self-test
// that disables the zone.
func TestRefusedCodeInLookup(t *testing.T) {
	srv, r := setup(t)
	chk, _ := New(testConfig(), Deps{Resolver: r})
	srv.Add(t, "50.0.0.127.bl.example. 60 IN A 127.255.255.252")
	srv.Remove("2.0.0.127.bl.example")
	srv.Add(t, "2.0.0.127.bl.example. 60 IN A 127.255.255.252")
	res := chk.CheckConn(context.Background(), conn("127.0.0.50"))
	if res.Hard != nil || len(res.Symbols) != 0 {
		t.Fatalf("refused code counted: %+v", res)
	}
	// The triggered self-test runs in the background; wait for its outcome.
	deadline := time.Now().Add(5 * time.Second)
	for chk.ZoneUp("bl.example") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if chk.ZoneUp("bl.example") {
		t.Fatal("refused code did not disable the zone")
	}
}

func TestIPv6Query(t *testing.T) {
	srv, r := setup(t)
	ip := netip.MustParseAddr("2001:db8::25")
	srv.Add(t, dnsx.ReverseName(ip, "bl.example")+" 60 IN A 127.0.0.2")
	chk, _ := New(testConfig(), Deps{Resolver: r})
	res := chk.CheckConn(context.Background(), &pipeline.Conn{IP: ip, Report: &verdict.Report{}})
	if res.Hard == nil || !strings.Contains(res.Hard.Reply.Text, "[2001:db8::25]") {
		t.Fatalf("IPv6 listing not found: %+v", res)
	}
}

func TestValidate(t *testing.T) {
	for _, z := range []Zone{
		{Zone: "x"},
		{Zone: "bl.example", Codes: map[string]float64{"127.0.0.5-127.0.0.1": 1}},
		{Zone: "bl.example", Codes: map[string]float64{"nope": 1}},
		{Zone: "bl.example", Symbols: map[string]string{"127.0.0.2": "X"}},
		{Zone: "bl.example", TestIP: "x"},
	} {
		cfg := DefaultConfig()
		cfg.Zones = []Zone{z}
		if err := cfg.Validate(); err == nil || !strings.HasPrefix(err.Error(), "zones[0]") {
			t.Errorf("%+v: %v", z, err)
		}
	}
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

// A zone disabled while the resolver was down (startup, outage) is
// re-tested by the next client lookup once downRetry has passed, so a
// listed client is not accepted unscored until the next periodic
// self-test.
func TestDownZoneRetestedByLookup(t *testing.T) {
	srv, r := setup(t)
	chk, err := New(testConfig(), Deps{Resolver: r})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, z := range []string{"bl.example", "bl2.example", "wl.example"} {
		srv.Delay("2.0.0.127."+z, 3*time.Second)
	}
	if down := chk.SelfTest(ctx); len(down) != 3 {
		t.Fatalf("down = %v, want all three (resolver timing out)", down)
	}
	for _, z := range []string{"bl.example", "bl2.example", "wl.example"} {
		srv.Delay("2.0.0.127."+z, 0)
	}
	// Within downRetry the zone stays skipped.
	if lk := chk.Query(ctx, netip.MustParseAddr("127.0.0.20")); len(lk.Listings) != 0 || len(lk.Skipped) != 3 {
		t.Fatalf("zones used before downRetry: %+v", lk)
	}
	chk.downRetry = 50 * time.Millisecond
	time.Sleep(60 * time.Millisecond)
	res := chk.CheckConn(ctx, conn("127.0.0.20"))
	if res.Hard == nil || res.Hard.Reply.Code != 554 {
		t.Fatalf("listed client not rejected after the resolver recovered: %+v", res)
	}
	if !chk.ZoneUp("bl.example") || !chk.ZoneUp("bl2.example") || !chk.ZoneUp("wl.example") {
		t.Fatal("zones not re-enabled by the lookup's re-test")
	}
}
