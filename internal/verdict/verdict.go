// Package verdict holds the pure types that checks return and the policy
// consumes: actions, symbols, SMTP replies and per-message reports. It does
// no I/O and imports nothing from the project, so every package may use it.
package verdict

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Action is what should happen to a message or recipient. Actions are
// ordered by severity; merging keeps the most severe.
type Action uint8

const (
	NoOpinion  Action = iota // the check has nothing to say (Postfix DUNNO)
	Deliver                  // accept and relay
	Tag                      // accept, relay with spam headers / subject tag
	Quarantine               // accept (or refuse, per policy) and hold for a human
	TempFail                 // 4xx: try again later
	Reject                   // 5xx: refuse in the session
	Drop                     // 421 and close the connection
)

var actionNames = [...]string{"none", "deliver", "tag", "quarantine", "tempfail", "reject", "drop"}

func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return fmt.Sprintf("action(%d)", a)
}

// Reply is one SMTP reply with its RFC 3463 enhanced status code.
type Reply struct {
	Code     int    // 250, 451, 550, ...
	Enhanced [3]int // {5,7,1}
	Text     string // human text shown to the client
}

func (r Reply) String() string {
	return fmt.Sprintf("%d %d.%d.%d %s", r.Code, r.Enhanced[0], r.Enhanced[1], r.Enhanced[2], r.Text)
}

// Temporary reports whether the reply is a 4xx.
func (r Reply) Temporary() bool { return r.Code/100 == 4 }

// Symbol is one named finding with a score. Detail is for logs and the UI,
// never for the SMTP client.
type Symbol struct {
	Name   string
	Score  float64
	Detail string
}

// Field is a header field to prepend to the message at relay time.
type Field struct {
	Name, Value string
}

// Verdict is a hard decision by one check (unknown recipient, virus, ...).
type Verdict struct {
	Action Action
	Reply  Reply
	Reason string // internal only
}

// Result is what one check returns for one phase.
type Result struct {
	Check   string   // filled in by the runner
	Symbols []Symbol // scored findings
	Hard    *Verdict // rare: a decision that does not depend on the total score
	Auth    []string // Authentication-Results method results, e.g. "spf=pass smtp.mailfrom=a.example"
	Headers []Field  // header fields to prepend
	Err     error    // the check could not run; the policy decides tempfail or fail-open
}

// Report collects every Result for one transaction. It is safe for
// concurrent use: checks of one phase run in parallel.
type Report struct {
	mu      sync.Mutex
	results []Result
}

// Add records a result.
func (r *Report) Add(res Result) {
	r.mu.Lock()
	r.results = append(r.results, res)
	r.mu.Unlock()
}

// Results returns a copy of the recorded results.
func (r *Report) Results() []Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Result(nil), r.results...)
}

// Result returns the latest result of the named check, if any. DMARC reads
// SPF and DKIM this way.
func (r *Report) Result(check string) (Result, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.results) - 1; i >= 0; i-- {
		if r.results[i].Check == check {
			return r.results[i], true
		}
	}
	return Result{}, false
}

// Symbols returns every symbol recorded, in order.
func (r *Report) Symbols() []Symbol {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Symbol
	for _, res := range r.results {
		out = append(out, res.Symbols...)
	}
	return out
}

// Score is the sum of all symbol scores.
func (r *Report) Score() float64 {
	var s float64
	for _, sym := range r.Symbols() {
		s += sym.Score
	}
	return s
}

// Summary renders the score and the contributing symbols in a stable,
// header-safe form: "score=7.5 DNSBL_SBL(5) RDNS_NONE(2.5)".
func (r *Report) Summary() string {
	syms := r.Symbols()
	sort.SliceStable(syms, func(i, j int) bool { return syms[i].Score > syms[j].Score })
	var b strings.Builder
	fmt.Fprintf(&b, "score=%s", FormatScore(r.Score()))
	for _, s := range syms {
		fmt.Fprintf(&b, " %s(%s)", s.Name, FormatScore(s.Score))
	}
	return b.String()
}

// FormatScore prints a score with at most two decimals and no trailing zeros.
func FormatScore(f float64) string {
	s := fmt.Sprintf("%.2f", f)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	if s == "-0" {
		s = "0"
	}
	return s
}
