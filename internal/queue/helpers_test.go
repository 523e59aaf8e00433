package queue

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"moat.dev/moat/internal/verdict"
)

var (
	ok250   = verdict.Reply{Code: 250, Enhanced: [3]int{2, 0, 0}, Text: "ok"}
	temp451 = verdict.Reply{Code: 451, Enhanced: [3]int{4, 4, 1}, Text: "try later"}
	perm550 = verdict.Reply{Code: 550, Enhanced: [3]int{5, 1, 1}, Text: "no such user"}
)

func testConfig(t *testing.T) Config {
	cfg := DefaultConfig()
	cfg.SpoolDir = filepath.Join(t.TempDir(), "spool")
	cfg.MinBackoff = Duration(20 * time.Millisecond)
	cfg.MaxBackoff = Duration(80 * time.Millisecond)
	cfg.Jitter = 0
	cfg.MaxLifetime = Duration(time.Hour)
	cfg.DelayWarning = 0
	cfg.ShutdownGrace = Duration(5 * time.Second)
	cfg.Hostname = "mx.moat.test"
	return cfg
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// attempt is what the recording deliverer saw.
type attempt struct {
	Env    Envelope
	Domain string
	Rcpts  []string
	Body   string
	At     time.Time
}

// recorder is a Deliverer that records attempts and answers with fn.
type recorder struct {
	mu       sync.Mutex
	attempts []attempt
	fn       func(a attempt) []Result
	changed  chan struct{}
}

func newRecorder(fn func(a attempt) []Result) *recorder {
	return &recorder{fn: fn, changed: make(chan struct{}, 1)}
}

func (r *recorder) Deliver(ctx context.Context, d *Delivery) []Result {
	rc, err := d.Open()
	if err != nil {
		panic(fmt.Sprintf("open %s: %v", d.Env.ID, err))
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		panic(err)
	}
	a := attempt{Env: *cloneEnv(d.Env), Domain: d.Domain, Rcpts: append([]string(nil), d.Rcpts...), Body: string(b), At: time.Now()}
	res := r.fn(a)
	r.mu.Lock()
	r.attempts = append(r.attempts, a)
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
	return res
}

func (r *recorder) snapshot() []attempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]attempt(nil), r.attempts...)
}

// waitFor polls cond until it holds; it fails the test after a generous
// bound (a hang, not a timing assertion).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func reply(a attempt, rep verdict.Reply) []Result {
	out := make([]Result, len(a.Rcpts))
	for i, r := range a.Rcpts {
		out[i] = Result{Rcpt: r, Reply: rep, Host: "backend.test", Permanent: rep.Code >= 500}
	}
	return out
}

// running opens a queue and runs it until the test ends (or stop is called).
type running struct {
	*Queue
	stop func()
}

func start(t *testing.T, cfg Config, d Deliverer, opts ...func(*Queue)) *running {
	t.Helper()
	q, err := Open(cfg, d, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range opts {
		o(q)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			q.Close()
		})
	}
	t.Cleanup(stop)
	return &running{q, stop}
}

func commit(t *testing.T, q *Queue, from string, body string, rcpts ...string) string {
	t.Helper()
	d, err := q.NewDraft()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(d, body); err != nil {
		t.Fatal(err)
	}
	env := &Envelope{From: from, Client: ClientInfo{IP: "192.0.2.1", Helo: "client.test"}}
	for _, r := range rcpts {
		_, dom, _ := strings.Cut(r, "@")
		env.Rcpts = append(env.Rcpts, RcptState{Addr: r, Domain: dom})
	}
	if err := d.Commit(env); err != nil {
		t.Fatal(err)
	}
	return d.ID()
}

// files lists a spool sub-directory's file names, sorted.
func files(t *testing.T, cfg Config, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(cfg.SpoolDir, dir))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

const testMsg = "From: Alice <alice@sender.test>\r\nTo: bob@a.test\r\nSubject: hello there\r\nMessage-ID: <m1@sender.test>\r\n\r\nHi Bob.\r\n"
