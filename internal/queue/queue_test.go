package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"gopkg.in/yaml.v3"
)

func TestIDs(t *testing.T) {
	seen := map[string]bool{}
	prev := ""
	now := time.Now()
	for i := range 10000 {
		id := newID(now.Add(time.Duration(i/100) * time.Millisecond))
		if !ValidID(id) {
			t.Fatalf("invalid id %q", id)
		}
		if seen[id] || id <= prev {
			t.Fatalf("id %q not unique/increasing after %q", id, prev)
		}
		seen[id], prev = true, id
	}
	for _, bad := range []string{"", "../../etc/passwd", "0123456789abcdef", "0123456789ABCDEI", "0123456789ABCDEF0", "0123456789ABCDE/"} {
		if ValidID(bad) {
			t.Errorf("ValidID(%q) = true", bad)
		}
	}
}

func TestConfig(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	src := "spool_dir: /var/spool/moat\nworkers: 8\nmin_backoff: 30s\nmax_backoff: 2h\nmax_lifetime: 72h\ndelay_warning: 0s\n"
	if err := yaml.Unmarshal([]byte(src), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.MinBackoff.D() != 30*time.Second || cfg.MaxBackoff.D() != 2*time.Hour || cfg.Workers != 8 || cfg.DelayWarning != 0 {
		t.Fatalf("decoded %+v", cfg)
	}
	if err := yaml.Unmarshal([]byte("min_backoff: soon\n"), &cfg); err == nil {
		t.Fatal("bad duration accepted")
	}
	cfg.MaxBackoff = Duration(time.Second)
	cfg.PerDomain = 0
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "max_backoff:") || !strings.Contains(err.Error(), "per_domain:") {
		t.Fatalf("Validate = %v, want max_backoff and per_domain named", err)
	}
}

