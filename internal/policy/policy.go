// Package policy turns the results of the checks into one decision. It owns
// the per-layer modes (reject, tempfail, flag, off, observe-only), the score
// thresholds, the appeal text and the soft-bounce switch. Detecting is the
// checks' job; deciding is this package's.
package policy

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"moat.dev/moat/internal/verdict"
)

// Mode is how one layer's findings are used.
type Mode string

const (
	ModeReject   Mode = "reject"   // hard verdicts are applied as given; scores count
	ModeTempfail Mode = "tempfail" // hard rejections become 4xx; scores count
	ModeFlag     Mode = "flag"     // hard verdicts become scores only; deliver/tag/quarantine by total
	ModeOff      Mode = "off"      // the layer does not run
)

// Valid reports whether m is a known mode.
func (m Mode) Valid() bool {
	switch m {
	case ModeReject, ModeTempfail, ModeFlag, ModeOff:
		return true
	}
	return false
}

// Layer is the policy for one check.
type Layer struct {
	Mode    Mode `yaml:"mode"`
	Observe bool `yaml:"observe"` // score and log what would happen, change nothing
	// OnError says what an internal failure of the check (DNS down, scanner
	// down) does: "tempfail" (default, the sender retries) or "ignore"
	// (fail open, no score).
	OnError string `yaml:"on_error"`
	// FlagScore is the score a hard verdict contributes in flag mode when the
	// check gave no symbol of its own.
	FlagScore float64 `yaml:"flag_score"`
}

// Policy is the complete policy for one customer domain (or the site).
type Policy struct {
	Layers map[string]Layer `yaml:"layers"`
	// Score thresholds, applied at the end of DATA. Reject also applies at
	// RCPT for connection-stage scores (postscreen's dnsbl_threshold).
	TagScore        float64 `yaml:"tag_score"`
	QuarantineScore float64 `yaml:"quarantine_score"`
	RejectScore     float64 `yaml:"reject_score"`
	// Appeal is appended to every 5xx given by a check, e.g. a URL or an address.
	Appeal string `yaml:"appeal"`
	// QuarantineRefuse answers quarantined mail with "550 5.7.1" during
	// the session (the sender learns of it; no backscatter) while a copy is
	// still kept for a human to release: "reject, yet recoverable".
	QuarantineRefuse bool `yaml:"quarantine_refuse"`
	// KeepRejected also keeps a quarantine copy of mail refused for its
	// score at the end of DATA (never of viruses or other hard verdicts).
	KeepRejected bool `yaml:"keep_rejected"`
	// SubjectTag is put in front of the subject of tagged mail (with a
	// space after it); "" leaves the subject alone (X-Spam-Flag still
	// says YES). Default "[SPAM]".
	SubjectTag string `yaml:"subject_tag"`
}

// Default returns the safe defaults: every layer in reject mode (hard
// verdicts such as unknown users are applied), tag at 5, quarantine at 10,
// reject at 15.
func Default() *Policy {
	return &Policy{Layers: map[string]Layer{}, TagScore: 5, QuarantineScore: 10, RejectScore: 15, SubjectTag: "[SPAM]"}
}

// Layer returns the policy of the named check, defaulting to reject mode
// with errors answered by tempfail.
func (p *Policy) Layer(name string) Layer {
	l, ok := p.Layers[name]
	if !ok {
		l = Layer{Mode: ModeReject}
	}
	if l.Mode == "" {
		l.Mode = ModeReject
	}
	if l.OnError == "" {
		l.OnError = "tempfail"
	}
	return l
}

// Enabled reports whether the named check should run at all.
func (p *Policy) Enabled(name string) bool { return p.Layer(name).Mode != ModeOff }

// LayerNames are the checks a policy can set, in the order they run (the
// app builds exactly these; a test holds the two lists together). A
// policy naming another layer is refused, so that a typo ("dnbsl: off")
// does not look as if it took effect.
var LayerNames = []string{"lists", "rdns", "dnsbl", "botnet", "helo", "spf", "recipient", "greylist",
	"attach", "clamav", "dkim", "dmarc", "uribl", "rules", "bayes"}

