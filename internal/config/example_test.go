package config

import (
	"path/filepath"
	"reflect"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"moat.dev/moat/internal/policy"
)

// examplePath is a file of the repository's examples directory.
func examplePath(t *testing.T, name string) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller information")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "examples", name)
}

// TestDemoExampleLoads checks that examples/moat.yaml, the config of
// `make run`, loads and keeps the demo's settings.
func TestDemoExampleLoads(t *testing.T) {
	c, err := Load(examplePath(t, "moat.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.SMTP.Listen; len(got) != 1 || got[0] != "127.0.0.1:2525" {
		t.Errorf("smtp.listen = %v, want the loopback demo port", got)
	}
	if len(c.Domains) != 1 || c.Domains[0].Name != "example.com" || len(c.Domains[0].Backends) != 1 || c.Domains[0].Backends[0] != "127.0.0.1:2526" {
		t.Errorf("domains = %+v, want example.com -> moat sink on 127.0.0.1:2526", c.Domains)
	}
	d, err := c.Domains[0].Domain()
	if err != nil {
		t.Fatal(err)
	}
	if d.RecipientMode != "table" {
		t.Errorf("example.com recipient mode %q, want table", d.RecipientMode)
	}
	if !c.Checks.ClamAV.FailOpen {
		t.Error("checks.clamav.fail_open: the demo runs without clamd and needs true")
	}
	if c.Web.Listen != "127.0.0.1:8080" || c.Web.CookieSecure {
		t.Errorf("web = %s secure=%v, want 127.0.0.1:8080 over plain http", c.Web.Listen, c.Web.CookieSecure)
	}
	if c.HTTP.Listen != "127.0.0.1:8025" || c.DataDir != "./data" {
		t.Errorf("http.listen %q data_dir %q", c.HTTP.Listen, c.DataDir)
	}
}

// keyPaths returns the dotted key paths of a YAML mapping tree; sequences
// and scalars are leaves.
func keyPaths(n *yaml.Node, prefix string, out map[string]int) {
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		p := n.Content[i].Value
		if prefix != "" {
			p = prefix + "." + p
		}
		out[p] = n.Content[i].Line
		keyPaths(n.Content[i+1], p, out)
	}
}

func fullExample(t *testing.T) (*Config, map[string]int) {
	t.Helper()
	path := examplePath(t, "moat-full.yaml")
	c, err := Load(path)
	if err != nil {
		t.Fatalf("moat-full.yaml does not load: %v", err)
	}
	var n yaml.Node
	data, err := readFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &n); err != nil {
		t.Fatal(err)
	}
	keys := map[string]int{}
	keyPaths(&n, "", keys)
	return c, keys
}

// TestFullExampleComplete walks every key of the built-in defaults and
// requires it in examples/moat-full.yaml, so a new setting cannot be added
// without documenting it there.
func TestFullExampleComplete(t *testing.T) {
	_, fileKeys := fullExample(t)
	var n yaml.Node
	if err := n.Encode(Default()); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{}
	keyPaths(&n, "", want)
	if len(want) < 200 {
		t.Fatalf("only %d default key paths found: the walk is broken", len(want))
	}
	var missing []string
	for k := range want {
		if _, ok := fileKeys[k]; !ok {
			missing = append(missing, k)
		}
	}
	sort.Strings(missing)
	for _, k := range missing {
		t.Errorf("examples/moat-full.yaml lacks %s (document it with its default)", k)
	}
	// The sample check walks nested sections, not just the top level.
	for _, k := range []string{"checks.attach.policy.archive_limit.score", "checks.bayes.classifier.max_words", "audit.gateway.hostnames", "audit.every", "smtp.soft_bounce"} {
		if _, ok := want[k]; !ok {
			t.Errorf("default key walk misses %s", k)
		}
	}
}

// checkNames are the layer names: one per section of checks.
func checkNames() []string {
	var out []string
	rt := reflect.TypeOf(Checks{})
	for i := 0; i < rt.NumField(); i++ {
		out = append(out, strings.Split(rt.Field(i).Tag.Get("yaml"), ",")[0])
	}
	sort.Strings(out)
	return out
}

