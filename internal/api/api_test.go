package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/store"
	"moat.dev/moat/internal/store/sqlstore"
	"moat.dev/moat/internal/testutil/pgtest"
	"moat.dev/moat/internal/tracking"
	"moat.dev/moat/internal/verdict"
)

type env struct {
	t    *testing.T
	srv  *httptest.Server
	api  *API
	st   store.Store
	tr   *tracking.Tracker
	q    *queue.Queue
	log  *slog.Logger // wrapped by the tracking handler
	site string       // a site token
}

// openStore opens the store the tests run on: SQLite, or a fresh
// PostgreSQL database inside TestPostgres.
var openStore = func(t *testing.T) store.Store {
	st, err := sqlstore.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "moat.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func setup(t *testing.T, mod func(*Config)) *env { return setupWith(t, mod, nil) }

// setupWith is setup with a last say over the API's Deps (on the store
// the env uses).
func setupWith(t *testing.T, mod func(*Config), deps func(store.Store, *Deps)) *env {
	t.Helper()
	ctx := context.Background()
	st := openStore(t)
	tcfg := tracking.DefaultConfig()
	tcfg.FlushInterval = 10 * time.Millisecond
	tr, err := tracking.New(ctx, tcfg, st.DB(), st.Driver(), nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	tr.Start(ctx)
	t.Cleanup(func() { tr.Close() })
	log := slog.New(tracking.Handler(slog.DiscardHandler, tr))

	qcfg := queue.DefaultConfig()
	qcfg.SpoolDir = filepath.Join(t.TempDir(), "spool")
	qcfg.Hostname = "mx.moat.test"
	tempfail := queue.DelivererFunc(func(ctx context.Context, d *queue.Delivery) []queue.Result {
		var out []queue.Result
		for _, r := range d.Rcpts {
			out = append(out, queue.Result{Rcpt: r, Reply: verdict.Reply{Code: 451, Enhanced: [3]int{4, 4, 1}, Text: "backend down"}})
		}
		return out
	})
	q, err := queue.Open(qcfg, tempfail, log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })

	cfg := DefaultConfig()
	cfg.MaxBodyBytes = 64 << 10
	cfg.AuthFailureBurst = 1000
	if mod != nil {
		mod(&cfg)
	}
	d := Deps{Store: st, Queue: q, Tracker: tr, Registerer: prometheus.NewRegistry()}
	if deps != nil {
		deps(st, &d)
	}
	a, err := New(cfg, d)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(Prefix, a)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	site, err := CreateToken(ctx, st, "site", "root")
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, srv: srv, api: a, st: st, tr: tr, q: q, log: log, site: site}
}

type resp struct {
	status int
	hdr    http.Header
	body   []byte
}

func (r resp) err() string {
	var e errorBody
	json.Unmarshal(r.body, &e)
	return e.Error
}

func (r resp) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// do sends a request; body is a string (sent as is) or a value (marshalled).
func (e *env) do(tok, method, path string, body any) resp {
	e.t.Helper()
	return e.doCT(tok, method, path, body, "application/json")
}

func (e *env) doCT(tok, method, path string, body any, ct string) resp {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.srv.URL+"/api/v1"+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if rd != nil && ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	if res.StatusCode != http.StatusNoContent && !strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		e.t.Errorf("%s %s: Content-Type %q", method, path, res.Header.Get("Content-Type"))
	}
	return resp{status: res.StatusCode, hdr: res.Header, body: b}
}

func (e *env) want(r resp, status int, what string) {
	e.t.Helper()
	if r.status != status {
		e.t.Fatalf("%s: status %d, want %d: %s", what, r.status, status, r.body)
	}
}

func (e *env) token(role string) string {
	e.t.Helper()
	r := e.do(e.site, "POST", "/tokens", map[string]string{"role": role, "label": "test " + role})
	e.want(r, http.StatusCreated, "create token "+role)
	var tc tokenCreated
	r.decode(e.t, &tc)
	if tc.Token == "" || tc.Role != role {
		e.t.Fatalf("token response %s", r.body)
	}
	return tc.Token
}

func domainBody(name, partner string, backends ...string) map[string]any {
	return map[string]any{"name": name, "partner": partner, "backends": backends}
}

