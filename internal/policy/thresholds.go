package policy

import (
	"fmt"
	"math"
)

// Thresholds are one recipient's own score thresholds: tag ([SPAM] and
// X-Spam-Flag), quarantine and reject. A nil field keeps the domain's
// (or the site's) value. People set them in the quarantine UI (stored
// by package quarantine); the pipeline applies them to mail for that
// address (Policy.With).
type Thresholds struct {
	Tag, Quarantine, Reject *float64
}

// IsZero reports whether no threshold is set.
func (t Thresholds) IsZero() bool { return t.Tag == nil && t.Quarantine == nil && t.Reject == nil }

// Equal reports whether t and u set the same values.
func (t Thresholds) Equal(u Thresholds) bool {
	eq := func(a, b *float64) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }
	return eq(t.Tag, u.Tag) && eq(t.Quarantine, u.Quarantine) && eq(t.Reject, u.Reject)
}

// Validate checks the values: each between -100 and 1000, and the ones
// given in order (tag <= quarantine <= reject).
func (t Thresholds) Validate() error {
	named := []struct {
		name string
		v    *float64
	}{{"tag", t.Tag}, {"quarantine", t.Quarantine}, {"reject", t.Reject}}
	last, lastName := math.Inf(-1), ""
	for _, x := range named {
		if x.v == nil {
			continue
		}
		if math.IsNaN(*x.v) || *x.v < -100 || *x.v > 1000 {
			return fmt.Errorf("%s: %v is not between -100 and 1000", x.name, *x.v)
		}
		if *x.v < last {
			return fmt.Errorf("%s: %v is below %s (%v)", x.name, *x.v, lastName, last)
		}
		last, lastName = *x.v, x.name
	}
	return nil
}

func (t Thresholds) String() string {
	f := func(v *float64) string {
		if v == nil {
			return "-"
		}
		return fmt.Sprintf("%g", *v)
	}
	return "tag=" + f(t.Tag) + " quarantine=" + f(t.Quarantine) + " reject=" + f(t.Reject)
}

// With returns a copy of p with the thresholds t set (p when t is zero).
func (p *Policy) With(t Thresholds) *Policy {
	if t.IsZero() {
		return p
	}
	q := *p
	if t.Tag != nil {
		q.TagScore = *t.Tag
	}
	if t.Quarantine != nil {
		q.QuarantineScore = *t.Quarantine
	}
	if t.Reject != nil {
		q.RejectScore = *t.Reject
	}
	return &q
}
