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

	"moat.dev/moat/internal/lockdown"
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
			rep.finish()
			return rep, ctx.Err()
		}
	}
	rep.Duration = time.Since(rep.Started)
	rep.finish()
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
	route   bool // a route backend (Moat relays there)
	smtp    bool // answered SMTP with a 2xx greeting (probe)
	accepts bool // accepted RCPT for the domain (probe)
	open    bool // some probe did not end in a refusal (accepted, tempfail, error)
	probed  bool
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

// addrRecords renders the address records of name, or its CNAME.
func addrRecords(name string, chain []string, as []netip.Addr) string {
	if len(chain) > 0 {
		return fmt.Sprintf("%s. IN CNAME %s.", name, chain[0])
	}
	var rs []string
	for _, a := range as {
		t := "A"
		if a.Is6() {
			t = "AAAA"
		}
		rs = append(rs, fmt.Sprintf("%s. IN %s %s", name, t, a))
	}
	return strings.Join(rs, "; ")
}

// resolution describes how name resolved: "a -> b -> 192.0.2.1, 2001:db8::1".
func resolution(name string, chain []string, as []netip.Addr) string {
	s := name
	for _, c := range chain {
		s += " -> " + c + " (CNAME)"
	}
	if len(as) == 0 {
		return s + " -> no address"
	}
	return s + " -> " + addrList(as)
}

func (a *auditor) couldNotCheck(d *DomainReport, what string, err error) {
	d.add(Finding{Severity: Warning, Kind: KindCouldNotCheck, Subject: what,
		Explanation: fmt.Sprintf("The DNS lookup failed (%v), so this could not be checked: the domain is NOT known to be clean.", err),
		Fix:         "Re-run the audit when the domain's name servers answer (SERVFAIL and timeouts also delay legitimate mail); check the resolver (--resolver).",
		Evidence:    err.Error()})
}

type nameAddrs struct {
	name  string // label, "@" for the apex, "*" for the wildcard
	addrs []netip.Addr
	chain []string
}

