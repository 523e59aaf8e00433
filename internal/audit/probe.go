package audit

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"moat.dev/moat/internal/passmark"
)

type probeJob struct {
	addr netip.Addr
	port int
	c    *cand
}

type probeResult struct {
	Probe
	smtp        bool     // 2xx greeting and EHLO
	neighbours  []string // other domains whose postmaster the server accepted
	fromMoat    bool
	canarySent  bool
	canaryValid bool // canary delivered (leak)
}

// probeAll probes every candidate address on the SMTP port and, for known
// backends, on their route ports, then turns the outcomes into findings.
func (a *auditor) probeAll(ctx context.Context, d *DomainReport, cs *candidates, domain, rcpt string, partial map[string]string) {
	var jobs []probeJob
	for _, ad := range cs.order {
		c := cs.m[ad]
		if a.isGateway(ad) {
			continue
		}
		ports := map[int]bool{a.cfg.SMTPPort: true}
		for p := range c.ports {
			ports[p] = true
		}
		ps := make([]int, 0, len(ports))
		for p := range ports {
			ps = append(ps, p)
		}
		sort.Ints(ps)
		for _, p := range ps {
			jobs = append(jobs, probeJob{ad, p, c})
		}
	}
	var neighbours []string
	for _, nb := range a.cfg.NeighbourDomains {
		nb = normName(nb)
		if _, routed := a.cfg.Routes[nb]; !routed && nb != domain && nb != "" {
			neighbours = append(neighbours, nb)
		}
	}
	results := make([]probeResult, len(jobs))
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case a.sem <- struct{}{}:
			case <-ctx.Done():
				results[i] = probeResult{Probe: Probe{Target: hostPort(j.addr, j.port), Outcome: OutcomeError, Reply: "cancelled"}}
				return
			}
			defer func() { <-a.sem }()
			results[i] = a.probe(ctx, j.addr, j.port, domain, rcpt, neighbours)
		}()
	}
	wg.Wait()
	for i, r := range results {
		j := jobs[i]
		d.Probes = append(d.Probes, r.Probe)
		if r.smtp && j.port == a.cfg.SMTPPort {
			j.c.smtp = true
		}
		for _, nb := range r.neighbours {
			if _, ok := partial[nb]; !ok {
				partial[nb] = fmt.Sprintf("%s accepted RCPT TO:<postmaster@%s>", r.Target, nb)
			}
		}
		srcs := strings.Join(j.c.sources, "; ")
		switch r.Outcome {
		case OutcomeAccepted:
			d.add(Finding{Critical, KindDirect, fmt.Sprintf("%s (%s)", r.Target, srcs),
				fmt.Sprintf("The server accepted RCPT TO:<%s> from a non-Moat address (%s): anyone can deliver mail for %s there and skip every Moat check.", rcpt, r.Reply, domain),
				a.directFix(j, len(partial) > 0)})
		case OutcomeCanaryAccepted:
			d.add(Finding{Critical, KindPassMark, fmt.Sprintf("%s (%s)", r.Target, srcs),
				fmt.Sprintf("The server accepted a canary message for <%s> without a valid pass mark (%s): mail that bypasses Moat is delivered.", rcpt, r.Reply),
				a.directFix(j, len(partial) > 0)})
		case OutcomeCanaryRejected:
			d.add(Finding{Info, KindPassMark, r.Target,
				fmt.Sprintf("The server accepts RCPT for %s from anywhere but refused the unmarked canary (%s): pass-mark enforcement works.", domain, r.Reply),
				"None."})
		case OutcomeRcptTempfail:
			d.add(Finding{Warning, KindInconclusive, r.Target,
				fmt.Sprintf("The server answered with a temporary failure (%s); a spammer retrying later may get through.", r.Reply),
				"Re-run the audit later; make the backend refuse non-Moat clients permanently (5xx) or at connect (moat lockdown)."})
		case OutcomeFromMoat:
			d.add(Finding{Info, KindInconclusive, r.Target,
				"The probe connected from one of Moat's own addresses, so being accepted proves nothing.",
				"Run the audit from a host outside Moat's address set, or set source_address (--source-ip)."})
		}
	}
}

func (a *auditor) directFix(j probeJob, partial bool) string {
	if partial {
		return fmt.Sprintf("Other domains on this server are not routed through Moat, so a firewall would bounce their mail: run `moat milter` on %s (it refuses mail without Moat's pass mark for protected domains only), remove backend MX records and guessable names.", j.addr)
	}
	return fmt.Sprintf("Allow port %d on %s only from Moat's addresses: `moat lockdown --format nftables` (or iptables, postfix, exim) generates the rules; or run `moat milter` there.", j.port, j.addr)
}

