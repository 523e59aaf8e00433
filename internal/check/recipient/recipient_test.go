package recipient

import (
	"context"
	"errors"
	"net"
	"net/smtp"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/sink"
	"moat.dev/moat/internal/verdict"
)

// memRecipients is an in-memory Recipients.
type memRecipients struct {
	mu      sync.Mutex
	modes   map[string]string
	catch   map[string]bool
	users   map[string]bool // local@domain
	queries atomic.Int32
}

func (m *memRecipients) Exists(_ context.Context, domain, local string) (bool, error) {
	m.queries.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	if domain == "broken.example" {
		return false, errors.New("database down")
	}
	return m.users[local+"@"+domain], nil
}

func (m *memRecipients) DomainMode(_ context.Context, domain string) (string, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.modes[domain], m.catch[domain], nil
}

func (m *memRecipients) add(addr string) {
	m.mu.Lock()
	m.users[addr] = true
	m.mu.Unlock()
}

// smtpCallout asks addr (a backend) with MAIL FROM:<> / RCPT TO, as the
// relay's callout does.
func smtpCallout(addr string) Callout {
	return func(ctx context.Context, domain, rcpt string) (verdict.Reply, error) {
		d := net.Dialer{Timeout: 2 * time.Second}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return verdict.Reply{}, err
		}
		c, err := smtp.NewClient(conn, "localhost")
		if err != nil {
			return verdict.Reply{}, err
		}
		defer c.Close()
		if err := c.Mail(""); err != nil {
			return replyOf(err)
		}
		if err := c.Rcpt(rcpt); err != nil {
			return replyOf(err)
		}
		c.Quit()
		return verdict.Reply{Code: 250}, nil
	}
}

func replyOf(err error) (verdict.Reply, error) {
	var te *textproto.Error
	if errors.As(err, &te) {
		return verdict.Reply{Code: te.Code, Text: te.Msg}, nil
	}
	return verdict.Reply{}, err
}

func rcpt(addr string) *pipeline.Rcpt {
	l, d, _ := strings.Cut(addr, "@")
	return &pipeline.Rcpt{Addr: pipeline.Address{Raw: addr, Local: l, Domain: d}, Domain: d, Report: &verdict.Report{}}
}

func decide(t *testing.T, chk *Check, pol *policy.Policy, addr string) policy.Decision {
	t.Helper()
	run := pipeline.NewRunner([]pipeline.Check{chk}, func(string) *policy.Policy { return pol }, 5*time.Second)
	tx := &pipeline.Txn{Conn: &pipeline.Conn{Report: &verdict.Report{}}, Report: &verdict.Report{}}
	return run.Rcpt(context.Background(), tx, rcpt(addr))
}

func TestTable(t *testing.T) {
	m := &memRecipients{
		modes: map[string]string{"t.example": "table", "c.example": "table", "any.example": "any", "broken.example": "table"},
		catch: map[string]bool{"c.example": true},
		users: map[string]bool{"alice@t.example": true, "sales@t.example": true, "a+b@t.example": true},
	}
	cfg := DefaultConfig()
	cfg.TableCacheTTL = 0
	chk, err := New(cfg, Deps{Recipients: m})
	if err != nil {
		t.Fatal(err)
	}
	pol := policy.Default()
	cases := []struct {
		addr   string
		action verdict.Action
		code   int
	}{
		{"alice@t.example", verdict.NoOpinion, 0},
		{"Alice@t.example", verdict.NoOpinion, 0},
		{"alice+news@t.example", verdict.NoOpinion, 0},
		{"a+b@t.example", verdict.NoOpinion, 0}, // a literal "+" address
		{"bob@t.example", verdict.Reject, 550},
		{"bob+alice@t.example", verdict.Reject, 550},
		{"anyone@c.example", verdict.NoOpinion, 0},
		{"anyone@any.example", verdict.NoOpinion, 0},
		{"x@broken.example", verdict.TempFail, 451},
	}
	for _, tc := range cases {
		d := decide(t, chk, pol, tc.addr)
		if d.Action != tc.action || d.Reply.Code != tc.code {
			t.Errorf("%s: %v %v, want %v %d", tc.addr, d.Action, d.Reply, tc.action, tc.code)
		}
		if tc.code == 550 && (d.Reply.Enhanced != [3]int{5, 1, 1} || d.Reply.Text != "<"+tc.addr+">: Recipient address rejected: User unknown") {
			t.Errorf("%s: reply %v", tc.addr, d.Reply)
		}
	}
	// Tables change without restart.
	m.add("bob@t.example")
	if d := decide(t, chk, pol, "bob@t.example"); d.Action != verdict.NoOpinion {
		t.Fatalf("new recipient still rejected: %v", d.Reply)
	}
	// Flag mode: unknown user scores instead of rejecting.
	pol.Layers["recipient"] = policy.Layer{Mode: policy.ModeFlag, FlagScore: 7}
	if d := decide(t, chk, pol, "nobody@t.example"); d.Action != verdict.NoOpinion || d.Score != 7 {
		t.Fatalf("flag mode: %v score %v", d.Action, d.Score)
	}
}