// TestFullExampleIsDefault loads examples/moat-full.yaml and requires the
// same effective configuration as no file at all, except for what the
// example sets on purpose:
//   - gateway (example host names and addresses; audit.gateway inherits it),
//   - domains (two example domains with per-domain policy overrides),
//   - policy.layers (every layer written out with its built-in default,
//     which must behave exactly as a missing entry),
//   - quarantine.domain_retention (one example entry).
func TestFullExampleIsDefault(t *testing.T) {
	got, _ := fullExample(t)

	if len(got.Domains) != 2 || len(got.Gateway.Hostnames) == 0 || len(got.Gateway.Addresses) == 0 {
		t.Fatalf("the example should set gateway and two domains: %+v %+v", got.Gateway, got.Domains)
	}
	if !reflect.DeepEqual(got.Audit.Gateway.Hostnames, got.Gateway.Hostnames) || !reflect.DeepEqual(got.Audit.Gateway.Addresses, got.Gateway.Addresses) {
		t.Errorf("audit.gateway %+v does not inherit gateway %+v", got.Audit.Gateway, got.Gateway)
	}

	// Every layer is written out, and each entry equals the built-in default.
	var layers []string
	def := policy.Default()
	for name := range got.Policy.Layers {
		layers = append(layers, name)
		if got.Policy.Layer(name) != def.Layer(name) {
			t.Errorf("policy.layers.%s = %+v, want the default %+v", name, got.Policy.Layer(name), def.Layer(name))
		}
	}
	sort.Strings(layers)
	if !reflect.DeepEqual(layers, checkNames()) {
		t.Errorf("policy.layers lists %v, want one entry per check %v", layers, checkNames())
	}
	if r := got.Quarantine.DomainRetention; len(r) != 1 || r["example.com"] != 2160*time.Hour {
		t.Errorf("quarantine.domain_retention = %v, want the example entry", r)
	}

	want := Default()
	want.Gateway = got.Gateway
	want.fill()
	got.Domains, want.Domains = nil, nil
	got.Policy.Layers = want.Policy.Layers
	got.Quarantine.DomainRetention = want.Quarantine.DomainRetention

	gy, err := yaml.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	wy, err := yaml.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if string(gy) != string(wy) {
		gl, wl := strings.Split(string(gy), "\n"), strings.Split(string(wy), "\n")
		for i := 0; i < len(gl) || i < len(wl); i++ {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Errorf("moat-full.yaml differs from the defaults at line %d of the marshalled config:\n file:    %s\n default: %s", i+1, g, w)
				break
			}
		}
	}
}

// TestFullExampleDomains checks the example domains: defaults of the
// domain form, and how their policy overrides inherit the site policy.
func TestFullExampleDomains(t *testing.T) {
	c, _ := fullExample(t)
	a, err := c.Domains[0].Domain()
	if err != nil {
		t.Fatal(err)
	}
	if a.Name != "example.com" || a.TLS != "opportunistic" || a.RecipientMode != "table" || len(a.Backends) != 1 || a.Backends[0].Port != 25 {
		t.Errorf("example.com: %+v", a)
	}
	rc, err := c.Domains[0].RecipientList()
	if err != nil {
		t.Fatal(err)
	}
	var alias bool
	for _, r := range rc {
		if r.Local == "sales" && r.Kind == "alias" && r.Target == "alice" {
			alias = true
		}
	}
	if !alias {
		t.Errorf("sales=alice is not an alias: %+v", rc)
	}
	p := c.Domains[0].effective
	if p == nil {
		t.Fatal("example.com has no effective policy")
	}
	// Overridden keys.
	if p.TagScore != 4 || !p.KeepRejected {
		t.Errorf("example.com override not applied: tag %v keep_rejected %v", p.TagScore, p.KeepRejected)
	}
	if l := p.Layer("dnsbl"); l.Mode != policy.ModeFlag || l.FlagScore != 6 || l.OnError != "tempfail" {
		t.Errorf("example.com dnsbl layer %+v", l)
	}
	// Inherited keys.
	if p.QuarantineScore != c.Policy.QuarantineScore || p.RejectScore != c.Policy.RejectScore || p.Layer("clamav") != c.Policy.Layer("clamav") {
		t.Errorf("example.com does not inherit the site policy: %+v", p)
	}
	// The override must not leak into the site policy.
	if c.Policy.TagScore != 5 || c.Policy.Layer("dnsbl").Mode != policy.ModeReject {
		t.Errorf("site policy changed by a domain override: %+v", c.Policy)
	}

	b, err := c.Domains[1].Domain()
	if err != nil {
		t.Fatal(err)
	}
	if b.TLS != "required" || b.RecipientMode != "callout" || b.Partner != "isp1" || len(b.Backends) != 2 ||
		b.Backends[0].Port != 2525 || b.Backends[1].Host != "2001:db8::10" || b.Backends[1].Port != 2525 {
		t.Errorf("example.org: %+v", b)
	}
	if l := c.Domains[1].effective.Layer("greylist"); !l.Observe || l.Mode != policy.ModeReject {
		t.Errorf("example.org greylist layer %+v", l)
	}
	if c.Domains[1].effective.Appeal != "postmaster@example.org" || c.Domains[1].effective.TagScore != 5 {
		t.Errorf("example.org policy %+v", c.Domains[1].effective)
	}
}
