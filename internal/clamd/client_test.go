package clamd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"moat.dev/moat/internal/testutil/clamdtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	clamdtest.Cleanup()
	os.Exit(code)
}

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func newClient(t testing.TB, reg prometheus.Registerer, streamMax int64, addrs ...string) *Client {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Addrs = addrs
	cfg.StreamMaxLength = streamMax
	cfg.ScanTimeout = 10 * time.Second
	c, err := New(cfg, testLog(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// onlyReader hides io.Seeker.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func TestScanVerdicts(t *testing.T) {
	cd := clamdtest.Shared(t)
	for _, addr := range cd.Addrs {
		t.Run(strings.SplitN(addr, ":", 2)[0], func(t *testing.T) {
			reg := prometheus.NewRegistry()
			c := newClient(t, reg, cd.StreamMaxLength, addr)
			ctx := context.Background()
			big := bytes.Repeat([]byte("clean line of text\r\n"), 10000) // 200 KB: several chunks
			cases := []struct {
				name string
				data []byte
				sig  string
			}{
				{"clean", []byte("Subject: hi\r\n\r\nhello\r\n"), ""},
				{"empty", nil, ""},
				{"eicar", []byte(clamdtest.EICAR), clamdtest.EICARSignature},
				{"sample", []byte("Subject: x\r\n\r\nbody " + clamdtest.SampleMarker + "\r\n"), clamdtest.SampleSignature},
				{"multichunk-clean", big, ""},
				{"multichunk-infected-at-end", append(append([]byte{}, big...), clamdtest.SampleMarker...), clamdtest.SampleSignature},
			}
			for _, tc := range cases {
				res, err := c.Scan(ctx, onlyReader{bytes.NewReader(tc.data)})
				if err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				if res.Infected != (tc.sig != "") || res.Signature != tc.sig {
					t.Errorf("%s: got %+v, want signature %q", tc.name, res, tc.sig)
				}
				if res.Addr != addr || !strings.HasPrefix(res.Version, "ClamAV ") {
					t.Errorf("%s: addr %q version %q", tc.name, res.Addr, res.Version)
				}
			}
			if got := value(c.m.scans.WithLabelValues("infected")); got != 3 {
				t.Errorf("infected scans counted %v, want 3", got)
			}
			if got := value(c.m.scans.WithLabelValues("clean")); got != 3 {
				t.Errorf("clean scans counted %v, want 3", got)
			}
			if got := value(c.m.infections.WithLabelValues(clamdtest.SampleSignature)); got != 2 {
				t.Errorf("infections{%s} = %v, want 2", clamdtest.SampleSignature, got)
			}
			if got := value(c.m.up.WithLabelValues(addr)); got != 1 {
				t.Errorf("moat_clamd_up = %v", got)
			}
			var h dto.Metric
			if err := c.m.latency.Write(&h); err != nil || h.GetHistogram().GetSampleCount() != 6 {
				t.Errorf("latency histogram: %d samples, %v", h.GetHistogram().GetSampleCount(), err)
			}
			if mfs, err := reg.Gather(); err != nil || len(mfs) != 4 {
				t.Errorf("registry has %d metric families, %v", len(mfs), err)
			}
		})
	}
}

// All scans of one goroutine run on one session connection.
func TestSessionReuse(t *testing.T) {
	cd := clamdtest.Shared(t)
	c := newClient(t, nil, cd.StreamMaxLength, cd.Unix)
	in := c.inst[0]
	var first *session
	for i := 0; i < 5; i++ {
		res, err := c.Scan(context.Background(), strings.NewReader(clamdtest.EICAR))
		if err != nil || !res.Infected {
			t.Fatalf("scan %d: %+v %v", i, res, err)
		}
		in.mu.Lock()
		if len(in.idle) != 1 {
			t.Fatalf("after scan %d: %d idle sessions, want 1", i, len(in.idle))
		}
		if first == nil {
			first = in.idle[0]
		} else if in.idle[0] != first {
			t.Fatalf("scan %d used a new connection", i)
		}
		in.mu.Unlock()
	}
	if first.nextID != 6 {
		t.Fatalf("session ran %d commands, want 5", first.nextID-1)
	}
	// Concurrent scans each get a session; at most MaxIdleConns are kept.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if res, err := c.Scan(context.Background(), strings.NewReader("hello "+clamdtest.SampleMarker)); err != nil || res.Signature != clamdtest.SampleSignature {
				t.Errorf("concurrent scan: %+v %v", res, err)
			}
		}()
	}
	wg.Wait()
	in.mu.Lock()
	n := len(in.idle)
	in.mu.Unlock()
	if n < 1 || n > c.cfg.MaxIdleConns {
		t.Fatalf("%d idle sessions, want 1..%d", n, c.cfg.MaxIdleConns)
	}
}