func TestDomainCRUD(t *testing.T) {
	e := setup(t, nil)
	r := e.do(e.site, "POST", "/domains", map[string]any{"name": "Example.COM.", "backends": []string{"mx1.example.net", "[2001:db8::1]:2525"},
		"tls": "required", "max_conns": 5, "recipient_mode": "table", "catch_all": true})
	e.want(r, http.StatusCreated, "create")
	if loc := r.hdr.Get("Location"); loc != "/api/v1/domains/example.com" {
		t.Errorf("Location = %q", loc)
	}
	var d DomainJSON
	r.decode(t, &d)
	if d.Name != "example.com" || strings.Join(d.Backends, ",") != "mx1.example.net:25,[2001:db8::1]:2525" ||
		d.TLS != "required" || d.MaxConns != 5 || d.RecipientMode != "table" || !d.CatchAll || d.Policy != nil {
		t.Errorf("created = %s", r.body)
	}
	// The store has it, as the SMTP path will read it.
	sd, err := e.st.Domain(context.Background(), "example.com")
	if err != nil || sd.Backends[1] != (store.Backend{Host: "2001:db8::1", Port: 2525}) {
		t.Fatalf("store: %+v %v", sd, err)
	}

	e.want(e.do(e.site, "POST", "/domains", domainBody("example.com", "", "mx:25")), http.StatusConflict, "duplicate")

	// Full replace with a policy override.
	r = e.do(e.site, "PUT", "/domains/example.com", map[string]any{"backends": []string{"10.0.0.1:25"},
		"policy": map[string]any{"tag_score": 3, "layers": map[string]any{"dnsbl": map[string]any{"mode": "flag", "observe": true}}}})
	e.want(r, http.StatusOK, "put")
	r.decode(t, &d)
	if strings.Join(d.Backends, ",") != "10.0.0.1:25" || d.TLS != "opportunistic" || d.RecipientMode != "callout" || d.CatchAll {
		t.Errorf("after put = %s", r.body)
	}
	if got := string(d.Policy); got != `{"layers":{"dnsbl":{"mode":"flag","observe":true}},"tag_score":3}` {
		t.Errorf("policy = %s", got)
	}
	// The stored override applies over the site policy the way the SMTP
	// path's domain cache reads it: given keys override, others inherit.
	sd, _ = e.st.Domain(context.Background(), "example.com")
	eff := *policy.Default()
	eff.Layers = map[string]policy.Layer{"rdns": {Mode: policy.ModeTempfail}}
	if err := json.Unmarshal([]byte(sd.Policy), &eff); err != nil {
		t.Fatal(err)
	}
	if eff.TagScore != 3 || eff.QuarantineScore != 10 || eff.RejectScore != 15 || eff.Layers["dnsbl"].Mode != policy.ModeFlag ||
		!eff.Layers["dnsbl"].Observe || eff.Layers["rdns"].Mode != policy.ModeTempfail {
		t.Errorf("effective policy = %+v (stored %s)", eff, sd.Policy)
	}

	// The policy sub-resource.
	r = e.do(e.site, "PUT", "/domains/example.com/policy", map[string]any{"reject_score": 12, "quarantine_score": 8})
	e.want(r, http.StatusOK, "put policy")
	if got := strings.TrimSpace(string(r.body)); got != `{"quarantine_score":8,"reject_score":12}` {
		t.Errorf("policy after put = %s", got)
	}
	e.want(e.do(e.site, "DELETE", "/domains/example.com/policy", nil), http.StatusNoContent, "delete policy")
	r = e.do(e.site, "GET", "/domains/example.com/policy", nil)
	if strings.TrimSpace(string(r.body)) != "{}" {
		t.Errorf("policy after delete = %s", r.body)
	}

	e.want(e.do(e.site, "PUT", "/domains/example.com", domainBody("other.com", "", "mx")), http.StatusBadRequest, "rename")
	e.want(e.do(e.site, "PUT", "/domains/nope.example", domainBody("nope.example", "", "mx")), http.StatusNotFound, "put unknown")

	// Pagination.
	for _, n := range []string{"b.test", "c.test", "d.test"} {
		e.want(e.do(e.site, "POST", "/domains", domainBody(n, "", "mx."+n)), http.StatusCreated, "create "+n)
	}
	var page list[DomainJSON]
	var names []string
	cursor := ""
	for i := 0; ; i++ {
		r = e.do(e.site, "GET", "/domains?limit=2&cursor="+cursor, nil)
		e.want(r, http.StatusOK, "list")
		page = list[DomainJSON]{}
		r.decode(t, &page)
		for _, d := range page.Items {
			names = append(names, d.Name)
		}
		if page.Next == "" || i > 5 {
			break
		}
		cursor = page.Next
	}
	if got := strings.Join(names, ","); got != "b.test,c.test,d.test,example.com" {
		t.Errorf("paged list = %s", got)
	}
	e.want(e.do(e.site, "GET", "/domains?limit=0", nil), http.StatusBadRequest, "limit 0")

	e.want(e.do(e.site, "DELETE", "/domains/example.com", nil), http.StatusNoContent, "delete")
	e.want(e.do(e.site, "GET", "/domains/example.com", nil), http.StatusNotFound, "get deleted")
	e.want(e.do(e.site, "DELETE", "/domains/example.com", nil), http.StatusNotFound, "delete again")
}

