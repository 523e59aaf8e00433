package api

import (
	"context"
	"strings"
	"testing"

	"moat.dev/moat/internal/quarantine"
	"moat.dev/moat/internal/store"
)

// TestThresholds: people's own thresholds through the API, stored where
// the quarantine UI and the gateway read them; validation names the
// field; a domain token cannot reach another domain's recipients.
func TestThresholds(t *testing.T) {
	ctx := context.Background()
	var prefs *quarantine.Prefs
	e := setupWith(t, nil, func(st store.Store, d *Deps) {
		if err := quarantine.MigrateDriver(ctx, st.DB(), st.Driver()); err != nil {
			t.Fatal(err)
		}
		prefs = quarantine.NewPrefsDriver(st.DB(), st.Driver())
		d.Settings = prefs
	})
	site := e.site
	e.want(e.do(site, "POST", "/domains", domainBody("t.test", "", "mx.t.test")), 201, "domain")
	e.want(e.do(site, "POST", "/domains", domainBody("u.test", "", "mx.u.test")), 201, "domain")

	var got ThresholdsJSON
	e.do(site, "GET", "/domains/t.test/recipients/alice/thresholds", nil).decode(t, &got)
	if got.TagScore != nil || got.QuarantineScore != nil || got.RejectScore != nil {
		t.Fatalf("unset: %+v", got)
	}
	r := e.do(site, "PUT", "/domains/t.test/recipients/Alice/thresholds", `{"tag_score": 3, "reject_score": 20}`)
	e.want(r, 200, "put")
	r.decode(t, &got)
	if got.TagScore == nil || *got.TagScore != 3 || got.QuarantineScore != nil || *got.RejectScore != 20 {
		t.Fatalf("put answered %s", r.body)
	}
	if th, err := prefs.Thresholds(ctx, "alice@t.test"); err != nil || th.Tag == nil || *th.Tag != 3 {
		t.Fatalf("stored %s, %v", th, err)
	}
	r = e.do(site, "PUT", "/domains/t.test/recipients/alice/thresholds", `{"tag_score": 8, "quarantine_score": 4}`)
	e.want(r, 400, "quarantine below tag")
	if !strings.Contains(r.err(), "quarantine_score: 4 is below tag") {
		t.Errorf("error %q does not name the field", r.err())
	}
	e.want(e.do(site, "PUT", "/domains/t.test/recipients/alice/thresholds", `{"tag": 3}`), 400, "unknown field")
	e.want(e.do(site, "PUT", "/domains/t.test/recipients/a%20b/thresholds", `{"tag_score": 3}`), 400, "bad local part")
	other := e.token("domain:u.test")
	e.want(e.do(other, "GET", "/domains/t.test/recipients/alice/thresholds", nil), 404, "another domain's recipient")
	e.want(e.do(site, "DELETE", "/domains/t.test/recipients/alice/thresholds", nil), 204, "delete")
	if th, _ := prefs.Thresholds(ctx, "alice@t.test"); !th.IsZero() {
		t.Fatalf("after delete: %s", th)
	}
}

// TestSubjectTagPolicy: a domain's subject tag is part of its policy
// override, validated like the rest.
func TestSubjectTagPolicy(t *testing.T) {
	e := setup(t, nil)
	e.want(e.do(e.site, "POST", "/domains", domainBody("s.test", "", "mx.s.test")), 201, "domain")
	r := e.do(e.site, "PUT", "/domains/s.test/policy", `{"subject_tag": "[JUNK]"}`)
	e.want(r, 200, "put")
	var pj PolicyJSON
	e.do(e.site, "GET", "/domains/s.test/policy", nil).decode(t, &pj)
	if pj.SubjectTag == nil || *pj.SubjectTag != "[JUNK]" {
		t.Fatalf("policy %+v", pj)
	}
	r = e.do(e.site, "PUT", "/domains/s.test/policy", `{"subject_tag": "a\u0007b"}`)
	e.want(r, 400, "control character")
	if !strings.Contains(r.err(), "subject_tag") {
		t.Errorf("error %q does not name subject_tag", r.err())
	}
}