func (a *auditor) domain(ctx context.Context, domain string) *DomainReport {
	d := &DomainReport{Domain: domain, Findings: []Finding{}}
	var cs candidates
	route, routed := a.cfg.Routes[domain]
	rcpt := route.Rcpt
	if rcpt == "" {
		rcpt = "postmaster@" + domain
	}
	routePorts := map[int]bool{}
	backendName := map[netip.Addr]string{}
	for _, b := range route.Backends {
		port := b.Port
		if port == 0 {
			port = 25
		}
		routePorts[port] = true
		addrs, err := a.r.addrs(ctx, b.Host)
		if err != nil {
			a.couldNotCheck(d, "route backend "+b.Host, err)
		}
		for _, ad := range addrs {
			c := cs.add(ad, "route backend "+b.Host, port)
			c.backend, c.route = true, true
			backendName[ad] = b.Host
			if a.isGateway(ad) {
				// Every record pointing there looks like Moat: the audit
				// is blind to this backend, which is not "clean".
				d.add(Finding{Severity: Warning, Kind: KindCouldNotCheck, Subject: fmt.Sprintf("route backend %s (%s)", b.Host, ad), Address: ad.String(),
					Explanation: fmt.Sprintf("The backend address %s is one of Moat's own addresses (gateway), so MX records and names pointing at the backend cannot be told apart from ones pointing at Moat, and the backend is never probed: leaks to it were NOT checked.", ad),
					Fix:         "Give the backend an address outside Moat's gateway addresses (or correct gateway.addresses / the domain's backends), then re-run the audit.",
					Evidence:    fmt.Sprintf("%s -> %s; gateway addresses %s", b.Host, ad, strings.Join(a.gatewayAddrs(), ", "))})
			}
		}
	}
	if !routed {
		d.add(Finding{Severity: Info, Kind: KindUnknownBackends, Subject: domain,
			Explanation: "Moat has no route for this domain, so its backend addresses are inferred from DNS only.",
			Fix:         "Add the domain and its backend to Moat, or audit it from the gateway's configuration (--config), or give --backend."})
	}
	// what describes an address for evidence: "the route backend mbox.isp".
	what := func(ad netip.Addr) string {
		if n, ok := backendName[ad]; ok {
			return fmt.Sprintf("%s is the route backend %s", ad, n)
		}
		if c, ok := cs.m[ad]; ok && c.backend {
			return fmt.Sprintf("%s is a mail server of the domain (%s)", ad, strings.Join(c.sources, "; "))
		}
		return ""
	}
	// notesOn is the evidence about addresses found to be the domain's
	// mail servers.
	notesOn := func(hit []netip.Addr) []string {
		var notes []string
		for _, ad := range hit {
			if w := what(ad); w != "" {
				notes = append(notes, w)
			} else if cs.m[ad].accepts {
				notes = append(notes, ad.String()+" accepted RCPT for the domain")
			}
		}
		return notes
	}

	// MX records, and the apex at the same time: when both time out, the
	// domain's name servers are not answering, and asking for every
	// guessable name would only wait for dozens more timeouts.
	var apexErr error
	apexDone := make(chan struct{})
	go func() {
		defer close(apexDone)
		_, _, apexErr = a.r.resolve(ctx, domain)
	}()
	mxs, err := a.r.mxs(ctx, domain)
	<-apexDone
	deadZone := isTimeout(err) && isTimeout(apexErr)
	mxFailed := false
	if err != nil {
		if errors.Is(err, errNXDomain) {
			d.Error = "domain does not exist (NXDOMAIN): could not check"
			d.setStatus()
			return d
		}
		d.Error = "could not check the MX records: " + err.Error()
		a.couldNotCheck(d, domain+". IN MX", err)
		mxFailed = true
	}
	sort.SliceStable(mxs, func(i, j int) bool { return mxs[i].Pref < mxs[j].Pref })
	moatMX, nullMX, realMX := 0, false, 0
	gwList := strings.Join(a.cfg.Gateway.Hostnames, ", ")
	if gwList == "" {
		gwList = "Moat's MX hosts"
	}
	for _, m := range mxs {
		if m.Host == "" {
			nullMX = true
		} else {
			realMX++
		}
	}
	if nullMX {
		if realMX == 0 {
			d.add(Finding{Severity: Info, Kind: KindNullMX, Subject: domain + ". IN MX 0 .", Record: domain + ". IN MX 0 .",
				Explanation: "The domain publishes a null MX (RFC 7505): it accepts no mail at all, and senders must not fall back to its A/AAAA records.",
				Fix:         "None, if the domain really receives no mail."})
		} else {
			d.add(Finding{Severity: Info, Kind: KindNullMX, Subject: domain + ". IN MX 0 .", Record: domain + ". IN MX 0 .",
				Explanation: "The domain publishes a null MX together with other MX records, which RFC 7505 forbids; senders treat it inconsistently. The other MX records are audited below.",
				Fix:         fmt.Sprintf("Delete the null MX record %q.", domain+". IN MX 0 .")})
		}
	}
	mxNames := map[string]bool{}
	for _, m := range mxs {
		if m.Host == "" {
			continue
		}
		mxNames[m.Host] = true
		if a.gwNames[m.Host] {
			moatMX++
			continue
		}
		record := fmt.Sprintf("%s. IN MX %d %s.", domain, m.Pref, m.Host)
		addrs, chain, err := a.r.resolve(ctx, m.Host)
		if err != nil && !errors.Is(err, errNXDomain) {
			a.couldNotCheck(d, fmt.Sprintf("MX %d %s", m.Pref, m.Host), err)
			if len(addrs) == 0 {
				continue
			}
		}
		_, litErr := netip.ParseAddr(strings.Trim(m.Host, "[]"))
		literal := litErr == nil
		allGW := len(addrs) > 0
		var leakAddrs []netip.Addr
		for _, ad := range addrs {
			if !a.isGateway(ad) {
				allGW = false
				leakAddrs = append(leakAddrs, ad)
			}
		}
		evidence := resolution(m.Host, chain, addrs)
		var notes []string
		for _, ad := range leakAddrs {
			if w := what(ad); w != "" {
				notes = append(notes, w)
			}
		}
		if len(notes) > 0 {
			evidence += "; " + strings.Join(notes, "; ")
		}
		someGW := len(leakAddrs) < len(addrs)
		if allGW {
			moatMX++
			if len(chain) > 0 || literal {
				why := fmt.Sprintf("The MX target %s is a CNAME (RFC 2181 section 10.3 forbids it); it leads to Moat, but some senders will not deliver there.", m.Host)
				if literal {
					why = fmt.Sprintf("The MX target %s is an IP address, not a host name (RFC 5321 forbids it); it is Moat's address, but many senders will not deliver there.", m.Host)
				}
				d.add(Finding{Severity: Info, Kind: KindMXInvalid, Subject: "MX " + fmt.Sprint(m.Pref) + " " + m.Host, Record: record, Address: addrList(addrs), Evidence: evidence,
					Explanation: why, Fix: fmt.Sprintf("Point the MX at %s directly.", gwList)})
			}
			continue
		}
		subject := fmt.Sprintf("MX %d %s", m.Pref, m.Host)
		if len(addrs) > 0 {
			subject += " (" + addrList(addrs) + ")"
		}
		for _, ad := range leakAddrs {
			c := cs.add(ad, "MX "+m.Host, 0)
			c.backend = true
		}
		sev := Critical
		why := fmt.Sprintf("This MX is not one of Moat's hosts. Spammers ignore MX priorities and deliver to the lowest-priority MX on purpose, so mail sent to %s skips every Moat check.", m.Host)
		fix := fmt.Sprintf("Delete the record %q from the zone of %s; list only %s as MX. If you want a fallback, Moat queues mail itself; senders queue too when all MX are down.",
			record, domain, gwList)
		switch {
		case someGW:
			// Partly Moat: e.g. Moat's IPv4 address plus an AAAA of the
			// backend. Senders pick any address of the name.
			moatMX++
			owner := m.Host
			if len(chain) > 0 {
				owner = chain[len(chain)-1]
			}
			bad := addrRecords(owner, nil, leakAddrs)
			why = fmt.Sprintf("%s resolves to Moat but also to %s, which is not Moat: senders choose any address of an MX host (IPv6-capable senders prefer the AAAA), so part of the domain's mail skips every Moat check.", m.Host, addrList(leakAddrs))
			fix = fmt.Sprintf("Delete the address record(s) %q, so that %s resolves only to Moat's addresses, or point the MX at %s directly.", bad, owner, gwList)
		case len(addrs) == 0:
			sev = Warning
			why = fmt.Sprintf("This MX is not one of Moat's hosts and %s does not resolve now (dangling): whoever gets that name or address receives the domain's mail, and senders waste time on it.", m.Host)
		case len(chain) > 0:
			why += fmt.Sprintf(" Its target is also a CNAME (%s), which RFC 2181 forbids for MX targets.", strings.Join(chain, " -> "))
		case literal:
			why += " Its target is also an IP address literal, which RFC 5321 forbids; spammers use it anyway."
		}
		d.add(Finding{Severity: sev, Kind: KindMXLeak, Subject: subject, Record: record, Address: addrList(leakAddrs), Evidence: evidence,
			Explanation: why, Fix: fix})
	}
	if moatMX == 0 && !mxFailed && !(nullMX && realMX == 0) {
		w := "None of the domain's MX records points at Moat"
		if len(mxs) == 0 {
			w = "The domain has no MX record, so senders deliver to its A/AAAA record"
		}
		d.add(Finding{Severity: Critical, Kind: KindNotRouted, Subject: domain, Record: domain + ". IN MX",
			Explanation: w + ": its mail is not filtered by Moat at all.",
			Fix:         fmt.Sprintf("Publish MX records pointing at %s only.", gwList)})
	}

	// Guessable names, apex, wildcard and SPF hints, in parallel; the MX
	// records of the guessable names and of common subdomains too (a
	// subdomain with its own MX to the backend skips Moat).
	var (
		mu    sync.Mutex
		wg    sync.WaitGroup
		named []nameAddrs
		subs  []subMX
	)
	wildName := "moat-audit-" + randHex(6) + "." + domain
	wildShown := wildName // the name whose answer showed the wildcard
	// subMXs looks up the MX records of fqdn (a name under the domain) and
	// their addresses; reportErr: a failed MX lookup is reported.
	subMXs := func(label, fqdn string, reportErr bool) {
		ms, err := a.r.mxs(ctx, fqdn)
		if err != nil {
			if reportErr && !errors.Is(err, errNXDomain) {
				mu.Lock()
				a.couldNotCheck(d, fqdn+". IN MX", err)
				mu.Unlock()
			}
			return
		}
		for _, m := range ms {
			if m.Host == "" || a.gwNames[m.Host] {
				continue
			}
			addrs, chain, err := a.r.resolve(ctx, m.Host)
			mu.Lock()
			if err != nil && !errors.Is(err, errNXDomain) {
				a.couldNotCheck(d, fmt.Sprintf("MX %d %s of %s", m.Pref, m.Host, fqdn), err)
			}
			subs = append(subs, subMX{label: label, fqdn: fqdn, mx: m, addrs: addrs, chain: chain})
			mu.Unlock()
		}
	}
	acquire := func() bool {
		select {
		case a.sem <- struct{}{}:
			return true
		case <-ctx.Done():
			return false
		}
	}
	lookup := func(label, fqdn string) {
		defer wg.Done()
		if !acquire() {
			return
		}
		defer func() { <-a.sem }()
		addrs, chain, err := a.r.resolve(ctx, fqdn)
		if label == "*" && len(addrs) == 0 && (err == nil || errors.Is(err, errNXDomain)) {
			// Servers that do not synthesise wildcard answers (some
			// test and appliance servers) still answer for the name
			// "*.DOMAIN" itself.
			lit := "*." + domain
			if la, lc, lerr := a.r.resolve(ctx, lit); lerr == nil && len(la) > 0 {
				addrs, chain, err = la, lc, nil
				mu.Lock()
				wildShown = lit
				mu.Unlock()
			} else if lerr == nil || errors.Is(lerr, errNXDomain) {
				subMXs(label, lit, false)
			}
		}
		mu.Lock()
		if err != nil && !errors.Is(err, errNXDomain) {
			shown := fqdn
			if label == "*" {
				shown = "*." + domain + " (wildcard, probed as " + fqdn + ")"
			}
			a.couldNotCheck(d, shown, err)
		}
		if len(addrs) > 0 {
			named = append(named, nameAddrs{label, addrs, chain})
		}
		mu.Unlock()
		if label != "@" && !errors.Is(err, errNXDomain) {
			subMXs(label, fqdn, err == nil)
		}
	}
	lookupMX := func(label, fqdn string) {
		defer wg.Done()
		if !acquire() {
			return
		}
		defer func() { <-a.sem }()
		subMXs(label, fqdn, true)
	}
	var spfHosts []spfHint
	var spfErr error
	if deadZone {
		d.add(Finding{Severity: Warning, Kind: KindCouldNotCheck, Subject: "names under " + domain + " (apex, mail., smtp., ..., wildcard, subdomain MX, SPF)",
			Explanation: fmt.Sprintf("The domain's name servers did not answer in time, neither for its MX records nor for its own address (%v), so the names spammers guess under it, its wildcard, its subdomains' MX records and its SPF record were not checked: the domain is NOT known to be clean.", apexErr),
			Fix:         "Make the domain's name servers answer (timeouts also delay legitimate mail), check the resolver (--resolver, audit.resolver), then re-run the audit.",
			Evidence:    apexErr.Error()})
	} else {
		wg.Add(2 + len(a.guess))
		go lookup("*", wildName)
		go lookup("@", domain)
		for _, g := range a.guess {
			go lookup(g, g+"."+domain)
		}
		for _, l := range subdomainLabels {
			if !slices.Contains(a.guess, l) {
				wg.Add(1)
				go lookupMX(l, l+"."+domain)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			spfHosts, spfErr = a.spf(ctx, domain)
		}()
		wg.Wait()
	}
	// SPF only hints at addresses to probe: without --probe a record
	// that could not be read leaves nothing unchecked, and an include
	// (a provider's zone) never names the customer's own server alone.
	var incErr *spfIncludeError
	switch {
	case spfErr == nil:
	case errors.As(spfErr, &incErr) || !a.cfg.Probe:
		d.add(Finding{Severity: Info, Kind: KindSPFReveals, Subject: "SPF hints of " + domain + " not read",
			Explanation: fmt.Sprintf("The SPF lookup failed (%v). SPF only hints at the domain's own mail servers, to probe them; the leaks above were checked without it.", spfErr),
			Fix:         "None needed for the audit; senders checking SPF see the same failure, so make the record resolvable.",
			Evidence:    spfErr.Error()})
	default:
		a.couldNotCheck(d, "SPF record of "+domain, spfErr)
	}
	sort.Slice(named, func(i, j int) bool { return named[i].name < named[j].name })
	var wildcard []netip.Addr
	for _, n := range named {
		if n.name == "*" {
			wildcard = n.addrs
		}
	}
	type guessHit struct {
		fqdn, record, evidence string
		addrs                  []netip.Addr
	}
	var guessed []guessHit
	for _, n := range named {
		fqdn := n.name + "." + domain
		switch n.name {
		case "@":
			fqdn = domain
		case "*":
			fqdn = "*." + domain
		default:
			if len(wildcard) > 0 && sameAddrs(n.addrs, wildcard) {
				continue // covered by the wildcard entry
			}
			if mxNames[fqdn] {
				continue // an MX target: audited as such
			}
		}
		h := guessHit{fqdn: fqdn, record: addrRecords(fqdn, n.chain, n.addrs), evidence: resolution(fqdn, n.chain, n.addrs)}
		if n.name == "*" {
			h.evidence = resolution(wildShown, n.chain, n.addrs) + " (any name resolves: wildcard)"
			h.record = addrRecords(fqdn, nil, n.addrs)
			if len(n.chain) > 0 {
				h.record = fmt.Sprintf("%s. IN CNAME %s.", fqdn, n.chain[0])
			}
		}
		for _, ad := range n.addrs {
			if a.isGateway(ad) {
				continue
			}
			src := "name " + fqdn
			if n.name == "@" {
				src = "apex " + domain
			}
			c := cs.add(ad, src, 0)
			c.names = append(c.names, fqdn)
			h.addrs = append(h.addrs, ad)
		}
		if len(h.addrs) > 0 {
			guessed = append(guessed, h)
		}
	}
	for _, h := range spfHosts {
		if !a.isGateway(h.addr) {
			cs.add(h.addr, "SPF "+h.source, 0)
		}
	}
	subs = a.dedupeSubMX(subs, domain)
	for _, sm := range subs {
		for _, ad := range sm.addrs {
			if !a.isGateway(ad) {
				cs.add(ad, "MX of "+sm.owner(domain), 0)
			}
		}
	}

	// Partial domains: neighbours whose MX lands on one of our mail servers.
	isBackend := func(ad netip.Addr) bool {
		c, ok := cs.m[ad]
		return ok && c.backend
	}
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
			if !errors.Is(err, errNXDomain) {
				a.couldNotCheck(d, "MX of neighbour domain "+nb, err)
			}
			continue
		}
		for _, m := range nmx {
			if m.Host == "" || a.gwNames[m.Host] {
				continue
			}
			addrs, err := a.r.addrs(ctx, m.Host)
			if err != nil && !errors.Is(err, errNXDomain) {
				a.couldNotCheck(d, "MX "+m.Host+" of neighbour domain "+nb, err)
			}
			for _, ad := range addrs {
				if isBackend(ad) && !a.isGateway(ad) {
					partial[nb] = fmt.Sprintf("its MX %s resolves to %s, one of this domain's mail servers", m.Host, ad)
				}
			}
		}
	}

	// Probes.
	var lockPorts map[netip.Addr]map[int]bool
	if a.cfg.Probe {
		lockPorts = a.probeAll(ctx, d, &cs, domain, rcpt, routePorts, partial)
	}

	// Guessable names: a name pointing at a mail server of the domain (a
	// route backend, a leaking MX, or an address that accepted the probe).
	// When the probe found every such address locked, it is only info.
	for _, g := range guessed {
		var hit []netip.Addr
		open := false
		for _, ad := range g.addrs {
			c := cs.m[ad]
			if c.backend || c.accepts {
				hit = append(hit, ad)
				if !c.probed || c.open {
					open = true
				}
			}
		}
		label := g.fqdn
		if g.fqdn == domain {
			label = domain + " (apex A/AAAA)"
		}
		notes := notesOn(hit)
		ev := g.evidence
		if len(notes) > 0 {
			ev += "; " + strings.Join(notes, "; ")
		}
		if len(hit) > 0 {
			sev, why := Warning, fmt.Sprintf("%s points at this domain's mail server. Spammers try names like mail.%s (and the domain itself) and deliver to them directly, whatever the MX records say.", g.fqdn, domain)
			if g.fqdn == domain {
				why = fmt.Sprintf("The domain's own A/AAAA record points at its mail server: spammers deliver to %s directly, whatever the MX records say.", domain)
			}
			if strings.HasPrefix(g.fqdn, "*.") {
				why = fmt.Sprintf("A wildcard record makes every name under %s (mail., smtp., anything a spammer guesses) resolve to this domain's mail server.", domain)
			}
			if !open {
				sev = Info
				why += " The probe found it locked (every connection from a non-Moat address was refused), so this only tells spammers where the server is."
			}
			d.add(Finding{Severity: sev, Kind: KindGuessableName, Subject: fmt.Sprintf("%s (%s)", label, addrList(hit)), Record: g.record, Address: addrList(hit), Evidence: ev,
				Explanation: why,
				Fix: fmt.Sprintf("Remove %q from the zone, or rename the server to a name not associated with mail (not mail/smtp/mx..., e.g. a neutral host name under your ISP's domain), and lock the backend down (%s).",
					g.record, a.lockdownCommand(hit, nil, routePorts))})
			continue
		}
		// Not a known mail server: only interesting if it answers SMTP.
		var smtpAddrs []netip.Addr
		for _, ad := range g.addrs {
			if cs.m[ad].smtp {
				smtpAddrs = append(smtpAddrs, ad)
			}
		}
		if len(smtpAddrs) > 0 {
			d.add(Finding{Severity: Info, Kind: KindGuessableName, Subject: fmt.Sprintf("%s (%s)", label, addrList(smtpAddrs)), Record: g.record, Address: addrList(smtpAddrs), Evidence: ev,
				Explanation: fmt.Sprintf("%s answers SMTP but refused mail for %s from a non-Moat address: not a leak, but spammers guessing the name find a mail server.", g.fqdn, domain),
				Fix:         "Rename the host to a name not associated with mail, or keep it refusing mail for the domain."})
		}
	}

	// Subdomains with their own MX leading to a mail server of the domain.
	for _, sm := range subs {
		var hit []netip.Addr
		open := false
		for _, ad := range sm.addrs {
			c, ok := cs.m[ad]
			if !ok || a.isGateway(ad) || !(c.backend || c.accepts) {
				continue
			}
			hit = append(hit, ad)
			if !c.probed || c.open {
				open = true
			}
		}
		if len(hit) == 0 {
			continue // hosted elsewhere: not this domain's server
		}
		owner := sm.owner(domain)
		record := fmt.Sprintf("%s. IN MX %d %s.", owner, sm.mx.Pref, sm.mx.Host)
		ev := resolution(sm.mx.Host, sm.chain, sm.addrs)
		notes := notesOn(hit)
		if len(notes) > 0 {
			ev += "; " + strings.Join(notes, "; ")
		}
		sev := Critical
		why := fmt.Sprintf("%s has its own MX record pointing at this domain's mail server, not at Moat: mail for anyone@%s is delivered straight to the backend without any Moat check, and the record shows spammers where the backend is.", owner, owner)
		if sm.label == "*" {
			why = fmt.Sprintf("A wildcard MX record makes every name under %s (lists., sub., anything a spammer makes up) receive mail at this domain's mail server, not at Moat: that mail skips every Moat check.", domain)
		}
		fix := fmt.Sprintf("If %s receives mail, point its MX at %s and add it to Moat's domains (with the same backend); otherwise delete the record %q. Lock the backend down (%s).",
			owner, gwList, record, a.lockdownCommand(hit, nil, routePorts))
		if sm.label == "*" {
			fix = fmt.Sprintf("Delete the wildcard record %q; give each subdomain that really receives mail its own MX pointing at %s and add it to Moat's domains. Lock the backend down (%s).",
				record, gwList, a.lockdownCommand(hit, nil, routePorts))
		}
		if !open {
			sev = Info
			why += " The probe found the server locked (every connection from a non-Moat address was refused), so mail for " + owner + " bounces instead: route it through Moat or delete the record."
		}
		d.add(Finding{Severity: sev, Kind: KindMXLeak, Subject: fmt.Sprintf("MX of %s: %d %s (%s)", owner, sm.mx.Pref, sm.mx.Host, addrList(hit)),
			Record: record, Address: addrList(hit), Evidence: ev, Explanation: why, Fix: fix})
	}

	// SPF hints (informational): the record names a mail server of the domain.
	seenSPF := map[netip.Addr]bool{}
	for _, h := range spfHosts {
		c, ok := cs.m[h.addr]
		if !ok || seenSPF[h.addr] || !(c.backend || c.accepts) {
			continue
		}
		seenSPF[h.addr] = true
		ev := fmt.Sprintf("SPF term %s -> %s", h.source, h.addr)
		if w := what(h.addr); w != "" {
			ev += "; " + w
		}
		d.add(Finding{Severity: Info, Kind: KindSPFReveals, Subject: fmt.Sprintf("SPF %s (%s)", h.source, h.addr), Address: h.addr.String(), Evidence: ev,
			Record:      domain + ". IN TXT \"v=spf1 ... " + h.source + " ...\"",
			Explanation: "The SPF record names this mail server of the domain as a sender: anyone reading the record learns where the backend is. Not a leak by itself, as long as the backend is locked down.",
			Fix:         "Send outbound mail through a host that does not receive mail, or make sure the backend refuses mail from non-Moat clients (moat lockdown)."})
	}

	nbs := make([]string, 0, len(partial))
	for nb := range partial {
		nbs = append(nbs, nb)
	}
	sort.Strings(nbs)
	for _, nb := range nbs {
		d.add(Finding{Severity: Warning, Kind: KindPartialDomain, Subject: nb, Evidence: partial[nb],
			Explanation: fmt.Sprintf("%s shares this domain's backend but is not routed through Moat (%s). A firewall lockdown of the backend to Moat's addresses would bounce its mail.", nb, partial[nb]),
			Fix:         fmt.Sprintf("Do not firewall the backend. Per domain instead: remove MX records of %s that point at the backend, rename guessable host names, and run `moat milter` on the backend so unmarked mail for %s is refused. Or route %s through Moat too, then lock down.", domain, domain, nb)})
	}
	if len(lockPorts) > 0 && len(partial) == 0 {
		d.Lockdown = a.lockdownRules(domain, lockPorts)
	}
	for _, ad := range cs.order {
		c := cs.m[ad]
		srcs := append([]string(nil), c.sources...)
		d.Candidates = append(d.Candidates, Candidate{Addr: ad.String(), Sources: srcs})
	}
	d.setStatus()
	return d
}

