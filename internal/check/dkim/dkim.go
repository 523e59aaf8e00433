// Package dkim verifies DKIM signatures (RFC 6376) with go-msgauth,
// looking keys up through Moat's resolver. It emits Authentication-Results
// entries ("dkim=pass header.d=example.com header.i=@example.com") that
// DMARC reads, and symbols: DKIM_VALID, DKIM_INVALID, DKIM_TEMPERROR,
// DKIM_NONE (no signature, score 0).
package dkim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"github.com/emersion/go-msgauth/dkim"

	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/message/shared"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/verdict"
)

// Resolver is the DNS the check needs; *dnsx.Client implements it. Errors
// for which dnsx.IsNotFound is true mean the record does not exist.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// Config is the DKIM check's configuration.
type Config struct {
	// MaxSignatures: at most this many signatures are verified per message.
	MaxSignatures int `yaml:"max_signatures"`
	// ValidScore, InvalidScore: points for a message with at least one
	// valid signature, and for one whose signatures all fail.
	ValidScore   float64 `yaml:"valid_score"`
	InvalidScore float64 `yaml:"invalid_score"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config { return Config{MaxSignatures: 5, ValidScore: -0.1, InvalidScore: 0.5} }

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.MaxSignatures < 1 || c.MaxSignatures > 50 {
		return errors.New("max_signatures: must be between 1 and 50")
	}
	return nil
}

// Deps are the check's collaborators.
type Deps struct {
	Resolver Resolver     // required
	Log      *slog.Logger // required
}

// Check is the DKIM DataChecker.
type Check struct {
	cfg Config
	res Resolver
	log *slog.Logger
}

var _ pipeline.DataChecker = (*Check)(nil)

// New builds the check.
func New(cfg Config, deps Deps) (*Check, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Resolver == nil || deps.Log == nil {
		return nil, errors.New("dkim: Resolver and Log are required")
	}
	return &Check{cfg: cfg, res: deps.Resolver, log: deps.Log}, nil
}

// Name implements pipeline.Check.
func (c *Check) Name() string { return "dkim" }

// LookupTXTFunc adapts r to go-msgauth's lookup hook: not-found answers
// become a *net.DNSError with IsNotFound, other failures a temporary
// *net.DNSError, so the library reports permerror and temperror correctly.
func LookupTXTFunc(ctx context.Context, r interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
}) func(string) ([]string, error) {
	return func(name string) ([]string, error) {
		txt, err := r.LookupTXT(ctx, name)
		if err == nil {
			return txt, nil
		}
		if dnsx.IsNotFound(err) {
			return nil, &net.DNSError{Err: "no such record", Name: name, IsNotFound: true}
		}
		return nil, &net.DNSError{Err: "lookup failed", Name: name, IsTemporary: true}
	}
}

// CheckData implements pipeline.DataChecker.
func (c *Check) CheckData(ctx context.Context, tx *pipeline.Txn, pm *pipeline.Message) verdict.Result {
	rc, err := shared.Open(pm) // one spool read shared with the other checks
	if err != nil {
		return verdict.Result{Err: fmt.Errorf("dkim: open message: %w", err)}
	}
	defer rc.Close()
	verifs, err := dkim.VerifyWithOptions(bufio.NewReader(rc), &dkim.VerifyOptions{
		LookupTXT:        LookupTXTFunc(ctx, c.res),
		MaxVerifications: c.cfg.MaxSignatures,
	})
	if err != nil && !errors.Is(err, dkim.ErrTooManySignatures) {
		// An unparseable header: no verifiable signature.
		return verdict.Result{Auth: []string{"dkim=permerror (malformed message)"},
			Symbols: []verdict.Symbol{{Name: "DKIM_INVALID", Score: c.cfg.InvalidScore, Detail: err.Error()}}}
	}
	return c.result(verifs)
}

func (c *Check) result(verifs []*dkim.Verification) verdict.Result {
	var res verdict.Result
	if len(verifs) == 0 {
		res.Auth = []string{"dkim=none"}
		res.Symbols = []verdict.Symbol{{Name: "DKIM_NONE", Score: 0}}
		return res
	}
	pass, temp := false, false
	var details []string
	for _, v := range verifs {
		d := strings.ToLower(v.Domain)
		id := ""
		if v.Identifier != "" {
			id = " header.i=" + v.Identifier
		}
		switch {
		case v.Err == nil:
			pass = true
			res.Auth = append(res.Auth, "dkim=pass header.d="+d+id)
		case dkim.IsTempFail(v.Err):
			temp = true
			res.Auth = append(res.Auth, "dkim=temperror header.d="+d+id)
			details = append(details, d+": "+v.Err.Error())
		case dkim.IsPermFail(v.Err):
			res.Auth = append(res.Auth, "dkim=permerror header.d="+d+id)
			details = append(details, d+": "+v.Err.Error())
		default:
			res.Auth = append(res.Auth, "dkim=fail header.d="+d+id)
			details = append(details, d+": "+v.Err.Error())
		}
	}
	switch {
	case pass:
		res.Symbols = []verdict.Symbol{{Name: "DKIM_VALID", Score: c.cfg.ValidScore}}
	case temp:
		res.Symbols = []verdict.Symbol{{Name: "DKIM_TEMPERROR", Score: 0, Detail: strings.Join(details, "; ")}}
	default:
		res.Symbols = []verdict.Symbol{{Name: "DKIM_INVALID", Score: c.cfg.InvalidScore, Detail: strings.Join(details, "; ")}}
	}
	return res
}

// Passed returns the domains with a passing signature found in auth
// entries ("dkim=pass header.d=DOMAIN"); DMARC uses it.
func Passed(auth []string) []string {
	var out []string
	for _, a := range auth {
		f := strings.Fields(a)
		if len(f) < 2 || f[0] != "dkim=pass" {
			continue
		}
		for _, kv := range f[1:] {
			if d, ok := strings.CutPrefix(kv, "header.d="); ok {
				out = append(out, strings.ToLower(d))
			}
		}
	}
	return out
}
