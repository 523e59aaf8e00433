// Package clamd is a client for the ClamAV daemon's socket protocol.
//
// It scans with zINSTREAM (size-prefixed chunks, a zero-length chunk ends
// the stream) over Unix or TCP sockets, checks health with zVERSION, spreads
// scans round-robin over several clamd instances and fails over when one is
// down, and reuses connections through clamd sessions.
//
// Connection reuse: outside a session clamd closes the connection after
// every command, so a plain pool is impossible. After zIDSESSION a
// connection accepts any number of commands, each reply prefixed with its
// request number, until zEND or clamd's IdleTimeout. The client keeps up to
// MaxIdleConns idle sessions per instance and runs one command at a time on
// each, so replies cannot interleave. Before reusing an idle session it
// checks with one non-blocking peek that clamd has not closed it, and it
// never keeps one longer than IdleTimeout (below clamd's). This saves a
// connect/accept (and, over TCP, a handshake) per message. A session that
// saw any error is closed, never reused.
//
// Size: clamd refuses streams over its StreamMaxLength. The client is told
// the same limit and stops before sending more, returning ErrTooLarge; the
// caller's policy decides what happens to such messages.
package clamd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrTooLarge is returned by Scan when the stream exceeds stream_max_length.
var ErrTooLarge = errors.New("clamd: message exceeds stream_max_length")

// ErrUnavailable is wrapped by every error meaning that no instance could
// scan (down, refused, timed out, or answered with an ERROR).
var ErrUnavailable = errors.New("clamd: scanner unavailable")

// chunkSize is the INSTREAM chunk size. Messages up to this size are sent
// with a single write (command, chunk and terminator together).
const chunkSize = 64 << 10

// Result is the outcome of one scan.
type Result struct {
	Infected  bool
	Signature string // when Infected, e.g. "Win.Test.EICAR_HDB-1"
	Addr      string // the instance that scanned
	Version   string // that instance's last VERSION answer, e.g. "ClamAV 1.4.6/27460/Mon Nov 23 ...", "" if not known yet
}

// Client scans streams with one or more clamd instances. It is safe for
// concurrent use. Close stops its health loop.
type Client struct {
	cfg   Config
	log   *slog.Logger
	inst  []*instance
	next  atomic.Uint32
	m     *metrics
	stop  chan struct{}
	done  chan struct{}
	close sync.Once
	bufs  sync.Pool
}

type instance struct {
	addr, network, address string
	up                     atomic.Bool
	version                atomic.Pointer[string]
	mu                     sync.Mutex
	idle                   []*session
}

type session struct {
	conn     net.Conn
	br       *bufio.Reader
	nextID   int
	lastUsed time.Time
}

// New returns a client and starts its health loop, which probes every
// instance at once and then every HealthInterval. log and reg may be nil.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, log: log, m: m, stop: make(chan struct{}), done: make(chan struct{})}
	c.bufs.New = func() any { b := make([]byte, 32+4+chunkSize+4); return &b }
	for _, a := range cfg.Addrs {
		network, address, _ := splitAddr(a)
		in := &instance{addr: a, network: network, address: address}
		in.up.Store(true) // optimistic until the first probe says otherwise
		m.up.WithLabelValues(a).Set(1)
		c.inst = append(c.inst, in)
	}
	c.probeAll()
	go c.healthLoop()
	return c, nil
}

// Close stops the health loop and closes idle connections.
func (c *Client) Close() error {
	c.close.Do(func() {
		close(c.stop)
		<-c.done
		for _, in := range c.inst {
			in.mu.Lock()
			for _, s := range in.idle {
				s.conn.SetDeadline(time.Now().Add(100 * time.Millisecond))
				s.conn.Write([]byte("zEND\x00"))
				s.conn.Close()
			}
			in.idle = nil
			in.mu.Unlock()
		}
	})
	return nil
}

// StreamMaxLength returns the configured limit.
func (c *Client) StreamMaxLength() int64 { return c.cfg.StreamMaxLength }

// InstanceStatus describes one instance for health pages and logs.
type InstanceStatus struct {
	Addr    string
	Up      bool
	Version string
}

