// Package lockdown generates configuration that makes a customer's backend
// accept SMTP only from Moat: firewall rulesets (nftables, iptables,
// ip6tables) or MTA access rules (Postfix, Exim), plus the Postfix lines for
// `moat milter`. Every output is commented and idempotent: applying it twice
// gives the same state as applying it once.
package lockdown

import (
	"fmt"
	"io"
	"moat.dev/moat/internal/netaddr"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode"
)

// Format is an output format.
type Format string

// Formats.
const (
	NFTables  Format = "nftables"
	IPTables  Format = "iptables"  // IPv4, for iptables-restore --noflush
	IP6Tables Format = "ip6tables" // IPv6, for ip6tables-restore --noflush
	Postfix   Format = "postfix"
	Exim      Format = "exim"
)

// Formats lists the supported formats.
var Formats = []Format{NFTables, IPTables, IP6Tables, Postfix, Exim}

// Table and chain names used by the firewall outputs.
const (
	NFTable       = "moat_lockdown"
	IPTablesChain = "MOAT-LOCKDOWN"
)

// Config is what the lockdown is generated from.
type Config struct {
	// Gateway are Moat's addresses or CIDRs, IPv4 and IPv6: the only
	// clients allowed on the locked ports.
	Gateway []string `yaml:"gateway_addresses"`
	// Allow are extra clients allowed (e.g. an office network submitting on
	// port 25). Keep it short.
	Allow []string `yaml:"allow"`
	// Ports are the locked TCP ports: 25 and the port Moat relays to.
	Ports []int `yaml:"ports"`
	// AllowLoopback keeps connections over the loopback interface working
	// (local programs sending through the MTA).
	AllowLoopback bool `yaml:"allow_loopback"`
	// Milter is the Postfix milter address of `moat milter`.
	Milter string `yaml:"milter"`
	// Domain is only used in comments.
	Domain string `yaml:"-"`
}

// DefaultConfig returns the defaults: port 25, loopback allowed, the milter
// on 127.0.0.1:8891.
func DefaultConfig() Config {
	return Config{Ports: []int{25}, AllowLoopback: true, Milter: "inet:127.0.0.1:8891"}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if len(c.Gateway) == 0 {
		return fmt.Errorf("gateway_addresses: at least one of Moat's addresses is required")
	}
	for _, s := range c.Gateway {
		if _, err := netaddr.ParsePrefix(s); err != nil {
			return fmt.Errorf("gateway_addresses: %q is not an IP address or CIDR (%v)", s, err)
		}
	}
	for _, s := range c.Allow {
		if _, err := netaddr.ParsePrefix(s); err != nil {
			return fmt.Errorf("allow: %q is not an IP address or CIDR (%v)", s, err)
		}
	}
	if len(c.Ports) == 0 {
		return fmt.Errorf("ports: at least one port is required")
	}
	for _, p := range c.Ports {
		if p < 1 || p > 65535 {
			return fmt.Errorf("ports: %d is not a TCP port", p)
		}
	}
	if c.Milter != "" && !validMilter(c.Milter) {
		return fmt.Errorf("milter: %q must be inet:HOST:PORT or unix:PATH", c.Milter)
	}
	// Domain ends up in comments of every format: a line break in it would
	// start a new, uncommented line (a rule or a main.cf parameter).
	if c.Domain != "" && !validDomain(c.Domain) {
		return fmt.Errorf("domain: %q is not a domain name", c.Domain)
	}
	return nil
}