func TestValidationErrors(t *testing.T) {
	e := setup(t, nil)
	e.want(e.do(e.site, "POST", "/domains", domainBody("ok.test", "", "mx.ok.test")), http.StatusCreated, "setup")
	for _, c := range []struct {
		name   string
		method string
		path   string
		body   string
		status int
		err    string // prefix of the error text
	}{
		{"bad port", "POST", "/domains", `{"name":"a.test","backends":["mx.a.test:25","mx2.a.test:99999"]}`, 400, "backends[1]: port must be 1-65535"},
		{"v6 without brackets", "POST", "/domains", `{"name":"a.test","backends":["2001:db8::1"]}`, 400, "backends[0]: IPv6 addresses need brackets"},
		{"bad host", "POST", "/domains", `{"name":"a.test","backends":["mx a.test"]}`, 400, "backends[0]: host"},
		{"no backends", "POST", "/domains", `{"name":"a.test"}`, 400, "backends: at least one"},
		{"bad name", "POST", "/domains", `{"name":"not_a domain","backends":["mx"]}`, 400, "name: "},
		{"no name", "POST", "/domains", `{"backends":["mx"]}`, 400, "name: required"},
		{"bad tls", "POST", "/domains", `{"name":"a.test","backends":["mx"],"tls":"maybe"}`, 400, "tls: "},
		{"bad mode", "POST", "/domains", `{"name":"a.test","backends":["mx"],"recipient_mode":"guess"}`, 400, "recipient_mode: "},
		{"negative conns", "POST", "/domains", `{"name":"a.test","backends":["mx"],"max_conns":-1}`, 400, "max_conns: "},
		{"type error", "POST", "/domains", `{"name":"a.test","backends":["mx"],"max_conns":"ten"}`, 400, "max_conns: must be a number"},
		{"unknown field", "POST", "/domains", `{"name":"a.test","backends":["mx"],"colour":"red"}`, 400, "colour: unknown field"},
		{"bad partner", "POST", "/domains", `{"name":"a.test","backends":["mx"],"partner":"Big ISP"}`, 400, "partner: "},
		{"policy unknown key", "POST", "/domains", `{"name":"a.test","backends":["mx"],"policy":{"tag_scor":1}}`, 400, "policy.tag_scor: unknown field"},
		{"policy thresholds", "POST", "/domains", `{"name":"a.test","backends":["mx"],"policy":{"tag_score":20}}`, 400, "policy.thresholds: "},
		{"policy layer mode", "POST", "/domains", `{"name":"a.test","backends":["mx"],"policy":{"layers":{"dnsbl":{"mode":"explode"}}}}`, 400, "policy.layers.dnsbl.mode: "},
		{"policy layer unknown key", "POST", "/domains", `{"name":"a.test","backends":["mx"],"policy":{"layers":{"dnsbl":{"mood":"x"}}}}`, 400, "policy.layers.dnsbl.mood: unknown field"},
		{"policy not object", "PUT", "/domains/ok.test/policy", `[1]`, 400, "policy: must be a JSON object"},
		{"syntax", "POST", "/domains", `{"name":`, 400, "invalid JSON"},
		{"trailing data", "POST", "/domains", `{"name":"a.test","backends":["mx"]} {}`, 400, "request body has data after"},
		{"empty body", "POST", "/domains", ` `, 400, "request body is empty"},
		{"recipient with domain", "POST", "/domains/ok.test/recipients", `{"local":"alice@ok.test"}`, 400, "local: "},
		{"recipient kind", "POST", "/domains/ok.test/recipients", `{"local":"alice","kind":"robot"}`, 400, "kind: "},
		{"bulk names the index", "PUT", "/domains/ok.test/recipients", `[{"local":"a"},{"local":""}]`, 400, "[1].local: required"},
		{"bulk duplicate", "PUT", "/domains/ok.test/recipients", `[{"local":"a"},{"local":"A"}]`, 400, "[1].local: "},
		{"bulk not a list", "PUT", "/domains/ok.test/recipients", `{"local":"a"}`, 400, "request body must be an array"},
		{"token role", "POST", "/tokens", `{"role":"admin","label":"x"}`, 400, "role: "},
		{"token label", "POST", "/tokens", `{"role":"site","label":""}`, 400, "label: "},
		{"messages action", "GET", "/messages?action=exploded", ``, 400, "action: "},
		{"messages ip", "GET", "/messages?ip=300.1.1.1", ``, 400, "ip: "},
		{"messages since", "GET", "/messages?since=yesterday", ``, 400, "since: "},
		{"stats bucket", "GET", "/stats?bucket=1s", ``, 400, "bucket: "},
		{"stats too many buckets", "GET", "/stats?since=720h&bucket=1m", ``, 400, "bucket: "},
		{"retry without domain", "POST", "/queue/retry", ``, 400, "domain: required"},
		{"method", "PATCH", "/domains", `{}`, 405, "method PATCH not allowed"},
		{"no endpoint", "GET", "/nothing", ``, 404, "no such endpoint"},
	} {
		var body any
		if c.body != "" {
			body = c.body
		}
		r := e.do(e.site, c.method, c.path, body)
		if r.status != c.status || !strings.HasPrefix(r.err(), c.err) {
			t.Errorf("%s: %d %q, want %d %q...", c.name, r.status, r.err(), c.status, c.err)
		}
	}
	if r := e.do(e.site, "PATCH", "/domains", "{}"); r.hdr.Get("Allow") != "GET, POST" {
		t.Errorf("Allow = %q", r.hdr.Get("Allow"))
	}
	r := e.doCT(e.site, "POST", "/domains", `{"name":"a.test","backends":["mx"]}`, "text/plain")
	if r.status != http.StatusUnsupportedMediaType {
		t.Errorf("text/plain: %d %s", r.status, r.body)
	}
	big := `{"name":"a.test","backends":["mx"],"partner":"` + strings.Repeat("x", 70<<10) + `"}`
	if r := e.do(e.site, "POST", "/domains", big); r.status != http.StatusRequestEntityTooLarge {
		t.Errorf("large body: %d %s", r.status, r.body)
	}
	// Nothing invalid reached the store.
	ds, _ := e.st.Domains(context.Background())
	if len(ds) != 1 {
		t.Errorf("store has %d domains", len(ds))
	}
}

