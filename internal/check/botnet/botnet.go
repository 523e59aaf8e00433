// Package botnet is layer 4: signs that the client is an infected desktop
// rather than a mail server. It reads what the session observed (pregreet:
// the client spoke before the greeting), fingerprints the client's TCP SYN
// with p0f signatures (Windows desktops do not run mail servers), and looks
// for dynamic/residential naming in the client's PTR (the shared rdns
// future).
package botnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"moat.dev/moat/internal/check/rdns"
	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/p0f"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/verdict"
)

// Symbols emitted by this check.
const (
	SymPregreet       = "BOTNET_PREGREET"
	SymOSWindows      = "BOTNET_OS_WINDOWS"
	SymWindowsDynamic = "BOTNET_WINDOWS_DYNAMIC" // Windows and a dynamic or missing PTR: a desktop
	SymDynamicPTR     = "DYNAMIC_PTR"
)

// Config is the botnet section.
type Config struct {
	// P0fFP is the p0f signature file. When it is missing, OS
	// fingerprinting is off (one log line at startup), never an error.
	P0fFP string `yaml:"p0f_fp"`
	// PregreetWeight scores BOTNET_PREGREET.
	PregreetWeight float64 `yaml:"pregreet_weight"`
	// WindowsWeight scores BOTNET_OS_WINDOWS (Windows servers do send mail,
	// so alone it is mild).
	WindowsWeight float64 `yaml:"windows_weight"`
	// WindowsDynamicWeight scores BOTNET_WINDOWS_DYNAMIC: Windows and a
	// dynamic-looking or missing PTR.
	WindowsDynamicWeight float64 `yaml:"windows_dynamic_weight"`
	// DynamicWeight scores DYNAMIC_PTR.
	DynamicWeight float64 `yaml:"dynamic_weight"`
	// RejectPregreet gives a pregreeting client a hard 554 5.5.1
	// (postscreen greet_action=enforce).
	RejectPregreet bool `yaml:"reject_pregreet"`
}

// DefaultConfig: pregreet 6, Windows 1.5, Windows+dynamic 3, dynamic PTR
// 2, p0f signatures from /etc/p0f/p0f.fp.
func DefaultConfig() Config {
	return Config{P0fFP: "/etc/p0f/p0f.fp", PregreetWeight: 6, WindowsWeight: 1.5, WindowsDynamicWeight: 3, DynamicWeight: 2}
}

// Validate checks the settings.
func (c *Config) Validate() error {
	if c.PregreetWeight < 0 || c.WindowsWeight < 0 || c.DynamicWeight < 0 || c.WindowsDynamicWeight < 0 {
		return fmt.Errorf("pregreet_weight, windows_weight, windows_dynamic_weight, dynamic_weight: must be >= 0")
	}
	return nil
}

// Deps are the check's collaborators.
type Deps struct {
	Resolver dnsx.Resolver // for the shared rdns future; nil: no PTR checks
	Log      *slog.Logger
}

// Check is the botnet check.
type Check struct {
	cfg Config
	r   dnsx.Resolver
	db  *p0f.DB
	log *slog.Logger
}

var _ pipeline.ConnChecker = (*Check)(nil)

// New builds the check and loads the p0f signatures. A missing signature
// file only disables fingerprinting; a malformed one is an error.
func New(cfg Config, deps Deps) (*Check, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	k := &Check{cfg: cfg, r: deps.Resolver, log: deps.Log}
	if k.log == nil {
		k.log = slog.New(slog.DiscardHandler)
	}
	if cfg.P0fFP != "" {
		db, err := p0f.Load(cfg.P0fFP)
		switch {
		case errors.Is(err, os.ErrNotExist):
			k.log.Warn("p0f signatures not found; OS fingerprinting disabled", "p0f_fp", cfg.P0fFP)
		case err != nil:
			return nil, fmt.Errorf("p0f_fp: %w", err)
		default:
			k.db = db
		}
	}
	return k, nil
}

// Name returns the layer name.
func (*Check) Name() string { return "botnet" }

// OS fingerprints a raw SYN; nil when unknown.
func (k *Check) OS(syn []byte) *p0f.Match {
	if k.db == nil || len(syn) == 0 {
		return nil
	}
	s, err := p0f.ParseSYN(syn)
	if err != nil {
		return nil
	}
	return k.db.Match(s)
}

// CheckConn scores pregreet, the OS guess and the PTR naming.
func (k *Check) CheckConn(ctx context.Context, c *pipeline.Conn) verdict.Result {
	var res verdict.Result
	if c.Pregreet {
		res.Symbols = append(res.Symbols, verdict.Symbol{Name: SymPregreet, Score: k.cfg.PregreetWeight, Detail: "client spoke before the greeting"})
		if k.cfg.RejectPregreet {
			res.Hard = &verdict.Verdict{Action: verdict.Reject,
				Reply:  verdict.Reply{Code: 554, Enhanced: [3]int{5, 5, 1}, Text: "Protocol error: you talked before the greeting"},
				Reason: "pregreet"}
		}
	}
	windows := false
	if m := k.OS(c.SYN); m != nil {
		log := c.Log
		if log == nil {
			log = k.log
		}
		log.Debug("p0f", "ip", c.IP.String(), "os", m.Label.String(), "distance", m.Distance, "fuzzy", m.Fuzzy)
		if m.Label.Class == "win" && m.Label.Name == "Windows" {
			windows = true
			res.Symbols = append(res.Symbols, verdict.Symbol{Name: SymOSWindows, Score: k.cfg.WindowsWeight, Detail: "p0f: " + m.Label.String()})
		}
	}
	if k.r == nil {
		return res
	}
	info, err := rdns.Get(ctx, c, k.r)
	if err != nil {
		// rdns reports its own failure; PTR naming is just unknown here.
		return res
	}
	dyn, why := false, ""
	if info.Name != "" {
		dyn, why = Dynamic(info.Name, c.IP)
		if dyn {
			res.Symbols = append(res.Symbols, verdict.Symbol{Name: SymDynamicPTR, Score: k.cfg.DynamicWeight, Detail: info.Name + ": " + why})
		}
	}
	if windows && (dyn || info.Name == "") {
		res.Symbols = append(res.Symbols, verdict.Symbol{Name: SymWindowsDynamic, Score: k.cfg.WindowsDynamicWeight, Detail: "Windows with a dynamic or missing PTR"})
	}
	return res
}