// validDomain accepts letters (IDN U-labels too), digits, '-', '_' and
// '.': no white space, line breaks or punctuation of any output syntax.
func validDomain(s string) bool {
	if len(s) > 253 {
		return false
	}
	for _, r := range s {
		if !(unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// validMilter accepts inet:HOST:PORT (HOST an IP address or a host name,
// IPv6 possibly in brackets) and unix:PATH without white space, commas or
// control characters: the value is written into main.cf.
func validMilter(s string) bool {
	if rest, ok := strings.CutPrefix(s, "unix:"); ok {
		if rest == "" {
			return false
		}
		for _, r := range rest {
			if r <= ' ' || r == 0x7f || r == ',' {
				return false
			}
		}
		return true
	}
	rest, ok := strings.CutPrefix(s, "inet:")
	if !ok {
		return false
	}
	i := strings.LastIndexByte(rest, ':')
	if i <= 0 {
		return false
	}
	host, port := rest[:i], rest[i+1:]
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
		return false
	}
	if h, ok := strings.CutPrefix(host, "["); ok {
		h, ok = strings.CutSuffix(h, "]")
		a, err := netip.ParseAddr(h)
		return ok && err == nil && a.Zone() == ""
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Zone() == ""
	}
	return validDomain(host) && !strings.Contains(host, ":")
}

type plan struct {
	v4, v6 []netip.Prefix // allowed clients
	ports  []int
	cfg    Config
}

func newPlan(cfg Config) (*plan, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &plan{cfg: cfg}
	seen := map[netip.Prefix]bool{}
	for _, s := range append(slices.Clone(cfg.Gateway), cfg.Allow...) {
		pr, _ := netaddr.ParsePrefix(s)
		if seen[pr] {
			continue
		}
		seen[pr] = true
		if pr.Addr().Is4() {
			p.v4 = append(p.v4, pr)
		} else {
			p.v6 = append(p.v6, pr)
		}
	}
	cmp := func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	}
	slices.SortFunc(p.v4, cmp)
	slices.SortFunc(p.v6, cmp)
	// nft refuses overlapping elements in an interval set ("conflicting
	// intervals specified"), so drop every prefix another one covers.
	p.v4, p.v6 = uncovered(p.v4), uncovered(p.v6)
	p.ports = slices.Clone(cfg.Ports)
	sort.Ints(p.ports)
	p.ports = slices.Compact(p.ports)
	return p, nil
}

// uncovered returns the prefixes of sorted ps that no other prefix of ps
// contains. Two CIDR prefixes are either disjoint or nested.
func uncovered(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		covered := false
		for _, q := range ps {
			if q != p && q.Bits() <= p.Bits() && q.Contains(p.Addr()) {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, p)
		}
	}
	return out
}

func (p *plan) portList(sep string) string {
	s := make([]string, len(p.ports))
	for i, n := range p.ports {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, sep)
}

func prefixes(ps []netip.Prefix, sep string) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, sep)
}

func (p *plan) header(b *strings.Builder, comment string, allowed []netip.Prefix) {
	fmt.Fprintf(b, "%s Generated by `moat lockdown`", comment)
	if p.cfg.Domain != "" {
		fmt.Fprintf(b, " for %s", p.cfg.Domain)
	}
	fmt.Fprintf(b, ".\n%s Only Moat may connect to TCP port(s) %s of this server:\n", comment, p.portList(", "))
	fmt.Fprintf(b, "%s spammers ignore MX records and deliver to the backend directly.\n", comment)
	fmt.Fprintf(b, "%s WARNING: every domain this server receives mail for must be routed\n", comment)
	fmt.Fprintf(b, "%s through Moat, or its mail will bounce (see `moat audit`: partial_domain).\n", comment)
	fmt.Fprintf(b, "%s Allowed clients: %s\n", comment, prefixes(allowed, " "))
}

// Generate writes the lockdown configuration in format f.
func Generate(w io.Writer, f Format, cfg Config) error {
	p, err := newPlan(cfg)
	if err != nil {
		return err
	}
	var b strings.Builder
	switch f {
	case NFTables:
		p.nftables(&b)
	case IPTables:
		p.iptables(&b, "iptables", p.v4, "tcp-reset")
	case IP6Tables:
		p.iptables(&b, "ip6tables", p.v6, "tcp-reset")
	case Postfix:
		p.postfix(&b)
	case Exim:
		p.exim(&b)
	default:
		return fmt.Errorf("lockdown: unknown format %q (want one of %v)", f, Formats)
	}
	_, err = io.WriteString(w, b.String())
	return err
}

