// Package clamav is the virus check: a DATA check named "clamav" that
// streams the spooled message to clamd (package clamd) and turns the answer
// into a verdict.
//
//   - infected: hard Reject "554 5.7.1 Message rejected: virus found (SIG)",
//     symbol VIRUS_FOUND (Detail: the signature);
//   - scanner unreachable, timed out or failing: hard TempFail
//     "451 4.7.1 Virus scanner unavailable, please try again later", or with
//     fail_open no verdict and the header "X-Moat-Virus: unscanned";
//   - larger than stream_max_length: the oversize policy (default: deliver
//     with "X-Moat-Virus: unscanned (too large)");
//   - clean: the header "X-Moat-Virus: clean (ClamAV 1.4.6/27460)".
//
// Scan and Verdict are exported for the quarantine release, which scans a
// released message again with the same rules.
package clamav

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/clamd"
	"moat.dev/moat/internal/message/shared"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/verdict"
)

// Name is the check's name in the check table and in policy layers.
const Name = "clamav"

// Symbols emitted.
const (
	SymVirusFound = "VIRUS_FOUND"     // Detail: signature name
	SymUnscanned  = "VIRUS_UNSCANNED" // Detail: why (too large, scanner unavailable)
	// VirusScore is VIRUS_FOUND's score. It only matters when the layer is
	// in flag mode (otherwise the hard reject decides): it reaches the
	// default quarantine threshold, so infected mail is held, not delivered.
	VirusScore = 10.0
)

// Header is the header field the check adds.
const Header = "X-Moat-Virus"

var (
	replyUnavailable = verdict.Reply{Code: 451, Enhanced: [3]int{4, 7, 1}, Text: "Virus scanner unavailable, please try again later"}
	replyTooBigTemp  = verdict.Reply{Code: 451, Enhanced: [3]int{4, 3, 4}, Text: "Message too large to scan for viruses, please try again later"}
	replyTooBig      = verdict.Reply{Code: 552, Enhanced: [3]int{5, 3, 4}, Text: "Message too large to scan for viruses"}
)

// Check is the ClamAV DATA check.
type Check struct {
	cfg    Config
	log    *slog.Logger
	client *clamd.Client
}

var _ pipeline.DataChecker = (*Check)(nil)

// New validates cfg and starts a clamd client (with its health loop).
// Metrics are registered on reg (nil: none). Close stops it.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Check, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cl, err := clamd.New(cfg.Config, log.With("check", Name), reg)
	if err != nil {
		return nil, err
	}
	return &Check{cfg: cfg, log: log, client: cl}, nil
}

// Name implements pipeline.Check.
func (c *Check) Name() string { return Name }

// Close stops the clamd client.
func (c *Check) Close() error { return c.client.Close() }

// Client returns the underlying clamd client (health pages, Ping).
func (c *Check) Client() *clamd.Client { return c.client }

// Status is the outcome of a scan.
type Status uint8

const (
	Clean    Status = iota + 1
	Infected        // Signature says which
	TooLarge        // larger than stream_max_length: not scanned
)

func (s Status) String() string {
	switch s {
	case Clean:
		return "clean"
	case Infected:
		return "infected"
	case TooLarge:
		return "too_large"
	}
	return "unknown"
}

// Result is the outcome of Scan.
type Result struct {
	Status    Status
	Signature string // with Infected
	Scanner   string // "ClamAV 1.4.6/27460", the instance's engine and database version
	Addr      string // the clamd instance that scanned
}

// Scan streams r to clamd. The error is non-nil when no clamd instance
// could scan it (it wraps clamd.ErrUnavailable) or r failed.
func (c *Check) Scan(ctx context.Context, r io.Reader) (Result, error) {
	return c.scan(ctx, r, -1)
}

func (c *Check) scan(ctx context.Context, r io.Reader, size int64) (Result, error) {
	res, err := c.client.ScanSize(ctx, r, size)
	switch {
	case errors.Is(err, clamd.ErrTooLarge):
		return Result{Status: TooLarge}, nil
	case err != nil:
		return Result{}, err
	}
	out := Result{Status: Clean, Scanner: clamd.ShortVersion(res.Version), Addr: res.Addr}
	if res.Infected {
		out.Status, out.Signature = Infected, res.Signature
	}
	return out, nil
}

