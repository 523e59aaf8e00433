// Package audit finds the ways mail for a customer domain can reach the
// customer's backend without passing through Moat ("leakage"): MX records
// that are not Moat, guessable host names (mail.DOMAIN) pointing at the
// backend, backends that accept mail directly from anyone, backends that do
// not enforce the pass mark, and other domains sharing a backend that a
// firewall lockdown would break. See docs/leakage.md.
package audit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Run audits domains. It returns an error only when the audit cannot run at
// all (bad configuration, DNS unusable for Moat's own names); a domain that
// cannot be audited carries its own Error in the report.
func Run(ctx context.Context, cfg Config, domains []string) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	res, err := newResolver(cfg.Resolver, cfg.Timeout)
	if err != nil {
		return nil, err
	}
	a := &auditor{cfg: cfg, r: res, gwNames: map[string]bool{}, sem: make(chan struct{}, cfg.Concurrency)}
	for _, s := range cfg.Gateway.Addresses {
		p, _ := parsePrefix(s)
		a.gw = append(a.gw, p)
	}
	for _, h := range cfg.Gateway.Hostnames {
		h = normName(h)
		a.gwNames[h] = true
		addrs, err := res.addrs(ctx, h)
		if err != nil {
			return nil, fmt.Errorf("audit: resolving Moat's own host %s: %w", h, err)
		}
		for _, ad := range addrs {
			a.gw = append(a.gw, netip.PrefixFrom(ad, ad.BitLen()))
		}
	}
	a.guess = slices.Clone(DefaultGuessNames)
	for _, g := range cfg.GuessNames {
		if g = normName(g); g != "" && !slices.Contains(a.guess, g) {
			a.guess = append(a.guess, g)
		}
	}
	rep := &Report{Started: time.Now(), Probed: cfg.Probe}
	for _, d := range domains {
		d = normName(d)
		if d == "" {
			continue
		}
		rep.Domains = append(rep.Domains, a.domain(ctx, d))
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
	}
	rep.Duration = time.Since(rep.Started)
	return rep, nil
}

func normName(s string) string { return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), ".") }

type auditor struct {
	cfg     Config
	r       *resolver
	gw      []netip.Prefix
	gwNames map[string]bool
	guess   []string
	sem     chan struct{}
}

func (a *auditor) isGateway(ad netip.Addr) bool {
	for _, p := range a.gw {
		if p.Contains(ad) {
			return true
		}
	}
	return false
}

// candidates collects possible backend addresses.
type candidates struct {
	order []netip.Addr
	m     map[netip.Addr]*cand
}

type cand struct {
	sources []string
	ports   map[int]bool
	backend bool // a known mail server of the domain (route or leaking MX)
	smtp    bool // answered SMTP with a 2xx greeting (probe)
	names   []string
}

func (c *candidates) add(ad netip.Addr, source string, port int) *cand {
	if c.m == nil {
		c.m = map[netip.Addr]*cand{}
	}
	x, ok := c.m[ad]
	if !ok {
		x = &cand{ports: map[int]bool{}}
		c.m[ad] = x
		c.order = append(c.order, ad)
	}
	if !slices.Contains(x.sources, source) {
		x.sources = append(x.sources, source)
	}
	if port > 0 {
		x.ports[port] = true
	}
	return x
}

