package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readFile(path string) ([]byte, error) { return os.ReadFile(path) }

// baseDomain makes a configuration valid apart from the case under test.
const baseDomain = "domains:\n  - name: a.example\n    backends: [mx.a.example]\n"

// TestMinimalConfig: a file with only a domain is valid (every other
// setting has a default), and an empty file is valid too.
func TestMinimalConfig(t *testing.T) {
	for _, src := range []string{baseDomain, "", "# nothing\n"} {
		c, err := Parse("min.yaml", []byte(src))
		if err != nil {
			t.Fatalf("%q: %v", src, err)
		}
		if c.SMTP.Hostname == "" || c.Queue.SpoolDir != filepath.Join("data", "spool") || c.Store.DSN != filepath.Join("data", "moat.db") {
			t.Errorf("%q: derived defaults not filled: hostname %q spool %q dsn %q", src, c.SMTP.Hostname, c.Queue.SpoolDir, c.Store.DSN)
		}
	}
}

// TestDerivedDefaults: keys whose default depends on other settings follow
// them, and explicit values win.
func TestDerivedDefaults(t *testing.T) {
	c, err := Parse("d.yaml", []byte("hostname: mx.moat.example\ndata_dir: /srv/moat\nsmtp:\n  listen: [\"192.0.2.1:25\", \":2525\"]\nrelay:\n  hostname: out.moat.example\n"+baseDomain))
	if err != nil {
		t.Fatal(err)
	}
	for key, got := range map[string]string{
		"smtp.hostname": c.SMTP.Hostname, "queue.hostname": c.Queue.Hostname, "relay.hostname": c.Relay.Hostname,
		"queue.spool_dir": c.Queue.SpoolDir, "quarantine.quarantine_dir": c.Quarantine.Dir, "store.dsn": c.Store.DSN,
		"pass.secret_file": c.Pass.SecretFile, "smtp.tls_dir": c.SMTP.TLSDir,
		"checks.helo.hostnames": strings.Join(c.Checks.HELO.Hostnames, ","), "checks.helo.listen_addrs": strings.Join(c.Checks.HELO.ListenAddrs, ","),
	} {
		want := map[string]string{
			"smtp.hostname": "mx.moat.example", "queue.hostname": "mx.moat.example", "relay.hostname": "out.moat.example",
			"queue.spool_dir": "/srv/moat/spool", "quarantine.quarantine_dir": "/srv/moat/quarantine", "store.dsn": "/srv/moat/moat.db",
			"pass.secret_file": "/srv/moat/pass.key", "smtp.tls_dir": "/srv/moat/tls",
			"checks.helo.hostnames": "mx.moat.example", "checks.helo.listen_addrs": "192.0.2.1",
		}[key]
		if got != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	if len(c.DNS.Resolvers) == 0 {
		t.Error("dns.resolvers not filled")
	}
}

// TestUnknownKey: strict decoding names the key and its line, at every depth.
func TestUnknownKey(t *testing.T) {
	for _, c := range []struct{ src, key, line string }{
		{"hostnam: x\n", `"hostnam"`, "line 1"},
		{"smtp:\n  listen: [\"127.0.0.1:25\"]\n  max_recipient: 500\n", `"max_recipient"`, "line 3"},
		{"checks:\n  attach:\n    policy:\n      blocked_extension:\n        actoin: flag\n", `"actoin"`, "line 5"},
		{"policy:\n  layers:\n    dnsbl:\n      mod: flag\n", `"mod"`, "line 4"},
		{baseDomain + "  - name: b.example\n    backend: [mx.b.example]\n", `"backend"`, "line 5"},
		{"checks:\n  dnsbl:\n    zones:\n      - zone: bl.example\n        wieght: 1\n", `"wieght"`, "line 5"},
	} {
		_, err := Parse("u.yaml", []byte(c.src))
		if err == nil {
			t.Errorf("%q: accepted", c.src)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, c.key) || !strings.Contains(msg, c.line) || !strings.HasPrefix(msg, "u.yaml: ") {
			t.Errorf("%q: error %q should name the file, %s and %s", c.src, msg, c.key, c.line)
		}
	}
	// In a domain's policy override the message names the domain, the
	// override's line and the key.
	_, err := Parse("u.yaml", []byte(baseDomain+"    policy:\n      tag_scor: 3\n"))
	if err == nil || !strings.Contains(err.Error(), "domains[0].policy (line 5)") || !strings.Contains(err.Error(), "tag_scor") {
		t.Errorf("unknown key in a domain policy: %v", err)
	}
}

// TestWrongType: a value of the wrong type is refused with its line.
func TestWrongType(t *testing.T) {
	for _, c := range []struct{ src, line string }{
		{"smtp:\n  max_recipients: lots\n", "line 2"},
		{"log:\n  level: [a, b]\n", "line 2"},
		{"relay:\n  command_timeout: soon\n", "line 2"},
		{"checks:\n  greylist:\n    enabled: maybe\n", "line 3"},
		{"domains: example.com\n", "line 1"},
	} {
		_, err := Parse("w.yaml", []byte(c.src))
		if err == nil {
			t.Errorf("%q: accepted", c.src)
			continue
		}
		if !strings.Contains(err.Error(), c.line) {
			t.Errorf("%q: error %q lacks %s", c.src, err, c.line)
		}
	}
	// queue.Duration values are refused too (with neither line nor key: see
	// TestWrongTypeNamesKey).
	if _, err := Parse("w.yaml", []byte("queue:\n  min_backoff: soon\n")); err == nil {
		t.Error("queue.min_backoff: soon accepted")
	}
}

// TestWrongTypeNamesKey is the part of the brief the config package does
// not meet yet: yaml.v3 type errors carry the line but not the key
// ("line 2: cannot unmarshal !!str `lots` into int"), and errors from
// UnmarshalText (queue.Duration) carry neither. Reported to the lead; remove
// the skip when config.Parse maps lines to key paths.
func TestWrongTypeNamesKey(t *testing.T) {
	cases := map[string]string{
		"smtp:\n  max_recipients: lots\n": "max_recipients",
		"queue:\n  min_backoff: soon\n":   "min_backoff",
	}
	var missing []string
	for src, key := range cases {
		if _, err := Parse("w.yaml", []byte(src)); err == nil || !strings.Contains(err.Error(), key) {
			missing = append(missing, key)
		}
	}
	if len(missing) > 0 {
		t.Errorf("wrong-type errors do not name %v", missing)
	}
}

// TestValidateNamesKey triggers every validation error reachable from the
// file and requires the message to start with the key's full path.
func TestValidateNamesKey(t *testing.T) {
	cases := []struct{ src, want string }{
		{"data_dir: \"\"\n", "data_dir: "},
		{"log:\n  level: loud\n", "log.level: "},
		{"log:\n  format: xml\n", "log.format: "},
		{"http:\n  listen: nowhere\n", "http.listen: "},
		{"store:\n  driver: mysql\n", "store.driver: "},
		{"store:\n  driver: postgres\n", "store.dsn: "},
		{"gateway:\n  addresses: [mx.example]\n", "gateway.addresses[0]: "},
		{"policy:\n  layers:\n    dnsbl: {mode: maybe}\n", "policy.layers.dnsbl.mode: "},
		{"policy:\n  layers:\n    rdns: {on_error: shrug}\n", "policy.layers.rdns.on_error: "},
		{"policy:\n  tag_score: 20\n", "policy.thresholds: "},

		{"domains:\n  - name: not_a_domain\n    backends: [mx.a.example]\n", "domains[0].name: "},
		{"domains:\n  - name: a.example\n", "domains[0].backends: "},
		{baseDomain + "  - name: b.example\n    backends: [\"mx.b.example:99999\"]\n", "domains[1].backends[0]: "},
		{baseDomain + "  - name: A.example.\n    backends: [mx.a.example]\n", "domains[1].name: "},
		{baseDomain + "    tls: always\n", "domains[0].tls: "},
		{baseDomain + "    max_conns: -1\n", "domains[0].max_conns: "},
		{baseDomain + "    recipients: {mode: guess}\n", "domains[0].recipients.mode: "},
		{baseDomain + "    recipients: {mode: table}\n", "domains[0].recipients.list: "},
		{baseDomain + "    recipients: {list: [\"a@b.example\"]}\n", "domains[0].recipients.list[0]: "},
		{baseDomain + "    policy:\n      layers:\n        dnsbl: {mode: maybe}\n", "domains[0].policy.layers.dnsbl.mode: "},
		{baseDomain + "    policy:\n      reject_score: 1\n", "domains[0].policy.thresholds: "},

		{"smtp:\n  listen: []\n", "smtp.listen: "},
		{"smtp:\n  listen: [nowhere]\n", "smtp.listen: "},
		{"smtp:\n  listen: [\"127.0.0.1:99999\"]\n", "smtp.listen: "},
		{"http:\n  listen: 127.0.0.1:99999\n", "http.listen: "},
		{"web:\n  listen: 127.0.0.1:70000\n", "web.listen: "},
		{"check_timeout: 5 minutes\n", "line 1: check_timeout: "},
		{"hostname: a.example\n---\nbogus: 1\n", "line 3: a second YAML document"},
		{"smtp:\n  max_message_size: 10\n", "smtp.max_message_size: "},
		{"smtp:\n  max_recipients: 5\n", "smtp.max_recipients: "},
		{"smtp:\n  max_line_length: 80\n", "smtp.max_line_length: "},
		{"smtp:\n  max_command_line_length: 100\n", "smtp.max_command_line_length: "},
		{"smtp:\n  command_timeout: 10ms\n", "smtp.command_timeout: "},
		{"smtp:\n  data_timeout: 10ms\n", "smtp.data_timeout: "},
		{"smtp:\n  session_timeout: 1m\n", "smtp.session_timeout: "},
		{"smtp:\n  max_connections: 0\n", "smtp.max_connections: "},
		{"smtp:\n  max_connections_per_ip: 0\n", "smtp.max_connections_per_ip: "},
		{"smtp:\n  conn_rate_per_ip: -1\n", "smtp.conn_rate_per_ip: "},
		{"smtp:\n  max_errors: 0\n", "smtp.max_errors: "},
		{"smtp:\n  tls_cert: /etc/moat/cert.pem\n", "smtp.tls_cert: "},
		{"smtp:\n  greet_pause: 2m\n", "smtp.greet_pause: "},
		{"smtp:\n  hostname: \"mx moat\"\n", "smtp.hostname: "},

		{"queue:\n  workers: 0\n", "queue.workers: "},
		{"queue:\n  per_domain: 0\n", "queue.per_domain: "},
		{"queue:\n  min_backoff: 0s\n", "queue.min_backoff: "},
		{"queue:\n  max_backoff: 1s\n", "queue.max_backoff: "},
		{"queue:\n  jitter: 2\n", "queue.jitter: "},
		{"queue:\n  max_lifetime: 0s\n", "queue.max_lifetime: "},
		{"queue:\n  delay_warning: -1h\n", "queue.delay_warning: "},
		{"queue:\n  shutdown_grace: -1s\n", "queue.shutdown_grace: "},
		{"queue:\n  hostname: \"a b\"\n", "queue.hostname: "},

		{"relay:\n  hostname: \"a b\"\n", "relay.hostname: "},
		{"relay:\n  connect_timeout: 0s\n", "relay.connect_timeout: "},
		{"relay:\n  idle_timeout: 1ms\n", "relay.idle_timeout: "},
		{"relay:\n  max_messages_per_conn: 0\n", "relay.max_messages_per_conn: "},
		{"relay:\n  tls_ca_file: /nonexistent/ca.pem\n", "relay.tls_ca_file: "},

		{"check_timeout: 0s\n", "check_timeout: "},

		{"dns:\n  resolvers: [\"not an address\"]\n", "dns.resolvers: "},
		{"dns:\n  timeout: 2m\n", "dns.timeout: "},
		{"dns:\n  attempts: 0\n", "dns.attempts: "},
		{"dns:\n  cache_size: -1\n", "dns.cache_size: "},
		{"dns:\n  min_ttl: -1s\n", "dns.min_ttl: "},
		{"dns:\n  max_ttl: 1s\n", "dns.max_ttl: "},
		{"dns:\n  negative_ttl: -1s\n", "dns.negative_ttl: "},

		{"checks:\n  lists:\n    allow_ips: [mx.example]\n", "checks.lists.allow_ips: "},
		{"checks:\n  lists:\n    block_senders: [\"a b\"]\n", "checks.lists.block_senders: "},
		{"checks:\n  lists:\n    allow_weight: 5\n", "checks.lists.allow_weight: "},
		{"checks:\n  rdns:\n    timeout: 0s\n", "checks.rdns.timeout: "},
		{"checks:\n  dnsbl:\n    timeout: 0s\n", "checks.dnsbl.timeout: "},
		{"checks:\n  dnsbl:\n    self_test_interval: 1ms\n", "checks.dnsbl.self_test_interval: "},
		{"checks:\n  dnsbl:\n    reject_threshold: 0\n", "checks.dnsbl.reject_threshold: "},
		{"checks:\n  dnsbl:\n    zones:\n      - zone: \"\"\n", "checks.dnsbl.zones[0]: "},
		{"checks:\n  dnsbl:\n    zones:\n      - {zone: bl.example, weight: 1}\n      - {zone: BL.example., weight: 1}\n", "checks.dnsbl.zones[1].zone: "},
		{"checks:\n  helo:\n    hostnames: [\"bad name\"]\n", "checks.helo.hostnames: "},
		{"checks:\n  helo:\n    listen_addrs: [mx.example]\n", "checks.helo.listen_addrs: "},
		{"checks:\n  botnet:\n    pregreet_weight: -1\n", "checks.botnet.pregreet_weight"},
		{"checks:\n  spf:\n    lookup_limit: 0\n", "checks.spf.lookup_limit: "},
		{"checks:\n  spf:\n    void_lookup_limit: 99\n", "checks.spf.void_lookup_limit: "},
		{"checks:\n  spf:\n    timeout: 0s\n", "checks.spf.timeout: "},
		{"checks:\n  recipient:\n    default_mode: guess\n", "checks.recipient.default_mode: "},
		{"checks:\n  recipient:\n    tag_separators: \"@\"\n", "checks.recipient.tag_separators: "},
		{"checks:\n  recipient:\n    callout_negative_ttl: -1s\n", "checks.recipient.table_cache_ttl, callout_positive_ttl, callout_negative_ttl: "},
		{"checks:\n  recipient:\n    cache_size: 0\n", "checks.recipient.cache_size: "},
		{"checks:\n  greylist:\n    window: 1m\n", "checks.greylist.window: "},
		{"checks:\n  greylist:\n    known_good_ttl: 0s\n", "checks.greylist.known_good_ttl: "},
		{"checks:\n  greylist:\n    ipv4_prefix: 40\n", "checks.greylist.ipv4_prefix: "},
		{"checks:\n  greylist:\n    ipv6_prefix: 8\n", "checks.greylist.ipv6_prefix: "},
		{"checks:\n  greylist:\n    skip_networks: [10.0.0.1]\n", "checks.greylist.skip_networks: "},
		{"checks:\n  attach:\n    max_parts: 0\n", "checks.attach.max_parts: "},
		{"checks:\n  attach:\n    max_archive_nesting: 9\n", "checks.attach.max_archive_nesting: "},
		{"checks:\n  attach:\n    max_total_bytes: 2048\n", "checks.attach.max_total_bytes: "},
		{"checks:\n  attach:\n    policy:\n      blocked_extensions: [exe]\n", "checks.attach.policy.blocked_extensions: "},
		{"checks:\n  attach:\n    policy:\n      blocked_types: [executable]\n", "checks.attach.policy.blocked_types: "},
		{"checks:\n  attach:\n    policy:\n      double_extension: {action: drop, score: 1}\n", "checks.attach.policy.double_extension.action: "},
		{"checks:\n  attach:\n    policy:\n      archive_limit: {action: flag, score: -1}\n", "checks.attach.policy.archive_limit.score: "},
		{"checks:\n  clamav:\n    addrs: []\n", "checks.clamav.addrs: "},
		{"checks:\n  clamav:\n    addrs: [\"udp:1.2.3.4:3310\"]\n", "checks.clamav.addrs: "},
		{"checks:\n  clamav:\n    scan_timeout: 0s\n", "checks.clamav.scan_timeout: "},
		{"checks:\n  clamav:\n    stream_max_length: 10\n", "checks.clamav.stream_max_length: "},
		{"checks:\n  clamav:\n    health_interval: 1ms\n", "checks.clamav.health_interval: "},
		{"checks:\n  clamav:\n    idle_timeout: 0s\n", "checks.clamav.idle_timeout: "},
		{"checks:\n  clamav:\n    oversize: shrug\n", "checks.clamav.oversize: "},
		{"checks:\n  dkim:\n    max_signatures: 0\n", "checks.dkim.max_signatures: "},
		{"checks:\n  dmarc:\n    fail_score: 500\n", "checks.dmarc.fail_score: "},
		{"checks:\n  uribl:\n    max_lookups: 0\n", "checks.uribl.max_lookups: "},
		{"checks:\n  uribl:\n    zones:\n      - {name: dbl.example, kind: url, symbol: U, test_entry: t.example}\n", "checks.uribl.zones[0].kind: "},
		{"checks:\n  uribl:\n    zones:\n      - {name: dbl.example, kind: domain, symbol: U}\n", "checks.uribl.zones[0].test_entry: "},
		{"checks:\n  rules:\n    reload_interval: -1s\n", "checks.rules.reload_interval: "},
		{"checks:\n  rules:\n    local_files: [\"\"]\n", "checks.rules.local_files[0]: "},
		{"checks:\n  bayes:\n    classifier:\n      algorithm: magic\n", "checks.bayes.classifier.algorithm: "},
		{"checks:\n  bayes:\n    classifier:\n      hash_bits: 40\n", "checks.bayes.classifier.hash_bits: "},
		{"checks:\n  bayes:\n    classifier:\n      threshold: 1\n", "checks.bayes.classifier.threshold: "},
		{"checks:\n  bayes:\n    max_points: 99\n", "checks.bayes.max_points: "},

		{"quarantine:\n  retention: 1m\n", "quarantine.retention: "},
		{"quarantine:\n  domain_retention: {a.example: 1m}\n", "quarantine.domain_retention: "},
		{"quarantine:\n  expiry_interval: 1ms\n", "quarantine.expiry_interval: "},
		{"quarantine:\n  digest_interval: 1s\n", "quarantine.digest_interval: "},
		{"quarantine:\n  digest_from: nobody\n", "quarantine.digest_from: "},
		{"quarantine:\n  digest_max_entries: 0\n", "quarantine.digest_max_entries: "},
		{"quarantine:\n  link_ttl: 1s\n", "quarantine.link_ttl: "},
		{"quarantine:\n  base_url: ftp://q.example\n", "quarantine.base_url: "},

		{"web:\n  listen: nowhere\n", "web.listen: "},
		{"web:\n  session_ttl: 1s\n", "web.session_ttl: "},
		{"web:\n  login_max_failures: 0\n", "web.login_max_failures: "},
		{"web:\n  login_window: 1ms\n", "web.login_window: "},
		{"web:\n  page_size: 5\n", "web.page_size: "},
		{"web:\n  title: \" \"\n", "web.title: "},

		{"api:\n  max_body_bytes: 10\n", "api.max_body_bytes: "},
		{"api:\n  auth_failures_per_minute: 0\n", "api.auth_failures_per_minute: "},
		{"api:\n  auth_failure_burst: 0\n", "api.auth_failure_burst: "},
		{"api:\n  max_page_size: 0\n", "api.max_page_size: "},
		{"api:\n  default_page_size: 5000\n", "api.default_page_size: "},

		{"tracking:\n  retention: 1m\n", "tracking.retention: "},
		{"tracking:\n  buffer: 0\n", "tracking.buffer: "},
		{"tracking:\n  batch_size: 0\n", "tracking.batch_size: "},
		{"tracking:\n  flush_interval: 2m\n", "tracking.flush_interval: "},
		{"tracking:\n  prune_interval: 1s\n", "tracking.prune_interval: "},

		{"audit:\n  every: -1h\n", "audit.every: "},
	}
	for _, c := range cases {
		_, err := Parse("v.yaml", []byte(c.src))
		if err == nil {
			t.Errorf("%q: accepted, want %q", c.src, c.want)
			continue
		}
		if want := "v.yaml: " + c.want; !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%q:\n got  %q\n want %q...", c.src, err, want)
		}
	}
}