// Status returns the state of every instance as last seen.
func (c *Client) Status() []InstanceStatus {
	out := make([]InstanceStatus, len(c.inst))
	for i, in := range c.inst {
		out[i] = InstanceStatus{Addr: in.addr, Up: in.up.Load(), Version: in.getVersion()}
	}
	return out
}

func (in *instance) getVersion() string {
	if v := in.version.Load(); v != nil {
		return *v
	}
	return ""
}

func (c *Client) healthLoop() {
	defer close(c.done)
	t := time.NewTicker(c.cfg.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.probeAll()
		}
	}
}

func (c *Client) probeAll() {
	var wg sync.WaitGroup
	for _, in := range c.inst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), c.cfg.ConnectTimeout+2*time.Second)
			defer cancel()
			v, err := c.version(ctx, in)
			if err != nil {
				c.markDown(in, err)
				return
			}
			in.version.Store(&v)
			c.markUp(in)
		}()
	}
	wg.Wait()
}

func (c *Client) markDown(in *instance, err error) {
	if in.up.Swap(false) {
		c.log.Warn("clamd instance down", "addr", in.addr, "err", err)
	}
	c.m.up.WithLabelValues(in.addr).Set(0)
	// Idle sessions to a dead instance are useless.
	in.mu.Lock()
	for _, s := range in.idle {
		s.conn.Close()
	}
	in.idle = nil
	in.mu.Unlock()
}

func (c *Client) markUp(in *instance) {
	if !in.up.Swap(true) {
		c.log.Info("clamd instance up", "addr", in.addr, "version", in.getVersion())
	}
	c.m.up.WithLabelValues(in.addr).Set(1)
}

// dial opens a plain (non-session) connection.
func (c *Client) dial(ctx context.Context, in *instance) (net.Conn, error) {
	d := net.Dialer{Timeout: c.cfg.ConnectTimeout}
	return d.DialContext(ctx, in.network, in.address)
}