// Validate checks layer names, modes and thresholds.
func (p *Policy) Validate() error {
	for _, name := range slices.Sorted(maps.Keys(p.Layers)) {
		l := p.Layers[name]
		if !slices.Contains(LayerNames, name) {
			return fmt.Errorf("layers.%s: not a check (one of %s)", name, strings.Join(LayerNames, ", "))
		}
		if l.Mode != "" && !l.Mode.Valid() {
			return fmt.Errorf("layers.%s.mode: %q is not one of reject, tempfail, flag, off", name, l.Mode)
		}
		if l.OnError != "" && l.OnError != "tempfail" && l.OnError != "ignore" {
			return fmt.Errorf("layers.%s.on_error: %q is not one of tempfail, ignore", name, l.OnError)
		}
	}
	if !(p.TagScore <= p.QuarantineScore && p.QuarantineScore <= p.RejectScore) {
		return fmt.Errorf("thresholds: need tag_score <= quarantine_score <= reject_score, have %v, %v, %v",
			p.TagScore, p.QuarantineScore, p.RejectScore)
	}
	if len(p.SubjectTag) > 64 || !utf8.ValidString(p.SubjectTag) || strings.IndexFunc(p.SubjectTag, unicode.IsControl) >= 0 {
		return fmt.Errorf("subject_tag: %q must be at most 64 bytes of UTF-8 text without control characters", p.SubjectTag)
	}
	return nil
}

// Stage says which thresholds apply.
type Stage int

const (
	Envelope Stage = iota // connect, HELO, MAIL, RCPT: hard verdicts and the reject threshold
	Content               // end of DATA: every threshold
)

// Decision is the policy's answer.
type Decision struct {
	Action   verdict.Action
	Reply    verdict.Reply // meaningful for TempFail, Reject, Drop (and Quarantine when refused)
	Score    float64
	Reason   string           // internal: which check or threshold decided
	Counted  []verdict.Symbol // symbols that counted toward Score
	Observed []string         // what observe-only layers would have done
	// Autolearn is what the classifier learned from this message by
	// itself: "ham", "spam" or "no" (X-Spam-Status autolearn=).
	Autolearn string
}

var (
	replyTempfail = verdict.Reply{Code: 451, Enhanced: [3]int{4, 3, 0}, Text: "Temporary local problem, please try again later"}
	replyHeld     = verdict.Reply{Code: 550, Enhanced: [3]int{5, 7, 1}, Text: "Message refused as suspicious; a copy is held for review"}
	replySpam     = verdict.Reply{Code: 550, Enhanced: [3]int{5, 7, 1}, Text: "Message refused by policy"}
	replyDNS      = verdict.Reply{Code: 451, Enhanced: [3]int{4, 4, 3}, Text: "Temporary DNS failure, please try again later"}
)

// tempfailReply is the answer to a check that could not run: 451 4.4.3
// (directory server failure, RFC 3463) when a DNS lookup failed, else
// 451 4.3.0.
func tempfailReply(err error) verdict.Reply {
	var lf interface{ DNSLookupFailed() bool } // a *dnsx.Error
	if errors.As(err, &lf) && lf.DNSLookupFailed() {
		return replyDNS
	}
	return replyTempfail
}

// Decide merges results into one decision. Results of checks in observe
// mode are reported in Observed and otherwise ignored.
func (p *Policy) Decide(results []verdict.Result, stage Stage) Decision {
	d := Decision{Action: verdict.NoOpinion}
	var hard *verdict.Verdict
	var hardFrom string
	allowIP := p.allowedIP(results)
	forged := forgedSender(results)
	for _, res := range results {
		l := p.Layer(res.Check)
		if l.Mode == ModeOff {
			continue
		}
		if forged && res.Check == "lists" {
			res.Symbols = discountSenderAllow(res.Symbols)
		}
		if allowIP && reputationLayers[res.Check] && res.Hard != nil {
			// The client's address is allowlisted: its reputation (a
			// blocklist listing, no PTR, a bot sign) refuses nothing, and
			// its scores are outweighed.
			res.Hard = nil
		}
		var score float64
		for _, s := range res.Symbols {
			score += s.Score
		}
		var h *verdict.Verdict
		if res.Err != nil && l.OnError == "tempfail" {
			h = &verdict.Verdict{Action: verdict.TempFail, Reply: tempfailReply(res.Err), Reason: res.Check + ": " + res.Err.Error()}
		} else if res.Hard != nil {
			v := *res.Hard
			h = &v
		}
		if h != nil {
			switch l.Mode {
			case ModeTempfail:
				if h.Action == verdict.Reject || h.Action == verdict.Drop {
					h.Action = verdict.TempFail
					h.Reply = toTemp(h.Reply)
				}
			case ModeFlag:
				if h.Action >= verdict.TempFail && res.Err == nil {
					if len(res.Symbols) == 0 {
						score += l.FlagScore
						res.Symbols = append(res.Symbols, verdict.Symbol{Name: strings.ToUpper(res.Check) + "_FLAG", Score: l.FlagScore, Detail: h.Reason})
					}
					h = nil
				}
			}
		}
		if l.Observe {
			what := fmt.Sprintf("%s: score %s", res.Check, verdict.FormatScore(score))
			if h != nil {
				what += " action " + h.Action.String() + " (" + h.Reason + ")"
			}
			d.Observed = append(d.Observed, what)
			continue
		}
		d.Score += score
		d.Counted = append(d.Counted, res.Symbols...)
		if h != nil && (hard == nil || h.Action > hard.Action) {
			hard, hardFrom = h, res.Check
		}
	}
	// A temporary failure (a check that could not run) asks the client to
	// come back for a verdict it might change; a score already at the
	// reject threshold is a verdict no check can change, so it stands
	// (GTUBE with the virus scanner down is refused, not retried).
	settled := hard != nil && hard.Action == verdict.TempFail && d.Score >= p.RejectScore
	if hard != nil && hard.Action >= verdict.Quarantine && !settled {
		d.Action, d.Reply, d.Reason = hard.Action, hard.Reply, hardFrom+": "+hard.Reason
	} else {
		switch {
		case d.Score >= p.RejectScore:
			d.Action, d.Reply = verdict.Reject, replySpam
			d.Reason = fmt.Sprintf("score %s >= reject %s", verdict.FormatScore(d.Score), verdict.FormatScore(p.RejectScore))
		case stage == Content && d.Score >= p.QuarantineScore:
			d.Action, d.Reason = verdict.Quarantine, fmt.Sprintf("score %s >= quarantine %s", verdict.FormatScore(d.Score), verdict.FormatScore(p.QuarantineScore))
		case stage == Content && d.Score >= p.TagScore:
			d.Action, d.Reason = verdict.Tag, fmt.Sprintf("score %s >= tag %s", verdict.FormatScore(d.Score), verdict.FormatScore(p.TagScore))
		case hard != nil:
			d.Action, d.Reply, d.Reason = hard.Action, hard.Reply, hardFrom+": "+hard.Reason
		}
	}
	if stage == Content {
		switch {
		case d.Action == verdict.Reject && p.KeepRejected && (hard == nil || hard.Action < verdict.Quarantine):
			d.Action = verdict.Quarantine // Reply stays the 5xx: refused, yet recoverable
		case d.Action == verdict.Quarantine && p.QuarantineRefuse && d.Reply.Code == 0:
			d.Reply = replyHeld
		}
	}
	if d.Reply.Code/100 == 5 && p.Appeal != "" && !strings.Contains(d.Reply.Text, p.Appeal) {
		d.Reply.Text += "; if this is an error contact " + p.Appeal
	}
	return d
}

