// Package relay delivers queued messages to each customer's backend SMTP
// servers: routes and failover, TLS policy, connection reuse with
// per-backend limits, XCLIENT/XFORWARD, the Received and X-Moat-Pass fields
// Moat prepends, outbound normalisation (no SMTP smuggling) and the mapping
// of backend replies to per-recipient results. It implements
// queue.Deliverer.
package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/passmark"
	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/verdict"
)

// ErrNoRoute is wrapped by a RouteSource's error for an unknown domain.
var ErrNoRoute = errors.New("relay: no route for domain")

// Backend is one of a route's servers; a route's backends are ordered by
// preference.
type Backend struct {
	Host string
	Port int // default 25
}

func (b Backend) addr() string {
	p := b.Port
	if p == 0 {
		p = 25
	}
	return net.JoinHostPort(b.Host, strconv.Itoa(p))
}

// TLS policies of a Route.
const (
	TLSOpportunistic = "opportunistic" // STARTTLS when offered, no verification (default)
	TLSRequired      = "required"      // STARTTLS or temporary failure; verified per tls_verify
	TLSNone          = "none"          // never STARTTLS
)

// Route says where a customer domain's mail goes.
type Route struct {
	Domain     string
	Backends   []Backend
	TLS        string // TLSOpportunistic (default, ""), TLSRequired, TLSNone
	MaxConns   int    // per-backend concurrency limit, default 10
	PassSecret []byte // per-domain pass-mark secret (passmark.DomainSecret); none: no mark
}

// RouteSource looks up a domain's route; for an unknown domain it returns
// an error wrapping ErrNoRoute.
type RouteSource func(ctx context.Context, domain string) (*Route, error)

// Relay is the queue.Deliverer for customer backends. It is safe for
// concurrent use.
type Relay struct {
	cfg     Config
	routes  RouteSource
	log     *slog.Logger
	roots   *x509.CertPool
	metrics *metrics
	now     func() time.Time

	mu     sync.Mutex
	pools  map[poolKey]*pool
	closed bool
	done   chan struct{}
	wg     sync.WaitGroup
}

var _ queue.Deliverer = (*Relay)(nil)

type poolKey struct {
	addr string
	tls  string
}

// pool holds one backend's idle connections and its concurrency limit.
type pool struct {
	sem  chan struct{}
	idle []*smtpConn
}

type metrics struct {
	deliveries *prometheus.CounterVec
	latency    prometheus.Histogram
	open       prometheus.Gauge
	tlsConns   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moat_relay_recipients_total",
			Help: "Recipient results of deliveries to backends, by backend and outcome (delivered, deferred, failed).",
		}, []string{"backend", "outcome"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "moat_relay_delivery_seconds",
			Help:    "Time to deliver one message to one domain's backend, including failover.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 12),
		}),
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "moat_relay_connections_open",
			Help: "Open connections to backends (busy and idle).",
		}),
		tlsConns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moat_relay_connections_total",
			Help: "Connections established to backends, by whether STARTTLS was used (tls, plain).",
		}, []string{"security"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.deliveries, m.latency, m.open, m.tlsConns} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("relay: metrics: %w", err)
			}
		}
	}
	return m, nil
}

