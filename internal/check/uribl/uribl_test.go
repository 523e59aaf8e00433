package uribl

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/testutil/dnstest"
	"moat.dev/moat/internal/testutil/dnsxtest"
	"moat.dev/moat/internal/verdict"
)

func setup(t *testing.T, records ...string) (*Check, *dnstest.Server) {
	srv := dnstest.Start(t, records...)
	cl := dnsxtest.Client(t, srv.Addr, func(c *dnsx.Config) { c.CacheSize, c.Attempts = 0, 1 })
	cfg := DefaultConfig()
	cfg.Zones = []Zone{
		{Name: "dbl.test", Kind: "domain", Symbol: "URIBL_DBL", Score: 4, TestEntry: "dbltest.com"},
		{Name: "sbl.test", Kind: "ip", Symbol: "URIBL_SBL", Score: 3, TestEntry: "127.0.0.2"},
	}
	c, err := New(cfg, Deps{Resolver: cl, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return c, srv
}

func pmsg(raw string) *pipeline.Message {
	return &pipeline.Message{Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(raw)), nil }}
}

func syms(r verdict.Result) string {
	var s []string
	for _, x := range r.Symbols {
		s = append(s, x.Name)
	}
	return strings.Join(s, ",")
}

const mail = "From: a@b.example\r\nSubject: x\r\nContent-Type: text/html\r\n\r\n" +
	`<p>Visit <a href="http://www.shop.evil.example/buy">our shop</a> or <a href="http://192.0.2.7/x">this</a>` +
	` and <a href="https://good.example/">good</a></p>` + "\r\n"

func TestListedDomainAndIP(t *testing.T) {
	c, _ := setup(t,
		"dbltest.com.dbl.test. 60 IN A 127.0.1.2",
		"evil.example.dbl.test. 60 IN A 127.0.1.2",
		"2.0.0.127.sbl.test. 60 IN A 127.0.0.2",
		"7.2.0.192.sbl.test. 60 IN A 127.0.0.2",
	)
	r := c.CheckData(context.Background(), &pipeline.Txn{}, pmsg(mail))
	if syms(r) != "URIBL_DBL,URIBL_SBL" || r.Symbols[0].Score != 4 || !strings.Contains(r.Symbols[0].Detail, "evil.example") {
		t.Fatalf("got %+v", r)
	}
}

func TestSelfTestDisablesZone(t *testing.T) {
	// Test entry not listed: the zone is off, even though evil.example is "listed".
	c, srv := setup(t, "evil.example.dbl.test. 60 IN A 127.0.1.2")
	if r := c.CheckData(context.Background(), &pipeline.Txn{}, pmsg(mail)); syms(r) != "" {
		t.Fatalf("disabled zone answered: %+v", r)
	}
	if c.Enabled(context.Background(), "dbl.test") {
		t.Fatal("zone enabled without test entry")
	}
	// A zone answering the refused code is disabled too.
	srv.Add(t, "dbltest.com.dbl.test. 60 IN A 127.255.255.254")
	for _, z := range c.zones {
		z.tested = time.Time{}
	}
	if c.Enabled(context.Background(), "dbl.test") {
		t.Fatal("zone enabled while refusing")
	}
}

func TestRefusedAnswerDisablesZone(t *testing.T) {
	c, _ := setup(t,
		"dbltest.com.dbl.test. 60 IN A 127.0.1.2",
		"evil.example.dbl.test. 60 IN A 127.255.255.252",
	)
	r := c.CheckData(context.Background(), &pipeline.Txn{}, pmsg(mail))
	if strings.Contains(syms(r), "URIBL_DBL") {
		t.Fatalf("refused code counted as listed: %+v", r)
	}
	if c.Enabled(context.Background(), "dbl.test") {
		t.Fatal("zone still enabled after a refused answer")
	}
}

func TestPhishMismatch(t *testing.T) {
	cases := map[string]bool{
		`<a href="http://login.evil.example/">https://www.paypal.com/signin</a>`: true,
		`<a href="http://evil.example/">www.mybank.co.uk</a>`:                    true,
		`<a href="https://www.paypal.com/x">www.paypal.com</a>`:                  false,
		`<a href="https://click.mail.paypal.com/x">paypal.com</a>`:               false,
		`<a href="http://evil.example/">click here</a>`:                          false,
		`<a href="http://evil.example/">1.5</a>`:                                 false,
	}
	for html, want := range cases {
		m := message.ParseBytes([]byte("Content-Type: text/html\r\n\r\n"+html+"\r\n"), message.DefaultLimits())
		if got := PhishMismatch(m.URLs) != ""; got != want {
			t.Errorf("%s: got %v", html, got)
		}
	}
}

// Hosts written the way browsers still resolve them are looked up as
// what they resolve to: percent-encoded names and hexadecimal, octal and
// short IPv4 forms.
func TestObfuscatedHosts(t *testing.T) {
	c, _ := setup(t,
		"dbltest.com.dbl.test. 60 IN A 127.0.1.2",
		"evil.example.dbl.test. 60 IN A 127.0.1.2",
		"2.0.0.127.sbl.test. 60 IN A 127.0.0.2",
		"66.2.0.192.sbl.test. 60 IN A 127.0.0.2",
	)
	for _, body := range []string{
		`<a href="http://%65vil.example/p">a</a>`,
		`<a href="http://www.%45VIL.example./p">a</a>`,
	} {
		r := c.CheckData(context.Background(), &pipeline.Txn{}, pmsg("From: a@b.example\r\nContent-Type: text/html\r\n\r\n"+body+"\r\n"))
		if syms(r) != "URIBL_DBL" {
			t.Errorf("%s: got %+v", body, r)
		}
	}
	for _, h := range []string{"0xC0000242", "0300.0000.0002.0102", "192.0x0.2.66", "192.0.578", "3221226050"} {
		r := c.CheckData(context.Background(), &pipeline.Txn{}, pmsg("From: a@b.example\r\nContent-Type: text/html\r\n\r\n<a href=\"http://"+h+"/x\">a</a>\r\n"))
		if syms(r) != "URIBL_SBL" {
			t.Errorf("%s: got %+v", h, r)
		}
	}
	for _, h := range []string{"example.com", "1.2.3.4.5", "256.1.1.1", "0x.example", "08.1.1.1", "1.2.3.256", "192.0.65536"} {
		if a, ok := hostIP(h); ok {
			t.Errorf("hostIP(%q) = %v, want none", h, a)
		}
	}
}
