package policy

import "testing"

func TestThresholds(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	for _, bad := range []Thresholds{{Tag: f(2000)}, {Tag: f(5), Quarantine: f(4)}, {Quarantine: f(9), Reject: f(8)}, {Tag: f(-101)}} {
		if bad.Validate() == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	for _, good := range []Thresholds{{}, {Tag: f(3)}, {Tag: f(3), Reject: f(3)}, {Quarantine: f(-5)}} {
		if err := good.Validate(); err != nil {
			t.Errorf("%s: %v", good, err)
		}
	}
	base := Default()
	if base.With(Thresholds{}) != base {
		t.Fatal("zero thresholds must not copy the policy")
	}
	p := base.With(Thresholds{Tag: f(2), Reject: f(30)})
	if p.TagScore != 2 || p.QuarantineScore != 10 || p.RejectScore != 30 || base.TagScore != 5 || base.RejectScore != 15 {
		t.Fatalf("With: %+v (base %+v)", p, base)
	}
	if d := p.Decide(nil, Content); d.Action.String() != "none" {
		t.Fatalf("score 0 under tag 2: %v", d.Action)
	}
	if !(Thresholds{Tag: f(2)}).Equal(Thresholds{Tag: f(2)}) || (Thresholds{Tag: f(2)}).Equal(Thresholds{Tag: f(3)}) || (Thresholds{Tag: f(2)}).Equal(Thresholds{}) {
		t.Fatal("Equal")
	}
}

func TestSubjectTagValidate(t *testing.T) {
	for tag, ok := range map[string]bool{"[SPAM]": true, "": true, "***JUNK***": true, "[SP\r\nAM]": false, string(make([]byte, 65)): false, "\xff": false} {
		p := Default()
		p.SubjectTag = tag
		if err := p.Validate(); (err == nil) != ok {
			t.Errorf("subject_tag %q: %v", tag, err)
		}
	}
}