func TestDraftCommitOpenAbort(t *testing.T) {
	cfg := testConfig(t)
	q, err := Open(cfg, nil, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()

	d, err := q.NewDraft()
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", 300<<10) // larger than the write buffer
	io.WriteString(d, testMsg[:20])
	r, err := d.Open()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(d, testMsg[20:]+big)
	b, _ := io.ReadAll(r)
	r.Close()
	if string(b) != testMsg[:20] {
		t.Fatalf("Open before more writes read %q", b)
	}
	r, _ = d.Open()
	b, _ = io.ReadAll(r)
	r.Close()
	r, _ = d.Open()
	if string(b) != testMsg+big {
		t.Fatalf("Open read %d bytes, want %d", len(b), len(testMsg+big))
	}
	id := d.ID()
	env := &Envelope{From: "alice@sender.test", Rcpts: []RcptState{{Addr: "bob@a.test", Domain: "a.test"}}}
	if err := d.Commit(env); err != nil {
		t.Fatal(err)
	}
	// A reader opened before Commit still reads the whole message.
	b, _ = io.ReadAll(r)
	r.Close()
	if string(b) != testMsg+big {
		t.Fatalf("reader across Commit read %d bytes", len(b))
	}
	got, err := os.ReadFile(filepath.Join(cfg.SpoolDir, "ready", id+".eml"))
	if err != nil || !strings.HasPrefix(string(got), testMsg+big) {
		t.Fatalf("ready .eml: %v, %d bytes", err, len(got))
	}
	penv := trailerEnv(t, filepath.Join(cfg.SpoolDir, "ready", id+".eml"), id)
	if penv.Size != int64(len(testMsg+big)) || penv.Rcpts[0].Status != StatusPending || penv.Received.IsZero() {
		t.Fatalf("env %+v", penv)
	}
	if env.ID != "" {
		t.Fatal("Commit modified the caller's envelope")
	}
	if f := files(t, cfg, "tmp"); len(f) != 0 {
		t.Fatalf("tmp/ not empty after commit: %v", f)
	}
	if err := d.Commit(env); err == nil {
		t.Fatal("second Commit succeeded")
	}
	d.Abort() // no effect after Commit
	if _, err := os.Stat(filepath.Join(cfg.SpoolDir, "ready", id+".eml")); err != nil {
		t.Fatal("Abort after Commit removed the message")
	}

	// Abort removes everything.
	d2, _ := q.NewDraft()
	io.WriteString(d2, testMsg)
	d2.Abort()
	if f := files(t, cfg, "tmp"); len(f) != 0 {
		t.Fatalf("tmp/ not empty after abort: %v", f)
	}
	// An envelope without recipients is refused and leaves nothing.
	d3, _ := q.NewDraft()
	io.WriteString(d3, testMsg)
	if err := d3.Commit(&Envelope{From: "a@b"}); err == nil {
		t.Fatal("commit without recipients succeeded")
	}
	if f := files(t, cfg, "tmp"); len(f) != 0 {
		t.Fatalf("tmp/ not empty after failed commit: %v", f)
	}
	if f := files(t, cfg, "ready"); len(f) != 1 {
		t.Fatalf("ready/ = %v, want the one committed message", f)
	}
	if s, err := q.Show(id); err != nil || s.Pending() != 1 {
		t.Fatalf("Show = %+v, %v", s, err)
	}
}

func TestCommitFsyncFailureLeavesNothing(t *testing.T) {
	cfg := testConfig(t)
	q, err := Open(cfg, nil, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	q.syncDirHook = func(string) error { return errors.New("EIO") }
	d, _ := q.NewDraft()
	io.WriteString(d, testMsg)
	if err := d.Commit(&Envelope{From: "a@b.test", Rcpts: []RcptState{{Addr: "bob@a.test", Domain: "a.test"}}}); err == nil {
		t.Fatal("Commit succeeded although the directory fsync failed")
	}
	for _, dir := range []string{"ready", "tmp"} {
		if f := files(t, cfg, dir); len(f) != 0 {
			t.Fatalf("%s/ = %v after failed commit", dir, f)
		}
	}
	if len(q.List(Filter{})) != 0 {
		t.Fatal("failed commit is scheduled")
	}
}

func TestDeliverImmediatelyAndRemove(t *testing.T) {
	cfg := testConfig(t)
	cfg.MinBackoff = Duration(time.Hour) // any retry would hang the test
	cfg.MaxBackoff = cfg.MinBackoff
	rec := newRecorder(func(a attempt) []Result { return reply(a, ok250) })
	reg := prometheus.NewRegistry()
	q, err := Open(cfg, rec, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	r := &running{Queue: q}
	go q.Run(t.Context())
	id := commit(t, r.Queue, "alice@sender.test", testMsg, "bob@a.test")
	waitFor(t, "delivery", func() bool { return len(q.List(Filter{})) == 0 })
	at := rec.snapshot()
	if len(at) != 1 || at[0].Env.ID != id || at[0].Body != testMsg || at[0].Domain != "a.test" {
		t.Fatalf("attempts %+v", at)
	}
	waitFor(t, "files removed", func() bool { return len(files(t, cfg, "ready")) == 0 })
	if v := val(q.m.deliveries.WithLabelValues("delivered")); v != 1 {
		t.Fatalf("delivered counter = %v", v)
	}
	mfs, err := reg.Gather()
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, n := range []string{"moat_queue_messages", "moat_queue_recipients", "moat_queue_oldest_message_age_seconds",
		"moat_queue_deliveries_total", "moat_queue_dsn_total", "moat_queue_commit_duration_seconds", "moat_queue_fsync_batch_size"} {
		if !names[n] {
			t.Errorf("metric %s not exported (%v)", n, err)
		}
	}
}

func TestRestartResumes(t *testing.T) {
	cfg := testConfig(t)
	cfg.MinBackoff = Duration(time.Hour) // first run: one attempt each
	cfg.MaxBackoff = cfg.MinBackoff
	fail := newRecorder(func(a attempt) []Result { return reply(a, temp451) })
	r1 := start(t, cfg, fail)
	var ids []string
	for i := range 5 {
		ids = append(ids, commit(t, r1.Queue, "alice@sender.test", fmt.Sprintf("Subject: %d\r\n\r\nbody %d\r\n", i, i), "bob@a.test", "carol@b.test"))
	}
	waitFor(t, "first attempts", func() bool { return len(fail.snapshot()) == 10 })
	waitFor(t, "state persisted", func() bool {
		for _, s := range r1.List(Filter{}) {
			for _, rc := range s.Rcpts {
				if rc.Attempts != 1 {
					return false
				}
			}
		}
		return true
	})
	r1.stop()
	if f := files(t, cfg, "ready"); len(f) != 10 {
		t.Fatalf("ready/ after stop: %v", f)
	}
	// Each env on disk records the failed attempt.
	c := NewClient(cfg.SpoolDir)
	list, err := c.List(Filter{})
	if err != nil || len(list) != 5 {
		t.Fatalf("client list: %d, %v", len(list), err)
	}
	for _, s := range list {
		if s.Rcpts[0].Attempts != 1 || !strings.HasPrefix(s.Rcpts[0].LastReply, "451 4.4.1") || s.NextAttempt.IsZero() {
			t.Fatalf("persisted state %+v", s.Rcpts[0])
		}
	}

	cfg.MinBackoff = Duration(time.Millisecond)
	ok := newRecorder(func(a attempt) []Result { return reply(a, ok250) })
	r2 := start(t, cfg, ok)
	// Retry now: the persisted next attempt is an hour away.
	if n := r2.RetryDomain("a.test"); n != 5 {
		t.Fatalf("RetryDomain = %d", n)
	}
	if n := r2.RetryDomain("b.test"); n != 5 {
		t.Fatalf("RetryDomain = %d", n)
	}
	waitFor(t, "all delivered", func() bool { return len(r2.List(Filter{})) == 0 })
	got := map[string]int{}
	for _, a := range ok.snapshot() {
		got[a.Env.ID] += len(a.Rcpts)
	}
	for _, id := range ids {
		if got[id] != 2 {
			t.Fatalf("message %s: %d recipients delivered after restart", id, got[id])
		}
	}
	r2.stop()
	if f := files(t, cfg, "ready"); len(f) != 0 {
		t.Fatalf("ready/ after delivery: %v", f)
	}
}

func TestRecovery(t *testing.T) {
	cfg := testConfig(t)
	q, err := Open(cfg, nil, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	good := commit(t, q, "a@s.test", testMsg, "bob@a.test")
	held := commit(t, q, "a@s.test", testMsg, "bob@a.test")
	if err := q.Hold(held); err != nil {
		t.Fatal(err)
	}
	q.Close()

	sp := cfg.SpoolDir
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(sp, name), []byte(data), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	oldTmp, newTmp := "tmp/"+newID(time.Now())+".eml", "tmp/"+newID(time.Now())+".eml"
	write(oldTmp, "old draft")
	write(newTmp, "current draft")
	old := time.Now().Add(-2 * time.Minute)
	os.Chtimes(filepath.Join(sp, oldTmp), old, old)
	orphan := newID(time.Now())
	write("ready/"+orphan+".eml", "uncommitted")
	bad := newID(time.Now())
	write("ready/"+bad+".eml", testMsg)
	write("ready/"+bad+".env", `{"id":"`+bad+`","rcpts":[{"addr":"x@y","status":"bogus"}]`)
	noBody := newID(time.Now())
	write("ready/"+noBody+".env", `{}`)
	write("ready/stray.txt", "?")
	// A hold interrupted between its renames: .eml already in hold/, the
	// later .env still in ready/.
	moved := commitOffline(t, cfg)
	menv := trailerEnv(t, filepath.Join(sp, "ready", moved+".eml"), moved)
	menv.Rcpts[0].Attempts = 1
	mb, _ := json.Marshal(menv)
	write("ready/"+moved+".env", string(mb))
	os.Rename(filepath.Join(sp, "ready", moved+".eml"), filepath.Join(sp, "hold", moved+".eml"))

	q, err = Open(cfg, nil, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if f := files(t, cfg, "tmp"); !slices.Equal(f, []string{filepath.Base(newTmp)}) {
		t.Errorf("tmp/ = %v, want only the recent draft", f)
	}
	wantCorrupt := []string{bad + ".eml", bad + ".env", noBody + ".env", "stray.txt"}
	slices.Sort(wantCorrupt)
	if f := files(t, cfg, "corrupt"); !slices.Equal(f, wantCorrupt) {
		t.Errorf("corrupt/ = %v, want %v", f, wantCorrupt)
	}
	wantReady := []string{good + ".eml", moved + ".eml", moved + ".env"}
	slices.Sort(wantReady)
	if f := files(t, cfg, "ready"); !slices.Equal(f, wantReady) {
		t.Errorf("ready/ = %v, want %v", f, wantReady)
	}
	list := q.List(Filter{})
	if len(list) != 3 {
		t.Fatalf("recovered %d messages, want 3", len(list))
	}
	if s, _ := q.Show(held); !s.Held {
		t.Error("held message not held after restart")
	}
	if l := q.List(Filter{HeldOnly: true}); len(l) != 1 || l[0].ID != held {
		t.Errorf("held list %v", l)
	}
}

// commitOffline commits one message with a short-lived queue.
func commitOffline(t *testing.T, cfg Config) string {
	q, err := Open(cfg, nil, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	return commit(t, q, "a@s.test", testMsg, "bob@a.test")
}

func TestBackoffFunction(t *testing.T) {
	cfg := testConfig(t)
	q := &Queue{cfg: cfg}
	cfg.MinBackoff, cfg.MaxBackoff = Duration(time.Minute), Duration(time.Hour)
	q.cfg = cfg
	want := []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 16 * time.Minute, 32 * time.Minute, time.Hour, time.Hour}
	for i, w := range want {
		if got := q.backoff(i + 1); got != w {
			t.Errorf("backoff(%d) = %v, want %v", i+1, got, w)
		}
	}
	if got := q.backoff(1000); got != time.Hour {
		t.Errorf("backoff(1000) = %v", got)
	}
	q.cfg.Jitter = 0.2
	for range 100 {
		if got := q.backoff(3); got < 192*time.Second || got > 288*time.Second {
			t.Fatalf("jittered backoff(3) = %v", got)
		}
	}
}

func TestBackoffGrowsThenExpiresWithOneDSN(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxLifetime = Duration(300 * time.Millisecond)
	rec := newRecorder(func(a attempt) []Result {
		if a.Env.IsDSN {
			return reply(a, ok250)
		}
		return reply(a, temp451)
	})
	r := start(t, cfg, rec)
	id := commit(t, r.Queue, "alice@sender.test", testMsg, "bob@a.test")
	waitFor(t, "expiry", func() bool { return len(r.List(Filter{})) == 0 })
	var orig, dsns []attempt
	for _, a := range rec.snapshot() {
		if a.Env.IsDSN {
			dsns = append(dsns, a)
		} else {
			orig = append(orig, a)
		}
	}
	if len(orig) < 4 {
		t.Fatalf("%d attempts before expiry", len(orig))
	}
	// Each attempt's envelope shows the wait chosen after the previous one.
	expiry := orig[0].Env.Received.Add(cfg.MaxLifetime.D())
	for k := 1; k < len(orig); k++ {
		rc := orig[k].Env.Rcpts[0]
		if rc.Attempts != k {
			t.Fatalf("attempt %d: Attempts = %d", k+1, rc.Attempts)
		}
		want := min(20*time.Millisecond<<(k-1), 80*time.Millisecond)
		if got := rc.Next.Sub(rc.LastAttempt); got != want && !rc.Next.Equal(expiry) {
			t.Errorf("after failure %d: wait %v, want %v", k, got, want)
		}
	}
	if len(dsns) != 1 {
		t.Fatalf("%d DSNs, want exactly 1", len(dsns))
	}
	d := dsns[0]
	if d.Env.From != "" || d.Rcpts[0] != "alice@sender.test" || d.Domain != "" {
		t.Fatalf("DSN envelope from=%q rcpts=%v domain=%q", d.Env.From, d.Rcpts, d.Domain)
	}
	rep := parseDSN(t, d.Body)
	if len(rep.rcpts) != 1 || rep.rcpts[0].Get("Action") != "failed" || rep.rcpts[0].Get("Status") != "4.4.7" ||
		!strings.Contains(rep.rcpts[0].Get("Diagnostic-Code"), "451 4.4.1") {
		t.Fatalf("DSN recipient fields %v", rep.rcpts)
	}
	if rep.msg.Get("X-Moat-Queue-Id") != id {
		t.Fatalf("DSN per-message fields %v", rep.msg)
	}
	if v := val(r.m.deliveries.WithLabelValues("expired")); v != 1 {
		t.Fatalf("expired counter %v", v)
	}
}

func TestPermanentFailureOneDSN(t *testing.T) {
	cfg := testConfig(t)
	rec := newRecorder(func(a attempt) []Result {
		var out []Result
		for _, rc := range a.Rcpts {
			if strings.HasPrefix(rc, "ok") || a.Env.IsDSN {
				out = append(out, Result{Rcpt: rc, Reply: ok250, Host: "mx.a.test"})
			} else {
				out = append(out, Result{Rcpt: rc, Reply: perm550, Host: "mx.a.test", Permanent: true})
			}
		}
		return out
	})
	r := start(t, cfg, rec)
	id := commit(t, r.Queue, "alice@sender.test", testMsg, "bad1@a.test", "ok@a.test", "bad2@b.test")
	waitFor(t, "done", func() bool { return len(r.List(Filter{})) == 0 })
	var dsns []attempt
	for _, a := range rec.snapshot() {
		if a.Env.IsDSN {
			dsns = append(dsns, a)
		}
	}
	if len(dsns) != 1 {
		t.Fatalf("%d DSNs, want 1 for both failed recipients", len(dsns))
	}
	rep := parseDSN(t, dsns[0].Body)
	if rep.msg.Get("Reporting-MTA") != "dns; mx.moat.test" || rep.msg.Get("Arrival-Date") == "" || rep.msg.Get("X-Moat-Queue-Id") != id {
		t.Fatalf("per-message fields %v", rep.msg)
	}
	var got []string
	for _, f := range rep.rcpts {
		got = append(got, f.Get("Final-Recipient"))
		if f.Get("Action") != "failed" || f.Get("Status") != "5.1.1" || f.Get("Remote-MTA") != "dns; mx.a.test" ||
			f.Get("Diagnostic-Code") != "smtp; 550 5.1.1 no such user" {
			t.Errorf("recipient fields %v", f)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"rfc822; bad1@a.test", "rfc822; bad2@b.test"}) {
		t.Fatalf("Final-Recipient %v", got)
	}
	if !strings.Contains(rep.headers, "Subject: hello there\r\n") || strings.Contains(rep.headers, "Hi Bob") {
		t.Fatalf("text/rfc822-headers part %q", rep.headers)
	}
	if !strings.Contains(rep.human, "bad1@a.test") {
		t.Fatalf("human part %q", rep.human)
	}
	if v := val(r.m.dsns.WithLabelValues("failed")); v != 1 {
		t.Fatalf("dsn counter %v", v)
	}
}

func TestNoDSNForNullSenderOrDSN(t *testing.T) {
	for _, tc := range []struct {
		name  string
		from  string
		isDSN bool
	}{{"null sender", "", false}, {"bounce of a bounce", "mailer-daemon@x.test", true}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.MaxLifetime = Duration(50 * time.Millisecond)
			cfg.DelayWarning = Duration(time.Millisecond)
			var n atomic.Int32
			rec := newRecorder(func(a attempt) []Result {
				n.Add(1)
				if strings.HasPrefix(a.Rcpts[0], "perm") {
					return reply(a, perm550)
				}
				return reply(a, temp451)
			})
			r := start(t, cfg, rec)
			for _, rc := range []string{"perm@a.test", "temp@b.test"} {
				d, _ := r.NewDraft()
				io.WriteString(d, testMsg)
				env := &Envelope{From: tc.from, IsDSN: tc.isDSN, Rcpts: []RcptState{{Addr: rc, Domain: strings.SplitN(rc, "@", 2)[1]}}}
				if err := d.Commit(env); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, "both final", func() bool { return len(r.List(Filter{})) == 0 })
			for _, a := range rec.snapshot() {
				if a.Env.IsDSN && a.Env.From == "" && a.Domain == "" {
					t.Fatalf("a DSN was generated: %+v", a.Env)
				}
			}
			if v := val(r.m.dsns.WithLabelValues("failed")) + val(r.m.dsns.WithLabelValues("delayed")); v != 0 {
				t.Fatalf("dsn counter %v", v)
			}
		})
	}
}

func TestSplitPerDomain(t *testing.T) {
	cfg := testConfig(t)
	var calls atomic.Int32
	rec := newRecorder(func(a attempt) []Result {
		calls.Add(1)
		if a.Domain == "x.test" && a.Env.Rcpts[0].Attempts == 0 {
			return reply(a, temp451) // x fails once
		}
		return reply(a, ok250)
	})
	r := start(t, cfg, rec)
	commit(t, r.Queue, "alice@sender.test", testMsg, "a@x.test", "c@y.test", "b@x.test")
	waitFor(t, "delivered", func() bool { return len(r.List(Filter{})) == 0 })
	at := rec.snapshot()
	if len(at) != 3 {
		t.Fatalf("%d attempts, want 3 (x, y, x again)", len(at))
	}
	byDomain := map[string][][]string{}
	for _, a := range at {
		byDomain[a.Domain] = append(byDomain[a.Domain], a.Rcpts)
	}
	if len(byDomain["y.test"]) != 1 || !slices.Equal(byDomain["y.test"][0], []string{"c@y.test"}) {
		t.Fatalf("y.test deliveries %v", byDomain["y.test"])
	}
	if len(byDomain["x.test"]) != 2 || !slices.Equal(byDomain["x.test"][0], []string{"a@x.test", "b@x.test"}) ||
		!slices.Equal(byDomain["x.test"][1], []string{"a@x.test", "b@x.test"}) {
		t.Fatalf("x.test deliveries %v", byDomain["x.test"])
	}
}

func TestPerDomainLimit(t *testing.T) {
	cfg := testConfig(t)
	cfg.Workers = 8
	cfg.PerDomain = 2
	var mu sync.Mutex
	cur, peak := map[string]int{}, map[string]int{}
	release := make(chan struct{})
	rec := newRecorder(func(a attempt) []Result {
		mu.Lock()
		cur[a.Domain]++
		peak[a.Domain] = max(peak[a.Domain], cur[a.Domain])
		mu.Unlock()
		<-release
		mu.Lock()
		cur[a.Domain]--
		mu.Unlock()
		return reply(a, ok250)
	})
	r := start(t, cfg, rec)
	for i := range 6 {
		commit(t, r.Queue, "s@s.test", testMsg, fmt.Sprintf("u%d@busy.test", i))
	}
	commit(t, r.Queue, "s@s.test", testMsg, "u@other.test")
	waitFor(t, "limits reached", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return cur["busy.test"] == 2 && cur["other.test"] == 1
	})
	close(release)
	waitFor(t, "all delivered", func() bool { return len(r.List(Filter{})) == 0 })
	if peak["busy.test"] != 2 {
		t.Fatalf("peak concurrency for busy.test = %d, want 2", peak["busy.test"])
	}
}

func TestDelayWarningOnce(t *testing.T) {
	cfg := testConfig(t)
	cfg.DelayWarning = Duration(4 * time.Hour)
	cfg.MaxLifetime = Duration(5 * 24 * time.Hour)
	rec := newRecorder(func(a attempt) []Result {
		if a.Env.IsDSN {
			return reply(a, ok250)
		}
		return reply(a, temp451)
	})
	r := start(t, cfg, rec)
	d, _ := r.NewDraft()
	io.WriteString(d, testMsg)
	// Received five hours ago (e.g. released from quarantine).
	env := &Envelope{From: "alice@sender.test", Received: time.Now().Add(-5 * time.Hour),
		Rcpts: []RcptState{{Addr: "bob@a.test", Domain: "a.test"}, {Addr: "carol@a.test", Domain: "a.test"}}}
	if err := d.Commit(env); err != nil {
		t.Fatal(err)
	}
	id := d.ID()
	waitFor(t, "several attempts", func() bool {
		n := 0
		for _, a := range rec.snapshot() {
			if !a.Env.IsDSN {
				n++
			}
		}
		return n >= 4
	})
	var dsns []attempt
	for _, a := range rec.snapshot() {
		if a.Env.IsDSN {
			dsns = append(dsns, a)
		}
	}
	if len(dsns) != 1 {
		t.Fatalf("%d delay DSNs, want 1", len(dsns))
	}
	rep := parseDSN(t, dsns[0].Body)
	if len(rep.rcpts) != 2 || rep.rcpts[0].Get("Action") != "delayed" || rep.rcpts[0].Get("Status") != "4.4.1" || rep.rcpts[0].Get("Will-Retry-Until") == "" {
		t.Fatalf("delay DSN fields %v", rep.rcpts)
	}
	s, err := NewClient(cfg.SpoolDir).Show(id)
	if err != nil || !s.DelayWarned {
		t.Fatalf("DelayWarned not persisted: %+v %v", s, err)
	}
}

func TestConcurrentCommits(t *testing.T) {
	cfg := testConfig(t)
	q, err := Open(cfg, nil, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 100
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			d, err := q.NewDraft()
			if err != nil {
				t.Error(err)
				return
			}
			fmt.Fprintf(d, "Subject: %d\r\n\r\n%s\r\n", i, strings.Repeat("y", i*100))
			if err := d.Commit(&Envelope{From: "s@s.test", Rcpts: []RcptState{{Addr: fmt.Sprintf("u%d@a.test", i), Domain: "a.test"}}}); err != nil {
				t.Error(err)
				return
			}
			ids[i] = d.ID()
		})
	}
	wg.Wait()
	var hm dto.Metric
	q.m.batchSize.Write(&hm)
	q.Close()
	if t.Failed() {
		return
	}
	if hm.GetHistogram().GetSampleSum() != n || hm.GetHistogram().GetSampleCount() > n {
		t.Fatalf("batch histogram: %d batches covering %v commits", hm.GetHistogram().GetSampleCount(), hm.GetHistogram().GetSampleSum())
	}
	t.Logf("%d commits in %d group commits", n, hm.GetHistogram().GetSampleCount())
	q, err = Open(cfg, nil, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	list := q.List(Filter{})
	if len(list) != n {
		t.Fatalf("%d messages after reopen, want %d", len(list), n)
	}
	for i, id := range ids {
		b, err := os.ReadFile(filepath.Join(cfg.SpoolDir, "ready", id+".eml"))
		want := fmt.Sprintf("Subject: %d\r\n\r\n%s\r\n", i, strings.Repeat("y", i*100))
		if err != nil || !strings.HasPrefix(string(b), want) {
			t.Fatalf("message %d: %v", i, err)
		}
		s, err := q.Show(id)
		if err != nil || s.Rcpts[0].Addr != fmt.Sprintf("u%d@a.test", i) || s.Size != int64(len(want)) {
			t.Fatalf("message %d: %+v %v", i, s, err)
		}
	}
}

func TestEnvelopeJSONStable(t *testing.T) {
	env := Envelope{ID: "0000000000000000", From: "a@b", Received: time.Unix(1, 0).UTC(), Rcpts: []RcptState{{Addr: "c@d", Domain: "d", Status: StatusPending}}}
	b, _ := json.Marshal(env)
	if strings.Contains(string(b), `"next"`) || strings.Contains(string(b), `"last_attempt"`) {
		t.Fatalf("zero times serialised: %s", b)
	}
	if _, err := parseEnvelope(b, env.ID); err != nil {
		t.Fatal(err)
	}
}

func val(m prometheus.Metric) float64 {
	var d dto.Metric
	m.Write(&d)
	if c := d.GetCounter(); c != nil {
		return c.GetValue()
	}
	return d.GetGauge().GetValue()
}

// histogramOf returns (group commits, commits) from the batch histogram.
func histogramOf(q *Queue) [2]float64 {
	var d dto.Metric
	q.m.batchSize.Write(&d)
	return [2]float64{float64(d.GetHistogram().GetSampleCount()), d.GetHistogram().GetSampleSum()}
}

// TestParkedBacklogDrains: a backlog for one domain waits parked behind
// per_domain; each finished delivery hands its slot to the next waiting
// message, and messages deleted or held while parked neither block the
// rest nor get delivered.
func TestParkedBacklogDrains(t *testing.T) {
	cfg := testConfig(t)
	cfg.Workers = 8
	cfg.PerDomain = 1
	var mu sync.Mutex
	cur, peak := 0, 0
	gate := make(chan struct{})
	rec := newRecorder(func(a attempt) []Result {
		mu.Lock()
		cur++
		peak = max(peak, cur)
		mu.Unlock()
		<-gate
		mu.Lock()
		cur--
		mu.Unlock()
		return reply(a, ok250)
	})
	r := start(t, cfg, rec)
	const n = 120
	ids := make([]string, n)
	for i := range n {
		ids[i] = commit(t, r.Queue, "s@s.test", testMsg, fmt.Sprintf("u%d@busy.test", i))
	}
	waitFor(t, "first delivery running", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return cur == 1
	})
	gone := map[string]bool{}
	for i := 10; i < 20; i++ {
		if err := r.Delete(ids[i]); err != nil {
			t.Fatal(err)
		}
		gone[ids[i]] = true
	}
	for i := 20; i < 30; i++ {
		if err := r.Hold(ids[i]); err != nil {
			t.Fatal(err)
		}
		gone[ids[i]] = true
	}
	close(gate)
	waitFor(t, "backlog delivered", func() bool { return len(rec.snapshot()) >= n-20 })
	waitFor(t, "queue holds only the held messages", func() bool { return len(r.List(Filter{})) == 10 })
	seen := map[string]int{}
	for _, a := range rec.snapshot() {
		seen[a.Env.ID]++
	}
	for _, id := range ids {
		switch {
		case gone[id] && seen[id] > 0 && id != ids[0]:
			t.Errorf("%s delivered after delete/hold", id)
		case !gone[id] && seen[id] != 1:
			t.Errorf("%s delivered %d times", id, seen[id])
		}
	}
	if peak != 1 {
		t.Fatalf("peak concurrency %d, want 1", peak)
	}
}