func TestNoReuse(t *testing.T) {
	cd := clamdtest.Shared(t)
	cfg := DefaultConfig()
	cfg.Addrs, cfg.StreamMaxLength, cfg.MaxIdleConns = []string{cd.TCP}, cd.StreamMaxLength, 0
	c, err := New(cfg, testLog(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 3; i++ {
		if res, err := c.Scan(context.Background(), strings.NewReader(clamdtest.EICAR)); err != nil || !res.Infected {
			t.Fatalf("%+v %v", res, err)
		}
	}
	if len(c.inst[0].idle) != 0 {
		t.Fatal("kept a connection with max_idle_conns 0")
	}
}

func TestTooLarge(t *testing.T) {
	cd := clamdtest.Shared(t)
	limit := cd.StreamMaxLength
	c := newClient(t, nil, limit, cd.Unix)
	ctx := context.Background()
	over := bytes.Repeat([]byte("a"), int(limit)+1)
	if _, err := c.Scan(ctx, bytes.NewReader(over)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("over the limit: %v, want ErrTooLarge", err)
	}
	if _, err := c.ScanSize(ctx, bytes.NewReader(over), int64(len(over))); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("over the limit with size: %v, want ErrTooLarge", err)
	}
	// Exactly at the limit is scanned, and the infection at its very end found.
	at := append(bytes.Repeat([]byte("a"), int(limit)-len(clamdtest.EICAR)), clamdtest.EICAR...)
	res, err := c.Scan(ctx, bytes.NewReader(at))
	if err != nil || !res.Infected {
		t.Fatalf("at the limit: %+v %v", res, err)
	}
	if got := value(c.m.scans.WithLabelValues("too_large")); got != 2 {
		t.Errorf("too_large counted %v, want 2", got)
	}
	// Misconfigured: our limit above clamd's. clamd's refusal is still
	// reported as ErrTooLarge, and the instance stays usable.
	c2 := newClient(t, nil, 4*limit, cd.Unix)
	if _, err := c2.Scan(ctx, bytes.NewReader(over)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("clamd refusal: %v, want ErrTooLarge", err)
	}
	if res, err := c2.Scan(ctx, strings.NewReader(clamdtest.EICAR)); err != nil || !res.Infected {
		t.Fatalf("after refusal: %+v %v", res, err)
	}
	// Far over clamd's limit: clamd closes while we are still sending.
	far := bytes.Repeat([]byte("b"), int(3*limit+limit/2))
	for i := 0; i < 3; i++ {
		if _, err := c2.Scan(ctx, bytes.NewReader(far)); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("clamd refusal mid-stream: %v, want ErrTooLarge", err)
		}
	}
	if !c2.Status()[0].Up {
		t.Fatal("instance marked down for a size refusal")
	}
}