// command runs one non-session command ("zPING", "zVERSION") and returns
// the reply without its terminator.
func (c *Client) command(ctx context.Context, in *instance, cmd string) (string, error) {
	conn, err := c.dial(ctx, in)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	deadline := time.Now().Add(c.cfg.ConnectTimeout + time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	if _, err := conn.Write([]byte(cmd + "\x00")); err != nil {
		return "", err
	}
	line, err := bufio.NewReaderSize(conn, 512).ReadSlice(0)
	if err != nil {
		return "", err
	}
	return string(line[:len(line)-1]), nil
}

func (c *Client) version(ctx context.Context, in *instance) (string, error) {
	v, err := c.command(ctx, in, "zVERSION")
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(v, "ClamAV ") {
		return "", fmt.Errorf("%w: VERSION answered %q", ErrProtocol, clip(v))
	}
	return sanitize(v), nil
}

// Ping asks every instance for PONG and returns nil if at least one
// answered.
func (c *Client) Ping(ctx context.Context) error {
	var errs []error
	for _, in := range c.inst {
		r, err := c.command(ctx, in, "zPING")
		if err == nil && r != "PONG" {
			err = fmt.Errorf("%w: PING answered %q", ErrProtocol, clip(r))
		}
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", in.addr, err))
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, errors.Join(errs...))
}

// Version returns the VERSION answer of the first instance that gives one,
// e.g. "ClamAV 1.4.6/27460/Mon Nov 23 08:00:00 2026".
func (c *Client) Version(ctx context.Context) (string, error) {
	var errs []error
	for _, in := range c.order() {
		v, err := c.version(ctx, in)
		if err == nil {
			in.version.Store(&v)
			return v, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", in.addr, err))
	}
	return "", fmt.Errorf("%w: %w", ErrUnavailable, errors.Join(errs...))
}

// order returns the instances to try for one request: those marked up,
// starting at the round-robin position, then those marked down (the mark
// may be stale; trying them is better than failing).
func (c *Client) order() []*instance {
	n := len(c.inst)
	start := int(c.next.Add(1)-1) % n
	out := make([]*instance, 0, n)
	for i := 0; i < n; i++ {
		if in := c.inst[(start+i)%n]; in.up.Load() {
			out = append(out, in)
		}
	}
	for i := 0; i < n; i++ {
		if in := c.inst[(start+i)%n]; !in.up.Load() {
			out = append(out, in)
		}
	}
	return out
}

// sourceError marks a failure to read the caller's stream: not the
// scanner's fault, so no failover and no instance marked down.
type sourceError struct{ err error }

func (e *sourceError) Error() string { return "reading message: " + e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

// Scan streams r to clamd and returns its verdict. It fails over to the
// next instance when an instance cannot be reached, or fails mid-scan and r
// can be rewound (r implements io.Seeker). Errors: ErrTooLarge when r is
// longer than stream_max_length; an error wrapping ErrUnavailable when no
// instance could scan; a read error of r as is.
func (c *Client) Scan(ctx context.Context, r io.Reader) (Result, error) {
	return c.ScanSize(ctx, r, -1)
}

// ScanSize is Scan with the stream's size known in advance (-1 if not): a
// stream known to be too large is refused without contacting clamd.
func (c *Client) ScanSize(ctx context.Context, r io.Reader, size int64) (res Result, err error) {
	start := time.Now()
	defer func() {
		result := "clean"
		switch {
		case errors.Is(err, ErrTooLarge):
			result = "too_large"
		case err != nil:
			result = "error"
		case res.Infected:
			result = "infected"
			c.m.infections.WithLabelValues(res.Signature).Inc()
		}
		c.m.scans.WithLabelValues(result).Inc()
		if result != "too_large" {
			c.m.latency.Observe(time.Since(start).Seconds())
		}
	}()
	if size > c.cfg.StreamMaxLength {
		return Result{}, ErrTooLarge
	}
	seeker, _ := r.(io.Seeker)
	var origin int64
	if seeker != nil {
		if origin, err = seeker.Seek(0, io.SeekCurrent); err != nil {
			seeker = nil
		}
	}
	cr := &countReader{r: r}
	var errs []error
	for _, in := range c.order() {
		// A stale idle session is retried once on a fresh connection to the
		// same instance; a fresh connection that fails marks it down.
		for try := 0; try < 2; try++ {
			if cr.n > 0 {
				if seeker == nil {
					return Result{}, fmt.Errorf("%w: %w", ErrUnavailable, errors.Join(errs...))
				}
				if _, err := seeker.Seek(origin, io.SeekStart); err != nil {
					return Result{}, &sourceError{err}
				}
				cr.n = 0
			}
			res, reused, err := c.scanOn(ctx, in, cr)
			if err == nil {
				if !in.up.Load() {
					c.markUp(in)
				}
				return res, nil
			}
			var se *sourceError
			if errors.Is(err, ErrTooLarge) || errors.As(err, &se) {
				return Result{}, err
			}
			errs = append(errs, fmt.Errorf("%s: %w", in.addr, err))
			if ctx.Err() != nil {
				return Result{}, fmt.Errorf("%w: %w", ErrUnavailable, errors.Join(errs...))
			}
			if reused {
				continue
			}
			c.markDown(in, err)
			break
		}
	}
	return Result{}, fmt.Errorf("%w: %w", ErrUnavailable, errors.Join(errs...))
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// getSession returns an idle session that is still open, or a new one.
func (c *Client) getSession(ctx context.Context, in *instance) (s *session, reused bool, err error) {
	now := time.Now()
	in.mu.Lock()
	for len(in.idle) > 0 {
		s = in.idle[len(in.idle)-1]
		in.idle = in.idle[:len(in.idle)-1]
		if now.Sub(s.lastUsed) < c.cfg.IdleTimeout && alive(s.conn) {
			in.mu.Unlock()
			return s, true, nil
		}
		s.conn.Close()
	}
	in.mu.Unlock()
	conn, err := c.dial(ctx, in)
	if err != nil {
		return nil, false, err
	}
	s = &session{conn: conn, br: bufio.NewReaderSize(conn, 1024), nextID: 1}
	if c.cfg.MaxIdleConns == 0 {
		s.nextID = 0 // no session: one command per connection
	}
	return s, false, nil
}

func (c *Client) putSession(in *instance, s *session) {
	if s.nextID == 0 {
		s.conn.Close()
		return
	}
	s.lastUsed = time.Now()
	s.conn.SetDeadline(time.Time{})
	in.mu.Lock()
	if len(in.idle) < c.cfg.MaxIdleConns && in.up.Load() {
		in.idle = append(in.idle, s)
		s = nil
	}
	in.mu.Unlock()
	if s != nil {
		s.conn.Close()
	}
}

// scanOn runs one INSTREAM on one instance.
func (c *Client) scanOn(ctx context.Context, in *instance, r *countReader) (res Result, reused bool, err error) {
	s, reused, err := c.getSession(ctx, in)
	if err != nil {
		return Result{}, false, err
	}
	ok := false
	defer func() {
		if ok {
			c.putSession(in, s)
		} else {
			s.conn.Close()
		}
	}()
	deadline := time.Now().Add(c.cfg.ScanTimeout)
	if d, has := ctx.Deadline(); has && d.Before(deadline) {
		deadline = d
	}
	s.conn.SetDeadline(deadline)
	stopWatch := context.AfterFunc(ctx, func() { s.conn.SetDeadline(time.Unix(1, 0)) })
	defer stopWatch()

	bp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(bp)
	buf := *bp
	off := 0
	id := 0
	if s.nextID > 0 {
		if !reused {
			off += copy(buf, "zIDSESSION\x00")
		}
		id = s.nextID
		s.nextID++
	}
	off += copy(buf[off:], "zINSTREAM\x00")
	var total int64
	for {
		n, rerr := io.ReadFull(r, buf[off+4:off+4+chunkSize])
		total += int64(n)
		if total > c.cfg.StreamMaxLength {
			return Result{}, reused, ErrTooLarge
		}
		if n > 0 {
			binary.BigEndian.PutUint32(buf[off:], uint32(n))
			off += 4 + n
		}
		last := rerr == io.EOF || rerr == io.ErrUnexpectedEOF
		if rerr != nil && !last {
			return Result{}, reused, &sourceError{rerr}
		}
		if last {
			off += copy(buf[off:], "\x00\x00\x00\x00")
		}
		if _, err := s.conn.Write(buf[:off]); err != nil {
			// clamd may have refused the stream and closed: its reason
			// can still be waiting in the socket.
			s.conn.SetReadDeadline(time.Now().Add(time.Second))
			if line, rerr := s.br.ReadSlice(0); rerr == nil {
				if rep, perr := ParseReply(string(line)); perr == nil && rep.SizeLimit() {
					c.log.Warn("clamd refused the stream as too large: stream_max_length is above clamd's StreamMaxLength", "addr", in.addr, "sent", total)
					return Result{}, reused, ErrTooLarge
				}
			}
			return Result{}, reused, err
		}
		off = 0
		if last {
			break
		}
	}
	line, err := s.br.ReadSlice(0)
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			err = fmt.Errorf("%w: reply too long", ErrProtocol)
		}
		return Result{}, reused, err
	}
	rep, err := ParseReply(string(line))
	if err != nil {
		return Result{}, reused, err
	}
	if rep.ID != id {
		return Result{}, reused, fmt.Errorf("%w: reply for request %d, want %d", ErrProtocol, rep.ID, id)
	}
	switch rep.Status {
	case StatusError:
		if rep.SizeLimit() {
			c.log.Warn("clamd refused the stream as too large: stream_max_length is above clamd's StreamMaxLength", "addr", in.addr, "size", total)
			return Result{}, reused, ErrTooLarge
		}
		return Result{}, reused, fmt.Errorf("clamd: %s", rep.Message)
	case StatusFound:
		res = Result{Infected: true, Signature: rep.Signature}
	}
	res.Addr, res.Version = in.addr, in.getVersion()
	ok = true
	return res, reused, nil
}

// String renders the result for logs.
func (r Result) String() string {
	if r.Infected {
		return "infected " + r.Signature + " by " + r.Addr
	}
	return "clean by " + r.Addr
}

// ShortVersion returns "ClamAV 1.4.6/27460" from a VERSION answer (engine
// and database version, without the date), or "ClamAV" if unknown.
func ShortVersion(v string) string {
	if v == "" {
		return "ClamAV"
	}
	parts := strings.SplitN(v, "/", 3)
	if len(parts) >= 2 {
		if _, err := strconv.Atoi(parts[1]); err == nil {
			return parts[0] + "/" + parts[1]
		}
	}
	return parts[0]
}