// New creates a Relay. reg may be nil (no metrics exported).
func New(cfg Config, routes RouteSource, log *slog.Logger, reg prometheus.Registerer) (*Relay, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if routes == nil {
		return nil, errors.New("relay: nil RouteSource")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Relay{cfg: cfg, routes: routes, log: log, pools: map[poolKey]*pool{}, done: make(chan struct{}), now: time.Now}
	if cfg.TLSCAFile != "" {
		var err error
		if r.roots, err = loadCAs(cfg.TLSCAFile); err != nil {
			return nil, fmt.Errorf("tls_ca_file: %w", err)
		}
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	r.metrics = m
	r.wg.Add(1)
	go r.janitor()
	return r, nil
}

// Close closes idle connections and stops the janitor. Deliveries in
// progress finish; their connections are then closed instead of parked.
func (r *Relay) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	var idle []*smtpConn
	for _, p := range r.pools {
		idle = append(idle, p.idle...)
		p.idle = nil
	}
	r.mu.Unlock()
	close(r.done)
	for _, c := range idle {
		r.closeConn(c)
	}
	r.wg.Wait()
	return nil
}

func (r *Relay) janitor() {
	defer r.wg.Done()
	t := time.NewTicker(r.cfg.IdleTimeout / 2)
	defer t.Stop()
	for {
		select {
		case <-r.done:
			return
		case <-t.C:
		}
		var stale []*smtpConn
		cutoff := r.now().Add(-r.cfg.IdleTimeout)
		r.mu.Lock()
		for _, p := range r.pools {
			keep := p.idle[:0]
			for _, c := range p.idle {
				if c.idleAt.Before(cutoff) {
					stale = append(stale, c)
				} else {
					keep = append(keep, c)
				}
			}
			p.idle = keep
		}
		r.mu.Unlock()
		for _, c := range stale {
			r.closeConn(c)
		}
	}
}

func (r *Relay) closeConn(c *smtpConn) {
	c.quit()
	r.metrics.open.Dec()
}

func (r *Relay) pool(k poolKey, maxConns int) *pool {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.pools[k]
	if p == nil {
		if maxConns <= 0 {
			maxConns = 10
		}
		p = &pool{sem: make(chan struct{}, maxConns)}
		r.pools[k] = p
	}
	return p
}

// take returns an idle connection usable for a message from client id, or
// nil. A connection that XCLIENT bound to another client is closed.
func (r *Relay) take(p *pool, id string) *smtpConn {
	cutoff := r.now().Add(-r.cfg.IdleTimeout)
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(p.idle) > 0 {
		c := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if c.idleAt.After(cutoff) && (c.xclientID == "" || c.xclientID == id || !r.cfg.ForwardClient) {
			return c
		}
		go r.closeConn(c)
	}
	return nil
}

// clientID identifies the client identity XCLIENT would forward.
func clientID(cl queue.ClientInfo) string {
	proto := cl.Proto
	if proto != "SMTP" {
		proto = "ESMTP"
	}
	return cl.IP + "|" + cl.PTR + "|" + cl.Helo + "|" + proto
}

// park returns a healthy connection to the pool (after RSET), or closes it.
func (r *Relay) park(p *pool, c *smtpConn) {
	if c.messages >= r.cfg.MaxMessagesPerConn {
		r.closeConn(c)
		return
	}
	if c.dirty {
		if rr, err := c.cmd(r.cfg.CommandTimeout, "RSET"); err != nil || rr.Code != 250 {
			c.nc.Close()
			r.metrics.open.Dec()
			return
		}
		c.dirty = false
	}
	c.nc.SetDeadline(time.Time{})
	c.idleAt = r.now()
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		r.closeConn(c)
		return
	}
	p.idle = append(p.idle, c)
	r.mu.Unlock()
}

func (r *Relay) tlsConfig(route *Route, b Backend) *tls.Config {
	if route.TLS == TLSRequired && r.cfg.TLSVerify {
		return &tls.Config{ServerName: b.Host, RootCAs: r.roots, MinVersion: tls.VersionTLS12}
	}
	// Opportunistic TLS (RFC 7435): encryption without authentication.
	return &tls.Config{ServerName: b.Host, InsecureSkipVerify: true} //nolint:gosec
}

func tlsMode(route *Route) string {
	switch route.TLS {
	case TLSRequired, TLSNone:
		return route.TLS
	}
	return TLSOpportunistic
}

// acquire gets a connection to backend b: an idle one or a new one. It
// holds a slot of the backend's semaphore until release.
func (r *Relay) acquire(ctx context.Context, route *Route, b Backend, id string) (*pool, *smtpConn, bool, error) {
	p := r.pool(poolKey{b.addr(), tlsMode(route)}, route.MaxConns)
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, nil, false, &stageError{synth(451, [3]int{4, 4, 5}, "backend busy"), ctx.Err()}
	}
	if c := r.take(p, id); c != nil {
		return p, c, true, nil
	}
	c, err := dial(ctx, &r.cfg, b.addr(), dialOptions{tlsMode: tlsMode(route), tlsConf: r.tlsConfig(route, b)})
	if err != nil {
		<-p.sem
		return nil, nil, false, err
	}
	r.metrics.open.Inc()
	if c.tls {
		r.metrics.tlsConns.WithLabelValues("tls").Inc()
	} else {
		r.metrics.tlsConns.WithLabelValues("plain").Inc()
	}
	return p, c, false, nil
}