func TestTableCache(t *testing.T) {
	m := &memRecipients{modes: map[string]string{"t.example": "table"}, users: map[string]bool{"alice@t.example": true}}
	chk, _ := New(DefaultConfig(), Deps{Recipients: m})
	now := time.Unix(1_700_000_000, 0)
	chk.now = func() time.Time { return now }
	for i := 0; i < 3; i++ {
		if res := chk.CheckRcpt(context.Background(), nil, rcpt("alice@t.example")); res.Hard != nil {
			t.Fatal(res.Hard.Reply)
		}
	}
	if q := m.queries.Load(); q != 1 {
		t.Fatalf("%d store queries, want 1 (cached)", q)
	}
	now = now.Add(11 * time.Second)
	chk.CheckRcpt(context.Background(), nil, rcpt("alice@t.example"))
	if q := m.queries.Load(); q != 2 {
		t.Fatalf("%d store queries after expiry, want 2", q)
	}
}

func TestCalloutAgainstSink(t *testing.T) {
	backend, err := sink.Start(sink.Config{Addr: "127.0.0.1:0", NoStore: true, RejectRcpt: "^nobody@"})
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	m := &memRecipients{modes: map[string]string{"co.example": "callout"}}
	var calls atomic.Int32
	co := smtpCallout(backend.Addr())
	chk, _ := New(DefaultConfig(), Deps{Recipients: m, Callout: func(ctx context.Context, d, r string) (verdict.Reply, error) {
		calls.Add(1)
		return co(ctx, d, r)
	}})
	now := time.Unix(1_700_000_000, 0)
	chk.now = func() time.Time { return now }
	pol := policy.Default()
	if d := decide(t, chk, pol, "alice@co.example"); d.Action != verdict.NoOpinion {
		t.Fatalf("existing recipient: %v %v", d.Action, d.Reply)
	}
	if d := decide(t, chk, pol, "nobody@co.example"); d.Action != verdict.Reject || d.Reply.Code != 550 || d.Reply.Enhanced != [3]int{5, 1, 1} {
		t.Fatalf("unknown recipient: %v %v", d.Action, d.Reply)
	}
	// Cached both ways.
	decide(t, chk, pol, "alice@co.example")
	decide(t, chk, pol, "nobody@co.example")
	if c := calls.Load(); c != 2 {
		t.Fatalf("%d callouts, want 2", c)
	}
	// Negative answers expire after 3h, positive ones last.
	now = now.Add(3*time.Hour + time.Second)
	decide(t, chk, pol, "alice@co.example")
	decide(t, chk, pol, "nobody@co.example")
	if c := calls.Load(); c != 3 {
		t.Fatalf("%d callouts, want 3", c)
	}
	// Backend down: 450 4.1.1, never 550, and not cached.
	backend.Close()
	for i := 0; i < 2; i++ {
		d := decide(t, chk, pol, "carol@co.example")
		if d.Action != verdict.TempFail || d.Reply.Code != 450 || d.Reply.Enhanced != [3]int{4, 1, 1} {
			t.Fatalf("backend down: %v %v", d.Action, d.Reply)
		}
	}
	if c := calls.Load(); c != 5 {
		t.Fatalf("%d callouts, want 5 (failures not cached)", c)
	}
}

func TestCalloutTempfail(t *testing.T) {
	backend, err := sink.Start(sink.Config{Addr: "127.0.0.1:0", NoStore: true, TempFail: true})
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	m := &memRecipients{modes: map[string]string{"co.example": "callout"}}
	chk, _ := New(DefaultConfig(), Deps{Recipients: m, Callout: smtpCallout(backend.Addr())})
	d := decide(t, chk, policy.Default(), "alice@co.example")
	if d.Action != verdict.TempFail || d.Reply.Code != 450 {
		t.Fatalf("4xx backend: %v %v", d.Action, d.Reply)
	}
}

func TestBaseLocal(t *testing.T) {
	for in, want := range map[string]string{"User+Tag": "user", "a-b": "a", "+x": "+x", "plain": "plain"} {
		if got := BaseLocal(in, "+-"); got != want {
			t.Errorf("BaseLocal(%q) = %q, want %q", in, got, want)
		}
	}
}
