package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/audit"
	"moat.dev/moat/internal/lockdown"
	"moat.dev/moat/internal/milter"
	"moat.dev/moat/internal/passmark"
)

// leakageConfig is what audit, lockdown and milter need from the main
// configuration file.
type leakageConfig struct {
	Audit    audit.Config
	Lockdown lockdown.Config
	Milter   milter.Config
	// Secret returns a domain's pass-mark secret (nil: not a Moat domain).
	Secret func(domain string) []byte
}

// loadLeakageConfig reads --config FILE into a leakageConfig (gateway
// hosts, routes, neighbour domains, pass-mark secrets); flags given on the
// command line override the file.
var loadLeakageConfig func(path string) (*leakageConfig, error)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

func fromFile(path string) (*leakageConfig, error) {
	if path == "" {
		return &leakageConfig{Audit: audit.DefaultConfig(), Lockdown: lockdown.DefaultConfig(), Milter: milter.DefaultConfig()}, nil
	}
	if loadLeakageConfig == nil {
		return nil, fmt.Errorf("--config is not supported yet; use flags")
	}
	return loadLeakageConfig(path)
}

func cmdAudit(args []string) int { return runAudit(args, os.Stdout, os.Stderr) }

// runAudit is `moat audit`: exit 0 clean, 1 leaks found, 2 usage or
// configuration error, or no leak found but something could not be checked.
func runAudit(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var gwHosts, gwIPs, backends, neighbours, probePorts multiFlag
	cfgPath := fs.String("config", "", "configuration file")
	fs.Var(&gwHosts, "gateway-host", "Moat's MX host name (repeatable)")
	fs.Var(&gwIPs, "gateway-ip", "Moat's address or CIDR (repeatable)")
	fs.Var(&backends, "backend", "the domains' backend host:port (repeatable; applies to every domain given)")
	fs.Var(&neighbours, "neighbour-domain", "another domain on the same backend, not routed through Moat (repeatable)")
	resolver := fs.String("resolver", "", "DNS server host:port (default: /etc/resolv.conf)")
	probe := fs.Bool("probe", false, "connect to candidate backends over SMTP (never sends DATA unless --send-canary)")
	canary := fs.Bool("send-canary", false, "with --probe: send a labelled canary message without a valid pass mark")
	rcpt := fs.String("rcpt", "", "a real recipient to probe with (default postmaster@DOMAIN)")
	smtpPort := fs.Int("smtp-port", 25, "the port probed as the SMTP port")
	fs.Var(&probePorts, "probe-port", "port probed besides --smtp-port and the backend ports (repeatable; replaces the default 587, 465, 2525; 0 = none)")
	sourceIP := fs.String("source-ip", "", "local address to probe from (must not be one of Moat's)")
	timeout := fs.Duration("timeout", 10*time.Second, "timeout of each DNS query and probe step")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: moat audit [options] DOMAIN... (or --config FILE alone: every configured domain)\nexit status: 0 clean, 1 leaks found (warning or critical),\n2 usage/configuration error or something could not be checked (DNS failure) and no leak found")
		fs.PrintDefaults()
	}
	// Flags may follow the domains too (moat audit example.com --json).
	var domains []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			return parseExit(err)
		}
		if fs.NArg() == 0 {
			break
		}
		domains = append(domains, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "moat audit:", err)
		if *asJSON {
			json.NewEncoder(stdout).Encode(map[string]any{"status": "error", "exit_code": 2, "error": err.Error()})
		}
		return 2
	}
	if len(domains) == 0 && *cfgPath == "" {
		fs.Usage()
		return fail(errors.New("name the domains to audit, or give --config to audit every configured domain"))
	}
	lc, err := fromFile(*cfgPath)
	if err != nil {
		return fail(err)
	}
	if len(domains) == 0 { // every domain the configuration routes
		for d := range lc.Audit.Routes {
			domains = append(domains, d)
		}
		slices.Sort(domains)
		if len(domains) == 0 {
			return fail(fmt.Errorf("%s configures no domains: name the domains to audit", *cfgPath))
		}
	}
	cfg := lc.Audit
	cfg.Gateway.Hostnames = append(cfg.Gateway.Hostnames, gwHosts...)
	cfg.Gateway.Addresses = append(cfg.Gateway.Addresses, gwIPs...)
	cfg.NeighbourDomains = append(cfg.NeighbourDomains, neighbours...)
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["resolver"] {
		cfg.Resolver = *resolver
	}
	if set["probe"] {
		cfg.Probe = *probe
	}
	if set["send-canary"] {
		cfg.SendCanary = *canary
	}
	if set["smtp-port"] {
		cfg.SMTPPort = *smtpPort
	}
	if set["probe-port"] {
		cfg.ProbePorts = nil
		for _, p := range probePorts {
			n, err := strconv.Atoi(p)
			if err != nil || n < 0 || n > 65535 {
				return fail(fmt.Errorf("--probe-port %q: not a port", p))
			}
			if n > 0 {
				cfg.ProbePorts = append(cfg.ProbePorts, n)
			}
		}
	}
	if set["source-ip"] {
		cfg.SourceAddress = *sourceIP
	}
	if set["timeout"] {
		cfg.Timeout = *timeout
	}
	if len(backends) > 0 || *rcpt != "" {
		if cfg.Routes == nil {
			cfg.Routes = map[string]audit.Route{}
		}
		var bs []audit.Backend
		for _, b := range backends {
			host, port, err := splitHostPort(b, 25)
			if err == nil && host == "" {
				err = errors.New("missing host")
			}
			if err != nil {
				return fail(fmt.Errorf("--backend %q: %v", b, err))
			}
			bs = append(bs, audit.Backend{Host: host, Port: port})
		}
		for _, d := range domains {
			d = strings.ToLower(strings.TrimSuffix(d, "."))
			r := cfg.Routes[d]
			r.Backends = append(r.Backends, bs...)
			if *rcpt != "" {
				r.Rcpt = *rcpt
			}
			cfg.Routes[d] = r
		}
	}
	for _, d := range domains {
		if _, ok := normDomain(d); !ok {
			return fail(fmt.Errorf("%q is not a valid domain name", d))
		}
	}
	if err := cfg.Validate(); err != nil {
		return fail(auditFlagError(err, set))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := audit.Run(ctx, cfg, domains)
	if err != nil {
		return fail(err)
	}
	if *asJSON {
		err = rep.WriteJSON(stdout)
	} else {
		f, _ := stdout.(*os.File)
		err = rep.WriteText(stdout, f != nil && isTerminal(f) && os.Getenv("NO_COLOR") == "")
	}
	if err != nil {
		return 2
	}
	return rep.ExitCode()
}

