package clamd

import (
	"strings"
	"testing"
)

func TestParseReply(t *testing.T) {
	tests := []struct {
		in   string
		want Reply
		bad  bool
	}{
		{in: "stream: OK\x00", want: Reply{Status: StatusOK}},
		{in: "stream: OK\n", want: Reply{Status: StatusOK}},
		{in: "3: stream: OK", want: Reply{ID: 3, Status: StatusOK}},
		{in: "stream: Eicar-Signature FOUND", want: Reply{Status: StatusFound, Signature: "Eicar-Signature"}},
		{in: "12: stream: Win.Test.EICAR_HDB-1 FOUND\x00", want: Reply{ID: 12, Status: StatusFound, Signature: "Win.Test.EICAR_HDB-1"}},
		{in: "INSTREAM size limit exceeded. ERROR", want: Reply{Status: StatusError, Message: "INSTREAM size limit exceeded."}},
		{in: "1: INSTREAM size limit exceeded. ERROR", want: Reply{ID: 1, Status: StatusError, Message: "INSTREAM size limit exceeded."}},
		{in: "stream: Can't allocate memory ERROR", want: Reply{Status: StatusError, Message: "stream: Can't allocate memory"}},
		// A hostile or broken peer must not inject lines into SMTP replies or headers.
		{in: "stream: Evil\r\n250 OK FOUND", want: Reply{Status: StatusFound, Signature: "Evil??250 OK"}},
		{in: "stream: a(b);c FOUND", want: Reply{Status: StatusFound, Signature: "a?b??c"}},
		{in: "stream: " + strings.Repeat("x", 500) + " FOUND", want: Reply{Status: StatusFound, Signature: strings.Repeat("x", maxSignature)}},
		{in: "PONG", bad: true},
		{in: "", bad: true},
		{in: "stream:  FOUND", bad: true},
		{in: "Eicar FOUND", bad: true},
		{in: "UNKNOWN COMMAND", bad: true},
		{in: "COMMAND READ TIMED OUT", bad: true},
	}
	for _, tt := range tests {
		got, err := ParseReply(tt.in)
		if tt.bad {
			if err == nil {
				t.Errorf("ParseReply(%q) = %+v, want error", tt.in, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseReply(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	if !(Reply{Status: StatusError, Message: "INSTREAM size limit exceeded."}).SizeLimit() {
		t.Error("SizeLimit false for the size-limit error")
	}
}

func FuzzParseReply(f *testing.F) {
	for _, s := range []string{"stream: OK", "1: stream: OK\x00", "stream: Eicar-Signature FOUND", "2: INSTREAM size limit exceeded. ERROR", "9999999999: x: y FOUND", ": FOUND", "1: : OK"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseReply(s)
		if err != nil {
			return
		}
		switch r.Status {
		case StatusFound:
			if r.Signature == "" || len(r.Signature) > maxSignature {
				t.Fatalf("bad signature %q from %q", r.Signature, s)
			}
			for i := 0; i < len(r.Signature); i++ {
				if c := r.Signature[i]; c < 0x20 || c > 0x7e || c == '(' || c == ')' {
					t.Fatalf("unsafe byte %q in signature %q", c, r.Signature)
				}
			}
		case StatusOK, StatusError:
		default:
			t.Fatalf("status %d from %q", r.Status, s)
		}
		if r.ID < 0 {
			t.Fatalf("negative id from %q", s)
		}
	})
}
