package pipeline

import (
	"context"
	"sync"
	"testing"
	"time"

	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/verdict"
)

// mailCheck is a MailChecker running fn.
type mailCheck struct {
	name string
	fn   func(ctx context.Context) verdict.Result
}

func (m mailCheck) Name() string { return m.name }
func (m mailCheck) CheckMail(ctx context.Context, _ *Txn) verdict.Result {
	return m.fn(ctx)
}

func newTxn() *Txn {
	return &Txn{Conn: &Conn{Report: &verdict.Report{}}, Report: &verdict.Report{}}
}

func sitePolicy(p *policy.Policy) PolicySource { return func(string) *policy.Policy { return p } }

// TestRunnerParallel: the checks of a phase run at the same time (each
// waits until all have started, which would never happen one by one) and
// every result is recorded under its check's name.
func TestRunnerParallel(t *testing.T) {
	const n = 3
	var started sync.WaitGroup
	started.Add(n)
	all := make(chan struct{})
	go func() { started.Wait(); close(all) }()
	var checks []Check
	for _, name := range []string{"a", "b", "c"} {
		checks = append(checks, mailCheck{name, func(ctx context.Context) verdict.Result {
			started.Done()
			select {
			case <-all:
				return verdict.Result{Symbols: []verdict.Symbol{{Name: "SEEN_ALL", Score: 1}}}
			case <-ctx.Done():
				return verdict.Result{Err: ctx.Err()}
			}
		}})
	}
	r := NewRunner(checks, sitePolicy(policy.Default()), 5*time.Second)
	tx := newTxn()
	r.Mail(context.Background(), tx)
	for _, name := range []string{"a", "b", "c"} {
		res, ok := tx.Report.Result(name)
		if !ok || res.Err != nil || len(res.Symbols) != 1 {
			t.Fatalf("check %s: %+v, %v (checks did not run concurrently?)", name, res, ok)
		}
	}
}

// TestRunnerSingleAndDisabled: a disabled check does not run; a lone
// enabled check runs, its panic becomes an error result, and a check
// outliving the deadline gets a timeout error.
func TestRunnerSingleAndDisabled(t *testing.T) {
	pol := policy.Default()
	pol.Layers["off"] = policy.Layer{Mode: policy.ModeOff}
	ran := false
	checks := []Check{
		mailCheck{"off", func(context.Context) verdict.Result { ran = true; return verdict.Result{} }},
		mailCheck{"boom", func(context.Context) verdict.Result { panic("kaboom") }},
	}
	tx := newTxn()
	NewRunner(checks, sitePolicy(pol), time.Second).Mail(context.Background(), tx)
	if ran {
		t.Fatal("disabled check ran")
	}
	if _, ok := tx.Report.Result("off"); ok {
		t.Fatal("disabled check has a result")
	}
	if res, ok := tx.Report.Result("boom"); !ok || res.Err == nil {
		t.Fatalf("panic not turned into an error: %+v", res)
	}

	slow := []Check{mailCheck{"slow", func(ctx context.Context) verdict.Result {
		<-ctx.Done()
		return verdict.Result{}
	}}}
	tx = newTxn()
	NewRunner(slow, sitePolicy(pol), 10*time.Millisecond).Mail(context.Background(), tx)
	if res, ok := tx.Report.Result("slow"); !ok || res.Err == nil {
		t.Fatalf("deadline not reported: %+v", res)
	}
}

// observer is a DataChecker that also watches the decision.
type observer struct {
	name string
	sym  verdict.Symbol
	saw  *policy.Decision
}

func (o observer) Name() string { return o.name }
func (o observer) CheckData(context.Context, *Txn, *Message) verdict.Result {
	return verdict.Result{Symbols: []verdict.Symbol{o.sym}}
}
func (o observer) Decided(_ context.Context, _ *Txn, _ *Message, results []verdict.Result, dec policy.Decision) string {
	*o.saw = dec
	if len(results) != 1 || results[0].Check != o.name {
		return "bad"
	}
	return "ham"
}

// TestRunnerObservers: a DataObserver sees the decision over all results
// after it is made, and its answer lands in Decision.Autolearn; a layer
// switched off is neither run nor asked.
func TestRunnerObservers(t *testing.T) {
	var saw policy.Decision
	o := observer{name: "obs", sym: verdict.Symbol{Name: "X", Score: 6}, saw: &saw}
	pol := policy.Default()
	dec := NewRunner([]Check{o}, sitePolicy(pol), time.Second).Data(context.Background(), newTxn(), &Message{})
	if dec.Autolearn != "ham" || saw.Score != 6 || saw.Action != verdict.Tag {
		t.Fatalf("decision %+v, observer saw %+v", dec, saw)
	}
	off := policy.Default()
	off.Layers = map[string]policy.Layer{"obs": {Mode: policy.ModeOff}}
	saw = policy.Decision{}
	dec = NewRunner([]Check{o}, sitePolicy(off), time.Second).Data(context.Background(), newTxn(), &Message{})
	if dec.Autolearn != "no" || saw.Action != verdict.NoOpinion || saw.Score != 0 {
		t.Fatalf("layer off: decision %+v, observer saw %+v", dec, saw)
	}
}