// auditFlags maps the audit settings' names, as validation errors give
// them, to the flags that set them.
var auditFlags = []struct{ key, flag string }{
	{"gateway.addresses", "gateway-ip"}, {"resolver", "resolver"}, {"smtp_port", "smtp-port"},
	{"probe_ports", "probe-port"}, {"timeout", "timeout"}, {"send_canary", "send-canary"},
	{"source_address", "source-ip"}, {"routes.", "backend"},
}

// auditFlagError names the command-line flag behind a validation error of
// the audit settings when that flag was given (set: the flags given).
func auditFlagError(err error, set map[string]bool) error {
	msg := err.Error()
	if strings.HasPrefix(msg, "gateway: ") {
		return fmt.Errorf("%v: give --gateway-host or --gateway-ip (or --config FILE with gateway.hostnames/addresses)", err)
	}
	for _, f := range auditFlags {
		if strings.HasPrefix(msg, f.key) && set[f.flag] {
			return fmt.Errorf("--%s: %w", f.flag, err)
		}
	}
	return err
}

func splitHostPort(s string, def int) (string, int, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.String(), def, nil
	}
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		return s, def, nil // a bare host name
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	return host, port, nil
}

func cmdLockdown(args []string) int {
	fs := flag.NewFlagSet("lockdown", flag.ContinueOnError)
	var gwIPs, backends, allow multiFlag
	cfgPath := fs.String("config", "", "configuration file")
	format := fs.String("format", "nftables", "nftables|iptables|ip6tables|postfix|exim")
	fs.Var(&gwIPs, "gateway-ip", "Moat's address or CIDR (repeatable)")
	fs.Var(&backends, "backend", "backend host:port; its port is locked too (repeatable)")
	fs.Var(&allow, "allow", "extra allowed client address or CIDR (repeatable)")
	noLoopback := fs.Bool("no-loopback", false, "do not exempt the loopback interface")
	milterAddr := fs.String("milter", "", "milter address for the postfix output (default inet:127.0.0.1:8891)")
	domain := fs.String("domain", "", "domain name for the comments")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: moat lockdown --format F --gateway-ip IP... [--backend host:port]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "moat lockdown: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	// Both end up verbatim in the generated rules: a newline would add
	// a line of its own to the firewall or main.cf.
	if *domain != "" {
		if _, ok := normDomain(*domain); !ok {
			fmt.Fprintf(os.Stderr, "moat lockdown: --domain %q is not a valid domain name\n", *domain)
			return 2
		}
	}
	if strings.ContainsFunc(*milterAddr, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		fmt.Fprintf(os.Stderr, "moat lockdown: --milter %q: must be inet:HOST:PORT or unix:PATH, without spaces or control characters\n", *milterAddr)
		return 2
	}
	lc, err := fromFile(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "moat lockdown:", err)
		return 2
	}
	cfg := lc.Lockdown
	cfg.Gateway = append(cfg.Gateway, gwIPs...)
	cfg.Allow = append(cfg.Allow, allow...)
	for _, b := range backends {
		_, port, err := splitHostPort(b, 25)
		if err != nil {
			fmt.Fprintf(os.Stderr, "moat lockdown: --backend %q: %v\n", b, err)
			return 2
		}
		cfg.Ports = append(cfg.Ports, port)
	}
	if *noLoopback {
		cfg.AllowLoopback = false
	}
	if *milterAddr != "" {
		cfg.Milter = *milterAddr
	}
	cfg.Domain = strings.ToLower(strings.TrimSuffix(*domain, "."))
	if err := lockdown.Generate(os.Stdout, lockdown.Format(*format), cfg); err != nil {
		msg := err.Error()
		if strings.HasPrefix(msg, "gateway_addresses: at least one") {
			msg += " (give --gateway-ip, or --config FILE with gateway.addresses)"
		}
		fmt.Fprintln(os.Stderr, "moat lockdown:", msg)
		return 2
	}
	return 0
}