func (p *plan) nftables(b *strings.Builder) {
	p.header(b, "#", append(slices.Clone(p.v4), p.v6...))
	fmt.Fprintf(b, "# Apply with: nft -f FILE (idempotent: the table is deleted and recreated;\n")
	fmt.Fprintf(b, "# nothing outside it is touched). Remove with: nft delete table inet %s\n\n", NFTable)
	// "table X" followed by "delete table X" works whether or not X exists.
	fmt.Fprintf(b, "table inet %s\ndelete table inet %s\n\n", NFTable, NFTable)
	fmt.Fprintf(b, "table inet %s {\n", NFTable)
	if len(p.v4) > 0 {
		fmt.Fprintf(b, "\t# Moat's IPv4 addresses\n\tset moat4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { %s }\n\t}\n\n", prefixes(p.v4, ", "))
	}
	if len(p.v6) > 0 {
		fmt.Fprintf(b, "\t# Moat's IPv6 addresses\n\tset moat6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t\telements = { %s }\n\t}\n\n", prefixes(p.v6, ", "))
	}
	fmt.Fprintf(b, "\tchain input {\n")
	fmt.Fprintf(b, "\t\t# Runs before the usual filter chains; only decides about the SMTP port(s).\n")
	fmt.Fprintf(b, "\t\ttype filter hook input priority filter - 10; policy accept;\n")
	if p.cfg.AllowLoopback {
		fmt.Fprintf(b, "\t\t# local programs submitting through the MTA\n\t\tiif \"lo\" accept\n")
	}
	if len(p.v4) > 0 {
		fmt.Fprintf(b, "\t\ttcp dport { %s } ip saddr @moat4 accept\n", p.portList(", "))
	}
	if len(p.v6) > 0 {
		fmt.Fprintf(b, "\t\ttcp dport { %s } ip6 saddr @moat6 accept\n", p.portList(", "))
	}
	fmt.Fprintf(b, "\t\t# everyone else: refused at once (a reset, so senders give up quickly)\n")
	fmt.Fprintf(b, "\t\ttcp dport { %s } counter reject with tcp reset\n", p.portList(", "))
	fmt.Fprintf(b, "\t}\n}\n")
}

func (p *plan) iptables(b *strings.Builder, cmd string, allowed []netip.Prefix, reject string) {
	p.header(b, "#", allowed)
	fmt.Fprintf(b, "# Apply with: %s-restore --noflush FILE (idempotent: only the chain\n", cmd)
	fmt.Fprintf(b, "# %s is flushed and refilled; nothing else is touched).\n", IPTablesChain)
	fmt.Fprintf(b, "# Hook it into INPUT once (this command is idempotent too):\n")
	fmt.Fprintf(b, "#   %s -C INPUT -p tcp -j %s 2>/dev/null || %s -I INPUT 1 -p tcp -j %s\n", cmd, IPTablesChain, cmd, IPTablesChain)
	if len(allowed) == 0 {
		fmt.Fprintf(b, "# NOTE: Moat has no address of this family: every client is refused on these ports.\n")
	}
	other := map[string]string{"iptables": "ip6tables", "ip6tables": "iptables"}[cmd]
	fmt.Fprintf(b, "# This covers one address family only: apply the %s output too, or the\n# server's other-family addresses (e.g. an AAAA record) stay open. nftables covers both.\n", other)
	fmt.Fprintf(b, "*filter\n:%s - [0:0]\n-F %s\n", IPTablesChain, IPTablesChain)
	if p.cfg.AllowLoopback {
		fmt.Fprintf(b, "-A %s -i lo -j RETURN\n", IPTablesChain)
	}
	for _, a := range allowed {
		fmt.Fprintf(b, "-A %s -s %s -j RETURN\n", IPTablesChain, a)
	}
	// Only the SMTP port(s) are refused; other traffic falls off the end of
	// the chain (RETURN). -m multiport takes at most 15 ports per rule.
	for i := 0; i < len(p.ports); i += 15 {
		chunk := p.ports[i:min(i+15, len(p.ports))]
		s := make([]string, len(chunk))
		for j, n := range chunk {
			s[j] = strconv.Itoa(n)
		}
		fmt.Fprintf(b, "-A %s -p tcp -m multiport --dports %s -j REJECT --reject-with %s\n", IPTablesChain, strings.Join(s, ","), reject)
	}
	fmt.Fprintf(b, "COMMIT\n")
}

