// Package spf evaluates SPF (RFC 7208) for the MAIL FROM identity (the
// HELO identity for the null sender) with blitiri.com.ar/go/spf over
// Moat's resolver, bounded by a DNS-lookup limit and a timeout. The result
// becomes a symbol (SPF_FAIL, ...) and an Authentication-Results entry
// ("spf=fail smtp.mailfrom=example.com") that DMARC reads.
package spf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"blitiri.com.ar/go/spf"

	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/verdict"
)

// Config is the spf section.
type Config struct {
	// LookupLimit is the RFC 7208 limit on DNS-querying mechanisms (10).
	LookupLimit uint `yaml:"lookup_limit"`
	// VoidLookupLimit is the limit on lookups answering nothing (2).
	VoidLookupLimit uint `yaml:"void_lookup_limit"`
	// Timeout bounds one evaluation.
	Timeout time.Duration `yaml:"timeout"`
	// Weights of SPF_PASS, SPF_FAIL, SPF_SOFTFAIL, SPF_NEUTRAL, SPF_NONE,
	// SPF_PERMERROR and SPF_TEMPERROR.
	PassWeight      float64 `yaml:"pass_weight"`
	FailWeight      float64 `yaml:"fail_weight"`
	SoftFailWeight  float64 `yaml:"softfail_weight"`
	NeutralWeight   float64 `yaml:"neutral_weight"`
	NoneWeight      float64 `yaml:"none_weight"`
	PermErrorWeight float64 `yaml:"permerror_weight"`
	TempErrorWeight float64 `yaml:"temperror_weight"`
	// TempErrorIsError makes a temperror an Err of the layer (the policy's
	// on_error then tempfails or ignores it); otherwise it only scores.
	TempErrorIsError bool `yaml:"temperror_is_error"`
	// RejectFail gives SPF fail a hard 550 5.7.23 (off by default: DMARC
	// decides what a failing SPF means).
	RejectFail bool `yaml:"reject_fail"`
}

// DefaultConfig: fail 3, softfail 1, permerror 1, the rest 0; temperror
// only scores; fail is not rejected by itself.
func DefaultConfig() Config {
	return Config{LookupLimit: 10, VoidLookupLimit: 2, Timeout: 10 * time.Second,
		FailWeight: 3, SoftFailWeight: 1, PermErrorWeight: 1}
}

// Validate checks the settings.
func (c *Config) Validate() error {
	if c.LookupLimit < 1 || c.LookupLimit > 50 {
		return fmt.Errorf("lookup_limit: must be between 1 and 50, have %d", c.LookupLimit)
	}
	if c.VoidLookupLimit < 1 || c.VoidLookupLimit > 50 {
		return fmt.Errorf("void_lookup_limit: must be between 1 and 50, have %d", c.VoidLookupLimit)
	}
	if c.Timeout <= 0 {
		return fmt.Errorf("timeout: must be > 0, have %v", c.Timeout)
	}
	return nil
}

// Deps are the check's collaborators.
type Deps struct {
	Resolver dnsx.Resolver
}

// Check is the spf check.
type Check struct {
	cfg Config
	res spf.DNSResolver
}

var _ pipeline.MailChecker = (*Check)(nil)

// New builds the check.
func New(cfg Config, deps Deps) (*Check, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Resolver == nil {
		return nil, errors.New("spf: Deps.Resolver is required")
	}
	return &Check{cfg: cfg, res: dnsx.SPFResolver{R: deps.Resolver}}, nil
}

// Name returns the layer name.
func (*Check) Name() string { return "spf" }

// Evaluate runs SPF for ip with the given HELO and sender ("" for the
// null sender). It returns the result and the identity checked.
func (k *Check) Evaluate(ctx context.Context, ip net.IP, helo, sender string) (spf.Result, string, error) {
	ctx, cancel := context.WithTimeout(ctx, k.cfg.Timeout)
	defer cancel()
	identity := "smtp.mailfrom="
	if sender == "" {
		h := strings.TrimSuffix(helo, ".")
		if h == "" || strings.HasPrefix(h, "[") || !strings.Contains(h, ".") {
			return spf.None, "smtp.helo=" + h, nil
		}
		sender = "postmaster@" + h
		identity = "smtp.helo="
	}
	_, domain, _ := strings.Cut(sender, "@")
	identity += strings.ToLower(domain)
	r, err := spf.CheckHostWithSender(ip, helo, sender,
		spf.WithResolver(k.res), spf.WithContext(ctx),
		spf.OverrideLookupLimit(k.cfg.LookupLimit), spf.OverrideVoidLookupLimit(k.cfg.VoidLookupLimit))
	return r, identity, err
}

// CheckMail evaluates SPF for the transaction's MAIL FROM.
func (k *Check) CheckMail(ctx context.Context, tx *pipeline.Txn) verdict.Result {
	c := tx.Conn
	if c.AuthUser != "" {
		return verdict.Result{}
	}
	r, identity, err := k.Evaluate(ctx, net.IP(c.IP.Unmap().AsSlice()), c.Helo, tx.From.String())
	res := verdict.Result{Auth: []string{fmt.Sprintf("spf=%s %s", r, identity)}}
	w := map[spf.Result]float64{spf.Pass: k.cfg.PassWeight, spf.Fail: k.cfg.FailWeight, spf.SoftFail: k.cfg.SoftFailWeight,
		spf.Neutral: k.cfg.NeutralWeight, spf.None: k.cfg.NoneWeight, spf.PermError: k.cfg.PermErrorWeight, spf.TempError: k.cfg.TempErrorWeight}[r]
	detail := identity
	if err != nil {
		detail += ": " + err.Error()
	}
	res.Symbols = []verdict.Symbol{{Name: "SPF_" + strings.ToUpper(string(r)), Score: w, Detail: detail}}
	switch {
	case r == spf.TempError && k.cfg.TempErrorIsError:
		res.Err = fmt.Errorf("spf temperror for %s: %v", identity, err)
	case r == spf.Fail && k.cfg.RejectFail:
		res.Hard = &verdict.Verdict{Action: verdict.Reject,
			Reply:  verdict.Reply{Code: 550, Enhanced: [3]int{5, 7, 23}, Text: "SPF validation failed"},
			Reason: "spf fail " + identity}
	}
	return res
}