func TestAuthorization(t *testing.T) {
	e := setup(t, nil)
	e.want(e.do(e.site, "POST", "/domains", domainBody("a.isp1.test", "isp1", "mx.isp1.test")), 201, "a")
	e.want(e.do(e.site, "POST", "/domains", domainBody("b.isp2.test", "isp2", "mx.isp2.test")), 201, "b")
	isp1 := e.token("partner:isp1")
	dom := e.token("domain:a.isp1.test")

	// No or malformed credentials.
	if r := e.do("", "GET", "/domains", nil); r.status != 401 || r.hdr.Get("WWW-Authenticate") == "" {
		t.Errorf("no token: %d", r.status)
	}
	e.want(e.do("moat_0123456789abcdef_nope", "GET", "/domains", nil), 401, "wrong token")
	e.want(e.do(e.site+"x", "GET", "/domains", nil), 401, "token with a wrong secret")

	// Partner: sees and manages only its own domains.
	var l list[DomainJSON]
	e.do(isp1, "GET", "/domains", nil).decode(t, &l)
	if len(l.Items) != 1 || l.Items[0].Name != "a.isp1.test" {
		t.Errorf("partner list = %+v", l.Items)
	}
	for _, c := range []struct{ method, path string }{
		{"GET", "/domains/b.isp2.test"}, {"PUT", "/domains/b.isp2.test"}, {"DELETE", "/domains/b.isp2.test"},
		{"GET", "/domains/b.isp2.test/recipients"}, {"POST", "/domains/b.isp2.test/recipients"},
		{"GET", "/domains/b.isp2.test/policy"}, {"GET", "/queue?domain=b.isp2.test"}, {"POST", "/queue/retry?domain=b.isp2.test"},
	} {
		var body any
		if c.method == "PUT" || c.method == "POST" {
			body = domainBody("b.isp2.test", "isp1", "mx")
			if strings.HasSuffix(c.path, "recipients") {
				body = map[string]string{"local": "x"}
			}
		}
		e.want(e.do(isp1, c.method, c.path, body), 404, "partner "+c.method+" "+c.path)
	}
	e.want(e.do(isp1, "POST", "/domains", domainBody("c.isp1.test", "isp2", "mx")), 403, "partner creates for another partner")
	r := e.do(isp1, "POST", "/domains", domainBody("c.isp1.test", "", "mx"))
	e.want(r, 201, "partner creates its own")
	var d DomainJSON
	r.decode(t, &d)
	if d.Partner != "isp1" {
		t.Errorf("partner of created domain = %q", d.Partner)
	}
	e.want(e.do(isp1, "PUT", "/domains/c.isp1.test", domainBody("c.isp1.test", "isp2", "mx")), 403, "partner hands a domain to another partner")
	e.want(e.do(isp1, "PUT", "/domains/c.isp1.test", domainBody("c.isp1.test", "isp1", "mx2")), 200, "partner updates its own")
	e.want(e.do(isp1, "GET", "/tokens", nil), 403, "partner lists tokens")
	e.want(e.do(isp1, "POST", "/tokens", map[string]string{"role": "site", "label": "x"}), 403, "partner creates a site token")
	e.want(e.do(isp1, "GET", "/audit-log", nil), 403, "partner reads the audit log")
	e.want(e.do(isp1, "DELETE", "/domains/c.isp1.test", nil), 204, "partner deletes its own")

	// Domain token: its recipients and policy only.
	e.want(e.do(dom, "POST", "/domains", domainBody("new.test", "", "mx")), 403, "domain token creates a domain")
	e.want(e.do(dom, "GET", "/domains/b.isp2.test", nil), 404, "domain token reads another domain")
	e.want(e.do(dom, "GET", "/domains/a.isp1.test", nil), 200, "domain token reads its domain")
	e.want(e.do(dom, "PUT", "/domains/a.isp1.test", domainBody("a.isp1.test", "isp1", "evil.example:25")), 403, "domain token changes backends")
	body := domainBody("a.isp1.test", "isp1", "mx.isp1.test:25")
	body["policy"] = map[string]any{"reject_score": 20}
	e.want(e.do(dom, "PUT", "/domains/a.isp1.test", body), 200, "domain token changes only the policy")
	e.want(e.do(dom, "PUT", "/domains/a.isp1.test/policy", map[string]any{"tag_score": 4}), 200, "domain token policy")
	e.want(e.do(dom, "POST", "/domains/a.isp1.test/recipients", map[string]string{"local": "alice"}), 201, "domain token recipient")
	e.want(e.do(dom, "DELETE", "/domains/a.isp1.test", nil), 403, "domain token deletes its domain")
	e.do(dom, "GET", "/domains", nil).decode(t, &l)
	if len(l.Items) != 1 || l.Items[0].Name != "a.isp1.test" {
		t.Errorf("domain token list = %+v", l.Items)
	}

	// Token management and the audit log.
	var tl list[TokenInfo]
	e.do(e.site, "GET", "/tokens", nil).decode(t, &tl)
	if len(tl.Items) != 3 {
		t.Errorf("tokens = %+v", tl.Items)
	}
	for _, ti := range tl.Items {
		if ti.Role == "domain:a.isp1.test" {
			e.want(e.do(e.site, "DELETE", "/tokens/"+ti.ID, nil), 204, "delete token")
		}
	}
	e.want(e.do(dom, "GET", "/domains/a.isp1.test", nil), 401, "deleted token")
	var al list[AuditEntry]
	e.do(e.site, "GET", "/audit-log?limit=100", nil).decode(t, &al)
	var acts []string
	for _, a := range al.Items {
		acts = append(acts, a.Label+":"+a.Action+":"+a.Object)
	}
	got := strings.Join(acts, "\n")
	for _, want := range []string{"test partner:isp1:domain.create:c.isp1.test", "test domain:a.isp1.test:policy.update:a.isp1.test",
		"test domain:a.isp1.test:recipient.create:a.isp1.test/alice", "root:token.delete:", "cli:token.create:", "test partner:isp1:domain.delete:c.isp1.test"} {
		if !strings.Contains(got, want) {
			t.Errorf("audit log lacks %q:\n%s", want, got)
		}
	}
	for _, a := range al.Items {
		if strings.Contains(a.Action, "create") && a.Label != "cli" && a.IP != "127.0.0.1" {
			t.Errorf("audit entry without client address: %+v", a)
		}
	}
	if al.Items[0].Action != "token.delete" {
		t.Errorf("audit log is not newest first: %+v", al.Items[0])
	}
}

