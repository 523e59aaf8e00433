package web

import (
	"context"
	"html"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/quarantine"
)

func fp(v float64) *float64 { return &v }

func thresholdsOf(t *testing.T, e *tenv, rcpt string) policy.Thresholds {
	t.Helper()
	th, err := e.q.Prefs.Thresholds(context.Background(), rcpt)
	if err != nil {
		t.Fatal(err)
	}
	return th
}

func prefsOf(t *testing.T, e *tenv, rcpt string) map[string]string {
	t.Helper()
	ps, err := e.q.Prefs.List(context.Background(), rcpt)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range ps {
		out[p.Sender] = p.Kind
	}
	return out
}

func TestSettingsThresholds(t *testing.T) {
	t.Parallel()
	e := newTEnv(t)
	c := e.client(t)
	c.login("alice", password)
	code, body, tok := c.page("/quarantine")
	if code != 200 || !strings.Contains(body, `href="/settings"`) {
		t.Fatalf("no Settings link for an end user (%d)", code)
	}
	code, body, tok = c.page("/settings")
	if code != 200 || !strings.Contains(body, "alice@a.example") || !strings.Contains(body, "ali@a.example") ||
		!strings.Contains(body, "Using the domain's defaults") || tok == "" {
		t.Fatalf("settings page (%d):\n%s", code, body)
	}
	if strings.Contains(body, "bob@a.example") {
		t.Error("alice's settings show bob's address")
	}

	r, _ := c.post("/settings/thresholds", url.Values{"csrf": {tok}, "rcpt": {"Alice@A.example"}, "tag": {"3"}, "quarantine": {" 6.5 "}, "reject": {""}})
	if r.StatusCode != http.StatusSeeOther || r.Header.Get("Location") != "/settings" {
		t.Fatalf("save: %d %s", r.StatusCode, r.Header.Get("Location"))
	}
	want := policy.Thresholds{Tag: fp(3), Quarantine: fp(6.5)}
	if got := thresholdsOf(t, e, "alice@a.example"); !got.Equal(want) {
		t.Fatalf("stored %s, want %s", got, want)
	}
	if got := thresholdsOf(t, e, "ali@a.example"); !got.IsZero() {
		t.Errorf("the other address got thresholds: %s", got)
	}
	_, body, _ = c.page("/settings")
	if !strings.Contains(body, "Spam thresholds saved.") || !strings.Contains(body, `name="tag" type="number" step="any" min="-100" max="1000" value="3"`) ||
		!strings.Contains(body, `value="6.5"`) || !strings.Contains(body, "tag <strong>3</strong>") {
		t.Errorf("page after save:\n%s", body)
	}

	// Refused input: the message, status 400, and nothing stored.
	for _, bad := range []struct {
		tag, quar, rej, msg string
	}{
		{"abc", "", "", `tag: "abc" is not a number`},
		{"5", "3", "", "quarantine: 3 is below tag (5)"},
		{"2000", "", "", "tag: 2000 is not between -100 and 1000"},
		{"", "", "-500", "reject: -500 is not between -100 and 1000"},
		{"1e3", "", "", `tag: "1e3" is not a number`},
		{"NaN", "", "", `tag: "NaN" is not a number`},
		{"", "Inf", "", `quarantine: "Inf" is not a number`},
		{"", "", "0x10", `reject: "0x10" is not a number`},
		{"4", "", "2", "reject: 2 is below tag (4)"},
	} {
		r, body := c.post("/settings/thresholds", url.Values{"csrf": {tok}, "rcpt": {"alice@a.example"}, "tag": {bad.tag}, "quarantine": {bad.quar}, "reject": {bad.rej}})
		body = html.UnescapeString(body)
		if r.StatusCode != http.StatusBadRequest || !strings.Contains(body, `class="flash flash-error"`) || !strings.Contains(body, bad.msg) {
			t.Errorf("%+v: %d, want 400 with %q", bad, r.StatusCode, bad.msg)
		}
		if got := thresholdsOf(t, e, "alice@a.example"); !got.Equal(want) {
			t.Errorf("%+v: stored %s after a refused input", bad, got)
		}
	}
	// The refused input stays in its form; the stored values are shown.
	_, body = c.post("/settings/thresholds", url.Values{"csrf": {tok}, "rcpt": {"alice@a.example"}, "tag": {"7"}, "quarantine": {"2"}})
	if !strings.Contains(body, `value="7"`) || !strings.Contains(body, "tag <strong>3</strong>") {
		t.Errorf("refused form lost the input or the stored values:\n%s", body)
	}

	// Negative and fractional values, then all blank: back to the domain's.
	c.post("/settings/thresholds", url.Values{"csrf": {tok}, "rcpt": {"ali@a.example"}, "tag": {"-1.5"}, "reject": {".5"}})
	if got := thresholdsOf(t, e, "ali@a.example"); !got.Equal(policy.Thresholds{Tag: fp(-1.5), Reject: fp(0.5)}) {
		t.Errorf("ali stored %s", got)
	}
	r, _ = c.post("/settings/thresholds", url.Values{"csrf": {tok}, "rcpt": {"alice@a.example"}, "tag": {""}, "quarantine": {" "}, "reject": {""}})
	if r.StatusCode != http.StatusSeeOther {
		t.Fatalf("reset: %d", r.StatusCode)
	}
	if got := thresholdsOf(t, e, "alice@a.example"); !got.IsZero() {
		t.Errorf("after reset: %s", got)
	}
	if _, body, _ := c.page("/settings"); !strings.Contains(body, "Spam thresholds reset") {
		t.Errorf("no reset flash:\n%s", body)
	}
}