// TestOwedDSNSurvivesFullDisk: when a finished message's failure DSN
// cannot be queued (the spool's fsync fails: disk full), the message is
// not removed: it stays on disk owing the DSN, which is queued on a later
// try, or after a restart; only then is the message removed.
func TestOwedDSNSurvivesFullDisk(t *testing.T) {
	cfg := testConfig(t)
	var fail atomic.Bool
	gates := make(chan chan struct{}, 2) // one per failing attempt, in order
	rec := newRecorder(func(a attempt) []Result {
		if a.Env.IsDSN {
			return reply(a, ok250)
		}
		<-<-gates
		return reply(a, perm550)
	})
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	opts := func(q *Queue) {
		q.ctlInterval = 20 * time.Millisecond
		q.now = func() time.Time { return time.Unix(0, clock.Load()) }
		q.syncDirHook = func(string) error {
			if fail.Load() {
				return errors.New("no space left on device")
			}
			return nil
		}
	}
	owed := func(q *Queue) int { q.mu.Lock(); defer q.mu.Unlock(); return len(q.owed) }
	dsnFor := func(rcpt string) bool {
		for _, a := range rec.snapshot() {
			if a.Env.IsDSN && strings.Contains(a.Body, rcpt) {
				return true
			}
		}
		return false
	}
	// fails commits id's delivery attempt (550) while the disk is full.
	failWhileFull := func(q *Queue, from, rcpt string) string {
		id := commit(t, q, from, testMsg, rcpt)
		g := make(chan struct{})
		gates <- g
		fail.Store(true)
		close(g)
		waitFor(t, "the DSN to be owed", func() bool { return owed(q) == 1 })
		if got := files(t, cfg, dirReady); !slices.Contains(got, id+".eml") || !slices.Contains(got, id+".env") {
			t.Fatalf("ready/ holds %v: the message owing a DSN was removed", got)
		}
		return id
	}

	r := start(t, cfg, rec, opts)
	id := failWhileFull(r.Queue, "alice@sender.test", "bad@a.test")
	// A restart keeps owing it; with room on the disk it is queued.
	r.stop()
	fail.Store(false)
	r = start(t, cfg, rec, opts)
	waitFor(t, "the owed DSN after a restart", func() bool { return dsnFor("bad@a.test") })
	waitFor(t, "the message to be removed", func() bool {
		return owed(r.Queue) == 0 && !slices.Contains(files(t, cfg, dirReady), id+".eml")
	})

	// Without a restart: retried once owedRetry has passed.
	id = failWhileFull(r.Queue, "carol@sender.test", "bad2@a.test")
	fail.Store(false)
	time.Sleep(100 * time.Millisecond) // some control ticks: not yet due
	if dsnFor("bad2@a.test") {
		t.Fatal("owed DSN retried before owedRetry")
	}
	clock.Add(int64(2 * owedRetry))
	waitFor(t, "the owed DSN after owedRetry", func() bool { return dsnFor("bad2@a.test") })
	waitFor(t, "the second message to be removed", func() bool {
		return owed(r.Queue) == 0 && !slices.Contains(files(t, cfg, dirReady), id+".eml")
	})
}