// Deliver hands d to its domain's backends, trying them in order, and
// returns one result per recipient.
func (r *Relay) Deliver(ctx context.Context, d *queue.Delivery) []queue.Result {
	start := r.now()
	res := r.deliver(ctx, d)
	r.metrics.latency.Observe(r.now().Sub(start).Seconds())
	for _, x := range res {
		outcome := "delivered"
		if x.Permanent {
			outcome = "failed"
		} else if x.Reply.Code/100 != 2 {
			outcome = "deferred"
		}
		host := x.Host
		if host == "" {
			host = "none"
		}
		r.metrics.deliveries.WithLabelValues(host, outcome).Inc()
	}
	return res
}

func allResults(d *queue.Delivery, reply verdict.Reply, host string) []queue.Result {
	out := make([]queue.Result, len(d.Rcpts))
	for i, rc := range d.Rcpts {
		out[i] = queue.Result{Rcpt: rc, Reply: reply, Host: host, Permanent: reply.Code/100 == 5}
	}
	return out
}

func (r *Relay) deliver(ctx context.Context, d *queue.Delivery) []queue.Result {
	log := r.log.With("queue_id", d.Env.ID, "domain", d.Domain)
	route, err := r.routes(ctx, d.Domain)
	if err != nil || route == nil || len(route.Backends) == 0 {
		// Temporary even for an unknown domain: a route removed by mistake
		// must not bounce queued mail; the queue's maximum age decides.
		log.Warn("relay: no route", "err", err)
		return allResults(d, synth(451, [3]int{4, 4, 4}, "no route to the domain's mail server"), "")
	}
	if !safeAddr(d.Env.From) {
		return allResults(d, synth(553, [3]int{5, 1, 7}, "invalid sender address"), "")
	}
	for _, rc := range d.Rcpts {
		if rc == "" || !safeAddr(rc) {
			return allResults(d, synth(553, [3]int{5, 1, 3}, "invalid recipient address"), "")
		}
	}
	if body := loadSmall(d); body != nil {
		// Read the message once, not once for the pass mark's digest
		// and again for each backend tried.
		defer body.release()
		dd := *d
		dd.Open = body.open
		d = &dd
	}
	msg, err := r.prepare(d, route)
	if err != nil {
		if errors.Is(err, errNUL) {
			return allResults(d, synth(554, [3]int{5, 6, 0}, "message contains NUL characters"), "")
		}
		log.Error("relay: reading message", "err", err)
		return allResults(d, synth(451, [3]int{4, 3, 0}, "local error reading the message"), "")
	}
	var last verdict.Reply
	var lastHost string
	for _, b := range route.Backends {
		for attempt := 0; attempt < 2; attempt++ {
			p, c, reused, err := r.acquire(ctx, route, b, clientID(d.Env.Client))
			if err != nil {
				var se *stageError
				if errors.As(err, &se) {
					last = se.reply
				} else {
					last = synth(451, [3]int{4, 4, 1}, "backend unreachable")
				}
				lastHost = b.addr()
				log.Info("relay: backend failed", "backend", b.addr(), "reply", last.String(), "err", err)
				break // next backend
			}
			res, retry, ok := r.transaction(ctx, c, d, msg, log)
			if ok {
				r.park(p, c)
			} else {
				c.nc.Close()
				r.metrics.open.Dec()
			}
			<-p.sem
			if retry && reused && attempt == 0 {
				continue // the idle connection had gone stale: dial afresh
			}
			if retry {
				last, lastHost = res[0].Reply, b.addr()
				break
			}
			return res
		}
		if ctx.Err() != nil {
			break
		}
	}
	return allResults(d, last, lastHost)
}