func TestSettingsAuthorization(t *testing.T) {
	t.Parallel()
	e := newTEnv(t)
	ctx := context.Background()
	bob := e.client(t)
	bob.login("bob", password)
	_, body, tok := bob.page("/settings")
	if strings.Contains(body, "alice@a.example") {
		t.Error("bob's settings show alice's address")
	}
	if _, body, _ := bob.page("/settings?rcpt=alice@a.example"); strings.Contains(body, "alice@a.example") {
		t.Error("?rcpt= shows an end user someone else's settings")
	}
	e.q.Prefs.AllowSender(ctx, "alice@a.example", "friend@x.example", "alice")
	for _, rcpt := range []string{"alice@a.example", "ALICE@a.example", "carol@b.example", "", "@a.example", "a.example", "bob@a.example,alice@a.example"} {
		for _, p := range []struct {
			path string
			v    url.Values
		}{
			{"/settings/thresholds", url.Values{"tag": {"1"}}},
			{"/settings/senders", url.Values{"sender": {"x@evil.example"}, "kind": {"allow"}}},
			{"/settings/senders/remove", url.Values{"sender": {"friend@x.example"}}},
		} {
			p.v.Set("csrf", tok)
			p.v.Set("rcpt", rcpt)
			if r, body := bob.post(p.path, p.v); r.StatusCode != http.StatusForbidden || !strings.Contains(body, "Not allowed") {
				t.Errorf("bob POST %s for %q: %d, want 403", p.path, rcpt, r.StatusCode)
			}
		}
	}
	if got := thresholdsOf(t, e, "alice@a.example"); !got.IsZero() {
		t.Errorf("bob changed alice's thresholds: %s", got)
	}
	if got := prefsOf(t, e, "alice@a.example"); len(got) != 1 || got["friend@x.example"] != quarantine.Allow {
		t.Errorf("bob changed alice's senders: %v", got)
	}

	// Domain admin of a.example: a.example's addresses, not b.example's.
	adm := e.client(t)
	adm.login("adm-a", password)
	code, body, tok := adm.page("/settings")
	if code != 200 || !strings.Contains(body, `id="pick-form"`) || !strings.Contains(body, `href="/settings"`) {
		t.Fatalf("admin settings without rcpt: %d", code)
	}
	code, body, _ = adm.page("/settings?rcpt=" + url.QueryEscape("Alice@a.example"))
	if code != 200 || !strings.Contains(body, "friend@x.example") || !strings.Contains(body, `data-rcpt="alice@a.example"`) {
		t.Errorf("admin opens alice: %d\n%s", code, body)
	}
	if r, _ := adm.get("/settings?rcpt=carol@b.example"); r.StatusCode != http.StatusForbidden {
		t.Errorf("domain admin opens b.example: %d, want 403", r.StatusCode)
	}
	if r, body := adm.get("/settings?rcpt=not-an-address"); r.StatusCode != http.StatusBadRequest || !strings.Contains(html.UnescapeString(body), "is not an email address") {
		t.Errorf("admin opens a non-address: %d", r.StatusCode)
	}
	r, _ := adm.post("/settings/thresholds", url.Values{"csrf": {tok}, "rcpt": {"alice@a.example"}, "quarantine": {"12"}})
	if r.StatusCode != http.StatusSeeOther || r.Header.Get("Location") != "/settings?rcpt=alice%40a.example" {
		t.Errorf("admin sets alice: %d %s", r.StatusCode, r.Header.Get("Location"))
	}
	if got := thresholdsOf(t, e, "alice@a.example"); !got.Equal(policy.Thresholds{Quarantine: fp(12)}) {
		t.Errorf("admin's thresholds for alice: %s", got)
	}
	if r, _ := adm.post("/settings/thresholds", url.Values{"csrf": {tok}, "rcpt": {"carol@b.example"}, "quarantine": {"12"}}); r.StatusCode != http.StatusForbidden {
		t.Errorf("domain admin sets b.example: %d, want 403", r.StatusCode)
	}
	if r, _ := adm.post("/settings/senders", url.Values{"csrf": {tok}, "rcpt": {"carol@b.example"}, "sender": {"x@y.example"}, "kind": {"block"}}); r.StatusCode != http.StatusForbidden {
		t.Errorf("domain admin blocks for b.example: %d, want 403", r.StatusCode)
	}
	if got := thresholdsOf(t, e, "carol@b.example"); !got.IsZero() || len(prefsOf(t, e, "carol@b.example")) != 0 {
		t.Error("domain admin changed b.example")
	}

	// Partner admin of b.example, and the site admin.
	p := e.client(t)
	p.login("partner", password)
	_, _, ptok := p.page("/settings")
	if r, _ := p.post("/settings/thresholds", url.Values{"csrf": {ptok}, "rcpt": {"carol@b.example"}, "tag": {"4"}}); r.StatusCode != http.StatusSeeOther {
		t.Errorf("partner sets carol: %d", r.StatusCode)
	}
	if r, _ := p.get("/settings?rcpt=alice@a.example"); r.StatusCode != http.StatusForbidden {
		t.Errorf("partner opens alice: %d, want 403", r.StatusCode)
	}
	root := e.client(t)
	root.login("root", password)
	_, _, rtok := root.page("/settings")
	if r, _ := root.post("/settings/senders", url.Values{"csrf": {rtok}, "rcpt": {"someone@anywhere.example"}, "sender": {"@spam.example"}, "kind": {"block"}}); r.StatusCode != http.StatusSeeOther {
		t.Errorf("site admin blocks: %d", r.StatusCode)
	}
	if k, _ := e.q.Prefs.Lookup(ctx, "someone@anywhere.example", "x@spam.example"); k != quarantine.Block {
		t.Errorf("site admin's block: %q", k)
	}
}

