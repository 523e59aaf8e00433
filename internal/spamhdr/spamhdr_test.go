package spamhdr

import (
	"testing"

	"moat.dev/moat/internal/verdict"
)

func TestSpamHeaders(t *testing.T) {
	got := SpamHeaders(7.23, 5, []verdict.Symbol{{Name: "RDNS_NONE", Score: 1}, {Name: "BAYES_99", Score: 5}, {Name: "BAYES_99", Score: 5}, {Name: "BAD\r\nX: y", Score: 1}}, "spam")
	want := []verdict.Field{
		{Name: "X-Spam-Flag", Value: "YES"},
		{Name: "X-Spam-Score", Value: "7.2"},
		{Name: "X-Spam-Level", Value: "*******"},
		{Name: "X-Spam-Status", Value: "Yes, score=7.2 required=5.0 tests=BADXy,BAYES_99,RDNS_NONE autolearn=spam version=Moat"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("field %d: got %q, want %q", i, got[i], want[i])
		}
	}
	ham := SpamHeaders(-1.5, 5, nil, "")
	if len(ham) != 3 || ham[0].Name != "X-Spam-Score" || ham[1].Value != "" ||
		ham[2].Value != "No, score=-1.5 required=5.0 tests=none autolearn=no version=Moat" {
		t.Errorf("ham headers: %v", ham)
	}
}