// TestValidateKnownGaps documents validation the config package does not
// do yet (reported to the lead): with several errors in one section only
// the first line carries the section prefix, and the audit section's own
// Validate is never called. Remove the skip when fixed.
func TestValidateKnownGaps(t *testing.T) {
	var gaps []string
	_, err := Parse("g.yaml", []byte("smtp:\n  max_recipients: 5\n  max_errors: 0\n"))
	if err == nil || !strings.Contains(err.Error(), "smtp.max_errors") {
		gaps = append(gaps, "second smtp error lacks its smtp. prefix")
	}
	if _, err := Parse("g.yaml", []byte("gateway:\n  hostnames: [mx.moat.example]\naudit:\n  smtp_port: 0\n  concurrency: 0\n")); err == nil || !strings.Contains(err.Error(), "audit.smtp_port") {
		gaps = append(gaps, "audit.smtp_port: 0 is not validated")
	}
	if len(gaps) > 0 {
		t.Errorf("gaps: %s", strings.Join(gaps, "; "))
	}
}

// TestDomainPolicyInheritsPerLayer: a domain's override inherits the site
// policy key by key, and a layer it names replaces the site's entry for
// that layer as a whole (as docs/configuration.md says).
func TestDomainPolicyInheritsPerLayer(t *testing.T) {
	src := "policy:\n  tag_score: 5\n  appeal: https://appeal.example\n  layers:\n    dnsbl: {mode: reject, on_error: ignore}\n    rdns: {mode: tempfail}\n" +
		baseDomain + "    policy:\n      tag_score: 4\n      layers:\n        dnsbl: {mode: flag, flag_score: 6}\n"
	c, err := Parse("p.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	p := c.Domains[0].effective
	if p.TagScore != 4 || p.QuarantineScore != 10 || p.Appeal != "https://appeal.example" {
		t.Errorf("thresholds/appeal: %+v", p)
	}
	if l := p.Layer("dnsbl"); l.Mode != "flag" || l.FlagScore != 6 || l.OnError != "tempfail" {
		t.Errorf("dnsbl: %+v, want the override as a whole (on_error back to its default)", l)
	}
	if l := p.Layer("rdns"); l.Mode != "tempfail" {
		t.Errorf("rdns: %+v, want the site's entry", l)
	}
	if l := c.Policy.Layer("dnsbl"); l.Mode != "reject" || l.OnError != "ignore" {
		t.Errorf("site dnsbl changed: %+v", l)
	}
	d, err := c.Domains[0].Domain()
	if err != nil || !strings.Contains(d.Policy, `"tag_score":4`) && !strings.Contains(d.Policy, `"TagScore":4`) {
		t.Errorf("store form of the policy: %q %v", d.Policy, err)
	}
}