// prepared is what is streamed in front of the received message.
type prepared struct {
	received string // Received field(s) for one or many recipients
	pass     string // X-Moat-Pass field, "" if the route has no secret
}

// prepare builds the prepended fields; computing the pass mark's digest
// reads the message once through the same normalisation it is sent with.
func (r *Relay) prepare(d *queue.Delivery, route *Route) (*prepared, error) {
	now := r.now()
	p := &prepared{received: r.receivedField(d, now)}
	if d.Env.Size > 0 && d.Env.Size <= maxInMemory {
		// Small message: normalise into memory, no pipe and goroutine
		// (this pass also finds NUL bytes before anything is sent).
		digest, err := memDigest(d)
		if err != nil {
			return nil, err
		}
		if len(route.PassSecret) == 0 {
			return p, nil
		}
		v := passmark.Sign(route.PassSecret, passmark.Mark{Domain: markDomain(d, route), ID: d.Env.ID, Time: now, Rcpts: d.Rcpts, Digest: digest})
		p.pass = passmark.Field + ": " + strings.ReplaceAll(v, "; ", ";\r\n\t") + "\r\n"
		return p, nil
	}
	pr, pw := io.Pipe()
	go func() {
		rc, err := d.Open()
		if err != nil {
			pw.CloseWithError(err)
			return
		}
		defer rc.Close()
		bw := bufio.NewWriterSize(pw, 32<<10)
		nw := newNormWriter(bw, false)
		io.WriteString(nw, d.Env.Prepend)
		err = copyMessage(nw, rc, d.Env.SubjectPrefix, d.Env.Prepend)
		if err == nil {
			err = bw.Flush()
		}
		pw.CloseWithError(err)
	}()
	digest, err := passmark.Digest(pr)
	pr.CloseWithError(errors.New("relay: digest done")) // unblock the writer on early return
	if err != nil {
		return nil, err
	}
	if len(route.PassSecret) > 0 {
		v := passmark.Sign(route.PassSecret, passmark.Mark{Domain: markDomain(d, route), ID: d.Env.ID, Time: now, Rcpts: d.Rcpts, Digest: digest})
		p.pass = passmark.Field + ": " + strings.ReplaceAll(v, "; ", ";\r\n\t") + "\r\n"
	}
	return p, nil
}

// markDomain is the customer domain a pass mark names (d=): the route's,
// whose secret signs it. A DSN to a customer domain is delivered as
// "dsn:DOMAIN" (package app) over that domain's route; d=dsn:DOMAIN would
// not verify against the site master key (`moat verify-pass --config`
// derives the secret from d=).
func markDomain(d *queue.Delivery, route *Route) string {
	if route.Domain != "" {
		return route.Domain
	}
	return d.Domain
}