func TestStopRestart(t *testing.T) {
	cd := clamdtest.Start(t)
	c := newClient(t, nil, cd.StreamMaxLength, cd.Unix)
	ctx := context.Background()
	if _, err := c.Scan(ctx, strings.NewReader("hi")); err != nil {
		t.Fatal(err)
	}
	cd.Stop()
	_, err := c.Scan(ctx, strings.NewReader("hi"))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("scan with clamd stopped: %v, want ErrUnavailable", err)
	}
	if st := c.Status(); st[0].Up {
		t.Fatalf("instance still up: %+v", st)
	}
	if got := value(c.m.up.WithLabelValues(cd.Unix)); got != 0 {
		t.Fatalf("moat_clamd_up = %v after failure", got)
	}
	if err := c.Ping(ctx); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Ping: %v", err)
	}
	if err := cd.Restart(); err != nil {
		t.Fatal(err)
	}
	// Marked down, but tried as the last resort: recovery is immediate.
	res, err := c.Scan(ctx, strings.NewReader(clamdtest.EICAR))
	if err != nil || !res.Infected {
		t.Fatalf("after restart: %+v %v", res, err)
	}
	if st := c.Status(); !st[0].Up {
		t.Fatalf("instance not marked up after a successful scan: %+v", st)
	}
}

// An idle session killed by a clamd restart is noticed before use.
func TestStaleSession(t *testing.T) {
	cd := clamdtest.Start(t, clamdtest.Options{NoTCP: true})
	c := newClient(t, nil, cd.StreamMaxLength, cd.Unix)
	ctx := context.Background()
	if _, err := c.Scan(ctx, strings.NewReader("hi")); err != nil {
		t.Fatal(err)
	}
	if len(c.inst[0].idle) != 1 {
		t.Fatal("no idle session kept")
	}
	old := c.inst[0].idle[0]
	if err := cd.Restart(); err != nil {
		t.Fatal(err)
	}
	// Non-seekable: a stale session must be detected before any byte is sent.
	res, err := c.Scan(ctx, onlyReader{strings.NewReader(clamdtest.EICAR)})
	if err != nil || !res.Infected {
		t.Fatalf("after restart: %+v %v", res, err)
	}
	if c.inst[0].idle[0] == old {
		t.Fatal("the stale session was reused")
	}
}

func TestFailoverAndRoundRobin(t *testing.T) {
	a := clamdtest.Shared(t)
	b := clamdtest.Start(t, clamdtest.Options{NoTCP: true})
	dead := "unix:" + filepath.Join(t.TempDir(), "nothing.sock")
	reg := prometheus.NewRegistry()
	c := newClient(t, reg, a.StreamMaxLength, dead, a.TCP, b.Unix)
	if st := c.Status(); st[0].Up || !st[1].Up || !st[2].Up {
		t.Fatalf("after the first probe: %+v", st)
	}
	if got := value(c.m.up.WithLabelValues(dead)); got != 0 {
		t.Fatalf("moat_clamd_up{dead} = %v", got)
	}
	used := map[string]int{}
	for i := 0; i < 10; i++ {
		res, err := c.Scan(context.Background(), onlyReader{strings.NewReader(clamdtest.EICAR)})
		if err != nil || !res.Infected {
			t.Fatalf("scan %d: %+v %v", i, res, err)
		}
		used[res.Addr]++
	}
	if used[dead] != 0 || used[a.TCP] == 0 || used[b.Unix] == 0 {
		t.Fatalf("scans per instance: %v", used)
	}
	// Now one live instance dies: scans fail over to the other.
	b.Stop()
	for i := 0; i < 4; i++ {
		res, err := c.Scan(context.Background(), bytes.NewReader([]byte(clamdtest.EICAR)))
		if err != nil || res.Addr != a.TCP {
			t.Fatalf("scan %d with b stopped: %+v %v", i, res, err)
		}
	}
	if st := c.Status(); st[2].Up {
		t.Fatalf("b still up: %+v", st)
	}
	// The health loop brings it back.
	if err := b.Restart(); err != nil {
		t.Fatal(err)
	}
	c.probeAll()
	if st := c.Status(); !st[2].Up || st[0].Up {
		t.Fatalf("after probe: %+v", st)
	}
}

