package lockdown

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// need returns the path of an external program, skipping the test when it
// is missing unless MOAT_REQUIRE_TOOLS=1.
func need(t *testing.T, prog string) string {
	t.Helper()
	p, err := exec.LookPath(prog)
	if err != nil {
		if os.Getenv("MOAT_REQUIRE_TOOLS") == "1" {
			t.Fatalf("%s not installed", prog)
		}
		t.Skipf("%s not installed", prog)
	}
	return p
}

func testConfig() Config {
	c := DefaultConfig()
	c.Gateway = []string{"192.0.2.10", "2001:db8::10", "198.51.100.0/28"}
	c.Ports = []int{25, 2525}
	c.Domain = "example.com"
	return c
}

func gen(t *testing.T, f Format, c Config) string {
	t.Helper()
	var b bytes.Buffer
	if err := Generate(&b, f, c); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func writeFile(t *testing.T, s string) string {
	p := filepath.Join(t.TempDir(), "rules")
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func TestNFTablesSyntax(t *testing.T) {
	nft := need(t, "nft")
	for _, c := range []Config{testConfig(), {Gateway: []string{"192.0.2.10"}, Ports: []int{25}}, {Gateway: []string{"2001:db8::10"}, Ports: []int{25}}} {
		s := gen(t, NFTables, c)
		if !strings.Contains(s, "delete table inet moat_lockdown") {
			t.Fatalf("not idempotent:\n%s", s)
		}
		run(t, nft, "-c", "-f", writeFile(t, s))
	}
}

func TestIPTablesSyntax(t *testing.T) {
	c := testConfig()
	for _, tc := range []struct {
		f    Format
		prog string
		want string
		not  string
	}{
		{IPTables, "iptables-restore", "-s 192.0.2.10/32 -j RETURN", "2001:db8"},
		{IP6Tables, "ip6tables-restore", "-s 2001:db8::10/128 -j RETURN", "192.0.2"},
	} {
		prog := need(t, tc.prog)
		s := gen(t, tc.f, c)
		if !strings.Contains(s, tc.want) || strings.Contains(s, tc.not) || !strings.Contains(s, "--dports 25,2525") {
			t.Errorf("%s output:\n%s", tc.f, s)
		}
		run(t, prog, "--test", "--noflush", writeFile(t, s))
	}
}

func TestPostfixCIDR(t *testing.T) {
	postmap := need(t, "postmap")
	s := gen(t, Postfix, testConfig())
	// Extract the cidr table section and query it with Postfix itself.
	start := strings.Index(s, "postfix reload (cidr tables need no postmap).\n")
	end := strings.Index(s, "\n# ---- master.cf")
	if start < 0 || end < 0 {
		t.Fatalf("no cidr section:\n%s", s)
	}
	table := writeFile(t, s[start+len("postfix reload (cidr tables need no postmap).\n"):end])
	for addr, want := range map[string]string{
		"192.0.2.10":    "OK",
		"198.51.100.7":  "OK",
		"2001:db8::10":  "OK",
		"203.0.113.5":   "REJECT 5.7.1",
		"2001:db8::11":  "REJECT 5.7.1",
		"198.51.100.16": "REJECT 5.7.1",
	} {
		out, _ := exec.Command(postmap, "-q", addr, "cidr:"+table).CombinedOutput()
		if !strings.HasPrefix(string(out), want) {
			t.Errorf("postmap -q %s: %q, want %q", addr, out, want)
		}
	}
	for _, w := range []string{"smtpd_milters = inet:127.0.0.1:8891", "milter_default_action = tempfail", "{auth_authen}", "2525       inet", "check_client_access,cidr:/etc/postfix/moat_clients.cidr"} {
		if !strings.Contains(s, w) {
			t.Errorf("postfix snippet lacks %q", w)
		}
	}
}

func TestExim(t *testing.T) {
	s := gen(t, Exim, testConfig())
	for _, w := range []string{"hostlist moat_clients = <; 127.0.0.0/8 ; ::1/128 ; 192.0.2.10/32 ; 198.51.100.0/28 ; 2001:db8::10/128", "inlist{$received_port}{25:2525}", "acl_smtp_connect = acl_moat_lockdown", "deny"} {
		if !strings.Contains(s, w) {
			t.Errorf("exim lacks %q:\n%s", w, s)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []Config{
		{Ports: []int{25}},
		{Gateway: []string{"nonsense"}, Ports: []int{25}},
		{Gateway: []string{"192.0.2.1"}},
		{Gateway: []string{"192.0.2.1"}, Ports: []int{70000}},
		{Gateway: []string{"192.0.2.1"}, Ports: []int{25}, Milter: "127.0.0.1:8891"},
	} {
		if err := Generate(&bytes.Buffer{}, NFTables, c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	if err := Generate(&bytes.Buffer{}, "pf", testConfig()); err == nil {
		t.Error("unknown format accepted")
	}
}

// TestEnforcement applies the rulesets for real, twice (idempotency), in a
// fresh network namespace, and checks that only the gateway address can
// connect. The test binary re-executes itself under `unshare -n`.
func TestEnforcement(t *testing.T) {
	if os.Getenv("MOAT_LOCKDOWN_NETNS") != "" {
		enforceInNetns(t)
		return
	}
	unshare := need(t, "unshare")
	need(t, "ip")
	for _, f := range []Format{NFTables, IPTables} {
		if f == NFTables {
			need(t, "nft")
		} else {
			need(t, "iptables-restore")
		}
		c := Config{Gateway: []string{"127.0.0.2", "2001:db8::10"}, Ports: []int{2525}}
		file := writeFile(t, gen(t, f, c))
		if out, err := exec.Command(unshare, "-n", "true").CombinedOutput(); err != nil {
			if os.Getenv("MOAT_REQUIRE_TOOLS") == "1" {
				t.Fatalf("unshare -n: %v %s", err, out)
			}
			t.Skipf("cannot create a network namespace: %v %s", err, out)
		}
		cmd := exec.Command(unshare, "-n", os.Args[0], "-test.run=^TestEnforcement$", "-test.v")
		cmd.Env = append(os.Environ(), "MOAT_LOCKDOWN_NETNS="+string(f), "MOAT_LOCKDOWN_FILE="+file)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestEnforcement") {
			t.Errorf("%s in netns: %v\n%s", f, err, out)
		}
	}
}

func enforceInNetns(t *testing.T) {
	f, file := Format(os.Getenv("MOAT_LOCKDOWN_NETNS")), os.Getenv("MOAT_LOCKDOWN_FILE")
	run(t, "ip", "link", "set", "lo", "up")
	ln, err := net.Listen("tcp", "0.0.0.0:2525")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	other, err := net.Listen("tcp", "0.0.0.0:2526") // not locked
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	apply := func() {
		switch f {
		case NFTables:
			run(t, "nft", "-f", file)
		case IPTables:
			run(t, "iptables-restore", "--noflush", file)
			run(t, "sh", "-c", "iptables -C INPUT -p tcp -j MOAT-LOCKDOWN 2>/dev/null || iptables -I INPUT 1 -p tcp -j MOAT-LOCKDOWN")
		}
	}
	list := func() string {
		var out []byte
		if f == NFTables {
			out, _ = exec.Command("nft", "list", "ruleset").CombinedOutput()
		} else {
			out, _ = exec.Command("iptables-save").CombinedOutput()
		}
		// Drop counters and comments, which change with traffic/time.
		var keep []string
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "#") || strings.Contains(l, "counter packets") {
				continue
			}
			keep = append(keep, strings.TrimSpace(l))
		}
		return strings.Join(keep, "\n")
	}
	dial := func(src string, port string) error {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", "127.0.0.1:"+port)
		if err == nil {
			c.Close()
		}
		return err
	}
	apply()
	once := list()
	apply()
	if twice := list(); twice != once {
		t.Fatalf("%s: applying twice changed the ruleset:\n--- once\n%s\n--- twice\n%s", f, once, twice)
	}
	if err := dial("127.0.0.2", "2525"); err != nil {
		t.Errorf("gateway address refused: %v", err)
	}
	err = dial("127.0.0.3", "2525")
	if !errors.Is(err, errConnRefused()) {
		t.Errorf("other address on locked port: %v, want connection refused", err)
	}
	if err := dial("127.0.0.3", "2526"); err != nil {
		t.Errorf("unlocked port affected: %v", err)
	}
}

// TestHostileInput: values that are not plain addresses, or that would let
// every client through, are refused; nothing reaches the output verbatim.
func TestHostileInput(t *testing.T) {
	base := func() Config { return Config{Gateway: []string{"192.0.2.10"}, Ports: []int{25}} }
	for _, mod := range []func(*Config){
		func(c *Config) { c.Gateway = []string{"1.2.3.4; drop"} },
		func(c *Config) { c.Gateway = []string{"mx.example.com"} },
		func(c *Config) { c.Gateway = []string{"fe80::1%eth0; flush ruleset"} },
		func(c *Config) { c.Gateway = []string{"0.0.0.0/0"} },
		func(c *Config) { c.Gateway = []string{"1.2.3.4/0"} },
		func(c *Config) { c.Gateway = []string{"::/0"} },
		func(c *Config) { c.Allow = []string{"::ffff:0.0.0.0/96"} },
		func(c *Config) { c.Domain = "example.com\nflush ruleset" },
		func(c *Config) { c.Milter = "inet:127.0.0.1:8891\nmilter_default_action = accept" },
		func(c *Config) { c.Milter = "inet:127.0.0.1:8891 -o x" },
		func(c *Config) { c.Milter = "inet:127.0.0.1" },
		func(c *Config) { c.Milter = "unix:" },
	} {
		c := base()
		mod(&c)
		for _, f := range Formats {
			var b bytes.Buffer
			if err := Generate(&b, f, c); err == nil {
				t.Errorf("%s: %+v accepted:\n%s", f, c, b.String())
			}
		}
	}
	for _, m := range []string{"inet:127.0.0.1:8891", "inet:[::1]:8891", "inet:localhost:8891", "unix:/run/moat/milter.sock", "unix:private/moat"} {
		c := base()
		c.Milter = m
		if s := gen(t, Postfix, c); !strings.Contains(s, "smtpd_milters = "+m+"\n") {
			t.Errorf("milter %s:\n%s", m, s)
		}
	}
	// The "Run:" hint must give moat milter an address it can listen on.
	c := base()
	c.Milter = "unix:/run/moat/milter.sock"
	if s := gen(t, Postfix, c); !strings.Contains(s, "moat milter --listen unix:/run/moat/milter.sock ") {
		t.Errorf("unix milter hint:\n%s", s)
	}
}

// TestPrefixNormalisation: IPv4-mapped IPv6 input becomes IPv4 (the form
// the kernel matches), and prefixes inside another one are dropped (nft
// refuses overlapping interval set elements).
func TestPrefixNormalisation(t *testing.T) {
	c := Config{Gateway: []string{"::ffff:198.51.100.0/120", "192.0.2.0/24", "192.0.2.10", "2001:db8::/32", "2001:db8::10"}, Allow: []string{"192.0.2.128/25"}, Ports: []int{25}}
	s := gen(t, NFTables, c)
	if !strings.Contains(s, "elements = { 192.0.2.0/24, 198.51.100.0/24 }") || !strings.Contains(s, "elements = { 2001:db8::/32 }") {
		t.Errorf("nftables sets:\n%s", s)
	}
	if nft, err := exec.LookPath("nft"); err == nil {
		run(t, nft, "-c", "-f", writeFile(t, s))
	}
}

// TestIPTablesManyPorts: -m multiport takes at most 15 ports per rule.
func TestIPTablesManyPorts(t *testing.T) {
	c := Config{Gateway: []string{"192.0.2.10"}, Ports: []int{25}}
	for p := 2500; p < 2520; p++ {
		c.Ports = append(c.Ports, p)
	}
	s := gen(t, IPTables, c)
	if n := strings.Count(s, "-j REJECT"); n != 2 {
		t.Errorf("%d REJECT rules for 21 ports, want 2:\n%s", n, s)
	}
	if prog, err := exec.LookPath("iptables-restore"); err == nil {
		run(t, prog, "--test", "--noflush", writeFile(t, s))
	}
}
