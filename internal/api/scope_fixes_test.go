package api

import (
	"context"
	"strings"
	"testing"
	"time"

	"moat.dev/moat/internal/tracking"
)

// TestReleaseNeedsAllRecipients: release, like hold and delete, acts on
// every recipient of a message, so a partner cannot lift a hold the site
// placed on a message that also goes to another partner's domain.
func TestReleaseNeedsAllRecipients(t *testing.T) {
	e := setup(t, nil)
	e.want(e.do(e.site, "POST", "/domains", domainBody("a.isp1.test", "isp1", "mx")), 201, "a")
	e.want(e.do(e.site, "POST", "/domains", domainBody("b.isp2.test", "isp2", "mx")), 201, "b")
	isp1 := e.token("partner:isp1")
	both := e.enqueue("s@sender.test", "x@a.isp1.test", "y@b.isp2.test")
	only1 := e.enqueue("s@sender.test", "z@a.isp1.test")

	e.want(e.do(e.site, "POST", "/queue/"+both+"/hold", nil), 200, "site holds a shared message")
	e.want(e.do(isp1, "POST", "/queue/"+both+"/release", nil), 403, "partner releases a shared message the site held")
	if s, err := e.q.Show(both); err != nil || !s.Held {
		t.Fatalf("shared message no longer held: %+v %v", s, err)
	}
	e.want(e.do(e.site, "POST", "/queue/"+both+"/release", nil), 200, "site releases it")

	e.want(e.do(isp1, "POST", "/queue/"+only1+"/hold", nil), 200, "partner holds its own message")
	e.want(e.do(isp1, "POST", "/queue/"+only1+"/release", nil), 200, "partner releases its own message")
}

// TestMessagesRcptSearchScoped: ?rcpt= must not match the other tenants'
// recipients of a shared message (they are redacted from the answer, so a
// match would reveal them).
func TestMessagesRcptSearchScoped(t *testing.T) {
	e := setup(t, nil)
	e.want(e.do(e.site, "POST", "/domains", domainBody("a.isp1.test", "isp1", "mx")), 201, "a")
	e.want(e.do(e.site, "POST", "/domains", domainBody("b.isp2.test", "isp2", "mx")), 201, "b")
	isp1 := e.token("partner:isp1")
	dom := e.token("domain:a.isp1.test")
	e.log.With("conn_id", "c1", "ip", "192.0.2.9").Info(tracking.TxnMessage, "queue_id", "QSHARED", "from", "alice@sender.test",
		"rcpts", []string{"x@a.isp1.test", "secret.person@b.isp2.test"}, "size", int64(100), "outcome", "queued", "reply", "250 2.0.0 Ok")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.tr.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var l list[tracking.Message]
	for _, tok := range []string{isp1, dom} {
		e.do(tok, "GET", "/messages?rcpt=secret.person", nil).decode(t, &l)
		if len(l.Items) != 0 {
			t.Errorf("scoped search for another tenant's recipient finds %+v", l.Items)
		}
		e.do(tok, "GET", "/messages?rcpt=X@A.ISP1", nil).decode(t, &l)
		if len(l.Items) != 1 || strings.Join(l.Items[0].Rcpts, ",") != "x@a.isp1.test" {
			t.Errorf("scoped search for its own recipient: %+v", l.Items)
		}
	}
	e.do(e.site, "GET", "/messages?rcpt=secret.person", nil).decode(t, &l)
	if len(l.Items) != 1 {
		t.Errorf("site search: %+v", l.Items)
	}
}

