package greylist

import (
	"context"
	"database/sql"
	"net/netip"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/testutil/dnstest"
	"moat.dev/moat/internal/testutil/pgtest"
	"moat.dev/moat/internal/verdict"
)

func txn(ip, from string, score float64) *pipeline.Txn {
	c := &pipeline.Conn{IP: netip.MustParseAddr(ip), Report: &verdict.Report{}}
	c.Report.Add(verdict.Result{Check: "dnsbl", Symbols: []verdict.Symbol{{Name: "X", Score: score}}})
	return &pipeline.Txn{Conn: c, From: pipeline.Address{Local: "a", Domain: from}, Report: &verdict.Report{}}
}

func rcpt(addr string) *pipeline.Rcpt {
	return &pipeline.Rcpt{Addr: pipeline.Address{Local: "bob", Domain: "t.example"}, Domain: "t.example", Report: &verdict.Report{}}
}

func run(t *testing.T, chk *Check, tx *pipeline.Txn) policy.Decision {
	pol := policy.Default()
	r := pipeline.NewRunner([]pipeline.Check{chk}, func(string) *policy.Policy { return pol }, 5*time.Second)
	return r.Rcpt(context.Background(), tx, rcpt("bob@t.example"))
}

func testGreylist(t *testing.T, store Store) {
	srv := dnstest.Start(t,
		"1.2.0.127.in-addr.arpa. 300 IN PTR mail-a1.google.com.",
		"mail-a1.google.com. 300 IN A 127.0.2.1",
	)
	rcfg := dnsx.DefaultConfig()
	rcfg.Resolvers = []string{srv.Addr}
	r, _ := dnsx.New(rcfg, nil, nil)
	cfg := DefaultConfig()
	cfg.Enabled = true
	cfg.SkipNetworks = []string{"127.0.9.0/24"}
	chk, err := New(cfg, Deps{Store: store, Resolver: r})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_700_000_000, 0)
	chk.now = func() time.Time { return now }
	grey := func(tx *pipeline.Txn) bool {
		d := run(t, chk, tx)
		if d.Action == verdict.TempFail {
			if d.Reply.Code != 451 || d.Reply.Enhanced != [3]int{4, 7, 1} || d.Reply.Text != "Greylisted, please try again later" {
				t.Fatalf("reply %v", d.Reply)
			}
			return true
		}
		if d.Action != verdict.NoOpinion {
			t.Fatalf("action %v", d.Action)
		}
		return false
	}
	// Below the score threshold: never greylisted.
	if grey(txn("127.0.1.5", "s.example", 1)) {
		t.Fatal("low score greylisted")
	}
	// Suspicious: first attempt greylisted, early retry too, later retry from
	// another address in the same /24 accepted.
	if !grey(txn("127.0.1.5", "s.example", 4)) {
		t.Fatal("first attempt accepted")
	}
	now = now.Add(time.Minute)
	if !grey(txn("127.0.1.5", "s.example", 4)) {
		t.Fatal("retry before delay accepted")
	}
	now = now.Add(5 * time.Minute)
	if grey(txn("127.0.1.77", "s.example", 4)) {
		t.Fatal("retry after delay from the same /24 greylisted")
	}
	// Known good for 35 days.
	now = now.Add(30 * 24 * time.Hour)
	if grey(txn("127.0.1.5", "s.example", 4)) {
		t.Fatal("known-good triplet greylisted")
	}
	// Another network is another triplet.
	if !grey(txn("127.0.3.5", "s.example", 4)) {
		t.Fatal("other network not greylisted")
	}
	// A retry after the window starts over.
	now = now.Add(25 * time.Hour)
	if !grey(txn("127.0.3.5", "s.example", 4)) {
		t.Fatal("retry after window accepted")
	}
	// Providers skip greylisting: by CIDR and by confirmed PTR suffix.
	if grey(txn("127.0.9.9", "s.example", 9)) {
		t.Fatal("skip_networks client greylisted")
	}
	if grey(txn("127.0.2.1", "s.example", 9)) {
		t.Fatal("google.com client greylisted")
	}
}

func TestGreylistMemory(t *testing.T) { testGreylist(t, NewMemoryStore(1000)) }

func TestGreylistSQLite(t *testing.T) {
	db, err := sql.Open("sqlite", t.TempDir()+"/grey.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(Schema); err != nil {
		t.Fatal(err)
	}
	st := SQLStore{DB: db, Driver: "sqlite"}
	testGreylist(t, st)
	n, err := st.Cleanup(context.Background(), time.Unix(1_700_000_000, 0).Add(400*24*time.Hour))
	if err != nil || n == 0 {
		t.Fatalf("cleanup removed %d rows, %v", n, err)
	}
}

func TestGreylistPostgres(t *testing.T) {
	srv := pgtest.Open(t)
	db, err := sql.Open("pgx", srv.Fresh(t, "moat_greylist_test"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, stmt := range strings.Split(Schema, ";") {
		if strings.TrimSpace(stmt) == "" {
			continue
		}
		if _, err := db.Exec(stmt); err != nil {
			t.Fatal(err)
		}
	}
	st := SQLStore{DB: db, Driver: "postgres"}
	testGreylist(t, st)
	n, err := st.Cleanup(context.Background(), time.Unix(1_700_000_000, 0).Add(400*24*time.Hour))
	if err != nil || n == 0 {
		t.Fatalf("cleanup removed %d rows, %v", n, err)
	}
}

func TestRebindManyParams(t *testing.T) {
	q := SQLStore{Driver: "postgres"}.q("VALUES (?,?,?,?,?,?,?,?,?,?,?)")
	if q != "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)" {
		t.Fatalf("rebind: %s", q)
	}
}

func TestDisabledByDefault(t *testing.T) {
	chk, err := New(DefaultConfig(), Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if d := run(t, chk, txn("127.0.1.5", "s.example", 50)); d.Action == verdict.TempFail {
		t.Fatal("greylisting ran while disabled")
	}
}

func TestKeyNetworks(t *testing.T) {
	chk, _ := New(DefaultConfig(), Deps{})
	if chk.Key(netip.MustParseAddr("192.0.2.1"), "A@x", "b@y") != chk.Key(netip.MustParseAddr("192.0.2.200"), "a@x", "B@y") {
		t.Fatal("same /24 gives different keys")
	}
	if chk.Key(netip.MustParseAddr("2001:db8::1"), "a@x", "b@y") != chk.Key(netip.MustParseAddr("2001:db8::ffff:1"), "a@x", "b@y") {
		t.Fatal("same /64 gives different keys")
	}
	if chk.Key(netip.MustParseAddr("2001:db8:0:1::1"), "a@x", "b@y") == chk.Key(netip.MustParseAddr("2001:db8::1"), "a@x", "b@y") {
		t.Fatal("different /64 gives the same key")
	}
}