func (p *plan) postfix(b *strings.Builder) {
	p.header(b, "#", append(slices.Clone(p.v4), p.v6...))
	all := append(slices.Clone(p.v4), p.v6...)
	fmt.Fprintf(b, `#
# Two independent measures; use the first only when every domain on this
# server is routed through Moat, the second in any case.
#
# ---- 1. /etc/postfix/moat_clients.cidr ----------------------------------
# Then: postfix reload (cidr tables need no postmap).
`)
	for _, a := range all {
		fmt.Fprintf(b, "%-40s OK\n", a.String())
	}
	fmt.Fprintf(b, "%-40s REJECT 5.7.1 Mail for this server must be sent to its MX hosts\n", "0.0.0.0/0")
	fmt.Fprintf(b, "%-40s REJECT 5.7.1 Mail for this server must be sent to its MX hosts\n", "::/0")
	fmt.Fprintf(b, `
# ---- master.cf: restrict the smtpd listening on port(s) %s -----------------
# (permit_mynetworks keeps local senders working; authenticated users keep
# submitting, ideally on port 587 instead.) Replace the existing "smtp inet"
# line and add one for each other port Moat relays to:
`, p.portList(", "))
	for _, port := range p.ports {
		svc := "smtp"
		if port != 25 {
			svc = strconv.Itoa(port)
		}
		fmt.Fprintf(b, "%-10s inet  n       -       y       -       -       smtpd\n", svc)
		fmt.Fprintf(b, "  -o smtpd_client_restrictions=permit_mynetworks,permit_sasl_authenticated,check_client_access,cidr:/etc/postfix/moat_clients.cidr\n")
	}
	fmt.Fprintf(b, `
# ---- 2. main.cf: the pass-mark milter (moat milter) ------------------------
# Refuses mail for Moat-protected domains that carries no valid pass mark,
# whoever sends it; other domains pass untouched (safe with partial domains).
# Run: moat milter --listen %s --domain DOMAIN --secret-file FILE
smtpd_milters = %s
# If the milter is down, defer mail rather than let it through unchecked.
milter_default_action = tempfail
milter_protocol = 6
# {auth_authen} lets the milter recognise authenticated submissions.
milter_mail_macros = i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}
# Local submissions (sendmail command) do not need the milter.
non_smtpd_milters =
`, strings.TrimPrefix(p.cfg.Milter, "inet:"), p.cfg.Milter)
}

func (p *plan) exim(b *strings.Builder) {
	p.header(b, "#", append(slices.Clone(p.v4), p.v6...))
	hosts := []string{}
	if p.cfg.AllowLoopback {
		hosts = append(hosts, "127.0.0.0/8", "::1/128")
	}
	for _, a := range append(slices.Clone(p.v4), p.v6...) {
		hosts = append(hosts, a.String())
	}
	fmt.Fprintf(b, `#
# ---- main section of the Exim configuration (before any "begin") ----------
# (if acl_smtp_connect is already set, add the statements of
# acl_moat_lockdown to that ACL instead). The host list uses "<;" as
# separator because IPv6 addresses contain colons.
hostlist moat_clients = <; %s
acl_smtp_connect = acl_moat_lockdown

# ---- ACL section (after "begin acl") ---------------------------------------
acl_moat_lockdown:
  # ports other than the locked ones are not our business
  accept  condition = ${if inlist{$received_port}{%s}{no}{yes}}
  accept  hosts     = +moat_clients
  # authenticated submission should use port 587, which is not locked
  deny    message   = 5.7.1 Mail for this server must be sent to its MX hosts
`, strings.Join(hosts, " ; "), p.portList(":"))
}