func TestAuthRateLimit(t *testing.T) {
	e := setup(t, func(c *Config) { c.AuthFailureBurst = 3; c.AuthFailuresPerMinute = 1 })
	for i := range 3 {
		e.want(e.do("moat_0123456789abcdef_guess"+fmt.Sprint(i), "GET", "/domains", nil), 401, "guess")
	}
	r := e.do("moat_0123456789abcdef_guess", "GET", "/domains", nil)
	if r.status != 429 || r.hdr.Get("Retry-After") == "" {
		t.Fatalf("after the burst: %d %s", r.status, r.body)
	}
	// Blocked even with a valid token, until the bucket refills.
	e.want(e.do(e.site, "GET", "/domains", nil), 429, "valid token while blocked")
	e.api.now = func() time.Time { return time.Now().Add(2 * time.Minute) }
	e.want(e.do(e.site, "GET", "/domains", nil), 200, "after the wait")
}

func TestRecipients(t *testing.T) {
	e := setup(t, nil)
	e.want(e.do(e.site, "POST", "/domains", domainBody("r.test", "", "mx.r.test")), 201, "domain")
	r := e.do(e.site, "POST", "/domains/r.test/recipients", map[string]string{"local": "Alice"})
	e.want(r, 201, "add")
	if r.hdr.Get("Location") != "/api/v1/domains/r.test/recipients/alice" {
		t.Errorf("Location = %q", r.hdr.Get("Location"))
	}
	e.want(e.do(e.site, "POST", "/domains/r.test/recipients", map[string]string{"local": "alice"}), 409, "duplicate")
	e.want(e.do(e.site, "POST", "/domains/r.test/recipients", map[string]string{"local": "sales", "kind": "alias", "target": "alice"}), 201, "alias")
	ok, err := e.st.RecipientExists(context.Background(), "r.test", "alice")
	if err != nil || !ok {
		t.Fatalf("store: %v %v", ok, err)
	}
	e.want(e.do(e.site, "GET", "/domains/r.test/recipients/sales", nil), 200, "get one")

	r = e.do(e.site, "PUT", "/domains/r.test/recipients", []map[string]string{
		{"local": "alice"}, {"local": "sales", "kind": "alias", "target": "bob"}, {"local": "bob"}, {"local": "carol"}})
	e.want(r, 200, "replace")
	var res replaceResult
	r.decode(t, &res)
	if res != (replaceResult{Total: 4, Added: 2, Updated: 1, Removed: 0}) {
		t.Errorf("replace = %+v", res)
	}
	r = e.do(e.site, "PUT", "/domains/r.test/recipients", []map[string]string{{"local": "bob"}, {"local": "dave"}})
	r.decode(t, &res)
	if res != (replaceResult{Total: 2, Added: 1, Updated: 0, Removed: 3}) {
		t.Errorf("second replace = %+v", res)
	}
	var names []string
	cursor := ""
	for range 5 {
		var l list[RecipientJSON]
		e.do(e.site, "GET", "/domains/r.test/recipients?limit=1&cursor="+cursor, nil).decode(t, &l)
		for _, x := range l.Items {
			names = append(names, x.Local)
		}
		if cursor = l.Next; cursor == "" {
			break
		}
	}
	if strings.Join(names, ",") != "bob,dave" {
		t.Errorf("recipients = %v", names)
	}
	e.want(e.do(e.site, "DELETE", "/domains/r.test/recipients/bob", nil), 204, "delete")
	e.want(e.do(e.site, "DELETE", "/domains/r.test/recipients/bob", nil), 404, "delete again")
	e.want(e.do(e.site, "PUT", "/domains/r.test/recipients", `[]`), 200, "empty the table")
	if rs, _ := e.st.Recipients(context.Background(), "r.test"); len(rs) != 0 {
		t.Errorf("left: %v", rs)
	}
}