func TestSettingsCSRF(t *testing.T) {
	t.Parallel()
	e := newTEnv(t)
	c := e.client(t)
	c.login("alice", password)
	for _, p := range []struct {
		path string
		v    url.Values
	}{
		{"/settings/thresholds", url.Values{"rcpt": {"alice@a.example"}, "tag": {"1"}}},
		{"/settings/senders", url.Values{"rcpt": {"alice@a.example"}, "sender": {"x@evil.example"}, "kind": {"allow"}}},
		{"/settings/senders/remove", url.Values{"rcpt": {"alice@a.example"}, "sender": {"friend@x.example"}}},
	} {
		if r, body := c.post(p.path, p.v); r.StatusCode != http.StatusForbidden || !strings.Contains(body, "Request refused") {
			t.Errorf("%s without CSRF: %d", p.path, r.StatusCode)
		}
		p.v.Set("csrf", "deadbeef")
		if r, _ := c.post(p.path, p.v); r.StatusCode != http.StatusForbidden {
			t.Errorf("%s with a wrong CSRF token: %d", p.path, r.StatusCode)
		}
		p.v.Del("csrf")
		if r, _ := e.client(t).post(p.path, p.v); r.StatusCode != http.StatusUnauthorized {
			t.Errorf("anonymous %s: %d, want 401", p.path, r.StatusCode)
		}
	}
	if got := thresholdsOf(t, e, "alice@a.example"); !got.IsZero() {
		t.Errorf("thresholds stored without CSRF: %s", got)
	}
	if got := prefsOf(t, e, "alice@a.example"); len(got) != 0 {
		t.Errorf("senders stored without CSRF: %v", got)
	}
	// GET cannot change state; anonymous GET goes to the login page.
	if r, _ := c.get("/settings/thresholds?rcpt=alice@a.example&tag=1&csrf=x"); r.StatusCode == http.StatusOK || r.StatusCode == http.StatusSeeOther {
		t.Errorf("GET thresholds: %d", r.StatusCode)
	}
	if r, _ := e.client(t).get("/settings"); r.StatusCode != http.StatusSeeOther || !strings.HasPrefix(r.Header.Get("Location"), "/login?next=%2Fsettings") {
		t.Errorf("anonymous settings: %d %s", r.StatusCode, r.Header.Get("Location"))
	}
}