// CheckData implements pipeline.DataChecker.
func (c *Check) CheckData(ctx context.Context, tx *pipeline.Txn, m *pipeline.Message) verdict.Result {
	log := c.log
	if tx != nil && tx.Log != nil {
		log = tx.Log
	}
	rc, err := shared.Open(m) // one spool read shared with the other checks
	if err != nil {
		return verdict.Result{Err: fmt.Errorf("clamav: open message: %w", err)}
	}
	var r io.ReadCloser = rc
	if _, ok := rc.(io.Seeker); !ok {
		// Failover to another instance mid-stream needs to read the message
		// again from the start.
		r = &reopener{open: m.Open, cur: rc}
	}
	defer r.Close()
	size := m.Size
	if size <= 0 {
		size = -1
	}
	res, err := c.scan(ctx, r, size)
	v := c.Verdict(res, err)
	switch {
	case err != nil:
		log.Error("virus scan failed", "check", Name, "err", err, "fail_open", c.cfg.FailOpen)
	case res.Status == Infected:
		log.Warn("virus found", "check", Name, "signature", res.Signature, "clamd", res.Addr)
	case res.Status == TooLarge:
		log.Info("message too large to scan", "check", Name, "size", m.Size, "stream_max_length", c.cfg.StreamMaxLength, "oversize", c.cfg.Oversize)
	default:
		log.Debug("virus scan clean", "check", Name, "clamd", res.Addr)
	}
	return v
}

// Verdict turns the outcome of Scan into the check's result under this
// check's configuration (oversize, fail_open).
func (c *Check) Verdict(res Result, err error) verdict.Result {
	if err != nil {
		out := verdict.Result{
			Symbols: []verdict.Symbol{{Name: SymUnscanned, Detail: "scanner unavailable: " + err.Error()}},
			// Also when a tempfail is overridden (layer in flag or observe
			// mode): the recipient learns the message was not scanned.
			Headers: []verdict.Field{{Name: Header, Value: "unscanned"}},
		}
		if !c.cfg.FailOpen {
			out.Hard = &verdict.Verdict{Action: verdict.TempFail, Reply: replyUnavailable, Reason: "virus scanner unavailable: " + err.Error()}
		}
		return out
	}
	switch res.Status {
	case Infected:
		return verdict.Result{
			Symbols: []verdict.Symbol{{Name: SymVirusFound, Score: VirusScore, Detail: res.Signature}},
			Hard: &verdict.Verdict{Action: verdict.Reject, Reason: "virus found: " + res.Signature,
				Reply: verdict.Reply{Code: 554, Enhanced: [3]int{5, 7, 1}, Text: "Message rejected: virus found (" + res.Signature + ")"}},
			Headers: []verdict.Field{{Name: Header, Value: "infected (" + res.Signature + ")"}},
		}
	case TooLarge:
		out := verdict.Result{
			Symbols: []verdict.Symbol{{Name: SymUnscanned, Detail: fmt.Sprintf("too large (stream_max_length %d)", c.cfg.StreamMaxLength)}},
			Headers: []verdict.Field{{Name: Header, Value: "unscanned (too large)"}},
		}
		switch c.cfg.Oversize {
		case OversizeTempfail:
			out.Hard = &verdict.Verdict{Action: verdict.TempFail, Reply: replyTooBigTemp, Reason: "too large to scan"}
		case OversizeReject:
			out.Hard = &verdict.Verdict{Action: verdict.Reject, Reply: replyTooBig, Reason: "too large to scan"}
		}
		return out
	case Clean:
		return verdict.Result{Headers: []verdict.Field{{Name: Header, Value: "clean (" + res.Scanner + ")"}}}
	}
	return verdict.Result{Err: errors.New("clamav: scan returned no status")}
}

// reopener makes a non-seekable message reader rewindable by opening the
// message again. It supports only what clamd.Client.Scan uses: Seek(0,
// io.SeekCurrent) at the start, and Seek(0, io.SeekStart).
type reopener struct {
	open func() (io.ReadCloser, error)
	cur  io.ReadCloser
	n    int64
}

func (r *reopener) Read(p []byte) (int, error) {
	n, err := r.cur.Read(p)
	r.n += int64(n)
	return n, err
}

func (r *reopener) Seek(off int64, whence int) (int64, error) {
	switch {
	case off == 0 && whence == io.SeekCurrent:
		return r.n, nil
	case off == 0 && whence == io.SeekStart:
		if r.n == 0 {
			return 0, nil
		}
		rc, err := r.open()
		if err != nil {
			return 0, err
		}
		r.cur.Close()
		r.cur, r.n = rc, 0
		return 0, nil
	}
	return 0, errors.New("clamav: unsupported seek")
}

func (r *reopener) Close() error { return r.cur.Close() }