// subdomainLabels are subdomains whose own MX records are checked besides
// the guessable names (for subdomains that receive mail of their own).
var subdomainLabels = []string{
	"sub", "subdomain", "lists", "list", "corp", "internal", "intranet", "office", "hq", "staff",
	"dev", "test", "staging", "old", "legacy", "support", "news", "newsletter", "marketing",
	"bounce", "bounces", "info", "sales", "eu", "us", "uk", "de", "fr",
}

// subMX is one MX record of a name under the domain.
type subMX struct {
	label string // as in nameAddrs; "*" for the wildcard
	fqdn  string // the name asked (the random probe name for the wildcard)
	mx    mx
	addrs []netip.Addr
	chain []string
}

// owner is the record's owner name as the zone has it.
func (s subMX) owner(domain string) string {
	if s.label == "*" {
		return "*." + domain
	}
	return s.fqdn
}

// dedupeSubMX drops names whose MX records are those synthesised from a
// wildcard MX (reported once, as the wildcard), and duplicates.
func (a *auditor) dedupeSubMX(subs []subMX, domain string) []subMX {
	wild := map[string]bool{}
	for _, s := range subs {
		if s.label == "*" {
			wild[fmt.Sprint(s.mx.Pref, s.mx.Host)] = true
		}
	}
	seen := map[string]bool{}
	var out []subMX
	for _, s := range subs {
		k := fmt.Sprint(s.mx.Pref, s.mx.Host)
		if s.label != "*" && wild[k] {
			continue
		}
		if seen[s.owner(domain)+" "+k] {
			continue
		}
		seen[s.owner(domain)+" "+k] = true
		out = append(out, s)
	}
	sort.SliceStable(out, func(i, j int) bool {
		return out[i].owner(domain) < out[j].owner(domain) || out[i].owner(domain) == out[j].owner(domain) && out[i].mx.Pref < out[j].mx.Pref
	})
	return out
}

