// Package spamhdr renders the SpamAssassin-compatible X-Spam-* header
// fields that Moat prepends to delivered mail, so customers' existing
// mail rules (Sieve, Outlook, procmail) keep working.
package spamhdr

import (
	"fmt"
	"sort"
	"strings"

	"moat.dev/moat/internal/verdict"
)

// Version is the version string in X-Spam-Status.
const Version = "Moat"

// SpamHeaders returns X-Spam-Flag (only when score >= threshold),
// X-Spam-Score, X-Spam-Level (one '*' per whole point, at most 50) and
// X-Spam-Status: "Yes, score=7.2 required=5.0 tests=BAYES_99,GTUBE
// autolearn=no version=Moat". Test names are sorted, as SpamAssassin does.
// autolearn is what the classifier learned from the message by itself
// ("ham", "spam"; "" or anything else is reported as "no").
func SpamHeaders(score, threshold float64, symbols []verdict.Symbol, autolearn string) []verdict.Field {
	spam := score >= threshold
	names := make([]string, 0, len(symbols))
	seen := map[string]bool{}
	for _, s := range symbols {
		n := sanitize(s.Name)
		if n == "" || seen[n] {
			continue
		}
		seen[n] = true
		names = append(names, n)
	}
	sort.Strings(names)
	tests := "none"
	if len(names) > 0 {
		tests = strings.Join(names, ",")
	}
	yes := "No"
	if spam {
		yes = "Yes"
	}
	stars := int(score)
	if stars < 0 {
		stars = 0
	}
	if stars > 50 {
		stars = 50
	}
	if autolearn != "ham" && autolearn != "spam" {
		autolearn = "no"
	}
	var out []verdict.Field
	if spam {
		out = append(out, verdict.Field{Name: "X-Spam-Flag", Value: "YES"})
	}
	out = append(out,
		verdict.Field{Name: "X-Spam-Score", Value: fmt.Sprintf("%.1f", score)},
		verdict.Field{Name: "X-Spam-Level", Value: strings.Repeat("*", stars)},
		verdict.Field{Name: "X-Spam-Status", Value: fmt.Sprintf("%s, score=%.1f required=%.1f tests=%s autolearn=%s version=%s",
			yes, score, threshold, tests, autolearn, Version)},
	)
	return out
}

// sanitize keeps symbol names header-safe: letters, digits and _ only.
func sanitize(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' {
			b.WriteRune(r)
		}
	}
	return b.String()
}
