package audit

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/textproto"
	"sort"
	"strings"
	"sync"
	"time"

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

// probePorts returns the ports probed on every candidate: smtp_port,
// probe_ports and the route ports of the domain, plus the candidate's own.
func (a *auditor) probePorts(c *cand, routePorts map[int]bool) []int {
	ports := map[int]bool{a.cfg.SMTPPort: true}
	for _, p := range a.cfg.ProbePorts {
		ports[p] = true
	}
	for p := range routePorts {
		ports[p] = true
	}
	for p := range c.ports {
		ports[p] = true
	}
	ps := make([]int, 0, len(ports))
	for p := range ports {
		ps = append(ps, p)
	}
	sort.Ints(ps)
	return ps
}

// probeAll probes every candidate address on the probe ports, then turns
// the outcomes into findings. It returns the address/ports that accepted
// mail for the domain (what a lockdown must close).
func (a *auditor) probeAll(ctx context.Context, d *DomainReport, cs *candidates, domain, rcpt string, routePorts map[int]bool, partial map[string]string) map[netip.Addr]map[int]bool {
	var jobs []probeJob
	for _, ad := range cs.order {
		c := cs.m[ad]
		if a.isGateway(ad) {
			continue
		}
		for _, p := range a.probePorts(c, routePorts) {
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
	leaking := map[netip.Addr]map[int]bool{}
	for i, r := range results {
		j := jobs[i]
		d.Probes = append(d.Probes, r.Probe)
		j.c.probed = true
		if r.smtp {
			j.c.smtp = true
		}
		switch r.Outcome {
		case OutcomeConnectFailed, OutcomeGreetingRefuse, OutcomeRcptRefused, OutcomeCanaryRejected:
		default:
			j.c.open = true
		}
		for _, nb := range r.neighbours {
			if _, ok := partial[nb]; !ok {
				partial[nb] = fmt.Sprintf("%s accepted RCPT TO:<postmaster@%s>", r.Target, nb)
			}
		}
		srcs := strings.Join(j.c.sources, "; ")
		evidence := strings.Join(r.Transcript, " | ")
		lock := func() {
			j.c.accepts = true
			if leaking[j.addr] == nil {
				leaking[j.addr] = map[int]bool{}
			}
			leaking[j.addr][j.port] = true
		}
		v6 := ""
		if j.addr.Is6() {
			v6 = " This is an IPv6 address: an IPv4-only firewall (iptables) does not cover it; the nftables output (table inet) covers both, or apply the ip6tables output too."
		}
		switch r.Outcome {
		case OutcomeAccepted:
			lock()
			d.add(Finding{Severity: Critical, Kind: KindDirect, Subject: fmt.Sprintf("%s (%s)", r.Target, srcs), Address: r.Target, Evidence: evidence,
				Record:      strings.Join(j.c.names, ", "),
				Explanation: fmt.Sprintf("The server accepted RCPT TO:<%s> from a non-Moat address (%s): anyone can deliver mail for %s there and skip every Moat check.%s", rcpt, r.Reply, domain, v6),
				Fix:         a.directFix(j, len(partial) > 0),
				Lockdown:    a.lockdownFor(j, len(partial) > 0)})
		case OutcomeCanaryAccepted:
			lock()
			d.add(Finding{Severity: Critical, Kind: KindPassMark, Subject: fmt.Sprintf("%s (%s)", r.Target, srcs), Address: r.Target, Evidence: evidence,
				Explanation: fmt.Sprintf("The server accepted a canary message for <%s> without a valid pass mark (%s): mail that bypasses Moat is delivered.%s", rcpt, r.Reply, v6),
				Fix:         a.directFix(j, len(partial) > 0),
				Lockdown:    a.lockdownFor(j, len(partial) > 0)})
		case OutcomeCanaryRejected:
			d.add(Finding{Severity: Info, Kind: KindPassMark, Subject: r.Target, Address: r.Target, Evidence: evidence,
				Explanation: fmt.Sprintf("The server accepts RCPT for %s from anywhere but refused the unmarked canary (%s): pass-mark enforcement works.", domain, r.Reply),
				Fix:         "None."})
		case OutcomeRcptTempfail:
			d.add(Finding{Severity: Warning, Kind: KindInconclusive, Subject: fmt.Sprintf("%s (%s)", r.Target, srcs), Address: r.Target, Evidence: evidence,
				Explanation: fmt.Sprintf("The server answered with a temporary failure (%s); a spammer retrying later may get through.", r.Reply),
				Fix:         "Re-run the audit later; make the backend refuse non-Moat clients permanently (5xx) or at connect (moat lockdown).",
				Lockdown:    a.lockdownFor(j, len(partial) > 0)})
		case OutcomeFromMoat:
			d.add(Finding{Severity: Info, Kind: KindInconclusive, Subject: r.Target, Address: r.Target, Evidence: r.Reply,
				Explanation: "The probe connected from one of Moat's own addresses, so being accepted proves nothing.",
				Fix:         "Run the audit from a host outside Moat's address set, or set source_address (--source-ip)."})
		}
	}
	return leaking
}

func (a *auditor) directFix(j probeJob, partial bool) string {
	if partial {
		return fmt.Sprintf("Other domains on this server are not routed through Moat, so a firewall would bounce their mail: run `moat milter` on %s (it refuses mail without Moat's pass mark for protected domains only), remove backend MX records and guessable names.", j.addr)
	}
	return fmt.Sprintf("Allow port %d on %s only from Moat's addresses: `moat lockdown --format nftables` (or iptables, ip6tables, postfix, exim) generates the rules (see lockdown); or run `moat milter` there.", j.port, j.addr)
}

func (a *auditor) lockdownFor(j probeJob, partial bool) string {
	if partial {
		return ""
	}
	return a.lockdownCommand([]netip.Addr{j.addr}, []int{j.port}, nil)
}

// probeMode is how a probe speaks to the server.
type probeMode int

const (
	modePlain probeMode = iota
	modeImplicitTLS
	modeSTARTTLS
)

// probe probes one address:port: port 465 with implicit TLS first (plain
// SMTP if the TLS handshake fails), and again with STARTTLS when the server
// demands it (530) before MAIL or RCPT.
func (a *auditor) probe(ctx context.Context, ad netip.Addr, port int, domain, rcpt string, neighbours []string) probeResult {
	mode := modePlain
	if port == 465 {
		mode = modeImplicitTLS
	}
	res, retry := a.dialogue(ctx, ad, port, mode, domain, rcpt, neighbours)
	if retry != nil && ctx.Err() == nil {
		res2, _ := a.dialogue(ctx, ad, port, *retry, domain, rcpt, neighbours)
		res2.Transcript = append(append(res.Transcript, "-- reconnect --"), res2.Transcript...)
		res2.smtp = res2.smtp || res.smtp
		return res2
	}
	return res
}

// session is one SMTP client connection recording the exchange.
type session struct {
	conn    net.Conn
	tp      *textproto.Conn
	timeout time.Duration
	res     *probeResult
}

func (s *session) step() { s.conn.SetDeadline(time.Now().Add(s.timeout)) }

func (s *session) log(line string) {
	if len(line) > 120 {
		line = line[:120] + "..."
	}
	if len(s.res.Transcript) < 40 {
		s.res.Transcript = append(s.res.Transcript, line)
	}
}

// reply reads one (possibly multi-line) reply.
func (s *session) reply() (int, string, error) {
	s.step()
	code, msg, err := s.tp.ReadResponse(0)
	if err != nil {
		var pe textproto.ProtocolError
		if errors.As(err, &pe) || code == 0 {
			s.log("S: (" + shortErr(err) + ")")
			return 0, "", err
		}
	}
	first, _, _ := strings.Cut(msg, "\n")
	s.log(fmt.Sprintf("S: %d %s", code, first))
	return code, msg, nil
}

func (s *session) cmd(line string) (int, string, error) {
	s.log("C: " + line)
	s.step()
	if err := s.tp.PrintfLine("%s", line); err != nil {
		s.log("S: (" + shortErr(err) + ")")
		return 0, "", err
	}
	return s.reply()
}

func replyText(code int, msg string) string {
	first, _, _ := strings.Cut(msg, "\n")
	return fmt.Sprintf("%d %s", code, first)
}

// dialogue runs one SMTP dialogue: EHLO, MAIL, RCPT (never DATA unless a
// canary is requested for an accepted recipient), then RSET/QUIT. It
// returns a mode to retry with, if the server needs TLS.
func (a *auditor) dialogue(ctx context.Context, ad netip.Addr, port int, mode probeMode, domain, rcpt string, neighbours []string) (res probeResult, retry *probeMode) {
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
		res.Transcript = []string{"connect: " + shortErr(err)}
		return res, nil
	}
	defer func() { conn.Close() }()
	if la, ok := conn.LocalAddr().(*net.TCPAddr); ok {
		if lap, ok := netip.AddrFromSlice(la.IP); ok && a.isGateway(lap.Unmap()) {
			res.Outcome, res.fromMoat = OutcomeFromMoat, true
			res.Reply = "local address " + lap.Unmap().String()
			return res, nil
		}
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	s := &session{conn: conn, timeout: a.cfg.Timeout, res: &res}
	tlsCfg := &tls.Config{InsecureSkipVerify: true, ServerName: ad.String()} // a probe: any certificate will do
	if mode == modeImplicitTLS {
		tc := tls.Client(conn, tlsCfg)
		s.step()
		if err := tc.HandshakeContext(ctx); err != nil {
			res.Outcome, res.Reply = OutcomeError, "TLS: "+shortErr(err)
			res.Transcript = []string{"TLS handshake: " + shortErr(err)}
			plain := modePlain
			return res, &plain
		}
		s.conn = tc
		s.log("(implicit TLS)")
	}
	s.tp = textproto.NewConn(s.conn)
	code, msg, err := s.reply()
	if err != nil || code != 220 {
		res.Outcome, res.Reply = OutcomeGreetingRefuse, replyOr(code, msg, err)
		if code != 0 {
			s.cmd("QUIT")
		}
		return res, nil
	}
	ehlo := func() (string, bool) {
		code, msg, err := s.cmd("EHLO " + a.cfg.HeloName)
		if err == nil && code >= 500 && code < 600 {
			code, msg, err = s.cmd("HELO " + a.cfg.HeloName)
		}
		if err != nil || code/100 != 2 {
			res.Outcome, res.Reply = OutcomeGreetingRefuse, replyOr(code, msg, err)
			if code/100 == 4 {
				res.Outcome = OutcomeRcptTempfail
			}
			return "", false
		}
		return strings.ToUpper(msg), true
	}
	exts, ok := ehlo()
	if !ok {
		s.cmd("QUIT")
		return res, nil
	}
	res.smtp = true
	canTLS := strings.Contains(exts, "\nSTARTTLS") || strings.HasPrefix(exts, "STARTTLS")
	if mode == modeSTARTTLS && canTLS {
		code, msg, err := s.cmd("STARTTLS")
		if err != nil || code != 220 {
			res.Outcome, res.Reply = OutcomeError, "STARTTLS: "+replyOr(code, msg, err)
			return res, nil
		}
		tc := tls.Client(conn, tlsCfg)
		s.step()
		if err := tc.HandshakeContext(ctx); err != nil {
			res.Outcome, res.Reply = OutcomeError, "STARTTLS: "+shortErr(err)
			s.log("TLS handshake: " + shortErr(err))
			return res, nil
		}
		s.conn, s.tp = tc, textproto.NewConn(tc)
		s.log("(TLS started)")
		if _, ok := ehlo(); !ok {
			return res, nil
		}
	}
	needTLS := func(code int) bool { return code == 530 && canTLS && mode == modePlain }
	end := func() {
		s.cmd("RSET")
		s.cmd("QUIT")
	}
	code, msg, err = s.cmd("MAIL FROM:<" + a.cfg.ProbeFrom + ">")
	switch {
	case err != nil:
		res.Outcome, res.Reply = OutcomeError, shortErr(err)
		return res, nil
	case needTLS(code):
		res.Outcome, res.Reply = OutcomeRcptRefused, replyText(code, msg)
		end()
		st := modeSTARTTLS
		return res, &st
	case code/100 == 4:
		res.Outcome, res.Reply = OutcomeRcptTempfail, replyText(code, msg)
		end()
		return res, nil
	case code/100 != 2:
		res.Outcome, res.Reply = OutcomeRcptRefused, replyText(code, msg)
		end()
		return res, nil
	}
	code, msg, err = s.cmd("RCPT TO:<" + rcpt + ">")
	switch {
	case err != nil:
		res.Outcome, res.Reply = OutcomeError, shortErr(err)
		return res, nil
	case needTLS(code):
		res.Outcome, res.Reply = OutcomeRcptRefused, replyText(code, msg)
		end()
		st := modeSTARTTLS
		return res, &st
	case code/100 == 4:
		res.Outcome, res.Reply = OutcomeRcptTempfail, replyText(code, msg)
	case code/100 != 2:
		res.Outcome, res.Reply = OutcomeRcptRefused, replyText(code, msg)
	default:
		res.Outcome, res.Reply = OutcomeAccepted, replyText(code, msg)
		if a.cfg.SendCanary {
			res.Outcome, res.Reply = a.canary(s, domain, rcpt)
		}
	}
	if len(neighbours) > 0 && res.Outcome != OutcomeError {
		// A server accepting a recipient in a domain that cannot exist
		// accepts anything (open relay or catch-all): its answers say
		// nothing about which domains it hosts.
		if c, _, _ := s.cmd("RSET"); c/100 == 2 {
			if c, _, _ := s.cmd("MAIL FROM:<" + a.cfg.ProbeFrom + ">"); c/100 == 2 {
				if c, _, err := s.cmd("RCPT TO:<postmaster@moat-audit-" + randHex(4) + ".invalid>"); err == nil && c/100 != 2 {
					for _, nb := range neighbours {
						if c, _, _ := s.cmd("RCPT TO:<postmaster@" + nb + ">"); c/100 == 2 {
							res.neighbours = append(res.neighbours, nb)
						}
					}
				}
			}
		}
	}
	end()
	return res, nil
}

func replyOr(code int, msg string, err error) string {
	if err != nil {
		return shortErr(err)
	}
	return replyText(code, msg)
}

// canary sends a clearly labelled message carrying a forged pass mark (right
// format, wrong key). A backend enforcing the pass mark refuses it.
func (a *auditor) canary(s *session, domain, rcpt string) (string, string) {
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
	code, m, err := s.cmd("DATA")
	switch {
	case err != nil:
		return OutcomeError, shortErr(err)
	case code/100 == 4:
		return OutcomeRcptTempfail, replyText(code, m)
	case code != 354:
		return OutcomeCanaryRejected, replyText(code, m)
	}
	s.log("C: (canary message)")
	s.step()
	w := s.tp.DotWriter()
	if _, err := w.Write([]byte(full)); err != nil {
		return OutcomeError, shortErr(err)
	}
	if err := w.Close(); err != nil {
		return OutcomeError, shortErr(err)
	}
	code, m, err = s.reply()
	switch {
	case err != nil:
		return OutcomeError, shortErr(err)
	case code/100 == 4:
		return OutcomeRcptTempfail, replyText(code, m)
	case code/100 != 2:
		return OutcomeCanaryRejected, replyText(code, m)
	}
	return OutcomeCanaryAccepted, "canary accepted at end of DATA: " + replyText(code, m)
}

func shortErr(err error) string {
	s := err.Error()
	if len(s) > 160 {
		s = s[:160]
	}
	return s
}