// enqueue commits a message to the real queue.
func (e *env) enqueue(from string, rcpts ...string) string {
	e.t.Helper()
	d, err := e.q.NewDraft()
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := io.WriteString(d, "Subject: test\r\n\r\nhello\r\n"); err != nil {
		e.t.Fatal(err)
	}
	env := &queue.Envelope{From: from, Client: queue.ClientInfo{IP: "192.0.2.1"}}
	for _, r := range rcpts {
		env.Rcpts = append(env.Rcpts, queue.RcptState{Addr: r, Domain: r[strings.LastIndexByte(r, '@')+1:]})
	}
	if err := d.Commit(env); err != nil {
		e.t.Fatal(err)
	}
	return d.ID()
}

func TestQueue(t *testing.T) {
	e := setup(t, nil)
	e.want(e.do(e.site, "POST", "/domains", domainBody("a.isp1.test", "isp1", "mx")), 201, "a")
	e.want(e.do(e.site, "POST", "/domains", domainBody("b.isp2.test", "isp2", "mx")), 201, "b")
	isp1 := e.token("partner:isp1")
	isp2 := e.token("partner:isp2")
	both := e.enqueue("s@sender.test", "x@a.isp1.test", "y@b.isp2.test")
	only1 := e.enqueue("s@sender.test", "z@a.isp1.test")

	var l list[queue.Summary]
	e.do(e.site, "GET", "/queue", nil).decode(t, &l)
	if len(l.Items) != 2 {
		t.Fatalf("site sees %d", len(l.Items))
	}
	e.do(isp2, "GET", "/queue", nil).decode(t, &l)
	if len(l.Items) != 1 || l.Items[0].ID != both || len(l.Items[0].Rcpts) != 1 || l.Items[0].Rcpts[0].Addr != "y@b.isp2.test" {
		t.Errorf("isp2 sees %+v", l.Items)
	}
	e.do(isp1, "GET", "/queue?domain=a.isp1.test&limit=1", nil).decode(t, &l)
	if len(l.Items) != 1 || l.NextOffset != 1 {
		t.Errorf("isp1 page = %d items, next %d", len(l.Items), l.NextOffset)
	}
	e.want(e.do(isp2, "GET", "/queue/"+only1, nil), 404, "isp2 shows isp1's message")
	e.want(e.do(isp2, "POST", "/queue/"+only1+"/retry", nil), 404, "isp2 retries isp1's message")
	e.want(e.do(isp1, "GET", "/queue/"+only1, nil), 200, "show")
	e.want(e.do(isp1, "POST", "/queue/"+only1+"/hold", nil), 200, "hold")
	e.want(e.do(isp1, "POST", "/queue/"+only1+"/retry", nil), 409, "retry held")
	e.do(e.site, "GET", "/queue?held=true", nil).decode(t, &l)
	if len(l.Items) != 1 || l.Items[0].ID != only1 || !l.Items[0].Held {
		t.Errorf("held = %+v", l.Items)
	}
	e.want(e.do(isp1, "POST", "/queue/"+only1+"/release", nil), 200, "release")
	e.want(e.do(isp1, "POST", "/queue/"+only1+"/retry", nil), 200, "retry")
	e.want(e.do(isp1, "DELETE", "/queue/"+both, nil), 403, "partner deletes a shared message")
	r := e.do(isp1, "POST", "/queue/retry?domain=a.isp1.test", nil)
	e.want(r, 200, "retry domain")
	e.want(e.do(isp1, "DELETE", "/queue/"+only1, nil), 204, "delete")
	e.want(e.do(e.site, "GET", "/queue/"+only1, nil), 404, "deleted")
	if _, err := e.q.Show(only1); err != queue.ErrNotFound {
		t.Errorf("queue still has it: %v", err)
	}
	e.want(e.do(e.site, "DELETE", "/queue/"+both, nil), 204, "site deletes a shared message")
}