// TestValidationFixes: precise 400s for values that used to be accepted
// or explained vaguely.
func TestValidationFixes(t *testing.T) {
	e := setup(t, nil)
	e.want(e.do(e.site, "POST", "/domains", domainBody("a.test", "", "mx")), 201, "a")
	for _, c := range []struct {
		method, path string
		body         any
		status       int
		err          string
	}{
		{"POST", "/domains", `{"name":"b.test","backends":["mx"],"policy":{"layers":{"dnsbl":{"mode":"flag","flag_score":1e308}}}}`, 400,
			"policy.layers.dnsbl.flag_score: must be between -1000 and 1000"},
		{"POST", "/domains", `{"name":"b.test","backends":["mx"],"policy":{"layers":{"dnsbl":{"flag_score":-1001}}}}`, 400,
			"policy.layers.dnsbl.flag_score: must be between -1000 and 1000"},
		{"POST", "/domains", `{"name":"b.test","backends":["mx"],"max_conns":1.5}`, 400,
			"max_conns: must be a whole number in range, not 1.5"},
		{"POST", "/domains", `{"name":"b.test","backends":["mx"],"max_conns":1e30}`, 400,
			"max_conns: must be a whole number in range, not 1e30"},
		{"POST", "/domains", `{"name":"b.test","backends":["mx"],"policy":{"tag_score":1e400}}`, 400,
			"policy.tag_score: 1e400 is out of range"},
		{"POST", "/domains", `{"name":"b.test","backends":["mx"],"policy":{"tag_score":"4"}}`, 400,
			"policy.tag_score: must be a number, not string"},
		{"PUT", "/domains/a.test/policy", `{"appeal":5}`, 400,
			"policy.appeal: must be a string, not number"},
		{"POST", "/domains", `{"name":"b.test","backends":["mx"],"max_conns":"4"}`, 400,
			"max_conns: must be a number, not string"},
		{"PUT", "/domains/a.test/policy", `{"layers":{"dnbsl":{"mode":"off"}}}`, 400,
			"policy.layers.dnbsl: not a check (one of lists, rdns, dnsbl, botnet, helo, spf, recipient, greylist, attach, clamav, dkim, dmarc, uribl, rules, bayes)"},
	} {
		r := e.do(e.site, c.method, c.path, c.body)
		if r.status != c.status || (c.err != "" && r.err() != c.err) {
			t.Errorf("%s %s %s: %d %q, want %d %q", c.method, c.path, c.body, r.status, r.err(), c.status, c.err)
		}
	}
	// Invalid UTF-8 in a path's local part (/recipients/x%C3%28y/...) is
	// refused, not turned into U+FFFD by ToLower (JSON bodies are already
	// made valid by the decoder).
	if _, err := validateRecipient("", &RecipientJSON{Local: "x\xc3(y"}, "a.test"); err == nil || !strings.Contains(err.Error(), "not valid UTF-8") {
		t.Errorf("validateRecipient(invalid UTF-8) = %v", err)
	}
}

// TestRecipientLocationEscaped: a local part may hold "/", "?", "#" and
// "%"; the Location of a created recipient must lead back to it.
func TestRecipientLocationEscaped(t *testing.T) {
	e := setup(t, nil)
	e.want(e.do(e.site, "POST", "/domains", domainBody("a.test", "", "mx")), 201, "a")
	r := e.do(e.site, "POST", "/domains/a.test/recipients", map[string]string{"local": "a/b?c#d%e"})
	e.want(r, 201, "create")
	loc := r.hdr.Get("Location")
	if loc != Prefix+"domains/a.test/recipients/a%2Fb%3Fc%23d%25e" {
		t.Fatalf("Location = %q", loc)
	}
	var got RecipientJSON
	r = e.do(e.site, "GET", strings.TrimPrefix(loc, "/api/v1"), nil)
	e.want(r, 200, "GET Location")
	r.decode(t, &got)
	if got.Local != "a/b?c#d%e" {
		t.Errorf("GET Location = %+v", got)
	}
}

// TestDeleteDomainRevokesItsTokens: a domain token dies with its domain;
// the same name created again (here for another partner) is not reachable
// with it.
func TestDeleteDomainRevokesItsTokens(t *testing.T) {
	e := setup(t, nil)
	e.want(e.do(e.site, "POST", "/domains", domainBody("a.isp1.test", "isp1", "mx")), 201, "create")
	dom := e.token("domain:a.isp1.test")
	e.want(e.do(dom, "GET", "/domains/a.isp1.test", nil), 200, "domain token reads its domain")
	e.want(e.do(e.site, "DELETE", "/domains/a.isp1.test", nil), 204, "delete")
	e.want(e.do(e.site, "POST", "/domains", domainBody("a.isp1.test", "isp2", "mx")), 201, "recreate for another partner")
	e.want(e.do(dom, "GET", "/domains/a.isp1.test", nil), 401, "old domain token on the recreated domain")
}
