package smtpd

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/verdict"
)

// Spool creates drafts: files that receive a message during DATA and
// become queue entries on Commit.
type Spool interface {
	NewDraft() (Draft, error)
}

// SpoolFunc adapts a function to Spool, e.g.
//
//	smtpd.SpoolFunc(func() (smtpd.Draft, error) { return q.NewDraft() })
//
// (mind the typed nil: return a nil Draft, not a nil *queue.Draft, on error).
type SpoolFunc func() (Draft, error)

// NewDraft calls f.
func (f SpoolFunc) NewDraft() (Draft, error) { return f() }

// Draft is one message being received.
type Draft interface {
	io.Writer
	ID() string
	// Open returns a reader over everything written so far.
	Open() (io.ReadCloser, error)
	// Commit makes the message and its envelope durable before returning.
	Commit(env *queue.Envelope) error
	// Abort discards the draft. It is called at most once, never after a
	// successful Commit or Quarantine.
	Abort()
}

// DomainSource reports whether domain (lower-case ASCII, no trailing dot)
// is a configured customer domain. An error means the store is impaired
// and is answered "451 4.3.0".
type DomainSource func(ctx context.Context, domain string) (bool, error)

// Deps are the collaborators of the server.
type Deps struct {
	Spool   Spool        // required
	Domains DomainSource // required
	// Runner runs the checks; nil means no checks with the default policy.
	Runner *pipeline.Runner
	// Quarantine holds a message the policy quarantined. It owns d when it
	// returns nil; on error the session aborts d and answers 451. When nil,
	// quarantined mail is delivered with spam headers instead.
	Quarantine func(ctx context.Context, d Draft, env *queue.Envelope, dec policy.Decision) error
	Log        *slog.Logger
	Metrics    prometheus.Registerer // nil: metrics are not registered
	// Reports consumes mail to the classifier's learning addresses
	// (package reports); nil: there are none.
	Reports ReportSink
	// Thresholds returns a recipient's own score thresholds (people's
	// settings, package quarantine); nil: everyone has the domain's.
	Thresholds func(ctx context.Context, rcpt string) (policy.Thresholds, error)
}

// ReportSink learns from reports sent to learning addresses instead of
// relaying them.
type ReportSink interface {
	// Match returns "spam" or "ham" for a learning address, "" otherwise.
	Match(rcpt pipeline.Address) string
	// Learn checks the report's sender and learns it; the reply is the
	// client's.
	Learn(ctx context.Context, tx *pipeline.Txn, domain, lesson string, raw []byte) verdict.Reply
}

// Server is Moat's inbound SMTP server.
type Server struct {
	cfg     Config
	deps    Deps
	runner  *pipeline.Runner
	log     *slog.Logger
	metrics *metrics
	tls     *tls.Config
	gs      *smtp.Server
	limiter *limiter

	baseCtx    context.Context
	baseCancel context.CancelFunc
	closing    atomic.Bool
	idPrefix   string
	idSeq      atomic.Uint64

	mu    sync.Mutex
	conns map[*sconn]struct{}
	addrs []net.Addr
}

// New builds a server. It does not listen yet.
func New(cfg Config, deps Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Spool == nil {
		return nil, errors.New("smtpd: Deps.Spool is required")
	}
	if deps.Domains == nil {
		return nil, errors.New("smtpd: Deps.Domains is required")
	}
	log := deps.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(deps.Metrics)
	if err != nil {
		return nil, fmt.Errorf("smtpd: metrics: %w", err)
	}
	tlsCfg, err := loadTLS(&cfg)
	if err != nil {
		return nil, err
	}
	runner := deps.Runner
	if runner == nil {
		runner = pipeline.NewRunner(nil, func(string) *policy.Policy { return policy.Default() }, 0)
	}
	var pfx [3]byte
	rand.Read(pfx[:])
	s := &Server{
		cfg:      cfg,
		deps:     deps,
		runner:   runner,
		log:      log,
		metrics:  m,
		tls:      tlsCfg,
		limiter:  newLimiter(cfg),
		idPrefix: hex.EncodeToString(pfx[:]),
		conns:    map[*sconn]struct{}{},
	}
	s.baseCtx, s.baseCancel = context.WithCancel(context.Background())
	gs := smtp.NewServer(smtp.BackendFunc(s.newSession))
	gs.Domain = cfg.Hostname
	gs.MaxRecipients = cfg.MaxRecipients
	// go-smtp's data reader refuses a message of exactly its limit (it
	// fails the read after the limit is used up, before it has seen the
	// end-of-data line), so it gets one octet more. The limit itself is
	// enforced by the session (DATA) and sconn (SIZE=, and the SIZE
	// capability it advertises).
	gs.MaxMessageBytes = cfg.MaxMessageSize + 1
	gs.MaxLineLength = 0 // sconn limits lines; go-smtp's limit would kill the connection
	gs.EnableSMTPUTF8 = true
	gs.ErrorLog = errLog{log}
	// Only used by go-smtp to advertise STARTTLS; sconn performs it.
	gs.TLSConfig = tlsCfg
	s.gs = gs
	return s, nil
}

func (s *Server) nextID() string {
	return s.idPrefix + strconv.FormatUint(s.idSeq.Add(1), 36)
}

type errLog struct{ l *slog.Logger }

func (e errLog) Printf(format string, v ...interface{}) {
	e.l.Debug("go-smtp: " + fmt.Sprintf(format, v...))
}
func (e errLog) Println(v ...interface{}) { e.l.Debug("go-smtp: " + fmt.Sprintln(v...)) }

