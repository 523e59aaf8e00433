package dkim

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"

	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/testutil/dnstest"
	"moat.dev/moat/internal/testutil/dnsxtest"
	"moat.dev/moat/internal/verdict"
)

const msg = "From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: hi\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-Id: <1@example.com>\r\n\r\nHello Bob.\r\n"

func sign(t *testing.T, key ed25519.PrivateKey, domain, raw string) string {
	t.Helper()
	var b bytes.Buffer
	err := dkim.Sign(&b, strings.NewReader(raw), &dkim.SignOptions{Domain: domain, Selector: "sel", Signer: key,
		HeaderKeys: []string{"From", "To", "Subject", "Date", "Message-Id"}})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func pmsg(raw string) *pipeline.Message {
	return &pipeline.Message{Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(raw)), nil }}
}

func setup(t *testing.T) (*Check, *dnstest.Server, ed25519.PrivateKey) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srv := dnstest.Start(t, `sel._domainkey.example.com. 300 IN TXT "v=DKIM1; k=ed25519; p=`+base64.StdEncoding.EncodeToString(pub)+`"`)
	cl := dnsxtest.Client(t, srv.Addr, func(c *dnsx.Config) { c.CacheSize = 0 })
	c, err := New(DefaultConfig(), Deps{Resolver: cl, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return c, srv, priv
}

func first(r verdict.Result) string {
	if len(r.Symbols) == 0 {
		return ""
	}
	return r.Symbols[0].Name
}

func TestVerify(t *testing.T) {
	c, srv, key := setup(t)
	ctx := context.Background()
	signed := sign(t, key, "example.com", msg)

	r := c.CheckData(ctx, &pipeline.Txn{}, pmsg(signed))
	if first(r) != "DKIM_VALID" || len(r.Auth) != 1 || !strings.HasPrefix(r.Auth[0], "dkim=pass header.d=example.com") {
		t.Fatalf("valid: %+v", r)
	}
	if got := Passed(r.Auth); len(got) != 1 || got[0] != "example.com" {
		t.Fatalf("Passed: %v", got)
	}

	// Body altered after signing.
	r = c.CheckData(ctx, &pipeline.Txn{}, pmsg(strings.Replace(signed, "Hello Bob.", "Hello Bob!", 1)))
	if first(r) != "DKIM_INVALID" || !strings.HasPrefix(r.Auth[0], "dkim=fail") {
		t.Fatalf("tampered: %+v", r)
	}

	// Unsigned.
	r = c.CheckData(ctx, &pipeline.Txn{}, pmsg(msg))
	if first(r) != "DKIM_NONE" || r.Auth[0] != "dkim=none" {
		t.Fatalf("unsigned: %+v", r)
	}

	// Key not published: permerror.
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	r = c.CheckData(ctx, &pipeline.Txn{}, pmsg(sign(t, other, "nokey.example", msg)))
	if first(r) != "DKIM_INVALID" || !strings.HasPrefix(r.Auth[0], "dkim=permerror") {
		t.Fatalf("no key: %+v", r)
	}

	// DNS failure: temperror, no penalty.
	srv.Fail("sel._domainkey.example.com", dns.RcodeServerFailure)
	r = c.CheckData(ctx, &pipeline.Txn{}, pmsg(signed))
	if first(r) != "DKIM_TEMPERROR" || !strings.HasPrefix(r.Auth[0], "dkim=temperror") || r.Symbols[0].Score != 0 {
		t.Fatalf("servfail: %+v", r)
	}
}