// forgedSender reports whether SPF or DMARC says the sender's address is
// not the sender's (SPF fail or softfail, a DMARC failure): anyone can
// write an allowlisted envelope sender, so a sender allow then counts
// for nothing (SpamAssassin's whitelist_auth idea, without requiring a
// pass from domains that publish nothing).
func forgedSender(results []verdict.Result) bool {
	for _, res := range results {
		for _, s := range res.Symbols {
			switch {
			case s.Name == "SPF_FAIL", s.Name == "SPF_SOFTFAIL", strings.HasPrefix(s.Name, "DMARC_FAIL"):
				return true
			}
		}
	}
	return false
}

// discountSenderAllow returns syms with ALLOWLIST_SENDER worth nothing.
func discountSenderAllow(syms []verdict.Symbol) []verdict.Symbol {
	out, copied := syms, false
	for i, s := range syms {
		if s.Name == "ALLOWLIST_SENDER" && s.Score != 0 {
			if !copied { // the check's result is shared: change a copy
				out, copied = append([]verdict.Symbol(nil), syms...), true
			}
			out[i].Score = 0
			out[i].Detail += " (not counted: the sender fails SPF or DMARC)"
		}
	}
	return out
}

// reputationLayers judge the client by its address and manners. An
// allowlisted client address (the lists layer's ALLOWLIST_IP: an admin
// vouches for it, e.g. after a blocklist false positive) lifts their
// hard verdicts, as Postfix's permit ends the client restrictions.
// Recipients, viruses, attachments and block entries still apply, and
// a sender allow (forgeable) lifts nothing.
var reputationLayers = map[string]bool{"rdns": true, "dnsbl": true, "botnet": true, "helo": true, "greylist": true}

// allowedIP reports whether the lists layer allowlisted the client's
// address (and counts: not off, not observing).
func (p *Policy) allowedIP(results []verdict.Result) bool {
	for _, res := range results {
		if res.Check != "lists" {
			continue
		}
		if l := p.Layer(res.Check); l.Mode == ModeOff || l.Observe {
			return false
		}
		for _, s := range res.Symbols {
			if s.Name == "ALLOWLIST_IP" {
				return true
			}
		}
	}
	return false
}

func toTemp(r verdict.Reply) verdict.Reply {
	if r.Code/100 == 5 {
		r.Code -= 100
		r.Enhanced[0] = 4
	}
	return r
}

// SoftBounce turns a 5xx reply into the matching 4xx (Postfix soft_bounce).
func SoftBounce(r verdict.Reply) verdict.Reply { return toTemp(r) }
