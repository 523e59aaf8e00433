package quarantine_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"moat.dev/moat/internal/quarantine"
	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/store/sqlstore"
)

// store opens another Store on e's database and directory with other
// collaborators.
func (e *env) store(t *testing.T, driver string, enq quarantine.Enqueuer, l quarantine.Learner) *quarantine.Store {
	t.Helper()
	q, err := quarantine.New(e.cfg, quarantine.Deps{DB: e.db, Driver: driver, Enqueuer: enq, Learner: l,
		Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return e.now }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

// cancelAfterEnqueue queues through next, then cancels the caller's
// context: the web user closed the tab while the release ran.
type cancelAfterEnqueue struct {
	next   quarantine.Enqueuer
	cancel context.CancelFunc
}

func (c cancelAfterEnqueue) Enqueue(env *queue.Envelope, body io.Reader) (string, error) {
	id, err := c.next.Enqueue(env, body)
	c.cancel()
	return id, err
}

func TestReleaseRecordedWhenCallerGoesAway(t *testing.T) {
	backends(t, testReleaseRecordedWhenCallerGoesAway)
}

func testReleaseRecordedWhenCallerGoesAway(t *testing.T, driver string) {
	e := newEnv(t, driver, false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	q := e.store(t, driver, cancelAfterEnqueue{e.enq, cancel}, nil)
	id := e.hold(t, quarantine.Entry{From: "x@sender.example", Rcpts: []string{"bob@a.example"}}, msg("s", "b"))
	if _, err := q.Release(ctx, id+"-1", quarantine.ReleaseOptions{By: "bob"}); err != nil {
		t.Fatal(err)
	}
	got, _ := e.q.Get(context.Background(), id+"-1")
	if got.State != quarantine.Released {
		t.Errorf("state %s after a release whose caller went away, want released (the mail was queued)", got.State)
	}
	if _, err := os.Stat(e.cfg.Dir + "/" + id + ".eml"); !os.IsNotExist(err) {
		t.Error("file kept after the only copy was released")
	}
}

func TestInterruptedReleaseIsHeldAgain(t *testing.T) { backends(t, testInterruptedReleaseIsHeldAgain) }

func testInterruptedReleaseIsHeldAgain(t *testing.T, driver string) {
	e := newEnv(t, driver, false)
	ctx := context.Background()
	id := e.hold(t, quarantine.Entry{From: "x@sender.example", Rcpts: []string{"bob@a.example"}}, msg("s", "b"))
	// The process died between the claim and the end of the release.
	if _, err := e.db.Exec(sqlstore.Rebind(driver, `UPDATE q_entries SET state='releasing', state_by='bob', state_at=? WHERE id=?`),
		e.now.UnixMilli(), id+"-1"); err != nil {
		t.Fatal(err)
	}
	// A release in progress is left alone...
	e.now = e.now.Add(time.Minute)
	if _, err := e.q.Expire(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.q.Get(ctx, id+"-1"); got.State != quarantine.Releasing {
		t.Fatalf("state %s one minute after the claim, want releasing", got.State)
	}
	// ...a stale one is held again, audited, and can be released.
	e.now = e.now.Add(time.Hour)
	if _, err := e.q.Expire(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.q.Get(ctx, id+"-1"); got.State != quarantine.Held {
		t.Fatalf("state %s after an interrupted release, want held", got.State)
	}
	au, _ := e.q.Audit(ctx, id+"-1")
	if len(au) == 0 || au[len(au)-1].Action != "release_interrupted" {
		t.Errorf("audit: %+v", au)
	}
	if _, err := e.q.Release(ctx, id+"-1", quarantine.ReleaseOptions{By: "bob"}); err != nil {
		t.Fatalf("release after recovery: %v", err)
	}
	if n := e.enq.Count(); n != 1 {
		t.Errorf("%d messages delivered, want 1", n)
	}
	// A stuck copy past its retention expires as well.
	id2 := e.hold(t, quarantine.Entry{Rcpts: []string{"bob@a.example"}}, msg("s", "b"))
	e.db.Exec(sqlstore.Rebind(driver, `UPDATE q_entries SET state='releasing', state_at=? WHERE id=?`), e.now.UnixMilli(), id2+"-1")
	e.now = e.now.Add(31 * 24 * time.Hour)
	if n, err := e.q.Expire(ctx); err != nil || n != 1 {
		t.Errorf("Expire = %d, %v; want 1", n, err)
	}
	if _, err := os.Stat(e.cfg.Dir + "/" + id2 + ".eml"); !os.IsNotExist(err) {
		t.Error("file of the stuck, expired copy kept")
	}
}

// stateLearner records the state of the copy while it learns.
type stateLearner struct {
	q    func() *quarantine.Store
	id   string
	seen *quarantine.State
	err  error
}

func (l stateLearner) Learn(ctx context.Context, raw []byte, spam bool, user string) error {
	if g, err := l.q().Get(ctx, l.id); err == nil {
		*l.seen = g.State
	}
	return l.err
}

func (l stateLearner) Score(context.Context, []byte, string) (float64, error) { return 0, nil }

func TestReportSpamClaimsBeforeLearning(t *testing.T) {
	backends(t, testReportSpamClaimsBeforeLearning)
}

func testReportSpamClaimsBeforeLearning(t *testing.T, driver string) {
	e := newEnv(t, driver, false)
	ctx := context.Background()
	id := e.hold(t, quarantine.Entry{From: "x@sender.example", Rcpts: []string{"bob@a.example"}}, msg("s", "b"))
	var seen quarantine.State
	fail := e.store(t, driver, nil, stateLearner{q: func() *quarantine.Store { return e.q }, id: id + "-1", seen: &seen, err: errors.New("db down")})
	if err := fail.ReportSpam(ctx, id+"-1", "bob"); err == nil {
		t.Fatal("report succeeded although learning failed")
	}
	if seen != quarantine.Releasing {
		t.Errorf("state while learning: %q, want releasing (claimed, so a concurrent release cannot run)", seen)
	}
	if got, _ := e.q.Get(ctx, id+"-1"); got.State != quarantine.Held {
		t.Errorf("state %s after failed learning, want held", got.State)
	}
	ok := e.store(t, driver, nil, stateLearner{q: func() *quarantine.Store { return e.q }, id: id + "-1", seen: &seen})
	if err := ok.ReportSpam(ctx, id+"-1", "bob"); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.q.Get(ctx, id+"-1"); got.State != quarantine.Deleted {
		t.Errorf("state %s after report, want deleted", got.State)
	}
	au, _ := e.q.Audit(ctx, id+"-1")
	if len(au) != 2 || au[1].Action != "report_spam" || au[1].By != "bob" {
		t.Errorf("audit: %+v", au)
	}
	if _, err := os.Stat(e.cfg.Dir + "/" + id + ".eml"); !os.IsNotExist(err) {
		t.Error("file kept after report")
	}
}

func TestOrphanFileRemovedWithItsRows(t *testing.T) { backends(t, testOrphanFileRemovedWithItsRows) }

func testOrphanFileRemovedWithItsRows(t *testing.T, driver string) {
	e := newEnv(t, driver, false)
	ctx := context.Background()
	raw := msg("s", "b")
	id := e.hold(t, quarantine.Entry{Rcpts: []string{"bob@a.example"}}, raw)
	if err := e.q.Delete(ctx, id+"-1", "bob"); err != nil {
		t.Fatal(err)
	}
	// The removal failed (read-only or full disk): the file is still there.
	path := e.cfg.Dir + "/" + id + ".eml"
	if err := os.WriteFile(path, []byte(raw), 0o640); err != nil {
		t.Fatal(err)
	}
	e.now = e.now.Add(61 * 24 * time.Hour)
	if _, err := e.q.Expire(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Error("orphaned file kept after its rows were forgotten")
	}
}

func TestListUnknownState(t *testing.T) {
	e := newEnv(t, "sqlite", false)
	if _, _, err := e.q.List(context.Background(), quarantine.Filter{State: "bogus"}); err == nil || !strings.Contains(err.Error(), "unknown state") {
		t.Errorf("List(state bogus) = %v, want an error", err)
	}
	if _, _, err := e.q.List(context.Background(), quarantine.Filter{State: quarantine.Releasing}); err != nil {
		t.Errorf("List(state releasing) = %v", err)
	}
}