func TestSettingsSenders(t *testing.T) {
	t.Parallel()
	e := newTEnv(t)
	ctx := context.Background()
	c := e.client(t)
	c.login("alice", password)
	_, body, tok := c.page("/settings")
	if !strings.Contains(body, "No senders on your lists yet") {
		t.Errorf("empty lists not said:\n%s", body)
	}
	add := func(rcpt, sender, kind string) (*http.Response, string) {
		return c.post("/settings/senders", url.Values{"csrf": {tok}, "rcpt": {rcpt}, "sender": {sender}, "kind": {kind}})
	}
	if r, _ := add("alice@a.example", " Friend@Partner.example ", "allow"); r.StatusCode != http.StatusSeeOther || r.Header.Get("Location") != "/settings" {
		t.Fatalf("allow: %d %s", r.StatusCode, r.Header.Get("Location"))
	}
	if _, body, _ := c.page("/settings"); !strings.Contains(body, "Sender added to the allow list.") {
		t.Errorf("no allow flash:\n%s", body)
	}
	if r, _ := add("alice@a.example", "@Spam.example", "block"); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("block: %d", r.StatusCode)
	}
	if k, _ := e.q.Prefs.Lookup(ctx, "alice@a.example", "friend@partner.example"); k != quarantine.Allow {
		t.Errorf("allow not stored: %q", k)
	}
	if k, _ := e.q.Prefs.Lookup(ctx, "alice@a.example", "anyone@spam.example"); k != quarantine.Block {
		t.Errorf("domain block not stored: %q", k)
	}
	ps, _ := e.q.Prefs.List(ctx, "alice@a.example")
	if len(ps) != 2 || ps[0].By != "alice" {
		t.Errorf("prefs: %+v", ps)
	}
	if len(prefsOf(t, e, "ali@a.example")) != 0 {
		t.Error("the other address got senders")
	}
	_, body, _ = c.page("/settings")
	for _, want := range []string{"Sender added to the block list.", "friend@partner.example", "@spam.example", `class="tag tag-allow"`, `class="tag tag-block"`,
		`name="sender" value="friend@partner.example"`, `name="sender" value="@spam.example"`} {
		if !strings.Contains(body, want) {
			t.Errorf("settings page lacks %q", want)
		}
	}
	// Switching a sender from one list to the other.
	add("alice@a.example", "friend@partner.example", "block")
	if got := prefsOf(t, e, "alice@a.example"); got["friend@partner.example"] != quarantine.Block {
		t.Errorf("switch to block: %v", got)
	}

	// Refused senders and kinds: 400 with the reason, nothing stored.
	for _, bad := range []struct{ sender, kind, msg string }{
		{"", "allow", "enter a sender"},
		{"foo", "allow", "is not an address"},
		{"a b@x.example", "allow", "spaces or control characters"},
		{"a\tb@x.example", "block", "spaces or control characters"},
		{"evil\r\n@x.example", "block", "spaces or control characters"},
		{"a\x00@x.example", "block", "spaces or control characters"},
		{"a\u202e@x.example", "block", "spaces or control characters"},
		{"a@b@c.example", "allow", "is not an address"},
		{"@", "allow", "is not a domain name"},
		{"x@", "allow", "is not a domain name"},
		{"x@localhost", "allow", "is not a domain name"},
		{"x@-bad.example", "allow", "is not a domain name"},
		{"x@bad..example", "allow", "is not a domain name"},
		{"x@bad_name.example", "allow", "is not a domain name"},
		{"<a@b.example>", "allow", "is not an address"},
		{"Name<a@b.example>", "allow", "is not an address"},
		{strings.Repeat("a", 250) + "@b.example", "allow", "too long"},
		{"ok@fine.example", "maybe", "choose whether to allow or to block"},
		{"ok@fine.example", "", "choose whether to allow or to block"},
	} {
		r, body := add("alice@a.example", bad.sender, bad.kind)
		body = html.UnescapeString(body)
		if r.StatusCode != http.StatusBadRequest || !strings.Contains(body, bad.msg) {
			t.Errorf("add %q %q: %d, want 400 with %q", bad.sender, bad.kind, r.StatusCode, bad.msg)
		}
	}
	if got := prefsOf(t, e, "alice@a.example"); len(got) != 2 {
		t.Errorf("refused senders stored: %v", got)
	}
	// Internationalized domains are domains.
	if r, _ := add("ali@a.example", "kontakt@bücher.example", "allow"); r.StatusCode != http.StatusSeeOther {
		t.Errorf("IDN sender: %d", r.StatusCode)
	}

	// Remove.
	rm := func(rcpt, sender string) *http.Response {
		r, _ := c.post("/settings/senders/remove", url.Values{"csrf": {tok}, "rcpt": {rcpt}, "sender": {sender}})
		return r
	}
	if r := rm("alice@a.example", "@spam.example"); r.StatusCode != http.StatusSeeOther || r.Header.Get("Location") != "/settings" {
		t.Fatalf("remove: %d", r.StatusCode)
	}
	if got := prefsOf(t, e, "alice@a.example"); len(got) != 1 || got["@spam.example"] != "" {
		t.Errorf("after remove: %v", got)
	}
	if _, body, _ := c.page("/settings"); !strings.Contains(body, "Sender removed from the list.") || strings.Contains(body, `value="@spam.example"`) {
		t.Errorf("page after remove:\n%s", body)
	}
	rm("alice@a.example", "@spam.example")
	if _, body, _ := c.page("/settings"); !strings.Contains(body, "not on the list") {
		t.Errorf("removing again: no warning")
	}
	if r := rm("alice@a.example", "evil\r\n@x.example"); r.StatusCode != http.StatusBadRequest {
		t.Errorf("remove of a sender with CR LF: %d", r.StatusCode)
	}
	// An entry stored by "block the sender" of a held message, with an
	// envelope sender the add form would refuse, can still be removed.
	odd := `"odd name"@x.example`
	e.q.Prefs.BlockSender(ctx, "alice@a.example", odd, "alice")
	if r := rm("alice@a.example", odd); r.StatusCode != http.StatusSeeOther {
		t.Errorf("remove odd sender: %d", r.StatusCode)
	}
	if got := prefsOf(t, e, "alice@a.example"); got[odd] != "" {
		t.Errorf("odd sender not removed: %v", got)
	}
	// Removing bob's entry through alice's address does nothing to bob.
	e.q.Prefs.AllowSender(ctx, "bob@a.example", "friend@partner.example", "bob")
	rm("alice@a.example", "friend@partner.example")
	if got := prefsOf(t, e, "bob@a.example"); got["friend@partner.example"] != quarantine.Allow {
		t.Errorf("bob's entry: %v", got)
	}
}

func TestCheckSender(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"a@b.example": "a@b.example", " A.B+tag@Sub.B.Example ": "a.b+tag@sub.b.example", "@b.example": "@b.example",
		"bounce-1=x@lists.b.example": "bounce-1=x@lists.b.example", "x@xn--bcher-kva.example": "x@xn--bcher-kva.example",
	} {
		if got, err := checkSender(in); err != nil || got != want {
			t.Errorf("checkSender(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"b.example", "a@b", "a@.b.example", "a@b.example.", "a@b-.example", "a@b.exam ple", "a,b@c.example", "a@b\u00a0.example", "a@b\u200b.example"} {
		if got, err := checkSender(in); err == nil {
			t.Errorf("checkSender(%q) = %q, want an error", in, got)
		}
	}
	if !validAddress("a@b.example") || validAddress("@b.example") || validAddress("A@b.example") {
		t.Error("validAddress")
	}
}