// Serve accepts connections on ln until Shutdown. On Linux it enables
// TCP_SAVE_SYN on ln so each connection's SYN is available to the checks.
func (s *Server) Serve(ln net.Listener) error {
	if s.closing.Load() {
		return smtp.ErrServerClosed
	}
	if err := enableSaveSYN(ln); err != nil {
		s.log.Debug("TCP_SAVE_SYN unavailable", "err", err)
	}
	s.mu.Lock()
	s.addrs = append(s.addrs, ln.Addr())
	s.mu.Unlock()
	return s.gs.Serve(&listener{Listener: ln, srv: s})
}

// ListenAndServe listens on every cfg.Listen address and serves until ctx
// is done (then it shuts down, giving sessions 30s to finish) or a
// listener fails.
func (s *Server) ListenAndServe(ctx context.Context) error {
	var lns []net.Listener
	lc := net.ListenConfig{Control: listenControl}
	for _, a := range s.cfg.Listen {
		ln, err := lc.Listen(ctx, "tcp", a)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return fmt.Errorf("smtpd: listen %s: %w", a, err)
		}
		s.log.Info("smtp listening", "addr", ln.Addr().String())
		lns = append(lns, ln)
	}
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { errc <- s.Serve(ln) }()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if serr := s.Shutdown(sctx); serr != nil && !errors.Is(serr, smtp.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}

// Addrs returns the addresses being served.
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]net.Addr(nil), s.addrs...)
}

// Shutdown stops accepting, answers clients waiting for a command with
// "421 4.3.2" and lets sessions in the middle of a command (DATA) finish,
// until ctx is done; then it closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closing.Store(true)
	s.mu.Lock()
	for c := range s.conns {
		c.poke()
	}
	s.mu.Unlock()
	err := s.gs.Shutdown(ctx)
	if ctx.Err() != nil {
		s.gs.Close()
		s.baseCancel()
		return ctx.Err()
	}
	s.baseCancel()
	return err
}

func (s *Server) track(c *sconn) {
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	s.metrics.connCurrent.Inc()
	s.metrics.connTotal.Inc()
}

func (s *Server) untrack(c *sconn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.limiter.release(c.key)
	s.metrics.connCurrent.Dec()
}

// listener applies the connection limits before go-smtp sees a connection.
type listener struct {
	net.Listener
	srv *Server
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ap := remoteAddrPort(c)
		key := limitKey(ap.Addr())
		if reason := l.srv.limiter.admit(key, time.Now()); reason != "" {
			l.srv.refuse(c, reason)
			continue
		}
		sc := newSconn(l.srv, c, key, ap)
		l.srv.track(sc)
		return sc, nil
	}
}

// refuse answers 421 and closes, without blocking the accept loop: a
// fresh socket's send buffer is empty, so the write does not wait.
func (s *Server) refuse(c net.Conn, reason string) {
	s.metrics.connRefused.WithLabelValues(reason).Inc()
	s.metrics.reject(reason, 421)
	code, text := "421 4.7.0 ", "Too many connections from your address, try again later"
	switch reason {
	case "max_connections":
		// 4.3.2: the system is not accepting network messages (RFC 3463).
		code, text = "421 4.3.2 ", "All server ports are busy, try again later"
	case "rate":
		text = "Too many connections too fast from your address, try again later"
	}
	c.SetWriteDeadline(time.Now().Add(time.Second))
	io.WriteString(c, code+s.cfg.Hostname+" "+text+"\r\n")
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	c.Close()
}

func remoteAddrPort(c net.Conn) netip.AddrPort {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	return ap
}

// limitKey is the unit of per-client limits: an IPv4 address or an IPv6 /64.
func limitKey(a netip.Addr) string {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

// limiter enforces max_connections, max_connections_per_ip and
// conn_rate_per_ip (a token bucket per client, refilled continuously,
// burst = rate; every attempt takes a token, refused or not, as anvil
// counts attempts).
type limiter struct {
	mu        sync.Mutex
	total     int
	maxTotal  int
	maxPerIP  int
	rate      float64 // tokens per second; 0 = no rate limit
	burst     float64
	ips       map[string]*ipState
	lastPrune time.Time
}

type ipState struct {
	active int
	tokens float64
	last   time.Time
}

func newLimiter(cfg Config) *limiter {
	return &limiter{
		maxTotal: cfg.MaxConnections,
		maxPerIP: cfg.MaxConnectionsPerIP,
		rate:     float64(cfg.ConnRatePerIP) / 60,
		burst:    float64(cfg.ConnRatePerIP),
		ips:      map[string]*ipState{},
	}
}

func (l *limiter) admit(key string, now time.Time) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.ips) > 4096 && now.Sub(l.lastPrune) > 10*time.Second {
		l.prune(now)
	}
	st := l.ips[key]
	if st == nil {
		st = &ipState{tokens: l.burst, last: now}
		l.ips[key] = st
	}
	if l.rate > 0 {
		st.tokens = min(l.burst, st.tokens+now.Sub(st.last).Seconds()*l.rate)
		st.last = now
		if st.tokens < 1 {
			return "rate"
		}
		st.tokens--
	}
	if l.total >= l.maxTotal {
		return "max_connections"
	}
	if st.active >= l.maxPerIP {
		return "per_ip"
	}
	st.active++
	l.total++
	return ""
}

func (l *limiter) release(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if st := l.ips[key]; st != nil {
		st.active--
	}
}

func (l *limiter) prune(now time.Time) {
	l.lastPrune = now
	for k, st := range l.ips {
		if st.active == 0 && (l.rate == 0 || st.tokens+now.Sub(st.last).Seconds()*l.rate >= l.burst) {
			delete(l.ips, k)
		}
	}
}