// gatewayAddrs are Moat's addresses as strings (configured and resolved).
func (a *auditor) gatewayAddrs() []string {
	var out []string
	for _, p := range a.gw {
		v := p.String()
		if p.IsSingleIP() {
			v = p.Addr().String()
		}
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// lockdownCommand is the `moat lockdown` command line closing the given
// addresses' ports (default: 25 and the route ports).
func (a *auditor) lockdownCommand(addrs []netip.Addr, ports []int, routePorts map[int]bool) string {
	if len(ports) == 0 {
		ports = []int{a.cfg.SMTPPort} // port 25 but in tests
		for p := range routePorts {
			if !slices.Contains(ports, p) {
				ports = append(ports, p)
			}
		}
		sort.Ints(ports)
	}
	var b strings.Builder
	b.WriteString("moat lockdown --format nftables")
	for _, g := range a.gatewayAddrs() {
		b.WriteString(" --gateway-ip " + g)
	}
	for _, p := range ports {
		b.WriteString(fmt.Sprintf(" --backend %s", hostPort(addrs[0], p)))
	}
	b.WriteString(" > moat-lockdown.nft && nft -f moat-lockdown.nft   # on ")
	b.WriteString(addrList(addrs))
	return b.String()
}

// lockdownRules generates the nftables lockdown for the leaking ports.
func (a *auditor) lockdownRules(domain string, lockPorts map[netip.Addr]map[int]bool) string {
	cfg := lockdown.DefaultConfig()
	cfg.Gateway = a.gatewayAddrs()
	cfg.Domain = domain
	for _, ps := range lockPorts {
		for p := range ps {
			if !slices.Contains(cfg.Ports, p) {
				cfg.Ports = append(cfg.Ports, p)
			}
		}
	}
	var b strings.Builder
	if err := lockdown.Generate(&b, lockdown.NFTables, cfg); err != nil {
		return ""
	}
	return b.String()
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