// probe runs one SMTP dialogue: EHLO, MAIL, RCPT (never DATA unless a canary
// is requested for an accepted recipient), then RSET/QUIT.
func (a *auditor) probe(ctx context.Context, ad netip.Addr, port int, domain, rcpt string, neighbours []string) (res probeResult) {
	target := hostPort(ad, port)
	res.Target = target
	dl := net.Dialer{Timeout: a.cfg.Timeout}
	if a.cfg.SourceAddress != "" {
		src, _ := netip.ParseAddr(a.cfg.SourceAddress)
		if src.Is4() == ad.Is4() {
			dl.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
	}
	conn, err := dl.DialContext(ctx, "tcp", target)
	if err != nil {
		res.Outcome, res.Reply = OutcomeConnectFailed, shortErr(err)
		return res
	}
	defer conn.Close()
	if la, ok := conn.LocalAddr().(*net.TCPAddr); ok {
		if lap, ok := netip.AddrFromSlice(la.IP); ok && a.isGateway(lap.Unmap()) {
			res.Outcome, res.fromMoat = OutcomeFromMoat, true
			res.Reply = "local address " + lap.Unmap().String()
			return res
		}
	}
	// Stop the dialogue when ctx ends.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	step := func() { conn.SetDeadline(time.Now().Add(a.cfg.Timeout)) }
	c := smtp.NewClient(conn)
	defer c.Close()
	step()
	if err := c.Hello(a.cfg.HeloName); err != nil {
		res.Outcome, res.Reply = classify(err, OutcomeGreetingRefuse, OutcomeGreetingRefuse)
		return res
	}
	res.smtp = true
	step()
	if err := c.Mail(a.cfg.ProbeFrom, nil); err != nil {
		res.Outcome, res.Reply = classify(err, OutcomeRcptRefused, OutcomeRcptTempfail)
		return res
	}
	step()
	if err := c.Rcpt(rcpt, nil); err != nil {
		res.Outcome, res.Reply = classify(err, OutcomeRcptRefused, OutcomeRcptTempfail)
	} else {
		res.Outcome, res.Reply = OutcomeAccepted, "RCPT accepted"
		if a.cfg.SendCanary {
			step()
			res.Outcome, res.Reply = a.canary(c, domain, rcpt, step)
		}
	}
	if len(neighbours) > 0 && res.Outcome != OutcomeError {
		step()
		// A server accepting a recipient in a domain that cannot exist
		// accepts anything (open relay or catch-all): its answers say
		// nothing about which domains it hosts.
		if c.Reset() == nil && c.Mail(a.cfg.ProbeFrom, nil) == nil && c.Rcpt("postmaster@moat-audit-"+randHex(4)+".invalid", nil) != nil {
			for _, nb := range neighbours {
				step()
				if c.Rcpt("postmaster@"+nb, nil) == nil {
					res.neighbours = append(res.neighbours, nb)
				}
			}
		}
	}
	step()
	c.Reset()
	c.Quit()
	return res
}

// canary sends a clearly labelled message carrying a forged pass mark (right
// format, wrong key). A backend enforcing the pass mark refuses it.
func (a *auditor) canary(c *smtp.Client, domain, rcpt string, step func()) (string, string) {
	id := randHex(8)
	var msg bytes.Buffer
	fmt.Fprintf(&msg, "From: Moat leakage audit <%s>\r\n", a.cfg.ProbeFrom)
	fmt.Fprintf(&msg, "To: <%s>\r\n", rcpt)
	fmt.Fprintf(&msg, "Subject: [MOAT AUDIT CANARY] direct delivery test, please delete\r\n")
	fmt.Fprintf(&msg, "Date: %s\r\n", time.Now().Format(time.RFC1123Z))
	fmt.Fprintf(&msg, "Message-ID: <moat-canary-%s@%s>\r\n", id, a.cfg.HeloName)
	fmt.Fprintf(&msg, "Auto-Submitted: auto-generated\r\nX-Moat-Canary: %s\r\n", id)
	body := "This message was sent by `moat audit --send-canary` straight to a backend\r\n" +
		"server of " + domain + ", bypassing Moat, to test that the backend refuses\r\n" +
		"mail without a valid Moat pass mark. If you can read it, the backend does\r\n" +
		"NOT enforce the pass mark: see `moat audit` and docs/leakage.md.\r\n"
	head := msg.String()
	dg, _ := passmark.Digest(strings.NewReader(head + "\r\n" + body))
	key := make([]byte, 32)
	rand.Read(key)
	mark := passmark.Sign(key, passmark.Mark{Domain: domain, ID: "canary-" + id, Time: time.Now(), Rcpts: []string{rcpt}, Digest: dg})
	full := passmark.Field + ": " + mark + "\r\n" + head + "\r\n" + body
	w, err := c.Data()
	if err != nil {
		o, r := classify(err, OutcomeCanaryRejected, OutcomeRcptTempfail)
		return o, r
	}
	step()
	if _, err := w.Write([]byte(full)); err != nil {
		return OutcomeError, shortErr(err)
	}
	step()
	if err := w.Close(); err != nil {
		o, r := classify(err, OutcomeCanaryRejected, OutcomeRcptTempfail)
		return o, r
	}
	return OutcomeCanaryAccepted, "canary accepted at end of DATA"
}

// classify maps an SMTP error to a permanent or temporary outcome, and
// anything else (I/O) to OutcomeError/permanent as appropriate.
func classify(err error, perm, temp string) (string, string) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		reply := fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
		if se.EnhancedCode == smtp.NoEnhancedCode || se.EnhancedCode[0] == 0 {
			reply = fmt.Sprintf("%d %s", se.Code, se.Message)
		}
		if se.Code >= 400 && se.Code < 500 {
			return temp, reply
		}
		return perm, reply
	}
	// The server closed or stalled the connection: it did not accept.
	if perm == OutcomeGreetingRefuse {
		return OutcomeGreetingRefuse, shortErr(err)
	}
	return OutcomeError, shortErr(err)
}

func shortErr(err error) string {
	s := err.Error()
	if len(s) > 160 {
		s = s[:160]
	}
	return s
}
