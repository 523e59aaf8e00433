package audit

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Gateway describes Moat's own receiving hosts: the names customers put in
// their MX records and every address those names (and Moat's outbound relay)
// use. Anything else in a customer's MX set is a leak.
type Gateway struct {
	// Hostnames are Moat's MX host names, e.g. mx1.moat.example.
	Hostnames []string `yaml:"hostnames"`
	// Addresses are Moat's IPv4 and IPv6 addresses (receiving and relaying).
	Addresses []string `yaml:"addresses"`
}

// Backend is one of a customer's own mail servers, where Moat relays to.
type Backend struct {
	// Host is a name or an IP address literal.
	Host string `yaml:"host"`
	// Port is the port Moat relays to (25 when zero).
	Port int `yaml:"port"`
}

// Route is what Moat knows about a customer domain.
type Route struct {
	// Backends are the customer's servers Moat relays the domain's mail to.
	Backends []Backend `yaml:"backends"`
	// Rcpt is a real recipient of the domain used by --probe
	// (default postmaster@DOMAIN).
	Rcpt string `yaml:"rcpt"`
}

// DefaultGuessNames are the host labels spammers try under a domain.
var DefaultGuessNames = []string{
	"mail", "mail1", "mail2", "smtp", "smtp1", "smtp2", "imap", "imap4", "pop", "pop3",
	"email", "post", "mx", "mx0", "mx1", "mx2", "mx3", "relay", "mailrelay", "webmail",
	"exchange", "owa", "autodiscover", "mailhost", "mailgw", "mta", "remote", "server",
	"backup", "backupmx", "inbound",
}

// DefaultProbePorts are probed besides smtp_port and the routes' ports:
// submission, submissions (implicit TLS) and the common alternative port.
var DefaultProbePorts = []int{587, 465, 2525}

// Config controls an audit run.
type Config struct {
	// Gateway is Moat's own hosts.
	Gateway Gateway `yaml:"gateway"`
	// Routes maps each customer domain (lower case) to its route. Filled by
	// the caller from the store; not part of the audit section of the file.
	Routes map[string]Route `yaml:"-"`
	// Resolver is the DNS server (host:port) used for all lookups; empty
	// means the first nameserver of /etc/resolv.conf.
	Resolver string `yaml:"resolver"`
	// GuessNames are extra host labels tried in addition to DefaultGuessNames.
	GuessNames []string `yaml:"guess_names"`
	// NeighbourDomains are other domains hosted on the same backends but not
	// routed through Moat (partial domains).
	NeighbourDomains []string `yaml:"neighbour_domains"`
	// Probe enables direct reachability probes (SMTP connections to the
	// candidate backend addresses). Off by default: it connects to hosts.
	Probe bool `yaml:"probe"`
	// SendCanary makes the probe send a labelled canary message without a
	// valid pass mark to every backend that accepted the probe recipient
	// (needs probe).
	SendCanary bool `yaml:"send_canary"`
	// SMTPPort is the port probed as "port 25" (overridable for tests).
	SMTPPort int `yaml:"smtp_port"`
	// ProbePorts are probed too on every candidate address, besides
	// smtp_port and the ports Moat relays the domain to. Port 465 is
	// spoken with implicit TLS (falling back to plain SMTP).
	ProbePorts []int `yaml:"probe_ports"`
	// ProbeFrom is the envelope sender of probes.
	ProbeFrom string `yaml:"probe_from"`
	// HeloName is the EHLO name of probes.
	HeloName string `yaml:"helo_name"`
	// SourceAddress is the local address probes connect from; it must not
	// be one of Moat's addresses, or the probe proves nothing. Empty: the
	// system chooses.
	SourceAddress string `yaml:"source_address"`
	// Timeout bounds each DNS query and each probe connection.
	Timeout time.Duration `yaml:"timeout"`
	// Concurrency bounds simultaneous probe connections and DNS lookups.
	Concurrency int `yaml:"concurrency"`
}

// DefaultConfig returns safe defaults: no probing.
func DefaultConfig() Config {
	return Config{
		SMTPPort:    25,
		ProbePorts:  append([]int(nil), DefaultProbePorts...),
		ProbeFrom:   "moat-audit@invalid.example",
		HeloName:    "moat-audit.invalid",
		Timeout:     10 * time.Second,
		Concurrency: 8,
	}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if len(c.Gateway.Hostnames) == 0 && len(c.Gateway.Addresses) == 0 {
		return fmt.Errorf("gateway: hostnames or addresses must be set")
	}
	for _, a := range c.Gateway.Addresses {
		if _, err := parsePrefix(a); err != nil {
			return fmt.Errorf("gateway.addresses: %q is not an IP address or CIDR", a)
		}
	}
	if c.Resolver != "" {
		if _, _, err := net.SplitHostPort(c.Resolver); err != nil {
			if _, err := netip.ParseAddr(c.Resolver); err != nil {
				return fmt.Errorf("resolver: %q is not host:port", c.Resolver)
			}
		}
	}
	if c.SMTPPort < 1 || c.SMTPPort > 65535 {
		return fmt.Errorf("smtp_port: must be 1-65535")
	}
	for _, p := range c.ProbePorts {
		if p < 1 || p > 65535 {
			return fmt.Errorf("probe_ports: %d is not a TCP port", p)
		}
	}
	if c.Timeout < 100*time.Millisecond {
		return fmt.Errorf("timeout: must be >= 100ms")
	}
	if c.Concurrency < 1 || c.Concurrency > 256 {
		return fmt.Errorf("concurrency: must be 1-256")
	}
	if c.SendCanary && !c.Probe {
		return fmt.Errorf("send_canary: needs probe")
	}
	if c.SourceAddress != "" {
		if _, err := netip.ParseAddr(c.SourceAddress); err != nil {
			return fmt.Errorf("source_address: %q is not an IP address", c.SourceAddress)
		}
	}
	if !strings.Contains(c.ProbeFrom, "@") {
		return fmt.Errorf("probe_from: must be an address")
	}
	for d, r := range c.Routes {
		for _, b := range r.Backends {
			if b.Host == "" || b.Port < 0 || b.Port > 65535 {
				return fmt.Errorf("routes.%s: bad backend %q port %d", d, b.Host, b.Port)
			}
		}
	}
	return nil
}

// parsePrefix accepts an address or a CIDR.
func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