func TestMessagesAndStats(t *testing.T) {
	e := setup(t, nil)
	e.want(e.do(e.site, "POST", "/domains", domainBody("a.isp1.test", "isp1", "mx")), 201, "a")
	e.want(e.do(e.site, "POST", "/domains", domainBody("b.isp2.test", "isp2", "mx")), 201, "b")
	dom := e.token("domain:a.isp1.test")
	isp2 := e.token("partner:isp2")

	conn := e.log.With("conn_id", "c1", "ip", "192.0.2.9")
	conn.Info(tracking.TxnMessage, "queue_id", "QSHARED", "from", "alice@sender.test",
		"rcpts", []string{"x@a.isp1.test", "y@b.isp2.test"}, "size", int64(100), "outcome", "queued", "reply", "250 2.0.0 Ok")
	conn.Info(tracking.TxnMessage, "queue_id", "QREJ", "from", "spam@bad.test",
		"rcpts", []string{"y@b.isp2.test"}, "outcome", "rejected", "reply", "550 5.7.1 no", "reason", "dnsbl: listed")
	e.log.With("queue_id", "QSHARED", "domain", "a.isp1.test").Info("queue: delivered", "rcpt", "x@a.isp1.test", "reply", "250 ok", "host", "mx1:25")
	e.log.With("queue_id", "QSHARED", "domain", "b.isp2.test").Warn("queue: deferred", "rcpt", "y@b.isp2.test", "reply", "451 later", "host", "mx2:25")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.tr.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	var l list[tracking.Message]
	e.do(e.site, "GET", "/messages?rcpt=B.ISP2", nil).decode(t, &l)
	if len(l.Items) != 2 {
		t.Errorf("site search by rcpt: %d", len(l.Items))
	}
	e.do(e.site, "GET", "/messages?ip=192.0.2.9&action=rejected&since=1h", nil).decode(t, &l)
	if len(l.Items) != 1 || l.Items[0].QueueID != "QREJ" {
		t.Errorf("site search by ip+action: %+v", l.Items)
	}
	e.do(dom, "GET", "/messages", nil).decode(t, &l)
	if len(l.Items) != 1 || l.Items[0].QueueID != "QSHARED" || strings.Join(l.Items[0].Rcpts, ",") != "x@a.isp1.test" ||
		len(l.Items[0].Deliveries) != 1 || l.Items[0].Deliveries[0].Outcome != "delivered" {
		t.Errorf("domain token sees %+v", l.Items)
	}
	e.want(e.do(dom, "GET", "/messages/QREJ", nil), 404, "domain token reads another domain's message")
	var md messageDetail
	r := e.do(dom, "GET", "/messages/QSHARED", nil)
	e.want(r, 200, "message detail")
	r.decode(t, &md)
	for _, ev := range md.Events {
		if strings.Contains(ev.Rcpt, "isp2") || ev.Domain == "b.isp2.test" {
			t.Errorf("domain token sees another domain's event %+v", ev)
		}
	}
	if len(md.Events) != 2 {
		t.Errorf("events = %+v", md.Events)
	}

	var st tracking.Stats
	e.do(isp2, "GET", "/stats?since=2h&bucket=30m", nil).decode(t, &st)
	if st.Totals["delivered"] != 1 || st.Totals["rejected"] != 1 || st.Deliveries["deferred"] != 1 || st.Deliveries["delivered"] != 0 ||
		len(st.Reasons["b.isp2.test"]) != 1 || st.Reasons["b.isp2.test"][0].Reason != "dnsbl" {
		t.Errorf("isp2 stats = %+v", st)
	}
	e.do(dom, "GET", "/stats", nil).decode(t, &st)
	if st.Totals["delivered"] != 1 || st.Totals["rejected"] != 0 || len(st.Buckets) < 24 {
		t.Errorf("domain stats = %+v", st)
	}
}