// readSecret reads a domain's pass-mark secret file: hex, as printed by
// `moat pass-secret DOMAIN`.
func readSecret(path string) ([]byte, error) { return passmark.ReadKeyFile(path) }

// milterSecrets returns the milter's secret lookup: the --secret-file
// secrets, and with --config the configured domains' secrets derived from
// the master key. Mail for any other domain passes (partial domains keep
// working): the master key derives a "secret" for every name, so it must
// not be asked for one.
func milterSecrets(lc *leakageConfig, secrets map[string][]byte) func(string) []byte {
	return func(d string) []byte {
		if s, ok := secrets[d]; ok {
			return s
		}
		if _, routed := lc.Audit.Routes[d]; routed && lc.Secret != nil {
			return lc.Secret(d)
		}
		return nil
	}
}

func cmdMilter(args []string) int {
	fs := flag.NewFlagSet("milter", flag.ContinueOnError)
	var domains, secretFiles, trusted multiFlag
	cfgPath := fs.String("config", "", "configuration file")
	listen := fs.String("listen", "", "milter socket host:port or unix:/path (default 127.0.0.1:8891)")
	fs.Var(&domains, "domain", "protected domain (repeatable, paired with --secret-file in order)")
	fs.Var(&secretFiles, "secret-file", "file with the domain's pass-mark secret (moat pass-secret)")
	fs.Var(&trusted, "trusted", "trusted client CIDR whose mail passes unmarked, e.g. 127.0.0.0/8 for local webmail (repeatable; default none)")
	reportURL := fs.String("report-url", "", "Moat's bypass report URL")
	strip := fs.Bool("strip", false, "remove the pass mark from verified messages")
	observe := fs.Bool("observe-only", false, "accept unmarked messages (still reported)")
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "moat milter: unexpected argument %q\n", fs.Arg(0))
		fs.PrintDefaults()
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	lc, err := fromFile(*cfgPath)
	if err != nil {
		log.Error("moat milter", "err", err)
		return 2
	}
	cfg := lc.Milter
	if *listen != "" {
		cfg.Listen = *listen
	}
	if len(trusted) > 0 {
		cfg.Trusted = trusted
	}
	if *reportURL != "" {
		cfg.ReportURL = *reportURL
	}
	cfg.StripMark = cfg.StripMark || *strip
	cfg.ObserveOnly = cfg.ObserveOnly || *observe
	if len(domains) != len(secretFiles) {
		log.Error("each --domain needs its --secret-file")
		return 2
	}
	secrets := map[string][]byte{}
	for i, d := range domains {
		if _, ok := normDomain(d); !ok {
			log.Error(fmt.Sprintf("--domain %q is not a valid domain name", d))
			return 2
		}
		s, err := readSecret(secretFiles[i])
		if err != nil {
			log.Error("reading secret", "domain", d, "err", err)
			return 2
		}
		secrets[strings.ToLower(strings.TrimSuffix(d, "."))] = s
	}
	secretOf := milterSecrets(lc, secrets)
	if len(secrets) == 0 && lc.Secret == nil {
		log.Error("no protected domain: give --domain and --secret-file")
		return 2
	}
	f, err := milter.New(cfg, secretOf, log, prometheus.NewRegistry())
	if err != nil {
		log.Error("moat milter", "err", err)
		return 2
	}
	if err := f.Start(); err != nil {
		log.Error("moat milter: listen", "err", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.Shutdown(sctx); err != nil {
		log.Warn("shutdown", "err", err)
	}
	return 0
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
