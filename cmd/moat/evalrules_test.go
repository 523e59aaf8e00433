package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"moat.dev/moat/internal/classify"
	"moat.dev/moat/internal/message"
)

// TestEvalWithRules: moat eval --with-rules scores each message as the
// gateway's content layer does. Sales pitches that the shipped rules alone
// bring to the tag score are counted as caught even while the classifier is
// still silent; plain notes are never tagged.
func TestEvalWithRules(t *testing.T) {
	var items []classify.Item
	for i := 0; i < 40; i++ {
		ham := fmt.Sprintf("From: Ann <ann%d@example.org>\r\nTo: bob@example.org\r\nSubject: minutes %d\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-Id: <m%d@example.org>\r\n\r\nNotes from meeting %d: the build is green and the release is on Friday.\r\n", i, i, i, i)
		spam := fmt.Sprintf("From: Deals <x%d0123456789@bulk.example>\r\nSubject: ADV: Lowest rates!!!          %d\r\nX-MSMail-Priority: High\r\nX-Priority: 1\r\n"+
			"Content-Type: text/html\r\n\r\n<center><font size=\"7\" color=\"#FF0000\">ACT NOW</font></center>"+
			"<p>Dear Friend, this is a one-time mailing. Earn $5,000 per week working from home! No obligation, risk free. Offer %d.</p>"+
			"<p>To be removed from our list, reply with REMOVE in the subject.</p>\r\n", i, 1000+i, i)
		items = append(items,
			classify.Item{Name: fmt.Sprintf("ham/%d.eml", i), Label: classify.Ham, Data: []byte(ham)},
			classify.Item{Name: fmt.Sprintf("spam/%d.eml", i), Label: classify.Spam, Data: []byte(spam)})
	}
	cfg := classify.DefaultConfig()
	cfg.MinHam, cfg.MinSpam = 50, 50 // above this test's 40 + 40 lessons
	c, err := classify.New(cfg, classify.NewMemStore())
	if err != nil {
		t.Fatal(err)
	}
	res, err := classify.Online(context.Background(), c, items, message.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	// 40 + 40 lessons: below min_ham/min_spam, the classifier is silent.
	if res.GatedFN != 40 {
		t.Fatalf("classifier alone, as deployed: FN %d of 40, want 40 (silent)", res.GatedFN)
	}
	var out bytes.Buffer
	if err := reportWithRules(&out, items, res); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"rules + bayes:   FP 0.000% (0 of 40 ham), FN 0.000% (0 of 40 spam)",
		"rules alone:     FP 0.000% (0 of 40 ham), FN 0.000% (0 of 40 spam)",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("missing %q in:\n%s", want, out.String())
		}
	}
}