// TestTokenSecrets: the token is shown once and only its hash is stored.
func TestTokenSecrets(t *testing.T) {
	e := setup(t, nil)
	tok := e.token("site")
	var n int
	if err := e.st.DB().QueryRow(sqlstore.Rebind(e.st.Driver(), `SELECT COUNT(*) FROM api_tokens WHERE hash = ?`), hashToken(tok)).Scan(&n); err != nil || n != 1 {
		t.Fatalf("hash lookup: %d %v", n, err)
	}
	rows, err := e.st.DB().Query(`SELECT id, hash, role, label FROM api_tokens`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	secret := tok[strings.LastIndexByte(tok, '_')+1:]
	for rows.Next() {
		var a, b, c, d string
		rows.Scan(&a, &b, &c, &d)
		if strings.Contains(a+b+c+d, secret) {
			t.Error("the token's secret is stored")
		}
	}
	if r := e.do(e.site, "GET", "/tokens", nil); strings.Contains(string(r.body), secret) {
		t.Error("GET /tokens shows a secret")
	}
	e.want(e.do(tok, "GET", "/domains", nil), 200, "new token works")
}

func TestConfigValidate(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.DefaultPageSize = c.MaxPageSize + 1
	if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "default_page_size:") {
		t.Errorf("err = %v", err)
	}
}

func TestParseRole(t *testing.T) {
	for _, ok := range []string{"site", "partner:isp1", "partner:a.b-c_d", "domain:example.com"} {
		if _, _, err := ParseRole(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "root", "partner:", "partner:Big ISP", "domain:", "domain:Example.COM", "domain:x", "site:x"} {
		if _, _, err := ParseRole(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestPostgres runs the main tests over PostgreSQL (MOAT_TEST_POSTGRES, a
// DSN with the right to create databases).
func TestPostgres(t *testing.T) {
	srv := pgtest.Open(t)
	saved := openStore
	defer func() { openStore = saved }()
	openStore = func(t *testing.T) store.Store {
		st, err := sqlstore.OpenPostgres(context.Background(), srv.Fresh(t, "moat_api_test"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	t.Run("DomainCRUD", TestDomainCRUD)
	t.Run("Authorization", TestAuthorization)
	t.Run("Recipients", TestRecipients)
	t.Run("MessagesAndStats", TestMessagesAndStats)
	t.Run("TokenSecrets", TestTokenSecrets)
}

// BenchmarkReplaceRecipients measures a bulk replace of 5000 recipients,
// half of them new each time, through the HTTP API.
func BenchmarkReplaceRecipients(b *testing.B) {
	st, err := sqlstore.OpenSQLite(context.Background(), filepath.Join(b.TempDir(), "moat.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	a, err := New(DefaultConfig(), Deps{Store: st})
	if err != nil {
		b.Fatal(err)
	}
	tok, err := CreateToken(context.Background(), st, "site", "bench")
	if err != nil {
		b.Fatal(err)
	}
	st.PutDomain(context.Background(), &store.Domain{Name: "bench.test", Backends: []store.Backend{{Host: "mx", Port: 25}}})
	srv := httptest.NewServer(a)
	defer srv.Close()
	for i := 0; b.Loop(); i++ {
		list := make([]RecipientJSON, 5000)
		for j := range list {
			list[j].Local = fmt.Sprintf("u%d", j+i*2500)
		}
		body, _ := json.Marshal(list)
		req, _ := http.NewRequest("PUT", srv.URL+"/api/v1/domains/bench.test/recipients", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		res, err := srv.Client().Do(req)
		if err != nil || res.StatusCode != 200 {
			b.Fatal(res.Status, err)
		}
		res.Body.Close()
	}
}