// receivedField is the trace field naming the real client (RFC 5321 4.4).
func (r *Relay) receivedField(d *queue.Delivery, now time.Time) string {
	cl := d.Env.Client
	helo := clean(cl.Helo, "unknown")
	ptr := clean(cl.PTR, "unknown")
	ip := clean(cl.IP, "unknown")
	if strings.Contains(ip, ":") {
		ip = "IPv6:" + ip
	}
	proto := clean(cl.Proto, "")
	if proto == "" {
		proto = "ESMTP"
		if cl.TLS {
			proto = "ESMTPS"
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Received: from %s (%s [%s])", helo, ptr, ip)
	if cl.TLS && cl.TLSDesc != "" {
		fmt.Fprintf(&b, "\r\n\t(using %s)", cleanTLS(cl.TLSDesc))
	}
	fmt.Fprintf(&b, "\r\n\tby %s (Moat) with %s id %s", r.cfg.Hostname, proto, clean(d.Env.ID, "unknown"))
	if len(d.Rcpts) == 1 {
		fmt.Fprintf(&b, "\r\n\tfor <%s>", clean(d.Rcpts[0], ""))
	}
	fmt.Fprintf(&b, "; %s\r\n", now.Format("Mon, 02 Jan 2006 15:04:05 -0700"))
	return b.String()
}

// cleanTLS keeps a TLS description to printable ASCII words (it comes
// from Go's crypto/tls, not the client, but the spool is a file).
func cleanTLS(s string) string {
	if len(s) > 128 {
		s = s[:128]
	}
	b := []byte(s)
	for i, c := range b {
		if c < ' ' || c > '~' || c == '(' || c == ')' || c == ';' {
			b[i] = '?'
		}
	}
	return string(b)
}

// clean makes a client-supplied value safe inside a header field: printable
// ASCII without parentheses or brackets, bounded length.
func clean(s, def string) string {
	if s == "" {
		return def
	}
	if len(s) > 255 {
		s = s[:255]
	}
	b := []byte(s)
	for i, c := range b {
		if c <= ' ' || c > '~' || c == '(' || c == ')' || c == '[' || c == ']' || c == ';' {
			b[i] = '?'
		}
	}
	return string(b)
}

// transaction runs one mail transaction on c. retry reports a connection
// failure before the backend took responsibility for the message (the
// caller may dial again or try the next backend); ok reports whether c may
// be reused.
func (r *Relay) transaction(ctx context.Context, c *smtpConn, d *queue.Delivery, msg *prepared, log *slog.Logger) (res []queue.Result, retry, ok bool) {
	stop := context.AfterFunc(ctx, func() { c.nc.SetDeadline(timeInPast) })
	defer stop()
	host := c.addr
	lost := func(stage string, err error) ([]queue.Result, bool, bool) {
		log.Info("relay: connection lost", "backend", host, "stage", stage, "err", err)
		return allResults(d, synth(451, [3]int{4, 4, 2}, "connection to backend lost during "+stage), host), true, false
	}
	// closing is a 421 before the message was handed over: the backend
	// is closing the channel (RFC 5321 3.8), as when it refuses the
	// greeting, or an idle connection it timed out was reused. Like a
	// lost connection: dial again or try the next backend.
	closing := func(stage string, rr verdict.Reply) ([]queue.Result, bool, bool) {
		log.Info("relay: backend closing the connection", "backend", host, "stage", stage, "reply", rr.String())
		return allResults(d, rr, host), true, false
	}
	env := d.Env
	if env.SMTPUTF8 && !c.has("SMTPUTF8") {
		return allResults(d, synth(554, [3]int{5, 6, 7}, "backend does not support SMTPUTF8 (RFC 6531) required by this message"), host), false, true
	}
	if r.cfg.ForwardClient {
		if err := r.forward(c, env); err != nil {
			return lost("XCLIENT", err)
		}
	}
	cmdTO := r.cfg.CommandTimeout
	// MAIL and RCPTs, pipelined when the backend allows (RFC 2920).
	mail := "MAIL FROM:<" + env.From + ">"
	if c.has("SIZE") && env.Size > 0 {
		mail += " SIZE=" + strconv.FormatInt(env.Size+int64(len(msg.received)+len(msg.pass)+len(env.Prepend)), 10)
	}
	if env.EightBit && c.has("8BITMIME") {
		mail += " BODY=8BITMIME"
	}
	if env.SMTPUTF8 {
		mail += " SMTPUTF8"
	}
	pipelining := c.has("PIPELINING")
	c.nc.SetWriteDeadline(time.Now().Add(cmdTO))
	c.dirty = true // until the final reply to the message
	c.bw.WriteString(mail + "\r\n")
	if !pipelining {
		if err := c.bw.Flush(); err != nil {
			return lost("MAIL", err)
		}
		rr, _, err := c.readReply(cmdTO)
		if err != nil {
			return lost("MAIL", err)
		}
		if rr.Code == 421 {
			return closing("MAIL", rr)
		}
		if rr.Code/100 != 2 {
			return allResults(d, rr, host), false, true
		}
	}
	for _, rc := range d.Rcpts {
		c.bw.WriteString("RCPT TO:<" + rc + ">\r\n")
		if !pipelining {
			break // sent one by one below
		}
	}
	if pipelining {
		// DATA ends the command group (RFC 2920 3.1): one round trip
		// for the whole envelope, as Postfix's client does.
		c.bw.WriteString("DATA\r\n")
	}
	if err := c.bw.Flush(); err != nil {
		return lost("MAIL", err)
	}
	res = make([]queue.Result, len(d.Rcpts))
	accepted := 0
	if pipelining {
		rr, _, err := c.readReply(cmdTO)
		if err != nil {
			return lost("MAIL", err)
		}
		if rr.Code == 421 {
			return closing("MAIL", rr)
		}
		mailOK := rr.Code/100 == 2
		for i, rc := range d.Rcpts {
			r2, _, err := c.readReply(cmdTO)
			if err != nil {
				return lost("RCPT", err)
			}
			if r2.Code == 421 {
				return closing("RCPT", r2)
			}
			if !mailOK {
				r2 = rr // RCPT replies after a failed MAIL mean nothing
			}
			res[i] = queue.Result{Rcpt: rc, Reply: r2, Host: host, Permanent: r2.Code/100 == 5}
			if r2.Code/100 == 2 {
				accepted++
			}
		}
	} else {
		for i, rc := range d.Rcpts {
			if i > 0 {
				c.bw.WriteString("RCPT TO:<" + rc + ">\r\n")
				if err := c.bw.Flush(); err != nil {
					return lost("RCPT", err)
				}
			}
			r2, _, err := c.readReply(cmdTO)
			if err != nil {
				return lost("RCPT", err)
			}
			if r2.Code == 421 {
				return closing("RCPT", r2)
			}
			res[i] = queue.Result{Rcpt: rc, Reply: r2, Host: host, Permanent: r2.Code/100 == 5}
			if r2.Code/100 == 2 {
				accepted++
			}
		}
	}
	var rr verdict.Reply
	if pipelining {
		var err error
		if rr, _, err = c.readReply(cmdTO); err != nil {
			return lost("DATA", err)
		}
		if accepted == 0 {
			if rr.Code == 354 {
				// 354 although no recipient was accepted: the
				// session is in an unknown state; drop it.
				return res, false, false
			}
			return res, false, true
		}
	} else {
		if accepted == 0 {
			return res, false, true
		}
		var err error
		if rr, err = c.cmd(cmdTO, "DATA"); err != nil {
			return lost("DATA", err)
		}
	}
	if rr.Code == 421 {
		return closing("DATA", rr)
	}
	if rr.Code != 354 {
		setAccepted(res, rr)
		return res, false, true
	}
	// From here on a failure is not retried elsewhere: the backend may
	// already have the message (RFC 1047 duplicate risk is preferable to
	// loss, but not to a second copy via another backend at once).
	if err := r.stream(c, d, msg); err != nil {
		if errors.Is(err, errNUL) {
			// Cannot happen (prepare checked); never send a partial message.
			setAccepted(res, synth(554, [3]int{5, 6, 0}, "message contains NUL characters"))
			return res, false, false
		}
		log.Info("relay: connection lost", "backend", host, "stage", "DATA", "err", err)
		setAccepted(res, synth(451, [3]int{4, 4, 2}, "connection to backend lost during DATA"))
		return res, false, false
	}
	final, _, err := c.readReply(r.cfg.DataTimeout)
	if err != nil {
		log.Warn("relay: no reply to end of data", "backend", host, "err", err)
		setAccepted(res, synth(451, [3]int{4, 4, 2}, "no reply from backend after end of data"))
		return res, false, false
	}
	setAccepted(res, final)
	c.dirty = false // the final reply ends the transaction, whatever it says
	c.messages++
	log.Info("relay: delivered", "backend", host, "reply", final.String(), "rcpts", accepted, "tls", c.tls)
	return res, false, final.Code != 421
}

// setAccepted puts reply on every recipient the backend accepted at RCPT.
func setAccepted(res []queue.Result, reply verdict.Reply) {
	for i := range res {
		if res[i].Reply.Code/100 == 2 {
			res[i].Reply = reply
			res[i].Permanent = reply.Code/100 == 5
		}
	}
}

// forward passes the original client to the backend with XCLIENT (then
// EHLO again, as the new greeting requires) or XFORWARD. A refusal is
// logged and ignored: delivery does not depend on it.
func (r *Relay) forward(c *smtpConn, env *queue.Envelope) error {
	cl := env.Client
	val := func(s string) string {
		if s == "" {
			return "[UNAVAILABLE]"
		}
		return xtext(s)
	}
	proto := cl.Proto
	if proto == "" {
		proto = "ESMTP"
	}
	if proto != "SMTP" {
		proto = "ESMTP" // XCLIENT/XFORWARD know only SMTP and ESMTP
	}
	attrs := []struct{ k, v string }{{"ADDR", val(cl.IP)}, {"NAME", val(cl.PTR)}, {"HELO", val(cl.Helo)}, {"PROTO", proto}}
	build := func(verb, supported string) string {
		allowed := map[string]bool{}
		for _, a := range strings.Fields(strings.ToUpper(supported)) {
			allowed[a] = true
		}
		line := verb
		for _, a := range attrs {
			if allowed[a.k] {
				line += " " + a.k + "=" + a.v
			}
		}
		return line
	}
	id := clientID(cl)
	if c.xclientID != "" {
		// XCLIENT was applied on this connection. The backend now sees
		// us as that client and (Postfix) no longer offers XCLIENT, so
		// the connection can carry only that client's mail.
		if c.xclientID == id {
			return nil
		}
		return errors.New("connection bound to another client by XCLIENT")
	}
	if sup, ok := c.ext["XCLIENT"]; ok {
		rr, err := c.cmd(r.cfg.CommandTimeout, build("XCLIENT", sup))
		if err != nil {
			return err
		}
		if rr.Code != 220 {
			r.log.Warn("relay: backend refused XCLIENT", "backend", c.addr, "reply", rr.String())
			return nil
		}
		// The greeting starts a new session. Postfix takes the HELO name
		// from this EHLO, so give the original client's when it is usable.
		name := r.cfg.Hostname
		if validHelo(cl.Helo) {
			name = cl.Helo
		}
		hr, err := c.hello(name)
		if err != nil {
			return err
		}
		if hr.Code/100 != 2 && name != r.cfg.Hostname {
			hr, err = c.hello(r.cfg.Hostname)
			if err != nil {
				return err
			}
		}
		if hr.Code/100 != 2 {
			return fmt.Errorf("EHLO after XCLIENT: %s", hr)
		}
		c.xclientID = id
		return nil
	}
	if sup, ok := c.ext["XFORWARD"]; ok {
		rr, err := c.cmd(r.cfg.CommandTimeout, build("XFORWARD", sup))
		if err != nil {
			return err
		}
		if rr.Code/100 != 2 {
			r.log.Warn("relay: backend refused XFORWARD", "backend", c.addr, "reply", rr.String())
		}
	}
	return nil
}

// stream sends the prepended fields and the message, dot-stuffed and
// normalised, then the terminator.
func (r *Relay) stream(c *smtpConn, d *queue.Delivery, msg *prepared) error {
	c.nc.SetDeadline(time.Now().Add(r.cfg.DataTimeout))
	rc, err := d.Open()
	if err != nil {
		return err
	}
	defer rc.Close()
	nw := newNormWriter(c.bw, true)
	io.WriteString(nw, msg.received)
	io.WriteString(nw, msg.pass)
	io.WriteString(nw, d.Env.Prepend)
	if err := copyMessage(nw, rc, d.Env.SubjectPrefix, d.Env.Prepend); err != nil {
		return err
	}
	c.bw.WriteString(".\r\n")
	return c.bw.Flush()
}

// safeAddr reports whether an address can be put in MAIL/RCPT without
// changing the command: no controls, spaces or angle brackets.
func safeAddr(a string) bool {
	for i := 0; i < len(a); i++ {
		c := a[i]
		if c < '!' || c == 0x7f || c == '<' || c == '>' {
			return false
		}
	}
	return len(a) <= 512
}