func TestCanceled(t *testing.T) {
	cd := clamdtest.Shared(t)
	c := newClient(t, nil, cd.StreamMaxLength, cd.Unix)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Scan(ctx, strings.NewReader("hi")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("canceled scan: %v", err)
	}
}

// A reader that fails is the caller's problem: no failover, nothing marked down.
func TestSourceError(t *testing.T) {
	cd := clamdtest.Shared(t)
	c := newClient(t, nil, cd.StreamMaxLength, cd.Unix)
	boom := errors.New("disk on fire")
	_, err := c.Scan(context.Background(), io.MultiReader(strings.NewReader("abc"), errReader{boom}))
	if !errors.Is(err, boom) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("got %v", err)
	}
	if !c.Status()[0].Up {
		t.Fatal("instance marked down for a source error")
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestVersionPing(t *testing.T) {
	cd := clamdtest.Shared(t)
	c := newClient(t, nil, cd.StreamMaxLength, cd.Addrs...)
	v, err := c.Version(context.Background())
	if err != nil || !strings.HasPrefix(v, "ClamAV ") {
		t.Fatalf("Version: %q %v", v, err)
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Logf("version %q short %q", v, ShortVersion(v))
}

func TestShortVersion(t *testing.T) {
	for in, want := range map[string]string{
		"":                                   "ClamAV",
		"ClamAV 1.4.6":                       "ClamAV 1.4.6",
		"ClamAV 1.4.6/27460/Mon Nov 23 2026": "ClamAV 1.4.6/27460",
		"ClamAV 1.4.6/abc/Mon Nov 23 2026":   "ClamAV 1.4.6",
	} {
		if got := ShortVersion(in); got != want {
			t.Errorf("ShortVersion(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Addrs = nil }, "addrs:"},
		{func(c *Config) { c.Addrs = []string{"localhost:3310"} }, "addrs:"},
		{func(c *Config) { c.Addrs = []string{"unix:relative.sock"} }, "addrs:"},
		{func(c *Config) { c.Addrs = []string{"tcp:127.0.0.1"} }, "addrs:"},
		{func(c *Config) { c.Addrs = []string{"tcp:127.0.0.1:1", "tcp:127.0.0.1:1"} }, "addrs:"},
		{func(c *Config) { c.ScanTimeout = 0 }, "scan_timeout:"},
		{func(c *Config) { c.ConnectTimeout = 0 }, "connect_timeout:"},
		{func(c *Config) { c.StreamMaxLength = 10 }, "stream_max_length:"},
		{func(c *Config) { c.HealthInterval = 0 }, "health_interval:"},
		{func(c *Config) { c.MaxIdleConns = -1 }, "max_idle_conns:"},
		{func(c *Config) { c.IdleTimeout = 0 }, "idle_timeout:"},
	} {
		cfg := DefaultConfig()
		tc.mod(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("got %v, want prefix %q", err, tc.want)
		}
	}
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkScanClient compares session reuse with a connection per scan,
// over both transports.
func BenchmarkScanClient(b *testing.B) {
	cd := clamdtest.Shared(b)
	data := bytes.Repeat([]byte("The quick brown fox jumps over the lazy dog.\r\n"), 100)[:4<<10]
	for _, addr := range cd.Addrs {
		for _, idle := range []int{4, 0} {
			b.Run(fmt.Sprintf("%s/4KiB/max_idle_conns=%d", strings.SplitN(addr, ":", 2)[0], idle), func(b *testing.B) {
				cfg := DefaultConfig()
				cfg.Addrs, cfg.StreamMaxLength, cfg.MaxIdleConns = []string{addr}, cd.StreamMaxLength, idle
				c, err := New(cfg, nil, nil)
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				b.SetBytes(int64(len(data)))
				for i := 0; i < b.N; i++ {
					if _, err := c.Scan(context.Background(), bytes.NewReader(data)); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}

// value reads a counter or gauge.
func value(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}