func addrList(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

func (a *auditor) domain(ctx context.Context, domain string) *DomainReport {
	d := &DomainReport{Domain: domain, Findings: []Finding{}}
	var cs candidates
	route, routed := a.cfg.Routes[domain]
	rcpt := route.Rcpt
	if rcpt == "" {
		rcpt = "postmaster@" + domain
	}
	var backendAddrs []netip.Addr
	for _, b := range route.Backends {
		port := b.Port
		if port == 0 {
			port = 25
		}
		addrs, err := a.r.addrs(ctx, b.Host)
		if err != nil {
			d.Error = fmt.Sprintf("resolving backend %s: %v", b.Host, err)
			return d
		}
		for _, ad := range addrs {
			c := cs.add(ad, "route backend "+b.Host, port)
			c.backend = true
			backendAddrs = append(backendAddrs, ad)
		}
	}
	if !routed {
		d.add(Finding{Info, KindUnknownBackends, domain,
			"Moat has no route for this domain, so its backend addresses are inferred from DNS only.",
			"Add the domain and its backend to Moat, or audit it from the gateway's configuration (--config)."})
	}

	// MX records.
	mxs, err := a.r.mxs(ctx, domain)
	if err != nil {
		if errors.Is(err, errNXDomain) {
			d.Error = "domain does not exist (NXDOMAIN)"
		} else {
			d.Error = err.Error()
		}
		return d
	}
	sort.SliceStable(mxs, func(i, j int) bool { return mxs[i].Pref < mxs[j].Pref })
	moatMX := 0
	gwList := strings.Join(a.cfg.Gateway.Hostnames, ", ")
	if gwList == "" {
		gwList = "Moat's MX hosts"
	}
	for _, m := range mxs {
		if m.Host == "" {
			d.add(Finding{Info, KindNullMX, fmt.Sprintf("MX %d .", m.Pref),
				"The domain publishes a null MX: it accepts no mail at all.", "None, if the domain really receives no mail."})
			continue
		}
		if a.gwNames[m.Host] {
			moatMX++
			continue
		}
		addrs, err := a.r.addrs(ctx, m.Host)
		if err != nil && !errors.Is(err, errNXDomain) {
			d.Error = fmt.Sprintf("resolving MX %s: %v", m.Host, err)
			return d
		}
		allGW := len(addrs) > 0
		for _, ad := range addrs {
			if !a.isGateway(ad) {
				allGW = false
			}
		}
		if allGW {
			moatMX++
			continue
		}
		subject := fmt.Sprintf("MX %d %s", m.Pref, m.Host)
		if len(addrs) > 0 {
			subject += " (" + addrList(addrs) + ")"
		}
		for _, ad := range addrs {
			if !a.isGateway(ad) {
				c := cs.add(ad, "MX "+m.Host, 0)
				c.backend = true
			}
		}
		d.add(Finding{Critical, KindMXLeak, subject,
			fmt.Sprintf("This MX is not one of Moat's hosts. Spammers ignore MX priorities and deliver to the lowest-priority MX on purpose, so mail sent to %s skips every Moat check.", m.Host),
			fmt.Sprintf("Delete the record %q from the zone of %s; list only %s as MX. If you want a fallback, Moat queues mail itself; senders queue too when all MX are down.",
				fmt.Sprintf("%s. IN MX %d %s.", domain, m.Pref, m.Host), domain, gwList)})
	}
	if moatMX == 0 {
		what := "None of the domain's MX records points at Moat"
		if len(mxs) == 0 {
			what = "The domain has no MX record, so senders deliver to its A/AAAA record"
		}
		d.add(Finding{Critical, KindNotRouted, domain,
			what + ": its mail is not filtered by Moat at all.",
			fmt.Sprintf("Publish MX records pointing at %s only.", gwList)})
	}

	// Guessable names, apex and SPF hints, in parallel.
	type nameAddrs struct {
		name  string
		addrs []netip.Addr
	}
	var (
		mu    sync.Mutex
		wg    sync.WaitGroup
		named []nameAddrs
		dnsEr error
	)
	lookup := func(name, source string) {
		defer wg.Done()
		a.sem <- struct{}{}
		addrs, err := a.r.addrs(ctx, name)
		<-a.sem
		mu.Lock()
		defer mu.Unlock()
		if err != nil && !errors.Is(err, errNXDomain) && dnsEr == nil {
			dnsEr = err
		}
		if len(addrs) > 0 {
			named = append(named, nameAddrs{source, addrs})
		}
	}
	wildLabel := "moat-audit-" + randHex(6)
	wg.Add(2 + len(a.guess))
	go lookup(wildLabel+"."+domain, "*")
	go lookup(domain, "@")
	for _, g := range a.guess {
		go lookup(g+"."+domain, g)
	}
	var spfHosts []spfHint
	var spfErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		spfHosts, spfErr = a.spf(ctx, domain)
	}()
	wg.Wait()
	if dnsEr == nil {
		dnsEr = spfErr
	}
	if dnsEr != nil {
		d.Error = dnsEr.Error()
		return d
	}
	var wildcard []netip.Addr
	for _, n := range named {
		if n.name == "*" {
			wildcard = n.addrs
		}
	}
	isBackend := func(ad netip.Addr) bool {
		c, ok := cs.m[ad]
		return ok && c.backend
	}
	type guessHit struct {
		fqdn  string
		addrs []netip.Addr
	}
	var guessed []guessHit
	for _, n := range named {
		switch n.name {
		case "@":
			for _, ad := range n.addrs {
				if !a.isGateway(ad) {
					cs.add(ad, "apex "+domain, 0)
				}
			}
			continue
		case "*":
			if len(wildcard) == 0 {
				continue
			}
		default:
			if len(wildcard) > 0 && sameAddrs(n.addrs, wildcard) {
				continue // covered by the wildcard entry
			}
		}
		fqdn := n.name + "." + domain
		if n.name == "*" {
			fqdn = "*." + domain
		}
		var hit []netip.Addr
		for _, ad := range n.addrs {
			if a.isGateway(ad) {
				continue
			}
			c := cs.add(ad, "name "+fqdn, 0)
			c.names = append(c.names, fqdn)
			if isBackend(ad) {
				hit = append(hit, ad)
			}
		}
		if len(hit) > 0 {
			guessed = append(guessed, guessHit{fqdn, hit})
		}
	}
	sort.Slice(guessed, func(i, j int) bool { return guessed[i].fqdn < guessed[j].fqdn })
	for _, h := range spfHosts {
		if !a.isGateway(h.addr) {
			cs.add(h.addr, "SPF "+h.source, 0)
		}
	}

	// Partial domains: neighbours whose MX lands on one of our mail servers.
	partial := map[string]string{} // neighbour -> evidence
	for _, nb := range a.cfg.NeighbourDomains {
		nb = normName(nb)
		if nb == domain || nb == "" {
			continue
		}
		if _, ok := a.cfg.Routes[nb]; ok {
			continue // routed through Moat itself
		}
		nmx, err := a.r.mxs(ctx, nb)
		if err != nil {
			continue
		}
		for _, m := range nmx {
			if m.Host == "" || a.gwNames[m.Host] {
				continue
			}
			addrs, _ := a.r.addrs(ctx, m.Host)
			for _, ad := range addrs {
				if isBackend(ad) && !a.isGateway(ad) {
					partial[nb] = fmt.Sprintf("its MX %s resolves to %s, one of this domain's mail servers", m.Host, ad)
				}
			}
		}
	}

	// Probes.
	if a.cfg.Probe {
		a.probeAll(ctx, d, &cs, domain, rcpt, partial)
	}

	for _, g := range guessed {
		d.add(Finding{Warning, KindGuessableName, fmt.Sprintf("%s (%s)", g.fqdn, addrList(g.addrs)),
			fmt.Sprintf("%s points at this domain's mail server. Spammers try names like mail.%s and deliver to them directly, whatever the MX records say.", g.fqdn, domain),
			fmt.Sprintf("Remove %s from the zone, or rename the server to a name not associated with mail (not mail/smtp/mx..., e.g. a neutral host name under your ISP's domain), and lock the backend down (moat lockdown).", g.fqdn)})
	}
	for _, ad := range cs.order {
		c := cs.m[ad]
		if c.backend || len(c.names) == 0 || !c.smtp {
			continue
		}
		d.add(Finding{Warning, KindGuessableName, fmt.Sprintf("%s (%s)", strings.Join(c.names, ", "), ad),
			fmt.Sprintf("%s answers SMTP on port %d: spammers guessing the name find a mail server.", strings.Join(c.names, ", "), a.cfg.SMTPPort),
			"Remove or rename the name, or stop the SMTP service there from accepting connections from outside Moat."})
	}
	nbs := make([]string, 0, len(partial))
	for nb := range partial {
		nbs = append(nbs, nb)
	}
	sort.Strings(nbs)
	for _, nb := range nbs {
		d.add(Finding{Warning, KindPartialDomain, nb,
			fmt.Sprintf("%s shares this domain's backend but is not routed through Moat (%s). A firewall lockdown of the backend to Moat's addresses would bounce its mail.", nb, partial[nb]),
			fmt.Sprintf("Do not firewall the backend. Per domain instead: remove MX records of %s that point at the backend, rename guessable host names, and run `moat milter` on the backend so unmarked mail for %s is refused. Or route %s through Moat too, then lock down.", domain, domain, nb)})
	}
	for _, ad := range cs.order {
		c := cs.m[ad]
		srcs := append([]string(nil), c.sources...)
		d.Candidates = append(d.Candidates, Candidate{Addr: ad.String(), Sources: srcs})
	}
	return d
}

func sameAddrs(a, b []netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	x, y := slices.Clone(a), slices.Clone(b)
	slices.SortFunc(x, func(p, q netip.Addr) int { return p.Compare(q) })
	slices.SortFunc(y, func(p, q netip.Addr) int { return p.Compare(q) })
	return slices.Equal(x, y)
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func hostPort(ad netip.Addr, port int) string {
	return netip.AddrPortFrom(ad, uint16(port)).String()
}
