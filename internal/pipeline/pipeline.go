// Package pipeline defines the check interfaces, the per-connection and
// per-transaction state that checks read, and the Runner that executes the
// checks of one SMTP phase in parallel and turns their results into one
// decision through the policy.
package pipeline

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/verdict"
)

// Check is implemented by every check. A check implements only the phase
// interfaces it uses.
type Check interface{ Name() string }

// ConnChecker runs once when the client connects.
type ConnChecker interface {
	Check
	CheckConn(ctx context.Context, c *Conn) verdict.Result
}

// HeloChecker runs after HELO/EHLO.
type HeloChecker interface {
	Check
	CheckHelo(ctx context.Context, c *Conn) verdict.Result
}

// MailChecker runs after MAIL FROM.
type MailChecker interface {
	Check
	CheckMail(ctx context.Context, tx *Txn) verdict.Result
}

// RcptChecker runs for every RCPT TO whose domain is one of ours.
type RcptChecker interface {
	Check
	CheckRcpt(ctx context.Context, tx *Txn, r *Rcpt) verdict.Result
}

// DataChecker runs at the end of DATA, over the spooled message.
type DataChecker interface {
	Check
	CheckData(ctx context.Context, tx *Txn, m *Message) verdict.Result
}

// DataObserver is implemented by DATA checks that want to see the
// decision made over all results (the classifier's autolearn). Decided
// runs after the decision, in the session's goroutine, so it must not
// block; it returns a short word for the X-Spam-Status "autolearn="
// field ("no" when it did nothing).
type DataObserver interface {
	Check
	Decided(ctx context.Context, tx *Txn, m *Message, results []verdict.Result, dec policy.Decision) string
}

// Tier2 is implemented by DATA checks that read other checks' results
// (DMARC reads SPF and DKIM; meta rules). They run after the others.
type Tier2 interface{ Tier2() }

// Conn is the state of one client connection. The session is its only
// writer; checks read it.
type Conn struct {
	ID        string
	IP        netip.Addr
	Port      int
	LocalAddr string
	Helo      string
	TLS       bool
	AuthUser  string // authenticated submission user, "" if none
	Started   time.Time

	// Behaviour observed by the session before any check ran.
	Pregreet  bool   // the client spoke before the greeting finished
	SYN       []byte // the client's saved TCP SYN (IP header onwards), nil when unavailable
	Log       *slog.Logger
	Report    *verdict.Report // connection-level results (conn, helo)
	futuresMu sync.Mutex
	futures   map[string]*Future
	ptrName   string // guarded by futuresMu
}

// SetClientName records the client's forward-confirmed reverse DNS name
// (lower-case, no trailing dot). The rdns lookup calls it when it has
// confirmed a name, so the session can name the client in its Received
// field and XCLIENT NAME without a second lookup.
func (c *Conn) SetClientName(name string) {
	c.futuresMu.Lock()
	c.ptrName = name
	c.futuresMu.Unlock()
}

// ClientName returns the client's forward-confirmed reverse DNS name, or
// "" when there is none, it is not confirmed, or no lookup has finished
// (rdns disabled or still running). It never waits.
func (c *Conn) ClientName() string {
	c.futuresMu.Lock()
	defer c.futuresMu.Unlock()
	return c.ptrName
}

// Future returns the named future of this connection, starting it with fn
// the first time. Slow lookups (PTR, DNSBL) are started at connect and read
// later by whichever check needs them.
func (c *Conn) Future(name string, fn func() (any, error)) *Future {
	c.futuresMu.Lock()
	defer c.futuresMu.Unlock()
	if c.futures == nil {
		c.futures = map[string]*Future{}
	}
	if f, ok := c.futures[name]; ok {
		return f
	}
	f := Go(fn)
	c.futures[name] = f
	return f
}

// Address is an envelope address split into its parts. Local is as given
// by the client (case preserved); Domain is lower-cased ASCII/UTF-8
// without a trailing dot.
type Address struct {
	Raw    string // as received, "" for the null sender
	Local  string
	Domain string
}

// String returns local@domain, or "" for the null sender.
func (a Address) String() string {
	if a.Local == "" && a.Domain == "" {
		return ""
	}
	return a.Local + "@" + a.Domain
}

// Rcpt is one accepted (or being-checked) recipient.
type Rcpt struct {
	Addr   Address
	Domain string // the configured customer domain it belongs to
	Report *verdict.Report
	// Own are the recipient's own score thresholds (zero: the domain's).
	// The recipients of one transaction share them (the session defers
	// a recipient whose differ), so the first one's apply at DATA.
	Own policy.Thresholds
}

// Txn is one mail transaction (MAIL ... DATA) on a connection.
type Txn struct {
	ID     string // the queue ID
	Conn   *Conn
	From   Address
	Size   int64 // SIZE= parameter, 0 if not given
	Rcpts  []*Rcpt
	Report *verdict.Report
	Log    *slog.Logger
}

// Future is the result of a lookup started earlier.
type Future struct {
	done chan struct{}
	val  any
	err  error
}

// Go starts fn in a goroutine and returns its future.
func Go(fn func() (any, error)) *Future {
	f := &Future{done: make(chan struct{})}
	go func() {
		defer close(f.done)
		f.val, f.err = fn()
	}()
	return f
}

// Get waits for the value or for ctx.
func (f *Future) Get(ctx context.Context) (any, error) {
	select {
	case <-f.done:
		return f.val, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
